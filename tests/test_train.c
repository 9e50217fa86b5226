/* test_train.c: the training library on stories260K over an nf4 base, with TinyStories
 * text from the shared directory (argv[1]):
 *  - bad hyper-parameters and bad data are refused before any work, naming the field;
 *  - training lowers the loss on held-out text;
 *  - the same seed gives the same loss curve, bit for bit; another seed another curve;
 *  - a run stopped after a checkpoint and resumed from it equals an uninterrupted run;
 *  - a non-finite loss stops the run with a clear error, no update, the checkpoint intact;
 *  - recovery (KL to the f32 teacher) lowers the KL on held-out text;
 *  - an adapter written as PEFT safetensors reads back bit-exact. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "peft.h"
#include "tap.h"
#include "tokenizer.h"
#include "train.h"

static llama_model model, teacher;
static const sft_data *run_sft; /* run_steps trains on these examples when set */
static int *train_ids, *valid_ids;
static size_t n_train, n_valid;

/* The first `limit` bytes of a text file, tokenized (BOS first). */
static int *read_text(const char *path, const tok_tokenizer *tok, size_t limit, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(limit);
    size_t len = buf ? fread(buf, 1, limit, f) : 0;
    fclose(f);
    int *ids = NULL;
    if (!buf || tok_encode(tok, buf, len, TOK_ADD_SPECIAL, &ids, n) < 0)
        ids = NULL;
    free(buf);
    return ids;
}

static train_hyper small_hyper(void)
{
    train_hyper h;
    train_hyper_default(&h, &model.cfg);
    h.rank = 4, h.alpha = 8, h.steps = 6, h.batch = 2, h.seq_len = 64, h.warmup = 2;
    h.eval_every = 0, h.checkpoint_every = 0;
    return h;
}

