/* Tree tuning: the tree of a given node budget that maximises the expected number of accepted tokens per
 * step, from each head's measured top-k accuracy (the Medusa paper's construction: a node's value is the
 * product of the per-rank hit probabilities along its path, and the best tree takes the highest-valued
 * nodes whose parents are in it). */
#ifndef MEDUSA_TUNE_H
#define MEDUSA_TUNE_H

#define TUNE_MAX_RANK 5

typedef struct {
    int n_nodes;
    int depth[256];
    int path[256][16];      /* choices along each path */
    double value[256];      /* probability that the path is accepted */
    double expected_accept; /* sum of values: expected accepted tokens beyond the base model's own */
} TunedTree;

/* topk_acc[h * TUNE_MAX_RANK + k]: fraction of positions where head h's target is in its top k+1. */
void tune_tree(const double *topk_acc, int n_heads, int budget, TunedTree *out);
/* JSON list of paths, malloc'd. */
char *tuned_tree_json(const TunedTree *t);

#endif
