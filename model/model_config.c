/* model_config.c: config.json as transformers reads it, for the architectures model.h
 * lists (see model_config.h). Every key of the file must be one this code knows for the
 * file's architecture: a key that changes nothing in the computation (metadata, token
 * ids, caching switches), one it reads, or one whose value it checks is the only one it
 * runs. Anything else is refused by name, since running it as if absent would give
 * plausible wrong numbers. Defaults are those of transformers' config classes. */
#include "model_config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The keys some architectures read and others do not: X(enum suffix, key). */
#define ARCH_KEYS(X)                                                   \
    X(ATTENTION_BIAS, "attention_bias")   /* Llama, Qwen3: q, k, v, o */ \
    X(MLP_BIAS, "mlp_bias")               /* Llama: gate, up, down */     \
    X(SLIDING_WINDOW, "sliding_window")                                   \
    X(USE_SLIDING_WINDOW, "use_sliding_window")                           \
    X(MAX_WINDOW_LAYERS, "max_window_layers")                             \
    X(LAYER_TYPES, "layer_types")                                         \
    X(PRETRAINING_TP, "pretraining_tp")                                   \
    X(SMOLLM_EXTRAS, "is_llama_config") /* nanotron's, ignored by transformers */

enum {
#define ARCH_KEY_BIT(e, key) KEY_##e##_BIT,
    ARCH_KEYS(ARCH_KEY_BIT)
#undef ARCH_KEY_BIT
};
#define KEY(e) (1u << KEY_##e##_BIT)

static const char *const arch_key_names[] = {
#define ARCH_KEY_NAME(e, key) key,
    ARCH_KEYS(ARCH_KEY_NAME)
#undef ARCH_KEY_NAME
};

#define ATTENTION_LINEARS (1u << LIN_Q | 1u << LIN_K | 1u << LIN_V | 1u << LIN_O)
#define MLP_LINEARS (1u << LIN_GATE | 1u << LIN_UP | 1u << LIN_DOWN)

static const struct arch {
    const char *architecture, *model_type;
    unsigned keys;            /* ARCH_KEYS it reads */
    unsigned fixed_biases;    /* the biases it always has (Qwen2Attention: q, k, v) */
    int qk_norm;
    int default_window;       /* sliding_window when absent; 0: none */
    int window_always;        /* the window applies (Mistral); else only when switched on */
} archs[] = {
    [LLAMA_ARCH_LLAMA] = {"LlamaForCausalLM", "llama", KEY(ATTENTION_BIAS) | KEY(MLP_BIAS) | KEY(PRETRAINING_TP) |
                          KEY(SMOLLM_EXTRAS), 0, 0, 0, 0},
    [LLAMA_ARCH_MISTRAL] = {"MistralForCausalLM", "mistral", KEY(SLIDING_WINDOW), 0, 0, 4096, 1},
    [LLAMA_ARCH_QWEN2] = {"Qwen2ForCausalLM", "qwen2",
                          KEY(SLIDING_WINDOW) | KEY(USE_SLIDING_WINDOW) | KEY(MAX_WINDOW_LAYERS) | KEY(LAYER_TYPES),
                          1u << LIN_Q | 1u << LIN_K | 1u << LIN_V, 0, 4096, 0},
    [LLAMA_ARCH_QWEN3] = {"Qwen3ForCausalLM", "qwen3",
                          KEY(ATTENTION_BIAS) | KEY(SLIDING_WINDOW) | KEY(USE_SLIDING_WINDOW) |
                              KEY(MAX_WINDOW_LAYERS) | KEY(LAYER_TYPES),
                          0, 1, 4096, 0},
};
#define N_ARCHS (sizeof archs / sizeof archs[0])

const char *llama_arch_name(llama_arch a)
{
    return (unsigned)a < N_ARCHS ? archs[a].architecture : "?";
}

const char *llama_arch_type(llama_arch a)
{
    return (unsigned)a < N_ARCHS ? archs[a].model_type : "?";
}

