/* Llama-family base model (llama, mistral, qwen2): weights on a backend and the one forward pass used by
 * training and inference. */
#ifndef MEDUSA_LLAMA_H
#define MEDUSA_LLAMA_H

#include "../common/packed_batch.h"
#include "../formats/weights.h"
#include "../kernels/ops.h"
#include "config.h"

/* A weight matrix as stored on the backend: in the model's weight_dtype (fp32 floats or bf16 bit patterns), or with
 * native storage in the file's own format (F16, BF16, a GGUF block format; matmul_q multiplies it). Its rows come in
 * parts: one, unless a native matrix stacks tensors of different formats (a Q4_K_M file's Q6_K v rows under Q4_K q
 * and k rows), each part then kept in its own. */
#define MATRIX_PARTS 3
typedef struct {
    int n_parts;
    struct {
        DType type;
        int rows;
        void *data;
    } part[MATRIX_PARTS];
} Matrix;

/* Weight matrices are Matrix; norms and biases are always fp32. The projections that read the same input are stacked
 * into one matrix, so one GEMM makes their outputs side by side in each row: q, k, v as wqkv [q_dim + 2 kv_dim, H]
 * (and their biases as bqkv, NULL without), gate and up as w_gate_up [2I, H]. */
typedef struct {
    float *attn_norm, *bqkv, *mlp_norm;
    float *q_norm, *k_norm;                /* [head_dim] each, with qk_norm (qwen3, gemma3); else NULL */
    float *post_attn_norm, *post_mlp_norm; /* [H] each, the blocks' output norms with sandwich_norms; else NULL */
    Matrix wqkv, wo, w_gate_up, w_down;
} LayerWeights;

/* The part of the base a process holds (a pipeline stage, medusa-train --pipeline): layers [layer_begin, layer_end),
 * the embedding when it begins at 0, the final norm and lm_head when it ends at the last layer (a tied lm_head brings
 * the embedding). The whole model by default. */
typedef struct {
    int layer_begin, layer_end;
} ModelPart;

typedef struct {
    ModelConfig config;
    const Backend *be;
    ModelPart part;
    WeightSet source;   /* kept open: GGUF metadata carries the tokenizer */
    DType weight_dtype; /* DT_F32 or DT_BF16: the storage of the matrices below and in layers, and the activations' */
    int native;         /* matrices kept in the file's formats (weight_dtype DT_F32: fp32 activations) */
    Matrix embed;       /* [V, H]; no parts where the model's part holds neither the embedding nor a tied lm_head */
    LayerWeights *layers;
    float *final_norm;            /* [H]; NULL on a part before the last layer */
    Matrix lm_head;               /* [V, H]; the embedding itself when tied; no parts before the last layer */
    float *rope_inv_freq;         /* host [head_dim / 2]: the rotary frequencies with the config's scaling (rope_qkv) */
    float *rope_inv_freq_sliding; /* the windowed layers' own (rope_theta_sliding, unscaled); NULL: rope_inv_freq */
} Model;

/* Scratch activations for batches of up to max_tokens tokens, allocated once on the backend. The residual stream x is
 * fp32. With fp32 weights so is every other activation. With bf16 weights the activations between ops are bf16, as
 * the GEMMs take and give them: the q/k/v rows (qkv, split by rope_qkv into q, k, v) and the gate/up rows come out of
 * their GEMMs in bf16, and the GEMMs' inputs (the normed input, attention's output, the gated MLP's product) are made
 * in bf16 into act16 [T, max(H, q_dim, I)], the residual GEMMs adding into x; xn, att, proj and gated are then not
 * allocated (act16 is NULL with fp32 weights), except xn and proj with sandwich_norms: a block's fp32 output and its
 * norm. */
typedef struct {
    int max_tokens;
    size_t act_bytes; /* of an element of qkv, q, k, v and gate_up: 4, or 2 with bf16 weights (model_act_bytes) */
    float *x, *xn, *att, *proj, *gated;
    void *qkv, *q, *k, *v, *gate_up;
    uint16_t *act16;
    int32_t *layout; /* backend: a pass's positions, key ranges and tokens, [5, T] for its T tokens, one upload */
} ForwardState;

/* Keys and values of every layer for incremental decoding: rows [0, len) hold positions 0..len-1, in the
 * activations' precision (model_act_bytes: bf16 with bf16 weights). */
typedef struct {
    int max_len, len;
    size_t row_bytes; /* one row: n_kv_heads * head_dim elements */
    void *rows;       /* backend memory: [n_layers][k, v][max_len] rows, one allocation */
    void **k, **v;    /* per layer, into rows */
} KVCache;

/* path: a Hugging Face directory (config.json + safetensors) or a .gguf file. weight_dtype (DT_F32 or
 * DT_BF16) is how the weight matrices are stored on the backend, whatever the file holds. */
void model_load(Model *m, const char *path, const Backend *be, DType weight_dtype);
/* The same with native storage: each matrix in its file's format where matmul_q takes it (F16, BF16, the block
 * formats), fp32 where the file holds fp32 (or, in a stack of tensors, fp32 beside another format); activations
 * fp32. Decoding then reads the bytes the file holds, the products being those of the dequantised fp32 model. */
void model_load_native(Model *m, const char *path, const Backend *be);
/* Loads a part of the model only (native: as model_load_native; else weight_dtype as model_load); every layer's index
 * stays the whole model's. */
