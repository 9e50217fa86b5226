/* linear.c: a base linear through the fused quantized kernel, with its adapter when it
 * has one (LoRA, dropout on the adapter's input), forward and backward (the math:
 * layer_ops.h). */
#include "layer_ops.h"
#include "parallel.h"
#include "pool_sgemm.h"

/* Dropout applies in training only, to the adapter's input (PEFT's lora_dropout). */
static int dropout_on(const llama_lora *ad, const llama_acts *a)
{
    return a->mode == LLAMA_TRAIN && ad->dropout > 0;
}

/* d(x): x [M x in] through the mask of (layer, k), in a->scratch; x itself without dropout. */
static const float *dropped(const llama_lora *ad, const llama_acts *a, int layer, llama_linear k, const float *x,
                            int M, int in)
{
    if (!dropout_on(ad, a))
        return x;
    for (size_t i = 0; i < (size_t)M; i++)
        for (int j = 0; j < in; j++)
            a->scratch[i * in + j] = x[i * in + j] * llama_lora_keep(ad, layer, k, i, (size_t)j);
    return a->scratch;
}

typedef struct {
    float *y;
    const float *b;
    int out;
} bias_ctx;

static void add_bias_rows(void *p, size_t r0, size_t r1)
{
    const bias_ctx *c = p;
    for (size_t r = r0; r < r1; r++)
        for (int j = 0; j < c->out; j++)
            c->y[r * c->out + j] += c->b[j];
}

/* The base's product and bias, then the adapter's product when (layer, k) has one. */
int linear_forward(const llama_model *m, const llama_lora *ad, const llama_acts *a, const llama_layer_acts *la,
                   int layer, llama_linear k, const float *x, int M, float *y, int accumulate)
{
    int rc = qt_matmul(&m->layers[layer].lin[k], x, M, y, accumulate);
    int out, in;
    llama_linear_shape(&m->cfg, k, &out, &in);
    const float *bias = m->layers[layer].bias[k];
    if (!rc && bias) {
        bias_ctx c = {y, bias, out};
        rt_parallel_for((size_t)M, (size_t)out, add_bias_rows, &c);
    }
    if (rc || !llama_lora_has(ad, layer, k))
        return rc;
    int r = ad->rank;
    const float *xin = dropped(ad, a, layer, k, x, M, in);
    float *u = llama_layer_u(la, a, k, (size_t)M);
    pool_sgemm(CblasNoTrans, CblasTrans, M, r, in, 1.0f, xin, in,
               llama_lora_a(ad, ad->params, layer, k), in, 0.0f, u, r);
    pool_sgemm(CblasNoTrans, CblasTrans, M, out, r, ad->scale, u, r,
               llama_lora_b(ad, &m->cfg, ad->params, layer, k), r, 1.0f, y, out);
    return 0;
}

/* x is the linear's forward input; the bias is frozen and passes dy by. dx NULL: the input gradient is not wanted (layer 0's
 * q, k, v: nothing lies below them but the frozen embedding), only the adapter's. */
int linear_backward(const llama_model *m, const llama_lora *ad, const llama_acts *a, const llama_layer_acts *la,
                    int layer, llama_linear k, const float *x, const float *dy, int M, float *dx, int accumulate,
                    float *grads, float *du)
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
    /* dB, du, dA, then dx: layer_ops.h's formulas in order */
    pool_sgemm(CblasTrans, CblasNoTrans, out, r, M, ad->scale, dy, out, u, r, 1.0f, dB, r);
    pool_sgemm(CblasNoTrans, CblasNoTrans, M, r, out, ad->scale, dy, out, Bm, r, 0.0f, du, r);
    int dropout = dropout_on(ad, a);
    const float *xin = dropped(ad, a, layer, k, x, M, in);
    pool_sgemm(CblasTrans, CblasNoTrans, r, in, M, 1.0f, du, r, xin, in, 1.0f, dA, in);
    if (!dx)
        return 0;
    if (!dropout) {
        pool_sgemm(CblasNoTrans, CblasNoTrans, M, in, r, 1.0f, du, r, A, in, 1.0f, dx, in);
    } else {
        pool_sgemm(CblasNoTrans, CblasNoTrans, M, in, r, 1.0f, du, r, A, in, 0.0f, a->scratch, in);
        for (size_t i = 0; i < (size_t)M; i++)
            for (int j = 0; j < in; j++)
                dx[i * in + j] += a->scratch[i * in + j] * llama_lora_keep(ad, layer, k, i, (size_t)j);
    }
    return 0;
}
