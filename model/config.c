#include "config.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int known_architecture(const char *arch) {
    return strcmp(arch, "llama") == 0 || strcmp(arch, "mistral") == 0 || strcmp(arch, "qwen2") == 0 ||
           strcmp(arch, "qwen3") == 0 || strcmp(arch, "phi3") == 0 || strcmp(arch, "gemma2") == 0 ||
           strcmp(arch, "gemma3_text") == 0;
}
#define KNOWN_ARCHITECTURES "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text"

/* The Gemma generation of an architecture name (config.json's or GGUF's): 2, 3, or 0 for another family */
static int gemma_generation(const char *arch) {
    if (strcmp(arch, "gemma2") == 0) return 2;
    if (strcmp(arch, "gemma3") == 0 || strcmp(arch, "gemma3_text") == 0) return 3;
    return 0;
}

/* Gemma 2 and 3 as transformers computes them: embeddings times sqrt(hidden_size), norms before and after each block,
 * a GeLU-tanh MLP, and windowed layers but every `pattern`-th (Gemma 2: every other one, Gemma 3: every sixth);
 * Gemma 3 adds q/k norms. (Their RMSNorm weights w scale by 1 + w: norm_adds_one, where the file holds w.) */
static int gemma_window_pattern(int generation) { return generation == 2 ? 2 : 6; }

static void gemma_traits(ModelConfig *c, int generation) {
    int pattern = gemma_window_pattern(generation);
    c->qk_norm = generation == 3;
    c->sandwich_norms = 1;
    c->embed_scale = (float)sqrt((double)c->hidden_size); /* torch.tensor(hidden_size**0.5): fp32 of the double root */
    c->mlp_activation = GLU_GELU_TANH;
    for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = (l + 1) % pattern != 0;
}

static const cJSON *field(const cJSON *root, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static int json_int(const cJSON *root, const char *path, const char *key, int fallback, int required) {
    const cJSON *v = field(root, key);
    if (!v) {
        if (required) fatal("%s: missing required field \"%s\"", path, key);
        return fallback;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble)
        fatal("%s: field \"%s\" must be an integer", path, key);
    return (int)v->valuedouble;
}

static double json_num(const cJSON *root, const char *path, const char *key, double fallback) {
    const cJSON *v = field(root, key);
    if (!v) return fallback;
    if (!cJSON_IsNumber(v)) fatal("%s: field \"%s\" must be a number", path, key);
    return v->valuedouble;
}

static int json_bool(const cJSON *root, const char *path, const char *key, int fallback) {
    const cJSON *v = field(root, key);
    if (!v) return fallback;
    if (!cJSON_IsBool(v)) fatal("%s: field \"%s\" must be true or false", path, key);
    return cJSON_IsTrue(v);
}

/* Fields that change the computation in ways this model code does not implement: a clear error naming the field,
 * never a silently different result. */
static void refuse_unimplemented(const ModelConfig *c, const cJSON *root, const char *path) {
    const char *acts[] = {"hidden_act", "hidden_activation"};
    const char *act = c->mlp_activation == GLU_GELU_TANH ? "gelu_pytorch_tanh" : "silu";
    /* Gemma's MLP reads hidden_activation; a hidden_act beside it is ignored by transformers */
    for (int i = c->mlp_activation == GLU_GELU_TANH ? 1 : 0; i < 2; i++) {
        const cJSON *a = field(root, acts[i]);
        if (a && (!cJSON_IsString(a) || strcmp(a->valuestring, act) != 0))
            fatal("%s: %s \"%s\" is not supported (this family's MLP is gated by %s)", path, acts[i],
                  cJSON_IsString(a) ? a->valuestring : "?", act);
    }
    /* Gemma's soft-capping and attention scalar are read with its traits; in another family they would be ignored */
    const char *gemma_only[] = {"attention_logit_softcapping", "attn_logit_softcapping", "final_logit_softcapping",
                                "query_pre_attn_scalar"};
    for (int i = 0; i < 4 && !gemma_generation(c->architecture); i++)
        if (field(root, gemma_only[i])) fatal("%s: %s is not supported in %s", path, gemma_only[i], c->architecture);
    if (json_bool(root, path, "use_bidirectional_attention", 0))
        fatal("%s: use_bidirectional_attention: only causal attention is supported", path);
    if (json_bool(root, path, "mlp_bias", 0)) fatal("%s: mlp_bias: biases in the MLP are not supported", path);
    if (json_num(root, path, "partial_rotary_factor", 1.0) != 1.0)
        fatal("%s: partial_rotary_factor: rotary embeddings over part of a head are not supported", path);
}

static double json_required_num(const cJSON *root, const char *path, const char *key, const char *where) {
    const cJSON *v = field(root, key);
    if (!cJSON_IsNumber(v)) fatal("%s: %s needs the number \"%s\"", path, where, key);
    return v->valuedouble;
}

/* YaRN's attention factor from its paper (transformers' yarn_get_mscale) */
static double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0; }

