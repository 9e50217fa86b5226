/* tokenizer.c: see tokenizer.h.
 *
 * Both formats load into one table of pieces, spaces spelled " " (tokenizer.json's "▁"
 * becomes " " on loading), and share the encoder and the decoder. They differ only in how
 * a pair of adjacent symbols ranks (pair_rank): tokenizer.bin merges any pair whose
 * concatenation is a piece, ranked by that piece's score; tokenizer.json merges the pairs
 * its merges list, ranked by their position in it.
 *
 * run.c merges by rescanning every adjacent pair after each merge. Here the symbols form a
 * doubly linked list and the candidate pairs sit in a heap ordered by (rank asc, left
 * symbol's original index asc), invalidated lazily when popped. A left symbol keeps its
 * index when it absorbs its right neighbour, so indices stay in text order and the heap's
 * top is always the reference's choice: the best rank, and the leftmost pair among equal
 * ranks (run.c's loop for tokenizer.bin; Hugging Face's BPE, whose heap is ordered the
 * same way, for tokenizer.json).
 *
 * A merge makes a piece of the vocabulary whose bytes are its two halves' pieces end to
 * end, so it can only join two symbols whose facing bytes (the last byte of the left
 * piece, the first of the right) occur side by side in some piece. Between two initial
 * symbols whose facing bytes never do, no merge ever crosses: the merges on either side
 * are the same as if the other side were not there, in the same relative order. The
 * encoder cuts the text at such points (in natural text, before a space) into chunks of a
 * few KiB and encodes one chunk at a time, so that its symbols and heap cost per chunk,
 * not per text; a text without such a point (one letter repeated) is one chunk.
 *
 * Around that loop, for tokenizer.json, the steps Hugging Face's tokenizers takes: added
 * tokens found first (added_tokens.c); each stretch between them normalized (NFC, or
 * sentencepiece's dummy prefix and "▁" spaces, which initial_symbols makes) and cut into
 * pre-tokens (pretokenize.c); each pre-token through the merge loop on its own; then the
 * post-processor's ids around it all. A byte-level pre-token starts as one symbol per
 * byte (the alphabet's characters are one per byte); a sentencepiece one as one per
 * character, or its byte tokens. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "gguf.h"
#include "mapfile.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#define N_SPECIAL 3      /* <unk>, BOS, EOS; in tokenizer.bin byte b is b + 3 */
#define NONE UINT32_MAX  /* no neighbour in the symbol list */
#define NEVER UINT32_MAX /* the rank of a piece that merges never make */

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

int tok_piece_id(const tok_tokenizer *t, const char *a, size_t la, const char *b, size_t lb)
{
    return lookup(t, fnv1a(fnv1a(FNV_BASIS, a, la), b, lb), a, la, b, lb);
}

static int lookup_str(const tok_tokenizer *t, const char *s, size_t n)
{
    return tok_piece_id(t, s, n, "", 0);
}

int tok_index_piece(tok_tokenizer *t, int id)
{
    const char *p = t->bytes + t->offset[id];
    t->hash[id] = fnv1a(FNV_BASIS, p, t->len[id]);
    int had = lookup(t, t->hash[id], p, t->len[id], "", 0);
    if (had >= 0)
        return had;
    uint32_t j = t->hash[id] & t->mask;
    while (t->table[j] >= 0)
        j = (j + 1) & t->mask;
    t->table[j] = id;
    if ((int)t->len[id] > t->max_len)
        t->max_len = (int)t->len[id];
    return -1;
}

static uint32_t pair_hash(int32_t a, int32_t b)
{
    return ((uint32_t)a * 0x9E3779B1u) ^ ((uint32_t)b * 0x85EBCA77u);
}

merge_rule *tok_merge_slot(const tok_tokenizer *t, int32_t a, int32_t b)
{
    for (uint32_t i = pair_hash(a, b) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        merge_rule *r = &t->merges[i];
        if (r->a < 0 || (r->a == a && r->b == b))
            return r;
    }
}

