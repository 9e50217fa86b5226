/* peft.c: see peft.h. */
#include "peft.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "safetensors.h"
#include "train.h"

/* One PEFT tensor of an adapter: lora_A or lora_B of (layer, k). */
typedef struct {
    int layer;
    llama_linear k;
    int b;
    size_t rows, cols;
    char name[160];
} peft_tensor;

typedef int (*peft_tensor_fn)(void *ctx, const peft_tensor *t);

/* Visits the tensors of ad in file order (layer, linear, A then B); stops at the first
 * nonzero return of fn and returns it. Encoder and decoder share this walk, so the order
 * and the names cannot drift apart. */
static int each_tensor(const llama_lora *ad, const llama_config *c, peft_tensor_fn fn, void *ctx)
{
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!llama_lora_has(ad, l, (llama_linear)k))
                continue;
            int o, in;
            llama_linear_shape(c, (llama_linear)k, &o, &in);
            for (int b = 0; b < 2; b++) {
                peft_tensor t = {l, (llama_linear)k, b, b ? (size_t)o : (size_t)ad->rank,
                                 b ? (size_t)ad->rank : (size_t)in, {0}};
                snprintf(t.name, sizeof t.name, "base_model.model.model.layers.%d.%s.lora_%c.weight", l,
                         llama_linear_module(k), b ? 'B' : 'A');
                int rc = fn(ctx, &t);
                if (rc)
                    return rc;
            }
        }
    return 0;
}

/* Row p of the HF rotate-half order holds llama2.c row interleaved_row(p): head h, and
 * within it (j * hs/2 + i) <- (2i + j). q and k rows of lora_B follow their base rows. */
static size_t interleaved_row(size_t p, size_t hs)
{
    size_t h = p / hs, q = p % hs, j = q / (hs / 2), i = q % (hs / 2);
    return h * hs + 2 * i + j;
}

/* Copies tensor t between the adapter (llama2.c rows) and a PEFT buffer (HF rows). */
static void copy_tensor(const llama_lora *ad, const llama_config *c, const peft_tensor *t, float *peft,
                        int to_peft)
{
    float *mine = t->b ? llama_lora_b(ad, c, ad->params, t->layer, t->k) : llama_lora_a(ad, ad->params, t->layer, t->k);
    int permuted = t->b && (t->k == LIN_Q || t->k == LIN_K);
    for (size_t p = 0; p < t->rows; p++) {
        size_t r = permuted ? interleaved_row(p, (size_t)c->head_size) : p;
        float *src = to_peft ? mine + r * t->cols : peft + p * t->cols;
        float *dst = to_peft ? peft + p * t->cols : mine + r * t->cols;
        memcpy(dst, src, t->cols * sizeof(float));
    }
}

/* ---- encoding ---- */

typedef struct {
    const llama_lora *ad;
    const llama_config *c;
    char *header;
    size_t cap, hl, off;
    float *data;
} encoder;

static int encode_header(void *p, const peft_tensor *t)
{
    encoder *e = p;
    size_t bytes = t->rows * t->cols * sizeof(float);
    e->hl += (size_t)snprintf(e->header + e->hl, e->cap - e->hl,
                              ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}",
                              t->name, t->rows, t->cols, e->off, e->off + bytes);
    e->off += bytes;
    return 0;
}

static int encode_data(void *p, const peft_tensor *t)
{
    encoder *e = p;
    copy_tensor(e->ad, e->c, t, e->data, 1);
    e->data += t->rows * t->cols;
    return 0;
}

