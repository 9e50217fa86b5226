/* model.c: loading either layout into a quantized llama_model (see model.h). */
#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "json.h"
#include "llama2c.h"
#include "mapfile.h"
#include "model_cache.h"
#include "model_config.h"
#include "safetensors.h"

#define LIN_NAMES(e, name, peft, module, gguf, rows, cols) {name, peft, module, gguf},
static const struct {
    const char *name, *peft, *module, *gguf;
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

const char *llama_linear_gguf(llama_linear l)
{
    return (unsigned)l < LIN_COUNT ? linear_names[l].gguf : "?";
}

void llama_linear_shape(const llama_config *c, llama_linear l, int *rows, int *cols)
{
    switch (l) {
#define LIN_SHAPE(e, name, peft, module, gguf, r, k) case LIN_##e: *rows = c->r, *cols = c->k; break;
        LLAMA_LINEARS(LIN_SHAPE)
#undef LIN_SHAPE
    default: *rows = *cols = 0;
    }
}

/* ---- sources: where fp32 weights come from ---- */

typedef enum { R_EMBED, R_RMS_ATT, R_RMS_FFN, R_LINEAR, R_BIAS, R_Q_NORM, R_K_NORM, R_RMS_FINAL, R_HEAD, R_ROPE } role;

#define MAX_SHARDS 64
#define MAX_JSON (64u << 20) /* config.json, the shard index */

typedef struct {
    int hf;
    int gguf;         /* a GGUF file (gg) */
    int rotate_half;  /* q/k rows per head in rotate-half order: HF's, GGUF's of NEOX RoPE */
    gguf_file gg;
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
    if (s->gguf)
        gguf_close(&s->gg);
    s->gguf = 0;
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
    if (s->cfg.qk_norm && (!strcmp(rest, "self_attn.q_norm.weight") || !strcmp(rest, "self_attn.k_norm.weight")))
        return 1;
    for (int k = 0; k < LIN_COUNT; k++) {
        snprintf(want, sizeof want, "%s.weight", llama_linear_module((llama_linear)k));
        if (!strcmp(rest, want))
            return 1;
        snprintf(want, sizeof want, "%s.bias", llama_linear_module((llama_linear)k));
        if (!strcmp(rest, want) && (s->cfg.biases >> k & 1))
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
                snprintf(err, errlen, "%s: tensor '%s' is not part of a %s of this config%s",
                         s->shards[i].path, name, llama_arch_name(s->cfg.arch),
                         !strcmp(name, "lm_head.weight") ? " (tie_word_embeddings is true)" : "");
                return -1;
            }
        }
    return 0;
}

/* The name of each role's tensor: in Hugging Face's files and in GGUF's (llama.cpp's
 * LLM_TENSOR_NAMES), as formats of the layer and the linear's module (in that order). */
