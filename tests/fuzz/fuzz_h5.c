/* Structure fuzzer for the HDF5 readers (train/checkpoint.c, data/token_cache.c), built under AddressSanitizer by
 * `make fuzz`. Its seeds are written here: a checkpoint of truncated heads (with a token map), one of full heads, and
 * a token cache. Each input is a seed with a few of its datasets and attributes changed through HDF5 itself: another
 * rank (scalar, 1-D, 2-D, 3-D), another length (0, one off, 2^40 of unallocated chunks), another type (8-, 32- and
 * 64-bit integers, floats, fixed and variable strings), extreme values, or removed; sometimes the file is then cut
 * short. Every load must end in a clean result or one fatal() message; an out-of-bounds access (in our code, or in
 * HDF5 writing past a buffer we gave it) is reported by ASan and fails the run. */
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/rng.h"
#include "../../data/token_cache.h"
#include "../../train/checkpoint.h"
#include "fuzz.h"

static const char *const ckpt_sets[] = {"format", "params", "adam_m",  "adam_v",      "step",
                                        "rng",    "cursor", "metrics", "config_json", "token_map"};
static const char *const cache_sets[] = {"tokens", "loss_mask", "conv_offsets"};
static const char *const cache_attrs[] = {
    "format_version", "tokenizer_fingerprint", "vocab_size", "template",     "source", "source_checksum", "max_len",
    "split",          "val_fraction",          "truncated",  "skipped_empty"};

static hid_t pick_type(Rng *rng) {
    switch (rng_below(rng, 7)) {
    case 0:
        return H5Tcopy(H5T_NATIVE_INT8);
    case 1:
        return H5Tcopy(H5T_NATIVE_INT32);
    case 2:
        return H5Tcopy(H5T_NATIVE_INT64);
    case 3:
        return H5Tcopy(H5T_NATIVE_FLOAT);
    case 4:
        return H5Tcopy(H5T_NATIVE_DOUBLE);
    case 5: {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, 1 + rng_below(rng, 40));
        return t;
    }
    default: {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        return t;
    }
    }
}

/* A dataspace of a random rank and extents (1-D extents near n, or huge); *count its elements (0 when huge). */
static hid_t pick_space(Rng *rng, hsize_t n, hsize_t *count, int *huge) {
    int rank = (int)rng_below(rng, 4);
    *huge = 0;
    if (rank == 0) {
        *count = 1;
        return H5Screate(H5S_SCALAR);
    }
    hsize_t dims[3] = {n, 2, 3};
    if (rank == 1) {
        switch (rng_below(rng, 5)) {
        case 0:
            dims[0] = 0;
            break;
        case 1:
            dims[0] = n + 1;
            break;
        case 2:
            dims[0] = n > 0 ? n - 1 : 0;
            break;
        case 3:
            dims[0] = (hsize_t)1 << 40, *huge = 1;
            break;
        default:
            dims[0] = 1 + rng_below(rng, 64);
        }
    }
    *count = 1;
    for (int i = 0; i < rank; i++) *count *= dims[i];
    return H5Screate_simple(rank, dims, NULL);
}

/* Replaces dataset name with a random one (or removes it). */
static void mutate_dataset(hid_t f, const char *name, Rng *rng) {
    hsize_t n = 4;
    if (H5Lexists(f, name, H5P_DEFAULT) > 0) {
        hid_t ds = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(ds);
        hssize_t pts = H5Sget_simple_extent_npoints(sp);
        n = pts > 0 ? (hsize_t)pts : 1;
        H5Sclose(sp);
        H5Dclose(ds);
        H5Ldelete(f, name, H5P_DEFAULT);
    }
    if (rng_below(rng, 8) == 0) return; /* removed */
    hsize_t count;
    int huge;
    hid_t space = pick_space(rng, n, &count, &huge), type = pick_type(rng);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (huge) {
        hsize_t chunk = 1024;
        H5Pset_chunk(dcpl, 1, &chunk); /* 2^40 elements that take no room until written */
    }
    hid_t ds = H5Dcreate2(f, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds >= 0 && !huge && count > 0 && count < (1u << 20) && H5Tis_variable_str(type) <= 0) {
        size_t bytes = (size_t)count * H5Tget_size(type);
        uint8_t *data = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) data[i] = (uint8_t)(rng_below(rng, 3) ? rng_next(rng) : 0);
        H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
        free(data);
    }
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(dcpl);
    H5Tclose(type);
    H5Sclose(space);
}

