/* Tokenizer golden tests: ids identical to Hugging Face `tokenizers` for >= 1,000 varied strings
 * (tests/gen/gen_tokenizer.py) for SmolLM2's tokenizer (from tokenizer.json and from the GGUF), a Llama-3-style
 * and a Llama-2-style tokenizer.json, sentencepiece for a Llama-2-style GGUF, and transformers' conversion of
 * the Gemma 3 GGUF when it is present (tests/gen/gen_gemma_tokenizer.py); decode(encode(s)) == s; special
 * tokens; bad input; chat templates. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "../data/chat_template.h"
#include "../data/sharegpt.h"
#include "../data/tokenizer.h"
#include "test.h"

#define FIXTURES "tests/fixtures/tokenizer/"
#define SMOLLM2_GGUF "cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GEMMA3_GGUF "cache/models/gemma-3-270m-q4_k_m.gguf" /* MEDUSA_GEMMA3_GGUF overrides (make GEMMA3=) */
#define USER_DEFINED "<|user|>"                             /* spm_llama.gguf's user-defined token */

typedef struct {
    char **s;
    size_t *len;
    int n;
} Strings;

static char *from_hex(const char *hex, size_t *len) {
    size_t n = strlen(hex) / 2;
    char *s = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned b;
        sscanf(hex + 2 * i, "%2x", &b);
        s[i] = (char)b;
    }
    s[n] = '\0';
    *len = n;
    return s;
}

static Strings load_strings(void) {
    cJSON *j = read_json(FIXTURES "strings.json"), *h;
    const cJSON *hex = cJSON_GetObjectItem(j, "hex");
    Strings st = {0};
    st.n = cJSON_GetArraySize(hex);
    st.s = xmalloc((size_t)st.n * sizeof *st.s);
    st.len = xmalloc((size_t)st.n * sizeof *st.len);
    int i = 0;
    cJSON_ArrayForEach(h, hex) {
        st.s[i] = from_hex(h->valuestring, &st.len[i]);
        i++;
    }
    cJSON_Delete(j);
    return st;
}

static int same_ids(const int32_t *a, int n, const cJSON *want) {
    if (n != cJSON_GetArraySize(want)) return 0;
    int k = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, want) {
        if (a[k++] != v->valueint) return 0;
    }
    return 1;
}

static void print_mismatch(const char *what, int i, const Strings *st, const int32_t *ids, int n, const cJSON *want) {
    printf("       %s: string %d (%zu bytes) \"%.60s\"\n         got ", what, i, st->len[i], st->s[i]);
    for (int k = 0; k < n && k < 24; k++) printf(" %d", ids[k]);
    printf("%s\n         want", n > 24 ? " ..." : "");
    int k = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, want) {
        if (k++ < 24) printf(" %d", v->valueint);
    }
    printf("%s\n", k > 24 ? " ..." : "");
}

/* Ids of every string against the fixture, with and without special-token parsing and with BOS; decode
 * against HF's decode; and decode(encode(s)) == s. */
