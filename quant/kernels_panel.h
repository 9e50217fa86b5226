/* kernels_panel.h: Y = X W^T for small M, PANEL formats: 16 rows of W per vector. nf4 and
 * fp4 look codes up unscaled and scale each block's sums, bitnet1 and ternary look 4
 * weights at a time up in tables of partial sums of x. Part of kernels_body.h, after
 * kernels_gemv.h. */

/* ---- Y = X W^T, small M, panel formats: 16 rows of W at a time ----
 * Both kernels load a panel word (formats.h) as 16 lanes, one row of W each, and shift it
 * by 4g so that nibble g of every lane indexes a 16-entry table (vpermps):
 * - bitnet1, ternary: the lookup-table idea of T-MAC and of bitnet.cpp's TL kernels, in
 *   fp32 on bit planes. For every 4 consecutive columns of a row of x, a table holds what
 *   each pattern of 4 weight bits contributes (bitnet1: the sum of bit ? x : -x over the 4
 *   columns; ternary, for either plane: the sum of x over the set bits), built once per
 *   call and shared by all N rows. Nibble g of word c indexes table 8c + g, so one lookup
 *   and one add do 4 multiply-adds for 16 rows. The row scale (beta, or ternary's step)
 *   multiplies the finished sum.
 * - nf4, fp4: nibble g of word c is the code of column 8c + g; its lookup in the code
 *   table gives the 16 rows' unscaled weights, and one FMA with that element of x
 *   broadcast adds them in. Each block's sums are then scaled at once by the 16 rows'
 *   absmax, stored side by side (qt_block_slot). Decoding row by row instead costs an
 *   index vector per 16 weights and, per block, a scalar absmax decode and a scaled table. */

#define PANEL_ROWS 4 /* rows of X per pass over a panel, sharing its loads and lookups */
#define LUT_GROUPS 8 /* 4-column groups per 32-column word */

/* small_ctx.x of the panel kernels: bit codes (bitnet1, ternary), per row of X its tables
 * ([words * LUT_GROUPS][16]); nibble codes (nf4, fp4), the rows of X padded with zeros to
 * whole words. */

/* The tables of one row of x (columns past K count as zero); with one plane a bit not set
 * stands for -x. */
static void lut_tables(const float *x, int K, int words, int planes, float *t)
{
    float sel[4][16]; /* the factor of column i of a group in entry e */
    for (int i = 0; i < 4; i++)
        for (int e = 0; e < 16; e++)
            sel[i][e] = e >> i & 1 ? 1.0f : planes == 1 ? -1.0f : 0.0f;
    for (int g = 0; g < words * LUT_GROUPS; g++, t += 16) {
        float xg[4];
        for (int i = 0; i < 4; i++)
            xg[i] = 4 * g + i < K ? x[4 * g + i] : 0.0f;
#pragma GCC unroll 2
        for (int h = 0; h < 16; h += VLEN) {
            vf v = vzero();
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) /* exact products by +-1 or 0: one rounding per add */
                v = vfma(vset1(xg[i]), vload(sel[i] + h), v);
            vstore(t + h, v);
        }
    }
}

/* acc[i] += row m0 + i of X times the panel's rows, bit codes. */
ALWAYS_INLINE void lut_rows_fmt(const small_ctx *c, int fmt, int MG, int m0, int p,
                                vf acc[PANEL_ROWS][QT_PANEL / VLEN])
{
    const qt_matrix *w = c->w;
    const int words = qt_panel_words(w, fmt), planes = qt_traits[fmt].planes;
    const size_t tstride = (size_t)words * LUT_GROUPS * 16; /* floats per row of x */
    const uint32_t *q = qt_panel_row(w, fmt, p * QT_PANEL);
    const float *t = c->x + (size_t)m0 * tstride;
    for (int cw = 0; cw < words; cw++, q += planes * QT_PANEL, t += LUT_GROUPS * 16) {
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++) {
            vi plus = vload_i(q + h * VLEN);
            vi minus = planes == 2 ? vload_i(q + QT_PANEL + h * VLEN) : plus;
#pragma GCC unroll 4
            for (int i = 0; i < MG; i++) {
                vf s[LUT_GROUPS];
#pragma GCC unroll 8
                for (int g = 0; g < LUT_GROUPS; g++) {
                    lut16 tg = lut_load(t + i * tstride + g * 16);
                    s[g] = vlookup16(vsrli(plus, 4 * g), tg);
                    if (planes == 2)
                        s[g] = vsub(s[g], vlookup16(vsrli(minus, 4 * g), tg));
                }
                /* a tree, so that only one add per word waits on the accumulator */
#pragma GCC unroll 3
                for (int step = 1; step < LUT_GROUPS; step *= 2)
#pragma GCC unroll 4
                    for (int g = 0; g < LUT_GROUPS; g += 2 * step)
                        s[g] = vadd(s[g], s[g + step]);
                acc[i][h] = vadd(acc[i][h], s[0]);
            }
        }
    }
}

