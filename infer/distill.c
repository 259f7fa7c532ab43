#include "distill.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../data/chat_template.h"
#include "../data/model_tokenizer.h"
#include "../formats/atomic_file.h"
#include "batch_decode.h"

void distill_options_defaults(DistillOptions *o) {
    memset(o, 0, sizeof *o);
    o->dev = (DeviceFlags)DEVICE_FLAGS_DEFAULT;
    o->max_new_tokens = 1024;
    o->max_len = 2048;
    o->batch = 32;
    o->pass_tokens = 512;
    o->top_p = 1.0f;
}

/* ---- the partial output: a header with the settings, then one line per finished conversation ---- */

/* The settings a re-run must share with the run it continues (not the batch or the limit: greedy replies do not
 * depend on them, and a larger limit extends a finished run). */
static char *settings_line(const DistillOptions *o, const char *template_name) {
    cJSON *h = cJSON_CreateObject(), *s = cJSON_AddObjectToObject(h, "medusa_distill");
    cJSON_AddStringToObject(s, "model", o->model);
    cJSON_AddStringToObject(s, "input", o->input);
    cJSON_AddStringToObject(s, "template", template_name);
    cJSON_AddNumberToObject(s, "max_new_tokens", o->max_new_tokens);
    cJSON_AddNumberToObject(s, "max_len", o->max_len);
    cJSON_AddNumberToObject(s, "temperature", o->temperature);
    cJSON_AddNumberToObject(s, "top_p", o->top_p);
    cJSON_AddNumberToObject(s, "seed", (double)o->seed);
    char *line = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    return line;
}

typedef struct {
    char *path;
    FILE *f;
    uint8_t *done; /* per input conversation index: finished (written or skipped) */
    int64_t n_done, cap;
} Partial;

static void partial_mark(Partial *p, int64_t index) {
    if (index >= p->cap) {
        int64_t cap = p->cap ? p->cap : 1024;
        while (cap <= index) cap *= 2;
        p->done = xrealloc(p->done, (size_t)cap);
        memset(p->done + p->cap, 0, (size_t)(cap - p->cap));
        p->cap = cap;
    }
    if (!p->done[index]) p->n_done++;
    p->done[index] = 1;
}

static int partial_has(const Partial *p, int64_t index) { return index < p->cap && p->done[index]; }

/* Opens OUT.partial for appending: a new one with the header, or one left by a stopped run with the same settings
 * (a last line cut off by the stop is dropped). */
static void partial_open(Partial *p, const char *out, const char *header) {
    memset(p, 0, sizeof *p);
    size_t n = strlen(out);
    p->path = xmalloc(n + 9);
    memcpy(p->path, out, n);
    memcpy(p->path + n, ".partial", 9);
    size_t size;
    char *text = file_exists(p->path) ? read_whole_file(p->path, &size) : NULL;
    if (!text) {
        p->f = fopen(p->path, "w");
        if (!p->f) fatal("%s: cannot create: %s", p->path, strerror(errno));
        fprintf(p->f, "%s\n", header);
        fflush(p->f);
        return;
    }
    char *nl = strchr(text, '\n');
    if (!nl || (size_t)(nl - text) != strlen(header) || memcmp(text, header, strlen(header)) != 0)
        fatal("%s: left by a run with other settings (or not ours): delete it, or run with its settings: %.*s", p->path,
              nl ? (int)(nl - text) : 200, text);
    size_t good = (size_t)(nl - text) + 1; /* bytes up to the last complete line */
    for (char *line = nl + 1; line < text + size;) {
        char *end = memchr(line, '\n', (size_t)(text + size - line));
        if (!end) break;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)(end - line));
        const cJSON *index = cJSON_GetObjectItemCaseSensitive(j, "index");
        if (!cJSON_IsNumber(index) || index->valuedouble < 0) {
            cJSON_Delete(j);
            break;
        }
        partial_mark(p, (int64_t)index->valuedouble);
        cJSON_Delete(j);
        line = end + 1;
        good = (size_t)(line - text);
    }
    if (good < size) {
        log_warn("%s: dropping %zu bytes after the last complete conversation (a run stopped while writing)", p->path,
                 size - good);
        if (truncate(p->path, (off_t)good) != 0) fatal("%s: cannot truncate: %s", p->path, strerror(errno));
    }
    free(text);
    p->f = fopen(p->path, "a");
    if (!p->f) fatal("%s: cannot append: %s", p->path, strerror(errno));
    log_info("%s: %lld conversations already done, continuing", p->path, (long long)p->n_done);
}

