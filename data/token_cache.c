#include "token_cache.h"

#include "../formats/atomic_file.h"
#include "model_tokenizer.h"

#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK ((hsize_t)1 << 16)        /* elements per HDF5 chunk */
#define FLUSH_TOKENS ((int64_t)1 << 20) /* pending tokens written at once */

uint64_t hash64(const void *data, size_t n, uint64_t h) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

void token_cache_fingerprint(const Tokenizer *tok, char out[32]) {
    int kind = tokenizer_kind(tok), v = tokenizer_vocab_size(tok);
    uint64_t h = hash64(&kind, sizeof kind, HASH64_INIT);
    h = hash64(&v, sizeof v, h);
    for (int id = 0; id < v; id++) {
        const char *p = tokenizer_piece(tok, id);
        h = hash64(p, strlen(p) + 1, h);
    }
    snprintf(out, 32, "%016" PRIx64, h);
}

/* ---- writing ---- */

/* Temp files of writers still open, removed if the process exits (fatal error, Ctrl-C) before they are
 * finished. */
static char *unfinished[8];

static void remove_unfinished(void) {
    for (int i = 0; i < 8; i++)
        if (unfinished[i]) unlink(unfinished[i]);
}

static void remove_unfinished_and_die(int sig) {
    remove_unfinished();
    signal(sig, SIG_DFL);
    raise(sig);
}

static hid_t create_growing(hid_t file, const char *name, hid_t type, const char *path) {
    hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk = CHUNK;
    hid_t space = H5Screate_simple(1, &zero, &unlimited);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, &chunk);
    H5Pset_fletcher32(dcpl);         /* a checksum per chunk: HDF5 refuses a damaged chunk on every read */
    H5Pset_obj_track_times(dcpl, 0); /* no timestamps: the same input gives the same file, byte for byte */
    hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) fatal("%s: cannot create dataset '%s'", path, name);
    H5Pclose(dcpl);
    H5Sclose(space);
    return ds;
}

static void append(hid_t ds, hid_t type, const void *data, hsize_t at, hsize_t n, const char *path) {
    if (n == 0) return;
    hsize_t size = at + n;
    if (H5Dset_extent(ds, &size) < 0) fatal("%s: cannot grow dataset", path);
    hid_t space = H5Dget_space(ds), mem = H5Screate_simple(1, &n, NULL);
    H5Sselect_hyperslab(space, H5S_SELECT_SET, &at, NULL, &n, NULL);
    if (H5Dwrite(ds, type, mem, space, H5P_DEFAULT, data) < 0) fatal("%s: cannot write (disk full?)", path);
    H5Sclose(mem);
    H5Sclose(space);
}

static void flush(TokenCacheWriter *w) {
    hsize_t at = (hsize_t)(w->n_tokens - w->n_buf);
    append(w->ds_tokens, H5T_NATIVE_INT32, w->buf_tokens, at, (hsize_t)w->n_buf, w->tmp_path);
    append(w->ds_mask, H5T_NATIVE_UINT8, w->buf_mask, at, (hsize_t)w->n_buf, w->tmp_path);
    w->n_buf = 0;
}

void token_cache_writer_open(TokenCacheWriter *w, const char *path) {
    memset(w, 0, sizeof *w);
    w->path = xstrdup(path);
    w->tmp_path = xmalloc(strlen(path) + 5);
    sprintf(w->tmp_path, "%s.tmp", path);
    static int registered;
    if (!registered) {
        atexit(remove_unfinished);
        signal(SIGINT, remove_unfinished_and_die);
        signal(SIGTERM, remove_unfinished_and_die);
    }
    registered = 1;
    for (int i = 0; i < 8; i++)
        if (!unfinished[i]) {
            unfinished[i] = w->tmp_path;
            break;
        }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0);
    w->file = H5Fcreate(w->tmp_path, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    H5Pclose(fcpl);
    if (w->file < 0) fatal("%s: cannot create", w->tmp_path);
    w->ds_tokens = create_growing(w->file, "tokens", H5T_STD_I32LE, w->tmp_path);
    w->ds_mask = create_growing(w->file, "loss_mask", H5T_STD_U8LE, w->tmp_path);
    w->buf_tokens = xmalloc(FLUSH_TOKENS * sizeof *w->buf_tokens);
    w->buf_mask = xmalloc(FLUSH_TOKENS);
    w->cap_convs = 1024;
    w->offsets = xmalloc((size_t)w->cap_convs * sizeof *w->offsets);
    w->offsets[0] = 0;
}

