/* bench_quant: quantization formats and fused kernels against OpenBLAS, in one run.
 *
 * For each matrix set (the linear weights of a real model, and random Gaussian
 * 2048x2048 and 2048x5632 matrices) and each format: bits/param, relative RMSE of the
 * round trip, decode throughput, and the fused kernels' GFLOP/s at M=1 (Y = x W^T, a
 * matrix-vector product), at M=256 and for the input gradient dX = dY W at M=256, each as
 * a ratio to OpenBLAS sgemv / sgemm on the same weights in fp32, timed in alternating bursts with each kernel so that the load of a
 * shared machine weighs on both alike. Figures are printed, never asserted.
 *
 * For ggml's formats a second reference: ggml's own CPU dot product for that type (its
 * vec_dot, with x quantized to the type's vec_dot_type by its from_float, as ggml's
 * mat-mul does), at M=1 and one thread, from .deps/llama's libggml-cpu-haswell.so
 * (--ggml DIR, default .deps/llama/lib), on the same bytes, since the formats keep ggml's
 * blocks. Formats that do not take a matrix set's shapes (whole 256-value blocks) get a
 * "-" row.
 *
 * usage: bench_quant [--model DIR] [--quick] [--ggml DIR] */
#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "llama2c.h"
#include "parallel.h"
#include "quant.h"

typedef struct {
    const char *name;
    int count;
    int rows[64], cols[64];
    const float *w[64]; /* fp32 weights (mmap'd or owned) */
} matrix_set;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best time of one call of fn over repeated calls for at least `budget` seconds. */
typedef void (*bench_fn)(void *ctx);
static double best_time(bench_fn fn, void *ctx, double budget)
{
    double best = INFINITY, start = now();
    int reps = 0;
    while (reps < 3 || now() - start < budget) {
        double t0 = now();
        fn(ctx);
        double t = now() - t0;
        if (t < best)
            best = t;
        reps++;
    }
    return best;
}

/* Best times of a and of b over alternating bursts of calls (each at least 3 calls and
 * 20 ms), at least 8 bursts of each and `budget` seconds in all: a ratio of the two then
 * compares runs under the same load, and the best of 8 has a fair chance of a quiet moment
 * on a shared machine. Within a burst the later calls find the weights in cache, as
 * repeated calls of one layer do, and the cores at full clock: after a pause they take
 * about a millisecond of work to get there. */
static void best_times(bench_fn a, void *ca, bench_fn b, void *cb, double budget, double *ta,
                       double *tb)
{
    *ta = *tb = INFINITY;
    double start = now();
    for (int rounds = 0; rounds < 8 || now() - start < budget; rounds++) {
        double ba = best_time(a, ca, 0.02), bb = best_time(b, cb, 0.02);
        *ta = ba < *ta ? ba : *ta;
        *tb = bb < *tb ? bb : *tb;
    }
}

typedef struct {
    const matrix_set *set;
    qt_matrix *q;   /* NULL: OpenBLAS on the fp32 weights */
    const float *x; /* X, or dY for run_products_t */
    float *y;       /* Y, or dX */
    int M;
} run_ctx;

static void run_products(void *p)
{
    run_ctx *c = p;
    for (int i = 0; i < c->set->count; i++) {
        int N = c->set->rows[i], K = c->set->cols[i];
        if (c->q) {
            if (qt_matmul(&c->q[i], c->x, c->M, c->y, 0) < 0) {
                fprintf(stderr, "bench_quant: out of memory in qt_matmul\n");
                exit(1);
            }
        } else if (c->M == 1) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, c->set->w[i], K, c->x, 1, 0.0f,
                        c->y, 1);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->M, N, K, 1.0f, c->x, K,
                        c->set->w[i], K, 0.0f, c->y, N);
        }
    }
}

/* dX = dY W: the input gradient of each matrix. */
static void run_products_t(void *p)
{
    run_ctx *c = p;
    for (int i = 0; i < c->set->count; i++) {
        int N = c->set->rows[i], K = c->set->cols[i];
        if (c->q) {
            if (qt_matmul_t(&c->q[i], c->x, c->M, c->y, 0) < 0) {
                fprintf(stderr, "bench_quant: out of memory in qt_matmul_t\n");
                exit(1);
            }
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->M, K, N, 1.0f, c->x, N,
                        c->set->w[i], K, 0.0f, c->y, K);
        }
    }
}

