#include "llama.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A pass's host layout [LAYOUT_ROWS, T] (layout_new): for token t, row LAYOUT_POS its position, LAYOUT_TOKENS its id,
 * and its keys: rows [LAYOUT_BEGIN or, in a windowed layer, LAYOUT_BEGIN_WINDOWED, LAYOUT_END). */
enum { LAYOUT_POS, LAYOUT_BEGIN, LAYOUT_END, LAYOUT_TOKENS, LAYOUT_BEGIN_WINDOWED, LAYOUT_ROWS };

/* Loads tensors stacked along their first dimension (rows[i] each, of d1 columns) into one backend buffer, checking
 * each shape against the config: vectors (d1 == 0) as fp32, matrices in the model's weight_dtype. NULL when the first
 * is absent and not required; once it is found, the others are required. */
static void *load_stacked(const Model *m, const char *const *names, const int64_t *rows, int n, int64_t d1,
                          int required) {
    int n_dims = d1 > 0 ? 2 : 1, narrow = n_dims == 2 && m->weight_dtype == DT_BF16;
    size_t elem = narrow ? sizeof(uint16_t) : sizeof(float), cols = (size_t)(d1 > 0 ? d1 : 1), total = 0;
    for (int i = 0; i < n; i++) total += (size_t)rows[i] * cols;
    void *dev = NULL;
    for (int i = 0, row = 0; i < n; row += (int)rows[i], i++) {
        int64_t shape[2] = {rows[i], d1};
        size_t bytes = (size_t)rows[i] * cols * elem;
        void *host = narrow ? (void *)weights_load_bf16(&m->source, names[i], n_dims, shape, required || dev)
                            : (void *)weights_load_f32(&m->source, names[i], n_dims, shape, required || dev);
        if (!host) return NULL;
        if (!dev) dev = m->be->alloc(total * elem);
        m->be->upload((char *)dev + (size_t)row * cols * elem, host, bytes);
        free(host);
    }
    return dev;
}

/* An RMSNorm weight [n] (required), as the norm multiplies by it: Gemma's Hugging Face files hold w for 1 + w, added
 * here in fp32 as Gemma3RMSNorm does (1.0 + weight.float()) */
static float *load_norm(const Model *m, const char *name, int64_t n) {
    float *host = weights_load_f32(&m->source, name, 1, (int64_t[]){n}, 1);
    if (m->config.norm_adds_one)
        for (int64_t i = 0; i < n; i++) host[i] = 1.0f + host[i];
    float *dev = m->be->alloc(sizeof(float) * (size_t)n);
    m->be->upload(dev, host, sizeof(float) * (size_t)n);
    free(host);
    return dev;
}

/* The stored format of a tensor when native storage keeps it (a matrix whose rows are whole blocks of a format
 * matmul_q takes); DT_F32 when it is converted */
static DType native_type(const Model *m, const char *name, int64_t d1) {
    const WeightTensor *t = weights_find(&m->source, name);
    if (!m->native || !t || !dtype_is_packed_weight(t->dtype) || dtype_row_bytes(t->dtype, d1) == 0) return DT_F32;
    return t->dtype;
}

/* A matrix of the tensors `names` stacked (rows[i] each, of d1 columns; all required): with native storage in their
 * formats (one part where they share one, else a part each), else (or where one is not kept) in weight_dtype. */
static Matrix load_matrix(const Model *m, const char *const *names, const int64_t *rows, int n, int64_t d1) {
    Matrix w = {0};
    DType types[MATRIX_PARTS];
    int kept = 1, same = 1;
    if (n > MATRIX_PARTS) fatal("load_matrix: %d tensors stacked (at most %d)", n, MATRIX_PARTS);
    for (int i = 0; i < n; i++) {
        types[i] = native_type(m, names[i], d1);
        kept &= types[i] != DT_F32;
        same &= types[i] == types[0];
    }
    if (!kept) { /* converted, one buffer */
        int64_t total = 0;
        for (int i = 0; i < n; i++) total += rows[i];
        w.n_parts = 1;
        w.part[0].type = m->weight_dtype;
        w.part[0].rows = (int)total;
        w.part[0].data = load_stacked(m, names, rows, n, d1, 1);
        return w;
    }
    size_t row_bytes = dtype_row_bytes(types[0], d1);
    for (int i = 0, row = 0; i < n; row += (int)rows[i], i++) {
        int64_t shape[2] = {rows[i], d1};
        DType type;
        void *host = weights_load_packed(&m->source, names[i], 2, shape, 1, &type);
        size_t bytes = dtype_row_bytes(type, d1) * (size_t)rows[i];
        if (i == 0 || !same) { /* a new part */
            int64_t part_rows = rows[i];
            for (int j = i + 1; same && j < n; j++) part_rows += rows[j];
            w.part[w.n_parts].type = type;
            w.part[w.n_parts].rows = (int)part_rows;
            w.part[w.n_parts].data = m->be->alloc(dtype_row_bytes(type, d1) * (size_t)part_rows);
            w.n_parts++;
            row = 0;
        }
        m->be->upload((char *)w.part[w.n_parts - 1].data + row_bytes * (size_t)row, host, bytes);
        free(host);
    }
    return w;
}

static Matrix load_matrix1(const Model *m, const char *name, int64_t d0, int64_t d1) {
    return load_matrix(m, &name, &d0, 1, d1);
}

