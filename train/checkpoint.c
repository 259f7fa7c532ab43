#include "checkpoint.h"

#include <dirent.h>
#include <hdf5.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../formats/safetensors_write.h"

#define CHECKPOINT_VERSION 1
/* The largest shapes a checkpoint header may claim: far above any real model, far below what overflows. */
#define CHECKPOINT_MAX_HIDDEN (1 << 16)
#define CHECKPOINT_MAX_VOCAB (1 << 24)

/* Elements per chunk of a checkpoint dataset (1 MB of floats: within HDF5's default chunk cache). */
#define CHECKPOINT_CHUNK ((hsize_t)1 << 18)

/* Every dataset is chunked with a Fletcher-32 checksum per chunk: HDF5 checks it on every read, so a damaged file is
 * refused ("cannot read dataset") instead of resuming from wrong numbers. */
static hid_t checksummed(hsize_t n) {
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t chunk = n < CHECKPOINT_CHUNK ? (n ? n : 1) : CHECKPOINT_CHUNK;
    H5Pset_chunk(dcpl, 1, &chunk);
    H5Pset_fletcher32(dcpl);
    return dcpl;
}

/* Writes a 1-D dataset; returns 0 on failure (the caller removes the temp file and reports). */
static int write_dataset(hid_t file, const char *name, hid_t type, hsize_t n, const void *data) {
    hid_t space = H5Screate_simple(1, &n, NULL), dcpl = checksummed(n);
    hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int ok = ds >= 0 && H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(space);
    return ok;
}

/* Largest config_json accepted (a run's settings are a few hundred bytes). */
#define CONFIG_JSON_MAX ((hsize_t)1 << 20)

static const char *class_name(H5T_class_t c) {
    return c == H5T_INTEGER ? "integer" : c == H5T_FLOAT ? "floating-point" : "other";
}

/* Opens a dataset after checking what every read relies on: it exists, is a dataset, is 1-D (a scalar or an
 * N-D array would make HDF5 write past the caller's buffer), holds numbers of class cls, and has exactly n
 * elements (n > 0), or between 1 and max_len elements (n == 0; the length is returned in *len). Every read
 * of a checkpoint goes through here. */
static hid_t open_checked(hid_t file, const char *name, H5T_class_t cls, hsize_t n, hsize_t max_len, hsize_t *len,
                          const char *path) {
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0) fatal("%s: checkpoint has no dataset '%s'", path, name);
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) fatal("%s: '%s' is not a readable dataset (file damaged?)", path, name);
    hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
    if (space < 0 || type < 0) fatal("%s: cannot read the shape of dataset '%s' (file damaged?)", path, name);
    int rank = H5Sget_simple_extent_ndims(space);
    H5S_class_t sclass = H5Sget_simple_extent_type(space);
    hsize_t dims[H5S_MAX_RANK] = {0};
    if (sclass != H5S_SIMPLE || rank != 1 || H5Sget_simple_extent_dims(space, dims, NULL) != 1)
        fatal("%s: dataset '%s' has %d dimensions, expected a 1-D array (file damaged or not a checkpoint?)", path,
              name, sclass == H5S_SIMPLE ? rank : 0);
    H5T_class_t tclass = H5Tget_class(type);
    if (tclass != cls)
        fatal("%s: dataset '%s' holds %s values, expected %s", path, name, class_name(tclass), class_name(cls));
    if (n > 0 && dims[0] != n)
        fatal("%s: dataset '%s' has %llu elements, expected %llu (heads of a different shape?)", path, name,
              (unsigned long long)dims[0], (unsigned long long)n);
    if (n == 0 && (dims[0] < 1 || dims[0] > max_len))
        fatal("%s: dataset '%s' has %llu elements, expected 1..%llu", path, name, (unsigned long long)dims[0],
              (unsigned long long)max_len);
    if (len) *len = dims[0];
    H5Tclose(type);
    H5Sclose(space);
    return ds;
}

static hid_t open_dataset(hid_t file, const char *name, H5T_class_t cls, hsize_t n, const char *path) {
    return open_checked(file, name, cls, n, 0, NULL, path);
}

