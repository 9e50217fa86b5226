/* test_backward.c: LoRA gradients against central finite differences of the loss, on
 * stories260K with an f32 and an nf4 base, for every target linear (A and B), with and
 * without dropout, at T = 12 and at T = 150 (several of training attention's blocks); training's
 * attention agrees with inference's; and a fresh adapter (B = 0) leaves the logits unchanged.
 * The same on random checkpoints of the other architectures' pieces, written by
 * make-model: Qwen3 (q/k norms, head_dim of its own, biases on q, k, v, o, a separate
 * head), Qwen2 (biases on q, k, v) and Llama with every bias and llama3-scaled RoPE.
 * argv[1] is the shared directory, argv[2] qlora-tool. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forward.h"
#include "tap.h"

/* The batch: two short sequences, or one longer than two of training attention's blocks
 * (LLAMA_ATT_BLOCK) and not a multiple of them. */
static const int short_tokens[2 * 12] = {
    1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315,
    1, 410, 461, 441, 446, 459, 441, 467, 13, 445, 323, 432,
};
#define LONG_T (2 * LLAMA_ATT_BLOCK + 22)
static int long_tokens[LONG_T];
static int B_SEQ = 2, T_LEN = 12;
static const int *tokens = short_tokens;
/* Packing (forward.h's start), or NULL: a position whose next token begins another
 * example predicts nothing. */
static const int *seg_start = NULL;

static int predicts(int b, int t)
{
    return t < T_LEN - 1 && (!seg_start || seg_start[b * T_LEN + t + 1] == seg_start[b * T_LEN + t]);
}

typedef struct {
    const llama_model *m;
    llama_lora *ad;
    llama_acts a;
    llama_cache cache;
    float *dlogits;
} rig;

/* Mean next-token cross-entropy over the batch, and its dlogits. */
static double loss(rig *r)
{
    const int V = r->m->cfg.vocab_size;
    r->a.start = seg_start;
    llama_forward(r->m, r->ad, &r->a, &r->cache, tokens, B_SEQ, T_LEN, 0, LLAMA_TRAIN);
    double total = 0, n = 0;
    for (int b = 0; b < B_SEQ; b++)
        for (int t = 0; t < T_LEN; t++)
            n += predicts(b, t);
    for (int b = 0; b < B_SEQ; b++)
        for (int t = 0; t < T_LEN; t++) {
            const float *lg = r->a.logits + ((size_t)b * T_LEN + t) * V;
            float *dl = r->dlogits + ((size_t)b * T_LEN + t) * V;
            if (!predicts(b, t)) {
                memset(dl, 0, (size_t)V * sizeof(float));
                continue;
            }
            int target = tokens[b * T_LEN + t + 1];
            double max = lg[0], sum = 0;
            for (int v = 1; v < V; v++)
                max = lg[v] > max ? lg[v] : max;
            for (int v = 0; v < V; v++)
                sum += exp(lg[v] - max);
            total += -(lg[target] - max - log(sum));
            for (int v = 0; v < V; v++)
                dl[v] = (float)((exp(lg[v] - max) / sum - (v == target)) / n);
        }
    return total / n;
}

static uint64_t rng = 12345;
static float uniform_pm(float a)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)(((rng >> 11) * (1.0 / 9007199254740992.0) * 2 - 1) * a);
}

/* 0, or -1 with a failed case naming the model. */
static int load(llama_model *m, const char *dir, qt_format f)
{
    char err[512];
    if (llama_load(m, dir, qt_spec_default(f), err, sizeof err) == 0)
        return 0;
    CHECK(0, "%s", err);
    test_case("load %s", dir);
    return -1;
}

