#include "model_tokenizer.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* tokenizer_config.json writes special tokens as "<s>" or as {"content": "<s>", ...}. */
static char *token_string(const cJSON *v) {
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? xstrdup(v->valuestring) : NULL;
}

/* chat_template is a string, or a list of {"name", "template"} of which "default" is the chat template. */
static char *chat_template_string(const cJSON *v) {
    if (cJSON_IsString(v)) return xstrdup(v->valuestring);
    const cJSON *e, *chosen = NULL, *list = cJSON_IsArray(v) ? v : NULL;
    cJSON_ArrayForEach(e, list) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        if (!chosen || (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0)) chosen = e;
    }
    const cJSON *t = chosen ? cJSON_GetObjectItemCaseSensitive(chosen, "template") : NULL;
    return cJSON_IsString(t) ? xstrdup(t->valuestring) : NULL;
}

static void read_tokenizer_config(ModelTokenizer *m, const char *dir) {
    char *path = path_join(dir, "tokenizer_config.json");
    if (file_exists(path)) {
        size_t n;
        char *text = read_whole_file(path, &n);
        if (!text) fatal("%s: cannot read", path);
        cJSON *cfg = cJSON_ParseWithLength(text, n);
        if (!cJSON_IsObject(cfg)) fatal("%s: not a JSON object", path);
        m->jinja = chat_template_string(cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"));
        m->bos = token_string(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token"));
        m->eos = token_string(cJSON_GetObjectItemCaseSensitive(cfg, "eos_token"));
        cJSON_Delete(cfg);
        free(text);
    }
    free(path);
    path = path_join(dir, "chat_template.jinja"); /* where newer transformers versions save it */
    if (!m->jinja && file_exists(path)) {
        m->jinja = read_whole_file(path, NULL);
        if (!m->jinja) fatal("%s: cannot read", path);
    }
    free(path);
}

void model_tokenizer_load(ModelTokenizer *m, const char *path, int optional) {
    memset(m, 0, sizeof *m);
    if (dir_exists(path)) {
        char *json = path_join(path, "tokenizer.json");
        if (file_exists(json)) m->tok = tokenizer_load_json(json);
        else if (!optional) fatal("%s: the model directory has no tokenizer.json", path);
        free(json);
        read_tokenizer_config(m, path);
    } else if (!file_exists(path)) {
        fatal("%s: no such model directory or file", path);
    } else if (ends_with(path, ".gguf")) {
        gguf_open(&m->gguf, path);
        m->has_gguf = 1;
        if (!optional || gguf_find(&m->gguf, "tokenizer.ggml.model")) m->tok = tokenizer_load_gguf(&m->gguf);
        const char *jinja = gguf_get_str(&m->gguf, "tokenizer.chat_template");
        if (jinja) m->jinja = xstrdup(jinja);
    } else if (ends_with(path, ".json")) {
        m->tok = tokenizer_load_json(path);
        char *dir = xstrdup(path), *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        read_tokenizer_config(m, slash ? dir : ".");
        free(dir);
    } else {
        fatal("%s: not a model directory, a .gguf file or a tokenizer.json", path);
    }
}

void model_tokenizer_free(ModelTokenizer *m) {
    tokenizer_free(m->tok);
    if (m->has_gguf) gguf_close(&m->gguf);
    free(m->jinja);
    free(m->bos);
    free(m->eos);
}