static void check_tokenizer_fx(const char *label, const Tokenizer *t, cJSON *fx, const char *ref, const Strings *st) {
    const cJSON *ids = cJSON_GetObjectItem(fx, "ids"), *plain = cJSON_GetObjectItem(fx, "ids_plain"),
                *bos = cJSON_GetObjectItem(fx, "ids_bos"), *decoded = cJSON_GetObjectItem(fx, "decoded"),
                *decoded_skip = cJSON_GetObjectItem(fx, "decoded_skip");
    ensure(cJSON_GetArraySize(ids) == st->n);
    int same = 0, shown = 0, n_plain = 0, same_plain = 0, n_bos = 0, same_bos = 0, dec_ok = 0, skip_n = 0, skip_ok = 0;
    /* Strings that cannot come back unchanged: SentencePiece models read a literal U+2581 as a space and
     * give the text after a user-defined token its own leading space (llama.cpp, HF legacy); a byte-level
     * vocab may lack bytes (SmolLM2 has no token for 0x04 or 0xF1), which HF drops (its decode differs) */
    int round = 0, round_plain = 0, n_mark = 0;
    long tokens = 0;
    size_t bytes = 0;
    double t0 = now_seconds();
    for (int i = 0; i < st->n; i++) {
        int32_t *got;
        int n = tokenizer_encode(t, st->s[i], st->len[i], 1, 0, &got);
        const cJSON *want = cJSON_GetArrayItem(ids, i);
        tokens += n;
        bytes += st->len[i];
        if (same_ids(got, n, want)) same++;
        else if (shown++ < 3) print_mismatch("ids differ", i, st, got, n, want);

        char key[16];
        snprintf(key, sizeof key, "%d", i);
        int spm = tokenizer_kind(t) == TOKENIZER_SPM_BPE;
        int unchangeable = spm ? memmem(st->s[i], st->len[i], "\xe2\x96\x81", 3) ||
                                     (tokenizer_token_id(t, USER_DEFINED) >= 0 &&
                                      memmem(st->s[i], st->len[i], USER_DEFINED, strlen(USER_DEFINED)))
                               : cJSON_GetObjectItem(decoded, key) != NULL;
        n_mark += unchangeable;
        size_t dlen, want_len = st->len[i];
        char *raw = tokenizer_decode(t, got, n, 0, &dlen), *want_dec = NULL, *d = utf8_lossy(raw, dlen, &dlen);
        free(raw);
        const cJSON *hx = cJSON_GetObjectItem(decoded, key);
        if (hx) want_dec = from_hex(hx->valuestring, &want_len);
        const char *ref = want_dec ? want_dec : st->s[i];
        if (dlen == want_len && memcmp(d, ref, dlen) == 0) dec_ok++;
        else if (shown++ < 3) printf("       decode differs: string %d \"%.60s\" -> \"%.60s\"\n", i, st->s[i], d);
        if (!spm && !unchangeable) round += dlen == st->len[i] && memcmp(d, st->s[i], dlen) == 0;
        free(d);
        free(want_dec);

        if ((hx = cJSON_GetObjectItem(decoded_skip, key))) {
            char *ws = from_hex(hx->valuestring, &want_len);
            raw = tokenizer_decode(t, got, n, 1, &dlen);
            d = utf8_lossy(raw, dlen, &dlen);
            free(raw);
            skip_n++;
            skip_ok += dlen == want_len && memcmp(d, ws, dlen) == 0;
            free(d);
            free(ws);
        }
        free(got);

        n = tokenizer_encode(t, st->s[i], st->len[i], 0, 0, &got);
        if ((want = cJSON_GetObjectItem(plain, key))) {
            n_plain++;
            if (same_ids(got, n, want)) same_plain++;
            else if (shown++ < 3) print_mismatch("ids (special tokens as text) differ", i, st, got, n, want);
        }
        d = tokenizer_decode(t, got, n, 0, &dlen);
        if (!unchangeable) round_plain += dlen == st->len[i] && memcmp(d, st->s[i], dlen) == 0;
        free(d);
        free(got);

        if ((want = cJSON_GetObjectItem(bos, key))) {
            n = tokenizer_encode(t, st->s[i], st->len[i], 1, 1, &got);
            n_bos++;
            if (same_ids(got, n, want)) same_bos++;
            else if (shown++ < 3) print_mismatch("ids with BOS differ", i, st, got, n, want);
            free(got);
        }
    }
    double secs = now_seconds() - t0;
    CHECK(same == st->n, "%s: %d/%d identical to %s", label, same, st->n, ref);
    CHECK(same_plain == n_plain && n_plain > 50, "%s: %d/%d identical with special-token text read as text", label,
          same_plain, n_plain);
    CHECK(same_bos == n_bos && n_bos > 0, "%s: %d/%d identical with BOS added as the post-processor does", label,
          same_bos, n_bos);
    CHECK(dec_ok == st->n, "%s: decode == HF's decode for %d/%d (ill-formed UTF-8 replaced as HF does)", label, dec_ok,
          st->n);
    CHECK(skip_ok == skip_n, "%s: decode skipping special tokens == HF for %d/%d", label, skip_ok, skip_n);
    CHECK(round_plain == st->n - n_mark, "%s: decode(encode(s)) == s for %d/%d (special-token text as text%s)", label,
          round_plain, st->n - n_mark,
          !n_mark                                  ? ""
          : tokenizer_kind(t) == TOKENIZER_SPM_BPE ? "; strings without U+2581 or a user-defined token"
                                                   : "; strings whose bytes the vocab has");
    if (tokenizer_kind(t) == TOKENIZER_BYTE_BPE)
        CHECK(round == st->n - n_mark, "%s: decode(encode(s)) == s for %d/%d (special tokens parsed)", label, round,
              st->n - n_mark);
    printf("       %s: %ld tokens, %.2f MB in %.2f s (all checks): %.0f tokens/s\n", label, tokens, bytes / 1e6, secs,
           tokens / secs);
}

static void check_tokenizer(const char *label, const Tokenizer *t, const char *fixture, const char *ref,
                            const Strings *st) {
    cJSON *fx = read_json(fixture);
    check_tokenizer_fx(label, t, fx, ref, st);
    cJSON_Delete(fx);
}