/* Reads a 1-D dataset of exactly n elements. */
static void read_dataset(hid_t file, const char *name, hid_t type, hsize_t n, void *data, const char *path) {
    hid_t ds = open_dataset(file, name, H5Tget_class(type), n, path);
    if (H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        fatal("%s: cannot read dataset '%s' (file damaged?)", path, name);
    H5Dclose(ds);
}

size_t checkpoint_slice_floats = (size_t)1 << 24;

/* A backend's n floats to or from a 1-D dataset of n, a slice at a time through a small host buffer (the heads'
 * parameters and AdamW moments are 3 GB each for a 7B base's 5 heads). Returns 0 on failure. */
static int transfer_floats(hid_t ds, const Backend *be, float *dev, size_t n, int save) {
    const size_t slice = checkpoint_slice_floats;
    float *host = xmalloc(sizeof(float) * (n < slice ? n : slice));
    hid_t file_space = H5Dget_space(ds);
    int ok = file_space >= 0;
    for (size_t at = 0; ok && at < n; at += slice) {
        hsize_t start = at, count = n - at < slice ? n - at : slice;
        hid_t mem_space = H5Screate_simple(1, &count, NULL);
        ok = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start, NULL, &count, NULL) >= 0;
        if (ok && save) {
            be->download(host, dev + at, sizeof(float) * count);
            ok = H5Dwrite(ds, H5T_NATIVE_FLOAT, mem_space, file_space, H5P_DEFAULT, host) >= 0;
        } else if (ok) {
            ok = H5Dread(ds, H5T_NATIVE_FLOAT, mem_space, file_space, H5P_DEFAULT, host) >= 0;
            if (ok) be->upload(dev + at, host, sizeof(float) * count);
        }
        H5Sclose(mem_space);
    }
    if (file_space >= 0) H5Sclose(file_space);
    free(host);
    return ok;
}

static int write_backend_floats(hid_t file, const char *name, const Backend *be, const float *dev, size_t n) {
    hsize_t dims = n;
    hid_t space = H5Screate_simple(1, &dims, NULL), dcpl = checksummed(dims);
    hid_t ds = H5Dcreate2(file, name, H5T_NATIVE_FLOAT, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    int ok = ds >= 0 && transfer_floats(ds, be, (float *)dev, n, 1);
    if (ds >= 0) H5Dclose(ds);
    return ok;
}

static void read_backend_floats(hid_t file, const char *name, const Backend *be, float *dev, size_t n,
                                const char *path) {
    hid_t ds = open_dataset(file, name, H5T_FLOAT, n, path);
    if (!transfer_floats(ds, be, dev, n, 0)) fatal("%s: cannot read dataset '%s' (file damaged?)", path, name);
    H5Dclose(ds);
}

/* Truncated heads store their token map; its length (1..vocab) is the head vocabulary. */
static int file_head_vocab(hid_t file, int vocab, const char *path) {
    if (H5Lexists(file, "token_map", H5P_DEFAULT) <= 0) return vocab;
    hsize_t n = 0;
    H5Dclose(open_checked(file, "token_map", H5T_INTEGER, 0, (hsize_t)vocab, &n, path));
    return (int)n;
}

/* The file is built in memory by HDF5's core driver and written by write_file_atomic: HDF5 cannot recover from a
 * failed write to disk (it crashes closing the file at exit), our own writer can. The driver's buffer passes to us
 * when HDF5 closes the file (image_free keeps it), so the closed file is written from where HDF5 built it rather
 * than from a copy (H5Fget_file_image's), which would double the host memory a save takes. */
static void *core_image; /* the file's buffer, as the driver last (re)allocated it */

static void *image_realloc(void *ptr, size_t size, H5FD_file_image_op_t op, void *udata) {
    (void)op, (void)udata;
    void *p = realloc(ptr, size);
    if (p && (!ptr || ptr == core_image)) core_image = p;
    return p;
}
static void *image_malloc(size_t size, H5FD_file_image_op_t op, void *udata) {
    return image_realloc(NULL, size, op, udata);
}
static herr_t image_free(void *ptr, H5FD_file_image_op_t op, void *udata) {
    (void)op, (void)udata;
    if (ptr != core_image) free(ptr);
    return 0;
}

void checkpoint_save(const char *path, const MedusaHeads *m, const AdamState *adam, const CheckpointMeta *meta) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    core_image = NULL;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* the buffer grows in steps of the file's expected size (three float arrays and a little metadata): one
     * allocation, whose pages the system commits as they are written */
    H5Pset_fapl_core(fapl, 3 * sizeof(float) * m->n_params + ((size_t)1 << 20), 0);
    H5FD_file_image_callbacks_t callbacks = {image_malloc, NULL, image_realloc, image_free, NULL, NULL, NULL};
    H5Pset_file_image_callbacks(fapl, &callbacks);
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
    ssize_t size = ok ? H5Fget_file_image(file, NULL, 0) : -1; /* the file's length (nothing copied) */
    ok = H5Fclose(file) >= 0 && size > 0 && core_image;
    if (!ok) fatal("%s: cannot build the checkpoint in memory (out of memory?)", path);
    write_file_atomic(path, core_image, (size_t)size); /* temp file, fsync, rename; the old file survives any failure */
    free(core_image);
    core_image = NULL;
}