/* longrope's default attention factor, of the context's growth over the original one */
static double longrope_attention(double factor, double original) {
    return factor <= 1.0 ? 1.0 : sqrt(1 + log(factor) / log(original));
}

/* A longrope factor list: one number per rotary frequency */
static void parse_factor_list(const ModelConfig *c, const cJSON *scaling, const char *path, const char *key,
                              float *out) {
    const cJSON *list = field(scaling, key);
    int n = c->head_dim / 2;
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != n || n > CONFIG_MAX_HEAD_DIM / 2)
        fatal("%s: rope scaling longrope needs \"%s\": a list of head_dim / 2 = %d numbers (head_dim at most %d)", path,
              key, n, CONFIG_MAX_HEAD_DIM);
    int i = 0;
    for (const cJSON *v = list->child; v; v = v->next, i++) {
        if (!cJSON_IsNumber(v)) fatal("%s: rope scaling longrope: %s[%d] must be a number", path, key, i);
        if (out) out[i] = (float)v->valuedouble; /* torch.tensor(list, dtype=float32) */
    }
}

/* rope_scaling (transformers 4.x) or rope_parameters (5.x): the types whose frequencies this code computes. root: the
 * whole config (Phi-3 reads original_max_position_embeddings there). */
static void parse_rope_scaling(ModelConfig *c, const cJSON *root, const cJSON *scaling, const char *path) {
    const cJSON *rt = field(scaling, "rope_type");
    if (!rt) rt = field(scaling, "type");
    const char *type = cJSON_IsString(rt) ? rt->valuestring : rt ? "?" : "default";
    if (json_num(scaling, path, "partial_rotary_factor", 1.0) != 1.0)
        fatal("%s: partial_rotary_factor: rotary embeddings over part of a head are not supported", path);
    int phi3 = strcmp(c->architecture, "phi3") == 0;
    /* Phi3Config reads "su" and "yarn" as longrope, and refuses any other type */
    if (phi3 && (strcmp(type, "su") == 0 || strcmp(type, "yarn") == 0)) type = "longrope";
    if (phi3 && strcmp(type, "default") != 0 && strcmp(type, "longrope") != 0)
        fatal("%s: rope scaling type \"%s\" is not supported in phi3 (transformers' Phi3Config takes default and "
              "longrope)",
              path, type);
    if (strcmp(type, "default") == 0) return;
    /* the pretraining context: Phi3Config's own original_max_position_embeddings (4096 when absent) overrides the
     * scaling's; elsewhere the scaling's, else max_position_embeddings (transformers' standardize_rope_params) */
    c->rope_original_max_position =
        phi3 ? json_int(root, path, "original_max_position_embeddings", 4096, 0)
             : json_int(scaling, path, "original_max_position_embeddings", c->max_position, 0);
    if (c->rope_original_max_position <= 0)
        fatal("%s: rope scaling %s: original_max_position_embeddings must be positive", path, type);
    const cJSON *attention_factor = field(scaling, "attention_factor");
    if (strcmp(type, "linear") == 0) {
        c->rope_scaling = ROPE_LINEAR;
        c->rope_factor = json_required_num(scaling, path, "factor", "rope scaling linear");
    } else if (strcmp(type, "llama3") == 0) {
        c->rope_scaling = ROPE_LLAMA3;
        c->rope_factor = json_required_num(scaling, path, "factor", "rope scaling llama3");
        c->rope_low_freq_factor = (float)json_required_num(scaling, path, "low_freq_factor", "rope scaling llama3");
        c->rope_high_freq_factor = (float)json_required_num(scaling, path, "high_freq_factor", "rope scaling llama3");
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            fatal("%s: rope scaling llama3: needs high_freq_factor > low_freq_factor", path);
    } else if (strcmp(type, "yarn") == 0) {
        c->rope_scaling = ROPE_YARN;
        c->rope_factor = json_required_num(scaling, path, "factor", "rope scaling yarn");
        /* transformers takes `beta_fast or 32`, `beta_slow or 1`: a 0 is the default too */
        c->rope_beta_fast = (float)json_num(scaling, path, "beta_fast", 0.0);
        c->rope_beta_slow = (float)json_num(scaling, path, "beta_slow", 0.0);
        if (c->rope_beta_fast == 0) c->rope_beta_fast = 32;
        if (c->rope_beta_slow == 0) c->rope_beta_slow = 1;
        c->rope_truncate = json_bool(scaling, path, "truncate", 1);
        double mscale = json_num(scaling, path, "mscale", 0.0),
               mscale_all = json_num(scaling, path, "mscale_all_dim", 0.0);
        c->rope_attention_factor = attention_factor ? json_num(scaling, path, "attention_factor", 0.0)
                                   : mscale != 0 && mscale_all != 0
                                       ? yarn_mscale(c->rope_factor, mscale) / yarn_mscale(c->rope_factor, mscale_all)
                                       : yarn_mscale(c->rope_factor, 1.0);
    } else if (strcmp(type, "longrope") == 0) {
        c->rope_scaling = ROPE_LONGROPE;
        c->rope_factor = field(scaling, "factor") ? json_num(scaling, path, "factor", 0.0)
                                                  : (double)c->max_position / c->rope_original_max_position;
        parse_factor_list(c, scaling, path, "short_factor", c->rope_short_factor);
        parse_factor_list(c, scaling, path, "long_factor", NULL); /* beyond the original context: refused */
        c->rope_attention_factor = attention_factor ? json_num(scaling, path, "attention_factor", 0.0)
                                                    : longrope_attention(c->rope_factor, c->rope_original_max_position);
    } else if (strcmp(type, "dynamic") == 0) {
        c->rope_scaling = ROPE_DYNAMIC;
        c->rope_factor = json_required_num(scaling, path, "factor", "rope scaling dynamic");
    } else {
        fatal("%s: rope scaling type \"%s\" is not supported (default, linear, llama3, yarn, longrope and dynamic are)",
              path, type);
    }
    if (!(c->rope_factor > 0)) fatal("%s: rope scaling %s: factor must be positive", path, type);
    if (attention_factor && !(c->rope_attention_factor > 0))
        fatal("%s: rope scaling %s: attention_factor must be positive", path, type);
}

