#include "medusa_io.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../formats/safetensors_write.h"

static const char *weights_file(MedusaFormat f) {
    return f == MEDUSA_FORMAT_V1 ? "medusa_lm_head.safetensors" : "model.safetensors";
}

static void key_linear(char *buf, size_t n, MedusaFormat f, int h, int l, const char *part) {
    if (f == MEDUSA_FORMAT_V1) snprintf(buf, n, "%d.%d.linear.%s", h, l, part);
    else snprintf(buf, n, "blocks.%d.layers.%d.%s", h, l, part);
}

static void key_lm_head(char *buf, size_t n, MedusaFormat f, int h, int n_layers) {
    if (f == MEDUSA_FORMAT_V1)
        snprintf(buf, n, "%d.%d.weight", h, n_layers); /* the lm_head follows the blocks in the Sequential */
    else snprintf(buf, n, "lm_heads.%d.weight", h);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) == 0 && nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        log_warn("%s: cannot remove: %s", path, strerror(errno));
}

/* fsync of a directory (its entries' renames), best effort: some file systems refuse it */
static void sync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

static char *sibling(const char *dir, const char *suffix, long pid) {
    size_t n = strlen(dir) + strlen(suffix) + 24;
    char *p = xmalloc(n);
    snprintf(p, n, "%s%s%ld", dir, suffix, pid);
    return p;
}

/* The parent directory of path (malloc'd). */
static char *parent_of(const char *path) {
    char *p = xstrdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = '\0';
    char *slash = strrchr(p, '/');
    if (!slash) return strcpy(p, ".");
    if (slash == p) slash[1] = '\0';
    else *slash = '\0';
    return p;
}

/* Removes DIR.tmp<pid> and DIR.old.tmp<pid> left by an export that was killed (its process is gone). */
static void remove_stale_exports(const char *dir) {
    char *parent = parent_of(dir), *base = xstrdup(dir);
    size_t n = strlen(base);
    while (n > 1 && base[n - 1] == '/') base[--n] = '\0';
    const char *name = strrchr(base, '/') ? strrchr(base, '/') + 1 : base;
    DIR *d = opendir(parent);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *rest = strncmp(e->d_name, name, strlen(name)) == 0 ? e->d_name + strlen(name) : NULL;
        if (rest && strncmp(rest, ".old", 4) == 0) rest += 4;
        if (!rest || strncmp(rest, ".tmp", 4) != 0) continue;
        char *end;
        long pid = strtol(rest + 4, &end, 10);
        if (end == rest + 4 || *end || pid <= 0) continue;
        if (pid != (long)getpid() && !(kill((pid_t)pid, 0) != 0 && errno == ESRCH)) continue;
        char *p = path_join(parent, e->d_name);
        remove_tree(p);
        free(p);
    }
    if (d) closedir(d);
    free(parent);
    free(base);
}

/* Puts the finished export tmp in place of dir, whole: a reader (or a kill) sees the old export or the new one,
 * never a mix of their files. A new dir is a rename; an existing one is swapped with tmp in one step
 * (RENAME_EXCHANGE), its old files then removed; where the file system cannot swap, the old export is moved aside
 * first (a kill between the two renames then leaves no dir, never a mixed one). */
static void replace_dir(const char *tmp, const char *dir, int exists) {
    char *parent = parent_of(dir);
    if (!exists) {
        if (rename(tmp, dir) != 0) {
            int e = errno;
            remove_tree(tmp);
            fatal("%s: cannot rename the export into place: %s", dir, strerror(e));
        }
    } else if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        sync_dir(parent);
        remove_tree(tmp); /* now the old export */
    } else {
        char *old = sibling(dir, ".old.tmp", (long)getpid());
        if (rename(dir, old) != 0 || rename(tmp, dir) != 0) {
            int e = errno;
            remove_tree(tmp);
            fatal("%s: cannot rename the export into place: %s", dir, strerror(e));
        }
        sync_dir(parent);
        remove_tree(old);
        free(old);
    }
    sync_dir(parent);
    free(parent);
}

/* An existing export directory is replaced whole, so it may hold nothing but an export's files. */
static int check_export_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) != 0) return 0;
    if (!S_ISDIR(st.st_mode)) fatal("%s: exists and is not a directory", dir);
    DIR *d = opendir(dir);
    if (!d) fatal("%s: cannot read: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 && strcmp(e->d_name, "config.json") != 0 &&
            strcmp(e->d_name, weights_file(MEDUSA_FORMAT_V1)) != 0 &&
            strcmp(e->d_name, weights_file(MEDUSA_FORMAT_VLLM)) != 0 && !strstr(e->d_name, ".tmp"))
            fatal("%s: holds %s, which is not part of an export; an export replaces its directory whole: export into "
                  "a new directory or one holding only an earlier export",
                  dir, e->d_name);
    closedir(d);
    return 1;
}

