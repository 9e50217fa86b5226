/* forward.c: the Llama forward pass (see forward.h): the cache's and the activations'
 * layout, and the drivers that run a layer's ops (layer_ops.h) and the layers. Its
 * arithmetic follows llama2.c's run.c (float sums in order, its RMSNorm, RoPE and
 * softmax; see each op's file), so that greedy decoding reproduces run.c's text. */
#include "forward.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer_ops.h"
#include "parallel.h"

/* ---- the cache ---- */

int llama_cache_alloc(llama_cache *c, const llama_config *cfg, int B, int S)
{
    size_t n = (size_t)cfg->n_layers * B * S * cfg->kv_dim;
    c->B = B;
    c->S = S;
    c->k = calloc(n, sizeof(float));
    c->v = calloc(n, sizeof(float));
    if (!c->k || !c->v) {
        llama_cache_free(c);
        return -1;
    }
    return 0;
}

void llama_cache_free(llama_cache *c)
{
    free(c->k);
    free(c->v);
    c->k = c->v = NULL;
}

typedef struct {
    float *kt;         /* this layer's keys [B x kv_dim x S] */
    const float *rows; /* the new keys [B*T x kv_dim] */
    int B, T, S, KV, pos0;
} kt_ctx;

/* Columns j (over B x kv_dim) of the new keys, into the transposed cache. */
static void store_keys(void *p, size_t j0, size_t j1)
{
    const kt_ctx *c = p;
    for (size_t j = j0; j < j1; j++) {
        size_t b = j / (size_t)c->KV, col = j % (size_t)c->KV;
        float *dst = c->kt + j * c->S + c->pos0;
        const float *src = c->rows + b * c->T * c->KV + col;
        for (int t = 0; t < c->T; t++)
            dst[t] = src[(size_t)t * c->KV];
    }
}

/* Layer l's new keys (rotated) and values [B*T x kv_dim], into its cache (kt, v) at
 * positions pos0 .. pos0+T-1 of each sequence, the keys transposed (forward.h). */
static void cache_store_keys(float *kt, const float *k, int B, int T, int S, int KV, int pos0)
{
    kt_ctx c = {kt, k, B, T, S, KV, pos0};
    rt_parallel_for((size_t)B * KV, (size_t)T, store_keys, &c);
}

static void cache_store_values(float *v, const float *rows, int B, int T, int S, int KV, int pos0)
{
    for (int b = 0; b < B; b++)
        memcpy(v + ((size_t)b * S + pos0) * KV, rows + (size_t)b * T * KV, (size_t)T * KV * sizeof(float));
}

/* ---- the activations ---- */

#define N_ACTS 21

/* Floats of each array for M = B*T rows, in allocation order. */
static void acts_sizes(const llama_config *c, int B, int T, int S, int rank, int slots, size_t n[N_ACTS])
{
    size_t M = (size_t)B * T, L = slots, D = c->dim, H = c->hidden_dim, QD = c->q_dim;
    size_t QN = c->qk_norm ? 1 : 0; /* Qwen3's pre-norm q and k, and their rstd per head */
    size_t sizes[N_ACTS] = {
        ((size_t)c->n_layers + 1) * M * D, /* x */
        L * M * D, L * M,                /* xn1, rstd1 */
        L * M * QD,                      /* q */
        L * B * c->n_heads * T * (size_t)S, /* att */
        L * M * QD, L * M * D,           /* ao, x2 */
        L * M * D, L * M,                /* xn2, rstd2 */
        L * M * H, L * M * H, L * M * H, /* h1, h3, g */
        M * D, M, M * c->vocab_size,     /* xf, rstdf, logits */
        L * LIN_COUNT * M * rank,        /* u */
        rank ? M * (size_t)llama_config_widest(c) : 0, /* scratch */
        QN * L * M * QD, QN * L * M * c->kv_dim,        /* qr, kr */
        QN * L * M * c->n_heads, QN * L * M * c->n_kv_heads, /* rstdq, rstdk */
    };
    memcpy(n, sizes, sizeof sizes);
}

size_t llama_acts_bytes(const llama_config *cfg, int B, int T, int S, int rank, int all_layers)
{
    size_t n[N_ACTS], total = 0;
    acts_sizes(cfg, B, T, S, rank, all_layers ? cfg->n_layers : 1, n);
    for (int i = 0; i < N_ACTS; i++)
        total += n[i];
    return total * sizeof(float);
}

