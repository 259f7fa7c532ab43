/* Minimal test harness: each tests/test_*.c is a program whose checks are counted; the last line it
 * prints is "N passed, N failed" and tests/run.sh adds them up. expect_fatal() runs a call that must fail
 * through fatal() and captures the message instead of exiting. */
#ifndef MEDUSA_TEST_H
#define MEDUSA_TEST_H

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include "../common/common.h"

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

#endif
