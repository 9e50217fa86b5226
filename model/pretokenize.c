/* pretokenize.c: a tokenizer.json's pre_tokenizer (see tokenizer.h), run as Hugging Face's
 * tokenizers runs it. A pre-tokenizer cuts each piece of the text into smaller ones and
 * the next one cuts those; merges never cross a cut, so each final piece (a pre-token) is
 * encoded alone. Hugging Face applies each step to the whole list before the next; every
 * step treats its pieces one by one and keeps their order, so running the steps depth
 * first (a piece through all of them before the next piece) gives the same pre-tokens in
 * the same order without lists.
 *
 * Regexes are Oniguruma's, compiled once at load with what Hugging Face's SysRegex uses
 * (the onig crate's Regex::new: ONIG_OPTION_NONE, the default syntax, which is Ruby's, and
 * UTF-8), so that \p{L}, (?i:...) and (?!\S) mean here what they mean there. Matches are
 * iterated as the onig crate's find_iter does: an empty match right where the previous
 * match ended is not taken; the search moves one character on. */
#include <oniguruma.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

/* GPT-2's pre-tokenizer regex, as Hugging Face's ByteLevel uses it with use_regex. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Hugging Face's SplitDelimiterBehavior. */
enum { REMOVED, ISOLATED, MERGED_WITH_PREVIOUS, MERGED_WITH_NEXT, CONTIGUOUS };
static const char *const behaviors[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                        "Contiguous"};

/* One step: Split (a regex or a literal string) or ByteLevel (a prefix space, then GPT-2's
 * regex if use_regex, Isolated). */
typedef struct {
    regex_t *re;          /* NULL: literal, or a ByteLevel without use_regex */
    char *literal;        /* Split with a String pattern */
    size_t literal_len;
    int behavior, invert;
    int prefix_space;     /* ByteLevel add_prefix_space */
} step;

struct tok_pretok {
    step *steps;
    size_t n;
};

static pthread_once_t onig_once = PTHREAD_ONCE_INIT;
static int onig_ready;

static void onig_start(void)
{
    OnigEncoding enc[] = {ONIG_ENCODING_UTF8};
    onig_ready = onig_initialize(enc, 1) == ONIG_NORMAL;
}

int tok_onig_ready(void)
{
    pthread_once(&onig_once, onig_start);
    return onig_ready;
}

/* Compiles pattern[0..n) into *re; -1 with Oniguruma's message naming field. */
static int compile(regex_t **re, const char *pattern, size_t n, const char *field, const char *path, char *err,
                   size_t errlen)
{
    if (!tok_onig_ready())
        return tok_fail(err, errlen, path, "%s: Oniguruma would not initialize", field);
    OnigErrorInfo info;
    int rc = onig_new(re, (const OnigUChar *)pattern, (const OnigUChar *)pattern + n, ONIG_OPTION_NONE,
                      ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info);
    if (rc != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, rc, &info);
        *re = NULL;
        return tok_fail(err, errlen, path, "%s: the regex \"%.80s\" does not compile (%s)", field, pattern,
                        (const char *)msg);
    }
    return 0;
}

static int parse_step(step *st, const json_value *v, const char *field, const char *path, char *err, size_t errlen)
{
    const json_value *type = json_get(v, "type");
    char buf[80];
    if (tok_is_str(type, "ByteLevel")) {
        const json_value *prefix = json_get(v, "add_prefix_space"), *regex = json_get(v, "use_regex");
        if (!prefix || prefix->type != JSON_BOOL || (regex && regex->type != JSON_BOOL))
            return tok_fail(err, errlen, path, "%s.add_prefix_space, use_regex: must be booleans", field);
        st->behavior = ISOLATED;
        st->prefix_space = prefix->boolean;
        /* use_regex defaults to true, as Hugging Face's serde default has it; trim_offsets
         * changes offsets only, never ids */
        if (!regex || regex->boolean)
            return compile(&st->re, gpt2_regex, strlen(gpt2_regex), field, path, err, errlen);
        return 0;
    }
    if (!tok_is_str(type, "Split"))
        return tok_fail(err, errlen, path,
                        "%s: type %s is not supported (only Split, ByteLevel and a Sequence of them)", field,
                        tok_show(type, buf, sizeof buf));
    const json_value *pattern = json_get(v, "pattern"), *behavior = json_get(v, "behavior"),
                     *invert = json_get(v, "invert");
    const json_value *regex = json_get(pattern, "Regex"), *literal = json_get(pattern, "String");
    st->behavior = -1;
    for (int b = 0; b < 5; b++)
        if (tok_is_str(behavior, behaviors[b]))
            st->behavior = b;
    if (st->behavior < 0)
        return tok_fail(err, errlen, path,
                        "%s.behavior: %s is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, "
                        "Contiguous", field, tok_show(behavior, buf, sizeof buf));
    if (!invert || invert->type != JSON_BOOL)
        return tok_fail(err, errlen, path, "%s.invert: must be a boolean", field);
    st->invert = invert->boolean;
    if (regex && regex->type == JSON_STRING) {
        char sub[200];
        snprintf(sub, sizeof sub, "%.150s.pattern.Regex", field);
        return compile(&st->re, regex->string, regex->len, sub, path, err, errlen);
    }
    if (literal && literal->type == JSON_STRING && literal->len > 0) {
        st->literal = malloc(literal->len);
        if (!st->literal)
            return tok_fail(err, errlen, path, "out of memory");
        memcpy(st->literal, literal->string, literal->len);
        st->literal_len = literal->len;
        return 0;
    }
    return tok_fail(err, errlen, path, "%s.pattern: must be {\"Regex\": a string} or {\"String\": a non-empty string}",
                    field);
}