/* gen_gemma_tokenizer.py stores each id list as base64 of LEB128 varints: back to a JSON array. */
static cJSON *ids_from_b64(const char *b64) {
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    cJSON *arr = cJSON_CreateArray();
    uint32_t bits = 0, v = 0;
    int n_bits = 0, shift = 0;
    for (const char *p = b64; *p && *p != '='; p++) {
        const char *d = strchr(digits, *p);
        ensure(d != NULL);
        bits = bits << 6 | (uint32_t)(d - digits);
        n_bits += 6;
        if (n_bits < 8) continue;
        n_bits -= 8;
        unsigned byte = bits >> n_bits & 0xff;
        v |= (uint32_t)(byte & 0x7f) << shift;
        shift += 7;
        if (!(byte & 0x80)) {
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(v));
            v = 0;
            shift = 0;
        }
    }
    return arr;
}

/* Replaces every string of the array or object fx[key] by the ids it encodes. */
static void expand_ids(cJSON *fx, const char *key) {
    cJSON *v, *arr = cJSON_GetObjectItem(fx, key);
    cJSON_ArrayForEach(v, arr) {
        cJSON *ids = ids_from_b64(v->valuestring);
        if (v->string) cJSON_ReplaceItemInObjectCaseSensitive(arr, v->string, ids);
        else cJSON_ReplaceItemViaPointer(arr, v, ids);
        v = ids;
    }
}

/* A fixture in gen_gemma_tokenizer.py's layout, its id lists expanded; *st gets strings.json's strings
 * followed by the fixture's extra_hex (free them with free_extra). */
static cJSON *read_fixture_with_extra(const char *path, const Strings *common, Strings *st) {
    cJSON *fx = read_json(path), *h;
    expand_ids(fx, "ids");
    expand_ids(fx, "ids_plain");
    expand_ids(fx, "ids_bos");
    const cJSON *extra = cJSON_GetObjectItem(fx, "extra_hex");
    st->n = common->n + cJSON_GetArraySize(extra);
    st->s = xmalloc((size_t)st->n * sizeof *st->s);
    st->len = xmalloc((size_t)st->n * sizeof *st->len);
    memcpy(st->s, common->s, (size_t)common->n * sizeof *st->s);
    memcpy(st->len, common->len, (size_t)common->n * sizeof *st->len);
    int i = common->n;
    cJSON_ArrayForEach(h, extra) {
        st->s[i] = from_hex(h->valuestring, &st->len[i]);
        i++;
    }
    return fx;
}

static void free_extra(Strings *st, const Strings *common) {
    for (int i = common->n; i < st->n; i++) free(st->s[i]);
    free(st->s);
    free(st->len);
}

/* Gemma 3's SentencePiece vocabulary from its GGUF against transformers' conversion of the same file, on
 * strings.json plus the fixture's Gemma-specific strings; skipped without the model (not in the repo). */
static void check_gemma(const Strings *common) {
    const char *env = getenv("MEDUSA_GEMMA3_GGUF"), *path = env ? env : GEMMA3_GGUF;
    if (!file_exists(path)) {
        printf("skipped: Gemma 3 tokenizer checks, %s not present\n", path);
        return;
    }
    Strings st;
    cJSON *fx = read_fixture_with_extra(FIXTURES "gemma3.json", common, &st);
    GGUFFile g;
    gguf_open(&g, path);
    double t0 = now_seconds();
    Tokenizer *t = tokenizer_load_gguf(&g);
    printf("       Gemma 3 GGUF tokenizer loaded in %.2f s\n", now_seconds() - t0);
    gguf_close(&g);
    CHECK(tokenizer_kind(t) == TOKENIZER_SPM_BPE && tokenizer_vocab_size(t) == 262144 && tokenizer_bos_id(t) == 2 &&
              tokenizer_eos_id(t) == 1 && tokenizer_token_id(t, "<end_of_turn>") == 106,
          "Gemma 3 GGUF: SentencePiece BPE, vocab %d, BOS <bos> = 2, EOS <eos> = 1, <end_of_turn> = 106",
          tokenizer_vocab_size(t));
    check_tokenizer_fx("Gemma 3 (GGUF)", t, fx, "transformers' GemmaTokenizer from the GGUF", &st);
    tokenizer_free(t);
    free_extra(&st, common);
    cJSON_Delete(fx);
}

/* The GGUF names the "smollm" pre-tokenizer (digits split off one by one, as llama.cpp and SmolLM2's own
 * tokenizer.json do); transformers' conversion of the GGUF (smollm2.json) drops that step. Every other
 * string must tokenize as the conversion does, and the ones that differ are those the generator found. */