static const struct {
    const char *hf, *gguf;
} role_names[] = {
    [R_EMBED] = {"model.embed_tokens.weight", "token_embd.weight"},
    [R_RMS_ATT] = {"model.layers.%d.input_layernorm.weight", "blk.%d.attn_norm.weight"},
    [R_RMS_FFN] = {"model.layers.%d.post_attention_layernorm.weight", "blk.%d.ffn_norm.weight"},
    [R_LINEAR] = {"model.layers.%d.%s.weight", "blk.%d.%s.weight"},
    [R_BIAS] = {"model.layers.%d.%s.bias", "blk.%d.%s.bias"},
    [R_Q_NORM] = {"model.layers.%d.self_attn.q_norm.weight", "blk.%d.attn_q_norm.weight"},
    [R_K_NORM] = {"model.layers.%d.self_attn.k_norm.weight", "blk.%d.attn_k_norm.weight"},
    [R_RMS_FINAL] = {"model.norm.weight", "output_norm.weight"},
    [R_HEAD] = {"lm_head.weight", "output.weight"},
    [R_ROPE] = {"(none)", "rope_freqs.weight"}, /* HF files compute Llama 3's from the config */
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#pragma GCC diagnostic ignored "-Wformat-extra-args"
static void role_name(char *name, size_t n, int gguf, role r, int layer, llama_linear lin)
{
    const char *fmt = gguf ? role_names[r].gguf : role_names[r].hf;
    snprintf(name, n, fmt, layer, gguf ? llama_linear_gguf(lin) : llama_linear_module(lin));
}
#pragma GCC diagnostic pop

static void gguf_name(char *name, size_t n, role r, int layer, llama_linear lin)
{
    role_name(name, n, 1, r, layer, lin);
}

/* The biases llama.cpp loads when present (create_tensor_qkv's q, k, v for all three;
 * Llama's o, gate, up, down besides). */
static unsigned gguf_bias_allowed(llama_arch a)
{
    unsigned qkv = 1u << LIN_Q | 1u << LIN_K | 1u << LIN_V;
    return a == LLAMA_ARCH_LLAMA ? (1u << LIN_COUNT) - 1 : qkv;
}

/* Whether tensor name is one the loader reads (every tensor of the file must be). */
static int gguf_consumed(const source *s, const char *name)
{
    static const role once[] = {R_EMBED, R_RMS_FINAL, R_HEAD, R_ROPE};
    static const role per_layer[] = {R_RMS_ATT, R_RMS_FFN, R_Q_NORM, R_K_NORM};
    char want[96];
    for (size_t i = 0; i < sizeof once / sizeof once[0]; i++) {
        gguf_name(want, sizeof want, once[i], 0, 0);
        if (!strcmp(name, want))
            return (once[i] != R_HEAD || !s->tied) && (once[i] != R_ROPE || s->cfg.rope.type == LLAMA_ROPE_FACTORS);
    }
    int layer, used = 0;
    if (sscanf(name, "blk.%d.%n", &layer, &used) != 1 || used == 0 || layer < 0 || layer >= s->cfg.n_layers)
        return 0;
    for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++) {
        gguf_name(want, sizeof want, per_layer[i], layer, 0);
        if (!strcmp(name, want))
            return per_layer[i] == R_RMS_ATT || per_layer[i] == R_RMS_FFN || s->cfg.qk_norm;
    }
    for (int k = 0; k < LIN_COUNT; k++) {
        gguf_name(want, sizeof want, R_LINEAR, layer, (llama_linear)k);
        if (!strcmp(name, want))
            return 1;
        gguf_name(want, sizeof want, R_BIAS, layer, (llama_linear)k);
        if (!strcmp(name, want))
            return s->cfg.biases >> k & 1;
    }
    return 0;
}

/* A GGUF file: its config, the biases and head its tensors have, every tensor read. */
static int gguf_source_open(source *s, const char *path, char *err, size_t errlen)
{
    if (gguf_open(&s->gg, path, err, errlen) < 0)
        return -1;
    s->gguf = 1;
    int interleaved;
    if (gguf_config_read(&s->gg, &s->cfg, &interleaved, err, errlen) < 0)
        return -1;
    s->rotate_half = !interleaved;
    const gguf_tensor *emb = gguf_find_tensor(&s->gg, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != (uint64_t)s->cfg.dim || emb->ne[1] < 1 || emb->ne[1] > 1 << 22)
        return snprintf(err, errlen, "%s: tensor 'token_embd.weight' %s (expected [%d, vocab])", path,
                        emb ? "has the wrong shape" : "is missing", s->cfg.dim), -1;
    if (!s->cfg.vocab_size)
        s->cfg.vocab_size = (int)emb->ne[1];
    if ((uint64_t)s->cfg.vocab_size != emb->ne[1])
        return snprintf(err, errlen, "%s: tensor 'token_embd.weight' has %llu rows but %s.vocab_size is %d", path,
                        (unsigned long long)emb->ne[1], llama_arch_type(s->cfg.arch), s->cfg.vocab_size), -1;
    s->tied = !gguf_find_tensor(&s->gg, "output.weight");
    if (gguf_find_tensor(&s->gg, "rope_freqs.weight")) {
        if (s->cfg.rope.type != LLAMA_ROPE_DEFAULT)
            return snprintf(err, errlen, "%s: tensor 'rope_freqs.weight' with a linear rope scaling as well: not "
                            "implemented", path), -1;
        s->cfg.rope.type = LLAMA_ROPE_FACTORS;
    }
    /* a bias is the model's when layer 0 has it; source_read then wants it in every layer */
    char name[96];
    for (int k = 0; k < LIN_COUNT; k++) {
        gguf_name(name, sizeof name, R_BIAS, 0, (llama_linear)k);
        if (gguf_find_tensor(&s->gg, name) && (gguf_bias_allowed(s->cfg.arch) >> k & 1))
            s->cfg.biases |= 1u << k;
    }
    for (size_t i = 0; i < s->gg.n_tensors; i++) {
        const gguf_tensor *t = &s->gg.tensors[i];
        if (!gguf_consumed(s, t->name))
            return snprintf(err, errlen, "%s: at byte %zu: tensor '%s' is not part of a %s model as this loader "
                            "runs it%s", path, t->info_offset, t->name, llama_arch_type(s->cfg.arch),
                            ""), -1;
    }
    return 0;
}

