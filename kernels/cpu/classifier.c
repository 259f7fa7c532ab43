/* Fused softmax cross-entropy against hard or soft targets: loss, a rank (for top-k accuracy) and dlogits in place,
 * one row at a time, so probabilities for the whole vocabulary are never kept beside the logits; the ranks of given
 * ids; typical acceptance's statistics; top-k. */
#include <math.h>
#include <stdlib.h>

#include "../../common/common.h"
#include "cpu_ops.h"

/* the number of entries of row [cols] strictly greater than v (NaN is never greater) */
static int count_above(const float *row, int cols, float v) {
    int n = 0;
    for (int i = 0; i < cols; i++) n += row[i] > v;
    return n;
}

/* rank_ids of one row */
static int32_t rank_in_row(const float *row, int cols, int id) {
    float v = id >= 0 ? row[id] : 0.0f;
    return rank_of(id, v, id >= 0 && isfinite(v) ? count_above(row, cols, v) : 0);
}

/* Row z's loss against the soft target softmax(u) (KL), its gradient dscale * (p - q) written over z: the log-sum-exp
 * of each (double sums), then one pass for q, p, the loss's terms q (log q - log p) and the gradient. */
static float soft_xent_row(float *z, const float *u, int V, float dscale) {
    float zmax = -INFINITY, umax = -INFINITY;
    for (int i = 0; i < V; i++) {
        if (z[i] > zmax) zmax = z[i];
        if (u[i] > umax) umax = u[i];
    }
    double zsum = 0, usum = 0;
    for (int i = 0; i < V; i++) {
        zsum += expf(z[i] - zmax);
        usum += expf(u[i] - umax);
    }
    /* both sums >= 1: each maximum contributes exp(0) */
    // cppcheck-suppress invalidFunctionArg
    double zlse = zmax + log(zsum), ulse = umax + log(usum), kl = 0;
    for (int i = 0; i < V; i++) {
        float p = (float)(expf(z[i] - zmax) / zsum), q = (float)(expf(u[i] - umax) / usum);
        if (q > 0) kl += q * ((u[i] - ulse) - (z[i] - zlse));
        z[i] = dscale * (p - q);
    }
    return (float)kl;
}

void cpu_softmax_xent(float *logits, float *losses, int32_t *ranks, XentTargets targets, int T, int V, float dscale) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *row = logits + (size_t)t * V;
        ranks[t] = rank_in_row(row, V, targets.ranked[t]);
        if (targets.teacher) {
            losses[t] = soft_xent_row(row, targets.teacher + (size_t)t * V, V, dscale);
            continue;
        }
        int target = targets.targets[t];
        if (target < 0) {
            for (int i = 0; i < V; i++) row[i] = 0.0f;
            losses[t] = 0.0f;
            continue;
        }
        float maxv = -INFINITY, target_logit = row[target];
        for (int i = 0; i < V; i++)
            if (row[i] > maxv) maxv = row[i];
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
        float scale = (float)(dscale / sum);
        for (int i = 0; i < V; i++) row[i] *= scale;
        row[target] -= dscale;
    }
}

void cpu_rank_ids(int32_t *ranks, const float *x, const int32_t *ids, int rows, int cols) {
#pragma omp parallel for if ((size_t)rows * cols > PAR_MIN)
    for (int r = 0; r < rows; r++) ranks[r] = rank_in_row(x + (size_t)r * cols, cols, ids[r]);
}

double cpu_softmax_entropy_row(const float *x, int cols, float temperature, float *probs) {
    float maxv = -INFINITY;
    for (int i = 0; i < cols; i++)
        if (x[i] / temperature > maxv) maxv = x[i] / temperature;
    double sum = 0;
    for (int i = 0; i < cols; i++) {
        probs[i] = expf(x[i] / temperature - maxv);
        sum += probs[i];
    }
    double entropy = 0;
    for (int i = 0; i < cols; i++) {
        probs[i] = (float)(probs[i] / sum);
        entropy -= probs[i] * log(probs[i] + 1e-5);
    }
    return entropy;
}

void cpu_softmax_entropy(float *entropy, float *probs, const float *x, const int32_t *ids, int rows, int cols,
                         int n_ids, float temperature) {
#pragma omp parallel if ((size_t)rows * cols > PAR_MIN)
    {
        float *p = xmalloc(sizeof(float) * (size_t)(cols > 0 ? cols : 1));
#pragma omp for
        for (int r = 0; r < rows; r++) {
            entropy[r] = (float)cpu_softmax_entropy_row(x + (size_t)r * cols, cols, temperature, p);
            for (int j = 0; j < n_ids; j++) {
                int id = ids[(size_t)r * n_ids + j];
                probs[(size_t)r * n_ids + j] = id >= 0 ? p[id] : 0.0f;
            }
        }
        free(p);
    }
}

/* One pass per row: each entry is inserted into the sorted list of the best k so far. */
void cpu_top_k(int32_t *idx, const float *x, int rows, int cols, int k) {
#pragma omp parallel for if ((size_t)rows * cols > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * cols;
        int32_t *best = idx + (size_t)r * k;
        int n = 0;
        for (int i = 0; i < cols; i++) {
            if (isnan(row[i])) continue;
            int at = n;
            while (at > 0 && topk_after(row[best[at - 1]], best[at - 1], row[i], i)) at--;
            if (at >= k) continue;
            int last = n < k ? n : k - 1;
            memmove(best + at + 1, best + at, sizeof(int32_t) * (size_t)(last - at));
            best[at] = i;
            if (n < k) n++;
        }
        for (int j = n; j < k; j++) best[j] = -1;
    }
}
