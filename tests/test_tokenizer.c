/* test_tokenizer.c: the tokenizer against llama2.c's known encodings, against a direct
 * port of run.c's quadratic encoder on random and real text, decode round trips, speed on
 * a whole corpus, and malformed tokenizer files. argv[1] is the shared directory (models/,
 * data/). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tap.h"
#include "tokenizer.h"

static const char *shared;

#define BOS 1 /* llama2.c's; test_known checks tok_bos_id */

/* run.c's encode(text, bos, eos): tok_encode adds BOS (the only special tokenizer.bin
 * adds) with TOK_ADD_SPECIAL; EOS is appended here, as run.c does. */
static int encode(const tok_tokenizer *t, const char *text, size_t n, int bos, int eos, int **ids, size_t *n_ids)
{
    int rc = tok_encode(t, text, n, bos ? TOK_ADD_SPECIAL : 0, ids, n_ids);
    if (rc == TOK_OK && eos) {
        int *g = realloc(*ids, (*n_ids + 1) * sizeof *g);
        if (!g) {
            free(*ids);
            *ids = NULL;
            return TOK_NOMEM;
        }
        *ids = g;
        g[(*n_ids)++] = tok_eos_id(t);
    }
    return rc;
}
static char tokenizer_path[4096];

static uint64_t rng = 88172645463325252ull;

static uint64_t next_u64(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

static size_t below(size_t n)
{
    return (size_t)(next_u64() % n);
}

static char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = end >= 0 ? malloc((size_t)end + 1) : NULL;
    if (s && fread(s, 1, (size_t)end, f) != (size_t)end) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s) {
        s[end] = '\0';
        *n = (size_t)end;
    }
    return s;
}

static int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static tok_tokenizer *load_or_bail(void)
{
    char err[512];
    tok_tokenizer *t;
    if (tok_load(&t, tokenizer_path, 512, err, sizeof err) < 0) {
        printf("Bail out! %s\n", err);
        exit(1);
    }
    return t;
}

/* ---- the reference: run.c's encode(), ported line by line ----
 * Only two liberties: strings carry lengths instead of NUL terminators (so that random
 * bytes may include NUL), and the vocabulary is read here, independently of tok_load.
 * Lookups bsearch a sorted copy of the vocabulary, as run.c's str_lookup does. */

typedef struct {
    int n;
    unsigned max_token_length;
    float *score;
    char **piece;
    int *len;
    int *sorted; /* ids ordered by piece bytes */
} ref_vocab;

static const ref_vocab *cmp_vocab;

static int cmp_bytes(const char *a, int la, const char *b, int lb)
{
    int c = memcmp(a, b, (size_t)(la < lb ? la : lb));
    return c ? c : (la > lb) - (la < lb);
}

static int cmp_sorted(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    return cmp_bytes(cmp_vocab->piece[i], cmp_vocab->len[i], cmp_vocab->piece[j],
                     cmp_vocab->len[j]);
}

static int ref_load(ref_vocab *v, const char *path, int n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    v->n = n;
    v->score = malloc(n * sizeof(float));
    v->piece = calloc(n, sizeof(char *));
    v->len = malloc(n * sizeof(int));
    v->sorted = malloc(n * sizeof(int));
    int ok = v->score && v->piece && v->len && v->sorted &&
             fread(&v->max_token_length, 4, 1, f) == 1;
    for (int i = 0; ok && i < n; i++) {
        ok = fread(&v->score[i], 4, 1, f) == 1 && fread(&v->len[i], 4, 1, f) == 1 &&
             (v->piece[i] = malloc(v->len[i] + 1)) &&
             fread(v->piece[i], v->len[i], 1, f) == 1;
        v->sorted[i] = i;
    }
    fclose(f);
    if (!ok)
        return -1;
    cmp_vocab = v;
    qsort(v->sorted, n, sizeof(int), cmp_sorted);
    return 0;
}

static void ref_free(ref_vocab *v)
{
    for (int i = 0; i < v->n; i++)
        free(v->piece[i]);
    free(v->piece);
    free(v->score);
    free(v->len);
    free(v->sorted);
}

