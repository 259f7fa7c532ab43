#include "startup.h"

#include <string.h>

/* --precision: the weights' storage; native (the file's formats, fp32 activations) is what auto picks for a GGUF file
 * where the backend runs it fast (backend_prefers_native: the CPU with AVX2 or AVX-512) */
static DType precision_for(const char *name, const Backend *be, const char *model_path, int *native) {
    *native = strcmp(name, "native") == 0 ||
              (strcmp(name, "auto") == 0 && backend_prefers_native(be) && model_path_is_gguf(model_path));
    if (*native || strcmp(name, "fp32") == 0) return DT_F32;
    if (strcmp(name, "auto") == 0) return be->prefers_bf16 ? DT_BF16 : DT_F32;
    if (strcmp(name, "bf16") == 0) return DT_BF16;
    fatal("--precision %s: expected auto, native, fp32 or bf16", name);
}

void startup_begin(Startup *s, const DeviceFlags *f, const char *model_path) {
    memset(s, 0, sizeof *s);
    s->be = backend_by_name(f->device);
    set_threads(f->threads);
    if (f->gemm_tune && !s->be->set_gemm_tune)
        fatal("--gemm-tune: the %s backend has no GEMM algorithms to choose from (cuda only)", s->be->name);
    if (f->gemm_tune) s->be->set_gemm_tune(1);
    s->dtype = precision_for(f->precision, s->be, model_path, &s->native);
    if (f->logits_chunk < 0)
        fatal("--logits-chunk %d: expected 0 (the device's default) or a row count", f->logits_chunk);
    s->logits_chunk = f->logits_chunk > 0 ? f->logits_chunk : s->be->default_logits_chunk;
    s->model_path = model_path;
    config_load(&s->config, model_path);
}

void startup_load_base(const Startup *s, const MemoryPlanInput *mi, int print, Model *base) {
    MemoryPlanInput in = *mi;
    if (s->native) in.weight_bytes = model_native_matrix_bytes(s->model_path) / memory_plan_matrix_elements(&s->config);
    if (print) {
        config_print(&s->config, stderr);
        fprintf(stderr, "weights: %s on %s\n",
                s->native             ? "native (the file's formats)"
                : s->dtype == DT_BF16 ? "bf16"
                                      : "fp32",
                s->be->device);
    }
    MemoryPlan plan = memory_plan(&s->config, &in);
    memory_plan_reserve(&plan, s->be, print);
    model_load_part(base, s->model_path, s->be, s->dtype, s->native, in.part);
}

void startup_ready_heads(const Model *base, MedusaHeads *heads) {
    if (base->weight_dtype == DT_BF16) medusa_use_bf16(heads);
}
