/* Mutation fuzzer for the ShareGPT reader (data/sharegpt.c), built under AddressSanitizer by `make fuzz`: its
 * bracket-matching scanner cuts a file of any size into one conversation at a time without a full JSON parse, so it
 * must survive any bytes. Seeds are valid ShareGPT files (a JSON list, or JSON lines when the name ends in .jsonl);
 * each is mutated (bytes flipped, quotes, backslashes and brackets inserted or removed, stray brackets and commas
 * after a conversation, NULs and bad escapes in strings, truncation) and read through
 * to the end. Every outcome must be conversations, skips counted by reason, or a fatal() message; any out-of-bounds
 * access is reported by ASan and fails the run. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/rng.h"
#include "../../data/sharegpt.h"
#include "fuzz.h"

static void insert(char *buf, size_t *size, size_t capacity, size_t at, const char *what) {
    size_t k = strlen(what);
    if (*size + k > capacity) return;
    memmove(buf + at + k, buf + at, *size - at);
    memcpy(buf + at, what, k);
    *size += k;
}

static void mutate(char *buf, size_t *size, size_t capacity, Rng *rng) {
    static const char structural[] = "\"\\[]{},:\n ";
    static const char *const strays[] = {"}", "]", ",", "[", "{", " ,", "\n}", "]]", "\"x\""};
    static const char *const escapes[] = {"\\u0000", "\\u12", "\\uzzzz", "\\ud800", "\t", "\\"};
    int edits = 1 + (int)rng_below(rng, 6);
    for (int e = 0; e<edits && * size> 0; e++) {
        size_t at = (size_t)rng_below(rng, *size);
        switch (rng_below(rng, 7)) {
        case 5: { /* a stray bracket or comma right after a conversation (the scanner once spun forever on these) */
            const char *close = memchr(buf + at, '}', *size - at);
            if (close) insert(buf, size, capacity, (size_t)(close - buf) + 1, strays[rng_below(rng, 9)]);
            break;
        }
        case 6: { /* an escape a C string would cut at, or one JSON forbids, inside a string */
            const char *quote = memchr(buf + at, '"', *size - at);
            if (quote) insert(buf, size, capacity, (size_t)(quote - buf) + 1, escapes[rng_below(rng, 6)]);
            if (rng_below(rng, 4) == 0 && quote && (size_t)(quote - buf) + 1 < *size)
                buf[quote - buf + 1] = '\0'; /* a raw NUL */
            break;
        }
        case 0:
            buf[at] ^= (char)(1u << rng_below(rng, 8));
            break;
        case 1: /* overwrite with a character the scanner reacts to */
            buf[at] = structural[rng_below(rng, sizeof structural - 1)];
            break;
        case 2: /* insert one */
            if (*size < capacity) {
                memmove(buf + at + 1, buf + at, *size - at);
                buf[at] = structural[rng_below(rng, sizeof structural - 1)];
                (*size)++;
            }
            break;
        case 3: /* delete one */
            memmove(buf + at, buf + at + 1, *size - at - 1);
            (*size)--;
            break;
        default: /* truncate */
            *size = at;
        }
    }
}

static volatile unsigned char sink; /* every byte of every turn is read into it, so ASan checks each turn's bounds */

/* Reads the file through to the end; 1 when it was rejected with a fatal() message. */
static int read_through(const char *path, long *conversations) {
    ShareGPTReader r;
    volatile int opened = 0, rejected = 0;
    set_fatal_hook(fuzz_fatal_to_jump);
    if (setjmp(fuzz_on_fatal) == 0) {
        alarm(FUZZ_HANG_SECONDS);
        sharegpt_open(&r, path);
        opened = 1;
        (void)sharegpt_count(&r);
        Conversation c;
        while (sharegpt_next(&r, &c)) {
            for (int t = 0; t < c.n_turns; t++)
                for (size_t k = 0; k < c.turns[t].len; k++) sink ^= (unsigned char)c.turns[t].text[k];
            (*conversations)++;
            conversation_free(&c);
        }
    } else {
        rejected = 1;
    }
    alarm(0);
    set_fatal_hook(NULL);
    if (opened) sharegpt_close(&r);
    return rejected;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: fuzz_sharegpt ITERATIONS SEED_FILE...\n");
        return 2;
    }
    long iterations = atol(argv[1]), conversations = 0, rejected = 0;
    Rng rng;
    rng_seed(&rng, 7);
    for (int f = 2; f < argc; f++) {
        size_t seed_size;
        char *seed = fuzz_read_seed(argv[f], &seed_size);
        size_t len = strlen(argv[f]), capacity = seed_size + 256;
        const char *path = len > 6 && !strcmp(argv[f] + len - 6, ".jsonl") ? "/tmp/medusa-fuzz-sharegpt.jsonl"
                                                                           : "/tmp/medusa-fuzz-sharegpt.json";
        char *buf = malloc(capacity);
        double start = now_seconds();
        for (long i = 0; i < iterations && now_seconds() - start < fuzz_seconds(); i++) {
            size_t size = seed_size;
            memcpy(buf, seed, seed_size);
            mutate(buf, &size, capacity, &rng);
            fuzz_write_input(path, buf, size);
            rejected += read_through(path, &conversations);
        }
        free(buf);
        free(seed);
    }
    printf("fuzz_sharegpt: %ld conversations read, %ld inputs rejected with a message, no memory errors\n",
           conversations, rejected);
    return 0;
}
