/* train.c: the training loop (see train.h). */
#include "train.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate.h"
#include "loftq.h"
#include "parallel.h"

#define TRAIN_NAME(e, name) name,
static const char *const method_names[] = {TRAIN_METHODS(TRAIN_NAME)};
static const char *const schedule_names[] = {TRAIN_SCHEDULES(TRAIN_NAME)};
static const char *const init_names[] = {TRAIN_INITS(TRAIN_NAME)};
static const char *const chat_names[] = {TRAIN_CHAT_TEMPLATES(TRAIN_NAME)};
#undef TRAIN_NAME
#define VOCAB(field, names, member) {field, names, (int)(sizeof names / sizeof names[0]), offsetof(train_hyper, member)}
const train_vocab train_methods = VOCAB("method", method_names, method);
const train_vocab train_schedules = VOCAB("schedule", schedule_names, schedule);
const train_vocab train_inits = VOCAB("init", init_names, init);
const train_vocab train_chat_templates = VOCAB("chat_template", chat_names, chat_template);
#undef VOCAB
/* train_vocab_set stores a value as an int into any of the three */
_Static_assert(sizeof(train_method) == sizeof(int) && sizeof(train_schedule) == sizeof(int) &&
                   sizeof(train_init) == sizeof(int) && sizeof(train_chat_template) == sizeof(int),
               "the vocabularies' enums are int-sized");

const train_vocab *train_vocab_of(const char *field, size_t n)
{
    static const train_vocab *const all[] = {&train_methods, &train_schedules, &train_inits, &train_chat_templates};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strlen(all[i]->field) == n && !memcmp(field, all[i]->field, n))
            return all[i];
    return NULL;
}

int train_vocab_set(const train_vocab *v, train_hyper *h, const char *s, size_t n)
{
    int value = train_vocab_parse(v, s, n);
    if (value >= 0)
        memcpy((char *)h + v->offset, &value, sizeof value);
    return value;
}

int train_vocab_parse(const train_vocab *v, const char *s, size_t n)
{
    for (int i = 0; i < v->count; i++)
        if (strlen(v->names[i]) == n && !memcmp(s, v->names[i], n))
            return i;
    return -1;
}

const char *train_vocab_name(const train_vocab *v, int value)
{
    return value >= 0 && value < v->count ? v->names[value] : "?";
}

void train_vocab_choices(const train_vocab *v, char *out, size_t len)
{
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < v->count; i++)
        used += (size_t)snprintf(out + used, used < len ? len - used : 0, "%s\"%s\"",
                                 i == 0 ? "" : i + 1 == v->count ? " or " : ", ", v->names[i]);
}

#define FIELD(name, flag, kind, member) {name, flag, kind, offsetof(train_hyper, member)}
const train_hyper_field train_hyper_fields[] = {
    FIELD("rank", "--rank", HYPER_INT, rank),
    FIELD("alpha", "--alpha", HYPER_FLOAT, alpha),
    FIELD("dropout", "--dropout", HYPER_FLOAT, dropout),
    FIELD("rslora", "--rslora", HYPER_BOOL, rslora),
    FIELD("lr", "--lr", HYPER_FLOAT, lr),
    FIELD("steps", "--steps", HYPER_INT, steps),
    FIELD("batch_size", "--batch", HYPER_INT, batch),
    FIELD("seq_len", "--seq-len", HYPER_INT, seq_len),
    FIELD("train_on_prompt", "--train-on-prompt", HYPER_BOOL, train_on_prompt),
    FIELD("grad_accum", "--grad-accum", HYPER_INT, grad_accum),
    FIELD("warmup", "--warmup", HYPER_INT, warmup),
    FIELD("weight_decay", "--weight-decay", HYPER_FLOAT, weight_decay),
    FIELD("max_grad_norm", "--max-grad-norm", HYPER_FLOAT, max_grad_norm),
    FIELD("seed", "--seed", HYPER_U64, seed),
    FIELD("eval_every", "--eval-every", HYPER_INT, eval_every),
    FIELD("checkpoint_every", "--checkpoint-every", HYPER_INT, checkpoint_every),
    FIELD("recompute", "--recompute", HYPER_BOOL, recompute),
    FIELD("epochs", "--epochs", HYPER_INT, epochs),
    FIELD("validation_split", "--validation-split", HYPER_FLOAT, validation_split),
    FIELD("patience", "--patience", HYPER_INT, patience),
};
#undef FIELD
const size_t train_hyper_n_fields = sizeof train_hyper_fields / sizeof train_hyper_fields[0];

