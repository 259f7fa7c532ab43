/* BPE tokenizers as Hugging Face `tokenizers` runs them: added tokens are cut out of the text first (those
 * marked "normalized" only after normalisation), each remaining segment is normalised (NFC by utf8proc),
 * pre-tokenised into pieces (regex splits) and each piece is encoded by rank-ordered BPE merges (the same heap
 * and tie-breaking as tokenizers' Word::merge_all). Byte-level models (GPT-2 / Llama-3 / Qwen2 / SmolLM2) start
 * each piece from its bytes; SentencePiece-style models (Llama-2) start from its characters and fall back to
 * <0xNN> byte tokens. The loaders build a Tokenizer through tokenizer_internal.h: tokenizer_hf.c
 * (tokenizer.json), tokenizer_gguf.c (GGUF metadata) and tokenizer_spm.c (a sentencepiece tokenizer.model). */
#include "tokenizer_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- hashing: vocab (bytes -> id), merges ((id, id) -> rank, id) ---- */

static uint64_t hash_bytes(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
    return h ^ (h >> 29);
}

static uint64_t hash_pair(int32_t a, int32_t b) {
    uint64_t h = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9e3779b97f4a7c15ull;
    return h ^ (h >> 32);
}

static size_t table_size(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

static uint64_t next_serial = 1;

/* ---- GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the 68 others are
 * moved to U+0100.. in byte order ---- */

static int printable_byte(unsigned b) {
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

static unsigned byte_char(unsigned b) {
    if (printable_byte(b)) return b;
    return b <= 0x20 ? 0x100 + b : b <= 0xa0 ? 0x121 + (b - 0x7f) : 0x143; /* 0x00-0x20, 0x7f-0xa0, 0xad */
}

/* The byte a character stands for, -1 when it stands for none. */
static int char_byte(unsigned cp) {
    if (cp < 0x100) return printable_byte(cp) ? (int)cp : -1;
    return cp <= 0x120 ? (int)(cp - 0x100) : cp <= 0x142 ? (int)(0x7f + cp - 0x121) : cp == 0x143 ? 0xad : -1;
}

static int utf8_put(char *out, unsigned cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Length of the UTF-8 character at p (1 for a byte that starts no valid character). */
static int utf8_len(const unsigned char *p, size_t avail) {
    int n = p[0] < 0x80 ? 1 : (p[0] & 0xe0) == 0xc0 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3 : (p[0] & 0xf8) == 0xf0 ? 4 : 1;
    if ((size_t)n > avail) return 1;
    for (int i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80) return 1;
    return n;
}

static unsigned utf8_decode(const unsigned char *p, int n) {
    unsigned cp = n == 1 ? p[0] : p[0] & (0x7fu >> n);
    for (int i = 1; i < n; i++) cp = cp << 6 | (p[i] & 0x3fu);
    return cp;
}

/* Unicode White_Space, which tokenizers' Strip normaliser and added tokens' lstrip/rstrip test. */
static int is_white_space(unsigned cp) {
    return (cp >= 0x9 && cp <= 0xd) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
           cp == 0x3000;
}

/* Byte length of the white-space character at s[i] (0 if there is none); s[i..n) is the text after it. */
static size_t space_at(const char *s, size_t i, size_t n) {
    if (i >= n) return 0;
    int cl = utf8_len((const unsigned char *)s + i, n - i);
    return is_white_space(utf8_decode((const unsigned char *)s + i, cl)) ? (size_t)cl : 0;
}

/* Byte length of the white-space character that ends at s[i], within s[from..i) (0 if there is none). */
static size_t space_before(const char *s, size_t from, size_t i) {
    size_t start = i;
    while (start > from && i - start < 4 && ((unsigned char)s[start - 1] & 0xc0) == 0x80) start--;
    if (start > from) start--;
    if (start == i || (size_t)utf8_len((const unsigned char *)s + start, i - start) != i - start) return 0;
    return space_at(s, start, i);
}

/* ---- vocab map ---- */

int tok_vocab_find(const Tokenizer *t, const char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        int id = t->vocab_slots[i];
        if (id < 0) return -1;
        if (t->piece_len[id] == n && memcmp(t->pieces[id], s, n) == 0) return id;
    }
}

/* Indexes every piece; the first id of a piece wins, except that added tokens take over their text. */
static void vocab_index(Tokenizer *t) {
    t->vocab_mask = table_size((size_t)t->n_vocab) - 1;
    t->vocab_slots = xmalloc((t->vocab_mask + 1) * sizeof *t->vocab_slots);
    memset(t->vocab_slots, 0xff, (t->vocab_mask + 1) * sizeof *t->vocab_slots);
    for (int pass = 0; pass < 2; pass++)
        for (int id = 0; id < t->n_vocab; id++) {
            if (t->piece_len[id] == 0 || !(t->attr[id] & ATTR_ADDED) != !pass) continue;
            size_t i = hash_bytes(t->pieces[id], t->piece_len[id]) & t->vocab_mask;
            for (; t->vocab_slots[i] >= 0; i = (i + 1) & t->vocab_mask) {
                int other = t->vocab_slots[i];
                if (t->piece_len[other] == t->piece_len[id] &&
                    memcmp(t->pieces[other], t->pieces[id], t->piece_len[id]) == 0)
                    break;
            }
            if (t->vocab_slots[i] < 0 || pass == 1) t->vocab_slots[i] = id;
        }
}

/* ---- merges map ---- */

void tok_merges_init(PairMap *m, size_t n) {
    m->mask = table_size(n) - 1;
    m->keys = xmalloc((m->mask + 1) * sizeof *m->keys);
    m->rules = xmalloc((m->mask + 1) * sizeof *m->rules);
    memset(m->keys, 0xff, (m->mask + 1) * sizeof *m->keys);
}

/* Keeps the first (best) rule of a pair, as tokenizers does. */
void tok_merges_add(PairMap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = hash_pair(a, b) & m->mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
    if (m->keys[i] == key) return;
    m->keys[i] = key;
    m->rules[i] = (MergeRule){rank, id};
}

static const MergeRule *merges_find(const PairMap *m, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = hash_pair(a, b) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == key) return &m->rules[i];
        if (m->keys[i] == UINT64_MAX) return NULL;
    }
}