/* The absmax of a block of the panel's rows at `slot`: qt_block_absmax, 16 at a time;
 * a2 holds their double-quant groups' absmax2. */
ALWAYS_INLINE vf nib_absmax(const qt_matrix *w, int dq, size_t slot, vf a2)
{
    if (!dq)
        return vload(w->scale + slot);
    return vadd(vmul(vlookup256(vload_u8(w->qabsmax + slot), qt_dynamic_map_table), a2),
                vset1(w->offset));
}

/* The first block after j at which one of the panel's rows (rowb: the row-major index of
 * each row's first block) enters another double-quant group. */
static int nib_next_group(const int32_t *rowb, int j)
{
    int next = j + QT_DQ_GROUP;
    for (int r = 0; r < QT_PANEL; r++)
        next = imin(next, j + QT_DQ_GROUP - (rowb[r] + j) % QT_DQ_GROUP);
    return next;
}

/* acc[i] += row m0 + i of X times the panel's rows, nibble codes. */
ALWAYS_INLINE void nib_rows_fmt(const small_ctx *c, int fmt, int dq, int MG, int m0, int p,
                                vf acc[PANEL_ROWS][QT_PANEL / VLEN])
{
    const qt_matrix *w = c->w;
    const int words = qt_panel_words(w, fmt), bpr = w->blocks_per_row, bw = w->spec.block / 8;
    const int NP = MG == 1 ? 4 : MG == 2 ? 2 : 1; /* partial sums per row of X, for the FMA latency */
    const size_t xstride = (size_t)words * 8;
    const uint32_t *q = qt_panel_row(w, fmt, p * QT_PANEL);
    const float *x = c->x + (size_t)m0 * xstride;
    const lut16 table = lut_load(qt_traits[fmt].table);
    int32_t rowb[QT_PANEL]; /* the padding rows of the last panel borrow the last row's */
    for (int r = 0; r < QT_PANEL; r++)
        rowb[r] = imin(p * QT_PANEL + r, w->rows - 1) * bpr;
    /* dq: the rows' absmax2, gathered again only where a row enters another group (never
     * within a row when its blocks divide 256) */
    vf a2[QT_PANEL / VLEN] = {vzero()}; /* (set at j = 0; the initializer quiets GCC) */
    int regroup = 0;
    for (int j = 0; j < bpr; j++) {
        if (dq && j == regroup) {
            _Static_assert(QT_DQ_GROUP == 256, "the group is found by a shift");
#pragma GCC unroll 2
            for (int h = 0; h < QT_PANEL / VLEN; h++)
                a2[h] = vgather(w->absmax2, vsrli(vadd_i(vload_i((const uint32_t *)rowb + h * VLEN),
                                                         vset1_i(j)), 8));
            regroup = nib_next_group(rowb, j);
        }
        vf part[PANEL_ROWS][4][QT_PANEL / VLEN];
#pragma GCC unroll 4
        for (int i = 0; i < MG; i++)
#pragma GCC unroll 4
            for (int u = 0; u < NP; u++)
#pragma GCC unroll 2
                for (int h = 0; h < QT_PANEL / VLEN; h++)
                    part[i][u][h] = vzero();
        for (int cw = j * bw, c1 = imin(cw + bw, words); cw < c1; cw++) {
#pragma GCC unroll 2
            for (int h = 0; h < QT_PANEL / VLEN; h++) {
                vi v = vload_i(q + (size_t)cw * QT_PANEL + h * VLEN);
#pragma GCC unroll 8
                for (int g = 0; g < 8; g++) {
                    vf wt = vlookup16(g ? vsrli(v, 4 * g) : v, table);
#pragma GCC unroll 4
                    for (int i = 0; i < MG; i++)
                        part[i][g % NP][h] = vfma(wt, vset1(x[i * xstride + (size_t)cw * 8 + g]),
                                                  part[i][g % NP][h]);
                }
            }
        }
        const size_t slot = ((size_t)p * bpr + j) * QT_PANEL;
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++) {
            vf a = nib_absmax(w, dq, slot + h * VLEN, a2[h]);
#pragma GCC unroll 4
            for (int i = 0; i < MG; i++) {
                vf sum = part[i][0][h];
#pragma GCC unroll 4
                for (int u = 1; u < NP; u++)
                    sum = vadd(sum, part[i][u][h]);
                acc[i][h] = vfma(sum, a, acc[i][h]);
            }
        }
    }
}

