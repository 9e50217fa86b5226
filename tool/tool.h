/* tool.h: what the qlora-tool subcommands share. Each subcommand is a row of the command
 * table in main.c; usage errors exit 2 with one line on stderr, naming the problem. */
#ifndef QLORA_TOOL_H
#define QLORA_TOOL_H

#include <stddef.h>

#include "quant.h"

#define EXIT_USAGE 2

typedef int (*tool_cmd_fn)(int argc, char **argv);

/* Prints "qlora-tool CMD: message" on stderr and returns EXIT_USAGE. */
int tool_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Strict number parsing: the whole string, within [lo, hi]; -1 on error. */
int tool_parse_int(const char *s, long lo, long hi, int *out);
/* Reads all of a stream into a malloc'd buffer; -1 on error. */
int tool_read_all(void *stream, unsigned char **buf, size_t *len);

int cmd_roundtrip(int argc, char **argv);
int cmd_codes(int argc, char **argv);
int cmd_dynamic_map(int argc, char **argv);

#endif
