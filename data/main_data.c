/* medusa-data: ShareGPT conversations -> token caches for medusa-train (PREFIX.train.tokens.h5) and
 * medusa-eval (PREFIX.val.tokens.h5), rendered with the model's chat template and loss-masked; and
 * `medusa-data stats` to describe a cache. Conversations are parsed and tokenised on all cores, in chunks
 * read from the file in order, and written in file order, so the output does not depend on the thread
 * count. */
#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/args.h"
#include "../common/common.h"
#include "chat_template.h"
#include "model_tokenizer.h"
#include "sharegpt.h"
#include "token_cache.h"
#include "tokenizer.h"

static const char USAGE[] =
    "usage: medusa-data --model PATH --input SHAREGPT.json[l] --out PREFIX [options]\n"
    "       medusa-data stats FILE.tokens.h5 [...]\n"
    "\n"
    "Renders each ShareGPT conversation with the model's chat template, tokenises it and marks the tokens\n"
    "the heads train on (assistant replies and their end-of-turn token), and writes PREFIX.train.tokens.h5 and\n"
    "PREFIX.val.tokens.h5 (a split by conversation id). --model is a Hugging Face directory (tokenizer.json,\n"
    "with tokenizer_config.json for the chat template and BOS/EOS), a tokenizer.json, or a .gguf file.\n"
    "Conversations that cannot be used are skipped and counted by reason. `stats` prints what a cache holds.";

/* ---- tokenising ---- */

/* A conversation goes to the validation split when the hash of its id falls below val_fraction. ShareGPT
 * splits long conversations into parts "<id>_0", "<id>_1", ...: the parts share a split, so no validation
 * conversation continues a training one. Without an id the JSON text is the key. */
static int in_val_split(const Conversation *c, double val_fraction) {
    if (val_fraction <= 0) return 0;
    uint64_t h;
    if (c->id) {
        size_t n = strlen(c->id), k = n;
        while (k > 0 && isdigit((unsigned char)c->id[k - 1])) k--;
        if (k > 1 && k < n && c->id[k - 1] == '_') n = k - 1;
        h = hash64(c->id, n, HASH64_INIT);
    } else {
        h = hash64(c->raw, c->raw_len, HASH64_INIT);
    }
    h ^= h >> 33; /* FNV-1a's high bits mix poorly on short keys: finish with a 64-bit mixer */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (double)(h >> 11) * 0x1p-53 < val_fraction;
}

typedef struct {
    const char *text; /* the element's JSON in the mapped file */
    size_t len;
    int why; /* -1: kept, else the SkipReason */
    int val;
    Encoded enc;
} Item;

typedef struct {
    const ChatTemplate *tmpl;
    const Tokenizer *tok;
    int max_len;
    double val_fraction;
} EncodeJob;

static void encode_item(const EncodeJob *job, Item *it) {
    Conversation c;
    it->why = conversation_parse(&c, it->text, it->len);
    if (it->why >= 0) return;
    it->val = in_val_split(&c, job->val_fraction);
    it->why = chat_encode(job->tmpl, job->tok, &c, job->max_len, &it->enc);
    conversation_free(&c);
}

typedef struct {
    const char *name;
    TokenCacheWriter w;
    int64_t convs, tokens, trained, truncated;
} Split;

/* Elements tokenised at once, between writes. Enough text per chunk that the threads rarely wait on one
 * long conversation at the end of a chunk, little enough to keep memory small. */
#define CHUNK_ITEMS 4096
#define CHUNK_BYTES ((size_t)8 << 20)

static void file_checksum(const char *path, char out[32]) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open", path);
    static char buf[1 << 20];
    uint64_t h = HASH64_INIT;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) h = hash64(buf, n, h);
    if (ferror(f)) fatal("%s: read error", path);
    fclose(f);
    snprintf(out, 32, "%016" PRIx64, h);
}

static void check_out_dir(const char *prefix) {
    char *dir = xstrdup(prefix), *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (!dir_exists(dir)) fatal("%s: the output directory does not exist (--out %s)", dir, prefix);
    }
    free(dir);
}

