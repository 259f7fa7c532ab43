#include "tree.h"

#include <cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

static int compare_paths(const int *a, int la, const int *b, int lb) {
    if (la != lb) return la < lb ? -1 : 1;
    for (int i = 0; i < la; i++)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return 0;
}

/* index of the path equal to prefix[0..len) among the sorted paths, or -1 */
static int find_path(const MedusaTree *t, const int *prefix, int len) {
    for (int i = 0; i < t->n_paths; i++)
        if (compare_paths(t->paths[i], t->path_len[i], prefix, len) == 0) return i;
    return -1;
}

static void build_buffers(MedusaTree *t, const char *source) {
    int N = t->n_nodes = t->n_paths + 1;
    t->mask = xcalloc((size_t)N * N, 1);
    t->tree_indices = xcalloc((size_t)N, sizeof(int32_t));
    t->depth = xcalloc((size_t)N, sizeof(int32_t));
    t->n_heads_used = 0;
    for (int i = 0; i < N; i++) {
        t->mask[(size_t)i * N + i] = 1;
        t->mask[(size_t)i * N] = 1;
    }
    for (int i = 0; i < t->n_paths; i++) {
        const int *p = t->paths[i];
        int len = t->path_len[i];
        if (len > t->n_heads_used) t->n_heads_used = len;
        for (int c = 0; c + 1 < len; c++) {
            int a = find_path(t, p, c + 1);
            if (a < 0) fatal("%s: path %d's prefix of length %d is not itself in the tree", source, i, c + 1);
            t->mask[(size_t)(i + 1) * N + a + 1] = 1;
        }
        t->tree_indices[i + 1] = p[len - 1] + TREE_TOPK * (len - 1) + 1;
        t->depth[i + 1] = len;
    }
    /* retrieve indices: one row per leaf, walking the sorted paths from the longest back */
    uint8_t *covered = xcalloc((size_t)t->n_paths, 1);
    int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)t->n_paths * (size_t)(t->n_heads_used + 1));
    t->max_depth = t->n_heads_used + 1;
    t->n_leaves = 0;
    for (int i = t->n_paths - 1; i >= 0; i--) {
        if (covered[i]) continue;
        int32_t *row = rows + (size_t)t->n_leaves * t->max_depth;
        row[0] = 0;
        for (int c = 0; c < t->max_depth - 1; c++) {
            if (c < t->path_len[i]) {
                int a = find_path(t, t->paths[i], c + 1);
                covered[a] = 1;
                row[c + 1] = a + 1;
            } else {
                row[c + 1] = -1;
            }
        }
        t->n_leaves++;
    }
    t->retrieve = rows;
    free(covered);
}

void tree_from_json(MedusaTree *t, const char *json, const char *source) {
    memset(t, 0, sizeof *t);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 0);
    while (root && end && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
    if (root && end && *end)
        fatal("%s: text after the tree's list, at offset %ld: '%.*s'", source, (long)(end - json),
              (int)(strcspn(end, "\r\n") < 20 ? strcspn(end, "\r\n") : 20), end);
    if (!cJSON_IsArray(root)) fatal("%s: a tree must be a JSON list of paths, like [[0], [0, 0], [1]]", source);
    int n = cJSON_GetArraySize(root);
    if (n < 1) fatal("%s: the tree has no paths", source);
    if (n > TREE_MAX_PATHS)
        fatal("%s: the tree has %d paths (nodes besides the root); at most %d are supported", source, n,
              TREE_MAX_PATHS);
    t->n_paths = n;
    t->paths = xcalloc((size_t)n, sizeof(int *));
    t->path_len = xcalloc((size_t)n, sizeof(int));
    int i = 0;
    for (cJSON *p = root->child; p; p = p->next, i++) {
        int len = cJSON_GetArraySize(p);
        if (!cJSON_IsArray(p) || len < 1 || len > TREE_MAX_DEPTH)
            fatal("%s: path %d is not a list of 1..%d choices", source, i, TREE_MAX_DEPTH);
        t->paths[i] = xmalloc(sizeof(int) * (size_t)len);
        t->path_len[i] = len;
        int j = 0;
        for (cJSON *c = p->child; c; c = c->next, j++) {
            double v = cJSON_IsNumber(c) ? c->valuedouble : -1;
            if (!(v >= 0 && v < TREE_TOPK && v == (int)v)) {
                char *text = cJSON_PrintUnformatted(c);
                fatal("%s: path %d has choice %s, not an integer in 0..%d", source, i, text, TREE_TOPK - 1);
            }
            t->paths[i][j] = (int)v;
        }
    }
    cJSON_Delete(root);
    /* sort by (length, path), as the reference does */
    for (int a = 1; a < n; a++) {
        for (int b = a; b > 0 && compare_paths(t->paths[b - 1], t->path_len[b - 1], t->paths[b], t->path_len[b]) > 0;
             b--) {
            int *tp = t->paths[b];
            t->paths[b] = t->paths[b - 1];
            t->paths[b - 1] = tp;
            int tl = t->path_len[b];
            t->path_len[b] = t->path_len[b - 1];
            t->path_len[b - 1] = tl;
        }
    }
    for (int a = 1; a < n; a++)
        if (compare_paths(t->paths[a - 1], t->path_len[a - 1], t->paths[a], t->path_len[a]) == 0)
            fatal("%s: path %d appears twice", source, a);
    build_buffers(t, source);
}

void tree_load(MedusaTree *t, const char *path) {
    char *text = read_whole_file(path, NULL);
    if (!text) fatal("%s: cannot read: %s", path, strerror(errno));
    tree_from_json(t, text, path);
    free(text);
}

void tree_free(MedusaTree *t) {
    for (int i = 0; i < t->n_paths; i++) free(t->paths[i]);
    free(t->paths);
    free(t->path_len);
    free(t->mask);
    free(t->tree_indices);
    free(t->depth);
    free(t->retrieve);
    memset(t, 0, sizeof *t);
}

void tree_children(const MedusaTree *t, int32_t *parent, int32_t *slot) {
    int N = t->n_nodes, D = t->max_depth;
    for (int i = 0; i < N; i++) parent[i] = -1;
    for (int p = 0; p < t->n_leaves; p++)
        for (int j = 0; j + 1 < D && t->retrieve[p * D + j + 1] >= 0; j++)
            parent[t->retrieve[p * D + j + 1]] = t->retrieve[p * D + j];
    for (int c = 0; c < N; c++) {
        slot[c] = 0;
        for (int e = 1; e < c; e++) slot[c] += parent[e] == parent[c];
        ensure(c == 0 || (parent[c] >= 0 && slot[c] < TREE_TOPK));
    }
}