/* ---- ggml's CPU backend (ggml-cpu.h), loaded at run time ---- */

typedef struct { /* struct ggml_type_traits_cpu */
    void (*from_float)(const float *x, void *y, int64_t k);
    void (*vec_dot)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by,
                    int nrc);
    int vec_dot_type;
    int64_t nrows;
} ggml_cpu_traits;

static struct {
    const ggml_cpu_traits *(*traits)(int type);
    size_t (*row_size)(int type, int64_t ne);
} ggml_cpu;

static void load_ggml_cpu(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/libggml-cpu-haswell.so", dir);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    void (*init)(void) = h ? (void (*)(void))dlsym(h, "ggml_cpu_init") : NULL;
    *(void **)&ggml_cpu.traits = h ? dlsym(h, "ggml_get_type_traits_cpu") : NULL;
    *(void **)&ggml_cpu.row_size = h ? dlsym(h, "ggml_row_size") : NULL;
    if (!init || !ggml_cpu.traits || !ggml_cpu.row_size) {
        fprintf(stderr, "bench_quant: no ggml reference (%s): run make setup\n", h ? "symbols" : dlerror());
        ggml_cpu.traits = NULL;
        return;
    }
    init();
}

/* y = W x for every matrix of a set, by ggml's vec_dot on qlorad's matrices' bytes. */
typedef struct {
    const matrix_set *set;
    qt_matrix *q;
    const float *x;
    float *y;
    void *xq; /* x in the vec_dot type */
    const ggml_cpu_traits *t;
} ggml_ctx;

static void run_ggml(void *p)
{
    ggml_ctx *c = p;
    for (int i = 0; i < c->set->count; i++) {
        const qt_matrix *m = &c->q[i];
        c->t->from_float(c->x, c->xq, m->cols);
        for (int n = 0; n < m->rows; n++)
            c->t->vec_dot(m->cols, c->y + n, 0, m->data + (size_t)n * m->row_bytes, 0, c->xq, 0, 1);
    }
}

typedef struct {
    const matrix_set *set;
    qt_matrix *q;
    float *out;
} decode_ctx;

static void run_decode(void *p)
{
    decode_ctx *c = p;
    for (int i = 0; i < c->set->count; i++)
        qt_dequantize_rows(&c->q[i], 0, c->set->rows[i], c->out);
}

