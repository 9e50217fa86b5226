/* tokenizer_gguf.c: a tokenizer from a GGUF file's tokenizer.* metadata, encoding as
 * llama.cpp's llama_tokenize does (llama-vocab.cpp), with the same encoder as the other
 * formats (tokenizer.c). Two models run here:
 * - "llama" (llm_tokenizer_spm): pieces with spaces spelled U+2581 and a score each; a pair
 *   of adjacent symbols merges if its concatenation is a piece, the best score first, the
 *   leftmost among equal ones; a character that is no piece falls back to its <0xXX>
 *   tokens (token_type BYTE); a space is put before the text and after each special token
 *   (add_space_prefix, which must be true). That is tokenizer.bin's merge loop (run.c's),
 *   so the pieces go in as tokenizer.bin's do, scores ranked alike.
 * - "gpt2" (llm_tokenizer_bpe): byte-level pieces and merges "a b" ranked by position, the
 *   pre-tokenizer named by tokenizer.ggml.pre: llama-bpe (Llama 3; a pre-token that is a
 *   piece is that piece, ignore_merges), qwen2, gpt-2 and smollm, with llama.cpp's
 *   regexes. That is a byte-level tokenizer.json's, so the metadata is written out as one
 *   (model.vocab, model.merges, added_tokens, the pre_tokenizer) and loaded by
 *   tokenizer_json.c; llama.cpp normalizes nothing (no NFC for qwen2, unlike Qwen's
 *   tokenizer.json), and neither does this.
 * Both: tokens of type CONTROL (and UNKNOWN) are special added tokens, found in the text
 * unless it is untrusted (TOK_SPLIT_SPECIAL: llama_tokenize's parse_special false);
 * USER_DEFINED ones are added tokens found always; UNUSED ones have no piece. Encoding adds
 * BOS if add_bos_token (default: true for llama, for gpt2 only with llama-bpe) and EOS if
 * add_eos_token; generation stops at eos, eot and eom. Any other model, pre-tokenizer or
 * tokenizer key that changes encoding is refused naming the file and key. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "json.h"
#include "tokenizer_impl.h"

/* llama.cpp's llama_token_type */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* ---- a JSON text being written ---- */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} jbuf;

static void jb_raw(jbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void jb_lit(jbuf *b, const char *s)
{
    jb_raw(b, s, strlen(s));
}

/* s[0..n) as a JSON string: quotes, backslashes and control characters escaped. */
static void jb_str(jbuf *b, const char *s, size_t n)
{
    jb_raw(b, "\"", 1);
    for (size_t i = 0, from = 0; i <= n; i++) {
        unsigned char c = i < n ? (unsigned char)s[i] : 0;
        if (i < n && c >= 0x20 && c != '"' && c != '\\')
            continue;
        jb_raw(b, s + from, i - from);
        from = i + 1;
        if (i < n) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            jb_raw(b, esc, 6);
        }
    }
    jb_raw(b, "\"", 1);
}

/* ---- the keys ---- */

typedef struct {
    const gguf_file *f;
    const char *path;
    gguf_str *tokens;
    size_t n;
    const gguf_kv *types, *scores, *merges;
    char *err;
    size_t errlen;
} src;

#define FAIL(s, ...) tok_fail((s)->err, (s)->errlen, (s)->path, __VA_ARGS__)

/* tokenizer.* keys that change nothing in encoding here: ids of tokens only other tasks use
 * (fill-in-the-middle, classification), the count of token types, named chat templates
 * (tokenizer.chat_template.NAME: chat_template_load.c reads the default one). */
static const char *const inert_keys[] = {
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.cls_token_id", "tokenizer.ggml.prefix_token_id", "tokenizer.ggml.suffix_token_id",
    "tokenizer.ggml.middle_token_id", "tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id",
    "tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.fim_pad_token_id", "tokenizer.ggml.fim_rep_token_id",
    "tokenizer.ggml.fim_sep_token_id", "tokenizer.ggml.token_type_count", "tokenizer.chat_template",
    "tokenizer.ggml.unknown_token_id",
};
/* keys read below */
static const char *const read_keys[] = {
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.add_sep_token", "tokenizer.ggml.remove_extra_whitespaces",
};