/* Writes v into the integer dataset name's element at (one of the checked counters and offsets), if it exists. */
static void poke_int(hid_t f, const char *name, Rng *rng) {
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) return;
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(ds), type = H5Dget_type(ds);
    hssize_t pts = H5Sget_simple_extent_npoints(sp);
    if (pts > 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Tget_class(type) == H5T_INTEGER) {
        static const int64_t extremes[] = {-1, 0, 1, INT32_MAX, INT32_MIN, (int64_t)1 << 40, INT64_MAX, INT64_MIN};
        hsize_t at = rng_below(rng, (uint64_t)pts), one = 1;
        int64_t v = extremes[rng_below(rng, 8)];
        hid_t mem = H5Screate_simple(1, &one, NULL);
        H5Sselect_hyperslab(sp, H5S_SELECT_SET, &at, NULL, &one, NULL);
        H5Dwrite(ds, H5T_NATIVE_INT64, mem, sp, H5P_DEFAULT, &v);
        H5Sclose(mem);
    }
    H5Tclose(type);
    H5Sclose(sp);
    H5Dclose(ds);
}

/* Replaces attribute name with one of a random type and dataspace (or removes it). */
static void mutate_attr(hid_t f, const char *name, Rng *rng) {
    if (H5Aexists(f, name) > 0) H5Adelete(f, name);
    if (rng_below(rng, 8) == 0) return;
    hsize_t count;
    int huge;
    hid_t space = pick_space(rng, 1, &count, &huge), type = pick_type(rng);
    if (huge) {
        H5Sclose(space);
        hsize_t d = 1 + rng_below(rng, 16);
        space = H5Screate_simple(1, &d, NULL);
        count = d;
    }
    hid_t a = H5Acreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0 && count > 0) {
        if (H5Tis_variable_str(type) > 0) {
            const char **strs = malloc(sizeof *strs * (size_t)count);
            for (hsize_t i = 0; i < count; i++) strs[i] = rng_below(rng, 2) ? "text" : "";
            H5Awrite(a, type, strs);
            free(strs);
        } else {
            size_t bytes = (size_t)count * H5Tget_size(type);
            uint8_t *data = malloc(bytes);
            for (size_t i = 0; i < bytes; i++) data[i] = (uint8_t)(rng_below(rng, 3) ? rng_next(rng) : 0);
            H5Awrite(a, type, data);
            free(data);
        }
    }
    if (a >= 0) H5Aclose(a);
    H5Tclose(type);
    H5Sclose(space);
}

static void copy_file(const char *from, const char *to, size_t cut) {
    size_t n;
    char *d = fuzz_read_seed(from, &n);
    fuzz_write_input(to, d, cut && cut < n ? cut : n);
    free(d);
}

