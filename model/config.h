/* Model configuration (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3), from config.json or GGUF metadata. */
#ifndef MEDUSA_CONFIG_H
#define MEDUSA_CONFIG_H

#include "../formats/gguf.h"
#include "../kernels/ops.h"

/* the most layers a config may have (layer_sliding's size) */
#define CONFIG_MAX_LAYERS 512
/* the largest head_dim a longrope config may have (rope_short_factor's size) */
#define CONFIG_MAX_HEAD_DIM 512

typedef struct {
    char architecture[32]; /* "llama", "mistral", "qwen2" */
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int vocab_size;
    int max_position;
    float rope_theta;
    /* rotary scaling (transformers' rope_type): none, linear (frequencies / factor), llama3 (frequencies divided by
     * factor below a wavelength band, kept above it, blended inside it), yarn (a blend of the frequencies and
     * frequencies / factor between beta_fast and beta_slow rotations), longrope (frequencies divided by per-frequency
     * short factors) or dynamic (NTK: within max_position the default frequencies); GGUF's rope_freqs tensor divides
     * them too */
    enum { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3, ROPE_YARN, ROPE_LONGROPE, ROPE_DYNAMIC } rope_scaling;
    double rope_factor; /* a Python float in transformers: yarn and dynamic use it in double */
    float rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position;
    float rope_beta_fast, rope_beta_slow; /* yarn's band, in rotations over the original context */
    int rope_truncate;                    /* yarn: the band's ends rounded outwards to whole dimensions */
    /* yarn and longrope: transformers multiplies cos and sin by it, so q.k by its square: folded into attention_scale
     * (0: none) */
    double rope_attention_factor;
    float rope_short_factor[CONFIG_MAX_HEAD_DIM / 2]; /* longrope's divisors of the frequencies (the short ones) */
    /* longrope and dynamic: positions from here on are refused (transformers switches to other frequencies once a
     * sequence is longer, and the cached keys keep the old rotation); 0: no limit */
    int rope_max_position;
    float rms_norm_eps;
    int tie_word_embeddings;
    int attention_bias; /* q/k/v projections carry a bias (qwen2, or llama with attention_bias) */
    int qk_norm;        /* RMSNorm of each q and k head before the rotation (qwen3) */
    int fused_weights;  /* q/k/v and gate/up stored as one qkv_proj and one gate_up_proj (phi3) */
    int sliding_window; /* in the layers layer_sliding marks, a query at position p sees keys from p - sliding_window
                         * + 1 on (mistral and phi3: every layer; gemma3: all but every 6th); 0: no window */
    unsigned char layer_sliding[CONFIG_MAX_LAYERS];
    float rope_theta_sliding; /* the windowed layers' own rotary base, unscaled (gemma3's local base); 0: rope_theta */
    /* Gemma: */
    int norm_adds_one;  /* the stored RMSNorm weights w scale by 1 + w (Hugging Face files; GGUF files hold 1 + w) */
    int sandwich_norms; /* each block's output is normed too, before it is added to the residual stream */
    float embed_scale;  /* the embeddings are multiplied by this (sqrt(hidden_size)); 0: not scaled */
    GluActivation mlp_activation;      /* the gated MLP's: down(act(gate) * up) */
    float attention_scale;             /* the attention scores' scale: 1/sqrt(head_dim), or the family's (Gemma's
                                        * query_pre_attn_scalar^-0.5) with the rope's attention factor squared */
    float attn_softcap, final_softcap; /* Gemma 2's soft-capping of attention scores and of the logits; 0: none */
    int bos_token_id;                  /* -1 when unknown */
    int eos_token_id;
} ModelConfig;

/* Parses and validates a Hugging Face config.json; fatal with the path named on any problem. */
void config_from_json(ModelConfig *c, const char *path);
void config_from_gguf(ModelConfig *c, const GGUFFile *g);
/* A model path naming a GGUF file (else a Hugging Face directory). */
int model_path_is_gguf(const char *path);
/* The config of a model path as model_load takes it (a Hugging Face directory or a .gguf file), without
 * loading weights: the memory plan is made before anything is allocated. */
void config_load(ModelConfig *c, const char *path);
void config_print(const ModelConfig *c, FILE *out);

#endif
