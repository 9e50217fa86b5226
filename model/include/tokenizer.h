/* tokenizer.h: a Llama (sentencepiece BPE) tokenizer from either of two files, behind one
 * type: llama2.c's tokenizer.bin, encoding exactly as llama2.c's run.c encode() does, or a
 * Hugging Face tokenizer.json of the Llama flavour, encoding exactly as Hugging Face's
 * tokenizers library does; both in O(n log n), with one merge loop.
 *
 * tokenizer.bin: int32 max_token_length, then for each of the model's vocab_size tokens:
 * float score, int32 len, len bytes (the piece, no terminator). Ids 0, 1, 2 are <unk>,
 * BOS and EOS; ids 3..258 are the byte tokens <0x00>..<0xFF> that byte fallback uses. A
 * pair of adjacent symbols merges if its concatenation is a piece, the best score first.
 *
 * tokenizer.json: model.type "BPE" with byte_fallback true, model.vocab (piece -> id, every
 * id below the model's vocab_size; spaces spelled U+2581 "▁"), model.merges ("a b" or
 * ["a", "b"]; a pair merges only if listed, the earlier listed first), the normalizer
 * Prepend "▁" + Replace " " -> "▁", no pre_tokenizer, the decoder Replace "▁" -> " ",
 * ByteFallback, Fuse, Strip, and added_tokens with <s> = 1 (BOS) and </s> = 2 (EOS); the
 * vocab must hold "▁" and all 256 byte tokens <0xXX> (anywhere). Anything else is refused
 * with a message naming the field. Ids that neither model.vocab nor added_tokens name decode
 * as nothing. Text is not searched for added tokens: "<s>" in a text is three characters,
 * as sentencepiece (and tokenizer.bin) have it.
 *
 * A loaded tokenizer is read-only: every function may be called from many threads. */
#ifndef QLORA_TOKENIZER_H
#define QLORA_TOKENIZER_H

#include <stddef.h>

#define TOK_BOS 1
#define TOK_EOS 2

typedef struct tok_tokenizer tok_tokenizer;

/* Loads path for a model of vocab_size tokens (at least 259: the specials and the byte
 * tokens): tokenizer.json if the name ends in ".json", else tokenizer.bin. On any error
 * (missing, malformed, an id out of range, tokenizer.bin truncated or with trailing bytes,
 * a field of tokenizer.json this code does not implement...) returns -1 with a message
 * naming the file (and the field) in err. */
int tok_load(tok_tokenizer **t, const char *path, int vocab_size, char *err, size_t errlen);
/* The tokenizer of a model directory: DIR/tokenizer.json when it exists, else
 * DIR/tokenizer.bin; as tok_load. Every caller loads a model's tokenizer through this. */
int tok_load_dir(tok_tokenizer **t, const char *dir, int vocab_size, char *err, size_t errlen);
void tok_free(tok_tokenizer *t);
int tok_vocab_size(const tok_tokenizer *t);

/* Encodes the n bytes of text: BOS first if bos; if n > 0, the dummy-prefix space, then
 * each UTF-8 codepoint (a lead byte and up to 3 continuation bytes, as run.c groups even
 * invalid UTF-8) as its piece or else as its byte tokens; then merges of adjacent pairs,
 * the best rank first and the leftmost among equal ranks (tokenizer.bin: pairs whose
 * concatenation is a piece, ranked by its score, as run.c's encode(text, bos, eos);
 * tokenizer.json: the pairs of its merges, ranked by position, as Hugging Face's BPE, with
 * its normalizer's spaces: a " " or "▁" of the text is the "▁" piece); then EOS if eos.
 * Unlike run.c, a NUL byte does not end the text: it is one more byte. The text is encoded
 * in chunks of a few KiB cut where no merge can cross, with the same ids as whole: memory
 * goes with the ids and the chunk (about 30 bytes per byte of it). A stretch of more than
 * TOK_MAX_RUN bytes without such a cut (one letter repeated whose pair is a piece; never
 * natural text, which has one at every space or newline) is refused rather than encoded in
 * 30 MiB per MiB. *ids is malloc'd (the caller frees it), *n_ids its length. Returns
 * TOK_OK, TOK_LONG_RUN, or TOK_NOMEM if out of memory (or n >= 4 GiB). */
enum { TOK_OK = 0, TOK_NOMEM = -1, TOK_LONG_RUN = -2 };
#define TOK_MAX_RUN ((size_t)1 << 20)
int tok_encode(const tok_tokenizer *t, const char *text, size_t n, int bos, int eos, int **ids,
               size_t *n_ids);

/* What a status of tok_encode means, as a phrase for an error message. */
const char *tok_strerror(int status);

/* The most bytes of text that one id of tok_encode can stand for (the longest piece, with
 * each of its spaces counted as the 3 bytes of a "\xe2\x96\x81" where the text may spell
 * it so): a text of n bytes encodes to at least n / tok_max_token_bytes ids, which bounds a
 * text against a context before it is encoded. */
size_t tok_max_token_bytes(const tok_tokenizer *t);

/* The text of token id that follows token prev, as run.c's decode() (for tokenizer.json
 * the same, which is what its decoder makes of a text after BOS): after BOS (prev == 1) a
 * leading space is dropped, and a byte token <0xXX> gives that one raw byte. Returns a
 * pointer into the tokenizer (valid while it lives; not NUL-terminated, pieces may hold any
 * byte) with its length in *len, or NULL if id is out of range. */
const char *tok_decode(const tok_tokenizer *t, int prev, int id, size_t *len);

/* The concatenated decode of ids[0..n), ids[0] following prev, as a malloc'd NUL-terminated
 * string (the text may itself hold NUL bytes). NULL if an id is out of range or out of memory. */
char *tok_decode_all(const tok_tokenizer *t, int prev, const int *ids, size_t n);

#endif
