#include "acceptance.h"

#include <math.h>
#include <stdlib.h>

#include "../common/common.h"

int accept_greedy(const int32_t *candidates, const uint8_t *path_valid, const int32_t *argmax, int n_paths, int depth,
                  int *best) {
    int best_len = 0;
    *best = 0;
    for (int p = 0; p < n_paths; p++) {
        int len = 0;
        /* candidate j+1 is accepted when it is what the base model predicts after node j */
        while (len + 1 < depth && path_valid[p * depth + len + 1] &&
               candidates[p * depth + len + 1] == argmax[p * depth + len])
            len++;
        if (len > best_len) {
            best_len = len;
            *best = p;
        }
    }
    return best_len;
}

int accept_typical(const float *cand_prob, const float *threshold, const uint8_t *path_valid, int n_paths, int depth,
                   int *best) {
    int best_len = 0;
    double best_likelihood = -INFINITY;
    *best = 0;
    for (int p = 0; p < n_paths; p++) {
        int len = 0;
        double likelihood = 0;
        while (len + 1 < depth && path_valid[p * depth + len + 1] &&
               cand_prob[p * depth + len] > threshold[p * depth + len]) {
            likelihood += log(cand_prob[p * depth + len]);
            len++;
        }
        if (len == 0) continue;
        if (len > best_len || (len == best_len && likelihood > best_likelihood)) {
            best_len = len;
            best_likelihood = likelihood;
            *best = p;
        }
    }
    return best_len;
}

float typical_cut(double entropy, float epsilon, float alpha) {
    float t = alpha * (float)exp(-entropy);
    return t < epsilon ? t : epsilon;
}

void tree_step_init(TreeStep *s, const MedusaTree *t) {
    size_t N = (size_t)t->n_nodes, PD = (size_t)t->n_leaves * t->max_depth;
    s->tree = t;
    s->tree_tokens = xmalloc(sizeof(int32_t) * N);
    s->paths = xmalloc(sizeof(int32_t) * PD);
    s->valid = xmalloc(PD);
    s->child_ids = xmalloc(sizeof(int32_t) * N * TREE_TOPK);
    s->parent = xmalloc(sizeof(int32_t) * N);
    s->slot = xmalloc(sizeof(int32_t) * N);
    s->path_argmax = xmalloc(sizeof(int32_t) * PD);
    s->cand_prob = xmalloc(sizeof(float) * PD);
    s->threshold = xmalloc(sizeof(float) * PD);
    tree_children(t, s->parent, s->slot);
    for (size_t p = 0; p < PD; p++) s->valid[p] = t->retrieve[p] >= 0;
}

void tree_step_free(TreeStep *s) {
    free(s->tree_tokens);
    free(s->paths);
    free(s->valid);
    free(s->child_ids);
    free(s->parent);
    free(s->slot);
    free(s->path_argmax);
    free(s->cand_prob);
    free(s->threshold);
}

void tree_step_candidates(TreeStep *s, const int32_t *candidates) {
    const MedusaTree *t = s->tree;
    int N = t->n_nodes, PD = t->n_leaves * t->max_depth;
    for (int i = 0; i < N; i++) s->tree_tokens[i] = candidates[t->tree_indices[i]];
    for (int p = 0; p < PD; p++) s->paths[p] = s->valid[p] ? s->tree_tokens[t->retrieve[p]] : 0;
    for (int i = 0; i < N * TREE_TOPK; i++) s->child_ids[i] = -1;
    for (int c = 1; c < N; c++) s->child_ids[s->parent[c] * TREE_TOPK + s->slot[c]] = s->tree_tokens[c];
}

int tree_step_accept_greedy(TreeStep *s, const int32_t *node_argmax, int *best) {
    const MedusaTree *t = s->tree;
    int PD = t->n_leaves * t->max_depth;
    for (int p = 0; p < PD; p++) s->path_argmax[p] = s->valid[p] ? node_argmax[t->retrieve[p]] : -1;
    return accept_greedy(s->paths, s->valid, s->path_argmax, t->n_leaves, t->max_depth, best);
}

int tree_step_accept_typical(TreeStep *s, const float *entropy, const float *child_probs, float epsilon, float alpha,
                             int *best) {
    const MedusaTree *t = s->tree;
    int D = t->max_depth;
    for (int p = 0; p < t->n_leaves; p++) {
        for (int j = 0; j + 1 < D; j++) {
            /* the probability of the path's node j+1 in the row of node j, its parent */
            int node = t->retrieve[p * D + j], child = t->retrieve[p * D + j + 1];
            int ok = node >= 0 && child >= 0;
            s->cand_prob[p * D + j] = ok ? child_probs[node * TREE_TOPK + s->slot[child]] : 0.0f;
            s->threshold[p * D + j] = ok ? typical_cut(entropy[node], epsilon, alpha) : 1.0f;
        }
    }
    return accept_typical(s->cand_prob, s->threshold, s->valid, t->n_leaves, D, best);
}
