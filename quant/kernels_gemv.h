/* kernels_gemv.h: Y = X W^T for small M (decoding), formats stored row after row: each
 * weight chunk is decoded into registers and used at once against up to 4 rows of X;
 * nothing is written but Y. Part of kernels_body.h, after kernels_decode.h. Also what
 * every small-M kernel shares: the task sizes and small_ctx. */

/* ---- Y = X W^T, small M ---- */

/* Tasks of a small-M product of `work` vector lanes (a lane of a decoded format's FMA
 * is one multiply-add, a lane of a lookup four): each task of at least ~256K, so that
 * handing it to another thread costs little beside it (a small layer runs on the caller
 * alone), and up to 8 per thread, so that a thread the machine takes away leaves little
 * behind. */
static int small_m_tasks(long work)
{
    long most = 8L * rt_threads();
    return (int)((work >> 18) < 1 ? 1 : (work >> 18) < most ? work >> 18 : most);
}

typedef struct {
    const qt_matrix *w;
    const float *x;  /* rows of X as the kernel wants them (gemv_prepare, panel_prepare) */
    float *y;
    int M, accumulate;
    int per_task;    /* rows of W (stored row after row) or panels per task */
} small_ctx;

/* ---- small M, formats stored row after row: decode into registers ---- */

/* x in split order chunk by chunk (the ragged tail stays in natural order). */
static float *split_x(const float *x, int M, int K)
{
    float *xs = rt_workspace(RT_WS_PACK, (size_t)M * K * sizeof(float));
    if (!xs)
        return NULL;
    for (int m = 0; m < M; m++) {
        const float *src = x + (size_t)m * K;
        float *dst = xs + (size_t)m * K;
        int kv = K / 32 * 32;
        for (int k = 0; k < kv; k += 32)
            for (int p = 0; p < 32; p++)
                dst[k + p] = src[k + split_element(p)];
        memcpy(dst + kv, src + kv, (size_t)(K - kv) * sizeof(float));
    }
    return xs;
}

/* One row of X needs two chunks in flight to hide the FMA latency; more rows bring their
 * own independent accumulators. */
#define GEMV_UNROLL(MG) ((MG) == 1 ? 2 : 1)

/* acc[i][u] += the weights [k, k + 32) of the row times those of row i of x. */
ALWAYS_INLINE void gemv_chunk(const rowdec *d, int fmt, int MG, size_t K, const uint8_t *p,
                              size_t k, const float *x, vf acc[4][2][NV], int u)
{
    vf wv[NV];
    rowdec_chunk_at(d, fmt, split_order(fmt), p, k, wv);
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[i][u][v] = vfma(wv[v], vload(x + i * K + v * VLEN), acc[i][u][v]);
}

ALWAYS_INLINE void gemv_rows_fmt(const small_ctx *c, int fmt, int bs, int MG, int m0, int n0, int n1)
{
    const qt_matrix *w = c->w;
    const int K = w->cols, N = w->rows, U = GEMV_UNROLL(MG);
    const size_t kv = (size_t)K / 32 * 32;
    const float *x = c->x + (size_t)m0 * K;
    /* Columns that share block constants, bs where the caller knows it: a block, or the
     * whole row. Whole spans first, then what is left of the row's last block. */
    const size_t span = !qt_traits[fmt].blockwise ? kv : bs ? (size_t)bs : (size_t)w->spec.block;
    const size_t spans = span ? kv / span : 0;
    for (int n = n0; n < n1; n++) {
        rowdec d;
        rowdec_start(&d, w, n, fmt);
        vf acc[4][2][NV]; /* [row][unroll][vector] */
#pragma GCC unroll 4
        for (int i = 0; i < MG; i++)
#pragma GCC unroll 2
            for (int u = 0; u < U; u++)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[i][u][v] = vzero();
        /* p and xk walk the row's codes and x chunk by chunk */
        const size_t step = chunk_bytes(fmt);
        const uint8_t *p = d.row;
        const float *xk = x;
        for (size_t j = 0; j < spans; j++) {
            rowdec_block(&d, fmt, j);
            size_t left = span;
            for (; left >= 32 * (size_t)U; left -= 32 * U, p += U * step, xk += 32 * U)
#pragma GCC unroll 2
                for (int u = 0; u < U; u++)
                    gemv_chunk(&d, fmt, MG, K, p + u * step, (size_t)(xk - x) + 32 * u, xk + 32 * u, acc, u);
            if (left) { /* 32-column blocks */
                gemv_chunk(&d, fmt, MG, K, p, (size_t)(xk - x), xk, acc, 0);
                p += step, xk += 32;
            }
        }
        if (xk < x + kv)
            rowdec_block(&d, fmt, spans);
        for (; xk < x + kv; p += step, xk += 32)
            gemv_chunk(&d, fmt, MG, K, p, (size_t)(xk - x), xk, acc, 0);
        float tail[32];
        if (kv < (size_t)K)
            qt_decode_range(w, n, (int)kv, K, tail);
#pragma GCC unroll 4
        for (int i = 0; i < MG; i++) {
            vf sum = acc[i][0][0];
#pragma GCC unroll 2
            for (int u = 0; u < U; u++)
#pragma GCC unroll 4
                for (int v = u == 0; v < NV; v++)
                    sum = vadd(sum, acc[i][u][v]);
            float s = vhsum(sum);
            for (size_t t = kv; t < (size_t)K; t++)
                s += tail[t - kv] * x[(size_t)i * K + t];
            float *out = c->y + (size_t)(m0 + i) * N + n;
            *out = c->accumulate ? *out + s : s;
        }
    }
}

/* Task t of a small-M product: rows [t * per_task, (t + 1) * per_task) of W. */
ALWAYS_INLINE void gemv_task_fmt(const small_ctx *c, int fmt, int t)
{
    const int n0 = t * c->per_task, n1 = imin(n0 + c->per_task, c->w->rows);
    for (int m0 = 0; m0 < c->M; m0 += 4) {
        switch (imin(4, c->M - m0)) {
        case 1: /* the default block as a constant: a block is then two straight chunks */
            if (c->w->spec.block == 64 && qt_traits[fmt].blockwise)
                gemv_rows_fmt(c, fmt, 64, 1, m0, n0, n1);
            else
                gemv_rows_fmt(c, fmt, 0, 1, m0, n0, n1);
            break;
        case 2: gemv_rows_fmt(c, fmt, 0, 2, m0, n0, n1); break;
        case 3: gemv_rows_fmt(c, fmt, 0, 3, m0, n0, n1); break;
        default: gemv_rows_fmt(c, fmt, 0, 4, m0, n0, n1); break;
        }
    }
}

/* What the kernels take for x: the rows in split order for nibble codes, else x itself;
 * *work: the vector lanes of the product (small_m_tasks). NULL when out of memory. */
static const float *gemv_prepare(const qt_matrix *w, const float *x, int M, long *work)
{
    *work = (long)M * w->rows * w->cols;
    return split_order(w->spec.format) ? split_x(x, M, w->cols) : x;
}