/* How the pair of pieces a, b ranks: returns the piece it merges to, its rank in *rank
 * (lower merges first), or -1 if the pair never merges. */
static int32_t pair_rank(const tok_tokenizer *t, int32_t a, int32_t b, uint32_t *rank)
{
    if (t->merges) { /* tokenizer.json: its merges, by position */
        const merge_rule *r = tok_merge_slot(t, a, b);
        *rank = r->rank;
        return r->a < 0 ? -1 : r->merged;
    }
    /* tokenizer.bin: any concatenation that is a piece, by the piece's score; it must beat
     * run.c's starting best of -1e10 (rank NEVER). */
    size_t la = t->len[a], lb = t->len[b];
    if (la + lb > (size_t)t->max_len)
        return -1;
    const char *pa = t->bytes + t->offset[a], *pb = t->bytes + t->offset[b];
    int merged = lookup(t, fnv1a(t->hash[a], pb, lb), pa, la, pb, lb);
    if (merged < 0 || t->rank[merged] == NEVER)
        return -1;
    *rank = t->rank[merged];
    return merged;
}

/* ---- load: what both formats share ---- */

int tok_fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
{
    int n = snprintf(err, errlen, "%s: ", path);
    if (n >= 0 && (size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A tokenizer of vocab_size pieces, none yet, with room to index them all; NULL if out of
 * memory. Byte b falls back to token b + 3 unless the format says otherwise. */
static tok_tokenizer *tok_new(int vocab_size)
{
    tok_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    size_t V = (size_t)vocab_size, cap = 1;
    while (cap < 2 * V) /* load factor <= 1/2: probes stay short */
        cap *= 2;
    t->vocab_size = vocab_size;
    t->space_id = -1;
    t->mask = (uint32_t)cap - 1;
    t->offset = calloc(V, sizeof *t->offset);
    t->len = calloc(V, sizeof *t->len);
    t->hash = calloc(V, sizeof *t->hash);
    t->table = malloc(cap * sizeof *t->table);
    t->special = calloc(V, 1);
    t->bos_id = t->eos_id = -1;
    if (!t->offset || !t->len || !t->hash || !t->table || !t->special) {
        tok_free(t);
        return NULL;
    }
    memset(t->table, 0xff, cap * sizeof *t->table);
    for (int b = 0; b < 256; b++) {
        t->byte_str[b] = (char)b;
        t->byte_id[b] = b + N_SPECIAL;
    }
    return t;
}

/* ---- load: tokenizer.bin ----
 * int32 max_token_length, then for each of the model's vocab_size tokens: float score,
 * int32 len, len bytes. */

/* Checks the layout and sizes the arrays: fills len and score, returns the piece bytes. */
static int parse(tok_tokenizer *t, const unsigned char *d, size_t size, const char *path,
                 const unsigned char **first, size_t *total, char *err, size_t errlen)
{
    int32_t max_token_length;
    if (size < 4)
        return tok_fail(err, errlen, path, "truncated: %zu bytes, no max_token_length", size);
    memcpy(&max_token_length, d, 4);
    if (max_token_length <= 0 || max_token_length > MAX_TOKEN_LENGTH)
        return tok_fail(err, errlen, path, "max_token_length %d outside 1..%d",
                        (int)max_token_length, MAX_TOKEN_LENGTH);
    size_t pos = 4;
    *first = d + pos;
    *total = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        int32_t len;
        if (size - pos < 8)
            return tok_fail(err, errlen, path, "truncated at token %d of %d (offset %zu of %zu)", i,
                            t->vocab_size, pos, size);
        memcpy(&t->score[i], d + pos, 4);
        memcpy(&len, d + pos + 4, 4);
        if (len <= 0 || len > max_token_length)
            return tok_fail(err, errlen, path, "token %d: len %d outside 1..max_token_length %d", i,
                            (int)len, (int)max_token_length);
        if (size - pos - 8 < (size_t)len)
            return tok_fail(err, errlen, path, "truncated in token %d of %d (offset %zu of %zu)", i,
                            t->vocab_size, pos, size);
        t->len[i] = (uint32_t)len;
        *total += (size_t)len;
        pos += 8 + (size_t)len;
    }
    if (*total > UINT32_MAX) /* offsets are 32-bit */
        return tok_fail(err, errlen, path, "%zu bytes of pieces, more than 4 GiB", *total);
    if (pos != size)
        return tok_fail(err, errlen, path,
                        "%zu trailing bytes after the %d tokens (vocab_size from the model)",
                        size - pos, t->vocab_size);
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
int tok_rank_scores(tok_tokenizer *t)
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

static int load_bin(tok_tokenizer *t, const unsigned char *data, size_t size, const char *path,
                    char *err, size_t errlen)
{
    size_t V = (size_t)t->vocab_size, total = 0;
    const unsigned char *p = data;
    t->score = malloc(V * sizeof *t->score);
    t->rank = malloc(V * sizeof *t->rank);
    if (!t->score || !t->rank)
        return tok_fail(err, errlen, path, "out of memory for %d tokens", t->vocab_size);
    if (parse(t, data, size, path, &p, &total, err, errlen) < 0)
        return -1;
    t->bytes = malloc(total);
    if (!t->bytes || tok_rank_scores(t) < 0)
        return tok_fail(err, errlen, path, "out of memory (%zu bytes of pieces)", total);
    /* parse checked every length; each piece follows its 8-byte score and len. On a
     * repeated piece the lowest id wins, as a first-match scan would; run.c's bsearch
     * would return any of them. */
    uint32_t off = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        p += 8;
        memcpy(t->bytes + off, p, t->len[i]);
        t->offset[i] = off;
        tok_index_piece(t, i);
        p += t->len[i];
        off += t->len[i];
    }
    t->space_id = lookup_str(t, " ", 1);
    return 0;
}

/* ---- load: either ---- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int tok_load(tok_tokenizer **out, const char *path, int vocab_size, char *err, size_t errlen)
{
    *out = NULL;
    if (vocab_size < N_SPECIAL + 256 || vocab_size > (1 << 24))
        return tok_fail(err, errlen, path,
                        "vocab_size %d from the model outside %d..%d (3 specials and 256 byte "
                        "tokens)", vocab_size, N_SPECIAL + 256, 1 << 24);
    tok_tokenizer *t = tok_new(vocab_size);
    if (!t)
        return tok_fail(err, errlen, path, "out of memory for %d tokens", vocab_size);
    /* the directory, for the files beside the tokenizer */
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) : 1;
    char *dir = malloc(dlen + 1);
    int rc = -1;
    if (!dir) {
        tok_free(t);
        return tok_fail(err, errlen, path, "out of memory");
    }
    memcpy(dir, slash ? path : ".", dlen);
    dir[dlen] = 0;
    if (gguf_is_file(path)) {
        rc = tok_load_gguf(t, path, err, errlen);
    } else if (ends_with(path, ".json")) {
        json_value *root;
        rc = tok_load_json(t, path, &root, err, errlen);
        if (rc == 0)
            rc = tok_load_config(t, root, path, dir, err, errlen);
        json_free(root);
    } else {
        const void *data;
        size_t size;
        rc = map_file(path, &data, &size, err, errlen);
        if (rc == 0) {
            rc = load_bin(t, data, size, path, err, errlen);
            unmap_file(data, size);
        }
        if (rc == 0)
            rc = tok_load_config(t, NULL, path, dir, err, errlen);
    }
    free(dir);
    if (rc < 0) {
        tok_free(t);
        return -1;
    }
    for (int id = 0; id < t->vocab_size; id++) {
        const unsigned char *p = (const unsigned char *)t->bytes + t->offset[id];
        for (uint32_t i = 1; i < t->len[id]; i++)
            t->bigram[(p[i - 1] << 8 | p[i]) >> 3] |= (uint8_t)(1u << (p[i] & 7));
    }
    *out = t;
    return 0;
}

