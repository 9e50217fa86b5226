/* sft.c: supervised fine-tuning data (see sft.h). */
#include "sft.h"

#include <limits.h>
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

/* Appends n tokens as the next example, loss[i] for each (NULL: none yet). */
static int append(sft_data *d, const int *ids, size_t n, size_t *cap_tokens, size_t *cap_examples)
{
    if (reserve(d, cap_tokens, cap_examples, n) < 0)
        return -1;
    d->offset[d->n] = d->n_tokens;
    memcpy(d->ids + d->n_tokens, ids, n * sizeof *ids);
    memset(d->loss + d->n_tokens, 0, n);
    d->n_tokens += n;
    d->offset[++d->n] = d->n_tokens;
    return 0;
}

/* The tokens a rendering of the first k messages encodes to (as rendered: no BOS or EOS
 * added), and its text, both malloc'd. */
static int render_prefix(const sft_options *o, const json_value *msgs, size_t k, int gen, const tok_tokenizer *tok,
                         char **text, size_t *len, int **ids, size_t *n, char *err, size_t errlen)
{
    json_value view = *msgs;
    view.count = k;
    chat_options co = {.add_generation_prompt = gen, .bos_token = o->bos, .eos_token = o->eos, .now = 0};
    *ids = NULL;
    if (chat_render(o->chat, &view, &co, text, len, err, errlen) < 0)
        return -1;
    int st = tok_encode(tok, *text, *len, 0, ids, n); /* as rendered: nothing added, markers matched */
    if (st != TOK_OK) {
        snprintf(err, errlen, "%s", tok_strerror(st));
        free(*text);
        *text = NULL;
        return -1;
    }
    return 0;
}

/* How many tokens the rendering of the first k messages (gen: with the generation prompt)
 * shares from the start with the whole conversation's (full, ids) into *shared: 0; 1 when
 * its text is not a prefix of the whole's; -1 with why. */
static int shared_tokens(const sft_options *o, const json_value *msgs, size_t k, int gen, const tok_tokenizer *tok,
                         const char *full, size_t full_len, const int *ids, size_t n_full, size_t *shared, char *why,
                         size_t whylen)
{
    char *text;
    size_t len, n;
    int *part;
    if (render_prefix(o, msgs, k, gen, tok, &text, &len, &part, &n, why, whylen) < 0)
        return -1;
    int rc = len > full_len || memcmp(text, full, len) ? 1 : 0;
    for (*shared = 0; *shared < n && *shared < n_full && part[*shared] == ids[*shared]; ++*shared)
        ;
    free(text);
    free(part);
    return rc;
}

/* The messages of one line, checked (OpenAI's roles; weight 0 or 1 on assistant ones). */
static int check_messages(const json_value *m, const char *name, size_t line, char *err, size_t errlen)
{
    if (m->type != JSON_ARRAY || m->count == 0)
        return FAIL("%s: line %zu: 'messages' must be a non-empty array", name, line);
    int assistants = 0;
    for (size_t i = 0; i < m->count; i++) {
        const json_value *e = &m->items[i], *role = json_get(e, "role"), *content = json_get(e, "content"),
                         *w = json_get(e, "weight");
        if (e->type != JSON_OBJECT)
            return FAIL("%s: line %zu: 'messages[%zu]' is not an object", name, line, i);
        if (!role || role->type != JSON_STRING ||
            (strcmp(role->string, "system") && strcmp(role->string, "user") && strcmp(role->string, "assistant")))
            return FAIL("%s: line %zu: 'messages[%zu].role' must be \"system\", \"user\" or \"assistant\"", name,
                        line, i);
        if (!content || content->type != JSON_STRING)
            return FAIL("%s: line %zu: 'messages[%zu].content' must be a string", name, line, i);
        int is_assistant = !strcmp(role->string, "assistant");
        if (w && (!is_assistant || w->type != JSON_NUMBER || (w->number != 0 && w->number != 1)))
            return FAIL("%s: line %zu: 'messages[%zu].weight' must be 0 or 1, on an assistant message", name, line,
                        i);
        for (size_t k = 0; k < e->count; k++)
            if (strcmp(e->keys[k], "role") && strcmp(e->keys[k], "content") && strcmp(e->keys[k], "weight"))
                return FAIL("%s: line %zu: 'messages[%zu].%s' is not a field read here (role, content, weight)", name,
                            line, i, e->keys[k]);
        assistants += is_assistant;
    }
    if (!assistants)
        return FAIL("%s: line %zu: 'messages' has no assistant message: nothing would carry loss", name, line);
    return 0;
}

