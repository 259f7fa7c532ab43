/* Loading a Hugging Face tokenizer.json (and the tokenizer_config.json beside it). */
#include "tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *json_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_bool(const cJSON *obj, const char *key, int fallback) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : fallback;
}

/* A normaliser, a pre-tokenizer, a decoder or a post-processor: {"type": ..., ...}, NULL for null. */
static const char *json_type(const cJSON *obj, const char *path, const char *what) {
    if (!obj || cJSON_IsNull(obj)) return NULL;
    const char *type = json_str(obj, "type");
    if (!cJSON_IsObject(obj) || !type) fatal("%s: %s has no \"type\"", path, what);
    return type;
}

static void parse_normalizer(Tokenizer *t, const cJSON *n, const char *path) {
    const char *type = json_type(n, path, "normalizer");
    if (!type) return;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(n, "normalizers")) { parse_normalizer(t, c, path); }
        return;
    }
    NormStep ns = {0};
    if (strcmp(type, "NFC") == 0) {
        ns = (NormStep){NORM_NFC, NULL, NULL, 0, 0};
    } else if (strcmp(type, "Prepend") == 0) {
        const char *a = json_str(n, "prepend");
        if (!a) fatal("%s: Prepend normalizer has no \"prepend\"", path);
        ns = (NormStep){NORM_PREPEND, xstrdup(a), NULL, 0, 0};
    } else if (strcmp(type, "Replace") == 0) {
        const char *a = json_str(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "String"), *b = json_str(n, "content");
        if (!a || !b || !*a) fatal("%s: Replace normalizer needs a String pattern and a content", path);
        ns = (NormStep){NORM_REPLACE, xstrdup(a), xstrdup(b), 0, 0};
    } else if (strcmp(type, "Strip") == 0) {
        ns = (NormStep){NORM_STRIP, NULL, NULL, json_bool(n, "strip_left", 1), json_bool(n, "strip_right", 1)};
    } else {
        fatal("%s: unsupported normalizer '%s'", path, type);
    }
    tok_add_norm(t, ns);
}

static void parse_pre_tokenizer(Tokenizer *t, const cJSON *p, const char *path) {
    const char *type = json_type(p, path, "pre_tokenizer");
    if (!type) return;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) { parse_pre_tokenizer(t, c, path); }
    } else if (strcmp(type, "ByteLevel") == 0) {
        t->kind = TOKENIZER_BYTE_BPE;
        if (json_bool(p, "add_prefix_space", 0)) tok_add_step(t, STEP_PREFIX_SPACE);
        if (json_bool(p, "use_regex", 1)) tok_add_split(t, GPT2_PATTERN, 0, SPLIT_ISOLATED, 0, path);
    } else if (strcmp(type, "Split") == 0) {
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                            "Contiguous"};
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = json_str(pat, "Regex"), *lit = json_str(pat, "String"), *beh = json_str(p, "behavior");
        int b = -1;
        for (int i = 0; i < 5 && beh; i++)
            if (strcmp(beh, names[i]) == 0) b = i;
        if ((!re && !lit) || b < 0) fatal("%s: Split pre-tokenizer needs a pattern and a known behavior", path);
        tok_add_split(t, re ? re : lit, re == NULL, (SplitBehavior)b, json_bool(p, "invert", 0), path);
    } else if (strcmp(type, "Digits") == 0) {
        tok_add_split(t, json_bool(p, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", 0, SPLIT_ISOLATED, 0, path);
    } else if (strcmp(type, "Whitespace") == 0) {
        tok_add_split(t, "\\w+|[^\\w\\s]+", 0, SPLIT_REMOVED, 1, path);
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        tok_add_split(t, "\\s+", 0, SPLIT_REMOVED, 0, path);
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *rep = json_str(p, "replacement"), *scheme = json_str(p, "prepend_scheme");
        if (rep && strcmp(rep, SPACE_MARK) != 0) fatal("%s: Metaspace replacement other than U+2581", path);
        PreStep *s = tok_add_step(t, STEP_METASPACE);
        s->prepend = scheme ? (strcmp(scheme, "always") == 0  ? 1
                               : strcmp(scheme, "first") == 0 ? 2
                                                              : 0)
                            : json_bool(p, "add_prefix_space", 1);
        s->split = json_bool(p, "split", 1);
    } else {
        fatal("%s: unsupported pre_tokenizer '%s'", path, type);
    }
}

/* Decoders only tell how a piece maps back to text: byte-level, and whether a leading space goes. */
static void parse_decoder(Tokenizer *t, const cJSON *d, const char *path) {
    const char *type = json_type(d, path, "decoder");
    if (!type) return;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(d, "decoders")) { parse_decoder(t, c, path); }
    } else if (strcmp(type, "ByteLevel") == 0) {
        t->kind = TOKENIZER_BYTE_BPE;
    } else if (strcmp(type, "Strip") == 0) {
        const char *c = json_str(d, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(d, "start");
        if (c && strcmp(c, " ") == 0 && cJSON_IsNumber(start) && start->valueint > 0) t->strip_decoded_space = 1;
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *scheme = json_str(d, "prepend_scheme");
        t->strip_decoded_space = scheme ? strcmp(scheme, "never") != 0 : json_bool(d, "add_prefix_space", 1);
    }
}

