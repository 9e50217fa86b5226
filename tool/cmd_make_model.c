/* cmd_make_model.c: qlora-tool make-model, a random checkpoint in Hugging Face layout of
 * any architecture the loader runs (model.h), with the config.json keys of the real
 * family, so that tests and benchmarks can pair real shapes and real tokenizers with
 * weights nobody has to download. Norms of the residual stream are ones (as initialised);
 * q/k norms and biases are random, so that one read in the wrong order or not at all
 * changes every logit. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "tool.h"

typedef enum { T_MATRIX, T_ONES, T_NOISY_ONES, T_BIAS } tensor_kind;

typedef struct {
    char name[96];
    size_t rows, cols; /* a vector: rows 1 */
    tensor_kind kind;
} tensor;

typedef struct {
    tensor *t;
    size_t n;
} tensor_list;

static void add(tensor_list *l, tensor_kind kind, size_t rows, size_t cols, const char *fmt, int layer)
{
    tensor *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->rows = rows, t->cols = cols, t->kind = kind;
}

static int write_all(FILE *f, const void *p, size_t n)
{
    return fwrite(p, 1, n, f) == n ? 0 : -1;
}

/* Irwin-Hall approximation of N(0, 1): the sum of 4 uniforms of xorshift64. */
static double normal(uint64_t *rng)
{
    double u = 0;
    for (int r = 0; r < 4; r++) {
        *rng ^= *rng << 13, *rng ^= *rng >> 7, *rng ^= *rng << 17;
        u += (*rng >> 11) * (1.0 / 9007199254740992.0);
    }
    return (u - 2.0) * sqrt(3.0);
}

/* One draw per value whatever its kind, so that a plain Llama's weights stay what this
 * command always wrote for a seed. */
static float value(tensor_kind kind, double std, uint64_t *rng)
{
    double z = normal(rng);
    switch (kind) {
    case T_ONES: return 1.0f;
    case T_NOISY_ONES: return (float)(1.0 + 0.2 * z);
    case T_BIAS: return (float)(0.1 * z);
    default: return (float)(std * z);
    }
}

static int write_safetensors(const char *path, const tensor_list *l, int seed, double std, size_t *bytes)
{
    size_t cap = 256 + l->n * 192, len = 0, off = 0;
    char *header = malloc(cap);
    float *buf = malloc(65536 * sizeof(float));
    FILE *f = NULL;
    int rc = -1;
    if (!header || !buf)
        goto done;
    len += (size_t)snprintf(header + len, cap - len, "{");
    for (size_t i = 0; i < l->n; i++) {
        const tensor *t = &l->t[i];
        size_t n = t->rows * t->cols * 4;
        char shape[48];
        if (t->rows == 1)
            snprintf(shape, sizeof shape, "%zu", t->cols);
        else
            snprintf(shape, sizeof shape, "%zu,%zu", t->rows, t->cols);
        len += (size_t)snprintf(header + len, cap - len, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%s],"
                                "\"data_offsets\":[%zu,%zu]}", i ? "," : "", t->name, shape, off, off + n);
        off += n;
    }
    len += (size_t)snprintf(header + len, cap - len, "}");
    while (len % 8)
        header[len++] = ' ';
    uint64_t hlen = len;
    if (!(f = fopen(path, "wb")) || write_all(f, &hlen, 8) || write_all(f, header, len))
        goto done;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)seed;
    for (size_t i = 0; i < l->n; i++) {
        size_t n = l->t[i].rows * l->t[i].cols;
        for (size_t done = 0; done < n;) {
            size_t chunk = n - done < 65536 ? n - done : 65536;
            for (size_t j = 0; j < chunk; j++)
                buf[j] = value(l->t[i].kind, std, &rng);
            if (write_all(f, buf, chunk * sizeof(float)))
                goto done;
            done += chunk;
        }
    }
    *bytes = off;
    rc = 0;
done:
    if (f && fclose(f) != 0)
        rc = -1;
    free(header);
    free(buf);
    return rc;
}

