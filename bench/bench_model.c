/* bench_model: prefill and decode throughput of the forward pass for every format, as a
 * ratio to f32 on the same model measured in the same run.
 * usage: bench_model [--format F] DIR [DIR...] (llama2.c or Hugging Face layout; make-model
 * for shapes no shipped model has; --format measures f32 and F only). Figures are printed,
 * never asserted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forward.h"
#include "parallel.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    double prefill, decode; /* tokens per second */
    double bits;
    size_t bytes;
} result;

static int measure(const char *dir, qt_format f, result *r)
{
    llama_model m;
    char err[1024];
    if (llama_load(&m, dir, qt_spec_default(f), err, sizeof err) < 0) {
        fprintf(stderr, "bench_model: %s\n", err);
        return -1;
    }
    const llama_config *c = &m.cfg;
    int T = c->seq_len < 128 ? c->seq_len : 128, steps = 32, S = T + steps;
    if (S > c->seq_len)
        S = c->seq_len, T = S - steps;
    int *tokens = malloc((size_t)T * sizeof(int));
    for (int i = 0; i < T; i++)
        tokens[i] = 3 + (i * 37) % (c->vocab_size - 3);
    llama_cache cache;
    llama_acts pre, step;
    if (!tokens || llama_cache_alloc(&cache, c, 1, S) < 0 || llama_acts_alloc(&pre, c, 1, T, S, 0, 0) < 0 ||
        llama_acts_alloc(&step, c, 1, 1, S, 0, 0) < 0) {
        fprintf(stderr, "bench_model: out of memory\n");
        exit(1);
    }
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        llama_forward(&m, NULL, &pre, &cache, tokens, 1, T, 0);
        double t = now() - t0;
        best = t < best ? t : best;
    }
    r->prefill = T / best;
    best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int i = 0; i < steps; i++) {
            int tok = tokens[i % T];
            llama_forward(&m, NULL, &step, &cache, &tok, 1, 1, T + i);
        }
        double t = now() - t0;
        best = t < best ? t : best;
    }
    r->decode = steps / best;
    size_t quantized, bytes = 0;
    llama_n_params(c, m.tied, &quantized);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++)
            bytes += qt_bytes(&m.layers[l].lin[k]);
    r->bits = 8.0 * bytes / quantized;
    r->bytes = llama_weight_bytes(&m);
    free(tokens);
    llama_acts_free(&pre);
    llama_acts_free(&step);
    llama_cache_free(&cache);
    llama_free(&m);
    return 0;
}

int main(int argc, char **argv)
{
    int first = 1, only = -1;
    if (argc > 2 && !strcmp(argv[1], "--format")) {
        qt_format f;
        if (qt_format_parse(argv[2], &f) < 0) {
            fprintf(stderr, "bench_model: unknown format %s\n", argv[2]);
            return 2;
        }
        only = (int)f;
        first = 3;
    }
    if (argc <= first) {
        fprintf(stderr, "usage: bench_model [--format F] DIR [DIR...]\n");
        return 2;
    }
    printf("## Forward pass (bench_model)\n");
    for (int d = first; d < argc; d++) {
        result r[QT_NFORMATS];
        for (int f = 0; f < QT_NFORMATS; f++)
            if ((only < 0 || f == 0 || f == only) && measure(argv[d], f, &r[f]) < 0)
                return 1;
        printf("\n### %s (%d threads, kernels %s)\n\n", argv[d], qt_threads(), qt_isa_name(qt_isa_active()));
        printf("| format | bits/param | weights MiB | prefill tok/s | vs f32 | decode tok/s | vs f32 |\n");
        printf("|---|---|---|---|---|---|---|\n");
        for (int f = 0; f < QT_NFORMATS; f++)
            if (only < 0 || f == 0 || f == only)
                printf("| %s | %.3f | %.1f | %.1f | %.2fx | %.1f | %.2fx |\n", qt_format_name(f), r[f].bits,
                   r[f].bytes / 1048576.0, r[f].prefill, r[f].prefill / r[0].prefill, r[f].decode,
                   r[f].decode / r[0].decode);
        fflush(stdout);
    }
    return 0;
}
