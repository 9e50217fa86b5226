/* peft.c: see peft.h. */
#include "peft.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "train.h"

static const char *const module_path[LIN_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
};

static void tensor_name(char *out, size_t len, int layer, llama_linear k, int b)
{
    snprintf(out, len, "base_model.model.model.layers.%d.%s.lora_%c.weight", layer, module_path[k],
             b ? 'B' : 'A');
}

/* Row p of the HF rotate-half order holds llama2.c row interleaved_row(p): head h, and
 * within it (j * hs/2 + i) <- (2i + j). q and k rows of lora_B follow their base rows. */
static size_t interleaved_row(size_t p, size_t hs)
{
    size_t h = p / hs, q = p % hs, j = q / (hs / 2), i = q % (hs / 2);
    return h * hs + 2 * i + j;
}

int peft_encode(const llama_lora *ad, const llama_config *c, uint64_t fingerprint, void **out,
                size_t *len, char *err, size_t errlen)
{
    size_t cap = 4096 + (size_t)c->n_layers * LIN_COUNT * 2 * 200, hl = 0, off = 0;
    char *header = malloc(cap), targets[128];
    if (!header) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    train_format_targets(ad->targets, targets, sizeof targets);
    hl += (size_t)snprintf(header + hl, cap - hl,
                           "{\"__metadata__\":{\"format\":\"pt\",\"r\":\"%d\",\"lora_alpha\":\"%g\","
                           "\"target_modules\":\"%s\",\"use_rslora\":\"%s\",\"base_fingerprint\":\"%016" PRIx64 "\"}",
                           ad->rank, ad->alpha, targets, ad->rslora ? "true" : "false", fingerprint);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!llama_lora_has(ad, l, k))
                continue;
            int o, in;
            llama_linear_shape(c, (llama_linear)k, &o, &in);
            for (int b = 0; b < 2; b++) {
                char name[160];
                tensor_name(name, sizeof name, l, (llama_linear)k, b);
                size_t rows = b ? (size_t)o : (size_t)ad->rank, cols = b ? (size_t)ad->rank : (size_t)in;
                hl += (size_t)snprintf(header + hl, cap - hl,
                                       ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}",
                                       name, rows, cols, off, off + rows * cols * 4);
                off += rows * cols * 4;
            }
        }
    hl += (size_t)snprintf(header + hl, cap - hl, "}");
    while (hl % 8)
        header[hl++] = ' ';
    *len = 8 + hl + off;
    unsigned char *img = malloc(*len);
    if (!img) {
        free(header);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    uint64_t h64 = hl;
    memcpy(img, &h64, 8);
    memcpy(img + 8, header, hl);
    free(header);
    float *data = (float *)(img + 8 + hl); /* 8 + hl is a multiple of 8 */
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!llama_lora_has(ad, l, k))
                continue;
            int o, in;
            llama_linear_shape(c, (llama_linear)k, &o, &in);
            size_t na = (size_t)ad->rank * in;
            memcpy(data, llama_lora_a(ad, ad->params, l, k), na * sizeof(float));
            data += na;
            const float *B = llama_lora_b(ad, c, ad->params, l, k);
            for (size_t p = 0; p < (size_t)o; p++) {
                size_t src = (k == LIN_Q || k == LIN_K) ? interleaved_row(p, (size_t)c->head_size) : p;
                memcpy(data + p * ad->rank, B + src * ad->rank, (size_t)ad->rank * sizeof(float));
            }
            data += (size_t)o * ad->rank;
        }
    *out = img;
    return 0;
}

int peft_write(const char *path, const llama_lora *ad, const llama_config *c, uint64_t fingerprint,
               char *err, size_t errlen)
{
    void *img;
    size_t len;
    if (peft_encode(ad, c, fingerprint, &img, &len, err, errlen) < 0)
        return -1;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(img, 1, len, f) == len;
    if (f && fclose(f) != 0)
        ok = 0;
    free(img);
    if (!ok || rename(tmp, path) != 0) { /* whole file or nothing */
        remove(tmp);
        snprintf(err, errlen, "%s: cannot write", path);
        return -1;
    }
    return 0;
}