/* One line per conversation, on disk before the next (a stop loses at most the conversations in flight). */
static void partial_write(Partial *p, int64_t index, cJSON *line) {
    cJSON_AddNumberToObject(line, "index", (double)index);
    char *text = cJSON_PrintUnformatted(line);
    if (fprintf(p->f, "%s\n", text) < 0 || fflush(p->f) != 0 || fsync(fileno(p->f)) != 0)
        fatal("%s: write failed: %s", p->path, strerror(errno));
    free(text);
    partial_mark(p, index);
}

static int by_index(const void *a, const void *b) {
    double x = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)a, "index")->valuedouble,
           y = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)b, "index")->valuedouble;
    return (x > y) - (x < y);
}

/* The output from the partial file: conversations in input order, without their index or skipped ones; JSON lines,
 * or a JSON list when out ends in .json. Written atomically; the partial file is removed after. */
static int64_t partial_finish(Partial *p, const char *out) {
    fclose(p->f);
    size_t size;
    char *text = read_whole_file(p->path, &size);
    if (!text) fatal("%s: cannot read back", p->path);
    cJSON **convs = NULL;
    int64_t n = 0, cap = 0;
    for (char *line = strchr(text, '\n') + 1; line < text + size;) {
        char *end = memchr(line, '\n', (size_t)(text + size - line));
        cJSON *j = cJSON_ParseWithLength(line, (size_t)(end - line));
        if (!j) fatal("%s: a line does not parse (changed while running?)", p->path);
        line = end + 1;
        if (!cJSON_GetObjectItemCaseSensitive(j, "conversations")) {
            cJSON_Delete(j);
            continue;
        }
        if (n == cap) convs = xrealloc(convs, sizeof(cJSON *) * (size_t)(cap = cap ? 2 * cap : 1024));
        convs[n++] = j;
    }
    if (n > 1) qsort(convs, (size_t)n, sizeof(cJSON *), by_index);
    size_t len = strlen(out);
    int list = len > 5 && strcmp(out + len - 5, ".json") == 0;
    char *buf = NULL;
    size_t used = 0, cap_bytes = 0;
    for (int64_t i = 0; i < n; i++) {
        cJSON_DeleteItemFromObjectCaseSensitive(convs[i], "index");
        char *s = cJSON_PrintUnformatted(convs[i]);
        cJSON_Delete(convs[i]);
        size_t need = strlen(s) + 4;
        if (used + need > cap_bytes) buf = xrealloc(buf, cap_bytes = 2 * (used + need));
        used += (size_t)sprintf(buf + used, "%s%s%s", !list ? "" : i == 0 ? "[" : ",", s, list ? "" : "\n");
        free(s);
    }
    if (list) {
        buf = xrealloc(buf, used + 4);
        used += (size_t)sprintf(buf + used, "%s]\n", n ? "" : "[");
    }
    write_file_atomic(out, buf, used);
    if (remove(p->path) != 0) log_warn("%s: cannot remove: %s", p->path, strerror(errno));
    free(buf);
    free(convs);
    free(text);
    free(p->done);
    free(p->path);
    return n;
}

/* ---- conversations in flight ---- */

typedef struct {
    int64_t index;
    Conversation conv;
    Turn *turns;    /* the conversation's turns, assistant ones replaced as they are generated */
    char **replies; /* owned texts of the generated turns */
    int at;         /* the assistant turn being generated */
    int n_kept;     /* turns finished so far */
    int busy;
} Job;

static const char *role_key(Role r) { return r == ROLE_SYSTEM ? "system" : r == ROLE_USER ? "human" : "gpt"; }

static cJSON *job_json(const Job *j) {
    cJSON *o = cJSON_CreateObject();
    if (j->conv.id) cJSON_AddStringToObject(o, "id", j->conv.id);
    cJSON *list = cJSON_AddArrayToObject(o, "conversations");
    for (int i = 0; i < j->n_kept; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "from", role_key(j->turns[i].role));
        char *text = xmalloc(j->turns[i].len + 1);
        memcpy(text, j->turns[i].text, j->turns[i].len);
        text[j->turns[i].len] = '\0';
        cJSON_AddStringToObject(t, "value", text);
        free(text);
        cJSON_AddItemToArray(list, t);
    }
    return o;
}

static void job_free(Job *j) {
    for (int i = 0; i < j->conv.n_turns; i++) free(j->replies[i]);
    free(j->replies);
    free(j->turns);
    conversation_free(&j->conv);
    memset(j, 0, sizeof *j);
}

typedef struct {
    const DistillOptions *o;
    ChatTemplate tmpl;
    const Tokenizer *tok;
    BatchDecoder dec;
    Partial partial;
    int64_t convs, turns, skipped, cut; /* written, their generated turns, dropped, replies cut at a limit */
} Distiller;

