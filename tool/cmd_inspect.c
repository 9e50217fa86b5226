/* cmd_inspect.c: qlora-tool inspect and make-model. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "forward.h"
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

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

int cmd_inspect(int argc, char **argv)
{
    const char *cmd = "inspect";
    tool_model_opts o = {NULL, qt_spec_default(QT_F32), 0};
    int e;
    for (int i = 1; i < argc; i++) {
        if (!tool_model_option(cmd, argc, argv, &i, &o, &e))
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", argv[i]);
        if (e)
            return e;
    }
    size_t rss0 = rss_bytes();
    llama_model m;
    int rc = tool_load_model(cmd, &o, &m, NULL);
    if (rc)
        return rc;
    const llama_config *c = &m.cfg;
    size_t quantized, params = llama_n_params(c, m.tied, &quantized);
    printf("model %s (%s layout)\n", o.dir, m.hf_layout ? "Hugging Face" : "llama2.c");
    printf("  dim %d, hidden %d, layers %d, heads %d, kv heads %d, vocab %d, seq_len %d, %s head\n",
           c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
           c->seq_len, m.tied ? "tied" : "separate");
    printf("  parameters %zu (%zu in the quantized linears)\n", params, quantized);

    double bits = llama_linear_bits(&m);
    size_t fp32_rest = (params - quantized) * sizeof(float);
    size_t cache = 2 * (size_t)c->n_layers * c->seq_len * c->kv_dim * sizeof(float);
    llama_cache kv;
    if (llama_cache_alloc(&kv, c, 1, c->seq_len) == 0) /* touch it, so RSS includes it */
        memset(kv.k, 0, cache / 2), memset(kv.v, 0, cache / 2);
    size_t rss = rss_bytes() - rss0;
    size_t expect = (size_t)(bits * quantized / 8) + fp32_rest + cache;
    printf("\nquantization %s, block %d%s: %.3f bits/param over the linears\n",
           qt_format_name(o.spec.format), o.spec.block, o.spec.double_quant ? ", double quant" : "",
           bits);
    printf("memory: quantized linears %.2f MiB + fp32 embeddings, norms, head %.2f MiB + KV cache "
           "(seq_len %d) %.2f MiB = %.2f MiB expected\n", bits * quantized / 8 / 1048576.0, fp32_rest / 1048576.0,
           c->seq_len, cache / 1048576.0, expect / 1048576.0);
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
            printf(" %8.4f", sqrt(t.err2[f][l] / t.ref2[l]));
        printf("\n");
    }
    printf("\nrelative RMSE of each layer (all seven linears):\n  %-8s", "format");
    for (int l = 0; l < c->n_layers && l < 64; l++)
        printf(" %7s%d", "layer", l);
    printf("\n");
    for (int f = 1; f < QT_NFORMATS; f++) {
        printf("  %-8s", qt_format_name(f));
        for (int l = 0; l < c->n_layers && l < 64; l++)
            printf(" %8.4f", sqrt(t.layer_err2[f][l] / t.layer_ref2[l]));
        printf("\n");
    }

    llama_cache_free(&kv);
    llama_free(&m);
    return 0;
}

/* ---- make-model ---- */

static int write_all(FILE *f, const void *p, size_t n)
{
    return fwrite(p, 1, n, f) == n ? 0 : -1;
}