/* How many tokens the encoding of full[0..len) shares from the start with ids (n of them). */
static int shared_of_text(const tok_tokenizer *tok, const char *full, size_t len, const int *ids, size_t n,
                          size_t *shared)
{
    int *part = NULL;
    size_t np = 0;
    if (tok_encode(tok, full, len, 0, &part, &np) != TOK_OK)
        return -1;
    for (*shared = 0; *shared < np && *shared < n && part[*shared] == ids[*shared]; ++*shared)
        ;
    free(part);
    return 0;
}

/* The content-span rule, for templates whose rendering of the turns up to an assistant
 * message is no prefix of the whole (Llama 3's base writes the assistant header after every
 * turn; Qwen3 drops past reasoning): the whole rendered again with message j's content
 * replaced by a marker shows where the template put the content (the same text before the
 * marker, the same after it); the message's tokens are those from the content's start to
 * its end and, when the next token after it (whitespace aside) is a special one, that
 * end-of-turn marker. 0 with [*begin, *end); 1 when the renderings do not agree so;
 * -1 with why. */
static int content_span(const sft_options *o, const json_value *msgs, size_t j, const tok_tokenizer *tok,
                        const char *full, size_t full_len, const int *ids, size_t n_full, size_t *begin, size_t *end,
                        char *why, size_t whylen)
{
    static const char mark[] = "\x01";
    const json_value *msg = &msgs->items[j];
    json_value view = *msgs, item = *msg, marker = {.type = JSON_STRING, .string = (char *)mark, .len = 1};
    json_value *items = malloc(msgs->count * sizeof *items), *fields = malloc(msg->count * sizeof *fields);
    char *alt = NULL;
    size_t alt_len = 0;
    int rc = -1;
    if (!items || !fields) {
        snprintf(why, whylen, "out of memory");
        goto done;
    }
    memcpy(items, msgs->items, msgs->count * sizeof *items);
    for (size_t k = 0; k < msg->count; k++)
        fields[k] = strcmp(msg->keys[k], "content") ? msg->items[k] : marker;
    item.items = fields, items[j] = item, view.items = items;
    chat_options co = {.add_generation_prompt = 0, .bos_token = o->bos, .eos_token = o->eos, .now = 0};
    if (chat_render(o->chat, &view, &co, &alt, &alt_len, why, whylen) < 0)
        goto done;
    const char *at = memchr(alt, mark[0], alt_len);
    size_t p = at ? (size_t)(at - alt) : 0, after = at ? alt_len - p - 1 : 0;
    rc = 1;
    if (!at || memchr(at + 1, mark[0], after) || p + after > full_len || memcmp(alt, full, p) ||
        memcmp(at + 1, full + full_len - after, after))
        goto done;
    size_t q = full_len - after, q_ws = q;
    while (q_ws < full_len && strchr(" \t\r\n", full[q_ws]))
        q_ws++;
    size_t e_ws;
    rc = -1;
    if (shared_of_text(tok, full, p, ids, n_full, begin) < 0 || shared_of_text(tok, full, q, ids, n_full, end) < 0 ||
        shared_of_text(tok, full, q_ws, ids, n_full, &e_ws) < 0) {
        snprintf(why, whylen, "the tokenizer refused the rendering");
        goto done;
    }
    if (e_ws < n_full && tok_is_special(tok, ids[e_ws]))
        *end = e_ws + 1;
    rc = 0;
done:
    free(alt);
    free(items);
    free(fields);
    return rc;
}

/* A conversation: rendered whole; each assistant message's tokens are what its turn adds
 * to the rendering of the turns before it with the generation prompt, or, where the
 * template renders those turns otherwise once later ones follow, its content's span
 * (content_span). */
