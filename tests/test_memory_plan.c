/* The memory plan: a 7B Llama in bf16 with 5 heads x 1 layer, AdamW state and a 16k-token batch must fit
 * one 80 GB GPU; the parameter count must match the known size of Llama-2-7B. */
#include "../model/memory_plan.h"
#include "test.h"

int main(void) {
    ModelConfig c = {.architecture = "llama", .hidden_size = 4096, .intermediate_size = 11008, .n_layers = 32,
                     .n_heads = 32, .n_kv_heads = 32, .head_dim = 128, .vocab_size = 32000, .max_position = 4096,
                     .rope_theta = 10000, .rms_norm_eps = 1e-5f};
    MemoryPlanInput in = {.weight_bytes = 2, .act_bytes = 2, .head_copy_bytes = 2, .n_heads = 5, .n_layers = 1,
                          .batch_tokens = 16384, .logits_chunk = 4096, .train = 1};
    MemoryPlan p = memory_plan(&c, &in);
    double params = p.base_weights / 2;
    CHECK(fabs(params - 6738415616.0) < 1, "Llama-2-7B parameter count %.0f == 6738415616", params);
    double heads = p.head_params / 4;
    CHECK(fabs(heads - 5.0 * (4096.0 * 4096 + 4096 + 32000.0 * 4096)) < 1, "5 heads hold %.0f parameters", heads);
    memory_plan_print(&p, stdout, 80e9);
    CHECK(p.total < 80e9 * 0.9, "7B + 5 heads + AdamW + 16k-token batch: %.1f GB < 72 GB (80 GB with room)", p.total / 1e9);
    in.batch_tokens = 1 << 20; /* a million tokens cannot fit: the plan must say so */
    p = memory_plan(&c, &in);
    CHECK(p.total > 80e9, "a 1M-token batch is planned at %.0f GB, more than 80 GB", p.total / 1e9);
    return test_summary();
}