/* The files are written into the sibling directory DIR.tmp<pid>, which then replaces DIR whole (replace_dir): the
 * weights and config.json of one export always go together. */
void medusa_export(const MedusaHeads *m, const char *dir_in, MedusaFormat format, DType dtype, const char *base_name) {
    const MedusaShape *s = &m->shape;
    char *final_dir = xstrdup(dir_in);
    size_t len = strlen(final_dir);
    while (len > 1 && final_dir[len - 1] == '/') final_dir[--len] = '\0';
    int exists = check_export_dir(final_dir);
    remove_stale_exports(final_dir);
    char *dir = sibling(final_dir, ".tmp", (long)getpid());
    if (mkdir(dir, 0755) != 0) fatal("%s: cannot create directory: %s", dir, strerror(errno));
    float *host = xmalloc(sizeof(float) * m->n_params);
    m->be->download(host, m->params, sizeof(float) * m->n_params);
    int n = s->n_heads * (2 * s->n_layers + 1) + (m->token_map != NULL);
    TensorToWrite *t = xcalloc((size_t)n, sizeof(TensorToWrite));
    char(*names)[64] = xcalloc((size_t)n, 64);
    int i = 0;
    for (int h = 0; h < s->n_heads; h++) {
        for (int l = 0; l < s->n_layers; l++) {
            key_linear(names[i], 64, format, h, l, "weight");
            t[i] = (TensorToWrite){names[i], 2, {s->hidden, s->hidden}, medusa_linear_w(m, host, h, l), NULL};
            i++;
            key_linear(names[i], 64, format, h, l, "bias");
            t[i] = (TensorToWrite){names[i], 1, {s->hidden}, medusa_linear_b(m, host, h, l), NULL};
            i++;
        }
        key_lm_head(names[i], 64, format, h, s->n_layers);
        t[i] = (TensorToWrite){names[i], 2, {s->head_vocab, s->hidden}, medusa_lm_head(m, host, h), NULL};
        i++;
    }
    int64_t *map = NULL; /* vLLM's token_map: int64 [Vh] */
    if (m->token_map) {
        map = xmalloc(sizeof(int64_t) * (size_t)s->head_vocab);
        for (int r = 0; r < s->head_vocab; r++) map[r] = m->token_map[r];
        t[i++] = (TensorToWrite){"token_map", 1, {s->head_vocab}, NULL, map};
    }
    char *weights_path = path_join(dir, weights_file(format));
    safetensors_write(weights_path, t, n, dtype);

    cJSON *cfg = cJSON_CreateObject();
    if (format == MEDUSA_FORMAT_V1) {
        cJSON_AddNumberToObject(cfg, "medusa_num_heads", s->n_heads);
        cJSON_AddNumberToObject(cfg, "medusa_num_layers", s->n_layers);
        cJSON_AddStringToObject(cfg, "base_model_name_or_path", base_name ? base_name : "");
        cJSON_AddNumberToObject(cfg, "hidden_size", s->hidden);
        cJSON_AddNumberToObject(cfg, "vocab_size", s->vocab);
        /* our extension: the reference Medusa code cannot load truncated heads */
        if (m->token_map) cJSON_AddNumberToObject(cfg, "medusa_head_vocab", s->head_vocab);
    } else {
        cJSON_AddStringToObject(cfg, "model_type", "medusa");
        const char *arch[] = {"MedusaModel"}; /* the model class vLLM instantiates */
        cJSON_AddItemToObject(cfg, "architectures", cJSON_CreateStringArray(arch, 1));
        cJSON_AddNumberToObject(cfg, "num_heads", s->n_heads);
        cJSON_AddNumberToObject(cfg, "num_hidden_layers", s->n_layers);
        cJSON_AddNumberToObject(cfg, "hidden_size", s->hidden);
        cJSON_AddNumberToObject(cfg, "vocab_size", s->vocab);
        cJSON_AddNumberToObject(cfg, "truncated_vocab_size", s->head_vocab);
        cJSON_AddBoolToObject(cfg, "medusa_fc_bias", 1);
    }
    char *json = cJSON_Print(cfg);
    char *cfg_path = path_join(dir, "config.json");
    write_file_atomic(cfg_path, json, strlen(json));
    sync_dir(dir);
    replace_dir(dir, final_dir, exists);
    free(dir);
    free(final_dir);
    cJSON_Delete(cfg);
    free(json);
    free(cfg_path);
    free(weights_path);
    free(names);
    free(map);
    free(t);
    free(host);
}

