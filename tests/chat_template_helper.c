/* chat_template_helper.c: chat templates for the Python test (test_chat_template.py).
 *
 * usage: chat_template_helper SOURCE CASES.json
 * SOURCE is file:PATH (a .jinja file), dir:PATH (a model directory, through
 * chat_template_load_dir) or builtin:NAME. CASES.json is an array of objects with messages
 * and optionally add_generation_prompt, bos_token, eos_token (else the model directory's),
 * extra (more variables) and now (strftime_now's time). For each case, on stdout: "ok N\n"
 * or "err N\n", then N bytes (the rendering or the message), then "\n". A template that
 * does not load or compile: the message on stderr, exit status 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "json.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0, k;
    do {
        if (n + 65536 + 1 > cap) {
            cap = cap * 2 + 65536 + 1;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        k = fread(buf + n, 1, 65536, f);
        n += k;
    } while (k == 65536);
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static void emit(const char *tag, const char *s, size_t n)
{
    printf("%s %zu\n", tag, n);
    fwrite(s, 1, n, stdout);
    putchar('\n');
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: chat_template_helper SOURCE CASES.json\n");
        return 1;
    }
    char err[4096];
    char *src = NULL, *bos = NULL, *eos = NULL;
    const char *name = argv[1];
    size_t len = 0;
    if (!strncmp(argv[1], "file:", 5)) {
        if (!(src = slurp(argv[1] + 5, &len))) {
            fprintf(stderr, "%s: cannot read\n", argv[1] + 5);
            return 2;
        }
    } else if (!strncmp(argv[1], "dir:", 4)) {
        if (chat_template_load_dir(argv[1] + 4, &src, &bos, &eos, &name, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        len = strlen(src);
    } else if (!strncmp(argv[1], "builtin:", 8)) {
        const char *b = chat_template_builtin(argv[1] + 8);
        if (!b || !(src = strdup(b))) {
            fprintf(stderr, "%s: no such built-in template\n", argv[1] + 8);
            return 2;
        }
        len = strlen(src);
    } else {
        fprintf(stderr, "SOURCE: file:PATH, dir:PATH or builtin:NAME\n");
        return 1;
    }
    chat_template *t;
    int rc = chat_template_compile(&t, src, len, name, err, sizeof err);
    free(src);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        free(bos);
        free(eos);
        return 2;
    }
    json_value *cases = json_parse_file(argv[2], (size_t)1 << 30, err, sizeof err);
    if (!cases || cases->type != JSON_ARRAY) {
        fprintf(stderr, "%s\n", cases ? "cases: not an array" : err);
        json_free(cases);
        chat_template_free(t);
        free(bos);
        free(eos);
        return 1;
    }
    for (size_t i = 0; i < cases->count; i++) {
        const json_value *cs = &cases->items[i];
        const json_value *v;
        chat_options o = {.now = -1, .bos_token = bos, .eos_token = eos};
        long now;
        if ((v = json_get(cs, "add_generation_prompt")) && v->type == JSON_BOOL)
            o.add_generation_prompt = v->boolean;
        if ((v = json_get(cs, "bos_token")))
            o.bos_token = v->type == JSON_STRING ? v->string : NULL;
        if ((v = json_get(cs, "eos_token")))
            o.eos_token = v->type == JSON_STRING ? v->string : NULL;
        if (json_get_int(cs, "now", 0, 4000000000L, &now) == 0)
            o.now = now;
        o.extra = json_get(cs, "extra");
        char *out;
        size_t n;
        if (chat_render(t, json_get(cs, "messages"), &o, &out, &n, err, sizeof err) < 0) {
            emit("err", err, strlen(err));
        } else {
            emit("ok", out, n);
            free(out);
        }
    }
    fflush(stdout);
    json_free(cases);
    chat_template_free(t);
    free(bos);
    free(eos);
    return 0;
}
