/*
 * detok.h - token ids back to text, whole or streamed, never emitting
 * invalid UTF-8.
 *
 * A token's bytes may end inside a UTF-8 character (byte tokens, byte-level
 * BPE pieces of an emoji). The streaming state holds such an incomplete tail
 * (at most 3 bytes) until the next tokens complete it. Bytes that can never
 * form a valid character (a stray continuation byte, an overlong form, a
 * surrogate, a lead byte followed by a non-continuation) are replaced by
 * U+FFFD "\xEF\xBF\xBD", one per maximal invalid subpart.
 *
 * The state is plain bytes, so a caller can carry it across processes (the
 * tokenizer protocol sends it as hex: "pending").
 */
#ifndef STAGED_DETOK_H
#define STAGED_DETOK_H

#include "tokenizer/vocab.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct detok {
    uint8_t pend[4]; /* incomplete UTF-8 character held back */
    size_t n_pend;   /* 0..3 */
};

/*
 * Append the text of ids to out: the pending bytes plus each token's piece
 * (tok_token_piece; special: render control tokens), emitting only complete
 * characters and keeping an incomplete tail in d. Returns 0, ST_ENOMEM, or
 * ST_ERANGE for an id outside the vocab (out and d are then unchanged up to
 * the tokens before it).
 */
int detok_feed(const struct vocab *v, struct detok *d, const int32_t *ids, size_t n, bool special,
               struct tok_buf *out);

/* Append raw bytes through the same UTF-8 filter. Returns 0 or ST_ENOMEM. */
int detok_bytes(struct detok *d, const void *bytes, size_t n, struct tok_buf *out);

/* End of stream: a held-back incomplete character becomes U+FFFD. */
int detok_flush(struct detok *d, struct tok_buf *out);

/*
 * Decode a whole sequence: detok_feed + detok_flush. For SentencePiece vocabs
 * that add a space prefix, when ids start with BOS the space the encoder put
 * in front of the text is removed again (so decode(encode(s)) == s). With
 * skip_special, control tokens (BOS, EOS, ...) give no text.
 */
int detok_decode(const struct vocab *v, const int32_t *ids, size_t n, bool skip_special,
                 struct tok_buf *out);

/* Length of the longest prefix of s that is complete valid UTF-8. */
size_t utf8_valid_prefix(const uint8_t *s, size_t n);
/* True if s[0..n) is entirely valid UTF-8. */
bool utf8_valid(const uint8_t *s, size_t n);

#endif
