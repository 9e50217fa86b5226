/* plot.c: qlora plot: a job's training and eval loss against step as an SVG line chart. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum { W = 720, H = 420, LEFT = 70, RIGHT = 20, TOP = 40, BOTTOM = 50 };

typedef struct {
    double x0, x1, y0, y1;
} plot_range;

static double px(const plot_range *r, double x)
{
    return LEFT + (x - r->x0) / (r->x1 - r->x0) * (W - LEFT - RIGHT);
}

static double py(const plot_range *r, double y)
{
    return H - BOTTOM - (y - r->y0) / (r->y1 - r->y0) * (H - TOP - BOTTOM);
}

/* A round tick spacing (1, 2 or 5 times a power of ten) giving about five ticks. */
static double tick_step(double span)
{
    double raw = span / 5, p = pow(10, floor(log10(raw))), f = raw / p;
    return p * (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10);
}

static void svg_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

/* One series (eval = 0: loss, 1: eval loss) as a polyline, with dots when sparse. */
static void series(FILE *f, const plot_range *r, const cli_point *p, size_t n, int eval,
                   const char *color)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        count += !isnan(eval ? p[i].eval_loss : p[i].loss);
    if (count == 0)
        return;
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", color);
    for (size_t i = 0; i < n; i++) {
        double y = eval ? p[i].eval_loss : p[i].loss;
        if (!isnan(y))
            fprintf(f, "%.1f,%.1f ", px(r, p[i].step), py(r, y));
    }
    fputs("\"/>\n", f);
    for (size_t i = 0; i < n && (eval || count <= 40); i++) {
        double y = eval ? p[i].eval_loss : p[i].loss;
        if (!isnan(y))
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(r, p[i].step),
                    py(r, y), color);
    }
}

static int write_svg(FILE *f, const char *title, const cli_point *p, size_t n)
{
    plot_range r = {p[0].step, p[n - 1].step, INFINITY, -INFINITY};
    for (size_t i = 0; i < n; i++) {
        const double v[2] = {p[i].loss, p[i].eval_loss};
        for (int k = 0; k < 2; k++)
            if (!isnan(v[k]))
                r.y0 = fmin(r.y0, v[k]), r.y1 = fmax(r.y1, v[k]);
    }
    if (r.x1 <= r.x0)
        r.x0 -= 1, r.x1 += 1;
    double pad = r.y1 > r.y0 ? 0.05 * (r.y1 - r.y0) : 0.5;
    r.y0 -= pad, r.y1 += pad;

    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    fputs("<text x=\"360\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">", f);
    svg_text(f, title);
    fputs("</text>\n", f);
    double dy = tick_step(r.y1 - r.y0), dx = tick_step(r.x1 - r.x0);
    /* Ticks at whole multiples, counted in integers so that no rounding piles up. */
    for (double k = ceil(r.y0 / dy), y = k * dy; y <= r.y1; k++, y = k * dy)
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                   "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                LEFT, W - RIGHT, py(&r, y), py(&r, y), LEFT - 6, py(&r, y) + 4, y);
    for (double k = ceil(r.x0 / dx), x = k * dx; x <= r.x1; k++, x = k * dx)
        fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\" stroke=\"#ddd\"/>"
                   "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n",
                px(&r, x), px(&r, x), TOP, H - BOTTOM, px(&r, x), H - BOTTOM + 16, x);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n",
            LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n", (LEFT + W - RIGHT) / 2, H - 12);
    fprintf(f, "<text transform=\"translate(18 %d) rotate(-90)\" text-anchor=\"middle\">loss (nats/token)</text>\n",
            (TOP + H - BOTTOM) / 2);
    series(f, &r, p, n, 0, "#1f77b4");
    series(f, &r, p, n, 1, "#ff7f0e");
    fprintf(f, "<g transform=\"translate(%d %d)\"><line x1=\"0\" x2=\"20\" y1=\"0\" y2=\"0\" stroke=\"#1f77b4\" "
               "stroke-width=\"2\"/><text x=\"26\" y=\"4\">training loss</text><line x1=\"0\" x2=\"20\" "
               "y1=\"18\" y2=\"18\" stroke=\"#ff7f0e\" stroke-width=\"2\"/><text x=\"26\" y=\"22\">eval "
               "loss</text></g>\n", W - RIGHT - 130, TOP + 16);
    fputs("</svg>\n", f);
    return ferror(f) ? -1 : 0;
}

static msgpack_object str_object(const char *s)
{
    return (msgpack_object){.type = MSGPACK_OBJECT_STR, .via.str = {(uint32_t)strlen(s), s}};
}

static int is_finished(const char *state)
{
    return !strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "cancelled");
}

int cmd_plot(cli *x, int argc, char **argv)
{
    cli_opt opts[] = {{"-o", 1, NULL}};
    const char *arg = NULL;
    unsigned long long id = 0;
    int rc = cli_parse(x, argc, argv, opts, 1, &arg, 1, 1, NULL);
    if (rc || (rc = cli_job_id(x, arg, &id)))
        return rc;
    if (!opts[0].value)
        return cli_usage(x, "-o FILE.svg is required");
    qlora_args a;
    qlora_args_init(&a);
    cli_args_job(&a, id);
    qlora_reply r;
    rc = cli_request(x, "job.get", &a, NULL, NULL, &r);
    qlora_args_free(&a);
    char state[32];
    qlora_str(qlora_get(&r.result, "state"), "", state, sizeof state);
    /* An unfinished job is followed to its end: that is how its history arrives. The
     * watch's own output goes to stdout; with --json it is JSON lines like `watch`. */
    if (rc == EXIT_OK && !is_finished(state))
        rc = cli_watch_job(x, id);
    cli_point *p = NULL;
    size_t n = 0;
    if (rc == EXIT_OK || rc == EXIT_SERVER) /* a failed job's curve is still worth a look */
        rc = r.result.type == MSGPACK_OBJECT_MAP ? cli_history_load(x, id, &p, &n) : rc;
    if (rc == EXIT_OK && n == 0) {
        fprintf(stderr, "qlora plot: job %llu has no loss history (it trained no step)\n", id);
        rc = EXIT_SERVER;
    }
    if (rc == EXIT_OK) {
        char title[256], name[128], method[32];
        snprintf(title, sizeof title, "job %llu: %s (%s)", id,
                 qlora_str(qlora_get(&r.result, "adapter"), "?", name, sizeof name),
                 qlora_str(qlora_get(&r.result, "method"), "?", method, sizeof method));
        FILE *f = fopen(opts[0].value, "w");
        int bad = !f || write_svg(f, title, p, n) < 0;
        if ((f && fclose(f) != 0) || bad) {
            fprintf(stderr, "qlora plot: cannot write '%s'\n", opts[0].value);
            rc = EXIT_USAGE;
        } else if (x->json) {
            msgpack_object_kv kv[3] = {
                {str_object("file"), str_object(opts[0].value)},
                {str_object("job_id"), {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = id}},
                {str_object("points"), {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = n}},
            };
            cli_print_json(&(msgpack_object){.type = MSGPACK_OBJECT_MAP, .via.map = {3, kv}});
        } else {
            printf("wrote %s (%zu steps)\n", opts[0].value, n);
        }
    }
    free(p);
    qlora_reply_free(&r);
    return rc;
}
