/* A training checkpoint read back whole (heads, AdamW moments, metadata) on the CPU, for the tests and tools that
 * compare checkpoints (tests/test_train.c, tests/ckpt_equal.c). */
#ifndef MEDUSA_TESTS_LOADED_CKPT_H
#define MEDUSA_TESTS_LOADED_CKPT_H

#include <stdlib.h>
#include <string.h>

#include "../train/checkpoint.h"

typedef struct {
    MedusaHeads heads;
    AdamState adam;
    CheckpointMeta meta;
} Loaded;

static inline void load_ckpt(Loaded *l, const char *path) {
    medusa_init(&l->heads, backend_cpu(), checkpoint_shape(path));
    adam_init(&l->adam, &l->heads);
    memset(&l->meta, 0, sizeof l->meta);
    checkpoint_load(path, &l->heads, &l->adam, &l->meta);
}

static inline void free_ckpt(Loaded *l) {
    adam_free(&l->adam, &l->heads);
    medusa_free(&l->heads);
    free(l->meta.config_json);
}

#endif
