/*
 * pretok.h - pre-tokenizers of byte-level BPE models: split text into words
 * with the model's regular expression (PCRE2, UTF + Unicode properties, JIT).
 *
 * Patterns (tokenizer.ggml.pre), as published with each tokenizer:
 *   gpt-2      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   llama-bpe  (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+
 *              |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   qwen2      as llama-bpe with \p{N} (one digit per word)
 * Text between matches (only invalid UTF-8 can be left unmatched) becomes a
 * word of its own, so no byte is ever dropped.
 */
#ifndef STAGED_PRETOK_H
#define STAGED_PRETOK_H

#include "common/err.h"

#include <stddef.h>

struct pretok;

/* Compile the pattern for pre-tokenizer `name`. ST_EUNSUPPORTED for an
 * unknown name, ST_EINVAL if PCRE2 rejects the pattern. */
int pretok_new(const char *name, struct pretok **out, struct st_errbuf *eb);
void pretok_destroy(struct pretok **p);

/* Called for each word in order; a non-zero return stops the split and is
 * returned by pretok_split. */
typedef int (*pretok_word_fn)(const char *word, size_t len, void *ctx);

/* Split text[0..len); returns 0, the callback's non-zero value, or ST_ENOMEM. */
int pretok_split(const struct pretok *p, const char *text, size_t len, pretok_word_fn fn,
                 void *ctx);

#endif
