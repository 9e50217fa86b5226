/* tokenizer_config.c: what encoding adds around a text and where generation stops, from
 * the files around a tokenizer (see tokenizer.h): tokenizer.json's post_processor, then
 * tokenizer_config.json as transformers' AutoTokenizer reads it (bos_token, eos_token; for
 * the Llama family, LlamaTokenizerFast.update_post_processor rebuilds the template from
 * add_bos_token and add_eos_token), then generation_config.json's or config.json's
 * eos_token_id, as transformers' generate() takes it (the generation config wins). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizer_impl.h"

#define MAX_CONFIG_SIZE (16u << 20)

/* The TemplateProcessing v: its single's special tokens before and after $A. */
static int template(tok_tokenizer *t, const json_value *v, const char *field, const char *path, char *err,
                    size_t errlen)
{
    const json_value *single = json_get(v, "single"), *specials = json_get(v, "special_tokens");
    char buf[80];
    if (!single || single->type != JSON_ARRAY || !specials || specials->type != JSON_OBJECT)
        return tok_fail(err, errlen, path, "%s: single (an array) and special_tokens (an object) are required",
                        field);
    t->n_prefix = t->n_suffix = 0;
    int seen_a = 0;
    for (size_t i = 0; i < single->count; i++) {
        const json_value *item = &single->items[i], *seq = json_get(item, "Sequence"),
                         *sp = json_get(item, "SpecialToken");
        if (seq) {
            if (!tok_is_str(json_get(seq, "id"), "A") || seen_a)
                return tok_fail(err, errlen, path, "%s.single[%zu]: the sequence must be $A, once", field, i);
            seen_a = 1;
            continue;
        }
        const json_value *name = json_get(sp, "id");
        if (!name || name->type != JSON_STRING)
            return tok_fail(err, errlen, path, "%s.single[%zu]: neither a Sequence nor a SpecialToken", field, i);
        const json_value *tok = json_get(specials, name->string), *ids = json_get(tok, "ids");
        if (!ids || ids->type != JSON_ARRAY)
            return tok_fail(err, errlen, path, "%s.special_tokens: no ids for %s", field,
                            tok_show(name, buf, sizeof buf));
        for (size_t k = 0; k < ids->count; k++) {
            const json_value *id = &ids->items[k];
            int *n = seen_a ? &t->n_suffix : &t->n_prefix;
            int32_t *to = seen_a ? t->suffix : t->prefix;
            if (id->type != JSON_NUMBER || id->number < 0 || id->number >= t->vocab_size ||
                id->number != (double)(long)id->number)
                return tok_fail(err, errlen, path, "%s.special_tokens[%s].ids[%zu]: not an id in 0..%d", field,
                                tok_show(name, buf, sizeof buf), k, t->vocab_size - 1);
            if (*n == TOK_MAX_TEMPLATE)
                return tok_fail(err, errlen, path, "%s.single: more than %d ids on one side of $A", field,
                                TOK_MAX_TEMPLATE);
            to[(*n)++] = (int32_t)id->number;
        }
    }
    if (!seen_a)
        return tok_fail(err, errlen, path, "%s.single: no $A", field);
    const json_value *pair = json_get(v, "pair");
    if (pair && pair->type != JSON_ARRAY)
        return tok_fail(err, errlen, path, "%s.pair: not an array", field);
    return 0;
}

static int post_processor(tok_tokenizer *t, const json_value *v, const char *field, const char *path, char *err,
                          size_t errlen)
{
    const json_value *type = json_get(v, "type"), *list = json_get(v, "processors");
    char buf[80];
    if (!v || v->type == JSON_NULL || tok_is_str(type, "ByteLevel")) /* ByteLevel: offsets only */
        return 0;
    if (tok_is_str(type, "TemplateProcessing"))
        return template(t, v, field, path, err, errlen);
    if (tok_is_str(type, "Sequence") && list && list->type == JSON_ARRAY) {
        for (size_t i = 0; i < list->count; i++) {
            char sub[200];
            snprintf(sub, sizeof sub, "%.150s.processors[%zu]", field, i);
            if (post_processor(t, &list->items[i], sub, path, err, errlen) < 0)
                return -1;
        }
        return 0;
    }
    return tok_fail(err, errlen, path,
                    "%s: type %s is not supported (only null, ByteLevel, TemplateProcessing and a Sequence of them)",
                    field, tok_show(type, buf, sizeof buf));
}

