/* added_tokens.c: a tokenizer.json's added_tokens, found in the text before anything else
 * as Hugging Face's AddedVocabulary::find_matches finds them: its Aho-Corasick automaton
 * reports the leftmost match and, among those that start there, the longest, then goes on
 * from its end; here the same match is found by trying, at each position whose byte can
 * start a token, each length a token has (longest first is implicit: the longest one that
 * is a token wins). A match it discards (a special token when special tokens are text; a
 * single_word token inside a word) still ends where it ended. lstrip and rstrip widen a
 * match over the White_Space around it; single_word needs no word character (Rust regex's
 * \w, as Hugging Face tests it) on either side. */
#include <oniguruma.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "utf8.h"

typedef struct {
    uint32_t off, len; /* content: bytes[off .. off + len) */
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word;
} entry;

struct tok_added {
    entry *e;
    size_t n;
    char *bytes;
    int32_t *table;      /* open addressing on the content's hash: entry index, -1 empty */
    uint32_t mask;
    uint8_t first[256];  /* a token starts with this byte */
    uint8_t *has_len;    /* has_len[L]: a token is L bytes long (L <= longest) */
    size_t longest;
    regex_t *word;       /* a word character, for single_word; NULL if none has it */
};

static uint32_t hash_step(uint32_t h, unsigned char c)
{
    return (h ^ c) * 16777619u;
}

#define BASIS 2166136261u

static const entry *find(const tok_added *a, uint32_t h, const char *s, size_t n)
{
    for (uint32_t i = h & a->mask;; i = (i + 1) & a->mask) {
        int32_t k = a->table[i];
        if (k < 0)
            return NULL;
        const entry *e = &a->e[k];
        if (e->len == n && memcmp(a->bytes + e->off, s, n) == 0)
            return e;
    }
}

void added_free(tok_added *a)
{
    if (!a)
        return;
    if (a->word)
        onig_free(a->word);
    free(a->e);
    free(a->bytes);
    free(a->table);
    free(a->has_len);
    free(a);
}

/* A boolean flag of added token v: 0/1, or -1 if present and not a boolean. */
static int flag(const json_value *v, const char *key)
{
    const json_value *f = json_get(v, key);
    if (!f)
        return 0;
    return f->type == JSON_BOOL ? f->boolean : -1;
}

