/* Token cache (*.tokens.h5): tokenised, masked conversations, written once by medusa-data and read by
 * medusa-train / medusa-eval.
 *   tokens       int32 [N]    token ids, conversations back to back
 *   loss_mask    uint8 [N]    1 = the token is a trained target (assistant reply or its end-of-turn token)
 *   conv_offsets int64 [C+1]  conversation c is tokens[conv_offsets[c] .. conv_offsets[c+1])
 * and attributes: format_version, tokenizer_fingerprint, vocab_size, template, source, source_checksum,
 * max_len, split, val_fraction, truncated (conversations cut at max_len), skipped_<reason> per SkipReason
 * (counted over the whole source file, so both splits carry the same counts). */
#ifndef MEDUSA_TOKEN_CACHE_H
#define MEDUSA_TOKEN_CACHE_H

#include <stdint.h>

#include "sharegpt.h"
#include "tokenizer.h"

#define TOKEN_CACHE_VERSION 1

typedef struct {
    char tokenizer_fingerprint[32];
    int64_t vocab_size;
    char template_name[32];
    char source[512];
    char source_checksum[32];
    int64_t max_len;
    char split[16];
    double val_fraction;
    int64_t truncated;
    int64_t skipped[SKIP_COUNT];
} TokenCacheMeta;

typedef struct {
    TokenCacheMeta meta;
    int64_t n_tokens, n_convs;
    int32_t *tokens;
    uint8_t *loss_mask;
    int64_t *conv_offsets;
} TokenCache;

/* 64-bit FNV-1a, continued from h (start with HASH64_INIT). */
#define HASH64_INIT 0xcbf29ce484222325ull
uint64_t hash64(const void *data, size_t n, uint64_t h);

/* Identifies a vocabulary (kind, size and every piece) as 16 hex digits, so a cache made with one
 * tokenizer is never trained with another. */
void token_cache_fingerprint(const Tokenizer *tok, char out[32]);

/* Loads and validates a cache: datasets present with the right shapes, offsets starting at 0,
 * increasing and ending at N, mask values 0/1, and every token id below vocab_size (the model's; pass
 * 0 to use the cache's own). Any problem is fatal with the path named. */
void token_cache_load(TokenCache *c, const char *path, int64_t vocab_size);
void token_cache_free(TokenCache *c);
/* Fatal, naming the cache at path, when it was made with another tokenizer than the model's (its tokenizer.json or
 * GGUF vocabulary): a same-sized vocabulary with other pieces passes token_cache_load's vocabulary check but
 * trains on the wrong text. Nothing to check for a model without a tokenizer or a cache without a fingerprint. */
void token_cache_check_model(const TokenCache *c, const char *path, const char *model);

/* Streams conversations into a new cache: written to <path>.tmp and renamed by close, so an
 * interrupted run (including a fatal error) leaves no partial cache behind. */
typedef struct {
    char *path, *tmp_path;
    int64_t file, ds_tokens, ds_mask; /* hid_t */
    int64_t n_tokens, n_convs;
    int64_t *offsets;
    int64_t cap_convs;
    int32_t *buf_tokens; /* pending tokens not yet in the file */
    uint8_t *buf_mask;
    int64_t n_buf;
} TokenCacheWriter;

void token_cache_writer_open(TokenCacheWriter *w, const char *path);
void token_cache_writer_add(TokenCacheWriter *w, const int32_t *ids, const uint8_t *mask, int n);
void token_cache_writer_close(TokenCacheWriter *w, const TokenCacheMeta *meta);

#endif