void model_load_part(Model *m, const char *path, const Backend *be, DType weight_dtype, int native, ModelPart part);
/* 1 when the model holds the first layer (it embeds tokens), or the last (its final norm gives the hidden states) */
int model_part_first(const Model *m);
int model_part_last(const Model *m);
/* Bytes of the base model's matrices with native storage, from the file's formats (the memory plan's weights). */
double model_native_matrix_bytes(const char *path);
void model_free(Model *m);
size_t model_param_count(const Model *m);
/* FLOPs of the forward pass over a packed batch, a multiply-add counted as 2 (throughput in TFLOP/s and MFU): 2 x the
 * non-embedding weights per token (no logits), and causal attention, QK^T and PV over half of each sequence's keys
 * on average: 2 x n_layers x q_dim x n^2 per sequence of n tokens. */
double model_forward_flops(const ModelConfig *c, int n_tokens, const int32_t *seq_lens, int n_seqs);
/* The FLOP/s that a run of this model is measured against for MFU: its backend's dense bf16 tensor peak when the
 * weights are bf16 (the GEMMs run on the tensor cores), else 0 (unknown device, or fp32 GEMMs: no MFU). */
double model_peak_flops(const Model *m);

/* out[T,OC] = in[T,IC] @ weight^T (+ bias) for a weight matrix of this model, whatever its storage */
void model_linear(const Model *m, float *out, const float *in, const Matrix *weight, const float *bias, int T, int IC,
                  int OC);
/* The base model's logits out [T, V] of hidden states [T, H] after the final norm: the lm_head, soft-capped where the
 * family caps them (Gemma 2) */
void model_logits(const Model *m, float *out, const float *hidden, int T);
/* out[i,:] = lm_head[rows[i],:] in fp32 (rows and out in backend memory) */
void model_lm_head_rows(const Model *m, float *out, const int32_t *rows, int n);
/* The lm_head rows rows[i] (host, increasing) as a matrix [n, H] of their own, in the model's storage (model_linear
 * takes it): backend memory, free with matrix_free. */
Matrix model_lm_head_subset(const Model *m, const int32_t *rows, int n);
void matrix_free(const Backend *be, Matrix *w);

/* bytes of an activation element between the base model's ops (and of the KV cache): 2 with bf16 weights, else 4 */
size_t model_act_bytes(const Model *m);
void forward_state_init(ForwardState *s, const Model *m, int max_tokens);
void forward_state_free(ForwardState *s, const Model *m);

/* Runs the base model on a packed batch. hidden_out [T, H] receives the hidden states after the final
 * RMSNorm (what Medusa heads read); logits_out [T, V] the lm_head output when not NULL. Both are backend
 * memory. Token ids are validated against the vocabulary. A part of the model runs its own layers: one that does not
 * hold the first layer starts from the residual stream the caller put in s->x [T, H] (the previous stage's), one that
 * does not hold the last leaves its result there (hidden_out and logits_out unused). */
void model_forward(const Model *m, ForwardState *s, const PackedBatch *b, float *hidden_out, float *logits_out);

void kv_cache_init(KVCache *cache, const Model *m, int max_len);
void kv_cache_free(KVCache *cache, const Model *m);

/* Appends n tokens to the cached sequence: positions len..len+n-1, each attending to the cache and the new
 * tokens up to itself. Outputs as model_forward; the cache grows by n. */
void model_forward_cached(const Model *m, ForwardState *s, KVCache *cache, const int32_t *tokens, int n,
                          float *hidden_out, float *logits_out);

/* Tree verification: n candidate tokens placed after the cache, node i at position len + depth[i], attending
 * to the whole cache and to the nodes its row of mask [n, n] (backend memory, uploaded once per tree) marks
 * (itself and its ancestors). Keys and
 * values are written after the cache but the cache does not grow: kv_cache_keep then keeps the accepted
 * nodes. */
void model_forward_tree(const Model *m, ForwardState *s, KVCache *cache, const int32_t *tokens, const int32_t *depth,
                        const uint8_t *mask, int n, float *hidden_out, float *logits_out);
/* Moves the keys/values of tree rows len+rows[i] (increasing) to len+i and grows the cache by n. */
void kv_cache_keep(KVCache *cache, const Model *m, const int32_t *rows, int n);

/* Many sequences decoded side by side (batched generation): a KV cache of n_slots slots of slot_len rows, slot i at
 * rows [i * slot_len, i * slot_len + len[i]), and pass_tokens rows after them where a pass writes its new keys and
 * values before moving each to its slot. */
typedef struct {
    KVCache kv;
    int n_slots, slot_len, pass_tokens;
    int *len; /* host: the rows each slot holds; a caller may shorten it to keep a prefix */
} SlotCache;

void slot_cache_init(SlotCache *c, const Model *m, int n_slots, int slot_len, int pass_tokens);
void slot_cache_free(SlotCache *c, const Model *m);
/* One pass over n_runs runs of tokens, run r (run_len[r] tokens, in order in `tokens`) appended to slot slot[r] (a slot
 * at most once): each token attends to its slot's rows and its run up to itself, at positions after the slot's
 * rows, and the slots grow. hidden_out [T, H] (backend memory) as model_forward, T the tokens of all runs (at most
 * pass_tokens). */
void model_forward_slots(const Model *m, ForwardState *s, SlotCache *c, const int32_t *tokens, const int32_t *slot,
                         const int32_t *run_len, int n_runs, float *hidden_out);

#endif
