/* Shared helpers: fatal errors with file:line, checked allocation, logging, timing, files. */
#ifndef MEDUSA_COMMON_H
#define MEDUSA_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define MEDUSA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define MEDUSA_NORETURN __attribute__((noreturn))
#else
#define MEDUSA_PRINTF(a, b)
#define MEDUSA_NORETURN
#endif

/* Print "error: <msg>" (plus the source location when MEDUSA_DEBUG is set) and exit(1).
 * Every user-facing failure goes through here so the message names the file and the problem. */
MEDUSA_NORETURN void fatal_at(const char *src_file, int src_line, const char *fmt, ...) MEDUSA_PRINTF(3, 4);
#define fatal(...) fatal_at(__FILE__, __LINE__, __VA_ARGS__)

/* Internal invariant; a failure is a bug, reported with file:line. */
#define ensure(cond)                                                                                                   \
    do {                                                                                                               \
        if (!(cond)) fatal_at(__FILE__, __LINE__, "internal check failed: %s", #cond);                                 \
    } while (0)

/* Tests replace the exit in fatal() with a longjmp so that error paths can be checked in-process. */
typedef void (*fatal_hook_fn)(const char *message);
void set_fatal_hook(fatal_hook_fn hook);

void *xmalloc_at(const char *src_file, int src_line, size_t size);
void *xcalloc_at(const char *src_file, int src_line, size_t count, size_t size);
void *xrealloc_at(const char *src_file, int src_line, void *ptr, size_t size);
char *xstrdup_at(const char *src_file, int src_line, const char *s);
#define xmalloc(size) xmalloc_at(__FILE__, __LINE__, (size))
#define xcalloc(count, size) xcalloc_at(__FILE__, __LINE__, (count), (size))
#define xrealloc(ptr, size) xrealloc_at(__FILE__, __LINE__, (ptr), (size))
#define xstrdup(s) xstrdup_at(__FILE__, __LINE__, (s))

/* Logging to stderr; verbosity set once from the command line. */
extern int log_verbosity; /* 0 quiet, 1 normal, 2 verbose */
void log_info(const char *fmt, ...) MEDUSA_PRINTF(1, 2);
void log_debug(const char *fmt, ...) MEDUSA_PRINTF(1, 2);
void log_warn(const char *fmt, ...) MEDUSA_PRINTF(1, 2);

double now_seconds(void);

/* Whole file in memory (NUL-terminated for convenience). Returns NULL and sets errno on failure. */
char *read_whole_file(const char *path, size_t *size_out);

/* Read-only mapping of a file; fatal on failure. */
typedef struct {
    const uint8_t *data;
    size_t size;
    char *path;
} MappedFile;
void mapped_file_open(MappedFile *mf, const char *path);
void mapped_file_close(MappedFile *mf);

int file_exists(const char *path);
int dir_exists(const char *path);
char *path_join(const char *dir, const char *name);

/* IEEE half and bfloat16 conversions (round to nearest even on the way down; half to float: dtype.h's dtype_half). */
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

/* Progress bar on stderr: "label [#####     ] 42% 1234/5678 12.3 it/s ETA 1:02 | extra". */
typedef struct {
    const char *label;
    int64_t total;
    double start;
    double last_draw;
    int enabled;
} Progress;
void progress_start(Progress *p, const char *label, int64_t total);
void progress_update(Progress *p, int64_t done, const char *extra);
void progress_finish(Progress *p, int64_t done, const char *extra);

#endif
