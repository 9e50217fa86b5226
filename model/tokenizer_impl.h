/* tokenizer_impl.h: the inside of a tok_tokenizer, shared by tokenizer.c (the table of
 * pieces, tokenizer.bin, the encoder and decoder), tokenizer_json.c (tokenizer.json's
 * model, normalizer and decoder), pretokenize.c (its pre_tokenizer), added_tokens.c (its
 * added_tokens, found in the text) and tokenizer_config.c (what encoding adds, where
 * generation stops). Not for other users: they see tokenizer.h. */
#ifndef QLORA_TOKENIZER_IMPL_H
#define QLORA_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "tokenizer.h"

#define MAX_TOKEN_LENGTH (1 << 16)   /* far above any real vocabulary; keeps sums in range */
#define SPM_SPACE "\xe2\x96\x81"     /* U+2581 "▁": how tokenizer.json spells a space */

/* tokenizer.json's merges, keyed on the pair of ids; a < 0 marks an empty slot. */
typedef struct {
    int32_t a, b, merged;
    uint32_t rank;
} merge_rule;

typedef struct tok_pretok tok_pretok;
typedef struct tok_added tok_added;

#define TOK_MAX_TEMPLATE 8 /* ids a template may put before or after the text */

/* Both formats load into one table of pieces as bytes: spaces spelled " " (tokenizer.bin,
 * sentencepiece-kind tokenizer.json), or the bytes that byte-level pieces stand for. */
struct tok_tokenizer {
    int vocab_size;
    int byte_level;     /* tokenizer.json of the byte-level kind: one initial symbol a byte */
    int ignore_merges;  /* a pre-token that is a piece is that piece, unmerged */
    int nfc;            /* the normalizer NFC */
    tok_pretok *pre;    /* the pre_tokenizer; NULL: none (the text is one pre-token) */
    tok_added *added;   /* the added_tokens to find in the text; NULL: none */
    uint8_t *special;   /* per id: 1 for a special token */
    int bos_id, eos_id; /* -1: none */
    int32_t prefix[TOK_MAX_TEMPLATE], suffix[TOK_MAX_TEMPLATE]; /* TOK_ADD_SPECIAL adds */
    int n_prefix, n_suffix;
    int *stop;          /* where generation stops */
    size_t n_stop;
    size_t added_max;   /* the longest added token's content; SIZE_MAX if one strips spaces */
    int max_len;        /* longest piece: a longer concatenation cannot be in the vocab */
    int space_id;       /* " ", the dummy prefix; -1 if the vocab lacks it */
    int spm_space;      /* tokenizer.json: "▁" in the text is a space, as its normalizer has it */
    int32_t byte_id[256]; /* the byte fallback token of each byte */
    float *score;       /* tokenizer.bin: as in the file; the merge loop uses rank */
    uint32_t *rank;     /* tokenizer.bin: 0 for the best score; equal scores share a rank */
    uint32_t *offset;   /* piece i is bytes[offset[i] .. offset[i] + len[i]) */
    uint32_t *len;      /* 0: no piece (tokenizer.json may leave ids unused) */
    uint32_t *hash;     /* FNV-1a of each piece: a pair's hash continues from its left piece */
    char *bytes;
    int32_t *table;     /* open addressing on hash, ids, -1 empty */
    uint32_t mask;
    merge_rule *merges; /* tokenizer.json: open addressing on the pair; NULL for tokenizer.bin */
    uint32_t merge_mask;
    char byte_str[256]; /* byte_str[b] == b: what byte tokens decode to */
    /* bit a * 256 + b: some piece holds byte a followed by byte b. Where the pieces on the
     * two sides of a point of the text end and begin with a pair no piece holds, no merge
     * can ever cross that point: the encoder cuts the text there (tokenizer.c). */
    uint8_t bigram[256 * 256 / 8];
};

/* "PATH: " and the message into err; returns -1. */
int tok_fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The id of the piece a||b (b may be "", lb 0), or -1. */
int tok_piece_id(const tok_tokenizer *t, const char *a, size_t la, const char *b, size_t lb);
/* Indexes piece id (its bytes, offset and len set). Returns -1, or the id that already has
 * the same bytes (then id is left out: the first one wins). */