void token_cache_writer_add(TokenCacheWriter *w, const int32_t *ids, const uint8_t *mask, int n) {
    for (int done = 0; done < n;) {
        int64_t k = n - done < FLUSH_TOKENS - w->n_buf ? n - done : FLUSH_TOKENS - w->n_buf;
        memcpy(w->buf_tokens + w->n_buf, ids + done, (size_t)k * sizeof *ids);
        memcpy(w->buf_mask + w->n_buf, mask + done, (size_t)k);
        w->n_buf += k;
        w->n_tokens += k;
        done += (int)k;
        if (w->n_buf == FLUSH_TOKENS) flush(w);
    }
    if (w->n_convs + 2 > w->cap_convs) {
        w->cap_convs *= 2;
        w->offsets = xrealloc(w->offsets, (size_t)w->cap_convs * sizeof *w->offsets);
    }
    w->offsets[++w->n_convs] = w->n_tokens;
}

static void attr_int(hid_t file, const char *name, int64_t v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Sclose(space);
}

static void attr_double(hid_t file, const char *name, double v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a);
    H5Sclose(space);
}

static void attr_str(hid_t file, const char *name, const char *v) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(v) + 1);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, v);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
}

void token_cache_writer_close(TokenCacheWriter *w, const TokenCacheMeta *m) {
    flush(w);
    hsize_t n = (hsize_t)w->n_convs + 1;
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t chunk = n < CHUNK ? n : CHUNK;
    H5Pset_chunk(dcpl, 1, &chunk);
    H5Pset_fletcher32(dcpl);
    H5Pset_obj_track_times(dcpl, 0);
    hid_t ds = H5Dcreate2(w->file, "conv_offsets", H5T_STD_I64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->offsets) < 0)
        fatal("%s: cannot write conv_offsets", w->tmp_path);
    H5Dclose(ds);
    H5Sclose(space);
    attr_int(w->file, "format_version", TOKEN_CACHE_VERSION);
    attr_str(w->file, "tokenizer_fingerprint", m->tokenizer_fingerprint);
    attr_int(w->file, "vocab_size", m->vocab_size);
    attr_str(w->file, "template", m->template_name);
    attr_str(w->file, "source", m->source);
    attr_str(w->file, "source_checksum", m->source_checksum);
    attr_int(w->file, "max_len", m->max_len);
    attr_str(w->file, "split", m->split);
    attr_double(w->file, "val_fraction", m->val_fraction);
    attr_int(w->file, "truncated", m->truncated);
    for (int r = 0; r < SKIP_COUNT; r++) {
        char key[64];
        snprintf(key, sizeof key, "skipped_%s", skip_reason_key((SkipReason)r));
        attr_int(w->file, key, m->skipped[r]);
    }
    H5Dclose(w->ds_tokens);
    H5Dclose(w->ds_mask);
    if (H5Fclose(w->file) < 0) fatal("%s: cannot finish the file (disk full?)", w->tmp_path);
    sync_file(w->tmp_path);
    rename_durably(w->tmp_path, w->path);
    for (int i = 0; i < 8; i++)
        if (unfinished[i] == w->tmp_path) unfinished[i] = NULL;
    free(w->path);
    free(w->tmp_path);
    free(w->buf_tokens);
    free(w->buf_mask);
    free(w->offsets);
    memset(w, 0, sizeof *w);
}

/* ---- reading ---- */

/* Opens attribute name after checking it holds exactly one value of class cls (a scalar, or h5py's 1-element
 * array): HDF5 writes every element of an array attribute into the caller's single variable. Returns -1 when the
 * attribute is absent. */
