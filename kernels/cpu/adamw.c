/* AdamW and the squared norm used for global gradient clipping. */
#include <math.h>

#include "../math_common.h"
#include "cpu_ops.h"

void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2,
               float eps, float weight_decay, int step, float grad_scale) {
    float bias_correction1 = 1.0f - powf(beta1, (float)step);
    float bias_correction2_sqrt = sqrtf(1.0f - powf(beta2, (float)step));
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        adamw_update(&param[i], grad[i] * grad_scale, &m[i], &v[i], lr, beta1, beta2, eps, weight_decay,
                     bias_correction1, bias_correction2_sqrt);
}

double cpu_sum_squares(const float *x, size_t n) {
    double sum = 0;
#pragma omp parallel for reduction(+ : sum)
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return sum;
}