int tok_index_piece(tok_tokenizer *t, int id);
/* The merge table's slot for the pair a, b: the pair's rule, or the empty slot it would take. */
merge_rule *tok_merge_slot(const tok_tokenizer *t, int32_t a, int32_t b);

/* Fills t (from tok_new: vocab_size empty pieces) from the tokenizer.json at path; its
 * root, kept for tok_load_config, into *root (the caller json_frees it). */
int tok_load_json(tok_tokenizer *t, const char *path, json_value **root, char *err, size_t errlen);
/* The same from a tree already parsed (tokenizer_gguf.c builds one); path names it. */
int tok_load_json_tree(tok_tokenizer *t, const json_value *root, const char *path, char *err, size_t errlen);
/* The byte a sentencepiece byte token "<0xXX>" (p[0..n)) stands for, or -1. */
int tok_byte_token(const char *p, size_t n);
/* tokenizer.bin's ranking of t->score into t->rank (run.c's order); -1 if out of memory. */
int tok_rank_scores(tok_tokenizer *t);

/* ---- tokenizer_gguf.c ---- */
/* Fills t (from tok_new) from the tokenizer.* keys of the GGUF file at path (see
 * tokenizer_gguf.c): the pieces, merges or scores, added tokens, and what encoding adds and
 * where generation stops. */
int tok_load_gguf(tok_tokenizer *t, const char *path, char *err, size_t errlen);

/* ---- tokenizer_config.c ---- */
/* The post_processor of root (NULL for tokenizer.bin: BOS first), tokenizer_config.json,
 * config.json and generation_config.json in dir (each if it exists) into t's bos_id,
 * eos_id, prefix, suffix and stop. */
int tok_load_config(tok_tokenizer *t, const json_value *root, const char *path, const char *dir, char *err,
                    size_t errlen);
/* Adds id to where generation stops (once); -1 if out of memory. */
int tok_add_stop(tok_tokenizer *t, int id);

/* ---- pretokenize.c ---- */
/* The pre_tokenizer v (not null) of the file at path; -1 with a message naming the field. */
int pretok_parse(tok_pretok **out, const json_value *v, const char *path, char *err, size_t errlen);
void pretok_free(tok_pretok *p);
/* Called with each pre-token in order; nonzero stops the run with that status. */
typedef int (*pretok_fn)(void *ctx, const char *s, size_t n);
/* Cuts s[0..n) (valid UTF-8) into pre-tokens as Hugging Face's pre-tokenizer does. Returns
 * 0, fn's first nonzero status, or TOK_NOMEM. */
int pretok_run(const tok_pretok *p, const char *s, size_t n, pretok_fn fn, void *ctx);

/* ---- added_tokens.c ---- */
/* The added_tokens of root (an array, checked) into t->added, t->special and t->added_max;
 * the pieces of those model.vocab lacks were placed by tokenizer_json.c. */
int added_parse(tok_tokenizer *t, const json_value *added, const char *path, char *err, size_t errlen);
void added_free(tok_added *a);
/* Called with each stretch of text between added tokens (id -1) and each added token found
 * (its id, and the text it covers); nonzero stops the run with that status. */
typedef int (*added_fn)(void *ctx, const char *s, size_t n, int id);
/* Cuts s[0..n) at the added tokens found in it as Hugging Face's AddedVocabulary does
 * (special ones left as text if split_special). Returns 0 or fn's first nonzero status. */
int added_run(const tok_added *a, const char *s, size_t n, int split_special, added_fn fn, void *ctx);

/* The id of an added token of content s[0..n), or -1. */
int added_id(const tok_added *a, const char *s, size_t n);

/* Oniguruma initialized (once, for every thread): 1, or 0 if it would not. */
int tok_onig_ready(void);

/* ---- tokenizer_json.c ---- */
/* The id of token content s[0..n) as Hugging Face's token_to_id: an added token's, else the
 * model.vocab piece's (spelled as in the file); -1 if none. */
int tok_token_id(const tok_tokenizer *t, const char *s, size_t n);
int tok_is_str(const json_value *v, const char *s);
/* A value for a message: a string quoted and cut short, or its JSON type. */
const char *tok_show(const json_value *v, char *buf, size_t n);

#endif
