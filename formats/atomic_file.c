#include "atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

AtomicFile atomic_file_open(const char *path) {
    AtomicFile f = {.path = path};
    size_t n = strlen(path) + 16;
    f.tmp = xmalloc(n);
    snprintf(f.tmp, n, "%s.tmp%d", path, (int)getpid());
    f.fd = open(f.tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f.fd < 0) fatal("%s: cannot create: %s", f.tmp, strerror(errno));
    return f;
}

void atomic_file_write(AtomicFile *f, const void *data, size_t size) {
    const uint8_t *p = data;
    while (size > 0) {
        ssize_t n = write(f->fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            unlink(f->tmp); /* never leave a partial temp file; the target is untouched */
            fatal("%s: write failed: %s", f->tmp, strerror(e));
        }
        p += n;
        size -= (size_t)n;
    }
}

void atomic_file_commit(AtomicFile *f) {
    if (fsync(f->fd) != 0 || close(f->fd) != 0) {
        int e = errno;
        unlink(f->tmp);
        fatal("%s: cannot flush to disk: %s", f->tmp, strerror(e));
    }
    rename_durably(f->tmp, f->path);
    free(f->tmp);
    f->tmp = NULL;
}

void write_file_atomic(const char *path, const void *data, size_t size) {
    AtomicFile f = atomic_file_open(path);
    atomic_file_write(&f, data, size);
    atomic_file_commit(&f);
}

void rename_durably(const char *tmp, const char *path) {
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        fatal("%s: cannot rename into place: %s", path, strerror(e));
    }
    /* the rename itself reaches the disk with its directory */
    char *dir = xstrdup(path), *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    int dfd = open(slash ? (slash == dir ? "/" : dir) : ".", O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd); /* best effort: some file systems refuse fsync on a directory */
        close(dfd);
    }
    free(dir);
}

void sync_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        unlink(path);
        fatal("%s: cannot flush to disk: %s", path, strerror(e));
    }
    close(fd);
}
