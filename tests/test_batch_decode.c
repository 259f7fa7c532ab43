/* Batched generation (infer/batch_decode.c, model_forward_slots) against plain one-at-a-time decoding (decode_plain,
 * whose greedy tokens are golden-tested against transformers in test_smollm2): on tiny test models with fp32 weights,
 * prompts of many lengths through 3 slots in passes of 8 tokens (prompts prefilled in chunks beside other slots'
 * generation), next turns that continue a slot's context (its keys and values kept), replies ended by the stop token,
 * by max_new and by the slot's length; sampled replies do not depend on which prompts share the batch. */
#include <stdlib.h>

#include "../infer/batch_decode.h"
#include "../infer/decoder.h"
#include "test.h"

#define N_PROMPTS 12
#define MAX_NEW 12
#define SLOT_LEN 64

typedef struct {
    int32_t ids[SLOT_LEN];
    int n;
    int32_t want[SLOT_LEN + MAX_NEW]; /* plain decoding's reply */
    int n_want;
} Case;

/* The reply plain decoding gives (temperature 0), or sampled with seed, without the stop token. */
static int plain_reply(Decoder *d, const int32_t *prompt, int n, int max_new, int stop, float temperature,
                       uint64_t seed, int32_t *out) {
    DecodeOptions o;
    decode_options_defaults(&o);
    o.temperature = temperature;
    o.seed = seed;
    o.top_p = 1.0f;
    DecodeStats st;
    int got = decode_plain(d, prompt, n, max_new, stop, &o, out, NULL, NULL, &st);
    return got > 0 && out[got - 1] == stop ? got - 1 : got;
}

/* Runs every case through a batch decoder of n_slots slots: each free slot takes the next case. Cases marked to
 * continue take the slot their predecessor ran in. Returns how many replies equal the plain ones. */
static int run_batched(const Model *m, Case *cases, int n_cases, int n_slots, int stop, const int *slot_of,
                       ReplyEnd *ends) {
    BatchDecoder bd;
    batch_decoder_init(&bd, m, n_slots, SLOT_LEN, 8, stop, 0.0f, 1.0f);
    int *owner = xmalloc(sizeof(int) * (size_t)n_slots), next = 0, equal = 0, done = 0;
    for (int s = 0; s < n_slots; s++) owner[s] = -1;
    while (done < n_cases) {
        for (int s = 0; s < n_slots && next < n_cases; s++)
            if (owner[s] < 0 && (slot_of[next] < 0 || slot_of[next] == s)) {
                ensure(batch_decoder_start(&bd, s, cases[next].ids, cases[next].n, MAX_NEW, 1));
                owner[s] = next++;
            }
        batch_decoder_step(&bd);
        for (int s = 0; s < n_slots; s++) {
            if (owner[s] < 0 || bd.slots[s].end == REPLY_RUNNING) continue;
            int n;
            const int32_t *got = batch_decoder_reply(&bd, s, &n, &ends[owner[s]]);
            const Case *c = &cases[owner[s]];
            equal += n == c->n_want && memcmp(got, c->want, sizeof(int32_t) * (size_t)n) == 0;
            batch_decoder_release(&bd, s);
            owner[s] = -1;
            done++;
        }
    }
    free(owner);
    batch_decoder_free(&bd);
    return equal;
}

static int any_running(const BatchDecoder *d) {
    for (int i = 0; i < d->cache.n_slots; i++)
        if (d->slots[i].active && d->slots[i].end == REPLY_RUNNING) return 1;
    return 0;
}