static int source_open(source *s, const char *dir, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    if (file_exists(dir)) { /* a file, not a directory: GGUF is the one format of one file */
        if (gguf_source_open(s, dir, err, errlen) < 0) {
            source_close(s);
            return -1;
        }
        return 0;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.bin", dir);
    if (file_exists(path)) {
        if (l2c_open(&s->l2c, path, err, errlen) < 0)
            return -1;
        const l2c_config *c = &s->l2c.cfg;
        s->cfg = (llama_config){.dim = c->dim, .hidden_dim = c->hidden_dim, .n_layers = c->n_layers,
                                .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .vocab_size = c->vocab_size,
                                .seq_len = c->seq_len, .norm_eps = 1e-5f, .rope_theta = 10000.0f};
        s->tied = c->shared_classifier;
        if (llama_config_derive(&s->cfg, path, err, errlen) < 0) {
            source_close(s);
            return -1;
        }
    } else {
        snprintf(path, sizeof path, "%s/config.json", dir);
        if (!file_exists(path)) {
            snprintf(err, errlen, "%s: neither model.bin (llama2.c) nor config.json (Hugging Face)",
                     dir);
            return -1;
        }
        s->hf = 1;
        s->rotate_half = 1;
        json_value *j = json_parse_file(path, MAX_JSON, err, errlen);
        if (!j)
            return -1;
        int rc = hf_config_read(j, path, &s->cfg, &s->tied, err, errlen);
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
    return 0;
}

/* Whether (r, lin) is indexed by the rows of q_proj or k_proj, in rotate-half order per
 * head in Hugging Face's files: their weights and biases, and the per-head q/k norms. */
static int rotate_half_rows(role r, llama_linear lin)
{
    return ((r == R_LINEAR || r == R_BIAS) && (lin == LIN_Q || lin == LIN_K)) || r == R_Q_NORM || r == R_K_NORM;
}

/* The name of (r, layer, lin) in s's files (llama2.c's have none: the HF name stands in). */
static void tensor_name(const source *s, char *name, size_t n, role r, int layer, llama_linear lin)
{
    role_name(name, n, s->gguf, r, layer, lin);
}

/* A llama2.c tensor into out[n]. */
static int l2c_read(const source *s, role r, int layer, llama_linear lin, float *out, size_t n, char *err,
                    size_t errlen)
{
    const llama_config *c = &s->cfg;
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
    case R_BIAS: case R_Q_NORM: case R_K_NORM: case R_ROPE: break; /* a llama2.c config has none */
    }
    if (!base) {
        snprintf(err, errlen, "%s: llama2.c files hold no such tensor", s->dir);
        return -1;
    }
    memcpy(out, base, n * sizeof(float));
    return 0;
}

/* Whether a tensor of ndim dims shape[] (outermost first) is what role r wants: a vector of
 * rows x cols values (a norm, a bias), or a rows x cols matrix. Else a message. */
static int check_shape(const source *s, const char *file, const char *name, int is_vector, int ndim,
                       const int64_t *shape, size_t rows, size_t cols, char *err, size_t errlen)
{
    size_t n = rows * cols;
    int shape_ok = is_vector ? ndim == 1 && (size_t)shape[0] == n
                             : ndim == 2 && (size_t)shape[0] == rows && (size_t)shape[1] == cols;
    if (shape_ok)
        return 0;
    /* GGUF's dims are innermost first; messages give them as the file does */
    int64_t a = s->gguf && ndim > 1 ? shape[1] : shape[0], b = s->gguf && ndim > 1 ? shape[0] : shape[1];
    size_t want_a = s->gguf ? cols : rows, want_b = s->gguf ? rows : cols;
    if (is_vector)
        snprintf(err, errlen, "%s: tensor '%s' has shape [%lld%s], expected [%zu]", file, name, (long long)shape[0],
                 ndim > 1 ? ", ..." : "", n);
    else
        snprintf(err, errlen, "%s: tensor '%s' has shape [%lld%s%lld], expected [%zu, %zu]", file, name,
                 (long long)a, ndim > 1 ? ", " : "", ndim > 1 ? (long long)b : 0LL, want_a, want_b);
    return -1;
}

/* A safetensors tensor into out[rows x cols], in the file's row order. */
static int st_read(const source *s, const char *name, int is_vector, float *out, size_t rows, size_t cols,
                   char *err, size_t errlen)
{
    const st_tensor *t = NULL;
    const st_file *file = NULL;
    for (int i = 0; i < s->nshards && !t; i++)
        if ((t = st_find(&s->shards[i], name)))
            file = &s->shards[i];
    if (!t) {
        snprintf(err, errlen, "%s: tensor '%s' is missing (a %s of this config has it)", s->dir, name,
                 llama_arch_name(s->cfg.arch));
        return -1;
    }
    if (check_shape(s, file->path, name, is_vector, t->ndim, t->shape, rows, cols, err, errlen) < 0)
        return -1;
    st_to_f32(t, out);
    st_release(file, t);
    return 0;
}

/* The GGUF tensor name of role r (which must be there, of the shape r wants); NULL with a
 * message otherwise. */
static const gguf_tensor *gguf_tensor_of(const source *s, const char *name, int is_vector, size_t rows,
                                         size_t cols, char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(&s->gg, name);
    if (!t) {
        snprintf(err, errlen, "%s: tensor '%s' is missing (a %s model of this config has it)", s->dir, name,
                 llama_arch_type(s->cfg.arch));
        return NULL;
    }
    int64_t shape[GGUF_MAX_DIMS] = {0};
    for (int d = 0; d < t->n_dims; d++) /* outermost first, as check_shape wants */
        shape[d] = (int64_t)t->ne[t->n_dims - 1 - d];
    if (check_shape(s, s->dir, name, is_vector, t->n_dims, shape, rows, cols, err, errlen) < 0)
        return NULL;
    return t;
}

/* A GGUF tensor as a matrix of quant's format for its ggml type, over the mapping
 * (borrow) or copied; -1 with a message naming the tensor and its type. */
static int gguf_matrix(const source *s, const gguf_tensor *t, qt_matrix *m, int borrow, char *err, size_t errlen)
{
    char qerr[256];
    int cols = (int)t->ne[0], rows = (int)(t->nelem / t->ne[0]);
    if (qt_from_ggml(m, (int)t->type, rows, cols, t->data, t->nbytes, borrow, qerr, sizeof qerr) < 0) {
        snprintf(err, errlen, "%s: at byte %zu: tensor '%s' of type %s: %s", s->dir, t->info_offset, t->name,
                 gguf_ggml_type_name(t->type), qerr);
        return -1;
    }
    return 0;
}

/* A GGUF tensor into out[rows x cols] fp32, in the file's row order: f32 copied, every
 * other type quant runs (f16, bf16, ggml's blocks) decoded as ggml decodes it. */
static int gguf_read(const source *s, const char *name, int is_vector, float *out, size_t rows, size_t cols,
                     char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_tensor_of(s, name, is_vector, rows, cols, err, errlen);
    qt_matrix m;
    if (!t)
        return -1;
    if (t->type == GGUF_GGML_F32) {
        memcpy(out, t->data, t->nbytes);
    } else {
        if (gguf_matrix(s, t, &m, 1, err, errlen) < 0)
            return -1;
        qt_dequantize_rows(&m, 0, m.rows, out);
        qt_free(&m);
    }
    map_release(t->data, t->nbytes);
    return 0;
}

/* Rotate-half rows (h, j * hs/2 + i) -> interleaved rows (h, 2i + j), n_rows rows of
 * row_bytes each from src to dst. */
static void unrotate_rows(void *dst, const void *src, size_t n_rows, size_t row_bytes, size_t hs)
{
    for (size_t h = 0; h < n_rows / hs; h++)
        for (size_t i = 0; i < hs / 2; i++)
            for (size_t j = 0; j < 2; j++)
                memcpy((char *)dst + (h * hs + 2 * i + j) * row_bytes,
                       (const char *)src + (h * hs + j * hs / 2 + i) * row_bytes, row_bytes);
}

/* fp32 values of one tensor, in llama2.c order, into out[rows x cols] (a vector: rows 1,
 * except a bias, which has a row per output). */
static int source_read(const source *s, role r, int layer, llama_linear lin, float *out,
                       size_t rows, size_t cols, char *err, size_t errlen)
{
    size_t n = rows * cols;
    if (!s->hf && !s->gguf)
        return l2c_read(s, r, layer, lin, out, n, err, errlen);
    char name[256];
    tensor_name(s, name, sizeof name, r, layer, lin);
    int is_vector = r != R_EMBED && r != R_LINEAR && r != R_HEAD;
    int permute = s->rotate_half && rotate_half_rows(r, lin);
    float *tmp = permute ? malloc(n * sizeof(float)) : out;
    if (!tmp) {
        snprintf(err, errlen, "out of memory reading '%s'", name);
        return -1;
    }
    int rc = s->gguf ? gguf_read(s, name, is_vector, tmp, rows, cols, err, errlen)
                     : st_read(s, name, is_vector, tmp, rows, cols, err, errlen);
    if (rc == 0 && permute) { /* a norm is one head's worth of single-float rows */
        size_t width = r == R_LINEAR ? cols : 1;
        unrotate_rows(out, tmp, n / width, width * sizeof(float), (size_t)s->cfg.head_size);
    }
    if (permute)
        free(tmp);
    return rc;
}

/* ---- model ---- */

int llama_quant_parse(const char *name, qt_format *f)
{
    if (!strcmp(name, "native")) {
        *f = LLAMA_QUANT_NATIVE;
        return 0;
    }
    return qt_format_parse(name, f);
}

qt_spec llama_quant_spec(qt_format f)
{
    return f == LLAMA_QUANT_NATIVE ? (qt_spec){LLAMA_QUANT_NATIVE, 0, 0} : qt_spec_default(f);
}

const char *llama_quant_name(const llama_model *m)
{
    return m->spec.format == LLAMA_QUANT_NATIVE ? "native" : qt_format_name(m->spec.format);
}

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

/* Reads a small fp32 tensor (a norm, a bias) into a fresh allocation; it must be finite. */
static float *read_vector(const source *s, role r, int layer, llama_linear lin, size_t n, char *err, size_t errlen,
                          uint64_t *h)
{
    float *v = malloc(n * sizeof(float));
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (source_read(s, r, layer, lin, v, 1, n, err, errlen) < 0) {
        free(v);
        return NULL;
    }
    if (!finite_all(v, n)) {
        char name[256];
        tensor_name(s, name, sizeof name, r, layer, lin);
        snprintf(err, errlen, "%s: tensor '%s' holds a value that is not finite", s->dir, name);
        free(v);
        return NULL;
    }
    *h = hash_floats(*h, v, n);
    return v;
}

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((const uint8_t *)p)[i]) * 0x100000001b3ull;
    return h;
}

