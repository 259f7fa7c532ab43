/* Bad input to the model loaders: each case must stop with one clear message naming the file and the
 * problem (checked through the fatal hook), never crash or read out of bounds. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "../data/model_tokenizer.h"
#include "../data/sharegpt.h"
#include "../data/token_cache.h"
#include "../model/llama.h"
#include "../train/checkpoint.h"
#include "test.h"

/* A safetensors file with the given JSON header and data_len zero bytes of data. */
static void write_safetensors(const char *path, const char *header, size_t data_len, uint64_t claimed_header_len) {
    size_t h = strlen(header);
    size_t n = 8 + h + data_len;
    uint8_t *buf = calloc(1, n);
    uint64_t len = claimed_header_len ? claimed_header_len : h;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, h);
    write_bytes(path, buf, n);
    free(buf);
}

/* Minimal GGUF writer for the header cases. */
typedef struct {
    uint8_t buf[4096];
    size_t n;
} Bytes;
static void put(Bytes *b, const void *p, size_t n) {
    memcpy(b->buf + b->n, p, n);
    b->n += n;
}
static void put_u32(Bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(Bytes *b, uint64_t v) { put(b, &v, 8); }
static void put_str(Bytes *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_kv_u32(Bytes *b, const char *key, uint32_t v) {
    put_str(b, key);
    put_u32(b, 4);
    put_u32(b, v);
}
static void put_kv_str(Bytes *b, const char *key, const char *v) {
    put_str(b, key);
    put_u32(b, 8);
    put_str(b, v);
}

/* GGUF with one F32 tensor token_embd.weight [4 x 32]; tensor offset and data length adjustable. */
static void write_gguf(const char *path, const char *arch, uint64_t tensor_offset, size_t data_len, uint32_t version) {
    Bytes b = {.n = 0};
    put_u32(&b, 0x46554747u);
    put_u32(&b, version);
    put_u64(&b, 1); /* tensors */
    put_u64(&b, 7); /* kv */
    put_kv_str(&b, "general.architecture", arch);
    put_kv_u32(&b, "llama.embedding_length", 32);
    put_kv_u32(&b, "llama.feed_forward_length", 64);
    put_kv_u32(&b, "llama.block_count", 1);
    put_kv_u32(&b, "llama.attention.head_count", 2);
    put_kv_u32(&b, "llama.attention.head_count_kv", 2);
    put_kv_u32(&b, "llama.vocab_size", 4);
    put_str(&b, "token_embd.weight");
    put_u32(&b, 2);
    put_u64(&b, 32);
    put_u64(&b, 4);
    put_u32(&b, 0); /* F32 */
    put_u64(&b, tensor_offset);
    while (b.n % 32) b.buf[b.n++] = 0;
    memset(b.buf + b.n, 0, data_len);
    b.n += data_len;
    write_bytes(path, b.buf, b.n);
}

static const char *tiny_config =
    "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"vocab_size\": 4, \"rms_norm_eps\": 1e-5}";

/* weights_load_bf16 (raw bf16 bytes where the file holds bf16, else converted) against the fp32 load rounded
 * to bf16: bit-identical for bf16 safetensors shards, fp32 safetensors, and GGUF files of every type, whose llama
 * Q/K rows are un-permuted on the way. */
static void check_bf16_loads(void) {
    const char *sources[] = {"tests/fixtures/models/tiny_llama_bf16_sharded", "tests/fixtures/models/tiny_llama",
                             "tests/fixtures/models/tiny_llama/gguf/tiny_llama.BF16.gguf",
                             "tests/fixtures/models/tiny_llama/gguf/tiny_llama.Q4_1.gguf"};
    const char *names[] = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                           "model.layers.0.mlp.down_proj.weight"};
    const int64_t shapes[][2] = {{64, 64}, {32, 64}, {64, 160}};
    for (size_t s = 0; s < sizeof sources / sizeof sources[0]; s++) {
        WeightSet w;
        int gguf = strstr(sources[s], ".gguf") != NULL;
        if (gguf) weights_open_gguf(&w, sources[s], 4, 2);
        else weights_open_safetensors_dir(&w, sources[s]);
        int same = 1;
        for (size_t t = 0; t < sizeof names / sizeof names[0]; t++) {
            float *wide = weights_load_f32(&w, names[t], 2, shapes[t], 1);
            uint16_t *narrow = weights_load_bf16(&w, names[t], 2, shapes[t], 1);
            for (int64_t i = 0; i < shapes[t][0] * shapes[t][1]; i++) same &= narrow[i] == float_to_bf16(wide[i]);
            free(wide);
            free(narrow);
        }
        CHECK(same, "weights_load_bf16 == the fp32 load rounded, bit for bit: %s (q, k, down)", sources[s]);
        weights_close(&w);
    }
}

/* Replaces (or adds) a dataset of an HDF5 file: rank 0 makes a scalar. data may be NULL (zeros). */
static void h5_replace(const char *path, const char *name, hid_t type, int rank, const hsize_t *dims,
                       const void *data) {
    H5close();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ensure(f >= 0);
    if (H5Lexists(f, name, H5P_DEFAULT) > 0) ensure(H5Ldelete(f, name, H5P_DEFAULT) >= 0);
    hid_t space = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t ds = H5Dcreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ensure(ds >= 0);
    size_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    void *zeros = data ? NULL : calloc(n + 1, 16);
    ensure(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data ? data : zeros) >= 0);
    free(zeros);
    H5Dclose(ds);
    H5Sclose(space);
    H5Fclose(f);
}