/* dir/name parsed, or NULL with *rc 0 when the file does not exist (-1 on an error). */
static json_value *optional_file(const char *dir, const char *name, char *file, size_t filelen, int *rc, char *err,
                                 size_t errlen)
{
    struct stat st;
    snprintf(file, filelen, "%s/%s", dir, name);
    *rc = 0;
    if (stat(file, &st) < 0)
        return NULL;
    json_value *v = json_parse_file(file, MAX_CONFIG_SIZE, err, errlen);
    if (!v || v->type != JSON_OBJECT) {
        if (v)
            tok_fail(err, errlen, file, "not a JSON object");
        json_free(v);
        *rc = -1;
        return NULL;
    }
    return v;
}

/* The id of tokenizer_config.json's token field (a string, {"content": ...}, null or
 * absent: *id -1). */
static int config_token(const tok_tokenizer *t, const json_value *cfg, const char *key, int *id, const char *file,
                        char *err, size_t errlen)
{
    const json_value *v;
    if (json_get_token(cfg, key, &v) < 0)
        return tok_fail(err, errlen, file, "%s: not a string, {\"content\": string} or null", key);
    if (!v)
        return 0;
    *id = tok_token_id(t, v->string, v->len);
    if (*id < 0)
        return tok_fail(err, errlen, file, "%s: \"%.60s\" is not a token of the tokenizer", key, v->string);
    return 0;
}

static int config_bool(const json_value *cfg, const char *key, int dflt, int *out, const char *file, char *err,
                       size_t errlen)
{
    const json_value *v = json_get(cfg, key);
    *out = dflt;
    if (!v || v->type == JSON_NULL)
        return 0;
    if (v->type != JSON_BOOL)
        return tok_fail(err, errlen, file, "%s: not a boolean", key);
    *out = v->boolean;
    return 0;
}

/* The Python classes whose fast tokenizer rebuilds its post-processor from add_bos_token
 * and add_eos_token (update_post_processor in transformers). */
static int llama_family(const json_value *cls)
{
    static const char *const names[] = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer",
                                        "CodeLlamaTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (tok_is_str(cls, names[i]))
            return 1;
    return 0;
}

static int tokenizer_config(tok_tokenizer *t, const json_value *cfg, const char *file, char *err, size_t errlen)
{
    int add_bos, add_eos;
    t->bos_id = t->eos_id = -1;
    if (config_token(t, cfg, "bos_token", &t->bos_id, file, err, errlen) < 0 ||
        config_token(t, cfg, "eos_token", &t->eos_id, file, err, errlen) < 0)
        return -1;
    const json_value *cls = json_get(cfg, "tokenizer_class");
    int llama = llama_family(cls);
    if (config_bool(cfg, "add_bos_token", llama, &add_bos, file, err, errlen) < 0 ||
        config_bool(cfg, "add_eos_token", 0, &add_eos, file, err, errlen) < 0)
        return -1;
    if (!llama) {
        char buf[80];
        if (add_bos || add_eos)
            return tok_fail(err, errlen, file,
                            "%s: true with tokenizer_class %s is not supported (transformers rebuilds the "
                            "post-processor from it only for the Llama family)",
                            add_bos ? "add_bos_token" : "add_eos_token", tok_show(cls, buf, sizeof buf));
        return 0; /* the tokenizer.json's post_processor stands */
    }
    if ((add_bos && t->bos_id < 0) || (add_eos && t->eos_id < 0))
        return tok_fail(err, errlen, file, "%s: true but %s is null", add_bos && t->bos_id < 0 ? "add_bos_token" :
                        "add_eos_token", add_bos && t->bos_id < 0 ? "bos_token" : "eos_token");
    t->n_prefix = t->n_suffix = 0;
    if (add_bos)
        t->prefix[t->n_prefix++] = t->bos_id;
    if (add_eos)
        t->suffix[t->n_suffix++] = t->eos_id;
    return 0;
}