void matrix_free(const Backend *be, Matrix *w) {
    for (int p = 0; p < w->n_parts; p++) be->free(w->part[p].data);
    memset(w, 0, sizeof *w);
}

void model_linear(const Model *m, float *out, const float *in, const Matrix *w, const float *bias, int T, int IC,
                  int OC) {
    DType type = w->part[0].type;
    if (w->n_parts == 1 && type == DT_F32) {
        m->be->matmul(out, in, w->part[0].data, bias, T, IC, OC);
    } else if (w->n_parts == 1 && type == DT_BF16 && m->weight_dtype == DT_BF16) {
        m->be->matmul_bf16(out, in, w->part[0].data, bias, T, IC, OC);
    } else { /* native: each part a band of the output's columns */
        for (int p = 0, row = 0; p < w->n_parts; row += w->part[p].rows, p++)
            m->be->matmul_q(out + row, OC, in, w->part[p].data, w->part[p].type, bias ? bias + row : NULL, T, IC,
                            w->part[p].rows);
    }
}

/* out[i,:] = table[rows[i],:] in fp32, whatever the table's storage */
static void embed_rows(const Model *m, const Matrix *table, float *out, const int32_t *rows, int n) {
    DType type = table->part[0].type;
    int H = m->config.hidden_size;
    if (type == DT_F32) m->be->embedding(out, rows, table->part[0].data, n, H);
    else if (type == DT_BF16 && m->weight_dtype == DT_BF16) m->be->embedding_bf16(out, rows, table->part[0].data, n, H);
    else m->be->embedding_q(out, rows, table->part[0].data, type, n, H);
}

void model_logits(const Model *m, float *out, const float *hidden, int T) {
    const ModelConfig *c = &m->config;
    model_linear(m, out, hidden, &m->lm_head, NULL, T, c->hidden_size, c->vocab_size);
    if (c->final_softcap > 0) m->be->softcap(out, c->final_softcap, (size_t)T * c->vocab_size);
}

void model_lm_head_rows(const Model *m, float *out, const int32_t *rows, int n) {
    embed_rows(m, &m->lm_head, out, rows, n);
}

Matrix model_lm_head_subset(const Model *m, const int32_t *rows, int n) {
    DType type = m->lm_head.part[0].type;
    size_t row_bytes = dtype_row_bytes(type, m->config.hidden_size);
    char *out = m->be->alloc(row_bytes * (size_t)n);
    for (int i = 0, run; i < n; i += run) { /* one copy per run of consecutive rows */
        for (run = 1; i + run < n && rows[i + run] == rows[i] + run;) run++;
        m->be->copy(out + row_bytes * (size_t)i, (const char *)m->lm_head.part[0].data + row_bytes * (size_t)rows[i],
                    row_bytes * (size_t)run);
    }
    return (Matrix){.n_parts = 1, .part = {{type, n, out}}};
}

/* The rotary frequencies of a base theta as transformers computes them in fp32 (_compute_default_rope_parameters) */
static float *rope_default_frequencies(const ModelConfig *c, float theta) {
    float *f = xmalloc(sizeof(float) * (size_t)(c->head_dim / 2));
    for (int j = 0; j < c->head_dim / 2; j++) f[j] = rope_inv_freq(j, c->head_dim, theta);
    return f;
}

/* theta ** (2j / head_dim) in fp32: the denominator of rope_inv_freq, which yarn and longrope scale */
static float rope_power(const ModelConfig *c, int j) {
    return powf(c->rope_theta, (float)(2 * j) / (float)c->head_dim);
}

/* YaRN: the frequencies with fewer than beta_fast rotations over the original context are divided by factor, those
 * with more than beta_slow kept, blended between (transformers' _compute_yarn_parameters, in its order of ops). */
