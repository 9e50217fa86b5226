/* bench_model: prefill and decode throughput of the forward pass for every format, as a
 * ratio to f32 on the same model measured in the same run (formats in turns, best of 5).
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
    double prefill, decode; /* tokens per second, the best round */
    double bits;
    size_t bytes;
    llama_model m;
    llama_cache cache;
    llama_acts pre, step;
    int *tokens, T, steps;
} bench;

static int setup(const char *dir, qt_format f, bench *r)
{
    char err[1024];
    memset(r, 0, sizeof *r);
    if (llama_load(&r->m, dir, qt_spec_default(f), err, sizeof err) < 0) {
        fprintf(stderr, "bench_model: %s\n", err);
        return -1;
    }
    const llama_config *c = &r->m.cfg;
    int T = c->seq_len < 128 ? c->seq_len : 128, steps = 32, S = T + steps;
    if (S > c->seq_len)
        S = c->seq_len, T = S - steps;
    r->T = T, r->steps = steps;
    r->tokens = malloc((size_t)T * sizeof(int));
    if (!r->tokens || llama_cache_alloc(&r->cache, c, 1, S) < 0 || llama_acts_alloc(&r->pre, c, 1, T, S, 0, 0) < 0 ||
        llama_acts_alloc(&r->step, c, 1, 1, S, 0, 0) < 0) {
        fprintf(stderr, "bench_model: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < T; i++)
        r->tokens[i] = 3 + (i * 37) % (c->vocab_size - 3);
    size_t quantized, bytes = 0;
    llama_n_params(c, r->m.tied, &quantized);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++)
            bytes += qt_bytes(&r->m.layers[l].lin[k]);
    r->bits = 8.0 * bytes / quantized;
    r->bytes = llama_weight_bytes(&r->m);
    return 0;
}

/* One prefill of T tokens and `steps` decode steps after it; keeps the best rate. */
static void round_once(bench *r)
{
    double t0 = now();
    llama_forward(&r->m, NULL, &r->pre, &r->cache, r->tokens, 1, r->T, 0, LLAMA_INFER);
    double t = now() - t0;
    r->prefill = r->T / t > r->prefill ? r->T / t : r->prefill;
    t0 = now();
    for (int i = 0; i < r->steps; i++) {
        int tok = r->tokens[i % r->T];
        llama_forward(&r->m, NULL, &r->step, &r->cache, &tok, 1, 1, r->T + i, LLAMA_INFER);
    }
    t = now() - t0;
    r->decode = r->steps / t > r->decode ? r->steps / t : r->decode;
}

static void teardown(bench *r)
{
    free(r->tokens);
    llama_acts_free(&r->pre);
    llama_acts_free(&r->step);
    llama_cache_free(&r->cache);
    llama_free(&r->m);
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
        /* every format loaded at once and measured in turns, best of 5 rounds each: a
         * machine shared with other work then slows all formats alike, not one */
        static bench r[QT_NFORMATS];
        for (int f = 0; f < QT_NFORMATS; f++)
            if ((only < 0 || f == 0 || f == only) && setup(argv[d], f, &r[f]) < 0)
                return 1;
        for (int round = 0; round < 5; round++)
            for (int f = 0; f < QT_NFORMATS; f++)
                if (only < 0 || f == 0 || f == only)
                    round_once(&r[f]);
        printf("\n### %s (%d threads, kernels %s)\n\n", argv[d], rt_threads(), qt_isa_name(qt_isa_active()));
        printf("| format | bits/param | weights MiB | prefill tok/s | vs f32 | decode tok/s | vs f32 |\n");
        printf("|---|---|---|---|---|---|---|\n");
        for (int f = 0; f < QT_NFORMATS; f++)
            if (only < 0 || f == 0 || f == only)
                printf("| %s | %.3f | %.1f | %.1f | %.2fx | %.1f | %.2fx |\n", qt_format_name(f), r[f].bits,
                   r[f].bytes / 1048576.0, r[f].prefill, r[f].prefill / r[0].prefill, r[f].decode,
                   r[f].decode / r[0].decode);
        for (int f = 0; f < QT_NFORMATS; f++)
            if (only < 0 || f == 0 || f == only)
                teardown(&r[f]);
        fflush(stdout);
    }
    return 0;
}
