/* tokenizer.c: see tokenizer.h.
 *
 * run.c merges by rescanning every adjacent pair after each merge. Here the symbols form a
 * doubly linked list and the candidate pairs sit in a heap ordered by (score desc, left
 * symbol's original index asc), invalidated lazily when popped. A left symbol keeps its
 * index when it absorbs its right neighbour, so indices stay in text order and the heap's
 * top is always run.c's choice: the best score, and the leftmost pair among equal scores. */
#include "tokenizer.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define N_SPECIAL 3                  /* <unk>, BOS, EOS; byte b is token b + 3 */
#define MAX_TOKEN_LENGTH (1 << 16)   /* far above any real vocabulary; keeps sums in range */
#define NONE UINT32_MAX              /* no neighbour in the symbol list */
#define NEVER UINT32_MAX             /* the rank of a piece that merges never make */

struct tok_tokenizer {
    int vocab_size;
    int max_len;        /* longest piece: a longer concatenation cannot be in the vocab */
    int space_id;       /* " ", the dummy prefix; -1 if the vocab lacks it */
    float *score;       /* as in the file; the merge loop uses rank */
    uint32_t *rank;     /* 0 for the best score; equal scores share a rank */
    uint32_t *offset;   /* piece i is bytes[offset[i] .. offset[i] + len[i]) */
    uint32_t *len;
    uint32_t *hash;     /* FNV-1a of each piece: a pair's hash continues from its left piece */
    char *bytes;
    int32_t *table;     /* open addressing on hash, ids, -1 empty */
    uint32_t mask;
    char byte_str[256]; /* byte_str[b] == b: what byte tokens decode to */
};

/* ---- vocabulary lookup ---- */

static uint32_t fnv1a(uint32_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

#define FNV_BASIS 2166136261u

/* The id of the piece a||b (h its hash), or -1. Lookups take the two halves apart so that
 * a merge needs no concatenation buffer. */
static int lookup(const tok_tokenizer *t, uint32_t h, const char *a, size_t la, const char *b,
                  size_t lb)
{
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->table[i];
        if (id < 0)
            return -1;
        const char *p = t->bytes + t->offset[id];
        if (t->hash[id] == h && t->len[id] == la + lb && memcmp(p, a, la) == 0 &&
            memcmp(p + la, b, lb) == 0)
            return id;
    }
}

/* ---- load ---- */

static int read_file(const char *path, unsigned char **data, size_t *size, char *err,
                     size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        fclose(f);
        return -1;
    }
    *size = (size_t)st.st_size;
    *data = malloc(*size ? *size : 1);
    if (!*data) {
        snprintf(err, errlen, "%s: out of memory for %zu bytes", path, *size);
        fclose(f);
        return -1;
    }
    if (fread(*data, 1, *size, f) != *size) {
        snprintf(err, errlen, "%s: read error", path);
        free(*data);
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

/* Checks the layout and sizes the arrays: fills len and score, returns the piece bytes. */
static int parse(tok_tokenizer *t, const unsigned char *d, size_t size, const char *path,
                 const unsigned char **first, size_t *total, char *err, size_t errlen)
{
    int32_t max_token_length;
    if (size < 4) {
        snprintf(err, errlen, "%s: truncated: %zu bytes, no max_token_length", path, size);
        return -1;
    }
    memcpy(&max_token_length, d, 4);
    if (max_token_length <= 0 || max_token_length > MAX_TOKEN_LENGTH) {
        snprintf(err, errlen, "%s: max_token_length %d outside 1..%d", path,
                 (int)max_token_length, MAX_TOKEN_LENGTH);
        return -1;
    }
    size_t pos = 4;
    *first = d + pos;
    *total = 0;
    t->max_len = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        int32_t len;
        if (size - pos < 8) {
            snprintf(err, errlen, "%s: truncated at token %d of %d (offset %zu of %zu)", path, i,
                     t->vocab_size, pos, size);
            return -1;
        }
        memcpy(&t->score[i], d + pos, 4);
        memcpy(&len, d + pos + 4, 4);
        if (len <= 0 || len > max_token_length) {
            snprintf(err, errlen, "%s: token %d: len %d outside 1..max_token_length %d", path,
                     i, (int)len, (int)max_token_length);
            return -1;
        }
        if (size - pos - 8 < (size_t)len) {
            snprintf(err, errlen, "%s: truncated in token %d of %d (offset %zu of %zu)", path, i,
                     t->vocab_size, pos, size);
            return -1;
        }
        t->len[i] = (uint32_t)len;
        t->max_len = len > t->max_len ? len : t->max_len;
        *total += (size_t)len;
        pos += 8 + (size_t)len;
    }
    if (*total > UINT32_MAX) { /* offsets are 32-bit */
        snprintf(err, errlen, "%s: %zu bytes of pieces, more than 4 GiB", path, *total);
        return -1;
    }
    if (pos != size) {
        snprintf(err, errlen, "%s: %zu trailing bytes after the %d tokens (vocab_size from the "
                 "model)", path, size - pos, t->vocab_size);
        return -1;
    }
    return 0;
}