static void check_gguf_vs_conversion(const Tokenizer *t, const Strings *st) {
    cJSON *conv = read_json(FIXTURES "smollm2.json"), *fx = read_json(FIXTURES "smollm2_gguf.json"), *v;
    const cJSON *ids = cJSON_GetObjectItem(conv, "ids");
    char *expect_differ = xcalloc((size_t)st->n, 1);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(fx, "differs_from_conversion")) { expect_differ[v->valueint] = 1; }
    int same = 0, differ = 0, as_expected = 0;
    for (int i = 0; i < st->n; i++) {
        int32_t *got;
        int n = tokenizer_encode(t, st->s[i], st->len[i], 1, 0, &got);
        int eq = same_ids(got, n, cJSON_GetArrayItem(ids, i));
        same += eq;
        differ += !eq;
        as_expected += eq != expect_differ[i];
        free(got);
    }
    CHECK(as_expected == st->n && differ > 0,
          "SmolLM2 (GGUF): %d/%d identical to transformers' GGUF conversion; the %d others hold digits, which "
          "the \"smollm\" pre-tokenizer splits",
          same, st->n, differ);
    free(expect_differ);
    cJSON_Delete(conv);
    cJSON_Delete(fx);
}

static void check_specials(const Tokenizer *t) {
    int start = tokenizer_token_id(t, "<|im_start|>"), end = tokenizer_token_id(t, "<|im_end|>");
    CHECK(start == 1 && end == 2 && tokenizer_bos_id(t) == 1 && tokenizer_eos_id(t) == 2,
          "SmolLM2: <|im_start|> = %d = BOS (%d), <|im_end|> = %d = EOS (%d)", start, tokenizer_bos_id(t), end,
          tokenizer_eos_id(t));
    const char text[] = "<|im_start|>user\nHi<|im_end|>";
    int32_t *ids;
    int n = tokenizer_encode(t, text, strlen(text), 1, 0, &ids);
    CHECK(n >= 3 && ids[0] == start && ids[n - 1] == end, "special tokens in text are single tokens when parsed");
    size_t len;
    char *d = tokenizer_decode(t, ids, n, 1, &len);
    CHECK(strcmp(d, "user\nHi") == 0, "decode skipping special tokens gives \"user\\nHi\"");
    free(d);
    free(ids);
    n = tokenizer_encode(t, text, strlen(text), 0, 0, &ids);
    int any = 0;
    for (int k = 0; k < n; k++) any |= ids[k] == start || ids[k] == end;
    CHECK(!any && n > 5, "special-token text is ordinary text when not parsed (%d tokens)", n);
    free(ids);
    CHECK(strcmp(tokenizer_piece(t, start), "<|im_start|>") == 0 && tokenizer_token_id(t, "no such piece") == -1,
          "piece <-> id");
    int32_t odd[] = {-5, start, 1 << 30};
    d = tokenizer_decode(t, odd, 3, 0, &len);
    CHECK(strcmp(d, "<|im_start|>") == 0, "ids out of range decode to nothing");
    free(d);
}

/* The chat fixtures' ids (transformers' templates, then tokenizers) from chat_render + our encoder, and
 * chat_encode's ids and masks (or its skip when the fixture trains nothing within max_len). */
static void check_chat(const char *template_fixture) {
    cJSON *fx = read_json(template_fixture);
    const char *name = cJSON_GetObjectItem(fx, "template")->valuestring;
    const char *tok_path = cJSON_GetObjectItem(fx, "tokenizer")->valuestring;
    const cJSON *jinja = cJSON_GetObjectItem(fx, "jinja"), *cases = cJSON_GetObjectItem(fx, "cases");
    int max_len = cJSON_GetObjectItem(fx, "max_len")->valueint;
    Tokenizer *tok = tokenizer_load_json(tok_path);
    ChatTemplate tpl;
    chat_template_init(&tpl, name, tok, cJSON_IsString(jinja) ? jinja->valuestring : NULL,
                       cJSON_GetObjectItem(fx, "bos")->valuestring, cJSON_GetObjectItem(fx, "eos")->valuestring);
    ShareGPTReader r;
    sharegpt_open(&r, "tests/fixtures/chat/conversations.json");
    Conversation c;
    int k = 0, same = 0, same_encoded = 0, n = cJSON_GetArraySize(cases);
    while (k < n && sharegpt_next(&r, &c)) {
        const cJSON *cs = cJSON_GetArrayItem(cases, k++), *want = cJSON_GetObjectItem(cs, "ids");
        const char *mask = cJSON_GetObjectItem(cs, "mask")->valuestring;
        Rendered text = {0};
        chat_render(&tpl, &c, &text);
        int32_t *ids;
        int m = tokenizer_encode(tok, text.text, text.len, 1, tpl.add_bos, &ids);
        same += same_ids(ids, m < max_len ? m : max_len, want);
        free(ids);
        rendered_free(&text);
        Encoded e;
        int why = chat_encode(&tpl, tok, &c, max_len, &e);
        if (why < 0 && same_ids(e.ids, e.n, want)) {
            int ok = (int)strlen(mask) == e.n;
            for (int i = 0; ok && i < e.n; i++) ok = mask[i] - '0' == e.mask[i];
            same_encoded += ok;
        } else if (why == SKIP_NOTHING_TRAINED) {
            same_encoded += strchr(mask, '1') == NULL;
        }
        encoded_free(&e);
        conversation_free(&c);
    }
    sharegpt_close(&r);
    CHECK(k == n && same == n, "chat %s (%s): rendered text encodes to the fixture's ids for %d/%d conversations", name,
          tok_path, same, n);
    CHECK(same_encoded == n, "chat %s: chat_encode ids and masks agree for %d/%d", name, same_encoded, n);
    chat_template_free(&tpl);
    tokenizer_free(tok);
    cJSON_Delete(fx);
}

