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
    uint64_t seed;
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
    int32_t *ids;                         /* backend: top-k ids of rows of logits (greedy, the heads' candidates) */
    /* typical acceptance, per tree node: its children's tokens [n_nodes, TREE_TOPK] (-1 padded), and on the
     * backend the entropy of its row and its children's probabilities (softmax_entropy) */
    int32_t *child_ids, *host_child_ids;
    float *entropy, *child_probs;
    float *host_logits, *probs; /* sampling reads a whole row */
    int32_t *host_ids;
} Decoder;

void decoder_init(Decoder *d, const Model *base, const MedusaHeads *heads, const MedusaTree *tree, int max_len);
void decoder_free(Decoder *d);

void decode_options_defaults(DecodeOptions *o);

/* Generates up to max_new tokens after the prompt, stopping after eos (>= 0). Returns the count written
 * to out (which must hold max_new + the tree depth). */
int decode_plain(Decoder *d, const int32_t *prompt, int n_prompt, int max_new, int eos, const DecodeOptions *o,
                 int32_t *out, TokenSink sink, void *user, DecodeStats *stats);
int decode_medusa(Decoder *d, const int32_t *prompt, int n_prompt, int max_new, int eos, const DecodeOptions *o,
                  int32_t *out, TokenSink sink, void *user, DecodeStats *stats);

#endif
