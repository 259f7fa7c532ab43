/* The Medusa candidate tree and the buffers tree decoding needs, built exactly as the reference
 * generate_medusa_buffers builds them from a list of paths (medusa_choices). */
#ifndef MEDUSA_TREE_H
#define MEDUSA_TREE_H

#include <stdint.h>

#define TREE_TOPK 10       /* candidates taken from each head (the reference's TOPK) */
#define TREE_MAX_PATHS 255 /* nodes besides the root: medusa-infer tune's largest budget */
#define TREE_MAX_DEPTH 64  /* the most heads medusa-train makes (--heads) */

typedef struct {
    int n_paths;           /* paths in medusa_choices */
    int *path_len;         /* [n_paths] */
    int **paths;           /* sorted by (length, lexicographic) */
    int n_nodes;           /* n_paths + 1 (the root, the base model's own next token) */
    uint8_t *mask;         /* [n_nodes, n_nodes]: node i sees the root, its ancestors and itself */
    int32_t *tree_indices; /* [n_nodes]: index into [base top-1, head0 top-k..., head1 top-k...] */
    int32_t *depth;        /* [n_nodes]: position offset of each node (its depth) */
    int n_leaves;          /* rows of retrieve_indices */
    int max_depth;         /* columns of retrieve_indices: longest path + 1 */
    int32_t *retrieve;     /* [n_leaves, max_depth]: node indices along each root-to-leaf path, -1 padded */
    int n_heads_used;      /* longest path length: heads the tree needs */
} MedusaTree;

/* Parses a JSON list of paths like [[0],[0,0],[1],...] (from text; `source` names it in errors): at most
 * TREE_MAX_PATHS paths of 1..TREE_MAX_DEPTH integers in 0..TREE_TOPK-1, and nothing after the list. */
void tree_from_json(MedusaTree *t, const char *json, const char *source);
void tree_load(MedusaTree *t, const char *path);
void tree_free(MedusaTree *t);
/* Each node's parent (-1 for the root) and its slot among its parent's children (< TREE_TOPK, in node order). */
void tree_children(const MedusaTree *t, int32_t *parent, int32_t *slot);

#endif