static hid_t open_attr(hid_t file, const char *name, H5T_class_t cls, const char *path) {
    if (H5Aexists(file, name) <= 0) return -1;
    hid_t a = H5Aopen(file, name, H5P_DEFAULT);
    if (a < 0) fatal("%s: cannot read attribute '%s' (file damaged?)", path, name);
    hid_t space = H5Aget_space(a), type = H5Aget_type(a);
    if (space < 0 || type < 0) fatal("%s: cannot read attribute '%s' (file damaged?)", path, name);
    H5S_class_t sc = H5Sget_simple_extent_type(space);
    hssize_t points = H5Sget_simple_extent_npoints(space);
    if ((sc != H5S_SCALAR && sc != H5S_SIMPLE) || points != 1)
        fatal("%s: attribute '%s' must hold one value, not %lld (file damaged or not a token cache?)", path, name,
              (long long)(sc == H5S_NULL ? 0 : points));
    if (H5Tget_class(type) != cls)
        fatal("%s: attribute '%s' has the wrong type (expected %s)", path, name,
              cls == H5T_INTEGER ? "an integer"
              : cls == H5T_FLOAT ? "a number"
                                 : "a string");
    H5Sclose(space);
    H5Tclose(type);
    return a;
}

/* An integer attribute within [lo, hi] into *out; returns 0 (out untouched) when absent. */
static int read_attr_int(hid_t file, const char *name, int64_t lo, int64_t hi, int64_t *out, const char *path) {
    hid_t a = open_attr(file, name, H5T_INTEGER, path);
    if (a < 0) return 0;
    int64_t v = 0;
    if (H5Aread(a, H5T_NATIVE_INT64, &v) < 0) fatal("%s: cannot read attribute '%s' (file damaged?)", path, name);
    H5Aclose(a);
    if (v < lo || v > hi)
        fatal("%s: attribute '%s' is %lld, outside %lld..%lld (file damaged?)", path, name, (long long)v, (long long)lo,
              (long long)hi);
    *out = v;
    return 1;
}

/* Fixed- or variable-length string attribute (h5py writes the latter) into out; "" when absent. A string that
 * does not fit, or that holds a NUL before its end, is an error (never silently cut). */
static void read_attr_str(hid_t file, const char *name, char *out, size_t cap, const char *path) {
    out[0] = '\0';
    hid_t a = open_attr(file, name, H5T_STRING, path);
    if (a < 0) return;
    hid_t type = H5Aget_type(a);
    char *s = NULL;
    size_t n = 0;
    int ok;
    if (H5Tis_variable_str(type) > 0) {
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        H5Tset_cset(mem, H5Tget_cset(type)); /* h5py writes UTF-8, which HDF5 does not convert to ASCII */
        ok = H5Aread(a, mem, &s) >= 0;
        H5Tclose(mem);
        n = s ? strlen(s) : 0;
    } else {
        n = H5Tget_size(type);
        if (n > ((size_t)1 << 20)) fatal("%s: attribute '%s' claims %zu bytes (file damaged?)", path, name, n);
        s = xcalloc(n + 1, 1);
        ok = H5Aread(a, type, s) >= 0;
        /* fixed-length strings are NUL-terminated or NUL-padded: the text ends at the first NUL, and only NULs
         * may follow it */
        size_t len = strlen(s);
        for (size_t i = len; i < n; i++)
            if (s[i]) fatal("%s: attribute '%s' holds a NUL inside its text (file damaged?)", path, name);
        n = len;
    }
    if (!ok) fatal("%s: cannot read attribute '%s' (file damaged?)", path, name);
    if (n >= cap) fatal("%s: attribute '%s' is %zu bytes long, more than the %zu it may have", path, name, n, cap - 1);
    memcpy(out, s ? s : "", n + 1);
    free(s);
    H5Tclose(type);
    H5Aclose(a);
}

/* Largest dataset a token cache may claim (2^40 elements: far above any real corpus, far below overflow). */
#define MAX_ELEMENTS ((hsize_t)1 << 40)

