/* medusa-infer: generate or chat with a base model, plainly or with Medusa tree decoding; --bench compares
 * plain greedy, Medusa greedy and Medusa typical decoding on a prompt set; `tune` builds trees from measured
 * head accuracies and picks the one this machine runs fastest. */
#include <cJSON.h>
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/args.h"
#include "../data/chat_template.h"
#include "../data/model_tokenizer.h"
#include "../infer/decoder.h"
#include "../infer/tune.h"
#include "../model/medusa_io.h"
#include "../model/memory_plan.h"

#define DEFAULT_TREE "configs/trees/mc_sim_7b_63.json"
#define DEFAULT_TREE_CPU "configs/trees/cpu_2.json"

typedef struct {
    const char *model, *medusa, *prompt, *prompt_ids, *tree, *mode, *device, *precision, *bench, *chat_template,
        *system;
    int max_new, threads, raw, ctx, seed, quiet;
    float temperature, top_p, posterior_threshold, posterior_alpha;
} Options;

typedef struct {
    Options o;
    Model model;
    MedusaHeads heads;
    MedusaTree tree;
    int have_heads;
    ModelTokenizer text;
    Tokenizer *tok; /* text.tok: NULL when the model has none (only --prompt-ids then) */
    ChatTemplate tmpl;
    int have_tmpl;
    int stop_id; /* end of the assistant's turn, or the tokenizer's EOS */
    Decoder dec;
} Engine;

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

static void engine_init(Engine *e, const Options *o) {
    memset(e, 0, sizeof *e);
    e->o = *o;
    e->stop_id = -1;
    const Backend *be = backend_by_name(o->device);
    ModelConfig c;
    config_load(&c, o->model);
    MedusaShape shape = {0};
    if (o->medusa) {
        shape = medusa_import_shape(o->medusa, c.hidden_size, c.vocab_size);
        const char *tree = e->o.tree = o->tree                         ? o->tree
                                       : strcmp(o->device, "cpu") == 0 ? DEFAULT_TREE_CPU
                                                                       : DEFAULT_TREE;
        tree_load(&e->tree, tree);
        if (e->tree.n_heads_used > shape.n_heads)
            fatal("%s: the tree is %d levels deep but %s has only %d heads", tree, e->tree.n_heads_used, o->medusa,
                  shape.n_heads);
    } else if (strcmp(o->mode, "medusa") == 0 || o->bench) {
        fatal("--mode medusa and --bench need --medusa DIR (exported heads)");
    }
    int ctx = o->ctx;
    if (c.max_position > 0 && ctx > c.max_position) ctx = c.max_position;
    DType dtype = model_precision(o->precision, be);
    MemoryPlanInput mi = memory_plan_decoding(dtype, shape.n_heads, shape.n_layers, shape.head_vocab, ctx,
                                              o->medusa ? e->tree.n_nodes : 1);
    MemoryPlan plan = memory_plan(&c, &mi);
    /* printed for a GPU only: on the CPU the host's memory is rarely in question and chat output stays clean */
    memory_plan_reserve(&plan, be, !be->is_host && !o->quiet);

    model_load(&e->model, o->model, be, dtype);
    if (o->medusa) {
        medusa_import(&e->heads, o->medusa, be, c.hidden_size, c.vocab_size);
        if (e->model.weight_dtype == DT_BF16) medusa_use_bf16(&e->heads);
        e->have_heads = 1;
    }
    load_text_side(e);
    decoder_init(&e->dec, &e->model, e->have_heads ? &e->heads : NULL, e->have_heads ? &e->tree : NULL, ctx);
}

static void engine_free(Engine *e) {
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

/* Token ids given by the user (what names --prompt-ids or a prompt file): each must be in the vocabulary. */
static void check_ids(const int32_t *ids, int n, int vocab, const char *what) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            fatal("%s: token id %d is outside the vocabulary (0..%d)", what, ids[i], vocab - 1);
}

