#include "checkpoint.h"

#include <dirent.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>

#include "../model/safetensors_write.h"

#define CHECKPOINT_VERSION 1

/* Writes a 1-D dataset; returns 0 on failure (the caller removes the temp file and reports). */
static int write_dataset(hid_t file, const char *name, hid_t type, hsize_t n, const void *data) {
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int ok = ds >= 0 && H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(space);
    return ok;
}

/* Reads a 1-D dataset of exactly n elements. */
static void read_dataset(hid_t file, const char *name, hid_t type, hsize_t n, void *data, const char *path) {
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0) fatal("%s: checkpoint has no dataset '%s'", path, name);
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    hid_t space = H5Dget_space(ds);
    hsize_t dims[1] = {0};
    if (H5Sget_simple_extent_ndims(space) != 1 || H5Sget_simple_extent_dims(space, dims, NULL) != 1 || dims[0] != n)
        fatal("%s: dataset '%s' has %llu elements, expected %llu (heads of a different shape?)", path, name,
              (unsigned long long)dims[0], (unsigned long long)n);
    if (H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) fatal("%s: cannot read dataset '%s'", path, name);
    H5Sclose(space);
    H5Dclose(ds);
}

static int write_backend_floats(hid_t file, const char *name, const Backend *be, const float *dev, size_t n) {
    float *host = xmalloc(sizeof(float) * n);
    be->download(host, dev, sizeof(float) * n);
    int ok = write_dataset(file, name, H5T_NATIVE_FLOAT, n, host);
    free(host);
    return ok;
}

static void read_backend_floats(hid_t file, const char *name, const Backend *be, float *dev, size_t n,
                                const char *path) {
    float *host = xmalloc(sizeof(float) * n);
    read_dataset(file, name, H5T_NATIVE_FLOAT, n, host, path);
    be->upload(dev, host, sizeof(float) * n);
    free(host);
}

/* Truncated heads store their token map; its length is the head vocabulary. */
static int file_head_vocab(hid_t file, int vocab) {
    if (H5Lexists(file, "token_map", H5P_DEFAULT) <= 0) return vocab;
    hid_t ds = H5Dopen2(file, "token_map", H5P_DEFAULT);
    hid_t space = H5Dget_space(ds);
    hsize_t n = 0;
    H5Sget_simple_extent_dims(space, &n, NULL);
    H5Sclose(space);
    H5Dclose(ds);
    return (int)n;
}

/* The file is built in memory (HDF5 core driver) and written by write_file_atomic: HDF5 cannot recover from
 * a failed write to disk (it crashes closing the file at exit), our own writer can. */
void checkpoint_save(const char *path, const MedusaHeads *m, const AdamState *adam, const CheckpointMeta *meta) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_core(fapl, 64 << 20, 0);
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (file < 0) fatal("%s: cannot create the checkpoint in memory", path);
    const MedusaShape *s = &m->shape;
    int32_t shape[5] = {CHECKPOINT_VERSION, s->n_heads, s->n_layers, s->hidden, s->vocab};
    const char *cfg = meta->config_json ? meta->config_json : "{}";
    int ok =
        write_dataset(file, "format", H5T_NATIVE_INT32, 5, shape) &&
        write_backend_floats(file, "params", m->be, m->params, m->n_params) &&
        write_backend_floats(file, "adam_m", m->be, adam->m, m->n_params) &&
        write_backend_floats(file, "adam_v", m->be, adam->v, m->n_params) &&
        write_dataset(file, "step", H5T_NATIVE_INT64, 1, &meta->step) &&
        write_dataset(file, "rng", H5T_NATIVE_UINT64, 4, meta->rng) &&
        write_dataset(file, "cursor", H5T_NATIVE_INT64, CHECKPOINT_CURSOR_WORDS, meta->cursor) &&
        write_dataset(file, "metrics", H5T_NATIVE_DOUBLE, 4, meta->metrics) &&
        write_dataset(file, "config_json", H5T_NATIVE_CHAR, strlen(cfg) + 1, cfg) &&
        (!m->token_map || write_dataset(file, "token_map", H5T_NATIVE_INT32, (hsize_t)s->head_vocab, m->token_map)) &&
        H5Fflush(file, H5F_SCOPE_GLOBAL) >= 0;
    ssize_t size = ok ? H5Fget_file_image(file, NULL, 0) : -1;
    void *image = size > 0 ? malloc((size_t)size) : NULL;
    ok = image && H5Fget_file_image(file, image, (size_t)size) == size;
    H5Fclose(file);
    if (!ok) fatal("%s: cannot build the checkpoint in memory (out of memory?)", path);
    write_file_atomic(path, image, (size_t)size); /* temp file, fsync, rename; the old file survives any failure */
    free(image);
}