static int ref_lookup(const ref_vocab *v, const char *s, int len)
{
    int lo = 0, hi = v->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, id = v->sorted[mid];
        int c = cmp_bytes(s, len, v->piece[id], v->len[id]);
        if (c == 0)
            return id;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

/* tokens has room for n + 3. */
static int ref_encode(const ref_vocab *v, const char *text, int n, int bos, int eos, int *tokens)
{
    char *str_buffer = malloc(v->max_token_length * 2 + 1 + 2);
    int str_len = 0, n_tokens = 0;
    if (bos)
        tokens[n_tokens++] = 1;
    if (n > 0)
        tokens[n_tokens++] = ref_lookup(v, " ", 1);
    for (int c = 0; c < n; c++) {
        if ((text[c] & 0xC0) != 0x80)
            str_len = 0;
        str_buffer[str_len++] = text[c];
        if (c + 1 < n && (text[c + 1] & 0xC0) == 0x80 && str_len < 4)
            continue;
        int id = ref_lookup(v, str_buffer, str_len);
        if (id != -1) {
            tokens[n_tokens++] = id;
        } else {
            for (int i = 0; i < str_len; i++)
                tokens[n_tokens++] = (unsigned char)str_buffer[i] + 3;
        }
        str_len = 0;
    }
    while (1) {
        float best_score = -1e10f;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i < n_tokens - 1; i++) {
            int a = tokens[i], b = tokens[i + 1];
            memcpy(str_buffer, v->piece[a], v->len[a]);
            memcpy(str_buffer + v->len[a], v->piece[b], v->len[b]);
            int id = ref_lookup(v, str_buffer, v->len[a] + v->len[b]);
            if (id != -1 && v->score[id] > best_score) {
                best_score = v->score[id];
                best_id = id;
                best_idx = i;
            }
        }
        if (best_idx == -1)
            break;
        tokens[best_idx] = best_id;
        for (int i = best_idx + 1; i < n_tokens - 1; i++)
            tokens[i] = tokens[i + 1];
        n_tokens--;
    }
    if (eos)
        tokens[n_tokens++] = 2;
    free(str_buffer);
    return n_tokens;
}

static int is_space(char c) /* Python's str.strip() on this ASCII data */
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* ---- 1: llama2.c's known encodings (../shared/models/README.md) ---- */