static int listed(const char *key, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(key, list[i]))
            return 1;
    return 0;
}

static int check_keys(const src *s)
{
    for (size_t i = 0; i < s->f->n_kv; i++) {
        const gguf_kv *kv = &s->f->kv[i];
        if (strncmp(kv->key, "tokenizer.", 10) || listed(kv->key, read_keys, sizeof read_keys / sizeof *read_keys) ||
            listed(kv->key, inert_keys, sizeof inert_keys / sizeof *inert_keys) ||
            !strncmp(kv->key, "tokenizer.chat_template.", 24))
            continue;
        return FAIL(s, "at byte %zu: key '%s' is not one this tokenizer knows: it may change encoding, so it is "
                    "refused rather than ignored", kv->offset, kv->key);
    }
    /* switches whose only value run here is the one named */
    static const struct {
        const char *key;
        int want;
        const char *why;
    } fixed[] = {
        {"tokenizer.ggml.add_space_prefix", 1, "a sentencepiece text without its dummy prefix"},
        {"tokenizer.ggml.remove_extra_whitespaces", 0, "sentencepiece's whitespace folding"},
        {"tokenizer.ggml.add_sep_token", 0, "a separator after the text"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        const gguf_kv *kv = gguf_find_kv(s->f, fixed[i].key);
        int v;
        if (kv && (gguf_kv_bool(kv, &v) < 0 || v != fixed[i].want))
            return FAIL(s, "at byte %zu: key '%s': only %s is supported (%s is not implemented)", kv->offset,
                        fixed[i].key, fixed[i].want ? "true" : "false", fixed[i].why);
    }
    return 0;
}

static int token_type(const src *s, size_t id)
{
    double v;
    return s->types && gguf_arr_num(s->types, id, &v) == 0 ? (int)v : TT_NORMAL;
}

/* An id key (absent: *id -1), which must name a token. */
static int id_key(const src *s, const char *key, int *id)
{
    const gguf_kv *kv = gguf_find_kv(s->f, key);
    int64_t v;
    *id = -1;
    if (!kv)
        return 0;
    if (gguf_kv_int(kv, 0, (int64_t)s->n - 1, &v) < 0)
        return FAIL(s, "at byte %zu: key '%s' is not a token id in 0..%zu", kv->offset, key, s->n - 1);
    *id = (int)v;
    return 0;
}

static int bool_key(const src *s, const char *key, int dflt, int *out)
{
    const gguf_kv *kv = gguf_find_kv(s->f, key);
    *out = dflt;
    if (kv && gguf_kv_bool(kv, out) < 0)
        return FAIL(s, "at byte %zu: key '%s' is not a bool", kv->offset, key);
    return 0;
}

/* The added tokens (CONTROL, UNKNOWN, USER_DEFINED) as tokenizer.json's added_tokens, into
 * a JSON array in b. */
static void added_json(const src *s, jbuf *b)
{
    int first = 1;
    jb_lit(b, "[");
    for (size_t i = 0; i < s->n; i++) {
        int tt = token_type(s, i);
        if (tt != TT_CONTROL && tt != TT_UNKNOWN && tt != TT_USER_DEFINED)
            continue;
        char head[64];
        snprintf(head, sizeof head, "%s{\"id\":%zu,\"content\":", first ? "" : ",", i);
        jb_lit(b, head);
        jb_str(b, s->tokens[i].s, s->tokens[i].n);
        jb_lit(b, tt == TT_USER_DEFINED ? ",\"special\":false" : ",\"special\":true");
        jb_lit(b, ",\"normalized\":false,\"lstrip\":false,\"rstrip\":false,\"single_word\":false}");
        first = 0;
    }
    jb_lit(b, "]");
}

/* ---- llama: sentencepiece pieces and scores, as tokenizer.bin's ---- */

static int load_spm(tok_tokenizer *t, const src *s)
{
    size_t total = 0;
    for (size_t i = 0; i < s->n; i++)
        total += s->tokens[i].n;
    if (total > UINT32_MAX)
        return FAIL(s, "tokenizer.ggml.tokens: %zu bytes of pieces, more than 4 GiB", total);
    if (s->scores && (s->scores->elem != GGUF_F32 || s->scores->count != s->n))
        return FAIL(s, "at byte %zu: key 'tokenizer.ggml.scores' must be %zu f32", s->scores->offset, s->n);
    t->score = malloc((size_t)t->vocab_size * sizeof *t->score);
    t->rank = malloc((size_t)t->vocab_size * sizeof *t->rank);
    t->bytes = malloc(total ? total : 1);
    if (!t->score || !t->rank || !t->bytes)
        return FAIL(s, "out of memory for %zu tokens", s->n);
    uint32_t off = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        double score = 0;
        t->score[i] = -1e30f; /* ids past the file's tokens: no piece, never merged to */
        if ((size_t)i >= s->n || token_type(s, (size_t)i) == TT_UNUSED)
            continue;
        if (s->scores)
            gguf_arr_num(s->scores, (size_t)i, &score);
        t->score[i] = (float)score;
        const gguf_str *p = &s->tokens[i];
        if (p->n == 0 || p->n > MAX_TOKEN_LENGTH)
            return FAIL(s, "tokenizer.ggml.tokens[%d]: empty or longer than %d bytes", i, MAX_TOKEN_LENGTH);
        /* spaces spelled U+2581 in the file are " " in the table, as tokenizer.bin's */
        uint32_t k = 0;
        for (size_t j = 0; j < p->n; j++) {
            if (p->n - j >= 3 && !memcmp(p->s + j, SPM_SPACE, 3)) {
                t->bytes[off + k++] = ' ';
                j += 2;
            } else {
                t->bytes[off + k++] = p->s[j];
            }
        }
        t->offset[i] = off;
        t->len[i] = k;
        off += k;
        tok_index_piece(t, i); /* a piece given twice: the first id wins, as llama.cpp's map */
    }
    if (tok_rank_scores(t) < 0)
        return FAIL(s, "out of memory ranking %zu scores", s->n);
    int bytes_seen = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (token_type(s, i) != TT_BYTE)
            continue;
        int byte = tok_byte_token(s->tokens[i].s, s->tokens[i].n);
        if (byte < 0)
            return FAIL(s, "tokenizer.ggml.tokens[%zu]: a BYTE token that is not <0xXX>", i);
        t->byte_id[byte] = (int32_t)i;
        bytes_seen++;
    }
    if (bytes_seen != 256)
        return FAIL(s, "tokenizer.ggml.token_type: %d BYTE tokens, not the 256 byte fallback needs", bytes_seen);
    if ((t->space_id = tok_piece_id(t, " ", 1, "", 0)) < 0)
        return FAIL(s, "tokenizer.ggml.tokens: no \"\xe2\x96\x81\" piece (the space)");
    jbuf b = {0};
    added_json(s, &b);
    json_value *added = b.oom ? NULL : json_parse(b.p, b.n, s->err, s->errlen);
    free(b.p);
    if (!added)
        return b.oom ? FAIL(s, "out of memory for the added tokens") : -1;
    int rc = added_parse(t, added, s->path, s->err, s->errlen);
    json_free(added);
    return rc;
}