static void check_gradients(const char *dir, qt_format f, float dropout)
{
    llama_model m;
    if (load(&m, dir, f) < 0)
        return;
    char name[160];
    snprintf(name, sizeof name, "%s%s", strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir,
             seg_start ? " packed" : "");
    const llama_config *c = &m.cfg;
    llama_lora ad;
    CHECK(llama_lora_alloc(&ad, c, 4, 8.0f, 0, (1u << LIN_COUNT) - 1, dropout) == 0, "alloc");
    ad.dropout_seed = 99;
    for (size_t i = 0; i < ad.n_params; i++)
        ad.params[i] = uniform_pm(0.1f);
    rig r = {&m, &ad, {0}, {0}, NULL};
    float *grads = calloc(ad.n_params, sizeof(float));
    r.dlogits = malloc((size_t)B_SEQ * T_LEN * c->vocab_size * sizeof(float));
    CHECK(llama_cache_alloc(&r.cache, c, B_SEQ, T_LEN) == 0 &&
              llama_acts_alloc(&r.a, c, B_SEQ, T_LEN, T_LEN, ad.rank, 1) == 0 && grads && r.dlogits, "alloc");
    loss(&r);
    CHECK(llama_backward(&m, &ad, &r.a, &r.cache, B_SEQ, T_LEN, r.dlogits, grads) == 0, "backward");

    /* One activation slot, each layer recomputed in backward: the same gradients, bit for
     * bit (the same arithmetic runs again), in a buffer about L times smaller. */
    {
        rig one = {&m, &ad, {0}, {0}, malloc((size_t)B_SEQ * T_LEN * c->vocab_size * sizeof(float))};
        float *g1 = calloc(ad.n_params, sizeof(float));
        CHECK(one.dlogits && g1 && llama_cache_alloc(&one.cache, c, B_SEQ, T_LEN) == 0 &&
                  llama_acts_alloc(&one.a, c, B_SEQ, T_LEN, T_LEN, ad.rank, 0) == 0, "alloc");
        double l_all = loss(&r), l_one = loss(&one);
        CHECK(llama_backward(&m, &ad, &one.a, &one.cache, B_SEQ, T_LEN, one.dlogits, g1) == 0, "backward");
        size_t differ = 0;
        for (size_t i = 0; i < ad.n_params; i++)
            differ += g1[i] != grads[i];
        size_t all_b = llama_acts_bytes(c, B_SEQ, T_LEN, T_LEN, ad.rank, 1);
        size_t one_b = llama_acts_bytes(c, B_SEQ, T_LEN, T_LEN, ad.rank, 0);
        CHECK(l_all == l_one && differ == 0, "recomputed: loss %.9g vs %.9g, %zu of %zu gradients differ", l_one,
              l_all, differ, ad.n_params);
        CHECK(one_b * 2 < all_b, "one slot %zu bytes vs every layer %zu", one_b, all_b);
        test_case("%s, %s base%s, T %d: recomputing each layer in backward gives the same gradients bit for bit "
                  "with %.0f%% of the activation memory", name, qt_format_name(f), dropout > 0 ? ", dropout 0.1" : "",
                  T_LEN, 100.0 * one_b / all_b);
        free(g1);
        free(one.dlogits);
        llama_acts_free(&one.a);
        llama_cache_free(&one.cache);
    }

    /* For each (layer, linear, A/B): the 3 largest analytic gradients and 2 random ones
     * with a gradient large enough to rise above float noise. */
    int checked = 0, bad = 0, strong = 0;
    double worst = 0;
    const float eps = 2e-2f;
    for (int l = 0; l < c->n_layers; l += 2)
        for (int k = 0; k < LIN_COUNT; k++)
            for (int which = 0; which < 2; which++) {
                int out, in;
                llama_linear_shape(c, (llama_linear)k, &out, &in);
                size_t n = (size_t)ad.rank * (which ? out : in);
                float *p = which ? llama_lora_b(&ad, c, ad.params, l, k) : llama_lora_a(&ad, ad.params, l, k);
                float *g = which ? llama_lora_b(&ad, c, grads, l, k) : llama_lora_a(&ad, grads, l, k);
                size_t pick[5] = {0, 0, 0, 0, 0};
                for (size_t i = 0; i < n; i++) /* top three by |g| */
                    for (int s = 0; s < 3; s++)
                        if (fabsf(g[i]) > fabsf(g[pick[s]])) {
                            memmove(pick + s + 1, pick + s, (size_t)(2 - s) * sizeof pick[0]);
                            pick[s] = i;
                            break;
                        }
                pick[3] = (size_t)(uniform_pm(1) * 0.5f * n + n / 2) % n;
                pick[4] = (size_t)(uniform_pm(1) * 0.5f * n + n / 2) % n;
                for (int s = 0; s < 5; s++) {
                    size_t i = pick[s];
                    if (s >= 3 && fabsf(g[i]) < 1e-4f)
                        continue;
                    float keep = p[i];
                    p[i] = keep + eps;
                    double lp = loss(&r);
                    p[i] = keep - eps;
                    double lm = loss(&r);
                    p[i] = keep;
                    double fd = (lp - lm) / (2 * eps), an = g[i];
                    double rel = fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-6);
                    checked++;
                    strong += fabs(fd) > 20 * 5e-5; /* far above the noise: the check has teeth */
                    if (rel > 0.03 && fabs(fd - an) > 5e-5) { /* 5e-5: float noise of the loss over 2 eps */
                        if (bad++ < 5)
                            printf("# layer %d %s %s[%zu]: analytic %.6g, numeric %.6g\n", l,
                                   llama_linear_name(k), which ? "B" : "A", i, an, fd);
                    }
                    if (fabs(fd - an) > 5e-5 && rel > worst)
                        worst = rel;
                }
            }
    CHECK(bad == 0, "%d of %d gradients disagree (worst relative difference %.3g)", bad, checked, worst);
    CHECK(strong * 2 >= checked, "only %d of %d gradients rise far above the loss's float noise", strong, checked);
    test_case("%s, %s base%s, T %d: %d LoRA gradients (every target, A and B; %d far above float noise) match "
              "central differences (worst rel. diff %.2g)", name, qt_format_name(f), dropout > 0 ? ", dropout 0.1" : "",
              T_LEN, checked, strong, worst);

    const size_t n_logits = (size_t)B_SEQ * T_LEN * c->vocab_size;
    float *base = malloc(n_logits * sizeof(float));
    if (!base) {
        CHECK(0, "out of memory");
        return;
    }

    /* Training attends by sgemm, inference in run.c's order: the same logits to rounding. */
    if (dropout == 0) {
        llama_forward(&m, &ad, &r.a, &r.cache, tokens, B_SEQ, T_LEN, 0, LLAMA_TRAIN);
        memcpy(base, r.a.logits, n_logits * sizeof(float));
        llama_forward(&m, &ad, &r.a, &r.cache, tokens, B_SEQ, T_LEN, 0, LLAMA_INFER);
        double worst_diff = 0, largest = 0;
        for (size_t i = 0; i < n_logits; i++) {
            worst_diff = fmax(worst_diff, fabs((double)base[i] - r.a.logits[i]));
            largest = fmax(largest, fabs((double)base[i]));
        }
        CHECK(worst_diff <= 1e-5 * largest, "training and inference logits differ by %.3g (largest %.3g)",
              worst_diff, largest);
        test_case("%s, %s base, T %d: training's attention (sgemm) and inference's (run.c order) agree to %.2g "
                  "of the largest logit", name, qt_format_name(f), T_LEN, worst_diff / largest);
    }

    /* A fresh adapter (B = 0) changes nothing. */
    llama_forward(&m, NULL, &r.a, &r.cache, tokens, B_SEQ, T_LEN, 0, LLAMA_INFER);
    memcpy(base, r.a.logits, n_logits * sizeof(float));
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            int out, in;
            llama_linear_shape(c, (llama_linear)k, &out, &in);
            memset(llama_lora_b(&ad, c, ad.params, l, k), 0, (size_t)ad.rank * out * sizeof(float));
        }
    llama_forward(&m, &ad, &r.a, &r.cache, tokens, B_SEQ, T_LEN, 0, LLAMA_INFER);
    CHECK(memcmp(base, r.a.logits, (size_t)B_SEQ * T_LEN * c->vocab_size * sizeof(float)) == 0,
          "logits changed");
    test_case("%s, %s base, T %d: an adapter with B = 0 leaves the logits bit-identical", name, qt_format_name(f),
              T_LEN);
    free(base);
    free(grads);
    free(r.dlogits);
    llama_acts_free(&r.a);
    llama_cache_free(&r.cache);
    llama_lora_free(&ad);
    llama_free(&m);
}

