/* tokenizer_json.c: tokenizer.json's model, normalizer and decoder into a tok_tokenizer
 * (see tokenizer.h and tokenizer_impl.h), of two kinds: the sentencepiece flavour (what
 * transformers' LlamaConverter writes) and byte-level BPE (GPT-2's, Llama 3's, Qwen's);
 * every field that would make it encode or decode another way is refused by name. Pieces
 * are stored as the bytes they stand for (" " for "▁", the bytes that bytes_to_unicode
 * characters spell), so that the encoder and the decoder serve every format alike. The
 * pre_tokenizer is pretokenize.c's, the added tokens' matching added_tokens.c's, the
 * post_processor tokenizer_config.c's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tokenizer_bytelevel.h"
#include "tokenizer_impl.h"

#define MAX_JSON_SIZE (256u << 20) /* far above any real vocabulary's */

static int lookup_str(const tok_tokenizer *t, const char *s, size_t n)
{
    return tok_piece_id(t, s, n, "", 0);
}

int tok_is_str(const json_value *v, const char *s)
{
    return v && v->type == JSON_STRING && v->len == strlen(s) && memcmp(v->string, s, v->len) == 0;
}

static int is_null(const json_value *v)
{
    return !v || v->type == JSON_NULL;
}

const char *tok_show(const json_value *v, char *buf, size_t n)
{
    static const char *const types[] = {"null",     "a boolean", "a number",
                                        "a string", "an array",  "an object"};
    if (!v)
        return "missing";
    if (v->type == JSON_STRING)
        snprintf(buf, n, "\"%.60s\"", v->string);
    else
        snprintf(buf, n, "%s", types[v->type]);
    return buf;
}

/* Replaces each "▁" of s[0..n) by " " into out (room for n bytes); returns the new length. */
static size_t unspace(char *out, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (n - i >= 3 && memcmp(s + i, SPM_SPACE, 3) == 0) {
            out[k++] = ' ';
            i += 2;
        } else {
            out[k++] = s[i];
        }
    }
    return k;
}

/* The bytes that s[0..n), as the file spells pieces, stands for into out (room for n);
 * their number, or -1 (a byte-level file's character outside its alphabet). */
static long unspell(const tok_tokenizer *t, char *out, const char *s, size_t n)
{
    return t->byte_level ? bytelevel_unspell(out, s, n) : (long)unspace(out, s, n);
}

/* Whether a Replace normalizer or decoder replaces the string from with to. */
static int replaces(const json_value *v, const char *from, const char *to)
{
    return tok_is_str(json_get(json_get(v, "pattern"), "String"), from) &&
           tok_is_str(json_get(v, "content"), to);
}

/* Counts the Prepend "▁" and Replace " " -> "▁" normalizers of v (in Sequences, nested or
 * not); refuses any other. */
static int walk_normalizer(const json_value *v, const char *field, int *prepend, int *replace,
                           const char *path, char *err, size_t errlen)
{
    const json_value *type = json_get(v, "type"), *list = json_get(v, "normalizers");
    char buf[80];
    if (tok_is_str(type, "Sequence") && list && list->type == JSON_ARRAY) {
        for (size_t i = 0; i < list->count; i++) {
            char sub[200];
            snprintf(sub, sizeof sub, "%.150s.normalizers[%zu]", field, i);
            if (walk_normalizer(&list->items[i], sub, prepend, replace, path, err, errlen) < 0)
                return -1;
        }
        return 0;
    }
    if (tok_is_str(type, "Prepend") && tok_is_str(json_get(v, "prepend"), SPM_SPACE))
        return ++*prepend, 0;
    if (tok_is_str(type, "Replace") && replaces(v, " ", SPM_SPACE))
        return ++*replace, 0;
    return tok_fail(err, errlen, path,
                    "%s: type %s is not supported (Llama's normalizer: Prepend "
                    "\"\xe2\x96\x81\" and Replace \" \" with \"\xe2\x96\x81\")",
                    field, tok_show(type, buf, sizeof buf));
}

