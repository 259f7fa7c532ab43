/* Mutation fuzzer for the model-file loaders, built under AddressSanitizer by `make fuzz`: takes valid
 * GGUF / safetensors files as seeds, flips bytes, truncates, overwrites length fields with extreme values,
 * replaces numbers of a safetensors header (dimensions, offsets) with extreme ones, and loads each result. Every
 * outcome must be a clean load or a fatal() message naming the file; any out-of-bounds access is reported by ASan and
 * fails the run. */
#include <stdlib.h>
#include <string.h>

#include "../../common/rng.h"
#include "../../formats/gguf.h"
#include "../../formats/weights.h"
#include "fuzz.h"

/* safetensors: one number of the JSON header (a dimension or an offset) replaced by an extreme one, the length
 * field adjusted so that the header stays JSON: sizes that overflow, offsets that overlap, fractions. */
static void mutate_header_number(uint8_t *buf, size_t *size, size_t capacity, Rng *rng) {
    static const char *const numbers[] = {"4294967296",
                                          "18446744073709551616",
                                          "9007199254740993",
                                          "0",
                                          "1.5",
                                          "-1",
                                          "1e300",
                                          "65536",
                                          "4611686018427387904",
                                          "8"};
    if (*size < 8) return;
    uint64_t h = 0;
    for (int i = 0; i < 8; i++) h |= (uint64_t)buf[i] << (8 * i);
    if (h < 2 || h > *size - 8) return;
    size_t at = 8 + (size_t)rng_below(rng, h), end = 8 + (size_t)h;
    while (at < end && !(buf[at] >= '0' && buf[at] <= '9')) at++;
    if (at >= end) return;
    size_t stop = at;
    while (stop < end && buf[stop] >= '0' && buf[stop] <= '9') stop++;
    const char *num = numbers[rng_below(rng, 10)];
    size_t k = strlen(num), old = stop - at;
    if (*size - old + k > capacity) return;
    memmove(buf + at + k, buf + stop, *size - stop);
    memcpy(buf + at, num, k);
    *size = *size - old + k;
    h = h - old + k;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(h >> (8 * i));
}

static void mutate(uint8_t *buf, size_t *size, size_t capacity, int is_gguf, Rng *rng) {
    int edits = 1 + (int)rng_below(rng, 4);
    for (int e = 0; e<edits && * size> 0; e++) {
        size_t at = (size_t)rng_below(rng, *size);
        if (!is_gguf && rng_below(rng, 3) == 0) {
            mutate_header_number(buf, size, capacity, rng);
            continue;
        }
        switch (rng_below(rng, 4)) {
        case 0:
            buf[at] ^= (uint8_t)(1u << rng_below(rng, 8));
            break;
        case 1:
            buf[at] = (uint8_t)rng_next(rng);
            break;
        case 2:
            *size = at;
            break; /* truncate */
        default:   /* an extreme 8-byte little-endian value, as a length or offset would be */
            if (at + 8 <= *size) {
                uint64_t v = rng_below(rng, 2) ? ~0ull : (1ull << rng_below(rng, 63));
                memcpy(buf + at, &v, 8);
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: fuzz_loaders ITERATIONS SEED_FILE...\n");
        return 2;
    }
    long iterations = atol(argv[1]);
    const char *out = "/tmp/medusa-fuzz-input";
    Rng rng;
    rng_seed(&rng, 42);
    long loaded = 0, rejected = 0;
    for (int f = 2; f < argc; f++) {
        size_t seed_size;
        char *seed = fuzz_read_seed(argv[f], &seed_size);
        int is_gguf = seed_size >= 4 && memcmp(seed, "GGUF", 4) == 0;
        size_t capacity = seed_size + 256;
        uint8_t *buf = malloc(capacity);
        double start = now_seconds();
        for (long i = 0; i < iterations && now_seconds() - start < fuzz_seconds(); i++) {
            size_t size = seed_size;
            memcpy(buf, seed, seed_size);
            mutate(buf, &size, capacity, is_gguf, &rng);
            char path[64];
            snprintf(path, sizeof path, "%s%s", out, is_gguf ? ".gguf" : ".safetensors");
            fuzz_write_input(path, buf, size);
            set_fatal_hook(fuzz_fatal_to_jump);
            if (setjmp(fuzz_on_fatal) == 0) {
                WeightSet w;
                if (is_gguf) weights_open_gguf(&w, path, 0, 0);
                else weights_open_safetensors_file(&w, path);
                /* touch every tensor's bytes through the dequantiser, and the bf16 load (bf16 bytes copied as stored)
                 */
                for (int t = 0; t < w.n_tensors; t++) {
                    const WeightTensor *wt = &w.tensors[t];
                    if (wt->dtype == DT_I32) continue;
                    int64_t shape[4];
                    memcpy(shape, wt->shape, sizeof shape);
                    free(weights_load_f32(&w, wt->name, wt->n_dims, shape, 1));
                    free(weights_load_bf16(&w, wt->name, wt->n_dims, shape, 1));
                }
                weights_close(&w);
                loaded++;
            } else {
                rejected++;
            }
            set_fatal_hook(NULL);
        }
        free(buf);
        free(seed);
    }
    printf("fuzz: %ld inputs loaded cleanly, %ld rejected with a message, no memory errors\n", loaded, rejected);
    return 0;
}
