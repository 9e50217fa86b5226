/* kernels_gemm.h: the large-M products (prefill, training), part of kernels_body.h
 * after kernels_decode.h.
 * - Y = X W^T: X is packed transposed in panels of MR_FWD rows; each thread decodes a
 *   tile of NT_FWD weight rows x KC columns into a cache-resident buffer and runs an
 *   outer-product micro-kernel: 2 vectors of X^T times NR_FWD broadcast weights per step.
 * - dX = dY W: dY is packed transposed in panels of MR_BWD rows; each thread owns a strip
 *   of KT_BWD columns of dX, decodes NC_BWD x KT_BWD weight tiles, and runs a micro-kernel
 *   of MR_BWD broadcast dY values times 2 vectors of a weight row. */

#define MR_FWD (2 * VLEN)     /* rows of X per forward micro-tile */
#define NT_FWD (4 * NR_FWD)   /* weight rows per forward task */
#define KC_FWD 256            /* columns per forward tile (a multiple of 32) */
#define NW_BWD (2 * VLEN)     /* columns of dX per backward micro-tile */
#define KT_BWD (4 * NW_BWD)   /* columns of dX per backward task */
#define NC_BWD 256            /* weight rows per backward tile */

/* Rows of the large-M products are split in rt_threads() chunks of panels, chunk c being
 * [c * panels / chunks, (c + 1) * panels / chunks): the same split as rt_parallel's shares
 * of the pack tasks (one per panel), and tasks numbered chunk-major, so that each thread
 * gets its own chunk first and multiplies the rows it packed and produced in the step
 * before, still in its cache (docs/quantization.md, Kernels). A chunk may be empty (fewer
 * panels than threads). When the pool is busy and the caller runs every task itself, it
 * decodes each weight tile once per chunk, against a chunk's rows of FMAs per decode. */
static inline int chunk_panel(int c, int panels)
{
    return (int)((long)c * panels / rt_threads());
}

typedef struct {
    const qt_matrix *w;
    const float *x;
    float *xt;    /* X^T in panels: xt[(p * K + k) * MR_FWD + i] = X[p * MR_FWD + i][k] */
    float *y;
    float *scratch;
    int M, accumulate;
    int panels, blocks; /* task t: chunk t / blocks (chunk_panel), weight block t % blocks */
} gemm_ctx;

/* dst[k * mr + i] = row i of src (len floats, rows `len` apart) at k, for i < mr and
 * k < len; rows from `valid` on are zeros: a panel of X (forward) or dY (backward). */
static void pack_transposed(float *restrict dst, const float *restrict src, int valid, int mr, int len)
{
    /* in blocks of 64 columns, so that the block of dst being filled stays in L1 */
    for (int k0 = 0; k0 < len; k0 += 64) {
        int kn = imin(64, len - k0);
        for (int i = 0; i < mr; i++) {
            float *d = dst + (size_t)k0 * mr + i;
            const float *s = src + (size_t)i * len + k0;
            if (i < valid)
                for (int k = 0; k < kn; k++)
                    d[(size_t)k * mr] = s[k];
            else
                for (int k = 0; k < kn; k++)
                    d[(size_t)k * mr] = 0.0f;
        }
    }
}

static void pack_x_task(void *ctx, int p, int thread)
{
    (void)thread;
    const gemm_ctx *c = ctx;
    const int K = c->w->cols;
    pack_transposed(c->xt + (size_t)p * K * MR_FWD, c->x + (size_t)p * MR_FWD * K, c->M - p * MR_FWD, MR_FWD, K);
}

/* c[j][i] = sum over k of xp[k][i] * wd[j][k], for a whole MR_FWD x NR_FWD tile. */
static inline void micro_fwd(int kc, const float *xp, const float *wd, int ldw, float *c)
{
    vf acc[NR_FWD][2];
#pragma GCC unroll 16
    for (int j = 0; j < NR_FWD; j++)
        acc[j][0] = acc[j][1] = vzero();
    for (int k = 0; k < kc; k++) {
        vf a0 = vload(xp + (size_t)k * MR_FWD), a1 = vload(xp + (size_t)k * MR_FWD + VLEN);
#pragma GCC unroll 16
        for (int j = 0; j < NR_FWD; j++) {
            vf b = vset1(wd[(size_t)j * ldw + k]);
            acc[j][0] = vfma(a0, b, acc[j][0]);
            acc[j][1] = vfma(a1, b, acc[j][1]);
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < NR_FWD; j++) {
        vstore(c + j * MR_FWD, acc[j][0]);
        vstore(c + j * MR_FWD + VLEN, acc[j][1]);
    }
}

static void gemm_task(void *ctx, int t, int thread)
{
    const gemm_ctx *c = ctx;
    const qt_matrix *w = c->w;
    const int K = w->cols, N = w->rows, n0 = t % c->blocks * NT_FWD, nr = imin(NT_FWD, N - n0);
    const int p0 = chunk_panel(t / c->blocks, c->panels), p1 = chunk_panel(t / c->blocks + 1, c->panels);
    float *wd = c->scratch + (size_t)thread * NT_FWD * KC_FWD;
    float tile[NR_FWD * MR_FWD];
    if (p0 == p1)
        return;
    for (int k0 = 0; k0 < K; k0 += KC_FWD) {
        int kc = imin(KC_FWD, K - k0);
        int fresh = k0 == 0 && !c->accumulate;
        decode_tile(w, n0, NT_FWD, k0, kc, KC_FWD, wd);
        for (int p = p0; p < p1; p++) {
            const float *xp = c->xt + ((size_t)p * K + k0) * MR_FWD;
            int mr = imin(MR_FWD, c->M - p * MR_FWD);
            for (int j = 0; j < nr; j += NR_FWD) {
                micro_fwd(kc, xp, wd + (size_t)j * KC_FWD, KC_FWD, tile);
                int nj = imin(NR_FWD, nr - j);
                for (int i = 0; i < mr; i++) {
                    float *yr = c->y + (size_t)(p * MR_FWD + i) * N + n0 + j;
                    for (int jj = 0; jj < nj; jj++)
                        yr[jj] = (fresh ? 0.0f : yr[jj]) + tile[jj * MR_FWD + i];
                }
            }
        }
    }
}

/* Y = X W^T, X of M >= 1 rows. */
static int gemm_matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    int panels = (M + MR_FWD - 1) / MR_FWD;
    gemm_ctx c = {w, x, NULL, y, NULL, M, accumulate, panels, (w->rows + NT_FWD - 1) / NT_FWD};
    c.xt = rt_workspace(RT_WS_PACK, (size_t)panels * w->cols * MR_FWD * sizeof(float));
    c.scratch = qt_scratch((size_t)NT_FWD * KC_FWD);
    if (!c.xt || !c.scratch)
        return -1;
    rt_parallel(panels, pack_x_task, &c);
    rt_parallel(rt_threads() * c.blocks, gemm_task, &c);
    return 0;
}

