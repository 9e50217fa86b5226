/* attention.c: causal self-attention of one layer over the cache, forward and backward
 * (the math: layer_ops.h). */
#include <math.h>
#include <string.h>

#include "layer_ops.h"
#include "parallel.h"
#include "pool_sgemm.h"

typedef struct {
    const llama_config *cfg;
    const float *q;     /* [B*T x dim] */
    const float *kt;    /* this layer's keys [B x kv_dim x S] */
    const float *v;     /* this layer's values [B x S x kv_dim] */
    float *att;         /* [B x H x T x S] */
    float *out;         /* [B*T x dim] */
    const int *start;   /* [B*T] packing (forward.h), or NULL */
    int B, T, S, pos0;
    int by_sgemm;       /* LLAMA_TRAIN: see attention_forward_task */
} attn_ctx;

/* Columns s0 .. s0+W-1 of dot_columns, their sums held in registers while i runs. */
static inline void dot_block(float *restrict out, const float *restrict a, const float *restrict bt, int len,
                             size_t ld, int s0, int W)
{
    float acc[64] = {0};
    for (int i = 0; i < len; i++)
        for (int j = 0; j < W; j++)
            acc[j] += a[i] * bt[(size_t)i * ld + s0 + j];
    memcpy(out + s0, acc, (size_t)W * sizeof(float));
}

/* out[s] = the sum over i = 0 .. len-1, in that order, of a[i] * bt[i * ld + s], for
 * s < n: the dot products of a with the columns of bt, each added up in the order of a
 * scalar loop (so attention scores are run.c's to the bit), vectorized across columns. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void dot_columns(float *restrict out, const float *restrict a, const float *restrict bt, int len, int n,
                        size_t ld)
{
    int s = 0;
    for (; s + 64 <= n; s += 64)
        dot_block(out, a, bt, len, ld, s, 64);
    /* the rest of the 16-column groups in one block: independent sums to overlap */
    switch ((n - s) / 16) {
    case 3: dot_block(out, a, bt, len, ld, s, 48), s += 48; break;
    case 2: dot_block(out, a, bt, len, ld, s, 32), s += 32; break;
    case 1: dot_block(out, a, bt, len, ld, s, 16), s += 16; break;
    }
    for (; s < n; s++)
        dot_block(out, a, bt, len, ld, s, 1);
}

/* att[lo..pos] = softmax of the (scaled) scores att[lo..pos]; zeros before and after
 * them, up to S. */
static void softmax_causal(float *restrict att, int lo, int pos, int S)
{
    memset(att, 0, (size_t)lo * sizeof(float));
    memset(att + pos + 1, 0, (size_t)(S - pos - 1) * sizeof(float));
    float max = -INFINITY;
    for (int s = lo; s <= pos; s++)
        max = att[s] > max ? att[s] : max;
    float sum = 0;
    for (int s = lo; s <= pos; s++) {
        att[s] = expf(att[s] - max);
        sum += att[s];
    }
    for (int s = lo; s <= pos; s++)
        att[s] /= sum;
}

/* One task per (sequence, head), in one of two ways:
 * - exact (inference, evaluation): the scores of all positions build up together from the
 *   transposed keys (dot_columns), each adding its products in run.c's order, so that
 *   generation and evaluation give run.c's values to the bit; the inner loops run over
 *   independent outputs and vectorize (target_clones picks the widths this CPU has).
 * - by sgemm (training): scores = Q K^T and out = P V as single-threaded sgemm over the
 *   causal triangle in blocks of LLAMA_ATT_BLOCK rows, as the backward does: another
 *   summation order, which training does not mind, at sgemm's speed. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void attention_forward_task(void *p, int task, int thread)
{
    (void)thread;
    const attn_ctx *c = p;
    const llama_config *cfg = c->cfg;
    const int H = cfg->n_heads, hs = cfg->head_size, D = cfg->q_dim, KV = cfg->kv_dim, S = c->S;
    const int b = task / H, h = task % H, kvh = h / (H / cfg->n_kv_heads);
    const float scale = 1.0f / sqrtf((float)hs);
    const float *kt = c->kt + ((size_t)b * KV + (size_t)kvh * hs) * S;
    const float *vb = c->v + (size_t)b * S * KV + (size_t)kvh * hs;
    const float *qb = c->q + (size_t)b * c->T * D + (size_t)h * hs;
    float *ob = c->out + (size_t)b * c->T * D + (size_t)h * hs;
    float *ab = c->att + ((size_t)b * H + h) * c->T * S;
    if (c->by_sgemm) { /* rows r0.. see keys 0 .. pos0 + r0 + rows - 1 */
        for (int r0 = 0; r0 < c->T; r0 += LLAMA_ATT_BLOCK) {
            int rows = c->T - r0 < LLAMA_ATT_BLOCK ? c->T - r0 : LLAMA_ATT_BLOCK, seen = c->pos0 + r0 + rows;
            float *ar = ab + (size_t)r0 * S;
            task_sgemm(CblasNoTrans, CblasNoTrans, rows, seen, hs, scale, qb + (size_t)r0 * D, D, kt, S, 0.0f, ar, S);
            for (int t = r0; t < r0 + rows; t++) /* packed: the scores before the example are dropped */
                softmax_causal(ab + (size_t)t * S, c->start ? c->start[(size_t)b * c->T + t] : 0, c->pos0 + t, S);
            task_sgemm(CblasNoTrans, CblasNoTrans, rows, hs, seen, 1.0f, ar, S, vb, KV, 0.0f, ob + (size_t)r0 * D, D);
        }
        return;
    }
    for (int t = 0; t < c->T; t++) {
        const int pos = c->pos0 + t, lo = c->start ? c->start[(size_t)b * c->T + t] : 0;
        float *restrict att = ab + (size_t)t * S;
        dot_columns(att + lo, qb + (size_t)t * D, kt + lo, hs, pos + 1 - lo, (size_t)S);
        for (int s = lo; s <= pos; s++)
            att[s] *= scale;
        softmax_causal(att, lo, pos, S);
        /* out[i] = sum over s of att[s] v_s[i], in s order: the columns of v */
        dot_columns(ob + (size_t)t * D, att + lo, vb + (size_t)lo * KV, pos + 1 - lo, hs, (size_t)KV);
    }
}

