/* The start-up that every binary running a model shares, in its one order: the shared flags (--device,
 * --precision, --threads, --logits-chunk) resolved and the model's config read (startup_begin); the run's memory
 * planned, printed and reserved on the device before anything is loaded, then the base model loaded into it
 * (startup_load_base); heads, however they are made, put beside the base in its precision (startup_ready_heads). */
#ifndef MEDUSA_STARTUP_H
#define MEDUSA_STARTUP_H

#include "../common/args.h"
#include "llama.h"
#include "medusa.h"
#include "memory_plan.h"

/* The shared flags, as given. */
typedef struct {
    const char *device, *precision;
    int threads;
    int logits_chunk; /* 0: the backend's default */
    int gemm_tune;    /* time each GEMM shape's candidate algorithms once (Backend.set_gemm_tune) */
} DeviceFlags;

#define DEVICE_FLAGS_DEFAULT                                                                                           \
    { "cpu", "auto", 0, 0, 0 }

/* Their rows of a binary's ArgSpec table: one wording in every --help. */
#define DEVICE_FLAG_SPECS(f)                                                                                           \
    {"threads", ARG_INT, &(f)->threads, "CPU threads (0 = OpenMP default)"},                                           \
        {"device", ARG_STR, &(f)->device, "cpu or cuda"},                                                              \
        {"gemm-tune", ARG_FLAG, &(f)->gemm_tune,                                                                       \
         "cuda: time cuBLASLt's candidate algorithms for each GEMM shape at its first use and keep the fastest"},      \
    {                                                                                                                  \
        "precision", ARG_STR, &(f)->precision,                                                                         \
            "storage of the base weights: auto (bf16 on cuda; on an AVX2/AVX-512 cpu native for a .gguf, else fp32), " \
            "native (the file's formats: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, K-quants), fp32 or bf16"             \
    }
/* for the binaries that compute logits in chunks (training, evaluation) */
#define LOGITS_CHUNK_FLAG_SPEC(f)                                                                                      \
    {                                                                                                                  \
        "logits-chunk", ARG_INT, &(f)->logits_chunk,                                                                   \
            "rows of logits (the heads' and the base model's) computed at once: memory vs speed (0: 512 on cpu, 4096 " \
            "on "                                                                                                      \
            "cuda)"                                                                                                    \
    }

/* The flags resolved, and the model's config. */
typedef struct {
    const Backend *be;
    DType dtype;      /* storage of the base weights, and the activations' precision */
    int native;       /* the base's matrices kept in the file's formats (dtype DT_F32) */
    int logits_chunk; /* rows of logits at once */
    ModelConfig config;
    const char *model_path;
} Startup;

/* Resolves the flags (fatal on a bad one), applies --threads and reads model_path's config. */
void startup_begin(Startup *s, const DeviceFlags *f, const char *model_path);
/* Plans the run's memory from mi (made with s->dtype and s->logits_chunk), prints the model's config, its weights'
 * storage and the plan when print is set,
 * reserves it on the device (fatal when it does not fit), then loads the base model into base (mi->part of it). */
void startup_load_base(const Startup *s, const MemoryPlanInput *mi, int print, Model *base);
/* Heads beside their base model: with bf16 GEMM copies when the base is stored in bf16. */
void startup_ready_heads(const Model *base, MedusaHeads *heads);

#endif
