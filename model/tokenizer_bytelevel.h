/* tokenizer_bytelevel.h: GPT-2's byte-to-character alphabet (tokenizer_bytelevel.c). */
#ifndef QLORA_TOKENIZER_BYTELEVEL_H
#define QLORA_TOKENIZER_BYTELEVEL_H

#include <stddef.h>

/* The character (a codepoint below U+0144) that spells byte b. */
unsigned bytelevel_char(unsigned b);
/* The bytes that s[0..n), spelled in the alphabet, stands for, into out (room for n);
 * their number, or -1 if s holds a character outside the alphabet. */
long bytelevel_unspell(char *out, const char *s, size_t n);

#endif
