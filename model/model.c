/* model.c: loading either layout into a quantized llama_model (see model.h). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "llama2c.h"
#include "safetensors.h"

#define LIN_NAMES(e, name, peft, module, rows, cols) {name, peft, module},
static const struct {
    const char *name, *peft, *module;
} linear_names[LIN_COUNT] = {LLAMA_LINEARS(LIN_NAMES)};
#undef LIN_NAMES

const char *llama_linear_name(llama_linear l)
{
    return (unsigned)l < LIN_COUNT ? linear_names[l].name : "?";
}

const char *llama_linear_peft_name(llama_linear l)
{
    return (unsigned)l < LIN_COUNT ? linear_names[l].peft : "?";
}

const char *llama_linear_module(llama_linear l)
{
    return (unsigned)l < LIN_COUNT ? linear_names[l].module : "?";
}

void llama_linear_shape(const llama_config *c, llama_linear l, int *rows, int *cols)
{
    switch (l) {
#define LIN_SHAPE(e, name, peft, module, r, k) case LIN_##e: *rows = c->r, *cols = c->k; break;
        LLAMA_LINEARS(LIN_SHAPE)
#undef LIN_SHAPE
    default: *rows = *cols = 0;
    }
}

/* ---- sources: where fp32 weights come from ---- */

typedef enum { R_EMBED, R_RMS_ATT, R_RMS_FFN, R_LINEAR, R_RMS_FINAL, R_HEAD } role;

#define MAX_SHARDS 64
#define MAX_JSON (64u << 20) /* config.json, the shard index */

typedef struct {
    int hf;
    l2c_file l2c;
    st_file shards[MAX_SHARDS];
    int nshards;
    llama_config cfg;
    int tied;
    char dir[4096];
} source;

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
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

/* What a config.json may hold beyond the shape (shape_keys): keys that change nothing in
 * the computation, and keys whose only value runnable here is the one they have in a
 * plain Llama. Anything else (another architecture, rope_scaling, biases, an unknown key)
 * is refused by name, since running it as a plain Llama would give plausible wrong
 * numbers. */
static int hf_config_exact(const json_value *j, const char *path, int head_size, char *err, size_t errlen)
{
    static const char *const inert[] = {
        /* read by hf_config besides the shape */
        "num_key_value_heads", "rms_norm_eps", "rope_theta", "hidden_act", "tie_word_embeddings",
        /* metadata, token ids (the tokenizer's files decide), loading and caching switches */
        "_name_or_path", "transformers_version", "torch_dtype", "initializer_range", "use_cache", "bos_token_id",
        "eos_token_id", "pad_token_id",
        /* splits the products into slices that sum to the same (transformers' own comment) */
        "pretraining_tp",
    };
    for (size_t i = 0; j->type == JSON_OBJECT && i < j->count; i++) {
        const char *key = j->keys[i];
        const json_value *v = &j->items[i];
        int known = 0;
        for (size_t k = 0; k < sizeof shape_keys / sizeof shape_keys[0]; k++)
            known |= !strcmp(key, shape_keys[k].key);
        for (size_t k = 0; k < sizeof inert / sizeof inert[0]; k++)
            known |= !strcmp(key, inert[k]);
        if (known)
            continue;
        const char *why = NULL;
        if (!strcmp(key, "architectures")) {
            if (v->type != JSON_ARRAY || v->count != 1 || v->items[0].type != JSON_STRING ||
                strcmp(v->items[0].string, "LlamaForCausalLM"))
                why = "only [\"LlamaForCausalLM\"] runs here";
        } else if (!strcmp(key, "model_type")) {
            if (v->type != JSON_STRING || strcmp(v->string, "llama"))
                why = "only \"llama\" runs here";
        } else if (!strcmp(key, "attention_bias") || !strcmp(key, "mlp_bias")) {
            if (v->type != JSON_BOOL || v->boolean)
                why = "biases are not supported (false only)";
        } else if (!strcmp(key, "rope_scaling")) {
            if (v->type != JSON_NULL)
                why = "scaled RoPE is not supported (null only)";
        } else if (!strcmp(key, "attention_dropout")) {
            if (v->type != JSON_NUMBER || v->number != 0)
                why = "dropout on the attention is not supported (0 only)";
        } else if (!strcmp(key, "head_dim")) {
            if (v->type != JSON_NUMBER || v->number != head_size)
                why = "only hidden_size / num_attention_heads is supported";
        } else {
            why = "unknown key: it may change the computation, so it is refused rather than ignored";
        }
        if (why) {
            snprintf(err, errlen, "%s: '%s': %s", path, key, why);
            return -1;
        }
    }
    return 0;
}