void checkpoint_load(const char *path, MedusaHeads *m, AdamState *adam, CheckpointMeta *meta) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!file_exists(path)) fatal("%s: checkpoint not found", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) fatal("%s: not a readable HDF5 checkpoint (truncated or corrupt?)", path);
    int32_t shape[5];
    read_dataset(file, "format", H5T_NATIVE_INT32, 5, shape, path);
    const MedusaShape *s = &m->shape;
    if (shape[0] != CHECKPOINT_VERSION)
        fatal("%s: checkpoint format %d, this build reads %d", path, shape[0], CHECKPOINT_VERSION);
    if (shape[1] != s->n_heads || shape[2] != s->n_layers || shape[3] != s->hidden || shape[4] != s->vocab)
        fatal("%s: checkpoint holds %d heads x %d layers (hidden %d, vocab %d) but this run has %d x %d (hidden %d, "
              "vocab %d)",
              path, shape[1], shape[2], shape[3], shape[4], s->n_heads, s->n_layers, s->hidden, s->vocab);
    int head_vocab = file_head_vocab(file, shape[4]);
    if (head_vocab != s->head_vocab)
        fatal("%s: checkpoint heads predict %d tokens but this run's predict %d (--head-vocab)", path, head_vocab,
              s->head_vocab);
    if (m->token_map) {
        int32_t *map = xmalloc(sizeof(int32_t) * (size_t)head_vocab);
        read_dataset(file, "token_map", H5T_NATIVE_INT32, (hsize_t)head_vocab, map, path);
        medusa_set_token_map(m, map);
        free(map);
    }
    read_backend_floats(file, "params", m->be, m->params, m->n_params, path);
    if (adam) {
        read_backend_floats(file, "adam_m", m->be, adam->m, m->n_params, path);
        read_backend_floats(file, "adam_v", m->be, adam->v, m->n_params, path);
    }
    read_dataset(file, "step", H5T_NATIVE_INT64, 1, &meta->step, path);
    read_dataset(file, "rng", H5T_NATIVE_UINT64, 4, meta->rng, path);
    read_dataset(file, "cursor", H5T_NATIVE_INT64, CHECKPOINT_CURSOR_WORDS, meta->cursor, path);
    read_dataset(file, "metrics", H5T_NATIVE_DOUBLE, 4, meta->metrics, path);
    hid_t ds = H5Dopen2(file, "config_json", H5P_DEFAULT);
    if (ds < 0) fatal("%s: checkpoint has no config_json", path);
    hid_t space = H5Dget_space(ds);
    hsize_t len = 0;
    H5Sget_simple_extent_dims(space, &len, NULL);
    meta->config_json = xcalloc((size_t)len + 1, 1);
    if (H5Dread(ds, H5T_NATIVE_CHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, meta->config_json) < 0)
        fatal("%s: cannot read config_json", path);
    H5Sclose(space);
    H5Dclose(ds);
    H5Fclose(file);
    if (adam) adam->step = (int)meta->step;
}

MedusaShape checkpoint_shape(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!file_exists(path)) fatal("%s: checkpoint not found", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) fatal("%s: not a readable HDF5 checkpoint (truncated or corrupt?)", path);
    int32_t f[5];
    read_dataset(file, "format", H5T_NATIVE_INT32, 5, f, path);
    int head_vocab = file_head_vocab(file, f[4]);
    H5Fclose(file);
    if (f[0] != CHECKPOINT_VERSION)
        fatal("%s: checkpoint format %d, this build reads %d", path, f[0], CHECKPOINT_VERSION);
    return (MedusaShape){f[1], f[2], f[3], f[4], head_vocab};
}

char *checkpoint_latest(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return NULL;
    long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long step;
        char tail[8];
        if (sscanf(e->d_name, "ckpt-%ld.%7s", &step, tail) == 2 && strcmp(tail, "h5") == 0 && step > best) best = step;
    }
    closedir(d);
    if (best < 0) return NULL;
    char name[64];
    snprintf(name, sizeof name, "ckpt-%ld.h5", best);
    return path_join(dir, name);
}