static const char *write_tmp(const char *name, const char *text, size_t len);

static void set_item(cJSON *obj, const char *key, const cJSON *value) {
    cJSON *copy = cJSON_Duplicate(value, 1);
    if (cJSON_HasObjectItem(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, copy);
    else cJSON_AddItemToObject(obj, key, copy);
}

/* The tokenizer.json at base with the top-level keys of override replaced ("model.KEY": a key of "model"). */
static Tokenizer *load_overridden(const char *base, const cJSON *override) {
    cJSON *spec = read_json(base), *o;
    cJSON_ArrayForEach(o, override) {
        if (strncmp(o->string, "model.", 6) == 0) set_item(cJSON_GetObjectItem(spec, "model"), o->string + 6, o);
        else set_item(spec, o->string, o);
    }
    char *text = cJSON_PrintUnformatted(spec);
    Tokenizer *t = tokenizer_load_json(write_tmp("tokenizer.json", text, strlen(text)));
    free(text);
    cJSON_Delete(spec);
    return t;
}

/* Small tokenizers with other pre-tokenizers, normalisers and added-token options against HF, each on the
 * first strings of st ({"name", "base", "override", "ids", "decoded"} per variant). */
static void check_variants(const cJSON *fx, const Strings *st) {
    const cJSON *v;
    cJSON_ArrayForEach(v, fx) {
        Tokenizer *t = load_overridden(cJSON_GetObjectItem(v, "base")->valuestring, cJSON_GetObjectItem(v, "override"));
        const cJSON *ids = cJSON_GetObjectItem(v, "ids"), *decoded = cJSON_GetObjectItem(v, "decoded");
        int n = cJSON_GetArraySize(ids), same = 0, dec_ok = 0, shown = 0;
        for (int i = 0; i < n; i++) {
            int32_t *got;
            int m = tokenizer_encode(t, st->s[i], st->len[i], 1, 0, &got);
            if (same_ids(got, m, cJSON_GetArrayItem(ids, i))) same++;
            else if (shown++ < 2) print_mismatch("ids differ", i, st, got, m, cJSON_GetArrayItem(ids, i));
            char key[16], *want = NULL;
            snprintf(key, sizeof key, "%d", i);
            size_t dlen, want_len = st->len[i];
            const cJSON *hx = cJSON_GetObjectItem(decoded, key);
            if (hx) want = from_hex(hx->valuestring, &want_len);
            char *raw = tokenizer_decode(t, got, m, 0, &dlen), *d = utf8_lossy(raw, dlen, &dlen);
            free(raw);
            dec_ok += dlen == want_len && memcmp(d, want ? want : st->s[i], dlen) == 0;
            free(d);
            free(want);
            free(got);
        }
        CHECK(same == n && dec_ok == n, "variant %s: %d/%d identical to HF, decode %d/%d",
              cJSON_GetObjectItem(v, "name")->valuestring, same, n, dec_ok, n);
        tokenizer_free(t);
    }
}

/* A Qwen2-style tokenizer.json with an NFC normalizer against HF (gen_nfc.py), on strings.json plus strings
 * with combining sequences; NFC itself against HF's normalizers.NFC(): with no added tokens, byte-level
 * decode(encode(s)) is the normalised text; and NFC's place in a Sequence of normalisers. */
static void check_nfc(const Strings *common) {
    Strings st;
    cJSON *fx = read_fixture_with_extra(FIXTURES "nfc.json", common, &st), *h;
    const char *path = cJSON_GetObjectItem(fx, "tokenizer")->valuestring;
    Tokenizer *t = tokenizer_load_json(path);
    check_tokenizer_fx("Qwen2 style with NFC", t, fx, "HF tokenizers", &st);
    tokenizer_free(t);

    cJSON *no_added = cJSON_CreateObject();
    cJSON_AddItemToObject(no_added, "added_tokens", cJSON_CreateArray());
    t = load_overridden(path, no_added);
    Strings extra = {st.s + common->n, st.len + common->n, st.n - common->n};
    int i = 0, same = 0, changed = 0;
    cJSON_ArrayForEach(h, cJSON_GetObjectItem(fx, "nfc_hex")) {
        size_t want_len, n;
        char *want = from_hex(h->valuestring, &want_len);
        int32_t *ids;
        int n_ids = tokenizer_encode(t, extra.s[i], extra.len[i], 1, 0, &ids);
        char *got = tokenizer_decode(t, ids, n_ids, 0, &n);
        if (n == want_len && memcmp(got, want, n) == 0) same++;
        else printf("       NFC differs: string %d \"%.60s\" -> \"%.60s\"\n", common->n + i, extra.s[i], got);
        changed += want_len != extra.len[i] || memcmp(want, extra.s[i], want_len) != 0;
        free(got);
        free(ids);
        free(want);
        i++;
    }
    CHECK(same == extra.n && changed > extra.n / 2, "NFC of %d/%d strings == HF normalizers.NFC() (%d changed by it)",
          same, extra.n, changed);
    tokenizer_free(t);
    cJSON_Delete(no_added);
    check_variants(cJSON_GetObjectItem(fx, "variants"), &extra);
    free_extra(&st, common);
    cJSON_Delete(fx);
}

static const char *write_tmp(const char *name, const char *text, size_t len) {
    static char path[sizeof tmpdir + 64];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    write_bytes(path, text, len);
    return path;
}

/* A GGUF with no tensors and one string key. */
static const char *write_gguf(const char *key, const char *value) {
    char buf[512];
    size_t o = 0;
    uint32_t u32;
    uint64_t u64;
#define PUT(x) (memcpy(buf + o, &(x), sizeof(x)), o += sizeof(x))
    memcpy(buf, "GGUF", 4);
    o = 4;
    u32 = 3, PUT(u32);
    u64 = 0, PUT(u64);
    u64 = 1, PUT(u64);
    u64 = strlen(key), PUT(u64);
    memcpy(buf + o, key, strlen(key)), o += strlen(key);
    u32 = GGUF_TYPE_STRING, PUT(u32);
    u64 = strlen(value), PUT(u64);
    memcpy(buf + o, value, strlen(value)), o += strlen(value);
#undef PUT
    return write_tmp("bad.gguf", buf, o);
}

static void check_bad_input(void) {
    EXPECT_FATAL(tokenizer_load_json("/nonexistent/tokenizer.json"), "/nonexistent/tokenizer.json: cannot read",
                 "missing tokenizer.json is fatal, naming the file");
    const char *volatile p = write_tmp("tokenizer.json", "{\"model\": {\"type\": \"BPE\", ", 26);
    EXPECT_FATAL(tokenizer_load_json(p), "not valid JSON", "malformed JSON is fatal");
    p = write_tmp("tokenizer.json", "{\"version\": \"1.0\"}", 18);
    EXPECT_FATAL(tokenizer_load_json(p), "no \"model\"", "tokenizer.json without a model is fatal");
    const char unigram[] = "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", -1.0]]}}";
    p = write_tmp("tokenizer.json", unigram, strlen(unigram));
    EXPECT_FATAL(tokenizer_load_json(p), "unsupported tokenizer model type 'Unigram'", "unknown model type is fatal");
    const char bad_merge[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}";
    p = write_tmp("tokenizer.json", bad_merge, strlen(bad_merge));
    EXPECT_FATAL(tokenizer_load_json(p), "merge 0 ('a' 'b') uses a token not in the vocab",
                 "merge into a token missing from the vocab is fatal");
    const char bad_pre[] =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
        "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}}";
    p = write_tmp("tokenizer.json", bad_pre, strlen(bad_pre));
    EXPECT_FATAL(tokenizer_load_json(p), "regex '(' does not compile", "a broken pre-tokenizer regex is fatal");
    size_t size;
    char *model = read_whole_file(FIXTURES "spm_llama.model", &size);
    p = write_tmp("tokenizer.model", model, 100);
    EXPECT_FATAL(tokenizer_load_spm(p), "tokenizer.model: truncated sentencepiece model",
                 "truncated tokenizer.model is fatal");
    free(model);
    p = write_tmp("tokenizer.model", "{\"model\": 1}", 12);
    EXPECT_FATAL(tokenizer_load_spm(p), "tokenizer.model: not a sentencepiece model",
                 "a JSON file as tokenizer.model is fatal");
    /* one piece "a", then trainer_spec {model_type: UNIGRAM} */
    static const char unigram_pb[] = {0x0a, 0x05, 0x0a, 0x01, 'a', 0x18, 0x01, 0x12, 0x02, 0x18, 0x01};
    p = write_tmp("tokenizer.model", unigram_pb, sizeof unigram_pb);
    EXPECT_FATAL(tokenizer_load_spm(p), "unsupported sentencepiece model type 1", "a Unigram tokenizer.model is fatal");
    EXPECT_FATAL(tokenizer_load_spm("/nonexistent/tokenizer.model"), "/nonexistent/tokenizer.model",
                 "missing tokenizer.model is fatal, naming the file");
    unlink(write_tmp("tokenizer.model", "", 0));

    GGUFFile g;
    gguf_open(&g, write_gguf("tokenizer.ggml.model", "bert"));
    EXPECT_FATAL(tokenizer_load_gguf(&g), "bad.gguf: unsupported tokenizer model 'bert'",
                 "unknown GGUF tokenizer model is fatal");
    gguf_close(&g);
    gguf_open(&g, write_gguf("general.name", "x"));
    EXPECT_FATAL(tokenizer_load_gguf(&g), "bad.gguf: no tokenizer", "GGUF without a tokenizer is fatal");
    gguf_close(&g);
    unlink(write_tmp("tokenizer.json", "", 0));
    unlink(write_tmp("bad.gguf", "", 0));
    rmdir(tmpdir);
}