int tok_load_dir(tok_tokenizer **out, const char *dir, int vocab_size, char *err, size_t errlen)
{
    *out = NULL;
    size_t n = strlen(dir) + 32;
    char *path = malloc(n);
    if (!path)
        return tok_fail(err, errlen, dir, "out of memory");
    struct stat st;
    int rc = -1;
    if (stat(dir, &st) == 0 && S_ISREG(st.st_mode) && gguf_is_file(dir)) { /* a GGUF file: its metadata */
        free(path);
        return tok_load(out, dir, vocab_size, err, errlen);
    }
    snprintf(path, n, "%s/tokenizer.json", dir);
    if (stat(path, &st) < 0)
        snprintf(path, n, "%s/tokenizer.bin", dir);
    if (stat(path, &st) < 0)
        tok_fail(err, errlen, dir, "neither tokenizer.json (Hugging Face) nor tokenizer.bin "
                 "(llama2.c)");
    else
        rc = tok_load(out, path, vocab_size, err, errlen);
    free(path);
    return rc;
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
    free(t->merges);
    free(t->special);
    free(t->stop);
    pretok_free(t->pre);
    added_free(t->added);
    free(t);
}

int tok_vocab_size(const tok_tokenizer *t)
{
    return t->vocab_size;
}

int tok_bos_id(const tok_tokenizer *t)
{
    return t->bos_id;
}

