/* rope.c: rotary position embedding, forward and backward (the math: layer_ops.h), both
 * in place, one loop under them. */
#include "layer_ops.h"
#include "parallel.h"

typedef struct {
    const llama_model *m;
    float *x;
    const int *start;
    int width, T, pos0, inverse;
} rope_ctx;

/* Rotates consecutive pairs of each head by the position's angles (llama2.c order), or
 * back (the transpose: sin negated, which is exact). */
static void rope_rows(void *p, size_t r0, size_t r1)
{
    const rope_ctx *c = p;
    const int hs = c->m->cfg.head_size, half = hs / 2;
    for (size_t r = r0; r < r1; r++) {
        /* packed: positions count from the example's start, as Hugging Face's position_ids
         * of a packed batch; RoPE's scores depend on the distance alone, so this changes
         * only their rounding, to that of the example run alone */
        const int pos = c->pos0 + (int)(r % (size_t)c->T) - (c->start ? c->start[r] : 0);
        const float *cs = c->m->rope_cos + (size_t)pos * half, *sn = c->m->rope_sin + (size_t)pos * half;
        const float sign = c->inverse ? -1.0f : 1.0f;
        float *x = c->x + r * c->width;
        for (int i = 0; i < c->width; i += 2) {
            int j = (i % hs) / 2;
            float v0 = x[i], v1 = x[i + 1], s = sign * sn[j];
            x[i] = v0 * cs[j] - v1 * s;
            x[i + 1] = v0 * s + v1 * cs[j];
        }
    }
}

static void rope_apply(const llama_model *m, float *x, int width, size_t rows, int T, int pos0, const int *start,
                       int inverse)
{
    rope_ctx c = {m, x, start, width, T, pos0, inverse};
    rt_parallel_for(rows, (size_t)width * 2, rope_rows, &c);
}

void rope_forward(const llama_model *m, float *x, int width, size_t rows, int T, int pos0, const int *start)
{
    rope_apply(m, x, width, rows, T, pos0, start, 0);
}

void rope_backward(const llama_model *m, float *dx, int width, size_t rows, int T, int pos0, const int *start)
{
    rope_apply(m, dx, width, rows, T, pos0, start, 1);
}