/* The decoder must be Llama's: Replace "▁" -> " ", ByteFallback, Fuse, Strip one leading
 * space, in this order (what tok_decode does). */
static int check_decoder(const json_value *dec, const char *path, char *err, size_t errlen)
{
    static const char *const want[] = {"Replace", "ByteFallback", "Fuse", "Strip"};
    const json_value *list = json_get(dec, "decoders");
    char buf[80];
    if (!tok_is_str(json_get(dec, "type"), "Sequence") || !list || list->type != JSON_ARRAY)
        return tok_fail(err, errlen, path,
                        "decoder: type %s is not supported (Llama's: a Sequence "
                        "of Replace \"\xe2\x96\x81\" with \" \", ByteFallback, Fuse, Strip)",
                        tok_show(json_get(dec, "type"), buf, sizeof buf));
    if (list->count != 4)
        return tok_fail(err, errlen, path,
                        "decoder.decoders: %zu decoders, not Llama's 4 "
                        "(Replace \"\xe2\x96\x81\" with \" \", ByteFallback, Fuse, Strip)",
                        list->count);
    for (size_t i = 0; i < 4; i++) {
        const json_value *d = &list->items[i];
        long start, stop;
        int ok = tok_is_str(json_get(d, "type"), want[i]);
        if (ok && i == 0)
            ok = replaces(d, SPM_SPACE, " ");
        if (ok && i == 3)
            ok = tok_is_str(json_get(d, "content"), " ") &&
                 json_get_int(d, "start", 1, 1, &start) == 0 &&
                 json_get_int(d, "stop", 0, 0, &stop) == 0;
        if (!ok)
            return tok_fail(err, errlen, path,
                            "decoder.decoders[%zu]: not %s as Llama's decoder has it (type %s)",
                            i, want[i], tok_show(json_get(d, "type"), buf, sizeof buf));
    }
    return 0;
}

/* The sentencepiece kind's normalizer, pre_tokenizer and decoder. */
static int check_spm(const json_value *root, const char *path, char *err, size_t errlen)
{
    const json_value *model = json_get(root, "model"), *fallback = json_get(model, "byte_fallback");
    char buf[80];
    if (!fallback || fallback->type != JSON_BOOL || !fallback->boolean)
        return tok_fail(err, errlen, path,
                        "model.byte_fallback: must be true (Llama's tokenizer "
                        "spells unknown characters as byte tokens; a byte-level tokenizer has the decoder ByteLevel)");
    const json_value *ignore = json_get(model, "ignore_merges");
    if (!is_null(ignore) && (ignore->type != JSON_BOOL || ignore->boolean))
        return tok_fail(err, errlen, path, "model.ignore_merges: must be false");
    const json_value *pre = json_get(root, "pre_tokenizer");
    if (!is_null(pre))
        return tok_fail(err, errlen, path,
                        "pre_tokenizer: type %s is not supported with Llama's sentencepiece-style "
                        "tokenizer.json (it has none; it spaces words with its normalizer)",
                        tok_show(json_get(pre, "type"), buf, sizeof buf));
    int prepend = 0, replace = 0;
    const json_value *norm = json_get(root, "normalizer");
    if (is_null(norm))
        return tok_fail(err, errlen, path,
                        "normalizer: missing (Llama's: Prepend \"\xe2\x96\x81\" "
                        "and Replace \" \" with \"\xe2\x96\x81\")");
    if (walk_normalizer(norm, "normalizer", &prepend, &replace, path, err, errlen) < 0)
        return -1;
    if (prepend != 1 || replace != 1)
        return tok_fail(err, errlen, path,
                        "normalizer: %d Prepend \"\xe2\x96\x81\" and %d Replace "
                        "\" \" with \"\xe2\x96\x81\"; Llama's has one of each",
                        prepend, replace);
    return check_decoder(json_get(root, "decoder"), path, err, errlen);
}

