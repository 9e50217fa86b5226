/* model_gguf.c: a GGUF file's metadata as llama.cpp's llama_model_loader reads it
 * (llama-model.cpp: load_hparams and each architecture's load_arch_hparams), for the
 * architectures that run here: llama (which llama.cpp's converter also makes of Mistral
 * checkpoints), qwen2, qwen3. As for config.json (model_config.c), every key must be one
 * this code knows: one it reads, one that changes nothing in the computation (general.*
 * metadata, llama-quantize's quantize.*), or the tokenizer's (tokenizer.*, read and
 * checked by tokenizer_gguf.c). Anything else (an MoE's expert counts, sliding windows,
 * YaRN) is refused by name, since running it as if absent would give plausible wrong
 * numbers. Defaults are llama.cpp's. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model_config.h"

#define FAIL(...) (snprintf(err, errlen, __VA_ARGS__), -1)

static const struct {
    const char *name;
    llama_arch arch;
    int interleaved; /* llama.cpp's rope type NORM: q/k rows in pairs (its converter permuted them) */
} gguf_archs[] = {
    {"llama", LLAMA_ARCH_LLAMA, 1},
    {"qwen2", LLAMA_ARCH_QWEN2, 0},
    {"qwen3", LLAMA_ARCH_QWEN3, 0},
};
#define N_GGUF_ARCHS (sizeof gguf_archs / sizeof gguf_archs[0])

/* The integer keys of the shape: suffix after "ARCH.", member, smallest, largest, required. */
static const struct {
    const char *key;
    size_t offset;
    long lo, hi;
    int required;
} shape_keys[] = {
    {"context_length", offsetof(llama_config, seq_len), 1, 1 << 20, 1},
    {"embedding_length", offsetof(llama_config, dim), 1, 1 << 16, 1},
    {"block_count", offsetof(llama_config, n_layers), 1, 1024, 1},
    {"feed_forward_length", offsetof(llama_config, hidden_dim), 1, 1 << 18, 1},
    {"attention.head_count", offsetof(llama_config, n_heads), 1, 1024, 1},
    {"attention.head_count_kv", offsetof(llama_config, n_kv_heads), 1, 1024, 0},
    {"attention.key_length", offsetof(llama_config, head_size), 2, 1 << 16, 0},
    {"vocab_size", offsetof(llama_config, vocab_size), 1, 1 << 22, 0},
};
#define N_SHAPE_KEYS (sizeof shape_keys / sizeof shape_keys[0])

/* The other ARCH.* keys read below. */
static const char *const read_keys[] = {
    "attention.layer_norm_rms_epsilon", "attention.value_length", "rope.dimension_count", "rope.freq_base",
    "rope.scaling.type", "rope.scaling.factor", "rope.scale_linear",
    /* YaRN's original context and the finetuned flag change nothing without YaRN */
    "rope.scaling.original_context_length", "rope.scaling.finetuned",
};

/* ARCH.* keys llama.cpp writes that change nothing here: an MoE's counts when zero are
 * checked below. */
static int arch_key_known(const char *rest)
{
    for (size_t i = 0; i < N_SHAPE_KEYS; i++)
        if (!strcmp(rest, shape_keys[i].key))
            return 1;
    for (size_t i = 0; i < sizeof read_keys / sizeof read_keys[0]; i++)
        if (!strcmp(rest, read_keys[i]))
            return 1;
    return 0;
}

/* Every key of the file is one this code knows for architecture name. */
static int check_keys(const gguf_file *f, const char *name, char *err, size_t errlen)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        const char *k = kv->key;
        if (!strncmp(k, "general.", 8) || !strncmp(k, "tokenizer.", 10) || !strncmp(k, "quantize.", 9))
            continue;
        if (!strcmp(k, "split.count") || !strcmp(k, "split.no") || !strcmp(k, "split.tensors.count")) {
            int64_t v;
            if (!strcmp(k, "split.count") && (gguf_kv_int(kv, 0, 1, &v) < 0))
                return FAIL("%s: at byte %zu: key '%s': a GGUF split into several files is not supported (merge it "
                            "with llama-gguf-split --merge)", f->path, kv->offset, k);
            continue;
        }
        if (!strncmp(k, name, n) && k[n] == '.' && arch_key_known(k + n + 1))
            continue;
        if (!strncmp(k, name, n) && k[n] == '.' && (!strcmp(k + n + 1, "expert_count") ||
                                                    !strcmp(k + n + 1, "expert_used_count"))) {
            int64_t v;
            if (gguf_kv_int(kv, 0, 0, &v) == 0)
                continue;
            return FAIL("%s: at byte %zu: key '%s': a mixture of experts is not supported", f->path, kv->offset, k);
        }
        return FAIL("%s: at byte %zu: key '%s' is not one this loader knows for a %s model: it may change the "
                    "computation, so it is refused rather than ignored", f->path, kv->offset, k, name);
    }
    return 0;
}

/* key "ARCH.rest" into buf. */
static const gguf_kv *arch_kv(const gguf_file *f, const char *arch, const char *rest, char *buf, size_t n)
{
    snprintf(buf, n, "%s.%s", arch, rest);
    return gguf_find_kv(f, buf);
}

