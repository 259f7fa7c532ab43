/* The decoding engine of medusa-infer: a base model with its tokenizer and chat template, optional Medusa heads and
 * tree, and a decoder; prompts encoded, replies generated plainly or with Medusa. The binary's chat, --bench
 * (engine_bench) and the tree tuner (tune_main) sit on it. */
#ifndef MEDUSA_ENGINE_H
#define MEDUSA_ENGINE_H

#include "../data/chat_template.h"
#include "../data/model_tokenizer.h"
#include "../model/startup.h"
#include "decoder.h"

#define DEFAULT_TREE "configs/trees/mc_sim_7b_63.json"
#define DEFAULT_TREE_CPU "configs/trees/cpu_2.json"

typedef struct {
    const char *model, *medusa, *prompt, *prompt_ids, *tree, *mode, *bench, *chat_template, *system;
    DeviceFlags dev; /* --device --precision --threads */
    int max_new, raw, ctx, seed, quiet;
    float temperature, top_p, posterior_threshold, posterior_alpha;
} EngineOptions;

typedef struct {
    EngineOptions o;
    Model model;
    MedusaHeads heads;
    MedusaTree tree;
    int have_heads;
    ModelTokenizer text;
    Tokenizer *tok; /* text.tok: NULL when the model has none (only --prompt-ids then) */
    ChatTemplate tmpl;
    int have_tmpl;
    int stop_id; /* end of the assistant's turn, or the tokenizer's EOS */
    Decoder dec;
} Engine;

/* Loads everything o names (fatal on any problem); the memory plan is printed for a GPU unless o->quiet. */
void engine_init(Engine *e, const EngineOptions *o);
void engine_free(Engine *e);

/* Token ids given by the user (what names --prompt-ids or a prompt file): each must be in the vocabulary. */
void check_ids(const int32_t *ids, int n, int vocab, const char *what);
/* --prompt-ids: comma-separated ids, checked */
int32_t *parse_ids(const char *s, int vocab, int *n);
/* Tokens of a conversation (alternating user/assistant turns, ending with a user turn) after --system, followed by
 * the assistant's header. */
int32_t *encode_chat(const Engine *e, const Turn *turns, int n_turns, int *n);
/* A prompt's tokens: raw text, or one user turn in the chat template. */
int32_t *encode_prompt(const Engine *e, const char *text, int *n);

/* Decodes after prompt in the given mode (temperature 0: greedy; > 0: sampling, or typical acceptance with
 * Medusa). out holds engine_output_buffer's tokens. */
int generate(Engine *e, const int32_t *prompt, int n_prompt, int medusa, float temperature, int32_t *out,
             TokenSink sink, void *user, DecodeStats *st);
/* room for --max-new-tokens and a tree's last accepted path */
int32_t *engine_output_buffer(const Engine *e);
/* Decoding steps that emitted the tokens: plain decoding's first token comes from the prompt's forward
 * pass; every Medusa verification pass emits its accepted tokens plus the base model's next. */
int decoding_steps(const DecodeStats *st, int medusa);

/* --bench: plain greedy, Medusa greedy and Medusa typical decoding on o.bench's prompts, with tokens/s, tokens per
 * step, speedup and whether greedy Medusa output equals plain greedy output (fatal when it does not). */
void engine_bench(Engine *e);

/* `medusa-infer tune ...` (argv[1] is "tune") */
int tune_main(int argc, char **argv);

#endif