static int32_t *parse_ids(const char *s, int vocab, int *n) {
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

/* Tokens of a conversation (alternating user/assistant turns, ending with a user turn) after --system, followed by
 * the assistant's header. */
static int32_t *encode_chat(const Engine *e, const Turn *turns, int n_turns, int *n) {
    Turn *all = xcalloc((size_t)n_turns + 1, sizeof(Turn));
    int k = 0;
    if (e->o.system) all[k++] = (Turn){ROLE_SYSTEM, e->o.system, strlen(e->o.system)};
    for (int i = 0; i < n_turns; i++) all[k++] = turns[i];
    int32_t *ids;
    *n = chat_generation_prompt(&e->tmpl, e->tok, all, k, &ids);
    free(all);
    return ids;
}

/* A prompt's tokens: raw text, or one user turn in the chat template. */
static int32_t *encode_prompt(const Engine *e, const char *text, int *n) {
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

/* ---- streaming output ---- */

typedef struct {
    const Engine *e;
    int32_t *ids;
    int n, cap;
    size_t printed; /* bytes of the decoded text already written */
    int echo;
} Stream;

static void stream_reset(Stream *s, const Engine *e, int echo) {
    s->e = e;
    s->n = 0;
    s->printed = 0;
    s->echo = echo;
}

/* Appends generated tokens and writes the text they complete (a UTF-8 character split across tokens waits
 * for its last byte). */
static void stream_sink(const int32_t *tokens, int n, void *user) {
    Stream *s = user;
    if (s->n + n > s->cap) {
        s->cap = 2 * (s->n + n);
        s->ids = xrealloc(s->ids, sizeof(int32_t) * (size_t)s->cap);
    }
    memcpy(s->ids + s->n, tokens, sizeof(int32_t) * (size_t)n);
    s->n += n;
    if (!s->echo) return;
    if (!s->e->tok) {
        for (int i = 0; i < n; i++) printf("%d ", tokens[i]);
        fflush(stdout);
        return;
    }
    size_t len;
    char *text = tokenizer_decode(s->e->tok, s->ids, s->n, 1, &len);
    size_t end = len;
    for (size_t back = 0; back < 4 && back < len; back++) {
        unsigned char ch = (unsigned char)text[len - 1 - back];
        if ((ch & 0xc0) == 0x80) continue; /* continuation byte */
        int need = ch < 0x80 ? 1 : (ch & 0xe0) == 0xc0 ? 2 : (ch & 0xf0) == 0xe0 ? 3 : 4;
        if ((size_t)need > back + 1) end = len - 1 - back;
        break;
    }
    if (end > s->printed) {
        fwrite(text + s->printed, 1, end - s->printed, stdout);
        fflush(stdout);
        s->printed = end;
    }
    free(text);
}

/* ---- generation ---- */

static DecodeOptions decode_options(const Options *o, float temperature) {
    DecodeOptions d;
    decode_options_defaults(&d);
    d.temperature = temperature;
    d.top_p = o->top_p;
    d.posterior_threshold = o->posterior_threshold;
    d.posterior_alpha = o->posterior_alpha;
    d.seed = (uint64_t)o->seed;
    return d;
}

/* Decodes after prompt in the given mode (temperature 0: greedy; > 0: sampling, or typical acceptance with
 * Medusa). out holds max_new + tree depth tokens. */
static int generate(Engine *e, const int32_t *prompt, int n_prompt, int medusa, float temperature, int32_t *out,
                    TokenSink sink, void *user, DecodeStats *st) {
    DecodeOptions d = decode_options(&e->o, temperature);
    int room = e->dec.max_len - n_prompt - 1 - (medusa ? e->tree.n_nodes : 0);
    int max_new = e->o.max_new < room ? e->o.max_new : room;
    if (max_new < 1) fatal("prompt of %d tokens leaves no room in the context of %d (--ctx)", n_prompt, e->dec.max_len);
    return medusa ? decode_medusa(&e->dec, prompt, n_prompt, max_new, e->stop_id, &d, out, sink, user, st)
                  : decode_plain(&e->dec, prompt, n_prompt, max_new, e->stop_id, &d, out, sink, user, st);
}

/* Decoding steps that emitted the tokens: plain decoding's first token comes from the prompt's forward
 * pass; every Medusa verification pass emits its accepted tokens plus the base model's next. */
static int decoding_steps(const DecodeStats *st, int medusa) {
    int steps = medusa ? st->steps : st->steps + 1;
    return steps > 0 ? steps : 1;
}

static void print_stats(const DecodeStats *st, int medusa) {
    fprintf(stderr, "[%d tokens in %.2f s: %.1f tokens/s, %.2f tokens per step%s, prefill %.2f s]\n", st->new_tokens,
            st->seconds, st->new_tokens / (st->seconds > 0 ? st->seconds : 1e-9),
            (double)st->new_tokens / decoding_steps(st, medusa), medusa ? " (Medusa)" : "", st->prefill_seconds);
}

static int32_t *output_buffer(const Engine *e) { return xmalloc(sizeof(int32_t) * (size_t)(e->o.max_new + 64)); }

static void run_once(Engine *e, const int32_t *prompt, int n_prompt) {
    int medusa = strcmp(e->o.mode, "medusa") == 0;
    int32_t *out = output_buffer(e);
    Stream s = {0};
    stream_reset(&s, e, 1);
    DecodeStats st;
    generate(e, prompt, n_prompt, medusa, e->o.temperature, out, stream_sink, &s, &st);
    printf("\n");
    fflush(stdout);
    if (!e->o.quiet) print_stats(&st, medusa);
    free(s.ids);
    free(out);
}

/* Multi-turn chat on stdin: each line is a user turn; the reply streams to stdout. */
static void run_chat(Engine *e) {
    if (!e->tok || !e->have_tmpl) fatal("%s: chat needs a tokenizer and a chat template (--chat-template)", e->o.model);
    int medusa = strcmp(e->o.mode, "medusa") == 0, interactive = isatty(0);
    Turn *turns = NULL;
    int n_turns = 0;
    char *line = NULL;
    size_t cap = 0;
    int32_t *out = output_buffer(e);
    Stream s = {0};
    if (interactive) fprintf(stderr, "chat with %s (%s decoding); empty line or Ctrl-D ends\n", e->o.model, e->o.mode);
    for (;;) {
        if (interactive) fprintf(stderr, "> ");
        ssize_t got = getline(&line, &cap, stdin);
        if (got <= 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
        if (got == 0) break;
        turns = xrealloc(turns, sizeof(Turn) * (size_t)(n_turns + 2));
        turns[n_turns++] = (Turn){ROLE_USER, xstrdup(line), (size_t)got};
        int n_prompt, first = 0;
        int32_t *prompt = encode_chat(e, turns, n_turns, &n_prompt);
        /* a conversation too long for the context forgets its oldest exchanges */
        while (n_prompt + e->o.max_new + 64 > e->dec.max_len && n_turns - first > 1) {
            first += 2;
            free(prompt);
            prompt = encode_chat(e, turns + first, n_turns - first, &n_prompt);
        }
        stream_reset(&s, e, 1);
        DecodeStats st;
        int n = generate(e, prompt, n_prompt, medusa, e->o.temperature, out, stream_sink, &s, &st);
        printf("\n");
        fflush(stdout);
        if (!e->o.quiet) print_stats(&st, medusa);
        if (n > 0 && out[n - 1] == e->stop_id) n--;
        size_t len;
        char *reply = tokenizer_decode(e->tok, out, n, 1, &len);
        turns[n_turns++] = (Turn){ROLE_ASSISTANT, reply, len};
        free(prompt);
    }
    for (int i = 0; i < n_turns; i++) free((char *)turns[i].text);
    free(turns);
    free(line);
    free(out);
    free(s.ids);
}

/* ---- benchmark ---- */

/* A benchmark prompt: text (through the chat template), or token ids used as they are. */
typedef struct {
    char *text;
    int32_t *ids;
    int n_ids;
} BenchPrompt;

/* a JSON list of integers as token ids, or 0 when it is not one */
static int prompt_ids_from_json(const cJSON *it, BenchPrompt *p) {
    int n = cJSON_GetArraySize(it);
    if (!cJSON_IsArray(it) || n == 0) return 0;
    p->ids = xmalloc(sizeof(int32_t) * (size_t)n);
    p->n_ids = 0;
    for (const cJSON *x = it->child; x; x = x->next) {
        if (!cJSON_IsNumber(x) || x->valuedouble != (double)(int32_t)x->valuedouble) {
            free(p->ids);
            return 0;
        }
        p->ids[p->n_ids++] = (int32_t)x->valuedouble;
    }
    return 1;
}

/* Prompts from a .txt file (one per line) or a JSON list of strings, of {"prompt": ...}, of ShareGPT
 * conversations (the first user turn), or of token-id lists (a model without a tokenizer). */
static BenchPrompt *load_prompts(const char *path, int *n) {
    size_t size;
    char *text = read_whole_file(path, &size);
    if (!text) fatal("%s: cannot read the prompt file", path);
    BenchPrompt *prompts = NULL;
    *n = 0;
    size_t plen = strlen(path);
    if (plen > 4 && strcmp(path + plen - 4, ".txt") == 0) {
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            if (!*line) continue;
            prompts = xrealloc(prompts, sizeof(BenchPrompt) * (size_t)(*n + 1));
            prompts[(*n)++] = (BenchPrompt){xstrdup(line), NULL, 0};
        }
    } else {
        cJSON *root = cJSON_Parse(text);
        if (!cJSON_IsArray(root)) fatal("%s: expected a JSON list of prompts", path);
        for (cJSON *it = root->child; it; it = it->next) {
            prompts = xrealloc(prompts, sizeof(BenchPrompt) * (size_t)(*n + 1));
            memset(&prompts[*n], 0, sizeof(BenchPrompt));
            if (prompt_ids_from_json(it, &prompts[*n])) {
                (*n)++;
                continue;
            }
            const char *p = NULL;
            if (cJSON_IsString(it)) p = it->valuestring;
            else if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(it, "prompt")))
                p = cJSON_GetObjectItemCaseSensitive(it, "prompt")->valuestring;
            Conversation c;
            int conv = !p && conversation_from_json(&c, it) < 0;
            size_t len = p ? strlen(p) : 0;
            for (int i = 0; conv && i < c.n_turns && !p; i++)
                if (c.turns[i].role == ROLE_USER) p = c.turns[i].text, len = c.turns[i].len;
            if (!p)
                fatal("%s: element %d is neither a string, {\"prompt\"}, a usable ShareGPT conversation nor a list of "
                      "token ids",
                      path, *n);
            prompts[*n].text = xmalloc(len + 1);
            memcpy(prompts[*n].text, p, len);
            prompts[(*n)++].text[len] = '\0';
            if (conv) conversation_free(&c);
        }
        cJSON_Delete(root);
    }
    free(text);
    if (*n == 0) fatal("%s: no prompts", path);
    return prompts;
}

