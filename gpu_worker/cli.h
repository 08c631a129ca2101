/*
 * cli.h - the worker's file-driven subcommands (bin/staged-worker):
 *
 *   staged-worker eval MODEL.gguf --tokens 5,17,300 --gen N --logits OUT.bin
 *                 [--threads N] [--backend cpu|cuda] [--reference]
 *       Runs the prompt as ONE batch, then N greedy steps one token at a time
 *       through the KV cache, and writes OUT.bin in the format of
 *       shared/models/ref/\*.logits:
 *         int32 n_vocab, n_prompt, n_gen;
 *         float32 logits[n_prompt][n_vocab]      (every prompt position)
 *         float32 logits[n_gen][n_vocab]         (after feeding greedy token s)
 *         int32 tokens[n_gen]                    (the greedy picks)
 *       --reference uses the scalar reference kernels (CPU backend).
 *
 *   staged-worker generate MODEL.gguf (--prompt TEXT | --prompt-tokens 1,2,3)
 *                 [--max-tokens N] [--seed N] [--temperature X] [--top-k N]
 *                 [--top-p X] [--min-p X] [--repeat-penalty X]
 *                 [--repeat-last-n N] [--presence-penalty X]
 *                 [--frequency-penalty X] [--stop-id N]... [--stop STR]...
 *                 [--ids] [--threads N] [--backend cpu|cuda]
 *       Samples up to max-tokens tokens and prints the generated text (the
 *       model's own tokenizer, tokenizer/vocab.h; --prompt is encoded with
 *       the model's BOS rule), or the token ids with --ids (also when the
 *       file has no usable tokenizer). Stops at an end-of-generation token,
 *       a --stop-id, or a --stop string (text from the stop string on is
 *       not printed; text that may still become a stop string is held back).
 *
 * Each returns the process exit status (0 ok, 1 runtime failure, 2 usage).
 */
#ifndef STAGED_CLI_H
#define STAGED_CLI_H

int cli_eval(int argc, char **argv);
int cli_generate(int argc, char **argv);

#endif
