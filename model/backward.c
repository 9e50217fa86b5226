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
        rope_backward(m, dq, D, M, T, 0);
        rope_backward(m, dk, KV, M, T, 0);
        float *dxn1 = l > 0 ? d2 : NULL; /* below layer 0 only the frozen embedding */
        rc |= linear_backward(m, ad, a, pa, l, LIN_Q, xn1, dq, (int)M, dxn1, 0, grads, du);
        rc |= linear_backward(m, ad, a, pa, l, LIN_K, xn1, dk, (int)M, dxn1, 1, grads, du);
        rc |= linear_backward(m, ad, a, pa, l, LIN_V, xn1, dv, (int)M, dxn1, 1, grads, du);
        if (dxn1)
            rmsnorm_backward(dx, dxn1, x, ly->rms_att, la.rstd1, (int)M, D);
    }
    return rc ? -1 : 0;
}
