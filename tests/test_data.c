/* The data pipeline: chat templates and loss masks against the Python references (tests/gen/gen_chat.py:
 * fastchat and transformers' apply_chat_template, tokenised by HF tokenizers), the ShareGPT reader on good
 * and bad input, the token cache round trip and its validation, the batcher's packing, shuffle and
 * resumable cursor, and medusa-data end to end. */
#include <cJSON.h>
#include <hdf5.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/batcher.h"
#include "../data/chat_template.h"
#include "../data/sharegpt.h"
#include "../data/token_cache.h"
#include "../data/tokenizer.h"
#include "test.h"

#define CHAT_FIXTURES "tests/fixtures/chat"
#define SMOLLM2_GGUF "cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* ---- (a) chat templates vs the Python references ---- */

static const char *json_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The tokenizer a fixture was made with (chatml's is SmolLM2's, as transformers converts it from the GGUF:
 * without llama.cpp's digit split, so the GGUF's own tokenizer is not a stand-in for it). */
static Tokenizer *fixture_tokenizer(const char *path) {
    if (!file_exists(path)) return NULL;
    size_t n = strlen(path);
    if (n < 5 || strcmp(path + n - 5, ".gguf") != 0) return tokenizer_load_json(path);
    GGUFFile g; /* gemma's: the model's own GGUF (not in the repo) */
    gguf_open(&g, path);
    Tokenizer *t = tokenizer_load_gguf(&g);
    gguf_close(&g);
    return t;
}

/* The fixture's generation prompts: the ids of apply_chat_template(turns before a reply, add_generation_prompt),
 * against chat_generation_prompt; and the model's Jinja recognised as this template. */
static void test_generation_prompts(const char *name, const ChatTemplate *t, const Tokenizer *tok, const cJSON *fx,
                                    Conversation *convs) {
    const cJSON *g, *gen = cJSON_GetObjectItemCaseSensitive(fx, "generation");
    int n = 0, same = 0;
    cJSON_ArrayForEach(g, gen) {
        const Conversation *c = &convs[cJSON_GetObjectItemCaseSensitive(g, "conversation")->valueint];
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(g, "ids"), *v;
        int32_t *ids;
        int m = chat_generation_prompt(t, tok, c->turns, cJSON_GetObjectItemCaseSensitive(g, "turns")->valueint, &ids);
        int ok = m == cJSON_GetArraySize(want), k = 0;
        cJSON_ArrayForEach(v, want) { ok = ok && ids[k++] == v->valueint; }
        same += ok;
        n++;
        free(ids);
    }
    if (n) CHECK(same == n, "%s: %d/%d generation prompts identical to add_generation_prompt=True", name, same, n);
    const char *jinja = json_str(fx, "jinja"), *guess = chat_template_guess(jinja);
    if (jinja && strcmp(name, "vicuna") != 0)
        CHECK(guess && strcmp(guess, name) == 0, "%s: the model's Jinja is recognised as %s", name,
              guess ? guess : "none");
}

static void test_template_fixture(const char *name, Conversation *convs, int n_convs) {
    char path[256];
    snprintf(path, sizeof path, CHAT_FIXTURES "/%s.json", name);
    cJSON *fx = read_json(path);
    const char *tok_path = json_str(fx, "tokenizer");
    Tokenizer *tok = fixture_tokenizer(tok_path);
    if (!tok && strcmp(name, "gemma") == 0) {
        printf("skipped: chat template %s, %s not present\n", name, tok_path);
        cJSON_Delete(fx);
        return;
    }
    if (!tok) {
        CHECK(0, "%s: tokenizer %s not found (tests/gen/gen_tokenizer.py writes it)", name, tok_path);
        cJSON_Delete(fx);
        return;
    }
    ChatTemplate t;
    chat_template_init(&t, name, tok, json_str(fx, "jinja"), json_str(fx, "bos"), json_str(fx, "eos"));
    int max_len = cJSON_GetObjectItemCaseSensitive(fx, "max_len")->valueint;
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(fx, "cases");
    int n = cJSON_GetArraySize(cases), same_text = 0, same_ids = 0, same_mask = 0, reported = 0, nothing_trained = 0;
    long tokens = 0, trained = 0;
    CHECK(n == n_convs, "%s: fixture has %d conversations, conversations.json %d", name, n, n_convs);
    for (int i = 0; i < n && i < n_convs; i++) {
        const cJSON *c = cJSON_GetArrayItem(cases, i);
        Rendered r = {0};
        chat_render(&t, &convs[i], &r);
        char hash[17];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)hash64(r.text, r.len, HASH64_INIT));
        int text_ok = strcmp(hash, json_str(c, "text_fnv1a64")) == 0 &&
                      r.len == (size_t)cJSON_GetObjectItemCaseSensitive(c, "text_bytes")->valuedouble;
        same_text += text_ok;
        rendered_free(&r);

        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(c, "ids");
        const char *mask = json_str(c, "mask");
        int want_n = cJSON_GetArraySize(ids);
        Encoded e;
        int why = chat_encode(&t, tok, &convs[i], max_len, &e);
        /* The reference keeps a conversation whose first max_len tokens are all masked; we skip it, as
         * nothing in it trains. */
        if (!strchr(mask, '1')) {
            int ok = why == SKIP_NOTHING_TRAINED;
            same_ids += ok;
            same_mask += ok;
            nothing_trained++;
            if (!ok && reported++ < 3) printf("       %s conversation %d: not skipped as nothing trained\n", name, i);
            encoded_free(&e);
            continue;
        }
        int ids_ok = why < 0 && e.n == want_n, mask_ok = ids_ok, first_bad = -1;
        for (int k = 0; k < e.n && k < want_n; k++) {
            if (e.ids[k] != cJSON_GetArrayItem(ids, k)->valueint && first_bad < 0) first_bad = k;
            if (e.mask[k] != mask[k] - '0') mask_ok = 0;
        }
        if (first_bad >= 0) ids_ok = mask_ok = 0;
        same_ids += ids_ok;
        same_mask += mask_ok;
        tokens += e.n;
        trained += e.n_trained;
        if ((!text_ok || !ids_ok || !mask_ok) && reported++ < 3) {
            printf("       %s conversation %d (%s): text %s, %s (%d tokens, want %d; first differing id at %d)\n", name,
                   i, json_str(c, "id"), text_ok ? "same" : "DIFFERS",
                   why >= 0 ? skip_reason_text((SkipReason)why)
                   : ids_ok ? "ids same"
                            : "ids DIFFER",
                   e.n, want_n, first_bad);
        }
        encoded_free(&e);
    }
    printf("       %s: %d/%d rendered identical, %d/%d ids identical, %d/%d masks identical (%ld tokens, %ld trained; "
           "%d with no trained token in the first %d, skipped)\n",
           name, same_text, n, same_ids, n, same_mask, n, tokens, trained, nothing_trained, max_len);
    CHECK(same_text == n, "%s: %d/%d texts identical to the reference rendering", name, same_text, n);
    CHECK(same_ids == n && same_mask == n, "%s: %d/%d identical ids and masks", name, same_mask, n);
    test_generation_prompts(name, &t, tok, fx, convs);
    chat_template_free(&t);
    tokenizer_free(tok);
    cJSON_Delete(fx);
}

