/* bench_model: prefill and decode throughput of the forward pass for every format, as a
 * ratio to f32 on the same model measured in the same run (formats in turns, best of 5),
 * and what loading each format cost: seconds (reading the fp32 source and quantizing it)
 * and resident memory against the bytes the weights should take.
 * usage: bench_model [--format F | --formats F,G,...] [--prefill T] [--decode N]
 *                    [--rounds R] [--threads N,M,...] DIR [DIR...]
 * (llama2.c or Hugging Face layout; make-model for shapes no shipped model has). --format F
 * measures f32 and F only, --formats the listed ones and f32, the reference; --threads
 * measures at each count on the same loaded models (default: QLORA_THREADS or every
 * core). Defaults: prefill 128 tokens, 32 decode steps, 5 rounds. Figures are printed,
 * never asserted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "procmem.h"
#include "forward.h"
#include "parallel.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    double prefill, decode; /* tokens per second, the best round at the current thread count */
    double bits;
    size_t bytes;
    double load_s;          /* llama_load: read the fp32 source and quantize */
    size_t rss, peak;       /* RSS growth over the load, and its peak during it (source mapped) */
    size_t expect;          /* weights + RoPE tables */
    llama_model m;
    llama_cache cache;
    llama_acts pre, step;
    int *tokens, T, steps;
} bench;

static int setup(const char *dir, qt_format f, int prefill, int decode, bench *r)
{
    char err[1024];
    memset(r, 0, sizeof *r);
    rt_reset_peak();
    size_t rss0 = rt_rss_bytes();
    double t0 = now();
    if (llama_load(&r->m, dir, qt_spec_default(f), err, sizeof err) < 0) {
        fprintf(stderr, "bench_model: %s\n", err);
        return -1;
    }
    r->load_s = now() - t0;
    r->rss = rt_rss_bytes() - rss0;
    r->peak = rt_peak_bytes() > rss0 ? rt_peak_bytes() - rss0 : 0;
    const llama_config *c = &r->m.cfg;
    int T = c->seq_len < prefill ? c->seq_len : prefill, steps = decode, S = T + steps;
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
    r->expect = r->bytes + 2 * (size_t)c->seq_len * (c->head_size / 2) * sizeof(float);
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

/* "a,b,c" into the formats it names (bit per qt_format); -1 on an unknown name. */
static int parse_formats(const char *list, unsigned *set)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        qt_format f;
        if (qt_format_parse(tok, &f) < 0) {
            fprintf(stderr, "bench_model: unknown format %s\n", tok);
            return -1;
        }
        *set |= 1u << f;
    }
    return 0;
}

/* KV cache of the whole context (one sequence), touched: measured against its bytes. */
static void measure_cache(const llama_config *c)
{
    llama_cache kv;
    size_t bytes = 2 * (size_t)c->n_layers * c->seq_len * c->kv_dim * sizeof(float), rss0 = rt_rss_bytes();
    if (llama_cache_alloc(&kv, c, 1, c->seq_len) < 0) {
        printf("\nKV cache at seq_len %d: %.1f MiB expected, could not be allocated\n", c->seq_len,
               bytes / 1048576.0);
        return;
    }
    memset(kv.k, 0, bytes / 2), memset(kv.v, 0, bytes / 2);
    size_t rss = rt_rss_bytes() - rss0;
    printf("\nKV cache at seq_len %d (one sequence, fp32): %.1f MiB resident, %.1f MiB expected (%.1f%%)\n",
           c->seq_len, rss / 1048576.0, bytes / 1048576.0, 100.0 * rss / bytes);
    llama_cache_free(&kv);
}

