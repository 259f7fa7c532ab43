/* GGUF v2/v3 reader: metadata key/values and tensor directory, validated before use. */
#ifndef MEDUSA_GGUF_H
#define MEDUSA_GGUF_H

#include "../common/common.h"
#include "../common/dtype.h"

typedef enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12
} GGUFType;

/* ggml tensor types we can dequantise. */
typedef enum {
    GGML_F32 = 0,
    GGML_F16 = 1,
    GGML_Q4_0 = 2,
    GGML_Q4_1 = 3,
    GGML_Q5_0 = 6,
    GGML_Q5_1 = 7,
    GGML_Q8_0 = 8,
    GGML_Q4_K = 12, /* the K-quants: super-blocks of 256 elements in 8 or 16 sub-blocks with their own scales */
    GGML_Q5_K = 13,
    GGML_Q6_K = 14,
    GGML_BF16 = 30
} GGMLType;

typedef struct {
    char *key;
    GGUFType type;
    /* scalars */
    int64_t i; /* all integer and bool types */
    double f;  /* float32/float64 */
    char *s;   /* string (NUL-terminated copy) */
    /* arrays */
    GGUFType arr_type;
    uint64_t arr_len;
    char **arr_str;      /* string arrays: NUL-terminated copies */
    size_t *arr_str_len; /* byte lengths (strings may hold NUL bytes) */
    void *arr_data;      /* numeric arrays: copy of the raw little-endian elements */
} GGUFKV;

typedef struct {
    char *name;
    int n_dims;
    int64_t ne[4]; /* ggml order: ne[0] is the fastest-varying (row length) */
    GGMLType type;
    uint64_t offset; /* from the start of the data section */
    size_t nbytes;
    const uint8_t *data;
} GGUFTensor;

typedef struct {
    MappedFile mf;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    GGUFKV *kv;
    GGUFTensor *tensors;
    uint64_t alignment;
} GGUFFile;

/* Opens and validates the whole header; any problem is fatal with the path named. */
void gguf_open(GGUFFile *g, const char *path);
void gguf_close(GGUFFile *g);

const GGUFKV *gguf_find(const GGUFFile *g, const char *key);
int64_t gguf_get_int(const GGUFFile *g, const char *key, int64_t fallback);
double gguf_get_float(const GGUFFile *g, const char *key, double fallback);
const char *gguf_get_str(const GGUFFile *g, const char *key); /* NULL when absent */
const GGUFTensor *gguf_find_tensor(const GGUFFile *g, const char *name);

/* The element type of a ggml type, -1 for one we cannot read. */
int ggml_dtype(GGMLType type);
const char *ggml_type_name(GGMLType type);

#endif
