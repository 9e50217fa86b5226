/* sft.c: supervised fine-tuning data (see sft.h). */
#include "sft.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "json.h"

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}
#define FAIL(...) fail(err, errlen, __VA_ARGS__)

int sft_is_jsonl(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r' && text[i] != '\n')
            return text[i] == '{';
    return 0;
}

void sft_free(sft_data *d)
{
    free(d->ids);
    free(d->loss);
    free(d->offset);
    memset(d, 0, sizeof *d);
}

/* Room for n more tokens and one more example. */
static int reserve(sft_data *d, size_t *cap_tokens, size_t *cap_examples, size_t n)
{
    if (d->n_tokens + n > *cap_tokens) {
        size_t cap = (*cap_tokens ? *cap_tokens * 2 : 4096) + n;
        int *ids = realloc(d->ids, cap * sizeof *ids);
        if (ids)
            d->ids = ids;
        uint8_t *loss = realloc(d->loss, cap);
        if (loss)
            d->loss = loss;
        if (!ids || !loss)
            return -1;
        *cap_tokens = cap;
    }
    if (d->n + 2 > *cap_examples) {
        size_t cap = *cap_examples ? *cap_examples * 2 : 256;
        size_t *off = realloc(d->offset, cap * sizeof *off);
        if (!off)
            return -1;
        d->offset = off;
        *cap_examples = cap;
    }
    return 0;
}

/* A string member of a line's object: NULL (with the message) when missing or not one. */
static const json_value *string_field(const json_value *o, const char *key, const char *name, size_t line,
                                      char *err, size_t errlen)
{
    const json_value *v = json_get(o, key);
    if (!v || v->type != JSON_STRING) {
        snprintf(err, errlen, "%s: line %zu: '%s' %s", name, line, key, v ? "is not a string" : "is missing");
        return NULL;
    }
    return v;
}

/* One line's example: its tokens, and which of them carry loss. */
static int add_example(sft_data *d, const json_value *o, const char *name, size_t line, const tok_tokenizer *tok,
                       int train_on_prompt, size_t *cap_tokens, size_t *cap_examples, char *err, size_t errlen)
{
    const int is_pc = d->format == SFT_PROMPT_COMPLETION;
    static const char *const keys[2][2] = {{"prompt", "completion"}, {"text", NULL}};
    for (size_t i = 0; i < o->count; i++) {
        const char *k = o->keys[i];
        if (strcmp(k, keys[d->format][0]) && (!keys[d->format][1] || strcmp(k, keys[d->format][1])))
            return FAIL("%s: line %zu: '%s' is not a field of this file's format (%s)", name, line, k,
                        is_pc ? "prompt, completion" : "text");
    }
    const json_value *a = string_field(o, keys[d->format][0], name, line, err, errlen), *b = NULL;
    if (!a || (is_pc && !(b = string_field(o, "completion", name, line, err, errlen))))
        return -1;
    size_t la = a->len, lb = b ? b->len : 0;
    char *text = malloc(la + lb + 1);
    int *whole = NULL, *head = NULL;
    size_t n_whole = 0, n_head = 0;
    int rc = -1;
    if (!text)
        goto oom;
    memcpy(text, a->string, la);
    if (b)
        memcpy(text + la, b->string, lb);
    int st = tok_encode(tok, text, la + lb, 1, 1, &whole, &n_whole);
    if (st == TOK_OK && is_pc)
        st = tok_encode(tok, text, la, 1, 0, &head, &n_head);
    if (st != TOK_OK) {
        if (st == TOK_NOMEM)
            goto oom;
        rc = FAIL("%s: line %zu: %s", name, line, tok_strerror(st));
        goto done;
    }
    if (is_pc && lb == 0) {
        rc = FAIL("%s: line %zu: 'completion' is empty: nothing would carry loss", name, line);
        goto done;
    }
    /* the prompt's share: the tokens its own encoding shares with the whole's from the start */
    size_t shared = 0;
    while (is_pc && shared < n_head && shared < n_whole && head[shared] == whole[shared])
        shared++;
    if (reserve(d, cap_tokens, cap_examples, n_whole) < 0)
        goto oom;
    d->offset[d->n] = d->n_tokens;
    for (size_t i = 0; i < n_whole; i++) {
        d->ids[d->n_tokens + i] = whole[i];
        d->loss[d->n_tokens + i] = i > 0 && (!is_pc || train_on_prompt || i >= shared);
    }
    d->n_tokens += n_whole;
    d->offset[++d->n] = d->n_tokens;
    rc = 0;
    goto done;
oom:
    rc = FAIL("%s: line %zu: out of memory", name, line);
done:
    free(text);
    free(whole);
    free(head);
    return rc;
}

