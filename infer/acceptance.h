/* Choosing which candidate path the base model accepts, as the reference evaluate_posterior does:
 * greedy (candidate == base argmax) and typical acceptance (p(candidate) > min(epsilon, alpha * exp(-H))). */
#ifndef MEDUSA_ACCEPTANCE_H
#define MEDUSA_ACCEPTANCE_H

#include <stdint.h>

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
/* For one row of logits on the host: the softmax at temperature into probs (V floats), and the typical threshold. */
float typical_threshold(const float *logits, int V, float temperature, float epsilon, float alpha, float *probs);

#endif