static void rope_yarn(const ModelConfig *c, float *f) {
    double dim = c->head_dim, base = c->rope_theta, ends[2];
    float beta[2] = {c->rope_beta_fast, c->rope_beta_slow};
    for (int i = 0; i < 2; i++) /* find_correction_dim: the dimension where beta[i] rotations fit */
        ends[i] = dim * log(c->rope_original_max_position / (beta[i] * 2 * M_PI)) / (2 * log(base));
    double low = c->rope_truncate ? floor(ends[0]) : ends[0], high = c->rope_truncate ? ceil(ends[1]) : ends[1];
    low = low > 0 ? low : 0, high = high < dim - 1 ? high : dim - 1;
    if (low == high) high += 0.001; /* transformers' guard against a zero-width ramp */
    float factor = (float)c->rope_factor;
    for (int j = 0; j < c->head_dim / 2; j++) {
        float pos = rope_power(c, j), ramp = ((float)j - (float)low) / (float)(high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float extrapolation = 1.0f - ramp; /* the share of the unscaled frequency */
        f[j] = 1.0f / (factor * pos) * (1.0f - extrapolation) + 1.0f / pos * extrapolation;
    }
}

/* The rotary frequencies as transformers computes them in fp32 (the default ones and the scaled variants: linear,
 * llama3, yarn, longrope within its original context, dynamic within max_position), and llama.cpp's rope_freqs
 * tensor (a GGUF's llama3 factors: each frequency divided by its factor). */
static float *rope_frequencies(const ModelConfig *c, const WeightSet *w) {
    int half = c->head_dim / 2;
    float theta = c->rope_theta;
    if (c->rope_scaling == ROPE_DYNAMIC) { /* the NTK base at max_position (at init: seq_len = max_position) */
        double dim = c->head_dim, factor = c->rope_factor, len = c->max_position;
        theta = (float)(c->rope_theta * pow(factor * len / len - (factor - 1), dim / (dim - 2)));
    }
    float *f = rope_default_frequencies(c, theta);
    if (c->rope_scaling == ROPE_LINEAR)
        for (int j = 0; j < half; j++) f[j] = f[j] / (float)c->rope_factor;
    if (c->rope_scaling == ROPE_LLAMA3) {
        float factor = (float)c->rope_factor, low = c->rope_low_freq_factor, high = c->rope_high_freq_factor;
        float old_len = (float)c->rope_original_max_position;
        float low_wavelen = old_len / low, high_wavelen = old_len / high, two_pi = (float)(2.0 * M_PI);
        for (int j = 0; j < half; j++) {
            float wavelen = (1.0f / f[j]) * two_pi; /* torch's scalar / tensor: a reciprocal, then a product */
            float scaled = wavelen > low_wavelen ? f[j] / factor : f[j];
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = ((1.0f / wavelen) * old_len - low) / (high - low);
                scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
            }
            f[j] = scaled;
        }
    }
    if (c->rope_scaling == ROPE_YARN) rope_yarn(c, f);
    if (c->rope_scaling == ROPE_LONGROPE)
        for (int j = 0; j < half; j++) f[j] = 1.0f / (c->rope_short_factor[j] * rope_power(c, j));
    const WeightTensor *factors = weights_find(w, "rope_freqs.weight");
    if (factors) {
        float *div = weights_load_f32(w, "rope_freqs.weight", 1, (int64_t[]){half}, 1);
        for (int j = 0; j < half; j++) f[j] = f[j] / div[j];
        free(div);
    }
    return f;
}

int model_part_first(const Model *m) { return m->part.layer_begin == 0; }
int model_part_last(const Model *m) { return m->part.layer_end == m->config.n_layers; }

void model_load_part(Model *m, const char *path, const Backend *be, DType weight_dtype, int native, ModelPart part) {
    memset(m, 0, sizeof *m);
    m->be = be;
    if (weight_dtype != DT_F32 && weight_dtype != DT_BF16) fatal("model_load: weights are stored as fp32 or bf16");
    m->weight_dtype = weight_dtype;
    m->native = native;
    ModelConfig *c = &m->config;
    config_load(c, path); /* a .gguf file or a Hugging Face directory, else fatal */
    if (part.layer_end == 0) part.layer_end = c->n_layers;
    if (part.layer_begin < 0 || part.layer_begin >= part.layer_end || part.layer_end > c->n_layers)
        fatal("%s: layers %d..%d of a model of %d", path, part.layer_begin, part.layer_end - 1, c->n_layers);
    m->part = part;
    if (model_path_is_gguf(path)) {
        /* only llama.cpp's llama converter permutes Q/K rows for its rotary layout */
        int permuted = strcmp(c->architecture, "llama") == 0;
        weights_open_gguf(&m->source, path, permuted ? c->n_heads : 0, permuted ? c->n_kv_heads : 0);
    } else {
        weights_open_safetensors_dir(&m->source, path);
    }
    int H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    if (model_part_first(m) || (model_part_last(m) && c->tie_word_embeddings))
        m->embed = load_matrix1(m, "model.embed_tokens.weight", V, H);
    m->layers = xcalloc((size_t)c->n_layers, sizeof(LayerWeights));
    for (int l = part.layer_begin; l < part.layer_end; l++) {
        LayerWeights *w = &m->layers[l];
        char names[5][160];
        const char *suffixes[5] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
                                   "mlp.up_proj"};
        const char *qkv[3] = {names[0], names[1], names[2]}, *gate_up[2] = {names[3], names[4]};
        int64_t qkv_rows[3] = {q_dim, kv_dim, kv_dim}, gate_up_rows[2] = {I, I};
        for (int i = 0; i < 5; i++) snprintf(names[i], sizeof names[i], "model.layers.%d.%s.weight", l, suffixes[i]);
        if (c->fused_weights) { /* stored fused, in the order the model stacks them */
            snprintf(names[0], sizeof names[0], "model.layers.%d.self_attn.qkv_proj.weight", l);
            w->wqkv = load_matrix1(m, names[0], q_dim + 2 * kv_dim, H);
            snprintf(names[0], sizeof names[0], "model.layers.%d.mlp.gate_up_proj.weight", l);
            w->w_gate_up = load_matrix1(m, names[0], 2 * (int64_t)I, H);
        } else {
            w->wqkv = load_matrix(m, qkv, qkv_rows, 3, H);
            w->w_gate_up = load_matrix(m, gate_up, gate_up_rows, 2, H);
        }
        for (int i = 0; i < 3; i++) snprintf(names[i], sizeof names[i], "model.layers.%d.%s.bias", l, suffixes[i]);
        w->bqkv = load_stacked(m, qkv, qkv_rows, 3, 0, c->attention_bias);
        char name[160];
#define LAYER_NAME(suffix) snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix)
        LAYER_NAME("input_layernorm.weight"), w->attn_norm = load_norm(m, name, H);
        LAYER_NAME("self_attn.o_proj.weight"), w->wo = load_matrix1(m, name, H, q_dim);
        LAYER_NAME("mlp.down_proj.weight"), w->w_down = load_matrix1(m, name, H, I);
        if (c->sandwich_norms) { /* Gemma: post_attention_layernorm norms the attention block's output */
            LAYER_NAME("pre_feedforward_layernorm.weight"), w->mlp_norm = load_norm(m, name, H);
            LAYER_NAME("post_attention_layernorm.weight"), w->post_attn_norm = load_norm(m, name, H);
            LAYER_NAME("post_feedforward_layernorm.weight"), w->post_mlp_norm = load_norm(m, name, H);
        } else {
            LAYER_NAME("post_attention_layernorm.weight"), w->mlp_norm = load_norm(m, name, H);
        }
        if (c->qk_norm) {
            LAYER_NAME("self_attn.q_norm.weight"), w->q_norm = load_norm(m, name, c->head_dim);
            LAYER_NAME("self_attn.k_norm.weight"), w->k_norm = load_norm(m, name, c->head_dim);
        }
#undef LAYER_NAME
    }
    if (model_part_last(m)) {
        m->final_norm = load_norm(m, "model.norm.weight", H);
        m->lm_head = c->tie_word_embeddings ? m->embed : load_matrix1(m, "lm_head.weight", V, H);
    }
    m->rope_inv_freq = rope_frequencies(c, &m->source);
    if (c->rope_theta_sliding > 0) m->rope_inv_freq_sliding = rope_default_frequencies(c, c->rope_theta_sliding);
}