int sft_parse(sft_data *d, const char *name, const char *text, size_t len, const tok_tokenizer *tok,
              int train_on_prompt, char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    size_t cap_tokens = 0, cap_examples = 0, line = 0;
    int have_format = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len, n = end - pos;
        line++;
        const char *s = text + pos;
        pos = end + 1;
        size_t blank = 0;
        while (blank < n && (s[blank] == ' ' || s[blank] == '\t' || s[blank] == '\r'))
            blank++;
        if (blank == n)
            continue;
        char jerr[256];
        json_value *o = json_parse(s, n, jerr, sizeof jerr);
        if (!o || o->type != JSON_OBJECT) {
            FAIL("%s: line %zu: %s", name, line, o ? "not a JSON object" : jerr);
            json_free(o);
            sft_free(d);
            return -1;
        }
        if (!have_format) {
            if (json_get(o, "messages")) {
                FAIL("%s: line %zu: 'messages' (chat) needs the model's chat template, which is not implemented "
                     "yet; use prompt/completion or text", name, line);
                json_free(o);
                sft_free(d);
                return -1;
            }
            d->format = json_get(o, "prompt") || json_get(o, "completion") ? SFT_PROMPT_COMPLETION : SFT_TEXT;
            have_format = 1;
        }
        int rc = add_example(d, o, name, line, tok, train_on_prompt, &cap_tokens, &cap_examples, err, errlen);
        json_free(o);
        if (rc < 0) {
            sft_free(d);
            return -1;
        }
    }
    if (d->n == 0) {
        sft_free(d);
        return FAIL("%s: no examples", name);
    }
    for (size_t i = 0; i < d->n_tokens; i++)
        d->loss_tokens += d->loss[i];
    return 0;
}