static int hf_config(source *s, const json_value *j, const char *path, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof shape_keys / sizeof shape_keys[0]; i++) {
        long v;
        if (json_get_int(j, shape_keys[i].key, 1, shape_keys[i].max, &v) < 0) {
            snprintf(err, errlen, "%s: '%s' missing or not an integer in 1..%ld", path,
                     shape_keys[i].key, shape_keys[i].max);
            return -1;
        }
        *(int *)((char *)&s->cfg + shape_keys[i].offset) = (int)v;
    }
    long kv = s->cfg.n_heads;
    if (json_get(j, "num_key_value_heads") &&
        json_get_int(j, "num_key_value_heads", 1, 1024, &kv) < 0) {
        snprintf(err, errlen, "%s: 'num_key_value_heads' is not an integer in 1..1024", path);
        return -1;
    }
    s->cfg.n_kv_heads = (int)kv;
    const json_value *eps = json_get(j, "rms_norm_eps"), *theta = json_get(j, "rope_theta");
    s->cfg.norm_eps = eps && eps->type == JSON_NUMBER ? (float)eps->number : 1e-5f;
    s->cfg.rope_theta = theta && theta->type == JSON_NUMBER ? (float)theta->number : 10000.0f;
    const json_value *act = json_get(j, "hidden_act");
    if (act && (act->type != JSON_STRING || strcmp(act->string, "silu") != 0)) {
        snprintf(err, errlen, "%s: hidden_act must be \"silu\" (Llama's SwiGLU)", path);
        return -1;
    }
    /* as LlamaConfig: untied unless the config says so */
    const json_value *tie = json_get(j, "tie_word_embeddings");
    s->tied = tie && tie->type == JSON_BOOL && tie->boolean;
    return hf_config_exact(j, path, s->cfg.dim / s->cfg.n_heads, err, errlen);
}