static void test_known(void)
{
    tok_tokenizer *t = load_or_bail();
    CHECK(tok_vocab_size(t) == 512, "vocab %d", tok_vocab_size(t));
    size_t n_stop;
    const int *stop = tok_stop_ids(t, &n_stop);
    CHECK(tok_bos_id(t) == 1 && tok_eos_id(t) == 2, "BOS %d, EOS %d", tok_bos_id(t), tok_eos_id(t));
    CHECK(n_stop == 2 && stop[0] == 1 && stop[1] == 2, "%zu stop ids", n_stop);
    CHECK(tok_is_special(t, 1) && tok_is_special(t, 2) && !tok_is_special(t, 0) && !tok_is_special(t, 3),
          "special: BOS and EOS only");
    test_case("tokenizer.bin: BOS 1, EOS 2, generation stops at either, as run.c");
    static const struct {
        const char *label, *text;
        int ids[64];
    } rows[] = {
        {"story opening", "Once upon a time, there was a little girl named Lily.",
         {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, -1}},
        {"hello world", "hello world", {1, 281, 306, 414, 263, 304, 341, -1}},
        {"leading spaces and a tab", "  two leading spaces and a tab\there",
         {1, 410, 410, 259, 424, 414, 278, 411, 380, 299, 262, 427, 412, 331, 419, 269, 261,
          259, 412, 430, 12, 260, 276, -1}},
        {"newlines", "line one\nline two\n\nafter a blank line",
         {1, 278, 271, 411, 353, 411, 13, 421, 271, 411, 259, 424, 414, 13, 13, 412, 431, 413,
          285, 261, 268, 421, 303, 433, 278, 271, 411, -1}},
        {"UTF-8: accents, dash, CJK, emoji", /* "café — naïve 日本語 🙂" */
         "caf\xc3\xa9 \xe2\x80\x94 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e "
         "\xf0\x9f\x99\x82",
         {1, 280, 412, 431, 485, 410, 481, 297, 412, 198, 178, 360, 410, 233, 154, 168, 233, 159,
          175, 235, 173, 161, 410, 243, 162, 156, 133, -1}},
        {"Shakespeare", "ROMEO:\nBut, soft! what light through yonder window breaks?",
         {1, 410, 461, 441, 446, 459, 441, 467, 13, 445, 323, 432, 384, 431, 413, 443, 263, 415,
          294, 278, 333, 415, 413, 308, 420, 277, 428, 415, 348, 414, 264, 285, 263, 417, 264,
          327, 268, 276, 412, 433, 419, 450, -1}},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        int *ids;
        size_t n, want = 0;
        while (rows[r].ids[want] >= 0)
            want++;
        CHECK(encode(t, rows[r].text, strlen(rows[r].text), 1, 0, &ids, &n) == 0, "row %zu", r);
        CHECK(n == want, "row %zu: %zu ids, want %zu", r, n, want);
        for (size_t i = 0; i < n && i < want; i++)
            CHECK(ids[i] == rows[r].ids[i], "row %zu id %zu: %d, want %d", r, i, ids[i],
                  rows[r].ids[i]);
        free(ids);
        test_case("README encoding %zu (%s)", r + 1, rows[r].label);
    }

    /* Ties: in "wooo", after " w" the two overlapping "oo" pairs score the same and run.c
     * merges the leftmost: " w" "oo" "o", not " w" "o" "oo". */
    int *ids;
    size_t n;
    static const int wooo[] = {1, 263, 347, 414}, ooooh[] = {1, 319, 347, 414, 415};
    CHECK(encode(t, "wooo", 4, 1, 0, &ids, &n) == 0 && n == 4 &&
              memcmp(ids, wooo, sizeof wooo) == 0,
          "wooo: %zu ids, [2] = %d", n, n > 2 ? ids[2] : -1);
    free(ids);
    CHECK(encode(t, "Ooooh", 5, 1, 0, &ids, &n) == 0 && n == 5 &&
              memcmp(ids, ooooh, sizeof ooooh) == 0,
          "Ooooh: %zu ids, [2] = %d", n, n > 2 ? ids[2] : -1);
    free(ids);
    test_case("equal scores: the leftmost pair merges first");

    /* Empty text: no dummy prefix, just the requested specials. */
    CHECK(encode(t, "", 0, 1, 1, &ids, &n) == 0 && n == 2 && ids[0] == 1 && ids[1] == 2,
          "empty with bos/eos: %zu ids", n);
    free(ids);
    CHECK(encode(t, "", 0, 0, 0, &ids, &n) == 0 && n == 0 && ids, "empty: %zu ids", n);
    free(ids);
    CHECK(encode(t, "hello world", 11, 0, 1, &ids, &n) == 0 && n == 7 && ids[0] == 281 &&
              ids[6] == 2, "eos only: %zu ids", n);
    free(ids);
    test_case("empty text and the bos/eos flags");

    /* The perplexity token set's first paragraph (README: it starts with these ids). */
    static const int para_ids[] = {1, 272, 420, 287, 351, 328, 353, 432, 259, 288, 343, 278,
                                   411, 295, 416, 266, 351, 262, 287, 316, 369, 419, 364, 300};
    char path[4096];
    snprintf(path, sizeof path, "%s/data/tinystories_valid.txt", shared);
    size_t len;
    char *text = read_all(path, &len);
    CHECK(text, "cannot read %s", path);
    if (text) {
        char *p = text, *end = text + len, *para = NULL;
        size_t plen = 0;
        while (p < end && !para) { /* paragraphs split on "\n\n", stripped, > 300 bytes */
            char *q = strstr(p, "\n\n");
            char *e = q ? q : end, *b = p;
            while (b < e && is_space(*b))
                b++;
            while (e > b && is_space(e[-1]))
                e--;
            if (e - b > 300)
                para = b, plen = (size_t)(e - b);
            p = q ? q + 2 : end;
        }
        int rc = para ? encode(t, para, plen, 1, 0, &ids, &n) : -1;
        CHECK(rc == 0, "no paragraph of more than 300 bytes, or encode failed");
        if (rc == 0) {
            for (size_t i = 0; i < sizeof para_ids / sizeof para_ids[0]; i++)
                CHECK(i < n && ids[i] == para_ids[i], "paragraph id %zu: %d, want %d", i,
                      i < n ? ids[i] : -1, para_ids[i]);
            free(ids);
        }
        free(text);
    }
    test_case("first perplexity paragraph of tinystories_valid");
    tok_free(t);
}

/* ---- 2: equal to the run.c port ---- */

typedef struct {
    int cases, failures;
} tally;

static void compare_one(const tok_tokenizer *t, const ref_vocab *v, const char *text, size_t n,
                        int bos, int eos, tally *c, const char *what)
{
    int *ref = malloc((n + 3) * sizeof(int)), *ids = NULL;
    size_t n_ids = 0;
    int n_ref = ref ? ref_encode(v, text, (int)n, bos, eos, ref) : -1;
    int rc = encode(t, text, n, bos, eos, &ids, &n_ids);
    int same = rc == 0 && n_ref >= 0 && (size_t)n_ref == n_ids &&
               memcmp(ids, ref, n_ids * sizeof(int)) == 0;
    c->cases++;
    if (!same && c->failures++ < 5) { /* show the first few, not thousands */
        size_t i = 0;
        while (i < n_ids && (int)i < n_ref && ids[i] == ref[i])
            i++;
        CHECK(same, "%s, %zu bytes: %zu ids vs run.c's %d, first difference at %zu (%d vs %d)",
              what, n, n_ids, n_ref, i, i < n_ids ? ids[i] : -1, (int)i < n_ref ? ref[i] : -1);
    }
    free(ref);
    free(ids);
}