static void human(char *out, size_t cap, double v) {
    if (v >= 1e9) snprintf(out, cap, "%.2fG", v / 1e9);
    else if (v >= 1e6) snprintf(out, cap, "%.2fM", v / 1e6);
    else if (v >= 1e4) snprintf(out, cap, "%.1fk", v / 1e3);
    else snprintf(out, cap, "%.0f", v);
}

static int run_tokenise(int argc, char **argv) {
    const char *model = NULL, *input = NULL, *out = NULL, *template_name = NULL;
    int max_len = 2048, limit = 0, threads = 0, quiet = 0;
    double val_fraction = 0.02;
    ArgSpec specs[] = {
        {"model", ARG_STR, &model,
         "model directory (tokenizer.json [+ tokenizer_config.json]), tokenizer.json or .gguf"},
        {"input", ARG_STR, &input, "ShareGPT conversations: a JSON list (.json) or JSON lines (.jsonl)"},
        {"out", ARG_STR, &out, "output prefix: writes PREFIX.train.tokens.h5 and PREFIX.val.tokens.h5"},
        {"template", ARG_STR, &template_name, "chat template: " CHAT_TEMPLATE_NAMES " (default: the model's)"},
        {"max-len", ARG_INT, &max_len, "keep the first N tokens of each conversation"},
        {"val-fraction", ARG_DOUBLE, &val_fraction, "fraction of conversations held out for validation (by id)"},
        {"limit", ARG_INT, &limit, "read only the first N conversations of the file (0: all)"},
        {"threads", ARG_INT, &threads, "worker threads (0: OMP_NUM_THREADS or all cores)"},
        {"quiet", ARG_FLAG, &quiet, "no progress bar and no summary"},
    };
    args_parse(argc, argv, 1, specs, sizeof specs / sizeof *specs, USAGE, NULL, 0);
    if (!model || !input || !out) fatal("--model, --input and --out are required (see --help)");
    if (max_len < 1) fatal("--max-len must be at least 1 (got %d)", max_len);
    if (limit < 0) fatal("--limit must be 0 (all) or more (got %d)", limit);
    if (!(val_fraction >= 0 && val_fraction < 1)) fatal("--val-fraction must be in [0, 1) (got %g)", val_fraction);
    if (threads > 0) omp_set_num_threads(threads);
    if (quiet) log_verbosity = 0;
    check_out_dir(out);

    ModelTokenizer m;
    model_tokenizer_load(&m, model, 0);
    if (!template_name) {
        template_name = chat_template_guess(m.jinja);
        if (!template_name)
            fatal("%s: %s; choose one with --template (%s)", model,
                  m.jinja ? "its chat template is none of the known ones" : "no chat template found",
                  CHAT_TEMPLATE_NAMES);
    }
    ChatTemplate tmpl;
    chat_template_init(&tmpl, template_name, m.tok, m.jinja, m.bos, m.eos);

    ShareGPTReader reader;
    sharegpt_open(&reader, input);
    reader.limit = limit;
    int64_t total = sharegpt_count(&reader);
    TokenCacheMeta meta = {0};
    token_cache_fingerprint(m.tok, meta.tokenizer_fingerprint);
    meta.vocab_size = tokenizer_vocab_size(m.tok);
    snprintf(meta.template_name, sizeof meta.template_name, "%s", tmpl.name);
    snprintf(meta.source, sizeof meta.source, "%s", input);
    file_checksum(input, meta.source_checksum);
    meta.max_len = max_len;
    meta.val_fraction = val_fraction;
    log_info("%s: %lld conversations; template %s, tokenizer %s (%d tokens), %d threads", input, (long long)total,
             tmpl.name, meta.tokenizer_fingerprint, tokenizer_vocab_size(m.tok), omp_get_max_threads());

    Split splits[2] = {{.name = "train"}, {.name = "val"}};
    for (int s = 0; s < 2; s++) {
        char path[4096];
        snprintf(path, sizeof path, "%s.%s.tokens.h5", out, splits[s].name);
        token_cache_writer_open(&splits[s].w, path);
    }
    EncodeJob job = {&tmpl, m.tok, max_len, val_fraction};
    Item *items = xcalloc(CHUNK_ITEMS, sizeof *items);
    Progress progress;
    progress_start(&progress, "tokenising", total);
    double t0 = now_seconds();
    for (;;) {
        int n = 0;
        size_t bytes = 0;
        while (n < CHUNK_ITEMS && bytes < CHUNK_BYTES && sharegpt_next_text(&reader, &items[n].text, &items[n].len))
            bytes += items[n++].len;
        if (n == 0) break;
#pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < n; i++) encode_item(&job, &items[i]);
        for (int i = 0; i < n; i++) {
            Item *it = &items[i];
            sharegpt_tally(&reader, it->why);
            if (it->why < 0) {
                Split *s = &splits[it->val];
                token_cache_writer_add(&s->w, it->enc.ids, it->enc.mask, it->enc.n);
                s->convs++;
                s->tokens += it->enc.n;
                s->trained += it->enc.n_trained;
                s->truncated += it->enc.truncated;
            }
            encoded_free(&it->enc);
        }
        sharegpt_release(&reader);
        char extra[96], tps[16];
        human(tps, sizeof tps, (double)(splits[0].tokens + splits[1].tokens) / (now_seconds() - t0));
        snprintf(extra, sizeof extra, "%s tokens/s, kept %lld", tps, (long long)(splits[0].convs + splits[1].convs));
        progress_update(&progress, reader.elements, extra);
    }
    sharegpt_end(&reader);
    double seconds = now_seconds() - t0;
    progress_finish(&progress, reader.elements, NULL);
    free(items);

    int64_t skipped = 0;
    for (int r = 0; r < SKIP_COUNT; r++) skipped += reader.skipped[r];
    if (splits[0].convs + splits[1].convs == 0) { /* an empty cache would only fail later, in medusa-train */
        char reasons[512] = "";
        size_t used = 0;
        for (int r = 0; r < SKIP_COUNT && used < sizeof reasons; r++)
            if (reader.skipped[r])
                used += (size_t)snprintf(reasons + used, sizeof reasons - used, "%s%lld %s", used ? ", " : ": ",
                                         (long long)reader.skipped[r], skip_reason_text((SkipReason)r));
        fatal("%s: no usable conversation (%lld read, %lld skipped%s)", input, (long long)reader.elements,
              (long long)skipped, reasons);
    }
    memcpy(meta.skipped, reader.skipped, sizeof meta.skipped);
    /* Each cache is renamed into place by its close, one after the other. An earlier run's validation cache goes
     * first, so that a kill between the two renames leaves the new train cache and no validation cache (an error when
     * given as --val), never a new train cache beside an old validation one (a mixed pair that would load). */
    char val_path[4096];
    snprintf(val_path, sizeof val_path, "%s.%s.tokens.h5", out, splits[1].name);
    if (unlink(val_path) != 0 && errno != ENOENT) fatal("%s: cannot replace: %s", val_path, strerror(errno));
    for (int s = 0; s < 2; s++) {
        snprintf(meta.split, sizeof meta.split, "%s", splits[s].name);
        meta.truncated = splits[s].truncated;
        token_cache_writer_close(&splits[s].w, &meta);
    }

    if (!quiet) {
        int64_t tokens = splits[0].tokens + splits[1].tokens, trained = splits[0].trained + splits[1].trained;
        int64_t kept = splits[0].convs + splits[1].convs;
        char tps[16];
        human(tps, sizeof tps, (double)tokens / seconds);
        printf("read %lld conversations from %s in %.1f s (%.0f conversations/s, %s tokens/s)\n",
               (long long)reader.elements, input, seconds, (double)reader.elements / seconds, tps);
        printf("kept %lld, skipped %lld\n", (long long)kept, (long long)skipped);
        for (int r = 0; r < SKIP_COUNT; r++)
            if (reader.skipped[r])
                printf("  skipped %8lld  %s\n", (long long)reader.skipped[r], skip_reason_text((SkipReason)r));
        for (int s = 0; s < 2; s++) {
            const Split *sp = &splits[s];
            printf("%-5s %8lld conversations, %11lld tokens, %11lld trained (%.1f%%), %lld cut at --max-len %d -> "
                   "%s.%s.tokens.h5\n",
                   sp->name, (long long)sp->convs, (long long)sp->tokens, (long long)sp->trained,
                   sp->tokens ? 100.0 * (double)sp->trained / (double)sp->tokens : 0.0, (long long)sp->truncated,
                   max_len, out, sp->name);
        }
        printf("total %8lld conversations, %11lld tokens, %11lld trained\n", (long long)kept, (long long)tokens,
               (long long)trained);
        if (val_fraction > 0 && splits[1].convs == 0) log_warn("the validation split is empty (too few conversations)");
    }
    sharegpt_close(&reader);
    chat_template_free(&tmpl);
    model_tokenizer_free(&m);
    return 0;
}