static void bench_set(const matrix_set *set, double budget)
{
    size_t max_k = 0, max_n = 0, params = 0, max_elems = 0;
    double flops_per_row = 0;
    for (int i = 0; i < set->count; i++) {
        size_t n = set->rows[i], k = set->cols[i];
        max_k = k > max_k ? k : max_k;
        max_n = n > max_n ? n : max_n;
        max_elems = n * k > max_elems ? n * k : max_elems;
        params += n * k;
        flops_per_row += 2.0 * n * k;
    }
    const int M = 256;
    float *x = malloc(M * max_k * sizeof(float)), *y = malloc(M * max_n * sizeof(float));
    float *dy = malloc(M * max_n * sizeof(float)), *dx = malloc(M * max_k * sizeof(float));
    float *deq = malloc(max_elems * sizeof(float));
    void *xq = malloc(max_k * 4); /* x in a vec_dot type (at most 4 bytes a value) */
    if (!x || !y || !dy || !dx || !deq || !xq) {
        fprintf(stderr, "bench_quant: out of memory\n");
        exit(1);
    }
    srand(1);
    for (size_t i = 0; i < M * max_k; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
    for (size_t i = 0; i < M * max_n; i++)
        dy[i] = (float)rand() / RAND_MAX - 0.5f;

    run_ctx ref1 = {set, NULL, x, y, 1}, ref256 = {set, NULL, x, y, M}, ref_t = {set, NULL, dy, dx, M};
    double best_gemv = INFINITY, best_gemm = INFINITY, best_gemm_t = INFINITY;
    printf("\n### %s (%d matrices, %.2fM parameters)\n\n", set->name, set->count, params / 1e6);
    printf("| format | bits/param | rel. RMSE | decode GB/s | M=1 GFLOP/s | vs sgemv | "
           "M=256 GFLOP/s | vs sgemm | M=256 dX GFLOP/s | vs sgemm | ggml vec_dot M=1, 1 thread |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");

    for (int f = 0; f < QT_NFORMATS; f++) {
        qt_matrix q[64];
        size_t bytes = 0;
        double err2 = 0, ref2 = 0;
        const int type = qt_format_ggml_type(f);
        int fits = 1;
        for (int i = 0; i < set->count; i++) /* ggml's formats: whole blocks only */
            fits &= type < 0 || qt_ggml_row_bytes(type, set->cols[i]) != 0;
        if (!fits) {
            printf("| %s | - | - | - | - | - | - | - | - | - | - |\n", qt_format_name(f));
            continue;
        }
        for (int i = 0; i < set->count; i++) {
            char err[256];
            if (qt_quantize(&q[i], set->w[i], set->rows[i], set->cols[i], qt_spec_default(f),
                            err, sizeof err) < 0) {
                fprintf(stderr, "bench_quant: %s: %s\n", set->name, err);
                exit(1);
            }
            bytes += qt_bytes(&q[i]);
            qt_dequantize_rows(&q[i], 0, set->rows[i], deq);
            for (size_t j = 0; j < (size_t)set->rows[i] * set->cols[i]; j++) {
                double d = (double)deq[j] - set->w[i][j];
                err2 += d * d;
                ref2 += (double)set->w[i][j] * set->w[i][j];
            }
        }
        decode_ctx dc = {set, q, deq};
        double t_dec = best_time(run_decode, &dc, budget);
        run_ctx r1 = {set, q, x, y, 1}, r256 = {set, q, x, y, M}, rt = {set, q, dy, dx, M};
        double t_gemv, t1, t_gemm, t256, t_gemm_t, tt;
        best_times(run_products, &ref1, run_products, &r1, 2 * budget, &t_gemv, &t1);
        best_times(run_products, &ref256, run_products, &r256, 2 * budget, &t_gemm, &t256);
        best_times(run_products_t, &ref_t, run_products_t, &rt, 2 * budget, &t_gemm_t, &tt);
        char ggml_col[32] = "-";
        const ggml_cpu_traits *gt = type >= 0 && ggml_cpu.traits ? ggml_cpu.traits(type) : NULL;
        if (gt && gt->vec_dot && gt->from_float && ggml_cpu.row_size(gt->vec_dot_type, (int64_t)max_k) <= max_k * 4) {
            ggml_ctx gc = {set, q, x, y, xq, gt};
            snprintf(ggml_col, sizeof ggml_col, "%.1f", flops_per_row / best_time(run_ggml, &gc, budget) / 1e9);
        }
        best_gemv = t_gemv < best_gemv ? t_gemv : best_gemv;
        best_gemm = t_gemm < best_gemm ? t_gemm : best_gemm;
        best_gemm_t = t_gemm_t < best_gemm_t ? t_gemm_t : best_gemm_t;
        printf("| %s | %.3f | %.4f | %.1f | %.1f | %.2fx | %.1f | %.2fx | %.1f | %.2fx | %s |\n",
               qt_format_name(f), 8.0 * bytes / params, sqrt(err2 / ref2),
               params * 4.0 / t_dec / 1e9, flops_per_row / t1 / 1e9, t_gemv / t1,
               M * flops_per_row / t256 / 1e9, t_gemm / t256, M * flops_per_row / tt / 1e9,
               t_gemm_t / tt, ggml_col);
        fflush(stdout);
        for (int i = 0; i < set->count; i++)
            qt_free(&q[i]);
    }
    printf("\nOpenBLAS on fp32, best of the runs paired with the rows: sgemv %.1f GFLOP/s, sgemm "
           "(M=256) %.1f GFLOP/s, for dX %.1f GFLOP/s; %d threads, kernels %s\n",
           flops_per_row / best_gemv / 1e9, M * flops_per_row / best_gemm / 1e9,
           M * flops_per_row / best_gemm_t / 1e9, rt_threads(), qt_isa_name(qt_isa_active()));
    free(x), free(y), free(dy), free(dx), free(deq), free(xq);
}

static float *gaussian(size_t n, unsigned seed)
{
    float *w = malloc(n * sizeof(float));
    if (!w) {
        fprintf(stderr, "bench_quant: out of memory\n");
        exit(1);
    }
    srand(seed);
    for (size_t i = 0; i < n; i += 2) {
        double u1 = (rand() + 1.0) / (RAND_MAX + 2.0), u2 = (rand() + 1.0) / (RAND_MAX + 2.0);
        double r = sqrt(-2 * log(u1)) * 0.02;
        w[i] = (float)(r * cos(6.283185307179586 * u2));
        if (i + 1 < n)
            w[i + 1] = (float)(r * sin(6.283185307179586 * u2));
    }
    return w;
}

int main(int argc, char **argv)
{
    /* OpenBLAS's workers spin for 2^28 TSC cycles (its default THREAD_TIMEOUT: 0.13 s on
     * this machine) after each call, so for the next burst of a kernel the second core was
     * taken (a 512 x 2048 bitnet1 product at 2 threads: 86 GFLOP/s right after sgemv, 239
     * without the spinning). 2^20 cycles (0.5 ms) still spans the gaps within a burst of
     * sgemv calls. OpenBLAS reads the variable when it loads: hence the exec. */
    if (!getenv("OPENBLAS_THREAD_TIMEOUT")) {
        setenv("OPENBLAS_THREAD_TIMEOUT", "20", 1);
        execv("/proc/self/exe", argv);
        perror("bench_quant: exec /proc/self/exe"); /* then go on, with the spinning */
    }
    const char *model = "../shared/models/tinystories6M", *ggml_dir = ".deps/llama/lib";
    double budget = 0.3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            budget = 0.05;
        else if (!strcmp(argv[i], "--ggml") && i + 1 < argc)
            ggml_dir = argv[++i];
        else {
            fprintf(stderr, "usage: bench_quant [--model DIR] [--quick] [--ggml DIR]\n");
            return 2;
        }
    }
    load_ggml_cpu(ggml_dir);
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/model.bin", model);
    l2c_file f;
    if (l2c_open(&f, path, err, sizeof err) < 0) {
        fprintf(stderr, "bench_quant: %s\n(point --model at a llama2.c model directory, e.g. "
                        "../shared/models/tinystories6M)\n", err);
        return 1;
    }
    const l2c_config *c = &f.cfg;
    matrix_set real = {.name = model};
    size_t D = c->dim, H = c->hidden_dim, KV = D / c->n_heads * c->n_kv_heads;
    for (int l = 0; l < c->n_layers && real.count + 7 <= 64; l++) {
        const struct {
            const float *base;
            size_t rows, cols;
        } lin[7] = {{f.wq, D, D}, {f.wk, KV, D}, {f.wv, KV, D}, {f.wo, D, D},
                    {f.w1, H, D}, {f.w2, D, H}, {f.w3, H, D}};
        for (int j = 0; j < 7; j++) {
            real.w[real.count] = lin[j].base + l * lin[j].rows * lin[j].cols;
            real.rows[real.count] = (int)lin[j].rows;
            real.cols[real.count++] = (int)lin[j].cols;
        }
    }
    printf("## Quantization kernels (bench_quant)\n");
    bench_set(&real, budget);
    l2c_close(&f);

    const int shapes[2][2] = {{2048, 2048}, {5632, 2048}};
    for (int s = 0; s < 2; s++) {
        char name[64];
        snprintf(name, sizeof name, "random Gaussian %dx%d (N x K)", shapes[s][0], shapes[s][1]);
        matrix_set g = {.name = name, .count = 1, .rows = {shapes[s][0]}, .cols = {shapes[s][1]}};
        float *w = gaussian((size_t)shapes[s][0] * shapes[s][1], 7 + s);
        g.w[0] = w;
        bench_set(&g, budget);
        free(w);
    }
    return 0;
}