/* Random valid UTF-8 of 1..4-byte codepoints, biased toward the vocabulary's own pieces. */
static size_t random_utf8(char *s, size_t max)
{
    static const char *common[] = {"\xc3\xa9", "\xe2\x80\x94", "\xe2\x80\x99", "\xe2\x80\x9c",
                                   "\xe2\x80\xa6", "\xc2\xa0", " ", "e", "ll", "\n"};
    size_t n = 0;
    while (n + 4 <= max) {
        unsigned r = (unsigned)below(10), cp;
        if (r < 4) {
            const char *p = common[below(sizeof common / sizeof common[0])];
            memcpy(s + n, p, strlen(p));
            n += strlen(p);
            continue;
        }
        if (r < 7)
            cp = 0x20 + (unsigned)below(0x5f);
        else if (r < 8)
            cp = 0x80 + (unsigned)below(0x780);
        else if (r < 9)
            do
                cp = 0x800 + (unsigned)below(0xf800);
            while (cp >= 0xd800 && cp < 0xe000);
        else
            cp = 0x10000 + (unsigned)below(0x100000);
        if (cp < 0x80) {
            s[n++] = (char)cp;
        } else if (cp < 0x800) {
            s[n++] = (char)(0xc0 | cp >> 6);
            s[n++] = (char)(0x80 | (cp & 63));
        } else if (cp < 0x10000) {
            s[n++] = (char)(0xe0 | cp >> 12);
            s[n++] = (char)(0x80 | (cp >> 6 & 63));
            s[n++] = (char)(0x80 | (cp & 63));
        } else {
            s[n++] = (char)(0xf0 | cp >> 18);
            s[n++] = (char)(0x80 | (cp >> 12 & 63));
            s[n++] = (char)(0x80 | (cp >> 6 & 63));
            s[n++] = (char)(0x80 | (cp & 63));
        }
    }
    return n;
}

static void random_from(char *s, size_t n, const char *alphabet)
{
    size_t k = strlen(alphabet);
    for (size_t i = 0; i < n; i++)
        s[i] = alphabet[below(k)];
}

static const char *data_files[] = {"tinystories_train.txt", "tinystories_valid.txt",
                                   "shakespeare_train.txt", "shakespeare_valid.txt"};