void train_hyper_default(train_hyper *h, const llama_config *c)
{
    memset(h, 0, sizeof *h);
    h->method = TRAIN_LORA;
    h->rank = 16;
    h->alpha = 32;
    h->targets = (1u << LIN_COUNT) - 1;
    h->lr = 2e-4f * (c->dim < 2048 ? 2048.0f / (float)c->dim : 1.0f);
    h->steps = 200;
    h->batch = 8;
    h->seq_len = c->seq_len < 256 ? c->seq_len : 256;
    h->grad_accum = 1;
    h->warmup = 10;
    h->schedule = SCHED_COSINE;
    h->max_grad_norm = 1.0f;
    h->eval_every = 50;
    h->checkpoint_every = 50;
}

void train_hyper_fill(train_hyper *h, int have_steps, int have_warmup)
{
    if (!have_steps && h->epochs > 0)
        h->steps = 0;
    if (!have_warmup && h->steps && h->warmup > h->steps)
        h->warmup = h->steps;
}

int train_hyper_check_eval(const train_hyper *h, int have_eval, char *err, size_t errlen)
{
    have_eval |= h->validation_split > 0;
    if (h->patience && !have_eval) {
        snprintf(err, errlen, "patience: early stopping needs eval data (eval_data or validation_split)");
        return -1;
    }
    if (h->patience && !h->eval_every) {
        snprintf(err, errlen, "patience: early stopping needs eval_every > 0");
        return -1;
    }
    return 0;
}

int train_hyper_check(const train_hyper *h, const llama_config *c, char *err, size_t errlen)
{
    const char *field = NULL, *why = "";
    char buf[128];
    if (h->rank < 1 || h->rank > 1024 || h->rank > c->dim)
        field = "rank", snprintf(buf, sizeof buf, "%d is not in 1..min(1024, dim %d)", h->rank, c->dim), why = buf;
    else if (!(h->alpha > 0) || !isfinite(h->alpha))
        field = "alpha", why = "must be a positive number";
    else if (!(h->dropout >= 0 && h->dropout < 1))
        field = "dropout", why = "must be in [0, 1)";
    else if (!h->targets || h->targets >> LIN_COUNT)
        field = "targets", why = "must name at least one of q, k, v, o, gate, up, down";
    else if (!(h->lr > 0) || h->lr > 1)
        field = "lr", snprintf(buf, sizeof buf, "%g is not in (0, 1]", h->lr), why = buf;
    else if ((h->steps < 1 && !(h->steps == 0 && h->epochs > 0)) || h->steps > 10000000)
        field = "steps", why = "must be in 1..10000000 (or 0 with epochs: as many as they take)";
    else if (h->epochs < 0 || h->epochs > 1000)
        field = "epochs", why = "must be in 0..1000 (0: steps decide)";
    else if (!(h->validation_split >= 0 && h->validation_split <= 0.5f))
        field = "validation_split", why = "must be in [0, 0.5]";
    else if (h->patience < 0 || h->patience > 1000000)
        field = "patience", why = "must be in 0..1000000 (0: no early stopping)";
    else if (h->batch < 1 || h->batch > 4096)
        field = "batch_size", why = "must be in 1..4096";
    else if (h->seq_len < 2 || h->seq_len > c->seq_len)
        field = "seq_len", snprintf(buf, sizeof buf, "%d is not in 2..%d (the model's)", h->seq_len, c->seq_len), why = buf;
    else if (h->grad_accum < 1 || h->grad_accum > 4096)
        field = "grad_accum", why = "must be in 1..4096";
    else if (h->warmup < 0 || (h->steps && h->warmup > h->steps))
        field = "warmup", why = "must be in 0..steps";
    else if (!(h->weight_decay >= 0) || h->weight_decay > 1)
        field = "weight_decay", why = "must be in [0, 1]";
    else if (!(h->max_grad_norm >= 0) || !isfinite(h->max_grad_norm))
        field = "max_grad_norm", why = "must be >= 0 (0: no clipping)";
    else if (h->eval_every < 0 || h->checkpoint_every < 0)
        field = h->eval_every < 0 ? "eval_every" : "checkpoint_every", why = "must be >= 0 (0: never)";
    if (!field)
        return 0;
    snprintf(err, errlen, "%s: %s", field, why);
    return -1;
}

/* Whether the n bytes at p spell s. */
static int spells(const char *p, size_t n, const char *s)
{
    return strlen(s) == n && !strncmp(p, s, n);
}