/* After every field is read: the scores' scale (1 / sqrt(head_dim), Gemma's own, and the rope's attention factor
 * folded in), and the positions past which transformers would rotate with other frequencies. */
static void finish_rope(ModelConfig *c) {
    double factor = c->rope_attention_factor;
    if (c->attention_scale == 0 && (factor == 0 || factor == 1)) c->attention_scale = 1.0f / sqrtf((float)c->head_dim);
    if (factor != 0 && factor != 1) {
        double scale = c->attention_scale > 0 ? c->attention_scale : pow(c->head_dim, -0.5); /* head_dim**-0.5 */
        double f32 = (float)factor; /* cos and sin are fp32 tensors multiplied by it */
        c->attention_scale = (float)(scale * f32 * f32);
    }
    /* longrope: transformers rotates with the long factors once a forward's last position reaches the original
     * context, and a cached key keeps the rotation it was written with; within it, the short factors. The context
     * is capped there (the engine's and the data's lengths follow max_position), and the forward pass refuses a
     * later position. dynamic: the base grows once a sequence passes max_position_embeddings, likewise. */
    if (c->rope_scaling == ROPE_LONGROPE) {
        c->rope_max_position = c->rope_original_max_position;
        if (c->max_position > c->rope_max_position) c->max_position = c->rope_max_position;
    }
    if (c->rope_scaling == ROPE_DYNAMIC) c->rope_max_position = c->max_position;
}

