/*
 * vocab.h - a model's tokenizer built from GGUF metadata: the token table,
 * encoding (text -> ids) and token pieces (id -> bytes).
 *
 * Two tokenizer families (tokenizer.ggml.model):
 *   "llama"  SentencePiece-style: tokens with scores; spaces are written as
 *            U+2581 "▁"; a leading space is added to the text (unless
 *            tokenizer.ggml.add_space_prefix is false); characters with no
 *            token fall back to byte tokens "<0xXX>", else to the unknown token.
 *            Encoding merges adjacent pieces highest score first (spm.h).
 *   "gpt2"   byte-level BPE: text is split by the pre-tokenizer regex of
 *            tokenizer.ggml.pre (gpt-2, qwen2, llama-bpe; pretok.h), each
 *            piece's bytes are mapped to printable code points and merged by
 *            the rank of tokenizer.ggml.merges ("left right", rank = index; bpe.h).
 *
 * Metadata read (all under tokenizer.): ggml.model, ggml.pre, ggml.tokens
 * (strings), ggml.scores (f32, optional), ggml.token_type (i32, optional:
 * 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte),
 * ggml.merges, ggml.{bos,eos,unknown,padding,eot}_token_id, ggml.add_bos_token,
 * ggml.add_eos_token, ggml.add_space_prefix, chat_template.
 *
 * Special tokens: control tokens (type 3, and the unknown token) are matched
 * in text only where the caller allows it (parse_special / spans); user-defined
 * tokens (type 4) are always matched, as Hugging Face does for non-special
 * added tokens. At one position the longest matching token wins.
 *
 * Ownership: a struct vocab copies everything it needs; the struct gguf may be
 * freed after vocab_build. A built vocab is immutable and safe to use from
 * many threads at once.
 */
#ifndef STAGED_VOCAB_H
#define STAGED_VOCAB_H

#include "common/err.h"
#include "common/gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vocab;

enum vocab_kind { VOCAB_SPM = 1, VOCAB_BPE = 2 };

enum vocab_token_type {
    TOKTYPE_UNDEFINED = 0,
    TOKTYPE_NORMAL = 1,
    TOKTYPE_UNKNOWN = 2,
    TOKTYPE_CONTROL = 3,
    TOKTYPE_USER_DEFINED = 4,
    TOKTYPE_UNUSED = 5,
    TOKTYPE_BYTE = 6,
};

/* A growable id list (p owned, free with tok_ids_free). */
struct tok_ids {
    int32_t *p;
    size_t n, cap;
};
int tok_ids_push(struct tok_ids *t, int32_t id); /* 0 or ST_ENOMEM */
void tok_ids_free(struct tok_ids *t);

/* A growable byte buffer, always NUL-terminated when p != NULL (p owned). */
struct tok_buf {
    char *p;
    size_t len, cap;
};
int tok_buf_add(struct tok_buf *b, const void *s, size_t n); /* 0 or ST_ENOMEM */
void tok_buf_free(struct tok_buf *b);

/*
 * Build the tokenizer from g's metadata. Returns 0, ST_EFORMAT (a key
 * missing, of the wrong type, inconsistent counts, out-of-range ids),
 * ST_EUNSUPPORTED (unknown tokenizer model or pre-tokenizer) or ST_ENOMEM,
 * with eb naming the key. Free with vocab_destroy.
 */
int vocab_build(const struct gguf *g, struct vocab **out, struct st_errbuf *eb);
void vocab_destroy(struct vocab **v);

enum vocab_kind vocab_kind(const struct vocab *v);
uint32_t vocab_n_tokens(const struct vocab *v);
int32_t vocab_bos(const struct vocab *v); /* -1 if none */
int32_t vocab_eos(const struct vocab *v); /* -1 if none */
int32_t vocab_eot(const struct vocab *v); /* end of turn (<|eot_id|>, <|im_end|>) or -1 */
int32_t vocab_unk(const struct vocab *v); /* -1 if none */
int32_t vocab_pad(const struct vocab *v); /* -1 if none */
bool vocab_add_bos(const struct vocab *v);
bool vocab_add_eos(const struct vocab *v);
/* True for end-of-generation tokens: eos, eot and control tokens named
 * <|endoftext|>, <|im_end|>, <|eot_id|>, <|eom_id|>, <|end_of_text|>, </s>... */
bool vocab_is_eog(const struct vocab *v, int32_t id);
/* All end-of-generation ids, ascending; *n set to the count. */
const int32_t *vocab_eog_ids(const struct vocab *v, size_t *n);
/* Token type (enum vocab_token_type); TOKTYPE_UNDEFINED if id out of range. */
int vocab_token_type(const struct vocab *v, int32_t id);
/* The token's stored text (not decoded; NOT NUL-terminated) or NULL. */
const char *vocab_token_text(const struct vocab *v, int32_t id, size_t *len);
float vocab_token_score(const struct vocab *v, int32_t id);
/* Id of the token whose stored text is exactly s[0..len), or -1. */
int32_t vocab_find(const struct vocab *v, const char *s, size_t len);
/* "gpt-2", "qwen2", "llama-bpe", "default", ... (SPM: "default"). */
const char *vocab_pre_name(const struct vocab *v);
/* tokenizer.chat_template (NUL-terminated) or NULL if the model has none. */
const char *vocab_chat_template(const struct vocab *v);

/* ---- used by spm.c / bpe.c ---- */
/* SPM: byte token <0xXX> for byte b, or -1. BPE: token of the byte's code point. */
int32_t vocab_byte_token(const struct vocab *v, uint8_t b);
/* BPE: rank and result of merging (left, right); false if no such merge. */
bool vocab_merge(const struct vocab *v, int32_t left, int32_t right, uint32_t *rank,
                 int32_t *result);
bool vocab_add_space_prefix(const struct vocab *v);
bool vocab_ignore_merges(const struct vocab *v);

/* Where special tokens may be recognised: [off, off+len) of the text. */
struct tok_span {
    size_t off, len;
};

/*
 * Encode text[0..len) (any bytes; invalid UTF-8 is encoded byte by byte),
 * appending ids to out. add_special: BOS / EOS as the model's add_bos /
 * add_eos say. Control tokens are recognised only inside the given spans
 * (special == NULL / n_special == 0: nowhere). Returns 0 or ST_ENOMEM.
 */
int tok_encode_spans(const struct vocab *v, const char *text, size_t len, bool add_special,
                     const struct tok_span *special, size_t n_special, struct tok_ids *out);

/* Encode into a new array *ids (free()) of *n ids; parse_special: recognise
 * control tokens anywhere in the text. Returns 0 or ST_ENOMEM. */
int tok_encode(const struct vocab *v, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t **ids, size_t *n);

/*
 * The bytes of token id: byte-level code points mapped back to bytes (BPE),
 * "▁" to ' ' and <0xXX> to the byte (SPM). Control tokens give their text
 * when special is true, else nothing; the unknown token gives "▅" (U+2585).
 * Writes at most cap bytes to buf and returns the full length (like
 * snprintf; at most max(3, the stored text's length)), or ST_ERANGE for an
 * id out of range. A piece may be part of a UTF-8 character.
 */
int tok_token_piece(const struct vocab *v, int32_t id, bool special, char *buf, size_t cap);

#endif
