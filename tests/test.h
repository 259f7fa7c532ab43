/* Minimal test harness: each tests/test_*.c is a program whose checks are counted; the last line it
 * prints is "N passed, N failed" and tests/run.sh adds them up. expect_fatal() runs a call that must fail
 * through fatal() and captures the message instead of exiting. Below the harness, the helpers several tests
 * share: a scratch directory, writing files, reading JSON fixtures, random fills. */
#ifndef MEDUSA_TEST_H
#define MEDUSA_TEST_H

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../common/dtype.h"
#include "../common/rng.h"

static int test_passed, test_failed;
static jmp_buf test_fatal_jmp;
static char test_fatal_msg[2048];

static inline void test_check(int ok, const char *what, const char *file, int line) {
    if (ok) {
        test_passed++;
        printf("  ok   %s\n", what);
    } else {
        test_failed++;
        printf("  FAIL %s  [%s:%d]\n", what, file, line);
    }
    fflush(stdout);
}
#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        char what_[512];                                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                                    \
        test_check((cond) ? 1 : 0, what_, __FILE__, __LINE__);                                                         \
    } while (0)

/* Max absolute error and max error relative to the reference's largest magnitude. */
static inline void max_errors(const float *got, const float *want, size_t n, double *abs_err, double *rel_err) {
    double m = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    }
    *abs_err = m;
    *rel_err = scale > 0 ? m / scale : m;
}

/* Index of the largest of n values (the first on ties), as torch.argmax picks a reference's top-1. */
static inline int row_argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

static inline void test_fatal_hook(const char *message) {
    snprintf(test_fatal_msg, sizeof test_fatal_msg, "%s", message);
    longjmp(test_fatal_jmp, 1);
}

/* Runs stmt; passes when it calls fatal() with a message containing `needle`. */
#define EXPECT_FATAL(stmt, needle, ...)                                                                                \
    do {                                                                                                               \
        char what_[512];                                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                                    \
        test_fatal_msg[0] = '\0';                                                                                      \
        set_fatal_hook(test_fatal_hook);                                                                               \
        volatile int failed_ = 0;                                                                                      \
        if (setjmp(test_fatal_jmp) == 0) {                                                                             \
            stmt;                                                                                                      \
        } else {                                                                                                       \
            failed_ = 1;                                                                                               \
        }                                                                                                              \
        set_fatal_hook(NULL);                                                                                          \
        int ok_ = failed_ && strstr(test_fatal_msg, (needle)) != NULL;                                                 \
        if (failed_) printf("       error was: %s\n", test_fatal_msg);                                                 \
        test_check(ok_, what_, __FILE__, __LINE__);                                                                    \
    } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* ---- shared helpers ---- */

/* The program's scratch directory: make_tmpdir creates it from a mkdtemp template ("/tmp/medusa-data-XXXXXX"),
 * tmp_path names a file in it (malloc'd), remove_tmpdir deletes it with everything in it. */
static char tmpdir[256];

static inline const char *make_tmpdir(const char *tmpl) {
    snprintf(tmpdir, sizeof tmpdir, "%s", tmpl);
    ensure(mkdtemp(tmpdir));
    return tmpdir;
}

static inline char *tmp_path(const char *name) { return path_join(tmpdir, name); }

static inline void remove_tmpdir(void) {
    char cmd[sizeof tmpdir + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("       (could not remove %s)\n", tmpdir);
}

static inline void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) fatal("%s: cannot write", path);
    fclose(f);
}

static inline void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* A JSON fixture, parsed; fatal when it cannot be read or is not JSON. */
static inline cJSON *read_json(const char *path) {
    size_t size;
    char *text = read_whole_file(path, &size);
    if (!text) fatal("%s: cannot read (%s)", path, strerror(errno));
    cJSON *j = cJSON_ParseWithLength(text, size);
    if (!j) fatal("%s: not valid JSON", path);
    free(text);
    return j;
}

/* n values uniform in [-scale, scale). */
static inline void fill_uniform(float *x, size_t n, float scale, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * rng_uniform(rng) - 1.0f);
}

/* a finite half in about [-2, 2] (exponents 2^-6 .. 2^1, and now and then a subnormal), little-endian at p */
static inline void put_random_half(uint8_t *p, Rng *rng) {
    uint32_t r = (uint32_t)rng_next(rng);
    uint16_t exp = (r % 16 == 0) ? 0 : (uint16_t)(9 + r % 8);
    uint16_t h = (uint16_t)((((r >> 8) & 1) << 15) | (exp << 10) | ((r >> 12) & 0x3ff));
    p[0] = (uint8_t)h, p[1] = (uint8_t)(h >> 8);
}

/* rows [rows, cols] of a weight format (common/dtype.h) with random bits, every quant value occurring, and finite
 * scales (xmalloc'd) */
static inline uint8_t *random_packed_rows(DType type, int rows, int cols, Rng *rng) {
    size_t n = dtype_row_bytes(type, cols) * (size_t)rows, block_bytes;
    dtype_block(type, &block_bytes);
    uint8_t *w = (uint8_t *)xmalloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) w[i] = (uint8_t)rng_next(rng);
    for (size_t b = 0; block_bytes && b < n / block_bytes; b++) {
        uint8_t *blk = w + b * block_bytes;
        if (type == DT_BF16) blk[1] = (uint8_t)((blk[1] & 0x80) | (0x3c + rng_below(rng, 5))); /* about [-4, 4] */
        if (type == DT_F16 || type == DT_Q8_0 || type == DT_Q4_0 || type == DT_Q4_1 || type == DT_Q5_0 ||
            type == DT_Q5_1 || type == DT_Q4_K || type == DT_Q5_K)
            put_random_half(blk, rng);
        if (type == DT_Q4_1 || type == DT_Q5_1 || type == DT_Q4_K || type == DT_Q5_K) put_random_half(blk + 2, rng);
        if (type == DT_Q6_K) put_random_half(blk + 208, rng);
    }
    return w;
}

#endif