static void validate(const ModelConfig *c, const char *path) {
    if (c->hidden_size <= 0 || c->intermediate_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->vocab_size <= 0)
        fatal("%s: sizes must be positive (hidden %d, intermediate %d, layers %d, heads %d, kv heads %d, head_dim %d, "
              "vocab %d)",
              path, c->hidden_size, c->intermediate_size, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim,
              c->vocab_size);
    if (c->n_heads % c->n_kv_heads != 0)
        fatal("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->n_heads,
              c->n_kv_heads);
    if (c->head_dim % 2 != 0) fatal("%s: head_dim %d must be even for rotary embeddings", path, c->head_dim);
    if (!(c->rope_theta > 0) || !(c->rms_norm_eps > 0)) fatal("%s: rope_theta and rms_norm_eps must be positive", path);
    if (c->sliding_window < 0) fatal("%s: sliding_window %d must be positive (or null)", path, c->sliding_window);
}

/* A soft cap (a positive number, or null for none) */
static float json_softcap(const cJSON *root, const char *path, const char *key) {
    double cap = json_num(root, path, key, 0.0);
    if (cap < 0) fatal("%s: %s %g must be positive (or null)", path, key, cap);
    return (float)cap;
}

/* Gemma's windows (layer_types, or sliding_window_pattern: every N-th layer global), attention scalar and soft caps */
static void parse_gemma(ModelConfig *c, const cJSON *root, const char *path, int generation) {
    c->sliding_window = json_int(root, path, "sliding_window", 4096, 0);
    const cJSON *types = field(root, "layer_types");
    if (types) {
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != c->n_layers)
            fatal("%s: layer_types must list one type for each of the %d layers", path, c->n_layers);
        int l = 0;
        for (const cJSON *t = types->child; t; t = t->next, l++) {
            const char *type = cJSON_IsString(t) ? t->valuestring : "?";
            if (strcmp(type, "sliding_attention") != 0 && strcmp(type, "full_attention") != 0)
                fatal("%s: layer_types[%d] \"%s\" is not supported (sliding_attention, full_attention)", path, l, type);
            c->layer_sliding[l] = strcmp(type, "sliding_attention") == 0;
        }
    } else {
        int pattern = json_int(root, path, "sliding_window_pattern", gemma_window_pattern(generation), 0);
        if (pattern < 1) fatal("%s: sliding_window_pattern %d must be positive", path, pattern);
        for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = (l + 1) % pattern != 0;
    }
    /* transformers: scaling = query_pre_attn_scalar**-0.5, a double the fp32 scores are multiplied by */
    double scalar = json_num(root, path, "query_pre_attn_scalar", c->head_dim);
    if (!(scalar > 0)) fatal("%s: query_pre_attn_scalar %g must be positive", path, scalar);
    c->attention_scale = (float)pow(scalar, -0.5);
    c->attn_softcap = json_softcap(root, path, "attn_logit_softcapping");
    c->final_softcap = json_softcap(root, path, "final_logit_softcapping");
}

/* Gemma 3's rotary bases, one per kind of layer: transformers 5.x's rope_parameters {"full_attention": {..},
 * "sliding_attention": {..}}, or 4.x's rope_theta, rope_local_base_freq and rope_scaling (the global layers'). */