/* A whole 1-D integer dataset, converted to mem_type; returns its length. */
static int64_t read_array(hid_t file, const char *name, hid_t mem_type, size_t elem, void **out, const char *path) {
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0) fatal("%s: not a token cache: no dataset '%s'", path, name);
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) fatal("%s: '%s' is not a readable dataset (file damaged?)", path, name);
    hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
    if (space < 0 || type < 0) fatal("%s: cannot read the shape of dataset '%s' (file damaged?)", path, name);
    hsize_t n = 0;
    if (H5Tget_class(type) != H5T_INTEGER || H5Sget_simple_extent_type(space) != H5S_SIMPLE ||
        H5Sget_simple_extent_ndims(space) != 1 || H5Sget_simple_extent_dims(space, &n, NULL) != 1)
        fatal("%s: dataset '%s' must be a 1-D integer array", path, name);
    if (n > MAX_ELEMENTS)
        fatal("%s: dataset '%s' claims %llu elements (file damaged?)", path, name, (unsigned long long)n);
    /* the elements must be in the file: a damaged extent can claim 2^40 of them that were never written (HDF5
     * would hand back fill values). Without compression the stored bytes hold them all; compressed, at most ~1000:1. */
    hid_t dcpl = H5Dget_create_plist(ds);
    int compressed = 0, n_filters = dcpl >= 0 ? H5Pget_nfilters(dcpl) : 0;
    for (int i = 0; i < n_filters; i++) {
        unsigned flags;
        size_t n_values = 0;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &n_values, NULL, 0, NULL, NULL);
        if (id != H5Z_FILTER_FLETCHER32) compressed = 1;
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    hsize_t stored = H5Dget_storage_size(ds), need = n * (hsize_t)H5Tget_size(type);
    if (compressed ? need / 1024 > stored + 1024 : stored < need)
        fatal("%s: dataset '%s' claims %llu elements but the file stores %llu bytes of them (file damaged?)", path,
              name, (unsigned long long)n, (unsigned long long)stored);
    *out = malloc(n ? (size_t)n * elem : 1);
    if (!*out) fatal("%s: dataset '%s' of %llu elements does not fit in memory", path, name, (unsigned long long)n);
    if (n > 0 && H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
        fatal("%s: cannot read dataset '%s' (file damaged?)", path, name);
    H5Tclose(type);
    H5Sclose(space);
    H5Dclose(ds);
    return (int64_t)n;
}