/* config.json with the keys of the family's published configs. */
static int write_config(const char *path, const llama_config *c, int tied, const char *rope)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n", llama_arch_name(c->arch),
            llama_arch_type(c->arch));
    fprintf(f, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
               "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"vocab_size\": %d,\n"
               "  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": %.1f,\n"
               "  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"float32\",\n",
            c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len,
            (double)c->rope_theta, tied ? "true" : "false");
    if (c->head_size * c->n_heads != c->dim || c->arch == LLAMA_ARCH_QWEN3)
        fprintf(f, "  \"head_dim\": %d,\n", c->head_size);
    int attention_bias = (c->biases >> LIN_O) & 1;
    switch (c->arch) {
    case LLAMA_ARCH_LLAMA:
        fprintf(f, "  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n", attention_bias ? "true" : "false",
                (c->biases >> LIN_GATE) & 1 ? "true" : "false");
        break;
    case LLAMA_ARCH_MISTRAL: fprintf(f, "  \"sliding_window\": %d,\n", c->seq_len); break;
    case LLAMA_ARCH_QWEN2:
        fprintf(f, "  \"use_sliding_window\": false,\n  \"sliding_window\": %d,\n  \"max_window_layers\": %d,\n",
                c->seq_len, c->n_layers);
        break;
    case LLAMA_ARCH_QWEN3:
        fprintf(f, "  \"attention_bias\": %s,\n  \"use_sliding_window\": false,\n  \"sliding_window\": null,\n"
                   "  \"max_window_layers\": %d,\n", attention_bias ? "true" : "false", c->n_layers);
        break;
    }
    fprintf(f, "  \"rope_scaling\": %s\n}\n", rope);
    return fclose(f) != 0 ? -1 : 0;
}

