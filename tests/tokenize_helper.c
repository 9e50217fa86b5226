/* tokenize_helper.c: the tokenizer for the Python tests (test_tokenizer_json.py,
 * test_tokenizer_hf.py).
 *
 * usage: tokenize_helper PATH VOCAB_SIZE [FLAGS]
 * PATH is a tokenizer file (tok_load) or a model directory (tok_load_dir). A load error is
 * printed on stderr with exit status 2. Otherwise stdin holds texts, each as its byte
 * length in decimal, a newline, then the bytes; for each, one line on stdout, tab-separated:
 * the ids of tok_encode(text, FLAGS, default TOK_ADD_SPECIAL) separated by spaces; the hex
 * of tok_decode_all of the ids after the leading special tokens, following the last of
 * them; the hex of the decode of all the ids (from the start, -1); the hex of the decode of
 * the ids that are not special (from the start). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "tokenizer.h"

/* The hex of the decode of ids[0..n) after prev (lengths summed: the text may hold NUL). */
static void put_decode(const tok_tokenizer *t, int prev, const int *ids, size_t n)
{
    putchar('\t');
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *p = tok_decode(t, i ? ids[i - 1] : prev, ids[i], &len);
        for (size_t k = 0; p && k < len; k++)
            printf("%02x", (unsigned char)p[k]);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: tokenize_helper PATH VOCAB_SIZE [FLAGS]\n");
        return 1;
    }
    char err[1024];
    tok_tokenizer *t;
    struct stat st;
    int vocab = atoi(argv[2]), flags = argc == 4 ? atoi(argv[3]) : TOK_ADD_SPECIAL;
    int rc = stat(argv[1], &st) == 0 && S_ISDIR(st.st_mode)
                 ? tok_load_dir(&t, argv[1], vocab, err, sizeof err)
                 : tok_load(&t, argv[1], vocab, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    size_t n;
    while (scanf("%zu", &n) == 1 && getchar() == '\n') {
        char *text = malloc(n ? n : 1);
        int *ids, *plain;
        size_t n_ids, k = 0, m = 0;
        if (!text || fread(text, 1, n, stdin) != n || tok_encode(t, text, n, flags, &ids, &n_ids) < 0 ||
            !(plain = malloc((n_ids + 1) * sizeof *plain))) {
            fprintf(stderr, "tokenize_helper: short input or out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < n_ids; i++) {
            printf(i ? " %d" : "%d", ids[i]);
            if (!tok_is_special(t, ids[i]))
                plain[m++] = ids[i];
        }
        while (k < n_ids && tok_is_special(t, ids[k]))
            k++;
        put_decode(t, k ? ids[k - 1] : -1, ids + k, n_ids - k);
        put_decode(t, -1, ids, n_ids);
        put_decode(t, -1, plain, m);
        putchar('\n');
        free(plain);
        free(ids);
        free(text);
    }
    tok_free(t);
    return 0;
}
