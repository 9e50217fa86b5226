/* sft.h: supervised fine-tuning data: examples whose tokens each say whether they carry
 * loss, packed into rows of a batch with attention confined to each example.
 *
 * A JSONL file holds one example per line, every line of one format:
 *   {"prompt": str, "completion": str}  the completion's tokens (and EOS) carry loss, the
 *                                       prompt's do not (unless train_on_prompt);
 *   {"text": str}                       every token carries loss (and EOS is added);
 *   {"messages": [{"role", "content", "weight"?}]}  OpenAI's chat fine-tuning format,
 *                                       rendered with the model's chat template as
 *                                       transformers' apply_chat_template does; the
 *                                       tokens of each assistant message (its end-of-turn
 *                                       marker included) carry loss unless its weight is
 *                                       0, the others' do not (unless train_on_prompt).
 * As TRL's SFTTrainer, prompt + completion is encoded as one text (so that the tokens at
 * the seam are the ones the model sees), and the prompt's share is the tokens its own
 * encoding shares with it from the start. A conversation is encoded as rendered (the
 * template writes BOS and its markers: nothing is added), and assistant message j's share
 * is what the rendering of messages[..j] adds to that of messages[..j-1] with the
 * generation prompt; where a template renders earlier turns differently once later ones
 * follow (Qwen3 drops past reasoning; Llama 3's base writes the assistant header after
 * every turn), the message's tokens are the span of its content (found by rendering with a
 * marker in its place) up to the special token after it; a message neither rule places is
 * refused.
 *
 * Packing (sft_fill_rows): examples, in an order shuffled afresh each epoch from the seed,
 * fill each row of seq_len + 1 tokens in turn; the next example that does not fit starts
 * the next row, and the rest of the row is padding that carries no loss. An example
 * longer than seq_len + 1 is cut to it (sft_data.truncated counts them). */
#ifndef QLORA_SFT_H
#define QLORA_SFT_H

#include <stddef.h>
#include <stdint.h>

#include "chat_template.h"
#include "forward.h"
#include "tokenizer.h"

typedef enum { SFT_PROMPT_COMPLETION, SFT_TEXT, SFT_MESSAGES } sft_format;

typedef struct {
    int train_on_prompt;
    const chat_template *chat; /* messages: the model's template (NULL: messages refused) */
    const char *bos, *eos;     /* its bos_token and eos_token strings (may be NULL) */
} sft_options;

typedef struct {
    sft_format format;
    int *ids;            /* every example's tokens, one after another */
    uint8_t *loss;       /* ids[i] carries loss as a target (it is what the model should say) */
    size_t *offset;      /* example e is ids[offset[e] .. offset[e + 1]) */
    size_t n, n_tokens;
    size_t truncated;    /* examples longer than a row, cut by sft_cut */
    size_t loss_tokens;  /* targets that carry loss, over all examples */
} sft_data;

/* A model's chat template, compiled, with its bos_token and eos_token strings. */
typedef struct {
    chat_template *chat;
    char *src, *bos, *eos;
} sft_chat;
/* dir's own template (chat_template_load_dir), or the built-in named builtin (non-NULL)
 * with dir's bos/eos tokens when it has them. 0; 1 when dir has none and builtin is NULL
 * (c empty); -1 with a message for a template that does not compile or an unknown name. */
int sft_chat_load(sft_chat *c, const char *dir, const char *builtin, char *err, size_t errlen);
void sft_chat_free(sft_chat *c);
/* A conversation to answer: messages (a JSON array of {role, content}) rendered with the
 * generation prompt and encoded as rendered (the template writes BOS and its markers).
 * 0, or -1 with the template's or the tokenizer's message. */
int sft_chat_prompt(const sft_chat *c, const tok_tokenizer *tok, const json_value *messages, int **ids, size_t *n,
                    char *err, size_t errlen);
/* The token that ends an assistant turn in c's template (<|im_end|>, <|eot_id|>,
 * <end_of_turn>...): the first token of what the template writes after an assistant
 * message's content, whitespace aside, when that is a special token of tok. 1 with *id,
 * else 0. */
int sft_chat_end_of_turn(const sft_chat *c, const tok_tokenizer *tok, int *id);

/* Parses the len bytes of a JSONL file named name (for messages) and encodes its
 * examples with tok. -1 with a message naming the file, the line and the field at fault
 * (nothing is kept then). */
int sft_parse(sft_data *d, const char *name, const char *text, size_t len, const tok_tokenizer *tok,
              const sft_options *opt, char *err, size_t errlen);
/* Whether the len bytes look like JSONL examples (a first non-blank byte '{'). */
int sft_is_jsonl(const char *text, size_t len);
/* Cuts every example to at most max_len tokens (counting them in truncated). */
void sft_cut(sft_data *d, size_t max_len);
void sft_free(sft_data *d);

/* An epoch's order of the examples, kept between calls of sft_fill_rows so that it is
 * shuffled once an epoch, not once a micro-batch. */
typedef struct {
    size_t *order; /* [n] */
    uint64_t epoch; /* the epoch order holds; UINT64_MAX: none yet */
} sft_order;
int sft_order_init(sft_order *o, const sft_data *d); /* -1 out of memory */
void sft_order_free(sft_order *o);

/* Fills B rows of T inputs, targets (-1: no loss) and starts (forward.h's packing) from
 * the examples at *cursor onwards of the shuffled stream (epoch = cursor / n), advancing
 * *cursor; the example at limit (epochs x n: the end of the last epoch) and those after are
 * never taken, rows past it are padding. Returns the number of targets that carry loss. */
size_t sft_fill_rows(const sft_data *d, uint64_t seed, uint64_t *cursor, uint64_t limit, sft_order *o, int B, int T,
                     int *inputs, int *targets, int *start);
/* The optimizer steps of rows_per_step rows each (batch x grad_accum) that take the
 * examples up to limit, into *steps: the packing is run without writing the rows. -1 out
 * of memory. */
int sft_steps(const sft_data *d, uint64_t seed, uint64_t limit, int rows_per_step, int T, int *steps);
/* Splits d into the examples to train on and a held-out share (fraction of them, rounded,
 * at least one when d has two), chosen by a shuffle from the seed that no epoch uses.
 * Each keeps the file's order. -1 out of memory (neither is kept). */
int sft_split(const sft_data *d, double fraction, uint64_t seed, sft_data *train, sft_data *held);

/* The mean loss of the tokens that carry it over every example (packed in rows of T, one
 * row at a time) with adapter ad, into *nll_mean, and of the tokens that do not (the
 * prompts; NAN when none) into *other_mean. 0, or -1 with a message. */
int sft_eval(const llama_model *m, const llama_lora *ad, const sft_data *d, int T, double *nll_mean,
             double *other_mean, char *err, size_t errlen);

#endif
