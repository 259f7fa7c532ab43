#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECKPOINT_VERSION 1

static void write_dataset(hid_t file, const char *name, hid_t type, hsize_t n, const void *data, const char *path) {
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds < 0 || H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) fatal("%s: cannot write dataset %s", path, name);
    H5Dclose(ds);
    H5Sclose(space);
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

static void write_backend_floats(hid_t file, const char *name, const Backend *be, const float *dev, size_t n, const char *path) {
    float *host = xmalloc(sizeof(float) * n);
    be->download(host, dev, sizeof(float) * n);
    write_dataset(file, name, H5T_NATIVE_FLOAT, n, host, path);
    free(host);
}

static void read_backend_floats(hid_t file, const char *name, const Backend *be, float *dev, size_t n, const char *path) {
    float *host = xmalloc(sizeof(float) * n);
    read_dataset(file, name, H5T_NATIVE_FLOAT, n, host, path);
    be->upload(dev, host, sizeof(float) * n);
    free(host);
}

void checkpoint_save(const char *path, const MedusaHeads *m, const AdamState *adam, const CheckpointMeta *meta) {
    size_t n = strlen(path) + 16;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp%d", path, (int)getpid());
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) fatal("%s: cannot create checkpoint file", tmp);
    const MedusaShape *s = &m->shape;
    int32_t shape[5] = {CHECKPOINT_VERSION, s->n_heads, s->n_layers, s->hidden, s->vocab};
    write_dataset(file, "format", H5T_NATIVE_INT32, 5, shape, tmp);
    write_backend_floats(file, "params", m->be, m->params, m->n_params, tmp);
    write_backend_floats(file, "adam_m", m->be, adam->m, m->n_params, tmp);
    write_backend_floats(file, "adam_v", m->be, adam->v, m->n_params, tmp);
    write_dataset(file, "step", H5T_NATIVE_INT64, 1, &meta->step, tmp);
    write_dataset(file, "rng", H5T_NATIVE_UINT64, 4, meta->rng, tmp);
    write_dataset(file, "cursor", H5T_NATIVE_INT64, CHECKPOINT_CURSOR_WORDS, meta->cursor, tmp);
    write_dataset(file, "metrics", H5T_NATIVE_DOUBLE, 4, meta->metrics, tmp);
    const char *cfg = meta->config_json ? meta->config_json : "{}";
    write_dataset(file, "config_json", H5T_NATIVE_CHAR, strlen(cfg) + 1, cfg, tmp);
    if (H5Fclose(file) < 0) fatal("%s: cannot finish checkpoint file", tmp);
    int fd = open(tmp, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) fatal("%s: fsync failed: %s", tmp, strerror(errno));
    close(fd);
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        fatal("%s: cannot rename checkpoint into place: %s", path, strerror(e));
    }
    free(tmp);
}

void checkpoint_load(const char *path, MedusaHeads *m, AdamState *adam, CheckpointMeta *meta) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!file_exists(path)) fatal("%s: checkpoint not found", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) fatal("%s: not a readable HDF5 checkpoint (truncated or corrupt?)", path);
    int32_t shape[5];
    read_dataset(file, "format", H5T_NATIVE_INT32, 5, shape, path);
    const MedusaShape *s = &m->shape;
    if (shape[0] != CHECKPOINT_VERSION) fatal("%s: checkpoint format %d, this build reads %d", path, shape[0], CHECKPOINT_VERSION);
    if (shape[1] != s->n_heads || shape[2] != s->n_layers || shape[3] != s->hidden || shape[4] != s->vocab)
        fatal("%s: checkpoint holds %d heads x %d layers (hidden %d, vocab %d) but this run has %d x %d (hidden %d, vocab %d)",
              path, shape[1], shape[2], shape[3], shape[4], s->n_heads, s->n_layers, s->hidden, s->vocab);
    read_backend_floats(file, "params", m->be, m->params, m->n_params, path);
    read_backend_floats(file, "adam_m", m->be, adam->m, m->n_params, path);
    read_backend_floats(file, "adam_v", m->be, adam->v, m->n_params, path);
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
    if (H5Dread(ds, H5T_NATIVE_CHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, meta->config_json) < 0) fatal("%s: cannot read config_json", path);
    H5Sclose(space);
    H5Dclose(ds);
    H5Fclose(file);
    adam->step = (int)meta->step;
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