/* A linear of a GGUF file in its file's type (--quant native): borrowed from the mapping,
 * or copied where its rows are permuted (q/k of NEOX-RoPE files). The fingerprint hashes
 * its bytes as the file has them. */
static int read_native(const source *s, int layer, llama_linear lin, qt_matrix *out, size_t rows, size_t cols,
                       char *err, size_t errlen, uint64_t *h)
{
    char name[96];
    tensor_name(s, name, sizeof name, R_LINEAR, layer, lin);
    const gguf_tensor *t = gguf_tensor_of(s, name, 0, rows, cols, err, errlen);
    int permute = s->rotate_half && rotate_half_rows(R_LINEAR, lin);
    if (!t || gguf_matrix(s, t, out, !permute, err, errlen) < 0)
        return -1;
    *h = hash_bytes(*h, t->data, t->nbytes);
    if (permute)
        unrotate_rows(out->data, t->data, rows, out->row_bytes, (size_t)s->cfg.head_size);
    return 0;
}

static int read_matrix(const source *s, role r, int layer, llama_linear lin, qt_spec spec,
                       qt_matrix *out, size_t rows, size_t cols, float *buf, char *err,
                       size_t errlen, uint64_t *h)
{
    if (spec.format == LLAMA_QUANT_NATIVE)
        return read_native(s, layer, lin, out, rows, cols, err, errlen, h);
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

/* The fp32 vectors of a layer besides its two norms: biases and q/k norms. */
static size_t layer_extras(const llama_config *c)
{
    size_t n = c->qk_norm ? 2 * (size_t)c->head_size : 0;
    for (int l = 0; l < LIN_COUNT; l++)
        if (c->biases >> l & 1) {
            int r, k;
            llama_linear_shape(c, (llama_linear)l, &r, &k);
            n += (size_t)r;
        }
    return n;
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
    return per_layer * c->n_layers + (size_t)c->n_layers * (2 * c->dim + layer_extras(c)) + c->dim + emb +
           (tied ? 0 : emb);
}

size_t llama_weight_bytes(const llama_model *m)
{
    const llama_config *c = &m->cfg;
    size_t bytes = qt_bytes(&m->embed) + (m->tied ? 0 : qt_bytes(&m->head)) +
                   ((size_t)c->n_layers * (2 * c->dim + layer_extras(c)) + c->dim) * sizeof(float);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++)
            bytes += qt_bytes(&m->layers[l].lin[k]);
    return bytes;
}

