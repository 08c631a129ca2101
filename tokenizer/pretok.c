#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pretok.h"

#include <pcre2.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct pretok {
    pcre2_code *code;
    bool jit;
};

static const struct {
    const char *name;
    const char *pattern;
} patterns[] = {
    {"gpt-2", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
    {"llama-bpe", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
                  "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                  "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"qwen2", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
              "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
              "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
};

static const char *alias(const char *name)
{
    if (!strcmp(name, "llama3") || !strcmp(name, "llama-v3")) return "llama-bpe";
    if (!strcmp(name, "gpt2")) return "gpt-2";
    return name;
}

int pretok_new(const char *name, struct pretok **out, struct st_errbuf *eb)
{
    *out = NULL;
    const char *pat = NULL, *n = alias(name);
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++)
        if (!strcmp(patterns[i].name, n)) pat = patterns[i].pattern;
    if (!pat)
        return st_errf(eb, ST_EUNSUPPORTED,
                       "metadata key 'tokenizer.ggml.pre': pre-tokenizer \"%s\" is not supported "
                       "(gpt-2, qwen2, llama-bpe)",
                       name);
    struct pretok *p = calloc(1, sizeof(*p));
    if (!p) return st_errf(eb, ST_ENOMEM, "out of memory");
    int err;
    PCRE2_SIZE erroff;
    p->code = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                            PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &erroff, NULL);
    if (!p->code) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(err, msg, sizeof(msg));
        free(p);
        return st_errf(eb, ST_EINVAL, "pre-tokenizer %s: pattern rejected at %zu: %s", name,
                       (size_t)erroff, (const char *)msg);
    }
    p->jit = pcre2_jit_compile(p->code, PCRE2_JIT_COMPLETE) == 0;
    *out = p;
    return 0;
}

void pretok_destroy(struct pretok **pp)
{
    struct pretok *p = *pp;
    if (!p) return;
    pcre2_code_free(p->code);
    free(p);
    *pp = NULL;
}

int pretok_split(const struct pretok *p, const char *text, size_t len, pretok_word_fn fn, void *ctx)
{
    pcre2_match_data *md = pcre2_match_data_create(2, NULL);
    if (!md) return ST_ENOMEM;
    int rc = 0;
    size_t pos = 0;
    while (pos < len) {
        int m = p->jit ? pcre2_jit_match(p->code, (PCRE2_SPTR)text, len, pos, 0, md, NULL)
                       : PCRE2_ERROR_JIT_STACKLIMIT;
        if (m < 0 && m != PCRE2_ERROR_NOMATCH) /* JIT stack exhausted: the interpreter's heap */
            m = pcre2_match(p->code, (PCRE2_SPTR)text, len, pos, 0, md, NULL);
        if (m < 0) { /* no further match (or a match limit hit): the rest is one word */
            rc = fn(text + pos, len - pos, ctx);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (s > pos && (rc = fn(text + pos, s - pos, ctx))) break;
        if (e == s) { /* cannot happen with these patterns; step one byte */
            e = s + 1;
            if ((rc = fn(text + s, 1, ctx))) break;
        } else if ((rc = fn(text + s, e - s, ctx))) {
            break;
        }
        pos = e;
    }
    pcre2_match_data_free(md);
    return rc;
}