static void test_templates(void) {
    ShareGPTReader r;
    sharegpt_open(&r, CHAT_FIXTURES "/conversations.json");
    Conversation convs[128];
    int n = 0;
    while (n < 128 && sharegpt_next(&r, &convs[n])) n++;
    int64_t skipped = 0;
    for (int k = 0; k < SKIP_COUNT; k++) skipped += r.skipped[k];
    CHECK(n == 64 && skipped == 0, "conversations.json: %d usable, %lld skipped (want 64, 0)", n, (long long)skipped);
    static const char *const names[] = {"vicuna", "chatml", "llama-2", "llama-3",  "mistral",
                                        "gemma",  "phi-3",  "qwen3",   "llama-3.1"};
    for (int i = 0; i < (int)(sizeof names / sizeof *names); i++) test_template_fixture(names[i], convs, n);
    for (int i = 0; i < n; i++) conversation_free(&convs[i]);
    sharegpt_close(&r);

    CHECK(strcmp(chat_template_guess("{{'<|im_start|>' + message['role']}}"), "chatml") == 0, "guess: chatml");
    CHECK(strcmp(chat_template_guess("<|start_header_id|>{{ role }}<|end_header_id|>"), "llama-3") == 0,
          "guess: llama-3");
    CHECK(strcmp(chat_template_guess("[INST] <<SYS>>\\n"), "llama-2") == 0, "guess: llama-2");
    CHECK(strcmp(chat_template_guess("{{ '[INST] ' + content + ' [/INST]' }}"), "mistral") == 0, "guess: mistral");
    CHECK(chat_template_guess("{{ messages }}") == NULL && chat_template_guess(NULL) == NULL, "guess: unknown -> NULL");
}

/* ---- (b) ShareGPT reader ---- */

typedef struct {
    int n;
    int64_t skipped[SKIP_COUNT];
    char first_text[64];
    int first_turns;
    Role first_roles[8];
} ReadResult;

static ReadResult read_all(const char *path, int64_t limit) {
    ReadResult res = {0};
    ShareGPTReader r;
    sharegpt_open(&r, path);
    r.limit = limit;
    Conversation c;
    while (sharegpt_next(&r, &c)) {
        if (res.n++ == 0) {
            snprintf(res.first_text, sizeof res.first_text, "%.*s", (int)c.turns[0].len, c.turns[0].text);
            res.first_turns = c.n_turns;
            for (int i = 0; i < c.n_turns && i < 8; i++) res.first_roles[i] = c.turns[i].role;
        }
        conversation_free(&c);
    }
    memcpy(res.skipped, r.skipped, sizeof res.skipped);
    sharegpt_close(&r);
    return res;
}

static int64_t total_skipped(const ReadResult *r) {
    int64_t n = 0;
    for (int i = 0; i < SKIP_COUNT; i++) n += r->skipped[i];
    return n;
}

