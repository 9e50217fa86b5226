/* chat_template_load.c: where a chat template comes from: a model directory (as
 * transformers looks: chat_template.jinja, else tokenizer_config.json's chat_template; a GGUF
 * file's tokenizer.chat_template), or
 * a built-in for models without one, each copied from a real model's tokenizer_config.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "chat_template.h"
#include "gguf.h"
#include "json.h"

#define MAX_CONFIG ((size_t)64 << 20)

/* The built-ins, byte for byte as the named models publish them (the Jinja escapes \\n
 * stay escapes; a C "\n" is a newline of the template itself). */
static const struct {
    const char *name, *src;
} builtins[] = {
    /* teknium/OpenHermes-2.5-Mistral-7B (the ChatML template) */
    {"chatml",
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
     "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
     "{% endif %}"},
    /* meta-llama/Llama-2-7b-chat-hf */
    {"llama2",
     "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
     "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set "
     "system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == "
     "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
     "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != "
     "false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + "
     "message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
     "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
     "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% "
     "endfor %}"},
    /* meta-llama/Meta-Llama-3-8B-Instruct */
    {"llama3",
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
     "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
     "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ "
     "content }}{% endfor %}{% if add_generation_prompt %}{{ "
     "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"},
    /* mistralai/Mistral-7B-Instruct-v0.2 */
    {"mistral",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % "
     "2 == 0) %}{{ raise_exception('Conversation roles must alternate "
     "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
     "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] "
     "+ eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% "
     "endif %}{% endfor %}"},
    /* HuggingFaceH4/zephyr-7b-beta */
    {"zephyr",
     "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
     "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + "
     "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ "
     "'<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and "
     "add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"},
    /* google/gemma-7b-it */
    {"gemma",
     "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% "
     "endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) "
     "%}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% "
     "endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = "
     "message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
     "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% "
     "endif %}"},
    /* microsoft/Phi-3-mini-4k-instruct (its first published template) */
    {"phi3",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + "
     "'\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] "
     "== 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}"},
};

#define BUILTIN_NAME_(e, name) name,
const char *const chat_template_builtin_names[] = {CHAT_TEMPLATE_BUILTINS(BUILTIN_NAME_) NULL};
#undef BUILTIN_NAME_
_Static_assert(sizeof builtins / sizeof builtins[0] + 1 ==
                   sizeof chat_template_builtin_names / sizeof chat_template_builtin_names[0],
               "a source for every built-in name");

const char *chat_template_builtin(const char *name)
{
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++)
        if (!strcmp(builtins[i].name, name))
            return builtins[i].src;
    return NULL;
}

static char *read_text(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > CHAT_MAX_SOURCE + 8192) {
                snprintf(err, errlen, "%s: more than %zu bytes", path, CHAT_MAX_SOURCE);
                goto fail;
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
        }
        size_t k = fread(buf + n, 1, 4096, f);
        n += k;
        if (k < 4096) {
            if (ferror(f)) {
                snprintf(err, errlen, "%s: read error", path);
                goto fail;
            }
            break;
        }
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
fail:
    free(buf);
    fclose(f);
    return NULL;
}

/* bos_token / eos_token: a string, or an AddedToken object {"content": ...}; NULL if absent */
static int token_of(const json_value *cfg, const char *key, char **out, const char *path,
                    char *err, size_t errlen)
{
    *out = NULL;
    const json_value *v;
    if (json_get_token(cfg, key, &v) < 0) {
        snprintf(err, errlen, "%s: %s: not a string", path, key);
        return -1;
    }
    if (!v)
        return 0;
    if (!(*out = strdup(v->string))) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    return 0;
}

/* The text of the token whose id the key names, malloc'd into *out (NULL when the file
 * names none). */
static int gguf_token_text(const gguf_file *f, const char *key, char **out, char *err, size_t errlen)
{
    const gguf_kv *tokens = gguf_find_kv(f, "tokenizer.ggml.tokens"), *kv = gguf_find_kv(f, key);
    int64_t id;
    *out = NULL;
    if (!kv)
        return 0;
    if (!tokens || tokens->type != GGUF_ARRAY || tokens->elem != GGUF_STRING ||
        gguf_kv_int(kv, 0, (int64_t)tokens->count - 1, &id) < 0) {
        snprintf(err, errlen, "%s: at byte %zu: key '%s' is not an id of tokenizer.ggml.tokens", f->path, kv->offset,
                 key);
        return -1;
    }
    gguf_str *all = malloc((size_t)tokens->count * sizeof *all);
    if (all) {
        gguf_arr_strs(tokens, all);
        *out = strndup(all[id].s, all[id].n);
    }
    free(all);
    if (!*out) {
        snprintf(err, errlen, "%s: out of memory", f->path);
        return -1;
    }
    return 0;
}