/* Opens a checkpoint and reads its header: the format version and the heads' shape (checked against the ranges
 * the heads accept, before anything is sized from them). */
static hid_t open_checkpoint(const char *path, MedusaShape *shape) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!file_exists(path)) fatal("%s: checkpoint not found", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) fatal("%s: not a readable HDF5 checkpoint (truncated or corrupt?)", path);
    int32_t f[5];
    read_dataset(file, "format", H5T_NATIVE_INT32, 5, f, path);
    if (f[0] != CHECKPOINT_VERSION)
        fatal("%s: checkpoint format %d, this build reads %d", path, f[0], CHECKPOINT_VERSION);
    if (f[1] < 1 || f[1] > 64 || f[2] < 0 || f[2] > 16 || f[3] < 1 || f[3] > CHECKPOINT_MAX_HIDDEN || f[4] < 1 ||
        f[4] > CHECKPOINT_MAX_VOCAB)
        fatal("%s: checkpoint header out of range: %d heads (1..64), %d layers (0..16), hidden %d (1..%d), vocab %d "
              "(1..%d); file damaged?",
              path, f[1], f[2], f[3], CHECKPOINT_MAX_HIDDEN, f[4], CHECKPOINT_MAX_VOCAB);
    *shape = (MedusaShape){f[1], f[2], f[3], f[4], file_head_vocab(file, f[4], path)};
    return file;
}

void checkpoint_load(const char *path, MedusaHeads *m, AdamState *adam, CheckpointMeta *meta) {
    MedusaShape f;
    hid_t file = open_checkpoint(path, &f);
    const MedusaShape *s = &m->shape;
    if (f.n_heads != s->n_heads || f.n_layers != s->n_layers || f.hidden != s->hidden || f.vocab != s->vocab)
        fatal("%s: checkpoint holds %d heads x %d layers (hidden %d, vocab %d) but this run has %d x %d (hidden %d, "
              "vocab %d)",
              path, f.n_heads, f.n_layers, f.hidden, f.vocab, s->n_heads, s->n_layers, s->hidden, s->vocab);
    int head_vocab = f.head_vocab;
    if (head_vocab != s->head_vocab)
        fatal("%s: checkpoint heads predict %d tokens (its token_map) but this run's predict %d (--head-vocab)", path,
              head_vocab, s->head_vocab);
    if (m->token_map) {
        int32_t *map = xmalloc(sizeof(int32_t) * (size_t)head_vocab);
        read_dataset(file, "token_map", H5T_NATIVE_INT32, (hsize_t)head_vocab, map, path);
        for (int r = 0; r < head_vocab; r++)
            if (map[r] < 0 || map[r] >= f.vocab || (r > 0 && map[r] <= map[r - 1]))
                fatal("%s: token_map[%d] is %d: out of the vocabulary (0..%d) or not increasing", path, r, map[r],
                      f.vocab - 1);
        medusa_set_token_map(m, map);
        free(map);
    }
    read_backend_floats(file, "params", m->be, m->params, m->n_params, path);
    if (m->params_bf16) medusa_use_bf16(m); /* the GEMMs' copy of the new parameters (each AdamW step keeps it after) */
    if (adam) {
        read_backend_floats(file, "adam_m", m->be, adam->m, m->n_params, path);
        read_backend_floats(file, "adam_v", m->be, adam->v, m->n_params, path);
    }
    read_dataset(file, "step", H5T_NATIVE_INT64, 1, &meta->step, path);
    if (meta->step < 0 || meta->step > INT_MAX)
        fatal("%s: step %lld is out of range (0..%d); file damaged?", path, (long long)meta->step, INT_MAX);
    read_dataset(file, "rng", H5T_NATIVE_UINT64, 4, meta->rng, path);
    read_dataset(file, "cursor", H5T_NATIVE_INT64, CHECKPOINT_CURSOR_WORDS, meta->cursor, path);
    read_dataset(file, "metrics", H5T_NATIVE_DOUBLE, 4, meta->metrics, path);
    hsize_t len = 0;
    hid_t ds = open_checked(file, "config_json", H5T_INTEGER, 0, CONFIG_JSON_MAX, &len, path);
    meta->config_json = xcalloc((size_t)len + 1, 1);
    if (H5Dread(ds, H5T_NATIVE_CHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, meta->config_json) < 0)
        fatal("%s: cannot read config_json (file damaged?)", path);
    H5Dclose(ds);
    if (strlen(meta->config_json) + 1 < len) fatal("%s: config_json holds a NUL before its end (file damaged?)", path);
    H5Fclose(file);
    if (adam) adam->step = (int)meta->step;
}

MedusaShape checkpoint_shape(const char *path) {
    MedusaShape s;
    H5Fclose(open_checkpoint(path, &s));
    return s;
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
