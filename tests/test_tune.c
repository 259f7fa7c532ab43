/* Tree tuning: the greedy construction must reach the best expected acceptance of any valid tree of the
 * same size (checked by brute force over all prefix-closed node sets on a small case), and its JSON must
 * load as a tree. */
#include <stdlib.h>

#include "../infer/tree.h"
#include "../infer/tune.h"
#include "test.h"

/* node n in 0..29: depth 1 nodes 0..4 (rank), depth 2 nodes 5..29 (parent rank*5 + rank) */
static double node_value(int n, const double p[2][5]) {
    if (n < 5) return p[0][n];
    int a = (n - 5) / 5, b = (n - 5) % 5;
    return p[0][a] * p[1][b];
}

int main(void) {
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
