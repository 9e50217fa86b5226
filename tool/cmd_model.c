/* cmd_model.c: qlora-tool eval, generate, inspect. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate.h"
#include "gguf.h"
#include "json.h"
#include "mapfile.h"
#include "model.h"
#include "tokenizer.h"
#include "tool.h"

int tool_model_option(const char *cmd, int argc, char **argv, int *i, tool_model_opts *o, int *err)
{
    const char *a = argv[*i];
    int has = *i + 1 < argc;
    *err = 0;
    if (!strcmp(a, "--model") && has) {
        o->dir = argv[++*i];
    } else if (!strcmp(a, "--quant") && has) {
        qt_format f;
        if (llama_quant_parse(argv[++*i], &f) < 0) {
            *err = tool_fail(cmd, "--quant: unknown format '%s' (native %s)", argv[*i], qt_format_list());
        } else {
            /* a --block given before stays; else the format's own (ggml's have theirs) */
            int block = o->spec.block, dq_off = o->no_dq;
            int given = o->spec.format != LLAMA_QUANT_NATIVE && block != qt_spec_default(o->spec.format).block;
            o->quant_set = 1;
            o->spec = llama_quant_spec(f);
            if (f != LLAMA_QUANT_NATIVE && given)
                o->spec.block = block;
            o->spec.double_quant = o->spec.double_quant && !dq_off;
        }
    } else if (!strcmp(a, "--block") && has) {
        if (tool_parse_int(argv[++*i], 1, 1 << 30, &o->spec.block) < 0)
            *err = tool_fail(cmd, "--block: '%s' is not a positive integer", argv[*i]);
    } else if (!strcmp(a, "--no-double-quant")) {
        o->no_dq = 1;
        o->spec.double_quant = 0;
    } else if (!strcmp(a, "--cache-dir") && has) {
        o->cache_dir = argv[++*i];
    } else if (!strcmp(a, "--no-cache")) {
        o->no_cache = 1;
    } else {
        return 0;
    }
    return 1;
}

static void cache_log(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "qlora-tool: %s\n", line);
}

int tool_load_weights(const tool_model_opts *o, qt_spec spec, llama_model *m, char *err, size_t errlen)
{
    char dir[4096];
    llama_model_cache cache = {.log = cache_log};
    if (!o->no_cache)
        cache.dir = o->cache_dir ? o->cache_dir : llama_cache_default_dir(dir, sizeof dir) == 0 ? dir : NULL;
    return llama_load_cached(m, o->dir, spec, &cache, err, errlen);
}

int tool_load_model(const char *cmd, tool_model_opts *o, llama_model *m, tok_tokenizer **tok)
{
    char err[1024];
    if (!o->dir)
        return tool_fail(cmd, "--model DIR is required");
    if (!o->quant_set && gguf_is_file(o->dir)) /* a GGUF file keeps its types unless told */
        o->spec = llama_quant_spec(LLAMA_QUANT_NATIVE);
    if (o->spec.format != LLAMA_QUANT_NATIVE && qt_spec_check(o->spec, err, sizeof err) < 0)
        return tool_fail(cmd, "%s", err);
    if (tool_load_weights(o, o->spec, m, err, sizeof err) < 0) {
        fprintf(stderr, "qlora-tool %s: %s\n", cmd, err);
        return 1;
    }
    if (tok) {
        if (tok_load_dir(tok, o->dir, m->cfg.vocab_size, err, sizeof err) < 0) {
            fprintf(stderr, "qlora-tool %s: %s\n", cmd, err);
            llama_free(m);
            return 1;
        }
    }
    return 0;
}

/* ---- eval ---- */

typedef struct {
    int **seqs;
    size_t *lens;
    size_t n;
} token_set;

static void free_set(token_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->seqs[i]);
    free(s->seqs);
    free(s->lens);
    memset(s, 0, sizeof *s);
}