/* The integers of config.json that give the shape: key, member, largest value. */
static const struct {
    const char *key;
    size_t offset;
    long max;
} shape_keys[] = {
    {"hidden_size", offsetof(llama_config, dim), 1 << 16},
    {"intermediate_size", offsetof(llama_config, hidden_dim), 1 << 18},
    {"num_hidden_layers", offsetof(llama_config, n_layers), 1024},
    {"num_attention_heads", offsetof(llama_config, n_heads), 1024},
    {"vocab_size", offsetof(llama_config, vocab_size), 1 << 22},
    {"max_position_embeddings", offsetof(llama_config, seq_len), 1 << 20},
};
#define N_SHAPE_KEYS (sizeof shape_keys / sizeof shape_keys[0])

/* Keys every architecture has that this code reads (below) besides the shape. */
static const char *const read_keys[] = {
    "architectures", "model_type", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
    "rope_scaling", "rope_parameters", "hidden_act", "tie_word_embeddings", "attention_dropout",
};

/* Keys that change nothing in the computation: metadata, token ids (the tokenizer's files
 * decide), loading and caching switches. */
static const char *const inert_keys[] = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "initializer_range", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id",
};

static int in_list(const char *key, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(key, list[i]))
            return 1;
    return 0;
}

#define FAIL(...) (snprintf(err, errlen, __VA_ARGS__), -1)

/* The architecture named by `architectures` and `model_type` (either alone will do; both
 * must agree). */
static int find_arch(const json_value *j, const char *path, llama_arch *out, char *err, size_t errlen)
{
    const json_value *a = json_get(j, "architectures"), *t = json_get(j, "model_type");
    int by_a = -1, by_t = -1;
    if (a) {
        if (a->type != JSON_ARRAY || a->count != 1 || a->items[0].type != JSON_STRING)
            return FAIL("%s: 'architectures' must be an array of one name", path);
        for (size_t i = 0; i < N_ARCHS; i++)
            if (!strcmp(a->items[0].string, archs[i].architecture))
                by_a = (int)i;
        if (by_a < 0)
            return FAIL("%s: 'architectures': \"%.80s\" is not one that runs here (LlamaForCausalLM, "
                        "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
                        path, a->items[0].string);
    }
    if (t) {
        for (size_t i = 0; t->type == JSON_STRING && i < N_ARCHS; i++)
            if (!strcmp(t->string, archs[i].model_type))
                by_t = (int)i;
        if (by_t < 0)
            return FAIL("%s: 'model_type' is not one that runs here (llama, mistral, qwen2, qwen3)", path);
    }
    if (by_a < 0 && by_t < 0)
        return FAIL("%s: neither 'architectures' nor 'model_type' says what the model is", path);
    if (by_a >= 0 && by_t >= 0 && by_a != by_t)
        return FAIL("%s: 'model_type' \"%s\" disagrees with 'architectures' [\"%s\"]", path, t->string,
                    a->items[0].string);
    *out = (llama_arch)(by_a >= 0 ? by_a : by_t);
    return 0;
}

static int get_number(const json_value *j, const char *key, double *out)
{
    const json_value *v = json_get(j, key);
    if (!v || v->type != JSON_NUMBER || !isfinite(v->number))
        return -1;
    *out = v->number;
    return 0;
}

/* rope_scaling (or transformers 5's rope_parameters, which also holds rope_theta): its
 * type, from "rope_type" or the older "type", and exactly the keys that type reads. */