/* A load stopped by a fatal error (longjmp in the tests) leaves its HDF5 file open: H5close shuts them all. */
static void copy_file(const char *from, const char *to) {
    H5close();
    size_t n;
    char *d = read_whole_file(from, &n);
    ensure(d);
    write_bytes(to, d, n);
    free(d);
}

/* Flips one byte in the middle of the first stored chunk of dataset name (its data, not HDF5's metadata). */
static void damage_chunk(const char *path, const char *name) {
    H5close();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    hsize_t offset[1];
    unsigned mask;
    haddr_t addr = 0;
    hsize_t size = 0;
    hid_t space = H5Dget_space(ds);
    ensure(H5Dget_chunk_info(ds, space, 0, offset, &mask, &addr, &size) >= 0 && size > 4);
    H5Sclose(space);
    H5Dclose(ds);
    H5Fclose(f);
    size_t n;
    char *bytes = read_whole_file(path, &n);
    ensure(bytes && addr + size <= n);
    bytes[addr + (size - 4) / 2] ^= 0x55;
    write_bytes(path, bytes, n);
    free(bytes);
}

/* Damaged checkpoints: every dataset with another rank (scalar, 2-D), another length or another type class, and
 * header fields and counters out of range, is one named error from checkpoint_load and checkpoint_shape. */
static void check_checkpoints(void) {
    const MedusaShape shape = {2, 1, 8, 16, 8}; /* truncated heads: the file holds a token_map */
    MedusaHeads h;
    medusa_init(&h, backend_cpu(), shape);
    AdamState adam;
    adam_init(&adam, &h);
    CheckpointMeta meta = {.step = 3, .config_json = "{\"lr\": 0.001}"};
    char *good = tmp_path("good.h5"), *bad = tmp_path("bad.h5");
    checkpoint_save(good, &h, &adam, &meta);
    CheckpointMeta out = {0};
    checkpoint_load(good, &h, &adam, &out);
    CHECK(out.step == 3 && !strcmp(out.config_json, meta.config_json), "checkpoint: a good file loads");
    free(out.config_json);

    struct {
        const char *name;
        hid_t type;
        hsize_t n;
    } sets[] = {{"format", H5T_NATIVE_INT32, 5},
                {"params", H5T_NATIVE_FLOAT, h.n_params},
                {"adam_m", H5T_NATIVE_FLOAT, h.n_params},
                {"adam_v", H5T_NATIVE_FLOAT, h.n_params},
                {"step", H5T_NATIVE_INT64, 1},
                {"rng", H5T_NATIVE_UINT64, 4},
                {"cursor", H5T_NATIVE_INT64, CHECKPOINT_CURSOR_WORDS},
                {"metrics", H5T_NATIVE_DOUBLE, 4},
                {"config_json", H5T_NATIVE_CHAR, 16},
                {"token_map", H5T_NATIVE_INT32, 8}};
    int n_sets = (int)(sizeof sets / sizeof sets[0]);
    volatile int named = 1, all = 1;
    for (volatile int i = 0; i < n_sets; i++) {
        for (volatile int variant = 0; variant < 5; variant++) {
            copy_file(good, bad);
            hsize_t dims[2] = {sets[i].n, 2};
            hid_t type = sets[i].type;
            int rank = 2;
            if (variant == 1) rank = 0;                                              /* scalar */
            if (variant == 2) rank = 1, dims[0] = sets[i].n + 1;                     /* one more element */
            if (variant == 3) rank = 1, dims[0] = sets[i].n > 1 ? sets[i].n - 1 : 0; /* one fewer */
            if (variant == 4)                                                        /* the other class of number */
                rank = 1, type = H5Tget_class(type) == H5T_FLOAT ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT;
            if (!strcmp(sets[i].name, "config_json") && variant >= 2 && variant <= 3) continue; /* any length */
            if (rank == 1 && dims[0] == 0) continue;
            h5_replace(bad, sets[i].name, type, rank, dims, NULL);
            test_fatal_msg[0] = '\0';
            set_fatal_hook(test_fatal_hook);
            if (setjmp(test_fatal_jmp) == 0) {
                CheckpointMeta m2 = {0};
                checkpoint_load(bad, &h, &adam, &m2);
                printf("       loaded: %s variant %d\n", sets[i].name, variant);
                all = 0;
            }
            set_fatal_hook(NULL);
            if (!strstr(test_fatal_msg, bad) || !strstr(test_fatal_msg, sets[i].name)) {
                printf("       %s variant %d: %s\n", sets[i].name, variant, test_fatal_msg);
                named = 0;
            }
        }
    }
    CHECK(all, "checkpoint: every dataset as a scalar, 2-D, longer, shorter or of the other type is refused");
    CHECK(named, "checkpoint: each of those errors names the file and the dataset");

    copy_file(good, bad);
    int64_t big = (int64_t)1 << 40;
    hsize_t one = 1;
    h5_replace(bad, "step", H5T_NATIVE_INT64, 1, &one, &big);
    EXPECT_FATAL(checkpoint_load(bad, &h, &adam, &out), "step 1099511627776 is out of range", "checkpoint: step 2^40");
    int64_t neg = -1;
    h5_replace(bad, "step", H5T_NATIVE_INT64, 1, &one, &neg);
    EXPECT_FATAL(checkpoint_load(bad, &h, &adam, &out), "step -1 is out of range", "checkpoint: negative step");

    int32_t headers[][5] = {{1, 0, 1, 8, 16},  {1, 65, 1, 8, 16},      {1, 2, -1, 8, 16},
                            {1, 2, 17, 8, 16}, {1, 2, 1, 0, 16},       {1, 2, 1, -8, 16},
                            {1, 2, 1, 8, -16}, {1, 2, 1, 1 << 30, 16}, {1, 2, 1, 8, 1 << 30}};
    volatile int refused = 1;
    for (volatile size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        copy_file(good, bad);
        hsize_t five = 5;
        h5_replace(bad, "format", H5T_NATIVE_INT32, 1, &five, headers[i]);
        test_fatal_msg[0] = '\0';
        set_fatal_hook(test_fatal_hook);
        if (setjmp(test_fatal_jmp) == 0) {
            checkpoint_shape(bad);
            refused = 0;
        }
        set_fatal_hook(NULL);
        if (!strstr(test_fatal_msg, "header out of range")) refused = 0;
    }
    CHECK(refused, "checkpoint: header fields out of range (heads, layers, hidden, vocab) are refused");

    const char *damaged[] = {"params", "adam_v", "step", "token_map", "config_json"};
    volatile int caught = 1;
    for (volatile size_t i = 0; i < sizeof damaged / sizeof damaged[0]; i++) {
        copy_file(good, bad);
        damage_chunk(bad, damaged[i]);
        test_fatal_msg[0] = '\0';
        set_fatal_hook(test_fatal_hook);
        if (setjmp(test_fatal_jmp) == 0) {
            CheckpointMeta m3 = {0};
            checkpoint_load(bad, &h, &adam, &m3);
            caught = 0;
        }
        set_fatal_hook(NULL);
        if (!strstr(test_fatal_msg, "cannot read") || !strstr(test_fatal_msg, damaged[i])) {
            printf("       %s: %s\n", damaged[i], test_fatal_msg);
            caught = 0;
        }
    }
    CHECK(caught, "checkpoint: one damaged byte in a dataset's data fails its Fletcher-32 checksum, named");

    copy_file(good, bad);
    int32_t map[8] = {0, 1, 2, 3, 4, 5, 7, 6};
    hsize_t eight = 8;
    h5_replace(bad, "token_map", H5T_NATIVE_INT32, 1, &eight, map);
    EXPECT_FATAL(checkpoint_load(bad, &h, &adam, &out), "token_map[7] is 6", "checkpoint: token map out of order");
    map[6] = 6, map[7] = 16;
    h5_replace(bad, "token_map", H5T_NATIVE_INT32, 1, &eight, map);
    EXPECT_FATAL(checkpoint_load(bad, &h, &adam, &out), "token_map[7] is 16", "checkpoint: token map id >= vocab");
    hsize_t many = 17;
    h5_replace(bad, "token_map", H5T_NATIVE_INT32, 1, &many, NULL);
    EXPECT_FATAL(checkpoint_shape(bad), "'token_map' has 17 elements, expected 1..16",
                 "checkpoint: token map longer than the vocabulary");
    adam_free(&adam, &h);
    medusa_free(&h);
}

