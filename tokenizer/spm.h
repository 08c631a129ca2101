/*
 * spm.h - SentencePiece-style encoding of one raw text fragment.
 *
 * The fragment's spaces become U+2581 "▁" (and one "▁" is put in front when
 * prefix_space is set). The text starts as one symbol per UTF-8 character
 * (an invalid byte is a symbol of its own); adjacent symbols whose
 * concatenation is a token are candidates, and the candidate with the highest
 * token score (leftmost on ties) is merged first, until no candidate is left.
 * A final symbol that is not a token becomes its bytes' <0xXX> tokens, or the
 * unknown token when the vocab has no byte tokens. O(n log n) in the fragment
 * length (binary heap over a linked list of symbols).
 */
#ifndef STAGED_SPM_H
#define STAGED_SPM_H

#include "tokenizer/vocab.h"

/* Append the ids of text[0..len) to out. Returns 0 or ST_ENOMEM. */
int spm_encode(const struct vocab *v, const char *text, size_t len, bool prefix_space,
               struct tok_ids *out);

#endif