void model_load(Model *m, const char *path, const Backend *be, DType weight_dtype) {
    model_load_part(m, path, be, weight_dtype, 0, (ModelPart){0, 0});
}

void model_load_native(Model *m, const char *path, const Backend *be) {
    model_load_part(m, path, be, DT_F32, 1, (ModelPart){0, 0});
}

double model_native_matrix_bytes(const char *path) {
    WeightSet w;
    if (model_path_is_gguf(path)) weights_open_gguf(&w, path, 0, 0);
    else weights_open_safetensors_dir(&w, path);
    double bytes = 0;
    for (int i = 0; i < w.n_tensors; i++) {
        const WeightTensor *t = &w.tensors[i];
        if (t->n_dims != 2) continue;
        int kept = dtype_is_packed_weight(t->dtype) && dtype_row_bytes(t->dtype, t->shape[1]) > 0;
        bytes += kept ? (double)t->nbytes : 4.0 * (double)t->shape[0] * (double)t->shape[1];
    }
    weights_close(&w);
    return bytes;
}

void model_free(Model *m) {
    const Backend *be = m->be;
    for (int l = 0; l < m->config.n_layers; l++) {
        LayerWeights *w = &m->layers[l];
        float *vectors[] = {w->attn_norm, w->bqkv,           w->mlp_norm,     w->q_norm,
                            w->k_norm,    w->post_attn_norm, w->post_mlp_norm};
        for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++)
            if (vectors[i]) be->free(vectors[i]);
        matrix_free(be, &w->wqkv), matrix_free(be, &w->wo), matrix_free(be, &w->w_gate_up), matrix_free(be, &w->w_down);
    }
    free(m->layers);
    if (m->lm_head.part[0].data != m->embed.part[0].data) matrix_free(be, &m->lm_head);
    matrix_free(be, &m->embed);
    if (m->final_norm) be->free(m->final_norm);
    weights_close(&m->source);
    free(m->rope_inv_freq);
    free(m->rope_inv_freq_sliding);
    memset(m, 0, sizeof *m);
}

size_t model_param_count(const Model *m) {
    const ModelConfig *c = &m->config;
    size_t H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, V = (size_t)c->vocab_size;
    size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    size_t layer = 2 * H + H * q + 2 * H * kv + q * H + 3 * H * I + (c->attention_bias ? q + 2 * kv : 0) +
                   (c->sandwich_norms ? 2 * H : 0) + (c->qk_norm ? 2 * (size_t)c->head_dim : 0);
    return V * H * (c->tie_word_embeddings ? 1 : 2) + H + (size_t)c->n_layers * layer;
}

double model_forward_flops(const ModelConfig *c, int n_tokens, const int32_t *seq_lens, int n_seqs) {
    double H = c->hidden_size, q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double layer = H * (q + 2 * kv) + q * H + 3 * H * c->intermediate_size, attention = 0;
    for (int i = 0; i < n_seqs; i++) attention += 2.0 * c->n_layers * q * (double)seq_lens[i] * seq_lens[i];
    return 2.0 * c->n_layers * layer * n_tokens + attention;
}

double model_peak_flops(const Model *m) { return m->weight_dtype == DT_BF16 ? m->be->peak_bf16_flops : 0; }

size_t model_act_bytes(const Model *m) { return m->weight_dtype == DT_BF16 ? sizeof(uint16_t) : sizeof(float); }

