/* tool.h: what the qlora-tool subcommands share. Each subcommand is a row of the command
 * table in main.c; usage errors exit 2 with one line on stderr, naming the problem. */
#ifndef QLORA_TOOL_H
#define QLORA_TOOL_H

#include <stddef.h>

#include "lora.h"
#include "model.h"
#include "quant.h"
#include "tokenizer.h"
#include "train.h"

#define EXIT_USAGE 2

typedef int (*tool_cmd_fn)(int argc, char **argv);

/* Prints "qlora-tool CMD: message" on stderr and returns EXIT_USAGE. */
int tool_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Strict number parsing: the whole string, within [lo, hi]; -1 on error. */
int tool_parse_int(const char *s, long lo, long hi, int *out);
/* Reads all of a stream into a malloc'd buffer; -1 on error. */
int tool_read_all(void *stream, unsigned char **buf, size_t *len);

/* --model DIR --quant F --block B --no-double-quant --cache-dir DIR --no-cache, shared by
 * the model commands. */
typedef struct {
    const char *dir;
    qt_spec spec;
    int no_dq;
    int quant_set;          /* --quant given; else a GGUF file loads native */
    const char *cache_dir;  /* --cache-dir; NULL: llama_cache_default_dir */
    int no_cache;           /* --no-cache */
} tool_model_opts;
/* Consumes argv[*i] (and its value) if it is a model option: returns 1, with *err set to
 * a usage exit status if its value is bad; returns 0 for any other argument. */
int tool_model_option(const char *cmd, int argc, char **argv, int *i, tool_model_opts *o, int *err);
/* Loads o's model in spec through the model cache of o's options (every load of a base
 * model, the teacher's too); -1 with a message. */
int tool_load_weights(const tool_model_opts *o, qt_spec spec, llama_model *m, char *err, size_t errlen);
/* Loads the model (and its tokenizer, tok_load_dir, when tok is not NULL); nonzero exit status on error. */
int tool_load_model(const char *cmd, tool_model_opts *o, llama_model *m, tok_tokenizer **tok);

/* A text file tokenized (BOS first); an unreadable or empty file is a usage error naming
 * flag and path. */
int tool_tokenize_file(const char *cmd, const char *flag, const char *path, const tok_tokenizer *tok, int **ids,
                       size_t *n);
/* A JSONL file of examples (sft.h; conversations rendered with chat, which may be NULL)
 * into d, cut to h's seq_len + 1, with *is_sft 1; a file
 * that is not JSONL leaves d empty with *is_sft 0 (plain text: tool_tokenize_file). */
int tool_sft_file(const char *cmd, const char *flag, const char *path, const tok_tokenizer *tok, const train_hyper *h,
                  const sft_chat *chat, sft_data *d, int *is_sft);

/* Loads a PEFT adapter file for model m, refusing one trained on another base. */
int tool_load_adapter(const char *cmd, const char *path, const llama_model *m, llama_lora *ad);

int cmd_roundtrip(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_make_model(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_codes(int argc, char **argv);
int cmd_dynamic_map(int argc, char **argv);

#endif