/* ---- stats ---- */

static void print_stats(const char *path) {
    TokenCache c;
    token_cache_load(&c, path, 0);
    const TokenCacheMeta *m = &c.meta;
    int64_t trained = 0, longest = 0;
    for (int64_t i = 0; i < c.n_tokens; i++) trained += c.loss_mask[i];
    /* conversation lengths in power-of-two bins: 1-64, 65-128, ..., so that max_len ends a bin */
    enum { BINS = 16 };
    int64_t hist[BINS] = {0};
    for (int64_t i = 0; i < c.n_convs; i++) {
        int64_t len = c.conv_offsets[i + 1] - c.conv_offsets[i];
        if (len > longest) longest = len;
        int b = 0;
        while (b < BINS - 1 && len > ((int64_t)64 << b)) b++;
        hist[b]++;
    }
    printf("%s\n", path);
    printf("  split            %s (val_fraction %g)\n", m->split, m->val_fraction);
    printf("  conversations    %lld\n", (long long)c.n_convs);
    printf("  tokens           %lld (mean %.0f, longest %lld per conversation)\n", (long long)c.n_tokens,
           c.n_convs ? (double)c.n_tokens / (double)c.n_convs : 0.0, (long long)longest);
    printf("  trained tokens   %lld (%.1f%%)\n", (long long)trained,
           c.n_tokens ? 100.0 * (double)trained / (double)c.n_tokens : 0.0);
    printf("  cut at max_len   %lld conversations (max_len %lld)\n", (long long)m->truncated, (long long)m->max_len);
    printf("  template         %s\n", m->template_name);
    printf("  tokenizer        %s, vocabulary %lld\n", m->tokenizer_fingerprint, (long long)m->vocab_size);
    printf("  source           %s (checksum %s)\n", m->source, m->source_checksum);
    printf("  format_version   %d\n", TOKEN_CACHE_VERSION);
    printf("  length histogram (tokens per conversation)\n");
    int last = 0;
    int64_t peak = 1;
    for (int b = 0; b < BINS; b++) {
        if (hist[b]) last = b;
        if (hist[b] > peak) peak = hist[b];
    }
    for (int b = 0; b <= last; b++) {
        char range[48], bar[41];
        int64_t lo = b == 0 ? 1 : ((int64_t)64 << (b - 1)) + 1, hi = (int64_t)64 << b;
        if (b == BINS - 1) snprintf(range, sizeof range, "%lld+", (long long)lo);
        else snprintf(range, sizeof range, "%lld-%lld", (long long)lo, (long long)hi);
        int w = (int)(40 * hist[b] / peak);
        memset(bar, '#', (size_t)w);
        bar[w] = '\0';
        printf("    %13s %8lld %5.1f%% %s\n", range, (long long)hist[b],
               c.n_convs ? 100.0 * (double)hist[b] / (double)c.n_convs : 0.0, bar);
    }
    int64_t skipped = 0;
    for (int r = 0; r < SKIP_COUNT; r++) skipped += m->skipped[r];
    printf("  skipped in the source: %lld\n", (long long)skipped);
    for (int r = 0; r < SKIP_COUNT; r++)
        if (m->skipped[r])
            printf("    %-16s %8lld  %s\n", skip_reason_key((SkipReason)r), (long long)m->skipped[r],
                   skip_reason_text((SkipReason)r));
    token_cache_free(&c);
}

static int run_stats(int argc, char **argv) {
    const char *files[64];
    int n = args_parse(argc, argv, 2, NULL, 0, USAGE, files, 64);
    if (n == 0) fatal("stats needs a token cache file (FILE.tokens.h5)");
    for (int i = 0; i < n; i++) print_stats(files[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "stats") == 0) return run_stats(argc, argv);
    return run_tokenise(argc, argv);
}
