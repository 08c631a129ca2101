/*
 * corpus.h - handcrafted bad GGUF files and the rejection each must get.
 *
 * Every case builds its file in memory with the GGUF writer (common/
 * gguf_write.h), usually a small valid model that is then broken in one
 * place: a count patched, the file cut inside a section, a key or tensor
 * left out or reshaped. Nothing is stored as a binary blob; the files are
 * made at test time (test_gguf) or written to a folder by make-corpus (the
 * fuzzer's seed corpus).
 *
 * Each case also writes the substring the reader's rejection message must
 * contain, computed from where the writer put the broken field (so "at byte
 * N" is checked against the real position, not copied from the reader).
 */
#ifndef STAGED_BAD_GGUF_CORPUS_H
#define STAGED_BAD_GGUF_CORPUS_H

#include <stddef.h>
#include <stdint.h>

struct corpus_file {
    uint8_t *buf; /* the file bytes (malloc'd; free with corpus_file_free) */
    uint64_t len;
    char expect[256]; /* the rejection message must contain this */
};

struct corpus_case {
    const char *name; /* file name without .gguf */
    /* Build the file into f; 0 or a negative st_err code (out of memory). */
    int (*build)(struct corpus_file *f);
};

extern const struct corpus_case corpus_cases[];
extern const size_t corpus_n_cases;

/* Valid small models the bad cases start from, for tests that need a good
 * file: arch "llama", "qwen2" or "qwen3"; version 2 or 3. */
int corpus_good_model(const char *arch, uint32_t version, struct corpus_file *f);

void corpus_file_free(struct corpus_file *f);

/* Check a file the way staged-gguf does (parse, hyperparameters, tensor
 * shapes; vocab-only files count as accepted). 0 if accepted, else the
 * error code, with the message in msg (cap bytes). */
int corpus_check(const uint8_t *buf, uint64_t len, char *msg, size_t cap);

#endif
