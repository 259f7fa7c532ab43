#include "decoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "acceptance.h"

void decode_options_defaults(DecodeOptions *o) {
    o->temperature = 0.0f;
    o->top_p = 1.0f;
    o->posterior_threshold = 0.09f;
    o->posterior_alpha = 0.3f;
    o->seed = 1234;
}

void decoder_init(Decoder *d, const Model *base, const MedusaHeads *heads, const MedusaTree *tree, int max_len) {
    memset(d, 0, sizeof *d);
    const Backend *be = base->be;
    int H = base->config.hidden_size, V = base->config.vocab_size;
    int rows = tree ? tree->n_nodes : 1;
    d->base = base;
    if (heads) {
        if (!tree) fatal("Medusa decoding needs a tree");
        if (tree->n_heads_used > heads->shape.n_heads)
            fatal("the tree is %d levels deep but there are only %d Medusa heads", tree->n_heads_used,
                  heads->shape.n_heads);
        /* each head's lm_head is as large as the base model's: reading unused ones would cost a lot per step */
        d->heads_used = *heads;
        d->heads_used.shape.n_heads = tree->n_heads_used;
        heads = d->heads = &d->heads_used;
    }
    d->tree = tree;
    d->max_len = max_len;
    /* the prompt is prefilled in one pass, so state buffers cover max_len rows */
    forward_state_init(&d->state, base, max_len);
    kv_cache_init(&d->cache, base, max_len + rows);
    d->hidden = be->alloc(sizeof(float) * (size_t)max_len * H);
    d->logits = be->alloc(sizeof(float) * (size_t)rows * V);
    d->host_logits = xmalloc(sizeof(float) * (size_t)V);
    d->probs = xmalloc(sizeof(float) * (size_t)V);
    size_t n_ids = (size_t)rows, n_stats = 0;
    if (heads) {
        int K = heads->shape.n_heads;
        medusa_work_init(&d->work, heads, rows, rows);
        d->head_logits = be->alloc(sizeof(float) * (size_t)K * rows * V);
        n_ids += (size_t)K * rows * TREE_TOPK; /* argmax_rows' heads' candidates at every node */
        n_stats = (size_t)rows * (1 + TREE_TOPK);
        d->child_ids = be->alloc(sizeof(int32_t) * (size_t)rows * TREE_TOPK);
        d->tree_mask = be->alloc((size_t)rows * rows);
        be->upload(d->tree_mask, tree->mask, (size_t)rows * rows);
    }
    /* 4-byte words: the statistics, then the ids */
    d->results = be->alloc(sizeof(float) * (n_stats + n_ids));
    d->host_results = xmalloc(sizeof(float) * (n_stats + n_ids));
    d->entropy = d->results, d->child_probs = d->results + rows;
    d->host_entropy = d->host_results, d->host_child_probs = d->host_results + rows;
    d->ids = (int32_t *)(void *)(d->results + n_stats);
    d->host_ids = (int32_t *)(void *)(d->host_results + n_stats);
}

void decoder_free(Decoder *d) {
    const Backend *be = d->base->be;
    forward_state_free(&d->state, d->base);
    kv_cache_free(&d->cache, d->base);
    be->free(d->hidden);
    be->free(d->logits);
    be->free(d->results);
    free(d->host_logits);
    free(d->host_results);
    free(d->probs);
    if (d->heads) {
        medusa_work_free(&d->work, d->heads);
        be->free(d->head_logits);
        be->free(d->tree_mask);
        be->free(d->child_ids);
    }
    memset(d, 0, sizeof *d);
}

/* What a step queues after its forward pass when the heads run at every node: each row's argmax, then the heads'
 * top-TREE_TOPK lm_head rows at those rows (argmax_rows). */
typedef struct {
    Decoder *d;
    const float *logits;
    int rows;
} HeadsAfterStep;

static void queue_argmax_and_heads(void *ctx) {
    const HeadsAfterStep *a = ctx;
    Decoder *d = a->d;
    const Backend *be = d->base->be;
    const MedusaHeads *h = d->heads;
    be->top_k(d->ids, a->logits, a->rows, d->base->config.vocab_size, 1);
    medusa_logits(h, &d->work, d->hidden, a->rows, d->head_logits);
    be->top_k(d->ids + a->rows, d->head_logits, h->shape.n_heads * a->rows, h->shape.head_vocab, TREE_TOPK);
}