int tok_eos_id(const tok_tokenizer *t)
{
    return t->eos_id;
}

const int *tok_stop_ids(const tok_tokenizer *t, size_t *n)
{
    *n = t->n_stop;
    return t->stop;
}

int tok_is_special(const tok_tokenizer *t, int id)
{
    return id >= 0 && id < t->vocab_size && t->special[id];
}

size_t tok_max_token_bytes(const tok_tokenizer *t)
{
    if (t->added_max == SIZE_MAX)
        return SIZE_MAX;
    /* a byte token stands for one byte, shorter than any bound here; NFC may make 1 byte of
     * 3 (a Hangul syllable of 3 jamo: 9 bytes to 3) */
    size_t longest = (size_t)(t->max_len > 0 ? t->max_len : 1);
    longest *= t->spm_space || t->nfc ? 3 : 1;
    return longest > t->added_max ? longest : t->added_max;
}

/* ---- encode ---- */

/* A symbol of the list: id (-1 once merged into its left neighbour), prev, next, and pair,
 * the piece that it and its right neighbour merge to (-1: none), with that pair's rank.
 * One struct, not five arrays: merges visit symbols all over the text, one cache miss each. */
typedef struct {
    int32_t id, pair;
    uint32_t prev, next, rank;
} symbol;

/* The candidates: a min-heap of keys rank << 32 | left, so that the smallest key is the
 * reference's choice (the better rank, then the leftmost) in one integer comparison. A key
 * names a pair only by its left symbol, whose pair and rank fields say what that pair is
 * now: a key whose rank the pair no longer has is stale and skipped when popped. One that
 * still has it is exactly the key a fresh push would make, so acting on it is right even if
 * the pair changed in between. (4- and 8-ary heaps measured no faster: the time goes to
 * visiting symbols all over the text, in the global order of merges that run.c imposes.) */
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

/* Sets pair and rank of the symbol and its current right neighbour, and queues the pair if
 * it merges. */
static int update_pair(const tok_tokenizer *t, symbol *s, uint32_t left, heap *h)
{
    uint32_t right = s[left].next;
    s[left].pair = -1;
    if (right == NONE)
        return 0;
    s[left].pair = pair_rank(t, s[left].id, s[right].id, &s[left].rank);
    return s[left].pair < 0 ? 0 : heap_push(h, (uint64_t)s[left].rank << 32 | left);
}

static int is_continuation(char c)
{
    return ((unsigned char)c & 0xC0) == 0x80;
}

/* Bytes of a chunk before the encoder looks for a point to cut the text at. */
#define CHUNK_BYTES 4096

/* Whether no merge can ever join a symbol of piece a to its right neighbour of piece b:
 * the facing bytes occur side by side in no piece (the bigram table). */