static void check_model(const char *path) {
    Model m;
    model_load(&m, path, backend_cpu(), DT_F32);
    int V = m.config.vocab_size;
    Decoder d;
    decoder_init(&d, &m, NULL, NULL, SLOT_LEN + MAX_NEW);
    Rng rng;
    rng_seed(&rng, 7);
    /* a stop token that plain decoding emits partway through some reply: the first prompt's 5th token */
    Case *cases = xcalloc(N_PROMPTS + 1, sizeof(Case));
    int32_t probe[SLOT_LEN + MAX_NEW];
    int32_t seed_prompt[3] = {1, 2, 3};
    plain_reply(&d, seed_prompt, 3, MAX_NEW, -1, 0, 0, probe);
    int stop = probe[4];
    int slot_of[N_PROMPTS + 1];
    for (int i = 0; i < N_PROMPTS; i++) {
        Case *c = &cases[i];
        slot_of[i] = -1;
        if (i % 4 == 3) { /* the next turn of case i - 1: its prompt, its reply, new tokens */
            const Case *p = &cases[i - 1];
            c->n = 0;
            memcpy(c->ids, p->ids, sizeof(int32_t) * (size_t)p->n);
            c->n = p->n;
            memcpy(c->ids + c->n, p->want, sizeof(int32_t) * (size_t)p->n_want);
            c->n += p->n_want;
            for (int k = 0; k < 5; k++) c->ids[c->n++] = (int32_t)rng_below(&rng, (uint64_t)V);
            slot_of[i] = slot_of[i - 1] = i % 3; /* both in one slot, the second right after the first */
        } else {
            c->n = 1 + (int)rng_below(&rng, 30);
            for (int k = 0; k < c->n; k++) c->ids[k] = (int32_t)rng_below(&rng, (uint64_t)V);
        }
        c->n_want = plain_reply(&d, c->ids, c->n, MAX_NEW, stop, 0, 0, c->want);
    }
    /* a prompt 3 tokens short of the slot (one whose reply has no stop token): the reply ends when the slot is full */
    Case *full = &cases[N_PROMPTS];
    full->n = SLOT_LEN - 3;
    do {
        for (int k = 0; k < full->n; k++) full->ids[k] = (int32_t)rng_below(&rng, (uint64_t)V);
        full->n_want = plain_reply(&d, full->ids, full->n, 3, stop, 0, 0, full->want);
    } while (full->n_want < 3);
    slot_of[N_PROMPTS] = -1;

    ReplyEnd ends[N_PROMPTS + 1];
    int stops = 0, lengths = 0;
    int equal = run_batched(&m, cases, N_PROMPTS + 1, 3, stop, slot_of, ends);
    for (int i = 0; i < N_PROMPTS; i++) stops += ends[i] == REPLY_STOP, lengths += ends[i] == REPLY_LENGTH;
    CHECK(equal == N_PROMPTS + 1,
          "%s: batched greedy replies equal plain decoding's: %d/%d (3 slots, passes of 8 tokens; %d ended by the stop "
          "token, %d by max_new)",
          path, equal, N_PROMPTS + 1, stops, lengths);
    CHECK(stops > 0 && lengths > 0, "%s: replies end both ways (stop %d, max_new %d)", path, stops, lengths);
    CHECK(ends[N_PROMPTS] == REPLY_CONTEXT, "%s: a reply that fills its slot ends there (%d tokens)", path,
          full->n_want);
    int equal1 = run_batched(&m, cases, N_PROMPTS + 1, 1, stop, (int[N_PROMPTS + 1]){[0 ... N_PROMPTS] = -1}, ends);
    CHECK(equal1 == N_PROMPTS + 1, "%s: one slot: %d/%d replies equal plain decoding's", path, equal1, N_PROMPTS + 1);

    /* sampling: each reply draws from its own seed as plain decoding does, whatever shares the pass */
    BatchDecoder a;
    batch_decoder_init(&a, &m, 4, SLOT_LEN, 8, -1, 0.9f, 1.0f);
    int same = 0;
    for (int i = 0; i < 4; i++) {
        batch_decoder_start(&a, i, cases[i].ids, cases[i].n, MAX_NEW, 100 + (uint64_t)i);
        for (int k = 0; k < i; k++) batch_decoder_step(&a); /* staggered starts */
    }
    while (any_running(&a)) batch_decoder_step(&a);
    for (int i = 0; i < 4; i++) {
        int32_t want[MAX_NEW];
        int n_want = plain_reply(&d, cases[i].ids, cases[i].n, MAX_NEW, -1, 0.9f, 100 + (uint64_t)i, want), n;
        ReplyEnd end;
        const int32_t *got = batch_decoder_reply(&a, i, &n, &end);
        same += n == n_want && memcmp(got, want, sizeof(int32_t) * (size_t)n) == 0;
    }
    CHECK(same == 4, "%s: sampled replies (T = 0.9, 4 at once) equal plain decoding's with their seeds: %d/4", path,
          same);
    CHECK(!batch_decoder_start(&a, 0, full->ids, SLOT_LEN, MAX_NEW, 0), "%s: a prompt that fills the slot is refused",
          path);
    batch_decoder_free(&a);
    free(cases);
    decoder_free(&d);
    model_free(&m);
}

int main(void) {
    check_model("tests/fixtures/models/tiny_llama");
    check_model("tests/fixtures/models/tiny_qwen2");
    return test_summary();
}