int main(int argc, char **argv)
{
    int first = 1, prefill = 128, decode = 32, rounds = 5, threads[8], n_threads = 0;
    unsigned set = 0;
    for (; first + 1 < argc && argv[first][0] == '-'; first += 2) {
        const char *a = argv[first], *v = argv[first + 1];
        if (!strcmp(a, "--format") || !strcmp(a, "--formats")) {
            if (parse_formats(v, &set) < 0)
                return 2;
        } else if (!strcmp(a, "--prefill"))
            prefill = atoi(v);
        else if (!strcmp(a, "--decode"))
            decode = atoi(v);
        else if (!strcmp(a, "--rounds"))
            rounds = atoi(v);
        else if (!strcmp(a, "--threads")) {
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok && n_threads < 8; tok = strtok(NULL, ","))
                threads[n_threads++] = atoi(tok);
        } else
            break;
    }
    int bad = prefill < 1 || decode < 1 || rounds < 1;
    for (int i = 0; i < n_threads; i++)
        bad |= threads[i] < 1;
    if (argc <= first || argv[first][0] == '-' || bad) {
        fprintf(stderr, "usage: bench_model [--format F | --formats F,G,...] [--prefill T] [--decode N] "
                        "[--rounds R] [--threads N,M,...] DIR [DIR...]\n");
        return 2;
    }
    set = set ? set | 1u : ~0u; /* f32 is every row's reference */
    if (!n_threads)
        threads[n_threads++] = rt_threads();
#define MEASURED(f) (set >> (f) & 1)
    printf("## Forward pass (bench_model)\n");
    for (int d = first; d < argc; d++) {
        /* every format loaded at once and measured in turns, best of the rounds each: a
         * machine shared with other work then slows all formats alike, not one */
        static bench r[QT_NFORMATS];
        for (int f = 0; f < QT_NFORMATS; f++)
            if (MEASURED(f) && setup(argv[d], f, prefill, decode, &r[f]) < 0)
                return 1;
        const llama_config *c = &r[0].m.cfg;
        printf("\n### %s: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, seq_len %d, %s head "
               "(kernels %s)\n\n", argv[d], c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
               c->vocab_size, c->seq_len, r[0].m.tied ? "tied" : "separate", qt_isa_name(qt_isa_active()));
        printf("Loading (%d threads; the fp32 source in the page cache): RSS growth from before the load to "
               "after it, against the weights (quantized linears + fp32 embeddings, head, norms, biases) and "
               "the RoPE tables; peak: the highest RSS during the load, the source's mapped pages included\n\n",
               rt_threads());
        printf("| format | bits/param | load s | resident MiB | expected MiB | resident / expected | "
               "peak during load MiB |\n|---|---|---|---|---|---|---|\n");
        for (int f = 0; f < QT_NFORMATS; f++)
            if (MEASURED(f))
                printf("| %s | %.3f | %.1f | %.1f | %.1f | %.1f%% | %.1f |\n", qt_format_name(f), r[f].bits,
                       r[f].load_s, r[f].rss / 1048576.0, r[f].expect / 1048576.0, 100.0 * r[f].rss / r[f].expect,
                       r[f].peak / 1048576.0);
        measure_cache(c);
        fflush(stdout); /* the rounds of a large model take minutes */
        for (int n = 0; n < n_threads; n++) {
            rt_set_threads(threads[n]);
            for (int f = 0; f < QT_NFORMATS; f++)
                r[f].prefill = r[f].decode = 0;
            for (int round = 0; round < rounds; round++)
                for (int f = 0; f < QT_NFORMATS; f++)
                    if (MEASURED(f))
                        round_once(&r[f]);
            printf("\n%d threads: prefill of %d tokens, %d decode steps after it, best of %d rounds\n\n",
                   rt_threads(), r[0].T, r[0].steps, rounds);
            printf("| format | bits/param | weights MiB | prefill tok/s | vs f32 | decode tok/s | vs f32 |\n");
            printf("|---|---|---|---|---|---|---|\n");
            for (int f = 0; f < QT_NFORMATS; f++)
                if (MEASURED(f))
                    printf("| %s | %.3f | %.1f | %.1f | %.2fx | %.1f | %.2fx |\n", qt_format_name(f), r[f].bits,
                           r[f].bytes / 1048576.0, r[f].prefill, r[f].prefill / r[0].prefill, r[f].decode,
                           r[f].decode / r[0].decode);
            fflush(stdout);
        }
        for (int f = 0; f < QT_NFORMATS; f++)
            if (MEASURED(f))
                teardown(&r[f]);
    }
#undef MEASURED
    return 0;
}
