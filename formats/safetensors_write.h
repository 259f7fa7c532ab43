/* Writes a safetensors file atomically (temp file, fsync, rename), from fp32 host arrays stored as F32 or
 * BF16 (and int64 arrays stored as I64). */
#ifndef MEDUSA_SAFETENSORS_WRITE_H
#define MEDUSA_SAFETENSORS_WRITE_H

#include <stdint.h>

#include "atomic_file.h"
#include "weights.h"

typedef struct {
    const char *name;
    int n_dims;
    int64_t shape[4];
    const float *data;  /* host fp32 */
    const int64_t *i64; /* instead of data: an I64 tensor, written as is */
} TensorToWrite;

void safetensors_write(const char *path, const TensorToWrite *tensors, int n, DType dtype);

#endif
