/* tokenizer.h: a BPE tokenizer from either of two files, behind one type: llama2.c's
 * tokenizer.bin, encoding exactly as llama2.c's run.c encode() does, or a Hugging Face
 * tokenizer.json of the two BPE kinds below, encoding exactly as Hugging Face's tokenizers
 * library does (and adding BOS/EOS as transformers' AutoTokenizer does); all in
 * O(n log n), with one merge loop.
 *
 * tokenizer.bin: int32 max_token_length, then for each of the model's vocab_size tokens:
 * float score, int32 len, len bytes (the piece, no terminator). Ids 0, 1, 2 are <unk>,
 * BOS and EOS; ids 3..258 are the byte tokens <0x00>..<0xFF> that byte fallback uses. A
 * pair of adjacent symbols merges if its concatenation is a piece, the best score first.
 * Encoding adds BOS; generation stops at BOS or EOS, as run.c's.
 *
 * tokenizer.json, model.type "BPE" (model.vocab: piece -> id, every id below the model's
 * vocab_size; model.merges "a b" or ["a", "b"], a pair merges only if listed, the earlier
 * listed first; no dropout, no affixes), of one of two kinds:
 * - sentencepiece (Llama 2, Mistral): byte_fallback true, spaces spelled U+2581 "▁", the
 *   normalizer Prepend "▁" + Replace " " -> "▁", no pre_tokenizer, the decoder Replace
 *   "▁" -> " ", ByteFallback, Fuse, Strip; the vocab holds "▁" and all 256 byte tokens
 *   <0xXX>. Text that is not valid UTF-8 goes in as its bytes (byte fallback spells them).
 * - byte-level (GPT-2, Llama 3, Qwen): byte_fallback false, pieces spelled in GPT-2's
 *   bytes_to_unicode alphabet (all 256 of its characters in the vocab), the decoder
 *   ByteLevel, model.ignore_merges (a pre-token that is itself a piece is one id) as the
 *   file says; the normalizer null or NFC (utf8proc); the pre_tokenizer one ByteLevel (its
 *   add_prefix_space; use_regex: GPT-2's regex), alone or last in a Sequence after Splits
 *   (pattern Regex, compiled once by Oniguruma with the syntax and options Hugging Face's
 *   onig crate uses, or String; behavior Removed, Isolated, MergedWithPrevious,
 *   MergedWithNext or Contiguous; invert). Invalid UTF-8 in a text is read as U+FFFD, one
 *   for each maximal invalid subpart (as Python, Rust and node decode bytes), before
 *   anything else.
 * Both: added_tokens (id, content; special, lstrip, rstrip, single_word; normalized must be
 * false) are found in the text first, leftmost and then longest, as Hugging Face's
 * AddedVocabulary does; the text between them is normalized and pre-tokenized apart. The
 * post_processor (null, ByteLevel, TemplateProcessing whose single is special tokens
 * around $A, or a Sequence of these) says what encoding adds; tokenizer_config.json beside
 * the file (if any) names bos_token and eos_token, and for a tokenizer_class of the Llama
 * family (LlamaTokenizer[Fast], CodeLlama, Gemma) its add_bos_token (default true) and
 * add_eos_token (default false) replace the template, as transformers' LlamaTokenizerFast
 * does. Anything else (another model, normalizer, pre-tokenizer, decoder or
 * post_processor type, a field these do not implement) is refused with a message naming
 * the file and the field. Ids that neither model.vocab nor added_tokens name decode as
 * nothing.
 *
 * Generation stops at the ids of the model directory's generation_config.json
 * eos_token_id (an id or a list), else config.json's, else the tokenizer's eos token
 * (tokenizer.bin: BOS and EOS as run.c; plus any config.json names).
 *
 * A loaded tokenizer is read-only: every function may be called from many threads. */
#ifndef QLORA_TOKENIZER_H
#define QLORA_TOKENIZER_H

#include <stddef.h>

typedef struct tok_tokenizer tok_tokenizer;

/* Loads path for a model of vocab_size tokens (at least 259: the specials and the byte
 * tokens): tokenizer.json if the name ends in ".json" (with tokenizer_config.json,
 * config.json and generation_config.json from its directory when they exist), else
 * tokenizer.bin (with config.json and generation_config.json beside it). On any error
 * (missing, malformed, an id out of range, tokenizer.bin truncated or with trailing bytes,
 * a field this code does not implement...) returns -1 with a message naming the file (and
 * the field) in err. */
int tok_load(tok_tokenizer **t, const char *path, int vocab_size, char *err, size_t errlen);
/* The tokenizer of a model directory: DIR/tokenizer.json when it exists, else
 * DIR/tokenizer.bin; as tok_load. Every caller loads a model's tokenizer through this. */
