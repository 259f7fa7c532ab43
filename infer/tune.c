#include "tune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

void tune_tree(const double *topk_acc, int n_heads, int budget, TunedTree *out) {
    if (budget < 1 || budget > 256) fatal("tree budget %d out of range (1..256 nodes)", budget);
    if (n_heads > 16) n_heads = 16;
    /* probability that head h's rank-r candidate is the right token */
    double p[16][TUNE_MAX_RANK];
    for (int h = 0; h < n_heads; h++)
        for (int r = 0; r < TUNE_MAX_RANK; r++) {
            double prev = r ? topk_acc[h * TUNE_MAX_RANK + r - 1] : 0;
            double v = topk_acc[h * TUNE_MAX_RANK + r] - prev;
            p[h][r] = v > 0 ? v : 0;
        }
    memset(out, 0, sizeof *out);
    /* Candidates are children of chosen nodes (and the depth-1 nodes); values only shrink along a path, so
     * taking the best available candidate each time yields the best tree of every size. */
    while (out->n_nodes < budget) {
        double best = -1;
        int best_parent = -2, best_rank = 0;
        for (int parent = -1; parent < out->n_nodes; parent++) {
            int d = parent < 0 ? 0 : out->depth[parent];
            if (d >= n_heads) continue;
            double base = parent < 0 ? 1.0 : out->value[parent];
            for (int r = 0; r < TUNE_MAX_RANK; r++) {
                /* skip children already taken */
                int taken = 0;
                for (int i = 0; i < out->n_nodes && !taken; i++)
                    taken = out->depth[i] == d + 1 && out->path[i][d] == r &&
                            (parent < 0 || memcmp(out->path[i], out->path[parent], sizeof(int) * (size_t)d) == 0);
                if (taken) continue;
                double v = base * p[d][r];
                if (v > best) {
                    best = v;
                    best_parent = parent;
                    best_rank = r;
                }
            }
        }
        if (best_parent == -2) break; /* every possible node is in the tree */
        int i = out->n_nodes++;
        int d = best_parent < 0 ? 0 : out->depth[best_parent];
        if (best_parent >= 0) memcpy(out->path[i], out->path[best_parent], sizeof(int) * (size_t)d);
        out->path[i][d] = best_rank;
        out->depth[i] = d + 1;
        out->value[i] = best;
        out->expected_accept += best;
    }
}

char *tuned_tree_json(const TunedTree *t) {
    size_t cap = 64 + (size_t)t->n_nodes * 64, at = 0;
    char *s = xmalloc(cap);
    at += (size_t)snprintf(s + at, cap - at, "[");
    for (int i = 0; i < t->n_nodes; i++) {
        at += (size_t)snprintf(s + at, cap - at, "%s[", i ? ", " : "");
        for (int d = 0; d < t->depth[i]; d++)
            at += (size_t)snprintf(s + at, cap - at, d ? ", %d" : "%d", t->path[i][d]);
        at += (size_t)snprintf(s + at, cap - at, "]");
    }
    snprintf(s + at, cap - at, "]\n");
    return s;
}