static int never_joined(const tok_tokenizer *t, int32_t a, int32_t b)
{
    if (t->len[a] == 0 || t->len[b] == 0)
        return 0;
    unsigned x = (unsigned char)t->bytes[t->offset[a] + t->len[a] - 1], y = (unsigned char)t->bytes[t->offset[b]];
    return !(t->bigram[(x << 8 | y) >> 3] & (1u << (y & 7)));
}

/* Splits text into initial symbols: byte-level, one a byte; otherwise as run.c does: a
 * group starts at any byte and takes the continuation bytes after it, up to 4 bytes in all
 * (in valid UTF-8: one codepoint, as Hugging Face splits); a group that is not a piece
 * becomes its byte tokens. For sentencepiece-kind tokenizer.json, "▁" is a space, as its
 * normalizer makes every space. The symbol prefix (-1: none) first. Stops before a group,
 * once CHUNK_BYTES are taken, where no merge can cross (never_joined); *used says how many
 * bytes were taken. The symbols go into *s (grown as needed, *cap of them), their number
 * into *m. Returns TOK_OK, TOK_NOMEM, or TOK_LONG_RUN once TOK_MAX_RUN bytes are taken
 * without such a point. */
static int initial_symbols(const tok_tokenizer *t, const char *text, size_t n, int32_t prefix, symbol **s,
                           size_t *cap, size_t *m_out, size_t *used)
{
    size_t m = 0;
    for (size_t i = 0;;) {
        if (m + 5 > *cap) { /* room for the prefix or a group's (at most 4) byte tokens */
            size_t c = *cap ? 2 * *cap : 2 * CHUNK_BYTES;
            symbol *g = realloc(*s, c * sizeof *g);
            if (!g)
                return TOK_NOMEM;
            *s = g, *cap = c;
        }
        if (prefix >= 0 && m == 0) {
            (*s)[m++].id = prefix;
            continue;
        }
        if (i == n) {
            *used = n, *m_out = m;
            return TOK_OK;
        }
        if (i >= TOK_MAX_RUN)
            return TOK_LONG_RUN;
        size_t j = i + 1;
        int found;
        if (t->byte_level) {
            found = t->byte_id[(unsigned char)text[i]];
        } else {
            while (j < n && j - i < 4 && is_continuation(text[j]))
                j++;
            found = t->spm_space && j - i == 3 && memcmp(text + i, SPM_SPACE, 3) == 0 ? t->space_id
                                                                                       : lookup_str(t, text + i, j - i);
        }
        int first = found >= 0 ? found : t->byte_id[(unsigned char)text[i]];
        if (i >= CHUNK_BYTES && m > 0 && never_joined(t, (*s)[m - 1].id, first)) {
            *used = i, *m_out = m;
            return TOK_OK;
        }
        if (found >= 0)
            (*s)[m++].id = found;
        else
            for (size_t k = i; k < j; k++)
                (*s)[m++].id = t->byte_id[(unsigned char)text[k]];
        i = j;
    }
}

/* The state of one tok_encode: the ids so far and the buffers that each pre-token reuses. */
typedef struct {
    const tok_tokenizer *t;
    int *ids;
    size_t n, cap;
    symbol *s;
    size_t s_cap;
    heap h;
    char *norm;         /* a stretch in NFC */
    struct word_cache *cache; /* pre-tokens met in this text and their ids; NULL: none yet */
    int use_cache;      /* the text is long enough (CACHE_TEXT) */
} encoder;

static int push_id(encoder *e, int id)
{
    if (e->n == e->cap) {
        size_t c = 2 * e->cap;
        int *g = realloc(e->ids, c * sizeof *g);
        if (!g)
            return TOK_NOMEM;
        e->ids = g, e->cap = c;
    }
    e->ids[e->n++] = id;
    return TOK_OK;
}