static int cfg_int(const cJSON *cfg, const char *key, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!cJSON_IsNumber(v)) fatal("%s: missing or non-numeric \"%s\"", path, key);
    return v->valueint;
}

static void load_into(const WeightSet *w, const char *key, float *dst_host, int n_dims, int64_t d0, int64_t d1) {
    int64_t shape[2] = {d0, d1};
    float *src = weights_load_f32(w, key, n_dims, shape, 1);
    memcpy(dst_host, src, sizeof(float) * (size_t)d0 * (size_t)(n_dims == 2 ? d1 : 1));
    free(src);
}

/* Reads dir/config.json: the heads' shape and the layout of the weights file. */
static MedusaShape import_config(const char *dir, int hidden, int vocab, MedusaFormat *format) {
    char *cfg_path = path_join(dir, "config.json");
    char *text = read_whole_file(cfg_path, NULL);
    if (!text && errno == ENOTDIR) /* a checkpoint given where an export directory goes */
        fatal("%s: not a directory: exported heads are a directory (config.json and weights); export a training "
              "checkpoint with medusa-train export, or give it to medusa-eval as --ckpt",
              dir);
    if (!text) fatal("%s: cannot read: %s", cfg_path, strerror(errno));
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(cfg)) fatal("%s: malformed JSON", cfg_path);
    MedusaShape s;
    if (cJSON_GetObjectItemCaseSensitive(cfg, "medusa_num_heads")) {
        *format = MEDUSA_FORMAT_V1;
        s.n_heads = cfg_int(cfg, "medusa_num_heads", cfg_path);
        s.n_layers = cfg_int(cfg, "medusa_num_layers", cfg_path);
    } else if (cJSON_GetObjectItemCaseSensitive(cfg, "num_heads")) {
        *format = MEDUSA_FORMAT_VLLM;
        s.n_heads = cfg_int(cfg, "num_heads", cfg_path);
        s.n_layers = cfg_int(cfg, "num_hidden_layers", cfg_path);
    } else {
        fatal("%s: not a Medusa head config (no medusa_num_heads or num_heads)", cfg_path);
    }
    s.hidden = hidden;
    s.vocab = vocab;
    const cJSON *hv = cJSON_GetObjectItemCaseSensitive(cfg, *format == MEDUSA_FORMAT_V1 ? "medusa_head_vocab"
                                                                                        : "truncated_vocab_size");
    s.head_vocab = cJSON_IsNumber(hv) ? hv->valueint : vocab;
    if (s.head_vocab < 1 || s.head_vocab > vocab)
        fatal("%s: head vocabulary %d does not fit the base model's %d tokens", cfg_path, s.head_vocab, vocab);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(cfg, "hidden_size");
    if (cJSON_IsNumber(h) && h->valueint != hidden)
        fatal("%s: heads have hidden_size %d but the base model has %d", cfg_path, h->valueint, hidden);
    cJSON_Delete(cfg);
    free(cfg_path);
    return s;
}

MedusaShape medusa_import_shape(const char *dir, int hidden, int vocab) {
    MedusaFormat format;
    return import_config(dir, hidden, vocab, &format);
}

void medusa_import(MedusaHeads *m, const char *dir, const Backend *be, int hidden, int vocab) {
    MedusaFormat format;
    MedusaShape s = import_config(dir, hidden, vocab, &format);
    char *weights_path = path_join(dir, weights_file(format));
    WeightSet w;
    weights_open_safetensors_file(&w, weights_path);
    medusa_init(m, be, s);
    float *host = xmalloc(sizeof(float) * m->n_params);
    char key[64];
    for (int i = 0; i < s.n_heads; i++) {
        for (int l = 0; l < s.n_layers; l++) {
            key_linear(key, sizeof key, format, i, l, "weight");
            load_into(&w, key, medusa_linear_w(m, host, i, l), 2, hidden, hidden);
            key_linear(key, sizeof key, format, i, l, "bias");
            load_into(&w, key, medusa_linear_b(m, host, i, l), 1, hidden, 0);
        }
        key_lm_head(key, sizeof key, format, i, s.n_layers);
        load_into(&w, key, medusa_lm_head(m, host, i), 2, m->shape.head_vocab, hidden);
    }
    if (m->token_map) {
        int64_t n = 0;
        int32_t *map = weights_load_i32(&w, "token_map", &n);
        if (!map || n != m->shape.head_vocab)
            fatal("%s: truncated heads need a token_map of %d entries", weights_path, m->shape.head_vocab);
        medusa_set_token_map(m, map);
        free(map);
    }
    be->upload(m->params, host, sizeof(float) * m->n_params);
    free(host);
    weights_close(&w);
    free(weights_path);
}