/* How many ByteLevel steps the pre_tokenizer v has, and whether the last one is. */
static void count_bytelevel(const json_value *v, int *n, int *last)
{
    const json_value *list = json_get(v, "pretokenizers");
    if (tok_is_str(json_get(v, "type"), "Sequence") && list && list->type == JSON_ARRAY) {
        for (size_t i = 0; i < list->count; i++)
            count_bytelevel(&list->items[i], n, last);
        return;
    }
    *last = tok_is_str(json_get(v, "type"), "ByteLevel");
    *n += *last;
}

/* The byte-level kind's model flags, normalizer and pre_tokenizer (the decoder is ByteLevel). */
static int check_bytelevel(tok_tokenizer *t, const json_value *root, const char *path, char *err, size_t errlen)
{
    const json_value *model = json_get(root, "model"), *fallback = json_get(model, "byte_fallback");
    char buf[80];
    if (!is_null(fallback) && (fallback->type != JSON_BOOL || fallback->boolean))
        return tok_fail(err, errlen, path, "model.byte_fallback: must be false with the decoder ByteLevel");
    const json_value *ignore = json_get(model, "ignore_merges");
    if (!is_null(ignore) && ignore->type != JSON_BOOL)
        return tok_fail(err, errlen, path, "model.ignore_merges: not a boolean");
    t->ignore_merges = !is_null(ignore) && ignore->boolean;
    const json_value *norm = json_get(root, "normalizer");
    if (!is_null(norm)) {
        if (!tok_is_str(json_get(norm, "type"), "NFC"))
            return tok_fail(err, errlen, path,
                            "normalizer: type %s is not supported with a byte-level tokenizer (only null and NFC)",
                            tok_show(json_get(norm, "type"), buf, sizeof buf));
        t->nfc = 1;
    }
    const json_value *pre = json_get(root, "pre_tokenizer");
    int n = 0, last = 0;
    if (!is_null(pre))
        count_bytelevel(pre, &n, &last);
    if (n != 1 || !last) /* it is what spells the pre-tokens' bytes as the vocab does */
        return tok_fail(err, errlen, path,
                        "pre_tokenizer: a byte-level tokenizer needs exactly one ByteLevel pre-tokenizer, the "
                        "last (this one has %d%s)", n, n && !last ? ", not last" : "");
    return pretok_parse(&t->pre, pre, path, err, errlen);
}

/* The fields outside model.vocab, model.merges and added_tokens. */
static int check_json_fields(tok_tokenizer *t, const json_value *root, const char *path, char *err, size_t errlen)
{
    const json_value *model = json_get(root, "model");
    char buf[80];
    if (root->type != JSON_OBJECT)
        return tok_fail(err, errlen, path, "not a JSON object");
    if (!model || model->type != JSON_OBJECT)
        return tok_fail(err, errlen, path, "model: missing or not an object");
    const json_value *type = json_get(model, "type");
    if (!tok_is_str(type, "BPE"))
        return tok_fail(err, errlen, path,
                        "model.type: %s is not supported (only \"BPE\": sentencepiece-style or byte-level)",
                        tok_show(type, buf, sizeof buf));
    if (!is_null(json_get(model, "dropout")))
        return tok_fail(err, errlen, path, "model.dropout: must be null (BPE dropout is random)");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const json_value *v = json_get(model, affixes[i]);
        if (!is_null(v) && !tok_is_str(v, ""))
            return tok_fail(err, errlen, path,
                            "model.%s: must be null or \"\" (affixes are not supported)", affixes[i]);
    }
    const json_value *dec = json_get(root, "decoder");
    t->byte_level = tok_is_str(json_get(dec, "type"), "ByteLevel");
    return t->byte_level ? check_bytelevel(t, root, path, err, errlen) : check_spm(root, path, err, errlen);
}

/* model.vocab into the pieces (with the lengths of the added tokens that it lacks in
 * extra): ids within the model's vocab_size, none given twice, no piece twice. */