/* Merges the m symbols s[0..m) and appends the resulting ids. Returns TOK_OK or TOK_NOMEM. */
static int merge_symbols(encoder *e, size_t m)
{
    const tok_tokenizer *t = e->t;
    symbol *s = e->s;
    heap *h = &e->h;
    h->n = 0;
    for (size_t i = 0; i < m; i++) {
        s[i].prev = i ? (uint32_t)i - 1 : NONE;
        s[i].next = i + 1 < m ? (uint32_t)i + 1 : NONE;
    }
    for (size_t i = 0; i < m; i++)
        if (update_pair(t, s, (uint32_t)i, h) < 0)
            return TOK_NOMEM;
    while (h->n) {
        uint64_t key = heap_pop(h);
        uint32_t left = (uint32_t)key, right = s[left].next;
        if (s[left].pair < 0 || s[left].rank != key >> 32)
            continue; /* stale: the pair at left has changed since */
        s[left].id = s[left].pair;
        s[right].id = -1;
        s[right].pair = -1;
        s[left].next = s[right].next;
        if (s[right].next != NONE)
            s[s[right].next].prev = left;
        /* The merged symbol makes new pairs on both sides. */
        if ((s[left].prev != NONE && update_pair(t, s, s[left].prev, h) < 0) || update_pair(t, s, left, h) < 0)
            return TOK_NOMEM;
    }
    for (uint32_t i = 0; m > 0 && i != NONE; i = s[i].next) /* symbol 0 is never a right symbol */
        if (push_id(e, s[i].id) < 0)
            return TOK_NOMEM;
    return TOK_OK;
}

/* One pre-token (or, without a pre-tokenizer, one stretch of text) through the merge
 * loop, chunk by chunk; prefix: the symbol to put first, or -1. */
static int encode_word(encoder *e, const char *text, size_t n, int32_t prefix)
{
    const tok_tokenizer *t = e->t;
    if (t->ignore_merges) { /* Hugging Face's BPE: a pre-token in the vocab is itself */
        int id = lookup_str(t, text, n);
        if (id >= 0)
            return push_id(e, id);
    }
    for (size_t start = 0, used, m; start < n; start += used) { /* n > 0: callers drop empty pieces */
        int status = initial_symbols(t, text + start, n - start, start == 0 ? prefix : -1, &e->s, &e->s_cap, &m,
                                     &used);
        if (status == TOK_OK)
            status = merge_symbols(e, m);
        if (status != TOK_OK)
            return status;
    }
    return TOK_OK;
}

/* Pre-tokens repeat (words: a few thousand cover most of a text), so one tok_encode keeps
 * the ids of the short ones it has merged, as Hugging Face's BPE keeps a cache: the same
 * pre-token always merges to the same ids. Per call, so that threads share nothing;
 * bounded: once full, new words are merged and not kept. */
#define CACHE_SLOTS 4096    /* at most half of them used */
#define CACHE_WORD 32       /* longer pre-tokens are rare and not kept */
#define CACHE_TEXT 4096 /* a shorter text repeats too little to pay for the cache */

typedef struct {
    uint32_t hash, off, len, ids_off, n_ids; /* len 0: empty */
} cache_slot;

struct word_cache {
    cache_slot slot[CACHE_SLOTS];
    size_t used;
    char bytes[CACHE_SLOTS / 2 * CACHE_WORD];
    int32_t ids[CACHE_SLOTS / 2 * CACHE_WORD]; /* a word never merges to more ids than bytes */
    size_t n_bytes, n_ids;
};

static int on_pretoken(void *ctx, const char *s, size_t n)
{
    encoder *e = ctx;
    if (n > CACHE_WORD || !e->use_cache)
        return encode_word(e, s, n, -1);
    if (!e->cache && !(e->cache = calloc(1, sizeof *e->cache)))
        return TOK_NOMEM;
    struct word_cache *c = e->cache;
    uint32_t h = fnv1a(FNV_BASIS, s, n), i = h & (CACHE_SLOTS - 1);
    for (; c->slot[i].len; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_slot *w = &c->slot[i];
        if (w->hash == h && w->len == n && memcmp(c->bytes + w->off, s, n) == 0) {
            for (uint32_t k = 0; k < w->n_ids; k++)
                if (push_id(e, c->ids[w->ids_off + k]) < 0)
                    return TOK_NOMEM;
            return TOK_OK;
        }
    }
    size_t before = e->n;
    int status = encode_word(e, s, n, -1);
    if (status != TOK_OK || c->used == CACHE_SLOTS / 2)
        return status;
    cache_slot *w = &c->slot[i]; /* the empty slot the probe ended on */
    *w = (cache_slot){h, (uint32_t)c->n_bytes, (uint32_t)n, (uint32_t)c->n_ids, (uint32_t)(e->n - before)};
    memcpy(c->bytes + c->n_bytes, s, n);
    for (size_t k = before; k < e->n; k++)
        c->ids[c->n_ids++] = e->ids[k];
    c->n_bytes += n;
    c->used++;
    return TOK_OK;
}