static int read_rope(const json_value *r, const char *path, const char *key, llama_config *c, char *err,
                     size_t errlen)
{
    if (!r || r->type == JSON_NULL)
        return 0;
    if (r->type != JSON_OBJECT)
        return FAIL("%s: '%s' must be an object or null", path, key);
    const json_value *type = json_get(r, "rope_type");
    if (!type)
        type = json_get(r, "type");
    if (!type || type->type != JSON_STRING)
        return FAIL("%s: '%s' has no \"rope_type\"", path, key);
    static const char *const type_names[] = {"default", "linear", "llama3"};
    /* the keys each type reads (modeling_rope_utils.py), besides its name */
    static const char *const type_keys[][5] = {
        {NULL},
        {"factor", NULL},
        {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings", NULL},
    };
    int t = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(type->string, type_names[i]))
            t = i;
    if (t < 0)
        return FAIL("%s: '%s': rope_type \"%.40s\" is not implemented here (default, linear and llama3 are)",
                    path, key, type->string);
    for (size_t i = 0; i < r->count; i++) {
        const char *k = r->keys[i];
        int known = !strcmp(k, "rope_type") || !strcmp(k, "type") || !strcmp(k, "rope_theta");
        for (int n = 0; type_keys[t][n]; n++)
            known |= !strcmp(k, type_keys[t][n]);
        if (!known)
            return FAIL("%s: '%s.%s' is not read by rope_type \"%s\" here: refused rather than ignored", path,
                        key, k, type_names[t]);
    }
    c->rope.type = (llama_rope_type)t;
    double v;
    if (json_get(r, "rope_theta")) {
        if (get_number(r, "rope_theta", &v) < 0 || v <= 1)
            return FAIL("%s: '%s.rope_theta' must be a number above 1", path, key);
        c->rope_theta = (float)v;
    }
    if (t == LLAMA_ROPE_DEFAULT)
        return 0;
    if (get_number(r, "factor", &v) < 0 || v < 1)
        return FAIL("%s: '%s.factor' must be a number of at least 1", path, key);
    c->rope.factor = (float)v;
    if (t == LLAMA_ROPE_LINEAR)
        return 0;
    double lo, hi;
    long orig;
    if (get_number(r, "low_freq_factor", &lo) < 0 || get_number(r, "high_freq_factor", &hi) < 0 || lo <= 0 ||
        hi <= lo)
        return FAIL("%s: '%s': low_freq_factor and high_freq_factor must be numbers with 0 < low < high", path,
                    key);
    if (json_get_int(r, "original_max_position_embeddings", 1, 1 << 24, &orig) < 0)
        return FAIL("%s: '%s.original_max_position_embeddings' must be a positive integer", path, key);
    c->rope.low_freq_factor = (float)lo;
    c->rope.high_freq_factor = (float)hi;
    c->rope.original_max_positions = (int)orig;
    return 0;
}

static int get_bool(const json_value *j, const char *key, int *out)
{
    const json_value *v = json_get(j, key);
    if (!v)
        return 0;
    if (v->type != JSON_BOOL)
        return -1;
    *out = v->boolean;
    return 0;
}

/* The sliding window. Mistral's always applies (default 4096, null for none): attention
 * within the window is full attention, so such a model runs exactly on sequences up to
 * the window, and seq_len is cut to it (messages say why). Qwen's applies to the layers
 * that use_sliding_window and max_window_layers choose (or layer_types names), which
 * transformers' versions have read differently: refused when switched on. */
static int read_window(const json_value *j, const struct arch *a, const char *path, llama_config *c, char *err,
                       size_t errlen)
{
    if (!(a->keys & KEY(SLIDING_WINDOW)))
        return 0;
    int on = 0;
    if (get_bool(j, "use_sliding_window", &on) < 0 || on)
        return FAIL("%s: 'use_sliding_window': only false is supported (sliding attention is not implemented)",
                    path);
    const json_value *types = json_get(j, "layer_types");
    if (types) {
        if (types->type != JSON_ARRAY || types->count != (size_t)c->n_layers)
            return FAIL("%s: 'layer_types' must be an array of num_hidden_layers names", path);
        for (size_t i = 0; i < types->count; i++) {
            const json_value *t = &types->items[i];
            if (t->type != JSON_STRING || strcmp(t->string, "full_attention"))
                return FAIL("%s: 'layer_types[%zu]': only \"full_attention\" is supported (sliding attention is "
                            "not implemented)", path, i);
        }
    }
    if (json_get(j, "max_window_layers") && json_get_int(j, "max_window_layers", 0, 1 << 20, &(long){0}) < 0)
        return FAIL("%s: 'max_window_layers' must be a non-negative integer", path);
    const json_value *w = json_get(j, "sliding_window");
    long window = a->default_window;
    if (w && w->type == JSON_NULL)
        window = 0;
    else if (w && json_get_int(j, "sliding_window", 1, 1 << 24, &window) < 0)
        return FAIL("%s: 'sliding_window' must be a positive integer or null", path);
    if (!a->window_always || window == 0 || window >= c->seq_len)
        return 0;
    c->seq_len = (int)window;
    c->sliding_window = (int)window;
    return 0;
}

