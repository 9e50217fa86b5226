/* json.h: a small JSON reader (config.json, tokenizer.json, safetensors headers, token files).
 * Parses a whole text into a tree; limits depth so hostile input cannot exhaust the
 * stack; errors name the byte offset. */
#ifndef QLORA_JSON_H
#define QLORA_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    int boolean;
    double number;
    char *string;              /* JSON_STRING: UTF-8, NUL-terminated (len excludes it) */
    size_t len;
    size_t count;              /* JSON_ARRAY / JSON_OBJECT */
    struct json_value *items;  /* count values */
    char **keys;               /* JSON_OBJECT: count keys */
} json_value;

#define JSON_MAX_DEPTH 64

/* NULL on error, with a message naming the offset in err. */
json_value *json_parse(const char *text, size_t len, char *err, size_t errlen);
/* json_parse of a whole file (read through map_file) of at most max_size bytes; NULL with
 * "PATH: why" in err. */
json_value *json_parse_file(const char *path, size_t max_size, char *err, size_t errlen);
void json_free(json_value *v);
/* The member `key` of an object, or NULL. */
const json_value *json_get(const json_value *obj, const char *key);
/* A token member as Hugging Face's tokenizer_config.json writes one (bos_token, eos_token...):
 * a string, or an AddedToken object {"content": string}. 0 with *out the string value, or
 * NULL when absent or null; -1 (with *out NULL) when it is neither. */
int json_get_token(const json_value *obj, const char *key, const json_value **out);
/* A number member that is an integer in [lo, hi]: 0, or -1 (missing / wrong type / range). */
int json_get_int(const json_value *obj, const char *key, long lo, long hi, long *out);

#endif