static int json_vocab(tok_tokenizer *t, const json_value *vocab, size_t extra, const char *path,
                      char *err, size_t errlen)
{
    if (!vocab || vocab->type != JSON_OBJECT || vocab->count == 0)
        return tok_fail(err, errlen, path, "model.vocab: missing or not an object of piece -> id");
    size_t total = extra;
    char buf[80];
    for (size_t i = 0; i < vocab->count; i++) {
        const json_value *v = &vocab->items[i];
        const char *key = vocab->keys[i];
        size_t n = strlen(key);
        if (v->type != JSON_NUMBER || v->number != floor(v->number))
            return tok_fail(err, errlen, path,
                            "model.vocab: \"%.60s\" maps to %s, not an integer id", key,
                            tok_show(v, buf, sizeof buf));
        if (v->number < 0 || v->number >= t->vocab_size)
            return tok_fail(err, errlen, path,
                            "model.vocab: \"%.60s\" has id %.20g, outside 0..%d "
                            "(the model's vocab_size is %d)",
                            key, v->number, t->vocab_size - 1, t->vocab_size);
        int id = (int)v->number;
        if (n == 0 || n > MAX_TOKEN_LENGTH || (!t->byte_level && memchr(key, ' ', n)))
            return tok_fail(err, errlen, path,
                            "model.vocab: piece \"%.60s\" (id %d) is empty, longer "
                            "than %d bytes, or holds a \" \" (spaces are spelled \"\xe2\x96\x81\")",
                            key, id, MAX_TOKEN_LENGTH);
        if (t->len[id])
            return tok_fail(err, errlen, path,
                            "model.vocab: id %d is given to two pieces (\"%.60s\" is the "
                            "second)", id, key);
        t->len[id] = (uint32_t)n; /* for now: unspace only shortens */
        total += n;
    }
    if (total > UINT32_MAX)
        return tok_fail(err, errlen, path, "model.vocab: %zu bytes of pieces, more than 4 GiB",
                        total);
    t->bytes = malloc(total ? total : 1);
    if (!t->bytes)
        return tok_fail(err, errlen, path, "out of memory (%zu bytes of pieces)", total);
    uint32_t off = 0;
    for (size_t i = 0; i < vocab->count; i++) {
        const char *key = vocab->keys[i];
        int id = (int)vocab->items[i].number;
        long len = unspell(t, t->bytes + off, key, strlen(key));
        if (len <= 0)
            return tok_fail(err, errlen, path,
                            "model.vocab: piece \"%.60s\" (id %d) holds a character outside the ByteLevel "
                            "alphabet (GPT-2's bytes_to_unicode)", key, id);
        t->offset[id] = off;
        t->len[id] = (uint32_t)len;
        off += t->len[id];
        int had = tok_index_piece(t, id);
        if (had >= 0)
            return tok_fail(err, errlen, path,
                            "model.vocab: piece \"%.60s\" has two ids, %d and %d", key, had, id);
    }
    return 0;
}

/* added_tokens: each an id and a content. One that model.vocab lacks decodes as its
 * content, read as the decoder reads a token (sentencepiece: "▁" is " "; byte-level: the
 * bytes its characters spell if all are of the alphabet, else its own UTF-8, as Hugging
 * Face's ByteLevel decoder has it). With pass 0, checks them and adds their lengths to
 * *extra; with pass 1, places them. */
