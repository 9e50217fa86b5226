/* llama2c.c: see llama2c.h. */
#include "llama2c.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mapfile.h"

int l2c_open(l2c_file *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    const void *map;
    size_t size;
    if (map_file(path, &map, &size, err, errlen) < 0)
        return -1;
    if (size < 28) {
        snprintf(err, errlen, "%s: too short for a llama2.c header (28 bytes)", path);
        unmap_file(map, size);
        return -1;
    }
    f->map = (void *)map;
    f->size = size;
    int32_t h[7];
    memcpy(h, map, sizeof h);
    l2c_config *c = &f->cfg;
    c->dim = h[0], c->hidden_dim = h[1], c->n_layers = h[2], c->n_heads = h[3];
    c->n_kv_heads = h[4], c->shared_classifier = h[5] > 0;
    c->vocab_size = h[5] < 0 ? -h[5] : h[5], c->seq_len = h[6];
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->vocab_size <= 0 || c->seq_len <= 0 ||
        c->dim % c->n_heads || c->n_heads % c->n_kv_heads || (c->dim / c->n_heads) % 2 ||
        c->dim > (1 << 16) || c->hidden_dim > (1 << 18) || c->n_layers > 1024 ||
        c->vocab_size > (1 << 22) || c->seq_len > (1 << 20)) {
        snprintf(err, errlen,
                 "%s: implausible header (dim %d, hidden %d, layers %d, heads %d, kv heads %d, "
                 "vocab %d, seq_len %d)", path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
        l2c_close(f);
        return -1;
    }
    size_t D = c->dim, H = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    size_t kv = D / c->n_heads * c->n_kv_heads, hs = D / c->n_heads;
    size_t sizes[] = {V * D, L * D, L * D * D, L * kv * D, L * kv * D, L * D * D, L * D,
                      L * H * D, L * D * H, L * H * D, D, c->seq_len * hs, c->shared_classifier ? 0 : V * D};
    const float **ptrs[] = {&f->token_embedding, &f->rms_att, &f->wq, &f->wk, &f->wv, &f->wo,
                            &f->rms_ffn, &f->w1, &f->w2, &f->w3, &f->rms_final, NULL, &f->wcls};
    size_t floats = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        floats += sizes[i];
    if (28 + floats * 4 != f->size) {
        snprintf(err, errlen, "%s: header promises %zu bytes of weights but the file holds %zu",
                 path, floats * 4, f->size - 28);
        l2c_close(f);
        return -1;
    }
    const float *p = (const float *)((const char *)map + 28);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (ptrs[i])
            *ptrs[i] = p;
        p += sizes[i];
    }
    if (c->shared_classifier)
        f->wcls = f->token_embedding;
    return 0;
}

void l2c_close(l2c_file *f)
{
    unmap_file(f->map, f->size);
    memset(f, 0, sizeof *f);
}
