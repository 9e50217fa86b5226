/* format.c: the CLI's human output (short values, key: value records, tables) and JSON. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

const char *cli_format(const msgpack_object *o, char *buf, size_t n)
{
    if (qlora_is_nil(o))
        return qlora_str(NULL, "-", buf, n);
    switch (o->type) {
    case MSGPACK_OBJECT_BOOLEAN: return qlora_str(NULL, o->via.boolean ? "yes" : "no", buf, n);
    case MSGPACK_OBJECT_POSITIVE_INTEGER: snprintf(buf, n, "%llu", (unsigned long long)o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: snprintf(buf, n, "%lld", (long long)o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: snprintf(buf, n, "%.6g", o->via.f64); break;
    case MSGPACK_OBJECT_STR: return qlora_str(o, "", buf, n);
    case MSGPACK_OBJECT_BIN: snprintf(buf, n, "(%u bytes)", o->via.bin.size); break;
    case MSGPACK_OBJECT_ARRAY: {
        size_t used = 0;
        buf[0] = 0;
        for (uint32_t i = 0; i < o->via.array.size && used + 1 < n; i++) {
            char item[256];
            used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? "," : "",
                                     cli_format(&o->via.array.ptr[i], item, sizeof item));
        }
        break;
    }
    default: snprintf(buf, n, "(%s)", o->type == MSGPACK_OBJECT_MAP ? "map" : "ext"); break;
    }
    return buf;
}

const char *cli_format_fixed(const msgpack_object *o, int decimals, char *buf, size_t n)
{
    double v = qlora_num(o, NAN);
    if (isnan(v))
        return qlora_str(NULL, "-", buf, n);
    snprintf(buf, n, "%.*f", decimals, v);
    return buf;
}

const char *cli_format_time(const msgpack_object *o, char *buf, size_t n)
{
    double t = qlora_num(o, -1);
    struct tm tm;
    time_t s = (time_t)t;
    if (t < 0 || !localtime_r(&s, &tm) || !strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm))
        return cli_format(o, buf, n);
    return buf;
}

void cli_print_json(const msgpack_object *o)
{
    qlora_write_json(stdout, o);
    putchar('\n');
    fflush(stdout); /* streams are read line by line as they come */
}

/* Keys holding Unix times, shown as dates. */
static int is_time_key(const msgpack_object *k)
{
    static const char suffix[] = "_at";
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size > 3 &&
           !memcmp(k->via.str.ptr + k->via.str.size - 3, suffix, 3);
}

void cli_print_fields(const msgpack_object *map, int indent)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key, *v = &map->via.map.ptr[i].val;
        char key[128], val[1024];
        cli_format(k, key, sizeof key);
        if (v->type == MSGPACK_OBJECT_MAP) {
            printf("%*s%s:\n", indent, "", key);
            cli_print_fields(v, indent + 2);
            continue;
        }
        printf("%*s%-*s %s\n", indent, "", 20 - indent, strcat(key, ":"),
               is_time_key(k) ? cli_format_time(v, val, sizeof val) : cli_format(v, val, sizeof val));
    }
}

void cli_table_init(cli_table *t, int ncols, const char *const *head)
{
    *t = (cli_table){.ncols = ncols, .head = head};
}

void cli_table_row(cli_table *t, char row[][CLI_CELL])
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        char **cells = realloc(t->cells, cap * (size_t)t->ncols * sizeof *cells);
        if (!cells) {
            t->failed = 1;
            return;
        }
        t->cells = cells;
        t->cap = cap;
    }
    char **dst = t->cells + t->nrows * (size_t)t->ncols;
    for (int c = 0; c < t->ncols; c++)
        dst[c] = strdup(row[c]);
    for (int c = 0; c < t->ncols; c++)
        if (!dst[c])
            t->failed = 1;
    t->nrows++;
}

static void table_print(const cli_table *t)
{
    int width[32] = {0}; /* no table here has more columns */
    for (int c = 0; c < t->ncols && c < 32; c++) {
        width[c] = (int)strlen(t->head[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            const char *s = t->cells[r * (size_t)t->ncols + (size_t)c];
            if (s && (int)strlen(s) > width[c])
                width[c] = (int)strlen(s);
        }
    }
    for (size_t r = 0; r <= t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++) {
            const char *s = r == 0 ? t->head[c] : t->cells[(r - 1) * (size_t)t->ncols + (size_t)c];
            if (c + 1 < t->ncols)
                printf("%-*s  ", width[c], s ? s : "?");
            else
                printf("%s\n", s ? s : "?");
        }
    }
    if (t->failed)
        fprintf(stderr, "qlora: out of memory: some rows are missing\n");
}

void cli_table_finish(cli_table *t, const char *empty)
{
    if (t->nrows == 0)
        printf("%s\n", empty);
    else
        table_print(t);
    for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
}