static int json_added(tok_tokenizer *t, const json_value *added, int pass, size_t *extra,
                      const char *path, char *err, size_t errlen)
{
    if (!added || added->type != JSON_ARRAY)
        return tok_fail(err, errlen, path, "added_tokens: missing or not an array");
    uint32_t off = 0;
    for (size_t i = 0; pass == 1 && i < (size_t)t->vocab_size; i++)
        off += t->len[i];
    for (size_t i = 0; i < added->count; i++) {
        const json_value *a = &added->items[i], *content = json_get(a, "content");
        long id;
        if (json_get_int(a, "id", 0, t->vocab_size - 1, &id) < 0 || !content ||
            content->type != JSON_STRING || content->len == 0 || content->len > MAX_TOKEN_LENGTH)
            return tok_fail(err, errlen, path,
                            "added_tokens[%zu]: needs an id in 0..%d (the model's "
                            "vocab_size is %d) and a content string of 1..%d bytes",
                            i, t->vocab_size - 1, t->vocab_size, MAX_TOKEN_LENGTH);
        if (pass == 0) {
            *extra += content->len;
        } else if (t->len[id] == 0) {
            long len = unspell(t, t->bytes + off, content->string, content->len);
            if (len <= 0) { /* not all of the alphabet: its own bytes */
                memcpy(t->bytes + off, content->string, content->len);
                len = (long)content->len;
            }
            t->offset[id] = off;
            t->len[id] = (uint32_t)len;
            off += t->len[id];
        }
    }
    return 0;
}

int tok_token_id(const tok_tokenizer *t, const char *s, size_t n)
{
    int id = added_id(t->added, s, n);
    if (id >= 0 || n > MAX_TOKEN_LENGTH)
        return id;
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return -1;
    long len = unspell(t, buf, s, n);
    id = len > 0 ? tok_piece_id(t, buf, (size_t)len, "", 0) : -1;
    free(buf);
    return id;
}

/* The two pieces of merge i, "a b" or ["a", "b"], unspelled into buf; 0 or -1. */
static int merge_halves(const tok_tokenizer *t, const json_value *m, char *buf, const char **a, size_t *la,
                        const char **b, size_t *lb)
{
    const char *sa, *sb;
    size_t na, nb;
    if (m->type == JSON_STRING) {
        const char *sp = memchr(m->string, ' ', m->len);
        if (!sp || sp == m->string || sp == m->string + m->len - 1 ||
            memchr(sp + 1, ' ', m->len - (size_t)(sp + 1 - m->string)))
            return -1;
        sa = m->string, na = (size_t)(sp - m->string);
        sb = sp + 1, nb = m->len - (size_t)(sp + 1 - m->string);
    } else if (m->type == JSON_ARRAY && m->count == 2 && m->items[0].type == JSON_STRING &&
               m->items[1].type == JSON_STRING) {
        sa = m->items[0].string, na = m->items[0].len;
        sb = m->items[1].string, nb = m->items[1].len;
    } else {
        return -1;
    }
    long ka = unspell(t, buf, sa, na), kb = ka < 0 ? -1 : unspell(t, buf + ka, sb, nb);
    if (ka < 0 || kb < 0)
        return -1;
    *a = buf, *la = (size_t)ka;
    *b = buf + ka, *lb = (size_t)kb;
    return 0;
}

/* model.merges into the merge table: pair -> (rank = position, merged piece). Every piece a
 * merge names, and what it makes, must be in model.vocab. A pair listed twice keeps its
 * last rank, as Hugging Face's loader does. */
