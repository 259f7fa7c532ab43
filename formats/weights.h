/* A read-only set of named tensors from safetensors files (single or sharded) or a GGUF file, with
 * conversion of any supported dtype to fp32. Names are Hugging Face names in both cases: GGUF names
 * (blk.N.attn_q.weight ...) are mapped on open, and llama's Q/K rotary permutation is undone. */
#ifndef MEDUSA_WEIGHTS_H
#define MEDUSA_WEIGHTS_H

#include "gguf.h"

typedef enum { DT_F32, DT_F16, DT_BF16, DT_I32, DT_Q8_0, DT_Q4_0, DT_Q4_1, DT_I64, DT_Q4_K, DT_Q5_K, DT_Q6_K } DType;

typedef struct {
    char *name; /* Hugging Face name */
    DType dtype;
    int n_dims;
    int64_t shape[4]; /* row-major, outermost first (PyTorch order) */
    const uint8_t *data;
    size_t nbytes;
    const char *file;    /* which file it lives in, for messages */
    int unpermute_heads; /* >0: GGUF llama Q/K rows to un-permute, with this many heads */
} WeightTensor;

typedef struct {
    int n_files;
    MappedFile *files;
    int n_tensors;
    WeightTensor *tensors;
    GGUFFile *gguf; /* set when loaded from GGUF */
    char *source;   /* directory or .gguf path */
} WeightSet;

/* Directory with model.safetensors or model.safetensors.index.json + shards. */
void weights_open_safetensors_dir(WeightSet *w, const char *dir);
/* One .safetensors file (also used for fixtures and Medusa head files). */
void weights_open_safetensors_file(WeightSet *w, const char *path);
/* A GGUF file (llama architecture); keeps the GGUFFile for config/tokenizer metadata. */
void weights_open_gguf(WeightSet *w, const char *path, int n_heads, int n_kv_heads);
void weights_close(WeightSet *w);

const WeightTensor *weights_find(const WeightSet *w, const char *name); /* NULL when absent */
/* Finds `name`, checks its shape (n_dims values in `shape`; fatal naming file, tensor and both shapes on
 * mismatch, or if absent and required) and returns a malloc'd fp32 copy. NULL if absent and !required. */
float *weights_load_f32(const WeightSet *w, const char *name, int n_dims, const int64_t *shape, int required);
/* The same as bf16 (round to nearest even): bf16 tensors are copied as stored, others converted. */
uint16_t *weights_load_bf16(const WeightSet *w, const char *name, int n_dims, const int64_t *shape, int required);
const char *dtype_name(DType t);
/* An I32 (or I64, values checked to fit) tensor as a malloc'd int32 copy (count in *n). NULL if absent. */
int32_t *weights_load_i32(const WeightSet *w, const char *name, int64_t *n);

#endif