int tok_load_dir(tok_tokenizer **t, const char *dir, int vocab_size, char *err, size_t errlen);
void tok_free(tok_tokenizer *t);
int tok_vocab_size(const tok_tokenizer *t);

/* The BOS and EOS ids (tokenizer_config.json's bos_token and eos_token; tokenizer.bin: 1
 * and 2), or -1 when the tokenizer has none. */
int tok_bos_id(const tok_tokenizer *t);
int tok_eos_id(const tok_tokenizer *t);
/* The ids at which generation stops (see above), *n of them (at least one unless the
 * files name none). */
const int *tok_stop_ids(const tok_tokenizer *t, size_t *n);
/* Whether id is a special token: an added token with special (tokenizer.bin: BOS, EOS). */
int tok_is_special(const tok_tokenizer *t, int id);

/* tok_encode's flags. TOK_ADD_SPECIAL: add what the post-processor adds (BOS for Llama 2;
 * Hugging Face's add_special_tokens). TOK_SPLIT_SPECIAL: special tokens written in the text
 * are text, not their ids (for untrusted text; Hugging Face's split_special_tokens); added
 * tokens that are not special are still found. */
enum { TOK_ADD_SPECIAL = 1, TOK_SPLIT_SPECIAL = 2 };

/* Encodes the n bytes of text. tokenizer.bin: if n > 0, the dummy-prefix space, then each
 * UTF-8 codepoint (a lead byte and up to 3 continuation bytes, as run.c groups even invalid
 * UTF-8) as its piece or else as its byte tokens, then merges of adjacent pairs whose
 * concatenation is a piece, the best score first and the leftmost among equal scores, as
 * run.c's encode(text, bos, 0). tokenizer.json: as Hugging Face's tokenizers (see above);
 * its merge loop is the same, with the ranks of merges. Unlike run.c, a NUL byte does not
 * end the text: it is one more byte. Text is encoded in chunks of a few KiB cut where no
 * merge can cross (and, for byte-level files, at every pre-token), with the same ids as
 * whole: memory goes with the ids and the chunk (about 30 bytes per byte of it). A stretch
 * of more than TOK_MAX_RUN bytes without such a cut (one letter repeated whose pair is a
 * piece; never natural text, which has one at every space or newline) is refused rather
 * than encoded in 30 MiB per MiB. *ids is malloc'd (the caller frees it), *n_ids its
 * length. Returns TOK_OK, TOK_LONG_RUN, or TOK_NOMEM if out of memory (or n >= 4 GiB). */
enum { TOK_OK = 0, TOK_NOMEM = -1, TOK_LONG_RUN = -2 };
#define TOK_MAX_RUN ((size_t)1 << 20)
int tok_encode(const tok_tokenizer *t, const char *text, size_t n, int flags, int **ids, size_t *n_ids);

/* What a status of tok_encode means, as a phrase for an error message. */
const char *tok_strerror(int status);

/* The most bytes of text that one id of tok_encode can stand for (the longest piece or
 * added token, with each of its spaces counted as the 3 bytes of a "\xe2\x96\x81" where the
 * text may spell it so, and times 3 where NFC may compose 3 bytes into 1): a text of n
 * bytes encodes to at least n / tok_max_token_bytes ids, which bounds a text against a
 * context before it is encoded. SIZE_MAX when an added token strips the spaces around it
 * (lstrip, rstrip): then no bound holds. */
size_t tok_max_token_bytes(const tok_tokenizer *t);

/* The bytes of token id that follows token prev (-1: none, the start of a text), as
 * run.c's decode() and Hugging Face's decoders: for the sentencepiece kinds, a leading
 * space is dropped at the start or after BOS (run.c's rule; what Hugging Face's Strip
 * decoder does to the start of a text whose leading specials are skipped), and a byte
 * token <0xXX> gives that one raw byte; for byte-level files, the piece's bytes, which may
 * end or begin inside a UTF-8 character (bytes reassembled across tokens: a stream holds
 * back an incomplete character until the next token completes it). A special token gives
 * its content (tokenizer.bin: its piece): callers that hide them test tok_is_special.
 * Returns a pointer into the tokenizer (valid while it lives; not NUL-terminated, pieces
 * may hold any byte) with its length in *len, or NULL if id is out of range. */
const char *tok_decode(const tok_tokenizer *t, int prev, int id, size_t *len);

/* The concatenated decode of ids[0..n), ids[0] following prev, as a malloc'd NUL-terminated
 * string (the text may itself hold NUL bytes, and invalid UTF-8 where the ids cut a
 * character). NULL if an id is out of range or out of memory. */
char *tok_decode_all(const tok_tokenizer *t, int prev, const int *ids, size_t n);

#endif
