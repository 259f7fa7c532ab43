#include "tune.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

/* The first object (depth-first) holding medusa0_top1, from medusa-eval --json or a metrics line. */
static const cJSON *find_accuracies(const cJSON *j) {
    if (cJSON_IsObject(j) && cJSON_GetObjectItemCaseSensitive(j, "medusa0_top1")) return j;
    for (const cJSON *c = j ? j->child : NULL; c; c = c->next) {
        const cJSON *r = find_accuracies(c);
        if (r) return r;
    }
    return NULL;
}

int tune_load_accuracies(const char *path, double *acc, int max_heads, int *base_agreement) {
    char *text = read_whole_file(path, NULL);
    if (!text) fatal("%s: cannot read the accuracies file", path);
    cJSON *root = cJSON_Parse(text);
    if (!root) fatal("%s: not valid JSON", path);
    const cJSON *obj = find_accuracies(root);
    if (!obj) fatal("%s: no medusa0_top1 accuracy (expected medusa-eval --json output)", path);
    *base_agreement = cJSON_GetObjectItemCaseSensitive(obj, "medusa0_base_top1") != NULL;
    const char *format = *base_agreement ? "medusa%d_base_top%d" : "medusa%d_top%d";
    int n = 0;
    for (; n < max_heads; n++) {
        char key[32];
        snprintf(key, sizeof key, "medusa%d_top1", n);
        if (!cJSON_GetObjectItemCaseSensitive(obj, key)) break;
        for (int k = 0; k < TUNE_MAX_RANK; k++) {
            snprintf(key, sizeof key, format, n, k + 1);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1)
                fatal("%s: %s missing or not a fraction in [0, 1]", path, key);
            acc[n * TUNE_MAX_RANK + k] = v->valuedouble;
        }
    }
    cJSON_Delete(root);
    free(text);
    return n;
}

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
