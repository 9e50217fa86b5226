/* cmd_train.c: qlora-tool train, and --adapter for eval and generate. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "peft.h"
#include "tool.h"
#include "train.h"

int tool_load_adapter(const char *cmd, const char *path, const llama_model *m, llama_lora *ad)
{
    char err[1024];
    uint64_t fp;
    if (peft_read(path, ad, &m->cfg, &fp, err, sizeof err) < 0) {
        fprintf(stderr, "qlora-tool %s: %s\n", cmd, err);
        return 1;
    }
    if (fp && fp != m->fingerprint) {
        fprintf(stderr, "qlora-tool %s: %s: trained on base %016" PRIx64 ", but this base (model and "
                        "quantization) is %016" PRIx64 "\n", cmd, path, fp, m->fingerprint);
        llama_lora_free(ad);
        return 1;
    }
    return 0;
}

typedef struct {
    const char *out;
    const llama_model *m;
    int json;
} train_ctx;

static int on_event(void *p, trainer *t, train_event ev, const train_progress *pr)
{
    train_ctx *c = p;
    if (ev == TRAIN_EV_STEP) {
        printf("step %d/%d  loss %.4f  lr %.3g  grad norm %.3g  %.0f tokens/s\n", pr->step,
               pr->total_steps, pr->loss, pr->lr, pr->grad_norm, pr->tokens_per_s);
    } else if (ev == TRAIN_EV_EVAL) {
        printf("step %d/%d  eval loss %.4f  (ppl %.4f)\n", pr->step, pr->total_steps, pr->eval_loss,
               exp(pr->eval_loss));
    } else {
        char err[512];
        if (peft_write(c->out, &t->adapter, &c->m->cfg, c->m->fingerprint, err, sizeof err) < 0) {
            fprintf(stderr, "qlora-tool train: %s\n", err);
            return -1;
        }
        printf("step %d/%d  checkpoint %s\n", pr->step, pr->total_steps, c->out);
    }
    fflush(stdout);
    return 0;
}

int cmd_train(int argc, char **argv)
{
    const char *cmd = "train", *data = NULL, *eval_data = NULL, *out = NULL, *chat_name = NULL;
    tool_model_opts o = {.spec = qt_spec_default(QT_NF4)};
    train_hyper h;
    int e, have_lr = 0, have_seq = 0, have_warmup = 0, have_steps = 0;
    /* lr and seq_len defaults depend on the model: set after it is loaded, unless given */
    train_hyper_default(&h, &(llama_config){.dim = 2048, .seq_len = 256});
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (tool_model_option(cmd, argc, argv, &i, &o, &e)) {
            if (e)
                return e;
            continue;
        }
        const train_hyper_field *f = NULL;
        for (size_t k = 0; k < train_hyper_n_fields && !f; k++)
            if (!strcmp(a, train_hyper_fields[k].flag))
                f = &train_hyper_fields[k];
        if (f && f->kind == HYPER_BOOL) { /* a bare flag */
            *(int *)((char *)&h + f->offset) = 1;
            continue;
        }
        if (!v)
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", a);
        i++;
        if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--eval-data")) eval_data = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--chat-template")) {
            if (train_vocab_set(&train_chat_templates, &h, v, strlen(v)) < 0) {
                char choices[160];
                train_vocab_choices(&train_chat_templates, choices, sizeof choices);
                return tool_fail(cmd, "--chat-template: '%s' is not %s", v, choices);
            }
            chat_name = h.chat_template == CHAT_MODEL ? NULL : v;
        }
        else if (!strncmp(a, "--", 2) && train_vocab_of(a + 2, strlen(a + 2))) { /* --method, --schedule, --init */
            const train_vocab *vocab = train_vocab_of(a + 2, strlen(a + 2));
            if (train_vocab_set(vocab, &h, v, strlen(v)) < 0) {
                char choices[128];
                train_vocab_choices(vocab, choices, sizeof choices);
                return tool_fail(cmd, "%s: '%s' is not %s", a, v, choices);
            }
        } else if (!strcmp(a, "--targets")) {
            char err[256];
            if (train_parse_targets(v, &h.targets, err, sizeof err) < 0)
                return tool_fail(cmd, "%s", err);
        } else if (f) {
            char *p = (char *)&h + f->offset;
            errno = 0;
            if (f->kind == HYPER_FLOAT) {
                *(float *)p = strtof(v, &end);
            } else if (f->kind == HYPER_U64) {
                *(uint64_t *)p = strtoull(v, &end, 10);
                errno = *v == '-' ? ERANGE : errno;
            } else {
                long x = strtol(v, &end, 10);
                errno = x < -2147483647 || x > 2147483647 ? ERANGE : errno;
                *(int *)p = (int)x;
            }
            if (*end || end == v || errno)
                return tool_fail(cmd, "%s: '%s' is not %s", a, v, f->kind == HYPER_FLOAT ? "a number" : "an integer");
            have_lr |= p == (char *)&h.lr;
            have_seq |= p == (char *)&h.seq_len;
            have_warmup |= p == (char *)&h.warmup;
            have_steps |= p == (char *)&h.steps;
        } else {
            return tool_fail(cmd, "unknown option '%s'", a);
        }
    }
    if (!data || !out)
        return tool_fail(cmd, "--data FILE and --out ADAPTER.safetensors are required");
    llama_model m, teacher;
    tok_tokenizer *tok;
    int rc = tool_load_model(cmd, &o, &m, &tok);
    if (rc)
        return rc;
    train_hyper d;
    train_hyper_default(&d, &m.cfg);
    if (!have_lr)
        h.lr = d.lr;
    train_hyper_fill(&h, have_steps, have_warmup);
    if (!have_seq)
        h.seq_len = d.seq_len;
    char err[1024];
    int *ids = NULL, *eval_ids = NULL, have_teacher = 0, is_sft = 0;
    size_t n = 0, n_eval = 0;
    sft_data sft = {0}, eval_sft = {0};
    sft_chat chat = {0};
    trainer t;
    memset(&t, 0, sizeof t);
    if (sft_chat_load(&chat, o.dir, chat_name, err, sizeof err) < 0) {
        rc = tool_fail(cmd, "%s", err);
        goto done;
    }
    if (train_hyper_check(&h, &m.cfg, err, sizeof err) < 0) {
        rc = tool_fail(cmd, "%s", err);
        goto done;
    }
    if ((rc = tool_sft_file(cmd, "--data", data, tok, &h, &chat, &sft, &is_sft)))
        goto done;
    if (is_sft) { /* examples (JSONL): eval data must be examples too */
        int eval_is_sft = 1;
        if (eval_data && (rc = tool_sft_file(cmd, "--eval-data", eval_data, tok, &h, &chat, &eval_sft, &eval_is_sft)))
            goto done;
        if (!eval_is_sft) {
            rc = tool_fail(cmd, "--eval-data: %s is plain text, --data holds examples (JSONL)", eval_data);
            goto done;
        }
        n = sft.n_tokens, n_eval = eval_sft.n;
    } else if ((rc = tool_tokenize_file(cmd, "--data", data, tok, &ids, &n)) ||
               (eval_data && (rc = tool_tokenize_file(cmd, "--eval-data", eval_data, tok, &eval_ids, &n_eval)))) {
        goto done;
    }
    if (h.method == TRAIN_RECOVERY) {
        if (tool_load_weights(&o, qt_spec_default(QT_F32), &teacher, err, sizeof err) < 0) {
            rc = tool_fail(cmd, "%s", err);
            goto done;
        }
        have_teacher = 1;
    }
    if (is_sft ? trainer_init_sft(&t, &m, &sft, eval_data ? &eval_sft : NULL, &h, err, sizeof err) < 0
               : trainer_init(&t, &m, have_teacher ? &teacher : NULL, ids, n, eval_ids, n_eval, &h, err, sizeof err) < 0) {
        rc = tool_fail(cmd, "%s", err);
        goto done;
    }
    printf("training %s on %s (%s, %zu tokens): rank %d, alpha %g, lr %g, %d steps of %d x %d tokens\n",
           train_vocab_name(&train_methods, h.method), o.dir, llama_quant_name(&m), n,
           h.rank, h.alpha, h.lr, t.hyper.steps, h.batch * h.grad_accum, h.seq_len);
    if (h.epochs)
        printf("epochs: %d (%d steps)\n", h.epochs, t.hyper.steps);
    if (!eval_data && h.validation_split > 0)
        printf("validation_split %g: %zu %s held out for evaluation\n", h.validation_split, t.n_eval,
               is_sft ? "examples" : "tokens");
    if (is_sft)
        printf("examples: %zu (%s), %zu tokens of which %zu carry loss, %zu cut to seq_len + 1\n", sft.n,
               sft.format == SFT_TEXT ? "text" : sft.format == SFT_MESSAGES ? "messages" : "prompt/completion", sft.n_tokens, sft.loss_tokens, sft.truncated);
    if (t.n_eval) { /* before training: the base alone (or the LoftQ start) */
        double start;
        if (trainer_eval(&t, &start, err, sizeof err) == 0)
            printf("step 0/%d  eval loss %.4f  (ppl %.4f)\n", t.hyper.steps, start, exp(start));
    }
    train_ctx ctx = {out, &m, 0};
    int r = train_run(&t, on_event, &ctx, NULL, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "qlora-tool train: %s\n", err);
        rc = 1;
    } else if (r == 0 && t.best) { /* patience: the best-evaluated adapter is the result */
        if (peft_write(out, &t.adapter, &m.cfg, m.fingerprint, err, sizeof err) < 0) {
            fprintf(stderr, "qlora-tool train: %s\n", err);
            rc = 1;
        } else {
            printf("%s at step %d: kept the best-evaluated adapter, of step %d (eval loss %.4f) in %s\n",
                   t.stopped_early ? "stopped early" : "done", t.step, t.best_step, t.best_loss, out);
        }
    }
done:
    trainer_free(&t);
    free(ids);
    free(eval_ids);
    sft_free(&sft);
    sft_free(&eval_sft);
    sft_chat_free(&chat);
    if (have_teacher)
        llama_free(&teacher);
    tok_free(tok);
    llama_free(&m);
    return rc;
}
