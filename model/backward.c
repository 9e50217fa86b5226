/* backward.c: gradients of the adapters through the frozen quantized base (forward.h).
 * Each step undoes one step of llama_forward, in reverse; the input gradient of every
 * base linear goes through the transposed fused kernel (qt_matmul_t), and only the LoRA
 * matrices collect gradients. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "layer_ops.h"
#include "parallel.h"
#include "pool_sgemm.h"
#include "workspace.h"

/* dx (+)= dy W, plus the adapter's part; the adapter's A and B gradients are added into
 * grads. x is the linear's forward input; du is [M x rank] scratch. dx NULL: the input
 * gradient is not wanted (layer 0's q, k, v: nothing lies below them but the frozen
 * embedding), only the adapter's gradients. */
static int linear_backward(const llama_model *m, const llama_lora *ad, const llama_acts *a,
                           const llama_layer_acts *la, int layer, llama_linear k, const float *x, const float *dy,
                           int M, float *dx, int accumulate, float *grads, float *du)
{
    int rc = dx ? qt_matmul_t(&m->layers[layer].lin[k], dy, M, dx, accumulate) : 0;
    if (rc || !llama_lora_has(ad, layer, k))
        return rc;
    const llama_config *c = &m->cfg;
    int out, in, r = ad->rank;
    llama_linear_shape(c, k, &out, &in);
    const float *u = llama_layer_u(la, a, k, (size_t)M);
    const float *A = llama_lora_a(ad, ad->params, layer, k), *Bm = llama_lora_b(ad, c, ad->params, layer, k);
    float *dA = llama_lora_a(ad, grads, layer, k), *dB = llama_lora_b(ad, c, grads, layer, k);
    /* dB += scale dy^T u;  du = scale dy B;  dA += du^T d(x);  dx += d'(du A) */
    pool_sgemm(CblasTrans, CblasNoTrans, out, r, M, ad->scale, dy, out, u, r, 1.0f, dB, r);
    pool_sgemm(CblasNoTrans, CblasNoTrans, M, r, out, ad->scale, dy, out, Bm, r, 0.0f, du, r);
    int dropout = a->mode == LLAMA_TRAIN && ad->dropout > 0;
    const float *xin = x;
    if (dropout) {
        for (size_t i = 0; i < (size_t)M; i++)
            for (int j = 0; j < in; j++)
                a->scratch[i * in + j] = x[i * in + j] * llama_lora_keep(ad, layer, k, i, (size_t)j);
        xin = a->scratch;
    }
    pool_sgemm(CblasTrans, CblasNoTrans, r, in, M, 1.0f, du, r, xin, in, 1.0f, dA, in);
    if (!dx)
        return 0;
    if (!dropout) {
        pool_sgemm(CblasNoTrans, CblasNoTrans, M, in, r, 1.0f, du, r, A, in, 1.0f, dx, in);
    } else {
        pool_sgemm(CblasNoTrans, CblasNoTrans, M, in, r, 1.0f, du, r, A, in, 0.0f,
                    a->scratch, in);
        for (size_t i = 0; i < (size_t)M; i++)
            for (int j = 0; j < in; j++)
                dx[i * in + j] += a->scratch[i * in + j] * llama_lora_keep(ad, layer, k, i, (size_t)j);
    }
    return 0;
}

