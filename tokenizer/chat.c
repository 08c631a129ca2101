#include "tokenizer/chat.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char qwen_default_system[] =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

enum chat_family chat_detect(const char *t)
{
    if (!t || !*t) return CHAT_PLAIN;
    if (strstr(t, "<|im_start|>"))
        return strstr(t, "You are Qwen, created by Alibaba Cloud") ? CHAT_QWEN25 : CHAT_CHATML;
    if (strstr(t, "<|start_header_id|>"))
        return strstr(t, "Cutting Knowledge Date") ? CHAT_LLAMA31 : CHAT_LLAMA3;
    if (strstr(t, "[INST]")) return CHAT_LLAMA2;
    return CHAT_PLAIN;
}

const char *chat_family_name(enum chat_family f)
{
    switch (f) {
    case CHAT_PLAIN:
        return "plain";
    case CHAT_CHATML:
        return "chatml";
    case CHAT_QWEN25:
        return "qwen2.5";
    case CHAT_LLAMA3:
        return "llama3";
    case CHAT_LLAMA31:
        return "llama3.1";
    case CHAT_LLAMA2:
        return "llama2";
    }
    return "unknown";
}

void chat_out_free(struct chat_out *o)
{
    tok_buf_free(&o->text);
    free(o->tmpl);
    o->tmpl = NULL;
    o->n_tmpl = o->cap_tmpl = 0;
}

/* template text: special tokens may be recognised in it */
static int lit(struct chat_out *o, const char *s)
{
    size_t n = strlen(s), at = o->text.len;
    if (n == 0) return 0;
    int rc = tok_buf_add(&o->text, s, n);
    if (rc) return rc;
    if (o->n_tmpl && o->tmpl[o->n_tmpl - 1].off + o->tmpl[o->n_tmpl - 1].len == at) {
        o->tmpl[o->n_tmpl - 1].len += n;
        return 0;
    }
    if (o->n_tmpl == o->cap_tmpl) {
        size_t nc = o->cap_tmpl ? o->cap_tmpl * 2 : 16;
        struct tok_span *p = realloc(o->tmpl, nc * sizeof(*p));
        if (!p) return ST_ENOMEM;
        o->tmpl = p;
        o->cap_tmpl = nc;
    }
    o->tmpl[o->n_tmpl++] = (struct tok_span){at, n};
    return 0;
}

/* message text */
static int txt(struct chat_out *o, const char *s, size_t n)
{
    return tok_buf_add(&o->text, s, n);
}

/* Python's str.isspace for one code point */
static bool py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* decode one code point at s (valid UTF-8 assumed; bad bytes are 1-byte non-spaces) */
static uint32_t cp_at(const uint8_t *s, size_t n, size_t *len)
{
    uint8_t c = s[0];
    if (c < 0x80 || n < 2) return *len = 1, c;
    if (c >= 0xC0 && c < 0xE0) return *len = 2, ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
    if (c >= 0xE0 && c < 0xF0 && n >= 3)
        return *len = 3,
               ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return *len = 1, 0xFFFFFFFF;
}

/* strip: shrink [*s, *s + *n) to drop leading and trailing whitespace */
static void strip(const char **s, size_t *n)
{
    const uint8_t *p = (const uint8_t *)*s;
    size_t a = 0, b = *n, l;
    while (a < b && py_space(cp_at(p + a, b - a, &l)))
        a += l;
    /* trailing: walk back to a character start */
    while (b > a) {
        size_t k = b - 1;
        while (k > a && (p[k] & 0xC0) == 0x80 && b - k < 4)
            k--;
        if (!py_space(cp_at(p + k, b - k, &l)) || k + l != b) break;
        b = k;
    }
    *s += a;
    *n = b - a;
}