static int open_shards(source *s, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", s->dir);
    if (file_exists(path)) {
        s->nshards = 1;
        return st_open(&s->shards[0], path, err, errlen);
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", s->dir);
    json_value *index = json_parse_file(path, MAX_JSON, err, errlen);
    if (!index)
        return -1;
    const json_value *map = json_get(index, "weight_map");
    if (!map || map->type != JSON_OBJECT) {
        snprintf(err, errlen, "%s: no weight_map object", path);
        json_free(index);
        return -1;
    }
    for (size_t i = 0; i < map->count; i++) {
        const json_value *file = &map->items[i];
        if (file->type != JSON_STRING || strchr(file->string, '/')) {
            snprintf(err, errlen, "%s: weight_map entry '%s' is not a file name", path, map->keys[i]);
            json_free(index);
            return -1;
        }
        int known = 0;
        char shard[4200];
        snprintf(shard, sizeof shard, "%s/%s", s->dir, file->string);
        for (int k = 0; k < s->nshards; k++)
            known |= !strcmp(s->shards[k].path, shard);
        if (known)
            continue;
        if (s->nshards == MAX_SHARDS || st_open(&s->shards[s->nshards], shard, err, errlen) < 0) {
            if (s->nshards == MAX_SHARDS)
                snprintf(err, errlen, "%s: more than %d shards", path, MAX_SHARDS);
            json_free(index);
            return -1;
        }
        s->nshards++;
    }
    json_free(index);
    return 0;
}

static void source_close(source *s)
{
    l2c_close(&s->l2c);
    for (int i = 0; i < s->nshards; i++)
        st_close(&s->shards[i]);
    s->nshards = 0;
}

static int check_config(const llama_config *c, const char *where, char *err, size_t errlen)
{
    if (c->dim % c->n_heads || c->n_heads % c->n_kv_heads || (c->dim / c->n_heads) % 2) {
        snprintf(err, errlen, "%s: dim %d, %d heads and %d kv heads do not divide evenly into "
                              "heads of even size", where, c->dim, c->n_heads, c->n_kv_heads);
        return -1;
    }
    return 0;
}

/* Whether the checkpoint's tensor name is one the loader reads: nothing in it may go
 * unused (a Qwen2 bias, a LoRA left merged in another name) and run as if absent. */
static int tensor_consumed(const source *s, const char *name)
{
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "model.norm.weight"))
        return 1;
    if (!strcmp(name, "lm_head.weight"))
        return !s->tied;
    int layer, used = 0;
    if (sscanf(name, "model.layers.%d.%n", &layer, &used) != 1 || used == 0 || layer < 0 ||
        layer >= s->cfg.n_layers)
        return 0;
    const char *rest = name + used;
    char want[64];
    snprintf(want, sizeof want, "model.layers.%d.", layer);
    if (strncmp(name, want, strlen(want))) /* "model.layers.01." is not layer 1's */
        return 0;
    if (!strcmp(rest, "input_layernorm.weight") || !strcmp(rest, "post_attention_layernorm.weight") ||
        /* a buffer of old checkpoints that transformers ignores on loading and recomputes
         * from rope_theta, as this loader does */
        !strcmp(rest, "self_attn.rotary_emb.inv_freq"))
        return 1;
    for (int k = 0; k < LIN_COUNT; k++) {
        snprintf(want, sizeof want, "%s.weight", llama_linear_module((llama_linear)k));
        if (!strcmp(rest, want))
            return 1;
    }
    return 0;
}

static int check_tensors(const source *s, char *err, size_t errlen)
{
    for (int i = 0; i < s->nshards; i++)
        for (size_t t = 0; t < s->shards[i].count; t++) {
            const char *name = s->shards[i].tensors[t].name;
            if (!tensor_consumed(s, name)) {
                snprintf(err, errlen, "%s: tensor '%s' is not part of a Llama model of this config%s",
                         s->shards[i].path, name,
                         !strcmp(name, "lm_head.weight") ? " (tie_word_embeddings is true)" : "");
                return -1;
            }
        }
    return 0;
}

static int source_open(source *s, const char *dir, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.bin", dir);
    if (file_exists(path)) {
        if (l2c_open(&s->l2c, path, err, errlen) < 0)
            return -1;
        const l2c_config *c = &s->l2c.cfg;
        s->cfg = (llama_config){c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                                c->vocab_size, c->seq_len, 0, 0, 1e-5f, 10000.0f};
        s->tied = c->shared_classifier;
    } else {
        snprintf(path, sizeof path, "%s/config.json", dir);
        if (!file_exists(path)) {
            snprintf(err, errlen, "%s: neither model.bin (llama2.c) nor config.json (Hugging Face)",
                     dir);
            return -1;
        }
        s->hf = 1;
        json_value *j = json_parse_file(path, MAX_JSON, err, errlen);
        if (!j)
            return -1;
        int rc = hf_config(s, j, path, err, errlen);
        json_free(j);
        if (rc < 0 || open_shards(s, err, errlen) < 0) {
            source_close(s);
            return -1;
        }
        if (check_tensors(s, err, errlen) < 0) {
            source_close(s);
            return -1;
        }
    }
    s->cfg.head_size = s->cfg.dim / s->cfg.n_heads;
    s->cfg.kv_dim = s->cfg.head_size * s->cfg.n_kv_heads;
    if (check_config(&s->cfg, s->hf ? "config.json" : path, err, errlen) < 0) {
        source_close(s);
        return -1;
    }
    return 0;
}

