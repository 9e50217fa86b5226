/* rmsnorm.c: RMSNorm forward and backward (the math: layer_ops.h). The forward is
 * llama2.c's run.c rmsnorm to the bit: the sum of squares in order, then / D, + eps. */
#include <math.h>

#include "layer_ops.h"
#include "parallel.h"

typedef struct {
    float *out, *rstd;
    const float *x, *w;
    int D;
    float eps;
} norm_ctx;

static void rmsnorm_rows(void *p, size_t r0, size_t r1)
{
    const norm_ctx *c = p;
    const int D = c->D;
    for (size_t m = r0; m < r1; m++) {
        const float *xm = c->x + m * D;
        float ss = 0;
        for (int i = 0; i < D; i++)
            ss += xm[i] * xm[i];
        ss /= (float)D;
        ss += c->eps;
        ss = 1.0f / sqrtf(ss);
        c->rstd[m] = ss;
        for (int i = 0; i < D; i++)
            c->out[m * D + i] = c->w[i] * (ss * xm[i]);
    }
}

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int M, int D, float eps)
{
    norm_ctx c = {out, rstd, x, w, D, eps};
    rt_parallel_for((size_t)M, (size_t)D, rmsnorm_rows, &c);
}

typedef struct {
    float *dx;
    const float *dy, *x, *w, *rstd;
    int D;
} norm_bwd_ctx;

/* dx is accumulated into: the residual stream's gradient passes by the norm. */
static void rmsnorm_backward_rows(void *p, size_t r0, size_t r1)
{
    const norm_bwd_ctx *c = p;
    const int D = c->D;
    for (size_t m = r0; m < r1; m++) {
        const float *xm = c->x + m * D, *dym = c->dy + m * D;
        float r = c->rstd[m], dot = 0;
        for (int i = 0; i < D; i++)
            dot += c->w[i] * dym[i] * xm[i];
        float k = r * r * r * dot / (float)D;
        for (int i = 0; i < D; i++)
            c->dx[m * D + i] += r * c->w[i] * dym[i] - k * xm[i];
    }
}

void rmsnorm_backward(float *dx, const float *dy, const float *x, const float *w, const float *rstd, int M, int D)
{
    norm_bwd_ctx c = {dx, dy, x, w, rstd, D};
    rt_parallel_for((size_t)M, 2 * (size_t)D, rmsnorm_backward_rows, &c);
}
