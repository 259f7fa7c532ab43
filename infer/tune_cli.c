#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../model/medusa_io.h"
#include "engine.h"
#include "tune.h"

static int parse_budgets(const char *s, int *out, int max) {
    int n = 0;
    for (const char *p = s; *p && n < max;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > TREE_MAX_PATHS)
            fatal("--budgets: expected comma-separated node counts in 1..%d, got '%s'", TREE_MAX_PATHS, s);
        out[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n == 0) fatal("--budgets: no budgets");
    return n;
}

/* Seconds per decoding step of plain decoding and of Medusa decoding with the given tree, from real decoding, each
 * the fastest of three runs after an untimed one (the first touches cold memory; other processes only ever slow a run
 * down), the two kinds alternating (A B A B) so that a load that comes and goes weighs on both alike: their ratio is
 * what the choice of tree rests on. */
static void step_seconds(const Model *m, const MedusaHeads *heads, const MedusaTree *tree, const int32_t *prompt,
                         int n_prompt, int steps, double *plain_s, double *tree_s) {
    Decoder plain, medusa;
    decoder_init(&plain, m, NULL, NULL, n_prompt + steps + 2);
    decoder_init(&medusa, m, heads, tree, n_prompt + steps * tree->max_depth + 2 * tree->n_nodes);
    DecodeOptions o;
    decode_options_defaults(&o);
    int32_t *out = xmalloc(sizeof(int32_t) * (size_t)(steps * 16 + 64));
    DecodeStats st;
    *plain_s = *tree_s = 1e30;
    for (int rep = 0; rep < 4; rep++) {
        decode_plain(&plain, prompt, n_prompt, steps, -1, &o, out, NULL, NULL, &st);
        if (rep > 0) *plain_s = fmin(*plain_s, st.seconds / (st.steps > 0 ? st.steps : 1));
        decode_medusa(&medusa, prompt, n_prompt, steps, -1, &o, out, NULL, NULL, &st);
        if (rep > 0) *tree_s = fmin(*tree_s, st.seconds / (st.steps > 0 ? st.steps : 1));
    }
    free(out);
    decoder_free(&plain);
    decoder_free(&medusa);
}

int tune_main(int argc, char **argv) {
    const char *accuracies = NULL, *budgets_s = "8,16,32,64", *out = NULL, *model = NULL, *medusa = NULL;
    int context = 128, steps = 12;
    DeviceFlags dev = DEVICE_FLAGS_DEFAULT;
    ArgSpec specs[] = {
        {"accuracies", ARG_STR, &accuracies,
         "head accuracies: medusa-eval --json output (medusa{i}_base_top{k}, else medusa{i}_top{k})"},
        {"budgets", ARG_STR, &budgets_s, "tree sizes to try, in nodes (comma-separated)"},
        {"out", ARG_STR, &out, "where to write the chosen tree (JSON list of paths)"},
        {"model", ARG_STR, &model, "base model (HF dir or .gguf) whose verification cost is measured"},
        {"medusa", ARG_STR, &medusa, "exported heads (optional: heads of the right shape are made up for timing)"},
        {"context", ARG_INT, &context, "tokens of context in the timed steps"},
        {"steps", ARG_INT, &steps, "decoding steps timed per tree"},
        DEVICE_FLAG_SPECS(&dev),
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

    Startup s;
    startup_begin(&s, &dev, model);
    MedusaShape shape = {n_heads, 1, s.config.hidden_size, s.config.vocab_size, 0};
    if (medusa) shape = medusa_import_shape(medusa, s.config.hidden_size, s.config.vocab_size);
    int max_nodes = 1; /* the largest tree timed, with its root */
    for (int b = 0; b < n_budgets; b++)
        if (budgets[b] + 1 > max_nodes) max_nodes = budgets[b] + 1;
    MemoryPlanInput mi = memory_plan_decoding(s.dtype, shape.n_heads, shape.n_layers, shape.head_vocab,
                                              context + steps * shape.n_heads + 2 * max_nodes, max_nodes);
    Model m;
    startup_load_base(&s, &mi, 1, &m);
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
    startup_ready_heads(&m, &heads);
    int32_t *prompt = xmalloc(sizeof(int32_t) * (size_t)context);
    for (int i = 0; i < context; i++) prompt[i] = (int32_t)((i * 7919 + 13) % m.config.vocab_size);
    printf("%d heads from %s; each tree timed beside plain decoding\n", n_heads, accuracies);
    printf("%7s %7s %15s %13s %13s %16s\n", "budget", "depth", "expected tok/step", "ms per token", "ms per step",
           "expected speedup");
    double best_speed = 0;
    char *best_json = NULL;
    int best_budget = 0;
    for (int b = 0; b < n_budgets; b++) {
        TunedTree tt;
        tune_tree(acc, n_heads, budgets[b], &tt);
        char *json = tuned_tree_json(&tt);
        MedusaTree tree;
        tree_from_json(&tree, json, "tuned tree");
        double plain, cost;
        step_seconds(&m, &heads, &tree, prompt, context, steps, &plain, &cost);
        double per_step = 1 + tt.expected_accept, speed = per_step / cost * plain;
        printf("%7d %7d %15.3f %13.2f %13.2f %15.2fx\n", tt.n_nodes, tree.n_heads_used, per_step, 1e3 * plain,
               1e3 * cost, speed);
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
    printf("best: %d nodes (expected %.2fx over plain greedy) -> %s\n", best_budget, best_speed, out);
    free(best_json);
    free(prompt);
    medusa_free(&heads);
    model_free(&m);
    return 0;
}