int tok_add_stop(tok_tokenizer *t, int id)
{
    for (size_t i = 0; i < t->n_stop; i++)
        if (t->stop[i] == id)
            return 0;
    int *s = realloc(t->stop, (t->n_stop + 1) * sizeof *s);
    if (!s)
        return -1;
    t->stop = s;
    t->stop[t->n_stop++] = id;
    return 0;
}

/* eos_token_id of a config file into the stop ids: 1 if it names some, 0 if absent. */
static int config_eos(tok_tokenizer *t, const json_value *cfg, const char *file, char *err, size_t errlen)
{
    const json_value *v = json_get(cfg, "eos_token_id");
    if (!v || v->type == JSON_NULL)
        return 0;
    size_t n = v->type == JSON_ARRAY ? v->count : 1;
    for (size_t i = 0; i < n; i++) {
        const json_value *id = v->type == JSON_ARRAY ? &v->items[i] : v;
        if (id->type != JSON_NUMBER || id->number < 0 || id->number >= t->vocab_size ||
            id->number != (double)(long)id->number)
            return tok_fail(err, errlen, file, "eos_token_id: not an id in 0..%d nor a list of them",
                            t->vocab_size - 1);
        if (tok_add_stop(t, (int)id->number) < 0)
            return tok_fail(err, errlen, file, "out of memory");
    }
    return n > 0;
}

int tok_load_config(tok_tokenizer *t, const json_value *root, const char *path, const char *dir, char *err,
                    size_t errlen)
{
    size_t filelen = strlen(dir) + 32;
    char *file = malloc(filelen);
    json_value *cfg = NULL;
    int rc = -1, found;
    if (!file)
        return tok_fail(err, errlen, path, "out of memory");
    if (!root) { /* tokenizer.bin: llama2.c's BOS first, and run.c stops at BOS or EOS */
        t->bos_id = 1, t->eos_id = 2;
        t->prefix[0] = 1, t->n_prefix = 1;
        t->special[1] = t->special[2] = 1;
        if (tok_add_stop(t, 1) < 0 || tok_add_stop(t, 2) < 0) {
            tok_fail(err, errlen, path, "out of memory");
            goto done;
        }
    } else {
        if (post_processor(t, json_get(root, "post_processor"), "post_processor", path, err, errlen) < 0)
            goto done;
        cfg = optional_file(dir, "tokenizer_config.json", file, filelen, &found, err, errlen);
        if (found < 0)
            goto done;
        if (cfg) {
            if (tokenizer_config(t, cfg, file, err, errlen) < 0)
                goto done;
        } else if (!t->byte_level) { /* LlamaTokenizerFast's own defaults */
            t->bos_id = tok_token_id(t, "<s>", 3);
            t->eos_id = tok_token_id(t, "</s>", 4);
        }
        json_free(cfg);
        cfg = NULL;
    }
    /* the generation config's eos_token_id wins over the model config's */
    static const char *const sources[] = {"generation_config.json", "config.json"};
    int named = 0;
    for (int i = 0; i < 2 && !named; i++) {
        cfg = optional_file(dir, sources[i], file, filelen, &found, err, errlen);
        if (found < 0 || (cfg && (named = config_eos(t, cfg, file, err, errlen)) < 0))
            goto done;
        json_free(cfg);
        cfg = NULL;
    }
    if (!named && t->eos_id >= 0 && tok_add_stop(t, t->eos_id) < 0) {
        tok_fail(err, errlen, path, "out of memory");
        goto done;
    }
    rc = 0;
done:
    json_free(cfg);
    free(file);
    return rc;
}
