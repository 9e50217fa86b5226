/* bench_train: training throughput of trainer_step (nf4 base, LoRA r16 on all seven
 * linears), as model-FLOP utilization against OpenBLAS sgemm measured in the same run, and
 * as a ratio to PyTorch on CPU (bench/torch_train.py: the same shapes on an fp32 base)
 * run from here at each thread setting, also in the same run.
 *
 * Model FLOPs of one step of M = batch x seq_len tokens (elementwise work, norms, softmax
 * and the loss are not counted; see docs/performance.md):
 *   base linears + head:  4 M N      (forward 2 M N, and the input gradient through the
 *                                    frozen base in backward 2 M N; no weight gradient)
 *   attention (causal):   3 x 2 B D T (T + 1) per layer  (QK^T and AV over T(T+1)/2 pairs;
 *                                    backward has dV, dP, dQ, dK: twice the forward)
 *   LoRA:                 3 x 2 M r (in + out) per adapted linear (forward u = x A^T,
 *                                    y += s u B^T; backward dB, du, dA, dx)
 *
 * qlorad runs at 1 thread and at QLORA_THREADS (default: every core), or at --threads N
 * alone, PyTorch at torch 1 or 2 threads times OpenBLAS 1 or 2 (or the one setting of
 * --torch-threads T,B); "threads" in the table is the cores a setting uses. --recompute
 * trains keeping one layer's activations (train_hyper.recompute). Peak RSS is the
 * process's, during the load (the fp32 source's mapped pages included) and during the
 * steps.
 *
 * usage: bench_train [--batch B] [--seq-len T] [--steps N] [--threads N] [--recompute]
 *                    [--torch SCRIPT] [--torch-threads T,B] DIR [DIR...]
 * Figures are printed, never asserted. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "procmem.h"
#include "parallel.h"
#include "train.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    int B, T, steps, threads, recompute, torch_tt, torch_bt; /* threads, torch_*: 0 for all settings */
    const char *torch;
} options;

/* OpenBLAS sgemm GFLOP/s on a large product: the machine's practical peak. The best of
 * repeated calls over `budget` seconds, since the machine is shared. */