/* The biases the architecture has (fixed) and the *_bias keys switch on. */
static int read_biases(const json_value *j, const struct arch *a, const char *path, llama_config *c, char *err,
                       size_t errlen)
{
    c->biases = a->fixed_biases;
    static const struct {
        unsigned key, linears;
    } switches[] = {{KEY(ATTENTION_BIAS), ATTENTION_LINEARS}, {KEY(MLP_BIAS), MLP_LINEARS}};
    for (size_t i = 0; i < sizeof switches / sizeof switches[0]; i++) {
        if (!(a->keys & switches[i].key))
            continue;
        const char *key = arch_key_names[__builtin_ctz(switches[i].key)];
        int on = 0;
        if (get_bool(j, key, &on) < 0)
            return FAIL("%s: '%s' must be a boolean", path, key);
        if (on)
            c->biases |= switches[i].linears;
    }
    return 0;
}

/* Keys of one architecture whose only value run here is false. */
static const struct {
    const char *key;
    int arch;
    const char *why;
} false_only[] = {
    /* SmolLM's nanotron leftover, which transformers ignores: it always rotates halves */
    {"rope_interleaved", LLAMA_ARCH_LLAMA, "rotate-half, as transformers runs it"},
    /* Qwen2-VL's multimodal RoPE, which some Qwen2.5 text configs carry switched off */
    {"use_mrope", LLAMA_ARCH_QWEN2, "multimodal RoPE is not implemented"},
};

/* Every key is one this code knows for architecture a, with a value it runs. */
static int check_keys(const json_value *j, const struct arch *a, const char *path, char *err, size_t errlen)
{
    for (size_t i = 0; i < j->count; i++) {
        const char *key = j->keys[i];
        int known = in_list(key, read_keys, sizeof read_keys / sizeof read_keys[0]) ||
                    in_list(key, inert_keys, sizeof inert_keys / sizeof inert_keys[0]);
        for (size_t k = 0; k < N_SHAPE_KEYS; k++)
            known |= !strcmp(key, shape_keys[k].key);
        if (known)
            continue;
        int other = -1;
        for (size_t k = 0; k < sizeof arch_key_names / sizeof arch_key_names[0]; k++)
            if (!strcmp(key, arch_key_names[k]))
                other = (int)k;
        if (other >= 0 && (a->keys >> other & 1))
            continue;
        int fixed = -1;
        for (size_t k = 0; k < sizeof false_only / sizeof false_only[0]; k++)
            if (!strcmp(key, false_only[k].key) && false_only[k].arch == (int)(a - archs))
                fixed = (int)k;
        if (fixed >= 0) {
            const json_value *v = &j->items[i];
            if (v->type == JSON_BOOL && !v->boolean)
                continue;
            return FAIL("%s: '%s': only false is supported (%s)", path, key, false_only[fixed].why);
        }
        if (other >= 0)
            return FAIL("%s: '%s' is not a key of %s: refused rather than ignored", path, key, a->architecture);
        return FAIL("%s: '%s': unknown key: it may change the computation, so it is refused rather than ignored",
                    path, key);
    }
    return 0;
}