/* ---- building ---- */

Tokenizer *tok_new(int n_vocab) {
    Tokenizer *t = xcalloc(1, sizeof *t);
    t->n_vocab = n_vocab;
    t->pieces = xcalloc((size_t)n_vocab, sizeof *t->pieces);
    t->piece_len = xcalloc((size_t)n_vocab, sizeof *t->piece_len);
    t->attr = xcalloc((size_t)n_vocab, 1);
    t->unk_id = t->bos_id = t->eos_id = -1;
    t->serial = __atomic_fetch_add(&next_serial, 1, __ATOMIC_RELAXED);
    return t;
}

void tok_set_piece(Tokenizer *t, int id, const char *s, size_t n) {
    free(t->pieces[id]);
    t->pieces[id] = xmalloc(n + 1);
    memcpy(t->pieces[id], s, n);
    t->pieces[id][n] = '\0';
    t->piece_len[id] = (uint32_t)n;
}

static char *bytes_dup(const char *s, size_t n) {
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

AddedToken *tok_add_added(Tokenizer *t, int id, int special, int lstrip, int rstrip, int single_word) {
    t->attr[id] |= ATTR_ADDED | (special ? ATTR_SPECIAL : 0);
    t->added = xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof *t->added);
    t->added[t->n_added] = (AddedToken){id, lstrip, rstrip, single_word, 0, NULL, 0};
    return &t->added[t->n_added++];
}

void tok_add_norm(Tokenizer *t, NormStep ns) {
    t->norm = xrealloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *t->norm);
    t->norm[t->n_norm++] = ns;
}

static int cmp_added_len_desc(const void *a, const void *b, void *ctx) {
    const Tokenizer *t = ctx;
    size_t la = t->added[*(const int *)a].match_len, lb = t->added[*(const int *)b].match_len;
    return lb != la ? (lb > la ? 1 : -1) : *(const int *)a - *(const int *)b;
}

static char *normalized_copy(const Tokenizer *t, const char *s, size_t *n);

/* Whether some piece has U+2581 after another character: without one, no SentencePiece merge can join
 * the text before a word's leading U+2581 to the word, so words can be encoded (and cached) one by one. */
static int merges_cross_words(const Tokenizer *t) {
    for (int id = 0; id < t->n_vocab; id++) {
        const char *p = t->pieces[id], *end = p + t->piece_len[id];
        for (const char *m = p; (m = memmem(m, (size_t)(end - m), SPACE_MARK, 3)) != NULL; m += 3)
            if (m > p && (m - p < 3 || memcmp(m - 3, SPACE_MARK, 3) != 0)) return 1;
    }
    return 0;
}

/* Byte tables, vocab index, added-token index, word splitting: everything derived from pieces and
 * attributes. */
void tok_finish(Tokenizer *t) {
    for (int id = 0; id < t->n_vocab; id++)
        if (!t->pieces[id]) tok_set_piece(t, id, "", 0); /* an id the vocab skips spells nothing */
    vocab_index(t);
    if (t->kind == TOKENIZER_SPM_BPE && !merges_cross_words(t)) tok_add_step(t, STEP_WORDS);
    for (int b = 0; b < 256; b++) {
        char buf[8];
        int n = t->kind == TOKENIZER_BYTE_BPE ? utf8_put(buf, byte_char((unsigned)b))
                                              : snprintf(buf, sizeof buf, "<0x%02X>", b);
        t->byte_ids[b] = tok_vocab_find(t, buf, (size_t)n);
        if (t->kind == TOKENIZER_SPM_BPE && t->byte_ids[b] >= 0) t->attr[t->byte_ids[b]] |= ATTR_BYTE;
    }
    /* tokenizers normalises a "normalized" token's content as it does the text it is looked for in */
    t->n_added_normalized = 0;
    free(t->normalized_added);
    t->normalized_added = NULL;
    for (int i = 0; i < t->n_added; i++) {
        AddedToken *a = &t->added[i];
        free(a->match);
        a->match_len = t->piece_len[a->id];
        if (!a->normalized) {
            a->match = bytes_dup(t->pieces[a->id], a->match_len);
            continue;
        }
        a->match = normalized_copy(t, t->pieces[a->id], &a->match_len);
        if (!t->n_added_normalized++) {
            t->normalized_added = xmalloc((size_t)t->n_vocab * sizeof *t->normalized_added);
            for (int id = 0; id < t->n_vocab; id++) t->normalized_added[id] = -1;
        }
        t->normalized_added[a->id] = i; /* tokenizers decodes it as it is found: normalised */
    }
    for (int b = 0; b < 256; b++) {
        int n = 0, *list = xmalloc(((size_t)t->n_added + 1) * sizeof *list);
        for (int i = 0; i < t->n_added; i++)
            if (t->added[i].match_len > 0 && (unsigned char)t->added[i].match[0] == b) list[n++] = i;
        qsort_r(list, (size_t)n, sizeof *list, cmp_added_len_desc, t);
        list[n] = -1;
        if (n == 0) {
            free(list);
            list = NULL;
        }
        t->added_first[b] = list;
    }
}

/* ---- regex pre-tokenization ---- */

/* tokenizers' regexes (Oniguruma) read \s as Unicode White_Space, which has U+0085 where PCRE2's \s
 * (Unicode Z + ASCII space) does not: \s and \S are spelled out. */
#define WHITE_SPACE "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

