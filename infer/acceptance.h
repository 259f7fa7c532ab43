/* Choosing which candidate path the base model accepts, as the reference evaluate_posterior does:
 * greedy (candidate == base argmax) and typical acceptance (p(candidate) > min(epsilon, alpha * exp(-H))). */
#ifndef MEDUSA_ACCEPTANCE_H
#define MEDUSA_ACCEPTANCE_H

#include <stdint.h>

#include "tree.h"

/* Candidates: [n_paths, depth] token ids (column 0 is the root token); path_valid marks real (not padded)
 * entries. Greedy: argmax [n_paths, depth] is the base model's argmax at each path node. Returns the accepted
 * length (tokens beyond the root) and sets *best (the first path with that length; 0 when nothing is accepted). */
int accept_greedy(const int32_t *candidates, const uint8_t *path_valid, const int32_t *argmax, int n_paths, int depth,
                  int *best);

/* Typical acceptance. cand_prob [n_paths, depth]: probability under softmax(logits / temperature) at path
 * node j of the candidate at j+1; threshold [n_paths, depth]: min(epsilon, alpha * exp(-entropy)) at node j.
 * Among the longest accepted paths picks the one with the largest sum of log-probabilities. */
int accept_typical(const float *cand_prob, const float *threshold, const uint8_t *path_valid, int n_paths, int depth,
                   int *best);

/* The typical threshold min(epsilon, alpha * exp(-entropy)), entropy = -sum p log(p + 1e-5) as the reference
 * computes it (the backend's softmax_entropy op). */
float typical_cut(double entropy, float epsilon, float alpha);

/* One Medusa step on a tree, on the host: the candidates laid out as the reference's generate_candidates lays them
 * out, and the accepted path chosen from per-node statistics that the decoder computes on the backend.
 *
 * A path shorter than the tree's depth ends at its leaf: its entries past the leaf are padding (valid 0) and are
 * never accepted. The reference differs there: its retrieve index past a leaf is -1, so the candidate there is the
 * 0 that generate_candidates appends to the tree's tokens and the logits row is the tree's last node's
 * (tree_decoding's tree_logits[0, retrieve_indices]). evaluate_posterior then compares token 0 with the leaf's own
 * row (greedy: is 0 the leaf's argmax; typical: is p(0) above the leaf's threshold) and, further on, with the last
 * node's row, and can accept token 0 after the leaf, whose keys and values update_inference_inputs then takes from
 * the position before the tree. */
typedef struct {
    const MedusaTree *tree;
    int32_t *tree_tokens;         /* [n_nodes]: each node's token, the verification pass's input */
    int32_t *paths;               /* [n_leaves, max_depth]: each root-to-leaf path's tokens, 0 past its leaf */
    uint8_t *valid;               /* [n_leaves, max_depth]: 1 where paths holds a node's token */
    int32_t *child_ids;           /* [n_nodes, TREE_TOPK]: each node's children's tokens, -1 padded: the ids
                                     whose probabilities typical acceptance reads in the node's row */
    int32_t *parent, *slot;       /* [n_nodes]: tree_children */
    int32_t *path_argmax;         /* [n_leaves, max_depth] scratch */
    float *cand_prob, *threshold; /* [n_leaves, max_depth] scratch */
} TreeStep;

void tree_step_init(TreeStep *s, const MedusaTree *t);
void tree_step_free(TreeStep *s);
/* candidates [1 + n_heads * TREE_TOPK]: the root (the base model's next token, its argmax at every temperature, as
 * the reference's default `fast` mode takes it), then each head's top TREE_TOPK token ids. */
void tree_step_candidates(TreeStep *s, const int32_t *candidates);
/* Greedy acceptance; node_argmax [n_nodes]: the base model's argmax in each node's row. Returns the accepted length
 * and sets *best (a row of the tree's retrieve indices). */
int tree_step_accept_greedy(TreeStep *s, const int32_t *node_argmax, int *best);
/* Typical acceptance; entropy [n_nodes] of each node's row and child_probs [n_nodes, TREE_TOPK], the probabilities of
 * child_ids in it (softmax_entropy at the decoding temperature). */
int tree_step_accept_typical(TreeStep *s, const float *entropy, const float *child_probs, float epsilon, float alpha,
                             int *best);

#endif