/* Frequency i of head_size / 2, as transformers computes it in float32: the default
 * (_compute_default_rope_parameters, which is also llama2.c's formula in float), then
 * rescaled by rope_scaling (_compute_linear_scaling_rope_parameters,
 * _compute_llama3_parameters: their attention factor is 1). */
static float rope_freq(const llama_config *c, int i)
{
    float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_size);
    const llama_rope *r = &c->rope;
    if (r->type == LLAMA_ROPE_LINEAR)
        return freq / r->factor;
    if (r->type != LLAMA_ROPE_LLAMA3)
        return freq;
    /* long wavelengths (low frequencies) are divided by factor, short ones kept, and the
     * ones between blended by where the wavelength falls */
    const float old = (float)r->original_max_positions;
    const float low_wavelen = (float)((double)r->original_max_positions / r->low_freq_factor);
    const float high_wavelen = (float)((double)r->original_max_positions / r->high_freq_factor);
    const float wavelen = (float)(2 * M_PI) / freq;
    float scaled = wavelen > low_wavelen ? freq / r->factor : freq;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        float smooth = (old / wavelen - r->low_freq_factor) / (float)((double)r->high_freq_factor - r->low_freq_factor);
        scaled = (1 - smooth) * scaled / r->factor + smooth * scaled;
    }
    return scaled;
}