/* Replaces (or adds) a root attribute: kind 'i' int64, 'd' double, 's' fixed-length string, 'v' variable-length
 * string; n values (n == 0: a scalar). */
static void h5_attr(const char *path, const char *name, char kind, int n, int64_t iv, double dv, const char *sv) {
    H5close();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ensure(f >= 0);
    if (H5Aexists(f, name) > 0) ensure(H5Adelete(f, name) >= 0);
    hsize_t dims = (hsize_t)n;
    hid_t space = n ? H5Screate_simple(1, &dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t type = kind == 'i' ? H5Tcopy(H5T_STD_I64LE) : kind == 'd' ? H5Tcopy(H5T_IEEE_F64LE) : H5Tcopy(H5T_C_S1);
    if (kind == 's') H5Tset_size(type, strlen(sv) + 1);
    if (kind == 'v' || kind == 'u') H5Tset_size(type, H5T_VARIABLE);
    if (kind == 'u') H5Tset_cset(type, H5T_CSET_UTF8); /* as h5py writes a str */
    hid_t a = H5Acreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    ensure(a >= 0);
    int count = n ? n : 1;
    int64_t ivs[8];
    double dvs[8];
    const char *svs[8];
    char *fixed = calloc((size_t)count, strlen(sv ? sv : "") + 1);
    for (int i = 0; i < count; i++) {
        ivs[i] = iv, dvs[i] = dv, svs[i] = sv;
        if (sv) strcpy(fixed + i * (strlen(sv) + 1), sv);
    }
    const void *data = kind == 'i'   ? (const void *)ivs
                       : kind == 'd' ? (const void *)dvs
                       : kind == 's' ? (const void *)fixed
                                     : (const void *)svs;
    ensure(H5Awrite(a, type, data) >= 0);
    free(fixed);
    H5Aclose(a);
    H5Tclose(type);
    H5Sclose(space);
    H5Fclose(f);
}

/* A small token cache: 3 conversations of ids below 256, stamped with fingerprint. */
static void write_small_cache(const char *path, const char *fingerprint) {
    TokenCacheWriter w;
    token_cache_writer_open(&w, path);
    int32_t ids[6] = {1, 5, 9, 2, 200, 7};
    uint8_t mask[6] = {0, 1, 1, 0, 1, 1};
    token_cache_writer_add(&w, ids, mask, 2);
    token_cache_writer_add(&w, ids + 2, mask + 2, 3);
    token_cache_writer_add(&w, ids + 5, mask + 5, 1);
    TokenCacheMeta meta = {.vocab_size = 256, .max_len = 96, .val_fraction = 0.1};
    snprintf(meta.tokenizer_fingerprint, sizeof meta.tokenizer_fingerprint, "%s", fingerprint);
    strcpy(meta.template_name, "chatml");
    strcpy(meta.source, "conversations.json");
    strcpy(meta.source_checksum, "0123456789abcdef");
    strcpy(meta.split, "train");
    token_cache_writer_close(&w, &meta);
}

/* Runs token_cache_load on path; returns 1 when it stopped with an error naming the file and holding needle. */
static int cache_refused(const char *path, const char *needle) {
    TokenCache c;
    test_fatal_msg[0] = '\0';
    set_fatal_hook(test_fatal_hook);
    volatile int failed = 0;
    if (setjmp(test_fatal_jmp) == 0) {
        token_cache_load(&c, path, 0);
        token_cache_free(&c);
    } else {
        failed = 1;
    }
    set_fatal_hook(NULL);
    int ok = failed && strstr(test_fatal_msg, path) && strstr(test_fatal_msg, needle);
    if (!ok) printf("       %s: %s\n", needle, failed ? test_fatal_msg : "loaded");
    return ok;
}

/* Damaged token caches: every attribute stored as an array (of numbers, fixed or variable strings) or as the other
 * kind of value, counters out of range, strings that do not fit, datasets of another rank, and a cache made with
 * another tokenizer than the model's. */
static void check_token_caches(void) {
    const char *model = "tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf";
    ModelTokenizer mt;
    model_tokenizer_load(&mt, model, 0);
    char fp[32];
    token_cache_fingerprint(mt.tok, fp);
    model_tokenizer_free(&mt);
    char *good = tmp_path("good.tokens.h5"), *bad = tmp_path("bad.tokens.h5");
    write_small_cache(good, fp);
    TokenCache c;
    token_cache_load(&c, good, 256);
    token_cache_check_model(&c, good, model);
    CHECK(c.n_convs == 3 && c.n_tokens == 6 && !strcmp(c.meta.tokenizer_fingerprint, fp),
          "cache: a good file loads and matches its model's tokenizer");
    token_cache_free(&c);

    write_small_cache(bad, "0123456789abcdef");
    token_cache_load(&c, bad, 256);
    EXPECT_FATAL(token_cache_check_model(&c, bad, model), "made with tokenizer 0123456789abcdef",
                 "cache: made with another tokenizer than the model's -> fatal");
    token_cache_free(&c);

    const char *ints[] = {"format_version", "vocab_size", "max_len", "truncated", "skipped_empty"};
    const char *strs[] = {"tokenizer_fingerprint", "template", "source", "source_checksum", "split"};
    volatile int all = 1;
    for (int i = 0; i < 5; i++) {
        copy_file(good, bad);
        h5_attr(bad, ints[i], 'i', 3, 1, 0, NULL);
        all &= cache_refused(bad, ints[i]);
        h5_attr(bad, ints[i], 's', 0, 0, 0, "1");
        all &= cache_refused(bad, ints[i]);
        h5_attr(bad, ints[i], 'v', 4, 0, 0, "1");
        all &= cache_refused(bad, ints[i]);
        copy_file(good, bad);
        h5_attr(bad, strs[i], 's', 3, 0, 0, "abcdef");
        all &= cache_refused(bad, strs[i]);
        h5_attr(bad, strs[i], 'v', 5, 0, 0, "abcdef");
        all &= cache_refused(bad, strs[i]);
        h5_attr(bad, strs[i], 'i', 0, 7, 0, NULL);
        all &= cache_refused(bad, strs[i]);
    }
    copy_file(good, bad);
    h5_attr(bad, "val_fraction", 'd', 2, 0, 0.5, NULL);
    all &= cache_refused(bad, "val_fraction");
    CHECK(all, "cache: every attribute as an array, or as the other kind of value, is a named error");
    /* the string attributes as h5py writes a Python str (variable length, UTF-8: bench/make_random_model.py's cache) */
    copy_file(good, bad);
    for (int i = 0; i < 5; i++) h5_attr(bad, strs[i], 'u', 0, 0, 0, i == 0 ? fp : "r\xc3\xa9sum\xc3\xa9");
    token_cache_load(&c, bad, 256);
    CHECK(!strcmp(c.meta.tokenizer_fingerprint, fp) && !strcmp(c.meta.template_name, "r\xc3\xa9sum\xc3\xa9") &&
              !strcmp(c.meta.split, "r\xc3\xa9sum\xc3\xa9"),
          "cache: string attributes written as h5py writes them (variable-length UTF-8) load: template \"%s\"",
          c.meta.template_name);
    token_cache_free(&c);

    struct {
        const char *name;
        char kind;
        int64_t iv;
        double dv;
    } ranges[] = {{"vocab_size", 'i', -1, 0},    {"vocab_size", 'i', (int64_t)1 << 40, 0},
                  {"max_len", 'i', -1, 0},       {"truncated", 'i', -1, 0},
                  {"skipped_empty", 'i', -5, 0}, {"val_fraction", 'd', 0, 1.5},
                  {"val_fraction", 'd', 0, -0.1}};
    all = 1;
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        copy_file(good, bad);
        h5_attr(bad, ranges[i].name, ranges[i].kind, 0, ranges[i].iv, ranges[i].dv, NULL);
        all &= cache_refused(bad, "outside");
    }
    CHECK(all, "cache: counters out of range are named errors");
    char longer[600];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    copy_file(good, bad);
    h5_attr(bad, "source", 'v', 0, 0, 0, longer);
    CHECK(cache_refused(bad, "'source' is 599 bytes long"), "cache: a string attribute too long is refused, not cut");

    const char *sets[] = {"tokens", "loss_mask", "conv_offsets"};
    all = 1;
    for (int i = 0; i < 3; i++) {
        hsize_t dims[2] = {4, 2};
        copy_file(good, bad);
        h5_replace(bad, sets[i], H5T_NATIVE_INT64, 2, dims, NULL);
        all &= cache_refused(bad, sets[i]);
        h5_replace(bad, sets[i], H5T_NATIVE_INT64, 0, dims, NULL);
        all &= cache_refused(bad, sets[i]);
        h5_replace(bad, sets[i], H5T_NATIVE_DOUBLE, 1, dims, NULL);
        all &= cache_refused(bad, sets[i]);
    }
    CHECK(all, "cache: datasets as scalars, 2-D or floating point are named errors");
    copy_file(good, bad);
    int64_t off[4] = {0, 2, (int64_t)1 << 62, 6};
    hsize_t four = 4;
    h5_replace(bad, "conv_offsets", H5T_NATIVE_INT64, 1, &four, off);
    CHECK(cache_refused(bad, "past the 6 tokens"), "cache: an offset past the tokens is refused");
    all = 1;
    for (int i = 0; i < 3; i++) {
        copy_file(good, bad);
        damage_chunk(bad, sets[i]);
        all &= cache_refused(bad, "cannot read dataset");
    }
    CHECK(all, "cache: one damaged byte in tokens, loss_mask or conv_offsets fails its Fletcher-32 checksum");
    { /* 2^40 tokens claimed by a chunked extent whose chunks were never written: refused before any allocation */
        copy_file(good, bad);
        hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        H5Ldelete(f, "tokens", H5P_DEFAULT);
        hsize_t huge = (hsize_t)1 << 40, chunk = 1024;
        hid_t space = H5Screate_simple(1, &huge, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_chunk(dcpl, 1, &chunk);
        H5Dclose(H5Dcreate2(f, "tokens", H5T_NATIVE_INT32, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
        H5Pclose(dcpl);
        H5Sclose(space);
        H5Fclose(f);
        CHECK(cache_refused(bad, "claims 1099511627776 elements but the file stores 0 bytes"),
              "cache: a dataset claiming elements the file does not hold is refused");
    }
}

/* GGUF with two F32 tensors (token_embd.weight [4 x 32] at 0, output_norm.weight [32] at norm_offset), a
 * 4-token vocabulary, the given block count and (when eos >= 0) EOS id; huge_dim replaces the norm's length. */
static void write_gguf2(const char *path, uint64_t block_count, int64_t eos, uint64_t norm_offset, uint64_t huge_dim) {
    Bytes b = {.n = 0};
    put_u32(&b, 0x46554747u);
    put_u32(&b, 3);
    put_u64(&b, 2);
    put_u64(&b, eos >= 0 ? 6 : 5);
    put_kv_str(&b, "general.architecture", "llama");
    put_kv_u32(&b, "llama.embedding_length", 32);
    put_str(&b, "llama.block_count");
    put_u32(&b, 10); /* uint64 */
    put_u64(&b, block_count);
    put_str(&b, "tokenizer.ggml.tokens");
    put_u32(&b, 9); /* array */
    put_u32(&b, 8); /* of strings */
    put_u64(&b, 4);
    const char *toks[] = {"<s>", "</s>", "a", "b"};
    for (int i = 0; i < 4; i++) put_str(&b, toks[i]);
    if (eos >= 0) put_kv_u32(&b, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    put_kv_u32(&b, "tokenizer.ggml.bos_token_id", 0);
    put_str(&b, "token_embd.weight");
    put_u32(&b, 2);
    put_u64(&b, 32);
    put_u64(&b, 4);
    put_u32(&b, 0);
    put_u64(&b, 0);
    put_str(&b, "output_norm.weight");
    put_u32(&b, huge_dim ? 2 : 1);
    put_u64(&b, 32);
    if (huge_dim) put_u64(&b, huge_dim);
    put_u32(&b, 0);
    put_u64(&b, norm_offset);
    while (b.n % 32) b.buf[b.n++] = 0;
    size_t data = 512 + 128 + 64;
    memset(b.buf + b.n, 0, data);
    b.n += data;
    write_bytes(path, b.buf, b.n);
}

/* Sizes that overflow, tensors sharing bytes, absurd counts and special token ids outside the vocabulary, in
 * safetensors and GGUF headers: each a named error. */
static void check_sizes_and_overlaps(void) {
    WeightSet w;
    GGUFFile g;
    char *st = tmp_path("sizes.safetensors");
    write_safetensors(
        st, "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 0]}}", 0, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "element count overflows",
                 "safetensors: [2^32, 2^32] elements (2^64, wraps to 0) claiming 0 bytes");
    write_safetensors(st,
                      "{\"a\": {\"dtype\": \"BF16\", \"shape\": [65536, 65536, 65536, 65536], \"data_offsets\": [0, "
                      "0]}}",
                      0, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "element count overflows",
                 "safetensors: [2^16]*4 elements claiming 0 bytes");
    write_safetensors(
        st, "{\"a\": {\"dtype\": \"I64\", \"shape\": [2147483648, 2147483648], \"data_offsets\": [0, 0]}}", 0, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "byte size overflows",
                 "safetensors: [2^31, 2^31] I64 elements (2^65 bytes, wraps to 0)");
    write_safetensors(st, "{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "invalid shape", "safetensors: fractional dimension");
    write_safetensors(st, "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [\"0\", 4]}}", 4, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "outside the data section", "safetensors: offset not a number");
    write_safetensors(st,
                      "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, \"b\": {\"dtype\": "
                      "\"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
                      24, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "overlap", "safetensors: two tensors share bytes");
    write_safetensors(st,
                      "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, \"b\": {\"dtype\": "
                      "\"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}}",
                      16, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "overlap", "safetensors: two tensors on the same bytes");
    write_safetensors(st,
                      "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, \"e\": {\"dtype\": "
                      "\"F32\", \"shape\": [0], \"data_offsets\": [8, 8]}, \"b\": {\"dtype\": \"F32\", \"shape\": [2], "
                      "\"data_offsets\": [16, 24]}}",
                      24, 0);
    weights_open_safetensors_file(&w, st);
    CHECK(w.n_tensors == 3, "safetensors: adjacent tensors and an empty one load");
    weights_close(&w);

    char *gg = tmp_path("sizes.gguf");
    write_gguf2(gg, 1, 1, 512, 0);
    gguf_open(&g, gg);
    CHECK(g.n_tensors == 2, "gguf: a well-formed two-tensor file parses");
    gguf_close(&g);
    write_gguf2(gg, 1, 1, 256, 0);
    EXPECT_FATAL(gguf_open(&g, gg), "overlap", "gguf: two tensors share bytes");
    write_gguf2(gg, 1, 1, 0, 0);
    EXPECT_FATAL(gguf_open(&g, gg), "overlap", "gguf: two tensors at one offset");
    write_gguf2(gg, 2147483647, 1, 512, 0);
    EXPECT_FATAL(gguf_open(&g, gg), "'llama.block_count' is 2147483647", "gguf: absurd block count names the field");
    write_gguf2(gg, (uint64_t)1 << 63, 1, 512, 0);
    EXPECT_FATAL(gguf_open(&g, gg), "llama.block_count", "gguf: block count above 2^63");
    write_gguf2(gg, 0, 1, 512, 0);
    EXPECT_FATAL(gguf_open(&g, gg), "llama.block_count", "gguf: block count 0");
    write_gguf2(gg, 1, 4, 512, 0);
    EXPECT_FATAL(gguf_open(&g, gg), "'tokenizer.ggml.eos_token_id' is 4", "gguf: EOS id outside the vocabulary");
    write_gguf2(gg, 1, 1, 512, (uint64_t)1 << 40);
    EXPECT_FATAL(gguf_open(&g, gg), "'output_norm.weight' data", "gguf: a 2^45-element tensor in a small file");
    write_gguf2(gg, 1, 1, 512, ((uint64_t)1 << 40) + 1);
    EXPECT_FATAL(gguf_open(&g, gg), "invalid dimension", "gguf: dimension above 2^40");

    /* every GGUF the project ships or fetches passes the checks */
    const char *files[] = {"tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf",
                           "tests/fixtures/models/tiny_llama/gguf/tiny_llama.Q4_1.gguf",
                           "tests/fixtures/models/tiny_llama/gguf/tiny_llama.Q8_0.gguf",
                           "tests/fixtures/models/tiny_tied/gguf/tiny_tied.F32.gguf",
                           "cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"};
    int opened = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (!file_exists(files[i])) continue;
        gguf_open(&g, files[i]);
        gguf_close(&g);
        opened++;
    }
    CHECK(opened >= 4, "gguf: the fixtures and the demo model pass the header checks (%d files)", opened);
}

typedef struct {
    int n;
    int64_t skipped[SKIP_COUNT];
    char last_text[64];
} Read;

/* Reads a ShareGPT file through (count first, as medusa-data does). */
static Read read_sharegpt(const char *path) {
    Read out = {0};
    ShareGPTReader r;
    sharegpt_open(&r, path);
    (void)sharegpt_count(&r);
    Conversation c;
    while (sharegpt_next(&r, &c)) {
        out.n++;
        const Turn *t = &c.turns[c.n_turns - 1];
        snprintf(out.last_text, sizeof out.last_text, "%.*s", (int)t->len, t->text);
        conversation_free(&c);
    }
    memcpy(out.skipped, r.skipped, sizeof out.skipped);
    sharegpt_close(&r);
    return out;
}

#define CONV(reply)                                                                                                    \
    "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"" reply "\"}]}"

/* ShareGPT structure as strict as a JSON parser: stray brackets and commas between conversations (which used to
 * spin forever), a second top-level value, a list never closed, and prose are named errors; strings that a C
 * string would cut (\u0000, a raw NUL) or that JSON forbids (raw control characters, short \u escapes) are
 * counted skips; duplicate keys take the last value, as Python's json does. */
static void check_sharegpt(void) {
    char *p = tmp_path("sg.json");
    const struct {
        const char *text, *needle, *what;
    } fatal_cases[] = {
        {CONV("a") "}", "expected '{' (the next conversation) or the end of the file, found '}'",
         "objects: a stray '}' after a conversation"},
        {CONV("a") "]", "found ']'", "objects: a stray ']' after a conversation"},
        {CONV("a") ",", "found ','", "objects: a stray ',' after a conversation"},
        {CONV("a") "," CONV("b"), "found ','", "objects: conversations separated by ','"},
        {CONV("a") "\n\"text\"", "found '\"'", "objects: a string between conversations"},
        {"[" CONV("a") "] [" CONV("b") "]", "'[' after the list of conversations", "list: a second top-level list"},
        {"[" CONV("a") "] trailing", "'t' after the list", "list: trailing garbage"},
        {"[" CONV("a") "]\0", "0x00 after the list", "list: a NUL after the list"},
        {"[" CONV("a") ", " CONV("b"), "no closing ']'", "list: the closing ']' missing"},
        {"[" CONV("a") ",", "no closing ']'", "list: ends after a ','"},
        {"[" CONV("a") ",]", "expected a conversation after ','", "list: a trailing ','"},
        {"[" CONV("a") ",," CONV("b") "]", "expected a conversation after ','", "list: two ','"},
        {"[,]", "expected a conversation, found ','", "list: only a ','"},
        {"[" CONV("a") "}", "expected ',' or ']'", "list: a stray '}'"},
        {"{ this is not json", "not valid JSON", "prose after '{': not JSON, not a cut conversation"},
        {"[{ this is not json", "not valid JSON", "prose after '[{'"},
    };
    for (size_t i = 0; i < sizeof fatal_cases / sizeof fatal_cases[0]; i++) {
        size_t len = strlen(fatal_cases[i].text);
        if (strstr(fatal_cases[i].what, "NUL")) len++; /* the NUL itself */
        write_bytes(p, fatal_cases[i].text, len);
        EXPECT_FATAL(read_sharegpt(p), fatal_cases[i].needle, "sharegpt: %s", fatal_cases[i].what);
        CHECK(strstr(test_fatal_msg, p) != NULL, "sharegpt: ... and the message names the file");
    }

    const struct {
        const char *text;
        size_t len; /* 0: strlen */
        const char *what;
    } skips[] = {
        {"[" CONV("a") ", " CONV("cut\\u0000here") "]", 0, "\\u0000 in a string"},
        {"[" CONV("a") ", " CONV("raw\0NUL") "]", 0, "a raw NUL in a string"},
        {"[" CONV("a") ", " CONV("raw\ttab") "]", 0, "a raw tab in a string"},
        {"[" CONV("a") ", " CONV("short \\u12 escape") "]", 0, "a \\u escape with two hex digits"},
        {"[" CONV("a") ", " CONV("bad \\uzzzz escape") "]", 0, "a \\u escape with no hex digits"},
    };
    for (size_t i = 0; i < sizeof skips / sizeof skips[0]; i++) {
        const char *t = skips[i].text;
        size_t len = strlen(t);
        if (strstr(skips[i].what, "raw NUL")) len += strlen(t + len + 1) + 1;
        write_bytes(p, t, len);
        Read r = read_sharegpt(p);
        CHECK(r.n == 1 && r.skipped[SKIP_INVALID_JSON] == 1 && !strcmp(r.last_text, "a"),
              "sharegpt: %s is a counted skip, never a cut string (read %d, invalid %lld)", skips[i].what, r.n,
              (long long)r.skipped[SKIP_INVALID_JSON]);
    }

    write_text(p, "[{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}], \"conversations\": [{\"from\": "
                  "\"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"first\", \"value\": \"last\"}]}]");
    Read r = read_sharegpt(p);
    CHECK(r.n == 1 && !strcmp(r.last_text, "last"), "sharegpt: duplicate keys take the last value, as Python's json");

    char *jl = tmp_path("sg.jsonl");
    write_text(jl, CONV("a") "\n" CONV("b") " trailing\n" CONV("c") "\n");
    r = read_sharegpt(jl);
    CHECK(r.n == 2 && r.skipped[SKIP_INVALID_JSON] == 1, "sharegpt: a JSON line with trailing garbage is counted");

    write_text(p, "[" CONV("a") ", {\"conversations\": [{\"from\": \"human\", \"val");
    r = read_sharegpt(p);
    CHECK(r.n == 1 && r.skipped[SKIP_TRUNCATED_FILE] == 1 && r.skipped[SKIP_INVALID_JSON] == 0,
          "sharegpt: a file cut inside a conversation still reads the ones before it");
    write_text(p, CONV("a") "\n" CONV("b") "\n\n");
    r = read_sharegpt(p);
    CHECK(r.n == 2, "sharegpt: objects separated by whitespace read");
    free(jl);
    free(p);
}

int main(void) {
    make_tmpdir("/tmp/medusa-loaders-XXXXXX");
    alarm(300); /* a loader that hangs fails the test */
    check_sharegpt();
    check_bf16_loads();
    check_checkpoints();
    check_token_caches();
    check_sizes_and_overlaps();
    WeightSet w;
    ModelConfig c;
    Model m;

    char *st = tmp_path("bad.safetensors");
    write_bytes(st, "\x01\x02\x03", 3);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "truncated safetensors",
                 "safetensors: file shorter than its length field");
    write_safetensors(st, "{}", 0, 1000);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "runs past the end",
                 "safetensors: header length beyond the file");
    write_safetensors(st, "{\"a\": {\"dtype\": \"F32\", ", 0, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "not valid JSON", "safetensors: malformed JSON header");
    write_safetensors(st, "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "outside the data section",
                 "safetensors: tensor offsets beyond the data");
    write_safetensors(st, "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 16]}}", 16, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "need 12", "safetensors: byte count not matching shape");
    write_safetensors(st, "{\"a\": {\"dtype\": \"I8\", \"shape\": [4], \"data_offsets\": [0, 4]}}", 4, 0);
    EXPECT_FATAL(weights_open_safetensors_file(&w, st), "unsupported dtype I8", "safetensors: unsupported dtype");
    CHECK(strstr(test_fatal_msg, st) != NULL, "error message names the file (%.400s)", test_fatal_msg);

    char *cfg = tmp_path("config.json");
    write_text(cfg, "{\"model_type\": \"llama\", \"hidden_size\": 8,");
    EXPECT_FATAL(config_from_json(&c, cfg), "malformed JSON", "config.json: malformed JSON");
    write_text(cfg, "{\"model_type\": \"gpt_neox\", \"hidden_size\": 8}");
    EXPECT_FATAL(config_from_json(&c, cfg), "unknown architecture \"gpt_neox\"", "config.json: unknown architecture");
    write_text(cfg, "{\"model_type\": \"llama\", \"hidden_size\": 8}");
    EXPECT_FATAL(config_from_json(&c, cfg), "missing required field \"intermediate_size\"",
                 "config.json: missing field");
    write_text(cfg,
               "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 3, \"num_key_value_heads\": 2, \"vocab_size\": 4}");
    EXPECT_FATAL(config_from_json(&c, cfg), "not a multiple", "config.json: heads not a multiple of kv heads");

    /* shape that does not match config.json: embedding [4, 7] where hidden_size is 8 */
    write_text(cfg, tiny_config);
    char *model_st = tmp_path("model.safetensors");
    write_safetensors(
        model_st,
        "{\"model.embed_tokens.weight\": {\"dtype\": \"F32\", \"shape\": [4, 7], \"data_offsets\": [0, 112]}}", 112, 0);
    EXPECT_FATAL(model_load(&m, tmpdir, backend_cpu(), DT_F32), "has shape [4, 7] but the model config needs [4, 8]",
                 "model: tensor shape vs config.json");
    write_safetensors(
        model_st,
        "{\"model.embed_tokens.weight\": {\"dtype\": \"BF16\", \"shape\": [4, 8], \"data_offsets\": [0, 64]}}", 64, 0);
    EXPECT_FATAL(model_load(&m, tmpdir, backend_cpu(), DT_F32),
                 "tensor 'model.layers.0.self_attn.q_proj.weight' is missing", "model: missing tensor");
    unlink(model_st);
    EXPECT_FATAL(model_load(&m, tmpdir, backend_cpu(), DT_F32), "no model.safetensors",
                 "model: directory without weights");
    char *index = tmp_path("model.safetensors.index.json");
    write_text(index, "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\"}}");
    EXPECT_FATAL(model_load(&m, tmpdir, backend_cpu(), DT_F32), "does not exist", "model: index names a missing shard");
    write_text(index, "{\"weight_map\": 3}");
    EXPECT_FATAL(model_load(&m, tmpdir, backend_cpu(), DT_F32), "malformed index", "model: malformed shard index");

    char *gg = tmp_path("m.gguf");
    GGUFFile g;
    write_bytes(gg, "GGUF", 4);
    EXPECT_FATAL(gguf_open(&g, gg), "truncated GGUF header", "gguf: truncated header");
    write_bytes(gg, "GGML\x03\0\0\0", 8);
    EXPECT_FATAL(gguf_open(&g, gg), "not a GGUF file", "gguf: bad magic");
    write_gguf(gg, "llama", 0, 4 * 32 * 4, 1);
    EXPECT_FATAL(gguf_open(&g, gg), "unsupported GGUF version 1", "gguf: unsupported version");
    write_gguf(gg, "llama", 0, 100, 3);
    EXPECT_FATAL(gguf_open(&g, gg), "lies beyond the end of the file", "gguf: truncated tensor data");
    write_gguf(gg, "llama", 1u << 20, 4 * 32 * 4, 3);
    EXPECT_FATAL(gguf_open(&g, gg), "lies beyond the end of the file", "gguf: tensor offset out of range");
    write_gguf(gg, "falcon", 0, 4 * 32 * 4, 3);
    EXPECT_FATAL(model_load(&m, gg, backend_cpu(), DT_F32), "unknown architecture \"falcon\"",
                 "gguf: unknown architecture");
    write_gguf(gg, "llama", 0, 4 * 32 * 4, 3);
    gguf_open(&g, gg);
    CHECK(g.n_tensors == 1 && g.tensors[0].ne[0] == 32 && g.tensors[0].ne[1] == 4, "gguf: well-formed header parses");
    gguf_close(&g);
    EXPECT_FATAL(model_load(&m, gg, backend_cpu(), DT_F32), "missing", "gguf: model with missing tensors");
    {
        /* A truncated copy of a well-formed file fails cleanly at every length. */
        size_t size;
        char *full = read_whole_file(gg, &size);
        volatile int clean = 1;
        for (volatile size_t len = 0; len < size; len += 7) {
            write_bytes(gg, full, len);
            test_fatal_msg[0] = '\0';
            set_fatal_hook(test_fatal_hook);
            if (setjmp(test_fatal_jmp) == 0) {
                gguf_open(&g, gg);
                gguf_close(&g);
                clean = 0; /* a truncated file must not load */
            }
            set_fatal_hook(NULL);
            if (!strstr(test_fatal_msg, gg)) clean = 0;
        }
        free(full);
        CHECK(clean, "gguf: every truncation of a valid file is a named error");
    }
    EXPECT_FATAL(model_load(&m, "/nonexistent/model", backend_cpu(), DT_F32), "not a model directory",
                 "model: missing path");
    remove_tmpdir();
    return test_summary();
}