static int add_seq(token_set *s, const int *ids, size_t n)
{
    int **seqs = realloc(s->seqs, (s->n + 1) * sizeof *seqs);
    if (seqs)
        s->seqs = seqs;
    size_t *lens = realloc(s->lens, (s->n + 1) * sizeof *lens);
    if (lens)
        s->lens = lens;
    int *copy = malloc((n ? n : 1) * sizeof(int));
    if (!seqs || !lens || !copy) {
        free(copy);
        return -1;
    }
    memcpy(copy, ids, n * sizeof(int));
    s->seqs[s->n] = copy;
    s->lens[s->n++] = n;
    return 0;
}

static int tokens_from_json(const char *cmd, const char *path, token_set *set)
{
    const void *text;
    char err[600];
    size_t len;
    if (map_file(path, &text, &len, err, sizeof err) < 0)
        return tool_fail(cmd, "--tokens: cannot read %s", err);
    json_value *v = json_parse(text, len, err, sizeof err);
    unmap_file(text, len);
    if (!v)
        return tool_fail(cmd, "--tokens: %s: %s", path, err);
    int rc = 0;
    if (v->type != JSON_ARRAY || v->count == 0)
        rc = tool_fail(cmd, "--tokens: %s must hold a non-empty array of token-id arrays", path);
    for (size_t i = 0; i < v->count && !rc; i++) {
        const json_value *a = &v->items[i];
        if (a->type != JSON_ARRAY) {
            rc = tool_fail(cmd, "--tokens: %s: element %zu is not an array", path, i);
            break;
        }
        int *ids = malloc((a->count ? a->count : 1) * sizeof(int));
        for (size_t k = 0; ids && k < a->count && !rc; k++) {
            const json_value *t = &a->items[k];
            if (t->type != JSON_NUMBER || t->number != floor(t->number) || t->number < 0 ||
                t->number > 2147483647.0)
                rc = tool_fail(cmd, "--tokens: %s: [%zu][%zu] is not a non-negative integer", path, i, k);
            else
                ids[k] = (int)t->number;
        }
        if (!ids || (!rc && add_seq(set, ids, a->count) < 0))
            rc = tool_fail(cmd, "out of memory");
        free(ids);
    }
    json_free(v);
    return rc;
}

int tool_sft_file(const char *cmd, const char *flag, const char *path, const tok_tokenizer *tok, const train_hyper *h,
                  const sft_chat *chat, sft_data *d, int *is_sft)
{
    const sft_options opt = {h->train_on_prompt, chat ? chat->chat : NULL, chat ? chat->bos : NULL,
                             chat ? chat->eos : NULL};
    const void *text;
    size_t len;
    char err[600];
    if (map_file(path, &text, &len, err, sizeof err) < 0)
        return tool_fail(cmd, "%s: cannot read %s", flag, err);
    *is_sft = sft_is_jsonl(text, len);
    int rc = *is_sft && sft_parse(d, path, text, len, tok, &opt, err, sizeof err) < 0;
    unmap_file(text, len);
    if (rc)
        return tool_fail(cmd, "%s: %s", flag, err);
    if (*is_sft)
        sft_cut(d, (size_t)h->seq_len + 1);
    return 0;
}

int tool_tokenize_file(const char *cmd, const char *flag, const char *path, const tok_tokenizer *tok, int **ids,
                       size_t *n)
{
    const void *text;
    size_t len;
    char err[600];
    if (map_file(path, &text, &len, err, sizeof err) < 0)
        return tool_fail(cmd, "%s: cannot read %s", flag, err);
    if (len == 0)
        return tool_fail(cmd, "%s: %s is empty", flag, path);
    int rc = tok_encode(tok, text, len, TOK_ADD_SPECIAL, ids, n);
    unmap_file(text, len);
    return rc < 0 ? tool_fail(cmd, "out of memory tokenizing %s", path) : 0;
}

/* eval --examples: the mean loss of the tokens that carry it (completions) and of the
 * prompts', over rows of the eval window, as JSON. */