void forward_state_init(ForwardState *s, const Model *m, int max_tokens) {
    const ModelConfig *c = &m->config;
    const Backend *be = m->be;
    size_t T = (size_t)max_tokens, H = (size_t)c->hidden_size, e = model_act_bytes(m);
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    memset(s, 0, sizeof *s);
    s->max_tokens = max_tokens;
    s->act_bytes = e;
    size_t I = (size_t)c->intermediate_size, widest = H > I ? H : I;
    if (q_dim > widest) widest = q_dim;
    s->x = be->alloc(sizeof(float) * T * H);
    if (m->weight_dtype == DT_BF16) {
        s->act16 = be->alloc(sizeof(uint16_t) * T * widest);
    } else {
        s->att = be->alloc(sizeof(float) * T * q_dim);
        s->gated = be->alloc(sizeof(float) * T * I);
    }
    if (m->weight_dtype != DT_BF16 || c->sandwich_norms) {
        s->xn = be->alloc(sizeof(float) * T * H);
        s->proj = be->alloc(sizeof(float) * T * H);
    }
    s->qkv = be->alloc(e * T * (q_dim + 2 * kv_dim));
    s->q = be->alloc(e * T * q_dim);
    s->k = be->alloc(e * T * kv_dim);
    s->v = be->alloc(e * T * kv_dim);
    s->gate_up = be->alloc(e * T * 2 * I);
    s->layout = be->alloc(sizeof(int32_t) * LAYOUT_ROWS * T);
}

void forward_state_free(ForwardState *s, const Model *m) {
    void *bufs[] = {s->x, s->xn, s->act16, s->proj, s->gated, s->qkv, s->q, s->att, s->k, s->v, s->gate_up, s->layout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) m->be->free(bufs[i]);
    memset(s, 0, sizeof *s);
}

static int32_t *layout_new(const int32_t *tokens, int T) {
    int32_t *layout = xmalloc(sizeof(int32_t) * LAYOUT_ROWS * (size_t)(T > 0 ? T : 1));
    memcpy(layout + LAYOUT_TOKENS * (size_t)T, tokens, sizeof(int32_t) * (size_t)T);
    return layout;
}

/* Token t of a pass of T sits at position pos of a sequence whose position 0 is at key row `first`, and sees key rows
 * up to key_end: from the sequence's start, or in a windowed layer from its window's first position (as transformers
 * masks it). */
static void layout_set(const ModelConfig *c, int32_t *layout, int T, int t, int32_t first, int32_t pos,
                       int32_t key_end) {
    int32_t from = c->sliding_window > 0 ? pos - c->sliding_window + 1 : 0;
    layout[LAYOUT_POS * T + t] = pos;
    layout[LAYOUT_BEGIN * T + t] = first;
    layout[LAYOUT_BEGIN_WINDOWED * T + t] = first + (from > 0 ? from : 0);
    layout[LAYOUT_END * T + t] = key_end;
}

/* Positions restart in every sequence; each token sees keys from its sequence's start (or its window's) up to itself.
 */
static void packed_layout(const ModelConfig *c, const PackedBatch *b, int32_t *layout) {
    int t = 0, T = b->n_tokens;
    for (int i = 0; i < b->n_seqs; i++) {
        if (b->seq_lens[i] <= 0) fatal("packed batch: sequence %d has length %d", i, b->seq_lens[i]);
        for (int p = 0; p < b->seq_lens[i]; p++, t++) {
            if (t >= T) fatal("packed batch: sequence lengths add up to more than %d tokens", T);
            layout_set(c, layout, T, t, t - p, p, t + 1);
        }
    }
    if (t != T) fatal("packed batch: sequence lengths add up to %d, not %d tokens", t, T);
}

static void check_tokens(const int32_t *tokens, int T, int vocab) {
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= vocab)
            fatal("token id %d at position %d is outside the vocabulary (0..%d)", tokens[t], t, vocab - 1);
}

/* longrope and dynamic rope: past rope_max_position transformers rotates new tokens with other frequencies while the
 * cached keys keep theirs (model/config.c's finish_rope), which this code does not reproduce */
static void check_rope_positions(const ModelConfig *c, const int32_t *pos, int T) {
    for (int t = 0; t < T && c->rope_max_position > 0; t++)
        if (pos[t] >= c->rope_max_position)
            fatal("position %d: rope scaling %s is computed within the first %d positions only", pos[t],
                  c->rope_scaling == ROPE_LONGROPE ? "longrope (its short factors)" : "dynamic (the default base)",
                  c->rope_max_position);
}

/* A GEMM input (the normed input, attention's output, the SwiGLU output): fp32 activations, or with bf16 weights the
 * same values rounded to bf16 by the op that made them. */
typedef struct {
    const float *f32;
    const uint16_t *bf16;
} GemmInput;

/* out = in @ weight^T + bias in the activations' precision: the q/k/v and gate/up rows (bf16 weights: a bf16 GEMM
 * output) */
static void project(const Model *m, void *out, GemmInput in, const Matrix *weight, const float *bias, int T, int IC,
                    int OC) {
    if (in.bf16) m->be->matmul_bf16_out(out, in.bf16, weight->part[0].data, bias, T, IC, OC);
    else model_linear(m, out, in.f32, weight, bias, T, IC, OC);
}

/* x += in @ weight^T, a residual branch (o_proj, down): with bf16 weights the GEMM adds into x itself. With an output
 * norm (sandwich_norms) x += rmsnorm(in @ weight^T), the product and its norm in fp32. */
static void linear_residual(const Model *m, ForwardState *s, GemmInput in, const Matrix *weight, const float *out_norm,
                            int T, int IC) {
    const ModelConfig *c = &m->config;
    int H = c->hidden_size;
    if (in.bf16 && !out_norm) {
        m->be->matmul_bf16_in(s->x, in.bf16, weight->part[0].data, NULL, T, IC, H, 1);
        return;
    }
    if (in.bf16) m->be->matmul_bf16_in(s->proj, in.bf16, weight->part[0].data, NULL, T, IC, H, 0);
    else model_linear(m, s->proj, in.f32, weight, NULL, T, IC, H);
    const float *branch = s->proj;
    if (out_norm) {
        m->be->rmsnorm(s->xn, s->proj, out_norm, T, H, c->rms_norm_eps);
        branch = s->xn;
    }
    m->be->residual_add(s->x, branch, (size_t)T * H);
}

