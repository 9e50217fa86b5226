/* model.h: a decoder of the Llama family with its seven linear weights per layer quantized.
 *
 * Loads either layout of the same weights: llama2.c (`model.bin`) or Hugging Face
 * (`config.json` + `model.safetensors`, or shards listed in
 * `model.safetensors.index.json`; F32, F16 or BF16). From Hugging Face, exactly the
 * architectures below run, as transformers runs them (model_config.c reads and checks
 * config.json; anything it does not know is refused by file and key):
 *   LlamaForCausalLM   (SmolLM, TinyLlama, Llama 2/3): rope_scaling "llama3" or "linear",
 *                      attention_bias (q, k, v, o) and mlp_bias (gate, up, down), head_dim;
 *   MistralForCausalLM sequences up to sliding_window (no sliding attention beyond it);
 *   Qwen2ForCausalLM   biases on q, k, v;
 *   Qwen3ForCausalLM   per-head RMSNorm of q and k (q_norm, k_norm) before RoPE, head_dim
 *                      of its own, attention_bias (q, k, v, o).
 * Hugging Face keeps the rows of q_proj and k_proj (and their biases and q/k norms) in
 * rotate-half order; they are put back in llama2.c's interleaved order at load (a row
 * permutation, which commutes with row-wise quantization and with a per-head norm), so
 * both layouts give the same model bit for bit. Embeddings, norms, biases and the output
 * head stay fp32 and frozen; the fp32 source of the quantized weights is read through mmap
 * and released after load. */
#ifndef QLORA_MODEL_H
#define QLORA_MODEL_H

#include <stdint.h>

#include "quant.h"

/* The seven linears of a layer, in the order of every per-linear array: X(enum suffix,
 * short name, PEFT target name, Hugging Face module under model.layers.N, GGUF tensor
 * under blk.N, rows, columns) with rows and columns as members of llama_config. */
#define LLAMA_LINEARS(X)                                                                \
    X(Q, "q", "q_proj", "self_attn.q_proj", "attn_q", q_dim, dim)                       \
    X(K, "k", "k_proj", "self_attn.k_proj", "attn_k", kv_dim, dim)                      \
    X(V, "v", "v_proj", "self_attn.v_proj", "attn_v", kv_dim, dim)                      \
    X(O, "o", "o_proj", "self_attn.o_proj", "attn_output", dim, q_dim)                  \
    X(GATE, "gate", "gate_proj", "mlp.gate_proj", "ffn_gate", hidden_dim, dim)          \
    X(UP, "up", "up_proj", "mlp.up_proj", "ffn_up", hidden_dim, dim)                    \
    X(DOWN, "down", "down_proj", "mlp.down_proj", "ffn_down", dim, hidden_dim)

typedef enum {
#define LIN_ENUM(e, ...) LIN_##e,
    LLAMA_LINEARS(LIN_ENUM)
#undef LIN_ENUM
    LIN_COUNT
} llama_linear;

/* The architectures config.json may name (model_config.c has what each one reads). */
typedef enum { LLAMA_ARCH_LLAMA, LLAMA_ARCH_MISTRAL, LLAMA_ARCH_QWEN2, LLAMA_ARCH_QWEN3 } llama_arch;

/* RoPE's frequencies: theta ** (-2i / head_size), then rescaled (modeling_rope_utils.py):
 * linear divides each by factor; llama3 divides the low ones by factor, keeps the high
 * ones and blends between (_compute_llama3_parameters); factors divides frequency i by
 * the model's rope_factors[i] (a GGUF file's rope_freqs, llama.cpp's freq_factors: how
 * its converter writes Llama 3's scaling). */
typedef enum { LLAMA_ROPE_DEFAULT, LLAMA_ROPE_LINEAR, LLAMA_ROPE_LLAMA3, LLAMA_ROPE_FACTORS } llama_rope_type;
typedef struct {
    llama_rope_type type;
    float factor, low_freq_factor, high_freq_factor;
    int original_max_positions;
} llama_rope;

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    int head_size, kv_dim, q_dim;  /* derived by llama_config_derive unless head_size is set */
    float norm_eps, rope_theta;
    llama_arch arch;
    llama_rope rope;
    unsigned biases;     /* bit k: linear k adds a frozen bias (Qwen2's q, k, v; *_bias keys) */
    int qk_norm;         /* Qwen3: q and k RMS-normed per head (weights [head_size]) */
    int sliding_window;  /* Mistral's, when seq_len was cut to it (0: none): for messages */
} llama_config;

/* The architecture's name in Hugging Face ("LlamaForCausalLM" ...) and its model_type
 * ("llama", "mistral", "qwen2", "qwen3"); "?" out of range. */
const char *llama_arch_name(llama_arch a);
const char *llama_arch_type(llama_arch a);

/* Sets q_dim and kv_dim from the heads (and head_size from dim / n_heads when it is 0),
 * and checks that the heads divide evenly and are of even size: -1 with a message naming
 * where (the config's file) otherwise. Every producer of a llama_config calls it. */
int llama_config_derive(llama_config *c, const char *where, char *err, size_t errlen);
/* The widest row a layer's linears read or write: max(dim, hidden_dim, q_dim). */
int llama_config_widest(const llama_config *c);