/* The argmax of each of the rows of logits on the backend, into d->host_ids: only the ids leave the device. With
 * heads, the heads' top-TREE_TOPK lm_head rows at every row of d->hidden follow them in the same download, laid out
 * [K][rows][TREE_TOPK] (node_candidates reads them); those few dozen small ops go through the backend's run_step (a
 * CUDA graph, as the forward pass before them). With stats (Medusa decoding), the tree nodes' typical statistics
 * (softmax_entropy's, already queued), which lie just before the ids, leave in that download too, into d->host_entropy
 * and d->host_child_probs. */
static void argmax_rows(Decoder *d, const float *logits, int rows, int heads, int stats) {
    const Backend *be = d->base->be;
    size_t n_ids = (size_t)rows;
    if (heads) {
        HeadsAfterStep after = {d, logits, rows};
        if (be->run_step) be->run_step(&d->work, rows, queue_argmax_and_heads, &after);
        else queue_argmax_and_heads(&after);
        n_ids += (size_t)d->heads->shape.n_heads * rows * TREE_TOPK;
    } else {
        be->top_k(d->ids, logits, rows, d->base->config.vocab_size, 1);
    }
    size_t words = stats ? (size_t)d->tree->n_nodes * (1 + TREE_TOPK) : 0;
    be->download(d->host_ids - words, d->ids - words, sizeof(int32_t) * (words + n_ids));
    for (int i = 0; i < rows; i++)
        if (d->host_ids[i] < 0) fatal("decoding: the model's logits are all NaN (a damaged model file?)");
}

int sample_top_p(const float *logits, int V, float temperature, float top_p, Rng *rng, float *probs) {
    float maxv = -INFINITY;
    for (int i = 0; i < V; i++) maxv = fmaxf(maxv, logits[i]);
    double sum = 0;
    for (int i = 0; i < V; i++) sum += probs[i] = expf((logits[i] - maxv) / temperature);
    /* nucleus: smallest probability cut that keeps mass >= top_p, found by bisection on the cut */
    float cut = 0;
    if (top_p < 1.0f) {
        float lo = 0, hi = 1;
        for (int it = 0; it < 30; it++) {
            float mid = 0.5f * (lo + hi);
            double mass = 0;
            for (int i = 0; i < V; i++)
                if (probs[i] / sum >= mid) mass += probs[i] / sum;
            if (mass >= top_p) lo = mid;
            else hi = mid;
        }
        cut = lo;
    }
    double kept = 0;
    for (int i = 0; i < V; i++)
        if (probs[i] / sum >= cut) kept += probs[i];
    double r = rng_uniform(rng) * kept, acc = 0;
    int last = 0;
    for (int i = 0; i < V; i++) {
        if (probs[i] / sum < cut) continue;
        acc += probs[i];
        last = i;
        if (acc > r) return i;
    }
    return last;
}

/* The prompt through the model; the last row's logits stay in d->logits, and in d->host_logits when
 * download (sampling needs the whole row, greedy decoding only its argmax). */
static void prefill(Decoder *d, const int32_t *prompt, int n_prompt, int download, DecodeStats *stats) {
    const ModelConfig *c = &d->base->config;
    if (n_prompt < 1) fatal("generation needs a prompt of at least one token");
    if (n_prompt >= d->max_len) fatal("prompt of %d tokens does not fit the context of %d", n_prompt, d->max_len);
    double t0 = now_seconds();
    d->cache.len = 0;
    /* only the last prompt row's logits are needed: the lm_head is by far the largest matmul of a long prompt */
    model_forward_cached(d->base, &d->state, &d->cache, prompt, n_prompt, d->hidden, NULL);
    model_logits(d->base, d->logits, d->hidden + (size_t)(n_prompt - 1) * c->hidden_size, 1);
    if (download) d->base->be->download(d->host_logits, d->logits, sizeof(float) * c->vocab_size);
    stats->prefill_seconds = now_seconds() - t0;
}

const float *decoder_logits_after(Decoder *d, const int32_t *ids, int n) {
    DecodeStats unused;
    prefill(d, ids, n, 1, &unused);
    return d->host_logits;
}

