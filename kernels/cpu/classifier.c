/* Fused softmax cross-entropy: loss, target rank (for top-k accuracy) and dlogits in place, one row at a
 * time, so probabilities for the whole vocabulary are never kept beside the logits. */
#include <math.h>

#include "cpu_ops.h"

void cpu_softmax_xent(float *logits, float *losses, int32_t *ranks, const int32_t *targets, int T, int V,
                      float dscale) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *row = logits + (size_t)t * V;
        int target = targets[t];
        if (target < 0) {
            for (int i = 0; i < V; i++) row[i] = 0.0f;
            losses[t] = 0.0f;
            ranks[t] = -1;
            continue;
        }
        float maxv = -INFINITY, target_logit = row[target];
        int rank = 0;
        for (int i = 0; i < V; i++) {
            if (row[i] > maxv) maxv = row[i];
            rank += row[i] > target_logit;
        }
        /* one exp per logit: the exponentials are kept in the row and scaled into the gradient */
        double sum = 0;
        for (int i = 0; i < V; i++) {
            float e = expf(row[i] - maxv);
            row[i] = e;
            sum += e;
        }
        /* sum >= 1: the maximum contributes exp(0) */
        // cppcheck-suppress invalidFunctionArg
        losses[t] = (float)log(sum) - (target_logit - maxv);
        ranks[t] = rank;
        float scale = (float)(dscale / sum);
        for (int i = 0; i < V; i++) row[i] *= scale;
        row[target] -= dscale;
    }
}
