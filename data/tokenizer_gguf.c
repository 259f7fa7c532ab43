/* Loading a tokenizer from GGUF metadata (tokenizer.ggml.*), as llama.cpp reads it. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* llama.cpp's tokenizer.ggml.pre names and the regex splits they stand for. */
static void gguf_pre_tokenizer(Tokenizer *t, const char *pre, const char *path) {
    static const char *const gpt2[] = {"gpt2", "gpt-2", "default", "phi-2", "roberta-bpe", "olmo", "jina-v1-en", NULL};
    static const char *const digits[] = {"smollm",    "starcoder", "refact",  "command-r",
                                         "codeshell", "exaone",    "minerva", NULL};
    static const char *const llama3[] = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", NULL};
    static const char *const qwen2[] = {"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", NULL};
    const char *name = pre ? pre : "default";
    for (const char *const *p = digits; *p; p++)
        if (strcmp(name, *p) == 0) {
            tok_add_split(t, "\\p{N}", 0, SPLIT_ISOLATED, 0, path);
            tok_add_split(t, GPT2_PATTERN, 0, SPLIT_ISOLATED, 0, path);
            return;
        }
    for (const char *const *p = llama3; *p; p++)
        if (strcmp(name, *p) == 0) {
            tok_add_split(t, LLAMA3_PATTERN, 0, SPLIT_ISOLATED, 0, path);
            return;
        }
    for (const char *const *p = qwen2; *p; p++)
        if (strcmp(name, *p) == 0) {
            tok_add_split(t, QWEN2_PATTERN, 0, SPLIT_ISOLATED, 0, path);
            return;
        }
    int known = 0;
    for (const char *const *p = gpt2; *p; p++) known |= strcmp(name, *p) == 0;
    if (!known) log_warn("%s: unknown tokenizer.ggml.pre '%s', splitting words as GPT-2 does", path, name);
    tok_add_split(t, GPT2_PATTERN, 0, SPLIT_ISOLATED, 0, path);
}

/* transformers' Gemma conversion (GemmaTokenizer from the GGUF's vocabulary): a piece of whitespace with
 * a space in it is stored with real spaces but is a vocab entry of as many U+2581 (no added token), and the
 * merges follow the pieces' order, every piece a merge result (tok_spm_from_scores without scores). */
static int is_gemma(const GGUFFile *g) {
    const char *arch = gguf_get_str(g, "general.architecture");
    return arch && (strcmp(arch, "gemma") == 0 || strcmp(arch, "gemma2") == 0 || strcmp(arch, "gemma3") == 0);
}

/* Respells Gemma's whitespace pieces (see is_gemma); types of those become normal. Returns malloc'd copies
 * of the pieces array and lengths (respelled pieces malloc'd too, flagged in *owned). */
static void gemma_respell(int n, char *const *pieces, const size_t *lens, int32_t *types, char ***out,
                          size_t **out_lens, char **owned) {
    *out = xmalloc((size_t)n * sizeof **out);
    *out_lens = xmalloc((size_t)n * sizeof **out_lens);
    *owned = xcalloc((size_t)n, 1);
    for (int id = 0; id < n; id++) {
        const char *p = pieces[id];
        size_t len = lens[id], i = 0;
        int space = 0;
        for (; i < len && p[i] && strchr(" \t\n\r\v\f", p[i]); i++) space |= p[i] == ' ';
        (*out)[id] = pieces[id];
        (*out_lens)[id] = len;
        if (!space || i < len) continue;
        char *r = xmalloc(3 * len + 1);
        for (size_t k = 0; k < len; k++) memcpy(r + 3 * k, SPACE_MARK, 3);
        r[3 * len] = '\0';
        (*out)[id] = r;
        (*out_lens)[id] = 3 * len;
        (*owned)[id] = 1;
        if (types) types[id] = 1;
    }
}

static const GGUFKV *gguf_array(const GGUFFile *g, const char *key, GGUFType elem, uint64_t n, const char *path) {
    const GGUFKV *kv = gguf_find(g, key);
    if (!kv) return NULL;
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != elem || (n && kv->arr_len != n))
        fatal("%s: %s is not an array of %llu elements of type %d", path, key, (unsigned long long)n, (int)elem);
    return kv;
}