/* The tables of cos and sin of pos * freq_i (freq_i / rope_factors[i] with factors). */
static int build_rope(llama_model *m)
{
    const llama_config *c = &m->cfg;
    int half = c->head_size / 2;
    m->rope_cos = malloc((size_t)c->seq_len * half * sizeof(float));
    m->rope_sin = malloc((size_t)c->seq_len * half * sizeof(float));
    float *freq = malloc((size_t)half * sizeof(float));
    if (!m->rope_cos || !m->rope_sin || !freq) {
        free(freq);
        return -1;
    }
    for (int i = 0; i < half; i++)
        freq[i] = m->rope_factors ? rope_freq(c, i) / m->rope_factors[i] : rope_freq(c, i);
    for (int pos = 0; pos < c->seq_len; pos++)
        for (int i = 0; i < half; i++) {
            float val = (float)pos * freq[i];
            m->rope_cos[(size_t)pos * half + i] = cosf(val);
            m->rope_sin[(size_t)pos * half + i] = sinf(val);
        }
    free(freq);
    return 0;
}

/* The parts of the config that change the computation beyond the weights (which the
 * fingerprint hashes as read), for a model other than llama2.c's plain one: a plain Llama
 * keeps the fingerprint it had before these existed. */
static uint64_t hash_config(uint64_t h, const llama_config *c)
{
    if (c->arch == LLAMA_ARCH_LLAMA && c->rope.type == LLAMA_ROPE_DEFAULT && !c->biases && !c->qk_norm &&
        c->rope_theta == 10000.0f && c->head_size * c->n_heads == c->dim)
        return h;
    const float f[] = {c->rope_theta, c->rope.factor, c->rope.low_freq_factor, c->rope.high_freq_factor,
                       c->norm_eps};
    const uint32_t u[] = {(uint32_t)c->arch, (uint32_t)c->rope.type, (uint32_t)c->rope.original_max_positions,
                          c->biases, (uint32_t)c->qk_norm, (uint32_t)c->head_size};
    h = hash_floats(h, f, sizeof f / sizeof f[0]);
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++)
        h = (h ^ u[i]) * 0x100000001b3ull;
    return h;
}

/* What the source says of the model before its weights: config, spec, layout. */
static void model_init(llama_model *m, const source *s, const char *dir, qt_spec spec)
{
    memset(m, 0, sizeof *m);
    m->cfg = s->cfg;
    m->spec = spec;
    m->tied = s->tied;
    m->hf_layout = s->hf;
    m->gguf = s->gguf;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
}

