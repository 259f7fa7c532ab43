/* GGUF K-quants (Q4_K, Q5_K, Q6_K) and the 5-bit 32-element formats (Q5_0, Q5_1) dequantised by our reader beside the
 * gguf package's dequantize (tests/gen/gen_kquants.py): the same floats, bit for bit; and the CPU's quantised kernels
 * (embedding_q, and matmul_q with one-hot inputs, which reads the weights it multiplies out) against the same
 * reference. */
#include <stdlib.h>
#include <string.h>

#include "../formats/gguf.h"
#include "../formats/weights.h"
#include "../kernels/ops.h"
#include "test.h"

#define FIXTURES "tests/fixtures/kquants/"

int main(void) {
    GGUFFile g;
    gguf_open(&g, FIXTURES "kquants.gguf");
    WeightSet ref;
    weights_open_safetensors_file(&ref, FIXTURES "kquants_ref.safetensors");
    const struct {
        const char *name;
        GGMLType type;
    } cases[] = {
        {"Q4_K", GGML_Q4_K}, {"Q5_K", GGML_Q5_K}, {"Q6_K", GGML_Q6_K}, {"Q5_0", GGML_Q5_0}, {"Q5_1", GGML_Q5_1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const GGUFTensor *t = gguf_find_tensor(&g, cases[i].name);
        const WeightTensor *want = weights_find(&ref, cases[i].name);
        ensure(t && want && want->dtype == DT_F32);
        int64_t n = t->ne[0] * t->ne[1];
        float *got = xmalloc(sizeof(float) * (size_t)n);
        weights_dequantize((DType)ggml_dtype(t->type), t->data, got, n);
        int64_t differ = 0;
        for (int64_t j = 0; j < n; j++) differ += memcmp(&got[j], want->data + 4 * j, 4) != 0; /* bit patterns */
        CHECK(t->type == cases[i].type && (size_t)n * 4 == want->nbytes && differ == 0,
              "%s: %lld elements (%lld x %lld) dequantised as the gguf package does: %lld differ (bit for bit)",
              ggml_type_name(t->type), (long long)n, (long long)t->ne[1], (long long)t->ne[0], (long long)differ);
        /* the kernels, rows and columns as the model stores the matrix */
        const Backend *cpu = backend_cpu();
        int rows = (int)t->ne[1], cols = (int)t->ne[0];
        DType type = (DType)ggml_dtype(t->type);
        int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)rows);
        for (int r = 0; r < rows; r++) ids[r] = rows - 1 - r; /* in reverse: the row addressing counts */
        cpu->embedding_q(got, ids, t->data, type, rows, cols);
        int64_t emb_differ = 0;
        for (int r = 0; r < rows; r++)
            emb_differ += memcmp(got + (size_t)r * cols, want->data + 4 * (size_t)ids[r] * cols, 4 * (size_t)cols) != 0;
        float *onehot = xcalloc((size_t)4 * cols, sizeof(float)), *out = xmalloc(sizeof(float) * 4 * (size_t)rows);
        int64_t mm_differ = 0;
        for (int c0 = 0; c0 < cols; c0 += 4) { /* 4 input rows: column c0 + k of every weight row, times 1 */
            memset(onehot, 0, sizeof(float) * 4 * (size_t)cols);
            for (int k = 0; k < 4; k++) onehot[(size_t)k * cols + c0 + k] = 1.0f;
            cpu->matmul_q(out, rows, onehot, t->data, type, NULL, 4, cols, rows);
            for (int k = 0; k < 4; k++)
                for (int r = 0; r < rows; r++) {
                    float w;
                    memcpy(&w, want->data + 4 * ((size_t)r * cols + c0 + k), 4);
                    mm_differ += out[(size_t)k * rows + r] != w; /* +0 and -0 alike: the sum with 0 loses the sign */
                }
        }
        CHECK(emb_differ == 0 && mm_differ == 0,
              "%s: embedding_q rows (%lld differ, bit for bit) and the weights matmul_q multiplies (%lld differ) are "
              "the gguf package's",
              ggml_type_name(t->type), (long long)emb_differ, (long long)mm_differ);
        free(ids), free(onehot), free(out);
        free(got);
    }
    weights_close(&ref);
    gguf_close(&g);
    return test_summary();
}