void attention_forward(const llama_config *cfg, float *out, float *att, const float *q, const float *kt,
                       const float *v, int B, int T, int S, int pos0, llama_mode mode, const int *start)
{
    attn_ctx c = {cfg, q, kt, v, att, out, start, B, T, S, pos0, mode == LLAMA_TRAIN};
    rt_parallel(B * cfg->n_heads, attention_forward_task, &c);
}

typedef struct {
    const llama_config *cfg;
    const float *q, *kt, *v, *att; /* forward values (kt, v: this layer's cache, S == T) */
    const float *dout;            /* [M x dim] gradient of the attention output */
    float *dq, *dk, *dv;          /* [M x dim], [M x kv_dim] x 2, written */
    float *scratch;               /* [threads x T x T]: dP, then dS, of one head */
    int B, T;
} attn_bwd_ctx;

/* One task per (sequence, kv head); the heads sharing a kv head add into the same dK, dV.
 * Per head, with P [T x T] zero above the diagonal, every product of layer_ops.h's
 * formulas is a single-threaded sgemm on this task's thread (dQ = dS K reads K
 * transposed, as cached). The products cover the causal triangle in blocks of LLAMA_ATT_BLOCK rows or columns
 * (the diagonal blocks' upper parts are zeros in P and dS), at sgemm's speed rather than
 * that of T^2 short vector loops. No summation order is owed to run.c here. */
static void attention_backward_task(void *p, int task, int thread)
{
    const attn_bwd_ctx *c = p;
    const llama_config *cfg = c->cfg;
    const int H = cfg->n_heads, hs = cfg->head_size, D = cfg->q_dim, KV = cfg->kv_dim, T = c->T;
    const int group = H / cfg->n_kv_heads, b = task / cfg->n_kv_heads, kvh = task % cfg->n_kv_heads;
    const float scale = 1.0f / sqrtf((float)hs);
    float *ds = c->scratch + (size_t)thread * T * T;
    const size_t kv0 = (size_t)b * T * KV + (size_t)kvh * hs;
    const float *kt = c->kt + ((size_t)b * KV + (size_t)kvh * hs) * T, *v = c->v + kv0;
    float *dk = c->dk + kv0, *dv = c->dv + kv0;
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const size_t q0 = (size_t)b * T * D + (size_t)h * hs;
        const float *att = c->att + ((size_t)b * H + h) * T * T, *dout = c->dout + q0, *q = c->q + q0;
        const float beta = h == kvh * group ? 0.0f : 1.0f; /* the group's first head writes */
        for (int r0 = 0; r0 < T; r0 += LLAMA_ATT_BLOCK) { /* dP's rows r0.., up to the diagonal */
            int rows = T - r0 < LLAMA_ATT_BLOCK ? T - r0 : LLAMA_ATT_BLOCK;
            task_sgemm(CblasNoTrans, CblasTrans, rows, r0 + rows, hs, 1.0f, dout + (size_t)r0 * D, D, v, KV, 0.0f,
                       ds + (size_t)r0 * T, T);
        }
        for (int t = 0; t < T; t++) {
            const float *pt = att + (size_t)t * T;
            float *dst = ds + (size_t)t * T, dsum = 0;
            for (int s = 0; s <= t; s++)
                dsum += pt[s] * dst[s];
            for (int s = 0; s <= t; s++)
                dst[s] = pt[s] * (dst[s] - dsum) * scale;
            for (int s = t + 1; s < T; s++)
                dst[s] = 0;
        }
        for (int r0 = 0; r0 < T; r0 += LLAMA_ATT_BLOCK) {
            /* dQ's rows r0.. from dS's columns up to the diagonal; dV's and dK's rows
             * (positions) r0.. from the rows of P and dS at or below them */
            int n = T - r0 < LLAMA_ATT_BLOCK ? T - r0 : LLAMA_ATT_BLOCK, below = T - r0;
            task_sgemm(CblasNoTrans, CblasTrans, n, hs, r0 + n, 1.0f, ds + (size_t)r0 * T, T, kt, T, 0.0f,
                       c->dq + q0 + (size_t)r0 * D, D);
            task_sgemm(CblasTrans, CblasNoTrans, n, hs, below, 1.0f, att + (size_t)r0 * T + r0, T,
                       dout + (size_t)r0 * D, D, beta, dv + (size_t)r0 * KV, KV);
            task_sgemm(CblasTrans, CblasNoTrans, n, hs, below, 1.0f, ds + (size_t)r0 * T + r0, T, q + (size_t)r0 * D,
                       D, beta, dk + (size_t)r0 * KV, KV);
        }
    }
}

void attention_backward(const llama_config *cfg, float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *kt, const float *v, const float *att, float *scratch, int B,
                        int T)
{
    attn_bwd_ctx c = {cfg, q, kt, v, att, dout, dq, dk, dv, scratch, B, T};
    rt_parallel(B * cfg->n_kv_heads, attention_backward_task, &c);
}