/* q, k, v from the q/k/v GEMM's rows, q and k rotated: k and v straight into their rows (the cache's, in decoding) */
/* Qwen3: each q and k head of the q/k/v rows normed (in their element type) before the rotation */
static void qk_norm(const Model *m, ForwardState *s, const LayerWeights *w, int T) {
    const ModelConfig *c = &m->config;
    if (m->weight_dtype == DT_BF16)
        m->be->qk_norm_bf16(s->qkv, w->q_norm, w->k_norm, T, c->n_heads, c->n_kv_heads, c->head_dim, c->rms_norm_eps);
    else m->be->qk_norm(s->qkv, w->q_norm, w->k_norm, T, c->n_heads, c->n_kv_heads, c->head_dim, c->rms_norm_eps);
}

static void rope_qkv(const Model *m, ForwardState *s, int layer, void *k, void *v, const int32_t *pos, int T) {
    const ModelConfig *c = &m->config;
    const float *freq =
        c->layer_sliding[layer] && m->rope_inv_freq_sliding ? m->rope_inv_freq_sliding : m->rope_inv_freq;
    if (s->act16) m->be->rope_qkv_bf16(s->q, k, v, s->qkv, pos, T, c->n_heads, c->n_kv_heads, c->head_dim, freq);
    else m->be->rope_qkv(s->q, k, v, s->qkv, pos, T, c->n_heads, c->n_kv_heads, c->head_dim, freq);
}

/* attention on rope'd q (in s->q) over keys and values k_all, v_all: o_proj's input (bf16 weights: written in
 * bf16 by the op, over the normed input the q/k/v GEMMs have read) */
static GemmInput attention(const Model *m, ForwardState *s, const void *k_all, const void *v_all,
                           const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T) {
    const ModelConfig *c = &m->config;
    AttentionScoring sc = {c->attention_scale, c->attn_softcap};
    if (s->act16) {
        m->be->attention_bf16(s->act16, s->q, k_all, v_all, key_begin, key_end, mask, row0, T, c->n_heads,
                              c->n_kv_heads, c->head_dim, sc);
        return (GemmInput){NULL, s->act16};
    }
    m->be->attention(s->att, s->q, k_all, v_all, key_begin, key_end, mask, row0, T, c->n_heads, c->n_kv_heads,
                     c->head_dim, sc);
    return (GemmInput){s->att, NULL};
}

static GemmInput normed(const Model *m, ForwardState *s, const float *weight, int T) {
    const ModelConfig *c = &m->config;
    if (s->act16) {
        m->be->rmsnorm_bf16(s->act16, s->x, weight, T, c->hidden_size, c->rms_norm_eps);
        return (GemmInput){NULL, s->act16};
    }
    m->be->rmsnorm(s->xn, s->x, weight, T, c->hidden_size, c->rms_norm_eps);
    return (GemmInput){s->xn, NULL};
}

/* act(gate) * up: the down projection's input */
static GemmInput gated(const Model *m, ForwardState *s, int T) {
    int I = m->config.intermediate_size;
    if (s->act16) {
        m->be->glu_bf16(s->act16, s->gate_up, T, I, m->config.mlp_activation);
        return (GemmInput){NULL, s->act16};
    }
    m->be->glu(s->gated, s->gate_up, T, I, m->config.mlp_activation);
    return (GemmInput){s->gated, NULL};
}

/* Where a pass's new keys and values go when not at rows row0.. of the cache: new row t moves to row dst[t] before
 * attention reads them (host arrays; a layer's values are the block after its keys, block_bytes on). */
typedef struct {
    const int32_t *src, *dst;
    size_t block_bytes, row_bytes;
} KVScatter;

/* A pass after its layout's upload: the arguments of forward_queue */
typedef struct {
    const Model *m;
    ForwardState *s;
    int T, row0;
    void *const *k_rows, *const *v_rows;
    const KVScatter *scatter;
    const uint8_t *mask;
    float *hidden_out, *logits_out;
} ForwardPass;