int llama_acts_alloc(llama_acts *a, const llama_config *cfg, int B, int T, int S, int rank, int all_layers)
{
    memset(a, 0, sizeof *a);
    size_t n[N_ACTS], total = 0;
    int slots = all_layers ? cfg->n_layers : 1;
    acts_sizes(cfg, B, T, S, rank, slots, n);
    for (int i = 0; i < N_ACTS; i++)
        total += n[i];
    float *p = malloc(total * sizeof(float));
    if (!p)
        return -1;
    float **ptrs[N_ACTS] = {&a->x, &a->xn1, &a->rstd1, &a->q, &a->att, &a->ao, &a->x2, &a->xn2,
                            &a->rstd2, &a->h1, &a->h3, &a->g, &a->xf, &a->rstdf, &a->logits,
                            &a->u, &a->scratch, &a->qr, &a->kr, &a->rstdq, &a->rstdk};
    for (int i = 0; i < N_ACTS; i++) {
        *ptrs[i] = p;
        p += n[i];
    }
    a->B = B;
    a->T = T;
    a->S = S;
    a->rank = rank;
    a->slots = slots;
    a->held = -1;
    return 0;
}

llama_layer_acts llama_layer_acts_of(const llama_acts *a, const llama_config *c, int layer, int B, int T)
{
    /* strides of this call's M, so that a call smaller than the allocation stays dense */
    const size_t M = (size_t)B * T, slot = a->slots == 1 ? 0 : (size_t)layer;
    const size_t sMD = M * c->dim, sMQ = M * c->q_dim, sMH = M * c->hidden_dim,
                 sAtt = (size_t)B * c->n_heads * T * a->S;
    const size_t qn = c->qk_norm ? slot : 0; /* arrays of size 0 otherwise */
    return (llama_layer_acts){
        .x = a->x + layer * sMD, .next = a->x + (layer + 1) * sMD,
        .xn1 = a->xn1 + slot * sMD, .rstd1 = a->rstd1 + slot * M, .q = a->q + slot * sMQ,
        .att = a->att + slot * sAtt, .ao = a->ao + slot * sMQ, .x2 = a->x2 + slot * sMD,
        .xn2 = a->xn2 + slot * sMD, .rstd2 = a->rstd2 + slot * M,
        .h1 = a->h1 + slot * sMH, .h3 = a->h3 + slot * sMH, .g = a->g + slot * sMH,
        .u = a->u + slot * LIN_COUNT * M * a->rank,
        .qr = a->qr + qn * sMQ, .kr = a->kr + qn * M * c->kv_dim,
        .rstdq = a->rstdq + qn * M * c->n_heads, .rstdk = a->rstdk + qn * M * c->n_kv_heads,
    };
}

float *llama_layer_u(const llama_layer_acts *la, const llama_acts *a, llama_linear k, size_t M)
{
    return la->u + (size_t)k * M * a->rank;
}

void llama_acts_free(llama_acts *a)
{
    free(a->x); /* the first array starts the single allocation */
    memset(a, 0, sizeof *a);
}

int llama_check_tokens(const llama_config *c, const int *tokens, size_t n, char *err, size_t errlen)
{
    if (n == 0) {
        snprintf(err, errlen, "tokens: empty sequence");
        return -1;
    }
    if (n > (size_t)c->seq_len) {
        if (c->sliding_window) /* the seq_len model_config.c cut to the window */
            snprintf(err, errlen, "tokens: %zu tokens exceed the model's sliding_window %d (attention beyond it "
                     "slides, which is not implemented)", n, c->seq_len);
        else
            snprintf(err, errlen, "tokens: %zu tokens exceed the model's seq_len %d", n, c->seq_len);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            snprintf(err, errlen, "tokens: id %d at position %zu is outside the vocabulary 0..%d",
                     tokens[i], i, c->vocab_size - 1);
            return -1;
        }
    return 0;
}

/* ---- the layers ---- */

typedef struct {
    float *dst;
    const float *src;
} copy_ctx;

static void copy_range(void *p, size_t i0, size_t i1)
{
    const copy_ctx *c = p;
    memcpy(c->dst + i0, c->src + i0, (i1 - i0) * sizeof(float));
}

void llama_copy(float *dst, const float *src, size_t n)
{
    copy_ctx c = {dst, src};
    rt_parallel_for(n, 1, copy_range, &c);
}

