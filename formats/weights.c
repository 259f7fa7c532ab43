#include "weights.h"

#include <cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Element count; the loaders have checked that it and its byte size fit in 64 bits. */
static int64_t numel(const WeightTensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) ensure(!__builtin_mul_overflow(n, t->shape[d], &n));
    return n;
}

static WeightTensor *add_tensor(WeightSet *w) {
    w->tensors = xrealloc(w->tensors, sizeof(WeightTensor) * (size_t)(w->n_tensors + 1));
    WeightTensor *t = &w->tensors[w->n_tensors++];
    memset(t, 0, sizeof *t);
    return t;
}

static MappedFile *add_file(WeightSet *w, const char *path) {
    w->files = xrealloc(w->files, sizeof(MappedFile) * (size_t)(w->n_files + 1));
    MappedFile *mf = &w->files[w->n_files++];
    mapped_file_open(mf, path);
    return mf;
}

static int by_data(const void *a, const void *b) {
    const WeightTensor *x = *(const WeightTensor *const *)a, *y = *(const WeightTensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

/* Tensors first..n_tensors-1 of one file must not share bytes: a tensor whose data overlaps another's is a
 * corrupt (or crafted) header, never two views of one array. Empty tensors take no bytes. */
static void check_no_overlap(const WeightSet *w, int first, const char *path) {
    int n = 0;
    const WeightTensor **sorted = xmalloc(sizeof *sorted * (size_t)(w->n_tensors - first + 1));
    for (int i = first; i < w->n_tensors; i++)
        if (w->tensors[i].nbytes > 0) sorted[n++] = &w->tensors[i];
    qsort(sorted, (size_t)n, sizeof *sorted, by_data);
    for (int i = 1; i < n; i++)
        if (sorted[i]->data < sorted[i - 1]->data + sorted[i - 1]->nbytes)
            fatal("%s: tensors '%s' and '%s' overlap in the file (corrupt header)", path, sorted[i - 1]->name,
                  sorted[i]->name);
    free(sorted);
}

/* safetensors: u64 header length, JSON header {name: {dtype, shape, data_offsets}}, then the data. */
static void parse_safetensors(WeightSet *w, MappedFile *mf) {
    const char *path = mf->path;
    if (mf->size < 8) fatal("%s: truncated safetensors file (%zu bytes, no header)", path, mf->size);
    uint64_t header_len = 0;
    for (int i = 0; i < 8; i++) header_len |= (uint64_t)mf->data[i] << (8 * i);
    if (header_len > mf->size - 8)
        fatal("%s: safetensors header length %llu runs past the end of the file (%zu bytes): truncated or corrupt",
              path, (unsigned long long)header_len, mf->size);
    cJSON *header = cJSON_ParseWithLength((const char *)mf->data + 8, (size_t)header_len);
    if (!header || !cJSON_IsObject(header)) fatal("%s: safetensors header is not valid JSON", path);
    const uint8_t *data = mf->data + 8 + header_len;
    int first = w->n_tensors; /* this file's tensors are first..n_tensors-1 */
    size_t data_size = mf->size - 8 - (size_t)header_len;
    for (cJSON *e = header->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        cJSON *dtype = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        cJSON *offsets = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dtype) || !cJSON_IsArray(shape) || !cJSON_IsArray(offsets) ||
            cJSON_GetArraySize(offsets) != 2)
            fatal("%s: tensor '%s' has a malformed header entry (needs dtype, shape, data_offsets)", path, e->string);
        WeightTensor *t = add_tensor(w);
        t->name = xstrdup(e->string);
        t->file = mf->path;
        size_t elem;
        if (strcmp(dtype->valuestring, "F32") == 0) t->dtype = DT_F32, elem = 4;
        else if (strcmp(dtype->valuestring, "F16") == 0) t->dtype = DT_F16, elem = 2;
        else if (strcmp(dtype->valuestring, "BF16") == 0) t->dtype = DT_BF16, elem = 2;
        else if (strcmp(dtype->valuestring, "I32") == 0) t->dtype = DT_I32, elem = 4;
        else if (strcmp(dtype->valuestring, "I64") == 0) t->dtype = DT_I64, elem = 8;
        else
            fatal("%s: tensor '%s' has unsupported dtype %s (supported: F32, F16, BF16, I32, I64)", path, t->name,
                  dtype->valuestring);
        t->n_dims = cJSON_GetArraySize(shape);
        if (t->n_dims > 4) fatal("%s: tensor '%s' has %d dimensions (at most 4 supported)", path, t->name, t->n_dims);
        int d = 0;
        uint64_t n = 1, need;
        for (cJSON *s = shape->child; s; s = s->next, d++) {
            if (!cJSON_IsNumber(s) || !(s->valuedouble >= 0 && s->valuedouble <= 0x1p53) ||
                s->valuedouble != (double)(int64_t)s->valuedouble)
                fatal("%s: tensor '%s' has an invalid shape (dimension %d is not a whole number of elements)", path,
                      t->name, d);
            t->shape[d] = (int64_t)s->valuedouble;
            if (__builtin_mul_overflow(n, (uint64_t)t->shape[d], &n))
                fatal("%s: tensor '%s' has a shape whose element count overflows 64 bits", path, t->name);
        }
        if (n > (uint64_t)INT64_MAX || __builtin_mul_overflow(n, (uint64_t)elem, &need))
            fatal("%s: tensor '%s' has %llu elements: its byte size overflows 64 bits", path, t->name,
                  (unsigned long long)n);
        cJSON *b = cJSON_GetArrayItem(offsets, 0), *e1 = cJSON_GetArrayItem(offsets, 1);
        double begin = b->valuedouble, end = e1->valuedouble;
        if (!cJSON_IsNumber(b) || !cJSON_IsNumber(e1) || begin != (double)(int64_t)begin ||
            end != (double)(int64_t)end || !(begin >= 0 && end >= begin && end <= (double)data_size))
            fatal("%s: tensor '%s' data offsets [%.0f, %.0f) lie outside the data section (%zu bytes): truncated or "
                  "corrupt",
                  path, t->name, begin, end, data_size);
        t->data = data + (size_t)begin;
        t->nbytes = (size_t)(end - begin);
        if ((uint64_t)t->nbytes != need)
            fatal("%s: tensor '%s' holds %zu bytes but its shape and dtype %s need %llu", path, t->name, t->nbytes,
                  dtype->valuestring, (unsigned long long)need);
    }
    check_no_overlap(w, first, path);
    cJSON_Delete(header);
}