/* Starts the job's next assistant turn in slot; 0 when the prompt leaves no room (the job ends before it). */
static int job_start_turn(Distiller *d, Job *j, int slot) {
    int32_t *ids;
    int n = chat_generation_prompt(&d->tmpl, d->tok, j->turns, j->at, &ids);
    uint64_t seed = d->o->seed ^ ((uint64_t)j->index * 0x9e3779b97f4a7c15ull) ^ (uint64_t)j->at;
    int ok = batch_decoder_start(&d->dec, slot, ids, n, d->o->max_new_tokens, seed);
    free(ids);
    return ok;
}

/* The job's conversation as far as it got, to the partial file (a conversation without one reply is skipped). */
static void job_finish(Distiller *d, Job *j) {
    if (j->n_kept >= 2 && j->turns[j->n_kept - 1].role == ROLE_ASSISTANT) {
        cJSON *line = job_json(j);
        partial_write(&d->partial, j->index, line);
        cJSON_Delete(line);
        d->convs++;
    } else {
        cJSON *line = cJSON_CreateObject();
        cJSON_AddStringToObject(line, "skipped", "no reply fits --max-len or the first reply is empty");
        partial_write(&d->partial, j->index, line);
        cJSON_Delete(line);
        d->skipped++;
    }
    job_free(j);
}

/* A slot's reply is done: keep it and start the next assistant turn, or finish the job. */
static void job_reply_done(Distiller *d, Job *j, int slot) {
    int n;
    ReplyEnd end;
    const int32_t *ids = batch_decoder_reply(&d->dec, slot, &n, &end);
    size_t raw_len, len;
    char *raw = tokenizer_decode(d->tok, ids, n, 1, &raw_len);
    /* JSON strings are UTF-8: a reply cut inside a character, or a lone byte token, becomes U+FFFD as in HF */
    char *text = utf8_lossy(raw, raw_len, &len);
    free(raw);
    const char *stripped = text;
    size_t slen = len;
    text_strip(&stripped, &slen);
    batch_decoder_release(&d->dec, slot);
    if (slen == 0) { /* an empty reply cannot be trained on, nor can what follows it */
        free(text);
        job_finish(d, j);
        return;
    }
    j->replies[j->at] = text;
    j->turns[j->at] = (Turn){ROLE_ASSISTANT, stripped, slen};
    j->n_kept = j->at + 1;
    d->turns++;
    if (end != REPLY_STOP) d->cut++;
    /* the next assistant turn, after the user's; a reply cut by the context, or a next prompt that leaves no room
     * (prompts only grow), ends the conversation */
    j->at += 2;
    if (end != REPLY_CONTEXT && j->at < j->conv.n_turns && job_start_turn(d, j, slot)) return;
    job_finish(d, j);
}

/* Takes the next conversation of the input not already done into job and starts it in slot; 0 at the end. */
static int job_next(Distiller *d, ShareGPTReader *r, int64_t *next_index, Job *j, int slot) {
    for (;;) {
        if (d->o->limit > 0 && *next_index >= d->o->limit) return 0;
        Conversation c;
        if (!sharegpt_next(r, &c)) return 0;
        int64_t index = (*next_index)++;
        if (partial_has(&d->partial, index)) {
            conversation_free(&c);
            continue;
        }
        memset(j, 0, sizeof *j);
        j->index = index;
        j->conv = c;
        j->turns = xcalloc((size_t)c.n_turns, sizeof(Turn));
        memcpy(j->turns, c.turns, sizeof(Turn) * (size_t)c.n_turns);
        j->replies = xcalloc((size_t)c.n_turns, sizeof(char *));
        j->at = 0;
        while (j->at < c.n_turns && c.turns[j->at].role != ROLE_ASSISTANT) j->at++;
        j->busy = 1;
        if (job_start_turn(d, j, slot)) return 1;
        job_finish(d, j); /* the first prompt alone fills --max-len */
    }
}