typedef struct {
    const char *name;
    int medusa;
    float temperature;
    int64_t tokens, steps;
    double seconds;
} BenchMode;

static void run_bench(Engine *e) {
    int n_prompts;
    BenchPrompt *prompts = load_prompts(e->o.bench, &n_prompts);
    float t_typical = e->o.temperature > 0 ? e->o.temperature : 0.7f;
    BenchMode modes[3] = {
        {"plain greedy", 0, 0, 0, 0, 0}, {"medusa greedy", 1, 0, 0, 0, 0}, {"medusa typical", 1, t_typical, 0, 0, 0}};
    int32_t *out[3];
    for (int m = 0; m < 3; m++) out[m] = output_buffer(e);
    int lossless = 0, ties = 0, ran = 0;
    float window = e->model.weight_dtype == DT_BF16 ? GREEDY_TIE_WINDOW_BF16 : GREEDY_TIE_WINDOW_FP32;
    printf("# medusa-infer --bench %s: %d prompts, model %s, heads %s, tree %s (%d nodes + root), max %d new tokens, "
           "%d threads, typical temperature %.2f\n",
           e->o.bench, n_prompts, e->o.model, e->o.medusa, e->o.tree, e->tree.n_paths, e->o.max_new,
           omp_get_max_threads(), t_typical);
    printf("%-6s %7s %9s %9s %9s %9s %9s %9s  %s\n", "prompt", "tokens", "plain/s", "greedy/s", "acc/step", "typical/s",
           "acc/step", "speedup", "greedy == plain");
    Progress bar;
    progress_start(&bar, "bench", n_prompts);
    for (int p = 0; p < n_prompts; p++) {
        int n_prompt = prompts[p].n_ids;
        int32_t *prompt = prompts[p].ids;
        if (!prompt) prompt = encode_prompt(e, prompts[p].text, &n_prompt);
        char what[PATH_MAX + 32];
        snprintf(what, sizeof what, "%s: prompt %d", e->o.bench, p);
        check_ids(prompt, n_prompt, e->model.config.vocab_size, what);
        if (n_prompt + e->o.max_new + e->tree.n_nodes + 1 > e->dec.max_len) {
            printf("%-6d skipped: %d prompt tokens leave no room for %d new ones in --ctx %d\n", p, n_prompt,
                   e->o.max_new, e->dec.max_len);
            if (!prompts[p].ids) free(prompt);
            continue;
        }
        int n[3];
        DecodeStats st[3];
        for (int m = 0; m < 3; m++) {
            n[m] = generate(e, prompt, n_prompt, modes[m].medusa, modes[m].temperature, out[m], NULL, NULL, &st[m]);
            modes[m].tokens += st[m].new_tokens;
            modes[m].steps += decoding_steps(&st[m], modes[m].medusa);
            modes[m].seconds += st[m].seconds;
        }
        GreedyComparison cmp = greedy_compare(&e->dec, prompt, n_prompt, out[0], n[0], out[1], n[1], window);
        lossless += cmp.match == GREEDY_EQUAL;
        ties += cmp.match == GREEDY_NEAR_TIE;
        ran++;
        char verdict[160] = "yes";
        if (cmp.match != GREEDY_EQUAL && cmp.at < n[0] && cmp.at < n[1])
            snprintf(verdict, sizeof verdict, "%s at token %d: logits %.4g (plain's) vs %.4g, largest %.4g",
                     cmp.match == GREEDY_NEAR_TIE ? "near-tie" : "NO", cmp.at, cmp.logit_a, cmp.logit_b, cmp.largest);
        else if (cmp.match != GREEDY_EQUAL) snprintf(verdict, sizeof verdict, "NO: %d tokens vs %d", n[0], n[1]);
        progress_update(&bar, p + 1, NULL);
        printf("%-6d %7d %9.1f %9.1f %9.2f %9.1f %9.2f %8.2fx  %s\n", p, n[0], st[0].new_tokens / st[0].seconds,
               st[1].new_tokens / st[1].seconds, (double)st[1].new_tokens / decoding_steps(&st[1], 1),
               st[2].new_tokens / st[2].seconds, (double)st[2].new_tokens / decoding_steps(&st[2], 1),
               (st[1].new_tokens / st[1].seconds) / (st[0].new_tokens / st[0].seconds), verdict);
        fflush(stdout);
        if (!prompts[p].ids) free(prompt);
    }
    progress_finish(&bar, n_prompts, NULL);
    double plain_rate = modes[0].tokens / modes[0].seconds;
    printf("\n%-16s %10s %10s %12s %22s %9s\n", "mode", "tokens", "tokens/s", "tokens/step", "(accepted/step beyond 1)",
           "speedup");
    for (int m = 0; m < 3; m++) {
        double rate = modes[m].tokens / modes[m].seconds, per_step = (double)modes[m].tokens / (double)modes[m].steps;
        printf("%-16s %10lld %10.2f %12.3f %22.3f %8.2fx\n", modes[m].name, (long long)modes[m].tokens, rate, per_step,
               per_step - 1, rate / plain_rate);
    }
    printf("greedy Medusa output == plain greedy output on %d/%d prompts\n", lossless, ran);
    if (ties)
        printf("on %d more they part at a near-tie: the two tokens' base logits within %g%% of the row's largest "
               "|logit|, which rounding in another order (a tree's rows vs one row) can flip; not a decoding error\n",
               ties, 100.0 * window);
    for (int m = 0; m < 3; m++) free(out[m]);
    for (int p = 0; p < n_prompts; p++) free(prompts[p].text), free(prompts[p].ids);
    free(prompts);
    if (lossless + ties != ran)
        fatal("greedy Medusa output differs from plain greedy on %d prompts (not at a near-tie)",
              ran - lossless - ties);
}