static pcre2_code *compile_regex(const char *pattern, int literal, const char *path) {
    size_t n = strlen(pattern), cap = 8 * n + 64, o = 0;
    char *re = xmalloc(cap);
    int in_class = 0;
    for (size_t i = 0; i < n && !literal; i++) {
        char c = pattern[i];
        if (c == '\\' && i + 1 < n) {
            char d = pattern[++i];
            if (d == 's' && in_class) o += (size_t)sprintf(re + o, "%s", WHITE_SPACE);
            else if (d == 's') o += (size_t)sprintf(re + o, "[%s]", WHITE_SPACE);
            else if (d == 'S' && !in_class) o += (size_t)sprintf(re + o, "[^%s]", WHITE_SPACE);
            else {
                re[o++] = c;
                re[o++] = d;
            }
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            re[o++] = c;
            if (i + 1 < n && pattern[i + 1] == '^') re[o++] = pattern[++i];
            if (i + 1 < n && pattern[i + 1] == ']') re[o++] = pattern[++i]; /* a literal ] first */
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        re[o++] = c;
    }
    if (literal) {
        memcpy(re, pattern, n);
        o = n;
    }
    int err;
    PCRE2_SIZE at;
    uint32_t opts =
        literal ? PCRE2_LITERAL | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF : PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)re, o, opts, &err, &at, NULL);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fatal("%s: pre-tokenizer regex '%s' does not compile: %s at %zu", path, pattern, (char *)msg, (size_t)at);
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* falls back to the interpreter where JIT is unavailable */
    free(re);
    return code;
}

PreStep *tok_add_step(Tokenizer *t, StepKind kind) {
    t->steps = xrealloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *t->steps);
    PreStep *s = &t->steps[t->n_steps++];
    memset(s, 0, sizeof *s);
    s->kind = kind;
    return s;
}

void tok_add_split(Tokenizer *t, const char *pattern, int literal, SplitBehavior behavior, int invert,
                   const char *path) {
    PreStep *s = tok_add_step(t, STEP_SPLIT);
    s->re = compile_regex(pattern, literal, path);
    s->behavior = behavior;
    s->invert = invert;
}

/* ---- per-thread scratch: growable buffers, regex match data, word cache ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    size_t *ends; /* piece i is buf[ends[i-1] .. ends[i]) */
    int n, cap_n;
} Pieces;

typedef struct {
    int32_t *v;
    int n, cap;
} IdVec;

typedef struct {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;
} CacheEntry;

#define CACHE_MAX_KEY 255
#define CACHE_MAX_ENTRIES (1u << 20) /* then the cache starts over */
#define CACHE_MAX_BYTES (64u << 20)

typedef struct {
    uint64_t serial; /* tokenizer the cache belongs to */
    CacheEntry *slots;
    size_t mask, used;
    char *keys;
    size_t keys_len, keys_cap;
    int32_t *ids;
    size_t ids_len, ids_cap;
} WordCache;

typedef struct {
    Pieces a, b;
    char *norm[2]; /* normaliser output, ping-pong */
    size_t norm_cap[2];
    char *seg; /* a normalised segment kept while the added tokens found in it are cut out */
    size_t seg_cap;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    /* BPE word */
    int32_t *sym, *prev, *next, *len;
    int cap_sym;
    struct HeapItem *heap;
    int cap_heap;
    char *word;
    size_t cap_word;
    WordCache cache;
} Scratch;

static _Thread_local Scratch *scratch;

static void *grow(void *p, size_t need, size_t *cap, size_t elem) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    *cap = c;
    return xrealloc(p, c * elem);
}

static void idvec_push(IdVec *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        v->v = xrealloc(v->v, (size_t)v->cap * sizeof *v->v);
    }
    v->v[v->n++] = id;
}

static void pieces_clear(Pieces *p) {
    p->len = 0;
    p->n = 0;
}

/* A new piece; an empty one can be extended later and is skipped when the pieces are used. */
static void pieces_add(Pieces *p, const char *s, size_t n) {
    p->buf = grow(p->buf, p->len + n, &p->cap, 1);
    memcpy(p->buf + p->len, s, n);
    p->len += n;
    if (p->n == p->cap_n) {
        p->cap_n = p->cap_n ? 2 * p->cap_n : 64;
        p->ends = xrealloc(p->ends, (size_t)p->cap_n * sizeof *p->ends);
    }
    p->ends[p->n++] = p->len;
}

/* Appends to the last piece (or starts one). */
static void pieces_extend(Pieces *p, const char *s, size_t n) {
    if (p->n == 0) {
        pieces_add(p, s, n);
        return;
    }
    p->buf = grow(p->buf, p->len + n, &p->cap, 1);
    memcpy(p->buf + p->len, s, n);
    p->len += n;
    p->ends[p->n - 1] = p->len;
}

static Scratch *get_scratch(void) {
    if (!scratch) {
        scratch = xcalloc(1, sizeof *scratch);
        scratch->md = pcre2_match_data_create(1, NULL);
        scratch->mctx = pcre2_match_context_create(NULL);
        scratch->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
        pcre2_jit_stack_assign(scratch->mctx, NULL, scratch->jit);
    }
    return scratch;
}

/* Splits piece s[0..n) by the step's regex, as tokenizers' Split pre-tokenizer does with its behaviour.
 * Matches are found as tokenizers' Oniguruma iterator finds them: an empty match cuts the text too,
 * unless it comes right at the end of the previous match. */