static int add_conversation(sft_data *d, const json_value *o, const char *name, size_t line, const tok_tokenizer *tok,
                            const sft_options *opt, size_t *cap_tokens, size_t *cap_examples, char *err, size_t errlen)
{
    for (size_t i = 0; i < o->count; i++)
        if (strcmp(o->keys[i], "messages"))
            return FAIL("%s: line %zu: '%s' is not a field of this file's format (messages)", name, line, o->keys[i]);
    const json_value *m = json_get(o, "messages");
    if (!m || check_messages(m, name, line, err, errlen) < 0)
        return m ? -1 : FAIL("%s: line %zu: 'messages' is missing", name, line);
    if (!opt->chat)
        return FAIL("%s: line %zu: 'messages': the model has no chat template", name, line);
    char *full = NULL, why[512];
    size_t full_len, n_full;
    int *ids = NULL, rc = -1;
    if (render_prefix(opt, m, m->count, 0, tok, &full, &full_len, &ids, &n_full, why, sizeof why) < 0) {
        rc = FAIL("%s: line %zu: %s", name, line, why);
        goto done;
    }
    if (append(d, ids, n_full, cap_tokens, cap_examples) < 0) {
        rc = FAIL("%s: line %zu: out of memory", name, line);
        goto done;
    }
    uint8_t *loss = d->loss + d->offset[d->n - 1];
    /* where each message starts and ends: the renderings up to it must be prefixes */
    size_t prev = 0; /* tokens of the conversation up to the previous message */
    for (size_t j = 0; j < m->count; j++) {
        const json_value *role = json_get(&m->items[j], "role"), *w = json_get(&m->items[j], "weight");
        int assistant = !strcmp(role->string, "assistant"), learn = !w || w->number != 0;
        size_t begin = prev, end = 0;
        /* an assistant's turn starts after the generation prompt */
        int st = assistant ? shared_tokens(opt, m, j, 1, tok, full, full_len, ids, n_full, &begin, why, sizeof why) : 0;
        if (st == 0)
            st = shared_tokens(opt, m, j + 1, 0, tok, full, full_len, ids, n_full, &end, why, sizeof why);
        if (st == 1 && assistant) /* the prefix rule fails: the content's own span */
            st = content_span(opt, m, j, tok, full, full_len, ids, n_full, &begin, &end, why, sizeof why);
        else if (st == 1) /* a user or system turn carries no loss: nothing to place */
            st = 0, end = begin;
        if (st) {
            rc = st < 0 ? FAIL("%s: line %zu: %s", name, line, why)
                        : FAIL("%s: line %zu: 'messages[%zu]': the template renders the turns up to it differently "
                               "once later ones follow, and its content is not where a marker in its place goes, so "
                               "no span of tokens is its own", name, line, j);
            d->n--; /* the example appended first goes again */
            d->n_tokens = d->offset[d->n];
            goto done;
        }
        for (size_t i = begin > 0 ? begin : 1; i < end; i++) /* the first token is never a target */
            loss[i] = assistant && learn;
        prev = end;
    }
    if (opt->train_on_prompt && n_full > 1) /* every token but the first */
        memset(loss + 1, 1, n_full - 1);
    rc = 0;
done:
    free(full);
    free(ids);
    return rc;
}

/* One line's example: its tokens, and which of them carry loss. */
static int add_example(sft_data *d, const json_value *o, const char *name, size_t line, const tok_tokenizer *tok,
                       const sft_options *opt, size_t *cap_tokens, size_t *cap_examples, char *err, size_t errlen)
{
    if (d->format == SFT_MESSAGES)
        return add_conversation(d, o, name, line, tok, opt, cap_tokens, cap_examples, err, errlen);
    const int train_on_prompt = opt->train_on_prompt;
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
    /* as transformers' tokenizer(text): what the post-processor adds, special tokens matched */
    int st = tok_encode(tok, text, la + lb, TOK_ADD_SPECIAL, &whole, &n_whole);
    if (st == TOK_OK && is_pc)
        st = tok_encode(tok, text, la, TOK_ADD_SPECIAL, &head, &n_head);
    const int eos = tok_eos_id(tok);
    if (st == TOK_OK && eos >= 0 && (n_whole == 0 || whole[n_whole - 1] != eos)) { /* EOS ends what is said */
        int *more = realloc(whole, (n_whole + 1) * sizeof *whole);
        if (!more)
            goto oom;
        whole = more;
        whole[n_whole++] = eos;
    }
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
              const sft_options *opt, char *err, size_t errlen)
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
            d->format = json_get(o, "messages")                                  ? SFT_MESSAGES
                        : json_get(o, "prompt") || json_get(o, "completion") ? SFT_PROMPT_COMPLETION
                                                                             : SFT_TEXT;
            have_format = 1;
        }
        int rc = add_example(d, o, name, line, tok, opt, &cap_tokens, &cap_examples, err, errlen);
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