/* The pass's ops, queued on the backend; they read the layout from the backend's copy */
static void forward_queue(void *pass) {
    const ForwardPass *p = pass;
    const Model *m = p->m;
    ForwardState *s = p->s;
    int T = p->T;
    const ModelConfig *c = &m->config;
    const Backend *be = m->be;
    int H = c->hidden_size, I = c->intermediate_size;
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    const int32_t *pos = s->layout + LAYOUT_POS * T, *key_end = s->layout + LAYOUT_END * T,
                  *tokens = s->layout + LAYOUT_TOKENS * T;
    if (model_part_first(m)) { /* else s->x holds the previous stage's residual stream */
        embed_rows(m, &m->embed, s->x, tokens, T);
        if (c->embed_scale != 0) be->scale(s->x, c->embed_scale, (size_t)T * H);
    }
    size_t new_rows = (size_t)p->row0 * kv_dim * s->act_bytes; /* where the T new keys and values go */
    for (int l = m->part.layer_begin; l < m->part.layer_end; l++) {
        const LayerWeights *w = &m->layers[l];
        void *k_all = p->k_rows ? p->k_rows[l] : s->k, *v_all = p->v_rows ? p->v_rows[l] : s->v;
        void *k = (char *)k_all + new_rows, *v = (char *)v_all + new_rows;
        const int32_t *key_begin = s->layout + (c->layer_sliding[l] ? LAYOUT_BEGIN_WINDOWED : LAYOUT_BEGIN) * T;
        /* attention block: x += o_proj(attn(rope(q), rope(k), v)) on the normed input (Gemma: its output normed) */
        GemmInput xn = normed(m, s, w->attn_norm, T);
        project(m, s->qkv, xn, &w->wqkv, w->bqkv, T, H, q_dim + 2 * kv_dim);
        if (c->qk_norm) qk_norm(m, s, w, T);
        rope_qkv(m, s, l, k, v, pos, T);
        const KVScatter *sc = p->scatter;
        if (sc) be->copy_rows(k_all, sc->block_bytes, 2, sc->src, sc->dst, T, sc->row_bytes);
        GemmInput att = attention(m, s, k_all, v_all, key_begin, key_end, p->mask, p->row0, T);
        linear_residual(m, s, att, &w->wo, w->post_attn_norm, T, q_dim);
        /* MLP block: x += down(act(gate(xn)) * up(xn)) (Gemma: its output normed) */
        xn = normed(m, s, w->mlp_norm, T);
        project(m, s->gate_up, xn, &w->w_gate_up, NULL, T, H, 2 * I);
        linear_residual(m, s, gated(m, s, T), &w->w_down, w->post_mlp_norm, T, I);
    }
    if (!model_part_last(m)) return; /* the next stage goes on from s->x */
    be->rmsnorm(p->hidden_out, s->x, m->final_norm, T, H, c->rms_norm_eps);
    if (p->logits_out) model_logits(m, p->logits_out, p->hidden_out, T);
}

/* The forward pass proper. The layout (positions, key ranges, tokens: layout_new) is given on the host; keys and values
 * of layer l are written to k_rows[l]/v_rows[l] at row `row0` (then moved by scatter when given) and attention reads
 * rows from there (the cache, or the state's own buffers for a packed batch). mask (backend memory, or NULL) is the
 * tree mask over the T new rows. A decoding step (step: a token or a tree after the cache) goes through the backend's
 * run_step, which may replay it as a graph. */
static void forward_tokens(const Model *m, ForwardState *s, int T, const int32_t *layout, void *const *k_rows,
                           void *const *v_rows, int row0, const KVScatter *scatter, const uint8_t *mask,
                           float *hidden_out, float *logits_out, int step) {
    const ModelConfig *c = &m->config;
    const Backend *be = m->be;
    if (T > s->max_tokens) fatal("batch of %d tokens exceeds the forward state's %d", T, s->max_tokens);
    check_tokens(layout + LAYOUT_TOKENS * T, T, c->vocab_size);
    check_rope_positions(c, layout + LAYOUT_POS * T, T);
    /* one upload per pass (on a GPU queued from a pinned staging slot), before the step's ops */
    be->upload(s->layout, layout, sizeof(int32_t) * LAYOUT_ROWS * (size_t)T);
    ForwardPass pass = {m, s, T, row0, k_rows, v_rows, scatter, mask, hidden_out, logits_out};
    if (step && be->run_step) be->run_step(s, T, forward_queue, &pass);
    else forward_queue(&pass);
}

void model_forward(const Model *m, ForwardState *s, const PackedBatch *b, float *hidden_out, float *logits_out) {
    int T = b->n_tokens;
    int32_t *layout = layout_new(b->tokens, T);
    packed_layout(&m->config, b, layout);
    forward_tokens(m, s, T, layout, NULL, NULL, 0, NULL, NULL, hidden_out, logits_out, 0);
    free(layout);
}

void kv_cache_init(KVCache *cache, const Model *m, int max_len) {
    const ModelConfig *c = &m->config;
    cache->max_len = max_len;
    cache->len = 0;
    cache->row_bytes = (size_t)(c->n_kv_heads * c->head_dim) * model_act_bytes(m);
    size_t block = cache->row_bytes * (size_t)max_len; /* one layer's keys (or values) */
    cache->rows = m->be->alloc(block * 2 * (size_t)c->n_layers);
    cache->k = xcalloc((size_t)c->n_layers, sizeof(void *));
    cache->v = xcalloc((size_t)c->n_layers, sizeof(void *));
    for (int l = 0; l < c->n_layers; l++) {
        cache->k[l] = (char *)cache->rows + block * (size_t)(2 * l);
        cache->v[l] = (char *)cache->rows + block * (size_t)(2 * l + 1);
    }
}

void kv_cache_free(KVCache *cache, const Model *m) {
    m->be->free(cache->rows);
    free(cache->k);
    free(cache->v);
    memset(cache, 0, sizeof *cache);
}

void model_forward_cached(const Model *m, ForwardState *s, KVCache *cache, const int32_t *tokens, int n,
                          float *hidden_out, float *logits_out) {
    if (cache->len + n > cache->max_len)
        fatal("sequence of %d tokens exceeds the KV cache's %d", cache->len + n, cache->max_len);
    int32_t *layout = layout_new(tokens, n);
    for (int i = 0; i < n; i++) layout_set(&m->config, layout, n, i, 0, cache->len + i, cache->len + i + 1);
    forward_tokens(m, s, n, layout, cache->k, cache->v, cache->len, NULL, NULL, hidden_out, logits_out, n == 1);
    cache->len += n;
    free(layout);
}