/* The token a TemplateProcessing puts before the text ("<s> $A"), NULL when none. */
static const char *post_processor_bos(const cJSON *p) {
    const char *type = json_str(p, "type");
    if (!type) return NULL;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(p, "processors")) {
            const char *b = post_processor_bos(c);
            if (b) return b;
        }
        return NULL;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return NULL;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    const cJSON *first = cJSON_IsArray(single) ? cJSON_GetArrayItem(single, 0) : NULL;
    return json_str(cJSON_GetObjectItemCaseSensitive(first, "SpecialToken"), "id");
}

/* bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    return cJSON_IsString(v) ? v->valuestring : json_str(v, "content");
}

static int first_present(const Tokenizer *t, const char *const *names) {
    for (; *names; names++) {
        int id = tok_vocab_find(t, *names, strlen(*names));
        if (id >= 0) return id;
    }
    return -1;
}

/* BOS, EOS and add_bos_token from the tokenizer_config.json beside the tokenizer file, if there is one. */
void tok_config_bos_eos(Tokenizer *t, const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path)) : xstrdup(".");
    char *cfg_path = path_join(dir, "tokenizer_config.json");
    size_t size;
    char *text = read_whole_file(cfg_path, &size);
    cJSON *cfg = text ? cJSON_ParseWithLength(text, size) : NULL;
    if (text && !cfg) fatal("%s: not valid JSON", cfg_path);
    if (cfg) {
        const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
        if (bos) t->bos_id = tok_vocab_find(t, bos, strlen(bos));
        if (eos) t->eos_id = tok_vocab_find(t, eos, strlen(eos));
        t->add_bos = json_bool(cfg, "add_bos_token", t->add_bos) && t->bos_id >= 0;
        cJSON_Delete(cfg);
    }
    free(text);
    free(cfg_path);
    free(dir);
}

/* BOS/EOS: the post-processor's leading token and the usual names, unless tokenizer_config.json says. */
static void find_bos_eos(Tokenizer *t, const cJSON *root, const char *path) {
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", NULL};
    static const char *const eos_names[] = {"</s>",          "<|eot_id|>", "<|im_end|>", "<|end_of_text|>",
                                            "<|endoftext|>", "<eos>",      NULL};
    const char *pp_bos = post_processor_bos(cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
    t->bos_id = pp_bos ? tok_vocab_find(t, pp_bos, strlen(pp_bos)) : first_present(t, bos_names);
    t->add_bos = pp_bos && t->bos_id >= 0;
    t->eos_id = first_present(t, eos_names);
    tok_config_bos_eos(t, path);
}

static int json_id(const cJSON *v, const char *path) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= (1 << 30) ||
        v->valuedouble != (int)v->valuedouble)
        fatal("%s: token id %g is not a valid id", path, cJSON_IsNumber(v) ? v->valuedouble : -1.0);
    return v->valueint;
}

