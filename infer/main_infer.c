/* medusa-infer: generate or chat with a base model, plainly or with Medusa tree decoding; --bench compares
 * plain greedy, Medusa greedy and Medusa typical decoding on a prompt set; `tune` builds trees from measured
 * head accuracies and picks the one this machine runs fastest. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/args.h"
#include "engine.h"

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

static void print_stats(const DecodeStats *st, int medusa) {
    fprintf(stderr, "[%d tokens in %.2f s: %.1f tokens/s, %.2f tokens per step%s, prefill %.2f s]\n", st->new_tokens,
            st->seconds, st->new_tokens / (st->seconds > 0 ? st->seconds : 1e-9),
            (double)st->new_tokens / decoding_steps(st, medusa), medusa ? " (Medusa)" : "", st->prefill_seconds);
}

static void run_once(Engine *e, const int32_t *prompt, int n_prompt) {
    int medusa = strcmp(e->o.mode, "medusa") == 0;
    int32_t *out = engine_output_buffer(e);
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
    int32_t *out = engine_output_buffer(e);
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

/* ---- main ---- */

/* How OpenMP's threads wait between the ops of a decoding step, set before libgomp starts (it reads the environment
 * once, so set it and start again). A decoding step is ~120 short parallel regions: waking a sleeping thread for each
 * (passive) cost about half the step on 2 idle cores, while a brief spin (GOMP_SPINCOUNT=20000, tens of microseconds)
 * keeps the threads at hand; but when other processes keep the cores busy, spinning threads take the time slices the
 * working ones need (decoding ran 2x slower with the brief spin, 5-10x with libgomp's default spin), and passive waits
 * lose nothing. So: the brief spin when the processes running now (/proc/loadavg's fourth field, less this one) leave
 * a core for each thread, else passive; an OMP_WAIT_POLICY or GOMP_SPINCOUNT the user set is kept. */
static void choose_omp_wait(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    int running = 1 << 20; /* unknown: as if busy */
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%*f %*f %*f %d/", &running) != 1) running = 1 << 20;
        fclose(f);
    }
    int threads = 0;
    for (int i = 1; argv[i] && argv[i + 1]; i++)
        if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads <= 0 || threads > cores) threads = cores;
    if (running - 1 + threads <= cores) setenv("GOMP_SPINCOUNT", "20000", 1);
    else setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    choose_omp_wait(argv);
    if (argc > 1 && strcmp(argv[1], "tune") == 0) return tune_main(argc, argv);
    EngineOptions o = {0};
    o.dev = (DeviceFlags)DEVICE_FLAGS_DEFAULT;
    o.mode = "plain";
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
        DEVICE_FLAG_SPECS(&o.dev),
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

    Engine e;
    engine_init(&e, &o);
    if (o.bench) {
        engine_bench(&e);
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