static void split_piece(const PreStep *st, Scratch *sc, const char *s, size_t n, Pieces *out) {
    size_t pos = 0, last = 0, last_match = SIZE_MAX;
    int prev_match = 0, first = 1; /* whether the previous part was a match; no part emitted yet */
    for (;;) {
        size_t ms = n, me = n;
        int rc = pos <= n ? pcre2_match(st->re, (PCRE2_SPTR)s, n, pos, 0, sc->md, sc->mctx) : PCRE2_ERROR_NOMATCH;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
            ms = ov[0];
            me = ov[1];
            pos = ms < me ? me : me < n ? me + (size_t)utf8_len((const unsigned char *)s + me, n - me) : n + 1;
            if (ms == me && me == last_match) continue;
            last_match = me;
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            fatal("tokenizer: regex match failed (PCRE2 error %d)", rc);
        }
        /* the parts: the gap [last, ms), then the match [ms, me) (which may be empty) */
        for (int part = 0; part < (rc >= 0 ? 2 : 1); part++) {
            size_t a = part == 0 ? last : ms, b = part == 0 ? ms : me;
            if (part == 0 && b == a) continue;
            int is_match = (part == 1) != (st->invert != 0);
            switch (st->behavior) {
            case SPLIT_REMOVED:
                if (!is_match) pieces_add(out, s + a, b - a);
                break;
            case SPLIT_ISOLATED:
                pieces_add(out, s + a, b - a);
                break;
            case SPLIT_MERGED_PREV:
                if (is_match && !prev_match && !first) pieces_extend(out, s + a, b - a);
                else pieces_add(out, s + a, b - a);
                break;
            case SPLIT_MERGED_NEXT: /* a match joins what follows it unless that is a match too */
                if (!first && prev_match && !is_match) pieces_extend(out, s + a, b - a);
                else pieces_add(out, s + a, b - a);
                break;
            case SPLIT_CONTIGUOUS:
                if (!first && is_match == prev_match) pieces_extend(out, s + a, b - a);
                else pieces_add(out, s + a, b - a);
                break;
            }
            prev_match = is_match;
            first = 0;
        }
        if (rc < 0) break;
        last = me;
    }
}

/* ---- normalisation and the other per-piece steps ---- */

static void put_bytes(char **out, size_t *cap, size_t *o, const void *s, size_t n) {
    *out = grow(*out, *o + n, cap, 1);
    memcpy(*out + *o, s, n);
    *o += n;
}

/* NFC of s[0..len) appended to *out: utf8proc composes each run of well-formed UTF-8; an ill-formed byte is
 * copied as it is (tokenizers only ever sees valid text) and, like any boundary, nothing composes across it. */
static void nfc_span(const char *s, size_t len, char **out, size_t *cap, size_t *o) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    for (size_t i = 0; i < len;) {
        size_t run = i;
        utf8proc_int32_t c;
        utf8proc_ssize_t k;
        while (run < len && (k = utf8proc_iterate(p + run, (utf8proc_ssize_t)(len - run), &c)) > 0) run += (size_t)k;
        if (run > i) {
            utf8proc_uint8_t *d;
            utf8proc_ssize_t m =
                utf8proc_map(p + i, (utf8proc_ssize_t)(run - i), &d, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (m < 0) fatal("NFC normalisation of %zu bytes failed: %s", run - i, utf8proc_errmsg(m));
            put_bytes(out, cap, o, d, (size_t)m);
            free(d);
        }
        if (run < len) put_bytes(out, cap, o, s + run++, 1);
        i = run;
    }
}

/* Characters below U+0300 (lead bytes below 0xCC) are all NFC and none composes with the one before it, so
 * text of them alone is left as it is, and any text can be cut before each (UAX #15's boundaries): only the
 * spans from the character before one at or above U+0300 to the next such cut go through utf8proc. */
static int below_u0300(unsigned char b) { return b < 0x80 || (b >= 0xC2 && b < 0xCC); }

static int nfc_may_change(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0xCC) return 1;
    return 0;
}

/* Unicode NFC of s[0..len) into *out (capacity *cap); returns its length. */
static size_t nfc(const char *s, size_t len, char **out, size_t *cap) {
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k = i;
        while (k < len && (unsigned char)s[k] < 0xCC) k++;
        size_t start = k; /* the starter the marks at k may compose with */
        if (k > i && k < len)
            for (start = k - 1; start > i && (s[start] & 0xC0) == 0x80;) start--;
        size_t end = k;
        while (end < len && !below_u0300((unsigned char)s[end])) end++;
        put_bytes(out, cap, &o, s + i, start - i);
        nfc_span(s + start, end - start, out, cap, &o);
        i = end;
    }
    return o;
}

/* Runs the normalisers over s[0..n); returns the result (s itself when there are none). */
static const char *normalize(const Tokenizer *t, Scratch *sc, const char *s, size_t *n) {
    int w = 0;
    for (int k = 0; k < t->n_norm; k++) {
        const NormStep *ns = &t->norm[k];
        size_t len = *n, o = 0;
        char *out = NULL;
        switch (ns->kind) {
        case NORM_PREPEND: {
            if (len == 0) continue;
            size_t la = strlen(ns->a);
            out = sc->norm[w] = grow(sc->norm[w], la + len, &sc->norm_cap[w], 1);
            memcpy(out, ns->a, la);
            memcpy(out + la, s, len);
            o = la + len;
            break;
        }
        case NORM_REPLACE: {
            size_t la = strlen(ns->a), lb = strlen(ns->b);
            out = sc->norm[w] = grow(sc->norm[w], len * (lb > la ? lb : 1) + 1, &sc->norm_cap[w], 1);
            for (size_t i = 0; i < len;) {
                const char *hit = memmem(s + i, len - i, ns->a, la);
                size_t j = hit ? (size_t)(hit - s) : len;
                memcpy(out + o, s + i, j - i);
                o += j - i;
                if (!hit) break;
                memcpy(out + o, ns->b, lb);
                o += lb;
                i = j + la;
            }
            break;
        }
        case NORM_STRIP: {
            size_t a = 0, b = len;
            for (size_t k; ns->left && (k = space_at(s, a, b)) > 0;) a += k;
            for (size_t k; ns->right && (k = space_before(s, a, b)) > 0;) b -= k;
            out = sc->norm[w] = grow(sc->norm[w], b - a + 1, &sc->norm_cap[w], 1);
            memcpy(out, s + a, b - a);
            o = b - a;
            break;
        }
        case NORM_NFC:
            if (!nfc_may_change(s, len)) continue;
            o = nfc(s, len, &sc->norm[w], &sc->norm_cap[w]);
            out = sc->norm[w];
            break;
        }
        s = out;
        *n = o;
        w ^= 1;
    }
    return s;
}

