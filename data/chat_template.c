#include "chat_template.h"

#include <stdlib.h>
#include <string.h>

static const char *const template_names[] = {"vicuna", "chatml", "llama-2", "llama-3",  "mistral",
                                             "gemma",  "phi-3",  "qwen3",   "llama-3.1"};

/* What Llama 3.1's template writes at the head of its system turn when no date is given (3.2's writes today's
 * date; this fixed one is what 3.1 and 3.3 were trained with). */
static const char LLAMA31_SYSTEM_HEAD[] = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

static const char VICUNA_SYSTEM[] =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";

const char *chat_template_guess(const char *jinja) {
    if (!jinja) return NULL;
    if (strstr(jinja, "<start_of_turn>")) return "gemma";
    if (strstr(jinja, "<|im_start|>")) return strstr(jinja, "<think>") ? "qwen3" : "chatml";
    if (strstr(jinja, "<|start_header_id|>")) return strstr(jinja, "Cutting Knowledge Date") ? "llama-3.1" : "llama-3";
    if (strstr(jinja, "<|user|>") && strstr(jinja, "<|assistant|>") && strstr(jinja, "<|end|>")) return "phi-3";
    if (strstr(jinja, "[INST]")) return strstr(jinja, "<<SYS>>") ? "llama-2" : "mistral";
    if (strstr(jinja, "USER:") && strstr(jinja, "ASSISTANT:")) return "vicuna";
    return NULL;
}

/* The literal system prompt a chatml Jinja template writes when the conversation has none, e.g.
 * SmolLM2's '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'. */
static char *chatml_default_system(const char *jinja) {
    static const char open[] = "<|im_start|>system";
    for (const char *p = jinja ? strstr(jinja, open) : NULL; p; p = strstr(p + 1, open)) {
        const char *q = p + strlen(open);
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end || end == q) continue;
        /* only a plain string literal will do: no Jinja expression, no quote ending the literal */
        size_t n = (size_t)(end - q);
        char *s = xmalloc(n + 1), *o = s;
        int literal = 1;
        for (const char *c = q; c < end && literal; c++) {
            if (*c == '\'' || *c == '"' || *c == '{' || *c == '}') literal = 0;
            else if (c[0] == '\\' && c + 1 < end) *o++ = *++c == 'n' ? '\n' : *c;
            else *o++ = *c;
        }
        *o = '\0';
        if (literal) return s;
        free(s);
    }
    return NULL;
}

/* Byte of a GPT-2 byte-level BPE character (the inverse of bytes_to_unicode), -1 when cp is not one:
 * printable Latin-1 stands for itself, the 68 other bytes were moved to U+0100..U+0143 in order. */
static int byte_of_char(unsigned cp) {
    if ((cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff)) return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + 33) return (int)(cp - 0x100);
    if (cp >= 0x100 + 33 && cp < 0x100 + 67) return (int)(0x7f + cp - 0x100 - 33);
    if (cp == 0x100 + 67) return 0xad;
    return -1;
}

/* Appends the bytes a token's piece spells to out: byte-level BPE pieces map each character through the
 * byte table; SentencePiece pieces write a space as U+2581 and a raw byte as <0xNN>; special tokens are
 * their own text. */
static size_t piece_bytes(const char *piece, TokenizerKind kind, char *out) {
    const unsigned char *p = (const unsigned char *)piece;
    unsigned hex;
    size_t o = 0;
    if (kind == TOKENIZER_SPM_BPE && strlen(piece) == 6 && sscanf(piece, "<0x%2X>", &hex) == 1) {
        out[0] = (char)hex;
        return 1;
    }
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : (*p & 0xf8) == 0xf0 ? 4 : 1;
        unsigned cp = n == 1 ? *p : *p & (0x7fu >> n);
        for (int i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) n = i; /* malformed: take what is there as raw bytes */
            else cp = (cp << 6) | (p[i] & 0x3fu);
        }
        int b = -1;
        if (kind == TOKENIZER_BYTE_BPE) b = byte_of_char(cp);
        else if (cp == 0x2581) b = ' ';
        if (b >= 0) out[o++] = (char)b;
        else
            for (int i = 0; i < n; i++) out[o++] = (char)p[i];
        p += n;
    }
    return o;
}

