/* What the tokenizer's loaders (tokenizer_hf.c, tokenizer_gguf.c, tokenizer_spm.c) share with its BPE core
 * (tokenizer.c): the Tokenizer itself and the functions that build one. Private to data/. */
#ifndef MEDUSA_TOKENIZER_INTERNAL_H
#define MEDUSA_TOKENIZER_INTERNAL_H

#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define SPACE_MARK "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */

/* GPT-2's pre-tokenizer split (ByteLevel's use_regex, GGUF's "gpt2" family) */
#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

typedef struct {
    int32_t rank, id;
} MergeRule;

typedef struct {
    uint64_t *keys; /* a << 32 | b; UINT64_MAX = empty */
    MergeRule *rules;
    size_t mask;
} PairMap;

typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } SplitBehavior;
typedef enum { STEP_SPLIT, STEP_PREFIX_SPACE, STEP_METASPACE, STEP_WORDS } StepKind;

/* One pre-tokenizer step, applied to every piece the previous steps made. */
typedef struct {
    StepKind kind;
    pcre2_code *re; /* STEP_SPLIT */
    SplitBehavior behavior;
    int invert;
    int prepend; /* STEP_METASPACE: 0 never, 1 always, 2 only at the start of the text */
    int split;   /* STEP_METASPACE: split before each U+2581 */
} PreStep;

typedef enum { NORM_PREPEND, NORM_REPLACE, NORM_STRIP, NORM_NFC } NormKind;
typedef struct {
    NormKind kind;
    char *a, *b; /* prepend: a; replace: a -> b */
    int left, right;
} NormStep;

enum { ATTR_SPECIAL = 1, ATTR_ADDED = 2, ATTR_BYTE = 4 };

typedef struct {
    int id;
    int lstrip, rstrip, single_word;
    /* tokenizers' "normalized": looked for in the normalised text as its content normalised, else in the raw
     * text as the piece itself; match is what is looked for (set by tok_finish) */
    int normalized;
    char *match;
    size_t match_len;
} AddedToken;

struct Tokenizer {
    TokenizerKind kind;
    int n_vocab;
    char **pieces;
    uint32_t *piece_len;
    uint8_t *attr;
    int32_t *vocab_slots; /* open addressing over pieces, -1 = empty */
    size_t vocab_mask;
    PairMap merges;
    int byte_ids[256]; /* byte-level: id of the byte's character; SentencePiece: id of <0xNN> (-1 if none) */
    int unk_id, bos_id, eos_id, add_bos;
    int byte_fallback, fuse_unk, ignore_merges;
    NormStep *norm;
    int n_norm;
    PreStep *steps;
    int n_steps;
    AddedToken *added;
    int n_added, n_added_normalized;
    int *normalized_added;   /* id -> index in added of a "normalized" token (decoded as its match), else -1;
                                NULL when there is none */
    int *added_first[256];   /* per first byte: indices into added, longest first, -1 terminated */
    int strip_decoded_space; /* SentencePiece decoding drops the space the normaliser prepended */
    uint64_t serial;         /* identifies this tokenizer to the per-thread word caches */
};

/* ---- building (tokenizer.c) ---- */

/* A tokenizer of n_vocab empty pieces, no BOS/EOS/unknown token. */
Tokenizer *tok_new(int n_vocab);
void tok_set_piece(Tokenizer *t, int id, const char *s, size_t n);
/* Marks id an added token (special or not): cut out of any text before pre-tokenisation; the entry (valid
 * until the next call) for the loader to set what else it knows. */
AddedToken *tok_add_added(Tokenizer *t, int id, int special, int lstrip, int rstrip, int single_word);
void tok_add_norm(Tokenizer *t, NormStep ns);
PreStep *tok_add_step(Tokenizer *t, StepKind kind);
/* A Split pre-tokenizer step: pattern is a tokenizers (Oniguruma) regex, or a literal string; path names the
 * file in the error when it does not compile. */
void tok_add_split(Tokenizer *t, const char *pattern, int literal, SplitBehavior behavior, int invert,
                   const char *path);
/* Derives the indexes from pieces and attributes; after it, tok_vocab_find works and merges can be added. */
void tok_finish(Tokenizer *t);
/* The id of the piece s[0..n), -1 when absent. */
int tok_vocab_find(const Tokenizer *t, const char *s, size_t n);
/* Room for n merges; tok_merges_add keeps the first (best) rule of a pair, as tokenizers does. */
void tok_merges_init(PairMap *m, size_t n);
void tok_merges_add(PairMap *m, int32_t a, int32_t b, int32_t rank, int32_t id);
/* Pieces with llama.cpp / sentencepiece token types (NULL: all normal). */
Tokenizer *tok_typed_vocab(int n, char *const *pieces, const size_t *lens, const int32_t *types);
/* Makes a typed vocab a SentencePiece BPE whose merges come from the pieces' scores. */
void tok_spm_from_scores(Tokenizer *t, const float *scores, const int32_t *types, int add_prefix);

/* ---- tokenizer_config.json (tokenizer_hf.c) ---- */

/* BOS, EOS and add_bos_token from the tokenizer_config.json beside the tokenizer file, if there is one. */
void tok_config_bos_eos(Tokenizer *t, const char *path);

#endif