int added_parse(tok_tokenizer *t, const json_value *added, const char *path, char *err, size_t errlen)
{
    tok_added *a = calloc(1, sizeof *a);
    size_t total = 0, cap = 2;
    if (!a)
        return tok_fail(err, errlen, path, "out of memory");
    a->n = added->count;
    while (cap < 2 * a->n)
        cap *= 2;
    for (size_t i = 0; i < a->n; i++) {
        const json_value *c = json_get(&added->items[i], "content");
        total += c && c->type == JSON_STRING ? c->len : 0;
        if (c && c->type == JSON_STRING && c->len > a->longest)
            a->longest = c->len;
    }
    a->e = calloc(a->n ? a->n : 1, sizeof *a->e);
    a->bytes = malloc(total ? total : 1);
    a->table = malloc(cap * sizeof *a->table);
    a->has_len = calloc(a->longest + 1, 1);
    if (!a->e || !a->bytes || !a->table || !a->has_len) {
        added_free(a);
        return tok_fail(err, errlen, path, "out of memory for %zu added tokens", added->count);
    }
    a->mask = (uint32_t)cap - 1;
    memset(a->table, 0xff, cap * sizeof *a->table);
    t->added_max = a->longest;
    uint32_t off = 0;
    int any_word = 0;
    for (size_t i = 0; i < a->n; i++) {
        const json_value *v = &added->items[i], *c = json_get(v, "content");
        entry *e = &a->e[i];
        long id;
        int special = flag(v, "special"), lstrip = flag(v, "lstrip"), rstrip = flag(v, "rstrip");
        int single = flag(v, "single_word"), normalized = flag(v, "normalized");
        /* tokenizer_json.c checked id and content */
        json_get_int(v, "id", 0, t->vocab_size - 1, &id);
        if (special < 0 || lstrip < 0 || rstrip < 0 || single < 0 || normalized < 0) {
            added_free(a);
            return tok_fail(err, errlen, path, "added_tokens[%zu]: special, lstrip, rstrip, single_word and "
                            "normalized must be booleans", i);
        }
        if (normalized) {
            added_free(a);
            return tok_fail(err, errlen, path, "added_tokens[%zu].normalized: true is not supported (a token "
                            "found in the normalized text); only false", i);
        }
        *e = (entry){off, (uint32_t)c->len, (int32_t)id, (uint8_t)special, (uint8_t)lstrip, (uint8_t)rstrip,
                     (uint8_t)single};
        memcpy(a->bytes + off, c->string, c->len);
        off += (uint32_t)c->len;
        uint32_t h = BASIS;
        for (size_t k = 0; k < c->len; k++)
            h = hash_step(h, (unsigned char)c->string[k]);
        const entry *had = find(a, h, c->string, c->len);
        if (had) {
            int other = had->id;
            added_free(a);
            return tok_fail(err, errlen, path, "added_tokens[%zu]: content \"%.60s\" is also id %d's", i, c->string,
                            other);
        }
        uint32_t j = h & a->mask;
        while (a->table[j] >= 0)
            j = (j + 1) & a->mask;
        a->table[j] = (int32_t)i;
        a->first[(unsigned char)c->string[0]] = 1;
        a->has_len[c->len] = 1;
        if (special)
            t->special[id] = 1;
        if (lstrip || rstrip)
            t->added_max = SIZE_MAX; /* a match may take any number of spaces with it */
        any_word |= single;
    }
    if (any_word) {
        /* Rust regex's Unicode \w, which Hugging Face's single_word tests */
        static const char word[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
        OnigErrorInfo info;
        if (!tok_onig_ready() ||
            onig_new(&a->word, (const OnigUChar *)word, (const OnigUChar *)word + strlen(word), ONIG_OPTION_NONE,
                     ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info) != ONIG_NORMAL) {
            a->word = NULL;
            added_free(a);
            return tok_fail(err, errlen, path, "added_tokens: Oniguruma cannot compile the word class");
        }
    }
    t->added = a;
    return 0;
}

/* ---- finding them ---- */

int added_id(const tok_added *a, const char *s, size_t n)
{
    uint32_t h = BASIS;
    for (size_t k = 0; k < n; k++)
        h = hash_step(h, (unsigned char)s[k]);
    const entry *e = a ? find(a, h, s, n) : NULL;
    return e ? e->id : -1;
}

/* The codepoint of the valid UTF-8 character at s[0..n), its length in *len. */
static unsigned decode_at(const unsigned char *s, size_t n, size_t *len)
{
    int l = utf8_char(s, n, NULL);
    *len = l > 0 ? (size_t)l : 1;
    if (l <= 1)
        return s[0];
    unsigned cp = s[0] & (0x7F >> l);
    for (int i = 1; i < l; i++)
        cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

/* Unicode's White_Space, which Rust regex's \s is. */
static int white_space(unsigned cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* The start of the character that ends s[0..end). */
static size_t char_before(const char *s, size_t end)
{
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80 && end - i < 4)
        i--;
    return i;
}

static int is_word(const tok_added *a, const char *s, size_t at, size_t n)
{
    const OnigUChar *u = (const OnigUChar *)s;
    return onig_match(a->word, u, u + n, u + at, NULL, ONIG_OPTION_NONE) > 0;
}

int added_run(const tok_added *a, const char *s, size_t n, int split_special, added_fn fn, void *ctx)
{
    size_t done = 0; /* Hugging Face's start_offset: the text up to here is passed on */
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        const entry *e = NULL;
        if (a->first[(unsigned char)s[i]]) {
            uint32_t h = BASIS;
            for (size_t l = 1; l <= a->longest && i + l <= n; l++) {
                h = hash_step(h, (unsigned char)s[i + l - 1]);
                const entry *f = a->has_len[l] ? find(a, h, s + i, l) : NULL;
                e = f ? f : e;
            }
        }
        if (!e) {
            i++;
            continue;
        }
        size_t start = i, stop = i + e->len;
        i = stop; /* the automaton goes on from the match's own end */
        if (split_special && e->special)
            continue;
        if (e->single_word && ((start > 0 && is_word(a, s, char_before(s, start), n)) ||
                               (stop < n && is_word(a, s, stop, n))))
            continue;
        if (e->lstrip) {
            size_t at = start, len;
            while (at > 0) {
                size_t b = char_before(s, at);
                if (!white_space(decode_at((const unsigned char *)s + b, at - b, &len)))
                    break;
                at = b;
            }
            start = at > done ? at : done;
        }
        if (e->rstrip) {
            size_t len;
            while (stop < n && white_space(decode_at((const unsigned char *)s + stop, n - stop, &len)))
                stop += len;
        }
        if (done < start)
            rc = fn(ctx, s + done, start - done, -1);
        if (rc == 0)
            rc = fn(ctx, s + start, stop - start, e->id);
        done = stop;
    }
    if (rc == 0 && done < n)
        rc = fn(ctx, s + done, n - done, -1);
    return rc;
}
