/* generate.h: sampling, text generation and evaluation over a llama_model. */
#ifndef QLORA_GENERATE_H
#define QLORA_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"

typedef struct {
    float temperature; /* 0: greedy (argmax) */
    float top_p;       /* in (0, 1): nucleus sampling; otherwise the full distribution */
    uint64_t seed;
    const int *stop;   /* llama_generate ends at any of these ids (tok_stop_ids) */
    size_t n_stop;
} llama_sampling;

/* Picks the next token from logits[V] (softmaxed in place when temperature > 0).
 * *rng is the sampler's state (seeded from llama_sampling.seed). */
int llama_sample(float *logits, int V, const llama_sampling *s, uint64_t *rng);

/* Called with every generated token; return nonzero to stop. */
typedef int (*llama_token_fn)(void *ctx, int token);

/* ad: the adapter to apply, or NULL for the base alone (both functions).
 * Generates up to max_new tokens after prompt[0..n_prompt) (which must hold at least one
 * token, normally BOS first), stopping early when the model emits one of s->stop (not
 * written to out) or the context (seq_len) is full. Writes the new tokens to out (room for max_new) and their
 * count to *n_out. Returns 0, or -1 with a message. */
int llama_generate(const llama_model *m, const llama_lora *ad, const int *prompt, int n_prompt, int max_new,
                   const llama_sampling *s, llama_token_fn fn, void *ctx, int *out, int *n_out,
                   char *err, size_t errlen);

/* Evaluation as the wire protocol defines it: each sequence runs alone from position 0;
 * positions 1..len-1 are predicted. Adds -ln p(token[t] | token[<t]) in nats to *nll_sum
 * and the number of predicted positions to *n_predicted. Sequences need 2..seq_len tokens.
 * Returns 0, or -1 with a message naming the sequence and what is wrong. */
int llama_eval(const llama_model *m, const llama_lora *ad, const int *const *seqs, const size_t *lens, size_t n_seqs,
               double *nll_sum, size_t *n_predicted, char *err, size_t errlen);

/* The window in which eval scores a text: the model's context, up to 2048 tokens (a
 * window's attention takes heads x window^2 floats: a 32768-token Qwen2.5 context would
 * be 56 GiB). Every caller that scores text against the model's own context uses it. */
int llama_eval_window(const llama_config *c);

/* llama_eval over a token stream cut into consecutive windows of at most seq_len tokens, as
 * `eval` scores a text; a last window of a single token predicts nothing and is left out.
 * Sets (not adds to) *nll_sum and *n_predicted. Returns the number of windows (0 when the
 * stream has fewer than 2 tokens), or -1 with a message. */
int llama_eval_stream(const llama_model *m, const llama_lora *ad, const int *ids, size_t n, int seq_len,
                      double *nll_sum, size_t *n_predicted, char *err, size_t errlen);

#endif
