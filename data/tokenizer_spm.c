/* Loading a sentencepiece tokenizer.model (protobuf ModelProto). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p, *end;
    const char *path;
} Proto;

static uint64_t pb_varint(Proto *b) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end) fatal("%s: truncated sentencepiece model", b->path);
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
    }
    fatal("%s: not a sentencepiece model (bad varint)", b->path);
}

static Proto pb_bytes(Proto *b) {
    uint64_t n = pb_varint(b);
    if (n > (uint64_t)(b->end - b->p)) fatal("%s: truncated sentencepiece model", b->path);
    Proto sub = {b->p, b->p + n, b->path};
    b->p += n;
    return sub;
}

static uint32_t pb_fixed32(Proto *b) {
    if (b->end - b->p < 4) fatal("%s: truncated sentencepiece model", b->path);
    uint32_t v;
    memcpy(&v, b->p, 4);
    b->p += 4;
    return v;
}

/* The next field's number; *wire is its wire type, *value its varint or fixed32 value, *sub its bytes. */
static int pb_next(Proto *b, int *wire, uint64_t *value, Proto *sub) {
    uint64_t key = pb_varint(b);
    *wire = (int)(key & 7);
    switch (*wire) {
    case 0:
        *value = pb_varint(b);
        break;
    case 1:
        if (b->end - b->p < 8) fatal("%s: truncated sentencepiece model", b->path);
        b->p += 8;
        break;
    case 2:
        *sub = pb_bytes(b);
        break;
    case 5:
        *value = pb_fixed32(b);
        break;
    default:
        fatal("%s: not a sentencepiece model (wire type %d)", b->path, *wire);
    }
    return (int)(key >> 3);
}

Tokenizer *tokenizer_load_spm(const char *path) {
    MappedFile mf;
    mapped_file_open(&mf, path);
    Proto b = {mf.data, mf.data + mf.size, path}, sub, f;
    int n = 0, cap = 0, wire, model_type = 1, byte_fallback = 0, add_prefix = 1, extra_spaces = 1;
    int64_t bos = 1, eos = 2;
    char **pieces = NULL, *norm_name = NULL;
    size_t *lens = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    uint64_t v;
    while (b.p < b.end) {
        int field = pb_next(&b, &wire, &v, &sub);
        if (field == 1 && wire == 2) { /* SentencePiece {piece = 1, score = 2, type = 3} */
            if (n == cap) {
                cap = cap ? 2 * cap : 1024;
                pieces = xrealloc(pieces, (size_t)cap * sizeof *pieces);
                lens = xrealloc(lens, (size_t)cap * sizeof *lens);
                scores = xrealloc(scores, (size_t)cap * sizeof *scores);
                types = xrealloc(types, (size_t)cap * sizeof *types);
            }
            pieces[n] = NULL;
            lens[n] = 0;
            scores[n] = 0;
            types[n] = 1;
            while (sub.p < sub.end) {
                int k = pb_next(&sub, &wire, &v, &f);
                if (k == 1 && wire == 2) {
                    lens[n] = (size_t)(f.end - f.p);
                    pieces[n] = xrealloc(pieces[n], lens[n] + 1);
                    memcpy(pieces[n], f.p, lens[n]);
                    pieces[n][lens[n]] = '\0';
                } else if (k == 2 && wire == 5) {
                    uint32_t u = (uint32_t)v;
                    memcpy(&scores[n], &u, 4);
                } else if (k == 3 && wire == 0) {
                    types[n] = (int32_t)v;
                }
            }
            if (!pieces[n]) fatal("%s: piece %d has no text", path, n);
            n++;
        } else if (field == 2 && wire == 2) { /* TrainerSpec */
            while (sub.p < sub.end) {
                int k = pb_next(&sub, &wire, &v, &f);
                if (wire != 0) continue;
                if (k == 3) model_type = (int)v;
                else if (k == 35) byte_fallback = v != 0;
                else if (k == 41) bos = (int32_t)v;
                else if (k == 42) eos = (int32_t)v;
            }
        } else if (field == 3 && wire == 2) { /* NormalizerSpec */
            while (sub.p < sub.end) {
                int k = pb_next(&sub, &wire, &v, &f);
                if (k == 1 && wire == 2) {
                    free(norm_name);
                    norm_name = strndup((const char *)f.p, (size_t)(f.end - f.p));
                } else if (k == 3 && wire == 0) {
                    add_prefix = v != 0;
                } else if (k == 4 && wire == 0) {
                    extra_spaces = v != 0;
                }
            }
        }
    }
    if (n == 0) fatal("%s: not a sentencepiece model (no pieces)", path);
    if (model_type != 2) fatal("%s: unsupported sentencepiece model type %d (BPE is supported)", path, model_type);
    if (!byte_fallback) fatal("%s: sentencepiece BPE without byte fallback is not supported", path);
    if ((norm_name && strcmp(norm_name, "identity") != 0) || extra_spaces)
        fatal("%s: unsupported sentencepiece normalizer '%s'%s (identity is supported)", path,
              norm_name ? norm_name : "nmt_nfkc", extra_spaces ? " removing extra spaces" : "");
    Tokenizer *t = tok_typed_vocab(n, pieces, lens, types);
    tok_spm_from_scores(t, scores, types, add_prefix);
    t->bos_id = bos >= 0 && bos < n ? (int)bos : -1;
    t->eos_id = eos >= 0 && eos < n ? (int)eos : -1;
    t->add_bos = t->bos_id >= 0; /* LlamaTokenizer's default; tokenizer_config.json may say otherwise */
    tok_config_bos_eos(t, path);
    for (int i = 0; i < n; i++) free(pieces[i]);
    free(pieces);
    free(lens);
    free(scores);
    free(types);
    free(norm_name);
    mapped_file_close(&mf);
    return t;
}