/* Opens dir's source for spec (native: only a GGUF file) and starts m from it. */
static int model_open(llama_model *m, source *s, const char *dir, qt_spec spec, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    int native = spec.format == LLAMA_QUANT_NATIVE;
    if (!native && qt_spec_check(spec, err, errlen) < 0)
        return -1;
    if (source_open(s, dir, err, errlen) < 0)
        return -1;
    if (native && !s->gguf) {
        snprintf(err, errlen, "%s: --quant native keeps a GGUF file's tensor types; this model is not one (name a "
                 "format)", dir);
        source_close(s);
        return -1;
    }
    model_init(m, s, dir, spec);
    return 0;
}

/* Reads and quantizes every weight of the open source s into m (model_init'ed); -1 with
 * a message, m then holding what was read (llama_free frees it). */
static int model_read(llama_model *m, source *s, char *err, size_t errlen)
{
    const char *dir = m->dir;
    qt_spec spec = m->spec;
    int native = spec.format == LLAMA_QUANT_NATIVE;
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
    if (c->rope.type == LLAMA_ROPE_FACTORS &&
        !(m->rope_factors = read_vector(s, R_ROPE, 0, 0, (size_t)c->head_size / 2, err, errlen, &h)))
        goto done;
    for (int i = 0; m->rope_factors && i < c->head_size / 2; i++)
        if (!(m->rope_factors[i] > 0)) {
            snprintf(err, errlen, "%s: tensor 'rope_freqs.weight' holds %g: its factors divide frequencies", dir,
                     m->rope_factors[i]);
            goto done;
        }
    if (!buf || !m->layers || build_rope(m) < 0) {
        snprintf(err, errlen, "out of memory loading %s", dir);
        goto done;
    }
    if (read_matrix(s, R_EMBED, 0, 0, f32, &m->embed, c->vocab_size, c->dim, buf, err, errlen, &h) < 0)
        goto done;
    for (int l = 0; l < c->n_layers; l++) {
        llama_layer *L = &m->layers[l];
        if (!(L->rms_att = read_vector(s, R_RMS_ATT, l, 0, c->dim, err, errlen, &h)) ||
            !(L->rms_ffn = read_vector(s, R_RMS_FFN, l, 0, c->dim, err, errlen, &h)))
            goto done;
        if (c->qk_norm && (!(L->q_norm = read_vector(s, R_Q_NORM, l, 0, c->head_size, err, errlen, &h)) ||
                           !(L->k_norm = read_vector(s, R_K_NORM, l, 0, c->head_size, err, errlen, &h))))
            goto done;
        for (int k = 0; k < LIN_COUNT; k++) {
            int rows, cols;
            llama_linear_shape(c, (llama_linear)k, &rows, &cols);
            if (read_matrix(s, R_LINEAR, l, (llama_linear)k, spec, &L->lin[k], rows, cols, buf,
                            err, errlen, &h) < 0)
                goto done;
            if ((c->biases >> k & 1) &&
                !(L->bias[k] = read_vector(s, R_BIAS, l, (llama_linear)k, (size_t)rows, err, errlen, &h)))
                goto done;
        }
    }
    if (!(m->rms_final = read_vector(s, R_RMS_FINAL, 0, 0, c->dim, err, errlen, &h)))
        goto done;
    if (!m->tied &&
        read_matrix(s, R_HEAD, 0, 0, f32, &m->head, c->vocab_size, c->dim, buf, err, errlen, &h) < 0)
        goto done;
    if (native) { /* the borrowed linears point into the mapping: it lives with the model */
        if (!(m->gguf_owner = malloc(sizeof s->gg))) {
            snprintf(err, errlen, "out of memory loading %s", dir);
            goto done;
        }
        memcpy(m->gguf_owner, &s->gg, sizeof s->gg);
        s->gguf = 0; /* not source_close's any more */
    }
    h = hash_config(h, c);
    uint32_t tag[3] = {(uint32_t)spec.format, (uint32_t)spec.block, (uint32_t)spec.double_quant};
    for (int i = 0; i < 3; i++)
        h = (h ^ tag[i]) * 0x100000001b3ull;
    m->fingerprint = h;
    rc = 0;
done:
    free(buf);
    return rc;
}

int llama_load(llama_model *m, const char *dir, qt_spec spec, char *err, size_t errlen)
{
    return llama_load_cached(m, dir, spec, NULL, err, errlen);
}