/* Encoder throughput on ShareGPT text, when the demo data is there. */
static void bench_sharegpt(const char *label, const Tokenizer *t) {
    const char *path = "cache/data/ShareGPT_V3_unfiltered_cleaned_split.json";
    if (!file_exists(path)) {
        printf("       (no %s: ShareGPT throughput not measured)\n", path);
        return;
    }
    ShareGPTReader r;
    sharegpt_open(&r, path);
    Conversation c;
    size_t bytes = 0;
    long tokens = 0;
    double t0 = now_seconds();
    while (bytes < (32u << 20) && sharegpt_next(&r, &c)) {
        for (int i = 0; i < c.n_turns; i++) {
            int32_t *ids;
            tokens += tokenizer_encode(t, c.turns[i].text, c.turns[i].len, 0, 0, &ids);
            bytes += c.turns[i].len;
            free(ids);
        }
        conversation_free(&c);
    }
    sharegpt_close(&r);
    double s = now_seconds() - t0;
    printf("       %s encoder on ShareGPT: %.1f MB, %ld tokens in %.2f s: %.2f MB/s, %.0f tokens/s (1 thread, "
           "incl. JSON parsing)\n",
           label, bytes / 1e6, tokens, s, bytes / 1e6 / s, tokens / s);
}

/* utf8_lossy on cut and ill-formed bytes, beside Python's bytes.decode("utf-8", "replace") (the same rule) */
static void check_utf8_lossy(void) {
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"\xf0\x9f\x8c", "\xef\xbf\xbd"}, /* a character cut at the end */
        {"a\xab"
         "b",
         "a\xef\xbf\xbd"
         "b"},                                                    /* a lone continuation byte */
        {"\xe4\xb8x", "\xef\xbf\xbdx"},                           /* cut in the middle */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate: one each */
        {"\xf0\x9f\x8c\x9f\xf0\x9f", "\xf0\x9f\x8c\x9f\xef\xbf\xbd"},
    };
    int ok = 0, n = (int)(sizeof cases / sizeof *cases);
    for (int i = 0; i < n; i++) {
        size_t len;
        char *got = utf8_lossy(cases[i].in, strlen(cases[i].in), &len);
        ok += len == strlen(cases[i].want) && memcmp(got, cases[i].want, len) == 0;
        free(got);
    }
    CHECK(ok == n, "utf8_lossy: %d/%d ill-formed byte strings replaced as Python's decode(errors=\"replace\")", ok, n);
}