/* ---- tree tuning ---- */

static int parse_budgets(const char *s, int *out, int max) {
    int n = 0;
    for (const char *p = s; *p && n < max;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 255)
            fatal("--budgets: expected comma-separated node counts in 1..255, got '%s'", s);
        out[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n == 0) fatal("--budgets: no budgets");
    return n;
}

/* Seconds per decoding step, from real decoding: plain (tree NULL) or Medusa with the given tree. */
static double step_seconds(const Model *m, const MedusaHeads *heads, const MedusaTree *tree, const int32_t *prompt,
                           int n_prompt, int steps) {
    Decoder d;
    decoder_init(&d, m, tree ? heads : NULL, tree,
                 n_prompt + steps * (tree ? tree->max_depth : 1) + 2 * (tree ? tree->n_nodes : 1));
    DecodeOptions o;
    decode_options_defaults(&o);
    int32_t *out = xmalloc(sizeof(int32_t) * (size_t)(steps * 16 + 64));
    DecodeStats st;
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) { /* the fastest of three: other processes only ever slow a run down */
        if (tree) decode_medusa(&d, prompt, n_prompt, steps, -1, &o, out, NULL, NULL, &st);
        else decode_plain(&d, prompt, n_prompt, steps, -1, &o, out, NULL, NULL, &st);
        double s = st.seconds / (st.steps > 0 ? st.steps : 1);
        if (s < best) best = s;
    }
    free(out);
    decoder_free(&d);
    return best;
}