static int check_roles(const struct chat_msg *m, size_t n, struct st_errbuf *eb)
{
    for (size_t i = 0; i < n; i++) {
        const char *r = m[i].role;
        if (!r || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")))
            return st_errf(eb, ST_EINVAL,
                           "messages[%zu].role: \"%.32s\" is not system, user or assistant", i,
                           r ? r : "(null)");
    }
    return 0;
}

static int render_chatml(const struct chat_msg *m, size_t n, bool qwen, bool gen,
                         struct chat_out *o)
{
    int rc = 0;
    size_t i = 0;
    if (n > 0 && !strcmp(m[0].role, "system")) {
        rc = lit(o, "<|im_start|>system\n") || txt(o, m[0].content, m[0].content_len) ||
             lit(o, "<|im_end|>\n");
        i = 1;
    } else if (qwen) {
        rc =
            lit(o, "<|im_start|>system\n") || lit(o, qwen_default_system) || lit(o, "<|im_end|>\n");
    }
    for (; i < n && !rc; i++)
        rc = lit(o, "<|im_start|>") || lit(o, m[i].role) || lit(o, "\n") ||
             txt(o, m[i].content, m[i].content_len) || lit(o, "<|im_end|>\n");
    if (!rc && gen) rc = lit(o, "<|im_start|>assistant\n");
    return rc ? ST_ENOMEM : 0;
}

static int llama3_turn(struct chat_out *o, const char *role, const char *c, size_t cl)
{
    strip(&c, &cl);
    return lit(o, "<|start_header_id|>") || lit(o, role) || lit(o, "<|end_header_id|>\n\n") ||
           txt(o, c, cl) || lit(o, "<|eot_id|>");
}

static int render_llama3(const struct chat_msg *m, size_t n, bool v31, const char *bos, bool gen,
                         struct chat_out *o)
{
    int rc = 0;
    size_t i = 0;
    if (v31) {
        const char *sys = "";
        size_t sl = 0;
        if (n > 0 && !strcmp(m[0].role, "system")) {
            sys = m[0].content;
            sl = m[0].content_len;
            strip(&sys, &sl);
            i = 1;
        }
        rc = lit(o, bos) || lit(o, "<|start_header_id|>system<|end_header_id|>\n\n") ||
             lit(o, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n") ||
             txt(o, sys, sl) || lit(o, "<|eot_id|>");
    } else if (n > 0) {
        rc = lit(o, bos);
    }
    for (; i < n && !rc; i++)
        rc = llama3_turn(o, m[i].role, m[i].content, m[i].content_len);
    if (!rc && gen) rc = lit(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return rc ? ST_ENOMEM : 0;
}

static int render_llama2(const struct chat_msg *m, size_t n, const char *bos, const char *eos,
                         struct chat_out *o, struct st_errbuf *eb)
{
    const char *sys = NULL;
    size_t sl = 0, first = 0;
    if (n > 0 && !strcmp(m[0].role, "system")) {
        sys = m[0].content;
        sl = m[0].content_len;
        first = 1;
    }
    for (size_t i = first; i < n; i++) {
        bool user = !strcmp(m[i].role, "user");
        if (user != ((i - first) % 2 == 0))
            return st_errf(eb, ST_EINVAL,
                           "messages[%zu]: Llama 2 conversations must alternate "
                           "user/assistant/user/... (after an optional system message)",
                           i);
        struct tok_buf c = {0};
        int rc = 0;
        if (i == first && sys) {
            rc = tok_buf_add(&c, "<<SYS>>\n", 8) || tok_buf_add(&c, sys, sl) ||
                 tok_buf_add(&c, "\n<</SYS>>\n\n", 11);
        }
        rc = rc || tok_buf_add(&c, m[i].content, m[i].content_len);
        const char *s = c.p ? c.p : "";
        size_t l = c.len;
        strip(&s, &l);
        if (!rc) {
            if (user)
                rc = lit(o, bos) || lit(o, "[INST] ") || txt(o, s, l) || lit(o, " [/INST]");
            else
                rc = lit(o, " ") || txt(o, s, l) || lit(o, " ") || lit(o, eos);
        }
        tok_buf_free(&c);
        if (rc) return ST_ENOMEM;
    }
    return 0;
}

static int render_plain(const struct chat_msg *m, size_t n, bool gen, struct chat_out *o)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (!strcmp(m[i].role, "system"))
            rc = txt(o, m[i].content, m[i].content_len) || txt(o, "\n\n", 2);
        else
            rc = txt(o, strcmp(m[i].role, "user") ? "Assistant: " : "User: ",
                     strcmp(m[i].role, "user") ? 11 : 6) ||
                 txt(o, m[i].content, m[i].content_len) || txt(o, "\n", 1);
    }
    if (!rc && gen) rc = txt(o, "Assistant:", 10);
    return rc ? ST_ENOMEM : 0;
}

int chat_render(enum chat_family f, const char *bos, const char *eos, const struct chat_msg *m,
                size_t n, bool add_generation_prompt, struct chat_out *out, struct st_errbuf *eb)
{
    int rc = check_roles(m, n, eb);
    if (rc) return rc;
    if (!bos) bos = "";
    if (!eos) eos = "";
    switch (f) {
    case CHAT_QWEN25:
    case CHAT_CHATML:
        rc = render_chatml(m, n, f == CHAT_QWEN25, add_generation_prompt, out);
        break;
    case CHAT_LLAMA3:
    case CHAT_LLAMA31:
        rc = render_llama3(m, n, f == CHAT_LLAMA31, bos, add_generation_prompt, out);
        break;
    case CHAT_LLAMA2:
        rc = render_llama2(m, n, bos, eos, out, eb);
        break;
    default:
        rc = render_plain(m, n, add_generation_prompt, out);
        break;
    }
    if (!rc && !out->text.p) rc = tok_buf_add(&out->text, "", 0);
    if (rc == ST_ENOMEM) st_errf(eb, rc, "out of memory");
    return rc;
}
