/*
 * chat.h - render chat messages into a prompt the way the model's Jinja chat
 * template does, for the template families staged supports. The family is
 * detected from distinctive substrings of tokenizer.chat_template:
 *
 *   CHAT_QWEN25  "<|im_start|>" and "You are Qwen, created by Alibaba Cloud"
 *                ChatML turns "<|im_start|>ROLE\nCONTENT<|im_end|>\n"; a system
 *                turn with "You are Qwen, created by Alibaba Cloud. You are a
 *                helpful assistant." when the first message is not a system one
 *   CHAT_CHATML  "<|im_start|>" otherwise: the same turns, no default system
 *   CHAT_LLAMA31 "<|start_header_id|>" and "Cutting Knowledge Date": BOS, then
 *                a system turn always, opening with "Cutting Knowledge Date:
 *                December 2023\nToday Date: 26 Jul 2024\n\n"; each turn is
 *                "<|start_header_id|>ROLE<|end_header_id|>\n\n" + trim(CONTENT)
 *                + "<|eot_id|>" (system content trimmed too)
 *   CHAT_LLAMA3  "<|start_header_id|>" otherwise: BOS + the same turns, no
 *                system turn of its own
 *   CHAT_LLAMA2  "[INST]": "<s>[INST] " + strip(CONTENT) + " [/INST]" per user
 *                turn, " " + strip(CONTENT) + " </s>" per assistant turn; a
 *                system message goes into the first user turn as
 *                "<<SYS>>\nSYSTEM\n<</SYS>>\n\n"; roles must alternate
 *                user/assistant; there is no generation prompt
 *   CHAT_PLAIN   no template (or one not recognised): "CONTENT\n\n" for a
 *                system message, "User: CONTENT\n" and "Assistant: CONTENT\n"
 *                for the others, and "Assistant:" as the generation prompt
 *
 * trim / strip remove leading and trailing whitespace as Python's str.strip()
 * does (Unicode White_Space). The rendered text records which byte ranges
 * came from the template (where special tokens are recognised when encoding)
 * and which from message contents (where they are not, by default).
 */
#ifndef STAGED_CHAT_H
#define STAGED_CHAT_H

#include "tokenizer/vocab.h"

#include <stdbool.h>
#include <stddef.h>

enum chat_family {
    CHAT_PLAIN = 0,
    CHAT_CHATML = 1,
    CHAT_QWEN25 = 2,
    CHAT_LLAMA3 = 3,
    CHAT_LLAMA31 = 4,
    CHAT_LLAMA2 = 5,
};

/* Roles accepted: "system", "user", "assistant". */
struct chat_msg {
    const char *role;    /* NUL-terminated */
    const char *content; /* content_len bytes */
    size_t content_len;
};

/* The rendered prompt: text, and the ranges of it that the template wrote. */
struct chat_out {
    struct tok_buf text;
    struct tok_span *tmpl;
    size_t n_tmpl, cap_tmpl;
};

/* Family of a template (NULL or "" -> CHAT_PLAIN). */
enum chat_family chat_detect(const char *tmpl);
/* "plain", "chatml", "qwen2.5", "llama3", "llama3.1", "llama2". */
const char *chat_family_name(enum chat_family f);

/*
 * Render n messages (appending to out; free with chat_out_free). bos / eos
 * are the model's BOS / EOS token texts (Llama 2 and 3 templates write them).
 * Returns 0, ST_EINVAL (unknown role, Llama 2 roles not alternating) with eb
 * naming the message, or ST_ENOMEM.
 */
int chat_render(enum chat_family f, const char *bos, const char *eos, const struct chat_msg *m,
                size_t n, bool add_generation_prompt, struct chat_out *out, struct st_errbuf *eb);
void chat_out_free(struct chat_out *o);

#endif
