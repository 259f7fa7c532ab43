/* Shared by the mutation fuzzers (tests/fuzz/fuzz_*.c, run by `make fuzz` under ASan/UBSan): fatal() turned into a
 * jump back into the fuzzer, and the seed and input files. */
#ifndef MEDUSA_FUZZ_H
#define MEDUSA_FUZZ_H

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../common/common.h"

static jmp_buf fuzz_on_fatal;
/* set_fatal_hook(fuzz_fatal_to_jump) before a call that may reject its input: setjmp(fuzz_on_fatal) returns 1 then */
static void fuzz_fatal_to_jump(const char *message) {
    (void)message;
    longjmp(fuzz_on_fatal, 1);
}

/* a seed file's bytes, or exit status 2 */
static char *fuzz_read_seed(const char *path, size_t *size) {
    char *seed = read_whole_file(path, size);
    if (!seed) {
        fprintf(stderr, "fuzz: cannot read seed %s\n", path);
        exit(2);
    }
    return seed;
}

/* the mutated input, written where the code under test reads it, or exit status 2 */
static void fuzz_write_input(const char *path, const void *buf, size_t size) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(buf, 1, size, fp) != size || fclose(fp) != 0) {
        fprintf(stderr, "fuzz: cannot write %s\n", path);
        exit(2);
    }
}

/* Seconds each seed may take (FUZZ_SECONDS, default 20): a seed's run stops at its iteration count or its time,
 * whichever comes first, so `make fuzz` has a bounded running time on any machine. */
static double fuzz_seconds(void) {
    const char *e = getenv("FUZZ_SECONDS");
    double s = e ? atof(e) : 20;
    return s > 0 ? s : 20;
}

/* A read that runs this long is a hang: SIGALRM ends the fuzzer (and `make fuzz`) with a failure. */
#define FUZZ_HANG_SECONDS 30

#endif