static double sgemm_peak(double budget)
{
    const int M = 1024, N = 2048, K = 2048;
    float *a = malloc((size_t)M * K * sizeof(float)), *b = malloc((size_t)N * K * sizeof(float));
    float *c = malloc((size_t)M * N * sizeof(float));
    if (!a || !b || !c) {
        fprintf(stderr, "bench_train: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)M * K; i++)
        a[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        b[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
    double best = INFINITY, start = now();
    for (int rep = 0; rep < 3 || now() - start < budget; rep++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        double t = now() - t0;
        best = t < best ? t : best;
    }
    free(a), free(b), free(c);
    return 2.0 * M * N * K / best * 1e-9;
}

static double step_flops(const llama_config *c, int B, int T, int rank, unsigned targets)
{
    double M = (double)B * T, base = 0, lora = 0;
    for (int k = 0; k < LIN_COUNT; k++) {
        int out, in;
        llama_linear_shape(c, (llama_linear)k, &out, &in);
        base += (double)out * in;
        if (targets >> k & 1)
            lora += (double)rank * (in + out);
    }
    base = base * c->n_layers + (double)c->vocab_size * c->dim;
    double attn = 2.0 * B * c->dim * (double)T * (T + 1) * c->n_layers;
    return 4 * M * base + 3 * attn + 6 * M * lora * c->n_layers;
}

/* PyTorch's tokens/s from the script at one thread setting; < 0 when it fails. */
static double torch_tokens_per_s(const char *script, const llama_config *c, int B, int T, int steps,
                                 int torch_threads, int blas_threads)
{
    char cmd[2048], line[512];
    snprintf(cmd, sizeof cmd,
             "OPENBLAS_NUM_THREADS=%d /usr/bin/python3 '%s' --dim %d --hidden %d --layers %d "
             "--heads %d --kv-heads %d --vocab %d --batch %d --seq-len %d --rank 16 --steps %d "
             "--threads %d",
             blas_threads, script, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
             c->vocab_size, B, T, steps, torch_threads);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    double tps = -1;
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "tokens/s %lf", &tps) != 1)
            fputs(line, stderr);
    return pclose(p) == 0 ? tps : -1;
}

/* Best seconds of one trainer_step over `steps` steps after a warm-up step; *mean their mean. */
static double time_steps(trainer *t, int steps, double *mean)
{
    char err[1024];
    double best = INFINITY, loss, norm, sum = 0;
    for (int i = 0; i <= steps; i++) {
        double t0 = now();
        if (trainer_step(t, &loss, &norm, err, sizeof err) < 0) {
            fprintf(stderr, "bench_train: %s\n", err);
            exit(1);
        }
        double dt = now() - t0;
        if (i > 0 && dt < best)
            best = dt;
        sum += i > 0 ? dt : 0;
    }
    *mean = sum / steps;
    return best;
}

/* qlorad at 1 thread and at all of them (kernels and OpenBLAS alike), then PyTorch at
 * each setting; MFU against the sgemm peak at the same thread count. */
static int bench_model(const char *dir, const options *o)
{
    llama_model m;
    char err[1024];
    int B = o->B, T = o->T, steps = o->steps;
    const char *torch = o->torch;
    rt_reset_peak();
    double t0 = now();
    if (llama_load(&m, dir, qt_spec_default(QT_NF4), err, sizeof err) < 0) {
        fprintf(stderr, "bench_train: %s\n", err);
        return -1;
    }
    double load_s = now() - t0;
    size_t load_peak = rt_peak_bytes() / 1024, loaded = rt_rss_bytes() / 1024;
    rt_reset_peak();
    const llama_config cfg = m.cfg, *c = &cfg; /* outlives the model, freed before torch runs */
    if (T > c->seq_len)
        T = c->seq_len;
    size_t n = 1 << 17;
    int *tokens = malloc(n * sizeof(int));
    if (!tokens) {
        fprintf(stderr, "bench_train: out of memory\n");
        exit(1);
    }
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        tokens[i] = (int)(s % (uint64_t)c->vocab_size);
    }
    train_hyper h;
    train_hyper_default(&h, c);
    h.batch = B;
    h.seq_len = T;
    h.steps = 2 * (steps + 1);  /* both thread settings on one trainer */
    h.warmup = 0;
    h.recompute = o->recompute;
    trainer t;
    if (trainer_init(&t, &m, NULL, tokens, n, NULL, 0, &h, err, sizeof err) < 0) {
        fprintf(stderr, "bench_train: %s\n", err);
        free(tokens);
        llama_free(&m);
        return -1;
    }
    const int all = o->threads ? o->threads : rt_threads();
    size_t estimate = trainer_memory_bytes(&m, &h);
    double peak[3] = {0}, tps[3] = {0}, mean[3] = {0}, flops = step_flops(c, B, T, h.rank, h.targets);
    /* index 1: one thread, 2: more (every core, or --threads N) */
    const int lo = o->threads == 1 ? 1 : o->threads ? 2 : 1, hi = o->threads == 1 ? 1 : 2;
    for (int th = lo; th <= hi; th++) {
        int n_th = th == 1 ? 1 : all;
        rt_set_threads(n_th);
        openblas_set_num_threads(n_th);
        /* on a shared machine noise only lowers a speed: take the best of before and after */
        peak[th] = sgemm_peak(1.0);
        tps[th] = (double)B * T / time_steps(&t, steps, &mean[th]);
        mean[th] = (double)B * T / mean[th];
        openblas_set_num_threads(n_th); /* the library's products set OpenBLAS to 1 thread */
        peak[th] = fmax(peak[th], sgemm_peak(1.0));
    }
    size_t train_peak = rt_peak_bytes() / 1024;
    trainer_free(&t);
    free(tokens);
    size_t quantized, params = llama_n_params(c, m.tied, &quantized);
    llama_free(&m);
    printf("\n### %s: dim %d, hidden %d, layers %d, heads %d, vocab %d (%.1fM params); batch %d x seq %d, "
           "LoRA r16 all-linear%s; %.1f GFLOP/step\n\nOpenBLAS sgemm (1024 x 2048 x 2048) around the qlorad steps: "
           "%.1f GFLOP/s at 1 thread, %.1f at %d\n\n", dir, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
           c->vocab_size, params / 1e6, B, T, o->recompute ? ", recompute" : "", flops * 1e-9, peak[1], peak[2], all);
    printf("Memory (process RSS): %.0f MiB after loading nf4 (%.1f s), peak %.0f MiB during the load; peak %.0f MiB "
           "while training (trainer_memory_bytes estimates %.0f MiB beyond the base)\n\n", loaded / 1024.0, load_s,
           load_peak / 1024.0, train_peak / 1024.0, estimate / 1048576.0);
    printf("| trainer | threads | tokens/s | mean tokens/s | GFLOP/s | of sgemm peak | qlorad (same threads) vs this |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (int th = lo; th <= hi; th++)
        printf("| qlorad nf4 | %d | %.0f | %.0f | %.1f | %.0f%% | |\n", th == 1 ? 1 : all, tps[th], mean[th],
               flops * tps[th] / (B * T) * 1e-9, 100 * flops * tps[th] / (B * T) * 1e-9 / peak[th]);
    fflush(stdout);
    if (!torch)
        return 0;
    double best_torch = 0, best_q = tps[1] > tps[2] ? tps[1] : tps[2];
    for (int tt = 1; tt <= 2; tt++)
        for (int bt = 1; bt <= 2; bt++) {
            int th = tt > bt ? 2 : bt;
            if ((o->torch_tt && (tt != o->torch_tt || bt != o->torch_bt)) || !tps[th])
                continue;
            double x = torch_tokens_per_s(torch, c, B, T, steps, tt, bt);
            if (x <= 0) {
                printf("| torch fp32 (torch %d, OpenBLAS %d threads) | | failed | | | | |\n", tt, bt);
                continue;
            }
            best_torch = x > best_torch ? x : best_torch;
            printf("| torch fp32 (torch %d, OpenBLAS %d threads) | %d | %.0f | | %.1f | %.0f%% | %.2fx |\n", tt,
                   bt, th, x, flops * x / (B * T) * 1e-9, 100 * flops * x / (B * T) * 1e-9 / peak[th],
                   tps[th] / x);
            fflush(stdout);
        }
    if (best_torch > 0)
        printf("\nqlorad's best / PyTorch's best: %.2fx\n", best_q / best_torch);
    return 0;
}

int main(int argc, char **argv)
{
    options o = {.B = 4, .T = 256, .steps = 3};
    int i = 1, bad = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--recompute")) {
            o.recompute = 1;
            continue;
        }
        if (i + 1 >= argc)
            break;
        const char *v = argv[++i];
        if (!strcmp(argv[i - 1], "--batch")) o.B = atoi(v);
        else if (!strcmp(argv[i - 1], "--seq-len")) o.T = atoi(v);
        else if (!strcmp(argv[i - 1], "--steps")) o.steps = atoi(v);
        else if (!strcmp(argv[i - 1], "--threads")) bad |= (o.threads = atoi(v)) < 1;
        else if (!strcmp(argv[i - 1], "--torch")) o.torch = v;
        else if (!strcmp(argv[i - 1], "--torch-threads"))
            bad |= sscanf(v, "%d,%d", &o.torch_tt, &o.torch_bt) != 2 || o.torch_tt < 1 || o.torch_tt > 2 ||
                   o.torch_bt < 1 || o.torch_bt > 2;
        else {
            i--;
            break;
        }
    }
    if (bad || i >= argc || argv[i][0] == '-' || o.B < 1 || o.T < 2 || o.steps < 1) {
        fprintf(stderr, "usage: bench_train [--batch B] [--seq-len T] [--steps N] [--threads N] [--recompute] "
                        "[--torch SCRIPT] [--torch-threads T,B] DIR [DIR...]\n");
        return 2;
    }
    printf("## Training throughput (bench_train)\n\nkernels %s; times are the best of %d steps after a "
           "warm-up step\n", qt_isa_name(qt_isa_active()), o.steps);
    for (; i < argc; i++)
        if (bench_model(argv[i], &o) < 0)
            return 1;
    return 0;
}
