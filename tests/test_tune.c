/* Tree tuning: the greedy construction must reach the best expected acceptance of any valid tree of the
 * same size (checked by brute force over all prefix-closed node sets on a small case), and its JSON must
 * load as a tree; the accuracies come from medusa-eval's JSON: the agreement with the base model where it is there,
 * else (an older file) the ground-truth top-k. */
#include <stdlib.h>
#include <unistd.h>

#include "../infer/tree.h"
#include "../infer/tune.h"
#include "test.h"

/* node n in 0..29: depth 1 nodes 0..4 (rank), depth 2 nodes 5..29 (parent rank*5 + rank) */
static double node_value(int n, const double p[2][5]) {
    if (n < 5) return p[0][n];
    int a = (n - 5) / 5, b = (n - 5) % 5;
    return p[0][a] * p[1][b];
}

/* A medusa-eval --json file of 2 heads: medusa{i}_top{k} = 0.1 (i + 1) + 0.01 k, medusa{i}_base_top{k} (with_base)
 * = 0.5 + 0.1 i + 0.01 k; returns its path. */
static char *eval_json(int with_base, const char *skip) {
    char *path = xstrdup("/tmp/test_tune_XXXXXX");
    int fd = mkstemp(path);
    ensure(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "{\"model\": \"m\", \"batches\": 3");
    for (int i = 0; i < 2; i++)
        for (int k = 1; k <= 5; k++) {
            fprintf(f, ", \"medusa%d_top%d\": %g", i, k, 0.1 * (i + 1) + 0.01 * k);
            char key[32];
            snprintf(key, sizeof key, "medusa%d_base_top%d", i, k);
            if (with_base && strcmp(key, skip) != 0) fprintf(f, ", \"%s\": %g", key, 0.5 + 0.1 * i + 0.01 * k);
        }
    fprintf(f, "}\n");
    fclose(f);
    return path;
}

static void test_load_accuracies(void) {
    double acc[16 * TUNE_MAX_RANK];
    int base = -1, ok = 1;
    char *path = eval_json(1, "");
    int n = tune_load_accuracies(path, acc, 16, &base);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 5; k++) ok &= fabs(acc[i * TUNE_MAX_RANK + k] - (0.5 + 0.1 * i + 0.01 * (k + 1))) < 1e-12;
    CHECK(n == 2 && base == 1 && ok,
          "medusa-eval JSON with medusa{i}_base_top{k}: the agreement with the base is read");
    unlink(path), free(path);
    path = eval_json(0, "");
    n = tune_load_accuracies(path, acc, 16, &base);
    ok = 1;
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 5; k++) ok &= fabs(acc[i * TUNE_MAX_RANK + k] - (0.1 * (i + 1) + 0.01 * (k + 1))) < 1e-12;
    CHECK(n == 2 && base == 0 && ok, "an older medusa-eval JSON (no medusa{i}_base_top{k}): the ground-truth top-k");
    unlink(path), free(path);
    path = eval_json(1, "medusa1_base_top3");
    EXPECT_FATAL(tune_load_accuracies(path, acc, 16, &base), "medusa1_base_top3 missing",
                 "a file with some medusa{i}_base_top{k} but not all names the missing one");
    unlink(path), free(path);
}

int main(void) {
    test_load_accuracies();
    const double acc[2 * TUNE_MAX_RANK] = {0.60, 0.72, 0.78, 0.81, 0.83, 0.35, 0.47, 0.54, 0.58, 0.61};
    double p[2][5];
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < 5; r++) p[h][r] = acc[h * 5 + r] - (r ? acc[h * 5 + r - 1] : 0);
    for (int budget = 1; budget <= 5; budget++) {
        TunedTree t;
        tune_tree(acc, 2, budget, &t);
        double best = 0;
        /* every combination of `budget` of the 30 nodes that is closed under prefixes */
        int n = 30, c[5];
        for (int i = 0; i < budget; i++) c[i] = i;
        for (;;) {
            int ok = 1;
            double v = 0;
            for (int i = 0; i < budget; i++) {
                if (c[i] >= 5) { /* depth-2 node: its parent must be chosen */
                    int parent = (c[i] - 5) / 5, found = 0;
                    for (int j = 0; j < budget; j++) found |= c[j] == parent;
                    ok &= found;
                }
                v += node_value(c[i], p);
            }
            if (ok && v > best) best = v;
            int i = budget - 1;
            while (i >= 0 && c[i] == n - budget + i) i--;
            if (i < 0) break;
            c[i]++;
            for (int j = i + 1; j < budget; j++) c[j] = c[j - 1] + 1;
        }
        CHECK(fabs(t.expected_accept - best) < 1e-12,
              "budget %d: tuned tree expects %.4f accepted tokens, brute-force best %.4f", budget, t.expected_accept,
              best);
    }
    TunedTree t;
    tune_tree(acc, 2, 12, &t);
    char *json = tuned_tree_json(&t);
    MedusaTree tree;
    tree_from_json(&tree, json, "tuned");
    CHECK(tree.n_nodes == 13 && tree.n_heads_used == 2, "a tuned 12-node tree loads as a tree (%d nodes, depth %d)",
          tree.n_nodes, tree.n_heads_used);
    printf("  tuned 12-node tree: %s", json);
    tree_free(&tree);
    free(json);
    return test_summary();
}