/* Counts (steps NULL) or parses the steps of v, Sequences flattened. */
static int walk(tok_pretok *p, const json_value *v, const char *field, const char *path, char *err, size_t errlen)
{
    const json_value *list = json_get(v, "pretokenizers");
    if (tok_is_str(json_get(v, "type"), "Sequence")) {
        if (!list || list->type != JSON_ARRAY)
            return tok_fail(err, errlen, path, "%s.pretokenizers: missing or not an array", field);
        for (size_t i = 0; i < list->count; i++) {
            char sub[200];
            snprintf(sub, sizeof sub, "%.150s.pretokenizers[%zu]", field, i);
            if (walk(p, &list->items[i], sub, path, err, errlen) < 0)
                return -1;
        }
        return 0;
    }
    if (p->steps && parse_step(&p->steps[p->n], v, field, path, err, errlen) < 0)
        return -1;
    p->n++;
    return 0;
}

int pretok_parse(tok_pretok **out, const json_value *v, const char *path, char *err, size_t errlen)
{
    tok_pretok *p = calloc(1, sizeof *p);
    *out = NULL;
    if (!p)
        return tok_fail(err, errlen, path, "out of memory");
    if (walk(p, v, "pre_tokenizer", path, err, errlen) < 0) {
        free(p);
        return -1;
    }
    size_t n = p->n;
    p->steps = calloc(n ? n : 1, sizeof *p->steps);
    p->n = 0;
    if (!p->steps) {
        free(p);
        return tok_fail(err, errlen, path, "out of memory");
    }
    int rc = walk(p, v, "pre_tokenizer", path, err, errlen);
    if (rc == 0)
        *out = p;
    else
        pretok_free(p);
    return rc;
}

void pretok_free(tok_pretok *p)
{
    if (!p)
        return;
    /* n counts the steps parsed; one that failed holds nothing */
    for (size_t i = 0; p->steps && i < p->n; i++) {
        if (p->steps[i].re)
            onig_free(p->steps[i].re);
        free(p->steps[i].literal);
    }
    free(p->steps);
    free(p);
}

/* ---- running ---- */

typedef struct {
    const tok_pretok *p;
    pretok_fn fn;
    void *ctx;
    OnigRegion *region;
} run;

static int run_from(run *r, size_t k, const char *s, size_t n);

/* The behaviors, as Hugging Face's NormalizedString::split folds the list of (range,
 * is_match), streamed: at most one piece is held back to be extended. */
typedef struct {
    run *r;
    size_t next_step;
    const char *s;
    int behavior;
    int held, prev_match;
    size_t held_start, held_end;
} splitter;

static int emit(splitter *sp, size_t start, size_t end)
{
    return end > start ? run_from(sp->r, sp->next_step, sp->s + start, end - start) : 0;
}

static int release(splitter *sp)
{
    int rc = sp->held ? emit(sp, sp->held_start, sp->held_end) : 0;
    sp->held = 0;
    return rc;
}

static int hold(splitter *sp, size_t start, size_t end)
{
    int rc = release(sp);
    sp->held = 1, sp->held_start = start, sp->held_end = end;
    return rc;
}

