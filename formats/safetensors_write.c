#include "safetensors_write.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Elements of a tensor, checked: its shape comes from the caller, a product that wraps would write a header that
 * does not match the data. */
static size_t element_count(const TensorToWrite *t) {
    size_t count = 1;
    for (int d = 0; d < t->n_dims; d++)
        ensure(t->shape[d] >= 0 && !__builtin_mul_overflow(count, (size_t)t->shape[d], &count));
    return count;
}

void safetensors_write(const char *path, const TensorToWrite *tensors, int n, DType dtype) {
    ensure(dtype == DT_F32 || dtype == DT_BF16);
    size_t elem = dtype == DT_F32 ? 4 : 2;
    cJSON *header = cJSON_CreateObject();
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        const TensorToWrite *t = &tensors[i];
        size_t count = element_count(t), size = t->i64 ? 8 : elem, bytes;
        cJSON *entry = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offsets = cJSON_CreateArray();
        cJSON_AddStringToObject(entry, "dtype", dtype_name(t->i64 ? DT_I64 : dtype));
        for (int d = 0; d < t->n_dims; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddItemToObject(entry, "shape", shape);
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        ensure(!__builtin_mul_overflow(count, size, &bytes) && !__builtin_add_overflow(offset, bytes, &offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToObject(entry, "data_offsets", offsets);
        cJSON_AddItemToObject(header, t->name, entry);
    }
    char *json = cJSON_PrintUnformatted(header);
    cJSON_Delete(header);
    size_t json_len = strlen(json), padded = (json_len + 7) / 8 * 8; /* data starts 8-byte aligned */
    AtomicFile f = atomic_file_open(path);
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    atomic_file_write(&f, len_bytes, 8);
    atomic_file_write(&f, json, json_len);
    for (size_t i = json_len; i < padded; i++) atomic_file_write(&f, " ", 1);
    free(json);
    for (int i = 0; i < n; i++) {
        const TensorToWrite *t = &tensors[i];
        size_t count = element_count(t);
        if (t->i64) {
            atomic_file_write(&f, t->i64, count * 8);
        } else if (dtype == DT_F32) {
            atomic_file_write(&f, t->data, count * 4);
        } else {
            uint16_t *buf = xmalloc(count * 2);
            for (size_t j = 0; j < count; j++) buf[j] = float_to_bf16(t->data[j]);
            atomic_file_write(&f, buf, count * 2);
            free(buf);
        }
    }
    atomic_file_commit(&f);
}