typedef struct {
    float score;
    int id;
} scored;

static int by_score_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Ranks the scores so that the merge loop compares integers. run.c merges a pair only if
 * its score beats its starting best of -1e10, which also rules out NaN: such pieces get
 * NEVER. Equal scores (0 and -0 included, as run.c's > sees them) share a rank. */
static int rank_scores(tok_tokenizer *t)
{
    scored *s = malloc((size_t)t->vocab_size * sizeof *s);
    if (!s)
        return -1;
    int n = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        t->rank[i] = NEVER;
        if (t->score[i] > -1e10f)
            s[n++] = (scored){t->score[i], i};
    }
    qsort(s, (size_t)n, sizeof *s, by_score_desc);
    uint32_t r = 0;
    for (int k = 0; k < n; k++) {
        if (k > 0 && s[k].score != s[k - 1].score)
            r++;
        t->rank[s[k].id] = r;
    }
    free(s);
    return 0;
}

/* Gathers the pieces (parse checked every length; each follows its 8-byte score and len)
 * and indexes them in a table of cap slots. On a repeated piece the lowest id wins, as a
 * first-match scan would; run.c's bsearch would return any of them. */
static void index_pieces(tok_tokenizer *t, const unsigned char *first, size_t cap)
{
    t->mask = (uint32_t)cap - 1;
    memset(t->table, 0xff, cap * sizeof *t->table);
    const unsigned char *p = first;
    uint32_t off = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        p += 8;
        memcpy(t->bytes + off, p, t->len[i]);
        t->offset[i] = off;
        t->hash[i] = fnv1a(FNV_BASIS, t->bytes + off, t->len[i]);
        if (lookup(t, t->hash[i], t->bytes + off, t->len[i], "", 0) < 0) {
            uint32_t j = t->hash[i] & t->mask;
            while (t->table[j] >= 0)
                j = (j + 1) & t->mask;
            t->table[j] = i;
        }
        p += t->len[i];
        off += t->len[i];
    }
}

int tok_load(tok_tokenizer **out, const char *path, int vocab_size, char *err, size_t errlen)
{
    *out = NULL;
    if (vocab_size < N_SPECIAL + 256 || vocab_size > (1 << 24)) {
        snprintf(err, errlen, "%s: vocab_size %d from the model outside %d..%d (3 specials and "
                 "256 byte tokens first)", path, vocab_size, N_SPECIAL + 256, 1 << 24);
        return -1;
    }
    unsigned char *data;
    size_t size;
    if (read_file(path, &data, &size, err, errlen) < 0)
        return -1;
    tok_tokenizer *t = calloc(1, sizeof *t);
    size_t V = (size_t)vocab_size, cap = 1;
    while (cap < 2 * V) /* load factor <= 1/2: probes stay short */
        cap *= 2;
    if (t) {
        t->vocab_size = vocab_size;
        t->score = malloc(V * sizeof *t->score);
        t->rank = malloc(V * sizeof *t->rank);
        t->offset = malloc(V * sizeof *t->offset);
        t->len = malloc(V * sizeof *t->len);
        t->hash = malloc(V * sizeof *t->hash);
        t->table = malloc(cap * sizeof *t->table);
    }
    if (!t || !t->score || !t->rank || !t->offset || !t->len || !t->hash || !t->table) {
        snprintf(err, errlen, "%s: out of memory for %d tokens", path, vocab_size);
        free(data);
        tok_free(t);
        return -1;
    }
    const unsigned char *first;
    size_t total;
    if (parse(t, data, size, path, &first, &total, err, errlen) < 0) {
        free(data);
        tok_free(t);
        return -1;
    }
    t->bytes = malloc(total);
    if (!t->bytes || rank_scores(t) < 0) {
        snprintf(err, errlen, "%s: out of memory (%zu bytes of pieces)", path, total);
        free(data);
        tok_free(t);
        return -1;
    }
    index_pieces(t, first, cap);
    free(data);
    t->space_id = lookup(t, fnv1a(FNV_BASIS, " ", 1), " ", 1, "", 0);
    for (int b = 0; b < 256; b++)
        t->byte_str[b] = (char)b;
    *out = t;
    return 0;
}