void chat_template_init(ChatTemplate *t, const char *name, const Tokenizer *tok, const char *model_jinja,
                        const char *bos, const char *eos) {
    memset(t, 0, sizeof *t);
    int kind = -1;
    for (int i = 0; i < (int)(sizeof template_names / sizeof *template_names); i++)
        if (strcmp(name, template_names[i]) == 0) kind = i;
    if (kind < 0) fatal("unknown chat template '%s' (known: %s)", name, CHAT_TEMPLATE_NAMES);
    t->kind = (TemplateKind)kind;
    t->name = template_names[kind];
    int bos_id = tokenizer_bos_id(tok), eos_id = tokenizer_eos_id(tok);
    t->bos = xstrdup(bos ? bos : bos_id >= 0 ? tokenizer_piece(tok, bos_id) : "");
    t->eos = xstrdup(eos ? eos : eos_id >= 0 ? tokenizer_piece(tok, eos_id) : "");
    if (t->kind == TEMPLATE_CHATML) t->default_system = chatml_default_system(model_jinja);
    /* fastchat's vicuna prompt has no BOS in its text: the tokenizer adds it (add_special_tokens=True) */
    t->add_bos = t->kind == TEMPLATE_VICUNA;
    t->bos_id = bos_id;
    /* what each token spells, looked up once here rather than per token when aligning */
    int v = tokenizer_vocab_size(tok);
    TokenizerKind tok_kind = tokenizer_kind(tok);
    size_t total = 0;
    for (int id = 0; id < v; id++) {
        size_t n = strlen(tokenizer_piece(tok, id));
        if (n > t->max_piece) t->max_piece = n;
        total += n;
    }
    t->spelling = xmalloc(total + 1);
    t->spelling_at = xmalloc(((size_t)v + 1) * sizeof *t->spelling_at);
    t->spelling_at[0] = 0;
    for (int id = 0; id < v; id++)
        t->spelling_at[id + 1] =
            t->spelling_at[id] + piece_bytes(tokenizer_piece(tok, id), tok_kind, t->spelling + t->spelling_at[id]);
    /* A byte-level BPE vocabulary may lack some bytes' characters (SmolLM2 has no token for most control
     * bytes): the tokenizer drops those bytes, as HF tokenizers does without an unknown token. */
    if (tok_kind == TOKENIZER_BYTE_BPE)
        for (unsigned cp = 0; cp < 0x100 + 68; cp++) {
            int b = byte_of_char(cp);
            char piece[3] = {(char)(cp < 0x80 ? cp : 0xc0 | (cp >> 6)), (char)(cp < 0x80 ? 0 : 0x80 | (cp & 0x3f)), 0};
            if (b >= 0) t->dropped[b] = tokenizer_token_id(tok, piece) < 0;
        }
}

void chat_template_free(ChatTemplate *t) {
    free(t->default_system);
    free(t->bos);
    free(t->eos);
    free(t->spelling);
    free(t->spelling_at);
    memset(t, 0, sizeof *t);
}

static void put(Rendered *r, const char *s, size_t n, int trained) {
    if (r->len + n + 1 > r->cap) {
        r->cap = 2 * (r->len + n + 1);
        r->text = xrealloc(r->text, r->cap);
    }
    memcpy(r->text + r->len, s, n);
    if (trained && n > 0) {
        if (r->n_spans > 0 && r->spans[2 * r->n_spans - 1] == r->len) {
            r->spans[2 * r->n_spans - 1] += n; /* continues the previous trained segment */
        } else {
            if (r->n_spans == r->cap_spans) {
                r->cap_spans = r->cap_spans ? 2 * r->cap_spans : 8;
                r->spans = xrealloc(r->spans, 2 * (size_t)r->cap_spans * sizeof *r->spans);
            }
            r->spans[2 * r->n_spans] = r->len;
            r->spans[2 * r->n_spans + 1] = r->len + n;
            r->n_spans++;
        }
    }
    r->len += n;
    r->text[r->len] = '\0';
}

static void put_str(Rendered *r, const char *s, int trained) { put(r, s, strlen(s), trained); }