GreedyMatch greedy_near_tie(const float *logits, int V, int32_t a, int32_t b, float window, GreedyComparison *out) {
    float largest = 0;
    for (int i = 0; i < V; i++) largest = fmaxf(largest, fabsf(logits[i]));
    out->logit_a = logits[a];
    out->logit_b = logits[b];
    out->largest = largest;
    /* NaN logits compare false: a decoding error */
    out->match = fabsf(logits[a] - logits[b]) <= window * largest ? GREEDY_NEAR_TIE : GREEDY_DIFFER;
    return out->match;
}

GreedyComparison greedy_compare(Decoder *d, const int32_t *prompt, int n_prompt, const int32_t *a, int na,
                                const int32_t *b, int nb, float window) {
    GreedyComparison c = {GREEDY_EQUAL, 0, NAN, NAN, 0};
    while (c.at < na && c.at < nb && a[c.at] == b[c.at]) c.at++;
    if (c.at == na && c.at == nb) return c;
    c.match = GREEDY_DIFFER;
    if (c.at == na || c.at == nb) return c; /* one output stops where the other goes on: not a matter of rounding */
    int32_t *context = xmalloc(sizeof(int32_t) * (size_t)(n_prompt + c.at));
    memcpy(context, prompt, sizeof(int32_t) * (size_t)n_prompt);
    memcpy(context + n_prompt, a, sizeof(int32_t) * (size_t)c.at);
    const float *logits = decoder_logits_after(d, context, n_prompt + c.at);
    greedy_near_tie(logits, d->base->config.vocab_size, a[c.at], b[c.at], window, &c);
    free(context);
    return c;
}

int decode_plain(Decoder *d, const int32_t *prompt, int n_prompt, int max_new, int eos, const DecodeOptions *o,
                 int32_t *out, TokenSink sink, void *user, DecodeStats *stats) {
    const Backend *be = d->base->be;
    int V = d->base->config.vocab_size;
    memset(stats, 0, sizeof *stats);
    Rng rng;
    rng_seed(&rng, o->seed);
    int greedy = o->temperature <= 0;
    prefill(d, prompt, n_prompt, !greedy, stats);
    double t0 = now_seconds();
    int n = 0;
    while (n < max_new) {
        int next;
        if (greedy) {
            argmax_rows(d, d->logits, 1, 0, 0);
            next = d->host_ids[0];
        } else {
            next = sample_top_p(d->host_logits, V, o->temperature, o->top_p, &rng, d->probs);
        }
        out[n++] = next;
        if (sink) sink(&next, 1, user);
        if (next == eos || n >= max_new || d->cache.len + 1 >= d->max_len) break;
        model_forward_cached(d->base, &d->state, &d->cache, &next, 1, d->hidden, d->logits);
        if (!greedy) be->download(d->host_logits, d->logits, sizeof(float) * V);
        stats->steps++;
    }
    stats->new_tokens = n;
    stats->seconds = now_seconds() - t0;
    return n;
}

/* Node r's candidates from each head's top-TREE_TOPK lm_head rows at `rows` nodes (ids [K][rows][TREE_TOPK]) as token
 * ids, into candidates (K x TREE_TOPK; -1 where a head has fewer) */
static void node_candidates(const MedusaHeads *h, const int32_t *ids, int rows, int r, int32_t *candidates) {
    for (int k = 0; k < h->shape.n_heads; k++)
        for (int j = 0; j < TREE_TOPK; j++) {
            int32_t id = ids[((size_t)k * rows + r) * TREE_TOPK + j];
            candidates[k * TREE_TOPK + j] = id >= 0 ? medusa_row_token(h, id) : -1; /* truncated heads: rows to ids */
        }
}

/* Each head's top-TREE_TOPK token ids (largest first, ties to the lower id, as a stable sort would) for the
 * node whose hidden state is row `row`, into candidates (K x TREE_TOPK; -1 where a head has fewer). */
static void heads_at(Decoder *d, int row, int32_t *candidates) {
    const MedusaHeads *h = d->heads;
    int K = h->shape.n_heads, V = h->shape.head_vocab, H = h->shape.hidden;
    medusa_logits(h, &d->work, d->hidden + (size_t)row * H, 1, d->head_logits);
    d->base->be->top_k(d->ids, d->head_logits, K, V, TREE_TOPK);
    d->base->be->download(d->host_ids, d->ids, sizeof(int32_t) * (size_t)K * TREE_TOPK);
    node_candidates(h, d->host_ids, 1, 0, candidates);
}

