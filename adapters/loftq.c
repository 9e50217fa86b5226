/* loftq.c: see loftq.h. The truncated SVD is a randomized subspace iteration (Halko,
 * Martinsson and Tropp): a few products with R and R^T on a thin random block, then the
 * small k x k problem solved exactly by Jacobi rotations. */
#include "loftq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "pool_sgemm.h"

#define OVERSAMPLE 8
#define POWER_ITERS 4

/* Orthonormalises the k columns of Y [n x k] in place (modified Gram-Schmidt, twice). */
static void orthonormalize(float *Y, int n, int k)
{
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < k; j++) {
            for (int i = 0; i < j; i++) {
                double d = 0;
                for (int r = 0; r < n; r++)
                    d += (double)Y[(size_t)r * k + i] * Y[(size_t)r * k + j];
                for (int r = 0; r < n; r++)
                    Y[(size_t)r * k + j] -= (float)d * Y[(size_t)r * k + i];
            }
            double norm = 0;
            for (int r = 0; r < n; r++)
                norm += (double)Y[(size_t)r * k + j] * Y[(size_t)r * k + j];
            float inv = norm > 0 ? (float)(1 / sqrt(norm)) : 0;
            for (int r = 0; r < n; r++)
                Y[(size_t)r * k + j] *= inv;
        }
}

/* Eigen-decomposition of the symmetric S [k x k] (destroyed): eigenvalues in w, vectors
 * in the columns of V, by cyclic Jacobi sweeps. */
static void jacobi_eigen(double *S, int k, double *w, double *V)
{
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            V[i * k + j] = i == j;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0;
        for (int p = 0; p < k; p++)
            for (int q = p + 1; q < k; q++)
                off += S[p * k + q] * S[p * k + q];
        if (off < 1e-30)
            break;
        for (int p = 0; p < k; p++)
            for (int q = p + 1; q < k; q++) {
                if (fabs(S[p * k + q]) < 1e-300)
                    continue;
                double theta = (S[q * k + q] - S[p * k + p]) / (2 * S[p * k + q]);
                double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int r = 0; r < k; r++) { /* S = J^T S J */
                    double a = S[r * k + p], b = S[r * k + q];
                    S[r * k + p] = c * a - s * b, S[r * k + q] = s * a + c * b;
                }
                for (int r = 0; r < k; r++) {
                    double a = S[p * k + r], b = S[q * k + r];
                    S[p * k + r] = c * a - s * b, S[q * k + r] = s * a + c * b;
                }
                for (int r = 0; r < k; r++) {
                    double a = V[r * k + p], b = V[r * k + q];
                    V[r * k + p] = c * a - s * b, V[r * k + q] = s * a + c * b;
                }
            }
    }
    for (int i = 0; i < k; i++)
        w[i] = S[i * k + i];
}

typedef struct {
    llama_lora *ad;
    const llama_model *m;
    uint64_t rng;
} loftq_ctx;

static float gauss(uint64_t *s)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
        u[i] = ((*s >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return (float)(sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

/* R = W - deq(Q(W)) [out x in];  scale B A = its best rank-r approximation. */
static int fit_layer(void *p, int layer, llama_linear lin, const float *w, int out, int in)
{
    loftq_ctx *c = p;
    llama_lora *ad = c->ad;
    if (!llama_lora_has(ad, layer, lin))
        return 0;
    const int r = ad->rank, k = r + OVERSAMPLE < (out < in ? out : in) ? r + OVERSAMPLE : (out < in ? out : in);
    float *R = malloc((size_t)out * in * sizeof(float));
    float *Y = malloc((size_t)out * k * sizeof(float)), *Z = malloc((size_t)in * k * sizeof(float));
    float *Bt = malloc((size_t)k * in * sizeof(float));
    double *S = malloc((size_t)k * k * sizeof(double)), *V = malloc((size_t)k * k * sizeof(double));
    double *ev = malloc((size_t)k * sizeof(double));
    int *order = malloc((size_t)k * sizeof(int));
    int rc = -1;
    if (!R || !Y || !Z || !Bt || !S || !V || !ev || !order)
        goto done;
    qt_dequantize_rows(&c->m->layers[layer].lin[lin], 0, out, R);
    for (size_t i = 0; i < (size_t)out * in; i++)
        R[i] = w[i] - R[i];
    for (size_t i = 0; i < (size_t)in * k; i++)
        Z[i] = gauss(&c->rng);
    pool_sgemm(CblasNoTrans, CblasNoTrans, out, k, in, 1, R, in, Z, k, 0, Y, k);
    orthonormalize(Y, out, k);
    for (int it = 0; it < POWER_ITERS; it++) {
        pool_sgemm(CblasTrans, CblasNoTrans, in, k, out, 1, R, in, Y, k, 0, Z, k);
        orthonormalize(Z, in, k);
        pool_sgemm(CblasNoTrans, CblasNoTrans, out, k, in, 1, R, in, Z, k, 0, Y, k);
        orthonormalize(Y, out, k);
    }
    /* Bt = Y^T R [k x in];  Bt Bt^T = U diag(s^2) U^T;  R ~ (Y U) diag(s) (diag(1/s) U^T Bt) */
    pool_sgemm(CblasTrans, CblasNoTrans, k, in, out, 1, Y, k, R, in, 0, Bt, in);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double d = 0;
            for (int q = 0; q < in; q++)
                d += (double)Bt[(size_t)i * in + q] * Bt[(size_t)j * in + q];
            S[i * k + j] = d;
        }
    jacobi_eigen(S, k, ev, V);
    for (int i = 0; i < k; i++)
        order[i] = i;
    for (int i = 0; i < k; i++) /* largest eigenvalues first */
        for (int j = i + 1; j < k; j++)
            if (ev[order[j]] > ev[order[i]]) {
                int t = order[i];
                order[i] = order[j], order[j] = t;
            }
    float *A = llama_lora_a(ad, ad->params, layer, lin);
    float *Bm = llama_lora_b(ad, &c->m->cfg, ad->params, layer, lin);
    const float inv_sqrt_scale = 1.0f / sqrtf(ad->scale);
    for (int j = 0; j < r; j++) {
        int e = order[j];
        double sv = sqrt(ev[e] > 0 ? ev[e] : 0), rs = sqrt(sv);
        for (int row = 0; row < out; row++) { /* B[:, j] = (Y u_j) sqrt(s) / sqrt(scale) */
            double d = 0;
            for (int i = 0; i < k; i++)
                d += (double)Y[(size_t)row * k + i] * V[i * k + e];
            Bm[(size_t)row * r + j] = (float)(d * rs) * inv_sqrt_scale;
        }
        for (int col = 0; col < in; col++) { /* A[j, :] = (u_j^T Bt) / sqrt(s) / sqrt(scale) */
            double d = 0;
            for (int i = 0; i < k; i++)
                d += V[i * k + e] * Bt[(size_t)i * in + col];
            A[(size_t)j * in + col] = sv > 0 ? (float)(d / rs) * inv_sqrt_scale : 0.0f;
        }
    }
    rc = 0;
done:
    free(R), free(Y), free(Z), free(Bt), free(S), free(V), free(ev), free(order);
    return rc;
}

int loftq_init(llama_lora *ad, const llama_model *m, uint64_t seed, char *err, size_t errlen)
{
    loftq_ctx c = {ad, m, seed * 0x9E3779B97F4A7C15ull + 1};
    return llama_visit_linears(m->dir, &c, fit_layer, err, errlen);
}
