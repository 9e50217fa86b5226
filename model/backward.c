/* backward.c: gradients of the adapters through the frozen quantized base (forward.h).
 * Each step undoes one step of llama_forward, in reverse: the drivers here mirror
 * forward.c's, op by op (layer_ops.h has each op's pair). The input gradient of every
 * base linear goes through the transposed fused kernel (qt_matmul_t), and only the LoRA
 * matrices collect gradients. */
#include <string.h>

#include "forward.h"
#include "layer_ops.h"
#include "parallel.h"
#include "workspace.h"

/* The backward's scratch, one block of the caller's workspace. */
typedef struct {
    float *dx;           /* [M x dim] gradient of the residual stream: of x[l+1] in, x[l] out */
    float *dx2;          /* [M x dim] of x2 */
    float *dq, *dk, *dv; /* [M x q_dim], [M x kv_dim] x 2 */
    float *d1, *d2, *d3; /* [M x widest] each (llama_config_widest), for the gradients within a block */
    float *du;           /* [M x rank] the adapter's inner gradient */
    float *att;          /* [threads x T x T] the attention's */
} bwd_bufs;

/* The mirror of llama_layer_forward (forward.c): the same steps, read from the bottom.
 * Layer l's intermediates must be in acts (recomputed by the caller if need be). */
static int llama_layer_backward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache, int l,
                                int B, int T, const bwd_bufs *w, float *grads)
{
    const llama_config *c = &m->cfg;
    const int D = c->dim, KV = c->kv_dim;
    const size_t M = (size_t)B * T, sMD = M * D;
    const llama_layer *ly = &m->layers[l];
    const llama_layer_acts la = llama_layer_acts_of(a, c, l, B, T);
    const float *kc = cache->k + (size_t)l * B * T * KV, *vc = cache->v + (size_t)l * B * T * KV;
    float *dx = w->dx, *dx2 = w->dx2, *dq = w->dq, *dk = w->dk, *dv = w->dv, *du = w->du;
    int rc = 0;

    /* x[l+1] = x2 + down(swiglu(gate(xn2), up(xn2))),  xn2 = rmsnorm(x2) */
    llama_copy(dx2, dx, sMD);
    float *dg = w->d1, *dh1 = w->d2, *dh3 = w->d3;
    rc |= linear_backward(m, ad, a, &la, l, LIN_DOWN, la.g, dx, (int)M, dg, 0, grads, du);
    swiglu_backward(dh1, dh3, dg, la.h1, la.h3, M * c->hidden_dim);
    float *dxn2 = w->d1; /* dg is consumed */
    rc |= linear_backward(m, ad, a, &la, l, LIN_GATE, la.xn2, dh1, (int)M, dxn2, 0, grads, du);
    rc |= linear_backward(m, ad, a, &la, l, LIN_UP, la.xn2, dh3, (int)M, dxn2, 1, grads, du);
    rmsnorm_backward(dx2, dxn2, la.x2, ly->rms_ffn, la.rstd2, (int)M, D);

    /* x2 = x + o(attention(rope(qn(q(xn1))), rope(kn(k(xn1))), v(xn1))),  xn1 = rmsnorm(x) */
    llama_copy(dx, dx2, sMD);
    float *dao = w->d1;
    rc |= linear_backward(m, ad, a, &la, l, LIN_O, la.ao, dx2, (int)M, dao, 0, grads, du);
    attention_backward(c, dq, dk, dv, dao, la.q, kc, vc, la.att, w->att, B, T);
    rope_backward(m, dq, c->q_dim, M, T, 0, a->start);
    rope_backward(m, dk, KV, M, T, 0, a->start);
    if (c->qk_norm) { /* through the norms of each head, into d1 (dao is consumed) and d3 */
        float *dqr = w->d1, *dkr = w->d3;
        memset(dqr, 0, M * c->q_dim * sizeof(float));
        memset(dkr, 0, M * KV * sizeof(float));
        rmsnorm_backward(dqr, dq, la.qr, ly->q_norm, la.rstdq, (int)M * c->n_heads, c->head_size);
        rmsnorm_backward(dkr, dk, la.kr, ly->k_norm, la.rstdk, (int)M * c->n_kv_heads, c->head_size);
        dq = dqr, dk = dkr;
    }
    float *dxn1 = l > 0 ? w->d2 : NULL; /* below layer 0 only the frozen embedding */
    rc |= linear_backward(m, ad, a, &la, l, LIN_Q, la.xn1, dq, (int)M, dxn1, 0, grads, du);
    rc |= linear_backward(m, ad, a, &la, l, LIN_K, la.xn1, dk, (int)M, dxn1, 1, grads, du);
    rc |= linear_backward(m, ad, a, &la, l, LIN_V, la.xn1, dv, (int)M, dxn1, 1, grads, du);
    if (dxn1)
        rmsnorm_backward(dx, dxn1, la.x, ly->rms_att, la.rstd1, (int)M, D);
    return rc;
}

/* The mirror of llama_forward. */
int llama_backward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache,
                   int B, int T, float *dlogits, float *grads)
{
    const llama_config *c = &m->cfg;
    const int D = c->dim, KV = c->kv_dim, L = c->n_layers;
    const size_t M = (size_t)B * T, sMD = M * D, sMQ = M * c->q_dim;
    const size_t wide = (size_t)llama_config_widest(c);
    if (cache->S != T || cache->B != B) /* the attention reads the cache as [B][..][T] */
        return -1;
    /* kept by the thread between steps: workspace.h */
    size_t floats = 2 * sMD + sMQ + 2 * M * KV + 3 * M * wide + M * (size_t)(ad ? ad->rank : 1) +
                    (size_t)rt_threads() * T * T;
    float *buf = rt_workspace(RT_WS_CALLER, floats * sizeof(float));
    if (!buf)
        return -1;
    float *dx = buf, *dx2 = dx + sMD, *dq = dx2 + sMD, *dk = dq + sMQ, *dv = dk + M * KV;
    float *d1 = dv + M * KV, *d2 = d1 + M * wide, *d3 = d2 + M * wide, *du = d3 + M * wide;
    const bwd_bufs w = {dx, dx2, dq, dk, dv, d1, d2, d3, du, du + M * (size_t)(ad ? ad->rank : 1)};
    int rc = 0;

    /* logits = xf Wcls^T,  xf = rmsnorm(x[L]) */
    rc |= qt_matmul_t(llama_head(m), dlogits, (int)M, d1, 0);
    memset(dx, 0, sMD * sizeof(float));
    rmsnorm_backward(dx, d1, a->x + L * sMD, m->rms_final, a->rstdf, (int)M, D);
    for (int l = L - 1; l >= 0 && rc == 0; l--) {
        if (a->slots == 1 && a->held != l) /* one slot: this layer's intermediates again */
            rc |= llama_layer_forward(m, ad, a, cache, l, B, T, 0);
        rc |= llama_layer_backward(m, ad, a, cache, l, B, T, &w, grads);
    }
    /* x[0]: the embedding is frozen, and gets no gradient */
    return rc ? -1 : 0;
}
