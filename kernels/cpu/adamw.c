/* AdamW (with the bf16 copy of the parameters it updates, when there is one) and the squared norm used for global
 * gradient clipping. */
#include <math.h>

#include "../math_common.h"
#include "cpu_ops.h"

void cpu_adamw(float *param, uint16_t *param_bf16, float *grad, float *m, float *v, size_t n, const AdamWStep *step,
               const double *grad_sum_squares) {
    AdamWStep s = *step;
    if (grad_sum_squares) {
        double norm = sqrt(*grad_sum_squares);
        if (!isfinite(norm)) return; /* nothing applied: the caller reports the norm */
        s.grad_scale = clip_factor(norm, s.max_grad_norm);
    }
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        adamw_update(&param[i], grad[i], &m[i], &v[i], &s);
        grad[i] = 0.0f;
        if (param_bf16) param_bf16[i] = f32_to_bf16(param[i]);
    }
}

void cpu_sum_squares(double *sum, const float *x, size_t n) {
    double total = 0;
#pragma omp parallel for reduction(+ : total)
    for (size_t i = 0; i < n; i++) total += (double)x[i] * x[i];
    *sum = total;
}