int peft_encode(const llama_lora *ad, const llama_config *c, uint64_t fingerprint, void **out,
                size_t *len, char *err, size_t errlen)
{
    encoder e = {ad, c, NULL, 4096 + (size_t)c->n_layers * LIN_COUNT * 2 * 200, 0, 0, NULL};
    char targets[128];
    e.header = malloc(e.cap);
    if (!e.header) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    train_format_targets(ad->targets, targets, sizeof targets);
    e.hl += (size_t)snprintf(e.header, e.cap,
                             "{\"__metadata__\":{\"format\":\"pt\",\"r\":\"%d\",\"lora_alpha\":\"%.9g\","
                             "\"target_modules\":\"%s\",\"use_rslora\":\"%s\",\"base_fingerprint\":\"%016" PRIx64 "\"}",
                             ad->rank, ad->alpha, targets, ad->rslora ? "true" : "false", fingerprint);
    each_tensor(ad, c, encode_header, &e);
    e.hl += (size_t)snprintf(e.header + e.hl, e.cap - e.hl, "}");
    while (e.hl % 8)
        e.header[e.hl++] = ' ';
    *len = 8 + e.hl + e.off;
    unsigned char *img = malloc(*len);
    if (!img) {
        free(e.header);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    uint64_t h64 = e.hl;
    memcpy(img, &h64, 8);
    memcpy(img + 8, e.header, e.hl);
    e.data = (float *)(img + 8 + e.hl); /* 8 + hl is a multiple of 8 */
    free(e.header);
    each_tensor(ad, c, encode_data, &e);
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

/* JSON string literal of s (quotes and escapes) appended at out[*used]. */
static void json_string(char *out, size_t cap, size_t *used, const char *s)
{
    *used += (size_t)snprintf(out + *used, *used < cap ? cap - *used : 0, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            *used += (size_t)snprintf(out + *used, *used < cap ? cap - *used : 0, "\\%c", ch);
        else if (ch < 0x20)
            *used += (size_t)snprintf(out + *used, *used < cap ? cap - *used : 0, "\\u%04x", ch);
        else
            *used += (size_t)snprintf(out + *used, *used < cap ? cap - *used : 0, "%c", ch);
    }
    *used += (size_t)snprintf(out + *used, *used < cap ? cap - *used : 0, "\"");
}

int peft_config_encode(const llama_lora *ad, const char *base_model, char **json, char *err, size_t errlen)
{
    size_t cap = 1024 + (base_model ? 6 * strlen(base_model) : 0), used = 0;
    char *out = malloc(cap), targets[128];
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    train_format_targets(ad->targets, targets, sizeof targets);
    used += (size_t)snprintf(out, cap,
                             "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"r\": %d,\n"
                             "  \"lora_alpha\": %.9g,\n  \"lora_dropout\": %.9g,\n  \"target_modules\": [",
                             ad->rank, ad->alpha, ad->dropout);
    for (char *p = targets; *p;) {
        size_t n = strcspn(p, ",");
        used += (size_t)snprintf(out + used, cap - used, "%s\"%.*s\"", p == targets ? "" : ", ", (int)n, p);
        p += n + (p[n] == ',');
    }
    used += (size_t)snprintf(out + used, cap - used, "],\n  \"bias\": \"none\",\n  \"use_rslora\": %s,\n"
                             "  \"base_model_name_or_path\": ", ad->rslora ? "true" : "false");
    if (base_model)
        json_string(out, cap, &used, base_model);
    else
        used += (size_t)snprintf(out + used, cap - used, "null");
    snprintf(out + used, cap - used, "\n}\n");
    *json = out;
    return 0;
}

/* ---- decoding ---- */

/* What a PEFT adapter declares about itself (config or metadata). */
typedef struct {
    int rank;
    float alpha;
    int rslora;
    unsigned targets;
    float dropout;
} peft_params;

typedef struct {
    const st_file *f;
    const llama_lora *ad;
    const llama_config *c;
    unsigned char *seen; /* [f->count]: the file's tensor was claimed by a name */
    float *tmp;
    char *err;
    size_t errlen;
} decoder;

static int decode_tensor(void *p, const peft_tensor *t)
{
    decoder *d = p;
    const st_tensor *st = st_find(d->f, t->name);
    if (!st) {
        snprintf(d->err, d->errlen, "%s: tensor '%s' is missing", d->f->path, t->name);
        return -1;
    }
    d->seen[st - d->f->tensors] = 1;
    if (st->ndim != 2 || (size_t)st->shape[0] != t->rows || (size_t)st->shape[1] != t->cols) {
        snprintf(d->err, d->errlen, "%s: tensor '%s' has shape [%lld, %lld], expected [%zu, %zu]", d->f->path,
                 t->name, (long long)st->shape[0], st->ndim > 1 ? (long long)st->shape[1] : 0LL, t->rows, t->cols);
        return -1;
    }
    st_to_f32(st, d->tmp);
    for (size_t i = 0; i < t->rows * t->cols; i++)
        if (!isfinite(d->tmp[i])) {
            snprintf(d->err, d->errlen, "%s: tensor '%s' holds a non-finite value at %zu", d->f->path, t->name, i);
            return -1;
        }
    copy_tensor(d->ad, d->c, t, d->tmp, 0);
    return 0;
}

/* The adapter p describes, filled from f; every tensor checked, none missing or extra. */
static int decode(const st_file *f, const peft_params *p, const llama_config *c, llama_lora *ad, char *err,
                  size_t errlen)
{
    int in_max = llama_config_widest(c);
    decoder d = {f, ad, c, calloc(f->count ? f->count : 1, 1), malloc((size_t)in_max * p->rank * sizeof(float)),
                 err, errlen};
    int rc = -1;
    if (!d.seen || !d.tmp || llama_lora_alloc(ad, c, p->rank, p->alpha, p->rslora, p->targets, p->dropout) < 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (each_tensor(ad, c, decode_tensor, &d))
        goto done;
    for (size_t i = 0; i < f->count; i++)
        if (!d.seen[i]) {
            snprintf(err, errlen, "%s: unexpected tensor '%s' (not one of r/target_modules' LoRA tensors)",
                     f->path, f->tensors[i].name);
            goto done;
        }
    rc = 0;
done:
    if (rc < 0)
        llama_lora_free(ad);
    free(d.seen);
    free(d.tmp);
    return rc;
}

/* What training itself accepts (train.c's hyper-parameter checks): r in 1..dim, a finite
 * positive lora_alpha (as a float: a JSON 1e39 is +Inf there, and alpha / r would scale
 * every delta to Inf or NaN), lora_dropout in [0, 1). PEFT itself checks none of these. */
static int check_params(const peft_params *p, const llama_config *c, const char *what, char *err, size_t errlen)
{
    if (p->rank < 1 || p->rank > c->dim)
        snprintf(err, errlen, "%s: r must be in 1..%d (the model's dim)", what, c->dim);
    else if (!(p->alpha > 0) || !isfinite(p->alpha))
        snprintf(err, errlen, "%s: lora_alpha must be a finite positive number", what);
    else if (!(p->dropout >= 0 && p->dropout < 1))
        snprintf(err, errlen, "%s: lora_dropout must be in [0, 1)", what);
    else
        return 0;
    return -1;
}

static const char *meta_string(const st_file *f, const char *key)
{
    const json_value *v = json_get(f->metadata, key);
    return v && v->type == JSON_STRING ? v->string : NULL;
}

/* The adapter's parameters from our own __metadata__ strings (r, lora_alpha,
 * target_modules, use_rslora); -1 with err when they are absent or bad. */
static int meta_params(const st_file *f, peft_params *p, char *err, size_t errlen)
{
    const char *r = meta_string(f, "r"), *alpha = meta_string(f, "lora_alpha");
    const char *targets = meta_string(f, "target_modules"), *rs = meta_string(f, "use_rslora");
    char why[256];
    memset(p, 0, sizeof *p);
    p->rank = r ? atoi(r) : 0;
    p->alpha = alpha ? strtof(alpha, NULL) : 0;
    p->rslora = rs && !strcmp(rs, "true");
    if (!targets || train_parse_targets(targets, &p->targets, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: __metadata__ target_modules: %s", f->path, targets ? why : "missing");
        return -1;
    }
    return 0;
}

static int meta_fingerprint(const st_file *f, uint64_t *fingerprint, char *err, size_t errlen)
{
    const char *fp = meta_string(f, "base_fingerprint");
    char *end = NULL;
    *fingerprint = fp ? strtoull(fp, &end, 16) : 0;
    if (fp && (end == fp || *end)) {
        snprintf(err, errlen, "%s: __metadata__ base_fingerprint '%s' is not hexadecimal", f->path, fp);
        return -1;
    }
    return 0;
}

int peft_read(const char *path, llama_lora *ad, const llama_config *c, uint64_t *fingerprint,
              char *err, size_t errlen)
{
    st_file f;
    peft_params p;
    char what[4200];
    memset(ad, 0, sizeof *ad);
    if (st_open(&f, path, err, errlen) < 0)
        return -1;
    snprintf(what, sizeof what, "%s: __metadata__", path);
    int rc = meta_params(&f, &p, err, errlen) < 0 || check_params(&p, c, what, err, errlen) < 0 ||
                     meta_fingerprint(&f, fingerprint, err, errlen) < 0 || decode(&f, &p, c, ad, err, errlen) < 0
                 ? -1
                 : 0;
    st_close(&f);
    return rc;
}

/* LoraConfig keys (peft tuners/lora/config.py) that change what peft builds or computes,
 * accepted at their defaults only: each allowed value as "null", "true", "false", "[]",
 * "{}" or a string. Their tensors alone would not always tell: alpha_pattern changes only
 * the scaling, alora_invocation_tokens only where the delta applies, init_lora_weights
 * "pissa", "olora", "loftq"... rewrite the base weights when peft loads the adapter. */
static const struct {
    const char *key, *allowed[3];
} lora_defaults[] = {
    {"use_dora", {"false"}},          {"lora_bias", {"false"}},
    {"use_qalora", {"false"}},        {"fan_in_fan_out", {"false"}},
    {"alpha_pattern", {"{}", "null"}}, {"rank_pattern", {"{}", "null"}},
    {"modules_to_save", {"null", "[]"}}, {"layers_to_transform", {"null", "[]"}},
    {"exclude_modules", {"null", "[]"}}, {"layer_replication", {"null"}},
    {"trainable_token_indices", {"null"}}, {"alora_invocation_tokens", {"null"}},
    {"target_parameters", {"null", "[]"}}, {"init_lora_weights", {"true", "false", "gaussian"}},
};

static int json_is(const json_value *v, const char *lit)
{
    if (!strcmp(lit, "null"))
        return v->type == JSON_NULL;
    if (!strcmp(lit, "true") || !strcmp(lit, "false"))
        return v->type == JSON_BOOL && v->boolean == (lit[0] == 't');
    if (!strcmp(lit, "[]") || !strcmp(lit, "{}"))
        return v->type == (lit[0] == '[' ? JSON_ARRAY : JSON_OBJECT) && v->count == 0;
    return v->type == JSON_STRING && !strcmp(v->string, lit);
}

/* adapter_config.json's fields into p. */
static int config_params(const json_value *j, peft_params *p, char *err, size_t errlen)
{
    const char *file = "adapter_config.json";
    const json_value *type = json_get(j, "peft_type"), *alpha = json_get(j, "lora_alpha"),
                     *rs = json_get(j, "use_rslora"), *drop = json_get(j, "lora_dropout"),
                     *bias = json_get(j, "bias"), *tm = json_get(j, "target_modules");
    long r;
    memset(p, 0, sizeof *p);
    if (j->type != JSON_OBJECT) {
        snprintf(err, errlen, "%s: not a JSON object", file);
        return -1;
    }
    if (type && (type->type != JSON_STRING || strcmp(type->string, "LORA"))) {
        snprintf(err, errlen, "%s: peft_type must be \"LORA\"", file);
        return -1;
    }
    if (bias && (bias->type != JSON_STRING || strcmp(bias->string, "none"))) {
        snprintf(err, errlen, "%s: bias must be \"none\" (adapters carry no bias terms)", file);
        return -1;
    }
    for (size_t i = 0; i < sizeof lora_defaults / sizeof lora_defaults[0]; i++) {
        const json_value *v = json_get(j, lora_defaults[i].key);
        int ok = !v;
        for (int k = 0; k < 3 && lora_defaults[i].allowed[k] && !ok; k++)
            ok = json_is(v, lora_defaults[i].allowed[k]);
        if (!ok) {
            char choices[64] = "";
            for (int k = 0; k < 3 && lora_defaults[i].allowed[k]; k++)
                snprintf(choices + strlen(choices), sizeof choices - strlen(choices), "%s%s", k ? " or " : "",
                         lora_defaults[i].allowed[k]);
            snprintf(err, errlen, "%s: %s must be %s (plain LoRA only)", file, lora_defaults[i].key, choices);
            return -1;
        }
    }
    if (json_get_int(j, "r", 1, 1 << 20, &r) < 0) {
        snprintf(err, errlen, "%s: r must be a positive integer", file);
        return -1;
    }
    p->rank = (int)r;
    if (!alpha || alpha->type != JSON_NUMBER) {
        snprintf(err, errlen, "%s: lora_alpha must be a number", file);
        return -1;
    }
    p->alpha = (float)alpha->number;
    if (rs && rs->type != JSON_BOOL) {
        snprintf(err, errlen, "%s: use_rslora must be true or false", file);
        return -1;
    }
    p->rslora = rs ? rs->boolean : 0;
    if (drop && drop->type != JSON_NUMBER) {
        snprintf(err, errlen, "%s: lora_dropout must be a number", file);
        return -1;
    }
    p->dropout = drop ? (float)drop->number : 0;
    /* a list of module names, or one string ("all-linear", or a single name) */
    char list[256] = "", why[256];
    size_t used = 0;
    if (tm && tm->type == JSON_STRING) {
        snprintf(list, sizeof list, "%s", tm->string);
    } else if (tm && tm->type == JSON_ARRAY) {
        for (size_t i = 0; i < tm->count; i++) {
            if (tm->items[i].type != JSON_STRING || !*tm->items[i].string || strchr(tm->items[i].string, ',')) {
                snprintf(err, errlen, "%s: target_modules[%zu] is not a module name", file, i);
                return -1;
            }
            used += (size_t)snprintf(list + used, used < sizeof list ? sizeof list - used : 0, "%s%s",
                                     i ? "," : "", tm->items[i].string);
        }
    } else {
        snprintf(err, errlen, "%s: target_modules must be a list of module names", file);
        return -1;
    }
    if (used >= sizeof list || train_parse_targets(list, &p->targets, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: target_modules: %s", file, used >= sizeof list ? "too long" : why);
        return -1;
    }
    return 0;
}

int peft_import(const char *config_json, size_t config_len, const void *st, size_t st_len, const llama_config *c,
                llama_lora *ad, uint64_t *fingerprint, char *err, size_t errlen)
{
    const char *tensors = "adapter_model.safetensors";
    char jerr[256];
    peft_params p, m;
    st_file f;
    memset(ad, 0, sizeof *ad);
    json_value *j = json_parse(config_json, config_len, jerr, sizeof jerr);
    if (!j) {
        snprintf(err, errlen, "adapter_config.json: %s", jerr);
        return -1;
    }
    int rc = config_params(j, &p, err, errlen);
    json_free(j);
    if (rc < 0 || check_params(&p, c, "adapter_config.json", err, errlen) < 0)
        return -1;
    if (st_parse(&f, tensors, st, st_len, err, errlen) < 0)
        return -1;
    rc = -1;
    if (meta_fingerprint(&f, fingerprint, err, errlen) < 0)
        goto done;
    /* our own exports repeat the parameters in __metadata__: they must agree */
    if (meta_string(&f, "r")) {
        if (meta_params(&f, &m, err, errlen) < 0)
            goto done;
        const char *field = m.rank != p.rank ? "r" : m.alpha != p.alpha ? "lora_alpha"
                          : m.targets != p.targets ? "target_modules" : m.rslora != p.rslora ? "use_rslora" : NULL;
        if (field) {
            snprintf(err, errlen, "%s: __metadata__ %s disagrees with adapter_config.json", tensors, field);
            goto done;
        }
    }
    rc = decode(&f, &p, c, ad, err, errlen);
done:
    st_close(&f);
    return rc;
}