static void put_stripped(Rendered *r, const Turn *turn, int trained) {
    const char *s = turn->text;
    size_t n = turn->len;
    text_strip(&s, &n);
    put(r, s, n, trained);
}

static const char *role_name(Role role) {
    return role == ROLE_SYSTEM ? "system" : role == ROLE_USER ? "user" : "assistant";
}

/* a turn's header, untrained: open, the role's name, close */
static void put_header(Rendered *r, const char *open, Role role, const char *close) {
    put_str(r, open, 0);
    put_str(r, role_name(role), 0);
    put_str(r, close, 0);
}

/* a turn's end marker (trained with an assistant's reply) and the newline after it (never trained) */
static void put_turn_end(Rendered *r, const char *end, int trained) {
    put_str(r, end, trained);
    put_str(r, "\n", 0);
}

/* Each case writes exactly what the reference writes: fastchat's vicuna_v1.1 Conversation, or the model's
 * Jinja template through transformers' apply_chat_template (tests/gen/gen_chat.py holds those templates). */
void chat_render(const ChatTemplate *t, const Conversation *c, Rendered *r) {
    r->len = 0;
    r->n_spans = 0;
    put(r, "", 0, 0);
    const Turn *sys = c->turns[0].role == ROLE_SYSTEM ? &c->turns[0] : NULL;
    int first = sys != NULL;
    switch (t->kind) {
    case TEMPLATE_VICUNA: /* "<system> USER: <u> ASSISTANT: <a></s>USER: ..." */
        if (sys) put(r, sys->text, sys->len, 0);
        else put_str(r, VICUNA_SYSTEM, 0);
        put_str(r, " ", 0);
        for (int i = first; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            if (u->role == ROLE_USER) {
                put_str(r, "USER: ", 0);
                put(r, u->text, u->len, 0);
                put_str(r, " ", 0);
            } else {
                put_str(r, "ASSISTANT: ", 0);
                put(r, u->text, u->len, 1);
                put_str(r, "</s>", 1);
            }
        }
        break;
    case TEMPLATE_CHATML: /* "<|im_start|>role\n<text><|im_end|>\n" per turn */
        if (!sys && t->default_system) {
            put_str(r, "<|im_start|>system\n", 0);
            put_str(r, t->default_system, 0);
            put_str(r, "<|im_end|>\n", 0);
        }
        for (int i = 0; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            int trained = u->role == ROLE_ASSISTANT;
            put_header(r, "<|im_start|>", u->role, "\n");
            put(r, u->text, u->len, trained);
            put_turn_end(r, "<|im_end|>", trained);
        }
        break;
    case TEMPLATE_LLAMA2: /* "<s>[INST] <<SYS>>\n<s>\n<</SYS>>\n\n<u> [/INST] <a> </s><s>[INST] ..." */
        for (int i = first; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            if (u->role == ROLE_USER) {
                put_str(r, t->bos, 0);
                put_str(r, "[INST] ", 0);
                if (i == first && sys) {
                    /* the template strips the system block + user text as one string: only the user
                     * text's end is stripped */
                    const char *s = u->text;
                    size_t n = u->len;
                    text_strip(&s, &n);
                    put_str(r, "<<SYS>>\n", 0);
                    put(r, sys->text, sys->len, 0);
                    put_str(r, "\n<</SYS>>\n\n", 0);
                    put(r, u->text, (size_t)(s + n - u->text), 0);
                } else {
                    put_stripped(r, u, 0);
                }
                put_str(r, " [/INST]", 0);
            } else {
                put_str(r, " ", 0);
                put_stripped(r, u, 1);
                put_str(r, " ", 1);
                put_str(r, t->eos, 1);
            }
        }
        break;
    case TEMPLATE_LLAMA3:  /* "<|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n<text><|eot_id|>" */
    case TEMPLATE_LLAMA31: /* the same after a system turn that is always there */
        put_str(r, t->bos, 0);
        if (t->kind == TEMPLATE_LLAMA31) {
            put_str(r, "<|start_header_id|>system<|end_header_id|>\n\n", 0);
            put_str(r, LLAMA31_SYSTEM_HEAD, 0);
            if (sys) put_stripped(r, sys, 0);
            put_str(r, "<|eot_id|>", 0);
        }
        for (int i = t->kind == TEMPLATE_LLAMA31 ? first : 0; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            int trained = u->role == ROLE_ASSISTANT;
            put_header(r, "<|start_header_id|>", u->role, "<|end_header_id|>\n\n");
            put_stripped(r, u, trained);
            put_str(r, "<|eot_id|>", trained);
        }
        break;
    case TEMPLATE_GEMMA: /* "<bos><start_of_turn>user\n<s>\n\n<u><end_of_turn>\n<start_of_turn>model\n<a><end_of_turn>\n"
                          */
        put_str(r, t->bos, 0);
        for (int i = first; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            int trained = u->role == ROLE_ASSISTANT;
            put_str(r, trained ? "<start_of_turn>model\n" : "<start_of_turn>user\n", 0);
            if (i == first && sys) { /* the system text as it is, the user text trimmed */
                put(r, sys->text, sys->len, 0);
                put_str(r, "\n\n", 0);
            }
            put_stripped(r, u, trained);
            put_turn_end(r, "<end_of_turn>", trained);
        }
        break;
    case TEMPLATE_PHI3: /* "<|role|>\n<text><|end|>\n" per turn, EOS after the last (no generation prompt) */
        for (int i = 0; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            int trained = u->role == ROLE_ASSISTANT;
            put_header(r, "<|", u->role, "|>\n");
            put(r, u->text, u->len, trained);
            put_turn_end(r, "<|end|>", trained);
        }
        put_str(r, t->eos, 0);
        break;
    case TEMPLATE_QWEN3: /* chatml with no default system prompt; the last reply after an empty thinking block */
        for (int i = 0; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            int trained = u->role == ROLE_ASSISTANT;
            put_header(r, "<|im_start|>", u->role, "\n");
            const char *s = u->text;
            size_t n = u->len;
            if (trained && i == c->n_turns - 1) { /* after the last user turn: the template's own <think> block */
                put_str(r, "<think>\n\n</think>\n\n", 1);
                for (; n > 0 && *s == '\n'; s++) n--;
            }
            put(r, s, n, trained);
            put_turn_end(r, "<|im_end|>", trained);
        }
        break;
    case TEMPLATE_MISTRAL: /* "<s>[INST] <u> [/INST]<a></s>[INST] ..."; a system turn opens the first user turn */
        put_str(r, t->bos, 0);
        for (int i = first; i < c->n_turns; i++) {
            const Turn *u = &c->turns[i];
            if (u->role == ROLE_USER) {
                put_str(r, "[INST] ", 0);
                if (i == first && sys) {
                    put(r, sys->text, sys->len, 0);
                    put_str(r, "\n\n", 0);
                }
                put(r, u->text, u->len, 0);
                put_str(r, " [/INST]", 0);
            } else {
                put(r, u->text, u->len, 1);
                put_str(r, t->eos, 1);
            }
        }
        break;
    }
}