static void make_seeds(const char *dir, const MedusaShape *shapes, char paths[3][256]) {
    for (int s = 0; s < 2; s++) {
        MedusaHeads h;
        medusa_init(&h, backend_cpu(), shapes[s]);
        AdamState adam;
        adam_init(&adam, &h);
        CheckpointMeta meta = {.step = 5, .config_json = "{\"lr\": 0.001, \"heads\": 2}"};
        snprintf(paths[s], 256, "%s/seed%d.h5", dir, s);
        checkpoint_save(paths[s], &h, &adam, &meta);
        adam_free(&adam, &h);
        medusa_free(&h);
    }
    snprintf(paths[2], 256, "%s/seed.tokens.h5", dir);
    TokenCacheWriter w;
    token_cache_writer_open(&w, paths[2]);
    int32_t ids[8] = {1, 5, 9, 2, 200, 7, 3, 3};
    uint8_t mask[8] = {0, 1, 1, 0, 1, 1, 0, 1};
    token_cache_writer_add(&w, ids, mask, 3);
    token_cache_writer_add(&w, ids + 3, mask + 3, 5);
    TokenCacheMeta meta = {.vocab_size = 256, .max_len = 96, .val_fraction = 0.1};
    strcpy(meta.tokenizer_fingerprint, "0123456789abcdef");
    strcpy(meta.template_name, "chatml");
    strcpy(meta.source, "conversations.json");
    strcpy(meta.split, "train");
    token_cache_writer_close(&w, &meta);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fuzz_h5 ITERATIONS\n");
        return 2;
    }
    long iterations = atol(argv[1]), loaded = 0, rejected = 0;
    char dir[] = "/tmp/medusa-fuzz-h5-XXXXXX";
    if (!mkdtemp(dir)) return 2;
    const MedusaShape shapes[2] = {{2, 1, 8, 16, 8}, {1, 0, 8, 16, 16}};
    char seeds[3][256], input[300];
    make_seeds(dir, shapes, seeds);
    Rng rng;
    rng_seed(&rng, 11);
    for (int s = 0; s < 3; s++) {
        snprintf(input, sizeof input, "%s/input%s", dir, s == 2 ? ".tokens.h5" : ".h5");
        double start = now_seconds();
        for (long i = 0; i < iterations && now_seconds() - start < fuzz_seconds(); i++) {
            H5close(); /* a load stopped by fatal() leaves its file open */
            copy_file(seeds[s], input, 0);
            H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
            hid_t f = H5Fopen(input, H5F_ACC_RDWR, H5P_DEFAULT);
            if (f < 0) return 2;
            int edits = 1 + (int)rng_below(&rng, 3);
            for (int e = 0; e < edits; e++) {
                int what = (int)rng_below(&rng, 3);
                if (s < 2 && what == 0) mutate_dataset(f, ckpt_sets[rng_below(&rng, 10)], &rng);
                else if (s < 2) poke_int(f, rng_below(&rng, 2) ? "format" : "step", &rng);
                else if (what == 0) mutate_dataset(f, cache_sets[rng_below(&rng, 3)], &rng);
                else if (what == 1) poke_int(f, cache_sets[rng_below(&rng, 3)], &rng);
                else mutate_attr(f, cache_attrs[rng_below(&rng, 11)], &rng);
            }
            H5Fclose(f);
            if (rng_below(&rng, 16) == 0) { /* and cut short */
                size_t n;
                free(fuzz_read_seed(input, &n));
                copy_file(input, input, 1 + rng_below(&rng, n));
            }
            set_fatal_hook(fuzz_fatal_to_jump);
            alarm(FUZZ_HANG_SECONDS);
            if (setjmp(fuzz_on_fatal) == 0) {
                if (s < 2) {
                    (void)checkpoint_shape(input);
                    MedusaHeads h;
                    medusa_init(&h, backend_cpu(), shapes[s]);
                    AdamState adam;
                    adam_init(&adam, &h);
                    CheckpointMeta meta = {0};
                    checkpoint_load(input, &h, &adam, &meta);
                    free(meta.config_json);
                    adam_free(&adam, &h);
                    medusa_free(&h);
                } else {
                    TokenCache c;
                    token_cache_load(&c, input, 256);
                    token_cache_free(&c);
                }
                loaded++;
            } else {
                rejected++;
            }
            alarm(0);
            set_fatal_hook(NULL);
        }
    }
    printf("fuzz_h5: %ld inputs loaded cleanly, %ld rejected with a message, no memory errors\n", loaded, rejected);
    return 0;
}