void distill_run(const DistillOptions *o) {
    if (!o->model || !o->input || !o->out) fatal("need --model, --input and --out (see --help)");
    if (o->batch < 1 || o->pass_tokens < o->batch)
        fatal("--batch %d and --pass-tokens %d: need 1 <= batch <= pass-tokens", o->batch, o->pass_tokens);
    if (o->max_new_tokens < 1 || o->max_len < 2) fatal("--max-new-tokens and --max-len must be positive");
    if (!(o->temperature >= 0) || o->temperature > 100 || !(o->top_p > 0 && o->top_p <= 1))
        fatal("--temperature %g / --top-p %g: expected 0 <= temperature and 0 < top-p <= 1", o->temperature, o->top_p);
    Startup s;
    startup_begin(&s, &o->dev, o->model);
    Distiller d = {.o = o};

    ModelTokenizer text;
    model_tokenizer_load(&text, o->model, 0);
    d.tok = text.tok;
    const char *name = o->chat_template ? o->chat_template : chat_template_guess(text.jinja);
    if (!name)
        fatal("%s: no known chat template in the model; name one with --chat-template (%s)", o->model,
              CHAT_TEMPLATE_NAMES);
    chat_template_init(&d.tmpl, name, d.tok, text.jinja, text.bos, text.eos);

    int max_position = s.config.max_position;
    int slot_len = max_position > 0 && o->max_len > max_position ? max_position : o->max_len;
    MemoryPlanInput mi = memory_plan_generation(s.dtype, o->batch, slot_len, o->pass_tokens);
    Model m;
    startup_load_base(&s, &mi, 1, &m);
    batch_decoder_init(&d.dec, &m, o->batch, slot_len, o->pass_tokens, chat_stop_id(&d.tmpl, d.tok), o->temperature,
                       o->top_p);

    char *header = settings_line(o, name);
    partial_open(&d.partial, o->out, header);
    free(header);
    ShareGPTReader r;
    sharegpt_open(&r, o->input);
    int64_t total = sharegpt_count(&r), next_index = 0;
    if (o->limit > 0 && o->limit < total) total = o->limit;
    Job *jobs = xcalloc((size_t)o->batch, sizeof(Job));
    int more = 1;
    Progress bar;
    progress_start(&bar, "distill", total);
    double t0 = now_seconds();
    for (;;) {
        for (int s = 0; s < o->batch && more; s++)
            if (!jobs[s].busy) more = job_next(&d, &r, &next_index, &jobs[s], s);
        batch_decoder_step(&d.dec);
        int running = 0;
        for (int s = 0; s < o->batch; s++) {
            if (!jobs[s].busy) continue;
            if (d.dec.slots[s].end != REPLY_RUNNING) job_reply_done(&d, &jobs[s], s);
            running += jobs[s].busy;
        }
        double dt = now_seconds() - t0;
        char extra[96];
        int n =
            snprintf(extra, sizeof extra, "%.0f tok/s, %d running", dt > 0 ? (double)d.dec.generated / dt : 0, running);
        if (o->time_budget > 0 && n > 0 && (size_t)n < sizeof extra) /* the bar's ETA is for all of --limit */
            snprintf(extra + n, sizeof extra - (size_t)n, ", time budget ends in %.0f s",
                     o->time_budget > dt ? o->time_budget - dt : 0);
        progress_update(&bar, d.partial.n_done, extra);
        if ((!more && running == 0) || (o->stop_after > 0 && d.convs + d.skipped >= o->stop_after)) break;
        if (o->time_budget > 0 && dt > o->time_budget) {
            /* the output is what is finished: conversations in flight end after their last finished reply */
            int cut = 0, dropped = 0;
            for (int s = 0; s < o->batch; s++) {
                if (!jobs[s].busy) continue;
                if (jobs[s].n_kept >= 2) cut++, job_finish(&d, &jobs[s]);
                else dropped++, job_free(&jobs[s]);
            }
            log_info("time budget of %.0f s reached: of the conversations in flight, %d end at their last finished "
                     "reply, %d had none yet",
                     o->time_budget, cut, dropped);
            more = 0;
            break;
        }
    }
    double seconds = now_seconds() - t0;
    progress_finish(&bar, d.partial.n_done, NULL);
    sharegpt_close(&r);
    int stopped = more;
    for (int s = 0; s < o->batch; s++)
        if (jobs[s].busy) stopped = 1, job_free(&jobs[s]);
    printf("distill: %lld conversations this run (%lld replies, %lld cut at --max-new-tokens or --max-len), %lld "
           "skipped; %lld tokens generated in %.1f s: %.1f tokens/s (%d at once, %lld passes)\n",
           (long long)d.convs, (long long)d.turns, (long long)d.cut, (long long)d.skipped, (long long)d.dec.generated,
           seconds, seconds > 0 ? (double)d.dec.generated / seconds : 0, o->batch, (long long)d.dec.passes);
    if (stopped) {
        fclose(d.partial.f);
        printf("distill: stopped with %lld conversations in %s; run again with the same settings to continue\n",
               (long long)d.partial.n_done, d.partial.path);
        free(d.partial.done);
        free(d.partial.path);
    } else {
        printf("distill: %lld conversations -> %s\n", (long long)partial_finish(&d.partial, o->out), o->out);
    }
    free(jobs);
    batch_decoder_free(&d.dec);
    model_free(&m);
    chat_template_free(&d.tmpl);
    model_tokenizer_free(&text);
}