int cmd_make_model(int argc, char **argv)
{
    const char *cmd = "make-model", *out = NULL, *arch = "llama", *rope_type = NULL;
    int dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq_len = 2048, seed = 1;
    int head_dim = 0, bias = 0, untied = 0, theta = 10000;
    double factor = 8, std = 0.02;
    struct {
        const char *flag;
        int *v;
    } ints[] = {{"--dim", &dim}, {"--hidden", &hidden}, {"--layers", &layers}, {"--heads", &heads},
                {"--kv-heads", &kv_heads}, {"--vocab", &vocab}, {"--seq-len", &seq_len}, {"--seed", &seed},
                {"--head-dim", &head_dim}, {"--rope-theta", &theta}};
    for (int i = 1; i < argc; i++) {
        int matched = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !matched; k++)
            if (!strcmp(argv[i], ints[k].flag) && i + 1 < argc) {
                matched = 1;
                if (tool_parse_int(argv[++i], 1, 1 << 24, ints[k].v) < 0)
                    return tool_fail(cmd, "%s: '%s' is not a positive integer", ints[k].flag, argv[i]);
            }
        if (matched)
            continue;
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--arch") && i + 1 < argc)
            arch = argv[++i];
        else if (!strcmp(argv[i], "--rope-scaling") && i + 1 < argc)
            rope_type = argv[++i];
        else if (!strcmp(argv[i], "--rope-factor") && i + 1 < argc) {
            char *end;
            factor = strtod(argv[++i], &end);
            if (*end || !(factor >= 1 && factor <= 1024))
                return tool_fail(cmd, "--rope-factor: '%s' is not a number in 1..1024", argv[i]);
        } else if (!strcmp(argv[i], "--init-std") && i + 1 < argc) {
            /* 0.02 is transformers' initializer_range; tests want logits far from uniform */
            char *end;
            std = strtod(argv[++i], &end);
            if (*end || !(std > 0 && std <= 1))
                return tool_fail(cmd, "--init-std: '%s' is not a number in (0, 1]", argv[i]);
        } else if (!strcmp(argv[i], "--bias"))
            bias = 1;
        else if (!strcmp(argv[i], "--untied"))
            untied = 1;
        else
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", argv[i]);
    }
    if (!out || !dim || !hidden || !layers || !heads || !kv_heads || !vocab)
        return tool_fail(cmd, "--dim --hidden --layers --heads --kv-heads --vocab and --out are required");
    llama_config c = {.dim = dim, .hidden_dim = hidden, .n_layers = layers, .n_heads = heads,
                      .n_kv_heads = kv_heads, .vocab_size = vocab, .seq_len = seq_len, .head_size = head_dim,
                      .rope_theta = (float)theta};
    int found = -1;
    for (int a = 0; a < 4; a++)
        if (!strcmp(arch, llama_arch_type((llama_arch)a)))
            found = a;
    if (found < 0)
        return tool_fail(cmd, "--arch: '%s' is not llama, mistral, qwen2 or qwen3", arch);
    c.arch = (llama_arch)found;
    c.qk_norm = c.arch == LLAMA_ARCH_QWEN3;
    if (c.arch == LLAMA_ARCH_QWEN2)
        c.biases = 1u << LIN_Q | 1u << LIN_K | 1u << LIN_V;
    if (bias) { /* Llama's attention_bias and mlp_bias, Qwen3's attention_bias */
        if (c.arch != LLAMA_ARCH_LLAMA && c.arch != LLAMA_ARCH_QWEN3)
            return tool_fail(cmd, "--bias: only llama and qwen3 have bias switches");
        c.biases = 1u << LIN_Q | 1u << LIN_K | 1u << LIN_V | 1u << LIN_O;
        if (c.arch == LLAMA_ARCH_LLAMA)
            c.biases |= 1u << LIN_GATE | 1u << LIN_UP | 1u << LIN_DOWN;
    }
    char rope[256] = "null", err[256];
    if (rope_type && !strcmp(rope_type, "linear"))
        snprintf(rope, sizeof rope, "{\"rope_type\": \"linear\", \"factor\": %g}", factor);
    else if (rope_type && !strcmp(rope_type, "llama3")) /* Llama 3.2's, the context scaled down */
        snprintf(rope, sizeof rope, "{\"rope_type\": \"llama3\", \"factor\": %g, \"low_freq_factor\": 1.0, "
                 "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": %d}", factor,
                 seq_len / 4 > 0 ? seq_len / 4 : 1);
    else if (rope_type)
        return tool_fail(cmd, "--rope-scaling: '%s' is not linear or llama3", rope_type);
    if (llama_config_derive(&c, "make-model", err, sizeof err) < 0 || vocab < 259)
        return tool_fail(cmd, "%s", vocab < 259 ? "--vocab must be at least 259 (the byte tokens)" : err);
    if (mkdir(out, 0755) < 0 && errno != EEXIST)
        return tool_fail(cmd, "--out: cannot create %s: %s", out, strerror(errno));
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", out);
    if (write_config(path, &c, !untied, rope) < 0)
        return tool_fail(cmd, "cannot write %s", path);

    /* tensors in order: embedding, then per layer norms and linears, the final norm, the head */
    tensor_list l = {calloc(3 + (size_t)layers * (4 + 2 * LIN_COUNT), sizeof(tensor)), 0};
    if (!l.t)
        return tool_fail(cmd, "out of memory");
    add(&l, T_MATRIX, (size_t)vocab, (size_t)dim, "model.embed_tokens.weight", 0);
    for (int layer = 0; layer < layers; layer++) {
        add(&l, T_ONES, 1, (size_t)dim, "model.layers.%d.input_layernorm.weight", layer);
        add(&l, T_ONES, 1, (size_t)dim, "model.layers.%d.post_attention_layernorm.weight", layer);
        if (c.qk_norm) {
            add(&l, T_NOISY_ONES, 1, (size_t)c.head_size, "model.layers.%d.self_attn.q_norm.weight", layer);
            add(&l, T_NOISY_ONES, 1, (size_t)c.head_size, "model.layers.%d.self_attn.k_norm.weight", layer);
        }
        for (int k = 0; k < LIN_COUNT; k++) {
            int rows, cols;
            char fmt[96];
            llama_linear_shape(&c, (llama_linear)k, &rows, &cols);
            snprintf(fmt, sizeof fmt, "model.layers.%%d.%s.weight", llama_linear_module((llama_linear)k));
            add(&l, T_MATRIX, (size_t)rows, (size_t)cols, fmt, layer);
            if (c.biases >> k & 1) {
                snprintf(fmt, sizeof fmt, "model.layers.%%d.%s.bias", llama_linear_module((llama_linear)k));
                add(&l, T_BIAS, 1, (size_t)rows, fmt, layer);
            }
        }
    }
    add(&l, T_ONES, 1, (size_t)dim, "model.norm.weight", 0);
    if (untied)
        add(&l, T_MATRIX, (size_t)vocab, (size_t)dim, "lm_head.weight", 0);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    size_t bytes = 0;
    int rc = write_safetensors(path, &l, seed, std, &bytes);
    free(l.t);
    if (rc < 0)
        return tool_fail(cmd, "cannot write %s", path);
    printf("%s: %s, dim %d, hidden %d, %d layers, %d heads of %d (%d kv), vocab %d: %.1fM parameters\n", out,
           llama_arch_name(c.arch), dim, hidden, layers, heads, c.head_size, kv_heads, vocab, bytes / 4e6);
    return 0;
}