/* Y's entries of rows m0 .. m0 + MG - 1 of X for the panel's rows. */
ALWAYS_INLINE void panel_rows(const small_ctx *c, int fmt, int dq, int MG, int m0, int p)
{
    const qt_matrix *w = c->w;
    vf acc[PANEL_ROWS][QT_PANEL / VLEN];
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++)
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++)
            acc[i][h] = vzero();
    if (qt_traits[fmt].bits == 1)
        lut_rows_fmt(c, fmt, MG, m0, p, acc);
    else
        nib_rows_fmt(c, fmt, dq, MG, m0, p, acc);
    const int n0 = p * QT_PANEL, nr = imin(QT_PANEL, w->rows - n0);
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++) {
        float sum[QT_PANEL];
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++)
            vstore(sum + h * VLEN, acc[i][h]);
        float *yr = c->y + (size_t)(m0 + i) * w->rows + n0;
        for (int r = 0; r < nr; r++) {
            float v = qt_traits[fmt].scale == QT_SCALE_ROW ? w->scale[n0 + r] * sum[r] : sum[r];
            yr[r] = c->accumulate ? yr[r] + v : v;
        }
    }
}

ALWAYS_INLINE void panel_task_dq(const small_ctx *c, int fmt, int dq, int p0, int p1)
{
    for (int p = p0; p < p1; p++)
        for (int m0 = 0; m0 < c->M; m0 += PANEL_ROWS) {
            switch (imin(PANEL_ROWS, c->M - m0)) {
            case 1: panel_rows(c, fmt, dq, 1, m0, p); break;
            case 2: panel_rows(c, fmt, dq, 2, m0, p); break;
            case 3: panel_rows(c, fmt, dq, 3, m0, p); break;
            default: panel_rows(c, fmt, dq, 4, m0, p); break;
            }
        }
}

/* Task t of a small-M product: panels [t * per_task, (t + 1) * per_task) of W, with
 * double_quant as a constant in the hot loop. */
ALWAYS_INLINE void panel_task_fmt(const small_ctx *c, int fmt, int t)
{
    const int panels = (c->w->rows + QT_PANEL - 1) / QT_PANEL;
    const int p0 = t * c->per_task, p1 = imin(p0 + c->per_task, panels);
    if (qt_traits[fmt].dq && c->w->spec.double_quant)
        panel_task_dq(c, fmt, 1, p0, p1);
    else
        panel_task_dq(c, fmt, 0, p0, p1);
}

/* What the panel kernels take for x (small_ctx.x above), and *work the vector lanes of the
 * product (small_m_tasks). NULL when out of memory. */
static const float *panel_prepare(const qt_matrix *w, const float *x, int M, long *work)
{
    const qt_format f = w->spec.format;
    const int K = w->cols, words = qt_panel_words(w, f);
    if (qt_traits[f].bits == 1) {
        const size_t tstride = (size_t)words * LUT_GROUPS * 16;
        float *tables = rt_workspace(RT_WS_PACK, (size_t)M * tstride * sizeof(float));
        if (!tables)
            return NULL;
        for (int m = 0; m < M; m++)
            lut_tables(x + (size_t)m * K, K, words, qt_traits[f].planes, tables + (size_t)m * tstride);
        *work = (long)M * w->rows * words * LUT_GROUPS * qt_traits[f].planes;
        return tables;
    }
    const size_t xstride = (size_t)words * 8;
    float *xp = rt_workspace(RT_WS_PACK, (size_t)M * xstride * sizeof(float));
    if (!xp)
        return NULL;
    for (int m = 0; m < M; m++) { /* rows padded with zeros to whole panel words */
        memcpy(xp + m * xstride, x + (size_t)m * K, (size_t)K * sizeof(float));
        memset(xp + m * xstride + K, 0, (xstride - K) * sizeof(float));
    }
    *work = (long)M * w->rows * K;
    return xp;
}