void tok_free(tok_tokenizer *t)
{
    if (!t)
        return;
    free(t->score);
    free(t->rank);
    free(t->offset);
    free(t->len);
    free(t->hash);
    free(t->bytes);
    free(t->table);
    free(t);
}

int tok_vocab_size(const tok_tokenizer *t)
{
    return t->vocab_size;
}

/* ---- encode ---- */

/* A symbol of the list: id (-1 once merged into its left neighbour), prev, next, and pair,
 * the piece that it and its right neighbour concatenate to (-1: none, or never merged).
 * One struct, not four arrays: merges visit symbols all over the text, one cache miss each. */
typedef struct {
    int32_t id, pair;
    uint32_t prev, next;
} symbol;

/* The candidates: a min-heap of keys rank << 32 | left, so that the smallest key is
 * run.c's choice (the better score, then the leftmost) in one integer comparison. A key
 * names a pair only by its left symbol, whose pair field says what that pair is now: a key
 * whose rank the pair no longer has is stale and skipped when popped. One that still has
 * it is exactly the key a fresh push would make, so acting on it is right even if the pair
 * changed in between. (4- and 8-ary heaps measured no faster: the time goes to visiting
 * symbols all over the text, in the global order of merges that run.c imposes.) */
typedef struct {
    uint64_t *k;
    size_t n, cap;
} heap;

static int heap_push(heap *h, uint64_t key)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 256;
        uint64_t *nk = realloc(h->k, cap * sizeof *nk);
        if (!nk)
            return -1;
        h->k = nk;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && key < h->k[(i - 1) / 2]) {
        h->k[i] = h->k[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->k[i] = key;
    return 0;
}

static uint64_t heap_pop(heap *h)
{
    uint64_t top = h->k[0], last = h->k[--h->n];
    size_t i = 0;
    for (;;) {
        size_t best = 2 * i + 1;
        if (best >= h->n)
            break;
        if (best + 1 < h->n && h->k[best + 1] < h->k[best])
            best++;
        if (h->k[best] >= last)
            break;
        h->k[i] = h->k[best];
        i = best;
    }
    if (h->n)
        h->k[i] = last;
    return top;
}

/* Sets pair[left] for the symbol and its current right neighbour, and queues the pair if
 * merges can make it: its piece must exist and its score must beat run.c's starting best
 * of -1e10 (rank NEVER). */
static int update_pair(const tok_tokenizer *t, symbol *s, uint32_t left, heap *h)
{
    uint32_t right = s[left].next;
    s[left].pair = -1;
    if (right == NONE)
        return 0;
    int32_t a = s[left].id, b = s[right].id;
    size_t la = t->len[a], lb = t->len[b];
    if (la + lb > (size_t)t->max_len)
        return 0;
    const char *pa = t->bytes + t->offset[a], *pb = t->bytes + t->offset[b];
    int merged = lookup(t, fnv1a(t->hash[a], pb, lb), pa, la, pb, lb);
    if (merged < 0 || t->rank[merged] == NEVER)
        return 0;
    s[left].pair = merged;
    return heap_push(h, (uint64_t)t->rank[merged] << 32 | left);
}

static int is_continuation(char c)
{
    return ((unsigned char)c & 0xC0) == 0x80;
}

/* Splits text into initial symbols as run.c does: a group starts at any byte and takes the
 * continuation bytes after it, up to 4 bytes in all; a group that is not a piece becomes
 * its byte tokens. Returns the number of symbols whose id it set (dummy prefix first). */
static size_t initial_symbols(const tok_tokenizer *t, const char *text, size_t n, symbol *s)
{
    size_t m = 0;
    /* Without a " " piece run.c would emit id -1; its byte token is the sane stand-in. */
    s[m++].id = t->space_id >= 0 ? t->space_id : ' ' + N_SPECIAL;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && j - i < 4 && is_continuation(text[j]))
            j++;
        int found = lookup(t, fnv1a(FNV_BASIS, text + i, j - i), text + i, j - i, "", 0);
        if (found >= 0)
            s[m++].id = found;
        else
            for (size_t k = i; k < j; k++)
                s[m++].id = (unsigned char)text[k] + N_SPECIAL;
        i = j;
    }
    return m;
}