static int run_tune(int argc, char **argv) {
    const char *accuracies = NULL, *budgets_s = "8,16,32,64", *out = NULL, *model = NULL, *medusa = NULL,
               *device = "cpu", *precision = "auto";
    int threads = 0, context = 128, steps = 12;
    ArgSpec specs[] = {
        {"accuracies", ARG_STR, &accuracies,
         "head accuracies: medusa-eval --json output (medusa{i}_base_top{k}, else medusa{i}_top{k})"},
        {"budgets", ARG_STR, &budgets_s, "tree sizes to try, in nodes (comma-separated)"},
        {"out", ARG_STR, &out, "where to write the chosen tree (JSON list of paths)"},
        {"model", ARG_STR, &model, "base model (HF dir or .gguf) whose verification cost is measured"},
        {"medusa", ARG_STR, &medusa, "exported heads (optional: heads of the right shape are made up for timing)"},
        {"context", ARG_INT, &context, "tokens of context in the timed steps"},
        {"steps", ARG_INT, &steps, "decoding steps timed per tree"},
        {"threads", ARG_INT, &threads, "CPU threads (0: OpenMP default)"},
        {"device", ARG_STR, &device, "cpu or cuda"},
        {"precision", ARG_STR, &precision,
         "storage of the base weights: auto (bf16 on cuda, fp32 on cpu), fp32 or bf16"},
    };
    const char *usage =
        "usage: medusa-infer tune --accuracies EVAL.json --model PATH [--budgets 8,16,32,64] --out tree.json\n"
        "Builds the tree of each node budget that maximises the expected accepted length for the\n"
        "measured head accuracies, times a decoding step with it on this machine, and writes the\n"
        "tree with the best expected speed (expected tokens per step / seconds per step). The accuracies\n"
        "are the heads' agreement with the base model's greedy choice (medusa{i}_base_top{k}), what\n"
        "verification accepts; an older medusa-eval file without them gives the ground-truth top-k.";
    args_parse(argc, argv, 2, specs, (int)(sizeof specs / sizeof *specs), usage, NULL, 0);
    if (!accuracies || !out || !model) fatal("tune needs --accuracies, --model and --out (see --help)");
    set_threads(threads);
    double acc[16 * TUNE_MAX_RANK];
    int base_agreement;
    int n_heads = tune_load_accuracies(accuracies, acc, 16, &base_agreement);
    if (base_agreement)
        printf("accuracies: the heads' agreement with the base model's greedy choice (medusa{i}_base_top{k})\n");
    else
        printf("accuracies: ground-truth top-k (medusa{i}_top{k}; %s has no medusa{i}_base_top{k}, the agreement with "
               "the base model that verification accepts: evaluate again with this medusa-eval for a better tree)\n",
               accuracies);
    int budgets[32];
    int n_budgets = parse_budgets(budgets_s, budgets, 32);

    const Backend *be = backend_by_name(device);
    ModelConfig c;
    config_load(&c, model);
    MedusaShape shape = {n_heads, 1, c.hidden_size, c.vocab_size, 0};
    if (medusa) shape = medusa_import_shape(medusa, c.hidden_size, c.vocab_size);
    int max_nodes = 1; /* the largest tree timed, with its root */
    for (int b = 0; b < n_budgets; b++)
        if (budgets[b] + 1 > max_nodes) max_nodes = budgets[b] + 1;
    DType dtype = model_precision(precision, be);
    MemoryPlanInput mi = memory_plan_decoding(dtype, shape.n_heads, shape.n_layers, shape.head_vocab,
                                              context + steps * shape.n_heads + 2 * max_nodes, max_nodes);
    MemoryPlan plan = memory_plan(&c, &mi);
    memory_plan_reserve(&plan, be, !be->is_host);

    Model m;
    model_load(&m, model, be, dtype);
    MedusaHeads heads;
    if (medusa) {
        medusa_import(&heads, medusa, m.be, m.config.hidden_size, m.config.vocab_size);
        if (heads.shape.n_heads < n_heads) n_heads = heads.shape.n_heads;
    } else {
        medusa_init(&heads, m.be, shape);
        Rng rng;
        rng_seed(&rng, 1);
        medusa_init_from_base(&heads, &m, &rng);
    }
    if (m.weight_dtype == DT_BF16) medusa_use_bf16(&heads);
    int32_t *prompt = xmalloc(sizeof(int32_t) * (size_t)context);
    for (int i = 0; i < context; i++) prompt[i] = (int32_t)((i * 7919 + 13) % m.config.vocab_size);
    double plain = step_seconds(&m, NULL, NULL, prompt, context, steps);
    printf("%d heads from %s; plain decoding: %.2f ms per token\n", n_heads, accuracies, 1e3 * plain);
    printf("%7s %7s %15s %13s %16s\n", "budget", "depth", "expected tok/step", "ms per step", "expected speedup");
    double best_speed = 0;
    char *best_json = NULL;
    int best_budget = 0;
    for (int b = 0; b < n_budgets; b++) {
        TunedTree tt;
        tune_tree(acc, n_heads, budgets[b], &tt);
        char *json = tuned_tree_json(&tt);
        MedusaTree tree;
        tree_from_json(&tree, json, "tuned tree");
        double cost = step_seconds(&m, &heads, &tree, prompt, context, steps);
        double per_step = 1 + tt.expected_accept, speed = per_step / cost;
        printf("%7d %7d %15.3f %13.2f %15.2fx\n", tt.n_nodes, tree.n_heads_used, per_step, 1e3 * cost, speed * plain);
        if (speed > best_speed) {
            best_speed = speed;
            free(best_json);
            best_json = json;
            best_budget = tt.n_nodes;
        } else {
            free(json);
        }
        tree_free(&tree);
    }
    FILE *f = fopen(out, "w");
    if (!f || fprintf(f, "%s\n", best_json) < 0 || fclose(f) != 0) fatal("%s: cannot write the tree", out);
    printf("best: %d nodes (expected %.2fx over plain greedy) -> %s\n", best_budget, best_speed * plain, out);
    free(best_json);
    free(prompt);
    medusa_free(&heads);
    model_free(&m);
    return 0;
}