int main(void) {
    Strings st = load_strings();
    printf("%d strings\n", st.n);
    check_utf8_lossy();
    CHECK(st.n >= 1000, "fixture has >= 1000 strings (%d)", st.n);

    double t0 = now_seconds();
    Tokenizer *smol = tokenizer_load_json(FIXTURES "smollm2/tokenizer.json");
    printf("       SmolLM2 tokenizer.json loaded in %.2f s\n", now_seconds() - t0);
    CHECK(tokenizer_kind(smol) == TOKENIZER_BYTE_BPE && tokenizer_vocab_size(smol) == 49152,
          "SmolLM2 tokenizer.json: byte-level BPE, vocab %d", tokenizer_vocab_size(smol));
    check_tokenizer("SmolLM2 (tokenizer.json)", smol, FIXTURES "smollm2.json", "HF tokenizers", &st);
    check_specials(smol);

    GGUFFile g;
    gguf_open(&g, SMOLLM2_GGUF);
    t0 = now_seconds();
    Tokenizer *smol_gguf = tokenizer_load_gguf(&g);
    printf("       SmolLM2 GGUF tokenizer loaded in %.2f s\n", now_seconds() - t0);
    gguf_close(&g);
    int same_vocab = tokenizer_vocab_size(smol_gguf) == tokenizer_vocab_size(smol);
    for (int id = 0; same_vocab && id < tokenizer_vocab_size(smol); id++)
        same_vocab = strcmp(tokenizer_piece(smol, id), tokenizer_piece(smol_gguf, id)) == 0;
    CHECK(same_vocab, "SmolLM2 GGUF and tokenizer.json have the same vocab");
    check_tokenizer("SmolLM2 (GGUF)", smol_gguf, FIXTURES "smollm2_gguf.json",
                    "HF tokenizers with the \"smollm\" pre-tokenizer the GGUF names", &st);
    check_gguf_vs_conversion(smol_gguf, &st);
    check_specials(smol_gguf);
    bench_sharegpt("SmolLM2", smol);
    tokenizer_free(smol_gguf);
    tokenizer_free(smol);

    Tokenizer *l3 = tokenizer_load_json("tests/fixtures/chat/llama3_tokenizer.json");
    CHECK(tokenizer_kind(l3) == TOKENIZER_BYTE_BPE, "llama3_tokenizer.json is byte-level");
    check_tokenizer("Llama-3 style", l3, FIXTURES "llama3.json", "HF tokenizers", &st);
    tokenizer_free(l3);

    gguf_open(&g, FIXTURES "llama3_bpe.gguf");
    l3 = tokenizer_load_gguf(&g);
    gguf_close(&g);
    CHECK(tokenizer_bos_id(l3) == 0 && tokenizer_eos_id(l3) == 4,
          "llama3_bpe.gguf: BOS <|begin_of_text|>, EOS <|eot_id|>");
    check_tokenizer("Llama-3 style GGUF (pre llama-bpe)", l3, FIXTURES "llama3.json", "HF tokenizers", &st);
    tokenizer_free(l3);

    gguf_open(&g, "tests/fixtures/models/tiny_tied/gguf/tiny_tied.F32.gguf"); /* bytes only, no merges */
    Tokenizer *bytes_only = tokenizer_load_gguf(&g);
    gguf_close(&g);
    int32_t *ids;
    int n_ids = tokenizer_encode(bytes_only, st.s[2], st.len[2], 1, 0, &ids);
    size_t dlen;
    char *d = tokenizer_decode(bytes_only, ids, n_ids, 0, &dlen);
    CHECK(n_ids == (int)st.len[2] && dlen == st.len[2] && memcmp(d, st.s[2], dlen) == 0,
          "GGUF byte vocabulary without merges: one token per byte, decoded back (\"%s\")", st.s[2]);
    free(d);
    free(ids);
    tokenizer_free(bytes_only);

    Tokenizer *spm = tokenizer_load_json("tests/fixtures/chat/spm_tokenizer.json");
    CHECK(tokenizer_kind(spm) == TOKENIZER_SPM_BPE && tokenizer_bos_id(spm) == 1 && tokenizer_eos_id(spm) == 2,
          "spm_tokenizer.json: SentencePiece-style BPE, BOS <s> = 1, EOS </s> = 2");
    check_tokenizer("Llama-2 style (byte fallback)", spm, FIXTURES "spm.json", "HF tokenizers", &st);
    bench_sharegpt("Llama-2 style", spm);
    tokenizer_free(spm);

    gguf_open(&g, FIXTURES "spm_llama.gguf");
    Tokenizer *spm_gguf = tokenizer_load_gguf(&g);
    gguf_close(&g);
    CHECK(tokenizer_kind(spm_gguf) == TOKENIZER_SPM_BPE && tokenizer_token_id(spm_gguf, "<0x0A>") >= 0,
          "spm_llama.gguf: SentencePiece BPE with byte tokens, vocab %d", tokenizer_vocab_size(spm_gguf));
    check_tokenizer("Llama-2 GGUF (sentencepiece scores, byte fallback)", spm_gguf, FIXTURES "spm_gguf.json",
                    "sentencepiece", &st);
    tokenizer_free(spm_gguf);
    Tokenizer *spm_model = tokenizer_load_spm(FIXTURES "spm_llama.model");
    CHECK(tokenizer_bos_id(spm_model) == 1 && tokenizer_eos_id(spm_model) == 2, "spm_llama.model: BOS 1, EOS 2");
    check_tokenizer("Llama-2 tokenizer.model", spm_model, FIXTURES "spm_gguf.json", "sentencepiece", &st);
    tokenizer_free(spm_model);

    check_gemma(&st);

    check_chat("tests/fixtures/chat/chatml.json");
    check_chat("tests/fixtures/chat/llama-3.json");
    check_chat("tests/fixtures/chat/vicuna.json");
    check_chat("tests/fixtures/chat/llama-2.json");
    check_chat("tests/fixtures/chat/mistral.json");

    make_tmpdir("/tmp/medusa-tok-XXXXXX");
    cJSON *variants = read_json(FIXTURES "variants.json");
    check_variants(variants, &st);
    cJSON_Delete(variants);
    check_nfc(&st);
    check_bad_input();
    for (int i = 0; i < st.n; i++) free(st.s[i]);
    free(st.s);
    free(st.len);
    return test_summary();
}
