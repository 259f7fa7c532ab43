#include "common.h"
#include "bf16.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int log_verbosity = 1;
static fatal_hook_fn fatal_hook;

void set_fatal_hook(fatal_hook_fn hook) { fatal_hook = hook; }

void fatal_at(const char *src_file, int src_line, const char *fmt, ...) {
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (fatal_hook) fatal_hook(message); /* tests: longjmp out, never returns */
    fflush(stdout);
    if (getenv("MEDUSA_DEBUG")) fprintf(stderr, "error: %s [%s:%d]\n", message, src_file, src_line);
    else fprintf(stderr, "error: %s\n", message);
    exit(1);
}

void *xmalloc_at(const char *src_file, int src_line, size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) fatal_at(src_file, src_line, "out of memory allocating %zu bytes", size);
    return p;
}

void *xcalloc_at(const char *src_file, int src_line, size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal_at(src_file, src_line, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xrealloc_at(const char *src_file, int src_line, void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (!p) fatal_at(src_file, src_line, "out of memory reallocating %zu bytes", size);
    return p;
}

char *xstrdup_at(const char *src_file, int src_line, const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc_at(src_file, src_line, n);
    memcpy(p, s, n);
    return p;
}

static void vlog(const char *prefix, const char *fmt, va_list ap) {
    fputs(prefix, stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void log_info(const char *fmt, ...) {
    if (log_verbosity < 1) return;
    va_list ap;
    va_start(ap, fmt);
    vlog("", fmt, ap);
    va_end(ap);
}

void log_debug(const char *fmt, ...) {
    if (log_verbosity < 2) return;
    va_list ap;
    va_start(ap, fmt);
    vlog("debug: ", fmt, ap);
    va_end(ap);
}

void log_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog("warning: ", fmt, ap);
    va_end(ap);
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

char *read_whole_file(const char *path, size_t *size_out) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return NULL;
    }
    long len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    char *buf = xmalloc((size_t)len + 1);
    size_t got = fread(buf, 1, (size_t)len, f);
    fclose(f);
    if (got != (size_t)len) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[len] = '\0';
    if (size_out) *size_out = (size_t)len;
    return buf;
}

void mapped_file_open(MappedFile *mf, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) fatal("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) fatal("%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatal("%s: not a regular file", path);
    mf->size = (size_t)st.st_size;
    mf->path = xstrdup(path);
    if (mf->size == 0) {
        mf->data = NULL;
    } else {
        void *p = mmap(NULL, mf->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) fatal("%s: cannot map: %s", path, strerror(errno));
        mf->data = p;
    }
    close(fd);
}

void mapped_file_close(MappedFile *mf) {
    if (mf->data) munmap((void *)mf->data, mf->size);
    free(mf->path);
    memset(mf, 0, sizeof *mf);
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = xmalloc(a + b + 2);
    memcpy(p, dir, a);
    size_t at = a;
    if (a > 0 && dir[a - 1] != '/') p[at++] = '/';
    memcpy(p + at, name, b + 1);
    return p;
}

uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}

float bf16_to_float(uint16_t b) { return bf16_to_f32(b); }
uint16_t float_to_bf16(float f) { return f32_to_bf16(f); }

static void format_duration(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) {
        snprintf(buf, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

void progress_start(Progress *p, const char *label, int64_t total) {
    p->label = label;
    p->total = total;
    p->start = now_seconds();
    p->last_draw = 0;
    p->enabled = log_verbosity >= 1;
}

static void progress_draw(Progress *p, int64_t done, const char *extra, int final) {
    double t = now_seconds();
    double elapsed = t - p->start;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    char eta[32], el[32];
    format_duration(el, sizeof el, elapsed);
    format_duration(eta, sizeof eta, rate > 0 && p->total > 0 ? (double)(p->total - done) / rate : -1);
    int width = 24;
    double frac = p->total > 0 ? (double)done / (double)p->total : 0;
    if (frac > 1) frac = 1;
    char bar[64];
    int filled = (int)(frac * width);
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    int tty = isatty(2);
    /* one write, newline included: another process writing the same log (a tee of stdout) cannot land mid-line */
    char line[1024];
    snprintf(line, sizeof line, "%s%s [%s] %3d%% %lld/%lld %.1f/s %s ETA %s%s%s%s%s", tty ? "\r" : "", p->label, bar,
             (int)(frac * 100), (long long)done, (long long)p->total, rate, el, final ? "0:00" : eta,
             extra ? " | " : "", extra ? extra : "", tty ? "\033[K" : "", !tty || final ? "\n" : "");
    fputs(line, stderr);
    p->last_draw = t;
}

void progress_update(Progress *p, int64_t done, const char *extra) {
    if (!p->enabled) return;
    double t = now_seconds();
    double every = isatty(2) ? 0.2 : 10.0; /* logs get a line every 10 s, terminals a live bar */
    if (t - p->last_draw < every) return;
    progress_draw(p, done, extra, 0);
}

void progress_finish(Progress *p, int64_t done, const char *extra) {
    if (!p->enabled) return;
    progress_draw(p, done, extra, 1);
}
