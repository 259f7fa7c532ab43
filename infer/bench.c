#include <cJSON.h>
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

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

void engine_bench(Engine *e) {
    int n_prompts;
    BenchPrompt *prompts = load_prompts(e->o.bench, &n_prompts);
    float t_typical = e->o.temperature > 0 ? e->o.temperature : 0.7f;
    BenchMode modes[3] = {
        {"plain greedy", 0, 0, 0, 0, 0}, {"medusa greedy", 1, 0, 0, 0, 0}, {"medusa typical", 1, t_typical, 0, 0, 0}};
    int32_t *out[3];
    for (int m = 0; m < 3; m++) out[m] = engine_output_buffer(e);
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