/* ---- gpt2: byte-level, written out as a tokenizer.json ---- */

/* llama.cpp's pre-tokenizers of the families that run here (llama-vocab.cpp,
 * llm_tokenizer_bpe): its regexes, as Split steps before the ByteLevel step that spells
 * bytes (ByteLevel's use_regex: GPT-2's own regex). */
#define LLAMA3_REGEX                                                                                 \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| " \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define QWEN2_REGEX                                                                                  \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "     \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
static const struct {
    const char *names[4];
    const char *split;  /* a regex before ByteLevel, or NULL */
    int gpt2_regex;     /* ByteLevel's use_regex */
    int ignore_merges;
    int add_bos;        /* llama.cpp's default for add_bos_token */
} pres[] = {
    {{"llama-bpe", "llama3", "llama-v3", NULL}, LLAMA3_REGEX, 0, 1, 1},
    {{"qwen2", NULL}, QWEN2_REGEX, 0, 0, 0},
    {{"gpt-2", NULL}, NULL, 1, 0, 0},
    {{"smollm", NULL}, "\\p{N}", 1, 0, 0},
};

static int find_pre(const src *s, int *out)
{
    const gguf_kv *kv = gguf_find_kv(s->f, "tokenizer.ggml.pre");
    gguf_str name;
    if (gguf_kv_str(kv, &name) < 0)
        return FAIL(s, "key 'tokenizer.ggml.pre' missing or not a string (llama.cpp would guess 'default')");
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++)
        for (int k = 0; k < 4 && pres[i].names[k]; k++)
            if (strlen(pres[i].names[k]) == name.n && !memcmp(pres[i].names[k], name.s, name.n))
                return *out = (int)i, 0;
    return FAIL(s, "at byte %zu: key 'tokenizer.ggml.pre': \"%.*s\" is not a pre-tokenizer implemented here "
                "(llama-bpe, qwen2, gpt-2, smollm)", kv->offset, (int)(name.n > 40 ? 40 : name.n), name.s);
}