int hf_config_read(const json_value *j, const char *path, llama_config *c, int *tied, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (j->type != JSON_OBJECT)
        return FAIL("%s: not a JSON object", path);
    llama_arch arch;
    if (find_arch(j, path, &arch, err, errlen) < 0)
        return -1;
    const struct arch *a = &archs[arch];
    c->arch = arch;
    c->qk_norm = a->qk_norm;
    if (check_keys(j, a, path, err, errlen) < 0)
        return -1;
    for (size_t i = 0; i < N_SHAPE_KEYS; i++) {
        long v;
        if (json_get_int(j, shape_keys[i].key, 1, shape_keys[i].max, &v) < 0)
            return FAIL("%s: '%s' missing or not an integer in 1..%ld", path, shape_keys[i].key, shape_keys[i].max);
        *(int *)((char *)c + shape_keys[i].offset) = (int)v;
    }
    /* Llama's default is the heads; the others' configs always say (their defaults differ) */
    long kv = c->n_heads, hs = 0;
    if ((json_get(j, "num_key_value_heads") || arch != LLAMA_ARCH_LLAMA) &&
        json_get_int(j, "num_key_value_heads", 1, 1024, &kv) < 0)
        return FAIL("%s: 'num_key_value_heads' missing or not an integer in 1..1024", path);
    c->n_kv_heads = (int)kv;
    /* Qwen3Config's default head_dim is 128, the others' hidden_size / heads */
    const json_value *head_dim = json_get(j, "head_dim");
    if (head_dim && head_dim->type == JSON_NULL && arch != LLAMA_ARCH_QWEN3)
        head_dim = NULL;
    if ((head_dim || arch == LLAMA_ARCH_QWEN3) && json_get_int(j, "head_dim", 2, 1 << 16, &hs) < 0)
        return FAIL("%s: 'head_dim' missing or not an integer in 2..65536", path);
    c->head_size = (int)hs;
    double v = 1e-6; /* every one of these config classes' rms_norm_eps */
    if (json_get(j, "rms_norm_eps") && (get_number(j, "rms_norm_eps", &v) < 0 || v <= 0))
        return FAIL("%s: 'rms_norm_eps' must be a positive number", path);
    c->norm_eps = (float)v;
    v = 10000.0;
    if (json_get(j, "rope_theta") && (get_number(j, "rope_theta", &v) < 0 || v <= 1))
        return FAIL("%s: 'rope_theta' must be a number above 1", path);
    c->rope_theta = (float)v;
    if (json_get(j, "rope_scaling") && json_get(j, "rope_parameters"))
        return FAIL("%s: 'rope_scaling' and 'rope_parameters' both given: which one transformers reads "
                    "depends on its version", path);
    if (read_rope(json_get(j, "rope_scaling"), path, "rope_scaling", c, err, errlen) < 0 ||
        read_rope(json_get(j, "rope_parameters"), path, "rope_parameters", c, err, errlen) < 0)
        return -1;
    const json_value *act = json_get(j, "hidden_act");
    if (act && (act->type != JSON_STRING || strcmp(act->string, "silu") != 0))
        return FAIL("%s: 'hidden_act' must be \"silu\" (SwiGLU)", path);
    if (json_get(j, "attention_dropout") && (get_number(j, "attention_dropout", &v) < 0 || v != 0))
        return FAIL("%s: 'attention_dropout': dropout on the attention is not supported (0 only)", path);
    if (json_get(j, "pretraining_tp") && json_get_int(j, "pretraining_tp", 1, 1 << 10, &(long){0}) < 0)
        return FAIL("%s: 'pretraining_tp' must be a positive integer", path);
    /* untied unless the config says so, as every one of these config classes */
    *tied = 0;
    if (get_bool(j, "tie_word_embeddings", tied) < 0)
        return FAIL("%s: 'tie_word_embeddings' must be a boolean", path);
    if (read_biases(j, a, path, c, err, errlen) < 0 || read_window(j, a, path, c, err, errlen) < 0)
        return -1;
    return llama_config_derive(c, path, err, errlen);
}

int llama_config_derive(llama_config *c, const char *where, char *err, size_t errlen)
{
    if (c->dim < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads)
        return FAIL("%s: %d heads and %d kv heads: kv heads must divide the heads", where, c->n_heads,
                    c->n_kv_heads);
    if (!c->head_size) {
        if (c->dim % c->n_heads)
            return FAIL("%s: dim %d does not divide into %d heads", where, c->dim, c->n_heads);
        c->head_size = c->dim / c->n_heads;
    }
    if (c->head_size % 2)
        return FAIL("%s: head size %d is odd: RoPE turns pairs", where, c->head_size);
    if ((long)c->head_size * c->n_heads > 1 << 18)
        return FAIL("%s: %d heads of %d are too wide", where, c->n_heads, c->head_size);
    c->q_dim = c->head_size * c->n_heads;
    c->kv_dim = c->head_size * c->n_kv_heads;
    return 0;
}

int llama_config_widest(const llama_config *c)
{
    int w = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    return w > c->q_dim ? w : c->q_dim;
}