static void test_sharegpt(void) {
    char *p = tmp_path("classic.json");
    write_text(p, "\xef\xbb\xbf[\n"
                  " {\"id\": \"a_0\", \"conversations\": [{\"from\": \"system\", \"value\": \"Be nice.\"},\n"
                  "   {\"from\": \"human\", \"value\": \"Hi \\\"there\\\" [x] {y}\"}, {\"from\": \"gpt\", \"value\": "
                  "\"Hello!\"}]},\n"
                  " {\"id\": \"b_0\", \"conversations\": [{\"from\": \"gpt\", \"value\": \"(cut reply)\"},\n"
                  "   {\"from\": \"human\", \"value\": \"Q\"}, {\"from\": \"gpt\", \"value\": \"A\"}, {\"from\": "
                  "\"human\", \"value\": \"Q2\"}]}\n"
                  "]\n");
    ReadResult r = read_all(p, 0);
    CHECK(r.n == 2 && total_skipped(&r) == 0, "classic: 2 conversations read (got %d, %lld skipped)", r.n,
          (long long)total_skipped(&r));
    CHECK(r.first_turns == 3 && r.first_roles[0] == ROLE_SYSTEM && r.first_roles[1] == ROLE_USER &&
              r.first_roles[2] == ROLE_ASSISTANT && strcmp(r.first_text, "Be nice.") == 0,
          "classic: system, user, assistant turns with their text");
    ShareGPTReader rd;
    sharegpt_open(&rd, p);
    Conversation c;
    sharegpt_next(&rd, &c);
    CHECK(strcmp(c.id, "a_0") == 0 && c.turns[1].len == 18 && memcmp(c.turns[1].text, "Hi \"there\" [x] {y}", 18) == 0,
          "classic: id and escaped text with brackets in strings");
    conversation_free(&c);
    sharegpt_next(&rd, &c);
    CHECK(c.n_turns == 2 && c.turns[0].role == ROLE_USER && c.turns[1].len == 1 && c.turns[1].text[0] == 'A',
          "classic: a leading reply and a trailing question without reply are dropped");
    conversation_free(&c);
    CHECK(sharegpt_count(&rd) == 2, "sharegpt_count: 2 elements");
    sharegpt_close(&rd);
    r = read_all(p, 1);
    CHECK(r.n == 1, "limit 1: one conversation (got %d)", r.n);
    free(p);

    p = tmp_path("messages.json");
    write_text(p, "[{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", "
                  "\"content\": \"4\"}]}]");
    r = read_all(p, 0);
    CHECK(r.n == 1 && r.first_turns == 2 && strcmp(r.first_text, "2+2?") == 0, "messages format: role/content");
    free(p);

    /* one conversation per line; a broken line is skipped without swallowing the next */
    p = tmp_path("lines.jsonl");
    write_text(
        p, "{\"conversations\": [{\"from\": \"human\", \"value\": \"q1\"}, {\"from\": \"gpt\", \"value\": \"a1\"}]}\n"
           "{\"conversations\": [{\"from\": \"human\", \"value\": \"broken\"}, \n"
           "\n"
           "{\"messages\": [{\"role\": \"user\", \"content\": \"q3\"}, {\"role\": \"assistant\", \"content\": "
           "\"a3\"}]}\n");
    r = read_all(p, 0);
    CHECK(r.n == 2 && r.skipped[SKIP_INVALID_JSON] == 1 && total_skipped(&r) == 1,
          ".jsonl: 2 read, the broken line counted as invalid JSON (got %d, %lld)", r.n,
          (long long)r.skipped[SKIP_INVALID_JSON]);
    free(p);

    /* every kind of unusable conversation, skipped and counted, between two good ones */
    static const struct {
        const char *json;
        SkipReason why;
    } bad[] = {
        {"42", SKIP_NOT_OBJECT},
        {"{\"id\": \"x\"}", SKIP_NO_TURN_LIST},
        {"{\"conversations\": \"human: hi\"}", SKIP_NO_TURN_LIST},
        {"{\"conversations\": []}", SKIP_EMPTY},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": 7}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         SKIP_MALFORMED_TURN},
        {"{\"conversations\": [[\"human\", \"hi\"], {\"from\": \"gpt\", \"value\": \"a\"}]}", SKIP_MALFORMED_TURN},
        {"{\"conversations\": [{\"from\": \"human\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}", SKIP_MALFORMED_TURN},
        {"{\"conversations\": [{\"from\": \"alien\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         SKIP_UNKNOWN_ROLE},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         SKIP_EMPTY_TURN},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \" "
         "\\n\\t\\u3000\\u00a0 \"}]}",
         SKIP_EMPTY_TURN},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"human\", \"value\": \"q\"}, "
         "{\"from\": \"gpt\", \"value\": \"a\"}]}",
         SKIP_ROLE_ORDER},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}, "
         "{\"from\": \"gpt\", \"value\": \"b\"}]}",
         SKIP_ROLE_ORDER},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"system\", \"value\": \"s\"}, "
         "{\"from\": \"gpt\", \"value\": \"a\"}]}",
         SKIP_ROLE_ORDER},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"only a question\"}]}", SKIP_NO_REPLY},
        {"{\"conversations\": [{\"from\": \"gpt\", \"value\": \"only a reply\"}]}", SKIP_NO_REPLY},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"} {\"from\": \"gpt\", \"value\": \"a\"}]}",
         SKIP_INVALID_JSON},
    };
    const char *good =
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}";
    size_t n_bad = sizeof bad / sizeof *bad;
    char *all = xmalloc(16384);
    int at = sprintf(all, "[%s", good);
    for (size_t i = 0; i < n_bad; i++) at += sprintf(all + at, ",\n%s", bad[i].json);
    sprintf(all + at, ",\n%s]", good);
    p = tmp_path("bad.json");
    write_text(p, all);
    r = read_all(p, 0);
    int64_t want[SKIP_COUNT] = {0};
    for (size_t i = 0; i < n_bad; i++) want[bad[i].why]++;
    int counts_ok = 1;
    for (int k = 0; k < SKIP_COUNT; k++) {
        if (r.skipped[k] != want[k]) {
            counts_ok = 0;
            printf("       skipped_%s: %lld, want %lld\n", skip_reason_key((SkipReason)k), (long long)r.skipped[k],
                   (long long)want[k]);
        }
    }
    CHECK(r.n == 2 && counts_ok,
          "malformed conversations: %zu skipped and counted by reason, the 2 good ones read (got %d)", n_bad, r.n);
    for (size_t i = 0; i < n_bad; i++) {
        Conversation one;
        char *copy = xstrdup(bad[i].json);
        int why = conversation_parse(&one, copy, strlen(copy));
        CHECK(why == (int)bad[i].why, "conversation_parse: %s -> %s (got %s)", skip_reason_key(bad[i].why),
              skip_reason_key(bad[i].why), why >= 0 ? skip_reason_key((SkipReason)why) : "usable");
        free(copy);
    }
    free(p);

    /* the file ends inside a conversation (as the demo file does) */
    p = tmp_path("cut.json");
    write_text(
        p, "[{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]},\n"
           " {\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"val");
    r = read_all(p, 0);
    CHECK(r.n == 1 && r.skipped[SKIP_TRUNCATED_FILE] == 1,
          "file cut inside a conversation: 1 read, 1 counted as cut off");
    free(p);

    p = tmp_path("notes.json");
    write_text(p, "These are not conversations.\n");
    EXPECT_FATAL(read_all(p, 0), "notes.json: not JSON", "non-JSON file: fatal naming the file");
    free(p);
    p = tmp_path("garbage.json");
    write_text(p, "[nonsense, garbage]");
    EXPECT_FATAL(read_all(p, 0), "garbage.json: not valid JSON", "a list of non-JSON: fatal naming the file");
    free(p);
    p = tmp_path("empty.json");
    write_text(p, "  \n");
    EXPECT_FATAL(read_all(p, 0), "empty.json: empty file", "empty file: fatal naming the file");
    free(p);
    p = tmp_path("broken_list.json");
    write_text(p, "[{\"conversations\": []} {\"conversations\": []}]");
    EXPECT_FATAL(read_all(p, 0), "broken_list.json: malformed JSON", "missing ',' between conversations: fatal");
    free(p);
    EXPECT_FATAL(read_all("/nonexistent/sharegpt.json", 0), "/nonexistent/sharegpt.json",
                 "missing file: fatal naming it");

    const char *s = " \t\xe3\x80\x80text\xc2\xa0 inside\xe2\x80\x83\n";
    size_t n = strlen(s);
    text_strip(&s, &n);
    CHECK(n == 13 && memcmp(s, "text\xc2\xa0 inside", 13) == 0,
          "text_strip: Unicode spaces at both ends, as str.strip()");
}

