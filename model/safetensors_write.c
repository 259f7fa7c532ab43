#include "safetensors_write.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void write_all(int fd, const void *data, size_t size, const char *path) {
    const uint8_t *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            unlink(path); /* never leave a partial temp file; the target is untouched */
            fatal("%s: write failed: %s", path, strerror(e));
        }
        p += n;
        size -= (size_t)n;
    }
}

/* Temp file beside the target, fsynced and renamed over it: readers see the old file or the new one. */
static int open_temp(const char *path, char **tmp_out) {
    size_t n = strlen(path) + 16;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fatal("%s: cannot create: %s", tmp, strerror(errno));
    *tmp_out = tmp;
    return fd;
}

static void commit_temp(int fd, char *tmp, const char *path) {
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        fatal("%s: cannot flush to disk: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        fatal("%s: cannot rename into place: %s", path, strerror(e));
    }
    free(tmp);
}

void write_file_atomic(const char *path, const void *data, size_t size) {
    char *tmp;
    int fd = open_temp(path, &tmp);
    write_all(fd, data, size, tmp);
    commit_temp(fd, tmp, path);
}

void safetensors_write(const char *path, const TensorToWrite *tensors, int n, DType dtype) {
    ensure(dtype == DT_F32 || dtype == DT_BF16);
    size_t elem = dtype == DT_F32 ? 4 : 2;
    cJSON *header = cJSON_CreateObject();
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        const TensorToWrite *t = &tensors[i];
        size_t count = 1, size = t->i64 ? 8 : elem;
        cJSON *entry = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offsets = cJSON_CreateArray();
        cJSON_AddStringToObject(entry, "dtype", dtype_name(t->i64 ? DT_I64 : dtype));
        for (int d = 0; d < t->n_dims; d++) {
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
            count *= (size_t)t->shape[d];
        }
        cJSON_AddItemToObject(entry, "shape", shape);
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        offset += count * size;
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToObject(entry, "data_offsets", offsets);
        cJSON_AddItemToObject(header, t->name, entry);
    }
    char *json = cJSON_PrintUnformatted(header);
    cJSON_Delete(header);
    size_t json_len = strlen(json), padded = (json_len + 7) / 8 * 8; /* data starts 8-byte aligned */
    char *tmp;
    int fd = open_temp(path, &tmp);
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    write_all(fd, len_bytes, 8, tmp);
    write_all(fd, json, json_len, tmp);
    for (size_t i = json_len; i < padded; i++) write_all(fd, " ", 1, tmp);
    free(json);
    for (int i = 0; i < n; i++) {
        const TensorToWrite *t = &tensors[i];
        size_t count = 1;
        for (int d = 0; d < t->n_dims; d++) count *= (size_t)t->shape[d];
        if (t->i64) {
            write_all(fd, t->i64, count * 8, tmp);
        } else if (dtype == DT_F32) {
            write_all(fd, t->data, count * 4, tmp);
        } else {
            uint16_t *buf = xmalloc(count * 2);
            for (size_t j = 0; j < count; j++) buf[j] = float_to_bf16(t->data[j]);
            write_all(fd, buf, count * 2, tmp);
            free(buf);
        }
    }
    commit_temp(fd, tmp, path);
}