/* RoPE: the base, and a linear scale as llama.cpp applies it (its freq_scale divides every
 * frequency, under the scaling types none and linear alike; the others are refused). */
static int read_rope(const gguf_file *f, const char *arch, llama_config *c, char *err, size_t errlen)
{
    char key[128];
    const gguf_kv *kv;
    double v = 10000.0;
    if ((kv = arch_kv(f, arch, "rope.freq_base", key, sizeof key)) && (gguf_kv_float(kv, &v) < 0 || !(v > 1)))
        return FAIL("%s: at byte %zu: key '%s' must be a float above 1", f->path, kv->offset, key);
    c->rope_theta = (float)v;
    if ((kv = arch_kv(f, arch, "rope.scaling.type", key, sizeof key))) {
        gguf_str s;
        if (gguf_kv_str(kv, &s) < 0 ||
            !((s.n == 4 && !memcmp(s.s, "none", 4)) || (s.n == 6 && !memcmp(s.s, "linear", 6))))
            return FAIL("%s: at byte %zu: key '%s': only \"none\" and \"linear\" are implemented here", f->path,
                        kv->offset, key);
    }
    const char *factor_keys[] = {"rope.scaling.factor", "rope.scale_linear"};
    for (int i = 0; i < 2; i++) {
        if (!(kv = arch_kv(f, arch, factor_keys[i], key, sizeof key)))
            continue;
        if (gguf_kv_float(kv, &v) < 0 || !(v == 0 || v >= 1) || !isfinite(v))
            return FAIL("%s: at byte %zu: key '%s' must be a float of 0 (none) or at least 1", f->path, kv->offset,
                        key);
        if (v > 1) {
            c->rope.type = LLAMA_ROPE_LINEAR;
            c->rope.factor = (float)v;
        }
        break; /* llama.cpp reads the old key only without the new one */
    }
    return 0;
}

int gguf_config_read(const gguf_file *f, llama_config *c, int *interleaved, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    gguf_str name;
    const gguf_kv *kv = gguf_find_kv(f, "general.architecture");
    if (gguf_kv_str(kv, &name) < 0)
        return FAIL("%s: key 'general.architecture' missing or not a string", f->path);
    int a = -1;
    for (size_t i = 0; i < N_GGUF_ARCHS; i++)
        if (strlen(gguf_archs[i].name) == name.n && !memcmp(name.s, gguf_archs[i].name, name.n))
            a = (int)i;
    if (a < 0)
        return FAIL("%s: at byte %zu: key 'general.architecture': \"%.*s\" is not one that runs here (llama, "
                    "qwen2, qwen3)", f->path, kv->offset, (int)(name.n > 40 ? 40 : name.n), name.s);
    const char *arch = gguf_archs[a].name;
    c->arch = gguf_archs[a].arch;
    c->qk_norm = c->arch == LLAMA_ARCH_QWEN3;
    *interleaved = gguf_archs[a].interleaved;
    if (check_keys(f, arch, err, errlen) < 0)
        return -1;
    char key[128];
    for (size_t i = 0; i < N_SHAPE_KEYS; i++) {
        int64_t v;
        if (!(kv = arch_kv(f, arch, shape_keys[i].key, key, sizeof key))) {
            if (shape_keys[i].required)
                return FAIL("%s: key '%s' is missing", f->path, key);
            continue;
        }
        /* llama.cpp also takes per-layer arrays for some of these: not run here */
        if (gguf_kv_int(kv, shape_keys[i].lo, shape_keys[i].hi, &v) < 0)
            return FAIL("%s: at byte %zu: key '%s' must be an integer in %ld..%ld", f->path, kv->offset, key,
                        shape_keys[i].lo, shape_keys[i].hi);
        *(int *)((char *)c + shape_keys[i].offset) = (int)v;
    }
    if (!c->n_kv_heads)
        c->n_kv_heads = c->n_heads;
    double eps;
    if (!(kv = arch_kv(f, arch, "attention.layer_norm_rms_epsilon", key, sizeof key)) ||
        gguf_kv_float(kv, &eps) < 0 || !(eps > 0))
        return FAIL("%s: key '%s' missing or not a positive float", f->path, key);
    c->norm_eps = (float)eps;
    if (read_rope(f, arch, c, err, errlen) < 0 || llama_config_derive(c, f->path, err, errlen) < 0)
        return -1;
    /* the value heads and the rotated dims must be the key heads' whole width */
    static const char *const same_as_head[] = {"attention.value_length", "rope.dimension_count"};
    for (int i = 0; i < 2; i++) {
        int64_t v;
        if ((kv = arch_kv(f, arch, same_as_head[i], key, sizeof key)) &&
            (gguf_kv_int(kv, 1, 1 << 16, &v) < 0 || v != c->head_size))
            return FAIL("%s: at byte %zu: key '%s' must be the head size %d (%s)", f->path, kv->offset, key,
                        c->head_size, i ? "partial RoPE is not implemented" : "value heads of another width are not");
    }
    return 0;
}