/* fp32 values of one tensor, in llama2.c order, into out[n]. */
static int source_read(const source *s, role r, int layer, llama_linear lin, float *out,
                       size_t rows, size_t cols, char *err, size_t errlen)
{
    const llama_config *c = &s->cfg;
    size_t n = rows * cols;
    if (!s->hf) {
        const l2c_file *f = &s->l2c;
        const float *base = NULL;
        switch (r) {
        case R_EMBED: base = f->token_embedding; break;
        case R_RMS_ATT: base = f->rms_att + (size_t)layer * c->dim; break;
        case R_RMS_FFN: base = f->rms_ffn + (size_t)layer * c->dim; break;
        case R_RMS_FINAL: base = f->rms_final; break;
        case R_HEAD: base = f->wcls; break;
        case R_LINEAR: {
            const float *w[LIN_COUNT] = {f->wq, f->wk, f->wv, f->wo, f->w1, f->w3, f->w2};
            base = w[lin] + (size_t)layer * n;
            break;
        }
        }
        memcpy(out, base, n * sizeof(float));
        return 0;
    }
    char name[256];
    switch (r) {
    case R_EMBED: snprintf(name, sizeof name, "model.embed_tokens.weight"); break;
    case R_RMS_ATT: snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", layer); break;
    case R_RMS_FFN:
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", layer);
        break;
    case R_RMS_FINAL: snprintf(name, sizeof name, "model.norm.weight"); break;
    case R_HEAD: snprintf(name, sizeof name, "lm_head.weight"); break;
    case R_LINEAR: snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, llama_linear_module(lin)); break;
    }
    const st_tensor *t = NULL;
    const st_file *file = NULL;
    for (int i = 0; i < s->nshards && !t; i++)
        if ((t = st_find(&s->shards[i], name)))
            file = &s->shards[i];
    if (!t) {
        snprintf(err, errlen, "%s: tensor '%s' is missing", s->dir, name);
        return -1;
    }
    int is_vector = r == R_RMS_ATT || r == R_RMS_FFN || r == R_RMS_FINAL;
    int shape_ok = is_vector ? t->ndim == 1 && (size_t)t->shape[0] == n
                             : t->ndim == 2 && (size_t)t->shape[0] == rows && (size_t)t->shape[1] == cols;
    if (!shape_ok) {
        snprintf(err, errlen, "%s: tensor '%s' has shape [%lld%s%lld], expected [%zu, %zu]", file->path,
                 name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                 t->ndim > 1 ? (long long)t->shape[1] : 0LL, rows, cols);
        return -1;
    }
    if (r == R_LINEAR && (lin == LIN_Q || lin == LIN_K)) {
        /* rotate-half rows (h, j * hs/2 + i) -> interleaved rows (h, 2i + j) */
        float *tmp = malloc(n * sizeof(float));
        if (!tmp) {
            snprintf(err, errlen, "out of memory reading '%s'", name);
            return -1;
        }
        st_to_f32(t, tmp);
        size_t hs = (size_t)c->head_size, heads = rows / hs;
        for (size_t h = 0; h < heads; h++)
            for (size_t i = 0; i < hs / 2; i++)
                for (size_t j = 0; j < 2; j++)
                    memcpy(out + (h * hs + 2 * i + j) * cols, tmp + (h * hs + j * hs / 2 + i) * cols,
                           cols * sizeof(float));
        free(tmp);
    } else {
        st_to_f32(t, out);
    }
    return 0;
}

/* ---- model ---- */

static uint64_t hash_floats(uint64_t h, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        h = (h ^ b) * 0x100000001b3ull;
    }
    return h;
}

