/* RMSNorm: x / sqrt(mean(x^2) + eps) * weight, accumulated in double for a stable reference. */
#include <math.h>

#include "../math_common.h"
#include "cpu_ops.h"

static float row_rstd(const float *row, int C, float eps) {
    double ss = 0;
    for (int c = 0; c < C; c++) ss += (double)row[c] * row[c];
    return (float)(1.0 / sqrt(ss / C + eps));
}

void cpu_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps) {
/* a few rows (decoding, a tree) are not worth a parallel region: waking the threads costs more than the rows */
#pragma omp parallel for if ((size_t)T * C > PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *row = x + (size_t)t * C;
        float rstd = row_rstd(row, C, eps), *o = out + (size_t)t * C;
        for (int c = 0; c < C; c++) o[c] = row[c] * rstd * weight[c];
    }
}

void cpu_rmsnorm_bf16(uint16_t *out, const float *x, const float *weight, int T, int C, float eps) {
#pragma omp parallel for if ((size_t)T * C > PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *row = x + (size_t)t * C;
        float rstd = row_rstd(row, C, eps);
        uint16_t *o = out + (size_t)t * C;
        for (int c = 0; c < C; c++) o[c] = f32_to_bf16(row[c] * rstd * weight[c]);
    }
}
