/* Tokenizers: byte-level BPE (GPT-2 / Llama-3 / Qwen2 / SmolLM2) and SentencePiece-style BPE with byte
 * fallback (Llama-2 / Vicuna), loaded from tokenizer.json, from GGUF metadata or from a sentencepiece
 * tokenizer.model. */
#ifndef MEDUSA_TOKENIZER_H
#define MEDUSA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../formats/gguf.h"

typedef struct Tokenizer Tokenizer;

typedef enum { TOKENIZER_BYTE_BPE = 1, TOKENIZER_SPM_BPE = 2 } TokenizerKind;

/* HF tokenizer.json (BPE model; normalizers NFC, Prepend, Replace, Strip; BOS/EOS from tokenizer_config.json
 * beside it when there is one); fatal on bad input, naming the file. */
Tokenizer *tokenizer_load_json(const char *path);
/* tokenizer.ggml.* metadata: "gpt2" (byte-level, tokenizer.ggml.pre names the split regex as llama.cpp
 * does, e.g. "smollm" splits digits one by one) or "llama" (SentencePiece scores, byte fallback). */
Tokenizer *tokenizer_load_gguf(const GGUFFile *g);
/* A sentencepiece tokenizer.model (BPE with byte fallback and the identity normaliser, as Llama-2, Vicuna
 * and Mistral ship it); BOS added unless tokenizer_config.json beside it says add_bos_token false. */
Tokenizer *tokenizer_load_spm(const char *path);
void tokenizer_free(Tokenizer *t);

TokenizerKind tokenizer_kind(const Tokenizer *t);
int tokenizer_vocab_size(const Tokenizer *t);
int tokenizer_bos_id(const Tokenizer *t); /* -1 when none */
int tokenizer_eos_id(const Tokenizer *t);
int tokenizer_token_id(const Tokenizer *t, const char *piece); /* -1 when absent */
const char *tokenizer_piece(const Tokenizer *t, int id);       /* raw vocab string */

/* Encode text (len bytes, UTF-8). Special tokens written in the text (e.g. "<|im_start|>") are matched
 * when parse_special is set. add_bos prepends BOS when the tokenizer defines one and its post-processor
 * would add it. Returns the number of ids; *ids_out is malloc'd. Thread-safe: each thread keeps its own
 * cache of encoded words. */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int parse_special, int add_bos,
                     int32_t **ids_out);

/* Decode ids to UTF-8 (malloc'd, NUL-terminated); skip_special drops special tokens. SentencePiece-style
 * tokenizers drop the leading space their normaliser added, as HF does. Bytes come out as the tokens
 * spell them: a multi-byte character cut between two calls is not replaced by U+FFFD. Ids out of range
 * decode to nothing. */
char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, int n, int skip_special, size_t *len_out);

/* s (n bytes) made valid UTF-8 as HF's decode makes it (Rust's String::from_utf8_lossy): each maximal
 * ill-formed subsequence becomes U+FFFD. malloc'd, NUL-terminated, its length in *out_len. */
char *utf8_lossy(const char *s, size_t n, size_t *out_len);

#endif
