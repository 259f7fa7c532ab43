#include "gguf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */

/* Bounds-checked cursor over the mapped file: every read is validated so a truncated or corrupt header
 * produces a message, never an out-of-bounds access. */
typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *path;
} Cursor;

static void need(Cursor *c, size_t n, const char *what) {
    if (n > c->size - c->pos)
        fatal("%s: truncated GGUF header (reading %s at byte %zu, file is %zu bytes)", c->path, what, c->pos, c->size);
}

static uint64_t read_uint(Cursor *c, int bytes, const char *what) {
    need(c, (size_t)bytes, what);
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)c->p[c->pos + i] << (8 * i);
    c->pos += (size_t)bytes;
    return v;
}

static char *read_string(Cursor *c, size_t *len_out, const char *what) {
    uint64_t len = read_uint(c, 8, what);
    if (len > c->size - c->pos)
        fatal("%s: %s length %llu runs past the end of the file", c->path, what, (unsigned long long)len);
    char *s = xmalloc((size_t)len + 1);
    memcpy(s, c->p + c->pos, (size_t)len);
    s[len] = '\0';
    c->pos += (size_t)len;
    if (len_out) *len_out = (size_t)len;
    return s;
}

static int scalar_size(GGUFType t) {
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL:
        return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
        return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
        return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static int64_t sign_extend(uint64_t v, int bytes) {
    int shift = 64 - 8 * bytes;
    return (int64_t)(v << shift) >> shift;
}

static void read_scalar(Cursor *c, GGUFKV *kv, GGUFType t) {
    int n = scalar_size(t);
    uint64_t raw = read_uint(c, n, kv->key);
    if (t == GGUF_TYPE_FLOAT32) {
        uint32_t b = (uint32_t)raw;
        float f;
        memcpy(&f, &b, 4);
        kv->f = f;
    } else if (t == GGUF_TYPE_FLOAT64) {
        memcpy(&kv->f, &raw, 8);
    } else if (t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64) {
        kv->i = sign_extend(raw, n);
        kv->f = (double)kv->i;
    } else {
        kv->i = (int64_t)raw;
        kv->f = (double)raw;
    }
}

static void read_kv(Cursor *c, GGUFKV *kv) {
    kv->key = read_string(c, NULL, "metadata key");
    kv->type = (GGUFType)read_uint(c, 4, kv->key);
    if (kv->type == GGUF_TYPE_STRING) {
        kv->s = read_string(c, NULL, kv->key);
    } else if (kv->type == GGUF_TYPE_ARRAY) {
        kv->arr_type = (GGUFType)read_uint(c, 4, kv->key);
        kv->arr_len = read_uint(c, 8, kv->key);
        if (kv->arr_type == GGUF_TYPE_STRING) {
            /* each string needs at least its 8-byte length, which bounds a corrupt count */
            if (kv->arr_len > (c->size - c->pos) / 8)
                fatal("%s: metadata array '%s' claims %llu strings, more than the file holds", c->path, kv->key,
                      (unsigned long long)kv->arr_len);
            kv->arr_str = xmalloc(sizeof(char *) * (size_t)(kv->arr_len ? kv->arr_len : 1));
            kv->arr_str_len = xmalloc(sizeof(size_t) * (size_t)(kv->arr_len ? kv->arr_len : 1));
            for (uint64_t i = 0; i < kv->arr_len; i++) kv->arr_str[i] = read_string(c, &kv->arr_str_len[i], kv->key);
        } else {
            int es = scalar_size(kv->arr_type);
            if (es == 0)
                fatal("%s: metadata array '%s' has unsupported element type %d", c->path, kv->key, kv->arr_type);
            if (kv->arr_len > (c->size - c->pos) / (uint64_t)es)
                fatal("%s: metadata array '%s' (%llu elements) runs past the end of the file", c->path, kv->key,
                      (unsigned long long)kv->arr_len);
            size_t bytes = (size_t)kv->arr_len * (size_t)es;
            kv->arr_data = xmalloc(bytes ? bytes : 1);
            memcpy(kv->arr_data, c->p + c->pos, bytes);
            c->pos += bytes;
        }
    } else if (scalar_size(kv->type) > 0) {
        read_scalar(c, kv, kv->type);
    } else {
        fatal("%s: metadata '%s' has unknown value type %d", c->path, kv->key, kv->type);
    }
}

int ggml_dtype(GGMLType t) {
    switch (t) {
    case GGML_F32:
        return DT_F32;
    case GGML_F16:
        return DT_F16;
    case GGML_BF16:
        return DT_BF16;
    case GGML_Q8_0:
        return DT_Q8_0;
    case GGML_Q4_0:
        return DT_Q4_0;
    case GGML_Q4_1:
        return DT_Q4_1;
    case GGML_Q5_0:
        return DT_Q5_0;
    case GGML_Q5_1:
        return DT_Q5_1;
    case GGML_Q4_K:
        return DT_Q4_K;
    case GGML_Q5_K:
        return DT_Q5_K;
    case GGML_Q6_K:
        return DT_Q6_K;
    default:
        return -1;
    }
}

const char *ggml_type_name(GGMLType type) {
    int t = ggml_dtype(type);
    return t < 0 ? "unsupported" : dtype_name((DType)t);
}

static int by_offset(const void *a, const void *b) {
    const GGUFTensor *x = *(const GGUFTensor *const *)a, *y = *(const GGUFTensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* No two tensors may share bytes (a corrupt or crafted header), nor two have one name. */
static void check_tensors_apart(const GGUFFile *g) {
    uint64_t n = g->n_tensors;
    const GGUFTensor **sorted = xmalloc(sizeof *sorted * (size_t)(n ? n : 1));
    for (uint64_t i = 0; i < n; i++) sorted[i] = &g->tensors[i];
    qsort(sorted, (size_t)n, sizeof *sorted, by_offset);
    for (uint64_t i = 1; i < n; i++)
        if (sorted[i]->offset < sorted[i - 1]->offset + sorted[i - 1]->nbytes)
            fatal("%s: tensors '%s' and '%s' overlap in the file (corrupt header)", g->mf.path, sorted[i - 1]->name,
                  sorted[i]->name);
    free(sorted);
}

/* An integer metadata entry, if present, within lo..hi; fatal naming the file and the key otherwise. */
static void check_int(const GGUFFile *g, const char *key, int64_t lo, int64_t hi, const char *why) {
    const GGUFKV *kv = gguf_find(g, key);
    if (!kv) return;
    int64_t v = gguf_get_int(g, key, 0);
    if (kv->type == GGUF_TYPE_UINT64 && v < 0) v = INT64_MAX; /* above 2^63 */
    if (v < lo || v > hi)
        fatal("%s: metadata '%s' is %lld, outside %lld..%lld (%s): file corrupt", g->mf.path, key, (long long)v,
              (long long)lo, (long long)hi, why);
}

/* The model's counts and the tokenizer's special ids, checked once here where the file is named, before anything
 * is sized from them: an absurd block count must not become an allocation, an EOS id past the vocabulary must not
 * become a token that is silently never produced. */
static void check_model_metadata(const GGUFFile *g) {
    const char *arch = gguf_get_str(g, "general.architecture");
    const GGUFTensor *embd = gguf_find_tensor(g, "token_embd.weight");
    if (arch) {
        char key[160];
        const int64_t size_max = (int64_t)1 << 20;
        static const char *sizes[] = {"embedding_length", "feed_forward_length", "attention.key_length",
                                      "attention.value_length"};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            snprintf(key, sizeof key, "%s.%s", arch, sizes[i]);
            check_int(g, key, 1, size_max, "a model dimension");
        }
        snprintf(key, sizeof key, "%s.block_count", arch);
        check_int(g, key, 1, (int64_t)g->n_tensors, "each block has tensors, the file has fewer");
        snprintf(key, sizeof key, "%s.embedding_length", arch);
        int64_t hidden = gguf_get_int(g, key, size_max);
        snprintf(key, sizeof key, "%s.attention.head_count", arch);
        check_int(g, key, 1, hidden, "heads, at most one per hidden unit");
        int64_t heads = gguf_get_int(g, key, hidden);
        snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
        check_int(g, key, 1, heads, "key/value heads, at most the heads");
        snprintf(key, sizeof key, "%s.context_length", arch);
        check_int(g, key, 1, (int64_t)1 << 26, "positions");
        snprintf(key, sizeof key, "%s.vocab_size", arch);
        check_int(g, key, 1, (int64_t)1 << 26, "tokens");
    }
    const GGUFKV *tokens = gguf_find(g, "tokenizer.ggml.tokens");
    int64_t vocab = tokens && tokens->type == GGUF_TYPE_ARRAY ? (int64_t)tokens->arr_len : embd ? embd->ne[1] : -1;
    if (vocab < 0) return;
    static const char *ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                "tokenizer.ggml.unknown_token_id"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        check_int(g, ids[i], i == 2 ? -1 : 0, vocab - 1, "a token id must be in the vocabulary");
}

void gguf_open(GGUFFile *g, const char *path) {
    memset(g, 0, sizeof *g);
    mapped_file_open(&g->mf, path);
    Cursor c = {g->mf.data, g->mf.size, 0, path};
    if (g->mf.size < 4 || (uint32_t)read_uint(&c, 4, "magic") != GGUF_MAGIC)
        fatal("%s: not a GGUF file (bad magic)", path);
    g->version = (uint32_t)read_uint(&c, 4, "version");
    if (g->version < 2 || g->version > 3) fatal("%s: unsupported GGUF version %u (need 2 or 3)", path, g->version);
    g->n_tensors = read_uint(&c, 8, "tensor count");
    g->n_kv = read_uint(&c, 8, "metadata count");
    /* each entry needs well over 8 bytes, so counts beyond size/8 are corrupt */
    if (g->n_tensors > g->mf.size / 8 || g->n_kv > g->mf.size / 8)
        fatal("%s: corrupt GGUF header (%llu tensors, %llu metadata entries in a %zu-byte file)", path,
              (unsigned long long)g->n_tensors, (unsigned long long)g->n_kv, g->mf.size);
    g->kv = xcalloc((size_t)g->n_kv, sizeof(GGUFKV));
    for (uint64_t i = 0; i < g->n_kv; i++) read_kv(&c, &g->kv[i]);
    g->alignment = 32;
    const GGUFKV *al = gguf_find(g, "general.alignment");
    if (al) {
        if (al->i <= 0 || (al->i & (al->i - 1)) != 0)
            fatal("%s: general.alignment %lld is not a power of two", path, (long long)al->i);
        g->alignment = (uint64_t)al->i;
    }
    g->tensors = xcalloc((size_t)g->n_tensors, sizeof(GGUFTensor));
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        GGUFTensor *t = &g->tensors[i];
        t->name = read_string(&c, NULL, "tensor name");
        t->n_dims = (int)read_uint(&c, 4, t->name);
        if (t->n_dims < 1 || t->n_dims > 4)
            fatal("%s: tensor '%s' has %d dimensions (1..4 supported)", path, t->name, t->n_dims);
        uint64_t n = 1;
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (int d = 0; d < t->n_dims; d++) {
            uint64_t ne = read_uint(&c, 8, t->name);
            if (ne == 0 || ne > ((uint64_t)1 << 40) || __builtin_mul_overflow(n, ne, &n) || n > ((uint64_t)1 << 48))
                fatal("%s: tensor '%s' has an invalid dimension %llu (or more than 2^48 elements)", path, t->name,
                      (unsigned long long)ne);
            t->ne[d] = (int64_t)ne;
        }
        t->type = (GGMLType)read_uint(&c, 4, t->name);
        t->offset = read_uint(&c, 8, t->name);
        size_t block_bytes = 0;
        int dtype = ggml_dtype(t->type), block = dtype < 0 ? 0 : dtype_block((DType)dtype, &block_bytes);
        if (!block)
            fatal("%s: tensor '%s' has unsupported type %d (supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K "
                  "Q6_K)",
                  path, t->name, t->type);
        if (t->ne[0] % block != 0)
            fatal("%s: tensor '%s' row length %lld is not a multiple of the %s block size %d", path, t->name,
                  (long long)t->ne[0], ggml_type_name(t->type), block);
        uint64_t bytes;
        if (__builtin_mul_overflow(n / (uint64_t)block, (uint64_t)block_bytes, &bytes) || bytes > SIZE_MAX)
            fatal("%s: tensor '%s' byte size overflows", path, t->name);
        t->nbytes = (size_t)bytes;
    }
    uint64_t data_start;
    if (__builtin_add_overflow(c.pos, g->alignment - 1, &data_start))
        fatal("%s: corrupt GGUF header (alignment %llu)", path, (unsigned long long)g->alignment);
    data_start = data_start / g->alignment * g->alignment;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        GGUFTensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            fatal("%s: tensor '%s' offset %llu is not aligned to %llu", path, t->name, (unsigned long long)t->offset,
                  (unsigned long long)g->alignment);
        if (data_start > g->mf.size || t->offset > g->mf.size - data_start ||
            t->nbytes > g->mf.size - data_start - t->offset)
            fatal("%s: tensor '%s' data (offset %llu, %zu bytes) lies beyond the end of the file (%zu bytes): file "
                  "truncated or corrupt",
                  path, t->name, (unsigned long long)(data_start + t->offset), t->nbytes, g->mf.size);
        t->data = g->mf.data + data_start + t->offset;
    }
    check_tensors_apart(g);
    check_model_metadata(g);
}

