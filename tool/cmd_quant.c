/* cmd_quant.c: qlora-tool roundtrip, codes, dynamic-map. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

int cmd_roundtrip(int argc, char **argv)
{
    const char *cmd = "roundtrip";
    const char *format = NULL;
    int block = 0 /* the format's */, rows = -1, cols = -1, no_dq = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(a, "--no-double-quant")) {
            no_dq = 1;
        } else if (!strcmp(a, "--format") && has_value) {
            format = argv[++i];
        } else if (!strcmp(a, "--block") && has_value) {
            if (tool_parse_int(argv[++i], 1, 1 << 30, &block) < 0)
                return tool_fail(cmd, "--block: '%s' is not a positive integer", argv[i]);
        } else if (!strcmp(a, "--rows") && has_value) {
            if (tool_parse_int(argv[++i], 1, 1 << 30, &rows) < 0)
                return tool_fail(cmd, "--rows: '%s' is not a positive integer", argv[i]);
        } else if (!strcmp(a, "--cols") && has_value) {
            if (tool_parse_int(argv[++i], 1, 1 << 30, &cols) < 0)
                return tool_fail(cmd, "--cols: '%s' is not a positive integer", argv[i]);
        } else {
            return tool_fail(cmd, "unexpected argument '%s' (or it lacks its value)", a);
        }
    }
    if (!format)
        return tool_fail(cmd, "--format is required (%s)", qt_format_list());
    if (rows < 0 || cols < 0)
        return tool_fail(cmd, "--rows and --cols are required");
    qt_format f;
    if (qt_format_parse(format, &f) < 0)
        return tool_fail(cmd, "--format: unknown format '%s' (%s)", format, qt_format_list());
    qt_spec spec = qt_spec_default(f);
    if (block)
        spec.block = block;
    if (no_dq)
        spec.double_quant = 0;
    char err[256];
    if (qt_spec_check(spec, err, sizeof err) < 0)
        return tool_fail(cmd, "%s", err);

    size_t n = (size_t)rows * (size_t)cols, want = n * sizeof(float);
    unsigned char *in;
    size_t got;
    if (tool_read_all(stdin, &in, &got) < 0)
        return tool_fail(cmd, "cannot read stdin");
    if (got != want) {
        free(in);
        return tool_fail(cmd, "stdin holds %zu bytes; --rows %d --cols %d needs %zu", got, rows,
                         cols, want);
    }
    float *x = malloc(want), *out = malloc(want);
    if (!x || !out) {
        free(in), free(x), free(out);
        return tool_fail(cmd, "out of memory for %zu values", n);
    }
    memcpy(x, in, want); /* float32 little-endian on this (x86-64) target */
    free(in);
    qt_matrix m;
    int rc = qt_quantize(&m, x, rows, cols, spec, err, sizeof err);
    free(x);
    if (rc < 0) {
        free(out);
        return tool_fail(cmd, "%s", err);
    }
    qt_dequantize_rows(&m, 0, rows, out);
    qt_free(&m);
    size_t put = fwrite(out, 1, want, stdout);
    free(out);
    if (put != want || fflush(stdout) != 0) {
        fprintf(stderr, "qlora-tool %s: cannot write stdout\n", cmd);
        return 1;
    }
    return 0;
}

static void print_values(const float *v, int n)
{
    for (int i = 0; i < n; i++)
        printf("%.9g\n", v[i]);
}

int cmd_codes(int argc, char **argv)
{
    qt_format f;
    if (argc != 2 || qt_format_parse(argv[1], &f) < 0 || !qt_code_table(f))
        return tool_fail("codes", "expects one argument, nf4 or fp4");
    print_values(qt_code_table(f), 16);
    return 0;
}

int cmd_dynamic_map(int argc, char **argv)
{
    (void)argv;
    if (argc != 1)
        return tool_fail("dynamic-map", "takes no arguments");
    print_values(qt_dynamic_map(), 256);
    return 0;
}
