/* Chat templates and loss masks. A conversation is rendered into text made of segments, each trained or
 * not (assistant replies with their end-of-turn token are; system and user text, role headers, BOS are
 * not); the whole text is tokenised once, as the reference trainer does, and a token is trained when the
 * bytes it spells overlap a trained segment. */
#ifndef MEDUSA_CHAT_TEMPLATE_H
#define MEDUSA_CHAT_TEMPLATE_H

#include "sharegpt.h"
#include "tokenizer.h"

typedef enum {
    TEMPLATE_VICUNA,
    TEMPLATE_CHATML,
    TEMPLATE_LLAMA2,
    TEMPLATE_LLAMA3,
    TEMPLATE_MISTRAL,
    TEMPLATE_GEMMA,  /* Gemma 2/3: a system turn opens the first user turn; "model" answers */
    TEMPLATE_PHI3,   /* Phi-3.5 (and Phi-3-mini since its 2024-07 update): <|user|>\n...<|end|>\n */
    TEMPLATE_QWEN3,  /* chatml; the last reply opens with an empty <think>\n\n</think>\n\n, trained */
    TEMPLATE_LLAMA31 /* llama-3 with 3.1's system header (knowledge cutoff, fixed "Today Date") */
} TemplateKind;

#define CHAT_TEMPLATE_NAMES "vicuna, chatml, llama-2, llama-3, mistral, gemma, phi-3, qwen3, llama-3.1"

typedef struct {
    TemplateKind kind;
    const char *name;
    char *default_system; /* chatml: the system prompt the model's template adds when there is none */
    char *bos, *eos;      /* the tokenizer's BOS/EOS pieces, written where the templates write them */
    int add_bos;          /* the tokenizer adds BOS (vicuna: fastchat's prompt has none in its text) */
    int bos_id;
    size_t max_piece;     /* longest token in bytes, to bound the text worth tokenising */
    uint8_t dropped[256]; /* bytes the tokenizer has no token for and drops (skipped when aligning) */
    char *spelling;       /* the bytes token id spells: spelling[spelling_at[id] .. spelling_at[id + 1]) */
    size_t *spelling_at;
} ChatTemplate;

/* The template a model's Jinja chat template is written for, recognised by its markers; NULL if unknown. */
const char *chat_template_guess(const char *jinja);

/* name is one of CHAT_TEMPLATE_NAMES (fatal otherwise). model_jinja (may be NULL) supplies chatml's default
 * system prompt; bos/eos are the model's BOS/EOS strings (tokenizer_config.json), NULL to take the
 * tokenizer's BOS/EOS pieces. */
void chat_template_init(ChatTemplate *t, const char *name, const Tokenizer *tok, const char *model_jinja,
                        const char *bos, const char *eos);
void chat_template_free(ChatTemplate *t);

/* A rendered conversation: text and its trained byte ranges [spans[2i], spans[2i+1]). */
typedef struct {
    char *text;
    size_t len, cap;
    size_t *spans;
    int n_spans, cap_spans;
} Rendered;

void chat_render(const ChatTemplate *t, const Conversation *c, Rendered *r);

/* The prompt for the next assistant reply: the tokens of turns[0..n_turns) (an optional system turn, then user and
 * assistant turns alternating, ending with a user turn) followed by the assistant's header. Returns the count. */
int chat_generation_prompt(const ChatTemplate *t, const Tokenizer *tok, const Turn *turns, int n_turns, int32_t **ids);
/* The token that ends an assistant turn: the template's end-of-turn token, which need not be the tokenizer's EOS. */
int chat_stop_id(const ChatTemplate *t, const Tokenizer *tok);
void rendered_free(Rendered *r);

typedef struct {
    int32_t *ids;
    uint8_t *mask; /* 1 = trained target */
    int n;
    int n_trained;
    int truncated; /* the conversation had more than max_len tokens */
} Encoded;

/* Renders, tokenises and masks a conversation, keeping its first max_len tokens. Returns -1 on success,
 * else the SkipReason (nothing trained within max_len, or tokens that do not spell the text). */
int chat_encode(const ChatTemplate *t, const Tokenizer *tok, const Conversation *c, int max_len, Encoded *e);
void encoded_free(Encoded *e);

#endif