static char *normalized_copy(const Tokenizer *t, const char *s, size_t *n) {
    const char *r = normalize(t, get_scratch(), s, n);
    return bytes_dup(r, *n);
}

/* SentencePiece's Metaspace: spaces become U+2581, one is prepended, and the piece is cut before each. */
static void metaspace_piece(const PreStep *st, Scratch *sc, const char *s, size_t n, int at_start, Pieces *out) {
    size_t need = 3 * n + 3, o = 0;
    char *buf = sc->norm[0] = grow(sc->norm[0], need, &sc->norm_cap[0], 1);
    int starts_marked = n >= 3 && memcmp(s, SPACE_MARK, 3) == 0;
    if (((st->prepend == 1) || (st->prepend == 2 && at_start)) && !starts_marked && !(n > 0 && s[0] == ' ')) {
        memcpy(buf, SPACE_MARK, 3);
        o = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(buf + o, SPACE_MARK, 3);
            o += 3;
        } else {
            buf[o++] = s[i];
        }
    }
    if (!st->split) {
        pieces_add(out, buf, o);
        return;
    }
    size_t start = 0;
    for (size_t i = 1; i + 3 <= o; i++)
        if (memcmp(buf + i, SPACE_MARK, 3) == 0) {
            pieces_add(out, buf + start, i - start);
            start = i;
        }
    pieces_add(out, buf + start, o - start);
}

/* Cuts a piece before each U+2581 that follows another character (see merges_cross_words). */
static void words_piece(const char *s, size_t n, Pieces *out) {
    size_t start = 0;
    for (const char *m = s; (m = memmem(m, n - (size_t)(m - s), SPACE_MARK, 3)) != NULL; m += 3) {
        size_t i = (size_t)(m - s);
        if (i > start && (i - start < 3 || memcmp(m - 3, SPACE_MARK, 3) != 0)) {
            pieces_add(out, s + start, i - start);
            start = i;
        }
    }
    pieces_add(out, s + start, n - start);
}

/* ---- BPE on one piece ---- */

struct HeapItem {
    int32_t rank, pos, id;
};