static void pre_json(jbuf *b, int pre)
{
    char bl[128];
    snprintf(bl, sizeof bl, "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,"
             "\"use_regex\":%s}", pres[pre].gpt2_regex ? "true" : "false");
    if (!pres[pre].split) {
        jb_lit(b, bl);
        return;
    }
    jb_lit(b, "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":");
    jb_str(b, pres[pre].split, strlen(pres[pre].split));
    jb_lit(b, "},\"behavior\":\"Isolated\",\"invert\":false},");
    jb_lit(b, bl);
    jb_lit(b, "]}");
}

static int load_bpe(tok_tokenizer *t, const src *s, int pre)
{
    if (!s->merges || s->merges->type != GGUF_ARRAY || s->merges->elem != GGUF_STRING)
        return FAIL(s, "key 'tokenizer.ggml.merges' missing or not an array of strings");
    gguf_str *merges = malloc((s->merges->count ? s->merges->count : 1) * sizeof *merges);
    if (!merges)
        return FAIL(s, "out of memory for %llu merges", (unsigned long long)s->merges->count);
    gguf_arr_strs(s->merges, merges);
    jbuf b = {0};
    jb_lit(&b, "{\"model\":{\"type\":\"BPE\",\"byte_fallback\":false,\"ignore_merges\":");
    jb_lit(&b, pres[pre].ignore_merges ? "true" : "false");
    jb_lit(&b, ",\"vocab\":{");
    int first = 1;
    for (size_t i = 0; i < s->n; i++) {
        if (token_type(s, i) != TT_NORMAL && token_type(s, i) != TT_BYTE)
            continue;
        char id[32];
        if (!first)
            jb_lit(&b, ",");
        jb_str(&b, s->tokens[i].s, s->tokens[i].n);
        snprintf(id, sizeof id, ":%zu", i);
        jb_lit(&b, id);
        first = 0;
    }
    jb_lit(&b, "},\"merges\":[");
    for (uint64_t i = 0; i < s->merges->count; i++) {
        if (i)
            jb_lit(&b, ",");
        jb_str(&b, merges[i].s, merges[i].n);
    }
    free(merges);
    jb_lit(&b, "]},\"added_tokens\":");
    added_json(s, &b);
    jb_lit(&b, ",\"normalizer\":null,\"pre_tokenizer\":");
    pre_json(&b, pre);
    jb_lit(&b, ",\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"}}");
    if (b.oom) {
        free(b.p);
        return FAIL(s, "out of memory writing the vocabulary out");
    }
    json_value *root = json_parse(b.p, b.n, s->err, s->errlen);
    free(b.p);
    if (!root)
        return -1;
    int rc = tok_load_json_tree(t, root, s->path, s->err, s->errlen);
    json_free(root);
    return rc;
}

/* ---- both ---- */