/* The template renders the conversation with an empty reply; the prompt is the text before that reply's first
 * trained byte. */
int chat_generation_prompt(const ChatTemplate *t, const Tokenizer *tok, const Turn *turns, int n_turns, int32_t **ids) {
    Turn *all = xcalloc((size_t)n_turns + 1, sizeof(Turn));
    memcpy(all, turns, sizeof(Turn) * (size_t)n_turns);
    all[n_turns] = (Turn){ROLE_ASSISTANT, "", 0};
    Conversation c = {0};
    c.turns = all;
    c.n_turns = n_turns + 1;
    Rendered r = {0};
    chat_render(t, &c, &r);
    size_t len = r.n_spans > 0 ? r.spans[2 * (r.n_spans - 1)] : r.len;
    /* fastchat's vicuna prompt ends with "ASSISTANT:"; the space belongs to the reply */
    if (t->kind == TEMPLATE_VICUNA && len > 0 && r.text[len - 1] == ' ') len--;
    int n = tokenizer_encode(tok, r.text, len, 1, t->add_bos, ids);
    rendered_free(&r);
    free(all);
    return n;
}

int chat_stop_id(const ChatTemplate *t, const Tokenizer *tok) {
    static const char *const ends[] = {
        [TEMPLATE_CHATML] = "<|im_end|>",  [TEMPLATE_QWEN3] = "<|im_end|>",    [TEMPLATE_LLAMA3] = "<|eot_id|>",
        [TEMPLATE_LLAMA31] = "<|eot_id|>", [TEMPLATE_GEMMA] = "<end_of_turn>", [TEMPLATE_PHI3] = "<|end|>"};
    const char *end = ends[t->kind];
    int id = end ? tokenizer_token_id(tok, end) : -1;
    return id >= 0 ? id : tokenizer_eos_id(tok);
}

