/* infer.c: the ops that use the frozen base: tokenize, eval and generate with any stored
 * adapter (held from the cache for the whole request, so a swap never disturbs it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "sft.h"
#include "qlorad.h"
#include "utf8.h"

/* The adapter a request names: a string "name[@version]", nil for the base alone, or
 * absent for the active adapter. *out NULL: the base alone. 0, or -1 after replying. */
static int request_adapter(req *r, const msgpack_object *arg, cached_adapter **out)
{
    char name[STORE_NAME_MAX + 1], err[512];
    uint32_t version;
    *out = NULL;
    if (arg && arg->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (!arg) {
        pthread_mutex_lock(&r->d->active_lock);
        snprintf(name, sizeof name, "%s", r->d->active_name);
        version = r->d->active_version;
        pthread_mutex_unlock(&r->d->active_lock);
        if (!name[0])
            return 0;
    } else {
        if (adapter_ref_parse(arg, 1, name, &version) < 0) {
            reply_error(r, ERR_INVALID_ARGUMENT, "adapter: '%.*s' is not NAME or NAME@VERSION (NAME: " STORE_NAME_RULE ")",
                        (int)(arg->via.str.size > 100 ? 100 : arg->via.str.size), arg->via.str.ptr);
            return -1;
        }
    }
    qd_error code = cache_acquire(r->d, name, version, out, err, sizeof err);
    if (code) {
        reply_error(r, code, "adapter: %s", err);
        return -1;
    }
    return 0;
}

/* The adapter a result says it used: "NAME@VERSION", or "" (nil) for the base alone. */
static void adapter_ref(const cached_adapter *a, char ref[80])
{
    ref[0] = 0;
    if (a)
        snprintf(ref, 80, "%s@%u", a->name, a->version);
}

/* The results of eval and generate, and generate's stream events. */
typedef struct {
    double nll_sum, ppl, tokens_per_s;
    size_t n_predicted;
    char adapter[80];
    schema_bytes text;
    schema_ints tokens;
    int token;
} infer_result;

#define R(key, kind, member, flags) S_FIELD(infer_result, key, kind, member, flags)
static const schema_field eval_result_fields[] = {
    R("nll_sum", SK_REAL, nll_sum, 0),
    R("n_predicted", SK_UINT, n_predicted, 0),
    R("ppl", SK_REAL, ppl, 0),
    R("adapter", SK_CHARS, adapter, SF_NIL_IF_ZERO),
};
static const schema eval_result = SCHEMA(eval_result_fields);
static const schema_field generate_result_fields[] = {
    R("text", SK_STRN, text, 0),
    R("tokens", SK_INTS, tokens, 0),
    R("adapter", SK_CHARS, adapter, SF_NIL_IF_ZERO),
    R("tokens_per_s", SK_REAL, tokens_per_s, 0),
};
static const schema generate_result = SCHEMA(generate_result_fields);
static const schema_field token_event_fields[] = {
    R("token", SK_INT, token, 0),
    R("text", SK_STRN, text, 0),
};
static const schema token_event = SCHEMA(token_event_fields);
static const schema_field tokenize_result_fields[] = {R("tokens", SK_INTS, tokens, 0)};
static const schema tokenize_result = SCHEMA(tokenize_result_fields);
#undef R

/* A token array of 2..max ids below the vocabulary, into a malloc'd int array. */
static int *read_token_list(req *r, const msgpack_object *a, const char *what, size_t min, size_t max, size_t *n)
{
    const int V = r->d->model.cfg.vocab_size;
    if (a->type != MSGPACK_OBJECT_ARRAY) {
        reply_error(r, ERR_BAD_REQUEST, "%s: must be an array of token ids", what);
        return NULL;
    }
    if (a->via.array.size < min || a->via.array.size > max) {
        reply_error(r, ERR_INVALID_ARGUMENT, "%s: %u tokens, must be %zu..%zu", what, a->via.array.size, min, max);
        return NULL;
    }
    int *ids = malloc((a->via.array.size + 1) * sizeof *ids);
    if (!ids) {
        reply_error(r, ERR_BUSY, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *t = &a->via.array.ptr[i];
        if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 >= (uint64_t)V) {
            reply_error(r, t->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? ERR_INVALID_ARGUMENT : ERR_BAD_REQUEST,
                        "%s[%u]: must be a token id in 0..%d", what, i, V - 1);
            free(ids);
            return NULL;
        }
        ids[i] = (int)t->via.u64;
    }
    *n = a->via.array.size;
    return ids;
}

/* Encodes the text of argument field (with what the tokenizer adds: BOS for Llama), its
 * special tokens as text if the argument special is false, or answers why not: busy if
 * out of memory, invalid_argument for a text the tokenizer refuses. Returns 0 or -1
 * (answered). */
static int encode_arg(req *r, const char *field, const char *text, size_t n, const msgpack_object *special,
                      int **ids, size_t *n_ids)
{
    int flags = TOK_ADD_SPECIAL | (special && !special->via.boolean ? TOK_SPLIT_SPECIAL : 0);
    int rc = tok_encode(r->d->tok, text, n, flags, ids, n_ids);
    if (rc < 0)
        reply_error(r, rc == TOK_NOMEM ? ERR_BUSY : ERR_INVALID_ARGUMENT, "%s: %s", field, tok_strerror(rc));
    return rc < 0 ? -1 : 0;
}

void op_tokenize(req *r)
{
    int *ids;
    size_t n;
    const msgpack_object *text = r->arg[TOKENIZE_TEXT];
    if (encode_arg(r, "text", text->via.str.ptr, text->via.str.size, r->arg[TOKENIZE_SPECIAL], &ids, &n) < 0)
        return;
    infer_result res = {.tokens = {ids, n}};
    mp_out o;
    reply_begin(r, &o);
    schema_pack(&o.pk, &tokenize_result, &res, SCHEMA_WIRE);
    reply_end(r, &o);
    free(ids);
}

void op_eval(req *r)
{
    const msgpack_object *tokens = r->arg[EVAL_TOKENS], *text = r->arg[EVAL_TEXT];
    const int S = r->d->model.cfg.seq_len;
    if (!tokens == !text) {
        reply_error(r, ERR_BAD_REQUEST, "eval: give exactly one of tokens and text");
        return;
    }
    size_t n_seqs = 0, n_ids = 0;
    const int **seqs = NULL;
    size_t *lens = NULL;
    int *ids = NULL, **lists = NULL, ok = 1;
    if (text) {
        if (encode_arg(r, "text", text->via.str.ptr, text->via.str.size, r->arg[EVAL_SPECIAL], &ids, &n_ids) < 0)
            return;
        if (n_ids < 2)
            ok = 0, reply_error(r, ERR_INVALID_ARGUMENT, "text: fewer than 2 tokens");
    } else {
        n_seqs = tokens->via.array.size;
        seqs = malloc((n_seqs + 1) * sizeof *seqs);
        lens = malloc((n_seqs + 1) * sizeof *lens);
        lists = calloc(n_seqs + 1, sizeof *lists);
        if (!seqs || !lens || !lists)
            ok = 0, reply_error(r, ERR_BUSY, "out of memory");
        else if (n_seqs == 0)
            ok = 0, reply_error(r, ERR_INVALID_ARGUMENT, "tokens: no sequences");
        for (size_t i = 0; ok && i < n_seqs; i++) {
            char what[48];
            snprintf(what, sizeof what, "tokens[%zu]", i);
            lists[i] = read_token_list(r, &tokens->via.array.ptr[i], what, 2, (size_t)S, &lens[i]);
            seqs[i] = lists[i];
            ok = lists[i] != NULL;
        }
    }
    cached_adapter *a = NULL;
    if (ok && request_adapter(r, r->arg[EVAL_ADAPTER], &a) == 0) {
        double nll = 0;
        size_t np = 0;
        char err[512];
        const llama_lora *ad = a ? &a->lora : NULL;
        if ((text ? llama_eval_stream(&r->d->model, ad, ids, n_ids, llama_eval_window(&r->d->model.cfg), &nll, &np,
                                      err, sizeof err)
                  : llama_eval(&r->d->model, ad, seqs, lens, n_seqs, &nll, &np, err, sizeof err)) < 0) {
            reply_error(r, ERR_INVALID_ARGUMENT, "%s", err);
        } else {
            infer_result res = {.nll_sum = nll, .n_predicted = np, .ppl = exp(nll / (double)np)};
            adapter_ref(a, res.adapter);
            mp_out o;
            reply_begin(r, &o);
            schema_pack(&o.pk, &eval_result, &res, SCHEMA_WIRE);
            reply_end(r, &o);
        }
        if (a)
            cache_release(r->d, a);
    }
    for (size_t i = 0; lists && i < n_seqs; i++)
        free(lists[i]);
    free(lists);
    free(ids);
    free(seqs);
    free(lens);
}

typedef struct {
    req *r;
    int prev;
    char held[8];        /* the start of a character split across tokens (utf8_cut_tail) */
    size_t n_held;
} stream_ctx;

/* Without a stream: only whether the client is still there. */
static int still_wanted(void *p, int token)
{
    (void)token;
    return req_abandoned(((stream_ctx *)p)->r);
}

static int on_token(void *p, int token)
{
    stream_ctx *s = p;
    if (req_abandoned(s->r))
        return 1; /* nobody reads the rest */
    size_t len;
    const char *piece = tok_decode(s->r->d->tok, s->prev, token, &len);
    s->prev = token;
    char text[256];
    size_t n = s->n_held;
    memcpy(text, s->held, n);
    if (len > sizeof text - n)
        len = sizeof text - n;
    memcpy(text + n, piece, len);
    n += len;
    /* A piece may end inside a character: hold its start back for the next token. What can
     * never become whole goes out at once, as U+FFFD (mp_str_n). */
    size_t whole = n - utf8_cut_tail(text, n);
    s->n_held = n - whole < sizeof s->held ? n - whole : 0;
    memcpy(s->held, text + whole, s->n_held);
    infer_result ev = {.token = token, .text = {text, whole}};
    mp_out o;
    mp_out_init(&o);
    schema_pack(&o.pk, &token_event, &ev, SCHEMA_WIRE);
    reply_event(s->r->d, s->r->conn_id, s->r->id, o.sb.data + 4, o.sb.size - 4);
    mp_out_free(&o);
    return 0;
}

/* What generate and chat share: how to sample, for which adapter, streamed or not. */
typedef struct {
    const msgpack_object *max_tokens, *temperature, *top_p, *seed, *adapter, *stream;
} gen_args;

/* Generates after the n prompt ids (freed here) as g says, stopping at the tokenizer's
 * stop ids and the extra one (-1: none), and answers: the result, or a stream of token
 * events and then the result. */
static void generate_after(req *r, int *ids, size_t n, const gen_args *g, int extra_stop)
{
    qd *d = r->d;
    const int S = d->model.cfg.seq_len;
    double temperature = 0, top_p = 1;
    if (g->temperature)
        mp_number(g->temperature, &temperature);
    if (g->top_p)
        mp_number(g->top_p, &top_p);
    uint64_t max_tokens = g->max_tokens ? g->max_tokens->via.u64 : 64;
    int *out = NULL, n_out = 0, *stop = NULL;
    cached_adapter *a = NULL;
    if (!(temperature >= 0 && temperature <= 100)) {
        reply_error(r, ERR_INVALID_ARGUMENT, "temperature: %g is not in 0..100", temperature);
        goto done;
    }
    if (!(top_p > 0 && top_p <= 1)) {
        reply_error(r, ERR_INVALID_ARGUMENT, "top_p: %g is not in (0, 1]", top_p);
        goto done;
    }
    if (n >= (size_t)S) {
        reply_error(r, ERR_INVALID_ARGUMENT, "prompt: %zu tokens leave no room in the context of %d", n, S);
        goto done;
    }
    if (max_tokens < 1 || max_tokens > (uint64_t)S - n) {
        reply_error(r, ERR_INVALID_ARGUMENT, "max_tokens: %llu is not in 1..%zu (the context left after the prompt)",
                    (unsigned long long)max_tokens, (size_t)S - n);
        goto done;
    }
    if (request_adapter(r, g->adapter, &a) < 0)
        goto done;
    llama_sampling s = {(float)temperature, (float)top_p, g->seed ? g->seed->via.u64 : 0, NULL, 0};
    const int *stops = tok_stop_ids(d->tok, &s.n_stop);
    stop = malloc((s.n_stop + 1) * sizeof *stop);
    out = malloc(max_tokens * sizeof *out);
    if (!stop || !out) {
        reply_error(r, ERR_BUSY, "out of memory");
        goto done;
    }
    memcpy(stop, stops, s.n_stop * sizeof *stop);
    if (extra_stop >= 0)
        stop[s.n_stop++] = extra_stop;
    s.stop = stop;
    stream_ctx sc = {r, ids[n - 1], {0}, 0};
    int stream = g->stream && g->stream->via.boolean;
    char err[512];
    double t0 = now_s();
    if (llama_generate(&d->model, a ? &a->lora : NULL, ids, (int)n, (int)max_tokens, &s,
                       stream ? on_token : still_wanted, &sc, out, &n_out, err, sizeof err) < 0) {
        reply_error(r, ERR_INTERNAL, "%s", err);
    } else {
        double dt = now_s() - t0;
        char *text = tok_decode_all(d->tok, ids[n - 1], out, (size_t)n_out);
        /* as the stream has it: a character left unfinished at the end is dropped */
        size_t tl = text ? strlen(text) : 0;
        infer_result res = {.text = {text ? text : "", tl - (text ? utf8_cut_tail(text, tl) : 0)},
                            .tokens = {out, (size_t)n_out}, .tokens_per_s = n_out / (dt > 1e-9 ? dt : 1e-9)};
        adapter_ref(a, res.adapter);
        mp_out o;
        reply_begin(r, &o);
        schema_pack(&o.pk, &generate_result, &res, SCHEMA_WIRE);
        reply_end(r, &o);
        free(text);
    }
done:
    if (a)
        cache_release(d, a);
    free(stop);
    free(out);
    free(ids);
}

void op_generate(req *r)
{
    qd *d = r->d;
    const int S = d->model.cfg.seq_len;
    const msgpack_object *prompt = r->arg[GEN_PROMPT], *tokens = r->arg[GEN_TOKENS];
    if (prompt && tokens) {
        reply_error(r, ERR_BAD_REQUEST, "generate: give prompt or tokens, not both");
        return;
    }
    int *ids = NULL;
    size_t n = 0;
    if (tokens) {
        ids = read_token_list(r, tokens, "tokens", 1, (size_t)S - 1, &n);
        if (!ids)
            return;
    } else {
        const char *text = prompt ? prompt->via.str.ptr : "";
        size_t bytes = prompt ? prompt->via.str.size : 0, per = tok_max_token_bytes(d->tok);
        /* at least bytes / per ids (and what the tokenizer adds, BOS for Llama): a prompt this
         * long cannot leave room, whatever it says, and is refused before tokenizing (which
         * costs memory per byte) */
        if (bytes / per >= (size_t)S) {
            reply_error(r, ERR_INVALID_ARGUMENT, "prompt: %zu bytes are at least %zu tokens (a token covers at most %zu bytes), "
                        "which leave no room in the context of %d", bytes, bytes / per, per, S);
            return;
        }
        if (encode_arg(r, "prompt", text, bytes, r->arg[GEN_SPECIAL], &ids, &n) < 0)
            return;
        if (n == 0) { /* a tokenizer that adds no BOS, and an empty prompt */
            reply_error(r, ERR_INVALID_ARGUMENT, "prompt: no tokens (this tokenizer adds no BOS): give some text");
            free(ids);
            return;
        }
    }
    const gen_args g = {r->arg[GEN_MAX_TOKENS], r->arg[GEN_TEMPERATURE], r->arg[GEN_TOP_P], r->arg[GEN_SEED],
                        r->arg[GEN_ADAPTER], r->arg[GEN_STREAM]};
    generate_after(r, ids, n, &g, -1);
}

void op_chat(req *r)
{
    qd *d = r->d;
    const msgpack_object *name = r->arg[CHAT_TEMPLATE];
    char err[600], what[40];
    sft_chat named = {0};
    const sft_chat *chat = &d->chat;
    if (name) { /* a built-in, with the model's bos/eos tokens */
        snprintf(what, sizeof what, "%.*s", (int)(name->via.str.size < 32 ? name->via.str.size : 32), name->via.str.ptr);
        if (sft_chat_load(&named, d->model_dir, what, err, sizeof err) < 0) {
            char choices[200] = "";
            size_t used = 0;
            for (const char *const *b = chat_template_builtin_names; *b; b++)
                used += (size_t)snprintf(choices + used, used < sizeof choices ? sizeof choices - used : 0, "%s%s",
                                         b == chat_template_builtin_names ? "" : ", ", *b);
            reply_error(r, ERR_INVALID_ARGUMENT, "template: \"%s\" is not a built-in (%s)", what, choices);
            return;
        }
        chat = &named;
    } else if (!chat->chat) {
        reply_error(r, ERR_INVALID_ARGUMENT, "messages: %s; name a built-in with template (e.g. \"chatml\")",
                    d->chat_error);
        return;
    }
    json_value *messages = mp_to_json(r->arg[CHAT_MESSAGES]);
    int *ids = NULL, eot = -1;
    size_t n = 0;
    if (!messages) {
        reply_error(r, ERR_BAD_REQUEST, "messages: must be an array of maps with str keys (no bin)");
    } else if (sft_chat_prompt(chat, d->tok, messages, &ids, &n, err, sizeof err) < 0) {
        reply_error(r, ERR_INVALID_ARGUMENT, "messages: %s", err);
    } else if (n == 0) {
        reply_error(r, ERR_INVALID_ARGUMENT, "messages: the template rendered nothing");
        free(ids);
        ids = NULL;
    }
    if (ids) {
        sft_chat_end_of_turn(chat, d->tok, &eot);
        const gen_args g = {r->arg[CHAT_MAX_TOKENS], r->arg[CHAT_TEMPERATURE], r->arg[CHAT_TOP_P], r->arg[CHAT_SEED],
                            r->arg[CHAT_ADAPTER], r->arg[CHAT_STREAM]};
        generate_after(r, ids, n, &g, eot);
    }
    json_free(messages);
    sft_chat_free(&named);
}
