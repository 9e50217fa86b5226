/* tokenizer_bytelevel.c: GPT-2's bytes_to_unicode alphabet, in which byte-level
 * tokenizer.json files spell their pieces: each byte is one character, the printable
 * Latin-1 ones ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) themselves, the other 68 U+0100 onward in
 * byte order (so " " is "Ġ" U+0120). Pieces are kept as the bytes they stand for, so the
 * encoder works on the text's own bytes and decoding is concatenation. */
#include "tokenizer_bytelevel.h"

static int printable(unsigned b)
{
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

/* The 68 others, in byte order: 0x00..0x20 (n 0..32), 0x7F..0xA0 (33..66), 0xAD (67). */
unsigned bytelevel_char(unsigned b)
{
    if (printable(b))
        return b;
    return 256 + (b <= 0x20 ? b : b <= 0xA0 ? 33 + (b - 0x7F) : 67);
}

/* The byte that character cp spells, or -1. */
static int byte_of(unsigned cp)
{
    if (cp < 256)
        return printable(cp) ? (int)cp : -1;
    unsigned n = cp - 256;
    return n <= 32 ? (int)n : n <= 66 ? (int)(0x7F + n - 33) : n == 67 ? 0xAD : -1;
}

long bytelevel_unspell(char *out, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = (unsigned char)s[i], cp;
        if (c < 0x80) {
            cp = c, i += 1;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < n && ((unsigned char)s[i + 1] & 0xC0) == 0x80) {
            cp = (c & 0x1F) << 6 | ((unsigned char)s[i + 1] & 0x3F), i += 2;
        } else {
            return -1; /* the alphabet lies below U+0800: two bytes at most */
        }
        int b = byte_of(cp);
        if (b < 0)
            return -1;
        out[k++] = (char)b;
    }
    return (long)k;
}