/* The NFC of s[0..n) (valid UTF-8) into e->norm, its length in *len; 0 or -1 (out of
 * memory). ASCII is its own NFC, and no character composes with an ASCII one after it, so
 * the text is cut before each ASCII character and only the pieces that hold others (with
 * the ASCII character before them, which may compose with them: "e" U+0301) go through
 * utf8proc: natural text is mostly ASCII, which is then only copied. */
static int nfc(encoder *e, const char *s, size_t n, size_t *len)
{
    char *out = realloc(e->norm, n ? n : 1), *grown; /* NFC may grow a piece: realloc'd below */
    size_t k = 0, cap = n ? n : 1;
    if (!out)
        return -1;
    e->norm = out;
    for (size_t i = 0; i < n;) {
        size_t j = i, m;
        while (j < n && (unsigned char)s[j] < 0x80)
            j++;
        size_t from = j > i ? j - 1 : j; /* the ASCII character before goes with the others */
        for (m = j; m < n && (unsigned char)s[m] >= 0x80; m++)
            ;
        utf8proc_uint8_t *piece = NULL;
        utf8proc_ssize_t pl = 0;
        if (m > j && (pl = utf8proc_map((const utf8proc_uint8_t *)s + from, (utf8proc_ssize_t)(m - from), &piece,
                                        UTF8PROC_STABLE | UTF8PROC_COMPOSE)) < 0)
            return -1; /* UTF8PROC_ERROR_NOMEM: the text was made valid UTF-8 */
        size_t copy = m > j ? from - i : j - i;
        if (k + copy + (size_t)pl > cap) {
            cap = 2 * (k + copy + (size_t)pl);
            if (!(grown = realloc(e->norm, cap))) {
                free(piece);
                return -1;
            }
            e->norm = grown;
        }
        memcpy(e->norm + k, s + i, copy);
        k += copy;
        if (piece)
            memcpy(e->norm + k, piece, (size_t)pl);
        k += (size_t)pl;
        free(piece);
        i = m;
    }
    *len = k;
    return 0;
}

/* A stretch of text between added tokens: normalized, pre-tokenized, merged. */
static int encode_stretch(encoder *e, const char *s, size_t n)
{
    const tok_tokenizer *t = e->t;
    if (n == 0)
        return TOK_OK;
    if (!t->byte_level) /* sentencepiece's normalizer: the dummy prefix (run.c's, too) */
        return encode_word(e, s, n, t->space_id >= 0 ? t->space_id : t->byte_id[' ']);
    if (t->nfc) {
        size_t len;
        if (nfc(e, s, n, &len) < 0)
            return TOK_NOMEM;
        s = e->norm, n = len;
    }
    /* the pre-tokens are cut from e->norm, which no pre-token replaces */
    return t->pre ? pretok_run(t->pre, s, n, on_pretoken, e) : encode_word(e, s, n, -1);
}

static int on_added(void *ctx, const char *s, size_t n, int id)
{
    return id >= 0 ? push_id(ctx, id) : encode_stretch(ctx, s, n);
}

/* text with each maximal invalid subpart of UTF-8 replaced by U+FFFD, as Python, Rust and
 * node decode bytes (Hugging Face's tokenizers only ever sees such strings): malloc'd, or
 * NULL when text is valid (or out of memory: *nomem). */
