/* Text generation on the base model: plain decoding (greedy or sampling) and Medusa tree decoding with
 * greedy or typical acceptance. Both use the same model forward and KV cache. */
#ifndef MEDUSA_DECODER_H
#define MEDUSA_DECODER_H

#include "../model/medusa.h"
#include "tree.h"

typedef struct {
    float temperature;         /* 0 = greedy */
    float top_p;               /* plain sampling: nucleus */
    float posterior_threshold; /* typical acceptance epsilon */
    float posterior_alpha;
    uint64_t seed; /* plain sampling (Medusa decoding draws nothing) */
} DecodeOptions;

typedef struct {
    int new_tokens;
    int steps;      /* forward passes after the prompt */
    double seconds; /* wall time after the prompt */
    double prefill_seconds;
} DecodeStats;

/* Called with each chunk of accepted tokens, for streaming. */
typedef void (*TokenSink)(const int32_t *tokens, int n, void *user);

typedef struct {
    const Model *base;
    const MedusaHeads *heads; /* NULL: plain decoding only; else heads_used */
    MedusaHeads heads_used;   /* the first heads, as many as the tree is deep: the others are never read */
    const MedusaTree *tree;
    int max_len;
    ForwardState state;
    KVCache cache;
    MedusaWork work;
    float *hidden, *logits, *head_logits; /* backend scratch */
    uint8_t *tree_mask;                   /* backend: the tree's mask, uploaded once */
    /* what leaves the device after a pass, in one block so that it leaves in one download: with heads, typical
     * acceptance's statistics per tree node (softmax_entropy: the entropy of its row [n_nodes], its children's
     * probabilities [n_nodes, TREE_TOPK]), then the top-k ids of rows of logits (the nodes' argmaxes, the heads'
     * candidates); results on the backend, host_results on the host */
    float *results, *host_results;
    float *entropy, *child_probs, *host_entropy, *host_child_probs;
    int32_t *ids, *host_ids;
    int32_t *child_ids;         /* backend: each tree node's children's tokens [n_nodes, TREE_TOPK] (-1 padded) */
    float *host_logits, *probs; /* plain sampling reads a whole row */
} Decoder;

void decoder_init(Decoder *d, const Model *base, const MedusaHeads *heads, const MedusaTree *tree, int max_len);
void decoder_free(Decoder *d);

void decode_options_defaults(DecodeOptions *o);

/* Samples from softmax(logits / temperature) restricted to the top-p nucleus (probs: scratch of V floats). */
int sample_top_p(const float *logits, int V, float temperature, float top_p, Rng *rng, float *probs);

/* Generates up to max_new tokens after the prompt, stopping after eos (>= 0). Returns the count written
 * to out (which must hold max_new + the tree depth). */
int decode_plain(Decoder *d, const int32_t *prompt, int n_prompt, int max_new, int eos, const DecodeOptions *o,
                 int32_t *out, TokenSink sink, void *user, DecodeStats *stats);
int decode_medusa(Decoder *d, const int32_t *prompt, int n_prompt, int max_new, int eos, const DecodeOptions *o,
                  int32_t *out, TokenSink sink, void *user, DecodeStats *stats);

/* The base model's next-token logits after ids[0..n) (a prefill from an empty cache), on the host; valid until the
 * decoder's next call. */
const float *decoder_logits_after(Decoder *d, const int32_t *ids, int n);

/* How two greedy decodings of one prompt (plain and Medusa) compare. In exact arithmetic they are equal; a tree's
 * rows and a single row sum in other orders (bf16 activations round differently, GPU kernels tile them otherwise),
 * which can flip the argmax between two tokens whose logits are closer than that rounding. So where the outputs part,
 * the base model's logits after their common tokens say which it was: the two tokens' logits within `window` times
 * the row's largest magnitude is a near-tie; farther apart, a decoding error. */
typedef enum { GREEDY_EQUAL, GREEDY_NEAR_TIE, GREEDY_DIFFER } GreedyMatch;
typedef struct {
    GreedyMatch match;
    int at;                 /* the first token that differs (or where one output ends) */
    float logit_a, logit_b; /* the base model's logits there of a's and b's tokens (NaN where an output ended) */
    float largest;          /* the row's largest |logit| */
} GreedyComparison;

/* near-tie windows: bf16 rounding (the bound the op tests hold bf16 against fp32 to), fp32's */
#define GREEDY_TIE_WINDOW_BF16 2e-2f
#define GREEDY_TIE_WINDOW_FP32 1e-4f

/* Classifies tokens a and b of one row of V logits (a != b) with the given window. */
GreedyMatch greedy_near_tie(const float *logits, int V, int32_t a, int32_t b, float window, GreedyComparison *out);
/* Compares a[0..na) with b[0..nb), both decoded greedily after prompt; where they part, one prefill on d. */
GreedyComparison greedy_compare(Decoder *d, const int32_t *prompt, int n_prompt, const int32_t *a, int na,
                                const int32_t *b, int nb, float window);

#endif