/* ---- dX = dY W ---- */

typedef struct {
    const qt_matrix *w;
    const float *dy;
    float *dyt;   /* dY^T in panels: dyt[(p * N + n) * MR_BWD + i] = dY[p * MR_BWD + i][n] */
    float *dx;
    float *scratch;
    int M, accumulate;
    int panels, blocks; /* task t: chunk t / blocks (chunk_panel), column block t % blocks */
} gemm_t_ctx;

static void pack_dy_task(void *ctx, int p, int thread)
{
    (void)thread;
    const gemm_t_ctx *c = ctx;
    const int N = c->w->rows;
    pack_transposed(c->dyt + (size_t)p * N * MR_BWD, c->dy + (size_t)p * MR_BWD * N, c->M - p * MR_BWD, MR_BWD, N);
}

/* c[i][k] = sum over n of dyp[n][i] * wd[n][k], for MR_BWD rows x NW_BWD columns. */
static inline void micro_bwd(int nc, const float *dyp, const float *wd, int ldw, float *c)
{
    vf acc[MR_BWD][2];
#pragma GCC unroll 16
    for (int i = 0; i < MR_BWD; i++)
        acc[i][0] = acc[i][1] = vzero();
    for (int n = 0; n < nc; n++) {
        vf w0 = vload(wd + (size_t)n * ldw), w1 = vload(wd + (size_t)n * ldw + VLEN);
#pragma GCC unroll 16
        for (int i = 0; i < MR_BWD; i++) {
            vf b = vset1(dyp[(size_t)n * MR_BWD + i]);
            acc[i][0] = vfma(b, w0, acc[i][0]);
            acc[i][1] = vfma(b, w1, acc[i][1]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR_BWD; i++) {
        vstore(c + i * NW_BWD, acc[i][0]);
        vstore(c + i * NW_BWD + VLEN, acc[i][1]);
    }
}

static void gemm_t_task(void *ctx, int t, int thread)
{
    const gemm_t_ctx *c = ctx;
    const qt_matrix *w = c->w;
    const int K = w->cols, N = w->rows, k0 = t % c->blocks * KT_BWD, kt = imin(KT_BWD, K - k0);
    const int p0 = chunk_panel(t / c->blocks, c->panels), p1 = chunk_panel(t / c->blocks + 1, c->panels);
    float *wd = c->scratch + (size_t)thread * NC_BWD * KT_BWD;
    float tile[MR_BWD * NW_BWD];
    if (p0 == p1)
        return;
    for (int n0 = 0; n0 < N; n0 += NC_BWD) {
        int nc = imin(NC_BWD, N - n0);
        int fresh = n0 == 0 && !c->accumulate;
        decode_tile(w, n0, nc, k0, kt, KT_BWD, wd);
        for (int p = p0; p < p1; p++) {
            const float *dyp = c->dyt + ((size_t)p * N + n0) * MR_BWD;
            int mr = imin(MR_BWD, c->M - p * MR_BWD);
            for (int kk = 0; kk < kt; kk += NW_BWD) {
                micro_bwd(nc, dyp, wd + kk, KT_BWD, tile);
                int nk = imin(NW_BWD, kt - kk);
                for (int i = 0; i < mr; i++) {
                    float *out = c->dx + (size_t)(p * MR_BWD + i) * K + k0 + kk;
                    for (int q = 0; q < nk; q++)
                        out[q] = (fresh ? 0.0f : out[q]) + tile[i * NW_BWD + q];
                }
            }
        }
    }
}

/* dX = dY W, any M. */
static int gemm_matmul_t(const qt_matrix *w, const float *dy, int M, float *dx, int accumulate)
{
    if (M <= 0)
        return 0;
    int panels = (M + MR_BWD - 1) / MR_BWD;
    gemm_t_ctx c = {w, dy, NULL, dx, NULL, M, accumulate, panels, (w->cols + KT_BWD - 1) / KT_BWD};
    c.dyt = rt_workspace(RT_WS_PACK, (size_t)panels * w->rows * MR_BWD * sizeof(float));
    c.scratch = qt_scratch((size_t)NC_BWD * KT_BWD);
    if (!c.dyt || !c.scratch)
        return -1;
    rt_parallel(panels, pack_dy_task, &c);
    rt_parallel(rt_threads() * c.blocks, gemm_t_task, &c);
    return 0;
}