/* Encodes the non-empty text into out (room for n + 1 ids), the count in *count.
 * Returns 0 or -1 (out of memory). */
static int encode_text(const tok_tokenizer *t, const char *text, size_t n, int *out,
                       size_t *count)
{
    symbol *s = malloc((n + 1) * sizeof *s);
    heap h = {0};
    int status = -1;
    if (!s)
        goto done;
    size_t m = initial_symbols(t, text, n, s);
    for (size_t i = 0; i < m; i++) {
        s[i].prev = i ? (uint32_t)i - 1 : NONE;
        s[i].next = i + 1 < m ? (uint32_t)i + 1 : NONE;
    }
    for (size_t i = 0; i < m; i++)
        if (update_pair(t, s, (uint32_t)i, &h) < 0)
            goto done;
    while (h.n) {
        uint64_t key = heap_pop(&h);
        uint32_t left = (uint32_t)key, right = s[left].next;
        int32_t merged = s[left].pair;
        if (merged < 0 || t->rank[merged] != key >> 32)
            continue; /* stale: the pair at left has changed since */
        s[left].id = merged;
        s[right].id = -1;
        s[right].pair = -1;
        s[left].next = s[right].next;
        if (s[right].next != NONE)
            s[s[right].next].prev = left;
        /* The merged symbol makes new pairs on both sides. */
        if ((s[left].prev != NONE && update_pair(t, s, s[left].prev, &h) < 0) ||
            update_pair(t, s, left, &h) < 0)
            goto done;
    }
    *count = 0;
    for (uint32_t i = 0; i != NONE; i = s[i].next) /* symbol 0 is never a right symbol */
        out[(*count)++] = s[i].id;
    status = 0;
done:
    free(s);
    free(h.k);
    return status;
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t n, int bos, int eos, int **ids,
               size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    /* Symbol indices are 32-bit (the heap holds several entries per byte of text). */
    if (n >= (size_t)UINT32_MAX - 8)
        return -1;
    int *out = malloc((n + 3) * sizeof *out); /* BOS, dummy prefix, one per byte, EOS */
    if (!out)
        return -1;
    size_t k = 0;
    if (bos)
        out[k++] = TOK_BOS;
    if (n > 0) {
        size_t m;
        if (encode_text(t, text, n, out + k, &m) < 0) {
            free(out);
            return -1;
        }
        k += m;
    }
    if (eos)
        out[k++] = TOK_EOS;
    *ids = out;
    *n_ids = k;
    return 0;
}

/* ---- decode ---- */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

const char *tok_decode(const tok_tokenizer *t, int prev, int id, size_t *len)
{
    if (id < 0 || id >= t->vocab_size)
        return NULL;
    const char *p = t->bytes + t->offset[id];
    size_t n = t->len[id];
    if (prev == TOK_BOS && p[0] == ' ') /* sentencepiece drops the dummy prefix */
        p++, n--;
    if (n == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>') {
        int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
        if (hi >= 0 && lo >= 0) {
            *len = 1;
            return &t->byte_str[hi * 16 + lo];
        }
    }
    *len = n;
    return p;
}

char *tok_decode_all(const tok_tokenizer *t, int prev, const int *ids, size_t n)
{
    size_t total = 0, len;
    for (size_t i = 0; i < n; i++) {
        if (!tok_decode(t, i ? ids[i - 1] : prev, ids[i], &len))
            return NULL;
        total += len;
    }
    char *s = malloc(total + 1);
    if (!s)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = tok_decode(t, i ? ids[i - 1] : prev, ids[i], &len);
        memcpy(s + k, p, len);
        k += len;
    }
    s[k] = '\0';
    return s;
}
