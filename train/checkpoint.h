/* Training checkpoints in HDF5 (ckpt-<step>.h5): head parameters (and truncated heads' token map), AdamW
 * moments, optimizer step, RNG state, data cursor and the run configuration as JSON. Written to a temp
 * file, fsynced, renamed, so an existing checkpoint is never damaged by a crash or a full disk. */
#ifndef MEDUSA_CHECKPOINT_H
#define MEDUSA_CHECKPOINT_H

#include "optim.h"

#define CHECKPOINT_CURSOR_WORDS 8

typedef struct {
    int64_t step; /* optimizer steps taken */
    uint64_t rng[4];
    int64_t cursor[CHECKPOINT_CURSOR_WORDS]; /* the batcher's position, opaque here */
    double metrics[4];                       /* running values a resumed run needs (e.g. tokens seen) */
    char *config_json;                       /* malloc'd on load */
} CheckpointMeta;

/* floats moved between the backend and the file at a time (through a host buffer of that size; tests set it small) */
extern size_t checkpoint_slice_floats;

void checkpoint_save(const char *path, const MedusaHeads *m, const AdamState *adam, const CheckpointMeta *meta);
/* Loads into already-initialised heads/optimizer state of the same shape; fatal on any mismatch. adam may be
 * NULL (export, evaluation): the moments are then not read. */
void checkpoint_load(const char *path, MedusaHeads *m, AdamState *adam, CheckpointMeta *meta);
/* The head shape a checkpoint holds. */
MedusaShape checkpoint_shape(const char *path);
/* Newest ckpt-<step>.h5 in dir (malloc'd path), or NULL. */
char *checkpoint_latest(const char *dir);

#endif
