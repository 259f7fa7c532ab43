#include "distill.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/dist.h"
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

/* ---- the partial output: a header with the settings, then one line per finished conversation ----
 * Over MPI ranks (mpirun -np N) conversation i is rank i % N's, and each rank appends the ones it finishes to a file
 * of its own, a line at a time, fsynced: rank 0 to OUT.partial, rank r > 0 to OUT.partial.rank<r> (OUT's directory
 * must be the same for all ranks, one filesystem, as a training run directory is). No file has two writers, and a
 * stop loses at most a rank's last line, cut off: at start rank 0 alone reads every such file, whatever number of
 * ranks left them, drops a cut line and tells every rank what is done; at the end, after every rank has closed its
 * file, rank 0 merges them all into OUT and removes them. A re-run on any number of ranks so continues any stopped
 * run, and OUT is the same as one process writes. */

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
    char *path; /* this rank's file */
    FILE *f;
    uint8_t *done; /* per input conversation index: finished (written or skipped), by any rank */
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

/* rank's partial file: OUT.partial for rank 0, OUT.partial.rank<r> for the others */
static char *partial_path(const char *out, int rank) {
    size_t n = strlen(out) + 32;
    char *path = xmalloc(n);
    if (rank == 0) snprintf(path, n, "%s.partial", out);
    else snprintf(path, n, "%s.partial.rank%d", out, rank);
    return path;
}

/* Every partial file of OUT on disk, of any rank of any run (OUT.partial first); NULL-terminated. */
static char **partial_files(const char *out) {
    size_t n = 0;
    char **files = xmalloc(sizeof(char *) * 2);
    char *first = partial_path(out, 0);
    if (file_exists(first)) files[n++] = first;
    else free(first);
    const char *slash = strrchr(out, '/');
    char *dir = slash ? xmalloc((size_t)(slash - out) + 2) : NULL;
    if (dir) memcpy(dir, out, (size_t)(slash - out) + 1), dir[slash - out + 1] = '\0';
    const char *base = slash ? slash + 1 : out;
    size_t base_len = strlen(base);
    DIR *d = opendir(dir ? dir : ".");
    for (struct dirent *e; d && (e = readdir(d));) {
        const char *name = e->d_name, *rank = name + base_len + 13; /* after "BASE.partial.rank" */
        if (strncmp(name, base, base_len) != 0 || strncmp(name + base_len, ".partial.rank", 13) != 0 || !*rank ||
            strspn(rank, "0123456789") != strlen(rank))
            continue;
        files = xrealloc(files, sizeof(char *) * (n + 2));
        size_t len = (dir ? strlen(dir) : 0) + strlen(name) + 1;
        files[n] = xmalloc(len);
        snprintf(files[n++], len, "%s%s", dir ? dir : "", name);
    }
    if (d) closedir(d);
    free(dir);
    files[n] = NULL;
    return files;
}

static void free_list(char **list) {
    for (char **s = list; *s; s++) free(*s);
    free(list);
}

/* Marks the conversations of a partial file left by a stopped run with the same settings as done (a last line cut
 * off by the stop is dropped). */
static void partial_load(Partial *p, const char *path, const char *header) {
    size_t size;
    char *text = read_whole_file(path, &size);
    if (!text) fatal("%s: cannot read", path);
    char *nl = strchr(text, '\n');
    if (!nl || (size_t)(nl - text) != strlen(header) || memcmp(text, header, strlen(header)) != 0)
        fatal("%s: left by a run with other settings (or not ours): delete it, or run with its settings: %.*s", path,
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
        log_warn("%s: dropping %zu bytes after the last complete conversation (a run stopped while writing)", path,
                 size - good);
        if (truncate(path, (off_t)good) != 0) fatal("%s: cannot truncate: %s", path, strerror(errno));
    }
    free(text);
}

/* What is done, from every partial file (rank 0 reads them, every rank learns it), then this rank's file opened for
 * appending: a new one with the header, or its own one of a stopped run. */
