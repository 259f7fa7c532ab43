/* AdamW (with the bf16 copy of the parameters it updates, when there is one) and the squared norm used for global
 * gradient clipping. */
#include <math.h>

#include "../math_common.h"
#include "cpu_ops.h"

void cpu_adamw(float *param, uint16_t *param_bf16, const float *grad, float *m, float *v, size_t n,
               const AdamWStep *step) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        adamw_update(&param[i], grad[i], &m[i], &v[i], step);
        if (param_bf16) param_bf16[i] = f32_to_bf16(param[i]);
    }
}

double cpu_sum_squares(const float *x, size_t n) {
    double sum = 0;
#pragma omp parallel for reduction(+ : sum)
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return sum;
}
