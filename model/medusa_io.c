#include "medusa_io.h"

#include <cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

void medusa_export(const MedusaHeads *m, const char *dir, MedusaFormat format, DType dtype, const char *base_name) {
    const MedusaShape *s = &m->shape;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) fatal("%s: cannot create directory: %s", dir, strerror(errno));
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
