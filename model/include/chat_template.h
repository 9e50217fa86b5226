/* chat_template.h: a model's chat template (Jinja), rendered the way Hugging Face
 * transformers' apply_chat_template renders it: jinja2's ImmutableSandboxedEnvironment with
 * trim_blocks and lstrip_blocks, the loopcontrols extension, the globals raise_exception and
 * strftime_now, and transformers' own tojson (json.dumps with ensure_ascii=False).
 *
 * Only a subset of Jinja is implemented: the one the templates of Llama 2/3/3.x, Mistral,
 * Qwen2.5/Qwen3, SmolLM, Zephyr, Gemma and Phi-3 use (docs/chat_templates.md lists it).
 * Anything else is refused when the template is compiled or, for a filter, test or method
 * reached only at render time, when it is reached, with a message naming the construct and
 * its line:column. A compiled template is read-only: it may be rendered from many threads. */
#ifndef QLORA_CHAT_TEMPLATE_H
#define QLORA_CHAT_TEMPLATE_H

#include <stddef.h>

#include "json.h"

typedef struct chat_template chat_template;

/* Bounds that keep a hostile template or conversation from exhausting stack, memory or time. */
#define CHAT_MAX_SOURCE   ((size_t)1 << 20)   /* template bytes */
#define CHAT_MAX_NESTING  64                  /* blocks and expressions nested in each other */
#define CHAT_MAX_OUTPUT   ((size_t)16 << 20)  /* rendered bytes (default of max_output) */
#define CHAT_MAX_MEMORY   ((size_t)64 << 20)  /* values made while rendering */
#define CHAT_MAX_STEPS    10000000L           /* loop iterations and expression steps */

/* Compiles len bytes of Jinja source. name (e.g. "tokenizer_config.json:chat_template") starts
 * every message about the template. Returns 0, or -1 with "NAME:LINE:COL: why" in err. */
int chat_template_compile(chat_template **t, const char *src, size_t len, const char *name,
                          char *err, size_t errlen);
void chat_template_free(chat_template *t);

typedef struct {
    int add_generation_prompt;
    const char *bos_token;   /* NULL: undefined in the template, as transformers leaves it */
    const char *eos_token;   /* when the tokenizer has none */
    /* A JSON object whose members become further variables (enable_thinking, tools,
     * documents, ...), or NULL. tools and documents are none unless given, as in
     * transformers. */
    const json_value *extra;
    long long now;           /* strftime_now's time, seconds since 1970 (local time zone);
                                < 0: the current time */
    size_t max_output;       /* 0: CHAT_MAX_OUTPUT */
} chat_options;

/* Renders t for messages (a JSON array of objects: role, content and whatever else the
 * template reads, e.g. tool_calls or reasoning_content). JSON numbers that are integral
 * are ints in the template, others floats. On success *out is a malloc'd NUL-terminated
 * UTF-8 string of *out_len bytes (the caller frees it) and 0 is returned; otherwise -1
 * with a message in err: the template's own for raise_exception ("NAME:LINE:COL:
 * raise_exception: MESSAGE"), else naming the construct that failed. */
int chat_render(const chat_template *t, const json_value *messages, const chat_options *opt,
                char **out, size_t *out_len, char *err, size_t errlen);

/* A model directory's template, as transformers finds it: DIR/chat_template.jinja if it
 * exists, else tokenizer_config.json's chat_template (a string, or a list of {name,
 * template} objects of which "default" is taken). *src is malloc'd; *bos and *eos (either
 * may be NULL) get tokenizer_config.json's bos_token / eos_token (a string or an object
 * with "content"), malloc'd, or NULL when absent. *name points to a static description of
 * where the template came from. Returns 0, or -1 with a message naming the file and field
 * (also when the model has no template). */
int chat_template_load_dir(const char *dir, char **src, char **bos, char **eos,
                           const char **name, char *err, size_t errlen);

/* The built-in templates, X(enum name, name): declared once for every list of them (the
 * daemon's and the tool's chat_template choice, messages naming the choices). */
#define CHAT_TEMPLATE_BUILTINS(X)                                                         \
    X(CHAT_CHATML, "chatml") X(CHAT_LLAMA2, "llama2") X(CHAT_LLAMA3, "llama3")            \
    X(CHAT_MISTRAL, "mistral") X(CHAT_ZEPHYR, "zephyr") X(CHAT_GEMMA, "gemma") X(CHAT_PHI3, "phi3")

/* A built-in template by name, or NULL; for models without a template of their own. */
const char *chat_template_builtin(const char *name);
/* The names of the built-ins, NULL-terminated. */
extern const char *const chat_template_builtin_names[];

#endif
