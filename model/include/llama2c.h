/* llama2c.h: read-only view of a llama2.c checkpoint (model.bin) through mmap.
 *
 * Layout (legacy version 0): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len; a negative vocab_size means a separate classifier follows), then
 * fp32 arrays in this order: token embedding [vocab x dim], rms_att [L x dim],
 * wq [L x dim x dim], wk [L x kv_dim x dim], wv [L x kv_dim x dim], wo [L x dim x dim],
 * rms_ffn [L x dim], w1 [L x hidden x dim], w2 [L x dim x hidden], w3 [L x hidden x dim],
 * rms_final [dim], the legacy RoPE tables [seq_len x head_size] (skipped), and the
 * classifier [vocab x dim] when not shared. */
#ifndef QLORA_LLAMA2C_H
#define QLORA_LLAMA2C_H

#include <stddef.h>

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    int shared_classifier;
} l2c_config;

typedef struct {
    l2c_config cfg;
    void *map;
    size_t size;
    const float *token_embedding, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3,
        *rms_final, *wcls;
} l2c_file;

/* Opens and validates path; on error returns -1 with a message naming the file. */
int l2c_open(l2c_file *f, const char *path, char *err, size_t errlen);
void l2c_close(l2c_file *f);

#endif
