/* Tree buffers (attention mask, tree indices, position ids, retrieve indices) against the reference
 * generate_medusa_buffers (fixtures from tests/gen/gen_trees.py), and bad tree files. */
#include <cJSON.h>
#include <stdlib.h>

#include "../infer/tree.h"
#include "test.h"

static int int_at(const cJSON *arr, int i) { return cJSON_GetArrayItem(arr, i)->valueint; }

static void check_tree(const char *name) {
    char tree_path[256], ref_path[256];
    snprintf(tree_path, sizeof tree_path, "configs/trees/%s.json", name);
    snprintf(ref_path, sizeof ref_path, "tests/fixtures/trees/%s.buffers.json", name);
    cJSON *ref = read_json(ref_path);
    MedusaTree t;
    tree_load(&t, tree_path);
    const cJSON *mask = cJSON_GetObjectItem(ref, "mask"), *ti = cJSON_GetObjectItem(ref, "tree_indices");
    const cJSON *pos = cJSON_GetObjectItem(ref, "position_ids"), *ret = cJSON_GetObjectItem(ref, "retrieve_indices");
    int N = cJSON_GetArraySize(ti);
    CHECK(t.n_nodes == N, "%s: %d nodes (reference %d)", name, t.n_nodes, N);
    int mask_diff = 0, ti_diff = 0, pos_diff = 0, ret_diff = 0;
    for (int i = 0; i < N && t.n_nodes == N; i++) {
        for (int j = 0; j < N; j++) mask_diff += t.mask[i * N + j] != int_at(cJSON_GetArrayItem(mask, i), j);
        ti_diff += t.tree_indices[i] != int_at(ti, i);
        pos_diff += t.depth[i] != int_at(pos, i);
    }
    int rows = cJSON_GetArraySize(ret), cols = cJSON_GetArraySize(cJSON_GetArrayItem(ret, 0));
    CHECK(t.n_leaves == rows && t.max_depth == cols, "%s: retrieve indices %dx%d (reference %dx%d)", name, t.n_leaves,
          t.max_depth, rows, cols);
    for (int r = 0; r < rows && t.n_leaves == rows && t.max_depth == cols; r++)
        for (int c = 0; c < cols; c++) ret_diff += t.retrieve[r * cols + c] != int_at(cJSON_GetArrayItem(ret, r), c);
    CHECK(mask_diff == 0, "%s: tree attention mask identical (%d differences)", name, mask_diff);
    CHECK(ti_diff == 0, "%s: tree indices identical (%d differences)", name, ti_diff);
    CHECK(pos_diff == 0, "%s: position ids identical (%d differences)", name, pos_diff);
    CHECK(ret_diff == 0, "%s: retrieve indices identical (%d differences)", name, ret_diff);
    tree_free(&t);
    cJSON_Delete(ref);
}

/* tree_children (read off the retrieve rows) against the paths themselves: node i >= 1 is path i-1, its parent
 * the node whose path is its prefix (the root for a path of length 1), its slot the count of earlier siblings. */
static void check_children(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "configs/trees/%s.json", name);
    MedusaTree t;
    tree_load(&t, path);
    int32_t *parent = xmalloc(sizeof(int32_t) * (size_t)t.n_nodes),
            *slot = xmalloc(sizeof(int32_t) * (size_t)t.n_nodes);
    tree_children(&t, parent, slot);
    int bad = parent[0] != -1;
    for (int i = 1; i < t.n_nodes; i++) {
        int len = t.path_len[i - 1], want_parent = 0, want_slot = 0;
        for (int e = 1; e < t.n_nodes; e++) {
            int is_prefix = t.path_len[e - 1] == len - 1 &&
                            !memcmp(t.paths[e - 1], t.paths[i - 1], sizeof(int) * (size_t)(len - 1));
            if (is_prefix) want_parent = e;
        }
        for (int e = 1; e < i; e++)
            want_slot +=
                t.path_len[e - 1] == len && !memcmp(t.paths[e - 1], t.paths[i - 1], sizeof(int) * (size_t)(len - 1));
        bad += parent[i] != want_parent || slot[i] != want_slot;
    }
    CHECK(!bad, "tree %s: each node's parent and sibling slot (%d nodes, %d wrong)", name, t.n_nodes, bad);
    free(parent);
    free(slot);
    tree_free(&t);
}