static int eval_examples(const char *cmd, const char *path, const llama_model *m, const tok_tokenizer *tok,
                         const llama_lora *ad)
{
    train_hyper h = {.seq_len = llama_eval_window(&m->cfg) - 1};
    sft_data d = {0};
    sft_chat chat;
    char why[512];
    if (sft_chat_load(&chat, m->dir, NULL, why, sizeof why) < 0)
        return tool_fail(cmd, "%s", why);
    int is_sft = 0, rc = tool_sft_file(cmd, "--examples", path, tok, &h, &chat, &d, &is_sft);
    sft_chat_free(&chat);
    if (rc)
        return rc;
    if (!is_sft)
        return tool_fail(cmd, "--examples: %s is not JSONL", path);
    double nll, prompts;
    char err[512];
    if (sft_eval(m, ad, &d, h.seq_len, &nll, &prompts, err, sizeof err) < 0)
        rc = tool_fail(cmd, "%s", err);
    else {
        char p[32] = "null"; /* JSON has no NaN: a set without prompts */
        if (!isnan(prompts))
            snprintf(p, sizeof p, "%.17g", prompts);
        printf("{\"examples\":%zu,\"loss_tokens\":%zu,\"completion_nll\":%.17g,\"prompt_nll\":%s}\n", d.n,
               d.loss_tokens, nll, p);
    }
    sft_free(&d);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    const char *cmd = "eval", *tokens = NULL, *text = NULL, *adapter = NULL, *examples = NULL;
    tool_model_opts o = {.spec = qt_spec_default(QT_F32)};
    int json = 0, e;
    for (int i = 1; i < argc; i++) {
        if (tool_model_option(cmd, argc, argv, &i, &o, &e)) {
            if (e)
                return e;
        } else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) {
            tokens = argv[++i];
        } else if (!strcmp(argv[i], "--text") && i + 1 < argc) {
            text = argv[++i];
        } else if (!strcmp(argv[i], "--examples") && i + 1 < argc) {
            examples = argv[++i];
        } else if (!strcmp(argv[i], "--adapter") && i + 1 < argc) {
            adapter = argv[++i];
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", argv[i]);
        }
    }
    if (!!tokens + !!text + !!examples != 1)
        return tool_fail(cmd, "give exactly one of --tokens FILE.json, --text FILE and --examples FILE.jsonl");
    llama_model m;
    tok_tokenizer *tok = NULL;
    int rc = tool_load_model(cmd, &o, &m, tokens ? NULL : &tok);
    if (rc)
        return rc;
    llama_lora ad = {0};
    if (adapter && (rc = tool_load_adapter(cmd, adapter, &m, &ad))) {
        tok_free(tok);
        llama_free(&m);
        return rc;
    }
    if (examples) {
        rc = eval_examples(cmd, examples, &m, tok, adapter ? &ad : NULL);
        llama_lora_free(&ad);
        tok_free(tok);
        llama_free(&m);
        return rc;
    }
    token_set set = {0};
    int *ids = NULL;
    size_t n_ids = 0;
    rc = tokens ? tokens_from_json(cmd, tokens, &set) : tool_tokenize_file(cmd, "--text", text, tok, &ids, &n_ids);
    if (rc == 0 && text && n_ids < 2)
        rc = tool_fail(cmd, "--text: %s yields fewer than 2 tokens", text);
    if (rc == 0) {
        double nll = 0;
        size_t npred = 0;
        char err[512];
        const llama_lora *a = adapter ? &ad : NULL;
        int n_seqs;
        if (text)
            n_seqs = llama_eval_stream(&m, a, ids, n_ids, llama_eval_window(&m.cfg), &nll, &npred, err,
                                       sizeof err);
        else
            n_seqs = llama_eval(&m, a, (const int *const *)set.seqs, set.lens, set.n, &nll, &npred, err, sizeof err) < 0
                         ? -1 : (int)set.n;
        if (n_seqs < 0) {
            rc = tool_fail(cmd, "%s", err);
        } else if (json) {
            printf("{\"nll_sum\":%.17g,\"n_predicted\":%zu,\"ppl\":%.17g}\n", nll, npred,
                   exp(nll / (double)npred));
        } else {
            printf("%s (%s): %d sequences, %zu predicted tokens, nll %.4f nats/token, ppl %.5f\n",
                   o.dir, llama_quant_name(&m), n_seqs, npred, nll / (double)npred,
                   exp(nll / (double)npred));
        }
    }
    free_set(&set);
    free(ids);
    llama_lora_free(&ad);
    tok_free(tok);
    llama_free(&m);
    return rc;
}

