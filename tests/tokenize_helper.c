/* tokenize_helper.c: the tokenizer for the Python tests (test_tokenizer_json.py).
 *
 * usage: tokenize_helper PATH VOCAB_SIZE
 * PATH is a tokenizer file (tok_load) or a model directory (tok_load_dir). A load error is
 * printed on stderr with exit status 2. Otherwise stdin holds texts, each as its byte
 * length in decimal, a newline, then the bytes; for each, one line on stdout: the ids of
 * tok_encode(text, bos 1, eos 0) separated by spaces, a tab, and the hex of
 * tok_decode_all of the ids after BOS. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "tokenizer.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: tokenize_helper PATH VOCAB_SIZE\n");
        return 1;
    }
    char err[1024];
    tok_tokenizer *t;
    struct stat st;
    int vocab = atoi(argv[2]);
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
        int *ids;
        size_t n_ids;
        if (!text || fread(text, 1, n, stdin) != n ||
            tok_encode(t, text, n, 1, 0, &ids, &n_ids) < 0) {
            fprintf(stderr, "tokenize_helper: short input or out of memory\n");
            return 1;
        }
        char *back = tok_decode_all(t, TOK_BOS, ids + 1, n_ids - 1);
        for (size_t i = 0; i < n_ids; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\t');
        for (const char *p = back; p && *p; p++) /* the tests' texts hold no NUL */
            printf("%02x", (unsigned char)*p);
        putchar('\n');
        free(back);
        free(ids);
        free(text);
    }
    tok_free(t);
    return 0;
}
