/* tokenizer_impl.h: the inside of a tok_tokenizer, shared by tokenizer.c (the table of
 * pieces, tokenizer.bin, the encoder and decoder) and tokenizer_json.c (tokenizer.json).
 * Not for other users: they see tokenizer.h. */
#ifndef QLORA_TOKENIZER_IMPL_H
#define QLORA_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define MAX_TOKEN_LENGTH (1 << 16)   /* far above any real vocabulary; keeps sums in range */
#define SPM_SPACE "\xe2\x96\x81"     /* U+2581 "▁": how tokenizer.json spells a space */

/* tokenizer.json's merges, keyed on the pair of ids; a < 0 marks an empty slot. */
typedef struct {
    int32_t a, b, merged;
    uint32_t rank;
} merge_rule;

/* Both formats load into one table of pieces, spaces spelled " ". */
struct tok_tokenizer {
    int vocab_size;
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

/* Fills t (from tok_new: vocab_size empty pieces) from the tokenizer.json at path. */
int tok_load_json(tok_tokenizer *t, const char *path, char *err, size_t errlen);

#endif