static int json_merges(tok_tokenizer *t, const json_value *merges, const char *path, char *err,
                       size_t errlen)
{
    if (!merges || merges->type != JSON_ARRAY)
        return tok_fail(err, errlen, path, "model.merges: missing or not an array");
    if (merges->count >= UINT32_MAX / 4)
        return tok_fail(err, errlen, path, "model.merges: %zu merges, too many", merges->count);
    size_t cap = 2, longest = 0;
    while (cap < 2 * merges->count)
        cap *= 2;
    for (size_t i = 0; i < merges->count; i++) {
        const json_value *m = &merges->items[i];
        size_t n = m->type == JSON_STRING ? m->len : 0;
        if (m->type == JSON_ARRAY && m->count == 2)
            n = m->items[0].len + m->items[1].len;
        longest = n > longest ? n : longest;
    }
    t->merges = malloc(cap * sizeof *t->merges);
    char *buf = malloc(longest + 1);
    if (!t->merges || !buf) {
        free(buf);
        return tok_fail(err, errlen, path, "out of memory for %zu merges", merges->count);
    }
    t->merge_mask = (uint32_t)cap - 1;
    memset(t->merges, 0xff, cap * sizeof *t->merges);
    for (size_t i = 0; i < merges->count; i++) {
        const char *a, *b;
        size_t la, lb;
        if (merge_halves(t, &merges->items[i], buf, &a, &la, &b, &lb) < 0) {
            free(buf);
            return tok_fail(err, errlen, path,
                            "model.merges[%zu]: not \"a b\" (two pieces, one space between) "
                            "or [\"a\", \"b\"]%s", i, t->byte_level ? " of the ByteLevel alphabet" : "");
        }
        int ia = lookup_str(t, a, la), ib = lookup_str(t, b, lb);
        int im = tok_piece_id(t, a, la, b, lb);
        if (ia < 0 || ib < 0 || im < 0) {
            const char *which = ia < 0   ? "its first piece"
                                : ib < 0 ? "its second piece"
                                         : "the concatenation";
            free(buf);
            return tok_fail(err, errlen, path, "model.merges[%zu]: %s is not in model.vocab", i,
                            which);
        }
        merge_rule *r = tok_merge_slot(t, ia, ib);
        *r = (merge_rule){ia, ib, im, (uint32_t)i};
    }
    free(buf);
    return 0;
}

/* The byte tokens: sentencepiece's <0xXX>, or the byte-level alphabet's characters. */
static int byte_tokens(tok_tokenizer *t, const char *path, char *err, size_t errlen)
{
    char name[8];
    for (int b = 0; b < 256; b++) {
        if (t->byte_level) {
            char c = (char)b;
            if ((t->byte_id[b] = lookup_str(t, &c, 1)) < 0) {
                unsigned cp = bytelevel_char((unsigned)b);
                return tok_fail(err, errlen, path, "model.vocab: no piece \"%c%c\" (U+%04X, byte 0x%02X): a "
                                "byte-level vocab needs all 256 of the alphabet", (char)(0xC0 | cp >> 6),
                                (char)(0x80 | (cp & 63)), cp, b);
            }
            continue;
        }
        snprintf(name, sizeof name, "<0x%02X>", b);
        if ((t->byte_id[b] = lookup_str(t, name, 6)) < 0)
            return tok_fail(err, errlen, path,
                            "model.vocab: no byte token \"%s\" (byte fallback needs all 256)", name);
    }
    if (t->byte_level)
        return 0;
    if ((t->space_id = lookup_str(t, " ", 1)) < 0)
        return tok_fail(err, errlen, path, "model.vocab: no \"\xe2\x96\x81\" piece (the space)");
    t->spm_space = 1;
    return 0;
}

int tok_load_json(tok_tokenizer *t, const char *path, json_value **out, char *err, size_t errlen)
{
    json_value *root = json_parse_file(path, MAX_JSON_SIZE, err, errlen);
    *out = NULL;
    if (!root)
        return -1;
    if (tok_load_json_tree(t, root, path, err, errlen) < 0) {
        json_free(root);
        return -1;
    }
    *out = root;
    return 0;
}

int tok_load_json_tree(tok_tokenizer *t, const json_value *root, const char *path, char *err, size_t errlen)
{
    const json_value *model = json_get(root, "model"), *added = json_get(root, "added_tokens");
    size_t extra = 0;
    if (check_json_fields(t, root, path, err, errlen) < 0 ||
        json_added(t, added, 0, &extra, path, err, errlen) < 0 ||
        json_vocab(t, json_get(model, "vocab"), extra, path, err, errlen) < 0 ||
        json_added(t, added, 1, &extra, path, err, errlen) < 0 ||
        added_parse(t, added, path, err, errlen) < 0 || byte_tokens(t, path, err, errlen) < 0 ||
        json_merges(t, json_get(model, "merges"), path, err, errlen) < 0)
        return -1;
    return 0;
}
