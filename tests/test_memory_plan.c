/* The memory plan: a 7B Llama in bf16 with 5 heads x 1 layer, AdamW state and a 16k-token batch must fit
 * one 80 GB GPU; the parameter count must match the known size of Llama-2-7B; decoding adds a KV cache of
 * 2 x layers x rows x kv-width bf16 values; the FLOPs a training step counts. (tests/test_cuda_ops checks the plans
 * against the bytes a training step and a decoding run really allocate.) */
#include "../model/medusa.h"
#include "../model/memory_plan.h"
#include "test.h"

/* A Llama-2 config of the given shape (head_dim 128, vocabulary 32,000, context 4096) */
static ModelConfig llama2(int hidden, int intermediate, int layers, int heads, int kv_heads) {
    return (ModelConfig){.architecture = "llama",
                         .hidden_size = hidden,
                         .intermediate_size = intermediate,
                         .n_layers = layers,
                         .n_heads = heads,
                         .n_kv_heads = kv_heads,
                         .head_dim = 128,
                         .vocab_size = 32000,
                         .max_position = 4096,
                         .rope_theta = 10000,
                         .rms_norm_eps = 1e-5f};
}

/* An 80 GB GPU as a process sees it: 80 GiB (81,559 MiB reported on an H100 80GB) less ~1 GiB for the CUDA context and
 * cuBLAS; a plan fits when what it reserves (memory_plan_reserve_bytes: +5% and 64 MiB) does. */
#define GPU_80GB (79.0 * (1 << 30))

/* Llama-2-70B in bf16 split over pipeline stages (medusa-train --pipeline): the stages together hold the whole base
 * once, balanced to within a layer; 5 full-vocabulary heads with fp32 AdamW (30 GB) beside the 138 GB base need 3 x
 * 80 GB, and 2 x 80 GB holds them with --head-vocab 16384 */