void gguf_close(GGUFFile *g) {
    for (uint64_t i = 0; i < g->n_kv; i++) {
        GGUFKV *kv = &g->kv[i];
        free(kv->key);
        free(kv->s);
        if (kv->arr_str)
            for (uint64_t j = 0; j < kv->arr_len; j++) free(kv->arr_str[j]);
        free(kv->arr_str);
        free(kv->arr_str_len);
        free(kv->arr_data);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    mapped_file_close(&g->mf);
}

const GGUFKV *gguf_find(const GGUFFile *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

int64_t gguf_get_int(const GGUFFile *g, const char *key, int64_t fallback) {
    const GGUFKV *kv = gguf_find(g, key);
    if (!kv) return fallback;
    if (kv->type == GGUF_TYPE_STRING || kv->type == GGUF_TYPE_ARRAY || kv->type == GGUF_TYPE_FLOAT32 ||
        kv->type == GGUF_TYPE_FLOAT64)
        fatal("%s: metadata '%s' should be an integer", g->mf.path, key);
    return kv->i;
}

double gguf_get_float(const GGUFFile *g, const char *key, double fallback) {
    const GGUFKV *kv = gguf_find(g, key);
    if (!kv) return fallback;
    if (kv->type == GGUF_TYPE_STRING || kv->type == GGUF_TYPE_ARRAY)
        fatal("%s: metadata '%s' should be a number", g->mf.path, key);
    return kv->f;
}

const char *gguf_get_str(const GGUFFile *g, const char *key) {
    const GGUFKV *kv = gguf_find(g, key);
    if (!kv) return NULL;
    if (kv->type != GGUF_TYPE_STRING) fatal("%s: metadata '%s' should be a string", g->mf.path, key);
    return kv->s;
}

const GGUFTensor *gguf_find_tensor(const GGUFFile *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}
