/* train.h: training LoRA adapters on a frozen quantized base.
 *
 * A trainer owns an adapter, its gradients and AdamW moments, and the activations of one
 * micro-batch. trainer_step runs one optimizer step (grad_accum micro-batches of `batch`
 * random windows of seq_len + 1 tokens from the training stream); trainer_eval measures
 * held-out loss. The tool and the daemon drive the same loop (train_run) with a progress
 * callback and a cancel flag checked between steps. Everything is deterministic for a
 * given seed and thread count. */
#ifndef QLORA_TRAIN_H
#define QLORA_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "chat_template.h"
#include "forward.h"
#include "sft.h"

/* The named choices of train_hyper, X(enum value, name), the default first. */
#define TRAIN_METHODS(X) X(TRAIN_LORA, "lora") X(TRAIN_RECOVERY, "recovery")
#define TRAIN_SCHEDULES(X) X(SCHED_COSINE, "cosine") X(SCHED_CONSTANT, "constant")
#define TRAIN_INITS(X) X(INIT_DEFAULT, "default") X(INIT_LOFTQ, "loftq")
/* examples of messages: the model's own chat template, or a built-in (chat_template.h) */
#define TRAIN_CHAT_TEMPLATES(X) X(CHAT_MODEL, "model") CHAT_TEMPLATE_BUILTINS(X)

#define TRAIN_ENUM(e, name) e,
typedef enum { TRAIN_METHODS(TRAIN_ENUM) } train_method;
typedef enum { TRAIN_SCHEDULES(TRAIN_ENUM) } train_schedule;
typedef enum { TRAIN_INITS(TRAIN_ENUM) } train_init;
typedef enum { TRAIN_CHAT_TEMPLATES(TRAIN_ENUM) } train_chat_template;
#undef TRAIN_ENUM

/* One of those vocabularies, for every parser and printer of it (daemon, tool). */
typedef struct {
    const char *field;         /* "method", "schedule", "init", "chat_template" */
    const char *const *names;  /* indexed by the enum value */
    int count;
    size_t offset;             /* of its member in train_hyper */
} train_vocab;
extern const train_vocab train_methods, train_schedules, train_inits, train_chat_templates;
/* The vocabulary of the field the n bytes at field name, or NULL. */
const train_vocab *train_vocab_of(const char *field, size_t n);
/* The value the n bytes at s name, or -1. */
int train_vocab_parse(const train_vocab *v, const char *s, size_t n);
/* The name of value ("?" out of range). */
const char *train_vocab_name(const train_vocab *v, int value);
/* "\"lora\" or \"recovery\"" into out, for messages. */
void train_vocab_choices(const train_vocab *v, char *out, size_t len);

typedef struct {
    train_method method;
    int rank;
    float alpha;
    float dropout;
    unsigned targets;   /* bit per llama_linear */
    int rslora;
    float lr;
    int steps, batch, seq_len, grad_accum, warmup;
    train_schedule schedule;
    float weight_decay, max_grad_norm;
    uint64_t seed;
    int eval_every, checkpoint_every;
    train_init init;
    int recompute;      /* keep one layer's activations; recompute the others in backward */
    int train_on_prompt; /* SFT data: the prompts' tokens carry loss too (sft.h) */
    int epochs;         /* passes over the data; steps 0: as many as they take, else at most steps */
    float validation_split; /* without eval data: this share of the data held out for it */
    train_chat_template chat_template; /* messages: the template they are rendered with */
    int patience;       /* stop after this many evaluations without a better eval loss, and
                           keep the best-evaluated adapter (0: train every step, keep the last) */
} train_hyper;

/* The hyper-parameters that hold a plain value, one row each: the key of job.submit's
 * hyper map, qlora-tool train's flag, the type and where it lives in train_hyper. The
 * daemon and the tool parse (and the daemon packs) through this one table; targets,
 * schedule, init and method are words, parsed by their owners. */
typedef enum { HYPER_INT, HYPER_U64, HYPER_FLOAT, HYPER_BOOL } train_hyper_kind;
typedef struct {
    const char *name, *flag;
    train_hyper_kind kind;
    size_t offset;
} train_hyper_field;
extern const train_hyper_field train_hyper_fields[];
extern const size_t train_hyper_n_fields;

/* Sets v's member of h to the value the n bytes at s name; returns it, or -1 (h as it
 * was) if they name none. */
int train_vocab_set(const train_vocab *v, train_hyper *h, const char *s, size_t n);

/* The defaults of the wire protocol; lr is 2e-4 scaled by max(1, 2048 / dim) because
 * small models need larger steps (docs/training.md). */
void train_hyper_default(train_hyper *h, const llama_config *c);
/* The fields a user did not give, as job.submit and qlora-tool train settle them: with
 * epochs but without steps, steps 0 (as many as the epochs take); the default warmup fits
 * a short run. */
void train_hyper_fill(train_hyper *h, int have_steps, int have_warmup);
/* 0, or -1 with a message naming the field at fault. */
int train_hyper_check(const train_hyper *h, const llama_config *c, char *err, size_t errlen);
/* What the hyper-parameters ask of the data: patience needs eval data (have_eval, or
 * validation_split) and eval_every. 0, or -1 with a message naming the field. */
int train_hyper_check_eval(const train_hyper *h, int have_eval, char *err, size_t errlen);
/* "all-linear" or a comma-separated list of q,k,v,o,gate,up,down (also q_proj, ...). */
int train_parse_targets(const char *list, unsigned *targets, char *err, size_t errlen);
/* The targets as PEFT module names, comma-separated, into out. */
void train_format_targets(unsigned targets, char *out, size_t len);