static void check_70b_stages(void) {
    ModelConfig c = llama2(8192, 28672, 80, 64, 8); /* Llama-2-70B */
    MemoryPlanInput in = memory_plan_training(DT_BF16, 5, 1, 0, 2048, 4096, 1, 0, TARGETS_LABELS);
    MemoryPlan whole = memory_plan(&c, &in);
    double params = (whole.base_weights - (8192.0 + 80 * 2 * 8192) * 4) / 2 + 8192.0 + 80 * 2 * 8192;
    CHECK(fabs(params - 68976648192.0) < 1, "Llama-2-70B parameter count %.0f == 68976648192", params);
    double layer = 2.0 * (8192.0 * 8192 * 2 + 2 * 8192.0 * 1024 + 3 * 8192.0 * 28672); /* one layer's bf16 matrices */
    struct {
        int stages, head_vocab, fits;
    } cases[] = {{1, 0, 0}, {2, 0, 0}, {3, 0, 1}, {2, 16384, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        in.head_vocab = cases[i].head_vocab;
        ModelPart part[3];
        MemoryPlan plan[3];
        memory_plan_stages(&c, &in, cases[i].stages, part, plan);
        double base = 0, largest = 0, smallest = 1e300;
        int contiguous = part[0].layer_begin == 0 && part[cases[i].stages - 1].layer_end == 80;
        for (int s = 0; s < cases[i].stages; s++) {
            base += plan[s].base_weights;
            largest = fmax(largest, plan[s].total), smallest = fmin(smallest, plan[s].total);
            contiguous &= s == 0 || part[s].layer_begin == part[s - 1].layer_end;
            CHECK((s == cases[i].stages - 1) == (plan[s].head_params > 0), "stage %d of %d %s the heads", s,
                  cases[i].stages, plan[s].head_params > 0 ? "holds" : "does not hold");
            printf("     stage %d: layers %2d-%2d, %.1f GB (base %.1f GB, heads + AdamW %.1f GB), reserves %.1f GiB\n",
                   s, part[s].layer_begin, part[s].layer_end - 1, plan[s].total / 1e9, plan[s].base_weights / 1e9,
                   (plan[s].head_params + plan[s].head_grads + plan[s].adam_state + plan[s].head_copy) / 1e9,
                   (double)memory_plan_reserve_bytes(&plan[s]) / (1 << 30));
        }
        CHECK(contiguous && fabs(base - whole.base_weights) < 1 && largest - smallest <= layer,
              "70B over %d stage(s): the layers in order, the base held once (%.1f GB), the stages within one layer "
              "(%.2f GB) of each other: %.1f-%.1f GB",
              cases[i].stages, base / 1e9, layer / 1e9, smallest / 1e9, largest / 1e9);
        MemoryPlan *big = &plan[0];
        for (int s = 1; s < cases[i].stages; s++)
            if (plan[s].total > big->total) big = &plan[s];
        int fits = (double)memory_plan_reserve_bytes(big) <= GPU_80GB;
        CHECK(fits == cases[i].fits,
              "Llama-2-70B bf16 + 5 heads%s on %d x 80 GB: %s (largest stage reserves %.1f GiB of %.0f)",
              cases[i].head_vocab ? " (--head-vocab 16384)" : "", cases[i].stages, fits ? "fits" : "does not fit",
              (double)memory_plan_reserve_bytes(big) / (1 << 30), GPU_80GB / (1 << 30));
    }
    ModelPart part[81];
    EXPECT_FATAL(memory_plan_stages(&c, &in, 81, part, NULL), "81 pipeline stages for a model of 80 layers",
                 "more stages than layers is refused");
}

int main(void) {
    ModelConfig c = llama2(4096, 11008, 32, 32, 32); /* Llama-2-7B */
    MemoryPlanInput in = {.weight_bytes = 4,
                          .act_bytes = 4, /* activations are fp32 */
                          .head_copy_bytes = 2,
                          .n_heads = 5,
                          .n_layers = 1,
                          .batch_tokens = 16384,
                          .logits_chunk = 4096,
                          .train = 1};
    MemoryPlan p = memory_plan(&c, &in);
    double params = p.base_weights / 4;
    CHECK(fabs(params - 6738415616.0) < 1, "Llama-2-7B parameter count %.0f == 6738415616", params);
    in.weight_bytes = 2, in.act_bytes = 2;
    MemoryPlan bf16 = memory_plan(&c, &in);
    double vectors = 2.0 * 32 * 4096 + 4096; /* the norms stay fp32 */
    CHECK(fabs(p.base_weights - bf16.base_weights - 2 * (6738415616.0 - vectors)) < 1,
          "bf16 storage halves the %.0f matrix elements, not the %.0f norm weights", 6738415616.0 - vectors, vectors);
    double heads = bf16.head_params / 4;
    CHECK(fabs(heads - 5.0 * (4096.0 * 4096 + 4096 + 32000.0 * 4096)) < 1, "5 heads hold %.0f parameters", heads);
    CHECK(bf16.head_grads == bf16.head_params && bf16.adam_state == 2 * bf16.head_params && bf16.kv_cache == 0,
          "training: fp32 gradients, two AdamW moments, no KV cache");
    double operands = (16384.0 * 4096 + 16384.0 * 4096 * 3) * 2 + 32 * 1048576.0;
    CHECK(bf16.bf16_operands == operands,
          "bf16 GEMM operands: the final norm's rows rounded for the base's lm_head (16k x 4096), the heads' block "
          "input, "
          "block output and dz (3 x 16k x 4096), the cuBLASLt workspace: %.1f MiB",
          bf16.bf16_operands / 1048576);
    /* x and the final hidden; the q/k/v rows and q, k, v; gate/up; xn, attention's output, o_proj's, SwiGLU's; the
     * layout's 5 int32 rows */
    double fp32_acts = 16384.0 * (2 * 4096 + 2 * 3 * 4096 + 2 * 11008 + (3 * 4096 + 11008)) * 4 + 16384 * 20;
    double bf16_acts = 16384.0 * (2 * 4096 * 4 + (2 * 3 * 4096 + 2 * 11008) * 2 + 11008 * 2) + 16384 * 20;
    CHECK(
        p.base_activations == fp32_acts && bf16.base_activations == bf16_acts,
        "base activations: fp32 weights %.2f GiB; bf16 weights %.2f GiB: the q/k/v rows, q, k, v and the gate/up rows "
        "in bf16, one bf16 buffer of 16k x 11008 for every GEMM input, the residual stream and final hidden states in "
        "fp32",
        p.base_activations / (1 << 30), bf16.base_activations / (1 << 30));
    /* FLOPs (training throughput): the forward pass over two 1024-token sequences, 2 x the weights that multiply
     * activations (the parameter count less the embedding, the lm_head and the norms) per token plus causal attention;
     * a head with one ResBlock on 100 rows */
    int32_t lens[2] = {1024, 1024};
    double forward = model_forward_flops(&c, 2048, lens, 2),
           matmul_weights = 6738415616.0 - 2 * 32000.0 * 4096 - (2 * 32 + 1) * 4096.0;
    CHECK(forward == 2 * matmul_weights * 2048 + 2 * (2.0 * 32 * 4096 * 1024 * 1024),
          "forward FLOPs: 2 x %.0f weights x 2048 tokens + attention (%.4g)", matmul_weights, forward);
    MedusaShape head = {5, 1, 4096, 32000, 0};
    CHECK(medusa_train_flops(&head, 100) == 100 * 2.0 * (3.0 * 32000 * 4096 + 2.0 * 4096 * 4096),
          "head FLOPs per trained row: lm_head forward + 2 gradients, the ResBlock's forward + weight gradient");
    memory_plan_print(&bf16, stdout, 80e9, "an 80 GB GPU");
    CHECK(bf16.total < 80e9 * 0.9, "7B + 5 heads + AdamW + 16k-token batch: %.1f GB < 72 GB (80 GB with room)",
          bf16.total / 1e9);
    double reserve = (double)memory_plan_reserve_bytes(&bf16), margin = reserve - bf16.total;
    CHECK(fabs(margin - (0.05 * bf16.total + 64.0 * (1 << 20))) < 2,
          "reserved: the plan + 5%% + 64 MiB (%.1f MiB more)", margin / (1 << 20));
    MemoryPlanInput ti = memory_plan_training(DT_BF16, 5, 1, 0, 16384, 4096, 1, 0, TARGETS_LABELS);
    CHECK(memory_plan(&c, &ti).total == bf16.total, "memory_plan_training: the same plan as the fields set by hand");
    MemoryPlanInput ei = memory_plan_training(DT_BF16, 5, 1, 0, 16384, 4096, 0, 1, TARGETS_LABELS);
    MemoryPlan e = memory_plan(&c, &ei);
    CHECK(e.head_grads == 0 && e.adam_state == 0 && e.logits == (4096.0 + 4096.0) * 32000 * 4,
          "evaluation: no gradients or AdamW state; the base model's logits on a 4096-row chunk beside the heads' "
          "(%.2f GiB)",
          e.logits / (1 << 30));
    /* distillation: base-argmax ranks the base model's logits on a chunk, as evaluation does; base-kl keeps the
     * teacher's logits over the heads' vocabulary beside the heads' chunk, the hidden rows they come from and their
     * positions, and with truncated heads (4096 tokens) the base lm_head's rows for their map in bf16 */
    MemoryPlanInput ai = memory_plan_training(DT_BF16, 5, 1, 0, 16384, 4096, 1, 0, TARGETS_BASE_ARGMAX);
    MemoryPlan a = memory_plan(&c, &ai);
    MemoryPlanInput ki = memory_plan_training(DT_BF16, 5, 1, 0, 16384, 4096, 1, 0, TARGETS_BASE_KL);
    MemoryPlan k = memory_plan(&c, &ki);
    MemoryPlanInput kti = memory_plan_training(DT_BF16, 5, 1, 4096, 16384, 4096, 1, 0, TARGETS_BASE_KL);
    MemoryPlan kt = memory_plan(&c, &kti);
    CHECK(a.logits == e.logits && a.head_grads == bf16.head_grads && k.logits == 2 * bf16.logits &&
              k.head_activations - bf16.head_activations == 4096.0 * 4096 * 4 + 16384 * 4 && k.teacher_weights == 0 &&
              kt.teacher_weights == 4096.0 * 4096 * 2,
          "distillation: base-argmax plans the base's chunk of logits (%.2f GiB), base-kl the teacher's beside the "
          "heads' (%.2f GiB) and its hidden rows; truncated heads the base lm_head's rows for their map (%.0f MiB)",
          a.logits / (1 << 30), k.logits / (1 << 30), kt.teacher_weights / (1 << 20));
    in.batch_tokens = 1 << 20; /* a million tokens cannot fit: the plan must say so */
    p = memory_plan(&c, &in);
    CHECK(p.total > 80e9, "a 1M-token batch is planned at %.0f GB, more than 80 GB", p.total / 1e9);

    /* decoding with a 64-node tree over 5 heads and a 4096-token context */
    MemoryPlanInput di = memory_plan_decoding(DT_BF16, 5, 1, 0, 4096, 64);
    MemoryPlan d = memory_plan(&c, &di);
    double kv = 2.0 * 32 * (4096 + 64) * (32 * 128) * 2;
    CHECK(d.kv_cache == kv, "decoding KV cache: %.3f GiB == 2 x 32 layers x 4160 rows x 4096 x 2 bytes (bf16)",
          d.kv_cache / (1 << 30));
    MemoryPlanInput f32i = memory_plan_decoding(DT_F32, 5, 1, 0, 4096, 64);
    CHECK(memory_plan(&c, &f32i).kv_cache == 2 * kv, "with fp32 weights the KV cache is fp32: twice the bytes");
    CHECK(d.attention_split == 16.0 * 4096 * 130 * 4 && bf16.attention_split == 0,
          "decoding: %.1f MiB for attention's key slices (16 x 4096 rows x (128 + 2) floats); none in training",
          d.attention_split / (1 << 20));
    CHECK(d.head_grads == 0 && d.adam_state == 0 && d.head_params == bf16.head_params,
          "decoding: the heads' parameters, no gradients or AdamW state");
    double logits = 64.0 * 32000 * 4 * (1 + 1 + 5); /* heads' chunk, base logits and each head's per node */
    CHECK(d.logits == logits, "decoding logits: %.1f MiB for 64 nodes x (base + heads' chunk + 5 heads) x 32000",
          d.logits / (1 << 20));
    CHECK(d.base_activations > 4096.0 * 4096 * 4 && d.total < 24e9, "decoding plan %.2f GB fits a 24 GB GPU",
          d.total / 1e9);
    CHECK(d.head_copy == d.head_params / 2 && d.bf16_operands == (4096.0 * 4096 + 64.0 * 4096 * 3) * 2 + 32 * 1048576.0,
          "decoding on a bf16 base: bf16 head copy, operands for a 4096-token prompt and the heads' rounded rows at 64 "
          "nodes");
    MemoryPlanInput plain = memory_plan_decoding(DT_BF16, 0, 0, 0, 4096, 1);
    d = memory_plan(&c, &plain);
    CHECK(d.head_params == 0 && d.head_activations == 0 && d.logits == 32000.0 * 4,
          "plain decoding: no heads, one row of logits");
    check_70b_stages();
    return test_summary();
}