static void test_bad_hyper(void)
{
    struct {
        const char *what, *field;
        void (*set)(train_hyper *);
    } cases[] = {
        {"rank 0", "rank:", NULL}, {"negative lr", "lr:", NULL}, {"seq_len over the model's", "seq_len:", NULL},
        {"batch 0", "batch_size:", NULL}, {"steps 0", "steps:", NULL}, {"dropout 1", "dropout:", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        train_hyper h = small_hyper();
        char err[256] = "";
        if (i == 0) h.rank = 0;
        if (i == 1) h.lr = -1e-3f;
        if (i == 2) h.seq_len = model.cfg.seq_len + 1;
        if (i == 3) h.batch = 0;
        if (i == 4) h.steps = 0;
        if (i == 5) h.dropout = 1.0f;
        CHECK(train_hyper_check(&h, &model.cfg, err, sizeof err) < 0, "%s accepted", cases[i].what);
        CHECK(strncmp(err, cases[i].field, strlen(cases[i].field)) == 0, "'%s' does not start with %s", err,
              cases[i].field);
        trainer t;
        CHECK(trainer_init(&t, &model, NULL, train_ids, n_train, NULL, 0, &h, err, sizeof err) < 0,
              "trainer_init accepted %s", cases[i].what);
    }
    train_hyper h = small_hyper();
    CHECK(train_hyper_check(&h, &model.cfg, (char[64]){0}, 64) == 0, "the defaults are refused");
    test_case("bad hyper-parameters are refused, naming the field");

    char err[256] = "";
    unsigned targets;
    CHECK(train_parse_targets("q,k,lm_head", &targets, err, sizeof err) < 0, "lm_head accepted");
    CHECK(strstr(err, "'lm_head'") != NULL, "%s", err);
    CHECK(train_parse_targets("", &targets, err, sizeof err) < 0, "empty list accepted");
    CHECK(train_parse_targets("q_proj,v", &targets, err, sizeof err) == 0 &&
              targets == (1u << LIN_Q | 1u << LIN_V), "q_proj,v");
    CHECK(train_parse_targets("all-linear", &targets, err, sizeof err) == 0 && targets == (1u << LIN_COUNT) - 1,
          "all-linear");
    test_case("targets: PEFT and short names parsed, unknown and empty refused");

    trainer t;
    CHECK(trainer_init(&t, &model, NULL, train_ids, 0, NULL, 0, &h, err, sizeof err) < 0, "empty data accepted");
    CHECK(strncmp(err, "data:", 5) == 0, "%s", err);
    CHECK(trainer_init(&t, &model, NULL, train_ids, (size_t)h.seq_len, NULL, 0, &h, err, sizeof err) < 0,
          "data of seq_len tokens accepted");
    int bad[80];
    memcpy(bad, train_ids, sizeof bad);
    bad[40] = model.cfg.vocab_size;
    CHECK(trainer_init(&t, &model, NULL, bad, 80, NULL, 0, &h, err, sizeof err) < 0, "token out of range accepted");
    CHECK(strstr(err, "at 40") != NULL, "%s", err);
    h.method = TRAIN_RECOVERY;
    CHECK(trainer_init(&t, &model, NULL, train_ids, n_train, NULL, 0, &h, err, sizeof err) < 0,
          "recovery without a teacher accepted");
    test_case("empty, short or out-of-vocabulary data is refused before any work");
}

/* Runs `steps` steps from a fresh trainer (or from state), recording the losses. */
static int run_steps(const train_hyper *h, const void *state, size_t state_len, int steps, double *losses,
                     void **state_out, size_t *state_out_len, float **params_out)
{
    trainer t;
    char err[512];
    if ((run_sft ? trainer_init_sft(&t, &model, run_sft, NULL, h, err, sizeof err)
                 : trainer_init(&t, &model, NULL, train_ids, n_train, valid_ids, n_valid, h, err, sizeof err)) < 0) {
        CHECK(0, "%s", err);
        return -1;
    }
    if (state && trainer_state_load(&t, state, state_len, err, sizeof err) < 0) {
        CHECK(0, "%s", err);
        trainer_free(&t);
        return -1;
    }
    for (int s = 0; s < steps; s++) {
        double gn;
        if (trainer_step(&t, &losses[s], &gn, err, sizeof err) < 0) {
            CHECK(0, "%s", err);
            trainer_free(&t);
            return -1;
        }
    }
    if (state_out) {
        *state_out_len = trainer_state_bytes(&t);
        *state_out = malloc(*state_out_len);
        trainer_state_save(&t, *state_out);
    }
    if (params_out) {
        *params_out = malloc(t.adapter.n_params * sizeof(float));
        memcpy(*params_out, t.adapter.params, t.adapter.n_params * sizeof(float));
    }
    trainer_free(&t);
    return 0;
}

static void test_determinism_and_resume(void)
{
    train_hyper h = small_hyper();
    h.dropout = 0.1f; /* the masks too must follow the seed and the step */
    double a[6], b[6], c[6], r[6];
    float *pa = NULL, *pr = NULL;
    run_steps(&h, NULL, 0, 6, a, NULL, NULL, &pa);
    run_steps(&h, NULL, 0, 6, b, NULL, NULL, NULL);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, losses differ: %.9g vs %.9g at step 1", a[0], b[0]);
    h.seed = 7;
    run_steps(&h, NULL, 0, 6, c, NULL, NULL, NULL);
    CHECK(memcmp(a, c, sizeof a) != 0, "seed 7 gives the curve of seed 0");
    test_case("the same seed gives the same loss curve bit for bit (%.4f -> %.4f), another seed another",
              a[0], a[5]);

    h.seed = 0;
    void *state;
    size_t len;
    run_steps(&h, NULL, 0, 3, r, &state, &len, NULL);
    run_steps(&h, state, len, 3, r + 3, NULL, NULL, &pr);
    CHECK(memcmp(a, r, sizeof a) == 0, "resumed curve differs at step 4: %.9g vs %.9g", r[3], a[3]);
    CHECK(pa && pr, "params");
    trainer t;
    char err[256];
    int inited = trainer_init(&t, &model, NULL, train_ids, n_train, NULL, 0, &h, err, sizeof err) == 0;
    CHECK(inited, "%s", err);
    if (inited) {
        CHECK(pa && pr && memcmp(pa, pr, t.adapter.n_params * sizeof(float)) == 0, "resumed adapter differs");
        CHECK(trainer_state_load(&t, state, len - 4, err, sizeof err) < 0, "truncated state accepted");
        ((char *)state)[0] ^= 1;
        CHECK(trainer_state_load(&t, state, len, err, sizeof err) < 0, "state with a bad magic accepted");
        trainer_free(&t);
    }
    test_case("3 steps, checkpoint, 3 steps from it in a new trainer == 6 steps straight (losses and adapter)");
    free(state);
    free(pa);
    free(pr);
}

typedef struct {
    void *saved;
    size_t len;
    int saved_step, poison_at;
    double first_eval, last_eval;
    int evals;
} run_ctx;

static int on_event(void *p, trainer *t, train_event ev, const train_progress *pr)
{
    run_ctx *c = p;
    if (ev == TRAIN_EV_EVAL) {
        c->last_eval = pr->eval_loss;
        c->evals++;
    } else if (ev == TRAIN_EV_CHECKPOINT) {
        free(c->saved);
        c->len = trainer_state_bytes(t);
        c->saved = malloc(c->len);
        if (!c->saved)
            return -1;
        trainer_state_save(t, c->saved);
        c->saved_step = t->step;
    } else if (t->step == c->poison_at) {
        t->adapter.params[0] = NAN; /* what a diverging run ends up with */
    }
    return 0;
}

static void test_nan_stops(void)
{
    train_hyper h = small_hyper();
    h.steps = 8, h.checkpoint_every = 2;
    trainer t;
    char err[512] = "";
    if (trainer_init(&t, &model, NULL, train_ids, n_train, NULL, 0, &h, err, sizeof err) < 0) {
        CHECK(0, "%s", err);
        test_case("NaN");
        return;
    }
    run_ctx c = {.poison_at = 5};
    int rc = train_run(&t, on_event, &c, NULL, err, sizeof err);
    CHECK(rc == -1, "train_run returned %d", rc);
    CHECK(strstr(err, "non-finite loss at step 6") != NULL, "message: %s", err);
    CHECK(t.step == 5, "the failed step counted: step %d", t.step);
    CHECK(c.saved_step == 4, "last checkpoint at step %d", c.saved_step);
    trainer u;
    int inited = trainer_init(&u, &model, NULL, train_ids, n_train, NULL, 0, &h, err, sizeof err) == 0;
    CHECK(inited, "%s", err);
    if (inited) {
        CHECK(trainer_state_load(&u, c.saved, c.len, err, sizeof err) == 0, "%s", err);
        int finite = 1;
        for (size_t i = 0; i < u.adapter.n_params; i++)
            finite &= isfinite(u.adapter.params[i]) != 0;
        CHECK(finite && u.step == 4, "the checkpoint is not a good state");
        double loss, gn;
        CHECK(trainer_step(&u, &loss, &gn, err, sizeof err) == 0 && isfinite(loss), "cannot go on from it");
        trainer_free(&u);
    }
    test_case("a NaN loss stops the run before the update (%s); the step-4 checkpoint is intact", err);
    free(c.saved);
    trainer_free(&t);
}

static void test_training_helps(train_method method)
{
    train_hyper h = small_hyper();
    h.method = method;
    h.steps = 40, h.batch = 4, h.seq_len = 128, h.rank = 8, h.alpha = 16;
    trainer t;
    char err[512];
    if (trainer_init(&t, &model, method == TRAIN_RECOVERY ? &teacher : NULL, train_ids, n_train, valid_ids,
                     n_valid, &h, err, sizeof err) < 0) {
        CHECK(0, "%s", err);
        test_case("training");
        return;
    }
    double before, first = 0, loss, gn;
    CHECK(trainer_eval(&t, &before, err, sizeof err) == 0, "%s", err);
    /* the training loss of the same held-out text for recovery: KL to the teacher */
    for (int s = 0; s < h.steps; s++) {
        CHECK(trainer_step(&t, &loss, &gn, err, sizeof err) == 0, "%s", err);
        if (s == 0)
            first = loss;
    }
    double after;
    CHECK(trainer_eval(&t, &after, err, sizeof err) == 0, "%s", err);
    if (method == TRAIN_LORA) {
        CHECK(after < before - 0.05, "held-out loss %.4f -> %.4f", before, after);
        test_case("lora: 40 steps lower the held-out loss %.4f -> %.4f (ppl %.3f -> %.3f)", before, after,
                  exp(before), exp(after));
    } else {
        /* KL falls, and the held-out cross-entropy moves towards the teacher's */
        CHECK(loss < 0.7 * first, "KL %.5f -> %.5f", first, loss);
        CHECK(after < before, "held-out loss %.4f -> %.4f", before, after);
        test_case("recovery: KL to the f32 teacher %.5f -> %.5f, held-out loss %.4f -> %.4f", first, loss, before,
                  after);
    }
    if (method == TRAIN_LORA) {
        char path[] = "/tmp/qlora-test-train-XXXXXX";
        int fd = mkstemp(path);
        if (fd >= 0)
            close(fd);
        llama_lora back;
        uint64_t fp = 0;
        CHECK(peft_write(path, &t.adapter, &model.cfg, model.fingerprint, err, sizeof err) == 0, "%s", err);
        CHECK(peft_read(path, &back, &model.cfg, &fp, err, sizeof err) == 0, "%s", err);
        CHECK(fp == model.fingerprint, "fingerprint");
        CHECK(back.n_params == t.adapter.n_params && back.rank == 8 && back.alpha == 16 &&
                  back.targets == t.adapter.targets &&
                  memcmp(back.params, t.adapter.params, back.n_params * sizeof(float)) == 0,
              "read back differs");
        llama_lora_free(&back);
        llama_config other = model.cfg;
        other.dim *= 2;
        CHECK(peft_read(path, &back, &other, &fp, err, sizeof err) < 0, "read onto another shape");
        CHECK(strstr(err, path) != NULL && strstr(err, "shape") != NULL, "message: %s", err);
        unlink(path);
        test_case("PEFT safetensors round trip bit-exact; another shape refused (%s)", err);
    }
    trainer_free(&t);
}

/* SFT examples: packing into rows (starts, targets, padding, the epoch's order), and a
 * run resumed from a checkpoint mid-epoch equal to an uninterrupted one. */
static void test_sft(const tok_tokenizer *tok)
{
    static const char jsonl[] =
        "{\"prompt\": \"Once upon a time\", \"completion\": \" there was a cat.\"}\n"
        "{\"prompt\": \"Tom saw\", \"completion\": \" a big red ball.\"}\n"
        "\n"
        "{\"prompt\": \"The sun\", \"completion\": \" was warm and bright that day.\"}\n"
        "{\"prompt\": \"Lily\", \"completion\": \" smiled.\"}\n";
    sft_data d;
    char err[512];
    const sft_options plain = {0};
    if (sft_parse(&d, "pairs.jsonl", jsonl, sizeof jsonl - 1, tok, &plain, err, sizeof err) < 0) {
        CHECK(0, "%s", err);
        test_case("SFT parse");
        return;
    }
    /* every example: BOS, its prompt's tokens carry no loss, its completion's and EOS do */
    int layout_ok = d.n == 4 && d.format == SFT_PROMPT_COMPLETION;
    for (size_t e = 0; e < d.n && layout_ok; e++) {
        size_t a = d.offset[e], len = d.offset[e + 1] - a, first = len;
        for (size_t i = 0; i < len; i++)
            if (d.loss[a + i] && first == len)
                first = i;
        layout_ok = d.ids[a] == tok_bos_id(tok) && d.ids[a + len - 1] == tok_eos_id(tok) && !d.loss[a] && first > 1;
        for (size_t i = first; i < len; i++)
            layout_ok &= d.loss[a + i];
    }
    CHECK(layout_ok, "examples: BOS, prompt without loss, completion and EOS with it");
    /* rows of 16: whole examples, each token attending from its example's first slot */
    const int T = 16, B = 3;
    int in[48], tg[48], st[48];
    uint64_t cursor = 0;
    sft_order order, o1, o2;
    CHECK(sft_order_init(&order, &d) == 0 && sft_order_init(&o1, &d) == 0 && sft_order_init(&o2, &d) == 0, "alloc");
    size_t carried = sft_fill_rows(&d, 5, &cursor, UINT64_MAX, &order, B, T, in, tg, st);
    size_t carried_seen = 0, slots = 0, bad = 0;
    for (int r = 0; r < B * T; r++) {
        carried_seen += tg[r] >= 0;
        int t = r % T;
        bad += st[r] > t;                           /* a start is at or before its token */
        if (tg[r] >= 0) {                           /* a target is the next token of the same example */
            bad += t + 1 < T && st[r + 1] != st[r];
            slots++;
        }
    }
    CHECK(carried == carried_seen && slots > 0 && bad == 0, "rows: %zu carried, %zu seen, %zu bad", carried,
          carried_seen, bad);
    CHECK(cursor >= 3, "three rows of 16 take at least three of these examples (cursor %llu)",
          (unsigned long long)cursor);
    /* the next epoch's order follows the seed: the same seed packs the same rows again */
    int in2[48], tg2[48], st2[48];
    uint64_t c1 = 100, c2 = 100;
    sft_fill_rows(&d, 9, &c1, UINT64_MAX, &o1, B, T, in, tg, st);
    sft_fill_rows(&d, 9, &c2, UINT64_MAX, &o2, B, T, in2, tg2, st2);
    sft_order_free(&order);
    sft_order_free(&o1);
    sft_order_free(&o2);
    CHECK(memcmp(in, in2, sizeof in) == 0 && memcmp(tg, tg2, sizeof tg) == 0 && c1 == c2, "packing is deterministic");
    test_case("SFT examples: BOS, unlearned prompt, learned completion + EOS; packed rows keep each target in its "
              "example and count %zu loss tokens", carried);

    /* resume mid-epoch, with 2 micro-batches a step (epochs pass every step or two) */
    train_hyper h = small_hyper();
    h.seq_len = 32, h.grad_accum = 2;
    sft_cut(&d, (size_t)h.seq_len + 1);
    run_sft = &d;
    double a[6], r[6];
    float *pa = NULL, *pr = NULL;
    void *state = NULL;
    size_t len = 0;
    run_steps(&h, NULL, 0, 6, a, NULL, NULL, &pa);
    run_steps(&h, NULL, 0, 3, r, &state, &len, NULL);
    if (state)
        run_steps(&h, state, len, 3, r + 3, NULL, NULL, &pr);
    trainer t;
    if (trainer_init_sft(&t, &model, &d, NULL, &h, err, sizeof err) == 0) {
        CHECK(pa && pr && memcmp(pa, pr, t.adapter.n_params * sizeof(float)) == 0 && memcmp(a, r, sizeof a) == 0,
              "resumed SFT run differs (loss at step 4: %.9g vs %.9g)", r[3], a[3]);
        trainer_free(&t);
    } else {
        CHECK(0, "%s", err);
    }
    run_sft = NULL;
    test_case("SFT: 3 steps, checkpoint, 3 steps in a new trainer == 6 steps straight, across epochs (%.4f -> %.4f)",
              a[0], a[5]);
    free(state);
    free(pa);
    free(pr);
    /* a conversation (the built-in chatml template): the assistant's words and its
     * end-of-turn marker carry loss, a weight-0 reply, the user's and the system's do not */
    {
        static const char chat[] = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                                   "{\"role\": \"user\", \"content\": \"Tell me about a cat.\"}, "
                                   "{\"role\": \"assistant\", \"content\": \"The cat sat.\", \"weight\": 0}, "
                                   "{\"role\": \"user\", \"content\": \"More.\"}, "
                                   "{\"role\": \"assistant\", \"content\": \"It was happy.\"}]}\n";
        chat_template *ct = NULL;
        const char *src = chat_template_builtin("chatml");
        sft_data cd = {0};
        int ok = src && chat_template_compile(&ct, src, strlen(src), "chatml", err, sizeof err) == 0;
        const sft_options co = {0, ct, NULL, NULL};
        ok = ok && sft_parse(&cd, "chat.jsonl", chat, sizeof chat - 1, tok, &co, err, sizeof err) == 0;
        CHECK(ok, "%s", err);
        char *learned = NULL, *all = NULL;
        if (ok) { /* the loss-carrying tokens, decoded in runs */
            int *run = malloc(cd.n_tokens * sizeof(int));
            size_t k = 0;
            for (size_t i = 0; run && i < cd.n_tokens; i++)
                if (cd.loss[i])
                    run[k++] = cd.ids[i];
            learned = run ? tok_decode_all(tok, 0, run, k) : NULL;
            all = tok_decode_all(tok, 0, cd.ids, cd.n_tokens);
            free(run);
        }
        CHECK(learned && all && strstr(learned, "It was happy.<|im_end|>") && !strstr(learned, "The cat sat") &&
                  !strstr(learned, "Tell me") && !strstr(learned, "brief") && !strstr(learned, "assistant") &&
                  strstr(all, "<|im_start|>assistant\nThe cat sat.<|im_end|>"),
              "learned text '%s' of '%s'", learned ? learned : "?", all ? all : "?");
        free(learned);
        free(all);
        sft_free(&cd);
        chat_template_free(ct);
        test_case("SFT messages (chatml): only the weighted assistant reply and its <|im_end|> carry loss");
    }

    /* a recovery job on examples is refused */
    h.method = TRAIN_RECOVERY;
    CHECK(trainer_init_sft(&t, &model, &d, NULL, &h, err, sizeof err) < 0 && strstr(err, "method"), "%s", err);
    test_case("SFT: recovery is refused on examples (%s)", err);
    sft_free(&d);
}

/* The examples e of d, alone, as a data set of one (pointing into d). */
static sft_data one_example(const sft_data *d, size_t e, size_t *offs)
{
    sft_data one = *d;
    offs[0] = 0, offs[1] = d->offset[e + 1] - d->offset[e];
    one.ids = d->ids + d->offset[e], one.loss = d->loss + d->offset[e], one.offset = offs;
    one.n = 1, one.n_tokens = offs[1], one.loss_tokens = 0;
    for (size_t i = 0; i < offs[1]; i++)
        one.loss_tokens += one.loss[i];
    return one;
}

/* Epochs, the held-out split, packed evaluation and early stopping on examples, and
 * epochs and the split on plain text. */
static void test_epochs(const tok_tokenizer *tok)
{
    /* 30 examples of varied lengths */
    char *jsonl = malloc(30 * 200);
    size_t used = 0;
    static const char *const words[] = {"cat", "dog", "ball", "tree", "sun", "boat"};
    for (int i = 0; jsonl && i < 30; i++) {
        used += (size_t)sprintf(jsonl + used, "{\"prompt\": \"Once there was a %s\", \"completion\": \"",
                                words[i % 6]);
        for (int k = 0; k <= i % 7; k++)
            used += (size_t)sprintf(jsonl + used, " and a %s", words[(i + k) % 6]);
        used += (size_t)sprintf(jsonl + used, ".\"}\n");
    }
    sft_data d = {0};
    char err[512] = "";
    const sft_options plain = {0};
    if (!jsonl || sft_parse(&d, "epochs.jsonl", jsonl, used, tok, &plain, err, sizeof err) < 0) {
        CHECK(0, "%s", err);
        test_case("epochs");
        free(jsonl);
        return;
    }
    free(jsonl);
    /* three epochs: the packer's step count takes every example three times, no more */
    const int B = 2, T = 48, accum = 2, E = 3;
    sft_cut(&d, (size_t)T + 1);
    int steps = 0;
    CHECK(sft_steps(&d, 7, (uint64_t)E * d.n, B * accum, T, &steps) == 0 && steps > 0, "sft_steps");
    int *buf = malloc(3 * (size_t)B * T * sizeof(int));
    sft_order o;
    CHECK(buf && sft_order_init(&o, &d) == 0, "alloc");
    uint64_t cursor = 0, before_last = 0;
    size_t carried = 0;
    for (int s = 0; buf && s < steps; s++) {
        before_last = cursor;
        for (int a = 0; a < accum; a++)
            carried += sft_fill_rows(&d, 7, &cursor, (uint64_t)E * d.n, &o, B, T, buf, buf + B * T, buf + 2 * B * T);
    }
    sft_order_free(&o);
    free(buf);
    CHECK(cursor == (uint64_t)E * d.n && before_last < cursor, "after %d steps cursor %llu of %zu", steps,
          (unsigned long long)cursor, E * d.n);
    CHECK(carried == (size_t)E * d.loss_tokens, "loss tokens trained %zu, %d x %zu in the data", carried, E,
          d.loss_tokens);
    train_hyper h = small_hyper();
    h.batch = B, h.seq_len = T, h.grad_accum = accum, h.epochs = E, h.steps = 0, h.warmup = 1000, h.seed = 7;
    trainer t;
    int ok = trainer_init_sft(&t, &model, &d, NULL, &h, err, sizeof err) == 0;
    CHECK(ok && t.hyper.steps == steps && t.hyper.warmup == steps, "%s (steps %d, warmup %d)", err,
          ok ? t.hyper.steps : -1, ok ? t.hyper.warmup : -1);
    if (ok) {
        int rc = train_run(&t, NULL, NULL, NULL, err, sizeof err);
        CHECK(rc == 0 && t.step == steps && t.cursor == (uint64_t)E * d.n, "run: rc %d step %d cursor %llu", rc,
              t.step, (unsigned long long)t.cursor);
        trainer_free(&t);
    }
    h.steps = 2, h.warmup = 1; /* with steps too: at most that many */
    ok = trainer_init_sft(&t, &model, &d, NULL, &h, err, sizeof err) == 0;
    CHECK(ok && t.hyper.steps == 2, "%s", err);
    if (ok)
        trainer_free(&t);
    test_case("epochs %d on %zu examples: %d steps take each example %d times (%zu loss tokens each pass); steps "
              "bounds them; warmup fits", E, d.n, steps, E, d.loss_tokens);

    /* packed evaluation = the token-weighted mean of the examples evaluated one by one */
    double packed, prompts, sum = 0;
    size_t count = 0;
    CHECK(sft_eval(&model, NULL, &d, T, &packed, &prompts, err, sizeof err) == 0, "%s", err);
    for (size_t e = 0; e < d.n; e++) {
        size_t offs[2];
        sft_data one = one_example(&d, e, offs);
        double nll;
        CHECK(sft_eval(&model, NULL, &one, T, &nll, &prompts, err, sizeof err) == 0, "%s", err);
        size_t carrying = one.loss_tokens - one.loss[0]; /* the first token is no target */
        sum += nll * (double)carrying, count += carrying;
    }
    CHECK(fabs(packed - sum / (double)count) < 1e-5 * fabs(packed), "packed %.9g, one by one %.9g", packed,
          sum / (double)count);
    test_case("SFT eval packed = examples one by one (%.6f): each example counted once", packed);

    /* the split: disjoint, covering, the share asked, the same for the same seed */
    sft_data tr, he, tr2, he2;
    ok = sft_split(&d, 0.2, 3, &tr, &he) == 0;
    CHECK(ok, "split");
    if (ok) {
        CHECK(he.n == 6 && tr.n + he.n == d.n && tr.n_tokens + he.n_tokens == d.n_tokens &&
                  tr.loss_tokens + he.loss_tokens == d.loss_tokens, "split %zu + %zu of %zu", tr.n, he.n, d.n);
        /* every example of d is in exactly one of them */
        size_t found = 0;
        for (size_t e = 0; e < d.n; e++) {
            size_t len = d.offset[e + 1] - d.offset[e], hits = 0;
            const sft_data *sets[2] = {&tr, &he};
            for (int k = 0; k < 2; k++)
                for (size_t f = 0; f < sets[k]->n; f++)
                    hits += sets[k]->offset[f + 1] - sets[k]->offset[f] == len &&
                            !memcmp(sets[k]->ids + sets[k]->offset[f], d.ids + d.offset[e], len * sizeof(int));
            found += hits >= 1;
        }
        CHECK(found == d.n, "%zu of %zu examples found", found, d.n);
        CHECK(sft_split(&d, 0.2, 3, &tr2, &he2) == 0 && he2.n_tokens == he.n_tokens &&
                  !memcmp(he2.ids, he.ids, he.n_tokens * sizeof(int)), "the same seed, another split");
        sft_free(&tr2), sft_free(&he2), sft_free(&tr), sft_free(&he);
    }
    h = small_hyper();
    h.batch = B, h.seq_len = T, h.validation_split = 0.2f;
    ok = trainer_init_sft(&t, &model, &d, NULL, &h, err, sizeof err) == 0;
    CHECK(ok && t.n_eval == 6 && t.sft->n == 24, "%s", err);
    if (ok)
        trainer_free(&t);
    test_case("validation_split 0.2 of %zu examples: 6 held out, disjoint, covering, by the seed", d.n);

    /* early stopping: a step size that makes things worse stops after `patience` evaluations
     * and keeps the best-evaluated adapter; resumed mid-run it ends where a straight run does */
    h = small_hyper();
    h.batch = B, h.seq_len = T, h.validation_split = 0.2f, h.steps = 40, h.eval_every = 1, h.patience = 2;
    h.lr = 0.5f, h.schedule = SCHED_CONSTANT, h.warmup = 0, h.max_grad_norm = 0;
    ok = trainer_init_sft(&t, &model, &d, NULL, &h, err, sizeof err) == 0;
    CHECK(ok, "%s", err);
    if (ok) {
        int rc = train_run(&t, NULL, NULL, NULL, err, sizeof err);
        double now;
        CHECK(rc == 0 && t.stopped_early && t.step < h.steps && t.step - t.best_step == h.patience,
              "rc %d, stopped %d at %d, best %d", rc, t.stopped_early, t.step, t.best_step);
        CHECK(trainer_eval(&t, &now, err, sizeof err) == 0 && now == t.best_loss, "kept %.9g, best %.9g", now,
              t.best_loss);
        test_case("patience 2: stopped at step %d, 2 evaluations after the best (step %d, %.4f), which it keeps",
                  t.step, t.best_step, t.best_loss);
        int stop_step = t.step, best_step = t.best_step;
        float *straight = malloc(t.adapter.n_params * sizeof(float));
        if (straight)
            memcpy(straight, t.adapter.params, t.adapter.n_params * sizeof(float));
        trainer_free(&t);
        /* again, cut after the first checkpoint and resumed from it */
        h.checkpoint_every = best_step > 1 ? best_step - 1 : 1;
        run_ctx c = {0};
        trainer u;
        ok = straight && trainer_init_sft(&u, &model, &d, NULL, &h, err, sizeof err) == 0;
        if (ok) {
            for (int s = 0; s < h.checkpoint_every + 1; s++) { /* past the checkpoint: lost with the crash */
                double loss, gn, ev;
                trainer_step(&u, &loss, &gn, err, sizeof err);
                if (trainer_eval(&u, &ev, err, sizeof err) == 0 && ev < u.best_loss) {
                    u.best_loss = ev, u.best_step = u.step, u.bad_evals = 0;
                    memcpy(u.best, u.adapter.params, u.adapter.n_params * sizeof(float));
                }
                if (u.step == h.checkpoint_every)
                    on_event(&c, &u, TRAIN_EV_CHECKPOINT, NULL);
            }
            trainer_free(&u);
        }
        ok = ok && c.saved && trainer_init_sft(&u, &model, &d, NULL, &h, err, sizeof err) == 0;
        CHECK(ok, "%s", err);
        if (ok) {
            CHECK(trainer_state_load(&u, c.saved, c.len, err, sizeof err) == 0, "%s", err);
            int rc2 = train_run(&u, NULL, NULL, NULL, err, sizeof err);
            CHECK(rc2 == 0 && u.step == stop_step && u.best_step == best_step &&
                      !memcmp(u.adapter.params, straight, u.adapter.n_params * sizeof(float)),
                  "resumed: stopped at %d (straight %d), best %d (%d)", u.step, stop_step, u.best_step, best_step);
            trainer_free(&u);
        }
        test_case("patience: resumed from the step-%d checkpoint it stops and keeps what the straight run does",
                  h.checkpoint_every);
        free(c.saved);
        free(straight);
    }
    h.validation_split = 0, h.patience = 1;
    CHECK(trainer_init_sft(&t, &model, &d, NULL, &h, err, sizeof err) < 0 && strstr(err, "patience"), "%s", err);
    test_case("patience without eval data is refused (%s)", err);
    sft_free(&d);

    /* plain text: an epoch is the stream's tokens; the split holds out its tail */
    h = small_hyper();
    h.epochs = 2, h.steps = 0, h.validation_split = 0.1f;
    ok = trainer_init(&t, &model, NULL, train_ids, n_train, NULL, 0, &h, err, sizeof err) == 0;
    size_t held = (size_t)((double)n_train * 0.1f);
    long want = (long)ceil(2.0 * (double)(n_train - held) / ((double)h.batch * h.seq_len));
    CHECK(ok && t.n_eval == held && t.n_tokens == n_train - held && t.eval_tokens == train_ids + n_train - held &&
              t.hyper.steps == want, "%s: steps %d, want %ld; eval %zu", err, ok ? t.hyper.steps : -1, want,
          ok ? (size_t)t.n_eval : 0);
    if (ok)
        trainer_free(&t);
    test_case("plain text: 2 epochs of %zu tokens = %ld steps; validation_split holds out the last %zu", n_train - held,
              want, held);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_train SHARED_DIR\n");
        return 2;
    }
    char dir[4096], path[4200], err[512];
    snprintf(dir, sizeof dir, "%.4000s/models/stories260K", argv[1]);
    if (llama_load(&model, dir, qt_spec_default(QT_NF4), err, sizeof err) < 0 ||
        llama_load(&teacher, dir, qt_spec_default(QT_F32), err, sizeof err) < 0) {
        printf("not ok 1 - load: %s\n1..1\n", err);
        return 1;
    }
    tok_tokenizer *tok;
    if (tok_load_dir(&tok, dir, model.cfg.vocab_size, err, sizeof err) < 0) {
        printf("not ok 1 - tokenizer: %s\n1..1\n", err);
        return 1;
    }
    snprintf(path, sizeof path, "%.4000s/data/tinystories_train.txt", argv[1]);
    train_ids = read_text(path, tok, 200000, &n_train);
    snprintf(path, sizeof path, "%.4000s/data/tinystories_valid.txt", argv[1]);
    valid_ids = read_text(path, tok, 20000, &n_valid);
    test_sft(tok);
    if (!train_ids || !valid_ids) {
        printf("not ok 1 - cannot read the TinyStories text under %s/data\n1..1\n", argv[1]);
        return 1;
    }
    test_bad_hyper();
    test_determinism_and_resume();
    test_nan_stops();
    test_epochs(tok);
    test_training_helps(TRAIN_LORA);
    test_training_helps(TRAIN_RECOVERY);
    tok_free(tok);
    free(train_ids);
    free(valid_ids);
    llama_free(&model);
    llama_free(&teacher);
    return tap_done();
}
