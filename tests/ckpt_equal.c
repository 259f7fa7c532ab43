/* A tool of tests/kill_campaign.sh, not a test: compares two training checkpoints (parameters, AdamW moments, step,
 * RNG state, data cursor, tokens seen, the stored settings and log window but its seconds, bit for bit), or with --load
 * checks that each file given loads. Exit status 0 when equal (or all load), 1 otherwise; a file that does not load is
 * fatal (1). ckpt_equal A.h5 B.h5 ckpt_equal --load FILE... */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "loaded_ckpt.h"

/* The stored settings and log window without the window's wall-clock seconds. */
static char *settings(const char *config_json) {
    cJSON *j = cJSON_Parse(config_json);
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(j, "log window"), "seconds");
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "--load") == 0) {
        for (int i = 2; i < argc; i++) {
            Loaded l;
            load_ckpt(&l, argv[i]);
            free_ckpt(&l);
        }
        return 0;
    }
    if (argc != 3) fatal("usage: ckpt_equal A.h5 B.h5 | ckpt_equal --load FILE...");
    Loaded a, b;
    load_ckpt(&a, argv[1]);
    load_ckpt(&b, argv[2]);
    size_t n = a.heads.n_params, bytes = sizeof(float) * n;
    const char *differ = NULL;
    if (n != b.heads.n_params || memcmp(&a.heads.shape, &b.heads.shape, sizeof a.heads.shape) != 0) differ = "shape";
    else if (memcmp(a.heads.params, b.heads.params, bytes) != 0) differ = "params";
    else if (memcmp(a.adam.m, b.adam.m, bytes) != 0 || memcmp(a.adam.v, b.adam.v, bytes) != 0) differ = "AdamW moments";
    else if (a.meta.step != b.meta.step) differ = "step";
    else if (memcmp(a.meta.rng, b.meta.rng, sizeof a.meta.rng) != 0) differ = "RNG state";
    else if (memcmp(a.meta.cursor, b.meta.cursor, sizeof a.meta.cursor) != 0) differ = "data cursor";
    else if (a.meta.metrics[0] != b.meta.metrics[0]) differ = "tokens seen";
    char *sa = settings(a.meta.config_json), *sb = settings(b.meta.config_json);
    if (!differ && (!sa || !sb || strcmp(sa, sb) != 0)) differ = "settings or log window";
    free(sa);
    free(sb);
    if (differ) printf("%s and %s differ: %s\n", argv[1], argv[2], differ);
    else printf("%s and %s: %zu params, both AdamW moments and the run state bitwise equal\n", argv[1], argv[2], n);
    free_ckpt(&a);
    free_ckpt(&b);
    return differ ? 1 : 0;
}
