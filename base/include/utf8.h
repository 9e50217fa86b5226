/* utf8.h: what is valid UTF-8, decided in one place for everything that sends, logs or
 * tokenizes text: every msgpack str the daemon packs (daemon/mp.c), the text pieces
 * generate holds back (daemon/infer.c), the escaping of log lines (daemon/log.c), and
 * the U+FFFD that a byte-level tokenizer reads invalid UTF-8 as (model/tokenizer.c). */
#ifndef QLORA_UTF8_H
#define QLORA_UTF8_H

#include <stddef.h>

/* The character that starts p[0..n), n > 0: its length when it is well-formed (Unicode's
 * table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF), else minus the
 * length of its maximal invalid subpart (at least 1: the bytes one U+FFFD replaces, as
 * Python's and the WHATWG decoders count them). *cut (if not NULL) is set when the
 * subpart is invalid only because p ends inside a character that could still be whole. */
static inline int utf8_char(const unsigned char *p, size_t n, int *cut)
{
    unsigned b = p[0], lo = 0x80, hi = 0xBF;
    if (cut)
        *cut = 0;
    if (b < 0x80)
        return 1;
    if (b < 0xC2 || b > 0xF4)
        return -1;
    int need = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    if (b == 0xE0)
        lo = 0xA0;
    else if (b == 0xED)
        hi = 0x9F;
    else if (b == 0xF0)
        lo = 0x90;
    else if (b == 0xF4)
        hi = 0x8F;
    for (int i = 1; i < need; i++, lo = 0x80, hi = 0xBF) {
        if ((size_t)i >= n) {
            if (cut)
                *cut = 1;
            return -i;
        }
        if (p[i] < lo || p[i] > hi)
            return -i;
    }
    return need;
}

/* How many bytes at the end of s[0..n) are the start of a character cut short (0..3):
 * text that a later piece may still complete. */
static inline size_t utf8_cut_tail(const char *s, size_t n)
{
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        int cut, len = utf8_char((const unsigned char *)s + n - back, back, &cut);
        if (cut)
            return back;
        if (len != -1 || ((unsigned char)s[n - back] & 0xC0) != 0x80)
            return 0; /* a whole character or an invalid lead: nothing to wait for */
    }
    return 0;
}

#endif
