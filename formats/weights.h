/* A read-only set of named tensors from safetensors files (single or sharded) or a GGUF file, with
 * conversion of any supported dtype to fp32. Names are Hugging Face names in both cases: GGUF names
 * (blk.N.attn_q.weight ...) are mapped on open, and llama's Q/K rotary permutation is undone. */
#ifndef MEDUSA_WEIGHTS_H
#define MEDUSA_WEIGHTS_H

#include "gguf.h"

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
/* A weight matrix [shape[0], shape[1]] as stored (a 16-bit or block format: dtype_is_packed_weight), rows in the
 * model's order (GGUF Q/K rows un-permuted), as a malloc'd copy; its type in *type. Fatal for another type. */
void *weights_load_packed(const WeightSet *w, const char *name, int n_dims, const int64_t *shape, int required,
                          DType *type);
/* n elements of type `type` (stored little-endian, whole blocks) as fp32 (common/dtype.h's rule). */
void weights_dequantize(DType type, const uint8_t *src, float *out, int64_t n);
/* An I32 (or I64, values checked to fit) tensor as a malloc'd int32 copy (count in *n). NULL if absent. */
int32_t *weights_load_i32(const WeightSet *w, const char *name, int64_t *n);

#endif
