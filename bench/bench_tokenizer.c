/* bench_tokenizer: load time and encode throughput of one tokenizer file on one text,
 * single thread, best of ROUNDS: the text whole, then each of its non-empty lines alone;
 * bench_tokenizer.py sets them beside Hugging Face's (bench/hf_tokenizer.js) measured in
 * the same run.
 * usage: bench_tokenizer TOKENIZER VOCAB_SIZE TEXT_FILE ROUNDS
 * prints one JSON object: {"load_s", "encode_s", "lines_s", "bytes", "ids", "line_ids"}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mapfile.h"
#include "tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER VOCAB_SIZE TEXT_FILE ROUNDS\n");
        return 1;
    }
    char err[1024];
    const void *text;
    size_t n, n_ids = 0;
    int rounds = atoi(argv[4]);
    if (map_file(argv[3], &text, &n, err, sizeof err) < 0) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return 1;
    }
    double load = 1e9, encode = 1e9, lines = 1e9;
    size_t line_ids = 0;
    for (int r = 0; r < rounds; r++) {
        tok_tokenizer *t;
        double t0 = now();
        if (tok_load(&t, argv[1], atoi(argv[2]), err, sizeof err) < 0) {
            fprintf(stderr, "bench_tokenizer: %s\n", err);
            return 1;
        }
        double t1 = now();
        int *ids;
        if (tok_encode(t, text, n, TOK_ADD_SPECIAL, &ids, &n_ids) != TOK_OK) {
            fprintf(stderr, "bench_tokenizer: encoding failed\n");
            return 1;
        }
        double t2 = now();
        free(ids);
        line_ids = 0;
        for (const char *p = text, *end = p + n; p < end;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t len = (size_t)((nl ? nl : end) - p), k;
            if (len && tok_encode(t, p, len, TOK_ADD_SPECIAL, &ids, &k) == TOK_OK) {
                line_ids += k;
                free(ids);
            }
            p += len + 1;
        }
        double t3 = now();
        load = t1 - t0 < load ? t1 - t0 : load;
        encode = t2 - t1 < encode ? t2 - t1 : encode;
        lines = t3 - t2 < lines ? t3 - t2 : lines;
        tok_free(t);
    }
    printf("{\"load_s\": %.6f, \"encode_s\": %.6f, \"lines_s\": %.6f, \"bytes\": %zu, \"ids\": %zu, "
           "\"line_ids\": %zu}\n", load, encode, lines, n, n_ids, line_ids);
    unmap_file(text, n);
    return 0;
}