int llama_backward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache,
                   int B, int T, float *dlogits, float *grads)
{
    const llama_config *c = &m->cfg;
    const int D = c->dim, KV = c->kv_dim, HD = c->hidden_dim, L = c->n_layers;
    const size_t M = (size_t)B * T, sMD = M * D, sMH = M * HD;
    const size_t wide = D > HD ? D : HD;
    if (cache->S != T || cache->B != B) /* the attention reads the cache as [B][..][T] */
        return -1;
    /* dx: gradient of the residual stream; then per-layer scratch (kept by the thread
     * between steps: workspace.h) */
    size_t floats = 3 * sMD + 2 * M * KV + 3 * M * wide + M * (size_t)(ad ? ad->rank : 1) +
                    (size_t)rt_threads() * T * T;
    float *buf = rt_workspace(RT_WS_CALLER, floats * sizeof(float));
    if (!buf)
        return -1;
    float *dx = buf, *dx2 = dx + sMD, *dq = dx2 + sMD, *dk = dq + sMD, *dv = dk + M * KV;
    float *d1 = dv + M * KV, *d2 = d1 + M * wide, *d3 = d2 + M * wide, *du = d3 + M * wide;
    float *attn_scratch = du + M * (size_t)(ad ? ad->rank : 1);
    int rc = 0;

    /* logits = xf Wcls^T; xf = rmsnorm(x[L]) */
    rc |= qt_matmul_t(llama_head(m), dlogits, (int)M, d1, 0);
    memset(dx, 0, sMD * sizeof(float));
    rmsnorm_backward(dx, d1, a->x + L * sMD, m->rms_final, a->rstdf, (int)M, D);

    for (int l = L - 1; l >= 0 && rc == 0; l--) {
        const llama_layer *ly = &m->layers[l];
        if (a->slots == 1 && a->held != l) /* one slot: this layer's intermediates again */
            rc |= llama_layer_forward(m, ad, a, cache, l, B, T, 0);
        const llama_layer_acts la = llama_layer_acts_of(a, c, l, B, T), *pa = &la;
        const float *x = la.x, *xn1 = la.xn1, *q = la.q, *ao = la.ao, *x2 = la.x2, *xn2 = la.xn2;
        const float *h1 = la.h1, *h3 = la.h3, *g = la.g;
        const float *kc = cache->k + (size_t)l * B * T * KV, *vc = cache->v + (size_t)l * B * T * KV;

        /* x[l+1] = x2 + down(g) */
        llama_copy(dx2, dx, sMD);
        float *dg = d1, *dh1 = d2, *dh3 = d3;
        rc |= linear_backward(m, ad, a, pa, l, LIN_DOWN, g, dx, (int)M, dg, 0, grads, du);
        swiglu_backward(dh1, dh3, dg, h1, h3, sMH);
        float *dxn2 = d1; /* dg is consumed */
        rc |= linear_backward(m, ad, a, pa, l, LIN_GATE, xn2, dh1, (int)M, dxn2, 0, grads, du);
        rc |= linear_backward(m, ad, a, pa, l, LIN_UP, xn2, dh3, (int)M, dxn2, 1, grads, du);
        rmsnorm_backward(dx2, dxn2, x2, ly->rms_ffn, la.rstd2, (int)M, D);

        /* x2 = x + o(ao) */
        llama_copy(dx, dx2, sMD);
        float *dao = d1;
        rc |= linear_backward(m, ad, a, pa, l, LIN_O, ao, dx2, (int)M, dao, 0, grads, du);
        attention_backward(c, dq, dk, dv, dao, q, kc, vc, la.att, attn_scratch, B, T);
        llama_rope_rows(m, dq, D, M, T, 0, 1);
        llama_rope_rows(m, dk, KV, M, T, 0, 1);
        float *dxn1 = l > 0 ? d2 : NULL; /* below layer 0 only the frozen embedding */
        rc |= linear_backward(m, ad, a, pa, l, LIN_Q, xn1, dq, (int)M, dxn1, 0, grads, du);
        rc |= linear_backward(m, ad, a, pa, l, LIN_K, xn1, dk, (int)M, dxn1, 1, grads, du);
        rc |= linear_backward(m, ad, a, pa, l, LIN_V, xn1, dv, (int)M, dxn1, 1, grads, du);
        if (dxn1)
            rmsnorm_backward(dx, dxn1, x, ly->rms_att, la.rstd1, (int)M, D);
    }
    return rc ? -1 : 0;
}