/* BOS and EOS, what encoding adds, where generation stops. */
static int specials(tok_tokenizer *t, const src *s, int add_bos_default)
{
    int eot, eom, add_bos, add_eos;
    if (id_key(s, "tokenizer.ggml.bos_token_id", &t->bos_id) < 0 ||
        id_key(s, "tokenizer.ggml.eos_token_id", &t->eos_id) < 0 || id_key(s, "tokenizer.ggml.eot_token_id", &eot) < 0 ||
        id_key(s, "tokenizer.ggml.eom_token_id", &eom) < 0 ||
        bool_key(s, "tokenizer.ggml.add_bos_token", add_bos_default, &add_bos) < 0 ||
        bool_key(s, "tokenizer.ggml.add_eos_token", 0, &add_eos) < 0)
        return -1;
    if ((add_bos && t->bos_id < 0) || (add_eos && t->eos_id < 0))
        return FAIL(s, "%s is true but the file names no %s", add_bos && t->bos_id < 0 ? "add_bos_token" : "add_eos_token",
                    add_bos && t->bos_id < 0 ? "bos_token_id" : "eos_token_id");
    t->n_prefix = t->n_suffix = 0;
    if (add_bos)
        t->prefix[t->n_prefix++] = t->bos_id;
    if (add_eos)
        t->suffix[t->n_suffix++] = t->eos_id;
    const int stops[] = {t->eos_id, eot, eom};
    for (int i = 0; i < 3; i++)
        if (stops[i] >= 0 && tok_add_stop(t, stops[i]) < 0)
            return FAIL(s, "out of memory");
    return 0;
}

int tok_load_gguf(tok_tokenizer *t, const char *path, char *err, size_t errlen)
{
    gguf_file f;
    if (gguf_open(&f, path, err, errlen) < 0)
        return -1;
    src s = {&f, path, NULL, 0, gguf_find_kv(&f, "tokenizer.ggml.token_type"),
             gguf_find_kv(&f, "tokenizer.ggml.scores"), gguf_find_kv(&f, "tokenizer.ggml.merges"), err, errlen};
    const gguf_kv *model = gguf_find_kv(&f, "tokenizer.ggml.model"), *tokens = gguf_find_kv(&f, "tokenizer.ggml.tokens");
    gguf_str name = {0};
    int rc = -1, pre = -1, spm = 0;
    if (check_keys(&s) < 0)
        goto done;
    if (gguf_kv_str(model, &name) < 0) {
        FAIL(&s, "key 'tokenizer.ggml.model' missing or not a string (the file holds no tokenizer)");
        goto done;
    }
    spm = name.n == 5 && !memcmp(name.s, "llama", 5);
    if (!spm && !(name.n == 4 && !memcmp(name.s, "gpt2", 4))) {
        FAIL(&s, "at byte %zu: key 'tokenizer.ggml.model': \"%.*s\" is not implemented here (llama: sentencepiece, "
             "gpt2: byte-level BPE)", model->offset, (int)(name.n > 40 ? 40 : name.n), name.s);
        goto done;
    }
    if (!tokens || tokens->type != GGUF_ARRAY || tokens->elem != GGUF_STRING || tokens->count == 0 ||
        tokens->count > (uint64_t)t->vocab_size) {
        FAIL(&s, "key 'tokenizer.ggml.tokens' missing, not an array of strings, or not 1..%d of them (the model's "
             "vocab_size)", t->vocab_size);
        goto done;
    }
    if (s.types && (s.types->type != GGUF_ARRAY || s.types->count != tokens->count ||
                    (s.types->elem != GGUF_I32 && s.types->elem != GGUF_U32))) {
        FAIL(&s, "at byte %zu: key 'tokenizer.ggml.token_type' must be one i32 per token", s.types->offset);
        goto done;
    }
    s.n = (size_t)tokens->count;
    if (!(s.tokens = malloc(s.n * sizeof *s.tokens))) {
        FAIL(&s, "out of memory for %zu tokens", s.n);
        goto done;
    }
    gguf_arr_strs(tokens, s.tokens);
    if (!spm && find_pre(&s, &pre) < 0)
        goto done;
    if ((spm ? load_spm(t, &s) : load_bpe(t, &s, pre)) < 0 || specials(t, &s, spm || pres[pre].add_bos) < 0)
        goto done;
    rc = 0;
done:
    free(s.tokens);
    gguf_close(&f);
    return rc;
}