/* A GGUF file's tokenizer.chat_template, and its BOS and EOS tokens' texts. */
static int load_gguf(const char *path, char **src, char **bos, char **eos, const char **name, char *err,
                     size_t errlen)
{
    gguf_file f;
    if (gguf_open(&f, path, err, errlen) < 0)
        return -1;
    const gguf_kv *kv = gguf_find_kv(&f, "tokenizer.chat_template");
    gguf_str t;
    int rc = -1;
    if (!kv)
        snprintf(err, errlen, "%s: key 'tokenizer.chat_template' missing (the model has no chat template; name a "
                 "built-in one)", path);
    else if (gguf_kv_str(kv, &t) < 0)
        snprintf(err, errlen, "%s: at byte %zu: key 'tokenizer.chat_template' is not a string", path, kv->offset);
    else if (!(*src = strndup(t.s, t.n)))
        snprintf(err, errlen, "%s: out of memory", path);
    else if (gguf_token_text(&f, "tokenizer.ggml.bos_token_id", bos, err, errlen) == 0 &&
             gguf_token_text(&f, "tokenizer.ggml.eos_token_id", eos, err, errlen) == 0)
        rc = 0;
    gguf_close(&f);
    if (rc < 0) {
        free(*src), free(*bos), free(*eos);
        *src = *bos = *eos = NULL;
        return -1;
    }
    *name = "GGUF tokenizer.chat_template";
    return 0;
}

int chat_template_load_dir(const char *dir, char **src, char **bos, char **eos,
                           const char **name, char *err, size_t errlen)
{
    *src = *bos = *eos = NULL;
    *name = NULL;
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISREG(st.st_mode) && gguf_is_file(dir))
        return load_gguf(dir, src, bos, eos, name, err, errlen);
    char path[4096], jinja[4096];
    if (snprintf(path, sizeof path, "%s/tokenizer_config.json", dir) >= (int)sizeof path ||
        snprintf(jinja, sizeof jinja, "%s/chat_template.jinja", dir) >= (int)sizeof jinja) {
        snprintf(err, errlen, "%.200s: path too long", dir);
        return -1;
    }
    json_value *cfg = NULL;
    if (stat(path, &st) == 0 && !(cfg = json_parse_file(path, MAX_CONFIG, err, errlen)))
        return -1;
    if (cfg && cfg->type != JSON_OBJECT) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        goto fail;
    }
    if (cfg && (token_of(cfg, "bos_token", bos, path, err, errlen) < 0 ||
                token_of(cfg, "eos_token", eos, path, err, errlen) < 0))
        goto fail;
    if (stat(jinja, &st) == 0) {
        size_t len;
        if (!(*src = read_text(jinja, &len, err, errlen)))
            goto fail;
        *name = "chat_template.jinja";
        json_free(cfg);
        return 0;
    }
    if (!cfg) {
        snprintf(err, errlen, "%s: no chat_template.jinja and no tokenizer_config.json", dir);
        goto fail;
    }
    const json_value *t = json_get(cfg, "chat_template");
    if (t && t->type == JSON_ARRAY) {
        const json_value *pick = NULL;
        for (size_t i = 0; i < t->count; i++) {
            const json_value *nm = json_get(&t->items[i], "name");
            const json_value *tp = json_get(&t->items[i], "template");
            if (t->items[i].type != JSON_OBJECT || !nm || nm->type != JSON_STRING || !tp ||
                tp->type != JSON_STRING) {
                snprintf(err, errlen, "%s: chat_template[%zu]: not a {name, template} object", path, i);
                goto fail;
            }
            if (!strcmp(nm->string, "default"))
                pick = tp;
        }
        if (!pick) {
            snprintf(err, errlen, "%s: chat_template: a list without a \"default\" template", path);
            goto fail;
        }
        t = pick;
    }
    if (!t || t->type == JSON_NULL) {
        snprintf(err, errlen, "%s: chat_template: missing (the model has no chat template; name a "
                 "built-in one)", path);
        goto fail;
    }
    if (t->type != JSON_STRING) {
        snprintf(err, errlen, "%s: chat_template: not a string or a list", path);
        goto fail;
    }
    if (!(*src = strdup(t->string))) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    *name = "tokenizer_config.json:chat_template";
    json_free(cfg);
    return 0;
fail:
    json_free(cfg);
    free(*bos);
    free(*eos);
    *bos = *eos = NULL;
    return -1;
}
