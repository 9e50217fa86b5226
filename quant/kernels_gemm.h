/* kernels_gemm.h: the large-M products (prefill, training), part of kernels_body.h
 * after kernels_decode.h. One driver in two roles, which share the packing, the tile
 * decoding and the micro-kernel:
 * - GEMM_FWD, Y = X W^T: X is packed transposed in panels of MR_FWD rows; each task owns
 *   NT_FWD rows of W (columns of Y), decodes tiles of them x KC_FWD columns into a
 *   cache-resident buffer and runs the micro-kernel with 2 vectors of X^T times NR_FWD
 *   broadcast weights per step;
 * - GEMM_BWD, dX = dY W: dY is packed transposed in panels of MR_BWD rows; each task owns
 *   a strip of KT_BWD columns of W (of dX), decodes NC_BWD x KT_BWD weight tiles and runs
 *   the micro-kernel with 2 vectors of a weight row times MR_BWD broadcast dY values. */

#define MR_FWD (2 * VLEN)     /* rows of X per forward micro-tile */
#define NT_FWD (4 * NR_FWD)   /* weight rows per forward task */
#define KC_FWD 256            /* columns per forward tile (a multiple of 32) */
#define NW_BWD (2 * VLEN)     /* columns of dX per backward micro-tile */
#define KT_BWD (4 * NW_BWD)   /* columns of dX per backward task */
#define NC_BWD 256            /* weight rows per backward tile */

typedef enum { GEMM_FWD, GEMM_BWD } gemm_role;

/* A role's sizes, constants in the inlined driver: rows of the packed operand per panel
 * (and per micro-tile), outputs per task, the reduction per tile, and outputs per
 * micro-tile (its broadcast side forward, its vector side backward). */
#define GEMM_MR(role) ((role) == GEMM_FWD ? MR_FWD : MR_BWD)
#define GEMM_OUT(role) ((role) == GEMM_FWD ? NT_FWD : KT_BWD)
#define GEMM_RED(role) ((role) == GEMM_FWD ? KC_FWD : NC_BWD)
#define GEMM_STEP(role) ((role) == GEMM_FWD ? NR_FWD : NW_BWD)
#define MICRO_R (NR_FWD > MR_BWD ? NR_FWD : MR_BWD) /* broadcast values per micro-step */

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
    const float *a;     /* the packed operand: X [M x K] forward, dY [M x N] backward */
    float *at;          /* A^T in panels: at[(p * len + k) * mr + i] = A[p * mr + i][k] */
    float *out;         /* Y [M x N], or dX [M x K] */
    float *scratch;
    int M, accumulate;
    int mr, len;        /* rows of A per panel, and its row length (the reduction's) */
    int panels, blocks; /* task t: chunk t / blocks (chunk_panel), output block t % blocks */
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

static void pack_task(void *ctx, int p, int thread)
{
    (void)thread;
    const gemm_ctx *c = ctx;
    const size_t panel = (size_t)p * c->mr * c->len;
    pack_transposed(c->at + panel, c->a + panel, c->M - p * c->mr, c->mr, c->len);
}

/* c[r * 2 VLEN + v] = sum over t < len of a[t * as + v] * b[t * bt + r * br], for r < R and
 * v < 2 VLEN: per step, 2 vectors of a times R broadcast values of b, in registers. */
