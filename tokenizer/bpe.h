/*
 * bpe.h - byte-level BPE: merging one pre-tokenized word.
 *
 * Each byte of the word is mapped to a printable code point (the GPT-2
 * byte-to-unicode table: bytes 33..126, 161..172 and 174..255 map to
 * themselves, the other 68 bytes to U+0100.. in byte order) whose token is the
 * initial symbol. Adjacent symbols (a, b) listed in the merges become the
 * token a+b, lowest merge rank first (leftmost on ties), until no listed pair
 * is left. With ignore_merges (Llama 3), a word that is a token as a whole is
 * that token. O(n log n) in the word length (binary heap over a linked list).
 */
#ifndef STAGED_BPE_H
#define STAGED_BPE_H

#include "tokenizer/vocab.h"

#include <stdint.h>

/* Append the ids of word[0..len) to out. Returns 0 or ST_ENOMEM. */
int bpe_encode_word(const struct vocab *v, const char *word, size_t len, struct tok_ids *out);

/* The code point byte b is written as (GPT-2 byte-level table). */
uint32_t bpe_byte_to_cp(uint8_t b);
/* The byte code point cp stands for, or -1 if cp is not in the table. */
int bpe_cp_to_byte(uint32_t cp);

#endif