void model_forward_tree(const Model *m, ForwardState *s, KVCache *cache, const int32_t *tokens, const int32_t *depth,
                        const uint8_t *mask, int n, float *hidden_out, float *logits_out) {
    if (cache->len + n > cache->max_len)
        fatal("sequence of %d tokens exceeds the KV cache's %d", cache->len + n, cache->max_len);
    int window = m->config.sliding_window, max_depth = 0;
    for (int i = 0; i < n; i++) max_depth = depth[i] > max_depth ? depth[i] : max_depth;
    /* the mask lets a node see all its ancestors, which a window as deep as the tree would cut */
    if (window > 0 && max_depth >= window)
        fatal("a tree %d levels deep does not fit the model's sliding window of %d positions", max_depth + 1, window);
    int32_t *layout = layout_new(tokens, n);
    /* the keys run to the tree's last row: the mask narrows the new rows to each node's ancestors */
    for (int i = 0; i < n; i++) layout_set(&m->config, layout, n, i, 0, cache->len + depth[i], cache->len + n);
    forward_tokens(m, s, n, layout, cache->k, cache->v, cache->len, NULL, mask, hidden_out, logits_out, 1);
    free(layout);
}

void kv_cache_keep(KVCache *cache, const Model *m, const int32_t *rows, int n) {
    const ModelConfig *c = &m->config;
    size_t block_bytes = cache->row_bytes * (size_t)cache->max_len;
    int32_t *src = xmalloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1)),
            *dst = xmalloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    int moves = 0;
    for (int i = 0; i < n; i++) {
        if (rows[i] == i) continue;
        ensure(rows[i] > i); /* accepted rows are in increasing order, so a move never overwrites a later source */
        src[moves] = cache->len + rows[i], dst[moves] = cache->len + i, moves++;
    }
    /* one op for the keys and values of every layer */
    if (moves) m->be->copy_rows(cache->rows, block_bytes, 2 * c->n_layers, src, dst, moves, cache->row_bytes);
    free(src);
    free(dst);
    cache->len += n;
}

void slot_cache_init(SlotCache *c, const Model *m, int n_slots, int slot_len, int pass_tokens) {
    if (n_slots < 1 || slot_len < 2 || pass_tokens < n_slots)
        fatal("slot cache: %d slots of %d rows with passes of %d tokens", n_slots, slot_len, pass_tokens);
    if ((int64_t)n_slots * slot_len + pass_tokens > INT32_MAX)
        fatal("slot cache: %d slots of %d rows exceed 2^31 rows", n_slots, slot_len);
    c->n_slots = n_slots;
    c->slot_len = slot_len;
    c->pass_tokens = pass_tokens;
    c->len = xcalloc((size_t)n_slots, sizeof(int));
    kv_cache_init(&c->kv, m, n_slots * slot_len + pass_tokens);
    /* the attention op needs finite rows between its queries' ranges (kernels/ops.h), which here span other slots:
     * rows never written hold zeros */
    m->be->fill_zero(c->kv.rows, c->kv.row_bytes * (size_t)c->kv.max_len * 2 * (size_t)m->config.n_layers);
}

void slot_cache_free(SlotCache *c, const Model *m) {
    kv_cache_free(&c->kv, m);
    free(c->len);
    memset(c, 0, sizeof *c);
}

void model_forward_slots(const Model *m, ForwardState *s, SlotCache *c, const int32_t *tokens, const int32_t *slot,
                         const int32_t *run_len, int n_runs, float *hidden_out) {
    int T = 0;
    for (int r = 0; r < n_runs; r++) {
        if (slot[r] < 0 || slot[r] >= c->n_slots) fatal("slot pass: slot %d of %d", slot[r], c->n_slots);
        if (run_len[r] < 1 || c->len[slot[r]] + run_len[r] > c->slot_len)
            fatal("slot pass: %d tokens after %d in a slot of %d rows", run_len[r], c->len[slot[r]], c->slot_len);
        T += run_len[r];
    }
    if (T > c->pass_tokens) fatal("slot pass of %d tokens exceeds the cache's %d", T, c->pass_tokens);
    int scratch = c->n_slots * c->slot_len; /* the pass writes its keys and values here, then moves them */
    int32_t *layout = layout_new(tokens, T), *src = xmalloc(sizeof(int32_t) * (size_t)T),
            *dst = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int r = 0, t = 0; r < n_runs; r++) {
        int first = slot[r] * c->slot_len, len = c->len[slot[r]];
        for (int i = 0; i < run_len[r]; i++, t++) {
            /* keys from the slot's first row (or window's) to its own row after the move */
            layout_set(&m->config, layout, T, t, first, len + i, first + len + i + 1);
            src[t] = scratch + t;
            dst[t] = first + len + i;
        }
        c->len[slot[r]] += run_len[r];
    }
    KVScatter scatter = {src, dst, c->kv.row_bytes * (size_t)c->kv.max_len, c->kv.row_bytes};
    forward_tokens(m, s, T, layout, c->kv.k, c->kv.v, scratch, &scatter, NULL, hidden_out, NULL, 0);
    free(layout);
    free(src);
    free(dst);
}