static char *valid_utf8(const char *text, size_t n, size_t *out_n, int *nomem)
{
    size_t bad = 0;
    *nomem = 0;
    for (size_t i = 0; i < n;) {
        int l = utf8_char((const unsigned char *)text + i, n - i, NULL);
        bad += l < 0;
        i += (size_t)(l < 0 ? -l : l);
    }
    if (bad == 0)
        return NULL;
    char *v = malloc(n + 2 * bad), *o = v;
    if (!v) {
        *nomem = 1;
        return NULL;
    }
    for (size_t i = 0; i < n;) {
        int l = utf8_char((const unsigned char *)text + i, n - i, NULL);
        if (l > 0) {
            memcpy(o, text + i, (size_t)l);
            o += l, i += (size_t)l;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3, i += (size_t)-l;
        }
    }
    *out_n = (size_t)(o - v);
    return v;
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t n, int flags, int **ids, size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    /* Symbol indices are 32-bit (the heap holds several entries per byte of text). */
    if (n >= (size_t)UINT32_MAX - 8)
        return TOK_NOMEM;
    /* the ids grow with the output (about a quarter of the bytes in natural text) */
    encoder e = {t, malloc(64 * sizeof(int)), 0, 64, NULL, 0, {0}, NULL, NULL, n >= CACHE_TEXT};
    int nomem = 0, status = TOK_NOMEM;
    char *valid = t->byte_level ? valid_utf8(text, n, &n, &nomem) : NULL;
    if (!e.ids || nomem)
        goto done;
    if (valid)
        text = valid;
    status = TOK_OK;
    for (int i = 0; status == TOK_OK && (flags & TOK_ADD_SPECIAL) && i < t->n_prefix; i++)
        status = push_id(&e, t->prefix[i]);
    if (status == TOK_OK)
        status = t->added ? added_run(t->added, text, n, flags & TOK_SPLIT_SPECIAL, on_added, &e)
                          : encode_stretch(&e, text, n);
    for (int i = 0; status == TOK_OK && (flags & TOK_ADD_SPECIAL) && i < t->n_suffix; i++)
        status = push_id(&e, t->suffix[i]);
    if (status == TOK_OK) {
        *ids = e.ids;
        *n_ids = e.n;
        e.ids = NULL;
    }
done:
    free(e.ids);
    free(e.s);
    free(e.h.k);
    free(e.norm);
    free(e.cache);
    free(valid);
    return status;
}

_Static_assert(TOK_MAX_RUN == 1048576, "tok_strerror's message spells TOK_MAX_RUN");

const char *tok_strerror(int status)
{
    switch (status) {
    case TOK_OK:
        return "no error";
    case TOK_LONG_RUN:
        return "it has a stretch of more than 1048576 bytes (TOK_MAX_RUN) where the tokenizer can cut "
               "nowhere (one letter repeated?), refused rather than encoded in 30 bytes of memory per byte";
    default:
        return "out of memory tokenizing it";
    }
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

int tok_byte_token(const char *p, size_t n)
{
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
        return -1;
    int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
    return hi >= 0 && lo >= 0 ? hi * 16 + lo : -1;
}

const char *tok_decode(const tok_tokenizer *t, int prev, int id, size_t *len)
{
    if (id < 0 || id >= t->vocab_size)
        return NULL;
    const char *p = t->bytes + t->offset[id];
    size_t n = t->len[id];
    if (t->byte_level || t->special[id]) { /* its bytes, or an added token's content */
        *len = n;
        return p;
    }
    /* sentencepiece drops the dummy prefix: its decoder's Strip, at the start of the text,
     * which is also just after BOS (run.c's rule; Hugging Face's decode with special tokens
     * skipped) */
    int start = prev < 0 || prev == t->bos_id || (t->n_prefix && prev == t->prefix[t->n_prefix - 1]);
    if (start && n > 0 && p[0] == ' ')
        p++, n--;
    int byte = tok_byte_token(p, n);
    if (byte >= 0) {
        *len = 1;
        return &t->byte_str[byte];
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