int decode_medusa(Decoder *d, const int32_t *prompt, int n_prompt, int max_new, int eos, const DecodeOptions *o,
                  int32_t *out, TokenSink sink, void *user, DecodeStats *stats) {
    const MedusaTree *t = d->tree;
    if (!d->heads || !t) fatal("Medusa decoding needs heads and a tree");
    const Backend *be = d->base->be;
    int V = d->base->config.vocab_size, N = t->n_nodes, D = t->max_depth;
    memset(stats, 0, sizeof *stats);
    int typical = o->temperature > 0;
    /* steps off the host: the heads run at every node and every node's argmax is taken, so that the heads' candidates
     * and the next root at the accepted one leave the device with what acceptance reads, in one download (a GPU reads
     * the heads' weights once for N rows as for one; a CPU would pay N times the heads' GEMMs) */
    int heads_everywhere = !be->is_host;
    TreeStep s;
    tree_step_init(&s, t);
    int32_t *candidates = xmalloc(sizeof(int32_t) * (size_t)(1 + TREE_TOPK * d->heads->shape.n_heads));
    int32_t *node_argmax = xmalloc(sizeof(int32_t) * (size_t)N), *keep = xmalloc(sizeof(int32_t) * (size_t)D);

    prefill(d, prompt, n_prompt, 0, stats);
    /* the root of every step is the base model's argmax after the last accepted token, at every temperature (the
     * reference's generate_candidates in its default fast mode) */
    argmax_rows(d, d->logits, 1, 0, 0);
    int root = d->host_ids[0];
    heads_at(d, n_prompt - 1, candidates + 1);
    double t0 = now_seconds();
    int n = 0, done = 0;
    while (!done && n < max_new && d->cache.len + N < d->max_len) {
        /* candidates: the base model's next token, then each head's top-k (heads_at) */
        candidates[0] = root;
        tree_step_candidates(&s, candidates);
        /* one verification pass over the whole tree */
        model_forward_tree(d->base, &d->state, &d->cache, s.tree_tokens, t->depth, d->tree_mask, N, d->hidden,
                           d->logits);
        stats->steps++;
        int best, accepted;
        if (!typical) { /* only each node's argmax (and off the host the heads' candidates) leaves the device */
            argmax_rows(d, d->logits, N, heads_everywhere, 0);
            memcpy(node_argmax, d->host_ids, sizeof(int32_t) * (size_t)N);
            accepted = tree_step_accept_greedy(&s, node_argmax, &best);
        } else { /* each node's entropy and its children's probabilities leave the device, not its logits */
            be->upload(d->child_ids, s.child_ids, sizeof(int32_t) * (size_t)N * TREE_TOPK);
            be->softmax_entropy(d->entropy, d->child_probs, d->logits, d->child_ids, N, V, TREE_TOPK, o->temperature);
            if (heads_everywhere) { /* with the nodes' argmaxes and the heads' candidates */
                argmax_rows(d, d->logits, N, 1, 1);
                memcpy(node_argmax, d->host_ids, sizeof(int32_t) * (size_t)N);
            } else {
                be->download(d->host_entropy, d->entropy, sizeof(float) * (size_t)N * (1 + TREE_TOPK));
            }
            accepted = tree_step_accept_typical(&s, d->host_entropy, d->host_child_probs, o->posterior_threshold,
                                                o->posterior_alpha, &best);
        }
        int take = accepted + 1;
        for (int j = 0; j < take; j++) keep[j] = t->retrieve[best * D + j];
        kv_cache_keep(&d->cache, d->base, keep, take);
        const int32_t *path = s.paths + (size_t)best * D;
        int emitted = 0;
        for (int j = 0; j < take && n < max_new; j++) {
            out[n++] = path[j];
            emitted++;
            if (path[j] == eos) {
                done = 1;
                break;
            }
        }
        if (sink) sink(out + n - emitted, emitted, user);
        /* the last accepted node's outputs seed the next step: its argmax is the next root */
        int last = keep[take - 1];
        if (!typical || heads_everywhere) {
            root = node_argmax[last];
        } else {
            argmax_rows(d, d->logits + (size_t)last * V, 1, 0, 0);
            root = d->host_ids[0];
        }
        if (heads_everywhere) node_candidates(d->heads, d->host_ids + N, N, last, candidates + 1);
        else heads_at(d, last, candidates + 1);
    }
    stats->new_tokens = n;
    stats->seconds = now_seconds() - t0;
    tree_step_free(&s);
    free(candidates);
    free(node_argmax);
    free(keep);
    return n;
}