int cmd_make_model(int argc, char **argv)
{
    const char *cmd = "make-model", *out = NULL;
    int dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq_len = 2048, seed = 1;
    struct {
        const char *flag;
        int *v;
    } ints[] = {{"--dim", &dim}, {"--hidden", &hidden}, {"--layers", &layers}, {"--heads", &heads},
                {"--kv-heads", &kv_heads}, {"--vocab", &vocab}, {"--seq-len", &seq_len}, {"--seed", &seed}};
    for (int i = 1; i < argc; i++) {
        int matched = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !matched; k++)
            if (!strcmp(argv[i], ints[k].flag) && i + 1 < argc) {
                matched = 1;
                if (tool_parse_int(argv[++i], 1, 1 << 20, ints[k].v) < 0)
                    return tool_fail(cmd, "%s: '%s' is not a positive integer", ints[k].flag, argv[i]);
            }
        if (matched)
            continue;
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", argv[i]);
    }
    if (!out || !dim || !hidden || !layers || !heads || !kv_heads || !vocab)
        return tool_fail(cmd, "--dim --hidden --layers --heads --kv-heads --vocab and --out are required");
    if (dim % heads || heads % kv_heads || (dim / heads) % 2 || vocab < 259)
        return tool_fail(cmd, "heads must divide dim into even head sizes, kv-heads divide heads, "
                              "and vocab be at least 259 (the byte tokens)");
    if (mkdir(out, 0755) < 0 && errno != EEXIST)
        return tool_fail(cmd, "--out: cannot create %s: %s", out, strerror(errno));
    int kv_dim = dim / heads * kv_heads;
    char path[4200], header[65536];
    snprintf(path, sizeof path, "%s/config.json", out);
    FILE *f = fopen(path, "w");
    if (!f)
        return tool_fail(cmd, "cannot write %s", path);
    fprintf(f, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
               "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
               "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"vocab_size\": %d,\n"
               "  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n"
               "  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": true,\n  \"torch_dtype\": \"float32\"\n}\n",
            dim, hidden, layers, heads, kv_heads, vocab, seq_len);
    if (fclose(f) != 0)
        return tool_fail(cmd, "cannot write %s", path);

    /* tensors in order: embedding, then per layer norms and linears, then the final norm */
    struct tensor {
        char name[96];
        size_t rows, cols;
        int norm;
    } *t = calloc(2 + (size_t)layers * (2 + LIN_COUNT), sizeof *t);
    if (!t)
        return tool_fail(cmd, "out of memory");
    size_t nt = 0;
    snprintf(t[nt].name, 96, "model.embed_tokens.weight"), t[nt].rows = vocab, t[nt++].cols = dim;
    for (int l = 0; l < layers; l++) {
        snprintf(t[nt].name, 96, "model.layers.%d.input_layernorm.weight", l);
        t[nt].rows = 1, t[nt].cols = dim, t[nt++].norm = 1;
        snprintf(t[nt].name, 96, "model.layers.%d.post_attention_layernorm.weight", l);
        t[nt].rows = 1, t[nt].cols = dim, t[nt++].norm = 1;
        llama_config shape = {.dim = dim, .kv_dim = kv_dim, .hidden_dim = hidden};
        for (int k = 0; k < LIN_COUNT; k++) {
            int rows, cols;
            llama_linear_shape(&shape, (llama_linear)k, &rows, &cols);
            snprintf(t[nt].name, 96, "model.layers.%d.%s.weight", l, llama_linear_module((llama_linear)k));
            t[nt].rows = (size_t)rows, t[nt++].cols = (size_t)cols;
        }
    }
    snprintf(t[nt].name, 96, "model.norm.weight"), t[nt].rows = 1, t[nt].cols = dim, t[nt++].norm = 1;
    size_t off = 0, len = (size_t)snprintf(header, sizeof header, "{");
    for (size_t i = 0; i < nt && len < sizeof header - 256; i++) {
        size_t bytes = t[i].rows * t[i].cols * 4;
        if (t[i].norm)
            len += (size_t)snprintf(header + len, sizeof header - len,
                                    "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", t[i].name, t[i].cols, off, off + bytes);
        else
            len += (size_t)snprintf(header + len, sizeof header - len,
                                    "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", t[i].name, t[i].rows, t[i].cols, off, off + bytes);
        off += bytes;
    }
    if (len >= sizeof header - 256) {
        free(t);
        return tool_fail(cmd, "too many layers for the header buffer");
    }
    len += (size_t)snprintf(header + len, sizeof header - len, "}");
    while (len % 8)
        header[len++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    f = fopen(path, "wb");
    uint64_t hlen = len;
    int rc = !f || write_all(f, &hlen, 8) || write_all(f, header, len);
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)seed;
    float *buf = malloc(65536 * sizeof(float));
    for (size_t i = 0; i < nt && !rc && buf; i++) {
        size_t n = t[i].rows * t[i].cols;
        float sd = t[i].norm ? 0.0f : 0.02f;
        for (size_t done = 0; done < n && !rc;) {
            size_t chunk = n - done < 65536 ? n - done : 65536;
            for (size_t j = 0; j < chunk; j++) {
                /* Irwin-Hall approximation of N(0, sd): the sum of 4 uniforms */
                double u = 0;
                for (int r = 0; r < 4; r++) {
                    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                    u += (rng >> 11) * (1.0 / 9007199254740992.0);
                }
                buf[j] = t[i].norm ? 1.0f : (float)((u - 2.0) * sqrt(3.0) * sd);
            }
            rc = write_all(f, buf, chunk * sizeof(float));
            done += chunk;
        }
    }
    if (!buf)
        rc = 1;
    if (f && fclose(f) != 0)
        rc = 1;
    free(buf);
    free(t);
    if (rc)
        return tool_fail(cmd, "cannot write %s", path);
    printf("%s: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d: %.1fM parameters\n", out,
           dim, hidden, layers, heads, kv_heads, vocab, off / 4e6);
    return 0;
}