void token_cache_load(TokenCache *c, const char *path, int64_t vocab_size) {
    memset(c, 0, sizeof *c);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!file_exists(path)) fatal("%s: no such token cache", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) fatal("%s: cannot open as HDF5 (not a token cache, or damaged)", path);
    TokenCacheMeta *m = &c->meta;
    int64_t version = 0;
    if (!read_attr_int(file, "format_version", INT64_MIN, INT64_MAX, &version, path))
        fatal("%s: not a token cache (no format_version attribute)", path);
    if (version != TOKEN_CACHE_VERSION)
        fatal("%s: token cache format version %lld, this build reads version %d (re-run medusa-data)", path,
              (long long)version, TOKEN_CACHE_VERSION);
    read_attr_str(file, "tokenizer_fingerprint", m->tokenizer_fingerprint, sizeof m->tokenizer_fingerprint, path);
    read_attr_str(file, "template", m->template_name, sizeof m->template_name, path);
    read_attr_str(file, "source", m->source, sizeof m->source, path);
    read_attr_str(file, "source_checksum", m->source_checksum, sizeof m->source_checksum, path);
    read_attr_str(file, "split", m->split, sizeof m->split, path);
    read_attr_int(file, "vocab_size", 0, INT32_MAX, &m->vocab_size, path);
    read_attr_int(file, "max_len", 0, INT32_MAX, &m->max_len, path);
    read_attr_int(file, "truncated", 0, INT64_MAX, &m->truncated, path);
    hid_t a = open_attr(file, "val_fraction", H5T_FLOAT, path);
    if (a >= 0) {
        if (H5Aread(a, H5T_NATIVE_DOUBLE, &m->val_fraction) < 0)
            fatal("%s: cannot read attribute 'val_fraction' (file damaged?)", path);
        H5Aclose(a);
        if (!(m->val_fraction >= 0 && m->val_fraction < 1))
            fatal("%s: attribute 'val_fraction' is %g, outside [0, 1) (file damaged?)", path, m->val_fraction);
    }
    for (int r = 0; r < SKIP_COUNT; r++) {
        char key[64];
        snprintf(key, sizeof key, "skipped_%s", skip_reason_key((SkipReason)r));
        read_attr_int(file, key, 0, INT64_MAX, &m->skipped[r], path);
    }

    c->n_tokens = read_array(file, "tokens", H5T_NATIVE_INT32, sizeof *c->tokens, (void **)&c->tokens, path);
    int64_t n_mask = read_array(file, "loss_mask", H5T_NATIVE_UINT8, 1, (void **)&c->loss_mask, path);
    int64_t n_off =
        read_array(file, "conv_offsets", H5T_NATIVE_INT64, sizeof *c->conv_offsets, (void **)&c->conv_offsets, path);
    H5Fclose(file);

    if (n_mask != c->n_tokens)
        fatal("%s: loss_mask has %lld entries but tokens has %lld", path, (long long)n_mask, (long long)c->n_tokens);
    if (n_off < 1) fatal("%s: conv_offsets is empty (it needs C+1 entries, starting with 0)", path);
    c->n_convs = n_off - 1;
    const int64_t *off = c->conv_offsets;
    if (off[0] != 0) fatal("%s: conv_offsets[0] is %lld, not 0", path, (long long)off[0]);
    for (int64_t i = 1; i <= c->n_convs; i++) {
        if (off[i] <= off[i - 1])
            fatal("%s: conv_offsets not increasing at %lld (%lld after %lld)", path, (long long)i, (long long)off[i],
                  (long long)off[i - 1]);
        if (off[i] > c->n_tokens)
            fatal("%s: conv_offsets[%lld] is %lld, past the %lld tokens", path, (long long)i, (long long)off[i],
                  (long long)c->n_tokens);
        if (off[i] - off[i - 1] > INT32_MAX)
            fatal("%s: conversation %lld has %lld tokens (at most %d)", path, (long long)i - 1,
                  (long long)(off[i] - off[i - 1]), INT32_MAX);
    }
    if (off[c->n_convs] != c->n_tokens)
        fatal("%s: conv_offsets ends at %lld but there are %lld tokens", path, (long long)off[c->n_convs],
              (long long)c->n_tokens);
    int64_t v = vocab_size > 0 ? vocab_size : m->vocab_size;
    for (int64_t i = 0; i < c->n_tokens; i++) {
        if (c->loss_mask[i] > 1)
            fatal("%s: loss_mask[%lld] is %d (must be 0 or 1)", path, (long long)i, c->loss_mask[i]);
        if (c->tokens[i] < 0 || (v > 0 && c->tokens[i] >= v))
            fatal("%s: token id %d at position %lld is outside the model's vocabulary of %lld", path, c->tokens[i],
                  (long long)i, (long long)v);
    }
}

void token_cache_check_model(const TokenCache *c, const char *path, const char *model) {
    if (!c->meta.tokenizer_fingerprint[0]) return; /* nothing to compare (a cache written by other tools) */
    ModelTokenizer mt;
    model_tokenizer_load(&mt, model, 1);
    if (mt.tok) {
        char fp[32];
        token_cache_fingerprint(mt.tok, fp);
        if (strcmp(fp, c->meta.tokenizer_fingerprint) != 0)
            fatal("%s: made with tokenizer %s (vocabulary %lld) but %s has tokenizer %s (vocabulary %d): its token "
                  "ids mean other text; re-run medusa-data with this model",
                  path, c->meta.tokenizer_fingerprint, (long long)c->meta.vocab_size, model, fp,
                  tokenizer_vocab_size(mt.tok));
    }
    model_tokenizer_free(&mt);
}

void token_cache_free(TokenCache *c) {
    free(c->tokens);
    free(c->loss_mask);
    free(c->conv_offsets);
    memset(c, 0, sizeof *c);
}