typedef struct {
    const llama_model *model;
    const llama_model *teacher;  /* recovery: the full-precision model, else NULL */
    const int *tokens;           /* the training stream */
    size_t n_tokens;
    const int *eval_tokens;      /* held out (may be NULL) */
    size_t n_eval;
    const sft_data *sft, *eval_sft; /* SFT examples instead of the streams (trainer_init_sft) */
    uint64_t cursor;             /* SFT: examples taken so far (sft_fill_rows) */
    sft_order order;             /* SFT: the current epoch's order of them */
    uint64_t limit;              /* SFT: examples the epochs take (UINT64_MAX: steps decide) */
    sft_data split_train, split_eval; /* validation_split of SFT examples: the two shares */
    float *best;                 /* patience: the adapter's best-evaluated parameters */
    double best_loss;            /* patience: its eval loss (INFINITY before any) */
    int best_step, bad_evals;    /* patience: its step; evaluations since without a better one */
    int stopped_early;           /* train_run stopped for patience */
    train_hyper hyper;
    llama_lora adapter;
    float *grads, *m, *v;        /* the adapter's layout */
    uint64_t rng;                /* data sampling */
    int step;                    /* optimizer steps done */
    llama_acts acts, teacher_acts;
    llama_cache cache, teacher_cache;
    float *dlogits;
    int *batch;                  /* inputs, targets [batch x seq_len] each (SFT: grad_accum of them), starts */
} trainer;

/* Checks everything before any work: hyper-parameters, data (at least seq_len + 1 tokens),
 * memory. Initialises the adapter (PEFT: A kaiming-uniform, B zero; or LoftQ).
 * Without eval tokens, validation_split holds out the stream's last share for eval. With
 * epochs, an epoch is as many tokens as the stream (after the split) has: steps becomes
 * ceil(epochs x tokens / (batch x seq_len x grad_accum)), at most h->steps when that is
 * not 0, and warmup at most steps. t->hyper holds the steps and warmup it runs. */
int trainer_init(trainer *t, const llama_model *m, const llama_model *teacher, const int *tokens,
                 size_t n_tokens, const int *eval_tokens, size_t n_eval, const train_hyper *h,
                 char *err, size_t errlen);
/* The same on SFT examples (sft.h), packed into the rows of each micro-batch; the loss is
 * the mean over the targets that carry it in the step. Examples longer than seq_len + 1
 * tokens must have been cut (sft_cut). LoRA only: recovery trains on plain text.
 * Without eval examples, validation_split holds out a share of them (sft_split). With
 * epochs, training takes each example epochs times (an epoch's last step may be partly
 * padding) in as many steps as the packing needs (sft_steps), at most h->steps when not 0. */
int trainer_init_sft(trainer *t, const llama_model *m, const sft_data *sft, const sft_data *eval_sft,
                     const train_hyper *h, char *err, size_t errlen);
void trainer_free(trainer *t);
/* Bytes a trainer for h on base m needs at its peak, beyond the base itself:
 * the adapter with its gradients and moments, a checkpoint's copy of them, the micro-batch's
 * activations (one layer's slot with h->recompute), the KV cache, dlogits, the kernels'
 * workspaces and, for recovery, the full-precision teacher with its own activations.
 * An estimate to refuse hopeless jobs up front, not an exact account. */
size_t trainer_memory_bytes(const llama_model *m, const train_hyper *h);
/* The learning rate of step s (0-based): linear warmup, then cosine to 0 or constant. */
float trainer_lr(const train_hyper *h, int s);
/* One optimizer step. *loss: its mean training loss (nats/token; KL for recovery).
 * A non-finite loss or gradient stops with an error before the update: the adapter stays
 * as it was after the previous step. */
int trainer_step(trainer *t, double *loss, double *grad_norm, char *err, size_t errlen);
/* Mean next-token loss (nats/token) of the adapted model on the held-out stream, in
 * windows of seq_len tokens (SFT: over the held-out examples' tokens that carry loss). */
int trainer_eval(trainer *t, double *eval_loss, char *err, size_t errlen);
/* The same for the base alone, without the adapter. */
int trainer_eval_base(trainer *t, double *eval_loss, char *err, size_t errlen);

/* Serialized training state (adapter, moments, step, sampler) for checkpoints. */
size_t trainer_state_bytes(const trainer *t);
void trainer_state_save(const trainer *t, void *out);
int trainer_state_load(trainer *t, const void *in, size_t len, char *err, size_t errlen);

typedef enum { TRAIN_EV_STEP, TRAIN_EV_EVAL, TRAIN_EV_CHECKPOINT } train_event;
typedef struct {
    int step, total_steps;
    double loss, eval_loss, lr, grad_norm, tokens_per_s;
} train_progress;
/* Return nonzero to stop (as cancel). For TRAIN_EV_CHECKPOINT, return -1 if saving failed. */
typedef int (*train_event_fn)(void *ctx, trainer *t, train_event ev, const train_progress *p);

/* Runs the remaining steps; evaluates every eval_every steps and at the end, checkpoints
 * every checkpoint_every steps. With patience, stops once that many evaluations in a row
 * found no better eval loss than the best (t->stopped_early), and in either case leaves the
 * best-evaluated parameters in t->adapter (t->best_loss, t->best_step). Returns 0 when
 * done, 1 when cancelled (cancel flag or the callback), -1 on error (message in err). */
int train_run(trainer *t, train_event_fn fn, void *ctx, const volatile int *cancel, char *err,
              size_t errlen);

#endif
