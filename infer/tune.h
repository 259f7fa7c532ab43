/* Tree tuning: the tree of a given node budget that maximises the expected number of accepted tokens per
 * step, from each head's measured top-k agreement with the base model's greedy choice (the Medusa paper's
 * construction: a node's value is the product of the per-rank hit probabilities along its path, and the best tree
 * takes the highest-valued nodes whose parents are in it). */
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

/* Reads head accuracies from medusa-eval --json output (the first object, depth-first, with medusa0_top1) into
 * acc[h * TUNE_MAX_RANK + k], k + 1 = 1..5, for up to max_heads heads; returns the number of heads. The heads'
 * agreement with the base model's greedy choice (medusa{i}_base_top{k}) is what verification accepts, so it is read
 * where the file has it (*base_agreement = 1); a file from before it gives the ground-truth top-k
 * (medusa{i}_top{k}, *base_agreement = 0). */
int tune_load_accuracies(const char *path, double *acc, int max_heads, int *base_agreement);
/* topk_acc[h * TUNE_MAX_RANK + k]: fraction of positions where head h's top k+1 holds what the tree is to accept. */
void tune_tree(const double *topk_acc, int n_heads, int budget, TunedTree *out);
/* JSON list of paths, malloc'd. */
char *tuned_tree_json(const TunedTree *t);

#endif