static int heap_less(const struct HeapItem *a, const struct HeapItem *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(Scratch *sc, int *n, struct HeapItem it) {
    if (*n == sc->cap_heap) {
        sc->cap_heap = sc->cap_heap ? 2 * sc->cap_heap : 256;
        sc->heap = xrealloc(sc->heap, (size_t)sc->cap_heap * sizeof *sc->heap);
    }
    struct HeapItem *h = sc->heap;
    int i = (*n)++;
    while (i > 0 && heap_less(&it, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = it;
}

static struct HeapItem heap_pop(Scratch *sc, int *n) {
    struct HeapItem *h = sc->heap, top = h[0], last = h[--*n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

static void ensure_symbols(Scratch *sc, size_t n) {
    if ((int)n <= sc->cap_sym) return;
    size_t cap = sc->cap_sym ? (size_t)sc->cap_sym : 64;
    while (cap < n) cap *= 2;
    sc->cap_sym = (int)cap;
    sc->sym = xrealloc(sc->sym, cap * sizeof *sc->sym);
    sc->prev = xrealloc(sc->prev, cap * sizeof *sc->prev);
    sc->next = xrealloc(sc->next, cap * sizeof *sc->next);
    sc->len = xrealloc(sc->len, cap * sizeof *sc->len);
}

/* The piece's starting symbols: its bytes (byte-level) or characters, with byte fallback and unknowns
 * as tokenizers' BPE::merge_word makes them. Returns the number of symbols. */
static int initial_symbols(const Tokenizer *t, Scratch *sc, const char *s, size_t n) {
    ensure_symbols(sc, n + 1);
    int m = 0, unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = t->kind == TOKENIZER_BYTE_BPE ? 1 : (size_t)utf8_len((const unsigned char *)s + i, n - i);
        int id =
            cl == 1 && t->kind == TOKENIZER_BYTE_BPE ? t->byte_ids[(unsigned char)s[i]] : tok_vocab_find(t, s + i, cl);
        int fallback = 0;
        if (id < 0 && t->byte_fallback && t->kind == TOKENIZER_SPM_BPE) {
            fallback = 1;
            for (size_t k = 0; k < cl; k++) fallback &= t->byte_ids[(unsigned char)s[i + k]] >= 0;
        }
        if (id >= 0 || fallback) {
            if (unk_len) {
                sc->sym[m] = t->unk_id;
                sc->len[m++] = unk_len;
                unk_len = 0;
            }
            if (id >= 0) {
                sc->sym[m] = id;
                sc->len[m++] = (int32_t)cl;
            } else {
                for (size_t k = 0; k < cl; k++) {
                    sc->sym[m] = t->byte_ids[(unsigned char)s[i + k]];
                    sc->len[m++] = 1;
                }
            }
        } else if (t->unk_id >= 0) {
            if (unk_len && !t->fuse_unk) {
                sc->sym[m] = t->unk_id;
                sc->len[m++] = unk_len;
                unk_len = 0;
            }
            unk_len += (int)cl;
        } /* no unknown token: the character is dropped, as tokenizers does */
        i += cl;
    }
    if (unk_len) {
        sc->sym[m] = t->unk_id;
        sc->len[m++] = unk_len;
    }
    return m;
}

/* tokenizers' Word::merge_all: always apply the lowest-ranked merge, leftmost first. */
static void bpe_piece(const Tokenizer *t, Scratch *sc, const char *s, size_t n, IdVec *out) {
    if (t->ignore_merges) {
        int id;
        if (t->kind == TOKENIZER_BYTE_BPE) {
            sc->word = grow(sc->word, 2 * n, &sc->cap_word, 1);
            size_t o = 0;
            for (size_t i = 0; i < n; i++) o += (size_t)utf8_put(sc->word + o, byte_char((unsigned char)s[i]));
            id = tok_vocab_find(t, sc->word, o);
        } else {
            id = tok_vocab_find(t, s, n);
        }
        if (id >= 0) {
            idvec_push(out, id);
            return;
        }
    }
    int m = initial_symbols(t, sc, s, n), nh = 0;
    int32_t *sym = sc->sym, *prev = sc->prev, *next = sc->next, *len = sc->len;
    for (int i = 0; i < m; i++) {
        prev[i] = i - 1;
        next[i] = i + 1 < m ? i + 1 : -1;
    }
    for (int i = 0; i + 1 < m; i++) {
        const MergeRule *r = merges_find(&t->merges, sym[i], sym[i + 1]);
        if (r) heap_push(sc, &nh, (struct HeapItem){r->rank, i, r->id});
    }
    while (nh > 0) {
        struct HeapItem top = heap_pop(sc, &nh);
        int p = top.pos, q = next[p];
        if (len[p] == 0 || q < 0) continue;
        const MergeRule *r = merges_find(&t->merges, sym[p], sym[q]);
        if (!r || r->id != top.id) continue; /* stale */
        sym[p] = top.id;
        len[p] += len[q];
        len[q] = 0;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        if (prev[p] >= 0 && (r = merges_find(&t->merges, sym[prev[p]], sym[p])))
            heap_push(sc, &nh, (struct HeapItem){r->rank, prev[p], r->id});
        if (next[p] >= 0 && (r = merges_find(&t->merges, sym[p], sym[next[p]])))
            heap_push(sc, &nh, (struct HeapItem){r->rank, p, r->id});
    }
    for (int i = 0; i < m && i >= 0; i = next[i]) idvec_push(out, sym[i]);
}

/* ---- the per-thread word cache: piece bytes -> ids ---- */

static void cache_reset(WordCache *c, uint64_t serial) {
    c->serial = serial;
    if (!c->slots) {
        c->mask = (1u << 14) - 1;
        c->slots = xmalloc((c->mask + 1) * sizeof *c->slots);
    }
    for (size_t i = 0; i <= c->mask; i++) c->slots[i].n_ids = 0;
    c->used = c->keys_len = c->ids_len = 0;
}

static CacheEntry *cache_slot(WordCache *c, uint64_t h, const char *s, size_t n) {
    for (size_t i = h & c->mask;; i = (i + 1) & c->mask) {
        CacheEntry *e = &c->slots[i];
        if (e->n_ids == 0 || (e->hash == h && e->key_len == n && memcmp(c->keys + e->key_off, s, n) == 0)) return e;
    }
}

static void cache_grow(WordCache *c) {
    CacheEntry *old = c->slots;
    size_t old_n = c->mask + 1;
    c->mask = 2 * old_n - 1;
    c->slots = xcalloc(c->mask + 1, sizeof *c->slots);
    for (size_t i = 0; i < old_n; i++)
        if (old[i].n_ids) {
            size_t j = old[i].hash & c->mask;
            while (c->slots[j].n_ids) j = (j + 1) & c->mask;
            c->slots[j] = old[i];
        }
    free(old);
}

static void encode_piece(const Tokenizer *t, Scratch *sc, const char *s, size_t n, IdVec *out) {
    WordCache *c = &sc->cache;
    if (n > CACHE_MAX_KEY) {
        bpe_piece(t, sc, s, n, out);
        return;
    }
    if (c->serial != t->serial) cache_reset(c, t->serial);
    uint64_t h = hash_bytes(s, n);
    CacheEntry *e = cache_slot(c, h, s, n);
    if (e->n_ids) {
        for (int i = 0; i < e->n_ids; i++) idvec_push(out, c->ids[e->ids_off + i]);
        return;
    }
    int start = out->n;
    bpe_piece(t, sc, s, n, out);
    int k = out->n - start;
    if (k == 0 || k > UINT16_MAX) return;
    if (c->used >= CACHE_MAX_ENTRIES || c->keys_len + n > CACHE_MAX_BYTES) {
        cache_reset(c, t->serial);
        e = cache_slot(c, h, s, n);
    } else if (2 * (c->used + 1) > c->mask + 1) {
        cache_grow(c);
        e = cache_slot(c, h, s, n);
    }
    c->keys = grow(c->keys, c->keys_len + n, &c->keys_cap, 1);
    c->ids = grow(c->ids, c->ids_len + (size_t)k, &c->ids_cap, sizeof *c->ids);
    memcpy(c->keys + c->keys_len, s, n);
    memcpy(c->ids + c->ids_len, out->v + start, (size_t)k * sizeof *c->ids);
    *e = (CacheEntry){h, (uint32_t)c->keys_len, (uint32_t)c->ids_len, (uint16_t)n, (uint16_t)k};
    c->keys_len += n;
    c->ids_len += (size_t)k;
    c->used++;
}

/* ---- encoding ---- */

/* Pre-tokenises normalised text with no added tokens in it, then encodes its pieces. */
static void encode_normalized(const Tokenizer *t, Scratch *sc, const char *s, size_t n, int at_start, IdVec *out) {
    if (n == 0) return;
    Pieces *in = &sc->a, *next = &sc->b;
    pieces_clear(in);
    pieces_add(in, s, n);
    for (int k = 0; k < t->n_steps; k++) {
        const PreStep *st = &t->steps[k];
        pieces_clear(next);
        for (int i = 0; i < in->n; i++) {
            size_t a = i ? in->ends[i - 1] : 0, len = in->ends[i] - a;
            const char *p = in->buf + a;
            if (len == 0) continue;
            switch (st->kind) {
            case STEP_SPLIT:
                split_piece(st, sc, p, len, next);
                break;
            case STEP_PREFIX_SPACE:
                if (p[0] == ' ') {
                    pieces_add(next, p, len);
                } else {
                    pieces_add(next, " ", 1);
                    pieces_extend(next, p, len);
                }
                break;
            case STEP_METASPACE:
                metaspace_piece(st, sc, p, len, at_start && i == 0, next);
                break;
            case STEP_WORDS:
                words_piece(p, len, next);
                break;
            }
        }
        Pieces tmp = *in;
        *in = *next;
        *next = tmp;
    }
    for (int i = 0; i < in->n; i++) {
        size_t a = i ? in->ends[i - 1] : 0;
        if (in->ends[i] > a) encode_piece(t, sc, in->buf + a, in->ends[i] - a, out);
    }
}

static int is_word_byte(unsigned char c) {
    return c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/* The leftmost-longest added token in text[from..len) among those found in normalised text (normalized)
 * or in raw text: its index in t->added and its span, widened over the whitespace it strips. -1 when none. */
static int find_added(const Tokenizer *t, const char *text, size_t len, size_t from, int parse_special, int normalized,
                      size_t *start, size_t *end) {
    for (size_t i = from; i < len; i++) {
        const int *list = t->added_first[(unsigned char)text[i]];
        if (!list) continue;
        for (; *list >= 0; list++) {
            const AddedToken *a = &t->added[*list];
            size_t n = a->match_len;
            if (a->normalized != normalized || (!parse_special && (t->attr[a->id] & ATTR_SPECIAL))) continue;
            if (n > len - i || memcmp(text + i, a->match, n) != 0) continue;
            if (a->single_word && ((i > 0 && is_word_byte((unsigned char)text[i - 1])) ||
                                   (i + n < len && is_word_byte((unsigned char)text[i + n]))))
                continue;
            size_t s = i, e = i + n;
            for (size_t k; a->lstrip && (k = space_before(text, from, s)) > 0;) s -= k;
            for (size_t k; a->rstrip && (k = space_at(text, e, len)) > 0;) e += k;
            *start = s;
            *end = e;
            return *list;
        }
    }
    return -1;
}

/* Cuts text[0..len) at the added tokens of one kind (found in normalised or raw text): each piece between
 * them goes to encode_normalized, or is normalised first and cut at the other kind. at_start: text begins
 * the input. */
static void encode_cut(const Tokenizer *t, Scratch *sc, const char *text, size_t len, int parse_special, int normalized,
                       int at_start, IdVec *out) {
    int any = normalized ? t->n_added_normalized : t->n_added - t->n_added_normalized;
    for (size_t pos = 0;;) {
        size_t s = len, e = len;
        int k = any ? find_added(t, text, len, pos, parse_special, normalized, &s, &e) : -1;
        if (s > pos) {
            if (normalized) {
                encode_normalized(t, sc, text + pos, s - pos, at_start && pos == 0, out);
            } else {
                size_t n = s - pos;
                const char *seg = normalize(t, sc, text + pos, &n);
                if (t->n_added_normalized) { /* encode_normalized reuses the buffers normalize wrote */
                    sc->seg = grow(sc->seg, n, &sc->seg_cap, 1);
                    seg = memcpy(sc->seg, seg, n);
                }
                encode_cut(t, sc, seg, n, parse_special, 1, at_start && pos == 0, out);
            }
        }
        if (k < 0) break;
        idvec_push(out, t->added[k].id);
        pos = e;
    }
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int parse_special, int add_bos,
                     int32_t **ids_out) {
    Scratch *sc = get_scratch();
    IdVec out = {0};
    if (add_bos && t->add_bos && t->bos_id >= 0) idvec_push(&out, t->bos_id);
    encode_cut(t, sc, text, len, parse_special, 0, 1, &out);
    *ids_out = out.v ? out.v : xmalloc(sizeof(int32_t));
    return out.n;
}

/* ---- decoding ---- */

char *utf8_lossy(const char *s, size_t n, size_t *out_len) {
    const unsigned char *p = (const unsigned char *)s;
    char *out = xmalloc(3 * n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        int need = c < 0x80                 ? 0
                   : c >= 0xc2 && c <= 0xdf ? 1
                   : c >= 0xe0 && c <= 0xef ? 2
                   : c >= 0xf0 && c <= 0xf4 ? 3
                                            : -1;
        size_t k = 1;
        int ok = need >= 0;
        for (int j = 0; ok && j < need; j++, k++) {
            unsigned lo = 0x80, hi = 0xbf;
            if (j == 0 && c == 0xe0) lo = 0xa0;
            if (j == 0 && c == 0xed) hi = 0x9f;
            if (j == 0 && c == 0xf0) lo = 0x90;
            if (j == 0 && c == 0xf4) hi = 0x8f;
            if (i + k >= n || p[i + k] < lo || p[i + k] > hi) ok = 0, k--;
        }
        if (ok) memcpy(out + o, s + i, k), o += k;
        else memcpy(out + o, "\xef\xbf\xbd", 3), o += 3;
        i += k;
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, int n, int skip_special, size_t *len_out) {
    size_t cap = 64, o = 0;
    char *out = xmalloc(cap);
    for (int k = 0; k < n; k++) {
        int id = ids[k];
        if (id < 0 || id >= t->n_vocab) continue; /* e.g. a model's padded vocabulary */
        if (skip_special && (t->attr[id] & ATTR_SPECIAL)) continue;
        const unsigned char *p = (const unsigned char *)t->pieces[id];
        size_t n_piece = t->piece_len[id];
        int na = t->normalized_added ? t->normalized_added[id] : -1;
        if (na >= 0) {
            p = (const unsigned char *)t->added[na].match;
            n_piece = t->added[na].match_len;
        }
        out = grow(out, o + n_piece + 1, &cap, 1);
        if (t->attr[id] & ATTR_BYTE) {
            out[o++] = (char)strtol((const char *)p + 3, NULL, 16);
        } else if (t->kind == TOKENIZER_BYTE_BPE) {
            /* each character stands for one byte; a piece with any other character is written as is */
            size_t o0 = o;
            for (size_t i = 0; i < n_piece;) {
                int cl = utf8_len(p + i, n_piece - i);
                unsigned cp = utf8_decode(p + i, cl);
                int b = char_byte(cp);
                if (b < 0) {
                    memcpy(out + o0, p, n_piece);
                    o = o0 + n_piece;
                    break;
                }
                out[o++] = (char)b;
                i += (size_t)cl;
            }
        } else {
            for (size_t i = 0; i < n_piece; i++) {
                if (i + 3 <= n_piece && memcmp(p + i, SPACE_MARK, 3) == 0) {
                    out[o++] = ' ';
                    i += 2;
                } else {
                    out[o++] = (char)p[i];
                }
            }
        }
    }
    size_t skip = t->strip_decoded_space && o > 0 && out[0] == ' ';
    memmove(out, out + skip, o - skip);
    o -= skip;
    out[o] = '\0';
    if (len_out) *len_out = o;
    return out;
}

/* ---- SentencePiece BPE from scores (GGUF "llama", tokenizer.model) ---- */

/* Descending score, then ascending id. */
static int by_score(const void *a, const void *b, void *ctx) {
    const float *s = ctx;
    float x = s[*(const int *)a], y = s[*(const int *)b];
    return x > y ? -1 : x < y ? 1 : *(const int *)a - *(const int *)b;
}

/* SentencePiece models in GGUF keep scores, not merges: a pair merges into the token that spells both,
 * and the highest-scoring such token goes first (llama.cpp's llm_tokenizer_spm). Ranks are the tokens'
 * places in score order, equal scores sharing a rank; only normal pieces (types) are merge results.
 * Without scores the ranks follow the file's order instead, every piece a merge result and each cut its
 * own rank, longer left part first: transformers' generate_merges as its Gemma conversion calls it
 * (Gemma's scores are all -1000; its merge order is the order of the pieces). */
static void merges_from_scores(Tokenizer *t, const float *scores, const int32_t *types) {
    int n = t->n_vocab, *order = xmalloc((size_t)n * sizeof *order), n_merges = 0;
    for (int i = 0; i < n; i++) order[i] = i;
    int *rank = xmalloc((size_t)n * sizeof *rank);
    float *key = NULL;
    if (scores) {
        key = xmalloc((size_t)n * sizeof *key);
        for (int i = 0; i < n; i++) key[i] = isnan(scores[i]) ? -INFINITY : scores[i];
        qsort_r(order, (size_t)n, sizeof *order, by_score, key);
        for (int i = 0, r = 0; i < n; i++) {
            if (i > 0 && key[order[i]] != key[order[i - 1]]) r = i;
            rank[order[i]] = r;
        }
    }
    for (int id = 0; id < n; id++) n_merges += (int)t->piece_len[id];
    tok_merges_init(&t->merges, (size_t)n_merges);
    int32_t next_rank = 0;
    for (int k = 0; k < n; k++) {
        int id = order[k];
        if (types && types[id] != 1) continue;
        const char *s = t->pieces[id];
        size_t len = t->piece_len[id];
        /* cuts at character boundaries, from the last one back (the longest left part first) */
        for (size_t cut = len; cut > 0;) {
            do cut--;
            while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80);
            if (cut == 0) break;
            int a = tok_vocab_find(t, s, cut), b = tok_vocab_find(t, s + cut, len - cut);
            if (a >= 0 && b >= 0) tok_merges_add(&t->merges, a, b, scores ? rank[id] : next_rank++, id);
        }
    }
    free(rank);
    free(key);
    free(order);
}

/* Pieces with llama.cpp / sentencepiece token types (1 normal, 2 unknown, 3 control, 4 user-defined,
 * 5 unused, 6 byte): unknown and control tokens are special, user-defined ones are cut out of any text. */
Tokenizer *tok_typed_vocab(int n, char *const *pieces, const size_t *lens, const int32_t *types) {
    Tokenizer *t = tok_new(n);
    for (int id = 0; id < n; id++) {
        tok_set_piece(t, id, pieces[id], lens[id]);
        if (types && types[id] >= 2 && types[id] <= 4) tok_add_added(t, id, types[id] != 4, 0, 0, 0);
        if (types && types[id] == 2) t->unk_id = id;
    }
    return t;
}

/* SentencePiece BPE from scores (GGUF "llama", tokenizer.model): spaces are U+2581, one is prepended to
 * each segment of text when add_prefix, unknown characters fall back to bytes. scores and types NULL:
 * merges in file order, as merges_from_scores says. */
void tok_spm_from_scores(Tokenizer *t, const float *scores, const int32_t *types, int add_prefix) {
    t->kind = TOKENIZER_SPM_BPE;
    if (add_prefix) tok_add_norm(t, (NormStep){NORM_PREPEND, xstrdup(SPACE_MARK), NULL, 0, 0});
    tok_add_norm(t, (NormStep){NORM_REPLACE, xstrdup(" "), xstrdup(SPACE_MARK), 0, 0});
    t->byte_fallback = 1;
    t->strip_decoded_space = add_prefix;
    tok_finish(t);
    merges_from_scores(t, scores, types);
}

/* ---- accessors ---- */

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_vocab; i++) free(t->pieces[i]);
    free(t->pieces);
    free(t->piece_len);
    free(t->attr);
    free(t->vocab_slots);
    free(t->merges.keys);
    free(t->merges.rules);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    free(t->norm);
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t->steps);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].match);
    free(t->added);
    free(t->normalized_added);
    for (int b = 0; b < 256; b++) free(t->added_first[b]);
    free(t);
}

TokenizerKind tokenizer_kind(const Tokenizer *t) { return t->kind; }
int tokenizer_vocab_size(const Tokenizer *t) { return t->n_vocab; }
int tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }

int tokenizer_token_id(const Tokenizer *t, const char *piece) { return tok_vocab_find(t, piece, strlen(piece)); }

const char *tokenizer_piece(const Tokenizer *t, int id) {
    return id >= 0 && id < t->n_vocab && t->pieces[id] ? t->pieces[id] : "";
}