void weights_open_safetensors_file(WeightSet *w, const char *path) {
    memset(w, 0, sizeof *w);
    w->source = xstrdup(path);
    parse_safetensors(w, add_file(w, path));
}

void weights_open_safetensors_dir(WeightSet *w, const char *dir) {
    memset(w, 0, sizeof *w);
    w->source = xstrdup(dir);
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    if (file_exists(single)) {
        parse_safetensors(w, add_file(w, single));
    } else if (file_exists(index)) {
        char *text = read_whole_file(index, NULL);
        if (!text) fatal("%s: cannot read: %s", index, strerror(errno));
        cJSON *root = cJSON_Parse(text);
        free(text);
        cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
        if (!cJSON_IsObject(map)) fatal("%s: malformed index (expected an object with \"weight_map\")", index);
        for (cJSON *e = map->child; e; e = e->next) {
            if (!cJSON_IsString(e) || strchr(e->valuestring, '/'))
                fatal("%s: weight_map entry '%s' is not a file name", index, e->string);
            char *shard = path_join(dir, e->valuestring);
            int seen = 0;
            for (int i = 0; i < w->n_files; i++) seen |= strcmp(w->files[i].path, shard) == 0;
            if (!seen) {
                if (!file_exists(shard)) fatal("%s: shard %s listed in the index does not exist", index, shard);
                parse_safetensors(w, add_file(w, shard));
            }
            free(shard);
        }
        for (cJSON *e = map->child; e; e = e->next)
            if (!weights_find(w, e->string))
                fatal("%s: tensor '%s' is not in its shard %s", index, e->string, e->valuestring);
        cJSON_Delete(root);
    } else {
        fatal("%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    free(single);
    free(index);
}

/* GGUF llama tensor names → Hugging Face names. With norms around each block (Gemma: post_ffw_norm tensors), ffn_norm
 * is the MLP's input norm, pre_feedforward_layernorm, and post_attention_norm the attention block's output norm; in
 * Llama's layout ffn_norm is post_attention_layernorm. Fused (Phi-3): attn_qkv is qkv_proj, and ffn_up holds gate and
 * up, gate_up_proj. */
static char *hf_name_from_gguf(const char *name, int sandwich_norms, int fused) {
    static const char *global[][2] = {{"token_embd.weight", "model.embed_tokens.weight"},
                                      {"output_norm.weight", "model.norm.weight"},
                                      {"output.weight", "lm_head.weight"}};
    static const char *layer[][2] = {
        {"attn_norm.weight", "input_layernorm.weight"},    {"ffn_norm.weight", "post_attention_layernorm.weight"},
        {"attn_q.weight", "self_attn.q_proj.weight"},      {"attn_k.weight", "self_attn.k_proj.weight"},
        {"attn_v.weight", "self_attn.v_proj.weight"},      {"attn_output.weight", "self_attn.o_proj.weight"},
        {"attn_q.bias", "self_attn.q_proj.bias"},          {"attn_k.bias", "self_attn.k_proj.bias"},
        {"attn_v.bias", "self_attn.v_proj.bias"},          {"attn_q_norm.weight", "self_attn.q_norm.weight"},
        {"attn_k_norm.weight", "self_attn.k_norm.weight"}, {"ffn_gate.weight", "mlp.gate_proj.weight"},
        {"ffn_up.weight", "mlp.up_proj.weight"},           {"ffn_down.weight", "mlp.down_proj.weight"}};
    static const char *sandwich[][2] = {{"ffn_norm.weight", "pre_feedforward_layernorm.weight"},
                                        {"post_attention_norm.weight", "post_attention_layernorm.weight"},
                                        {"post_ffw_norm.weight", "post_feedforward_layernorm.weight"}};
    static const char *fused_names[][2] = {{"attn_qkv.weight", "self_attn.qkv_proj.weight"},
                                           {"ffn_up.weight", "mlp.gate_up_proj.weight"}};
    for (size_t i = 0; i < sizeof global / sizeof global[0]; i++)
        if (strcmp(name, global[i][0]) == 0) return xstrdup(global[i][1]);
    int block, consumed = 0;
    if (sscanf(name, "blk.%d.%n", &block, &consumed) == 1 && consumed > 0) {
        const char *hf = NULL;
        for (size_t i = 0; sandwich_norms && i < sizeof sandwich / sizeof sandwich[0]; i++)
            if (strcmp(name + consumed, sandwich[i][0]) == 0) hf = sandwich[i][1];
        for (size_t i = 0; fused && !hf && i < sizeof fused_names / sizeof fused_names[0]; i++)
            if (strcmp(name + consumed, fused_names[i][0]) == 0) hf = fused_names[i][1];
        for (size_t i = 0; !hf && i < sizeof layer / sizeof layer[0]; i++)
            if (strcmp(name + consumed, layer[i][0]) == 0) hf = layer[i][1];
        if (hf) {
            char buf[256];
            snprintf(buf, sizeof buf, "model.layers.%d.%s", block, hf);
            return xstrdup(buf);
        }
    }
    return xstrdup(name); /* unknown tensors keep their GGUF name (e.g. rope_freqs) */
}

void weights_open_gguf(WeightSet *w, const char *path, int n_heads, int n_kv_heads) {
    memset(w, 0, sizeof *w);
    w->source = xstrdup(path);
    w->gguf = xmalloc(sizeof(GGUFFile));
    gguf_open(w->gguf, path);
    int sandwich_norms = gguf_find_tensor(w->gguf, "blk.0.post_ffw_norm.weight") != NULL;
    const char *arch = gguf_get_str(w->gguf, "general.architecture");
    int fused = arch && strcmp(arch, "phi3") == 0;
    for (uint64_t i = 0; i < w->gguf->n_tensors; i++) {
        const GGUFTensor *g = &w->gguf->tensors[i];
        WeightTensor *t = add_tensor(w);
        t->name = hf_name_from_gguf(g->name, sandwich_norms, fused);
        t->dtype = (DType)ggml_dtype(g->type); /* gguf_open accepts only types it has */
        t->n_dims = g->n_dims;
        for (int d = 0; d < g->n_dims; d++) t->shape[d] = g->ne[g->n_dims - 1 - d];
        t->data = g->data;
        t->nbytes = g->nbytes;
        t->file = w->gguf->mf.path;
        /* llama.cpp's converter interleaves the rotary halves of each Q/K head; undo it on load */
        if (strstr(t->name, "self_attn.q_proj.weight")) t->unpermute_heads = n_heads;
        if (strstr(t->name, "self_attn.k_proj.weight")) t->unpermute_heads = n_kv_heads;
    }
}

void weights_close(WeightSet *w) {
    for (int i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    if (w->gguf) {
        gguf_close(w->gguf);
        free(w->gguf);
    } else {
        for (int i = 0; i < w->n_files; i++) mapped_file_close(&w->files[i]);
    }
    free(w->files);
    free(w->source);
    memset(w, 0, sizeof *w);
}

const WeightTensor *weights_find(const WeightSet *w, const char *name) {
    for (int i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return &w->tensors[i];
    return NULL;
}

static void shape_string(char *buf, size_t n, int n_dims, const int64_t *shape) {
    size_t at = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < n_dims && at < n; d++)
        at += (size_t)snprintf(buf + at, n - at, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (at < n) snprintf(buf + at, n - at, "]");
}

/* Rows of head h are stored as (i, j) pairs interleaved; HF keeps the two rotary halves apart. Rows of any element
 * type move whole (row_bytes each). */
static void unpermute_rows(uint8_t *x, int64_t rows, size_t row_bytes, int heads, const char *file, const char *name) {
    if (rows % heads != 0 || (rows / heads) % 2 != 0)
        fatal("%s: tensor '%s' has %lld rows, not divisible into %d rotary heads", file, name, (long long)rows, heads);
    int64_t head_dim = rows / heads, half = head_dim / 2;
    uint8_t *tmp = xmalloc(row_bytes * (size_t)head_dim);
    for (int h = 0; h < heads; h++) {
        uint8_t *base = x + row_bytes * (size_t)(h * head_dim);
        for (int64_t i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(tmp + row_bytes * (size_t)(j * half + i), base + row_bytes * (size_t)(2 * i + j), row_bytes);
        memcpy(base, tmp, row_bytes * (size_t)head_dim);
    }
    free(tmp);
}

/* a 7B model's loading is mostly these loops (and the page faults of the mapped file they take) */
#define PARALLEL_GROUPS (1 << 11)

void weights_dequantize(DType type, const uint8_t *src, float *out, int64_t n) {
    size_t block_bytes;
    int block = dtype_block(type, &block_bytes);
    if (type == DT_F32) {
        memcpy(out, src, sizeof(float) * (size_t)n);
    } else if (block == 1 && (type == DT_F16 || type == DT_BF16)) { /* any length */
#pragma omp parallel for if (n > DTYPE_GROUP * PARALLEL_GROUPS)
        for (int64_t i = 0; i < n; i++)
            out[i] =
                type == DT_F16 ? dtype_half(src + 2 * i) : bf16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
    } else if (block > 0 && dtype_is_packed_weight(type) && n % block == 0) {
#pragma omp parallel for if (n > DTYPE_GROUP * PARALLEL_GROUPS)
        for (int64_t g = 0; g < n / DTYPE_GROUP; g++) dtype_dequantize_group(type, src, g, out + DTYPE_GROUP * g);
    } else {
        fatal("cannot dequantise %lld elements of type %s", (long long)n, dtype_name(type));
    }
}

/* `name` with its shape checked against the config's; NULL when absent and not required */
static const WeightTensor *find_checked(const WeightSet *w, const char *name, int n_dims, const int64_t *shape,
                                        int required) {
    const WeightTensor *t = weights_find(w, name);
    if (!t) {
        if (required) fatal("%s: tensor '%s' is missing", w->source, name);
        return NULL;
    }
    int match = t->n_dims == n_dims;
    for (int d = 0; match && d < n_dims; d++) match = t->shape[d] == shape[d];
    if (!match) {
        char want[96], got[96];
        shape_string(want, sizeof want, n_dims, shape);
        shape_string(got, sizeof got, t->n_dims, t->shape);
        fatal("%s: tensor '%s' has shape %s but the model config needs %s", t->file, name, got, want);
    }
    return t;
}

float *weights_load_f32(const WeightSet *w, const char *name, int n_dims, const int64_t *shape, int required) {
    const WeightTensor *t = find_checked(w, name, n_dims, shape, required);
    if (!t) return NULL;
    int64_t n = numel(t);
    float *out = xmalloc(sizeof(float) * (size_t)(n ? n : 1));
    if (t->dtype == DT_I32 || t->dtype == DT_I64)
        fatal("%s: tensor '%s' is %s where a float tensor is needed", t->file, name, dtype_name(t->dtype));
    weights_dequantize(t->dtype, t->data, out, n);
    if (t->unpermute_heads > 0 && n_dims == 2)
        unpermute_rows((uint8_t *)out, shape[0], sizeof(float) * (size_t)shape[1], t->unpermute_heads, t->file, name);
    return out;
}

void *weights_load_packed(const WeightSet *w, const char *name, int n_dims, const int64_t *shape, int required,
                          DType *type) {
    const WeightTensor *t = find_checked(w, name, n_dims, shape, required);
    if (!t) return NULL;
    if (n_dims != 2 || !dtype_is_packed_weight(t->dtype) || dtype_row_bytes(t->dtype, shape[1]) == 0)
        fatal("%s: tensor '%s' (%s) cannot be kept packed: a weight matrix in a 16-bit or block format is needed",
              t->file, name, dtype_name(t->dtype));
    size_t row_bytes = dtype_row_bytes(t->dtype, shape[1]);
    if (row_bytes * (size_t)shape[0] != t->nbytes)
        fatal("%s: tensor '%s' holds %zu bytes, not the %zu of its shape", t->file, name, t->nbytes,
              row_bytes * (size_t)shape[0]);
    uint8_t *out = xmalloc(t->nbytes);
    memcpy(out, t->data, t->nbytes);
    if (t->unpermute_heads > 0) unpermute_rows(out, shape[0], row_bytes, t->unpermute_heads, t->file, name);
    *type = t->dtype;
    return out;
}

uint16_t *weights_load_bf16(const WeightSet *w, const char *name, int n_dims, const int64_t *shape, int required) {
    const WeightTensor *t = find_checked(w, name, n_dims, shape, required);
    if (!t) return NULL;
    int64_t n = numel(t);
    uint16_t *out = xmalloc(sizeof(uint16_t) * (size_t)(n ? n : 1));
    if (t->dtype == DT_BF16 && t->unpermute_heads == 0) { /* stored as wanted: the bytes as they are */
        memcpy(out, t->data, sizeof(uint16_t) * (size_t)n);
        return out;
    }
    float *wide = weights_load_f32(w, name, n_dims, shape, required);
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; i++) out[i] = float_to_bf16(wide[i]);
    free(wide);
    return out;
}

int32_t *weights_load_i32(const WeightSet *w, const char *name, int64_t *n) {
    const WeightTensor *t = weights_find(w, name);
    if (!t) return NULL;
    if (t->dtype != DT_I32 && t->dtype != DT_I64)
        fatal("%s: tensor '%s' should be I32 or I64, is %s", t->file, name, dtype_name(t->dtype));
    *n = numel(t);
    int32_t *out = xmalloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
    if (t->dtype == DT_I32) {
        memcpy(out, t->data, t->nbytes);
        return out;
    }
    for (int64_t i = 0; i < *n; i++) {
        int64_t v;
        memcpy(&v, t->data + 8 * i, 8);
        if (v < INT32_MIN || v > INT32_MAX)
            fatal("%s: tensor '%s' holds %lld, out of int32 range", t->file, name, (long long)v);
        out[i] = (int32_t)v;
    }
    return out;
}