ALWAYS_INLINE void micro(int R, int len, const float *a, size_t as, const float *b, size_t bt,
                         size_t br, float *c)
{
    vf acc[MICRO_R][2];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
        acc[r][0] = acc[r][1] = vzero();
    for (int t = 0; t < len; t++) {
        vf a0 = vload(a + (size_t)t * as), a1 = vload(a + (size_t)t * as + VLEN);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            vf x = vset1(b[(size_t)t * bt + (size_t)r * br]);
            acc[r][0] = vfma(a0, x, acc[r][0]);
            acc[r][1] = vfma(a1, x, acc[r][1]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
        vstore(c + r * 2 * VLEN, acc[r][0]);
        vstore(c + r * 2 * VLEN + VLEN, acc[r][1]);
    }
}

/* Task t: the outputs [o0, o0 + OUT) of one block (rows of W forward, columns of W
 * backward) for the rows of a chunk of panels, tile after tile of the reduction. */
ALWAYS_INLINE void gemm_task_role(const gemm_ctx *c, int role, int t, int thread)
{
    const qt_matrix *w = c->w;
    const int fwd = role == GEMM_FWD;
    const int MR = GEMM_MR(role), OUT = GEMM_OUT(role), RED = GEMM_RED(role), STEP = GEMM_STEP(role);
    const int len = c->len, width = fwd ? w->rows : w->cols; /* the reduction; a row of out */
    const int o0 = t % c->blocks * OUT, on = imin(OUT, width - o0);
    const int p0 = chunk_panel(t / c->blocks, c->panels), p1 = chunk_panel(t / c->blocks + 1, c->panels);
    float *wd = c->scratch + (size_t)thread * OUT * RED;
    float tile[MICRO_R * 2 * VLEN];
    if (p0 == p1)
        return;
    for (int r0 = 0; r0 < len; r0 += RED) {
        int rn = imin(RED, len - r0);
        int fresh = r0 == 0 && !c->accumulate;
        /* forward: OUT rows of W (zeros past its end) x rn columns, RED apart; backward:
         * rn rows x on columns, OUT apart (zeros up to OUT) */
        if (fwd)
            decode_tile(w, o0, OUT, r0, rn, RED, wd);
        else
            decode_tile(w, r0, rn, o0, on, OUT, wd);
        for (int p = p0; p < p1; p++) {
            const float *ap = c->at + ((size_t)p * len + r0) * MR;
            int mr = imin(MR, c->M - p * MR);
            for (int j = 0; j < on; j += STEP) {
                if (fwd) /* X^T's panel times NR_FWD weight rows: tile[jj][i] */
                    micro(NR_FWD, rn, ap, MR_FWD, wd + (size_t)j * RED, 1, RED, tile);
                else /* a weight row's NW_BWD columns times dY^T's panel: tile[i][jj] */
                    micro(MR_BWD, rn, wd + j, OUT, ap, MR_BWD, 1, tile);
                int nj = imin(STEP, on - j);
                for (int i = 0; i < mr; i++) {
                    float *o = c->out + (size_t)(p * MR + i) * width + o0 + j;
                    for (int jj = 0; jj < nj; jj++)
                        o[jj] = (fresh ? 0.0f : o[jj]) + tile[fwd ? jj * MR_FWD + i : i * NW_BWD + jj];
                }
            }
        }
    }
}

static void gemm_fwd_task(void *ctx, int t, int thread)
{
    gemm_task_role(ctx, GEMM_FWD, t, thread);
}

static void gemm_bwd_task(void *ctx, int t, int thread)
{
    gemm_task_role(ctx, GEMM_BWD, t, thread);
}

/* Y = X W^T (GEMM_FWD, a = X) or dX = dY W (GEMM_BWD, a = dY), A of M rows. */
static int gemm(const qt_matrix *w, gemm_role role, const float *a, int M, float *out, int accumulate)
{
    if (M <= 0)
        return 0;
    const int fwd = role == GEMM_FWD, mr = GEMM_MR(role), out_len = fwd ? w->rows : w->cols;
    const int panels = (M + mr - 1) / mr;
    gemm_ctx c = {w, a, NULL, out, NULL, M, accumulate, mr, fwd ? w->cols : w->rows, panels,
                  (out_len + GEMM_OUT(role) - 1) / GEMM_OUT(role)};
    c.at = rt_workspace(RT_WS_PACK, (size_t)panels * c.len * mr * sizeof(float));
    c.scratch = qt_scratch((size_t)GEMM_OUT(role) * GEMM_RED(role));
    if (!c.at || !c.scratch)
        return -1;
    rt_parallel(panels, pack_task, &c);
    rt_parallel(rt_threads() * c.blocks, fwd ? gemm_fwd_task : gemm_bwd_task, &c);
    return 0;
}