static void partial_open(Partial *p, const char *out, const char *header) {
    memset(p, 0, sizeof *p);
    if (dist_rank() == 0) {
        char **files = partial_files(out);
        for (char **f = files; *f; f++) partial_load(p, *f, header);
        if (p->n_done) log_info("%s: %lld conversations already done, continuing", files[0], (long long)p->n_done);
        free_list(files);
    }
    int64_t counts[2] = {p->cap, p->n_done};
    dist_bcast(DIST_WORLD, counts, sizeof counts, 0);
    if (dist_rank() != 0) {
        p->cap = counts[0], p->n_done = counts[1];
        p->done = p->cap ? xcalloc((size_t)p->cap, 1) : NULL;
    }
    if (p->cap) dist_bcast(DIST_WORLD, p->done, (size_t)p->cap, 0);
    p->path = partial_path(out, dist_rank());
    int existed = file_exists(p->path); /* rank 0 checked and repaired it before the broadcast */
    p->f = fopen(p->path, existed ? "a" : "w");
    if (!p->f) fatal("%s: cannot %s: %s", p->path, existed ? "append" : "create", strerror(errno));
    if (!existed && (fprintf(p->f, "%s\n", header) < 0 || fflush(p->f) != 0 || fsync(fileno(p->f)) != 0))
        fatal("%s: write failed: %s", p->path, strerror(errno));
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

static void partial_close(Partial *p) {
    fclose(p->f);
    free(p->done);
    free(p->path);
}

static double index_of(const cJSON *j) { return cJSON_GetObjectItemCaseSensitive(j, "index")->valuedouble; }

static int by_index(const void *a, const void *b) {
    double x = index_of(*(cJSON *const *)a), y = index_of(*(cJSON *const *)b);
    return (x > y) - (x < y);
}

/* The output from every partial file (every rank's, all closed): conversations in input order, without their index
 * or skipped ones; JSON lines, or a JSON list when out ends in .json. Written atomically; the partial files are
 * removed after. */
static int64_t partial_finish(const char *out) {
    char **files = partial_files(out);
    cJSON **convs = NULL;
    int64_t n = 0, cap = 0;
    for (char **f = files; *f; f++) {
        size_t size;
        char *text = read_whole_file(*f, &size);
        if (!text) fatal("%s: cannot read back", *f);
        char *nl = strchr(text, '\n');
        for (char *line = nl ? nl + 1 : text + size; line < text + size;) {
            char *end = memchr(line, '\n', (size_t)(text + size - line));
            cJSON *j = end ? cJSON_ParseWithLength(line, (size_t)(end - line)) : NULL;
            if (!j || !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "index")))
                fatal("%s: a line does not parse (changed while running?)", *f);
            line = end + 1;
            if (!cJSON_GetObjectItemCaseSensitive(j, "conversations")) {
                cJSON_Delete(j);
                continue;
            }
            if (n == cap) convs = xrealloc(convs, sizeof(cJSON *) * (size_t)(cap = cap ? 2 * cap : 1024));
            convs[n++] = j;
        }
        free(text);
    }
    if (n > 1) qsort(convs, (size_t)n, sizeof(cJSON *), by_index);
    size_t len = strlen(out);
    int list = len > 5 && strcmp(out + len - 5, ".json") == 0;
    char *buf = NULL;
    size_t used = 0, cap_bytes = 0;
    int64_t written = 0;
    double last = -1;
    for (int64_t i = 0; i < n; i++) {
        double index = index_of(convs[i]);
        if (index == last) continue; /* one conversation in two files (never written so, but harmless): once */
        last = index;
        cJSON_DeleteItemFromObjectCaseSensitive(convs[i], "index");
        char *s = cJSON_PrintUnformatted(convs[i]);
        size_t need = strlen(s) + 4;
        if (used + need > cap_bytes) buf = xrealloc(buf, cap_bytes = 2 * (used + need));
        used += (size_t)sprintf(buf + used, "%s%s%s", !list ? "" : written == 0 ? "[" : ",", s, list ? "" : "\n");
        written++;
        free(s);
    }
    for (int64_t i = 0; i < n; i++) cJSON_Delete(convs[i]);
    if (list) {
        buf = xrealloc(buf, used + 4);
        used += (size_t)sprintf(buf + used, "%s]\n", written ? "" : "[");
    }
    write_file_atomic(out, buf, used);
    for (char **f = files; *f; f++) /* OUT.partial last: a stop in between leaves OUT and a run that continues */
        if (f != files && remove(*f) != 0) log_warn("%s: cannot remove: %s", *f, strerror(errno));
    if (files[0] && remove(files[0]) != 0) log_warn("%s: cannot remove: %s", files[0], strerror(errno));
    free_list(files);
    free(buf);
    free(convs);
    return written;
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
    /* from the conversation's input index and turn alone: the same stream whatever the batch or number of ranks */
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