static void test_against_runc(void)
{
    tok_tokenizer *t = load_or_bail();
    ref_vocab v;
    if (ref_load(&v, tokenizer_path, 512) < 0) {
        printf("Bail out! reference cannot read %s\n", tokenizer_path);
        exit(1);
    }
    char s[1024];
    tally c = {0};
    /* Texts that spell special and byte pieces, lone spaces, truncated and overlong UTF-8
     * (run.c groups at most 4 bytes: a lead and 3 continuations, then the rest anew). */
    static const char *tricky[] = {"<unk>", "<s>", "\n<s>\n", "\n</s>\n", "<0x41>", "<0x0A>x", " ",
                                   "  ", "\t", "\n", "\xff", "\xe2\x80", "\x80\x80\x80\x80\x80",
                                   "\xf0\x9f\x99\x82\x80\x80", "a\x80" "b", "\xc3\xa9\xc3",
                                   "lll oooo pppp"};
    for (size_t k = 0; k < sizeof tricky / sizeof tricky[0]; k++)
        for (int flags = 0; flags < 4; flags++)
            compare_one(t, &v, tricky[k], strlen(tricky[k]), flags & 1, flags & 2, &c,
                        "fixed tricky text");
    for (int k = 0; k < 600; k++) { /* random bytes: invalid UTF-8, NUL, stray continuations */
        size_t n = below(200);
        for (size_t i = 0; i < n; i++)
            s[i] = (char)next_u64();
        compare_one(t, &v, s, n, k & 1, k & 2, &c, "random bytes");
    }
    for (int k = 0; k < 300; k++) { /* mostly continuation bytes: groups capped at 4 bytes */
        size_t n = below(64);
        for (size_t i = 0; i < n; i++)
            s[i] = (char)(below(4) ? 0x80 + below(64) : 0xc0 + below(64));
        compare_one(t, &v, s, n, 1, 0, &c, "continuation runs");
    }
    for (int k = 0; k < 600; k++) {
        size_t n = below(300);
        for (size_t i = 0; i < n; i++)
            s[i] = (char)(0x20 + below(0x5f));
        compare_one(t, &v, s, n, 1, 0, &c, "random ASCII");
    }
    for (int k = 0; k < 1500; k++) { /* ll, oo, pp are pieces: runs like "lll" tie */
        size_t n = below(40);
        random_from(s, n, k & 1 ? "lop " : "lopahe tw\n");
        compare_one(t, &v, s, n, 1, 0, &c, "small alphabet");
    }
    for (int k = 0; k < 400; k++) {
        size_t n = random_utf8(s, below(300) + 4);
        compare_one(t, &v, s, n, 1, 1, &c, "random UTF-8");
    }
    test_case("equal to the run.c port on %d fixed and random strings (%d differ)", c.cases, c.failures);

    tally d = {0};
    for (size_t f = 0; f < sizeof data_files / sizeof data_files[0]; f++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/data/%s", shared, data_files[f]);
        size_t len;
        char *text = read_all(path, &len);
        CHECK(text && len > 8192, "cannot read %s", path);
        if (!text)
            continue;
        for (int k = 0; k < 150; k++) { /* arbitrary cuts, also inside UTF-8 sequences */
            size_t n = below(1024), at = below(len - n);
            compare_one(t, &v, text + at, n, 1, 0, &d, data_files[f]);
        }
        compare_one(t, &v, text, 4096, 1, 1, &d, data_files[f]);
        free(text);
    }
    test_case("equal to the run.c port on %d slices of ../shared/data (%d differ)", d.cases,
              d.failures);

    /* Texts longer than the encoder's chunks (4 KiB, cut where no merge can cross): the
     * cuts must not change a single id, whatever the text holds around them. */
    tally e = {0};
    enum { LONG = 6000 }; /* the port is quadratic: one or two cuts each */
    char *big = malloc(LONG);
    CHECK(big != NULL, "out of memory");
    for (size_t f = 0; big && f < sizeof data_files / sizeof data_files[0]; f++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/data/%s", shared, data_files[f]);
        size_t len;
        char *text = read_all(path, &len);
        if (!text)
            continue;
        size_t n = 4200 + below(LONG - 4200), at = below(len - n);
        compare_one(t, &v, text + at, n, 1, 1, &e, data_files[f]);
        free(text);
    }
    for (int k = 0; big && k < 3; k++) {
        random_from(big, LONG, k == 0 ? "lop " : k == 1 ? "lopahe tw\n" : "ll");
        compare_one(t, &v, big, LONG - (size_t)k, 1, 0, &e, "small alphabet, long");
        for (size_t i = 0; i < LONG; i++)
            big[i] = (char)next_u64();
        compare_one(t, &v, big, LONG - (size_t)k, 1, 0, &e, "random bytes, long");
        size_t n = random_utf8(big, LONG);
        compare_one(t, &v, big, n, 1, 0, &e, "random UTF-8, long");
        memset(big, 'l', LONG); /* "ll" is a piece: no cut anywhere, then one at each space */
        for (size_t i = 4094 + (size_t)k; k && i < LONG; i += 700)
            big[i] = ' ';
        compare_one(t, &v, big, LONG, 1, 0, &e, "a run of l, long");
    }
    free(big);
    test_case("equal to the run.c port on %d texts of 4..6 KB, cut into chunks (%d differ)", e.cases,
              e.failures);
    ref_free(&v);
    tok_free(t);
}

/* ---- 2b: the bound on a stretch that cannot be cut ---- */

/* "ll" is a piece of stories260K, so a run of l has no point where the encoder may cut:
 * up to TOK_MAX_RUN bytes it is encoded (and decodes back), one byte more is refused with
 * TOK_LONG_RUN as soon as it passes the bound; a longer text with a space at least every
 * TOK_MAX_RUN bytes is cut there and encoded. */
static void test_long_run(void)
{
    tok_tokenizer *t = load_or_bail();
    size_t n = 3 * TOK_MAX_RUN;
    char *text = malloc(n + 1);
    CHECK(text != NULL, "out of memory");
    if (text) {
        memset(text, 'l', n);
        int *ids = NULL;
        size_t n_ids = 0;
        int rc = encode(t, text, TOK_MAX_RUN, 1, 0, &ids, &n_ids);
        char *back = rc == TOK_OK ? tok_decode_all(t, BOS, ids + 1, n_ids - 1) : NULL;
        CHECK(back && strlen(back) == TOK_MAX_RUN && strspn(back, "l") == TOK_MAX_RUN,
              "a run of %zu l: status %d, %zu ids that do not decode back", TOK_MAX_RUN, rc, n_ids);
        free(back);
        free(ids);
        ids = NULL;
        rc = encode(t, text, TOK_MAX_RUN + 1, 1, 0, &ids, &n_ids);
        CHECK(rc == TOK_LONG_RUN && ids == NULL, "a run of %zu l: status %d, want TOK_LONG_RUN",
              TOK_MAX_RUN + 1, rc);
        CHECK(strstr(tok_strerror(rc), "TOK_MAX_RUN") != NULL, "message: %s", tok_strerror(rc));
        for (size_t i = TOK_MAX_RUN - 7; i < n; i += TOK_MAX_RUN - 7)
            text[i] = ' ';
        rc = encode(t, text, n, 1, 0, &ids, &n_ids);
        back = rc == TOK_OK ? tok_decode_all(t, BOS, ids + 1, n_ids - 1) : NULL;
        CHECK(back && strlen(back) == n && memcmp(back, text, n) == 0,
              "%zu bytes of l with a space every %zu: status %d", n, TOK_MAX_RUN - 7, rc);
        free(back);
        free(ids);
        free(text);
    }
    test_case("a stretch without a cut is encoded up to TOK_MAX_RUN bytes, refused past it");
    tok_free(t);
}