/* ---- main ---- */

/* OpenMP's default active waiting spins through whole time slices when the cores are shared, which made
 * decoding 5-10x slower; libgomp reads the policy only at start-up, so set it and start again. */
static void prefer_passive_wait(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    prefer_passive_wait(argv);
    if (argc > 1 && strcmp(argv[1], "tune") == 0) return run_tune(argc, argv);
    Options o = {0};
    o.mode = "plain";
    o.device = "cpu";
    o.precision = "auto";
    o.max_new = 256;
    o.ctx = 2048;
    o.top_p = 1.0f;
    o.posterior_threshold = 0.09f;
    o.posterior_alpha = 0.3f;
    o.seed = 1234;
    const char *mode = NULL;
    ArgSpec specs[] = {
        {"model", ARG_STR, &o.model, "base model: Hugging Face directory or .gguf file"},
        {"medusa", ARG_STR, &o.medusa, "exported Medusa heads directory (enables --mode medusa)"},
        {"prompt", ARG_STR, &o.prompt, "generate for this prompt (a user turn in the chat template) and exit"},
        {"prompt-ids", ARG_STR, &o.prompt_ids, "generate after these comma-separated token ids"},
        {"raw", ARG_FLAG, &o.raw, "use --prompt as is, without the chat template"},
        {"system", ARG_STR, &o.system, "system prompt for the chat template"},
        {"chat-template", ARG_STR, &o.chat_template, "template name (" CHAT_TEMPLATE_NAMES "); default: the model's"},
        {"mode", ARG_STR, &mode, "plain or medusa (default: medusa when --medusa is given)"},
        {"max-new-tokens", ARG_INT, &o.max_new, "tokens to generate at most"},
        {"temperature", ARG_FLOAT, &o.temperature, "0: greedy; > 0: sampling (plain) or typical acceptance (medusa)"},
        {"top-p", ARG_FLOAT, &o.top_p, "nucleus sampling for plain decoding"},
        {"posterior-threshold", ARG_FLOAT, &o.posterior_threshold, "typical acceptance epsilon"},
        {"posterior-alpha", ARG_FLOAT, &o.posterior_alpha, "typical acceptance alpha"},
        {"tree", ARG_STR, &o.tree,
         "Medusa tree (JSON list of paths); default " DEFAULT_TREE_CPU " on cpu, " DEFAULT_TREE " on cuda"},
        {"ctx", ARG_INT, &o.ctx, "context length (KV cache) in tokens"},
        {"seed", ARG_INT, &o.seed, "sampling seed"},
        {"threads", ARG_INT, &o.threads, "CPU threads (0: OpenMP default)"},
        {"device", ARG_STR, &o.device, "cpu or cuda"},
        {"precision", ARG_STR, &o.precision,
         "storage of the base weights: auto (bf16 on cuda, fp32 on cpu), fp32 or bf16"},
        {"bench", ARG_STR, &o.bench,
         "prompt set (.txt lines, or a JSON list of prompts or of token-id lists): tokens/s, accepted tokens per step "
         "and speedup of plain greedy, Medusa greedy and Medusa typical decoding"},
        {"quiet", ARG_FLAG, &o.quiet, "no speed line after each reply"},
    };
    const char *usage =
        "usage: medusa-infer --model PATH [--medusa DIR] [--prompt TEXT | --prompt-ids IDS | --bench PROMPTS]\n"
        "       medusa-infer tune --accuracies EVAL.json --model PATH --budgets 8,16,32,64 --out tree.json\n"
        "Generates with a Llama-family model, plainly or with Medusa heads (tree verification; greedy output is\n"
        "identical to plain greedy decoding). Without --prompt, chats on stdin (one user turn per line).";
    args_parse(argc, argv, 1, specs, (int)(sizeof specs / sizeof *specs), usage, NULL, 0);
    if (!o.model) fatal("--model is required (see --help)");
    o.mode = mode ? mode : o.medusa ? "medusa" : "plain";
    if (strcmp(o.mode, "plain") != 0 && strcmp(o.mode, "medusa") != 0)
        fatal("--mode %s: expected plain or medusa", o.mode);
    if (o.max_new < 1) fatal("--max-new-tokens must be at least 1");
    if (o.ctx < 16) fatal("--ctx must be at least 16");
    if (o.temperature < 0) fatal("--temperature must be >= 0");
    if (!(o.top_p > 0 && o.top_p <= 1)) fatal("--top-p must be in (0, 1]");
    set_threads(o.threads);

    Engine e;
    engine_init(&e, &o);
    if (o.bench) {
        run_bench(&e);
    } else if (o.prompt_ids || o.prompt) {
        int n;
        int32_t *ids =
            o.prompt_ids ? parse_ids(o.prompt_ids, e.model.config.vocab_size, &n) : encode_prompt(&e, o.prompt, &n);
        run_once(&e, ids, n);
        free(ids);
    } else {
        run_chat(&e);
    }
    engine_free(&e);
    return 0;
}