static const char *meta_string(const st_file *f, const char *key)
{
    const json_value *v = json_get(f->metadata, key);
    return v && v->type == JSON_STRING ? v->string : NULL;
}

int peft_read(const char *path, llama_lora *ad, const llama_config *c, uint64_t *fingerprint,
              char *err, size_t errlen)
{
    st_file f;
    memset(ad, 0, sizeof *ad);
    if (st_open(&f, path, err, errlen) < 0)
        return -1;
    const char *r = meta_string(&f, "r"), *alpha = meta_string(&f, "lora_alpha");
    const char *targets = meta_string(&f, "target_modules"), *rs = meta_string(&f, "use_rslora");
    const char *fp = meta_string(&f, "base_fingerprint");
    int rank = r ? atoi(r) : 0;
    float a = alpha ? strtof(alpha, NULL) : 0;
    unsigned t = 0;
    char why[256];
    int rc = -1;
    if (rank < 1 || rank > c->dim || !(a > 0)) {
        snprintf(err, errlen, "%s: __metadata__ needs r in 1..%d and a positive lora_alpha", path, c->dim);
        goto done;
    }
    if (!targets || train_parse_targets(targets, &t, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: __metadata__ target_modules: %s", path, targets ? why : "missing");
        goto done;
    }
    if (llama_lora_alloc(ad, c, rank, a, rs && !strcmp(rs, "true"), t, 0) < 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    *fingerprint = fp ? strtoull(fp, NULL, 16) : 0;
    size_t expected = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!llama_lora_has(ad, l, k))
                continue;
            int o, in;
            llama_linear_shape(c, (llama_linear)k, &o, &in);
            for (int b = 0; b < 2; b++) {
                char name[160];
                tensor_name(name, sizeof name, l, (llama_linear)k, b);
                const st_tensor *st = st_find(&f, name);
                size_t rows = b ? (size_t)o : (size_t)rank, cols = b ? (size_t)rank : (size_t)in;
                if (!st) {
                    snprintf(err, errlen, "%s: tensor '%s' is missing", path, name);
                    goto done;
                }
                if (st->ndim != 2 || (size_t)st->shape[0] != rows || (size_t)st->shape[1] != cols) {
                    snprintf(err, errlen, "%s: tensor '%s' has shape [%lld, %lld], expected [%zu, %zu]",
                             path, name, (long long)st->shape[0], st->ndim > 1 ? (long long)st->shape[1] : 0LL,
                             rows, cols);
                    goto done;
                }
                float *dst = b ? llama_lora_b(ad, c, ad->params, l, k) : llama_lora_a(ad, ad->params, l, k);
                float *tmp = malloc(rows * cols * sizeof(float));
                if (!tmp) {
                    snprintf(err, errlen, "out of memory");
                    goto done;
                }
                st_to_f32(st, tmp);
                for (size_t i = 0; i < rows * cols; i++)
                    if (!isfinite(tmp[i])) {
                        snprintf(err, errlen, "%s: tensor '%s' holds a non-finite value at %zu", path, name, i);
                        free(tmp);
                        goto done;
                    }
                if (b && (k == LIN_Q || k == LIN_K))
                    for (size_t p = 0; p < rows; p++)
                        memcpy(dst + interleaved_row(p, (size_t)c->head_size) * cols, tmp + p * cols,
                               cols * sizeof(float));
                else
                    memcpy(dst, tmp, rows * cols * sizeof(float));
                free(tmp);
                expected++;
            }
        }
    if (expected != f.count) {
        snprintf(err, errlen, "%s: %zu tensors, but r/target_modules describe %zu", path, f.count, expected);
        goto done;
    }
    rc = 0;
done:
    if (rc < 0)
        llama_lora_free(ad);
    st_close(&f);
    return rc;
}
