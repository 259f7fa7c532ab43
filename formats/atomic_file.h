/* Outputs that appear whole or not at all: a temp file beside the target, fsynced, renamed over it, and the rename
 * made durable. Readers see the old file or the new one; a failure removes the temp file and leaves the target. */
#ifndef MEDUSA_ATOMIC_FILE_H
#define MEDUSA_ATOMIC_FILE_H

#include <stddef.h>

#include "../common/common.h"

/* A file being written in pieces: atomic_file_open, atomic_file_write..., atomic_file_commit. */
typedef struct {
    const char *path; /* the target, borrowed */
    char *tmp;
    int fd;
} AtomicFile;
AtomicFile atomic_file_open(const char *path);
void atomic_file_write(AtomicFile *f, const void *data, size_t size);
void atomic_file_commit(AtomicFile *f);

/* Writes data to path atomically; fatal (naming the file) on any failure. */
void write_file_atomic(const char *path, const void *data, size_t size);
/* For a file another library wrote and closed (HDF5): fsync it; fatal (removing it) when that fails. */
void sync_file(const char *path);
/* Renames a finished temp file over path and fsyncs the directory; fatal (removing tmp) when the rename fails. */
void rename_durably(const char *tmp, const char *path);

#endif
