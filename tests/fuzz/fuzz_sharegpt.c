/* Mutation fuzzer for the ShareGPT reader (data/sharegpt.c), built under AddressSanitizer by `make fuzz`: its
 * bracket-matching scanner cuts a file of any size into one conversation at a time without a full JSON parse, so it
 * must survive any bytes. Seeds are valid ShareGPT files (a JSON list, or JSON lines when the name ends in .jsonl);
 * each is mutated (bytes flipped, quotes, backslashes and brackets inserted or removed, truncation) and read through
 * to the end. Every outcome must be conversations, skips counted by reason, or a fatal() message; any out-of-bounds
 * access is reported by ASan and fails the run. */
#include <stdlib.h>
#include <string.h>

#include "../../common/rng.h"
#include "../../data/sharegpt.h"
#include "fuzz.h"

static void mutate(char *buf, size_t *size, size_t capacity, Rng *rng) {
    static const char structural[] = "\"\\[]{},:\n ";
    int edits = 1 + (int)rng_below(rng, 6);
    for (int e = 0; e<edits && * size> 0; e++) {
        size_t at = (size_t)rng_below(rng, *size);
        switch (rng_below(rng, 5)) {
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
        size_t len = strlen(argv[f]), capacity = seed_size + 64;
        const char *path = len > 6 && !strcmp(argv[f] + len - 6, ".jsonl") ? "/tmp/medusa-fuzz-sharegpt.jsonl"
                                                                           : "/tmp/medusa-fuzz-sharegpt.json";
        char *buf = malloc(capacity);
        for (long i = 0; i < iterations; i++) {
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