/* A packed row of three examples against the examples one by one: the same logits at
 * every position and the same gradients of the summed loss (to the rounding of another
 * order of summation), since attention is confined to each example and positions
 * restart. Then the packed row's gradients against central differences. */
static void check_packing(const char *dir, qt_format f)
{
    llama_model m;
    if (load(&m, dir, f) < 0)
        return;
    const llama_config *c = &m.cfg;
    const int V = c->vocab_size, lens[3] = {7, 5, 12}, T = 24;
    static int row[24], start[24];
    for (int e = 0, t = 0; e < 3; e++)
        for (int i = 0; i < lens[e]; i++, t++)
            row[t] = short_tokens[(e * 7 + i) % 24], start[t] = t - i;
    llama_lora ad;
    CHECK(llama_lora_alloc(&ad, c, 4, 8.0f, 0, (1u << LIN_COUNT) - 1, 0) == 0, "alloc");
    for (size_t i = 0; i < ad.n_params; i++)
        ad.params[i] = uniform_pm(0.1f);
    float *g_packed = calloc(ad.n_params, sizeof(float)), *g_one = calloc(ad.n_params, sizeof(float));
    float *logits = malloc((size_t)T * V * sizeof(float));
    double worst_logit = 0, largest = 0;
    /* each example alone (summed loss: the per-example means times their counts) */
    for (int e = 0, t0 = 0; e < 3; t0 += lens[e++]) {
        rig r = {&m, &ad, {0}, {0}, malloc((size_t)lens[e] * V * sizeof(float))};
        CHECK(r.dlogits && llama_cache_alloc(&r.cache, c, 1, lens[e]) == 0 &&
                  llama_acts_alloc(&r.a, c, 1, lens[e], lens[e], ad.rank, 1) == 0, "alloc");
        B_SEQ = 1, T_LEN = lens[e], tokens = row + t0, seg_start = NULL;
        loss(&r);
        for (size_t i = 0; i < (size_t)lens[e] * V; i++)
            r.dlogits[i] *= (float)(lens[e] - 1);
        memcpy(logits + (size_t)t0 * V, r.a.logits, (size_t)lens[e] * V * sizeof(float));
        CHECK(llama_backward(&m, &ad, &r.a, &r.cache, 1, lens[e], r.dlogits, g_one) == 0, "backward");
        free(r.dlogits);
        llama_acts_free(&r.a);
        llama_cache_free(&r.cache);
    }
    /* packed, with its loss times its count (21 predicted), so both are sums */
    rig r = {&m, &ad, {0}, {0}, malloc((size_t)T * V * sizeof(float))};
    CHECK(r.dlogits && llama_cache_alloc(&r.cache, c, 1, T) == 0 && llama_acts_alloc(&r.a, c, 1, T, T, ad.rank, 0) == 0,
          "alloc");
    B_SEQ = 1, T_LEN = T, tokens = row, seg_start = start;
    loss(&r);
    for (size_t i = 0; i < (size_t)T * V; i++) {
        worst_logit = fmax(worst_logit, fabs((double)logits[i] - r.a.logits[i]));
        largest = fmax(largest, fabs((double)logits[i]));
        r.dlogits[i] *= 21.0f;
    }
    CHECK(llama_backward(&m, &ad, &r.a, &r.cache, 1, T, r.dlogits, g_packed) == 0, "backward");
    double worst = 0, gmax = 0;
    for (size_t i = 0; i < ad.n_params; i++) {
        worst = fmax(worst, fabs((double)g_packed[i] - g_one[i]));
        gmax = fmax(gmax, fabs((double)g_one[i]));
    }
    CHECK(worst_logit <= 1e-5 * largest, "logits differ by %.3g (largest %.3g)", worst_logit, largest);
    CHECK(worst <= 1e-4 * gmax, "gradients differ by %.3g (largest %.3g)", worst, gmax);
    test_case("%s base: a packed row of 3 examples (7 + 5 + 12 tokens, one slot recomputed) gives each example's "
              "logits (to %.2g) and gradients (to %.2g of the largest)", qt_format_name(f), worst_logit / largest,
              worst / gmax);
    free(r.dlogits);
    llama_acts_free(&r.a);
    llama_cache_free(&r.cache);
    free(g_packed);
    free(g_one);
    free(logits);
    llama_lora_free(&ad);
    llama_free(&m);
}

