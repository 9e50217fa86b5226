/* tokenizer.h: the llama2.c BPE tokenizer (tokenizer.bin), encoding exactly as llama2.c's
 * run.c encode() does, in O(n log n) instead of run.c's quadratic merge loop.
 *
 * tokenizer.bin: int32 max_token_length, then for each of the model's vocab_size tokens:
 * float score, int32 len, len bytes (the piece, no terminator). Ids 0, 1, 2 are <unk>,
 * BOS and EOS; ids 3..258 are the byte tokens <0x00>..<0xFF> that byte fallback uses.
 *
 * A loaded tokenizer is read-only: every function may be called from many threads. */
#ifndef QLORA_TOKENIZER_H
#define QLORA_TOKENIZER_H

#include <stddef.h>

#define TOK_BOS 1
#define TOK_EOS 2

typedef struct tok_tokenizer tok_tokenizer;

/* Loads path for a model of vocab_size tokens (at least 259: the specials and the byte
 * tokens). On any error (missing, truncated, a len <= 0 or > max_token_length, trailing
 * bytes...) returns -1 with a message naming the file in err. */
int tok_load(tok_tokenizer **t, const char *path, int vocab_size, char *err, size_t errlen);
void tok_free(tok_tokenizer *t);
int tok_vocab_size(const tok_tokenizer *t);

/* Encodes the n bytes of text as run.c's encode(text, bos, eos): BOS first if bos, the
 * dummy-prefix " " token if n > 0, each UTF-8 codepoint as its piece or else as byte tokens
 * (byte + 3), then merges of the adjacent pair whose concatenation is a piece, best score
 * first and leftmost among equal scores, then EOS if eos. Unlike run.c, a NUL byte does not
 * end the text: it is one more byte. *ids is malloc'd (the caller frees it), *n_ids its
 * length. Returns 0, or -1 if out of memory (or n >= 4 GiB). */
int tok_encode(const tok_tokenizer *t, const char *text, size_t n, int bos, int eos, int **ids,
               size_t *n_ids);

/* The text of token id that follows token prev, as run.c's decode(): after BOS (prev == 1)
 * a leading space is dropped, and a byte token <0xXX> gives that one raw byte. Returns a
 * pointer into the tokenizer (valid while it lives; not NUL-terminated, pieces may hold any
 * byte) with its length in *len, or NULL if id is out of range. */
const char *tok_decode(const tok_tokenizer *t, int prev, int id, size_t *len);

/* The concatenated decode of ids[0..n), ids[0] following prev, as a malloc'd NUL-terminated
 * string (the text may itself hold NUL bytes). NULL if an id is out of range or out of memory. */
char *tok_decode_all(const tok_tokenizer *t, int prev, const int *ids, size_t n);

#endif