/* A huge single message: read whole, and tokenised only as far as --max-len needs. */
static void test_huge_message(const Tokenizer *tok) {
    size_t big = (size_t)64 << 20;
    char *json = xmalloc(big + 256);
    int at = sprintf(
        json, "[{\"conversations\": [{\"from\": \"human\", \"value\": \"Repeat.\"}, {\"from\": \"gpt\", \"value\": \"");
    for (size_t i = 0; i < big; i++) json[at + i] = "lorem ipsum dolor sit amet, "[i % 28];
    strcpy(json + at + big, "\"}]}]");
    char *p = tmp_path("huge.json");
    write_bytes(p, json, strlen(json));
    free(json);
    ShareGPTReader r;
    sharegpt_open(&r, p);
    Conversation c;
    int ok = sharegpt_next(&r, &c);
    CHECK(ok && c.n_turns == 2 && c.turns[1].len == big, "huge message: one %zu MB reply read whole", big >> 20);
    ChatTemplate t;
    chat_template_init(&t, "llama-3", tok, NULL, "<|begin_of_text|>", "<|eot_id|>");
    Encoded e;
    double t0 = now_seconds();
    int why = chat_encode(&t, tok, &c, 1024, &e);
    double dt = now_seconds() - t0;
    CHECK(why < 0 && e.n == 1024 && e.truncated && e.n_trained > 900 && dt < 2,
          "huge message: cut to --max-len 1024 tokens (%d, %d trained) in %.3f s", e.n, e.n_trained, dt);
    encoded_free(&e);
    chat_template_free(&t);
    conversation_free(&c);
    sharegpt_close(&r);
    free(p);
}

/* ---- (c) token cache ---- */

static void write_cache(const char *path, const int32_t *ids, const uint8_t *mask, const int *lens, int n_convs,
                        const TokenCacheMeta *meta) {
    TokenCacheWriter w;
    token_cache_writer_open(&w, path);
    for (int i = 0, at = 0; i < n_convs; at += lens[i++]) token_cache_writer_add(&w, ids + at, mask + at, lens[i]);
    token_cache_writer_close(&w, meta);
}