Tokenizer *tokenizer_load_json(const char *path) {
    size_t size;
    char *text = read_whole_file(path, &size);
    if (!text) fatal("%s: cannot read tokenizer (%s)", path, strerror(errno));
    cJSON *root = cJSON_ParseWithLength(text, size);
    if (!root) fatal("%s: not valid JSON (near byte %zu)", path, (size_t)(cJSON_GetErrorPtr() - text));
    free(text);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) fatal("%s: no \"model\" object (not a tokenizer.json?)", path);
    const char *type = json_str(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!type && cJSON_IsArray(merges)) type = "BPE";
    if (!type || strcmp(type, "BPE") != 0)
        fatal("%s: unsupported tokenizer model type '%s' (BPE is supported)", path, type ? type : "(none)");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) fatal("%s: BPE model without vocab and merges", path);
    const char *prefix = json_str(model, "continuing_subword_prefix"), *suffix = json_str(model, "end_of_word_suffix");
    if ((prefix && *prefix) || (suffix && *suffix))
        fatal("%s: BPE with subword prefixes/suffixes is not supported", path);

    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *v;
    int n_vocab = 0;
    cJSON_ArrayForEach(v, vocab) {
        if (json_id(v, path) + 1 > n_vocab) n_vocab = v->valueint + 1;
    }
    cJSON_ArrayForEach(v, added) {
        int id = json_id(cJSON_GetObjectItemCaseSensitive(v, "id"), path);
        if (!json_str(v, "content")) fatal("%s: added token %d has no content", path, id);
        if (id + 1 > n_vocab) n_vocab = id + 1;
    }
    int n_entries = cJSON_GetArraySize(vocab) + cJSON_GetArraySize(added);
    if (n_vocab == 0) fatal("%s: empty vocab", path);
    if (n_vocab > 2 * n_entries + 1024) fatal("%s: token ids up to %d for %d tokens", path, n_vocab - 1, n_entries);
    Tokenizer *t = tok_new(n_vocab);
    t->kind = TOKENIZER_SPM_BPE;
    cJSON_ArrayForEach(v, vocab) { tok_set_piece(t, v->valueint, v->string, strlen(v->string)); }
    cJSON_ArrayForEach(v, added) {
        int id = cJSON_GetObjectItemCaseSensitive(v, "id")->valueint;
        const char *content = json_str(v, "content");
        tok_set_piece(t, id, content, strlen(content));
        int special = json_bool(v, "special", 0);
        /* tokenizers' own files always say "normalized"; without it, tokenizers.AddedToken's default */
        tok_add_added(t, id, special, json_bool(v, "lstrip", 0), json_bool(v, "rstrip", 0),
                      json_bool(v, "single_word", 0))
            ->normalized = json_bool(v, "normalized", !special);
    }
    t->byte_fallback = json_bool(model, "byte_fallback", 0);
    t->fuse_unk = json_bool(model, "fuse_unk", 0);
    t->ignore_merges = json_bool(model, "ignore_merges", 0);
    parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path);
    parse_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path);
    parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), path);
    tok_finish(t);
    const char *unk = json_str(model, "unk_token");
    if (unk && (t->unk_id = tok_vocab_find(t, unk, strlen(unk))) < 0)
        fatal("%s: unk_token '%s' is not in the vocab", path, unk);

    tok_merges_init(&t->merges, (size_t)cJSON_GetArraySize(merges));
    int rank = 0;
    cJSON_ArrayForEach(v, merges) {
        const char *a = NULL, *b = NULL;
        char *joined = NULL;
        if (cJSON_IsString(v)) {
            const char *sp = strchr(v->valuestring, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                joined = xstrdup(v->valuestring);
                joined[sp - v->valuestring] = '\0';
                a = joined;
                b = joined + (sp - v->valuestring) + 1;
            }
        } else if (cJSON_GetArraySize(v) == 2 && cJSON_IsString(v->child) && cJSON_IsString(v->child->next)) {
            a = v->child->valuestring;
            b = v->child->next->valuestring;
        }
        if (!a || !b) fatal("%s: merge %d is not a pair of tokens", path, rank);
        size_t la = strlen(a), lb = strlen(b);
        char *ab = xmalloc(la + lb + 1);
        memcpy(ab, a, la);
        memcpy(ab + la, b, lb + 1);
        int ia = tok_vocab_find(t, a, la), ib = tok_vocab_find(t, b, lb), id = tok_vocab_find(t, ab, la + lb);
        if (ia < 0 || ib < 0 || id < 0)
            fatal("%s: merge %d ('%s' '%s') uses a token not in the vocab", path, rank, a, b);
        tok_merges_add(&t->merges, ia, ib, rank++, id);
        free(ab);
        free(joined);
    }
    find_bos_eos(t, root, path);
    cJSON_Delete(root);
    return t;
}