static void parse_gemma3_rope(ModelConfig *c, const cJSON *root, const char *path) {
    c->rope_theta = (float)json_num(root, path, "rope_theta", 1e6);
    c->rope_theta_sliding = (float)json_num(root, path, "rope_local_base_freq", 1e4);
    const cJSON *params = field(root, "rope_parameters"), *scaling = field(root, "rope_scaling");
    if (params) {
        const cJSON *full = field(params, "full_attention"), *local = field(params, "sliding_attention");
        if (!cJSON_IsObject(full) || !cJSON_IsObject(local))
            fatal("%s: rope_parameters needs \"full_attention\" and \"sliding_attention\" objects", path);
        c->rope_theta = (float)json_num(full, path, "rope_theta", c->rope_theta);
        c->rope_theta_sliding = (float)json_num(local, path, "rope_theta", c->rope_theta_sliding);
        const cJSON *local_type = field(local, "rope_type");
        if (local_type && (!cJSON_IsString(local_type) || strcmp(local_type->valuestring, "default") != 0))
            fatal("%s: rope_parameters.sliding_attention: only the default rope_type is supported", path);
        scaling = full;
    }
    if (scaling) parse_rope_scaling(c, root, scaling, path);
    /* transformers scales cos and sin of the full-attention layers alone; attention_scale is every layer's */
    if (c->rope_attention_factor != 0 && c->rope_attention_factor != 1)
        fatal("%s: rope scaling with an attention factor (yarn, longrope) is not supported in gemma3_text", path);
    if (!(c->rope_theta_sliding > 0)) fatal("%s: the sliding layers' rope_theta must be positive", path);
}

void config_from_json(ModelConfig *c, const char *path) {
    memset(c, 0, sizeof *c);
    char *text = read_whole_file(path, NULL);
    if (!text) fatal("%s: cannot read: %s", path, strerror(errno));
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) fatal("%s: malformed JSON (expected an object)", path);
    const cJSON *type = field(root, "model_type");
    if (!cJSON_IsString(type)) fatal("%s: missing \"model_type\"", path);
    if (strcmp(type->valuestring, "gemma3") == 0)
        fatal("%s: architecture \"gemma3\" is Gemma 3 with its vision tower; its text model (gemma3_text: "
              "Gemma 3 270M, 1B) is supported",
              path);
    if (!known_architecture(type->valuestring))
        fatal("%s: unknown architecture \"%s\" (supported: " KNOWN_ARCHITECTURES ")", path, type->valuestring);
    snprintf(c->architecture, sizeof c->architecture, "%s", type->valuestring);
    c->hidden_size = json_int(root, path, "hidden_size", 0, 1);
    c->intermediate_size = json_int(root, path, "intermediate_size", 0, 1);
    c->n_layers = json_int(root, path, "num_hidden_layers", 0, 1);
    c->n_heads = json_int(root, path, "num_attention_heads", 0, 1);
    c->n_kv_heads = json_int(root, path, "num_key_value_heads", c->n_heads, 0);
    c->head_dim = json_int(root, path, "head_dim", c->n_heads > 0 ? c->hidden_size / c->n_heads : 0, 0);
    c->vocab_size = json_int(root, path, "vocab_size", 0, 1);
    c->max_position = json_int(root, path, "max_position_embeddings", 2048, 0);
    c->rms_norm_eps = (float)json_num(root, path, "rms_norm_eps", 1e-6);
    int gemma = gemma_generation(c->architecture);
    c->tie_word_embeddings = json_bool(root, path, "tie_word_embeddings", gemma != 0);
    int is_qwen2 = strcmp(c->architecture, "qwen2") == 0;
    c->attention_bias = is_qwen2 ? 1 : json_bool(root, path, "attention_bias", 0);
    c->qk_norm = strcmp(c->architecture, "qwen3") == 0;
    c->fused_weights = strcmp(c->architecture, "phi3") == 0;
    if (c->n_layers > CONFIG_MAX_LAYERS) fatal("%s: %d layers (at most %d)", path, c->n_layers, CONFIG_MAX_LAYERS);
    if (gemma) {
        gemma_traits(c, gemma);
        c->norm_adds_one = 1;
        parse_gemma(c, root, path, gemma);
    }
    if (gemma == 3) {
        parse_gemma3_rope(c, root, path);
    } else {
        /* rope: transformers < 5 writes rope_theta + rope_scaling; 5.x writes rope_parameters */
        c->rope_theta = (float)json_num(root, path, "rope_theta", 10000.0);
        const cJSON *rope_params = field(root, "rope_parameters");
        const cJSON *scaling = field(root, "rope_scaling");
        if (rope_params) {
            c->rope_theta = (float)json_num(rope_params, path, "rope_theta", c->rope_theta);
            scaling = rope_params;
        }
        if (scaling) parse_rope_scaling(c, root, scaling, path);
        /* Mistral and Phi-3 limit every layer's attention to a window; Qwen2 declares one but uses it only with
         * use_sliding_window */
        if (strcmp(c->architecture, "mistral") == 0 || strcmp(c->architecture, "phi3") == 0) {
            c->sliding_window = json_int(root, path, "sliding_window", 0, 0);
            memset(c->layer_sliding, c->sliding_window != 0, sizeof c->layer_sliding);
        }
    }
    if (json_bool(root, path, "use_sliding_window", 0))
        fatal("%s: use_sliding_window: sliding-window attention is implemented for mistral only", path);
    refuse_unimplemented(c, root, path);
    c->bos_token_id = json_int(root, path, "bos_token_id", -1, 0);
    const cJSON *eos = field(root, "eos_token_id");
    if (cJSON_IsArray(eos)) /* several end tokens: the first is the one generation stops on by default */
        c->eos_token_id = cJSON_GetArraySize(eos) > 0 ? (int)cJSON_GetArrayItem(eos, 0)->valuedouble : -1;
    else c->eos_token_id = json_int(root, path, "eos_token_id", -1, 0);
    cJSON_Delete(root);
    finish_rope(c);
    validate(c, path);
}