void rendered_free(Rendered *r) {
    free(r->text);
    free(r->spans);
    memset(r, 0, sizeof *r);
}

/* Advances *pos over byte b of the text, and over bytes before it that the tokenizer drops. A space the
 * text does not have was inserted by the tokenizer (SentencePiece's dummy prefix) and spells nothing. */
static int match_byte(const uint8_t *dropped, const char *text, size_t len, size_t *pos, int b) {
    while (*pos < len && (unsigned char)text[*pos] != b && dropped[(unsigned char)text[*pos]]) (*pos)++;
    if (*pos < len && (unsigned char)text[*pos] == b) {
        (*pos)++;
        return 1;
    }
    return b == ' ';
}

/* Matches the bytes token id spells against the text from *pos, advancing *pos past them; 0 on a mismatch. */
static int spell(const ChatTemplate *t, int id, const char *text, size_t len, size_t *pos) {
    const char *s = t->spelling + t->spelling_at[id];
    size_t n = t->spelling_at[id + 1] - t->spelling_at[id];
    if (n <= len - *pos && memcmp(text + *pos, s, n) == 0) {
        *pos += n;
        return 1;
    }
    for (size_t i = 0; i < n; i++) /* dropped bytes or a dummy-prefix space in between */
        if (!match_byte(t->dropped, text, len, pos, (unsigned char)s[i])) return 0;
    return 1;
}

int chat_encode(const ChatTemplate *t, const Tokenizer *tok, const Conversation *c, int max_len, Encoded *e) {
    memset(e, 0, sizeof *e);
    Rendered r = {0};
    chat_render(t, c, &r);
    /* Only the first max_len tokens are kept, and no token spells more than max_piece bytes, so text far
     * beyond (max_len + 1) * max_piece cannot change them: a huge message is cut (at a character
     * boundary) instead of tokenised whole. The factor 2 leaves room for BPE merges across the cut. */
    size_t len = r.len, bound = 2 * ((size_t)max_len + 1) * (t->max_piece + 1);
    if (len > bound) {
        len = bound;
        while (len > 0 && ((unsigned char)r.text[len] & 0xc0) == 0x80) len--;
    }
    int32_t *ids;
    int n = tokenizer_encode(tok, r.text, len, 1, t->add_bos, &ids);
    uint8_t *mask = xmalloc((size_t)n + 1);
    size_t pos = 0;
    int span = 0, why = -1;
    for (int k = 0; k < n; k++) {
        size_t start = pos;
        int added_bos = k == 0 && t->add_bos && ids[0] == t->bos_id; /* in no text */
        if (!added_bos && !spell(t, ids[k], r.text, len, &pos)) {
            why = SKIP_ALIGNMENT;
            break;
        }
        while (span < r.n_spans && r.spans[2 * span + 1] <= start) span++;
        mask[k] = span < r.n_spans && r.spans[2 * span] < pos && pos > start;
    }
    while (pos < len && t->dropped[(unsigned char)r.text[pos]]) pos++;
    if (why < 0 && pos != len) why = SKIP_ALIGNMENT;
    rendered_free(&r);
    if (why < 0) {
        e->truncated = n > max_len;
        e->n = n > max_len ? max_len : n;
        for (int k = 0; k < e->n; k++) e->n_trained += mask[k];
        if (e->n_trained == 0) why = SKIP_NOTHING_TRAINED;
    }
    e->ids = ids;
    e->mask = mask;
    if (why >= 0) encoded_free(e);
    return why;
}

void encoded_free(Encoded *e) {
    free(e->ids);
    free(e->mask);
    memset(e, 0, sizeof *e);
}