/* ---- 3: decode ---- */

static void round_trip(const tok_tokenizer *t, const char *text, size_t n, tally *c)
{
    int *ids;
    size_t n_ids;
    char *back = NULL;
    /* Decoding after BOS drops the dummy-prefix space that encoding added. */
    if (encode(t, text, n, 1, 0, &ids, &n_ids) == 0) {
        back = tok_decode_all(t, BOS, ids + 1, n_ids - 1);
        free(ids);
    }
    c->cases++;
    int same = back && strlen(back) == n && memcmp(back, text, n) == 0;
    if (!same && c->failures++ < 5)
        CHECK(same, "round trip of %zu bytes \"%.40s\" gave \"%.40s\"", n, text,
              back ? back : "(null)");
    free(back);
}

static void test_decode(void)
{
    tok_tokenizer *t = load_or_bail();
    size_t len;
    const char *p = tok_decode(t, 0, 410, &len);
    CHECK(p && len == 1 && p[0] == ' ', "\" \"");
    p = tok_decode(t, BOS, 410, &len);
    CHECK(p && len == 0, "\" \" after BOS: len %zu", len);
    p = tok_decode(t, BOS, 259, &len);
    CHECK(p && len == 1 && p[0] == 't', "\" t\" after BOS");
    p = tok_decode(t, 0, 'A' + 3, &len);
    CHECK(p && len == 1 && p[0] == 'A', "<0x41>");
    const char *q = tok_decode(t, 5, 'A' + 3, &len);
    CHECK(q == p, "byte pieces live in the tokenizer");
    p = tok_decode(t, 0, 3, &len);
    CHECK(p && len == 1 && p[0] == 0, "<0x00> is one NUL byte");
    p = tok_decode(t, 0, 258, &len);
    CHECK(p && len == 1 && (unsigned char)p[0] == 0xff, "<0xFF>");
    p = tok_decode(t, 0, BOS, &len);
    CHECK(p && len == 5 && memcmp(p, "\n<s>\n", 5) == 0, "BOS piece");
    CHECK(!tok_decode(t, 0, 512, &len) && !tok_decode(t, 0, -1, &len), "out of range");
    int bad[] = {300, 512};
    CHECK(!tok_decode_all(t, 0, bad, 2), "decode_all with an id out of range");
    char *s = tok_decode_all(t, 0, bad, 0);
    CHECK(s && s[0] == 0, "decode_all of nothing");
    free(s);
    test_case("decode: BOS space, byte tokens, out of range");

    tally c = {0};
    char buf[1024];
    for (int k = 0; k < 500; k++)
        round_trip(t, buf, random_utf8(buf, below(400) + 4), &c);
    for (int k = 0; k < 500; k++) { /* also leading spaces: one space is dropped, the added one */
        size_t n = below(100);
        random_from(buf, n, " lopahe\t\n.");
        round_trip(t, buf, n, &c);
    }
    for (size_t f = 0; f < sizeof data_files / sizeof data_files[0]; f++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/data/%s", shared, data_files[f]);
        size_t n;
        char *text = read_all(path, &n);
        if (text) {
            round_trip(t, text, n, &c); /* the whole file */
            free(text);
        }
    }
    test_case("decode(encode(text)) == text on %d texts (%d differ)", c.cases, c.failures);
    tok_free(t);
}

/* ---- 4: speed on a whole corpus ---- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void test_speed(void)
{
    tok_tokenizer *t = load_or_bail();
    char path[4096];
    snprintf(path, sizeof path, "%s/data/tinystories_train.txt", shared);
    size_t n;
    char *text = read_all(path, &n);
    CHECK(text, "cannot read %s", path);
    if (text) {
        int *ids;
        size_t n_ids;
        double t0 = now();
        int rc = encode(t, text, n, 1, 0, &ids, &n_ids);
        double dt = now() - t0;
        CHECK(rc == 0 && n_ids > n / 8 && n_ids < n, "%zu bytes gave %zu ids", n, n_ids);
        if (rc == 0) {
            printf("# tinystories_train.txt: %zu bytes -> %zu tokens in %.3f s, %.2f MB/s\n", n,
                   n_ids, dt, n / dt / 1e6);
            free(ids);
        }
        free(text);
    }
    test_case("encode all of tinystories_train.txt");
    tok_free(t);
}

/* ---- 5: malformed tokenizer files ---- */