void config_from_gguf(ModelConfig *c, const GGUFFile *g) {
    memset(c, 0, sizeof *c);
    const char *path = g->mf.path;
    const char *arch = gguf_get_str(g, "general.architecture");
    if (!arch) fatal("%s: GGUF has no general.architecture", path);
    int gemma = gemma_generation(arch);
    int phi3 = strcmp(arch, "phi3") == 0;
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0 && strcmp(arch, "qwen3") != 0 && !phi3 && !gemma)
        fatal("%s: unknown architecture \"%s\" (supported GGUF architectures: llama, qwen2, qwen3, phi3, gemma2, "
              "gemma3)",
              path, arch);
    snprintf(c->architecture, sizeof c->architecture, "%s", arch);
    char key[128];
#define ARCH_INT(name, fallback) (snprintf(key, sizeof key, "%s." name, arch), (int)gguf_get_int(g, key, fallback))
#define ARCH_FLOAT(name, fallback) (snprintf(key, sizeof key, "%s." name, arch), gguf_get_float(g, key, fallback))
    c->hidden_size = ARCH_INT("embedding_length", 0);
    c->intermediate_size = ARCH_INT("feed_forward_length", 0);
    c->n_layers = ARCH_INT("block_count", 0);
    c->n_heads = ARCH_INT("attention.head_count", 0);
    c->n_kv_heads = ARCH_INT("attention.head_count_kv", c->n_heads);
    c->head_dim = ARCH_INT("attention.key_length", c->n_heads > 0 ? c->hidden_size / c->n_heads : 0);
    c->max_position = ARCH_INT("context_length", 2048);
    c->rope_theta = (float)ARCH_FLOAT("rope.freq_base", 10000.0);
    c->rms_norm_eps = (float)ARCH_FLOAT("attention.layer_norm_rms_epsilon", 1e-5);
    c->vocab_size = ARCH_INT("vocab_size", 0);
    /* Phi-3: the converter writes config.json's window (0: none), which transformers applies to every layer
     * (llama.cpp ignores it for now) */
    if (gemma || phi3) c->sliding_window = ARCH_INT("attention.sliding_window", 0);
    if (gemma) {
        c->attn_softcap = (float)ARCH_FLOAT("attn_logit_softcapping", 0.0);
        c->final_softcap = (float)ARCH_FLOAT("final_logit_softcapping", 0.0);
        if (c->attn_softcap < 0 || c->final_softcap < 0) fatal("%s: %s's soft caps must be positive", path, arch);
    }
    if (gemma == 3) c->rope_theta_sliding = 10000.0f; /* as llama.cpp reads a Gemma 3: not in the file */
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    const char *scaling = gguf_get_str(g, key);
    const GGUFTensor *short_factors = gguf_find_tensor(g, "rope_factors_short.weight");
    if (scaling && strcmp(scaling, "none") != 0 && strcmp(scaling, "linear") != 0 && strcmp(scaling, "yarn") != 0 &&
        !(strcmp(scaling, "longrope") == 0 && short_factors))
        fatal("%s: %s \"%s\" is not supported (none, linear, yarn and longrope with rope_factors_short are; llama3's "
              "factors are the rope_freqs tensor)",
              path, key, scaling);
    if (scaling && (strcmp(scaling, "linear") == 0 || strcmp(scaling, "yarn") == 0)) {
        c->rope_scaling = strcmp(scaling, "linear") == 0 ? ROPE_LINEAR : ROPE_YARN;
        c->rope_factor = ARCH_FLOAT("rope.scaling.factor", 0.0);
        if (!(c->rope_factor > 0)) fatal("%s: %s.rope.scaling.factor must be positive", path, arch);
    }
    if (c->rope_scaling == ROPE_YARN) { /* the keys convert_hf_to_gguf.py writes from a yarn rope_scaling */
        c->rope_original_max_position = ARCH_INT("rope.scaling.original_context_length", c->max_position);
        c->rope_beta_fast = (float)ARCH_FLOAT("rope.scaling.yarn_beta_fast", 32.0);
        c->rope_beta_slow = (float)ARCH_FLOAT("rope.scaling.yarn_beta_slow", 1.0);
        c->rope_truncate = 1;
        c->rope_attention_factor = ARCH_FLOAT("rope.scaling.yarn_attn_factor", yarn_mscale(c->rope_factor, 1.0));
        /* llama.cpp's own YaRN variants (DeepSeek's log multiplier, an extrapolation mix) that transformers' lacks */
        if (ARCH_FLOAT("rope.scaling.yarn_log_multiplier", 0.0) != 0 ||
            ARCH_FLOAT("rope.scaling.yarn_ext_factor", 1.0) != 1)
            fatal("%s: %s.rope.scaling.yarn_log_multiplier and yarn_ext_factor are not supported", path, arch);
    }
    if (short_factors) { /* Phi-3's longrope, as llama.cpp's converter writes it: no type key, factor tensors */
        int n = c->head_dim / 2;
        if (!gguf_find_tensor(g, "rope_factors_long.weight") || short_factors->type != GGML_F32 ||
            short_factors->n_dims != 1 || short_factors->ne[0] != n || n > CONFIG_MAX_HEAD_DIM / 2)
            fatal(
                "%s: longrope needs rope_factors_short.weight and rope_factors_long.weight, F32 vectors of head_dim / "
                "2 = %d (head_dim at most %d)",
                path, n, CONFIG_MAX_HEAD_DIM);
        c->rope_scaling = ROPE_LONGROPE;
        memcpy(c->rope_short_factor, short_factors->data, sizeof(float) * (size_t)n);
        c->rope_original_max_position = ARCH_INT("rope.scaling.original_context_length", 0);
        if (c->rope_original_max_position <= 0)
            fatal("%s: longrope needs a positive %s.rope.scaling.original_context_length", path, arch);
        c->rope_factor = (double)c->max_position / c->rope_original_max_position;
        /* the converter writes transformers' default (fp32: what cos and sin are multiplied by anyway) */
        c->rope_attention_factor =
            ARCH_FLOAT("rope.scaling.attn_factor", longrope_attention(c->rope_factor, c->rope_original_max_position));
    }