static void test_token_cache(void) {
    /* enough tokens to cross the writer's 1M-token flush and HDF5 chunk boundaries */
    enum { N_CONVS = 700 };
    int lens[N_CONVS], total = 0;
    for (int i = 0; i < N_CONVS; i++) total += lens[i] = 1 + (i * 7919) % 3000;
    int32_t *ids = xmalloc((size_t)total * sizeof *ids);
    uint8_t *mask = xmalloc((size_t)total);
    for (int i = 0; i < total; i++) {
        ids[i] = (int32_t)((i * 2654435761u) % 50000);
        mask[i] = (uint8_t)((i / 5) % 2);
    }
    TokenCacheMeta meta = {.vocab_size = 50000, .max_len = 3000, .val_fraction = 0.02, .truncated = 3};
    strcpy(meta.tokenizer_fingerprint, "0123456789abcdef");
    strcpy(meta.template_name, "chatml");
    strcpy(meta.source, "some/sharegpt.json");
    strcpy(meta.source_checksum, "fedcba9876543210");
    strcpy(meta.split, "train");
    for (int k = 0; k < SKIP_COUNT; k++) meta.skipped[k] = 10 + k;
    char *p = tmp_path("rt.tokens.h5");
    write_cache(p, ids, mask, lens, N_CONVS, &meta);
    char *tmp = tmp_path("rt.tokens.h5.tmp");
    CHECK(file_exists(p) && !file_exists(tmp), "cache: written, no temp file left");
    TokenCache c;
    token_cache_load(&c, p, 50000);
    int same = c.n_tokens == total && c.n_convs == N_CONVS && memcmp(c.tokens, ids, (size_t)total * 4) == 0 &&
               memcmp(c.loss_mask, mask, (size_t)total) == 0;
    for (int i = 0, at = 0; same && i <= N_CONVS; at += i < N_CONVS ? lens[i] : 0, i++) same = c.conv_offsets[i] == at;
    CHECK(same, "cache round trip: %d conversations, %d tokens, masks and offsets identical", N_CONVS, total);
    const TokenCacheMeta *m = &c.meta;
    int meta_ok = m->vocab_size == 50000 && m->max_len == 3000 && m->val_fraction == 0.02 && m->truncated == 3 &&
                  !strcmp(m->tokenizer_fingerprint, meta.tokenizer_fingerprint) &&
                  !strcmp(m->template_name, "chatml") && !strcmp(m->source, meta.source) &&
                  !strcmp(m->source_checksum, meta.source_checksum) && !strcmp(m->split, "train");
    for (int k = 0; k < SKIP_COUNT; k++) meta_ok &= m->skipped[k] == 10 + k;
    CHECK(meta_ok, "cache round trip: every attribute identical");
    token_cache_free(&c);

    EXPECT_FATAL(token_cache_load(&c, p, 40000), "outside the model's vocabulary of 40000",
                 "cache: token ids beyond the model's vocabulary -> fatal");
    /* a cut copy and a copy with damaged bytes in the middle */
    size_t size;
    char *bytes = read_whole_file(p, &size);
    char *cut = tmp_path("cut.tokens.h5");
    write_bytes(cut, bytes, size / 2);
    EXPECT_FATAL(token_cache_load(&c, cut, 0), "cut.tokens.h5: cannot", "cache: truncated file -> fatal naming it");
    write_bytes(cut, bytes, 1000);
    EXPECT_FATAL(token_cache_load(&c, cut, 0), "cut.tokens.h5: cannot",
                 "cache: first 1000 bytes only -> fatal naming it");
    write_text(cut, "not HDF5 at all");
    EXPECT_FATAL(token_cache_load(&c, cut, 0), "cut.tokens.h5: cannot open as HDF5", "cache: not HDF5 -> fatal");
    EXPECT_FATAL(token_cache_load(&c, "/nonexistent.tokens.h5", 0), "/nonexistent.tokens.h5: no such",
                 "cache: missing file -> fatal");
    free(bytes);

    /* well-formed HDF5 that is not a valid cache */
    mask[5] = 2;
    write_cache(p, ids, mask, lens, N_CONVS, &meta);
    EXPECT_FATAL(token_cache_load(&c, p, 0), "loss_mask[5] is 2", "cache: mask value 2 -> fatal");
    mask[5] = 0;
    ids[9] = -3;
    write_cache(p, ids, mask, lens, 3, &meta);
    EXPECT_FATAL(token_cache_load(&c, p, 0), "token id -3", "cache: negative token id -> fatal");
    ids[9] = 0;
    hid_t f = H5Fcreate(cut, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    EXPECT_FATAL(token_cache_load(&c, cut, 0), "not a token cache", "cache: HDF5 without the attributes -> fatal");
    write_cache(cut, ids, mask, lens, 3, &meta);
    f = H5Fopen(cut, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "conv_offsets", H5P_DEFAULT);
    H5Fclose(f);
    EXPECT_FATAL(token_cache_load(&c, cut, 0), "no dataset 'conv_offsets'", "cache: missing dataset -> fatal");
    write_cache(cut, ids, mask, lens, 3, &meta);
    f = H5Fopen(cut, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "conv_offsets", H5P_DEFAULT);
    int64_t bad_off[4] = {0, 5, 3, lens[0] + lens[1] + lens[2]};
    H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, bad_off);
    H5Dclose(ds);
    H5Fclose(f);
    EXPECT_FATAL(token_cache_load(&c, cut, 0), "conv_offsets not increasing", "cache: offsets out of order -> fatal");
    f = H5Fopen(cut, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    int64_t v = 99;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
    EXPECT_FATAL(token_cache_load(&c, cut, 0), "format version 99", "cache: unknown format version -> fatal");
    free(cut);
    free(tmp);
    free(p);
    free(ids);
    free(mask);
}

/* ---- (d) batcher ---- */

/* An in-memory cache: conversation i has lens[i] tokens, token j of it is i * 10000 + j. */
static void make_cache(TokenCache *c, const int *lens, int n) {
    memset(c, 0, sizeof *c);
    c->n_convs = n;
    c->conv_offsets = xmalloc((size_t)(n + 1) * sizeof *c->conv_offsets);
    c->conv_offsets[0] = 0;
    for (int i = 0; i < n; i++) c->conv_offsets[i + 1] = c->conv_offsets[i] + lens[i];
    c->n_tokens = c->conv_offsets[n];
    c->tokens = xmalloc((size_t)c->n_tokens * sizeof *c->tokens);
    c->loss_mask = xmalloc((size_t)c->n_tokens);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < lens[i]; j++) {
            c->tokens[c->conv_offsets[i] + j] = i * 10000 + j;
            c->loss_mask[c->conv_offsets[i] + j] = (uint8_t)(j % 3 != 0);
        }
}

/* Copies a batch's contents (it is only valid until the next call). */
typedef struct {
    int n_tokens, n_seqs;
    int32_t tokens[4096];
    uint8_t mask[4096];
    int32_t seq_lens[4096];
    int64_t epoch;
} BatchCopy;

static void copy_batch(BatchCopy *d, PackedBatch b) {
    d->n_tokens = b.n_tokens;
    d->n_seqs = b.n_seqs;
    d->epoch = b.epoch;
    memcpy(d->tokens, b.tokens, (size_t)b.n_tokens * sizeof *b.tokens);
    memcpy(d->mask, b.loss_mask, (size_t)b.n_tokens);
    memcpy(d->seq_lens, b.seq_lens, (size_t)b.n_seqs * sizeof *b.seq_lens);
}

static int same_batch(const BatchCopy *a, PackedBatch b) {
    return a->n_tokens == b.n_tokens && a->n_seqs == b.n_seqs && a->epoch == b.epoch &&
           memcmp(a->tokens, b.tokens, (size_t)b.n_tokens * sizeof *b.tokens) == 0 &&
           memcmp(a->mask, b.loss_mask, (size_t)b.n_tokens) == 0 &&
           memcmp(a->seq_lens, b.seq_lens, (size_t)b.n_seqs * sizeof *b.seq_lens) == 0;
}