void sft_cut(sft_data *d, size_t max_len)
{
    size_t w = 0;
    for (size_t e = 0; e < d->n; e++) {
        size_t a = d->offset[e], len = d->offset[e + 1] - a;
        if (len > max_len)
            len = max_len, d->truncated++;
        memmove(d->ids + w, d->ids + a, len * sizeof *d->ids);
        memmove(d->loss + w, d->loss + a, len);
        d->offset[e] = w;
        w += len;
    }
    d->offset[d->n] = d->n_tokens = w;
    d->loss_tokens = 0;
    for (size_t i = 0; i < w; i++)
        d->loss_tokens += d->loss[i];
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The example order of an epoch: a Fisher-Yates shuffle from (seed, epoch), or the file's
 * order when shuffle is 0. */
static void epoch_order(size_t *order, size_t n, uint64_t seed, uint64_t epoch, int shuffle)
{
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    uint64_t s = mix(seed ^ mix(epoch));
    for (size_t i = n; shuffle && i > 1; i--) {
        s = mix(s);
        size_t j = (size_t)(s % i), k = order[i - 1];
        order[i - 1] = order[j];
        order[j] = k;
    }
}

/* The packer under sft_fill_rows and sft_eval: rows of T inputs from the examples at
 * *cursor on; targets carry loss (else -1); other (may be NULL) the targets of the
 * examples' own tokens that do not. */
static size_t pack_rows(const sft_data *d, uint64_t seed, int shuffle, uint64_t *cursor, size_t *order,
                        uint64_t *epoch_of_order, int B, int T, int *inputs, int *targets, int *other, int *start)
{
    size_t carried = 0;
    for (int b = 0; b < B; b++) {
        int *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T, *ot = other ? other + (size_t)b * T : NULL;
        int *st = start + (size_t)b * T;
        for (int t = 0; t < T; t++) /* padding, until an example takes the slot */
            in[t] = 0, st[t] = t, tg[t] = -1, ot ? ot[t] = -1 : 0;
        int used = 0; /* token slots of the row's T + 1 */
        while (used < T + 1) {
            uint64_t epoch = *cursor / d->n;
            if (epoch != *epoch_of_order) {
                epoch_order(order, d->n, seed, epoch, shuffle);
                *epoch_of_order = epoch;
            }
            size_t e = order[*cursor % d->n], a = d->offset[e], len = d->offset[e + 1] - a;
            if (used > 0 && used + len > (size_t)T + 1)
                break; /* the next row's */
            if (len > (size_t)T + 1 - used) /* only an example not cut by sft_cut */
                len = (size_t)T + 1 - used;
            for (size_t i = 0; i < len; i++) {
                int t = used + (int)i;
                if (t < T)
                    in[t] = d->ids[a + i], st[t] = used;
                if (i > 0) { /* the target of input t - 1; an example's last input has none */
                    tg[t - 1] = d->loss[a + i] ? d->ids[a + i] : -1;
                    if (ot)
                        ot[t - 1] = d->loss[a + i] ? -1 : d->ids[a + i];
                    carried += d->loss[a + i];
                }
            }
            used += (int)len;
            ++*cursor;
        }
    }
    return carried;
}

size_t sft_fill_rows(const sft_data *d, uint64_t seed, uint64_t *cursor, int B, int T, int *inputs, int *targets,
                     int *start)
{
    size_t *order = malloc(d->n * sizeof *order);
    if (!order)
        return (size_t)-1;
    uint64_t have = UINT64_MAX;
    size_t n = pack_rows(d, seed, 1, cursor, order, &have, B, T, inputs, targets, NULL, start);
    free(order);
    return n;
}

/* -log p(target) of each row's targets, summed into *sum (count into *n). */
static void add_nll(const float *logits, int V, const int *targets, int T, double *sum, size_t *n)
{
    for (int t = 0; t < T; t++) {
        if (targets[t] < 0)
            continue;
        const float *lg = logits + (size_t)t * V;
        double max = lg[0], z = 0;
        for (int v = 1; v < V; v++)
            max = lg[v] > max ? lg[v] : max;
        for (int v = 0; v < V; v++)
            z += exp(lg[v] - max);
        *sum += max + log(z) - lg[targets[t]];
        ++*n;
    }
}

int sft_eval(const llama_model *m, const llama_lora *ad, const sft_data *d, int T, double *nll_mean,
             double *other_mean, char *err, size_t errlen)
{
    const llama_config *c = &m->cfg;
    llama_cache cache = {0};
    llama_acts acts;
    memset(&acts, 0, sizeof acts);
    int *buf = malloc(4 * (size_t)T * sizeof(int));
    size_t *order = malloc(d->n * sizeof *order);
    int rc = -1;
    if (!buf || !order || llama_cache_alloc(&cache, c, 1, T) < 0 ||
        llama_acts_alloc(&acts, c, 1, T, T, ad ? ad->rank : 0, 0) < 0) {
        FAIL("out of memory for evaluation rows of %d", T);
        goto done;
    }
    int *in = buf, *tg = buf + T, *ot = buf + 2 * T, *st = buf + 3 * T;
    uint64_t cursor = 0, have = UINT64_MAX;
    double sum = 0, other = 0;
    size_t n = 0, n_other = 0;
    acts.start = st;
    while (cursor < d->n) {
        pack_rows(d, 0, 0, &cursor, order, &have, 1, T, in, tg, ot, st);
        if (llama_forward(m, ad, &acts, &cache, in, 1, T, 0, LLAMA_INFER) < 0) {
            FAIL("out of memory in the forward pass");
            goto done;
        }
        add_nll(acts.logits, c->vocab_size, tg, T, &sum, &n);
        add_nll(acts.logits, c->vocab_size, ot, T, &other, &n_other);
    }
    *nll_mean = n ? sum / (double)n : NAN;
    *other_mean = n_other ? other / (double)n_other : NAN;
    rc = 0;
done:
    free(buf);
    free(order);
    llama_acts_free(&acts);
    llama_cache_free(&cache);
    return rc;
}
