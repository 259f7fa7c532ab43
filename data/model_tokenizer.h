/* A model's text side: its tokenizer, Jinja chat template and BOS/EOS strings, from a Hugging Face
 * directory (tokenizer.json + tokenizer_config.json or chat_template.jinja), a tokenizer.json, or a .gguf
 * file. Shared by medusa-data and medusa-infer so both read a model the same way. */
#ifndef MEDUSA_MODEL_TOKENIZER_H
#define MEDUSA_MODEL_TOKENIZER_H

#include "../formats/gguf.h"
#include "tokenizer.h"

typedef struct {
    Tokenizer *tok;
    GGUFFile gguf;
    int has_gguf;
    char *jinja;     /* the model's chat template, NULL when it has none */
    char *bos, *eos; /* tokenizer_config.json's bos_token/eos_token, NULL to use the tokenizer's */
} ModelTokenizer;

/* Fatal on a missing or bad tokenizer, unless optional: then a model without one leaves tok NULL. */
void model_tokenizer_load(ModelTokenizer *m, const char *path, int optional);
void model_tokenizer_free(ModelTokenizer *m);

#endif