/* Takes the next conversation of the input that is this rank's (index % ranks == rank) and not already done into job
 * and starts it in slot; 0 at the end. */
static int job_next(Distiller *d, ShareGPTReader *r, int64_t *next_index, Job *j, int slot) {
    for (;;) {
        if (d->o->limit > 0 && *next_index >= d->o->limit) return 0;
        Conversation c;
        if (!sharegpt_next(r, &c)) return 0;
        int64_t index = (*next_index)++;
        if (index % dist_size() != dist_rank() || partial_has(&d->partial, index)) {
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

/* What every rank of a run must share (fatal on all ranks otherwise): the settings line and the rest of the flags
 * that shape the run or its output. */
static char *rank_settings(const DistillOptions *o, const char *header) {
    size_t n = strlen(header) + strlen(o->out) + 256;
    char *s = xmalloc(n);
    snprintf(s, n, "%s out=%s limit=%lld batch=%d pass-tokens=%d stop-after=%lld time-budget=%g precision=%s", header,
             o->out, (long long)o->limit, o->batch, o->pass_tokens, (long long)o->stop_after, o->time_budget,
             o->dev.precision ? o->dev.precision : "(default)");
    return s;
}

void distill_run(const DistillOptions *o) {
    if (!o->model || !o->input || !o->out) fatal("need --model, --input and --out (see --help)");
    if (o->batch < 1 || o->pass_tokens < o->batch)
        fatal("--batch %d and --pass-tokens %d: need 1 <= batch <= pass-tokens", o->batch, o->pass_tokens);
    if (o->max_new_tokens < 1 || o->max_len < 2) fatal("--max-new-tokens and --max-len must be positive");
    if (!(o->temperature >= 0) || o->temperature > 100 || !(o->top_p > 0 && o->top_p <= 1))
        fatal("--temperature %g / --top-p %g: expected 0 <= temperature and 0 < top-p <= 1", o->temperature, o->top_p);
    const int rank = dist_rank(), ranks = dist_size();
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
    char *header = settings_line(o, name);
    char *same = rank_settings(o, header);
    dist_check_same("settings", same);
    free(same);

    int max_position = s.config.max_position;
    int slot_len = max_position > 0 && o->max_len > max_position ? max_position : o->max_len;
    MemoryPlanInput mi = memory_plan_generation(s.dtype, o->batch, slot_len, o->pass_tokens);
    Model m;
    startup_load_base(&s, &mi, 1, &m);
    batch_decoder_init(&d.dec, &m, o->batch, slot_len, o->pass_tokens, chat_stop_id(&d.tmpl, d.tok), o->temperature,
                       o->top_p);

    partial_open(&d.partial, o->out, header);
    free(header);
    ShareGPTReader r;
    sharegpt_open(&r, o->input);
    int64_t total = sharegpt_count(&r), next_index = 0;
    if (o->limit > 0 && o->limit < total) total = o->limit;
    /* --stop-after counts over all ranks: each stops after its part of it (at least one) */
    int64_t stop_after = o->stop_after / ranks + (rank < o->stop_after % ranks);
    if (o->stop_after > 0 && stop_after == 0) stop_after = 1;
    if (ranks > 1)
        log_info("distill over %d ranks: rank r takes conversations r, r + %d, r + 2 x %d, ...; the bar shows rank "
                 "0's share",
                 ranks, ranks, ranks);
    /* the bar: this rank's share of the conversations (the whole run's without ranks; about its pace with them) */
    int64_t share = total > rank ? (total - rank + ranks - 1) / ranks : 0, share_done = 0;
    for (int64_t i = rank; i < total && i < d.partial.cap; i += ranks) share_done += d.partial.done[i];
    Job *jobs = xcalloc((size_t)o->batch, sizeof(Job));
    int more = 1;
    Progress bar;
    progress_start(&bar, "distill", share);
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
        char extra[128];
        int n = snprintf(extra, sizeof extra, "%.0f tok/s, %d running%s", dt > 0 ? (double)d.dec.generated / dt : 0,
                         running, ranks > 1 ? " (rank 0)" : "");
        if (o->time_budget > 0 && n > 0 && (size_t)n < sizeof extra) /* the bar's ETA is for all of --limit */
            snprintf(extra + n, sizeof extra - (size_t)n, ", time budget ends in %.0f s",
                     o->time_budget > dt ? o->time_budget - dt : 0);
        progress_update(&bar, share_done + d.convs + d.skipped, extra);
        if ((!more && running == 0) || (stop_after > 0 && d.convs + d.skipped >= stop_after)) break;
        if (o->time_budget > 0 && dt > o->time_budget) {
            /* the output is what is finished: conversations in flight end after their last finished reply */
            int cut = 0, dropped = 0;
            for (int s = 0; s < o->batch; s++) {
                if (!jobs[s].busy) continue;
                if (jobs[s].n_kept >= 2) cut++, job_finish(&d, &jobs[s]);
                else dropped++, job_free(&jobs[s]);
            }
            log_info("time budget of %.0f s reached: of the conversations in flight, %d end at their last finished "
                     "reply, %d had none yet%s",
                     o->time_budget, cut, dropped, ranks > 1 ? " (rank 0)" : "");
            more = 0;
            break;
        }
    }
    progress_finish(&bar, share_done + d.convs + d.skipped, NULL);
    sharegpt_close(&r);
    int stopped = more;
    for (int s = 0; s < o->batch; s++)
        if (jobs[s].busy) stopped = 1, job_free(&jobs[s]);
    int64_t n_done = d.partial.n_done;
    partial_close(&d.partial);
    /* every rank's file closed and the run's totals: the ranks wait here for the last one */
    int64_t sums[6] = {d.convs, d.turns, d.cut, d.skipped, d.dec.generated, d.dec.passes};
    dist_sum_int64(DIST_WORLD, sums, 6);
    stopped = dist_max_int(stopped);
    double seconds = now_seconds() - t0;
    if (rank == 0) {
        char on[48] = "";
        if (ranks > 1) snprintf(on, sizeof on, " on each of %d ranks", ranks);
        printf("distill: %lld conversations this run (%lld replies, %lld cut at --max-new-tokens or --max-len), %lld "
               "skipped; %lld tokens generated in %.1f s: %.1f tokens/s (%d at once%s, %lld passes)\n",
               (long long)sums[0], (long long)sums[1], (long long)sums[2], (long long)sums[3], (long long)sums[4],
               seconds, seconds > 0 ? (double)sums[4] / seconds : 0, o->batch, on, (long long)sums[5]);
        if (stopped) {
            /* what was done before this run (every rank knows it), and every rank's new ones */
            int64_t done = n_done - d.convs - d.skipped + sums[0] + sums[3];
            printf("distill: stopped with %lld conversations in %s.partial%s; run again with the same settings to "
                   "continue\n",
                   (long long)done, o->out, ranks > 1 ? "*" : "");
        } else {
            printf("distill: %lld conversations -> %s\n", (long long)partial_finish(o->out), o->out);
        }
    }
    free(jobs);
    batch_decoder_free(&d.dec);
    model_free(&m);
    chat_template_free(&d.tmpl);
    model_tokenizer_free(&text);
}