typedef struct {
    qt_matrix lin[LIN_COUNT];  /* wq [q_dim x dim], wk, wv [kv_dim x dim], wo [dim x q_dim],
                                  gate, up [hidden x dim], down [dim x hidden] */
    float *rms_att, *rms_ffn;  /* [dim] */
    float *bias[LIN_COUNT];    /* [rows of linear k] or NULL (cfg.biases) */
    float *q_norm, *k_norm;    /* [head_size] or NULL (cfg.qk_norm) */
} llama_layer;

typedef struct {
    llama_config cfg;
    qt_spec spec;
    qt_matrix embed;           /* f32 [vocab x dim]; also the output head when tied */
    qt_matrix head;            /* f32 [vocab x dim] when the classifier is separate */
    int tied;
    float *rms_final;          /* [dim] */
    llama_layer *layers;
    float *rope_cos, *rope_sin;/* [seq_len x head_size/2] */
    float *rope_factors;       /* [head_size/2] with LLAMA_ROPE_FACTORS, else NULL */
    void *gguf_owner;          /* --quant native: the gguf_file whose mapping the linears
                                  borrow, closed by llama_free; else NULL */
    const void *cache_map;     /* loaded from a cache file: its read-only mapping, which the
                                  linears, embeddings and head borrow; unmapped by llama_free */
    size_t cache_size;
    uint64_t fingerprint;      /* hash of the fp32 weights (canonical order) and the spec */
    char dir[4096];
    int hf_layout;
    int gguf;                  /* loaded from a GGUF file (dir is its path) */
} llama_model;

/* The names of LLAMA_LINEARS: "q" ..., "q_proj" ..., "self_attn.q_proj" ..., "attn_q" ...
 * ("?" for a value out of range). */
const char *llama_linear_name(llama_linear l);
const char *llama_linear_peft_name(llama_linear l);
const char *llama_linear_module(llama_linear l);
const char *llama_linear_gguf(llama_linear l);
/* Shape of linear l: rows x cols. */
void llama_linear_shape(const llama_config *c, llama_linear l, int *rows, int *cols);

/* --quant native: every linear of a GGUF file stays in its file's type (borrowed from the
 * mapping where its rows need no permutation), for llama_load's spec.format. The default
 * for a GGUF file; refused for the other layouts. */
#define LLAMA_QUANT_NATIVE ((qt_format)QT_NFORMATS)
/* A --quant name: a format of quant.h or "native"; -1 when neither. */
int llama_quant_parse(const char *name, qt_format *f);
/* The spec of f: qt_spec_default, or native's. */
qt_spec llama_quant_spec(qt_format f);
/* What the model's linears are: the spec's format name, or "native". */
const char *llama_quant_name(const llama_model *m);

/* Loads dir (either layout, or a GGUF file) and quantizes with spec; -1 with a message
 * naming the file and tensor at fault. */
int llama_load(llama_model *m, const char *dir, qt_spec spec, char *err, size_t errlen);
void llama_free(llama_model *m);

/* The cache of quantized models (model_cache.c): a load quantizes once and writes the
 * result to a file of dir, which later loads of the same source files (path, size, mtime,
 * ctime, inode, device) and spec map read-only instead; a file that is stale, truncated or
 * corrupt is refused with a log line and rebuilt; one that cannot be written is a warning.
 * A cached load gives the same fingerprint and bit-identical weights. Not used for
 * --quant native (which maps the GGUF file itself). */
typedef enum {
    LLAMA_CACHE_OFF,       /* no cache dir, or --quant native */
    LLAMA_CACHE_HIT,       /* mapped from the cache file */
    LLAMA_CACHE_BUILT,     /* quantized from the source, then written */
    LLAMA_CACHE_UNWRITTEN, /* quantized from the source; the file could not be written */
} llama_cache_state;
typedef struct {
    const char *dir;                          /* NULL: no cache */
    void (*log)(void *ctx, const char *line); /* NULL: lines go to stderr */
    void *log_ctx;
    llama_cache_state state;                  /* out: what the load did */
    char path[4352];                          /* out: the cache file ("" when OFF) */
} llama_model_cache;
/* The default cache dir into out: $XDG_CACHE_HOME/qlorad, else $HOME/.cache/qlorad; -1 when
 * neither variable is set (or the path does not fit). */
int llama_cache_default_dir(char *out, size_t n);
/* llama_load through the cache (cache NULL, or cache->dir NULL: llama_load itself). Every
 * loader of a base model (qlorad, its jobs' teacher, qlora-tool) goes through it. */
int llama_load_cached(llama_model *m, const char *dir, qt_spec spec, llama_model_cache *cache, char *err,
                      size_t errlen);
static inline const qt_matrix *llama_head(const llama_model *m)
{
    return m->tied ? &m->embed : &m->head;
}
/* Parameters of the model (all tensors, biases and norms too) and of the quantized linears
 * alone. */
size_t llama_n_params(const llama_config *c, int tied, size_t *quantized);
/* Bytes held by the model's weights (quantized linears + fp32 rest). */
size_t llama_weight_bytes(const llama_model *m);
/* Bits per parameter of the quantized linears, scales and zero points included. */
double llama_linear_bits(const llama_model *m);

/* Visits the fp32 weights of linear l in every layer, in llama2.c row order, straight from
 * the files (for quantization-error reports and LoftQ). fn gets a temporary buffer. */
typedef int (*llama_weight_fn)(void *ctx, int layer, llama_linear l, const float *w, int rows,
                               int cols);
int llama_visit_linears(const char *dir, void *ctx, llama_weight_fn fn, char *err, size_t errlen);

#endif