/* A random checkpoint of make-model's into dir (under the temporary root); 0 or -1. */
static int make_model(const char *tool, const char *dir, const char *args)
{
    char cmd[8600];
    snprintf(cmd, sizeof cmd, "'%s' make-model --dim 64 --hidden 160 --layers 4 --heads 4 --kv-heads 2 --vocab 512 "
             "--seq-len 256 --seed 7 --init-std 0.15 %s --out '%s' >/dev/null", tool, args, dir);
    int rc = system(cmd);
    CHECK(rc == 0, "%s: exit status %d", cmd, rc);
    return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *shared = argc > 1 ? argv[1] : "../shared", *tool = argc > 2 ? argv[2] : "qlora-tool";
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared);
    check_gradients(dir, QT_F32, 0);
    long_tokens[0] = 1;
    for (int t = 1; t < LONG_T; t++)
        long_tokens[t] = short_tokens[t % 24 ? t % 24 : 1] ^ (t & 7);
    B_SEQ = 1, T_LEN = LONG_T, tokens = long_tokens;
    check_gradients(dir, QT_NF4, 0);
    B_SEQ = 2, T_LEN = 12, tokens = short_tokens;
    check_gradients(dir, QT_NF4, 0);
    check_gradients(dir, QT_NF4, 0.1f);
    check_packing(dir, QT_NF4);
    /* central differences through a packed batch: two rows of examples 5 + 7 and 8 + 4 */
    static const int packed_start[24] = {0, 0, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8};
    B_SEQ = 2, T_LEN = 12, tokens = short_tokens, seg_start = packed_start;
    check_gradients(dir, QT_F32, 0);
    seg_start = NULL;

    /* the other architectures' pieces */
    char root[] = "/tmp/qlora-backward-XXXXXX";
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp");
        return tap_done();
    }
    static const struct {
        const char *name, *args;
        qt_format f;
        float dropout;
    } archs[] = {
        {"qwen3", "--arch qwen3 --head-dim 24 --bias --untied", QT_F32, 0},
        {"qwen3", "--arch qwen3 --head-dim 24 --bias --untied", QT_NF4, 0.1f},
        {"qwen2", "--arch qwen2", QT_NF4, 0},
        {"llama-bias-rope-llama3", "--arch llama --bias --rope-scaling llama3 --rope-factor 8 --rope-theta 500000",
         QT_F32, 0},
    };
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        snprintf(dir, sizeof dir, "%s/%s", root, archs[i].name);
        if (access(dir, F_OK) == 0 || make_model(tool, dir, archs[i].args) == 0)
            check_gradients(dir, archs[i].f, archs[i].dropout);
    }
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    CHECK(system(cmd) == 0, "%s", cmd);
    return tap_done();
}