static int finite_all(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/* Reads a small fp32 tensor into a fresh allocation. */
static float *read_vector(const source *s, role r, int layer, size_t n, char *err, size_t errlen,
                          uint64_t *h)
{
    float *v = malloc(n * sizeof(float));
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (source_read(s, r, layer, 0, v, 1, n, err, errlen) < 0) {
        free(v);
        return NULL;
    }
    *h = hash_floats(*h, v, n);
    return v;
}

static int read_matrix(const source *s, role r, int layer, llama_linear lin, qt_spec spec,
                       qt_matrix *out, size_t rows, size_t cols, float *buf, char *err,
                       size_t errlen, uint64_t *h)
{
    if (source_read(s, r, layer, lin, buf, rows, cols, err, errlen) < 0)
        return -1;
    *h = hash_floats(*h, buf, rows * cols);
    char qerr[256];
    if (qt_quantize(out, buf, (int)rows, (int)cols, spec, qerr, sizeof qerr) < 0) {
        snprintf(err, errlen, "%s: layer %d %s: %s", s->dir, layer,
                 r == R_LINEAR ? llama_linear_name(lin) : r == R_EMBED ? "embedding" : "head", qerr);
        return -1;
    }
    return 0;
}

size_t llama_n_params(const llama_config *c, int tied, size_t *quantized)
{
    size_t per_layer = 0;
    for (int l = 0; l < LIN_COUNT; l++) {
        int r, k;
        llama_linear_shape(c, (llama_linear)l, &r, &k);
        per_layer += (size_t)r * k;
    }
    if (quantized)
        *quantized = per_layer * c->n_layers;
    size_t emb = (size_t)c->vocab_size * c->dim;
    return per_layer * c->n_layers + (size_t)c->n_layers * 2 * c->dim + c->dim + emb + (tied ? 0 : emb);
}

size_t llama_weight_bytes(const llama_model *m)
{
    const llama_config *c = &m->cfg;
    size_t bytes = qt_bytes(&m->embed) + (m->tied ? 0 : qt_bytes(&m->head)) +
                   ((size_t)c->n_layers * 2 + 1) * c->dim * sizeof(float);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++)
            bytes += qt_bytes(&m->layers[l].lin[k]);
    return bytes;
}

static int build_rope(llama_model *m)
{
    const llama_config *c = &m->cfg;
    int half = c->head_size / 2;
    m->rope_cos = malloc((size_t)c->seq_len * half * sizeof(float));
    m->rope_sin = malloc((size_t)c->seq_len * half * sizeof(float));
    if (!m->rope_cos || !m->rope_sin)
        return -1;
    /* llama2.c's formula in float, so that both give the same rotations */
    for (int pos = 0; pos < c->seq_len; pos++)
        for (int i = 0; i < half; i++) {
            float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_size);
            float val = (float)pos * freq;
            m->rope_cos[(size_t)pos * half + i] = cosf(val);
            m->rope_sin[(size_t)pos * half + i] = sinf(val);
        }
    return 0;
}