int llama_cache_default_dir(char *out, size_t n)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int len = xdg && *xdg ? snprintf(out, n, "%s/qlorad", xdg)
              : home && *home ? snprintf(out, n, "%s/.cache/qlorad", home)
                              : -1;
    return len < 0 || (size_t)len >= n ? -1 : 0;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static void cache_log(const llama_model_cache *c, const char *fmt, ...)
{
    char line[5000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (c->log)
        c->log(c->log_ctx, line);
    else
        fprintf(stderr, "%s\n", line);
}
#pragma GCC diagnostic pop

/* The cache key of m from source s: every file the load reads. */
static int source_key(const source *s, const llama_model *m, mcache_key *k, char *err, size_t errlen)
{
    char path[4200];
    if (mcache_key_init(k, m) < 0)
        return snprintf(err, errlen, "out of memory"), -1;
    if (s->gguf)
        return mcache_key_file(k, s->dir, err, errlen);
    if (!s->hf) {
        snprintf(path, sizeof path, "%s/model.bin", s->dir);
        return mcache_key_file(k, path, err, errlen);
    }
    snprintf(path, sizeof path, "%s/config.json", s->dir);
    if (mcache_key_file(k, path, err, errlen) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/model.safetensors", s->dir);
    if (!file_exists(path)) { /* sharded, as open_shards read it */
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", s->dir);
        if (mcache_key_file(k, path, err, errlen) < 0)
            return -1;
    }
    for (int i = 0; i < s->nshards; i++)
        if (mcache_key_file(k, s->shards[i].path, err, errlen) < 0)
            return -1;
    return 0;
}

int llama_load_cached(llama_model *m, const char *dir, qt_spec spec, llama_model_cache *cache, char *err,
                      size_t errlen)
{
    source s;
    if (model_open(m, &s, dir, spec, err, errlen) < 0)
        return -1;
    mcache_key key = {0}, after = {0};
    char kerr[1024];
    int use = cache && cache->dir && spec.format != LLAMA_QUANT_NATIVE;
    if (cache) {
        cache->state = LLAMA_CACHE_OFF;
        cache->path[0] = 0;
    }
    if (use && (source_key(&s, m, &key, kerr, sizeof kerr) < 0 ||
                mcache_path(cache->path, sizeof cache->path, cache->dir, dir, spec, kerr, sizeof kerr) < 0)) {
        cache_log(cache, "model cache off for %s: %s", dir, kerr);
        cache->path[0] = 0;
        use = 0;
    }
    if (use) {
        char why[1024];
        int hit = mcache_load(m, cache->path, &key, why, sizeof why);
        if (hit == 0 && build_rope(m) == 0) {
            cache->state = LLAMA_CACHE_HIT;
            goto out;
        }
        if (hit < 0)
            cache_log(cache, "model cache %s: refused: %s; rebuilding it", cache->path, why);
        else if (hit == 0)
            cache_log(cache, "model cache %s: out of memory; rebuilding it", cache->path);
        llama_free(m);
        model_init(m, &s, dir, spec);
    }
    if (model_read(m, &s, err, errlen) < 0) {
        llama_free(m);
        mcache_key_free(&key);
        source_close(&s);
        return -1;
    }
    if (use) {
        /* a source replaced during the load would be keyed by the new files: not written */
        if (source_key(&s, m, &after, kerr, sizeof kerr) < 0 || !mcache_key_equal(&key, &after))
            snprintf(kerr, sizeof kerr, "%s changed while it was read", dir);
        else if (mcache_store(m, cache->path, &key, kerr, sizeof kerr) == 0)
            kerr[0] = 0;
        cache->state = kerr[0] ? LLAMA_CACHE_UNWRITTEN : LLAMA_CACHE_BUILT;
        if (kerr[0])
            cache_log(cache, "model cache %s: not written (the model loaded): %s", cache->path, kerr);
    }
out:
    mcache_key_free(&key);
    mcache_key_free(&after);
    source_close(&s);
    return 0;
}


void llama_free(llama_model *m)
{
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layers; l++) {
            for (int k = 0; k < LIN_COUNT; k++)
                qt_free(&m->layers[l].lin[k]);
            for (int k = 0; k < LIN_COUNT; k++)
                free(m->layers[l].bias[k]);
            free(m->layers[l].rms_att);
            free(m->layers[l].rms_ffn);
            free(m->layers[l].q_norm);
            free(m->layers[l].k_norm);
        }
    free(m->layers);
    qt_free(&m->embed);
    qt_free(&m->head);
    free(m->rms_final);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->rope_factors);
    if (m->gguf_owner)
        gguf_close(m->gguf_owner);
    free(m->gguf_owner);
    unmap_file(m->cache_map, m->cache_size); /* after the matrices that borrow from it */
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