static void test_batcher(void) {
    enum { N = 97, BT = 1024 };
    int lens[N];
    for (int i = 0; i < N; i++) lens[i] = 1 + (i * 37 + 11) % 700;
    lens[13] = 5000; /* longer than a batch: cut to batch_tokens */
    TokenCache cache;
    make_cache(&cache, lens, N);
    Batcher b;
    batcher_init(&b, &cache, BT, 42, 1);

    /* one epoch: every conversation exactly once, whole (or cut to BT) and in place, batches packed greedily */
    int seen[N] = {0}, packing_ok = 1, content_ok = 1, greedy_ok = 1, batches = 0;
    int64_t first_of_epoch[N], k = 0;
    while (k < N) {
        PackedBatch bt = batcher_next(&b);
        batches++;
        int sum = 0;
        for (int s = 0, at = 0; s < bt.n_seqs; at += bt.seq_lens[s++], k++) {
            int conv = bt.tokens[at] / 10000, len = bt.seq_lens[s];
            first_of_epoch[k] = conv;
            seen[conv]++;
            if (len != (lens[conv] < BT ? lens[conv] : BT)) content_ok = 0;
            for (int j = 0; j < len; j++)
                if (bt.tokens[at + j] != conv * 10000 + j || bt.loss_mask[at + j] != (j % 3 != 0)) content_ok = 0;
            sum += len;
        }
        if (sum != bt.n_tokens || bt.n_tokens > BT || bt.n_seqs < 1 || bt.epoch != 0) packing_ok = 0;
        /* the next conversation would not have fit */
        if (k < N) {
            int next = lens[b.order[k]] < BT ? lens[b.order[k]] : BT;
            if (bt.n_tokens + next <= BT) greedy_ok = 0;
        }
    }
    int once = 1;
    for (int i = 0; i < N; i++) once &= seen[i] == 1;
    CHECK(packing_ok, "batcher: every batch holds at most %d tokens and its sequence lengths add up", BT);
    CHECK(content_ok, "batcher: sequences are whole conversations with their masks (the long one cut to %d)", BT);
    CHECK(once, "batcher: an epoch has every conversation exactly once");
    CHECK(greedy_ok, "batcher: a batch ends only when the next conversation does not fit");
    CHECK(batches == batcher_epoch_batches(&b, 0),
          "batcher: %d batches in epoch 0, as batcher_epoch_batches says (%lld)", batches,
          (long long)batcher_epoch_batches(&b, 0));
    int in_order = 1;
    for (int i = 0; i < N; i++) in_order &= first_of_epoch[i] == i;
    CHECK(!in_order, "batcher: shuffled order differs from the file's");

    /* the next epoch: reshuffled */
    PackedBatch bt = batcher_next(&b);
    CHECK(bt.epoch == 1 && bt.tokens[0] / 10000 != first_of_epoch[0], "batcher: epoch 1 starts in a new order");

    /* same seed -> same batches; another seed -> another order; no shuffle -> file order */
    Batcher b1, b2, b3;
    batcher_init(&b1, &cache, BT, 7, 1);
    batcher_init(&b2, &cache, BT, 7, 1);
    batcher_init(&b3, &cache, BT, 8, 1);
    int same = 1, differs = 0;
    for (int i = 0; i < 40; i++) {
        BatchCopy c1;
        copy_batch(&c1, batcher_next(&b1));
        same &= same_batch(&c1, batcher_next(&b2));
        differs |= !same_batch(&c1, batcher_next(&b3));
    }
    CHECK(same, "batcher: the same seed gives the same 40 batches (across epochs)");
    CHECK(differs, "batcher: another seed gives other batches");
    Batcher b4;
    batcher_init(&b4, &cache, BT, 7, 0);
    bt = batcher_next(&b4);
    CHECK(bt.tokens[0] == 0 && bt.seq_lens[0] == lens[0], "batcher: shuffle off keeps the file's order");

    /* cursor saved mid-epoch, restored in a fresh batcher: identical following batches */
    Batcher live;
    batcher_init(&live, &cache, BT, 1234, 1);
    int64_t per_epoch = batcher_epoch_batches(&live, 0);
    for (int i = 0; i < per_epoch + 3; i++) batcher_next(&live); /* into epoch 1 */
    int64_t words[BATCHER_CURSOR_WORDS];
    batcher_save_cursor(&live, words);
    Batcher resumed;
    batcher_init(&resumed, &cache, BT, 1234, 1);
    batcher_restore_cursor(&resumed, words);
    int identical = 1;
    for (int i = 0; i < 2 * per_epoch + 5; i++) {
        BatchCopy want;
        copy_batch(&want, batcher_next(&live));
        identical &= same_batch(&want, batcher_next(&resumed));
    }
    CHECK(words[0] == 1 && words[1] > 0 && identical,
          "batcher: restored at epoch %lld position %lld, the next %lld batches are identical", (long long)words[0],
          (long long)words[1], (long long)(2 * per_epoch + 5));

    Batcher other;
    batcher_init(&other, &cache, BT, 999, 1);
    EXPECT_FATAL(batcher_restore_cursor(&other, words), "saved with seed 1234", "cursor from another seed -> fatal");
    batcher_free(&other);
    batcher_init(&other, &cache, 512, 1234, 1);
    EXPECT_FATAL(batcher_restore_cursor(&other, words), "1024-token batches",
                 "cursor from another batch size -> fatal");
    batcher_free(&other);
    TokenCache smaller;
    make_cache(&smaller, lens, N - 1);
    batcher_init(&other, &smaller, BT, 1234, 1);
    EXPECT_FATAL(batcher_restore_cursor(&other, words), "97 conversations", "cursor from another data set -> fatal");
    batcher_free(&other);
    batcher_init(&other, &cache, BT, 1234, 1);
    int64_t bad[BATCHER_CURSOR_WORDS];
    memcpy(bad, words, sizeof bad);
    bad[1] = N + 1;
    EXPECT_FATAL(batcher_restore_cursor(&other, bad), "out of range", "cursor position beyond the data -> fatal");
    batcher_free(&other);
    TokenCache empty = {0};
    int64_t zero = 0;
    empty.conv_offsets = &zero;
    EXPECT_FATAL(batcher_init(&other, &empty, BT, 1, 1), "no conversations", "empty cache -> fatal");

    batcher_free(&b);
    batcher_free(&b1);
    batcher_free(&b2);
    batcher_free(&b3);
    batcher_free(&b4);
    batcher_free(&live);
    batcher_free(&resumed);
    token_cache_free(&smaller);
    token_cache_free(&cache);
}