int llama_load(llama_model *m, const char *dir, qt_spec spec, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (qt_spec_check(spec, err, errlen) < 0)
        return -1;
    source s;
    if (source_open(&s, dir, err, errlen) < 0)
        return -1;
    m->cfg = s.cfg;
    m->spec = spec;
    m->tied = s.tied;
    m->hf_layout = s.hf;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    const llama_config *c = &m->cfg;
    size_t biggest = (size_t)c->vocab_size * c->dim;
    for (int l = 0; l < LIN_COUNT; l++) {
        int r, k;
        llama_linear_shape(c, (llama_linear)l, &r, &k);
        if ((size_t)r * k > biggest)
            biggest = (size_t)r * k;
    }
    float *buf = malloc(biggest * sizeof(float));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    uint64_t h = 0xcbf29ce484222325ull;
    qt_spec f32 = qt_spec_default(QT_F32);
    int rc = -1;
    if (!buf || !m->layers || build_rope(m) < 0) {
        snprintf(err, errlen, "out of memory loading %s", dir);
        goto done;
    }
    if (read_matrix(&s, R_EMBED, 0, 0, f32, &m->embed, c->vocab_size, c->dim, buf, err, errlen, &h) < 0)
        goto done;
    for (int l = 0; l < c->n_layers; l++) {
        llama_layer *L = &m->layers[l];
        if (!(L->rms_att = read_vector(&s, R_RMS_ATT, l, c->dim, err, errlen, &h)) ||
            !(L->rms_ffn = read_vector(&s, R_RMS_FFN, l, c->dim, err, errlen, &h)))
            goto done;
        for (int k = 0; k < LIN_COUNT; k++) {
            int rows, cols;
            llama_linear_shape(c, (llama_linear)k, &rows, &cols);
            if (read_matrix(&s, R_LINEAR, l, (llama_linear)k, spec, &L->lin[k], rows, cols, buf,
                            err, errlen, &h) < 0)
                goto done;
        }
    }
    if (!(m->rms_final = read_vector(&s, R_RMS_FINAL, 0, c->dim, err, errlen, &h)))
        goto done;
    if (!m->tied &&
        read_matrix(&s, R_HEAD, 0, 0, f32, &m->head, c->vocab_size, c->dim, buf, err, errlen, &h) < 0)
        goto done;
    for (int l = 0; l < c->n_layers; l++)
        if (!finite_all(m->layers[l].rms_att, c->dim) || !finite_all(m->layers[l].rms_ffn, c->dim)) {
            snprintf(err, errlen, "%s: layer %d: non-finite norm weight", dir, l);
            goto done;
        }
    uint32_t tag[3] = {(uint32_t)spec.format, (uint32_t)spec.block, (uint32_t)spec.double_quant};
    for (int i = 0; i < 3; i++)
        h = (h ^ tag[i]) * 0x100000001b3ull;
    m->fingerprint = h;
    rc = 0;
done:
    free(buf);
    source_close(&s);
    if (rc < 0)
        llama_free(m);
    return rc;
}

void llama_free(llama_model *m)
{
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layers; l++) {
            for (int k = 0; k < LIN_COUNT; k++)
                qt_free(&m->layers[l].lin[k]);
            free(m->layers[l].rms_att);
            free(m->layers[l].rms_ffn);
        }
    free(m->layers);
    qt_free(&m->embed);
    qt_free(&m->head);
    free(m->rms_final);
    free(m->rope_cos);
    free(m->rope_sin);
    memset(m, 0, sizeof *m);
}

int llama_visit_linears(const char *dir, void *ctx, llama_weight_fn fn, char *err, size_t errlen)
{
    source s;
    if (source_open(&s, dir, err, errlen) < 0)
        return -1;
    size_t biggest = 0;
    for (int l = 0; l < LIN_COUNT; l++) {
        int r, k;
        llama_linear_shape(&s.cfg, (llama_linear)l, &r, &k);
        if ((size_t)r * k > biggest)
            biggest = (size_t)r * k;
    }
    float *buf = malloc(biggest * sizeof(float));
    int rc = buf ? 0 : -1;
    if (!buf)
        snprintf(err, errlen, "out of memory");
    for (int l = 0; l < s.cfg.n_layers && rc == 0; l++)
        for (int k = 0; k < LIN_COUNT && rc == 0; k++) {
            int rows, cols;
            llama_linear_shape(&s.cfg, (llama_linear)k, &rows, &cols);
            rc = source_read(&s, R_LINEAR, l, (llama_linear)k, buf, rows, cols, err, errlen);
            if (rc == 0 && (rc = fn(ctx, l, (llama_linear)k, buf, rows, cols)) < 0)
                snprintf(err, errlen, "layer %d %s: visit failed", l, llama_linear_name(k));
        }
    free(buf);
    source_close(&s);
    return rc;
}

double llama_linear_bits(const llama_model *m)
{
    size_t quantized, bytes = 0;
    llama_n_params(&m->cfg, m->tied, &quantized);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++)
            bytes += qt_bytes(&m->layers[l].lin[k]);
    return 8.0 * (double)bytes / (double)quantized;
}