static void expect_error(const char *path, int vocab, const char *what, const char *needle)
{
    tok_tokenizer *t = (tok_tokenizer *)1;
    char err[512] = "";
    int rc = tok_load(&t, path, vocab, err, sizeof err);
    CHECK(rc == -1 && t == NULL, "%s: loaded", what);
    CHECK(strstr(err, path) != NULL, "%s: message does not name the file: %s", what, err);
    CHECK(strstr(err, needle) != NULL, "%s: message lacks \"%s\": %s", what, needle, err);
    if (rc == 0)
        tok_free(t);
}

static void test_bad_files(void)
{
    size_t n;
    char *good = read_all(tokenizer_path, &n);
    if (!good) {
        printf("Bail out! cannot read %s\n", tokenizer_path);
        exit(1);
    }
    char tmp[] = "/tmp/qlorad_tokenizer_XXXXXX";
    int fd = mkstemp(tmp);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) {
        free(good);
        return;
    }
    close(fd);

    char missing[4200];
    snprintf(missing, sizeof missing, "%s/models/no_such/tokenizer.bin", shared);
    expect_error(missing, 512, "missing", "cannot open");
    expect_error(tokenizer_path, 100, "vocab too small for the byte tokens", "vocab_size");
    expect_error(tokenizer_path, 511, "vocab one short", "trailing");
    expect_error(tokenizer_path, 513, "vocab one long", "truncated");
    test_case("missing file, vocab_size that does not fit the file");

    const size_t cuts[] = {0, 3, 4, 10, 12, n / 2, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK(write_file(tmp, good, cuts[i]) == 0, "write %s", tmp);
        expect_error(tmp, 512, "truncated", "truncated");
    }
    char *longer = malloc(n + 1);
    CHECK(longer, "malloc");
    if (longer) {
        memcpy(longer, good, n);
        longer[n] = 'x';
        CHECK(write_file(tmp, longer, n + 1) == 0, "write %s", tmp);
        expect_error(tmp, 512, "one trailing byte", "trailing");
        free(longer);
    }
    test_case("truncated files and trailing bytes");

    /* Token 0 is "<unk>": its len field sits after the 4-byte header and its score. */
    int32_t unk_len;
    memcpy(&unk_len, good + 8, 4);
    const int32_t bad_lens[] = {0, -1, 8, INT32_MAX};
    for (size_t i = 0; i < sizeof bad_lens / sizeof bad_lens[0]; i++) {
        memcpy(good + 8, &bad_lens[i], 4);
        CHECK(write_file(tmp, good, n) == 0, "write %s", tmp);
        expect_error(tmp, 512, "len out of range", "token 0: len");
    }
    memcpy(good + 8, &unk_len, 4);
    int32_t header[] = {0, -7};
    for (size_t i = 0; i < 2; i++) {
        memcpy(good, &header[i], 4);
        CHECK(write_file(tmp, good, n) == 0, "write %s", tmp);
        expect_error(tmp, 512, "max_token_length out of range", "max_token_length");
    }
    test_case("len and max_token_length fields out of range");

    unlink(tmp);
    free(good);
}

/* ---- 6: tokenizer.json files of ../shared/tokenizers: BOS, EOS, stops, decoding ---- */

static tok_tokenizer *load_json(const char *path, int vocab)
{
    char err[512];
    tok_tokenizer *t;
    if (tok_load(&t, path, vocab, err, sizeof err) < 0) {
        CHECK(0, "%s", err);
        return NULL;
    }
    return t;
}

static int same_ids(const int *a, size_t n, const int *want, size_t n_want)
{
    return n == n_want && (n == 0 || memcmp(a, want, n * sizeof *a) == 0);
}