/* The packer under sft_fill_rows, sft_steps and sft_eval: rows of T inputs from the
 * examples at *cursor on, never taking the example at limit or later (the rest is padding);
 * targets carry loss (else -1); other (may be NULL) the targets of the examples' own
 * tokens that do not. inputs NULL: only advances *cursor (and counts), writing nothing. */
static size_t pack_rows(const sft_data *d, uint64_t seed, int shuffle, uint64_t *cursor, uint64_t limit,
                        size_t *order, uint64_t *epoch_of_order, int B, int T, int *inputs, int *targets, int *other,
                        int *start)
{
    size_t carried = 0;
    for (int b = 0; b < B; b++) {
        int *in = NULL, *tg = NULL, *ot = NULL, *st = NULL;
        if (inputs) {
            in = inputs + (size_t)b * T, tg = targets + (size_t)b * T, st = start + (size_t)b * T;
            ot = other ? other + (size_t)b * T : NULL;
            for (int t = 0; t < T; t++) /* padding, until an example takes the slot */
                in[t] = 0, st[t] = t, tg[t] = -1, ot ? ot[t] = -1 : 0;
        }
        int used = 0; /* token slots of the row's T + 1 */
        while (used < T + 1 && *cursor < limit) {
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
                if (in && t < T)
                    in[t] = d->ids[a + i], st[t] = used;
                if (i > 0) { /* the target of input t - 1; an example's last input has none */
                    if (in)
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

int sft_order_init(sft_order *o, const sft_data *d)
{
    o->epoch = UINT64_MAX;
    o->order = malloc((d->n ? d->n : 1) * sizeof *o->order);
    return o->order ? 0 : -1;
}

void sft_order_free(sft_order *o)
{
    free(o->order);
    o->order = NULL;
}

size_t sft_fill_rows(const sft_data *d, uint64_t seed, uint64_t *cursor, uint64_t limit, sft_order *o, int B, int T,
                     int *inputs, int *targets, int *start)
{
    return pack_rows(d, seed, 1, cursor, limit, o->order, &o->epoch, B, T, inputs, targets, NULL, start);
}

int sft_steps(const sft_data *d, uint64_t seed, uint64_t limit, int rows_per_step, int T, int *steps)
{
    sft_order o;
    if (sft_order_init(&o, d) < 0)
        return -1;
    uint64_t cursor = 0, n = 0;
    while (cursor < limit && n < INT_MAX) {
        pack_rows(d, seed, 1, &cursor, limit, o.order, &o.epoch, rows_per_step, T, NULL, NULL, NULL, NULL);
        n++;
    }
    sft_order_free(&o);
    *steps = (int)n;
    return 0;
}

/* A new data set of the examples of d that pick (n of them) selects. */
static int subset(const sft_data *d, const uint8_t *pick, int want, sft_data *out)
{
    size_t n = 0, tokens = 0;
    for (size_t e = 0; e < d->n; e++)
        if (pick[e] == want)
            n++, tokens += d->offset[e + 1] - d->offset[e];
    memset(out, 0, sizeof *out);
    out->format = d->format;
    out->ids = malloc((tokens ? tokens : 1) * sizeof *out->ids);
    out->loss = malloc(tokens ? tokens : 1);
    out->offset = malloc((n + 1) * sizeof *out->offset);
    if (!out->ids || !out->loss || !out->offset) {
        sft_free(out);
        return -1;
    }
    size_t w = 0;
    for (size_t e = 0; e < d->n; e++) {
        if (pick[e] != want)
            continue;
        size_t a = d->offset[e], len = d->offset[e + 1] - a;
        out->offset[out->n++] = w;
        memcpy(out->ids + w, d->ids + a, len * sizeof *d->ids);
        memcpy(out->loss + w, d->loss + a, len);
        for (size_t i = 0; i < len; i++)
            out->loss_tokens += d->loss[a + i];
        w += len;
    }
    out->offset[out->n] = out->n_tokens = w;
    return 0;
}

int sft_split(const sft_data *d, double fraction, uint64_t seed, sft_data *train, sft_data *held)
{
    size_t k = (size_t)(fraction * (double)d->n + 0.5);
    if (k == 0 && d->n > 1)
        k = 1;
    size_t *order = malloc((d->n ? d->n : 1) * sizeof *order);
    uint8_t *pick = calloc(d->n ? d->n : 1, 1);
    int rc = -1;
    if (order && pick) {
        /* the held-out examples: the first k of a shuffle no epoch uses */
        epoch_order(order, d->n, mix(seed ^ 0x76616C6964ull), 0, 1);
        for (size_t i = 0; i < k; i++)
            pick[order[i]] = 1;
        rc = 0;
        if (subset(d, pick, 0, train) < 0)
            rc = -1;
        else if (subset(d, pick, 1, held) < 0)
            sft_free(train), rc = -1;
        if (rc == 0)
            train->truncated = d->truncated; /* the file's count, not the subset's */
    }
    free(order);
    free(pick);
    return rc;
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
        pack_rows(d, 0, 0, &cursor, d->n, order, &have, 1, T, in, tg, ot, st);
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

int sft_chat_load(sft_chat *c, const char *dir, const char *builtin, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    const char *where = NULL;
    char why[512];
    int own = chat_template_load_dir(dir, &c->src, &c->bos, &c->eos, &where, why, sizeof why) == 0;
    if (builtin) { /* the model's bos_token and eos_token, if it names them, with the built-in */
        const char *src = chat_template_builtin(builtin);
        if (!src) {
            sft_chat_free(c);
            return FAIL("chat_template: \"%.40s\" is not a built-in template", builtin);
        }
        free(c->src);
        if (!(c->src = strdup(src))) {
            sft_chat_free(c);
            return FAIL("out of memory");
        }
        where = builtin;
    } else if (!own) {
        return 1; /* no template: examples of messages are refused when they come */
    }
    if (chat_template_compile(&c->chat, c->src, strlen(c->src), where, err, errlen) < 0) {
        sft_chat_free(c);
        return -1;
    }
    return 0;
}

int sft_chat_prompt(const sft_chat *c, const tok_tokenizer *tok, const json_value *messages, int **ids, size_t *n,
                    char *err, size_t errlen)
{
    const sft_options o = {0, c->chat, c->bos, c->eos};
    char *text;
    size_t len;
    if (!c->chat)
        return FAIL("no chat template");
    if (messages->type != JSON_ARRAY || messages->count == 0)
        return FAIL("must be a non-empty array of {role, content}");
    if (render_prefix(&o, messages, messages->count, 1, tok, &text, &len, ids, n, err, errlen) < 0)
        return -1;
    free(text);
    return 0;
}

int sft_chat_end_of_turn(const sft_chat *c, const tok_tokenizer *tok, int *id)
{
    /* what the template writes after an assistant message's content */
    static const char probe[] = "\x01qlora-end-of-turn-probe\x01";
    char msgs[160], err[256];
    snprintf(msgs, sizeof msgs, "[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", "
             "\"content\": \"\\u0001qlora-end-of-turn-probe\\u0001\"}]");
    if (!c->chat)
        return 0;
    json_value *m = json_parse(msgs, strlen(msgs), err, sizeof err);
    chat_options co = {.bos_token = c->bos, .eos_token = c->eos, .now = 0};
    char *text = NULL;
    size_t len;
    int found = 0;
    if (m && chat_render(c->chat, m, &co, &text, &len, err, sizeof err) == 0) {
        const char *at = strstr(text, probe);
        if (at) {
            const char *a = at + sizeof probe - 1, *b = text + len;
            while (a < b && strchr(" \t\r\n", *a))
                a++;
            while (b > a && strchr(" \t\r\n", b[-1]))
                b--;
            int *ids = NULL;
            size_t n = 0;
            /* the marker as the model sees it: a special token first, else no stop id (some
             * templates go on with the next header: Llama 3's base writes one for the
             * assistant after every turn) */
            if (b > a && tok_encode(tok, a, (size_t)(b - a), 0, &ids, &n) == TOK_OK && n >= 1 &&
                tok_is_special(tok, ids[0]))
                *id = ids[0], found = 1;
            free(ids);
        }
    }
    free(text);
    json_free(m);
    return found;
}

void sft_chat_free(sft_chat *c)
{
    chat_template_free(c->chat);
    free(c->src);
    free(c->bos);
    free(c->eos);
    memset(c, 0, sizeof *c);
}
