/* args.c: the CLI's option parsing and argument checking, shared by every command. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_usage(cli *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qlora %s: ", x->cmd->name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nusage: qlora %s %s\n", x->cmd->name, x->cmd->usage);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_parse(cli *x, int argc, char **argv, cli_opt *opts, int nopts, const char **pos,
              int min_pos, int max_pos, int *npos)
{
    int n = 0, options_done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || a[1] == 0) {
            if (n == max_pos)
                return cli_usage(x, "unexpected argument '%s'", a);
            pos[n++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            options_done = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_command_help(x->cmd);
            return -1;
        }
        if (!strcmp(a, "--json")) {
            x->json = 1;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        cli_opt *o = NULL;
        for (int k = 0; k < nopts && !o; k++)
            if (strlen(opts[k].name) == len && !strncmp(opts[k].name, a, len))
                o = &opts[k];
        if (!o)
            return cli_usage(x, "unknown option '%.*s'", (int)len, a);
        if (!o->takes_value) {
            if (eq)
                return cli_usage(x, "option %s takes no value", o->name);
            o->value = "";
        } else if (eq) {
            o->value = eq + 1;
        } else if (i + 1 < argc) {
            o->value = argv[++i];
        } else {
            return cli_usage(x, "option %s needs a value", o->name);
        }
    }
    if (n < min_pos)
        return cli_usage(x, "missing argument (%d expected, %d given)", min_pos, n);
    if (npos)
        *npos = n;
    return EXIT_OK;
}

const char *cli_opt_value(const cli_opt *opts, int nopts, const char *name)
{
    for (int k = 0; k < nopts; k++)
        if (!strcmp(opts[k].name, name))
            return opts[k].value;
    return NULL;
}

int cli_number(cli *x, const char *what, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return cli_usage(x, "%s: '%s' is not a number from %g to %g", what, s, lo, hi);
    *out = v;
    return EXIT_OK;
}

int cli_name_version(cli *x, char *spec, long *version)
{
    *version = 0;
    char *at = strrchr(spec, '@');
    if (at) {
        double v = 0;
        if (cli_number(x, "version", at + 1, 1, 1e15, &v) != EXIT_OK)
            return EXIT_USAGE;
        if (v != (double)(long)v)
            return cli_usage(x, "version '%s' is not a whole number", at + 1);
        *version = (long)v;
        *at = 0;
    }
    if (!spec[0])
        return cli_usage(x, "the adapter name is empty");
    return EXIT_OK;
}

int cli_count_args(const cli_opt *opts, int nopts, const cli_arg_spec *spec, int nspec)
{
    int n = 0;
    for (int i = 0; i < nspec; i++)
        n += cli_opt_value(opts, nopts, spec[i].opt) != NULL;
    return n;
}

int cli_pack_args(cli *x, msgpack_packer *pk, const cli_opt *opts, int nopts,
                  const cli_arg_spec *spec, int nspec)
{
    for (int i = 0; i < nspec; i++) {
        const cli_arg_spec *s = &spec[i];
        const char *v = cli_opt_value(opts, nopts, s->opt);
        if (!v)
            continue;
        qlora_pack_str(pk, s->key);
        double d = 0;
        if (s->type == 'b') {
            msgpack_pack_true(pk);
        } else if (s->type == 's') {
            qlora_pack_str(pk, v);
        } else if (cli_number(x, s->opt, v, s->lo, s->hi, &d) != EXIT_OK) {
            return EXIT_USAGE;
        } else if (s->type == 'i') {
            if (d != (double)(long long)d)
                return cli_usage(x, "%s: '%s' is not a whole number", s->opt, v);
            msgpack_pack_int64(pk, (long long)d);
        } else {
            msgpack_pack_double(pk, d);
        }
    }
    return EXIT_OK;
}