/* n_paths paths as JSON: all 10 of depth 1, the 100 of depth 2, then depth 3 */
static void wide_tree(char *out, int n_paths) {
    size_t at = (size_t)sprintf(out, "[");
    for (int i = 0; i < n_paths; i++) {
        if (i < 10) at += (size_t)sprintf(out + at, "%s[%d]", i ? "," : "", i);
        else if (i < 110) at += (size_t)sprintf(out + at, ",[%d,%d]", (i - 10) / 10, (i - 10) % 10);
        else at += (size_t)sprintf(out + at, ",[%d,%d,%d]", (i - 110) / 100, (i - 110) / 10 % 10, (i - 110) % 10);
    }
    sprintf(out + at, "]");
}

int main(void) {
    const char *trees[] = {"mc_sim_7b_63", "vicuna_7b_stage2", "small_8", "chain_4"};
    for (size_t i = 0; i < sizeof trees / sizeof trees[0]; i++) check_tree(trees[i]), check_children(trees[i]);
    MedusaTree t;
    EXPECT_FATAL(tree_from_json(&t, "{\"a\": 1}", "bad.json"), "must be a JSON list", "tree: not a list");
    EXPECT_FATAL(tree_from_json(&t, "[[0], [0, 1, 2]]", "bad.json"), "prefix of length 2 is not itself in the tree",
                 "tree: missing ancestor");
    EXPECT_FATAL(tree_from_json(&t, "[[0], [12]]", "bad.json"),
                 "bad.json: path 1 has choice 12, not an integer in 0..9", "tree: choice beyond top-k");
    EXPECT_FATAL(tree_from_json(&t, "[[0.5], [1.9]]", "bad.json"), "path 0 has choice 0.5, not an integer in 0..9",
                 "tree: a fractional choice is refused (not run as [[0], [1]])");
    EXPECT_FATAL(tree_from_json(&t, "[[0], [1e0], [\"2\"]]", "bad.json"), "path 2 has choice \"2\"",
                 "tree: a string choice is refused");
    EXPECT_FATAL(tree_from_json(&t, "[[0], [-1]]", "bad.json"), "has choice -1", "tree: a negative choice is refused");
    EXPECT_FATAL(tree_from_json(&t, "[[0], [1]] [[2]]", "bad.json"),
                 "bad.json: text after the tree's list, at offset 11", "tree: trailing text is refused");
    EXPECT_FATAL(tree_from_json(&t, "[[0], [1]]]", "bad.json"), "text after the tree's list",
                 "tree: a stray closing bracket is refused");
    tree_from_json(&t, " [[0], [1]]\n\n", "ok.json");
    CHECK(t.n_nodes == 3, "tree: whitespace around the list is fine (%d nodes)", t.n_nodes);
    tree_free(&t);
    /* the largest trees: TREE_MAX_PATHS paths (all 10 + 100 of depth 1 and 2, then depth 3), TREE_MAX_DEPTH levels */
    char *big = xmalloc(16 * 1024);
    wide_tree(big, TREE_MAX_PATHS);
    tree_from_json(&t, big, "big.json");
    CHECK(t.n_nodes == TREE_MAX_PATHS + 1 && t.n_heads_used == 3, "tree: %d paths are accepted (%d nodes)",
          TREE_MAX_PATHS, t.n_nodes);
    tree_free(&t);
    wide_tree(big, TREE_MAX_PATHS + 1);
    EXPECT_FATAL(tree_from_json(&t, big, "big.json"),
                 "big.json: the tree has 256 paths (nodes besides the root); at most 255 are supported",
                 "tree: one path more is refused with the limit named");
    size_t at = (size_t)sprintf(big, "[");
    for (int d = 1; d <= TREE_MAX_DEPTH + 1; d++) {
        at += (size_t)sprintf(big + at, "%s[0", d > 1 ? "," : "");
        for (int j = 1; j < d; j++) at += (size_t)sprintf(big + at, ",0");
        at += (size_t)sprintf(big + at, "]");
    }
    sprintf(big + at, "]");
    EXPECT_FATAL(tree_from_json(&t, big, "deep.json"), "is not a list of 1..64 choices",
                 "tree: a path of 65 choices is refused");
    free(big);
    EXPECT_FATAL(tree_from_json(&t, "[[0], [0]]", "bad.json"), "appears twice", "tree: duplicate path");
    EXPECT_FATAL(tree_from_json(&t, "[[0], ", "bad.json"), "bad.json", "tree: malformed JSON names the file");
    return test_summary();
}