#undef ARCH_INT
#undef ARCH_FLOAT
    const GGUFTensor *embd = gguf_find_tensor(g, "token_embd.weight");
    if (!embd) fatal("%s: GGUF has no token_embd.weight tensor", path);
    if (c->vocab_size == 0) c->vocab_size = (int)embd->ne[1];
    c->tie_word_embeddings = gguf_find_tensor(g, "output.weight") == NULL;
    c->attention_bias = gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    c->qk_norm = gguf_find_tensor(g, "blk.0.attn_q_norm.weight") != NULL;
    c->fused_weights = phi3; /* attn_qkv, and ffn_up holding gate and up */
    if (c->n_layers > CONFIG_MAX_LAYERS) fatal("%s: %d layers (at most %d)", path, c->n_layers, CONFIG_MAX_LAYERS);
    if (gemma) {
        gemma_traits(c, gemma); /* llama.cpp's converter stored the norms' 1 + w */
        /* the file does not hold query_pre_attn_scalar: llama.cpp takes it as head_dim, but for the 27B models (Gemma
         * 2: 46 layers, Gemma 3: 62) as hidden / heads, which is what their configs say */
        int big = c->n_layers == (gemma == 2 ? 46 : 62);
        c->attention_scale = (float)pow(big ? (double)c->hidden_size / c->n_heads : (double)c->head_dim, -0.5);
    } else {
        memset(c->layer_sliding, c->sliding_window != 0, sizeof c->layer_sliding);
    }
    c->bos_token_id = (int)gguf_get_int(g, "tokenizer.ggml.bos_token_id", -1);
    c->eos_token_id = (int)gguf_get_int(g, "tokenizer.ggml.eos_token_id", -1);
    finish_rope(c);
    validate(c, path);
}

