#include "engine.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../model/medusa_io.h"

/* ---- setup ---- */

static void load_text_side(Engine *e) {
    model_tokenizer_load(&e->text, e->o.model, 1);
    e->tok = e->text.tok;
    if (!e->tok) return;
    e->stop_id = tokenizer_eos_id(e->tok);
    if (e->o.raw) return;
    const char *name = e->o.chat_template ? e->o.chat_template : chat_template_guess(e->text.jinja);
    if (name) {
        chat_template_init(&e->tmpl, name, e->tok, e->text.jinja, e->text.bos, e->text.eos);
        e->have_tmpl = 1;
        e->stop_id = chat_stop_id(&e->tmpl, e->tok);
    }
}

void engine_init(Engine *e, const EngineOptions *o) {
    memset(e, 0, sizeof *e);
    e->o = *o;
    e->stop_id = -1;
    Startup s;
    startup_begin(&s, &o->dev, o->model);
    const ModelConfig *c = &s.config;
    MedusaShape shape = {0};
    if (o->medusa) {
        shape = medusa_import_shape(o->medusa, c->hidden_size, c->vocab_size);
        const char *tree = e->o.tree = o->tree ? o->tree : s.be->is_host ? DEFAULT_TREE_CPU : DEFAULT_TREE;
        tree_load(&e->tree, tree);
        if (e->tree.n_heads_used > shape.n_heads)
            fatal("%s: the tree is %d levels deep but %s has only %d heads", tree, e->tree.n_heads_used, o->medusa,
                  shape.n_heads);
    } else if (strcmp(o->mode, "medusa") == 0 || o->bench) {
        fatal("--mode medusa and --bench need --medusa DIR (exported heads)");
    }
    int ctx = o->ctx;
    if (c->max_position > 0 && ctx > c->max_position) ctx = c->max_position;
    /* a Medusa step places the tree after the cache: the context must hold a prompt token, the tree and a new token */
    if (o->medusa && e->tree.n_nodes + 2 > ctx)
        fatal("%s: the tree's %d nodes do not fit the context of %d tokens (--ctx%s): use a larger --ctx or a smaller "
              "tree",
              e->o.tree, e->tree.n_nodes, ctx, ctx < o->ctx ? ", capped at the model's max_position_embeddings" : "");
    MemoryPlanInput mi = memory_plan_decoding(s.dtype, shape.n_heads, shape.n_layers, shape.head_vocab, ctx,
                                              o->medusa ? e->tree.n_nodes : 1);
    /* printed for a GPU only: on the CPU the host's memory is rarely in question and chat output stays clean */
    startup_load_base(&s, &mi, !o->quiet, &e->model);
    if (o->medusa) {
        medusa_import(&e->heads, o->medusa, s.be, c->hidden_size, c->vocab_size);
        startup_ready_heads(&e->model, &e->heads);
        e->have_heads = 1;
    }
    load_text_side(e);
    decoder_init(&e->dec, &e->model, e->have_heads ? &e->heads : NULL, e->have_heads ? &e->tree : NULL, ctx);
}

void engine_free(Engine *e) {
    decoder_free(&e->dec);
    if (e->have_tmpl) chat_template_free(&e->tmpl);
    model_tokenizer_free(&e->text);
    if (e->have_heads) {
        medusa_free(&e->heads);
        tree_free(&e->tree);
    }
    model_free(&e->model);
}

/* ---- prompts ---- */

void check_ids(const int32_t *ids, int n, int vocab, const char *what) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            fatal("%s: token id %d is outside the vocabulary (0..%d)", what, ids[i], vocab - 1);
}

int32_t *parse_ids(const char *s, int vocab, int *n) {
    int cap = 16;
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)cap);
    *n = 0;
    for (const char *p = s; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) fatal("--prompt-ids: expected comma-separated token ids, got '%s'", s);
        if (v < INT32_MIN || v > INT32_MAX) fatal("--prompt-ids: %ld is not a token id", v);
        if (*n == cap) ids = xrealloc(ids, sizeof(int32_t) * (size_t)(cap *= 2));
        ids[(*n)++] = (int32_t)v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    if (*n == 0) fatal("--prompt-ids: no token ids");
    check_ids(ids, *n, vocab, "--prompt-ids");
    return ids;
}

int32_t *encode_chat(const Engine *e, const Turn *turns, int n_turns, int *n) {
    Turn *all = xcalloc((size_t)n_turns + 1, sizeof(Turn));
    int k = 0;
    if (e->o.system) all[k++] = (Turn){ROLE_SYSTEM, e->o.system, strlen(e->o.system)};
    for (int i = 0; i < n_turns; i++) all[k++] = turns[i];
    int32_t *ids;
    *n = chat_generation_prompt(&e->tmpl, e->tok, all, k, &ids);
    free(all);
    return ids;
}

int32_t *encode_prompt(const Engine *e, const char *text, int *n) {
    if (!e->tok) fatal("%s: the model has no tokenizer; give --prompt-ids", e->o.model);
    if (e->o.raw) {
        int32_t *ids;
        *n = tokenizer_encode(e->tok, text, strlen(text), 1, 1, &ids);
        return ids;
    }
    if (!e->have_tmpl)
        fatal("%s: no known chat template in the model; name one with --chat-template (%s) or give --raw", e->o.model,
              CHAT_TEMPLATE_NAMES);
    Turn t = {ROLE_USER, text, strlen(text)};
    return encode_chat(e, &t, 1, n);
}

/* ---- generation ---- */

static DecodeOptions decode_options(const EngineOptions *o, float temperature) {
    DecodeOptions d;
    decode_options_defaults(&d);
    d.temperature = temperature;
    d.top_p = o->top_p;
    d.posterior_threshold = o->posterior_threshold;
    d.posterior_alpha = o->posterior_alpha;
    d.seed = (uint64_t)o->seed;
    return d;
}

int generate(Engine *e, const int32_t *prompt, int n_prompt, int medusa, float temperature, int32_t *out,
             TokenSink sink, void *user, DecodeStats *st) {
    DecodeOptions d = decode_options(&e->o, temperature);
    int room = e->dec.max_len - n_prompt - 1 - (medusa ? e->tree.n_nodes : 0);
    int max_new = e->o.max_new < room ? e->o.max_new : room;
    if (max_new < 1 && medusa)
        fatal("a prompt of %d tokens and the tree's %d nodes (%s) leave no room in the context of %d (--ctx)", n_prompt,
              e->tree.n_nodes, e->o.tree, e->dec.max_len);
    if (max_new < 1) fatal("prompt of %d tokens leaves no room in the context of %d (--ctx)", n_prompt, e->dec.max_len);
    return medusa ? decode_medusa(&e->dec, prompt, n_prompt, max_new, e->stop_id, &d, out, sink, user, st)
                  : decode_plain(&e->dec, prompt, n_prompt, max_new, e->stop_id, &d, out, sink, user, st);
}

int decoding_steps(const DecodeStats *st, int medusa) {
    int steps = medusa ? st->steps : st->steps + 1;
    return steps > 0 ? steps : 1;
}

int32_t *engine_output_buffer(const Engine *e) { return xmalloc(sizeof(int32_t) * (size_t)(e->o.max_new + 64)); }