static int piece(splitter *sp, size_t start, size_t end, int is_match)
{
    int rc = 0;
    switch (sp->behavior) {
    case ISOLATED:
        return emit(sp, start, end);
    case REMOVED:
        return is_match ? 0 : emit(sp, start, end);
    case MERGED_WITH_PREVIOUS: /* a match joins the piece before it, unless that was a match */
    case CONTIGUOUS:           /* consecutive pieces of the same kind join */
        if (sp->held && (sp->behavior == CONTIGUOUS ? is_match == sp->prev_match : is_match && !sp->prev_match))
            sp->held_end = end;
        else
            rc = hold(sp, start, end);
        break;
    default: /* MERGED_WITH_NEXT: a match joins the piece after it, unless that is a match */
        if (sp->held) { /* a held match: this piece follows it */
            if (!is_match) {
                sp->held_end = end;
                rc = release(sp);
                break;
            }
            rc = release(sp);
        }
        if (rc == 0 && is_match)
            sp->held = 1, sp->held_start = start, sp->held_end = end;
        else if (rc == 0)
            rc = emit(sp, start, end);
        break;
    }
    sp->prev_match = is_match;
    return rc;
}

static size_t char_len(const char *s, size_t at, size_t n)
{
    size_t j = at + 1;
    while (j < n && ((unsigned char)s[j] & 0xC0) == 0x80)
        j++;
    return j - at;
}

/* The next match at or after *from: 1 with [*ms, *me), or 0. */
static int next_match(run *r, const step *st, const char *s, size_t n, size_t *from, long *last_end, size_t *ms,
                      size_t *me)
{
    for (;;) {
        if (*from > n)
            return 0;
        if (st->literal) {
            const char *hit = st->literal_len <= n - *from ? memmem(s + *from, n - *from, st->literal,
                                                                    st->literal_len) : NULL;
            if (!hit)
                return 0;
            *ms = (size_t)(hit - s), *me = *ms + st->literal_len;
        } else {
            const OnigUChar *u = (const OnigUChar *)s;
            onig_region_clear(r->region);
            if (onig_search(st->re, u, u + n, u + *from, u + n, r->region, ONIG_OPTION_NONE) < 0)
                return 0; /* ONIG_MISMATCH, or an error such as a retry limit: no more matches */
            *ms = (size_t)r->region->beg[0], *me = (size_t)r->region->end[0];
        }
        if (*ms == *me && *last_end == (long)*me) { /* the onig crate's find_iter */
            *from += *from < n ? char_len(s, *from, n) : 1;
            continue;
        }
        *from = *me;
        *last_end = (long)*me;
        return 1;
    }
}

/* Step st on s[0..n): its pieces, each through the steps after it. */
static int split(run *r, size_t k, const char *s, size_t n)
{
    const step *st = &r->p->steps[k];
    splitter sp = {r, k + 1, s, st->behavior, 0, 0, 0, 0};
    size_t prev = 0, from = 0, ms, me;
    long last_end = -1;
    int rc = 0;
    if (n == 0) /* Hugging Face: an empty piece is one empty non-match, dropped */
        return 0;
    while (rc == 0 && next_match(r, st, s, n, &from, &last_end, &ms, &me)) {
        if (prev != ms)
            rc = piece(&sp, prev, ms, st->invert);
        if (rc == 0)
            rc = piece(&sp, ms, me, !st->invert);
        prev = me;
    }
    if (rc == 0 && prev != n)
        rc = piece(&sp, prev, n, st->invert);
    return rc ? rc : release(&sp);
}

static int run_from(run *r, size_t k, const char *s, size_t n)
{
    if (n == 0)
        return 0; /* Hugging Face drops empty pieces after every step */
    if (k == r->p->n)
        return r->fn(r->ctx, s, n);
    const step *st = &r->p->steps[k];
    if (st->prefix_space && s[0] != ' ') {
        /* ByteLevel's add_prefix_space: a space before a piece that does not start with one */
        char *copy = malloc(n + 1);
        if (!copy)
            return TOK_NOMEM;
        copy[0] = ' ';
        memcpy(copy + 1, s, n);
        int rc = st->re || st->literal ? split(r, k, copy, n + 1) : run_from(r, k + 1, copy, n + 1);
        free(copy);
        return rc;
    }
    return st->re || st->literal ? split(r, k, s, n) : run_from(r, k + 1, s, n);
}

int pretok_run(const tok_pretok *p, const char *s, size_t n, pretok_fn fn, void *ctx)
{
    run r = {p, fn, ctx, onig_region_new()};
    if (!r.region)
        return TOK_NOMEM;
    int rc = run_from(&r, 0, s, n);
    onig_region_free(r.region, 1);
    return rc;
}