static void test_json_files(void)
{
    char dir[] = "/tmp/qlorad_tokdir_XXXXXX", path[4200], src[4200];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/tokenizers/qwen3/%s", shared, names[i]);
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        CHECK(symlink(src, path) == 0, "symlink %s", path);
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    size_t n;
    const int *stop;
    tok_tokenizer *t = load_json(path, 151669);
    if (t) {
        stop = tok_stop_ids(t, &n);
        static const int eos[] = {151645};
        CHECK(tok_bos_id(t) == -1 && tok_eos_id(t) == 151645, "qwen3: BOS %d, EOS %d", tok_bos_id(t),
              tok_eos_id(t));
        CHECK(same_ids(stop, n, eos, 1), "qwen3 alone: %zu stop ids", n);
        CHECK(tok_is_special(t, 151644) && !tok_is_special(t, 151667), "<|im_start|> special, <think> not");
        tok_free(t);
    }
    char cfg[4200], gen[4200];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(gen, sizeof gen, "%s/generation_config.json", dir);
    static const char c1[] = "{\"eos_token_id\": 151643}";
    CHECK(write_file(cfg, c1, sizeof c1 - 1) == 0, "write config.json");
    if ((t = load_json(path, 151669))) {
        static const int want[] = {151643};
        stop = tok_stop_ids(t, &n);
        CHECK(same_ids(stop, n, want, 1), "config.json's eos_token_id: %zu stop ids, [0] %d", n, n ? stop[0] : -1);
        tok_free(t);
    }
    static const char g[] = "{\"eos_token_id\": [151645, 151643]}";
    CHECK(write_file(gen, g, sizeof g - 1) == 0, "write generation_config.json");
    if ((t = load_json(path, 151669))) {
        static const int want[] = {151645, 151643};
        stop = tok_stop_ids(t, &n);
        CHECK(same_ids(stop, n, want, 2), "generation_config.json wins: %zu stop ids", n);
        tok_free(t);
    }
    unlink(cfg), unlink(gen);
    test_case("qwen3: no BOS, EOS <|im_end|>; stops from generation_config.json, else config.json, else EOS");

    /* Byte-level decoding: an emoji is bytes spread over tokens; each token's bytes are
     * what it stands for, and they concatenate to the text. */
    if ((t = load_json(path, 151669))) {
        static const char text[] = "x \xf0\x9f\xa6\x99\xf0\x9f\xa6\x99 \xe6\x97\xa5";
        int *ids;
        size_t n_ids;
        CHECK(tok_encode(t, text, strlen(text), TOK_ADD_SPECIAL, &ids, &n_ids) == TOK_OK, "encode");
        char *back = tok_decode_all(t, -1, ids, n_ids);
        CHECK(back && strcmp(back, text) == 0, "round trip: %s", back ? back : "(null)");
        int cut = 0;
        for (size_t i = 0; i < n_ids; i++) {
            size_t len;
            const char *p = tok_decode(t, i ? ids[i - 1] : -1, ids[i], &len);
            cut |= p && len > 0 && (p[len - 1] & 0xC0) == 0xC0; /* ends on a lead byte */
            cut |= p && len > 0 && (p[0] & 0xC0) == 0x80;        /* starts inside a character */
        }
        CHECK(cut, "no token of the emoji run cuts a character: the streaming case is not tested");
        free(back);
        free(ids);
        /* special tokens: ids by default, text with TOK_SPLIT_SPECIAL */
        CHECK(tok_encode(t, "<|im_start|>", 12, 0, &ids, &n_ids) == TOK_OK && n_ids == 1 && ids[0] == 151644,
              "<|im_start|>: %zu ids", n_ids);
        free(ids);
        CHECK(tok_encode(t, "<|im_start|>", 12, TOK_SPLIT_SPECIAL, &ids, &n_ids) == TOK_OK && n_ids > 1,
              "<|im_start|> as text: %zu ids", n_ids);
        back = tok_decode_all(t, -1, ids, n_ids);
        CHECK(back && strcmp(back, "<|im_start|>") == 0, "decodes back");
        free(back);
        free(ids);
        CHECK(tok_max_token_bytes(t) >= 3 * 128, "max token bytes %zu: NFC and 128-byte pieces",
              tok_max_token_bytes(t));
        tok_free(t);
    }
    test_case("qwen3: byte-level pieces cut characters and concatenate back; special tokens as text");
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);

    snprintf(path, sizeof path, "%s/tokenizers/mistral-32k/tokenizer.json", shared);
    if ((t = load_json(path, 32000))) {
        static const int eos[] = {2};
        stop = tok_stop_ids(t, &n);
        CHECK(tok_bos_id(t) == 1 && tok_eos_id(t) == 2 && same_ids(stop, n, eos, 1), "mistral: BOS %d EOS %d",
              tok_bos_id(t), tok_eos_id(t));
        size_t len;
        const char *p = tok_decode(t, 1, 22557, &len); /* "▁Hello" after BOS: "Hello" */
        CHECK(p && len == 5 && memcmp(p, "Hello", 5) == 0, "▁Hello after BOS");
        p = tok_decode(t, 22557, 22557, &len);
        CHECK(p && len == 6 && memcmp(p, " Hello", 6) == 0, "▁Hello after a word");
        tok_free(t);
    }
    test_case("mistral-32k: BOS <s>, EOS </s>, the stop; the dummy space dropped after BOS only");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("Bail out! usage: %s SHARED_DIR (holding models/ and data/)\n", argv[0]);
        return 1;
    }
    shared = argv[1];
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/models/stories260K/tokenizer.bin",
             shared);
    test_known();
    test_against_runc();
    test_long_run();
    test_decode();
    test_speed();
    test_bad_files();
    test_json_files();
    return tap_done();
}