/* ---- generate ---- */

typedef struct {
    const tok_tokenizer *tok;
    int prev;
} print_ctx;

static int print_token(void *p, int token)
{
    print_ctx *c = p;
    size_t len;
    const char *s = tok_decode(c->tok, c->prev, token, &len);
    if (s)
        fwrite(s, 1, len, stdout);
    fflush(stdout);
    c->prev = token;
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    const char *cmd = "generate", *prompt = "", *adapter = NULL;
    tool_model_opts o = {.spec = qt_spec_default(QT_F32)};
    int n = 64, e;
    llama_sampling s = {0.0f, 0.9f, 0, NULL, 0};
    for (int i = 1; i < argc; i++) {
        if (tool_model_option(cmd, argc, argv, &i, &o, &e)) {
            if (e)
                return e;
        } else if (!strcmp(argv[i], "--prompt") && i + 1 < argc) {
            prompt = argv[++i];
        } else if (!strcmp(argv[i], "--adapter") && i + 1 < argc) {
            adapter = argv[++i];
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            if (tool_parse_int(argv[++i], 0, 1 << 20, &n) < 0)
                return tool_fail(cmd, "-n: '%s' is not a count", argv[i]);
        } else if (!strcmp(argv[i], "--temperature") && i + 1 < argc) {
            char *end;
            s.temperature = strtof(argv[++i], &end);
            if (*end || !(s.temperature >= 0) || s.temperature > 100)
                return tool_fail(cmd, "--temperature: '%s' is not a number in 0..100", argv[i]);
        } else if (!strcmp(argv[i], "--top-p") && i + 1 < argc) {
            char *end;
            s.top_p = strtof(argv[++i], &end);
            if (*end || !(s.top_p >= 0 && s.top_p <= 1))
                return tool_fail(cmd, "--top-p: '%s' is not a number in 0..1", argv[i]);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            char *end;
            s.seed = strtoull(argv[++i], &end, 10);
            if (*end)
                return tool_fail(cmd, "--seed: '%s' is not an integer", argv[i]);
        } else {
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", argv[i]);
        }
    }
    llama_model m;
    tok_tokenizer *tok;
    int rc = tool_load_model(cmd, &o, &m, &tok);
    if (rc)
        return rc;
    llama_lora ad = {0};
    if (adapter && (rc = tool_load_adapter(cmd, adapter, &m, &ad))) {
        tok_free(tok);
        llama_free(&m);
        return rc;
    }
    int *ids = NULL, *out = malloc(((size_t)n + 1) * sizeof(int));
    size_t n_ids = 0;
    s.stop = tok_stop_ids(tok, &s.n_stop);
    if (!out || tok_encode(tok, prompt, strlen(prompt), TOK_ADD_SPECIAL, &ids, &n_ids) < 0) {
        rc = tool_fail(cmd, "out of memory");
    } else if (n_ids == 0) {
        rc = tool_fail(cmd, "--prompt: no tokens (this tokenizer adds no BOS): give some text");
    } else {
        print_ctx pc = {tok, ids[n_ids - 1]};
        size_t k = 0; /* the prompt as the model reads it, less the specials added before it */
        while (k < n_ids && tok_is_special(tok, ids[k]))
            k++;
        char *head = tok_decode_all(tok, k ? ids[k - 1] : -1, ids + k, n_ids - k);
        if (head)
            fputs(head, stdout);
        free(head);
        int n_out;
        char err[512];
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (llama_generate(&m, adapter ? &ad : NULL, ids, (int)n_ids, n, &s, print_token, &pc, out, &n_out, err,
                           sizeof err) < 0)
            rc = tool_fail(cmd, "%s", err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("\n");
        fprintf(stderr, "qlora-tool generate: %d tokens, %.1f tokens/s\n", n_out,
                n_out / (t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) * 1e-9 + 1e-9));
    }
    free(ids);
    free(out);
    llama_lora_free(&ad);
    tok_free(tok);
    llama_free(&m);
    return rc;
}