int model_path_is_gguf(const char *path) {
    size_t n = strlen(path);
    return n >= 5 && strcmp(path + n - 5, ".gguf") == 0;
}

void config_load(ModelConfig *c, const char *path) {
    if (model_path_is_gguf(path)) {
        GGUFFile g;
        gguf_open(&g, path);
        config_from_gguf(c, &g);
        gguf_close(&g);
    } else if (dir_exists(path)) {
        char *cfg = path_join(path, "config.json");
        if (!file_exists(cfg)) fatal("%s: no config.json in the model directory", path);
        config_from_json(c, cfg);
        free(cfg);
    } else {
        fatal("%s: not a model directory or .gguf file", path);
    }
}

void config_print(const ModelConfig *c, FILE *out) {
    fprintf(out,
            "model: %s, hidden %d, intermediate %d, layers %d, heads %d (kv %d, dim %d), vocab %d, rope_theta %g, "
            "rms_eps %g%s%s",
            c->architecture, c->hidden_size, c->intermediate_size, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim,
            c->vocab_size, (double)c->rope_theta, (double)c->rms_norm_eps,
            c->tie_word_embeddings ? ", tied embeddings" : "", c->attention_bias ? ", qkv bias" : "");
    if (c->qk_norm) fprintf(out, ", q/k norm");
    if (c->sandwich_norms) fprintf(out, ", norms around blocks");
    if (c->embed_scale != 0) fprintf(out, ", embeddings x%g", (double)c->embed_scale);
    if (c->mlp_activation == GLU_GELU_TANH) fprintf(out, ", GeLU-tanh MLP");
    if (c->sliding_window > 0) {
        int windowed = 0;
        for (int l = 0; l < c->n_layers; l++) windowed += c->layer_sliding[l];
        fprintf(out, ", sliding window %d", c->sliding_window);
        if (windowed < c->n_layers) fprintf(out, " in %d of %d layers", windowed, c->n_layers);
        if (c->rope_theta_sliding > 0) fprintf(out, " (rope_theta %g there)", (double)c->rope_theta_sliding);
    }
    static const char *rope_names[] = {"default", "linear", "llama3", "yarn", "longrope", "dynamic"};
    if (c->rope_scaling != ROPE_DEFAULT)
        fprintf(out, ", rope scaling %s x%g", rope_names[c->rope_scaling], c->rope_factor);
    if (c->rope_attention_factor != 0 && c->rope_attention_factor != 1)
        fprintf(out, " (attention x%g)", c->rope_attention_factor);
    if (c->rope_max_position > 0) fprintf(out, ", positions below %d", c->rope_max_position);
    fprintf(out, "\n");
}