int train_parse_targets(const char *list, unsigned *targets, char *err, size_t errlen)
{
    if (!strcmp(list, "all-linear")) {
        *targets = (1u << LIN_COUNT) - 1;
        return 0;
    }
    unsigned t = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = -1;
        for (int k = 0; k < LIN_COUNT; k++)
            if (spells(p, n, llama_linear_name((llama_linear)k)) || spells(p, n, llama_linear_peft_name((llama_linear)k)))
                found = k;
        if (found < 0) {
            snprintf(err, errlen, "targets: unknown target '%.*s' (q, k, v, o, gate, up, down or "
                                  "all-linear)", (int)n, p);
            return -1;
        }
        t |= 1u << found;
        p += n + (p[n] == ',');
    }
    if (!t) {
        snprintf(err, errlen, "targets: empty list");
        return -1;
    }
    *targets = t;
    return 0;
}

void train_format_targets(unsigned targets, char *out, size_t len)
{
    size_t used = 0;
    out[0] = 0;
    for (int k = 0; k < LIN_COUNT; k++)
        if (targets >> k & 1)
            used += (size_t)snprintf(out + used, used < len ? len - used : 0, "%s%s",
                                     used ? "," : "", llama_linear_peft_name((llama_linear)k));
}

/* ---- setup ---- */