Tokenizer *tokenizer_load_gguf(const GGUFFile *g) {
    const char *path = g->mf.path;
    const char *model = gguf_get_str(g, "tokenizer.ggml.model");
    if (!model) fatal("%s: no tokenizer (tokenizer.ggml.model missing)", path);
    int byte_level = strcmp(model, "gpt2") == 0;
    if (!byte_level && strcmp(model, "llama") != 0)
        fatal("%s: unsupported tokenizer model '%s' (gpt2 and llama are supported)", path, model);
    const GGUFKV *tokens = gguf_array(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, 0, path);
    if (!tokens || tokens->arr_len == 0 || tokens->arr_len > (1u << 30)) fatal("%s: no tokenizer.ggml.tokens", path);
    int n = (int)tokens->arr_len;
    const GGUFKV *types = gguf_array(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, (uint64_t)n, path);
    const int32_t *type = types ? types->arr_data : NULL;
    int gemma = !byte_level && is_gemma(g);
    Tokenizer *t;
    if (gemma) {
        int32_t *gtype = type ? xmalloc((size_t)n * sizeof *gtype) : NULL;
        if (type) memcpy(gtype, type, (size_t)n * sizeof *gtype);
        char **pieces, *owned;
        size_t *lens;
        gemma_respell(n, tokens->arr_str, tokens->arr_str_len, gtype, &pieces, &lens, &owned);
        t = tok_typed_vocab(n, pieces, lens, gtype);
        for (int id = 0; id < n; id++)
            if (owned[id]) free(pieces[id]);
        free(pieces);
        free(lens);
        free(owned);
        free(gtype);
    } else {
        t = tok_typed_vocab(n, tokens->arr_str, tokens->arr_str_len, type);
    }
    if (byte_level) {
        t->kind = TOKENIZER_BYTE_BPE;
        gguf_pre_tokenizer(t, gguf_get_str(g, "tokenizer.ggml.pre"), path);
        tok_finish(t);
        /* without merges (a bare byte vocabulary, as in the tiny test models) every byte is a token */
        const GGUFKV *merges = gguf_array(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, 0, path);
        tok_merges_init(&t->merges, merges ? merges->arr_len : 0);
        for (uint64_t r = 0; merges && r < merges->arr_len; r++) {
            const char *m = merges->arr_str[r], *sp = strchr(m, ' ');
            if (!sp) fatal("%s: merge %llu is not a pair of tokens", path, (unsigned long long)r);
            size_t la = (size_t)(sp - m), lb = strlen(sp + 1);
            char *ab = xmalloc(la + lb + 1);
            memcpy(ab, m, la);
            memcpy(ab + la, sp + 1, lb + 1);
            int a = tok_vocab_find(t, m, la), b = tok_vocab_find(t, sp + 1, lb), id = tok_vocab_find(t, ab, la + lb);
            if (a < 0 || b < 0 || id < 0)
                fatal("%s: merge %llu ('%s') uses a token not in the vocab", path, (unsigned long long)r, m);
            tok_merges_add(&t->merges, a, b, (int32_t)r, id);
            free(ab);
        }
    } else {
        int add_prefix = (int)gguf_get_int(g, "tokenizer.ggml.add_space_prefix", 1);
        const GGUFKV *scores = gguf_array(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, (uint64_t)n, path);
        if (gemma) tok_spm_from_scores(t, NULL, NULL, add_prefix);
        else if (!scores) fatal("%s: llama tokenizer without tokenizer.ggml.scores", path);
        else tok_spm_from_scores(t, scores->arr_data, type, add_prefix);
    }
    int64_t bos = gguf_get_int(g, "tokenizer.ggml.bos_token_id", -1),
            eos = gguf_get_int(g, "tokenizer.ggml.eos_token_id", -1);
    t->bos_id = bos >= 0 && bos < n ? (int)bos : -1;
    t->eos_id = eos >= 0 && eos < n ? (int)eos : -1;
    t->add_bos = (int)gguf_get_int(g, "tokenizer.ggml.add_bos_token", !byte_level) && t->bos_id >= 0;
    int64_t unk = gguf_get_int(g, "tokenizer.ggml.unknown_token_id", -1);
    if (unk >= 0 && unk < n && !byte_level) t->unk_id = (int)unk;
    return t;
}
