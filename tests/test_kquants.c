/* GGUF K-quants (Q4_K, Q5_K, Q6_K) dequantised by our reader beside the gguf package's dequantize
 * (tests/gen/gen_kquants.py): the same floats, bit for bit. */
#include <stdlib.h>
#include <string.h>

#include "../formats/gguf.h"
#include "../formats/weights.h"
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
    } cases[] = {{"Q4_K", GGML_Q4_K}, {"Q5_K", GGML_Q5_K}, {"Q6_K", GGML_Q6_K}};
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
        free(got);
    }
    weights_close(&ref);
    gguf_close(&g);
    return test_summary();
}