static uint64_t next_u64(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double next_unit(uint64_t *s)
{
    return (next_u64(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* PEFT's default: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0. */
static void init_default(llama_lora *ad, const llama_config *c, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!llama_lora_has(ad, l, k))
                continue;
            int out, in;
            llama_linear_shape(c, (llama_linear)k, &out, &in);
            float bound = 1.0f / sqrtf((float)in), *A = llama_lora_a(ad, ad->params, l, k);
            for (size_t i = 0; i < (size_t)ad->rank * in; i++)
                A[i] = (float)((2 * next_unit(&s) - 1) * bound);
            memset(llama_lora_b(ad, c, ad->params, l, k), 0, (size_t)ad->rank * out * sizeof(float));
        }
}

/* Every id of a data set inside the vocabulary; what names the set in the message. */
static int check_ids(const llama_config *c, const int *ids, size_t n, const char *what, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size) {
            snprintf(err, errlen, "%s: token %d at %zu is outside the vocabulary", what, ids[i], i);
            return -1;
        }
    return 0;
}

/* What both kinds of data share: the adapter, its optimizer state and the buffers. */
static int trainer_setup(trainer *t, const llama_model *m, const llama_model *teacher, const train_hyper *h,
                         char *err, size_t errlen)
{
    const llama_config *c = &m->cfg;
    t->model = m;
    t->teacher = h->method == TRAIN_RECOVERY ? teacher : NULL;
    t->hyper = *h;
    t->rng = h->seed * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull;
    const int B = h->batch, T = h->seq_len;
    /* inputs, targets and starts of a micro-batch (SFT: of every micro-batch of a step,
     * whose loss tokens are counted first) */
    const size_t rows = (size_t)B * T * (t->sft ? (size_t)h->grad_accum : 1);
    if (llama_lora_alloc(&t->adapter, c, h->rank, h->alpha, h->rslora, h->targets, h->dropout) < 0)
        goto oom;
    size_t n = t->adapter.n_params;
    t->grads = calloc(n, sizeof(float));
    t->m = calloc(n, sizeof(float));
    t->v = calloc(n, sizeof(float));
    t->dlogits = malloc((size_t)B * T * c->vocab_size * sizeof(float));
    t->batch = malloc(3 * rows * sizeof(int));
    if (!t->grads || !t->m || !t->v || !t->dlogits || !t->batch ||
        llama_cache_alloc(&t->cache, c, B, T) < 0 || llama_acts_alloc(&t->acts, c, B, T, T, h->rank, !h->recompute) < 0)
        goto oom;
    if (t->teacher && (llama_cache_alloc(&t->teacher_cache, c, B, T) < 0 ||
                       llama_acts_alloc(&t->teacher_acts, c, B, T, T, 0, 0) < 0))
        goto oom;
    t->best_loss = INFINITY;
    if (h->patience && !(t->best = malloc(n * sizeof(float))))
        goto oom;
    if (h->init == INIT_LOFTQ) {
        if (loftq_init(&t->adapter, m, h->seed, err, errlen) < 0) {
            trainer_free(t);
            return -1;
        }
    } else {
        init_default(&t->adapter, c, h->seed);
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory for batch %d x seq_len %d (activations %.1f MiB)", B, T,
             llama_acts_bytes(c, B, T, T, h->rank, !h->recompute) / 1048576.0);
    trainer_free(t);
    return -1;
}

/* The steps that epochs take (derived; h->steps, when not 0, bounds them), with warmup
 * at most that; and what patience needs. */
static int settle_steps(train_hyper *h, int n_eval, long long derived, char *err, size_t errlen)
{
    if (h->epochs > 0) {
        if (derived < 1)
            derived = 1;
        if (h->steps == 0 || derived < h->steps)
            h->steps = derived > 10000000 ? 10000000 : (int)derived;
        if (h->warmup > h->steps)
            h->warmup = h->steps;
    }
    return train_hyper_check_eval(h, n_eval, err, errlen);
}

int trainer_init(trainer *t, const llama_model *m, const llama_model *teacher, const int *tokens,
                 size_t n_tokens, const int *eval_tokens, size_t n_eval, const train_hyper *h0,
                 char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    const llama_config *c = &m->cfg;
    train_hyper h_run = *h0, *h = &h_run;
    if (train_hyper_check(h, c, err, errlen) < 0)
        return -1;
    if (!eval_tokens && h->validation_split > 0) { /* the stream's last share, held out */
        size_t held = (size_t)((double)n_tokens * h->validation_split);
        if (held < 2 || n_tokens - held < (size_t)h->seq_len + 1) {
            snprintf(err, errlen, "validation_split: %g of %zu tokens leaves %zu to train on and %zu to evaluate "
                     "(at least seq_len + 1 = %d and 2)", h->validation_split, n_tokens, n_tokens - held, held,
                     h->seq_len + 1);
            return -1;
        }
        eval_tokens = tokens + n_tokens - held;
        n_eval = held;
        n_tokens -= held;
    }
    if (n_tokens < (size_t)h->seq_len + 1) {
        snprintf(err, errlen, "data: %zu tokens, fewer than seq_len + 1 = %d", n_tokens, h->seq_len + 1);
        return -1;
    }
    if (eval_tokens && n_eval < 2) {
        snprintf(err, errlen, "eval_data: %zu tokens, at least 2 are needed", n_eval);
        return -1;
    }
    if (check_ids(c, tokens, n_tokens, "data", err, errlen) < 0 ||
        (eval_tokens && check_ids(c, eval_tokens, n_eval, "eval_data", err, errlen) < 0))
        return -1;
    if (h->method == TRAIN_RECOVERY && !teacher) {
        snprintf(err, errlen, "method: recovery needs the full-precision model");
        return -1;
    }
    const double per_step = (double)h->batch * h->seq_len * h->grad_accum;
    if (settle_steps(h, eval_tokens != NULL, (long long)ceil(h->epochs * (double)n_tokens / per_step), err,
                     errlen) < 0)
        return -1;
    t->tokens = tokens;
    t->n_tokens = n_tokens;
    t->eval_tokens = eval_tokens;
    t->n_eval = eval_tokens ? n_eval : 0;
    t->limit = UINT64_MAX;
    return trainer_setup(t, m, teacher, h, err, errlen);
}

int trainer_init_sft(trainer *t, const llama_model *m, const sft_data *sft, const sft_data *eval_sft,
                     const train_hyper *h0, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    const llama_config *c = &m->cfg;
    train_hyper h_run = *h0, *h = &h_run;
    if (train_hyper_check(h, c, err, errlen) < 0)
        return -1;
    if (h->method != TRAIN_LORA) {
        snprintf(err, errlen, "method: %s trains on plain text, not on examples", train_vocab_name(&train_methods,
                 h->method));
        return -1;
    }
    if (!eval_sft && h->validation_split > 0) {
        if (sft->n < 2) {
            snprintf(err, errlen, "validation_split: %zu example, at least 2 are needed to hold one out", sft->n);
            return -1;
        }
        if (sft_split(sft, h->validation_split, h->seed, &t->split_train, &t->split_eval) < 0) {
            snprintf(err, errlen, "out of memory for validation_split of %zu examples", sft->n);
            return -1;
        }
        sft = &t->split_train, eval_sft = &t->split_eval;
    }
    const sft_data *sets[2] = {sft, eval_sft};
    for (int i = 0; i < 2; i++) {
        const char *what = i ? "eval_data" : "data";
        if (!sets[i])
            continue;
        if (sets[i]->loss_tokens == 0) {
            snprintf(err, errlen, "%s: no token carries loss (every completion empty?)", what);
            goto fail;
        }
        for (size_t e = 0; e < sets[i]->n; e++)
            if (sets[i]->offset[e + 1] - sets[i]->offset[e] > (size_t)h->seq_len + 1) {
                snprintf(err, errlen, "%s: example %zu is longer than seq_len + 1 = %d tokens (not cut)", what, e,
                         h->seq_len + 1);
                goto fail;
            }
        if (check_ids(c, sets[i]->ids, sets[i]->n_tokens, what, err, errlen) < 0)
            goto fail;
    }
    t->limit = UINT64_MAX;
    int derived = 0;
    if (h->epochs > 0) {
        t->limit = (uint64_t)h->epochs * sft->n;
        if (sft_steps(sft, h->seed, t->limit, h->batch * h->grad_accum, h->seq_len, &derived) < 0) {
            snprintf(err, errlen, "out of memory for the order of %zu examples", sft->n);
            goto fail;
        }
    }
    if (settle_steps(h, eval_sft != NULL, derived, err, errlen) < 0)
        goto fail;
    t->sft = sft;
    t->eval_sft = eval_sft;
    t->n_eval = eval_sft ? eval_sft->n : 0;
    if (sft_order_init(&t->order, sft) < 0) {
        snprintf(err, errlen, "out of memory for the order of %zu examples", sft->n);
        goto fail;
    }
    return trainer_setup(t, m, NULL, h, err, errlen);
fail:
    trainer_free(t);
    return -1;
}

size_t trainer_memory_bytes(const llama_model *m, const train_hyper *h)
{
    const llama_config *c = &m->cfg;
    const size_t B = (size_t)h->batch, T = (size_t)h->seq_len, M = B * T, F = sizeof(float);
    size_t adapter = 0;
    for (int k = 0; k < LIN_COUNT; k++)
        if (h->targets >> k & 1) {
            int out, in;
            llama_linear_shape(c, (llama_linear)k, &out, &in);
            adapter += (size_t)c->n_layers * h->rank * (size_t)(in + out);
        }
    size_t widest = (size_t)llama_config_widest(c);
    if ((size_t)c->vocab_size > widest)
        widest = (size_t)c->vocab_size;
    size_t cache = 2 * (size_t)c->n_layers * M * c->kv_dim * F;
    size_t bytes = 7 * adapter * F                       /* params, grads, m, v + checkpoint copy */
                   + M * c->vocab_size * F               /* dlogits */
                   + 2 * B * (T + 1) * sizeof(int)       /* the batch */
                   + cache + llama_acts_bytes(c, h->batch, h->seq_len, h->seq_len, h->rank, !h->recompute)
                   + 2 * M * widest * F;                 /* packed operands and the caller's scratch */
    if (h->method == TRAIN_RECOVERY)
        bytes += llama_n_params(c, m->tied, NULL) * F + cache + llama_acts_bytes(c, h->batch, h->seq_len, h->seq_len, 0, 0);
    return bytes;
}

void trainer_free(trainer *t)
{
    llama_lora_free(&t->adapter);
    free(t->grads);
    free(t->m);
    free(t->v);
    free(t->dlogits);
    free(t->batch);
    sft_order_free(&t->order);
    sft_free(&t->split_train);
    sft_free(&t->split_eval);
    free(t->best);
    llama_acts_free(&t->acts);
    llama_acts_free(&t->teacher_acts);
    llama_cache_free(&t->cache);
    llama_cache_free(&t->teacher_cache);
    memset(t, 0, sizeof *t);
}

float trainer_lr(const train_hyper *h, int s)
{
    if (s < h->warmup)
        return h->lr * (float)(s + 1) / (float)(h->warmup + 1);
    if (h->schedule == SCHED_CONSTANT || h->steps <= h->warmup)
        return h->lr;
    double progress = (double)(s - h->warmup) / (double)(h->steps - h->warmup);
    return (float)(h->lr * 0.5 * (1.0 + cos(3.141592653589793 * progress)));
}

/* ---- one step ---- */

/* Softmax of a logits row into p (double precision), returning log of its normaliser. */
static double log_softmax(const float *lg, int V, double *p)
{
    double max = lg[0], sum = 0;
    for (int v = 1; v < V; v++)
        max = lg[v] > max ? lg[v] : max;
    for (int v = 0; v < V; v++)
        sum += (p[v] = exp(lg[v] - max));
    for (int v = 0; v < V; v++)
        p[v] /= sum;
    return max + log(sum);
}

typedef struct {
    trainer *t;
    const int *targets;
    double norm;
    double *row_loss; /* [M] */
    _Atomic int out_of_memory;
} loss_ctx;

/* Rows r0..r1 of the micro-batch: each row's loss, and its dlogits. */
static void loss_rows(void *p, size_t r0, size_t r1)
{
    loss_ctx *c = p;
    const trainer *t = c->t;
    const int V = t->model->cfg.vocab_size;
    double *ps = malloc(2 * (size_t)V * sizeof(double));
    if (!ps) {
        c->out_of_memory = 1;
        return;
    }
    double *pt = ps + V;
    for (size_t r = r0; r < r1; r++) {
        const float *lg = t->acts.logits + r * V;
        float *dl = t->dlogits + r * V;
        if (c->targets[r] < 0) { /* SFT: a prompt's token, an example's last, padding */
            memset(dl, 0, (size_t)V * sizeof(float));
            c->row_loss[r] = 0;
            continue;
        }
        double lz = log_softmax(lg, V, ps);
        if (t->teacher) { /* KL(p_teacher || p_student) */
            double lzt = log_softmax(t->teacher_acts.logits + r * V, V, pt), kl = 0;
            for (int v = 0; v < V; v++) {
                if (pt[v] > 0)
                    kl += pt[v] * ((t->teacher_acts.logits[r * V + v] - lzt) - (lg[v] - lz));
                dl[v] = (float)((ps[v] - pt[v]) / c->norm);
            }
            c->row_loss[r] = kl;
        } else {
            c->row_loss[r] = lz - lg[c->targets[r]];
            for (int v = 0; v < V; v++)
                dl[v] = (float)((ps[v] - (v == c->targets[r])) / c->norm);
        }
    }
    free(ps);
}

/* Loss of one micro-batch into *total, and its dlogits, scaled by 1/norm. Rows run in
 * parallel; their losses are added in row order, so the total does not depend on the
 * thread count. Returns 0, or -1 out of memory. */
static int micro_loss(trainer *t, const int *targets, double norm, double *total)
{
    const size_t M = (size_t)t->hyper.batch * t->hyper.seq_len;
    loss_ctx c = {t, targets, norm, malloc(M * sizeof(double)), 0};
    if (!c.row_loss)
        return -1;
    rt_parallel_for(M, 30 * (size_t)t->model->cfg.vocab_size, loss_rows, &c);
    for (size_t r = 0; r < M && !c.out_of_memory; r++)
        *total += c.row_loss[r];
    free(c.row_loss);
    return c.out_of_memory ? -1 : 0;
}

#define ADAM_B1 0.9f
#define ADAM_B2 0.999f
#define ADAM_EPS 1e-8f

typedef struct {
    trainer *t;
    float clip, lr, c1, c2; /* gradient scale, learning rate, bias corrections */
} adamw_ctx;

/* AdamW with decoupled weight decay on parameters i0..i1 (each on its own: any split of
 * the range gives the same result). */
static void adamw_range(void *p, size_t i0, size_t i1)
{
    const adamw_ctx *c = p;
    trainer *t = c->t;
    float *w = t->adapter.params, *m = t->m, *v = t->v;
    const float wd = t->hyper.weight_decay;
    for (size_t i = i0; i < i1; i++) {
        float g = t->grads[i] * c->clip;
        m[i] = ADAM_B1 * m[i] + (1 - ADAM_B1) * g;
        v[i] = ADAM_B2 * v[i] + (1 - ADAM_B2) * g * g;
        float mh = m[i] / c->c1, vh = v[i] / c->c2;
        w[i] -= c->lr * (mh / (sqrtf(vh) + ADAM_EPS) + wd * w[i]);
    }
}

int trainer_step(trainer *t, double *loss, double *grad_norm, char *err, size_t errlen)
{
    const train_hyper *h = &t->hyper;
    const llama_model *m = t->model;
    const int B = h->batch, T = h->seq_len;
    const size_t BT = (size_t)B * T, rows = BT * (t->sft ? (size_t)h->grad_accum : 1);
    double norm = (double)BT * h->grad_accum, total = 0;
    if (t->sft) { /* every micro-batch first: the loss is the mean over the step's loss tokens */
        size_t carried = 0;
        for (int a = 0; a < h->grad_accum; a++) {
            carried += sft_fill_rows(t->sft, h->seed, &t->cursor, t->limit, &t->order, B, T, t->batch + a * BT,
                                     t->batch + rows + a * BT, t->batch + 2 * rows + a * BT);
        }
        norm = carried ? (double)carried : 1;
    }
    memset(t->grads, 0, t->adapter.n_params * sizeof(float));
    for (int a = 0; a < h->grad_accum; a++) {
        int *inputs = t->batch, *targets = t->batch + rows;
        if (t->sft) {
            inputs += a * BT, targets += a * BT;
            t->acts.start = t->batch + 2 * rows + a * BT;
        } else {
            for (int b = 0; b < B; b++) {
                size_t start = (size_t)(next_u64(&t->rng) % (t->n_tokens - (size_t)T));
                memcpy(inputs + (size_t)b * T, t->tokens + start, (size_t)T * sizeof(int));
                memcpy(targets + (size_t)b * T, t->tokens + start + 1, (size_t)T * sizeof(int));
            }
        }
        t->adapter.dropout_seed = h->seed ^ ((uint64_t)t->step << 20 ^ (uint64_t)a);
        /* the teacher's logits in inference's order, as before modes were explicit */
        if (llama_forward(m, &t->adapter, &t->acts, &t->cache, inputs, B, T, 0, LLAMA_TRAIN) < 0 ||
            (t->teacher && llama_forward(t->teacher, NULL, &t->teacher_acts, &t->teacher_cache, inputs, B, T, 0,
                                         LLAMA_INFER) < 0)) {
            snprintf(err, errlen, "out of memory in the forward pass");
            return -1;
        }
        if (micro_loss(t, targets, norm, &total) < 0) {
            snprintf(err, errlen, "out of memory in the loss");
            return -1;
        }
        if (llama_backward(m, &t->adapter, &t->acts, &t->cache, B, T, t->dlogits, t->grads) < 0) {
            snprintf(err, errlen, "out of memory in the backward pass");
            return -1;
        }
    }
    *loss = total / norm;
    double sq = 0;
    for (size_t i = 0; i < t->adapter.n_params; i++)
        sq += (double)t->grads[i] * t->grads[i];
    *grad_norm = sqrt(sq);
    if (!isfinite(*loss) || !isfinite(*grad_norm)) {
        snprintf(err, errlen, "non-finite %s at step %d; the adapter is left as it was after step %d",
                 isfinite(*loss) ? "gradient" : "loss", t->step + 1, t->step);
        return -1;
    }
    /* AdamW with decoupled weight decay, after global-norm clipping */
    const float clip = h->max_grad_norm > 0 && *grad_norm > h->max_grad_norm
                           ? (float)(h->max_grad_norm / *grad_norm) : 1.0f;
    const float lr = trainer_lr(h, t->step);
    const int step = t->step + 1;
    adamw_ctx c = {t, clip, lr, 1.0f - powf(ADAM_B1, (float)step), 1.0f - powf(ADAM_B2, (float)step)};
    rt_parallel_for(t->adapter.n_params, 16, adamw_range, &c);
    t->step = step;
    return 0;
}

static int eval_with(trainer *t, const llama_lora *ad, double *eval_loss, char *err, size_t errlen)
{
    if (t->eval_sft) {
        double prompts;
        return sft_eval(t->model, ad, t->eval_sft, t->hyper.seq_len, eval_loss, &prompts, err, errlen);
    }
    double nll;
    size_t np;
    int rc = llama_eval_stream(t->model, ad, t->eval_tokens, t->n_eval, t->hyper.seq_len, &nll, &np, err, errlen);
    *eval_loss = np ? nll / (double)np : NAN;
    return rc < 0 ? -1 : 0;
}

int trainer_eval(trainer *t, double *eval_loss, char *err, size_t errlen)
{
    return eval_with(t, &t->adapter, eval_loss, err, errlen);
}

int trainer_eval_base(trainer *t, double *eval_loss, char *err, size_t errlen)
{
    return eval_with(t, NULL, eval_loss, err, errlen);
}

/* ---- checkpoints ---- */

/* A checkpoint: the header, then parameters, m and v (n_params floats each) and, with
 * patience, the best-evaluated parameters. Older magics are still read. */
#define STATE_MAGIC 0x51544C53u  /* "QTLS": before SFT, without the cursor */
#define STATE_MAGIC2 0x324C5451u /* "QTL2": without the early-stopping fields */
#define STATE_MAGIC3 0x334C5451u /* "QTL3" */

typedef struct {
    uint32_t magic, step;
    uint64_t rng, n_params;
    uint64_t cursor;              /* from STATE_MAGIC2 on */
    double best_loss;             /* STATE_MAGIC3 on: patience's state */
    uint32_t best_step, bad_evals;
} state_header;

static size_t header_bytes(uint32_t magic)
{
    return magic == STATE_MAGIC    ? offsetof(state_header, cursor)
           : magic == STATE_MAGIC2 ? offsetof(state_header, best_loss)
                                   : sizeof(state_header);
}

size_t trainer_state_bytes(const trainer *t)
{
    return sizeof(state_header) + (3 + (t->best != NULL)) * t->adapter.n_params * sizeof(float);
}

void trainer_state_save(const trainer *t, void *out)
{
    state_header hd = {STATE_MAGIC3, (uint32_t)t->step, t->rng, t->adapter.n_params, t->cursor, t->best_loss,
                       (uint32_t)t->best_step, (uint32_t)t->bad_evals};
    char *p = out;
    size_t n = t->adapter.n_params * sizeof(float);
    memcpy(p, &hd, sizeof hd);
    memcpy(p + sizeof hd, t->adapter.params, n);
    memcpy(p + sizeof hd + n, t->m, n);
    memcpy(p + sizeof hd + 2 * n, t->v, n);
    if (t->best)
        memcpy(p + sizeof hd + 3 * n, t->best, n);
}

int trainer_state_load(trainer *t, const void *in, size_t len, char *err, size_t errlen)
{
    state_header hd = {0};
    hd.best_loss = INFINITY;
    if (len >= 4)
        memcpy(&hd.magic, in, 4);
    if (hd.magic != STATE_MAGIC && hd.magic != STATE_MAGIC2 && hd.magic != STATE_MAGIC3) {
        snprintf(err, errlen, "checkpoint: not a state of this adapter");
        return -1;
    }
    /* a checkpoint from before early stopping has no best parameters: the job then starts
     * looking for them at its next evaluation */
    const size_t head = header_bytes(hd.magic), n = t->adapter.n_params * sizeof(float);
    const int with_best = hd.magic == STATE_MAGIC3 && t->best;
    if (len != head + (3 + (size_t)with_best) * n) {
        snprintf(err, errlen, "checkpoint: %zu bytes, expected %zu for this adapter", len, trainer_state_bytes(t));
        return -1;
    }
    memcpy(&hd, in, head);
    if (hd.n_params != t->adapter.n_params || (int)hd.step > t->hyper.steps) {
        snprintf(err, errlen, "checkpoint: not a state of this adapter");
        return -1;
    }
    const char *p = (const char *)in + head;
    memcpy(t->adapter.params, p, n);
    memcpy(t->m, p + n, n);
    memcpy(t->v, p + 2 * n, n);
    if (with_best)
        memcpy(t->best, p + 3 * n, n);
    t->step = (int)hd.step;
    t->rng = hd.rng;
    t->cursor = hd.cursor;
    t->best_loss = with_best ? hd.best_loss : INFINITY;
    t->best_step = with_best ? (int)hd.best_step : 0;
    t->bad_evals = with_best ? (int)hd.bad_evals : 0;
    t->stopped_early = with_best && t->bad_evals >= t->hyper.patience; /* saved as it stopped */
    return 0;
}

/* ---- the loop ---- */

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Patience's bookkeeping after an evaluation: 1 when it says stop. */
static int note_eval(trainer *t, double eval_loss)
{
    if (!t->best)
        return 0;
    if (eval_loss < t->best_loss) {
        t->best_loss = eval_loss, t->best_step = t->step, t->bad_evals = 0;
        memcpy(t->best, t->adapter.params, t->adapter.n_params * sizeof(float));
        return 0;
    }
    return ++t->bad_evals >= t->hyper.patience;
}

int train_run(trainer *t, train_event_fn fn, void *ctx, const volatile int *cancel, char *err,
              size_t errlen)
{
    const train_hyper *h = &t->hyper;
    train_progress p = {t->step, h->steps, NAN, NAN, 0, 0, 0};
    while (t->step < h->steps && !t->stopped_early) {
        if (cancel && *cancel)
            return 1;
        double t0 = seconds();
        p.lr = trainer_lr(h, t->step);
        if (trainer_step(t, &p.loss, &p.grad_norm, err, errlen) < 0)
            return -1;
        p.step = t->step;
        p.tokens_per_s = (double)h->batch * h->seq_len * h->grad_accum / (seconds() - t0);
        if (fn && fn(ctx, t, TRAIN_EV_STEP, &p))
            return 1;
        int last = t->step == h->steps;
        if (t->n_eval && ((h->eval_every && t->step % h->eval_every == 0) || last)) {
            if (trainer_eval(t, &p.eval_loss, err, errlen) < 0)
                return -1;
            t->stopped_early = note_eval(t, p.eval_loss) && !last;
            if (fn && fn(ctx, t, TRAIN_EV_EVAL, &p))
                return 1;
        }
        if ((h->checkpoint_every && t->step % h->checkpoint_every == 0) || last || t->stopped_early) {
            int rc = fn ? fn(ctx, t, TRAIN_EV_CHECKPOINT, &p) : 0;
            if (rc < 0) {
                snprintf(err, errlen, "checkpoint at step %d could not be saved", t->step);
                return -1;
            }
            if (rc)
                return 1;
        }
    }
    if (t->best && t->best_loss < INFINITY) /* what early stopping publishes: the best evaluated */
        memcpy(t->adapter.params, t->best, t->adapter.n_params * sizeof(float));
    return 0;
}