/* The mirror of llama_layer_backward (backward.c): the same steps, read from the top. */
int llama_layer_forward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache, int l, int B,
                        int T, int pos0)
{
    const llama_config *c = &m->cfg;
    const int D = c->dim, KV = c->kv_dim, S = cache->S;
    const size_t M = (size_t)B * T;
    const llama_layer *ly = &m->layers[l];
    const llama_layer_acts la = llama_layer_acts_of(a, c, l, B, T);
    float *kc = cache->k + (size_t)l * cache->B * S * KV, *vc = cache->v + (size_t)l * cache->B * S * KV;
    int rc = 0;

    /* x2 = x + o(attention(rope(qn(q(xn1))), rope(kn(k(xn1))), v(xn1))),  xn1 = rmsnorm(x),
     * with qn, kn Qwen3's norms of each head (else nothing) */
    rmsnorm_forward(la.xn1, la.rstd1, la.x, ly->rms_att, (int)M, D, c->norm_eps);
    float *kv_new = la.ao; /* scratch until the attention output overwrites it */
    if (c->qk_norm) {
        rc |= linear_forward(m, ad, a, &la, l, LIN_Q, la.xn1, (int)M, la.qr, 0);
        rmsnorm_forward(la.q, la.rstdq, la.qr, ly->q_norm, (int)M * c->n_heads, c->head_size, c->norm_eps);
        rc |= linear_forward(m, ad, a, &la, l, LIN_K, la.xn1, (int)M, la.kr, 0);
        rmsnorm_forward(kv_new, la.rstdk, la.kr, ly->k_norm, (int)M * c->n_kv_heads, c->head_size, c->norm_eps);
    } else {
        rc |= linear_forward(m, ad, a, &la, l, LIN_Q, la.xn1, (int)M, la.q, 0);
        rc |= linear_forward(m, ad, a, &la, l, LIN_K, la.xn1, (int)M, kv_new, 0);
    }
    /* keys (rotated) and values into the cache at their positions */
    rope_forward(m, kv_new, KV, M, T, pos0, a->start);
    cache_store_keys(kc, kv_new, B, T, S, KV, pos0);
    rc |= linear_forward(m, ad, a, &la, l, LIN_V, la.xn1, (int)M, kv_new, 0);
    cache_store_values(vc, kv_new, B, T, S, KV, pos0);
    rope_forward(m, la.q, c->q_dim, M, T, pos0, a->start);
    attention_forward(c, la.ao, la.att, la.q, kc, vc, B, T, S, pos0, a->mode, a->start);
    llama_copy(la.x2, la.x, M * D);
    rc |= linear_forward(m, ad, a, &la, l, LIN_O, la.ao, (int)M, la.x2, 1);

    /* x[l+1] = x2 + down(swiglu(gate(xn2), up(xn2))),  xn2 = rmsnorm(x2) */
    rmsnorm_forward(la.xn2, la.rstd2, la.x2, ly->rms_ffn, (int)M, D, c->norm_eps);
    rc |= linear_forward(m, ad, a, &la, l, LIN_GATE, la.xn2, (int)M, la.h1, 0);
    rc |= linear_forward(m, ad, a, &la, l, LIN_UP, la.xn2, (int)M, la.h3, 0);
    swiglu_forward(la.g, la.h1, la.h3, M * c->hidden_dim);
    llama_copy(la.next, la.x2, M * D);
    rc |= linear_forward(m, ad, a, &la, l, LIN_DOWN, la.g, (int)M, la.next, 1);
    a->held = l;
    return rc;
}

/* The mirror of llama_backward. */
int llama_forward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache,
                  const int *tokens, int B, int T, int pos0, llama_mode mode)
{
    const llama_config *c = &m->cfg;
    const int D = c->dim, L = c->n_layers;
    const size_t M = (size_t)B * T;
    int rc = 0;
    a->mode = mode;

    /* x[0] = the tokens' embeddings */
    for (size_t r = 0; r < M; r++)
        memcpy(a->x + r * D, m->embed.data + (size_t)tokens[r] * D * sizeof(float),
               (size_t)D * sizeof(float));
    for (int l = 0; l < L && rc == 0; l++)
        rc |= llama_layer_forward(m, ad, a, cache, l, B, T, pos0);
    /* logits = xf Wcls^T,  xf = rmsnorm(x[L]) */
    rmsnorm_forward(a->xf, a->rstdf, a->x + L * M * D, m->rms_final, (int)M, D, c->norm_eps);
    rc |= qt_matmul(llama_head(m), a->xf, (int)M, a->logits, 0);
    return rc ? -1 : 0;
}
