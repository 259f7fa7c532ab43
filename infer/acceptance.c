#include "acceptance.h"

#include <math.h>

#include "../kernels/cpu/cpu_ops.h"

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

float typical_threshold(const float *logits, int V, float temperature, float epsilon, float alpha, float *probs) {
    return typical_cut(cpu_softmax_entropy_row(logits, V, temperature, probs), epsilon, alpha);
}
