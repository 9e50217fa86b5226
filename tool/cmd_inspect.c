/* cmd_inspect.c: qlora-tool inspect. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "procmem.h"
#include "forward.h"
#include "generate.h"
#include "tool.h"

/* ---- inspect ---- */

typedef struct {
    int n_layers;
    double err2[QT_NFORMATS][LIN_COUNT], ref2[LIN_COUNT];
    double layer_err2[QT_NFORMATS][64], layer_ref2[64];
    int block;
} error_table;

static int measure_layer(void *ctx, int layer, llama_linear l, const float *w, int rows, int cols)
{
    error_table *t = ctx;
    size_t n = (size_t)rows * cols;
    float *deq = malloc(n * sizeof(float));
    if (!deq)
        return -1;
    double ref = 0;
    for (size_t i = 0; i < n; i++)
        ref += (double)w[i] * w[i];
    t->ref2[l] += ref;
    if (layer < 64)
        t->layer_ref2[layer] += ref;
    for (int f = 1; f < QT_NFORMATS; f++) {
        qt_matrix q;
        char err[256];
        qt_spec spec = qt_spec_default(f);
        spec.block = t->block;
        if (qt_spec_check(spec, err, sizeof err) < 0)
            spec = qt_spec_default(f); /* ggml's formats have their own blocks */
        if (spec.block != t->block && cols % spec.block) { /* and take only whole ones */
            t->err2[f][l] = NAN; /* printed as "-": not every matrix fits the format */
            if (layer < 64)
                t->layer_err2[f][layer] = NAN;
            continue;
        }
        if (qt_quantize(&q, w, rows, cols, spec, err, sizeof err) < 0) {
            free(deq);
            return -1;
        }
        qt_dequantize_rows(&q, 0, rows, deq);
        qt_free(&q);
        double e = 0;
        for (size_t i = 0; i < n; i++)
            e += ((double)deq[i] - w[i]) * ((double)deq[i] - w[i]);
        t->err2[f][l] += e;
        if (layer < 64)
            t->layer_err2[f][layer] += e;
    }
    free(deq);
    return 0;
}

/* One cell of the error tables: "-" where a format did not take every matrix. */
static void print_rmse(double err2, double ref2)
{
    if (isnan(err2))
        printf(" %8s", "-");
    else
        printf(" %8.4f", sqrt(err2 / ref2));
}

int cmd_inspect(int argc, char **argv)
{
    const char *cmd = "inspect";
    tool_model_opts o = {.spec = qt_spec_default(QT_F32)};
    int e;
    for (int i = 1; i < argc; i++) {
        if (!tool_model_option(cmd, argc, argv, &i, &o, &e))
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", argv[i]);
        if (e)
            return e;
    }
    size_t rss0 = rt_rss_bytes();
    llama_model m;
    int rc = tool_load_model(cmd, &o, &m, NULL);
    if (rc)
        return rc;
    const llama_config *c = &m.cfg;
    size_t quantized, params = llama_n_params(c, m.tied, &quantized);
    printf("model %s (%s layout, %s)\n", o.dir, m.gguf ? "GGUF" : m.hf_layout ? "Hugging Face" : "llama2.c", llama_arch_name(c->arch));
    printf("  dim %d, hidden %d, layers %d, heads %d of %d, kv heads %d, vocab %d, seq_len %d, %s head\n",
           c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->head_size, c->n_kv_heads, c->vocab_size,
           c->seq_len, m.tied ? "tied" : "separate");
    printf("  parameters %zu (%zu in the quantized linears)\n", params, quantized);

    double bits = llama_linear_bits(&m);
    size_t fp32_rest = (params - quantized) * sizeof(float);
    /* a request's cache holds the positions it reaches: one of a full context, up to the
     * window eval scores text in (Llama 3.2's whole 131072 would be 8 GiB) */
    const int positions = llama_eval_window(c);
    size_t cache = 2 * (size_t)c->n_layers * positions * c->kv_dim * sizeof(float);
    llama_cache kv;
    if (llama_cache_alloc(&kv, c, 1, positions) == 0) /* touch it, so RSS includes it */
        memset(kv.k, 0, cache / 2), memset(kv.v, 0, cache / 2);
    size_t rss = rt_rss_bytes() - rss0;
    size_t expect = (size_t)(bits * quantized / 8) + fp32_rest + cache;
    printf("\nquantization %s, block %d%s: %.3f bits/param over the linears\n",
           llama_quant_name(&m), o.spec.block, o.spec.double_quant ? ", double quant" : "",
           bits);
    printf("memory: quantized linears %.2f MiB + fp32 embeddings, norms, biases, head %.2f MiB + KV cache "
           "(%d positions) %.2f MiB = %.2f MiB expected\n", bits * quantized / 8 / 1048576.0,
           fp32_rest / 1048576.0, positions, cache / 1048576.0, expect / 1048576.0);
    printf("resident (RSS growth from load to here): %.2f MiB (%.1f%% of expected)\n",
           rss / 1048576.0, 100.0 * rss / expect);
    error_table t = {.n_layers = c->n_layers, .block = o.spec.block};
    char err[1024];
    if (llama_visit_linears(o.dir, &t, measure_layer, err, sizeof err) < 0) {
        fprintf(stderr, "qlora-tool inspect: %s\n", err);
        llama_cache_free(&kv);
        llama_free(&m);
        return 1;
    }
    printf("\nrelative RMSE of each linear, over all layers (block %d):\n  %-8s", t.block, "format");
    for (int l = 0; l < LIN_COUNT; l++)
        printf(" %8s", llama_linear_name(l));
    printf("\n");
    for (int f = 1; f < QT_NFORMATS; f++) {
        printf("  %-8s", qt_format_name(f));
        for (int l = 0; l < LIN_COUNT; l++)
            print_rmse(t.err2[f][l], t.ref2[l]);
        printf("\n");
    }
    printf("\nrelative RMSE of each layer (all seven linears):\n  %-8s", "format");
    for (int l = 0; l < c->n_layers && l < 64; l++)
        printf(" %7s%d", "layer", l);
    printf("\n");
    for (int f = 1; f < QT_NFORMATS; f++) {
        printf("  %-8s", qt_format_name(f));
        for (int l = 0; l < c->n_layers && l < 64; l++)
            print_rmse(t.layer_err2[f][l], t.layer_ref2[l]);
        printf("\n");
    }

    llama_cache_free(&kv);
    llama_free(&m);
    return 0;
}