/* ---- medusa-data end to end ---- */

static int run(const char *cmd) {
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_cli(void) {
    if (!file_exists("bin/medusa-data")) {
        CHECK(0, "bin/medusa-data not built");
        return;
    }
    /* a model directory: tokenizer.json and a tokenizer_config.json naming the chat template */
    char *model = tmp_path("model"), cmd[4096];
    mkdir(model, 0755);
    snprintf(cmd, sizeof cmd, "cp " CHAT_FIXTURES "/llama3_tokenizer.json %s/tokenizer.json", model);
    ensure(run(cmd) == 0);
    char *cfg = path_join(model, "tokenizer_config.json");
    write_text(cfg, "{\"bos_token\": \"<|begin_of_text|>\", \"eos_token\": {\"content\": \"<|eot_id|>\"},"
                    " \"chat_template\": \"{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}\"}");
    char *out = tmp_path("cli");
    snprintf(cmd, sizeof cmd,
             "bin/medusa-data --model %s --input " CHAT_FIXTURES "/conversations.json --out %s --val-fraction 0.25 "
             "--max-len 2048 --threads 2 > %s.log 2>&1",
             model, out, out);
    int rc = run(cmd);
    CHECK(rc == 0, "medusa-data: exit status %d", rc);
    char *train_path = xmalloc(strlen(out) + 32), *val_path = xmalloc(strlen(out) + 32);
    sprintf(train_path, "%s.train.tokens.h5", out);
    sprintf(val_path, "%s.val.tokens.h5", out);
    TokenCache train, val;
    token_cache_load(&train, train_path, 0);
    token_cache_load(&val, val_path, 0);
    CHECK(train.n_convs + val.n_convs == 64 && val.n_convs > 4 && val.n_convs < 32,
          "medusa-data: 64 conversations split %lld train / %lld val", (long long)train.n_convs,
          (long long)val.n_convs);
    CHECK(!strcmp(train.meta.template_name, "llama-3") && train.meta.max_len == 2048 && !strcmp(val.meta.split, "val"),
          "medusa-data: template guessed from tokenizer_config.json (%s), attributes written",
          train.meta.template_name);
    /* the same caches from one thread: the output does not depend on the thread count */
    snprintf(cmd, sizeof cmd,
             "bin/medusa-data --model %s --input " CHAT_FIXTURES "/conversations.json --out %s1 --val-fraction 0.25 "
             "--max-len 2048 --threads 1 --quiet && cmp -s %s.train.tokens.h5 %s1.train.tokens.h5 && "
             "cmp -s %s.val.tokens.h5 %s1.val.tokens.h5",
             model, out, out, out, out, out);
    CHECK(run(cmd) == 0, "medusa-data: byte-identical caches from 1 and 2 threads");
    snprintf(cmd, sizeof cmd, "bin/medusa-data stats %s > %s.stats 2>&1 && grep -q 'conversations *%lld' %s.stats",
             train_path, out, (long long)train.n_convs, out);
    CHECK(run(cmd) == 0, "medusa-data stats: runs and counts the conversations");

    /* no validation split: the cache holds exactly what chat_encode gives each conversation, in file order */
    snprintf(cmd, sizeof cmd,
             "bin/medusa-data --model %s --input " CHAT_FIXTURES "/conversations.json --out %s0 --val-fraction 0 "
             "--max-len 300 --quiet",
             model, out);
    CHECK(run(cmd) == 0, "medusa-data --val-fraction 0: runs");
    sprintf(train_path, "%s0.train.tokens.h5", out);
    TokenCache all;
    token_cache_load(&all, train_path, 0);
    Tokenizer *tok = tokenizer_load_json(CHAT_FIXTURES "/llama3_tokenizer.json");
    ChatTemplate t;
    chat_template_init(&t, "llama-3", tok, NULL, "<|begin_of_text|>", "<|eot_id|>");
    ShareGPTReader r;
    sharegpt_open(&r, CHAT_FIXTURES "/conversations.json");
    Conversation c;
    int64_t conv = 0, kept = 0;
    int same = 1;
    while (sharegpt_next(&r, &c)) {
        Encoded e;
        if (chat_encode(&t, tok, &c, 300, &e) < 0) {
            kept++;
            const int64_t *off = all.conv_offsets;
            same &= conv < all.n_convs && off[conv + 1] - off[conv] == e.n &&
                    memcmp(all.tokens + off[conv], e.ids, (size_t)e.n * sizeof *e.ids) == 0 &&
                    memcmp(all.loss_mask + off[conv], e.mask, (size_t)e.n) == 0;
            conv++;
        }
        encoded_free(&e);
        conversation_free(&c);
    }
    sharegpt_close(&r);
    CHECK(same && conv == all.n_convs && all.meta.skipped[SKIP_NOTHING_TRAINED] == 64 - kept,
          "medusa-data: the cache holds chat_encode's ids and masks for the %lld conversations kept at --max-len 300, "
          "%lld counted as nothing trained",
          (long long)all.n_convs, (long long)all.meta.skipped[SKIP_NOTHING_TRAINED]);
    token_cache_free(&all);
    chat_template_free(&t);
    tokenizer_free(tok);

    /* JSON lines and --limit */
    char *lines = tmp_path("three.jsonl");
    write_text(
        lines,
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"q1\"}, {\"from\": \"gpt\", \"value\": \"a1\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"q2\"}, {\"role\": \"assistant\", \"content\": \"a2\"}]}\n"
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"q3\"}, {\"from\": \"gpt\", \"value\": \"a3\"}]}\n");
    snprintf(cmd, sizeof cmd, "bin/medusa-data --model %s --input %s --out %s3 --val-fraction 0 --limit 2 --quiet",
             model, lines, out);
    CHECK(run(cmd) == 0, "medusa-data .jsonl --limit 2: runs");
    sprintf(train_path, "%s3.train.tokens.h5", out);
    token_cache_load(&all, train_path, 0);
    CHECK(all.n_convs == 2, "medusa-data .jsonl --limit 2: 2 conversations (got %lld)", (long long)all.n_convs);
    token_cache_free(&all);
    free(lines);

    /* nothing usable: one error naming the input and why, non-zero exit, no cache left behind */
    char *unusable = tmp_path("unusable.json");
    write_text(unusable, "[{\"id\": \"a\", \"conversations\": []},"
                         " {\"id\": \"b\", \"conversations\": [{\"from\": \"human\", \"value\": \"q\"}]}]");
    snprintf(cmd, sizeof cmd, "bin/medusa-data --model %s --input %s --out %s5 > %s5.log 2>&1", model, unusable, out,
             out);
    rc = run(cmd);
    snprintf(cmd, sizeof cmd,
             "grep -q 'unusable.json: no usable conversation (2 read, 2 skipped: 1 empty conversation, 1 no "
             "assistant reply)' %s5.log && ! ls %s5.* 2>/dev/null | grep -q tokens",
             out, out);
    CHECK(rc == 1 && run(cmd) == 0,
          "medusa-data on conversations that are all skipped: exit 1 (got %d), the reasons named, no cache written",
          rc);
    free(unusable);

    /* the chat template from a GGUF's metadata */
    if (file_exists(SMOLLM2_GGUF)) {
        snprintf(cmd, sizeof cmd,
                 "bin/medusa-data --model " SMOLLM2_GGUF " --input " CHAT_FIXTURES "/conversations.json --out %s4 "
                 "--val-fraction 0 --limit 10 --quiet",
                 out);
        CHECK(run(cmd) == 0, "medusa-data with a GGUF model: runs");
        sprintf(train_path, "%s4.train.tokens.h5", out);
        token_cache_load(&all, train_path, 0);
        CHECK(all.n_convs == 10 && !strcmp(all.meta.template_name, "chatml") && all.meta.vocab_size == 49152,
              "medusa-data with a GGUF model: chatml from its tokenizer.chat_template, 10 conversations (%s, %lld)",
              all.meta.template_name, (long long)all.n_convs);
        token_cache_free(&all);
    } else {
        CHECK(0, "%s is missing (data/fetch_demo.sh model)", SMOLLM2_GGUF);
    }

    /* tokenizer_config.json's list of named templates: "default" is the chat template */
    write_text(cfg, "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"{{ tools }}\"},"
                    " {\"name\": \"default\", \"template\": \"{{'<|im_start|>' + message['role']}}\"}]}");
    snprintf(cmd, sizeof cmd, "bin/medusa-data --model %s --input %s --out %s5 --quiet", model,
             CHAT_FIXTURES "/conversations.json", out);
    CHECK(run(cmd) == 0, "medusa-data: chat_template as a list of named templates: runs");
    sprintf(train_path, "%s5.train.tokens.h5", out);
    token_cache_load(&all, train_path, 0);
    CHECK(!strcmp(all.meta.template_name, "chatml"), "medusa-data: the \"default\" named template is used (%s)",
          all.meta.template_name);
    token_cache_free(&all);

    char *notes = tmp_path("notes.json");
    write_text(notes, "hello");
    snprintf(cmd, sizeof cmd,
             "bin/medusa-data --model %s --input %s --out %s2 > %s.err 2>&1; test $? -eq 1 && grep -q 'notes.json: not "
             "JSON' "
             "%s.err && ! test -e %s2.train.tokens.h5 && ! test -e %s2.train.tokens.h5.tmp",
             model, notes, out, out, out, out, out);
    CHECK(run(cmd) == 0, "medusa-data: a non-JSON input is fatal, names the file and leaves no output");
    free(notes);
    write_text(cfg, "{\"chat_template\": \"{{ messages }}\"}");
    snprintf(cmd, sizeof cmd,
             "bin/medusa-data --model %s --input " CHAT_FIXTURES "/conversations.json --out %s2 > %s.err 2>&1; "
             "test $? -eq 1 && grep -q 'choose one with --template' %s.err && ! test -e %s2.train.tokens.h5",
             model, out, out, out, out);
    CHECK(run(cmd) == 0, "medusa-data: an unknown chat template is fatal and asks for --template");
    token_cache_free(&train);
    token_cache_free(&val);
    free(train_path);
    free(val_path);
    free(cfg);
    free(out);
    free(model);
}

int main(void) {
    make_tmpdir("/tmp/medusa-data-XXXXXX");
    test_templates();
    test_sharegpt();
    Tokenizer *tok = tokenizer_load_json(CHAT_FIXTURES "/llama3_tokenizer.json");
    test_huge_message(tok);
    tokenizer_free(tok);
    test_token_cache();
    test_batcher();
    test_cli();
    remove_tmpdir();
    return test_summary();
}
