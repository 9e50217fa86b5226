/* watch.c: following a job (progress bar or plain lines) and keeping its loss history.
 *
 * The protocol gives a job's loss curve only as job.watch events while the job runs; the
 * job record holds the last values. So every watch appends what it sees to a history
 * file in the user's cache ($XDG_CACHE_HOME/qlora, else ~/.cache/qlora), named by job id
 * and creation time (ids restart with a fresh database), and `plot` reads it back. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"

#define BAR_WIDTH 30

typedef struct {
    cli *x;
    double total, step, loss, eval_loss, tokens_per_s;
    double eta_s;     /* the daemon's estimate, when its events carry one */
    double t0, step0; /* time and step of the first progress event, for the ETA */
    FILE *history;    /* "step loss eval_loss" lines, nan where unknown */
    int bar_shown;    /* a bar is on the current terminal line */
} watch_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The history file's path for a job record; -1 if there is no cache directory. */
static int history_path(const msgpack_object *job, char *path, size_t n, int create_dir)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[3000];
    if (xdg && xdg[0])
        snprintf(dir, sizeof dir, "%s", xdg);
    else if (home && home[0])
        snprintf(dir, sizeof dir, "%s/.cache", home);
    else
        return -1;
    if (create_dir && mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -1;
    size_t len = strlen(dir);
    snprintf(dir + len, sizeof dir - len, "/qlora");
    if (create_dir && mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -1;
    int w = snprintf(path, n, "%s/job-%.0f-%.0f.tsv", dir, qlora_num(qlora_get(job, "job_id"), 0),
                     qlora_num(qlora_get(job, "created_at"), 0) * 1e6);
    return w > 0 && (size_t)w < n ? 0 : -1;
}

static void format_eta(double s, char *buf, size_t n)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%d:%02d", (int)s / 60, (int)s % 60);
}

static void show_progress(watch_state *w)
{
    char eta[32], eval[32] = "-";
    double done = w->step - w->step0, left = w->total - w->step;
    format_eta(!isnan(w->eta_s) ? w->eta_s : done > 0 ? (now_s() - w->t0) / done * left : NAN, eta, sizeof eta);
    if (!isnan(w->eval_loss))
        snprintf(eval, sizeof eval, "%.4f", w->eval_loss);
    if (!w->x->tty) {
        printf("step %.0f/%.0f loss %.4f eval_loss %s tokens/s %.0f eta %s\n", w->step, w->total,
               w->loss, eval, w->tokens_per_s, eta);
        return;
    }
    int fill = w->total > 0 ? (int)(BAR_WIDTH * w->step / w->total) : 0;
    if (fill > BAR_WIDTH)
        fill = BAR_WIDTH;
    printf("\r\033[K[%.*s%*s] %.0f/%.0f loss %.4f eval %s %.0f tok/s ETA %s",
           fill, "##############################", BAR_WIDTH - fill, "", w->step, w->total, w->loss,
           eval, w->tokens_per_s, eta);
    w->bar_shown = 1;
}

/* Prints a line of its own, below the bar if one is showing. */
static void show_line(watch_state *w, const char *fmt, const char *a, double b)
{
    if (w->bar_shown)
        putchar('\n');
    w->bar_shown = 0;
    printf(fmt, a, b);
}

static int on_event(const msgpack_object *ev, void *userdata)
{
    watch_state *w = userdata;
    char type[32], state[32];
    qlora_str(qlora_get(ev, "type"), "", type, sizeof type);
    double step = qlora_num(qlora_get(ev, "step"), w->step);
    if (!strcmp(type, "progress")) {
        if (isnan(w->t0))
            w->t0 = now_s(), w->step0 = step;
        w->step = step;
        w->total = qlora_num(qlora_get(ev, "total_steps"), w->total);
        w->loss = qlora_num(qlora_get(ev, "loss"), w->loss);
        w->tokens_per_s = qlora_num(qlora_get(ev, "tokens_per_s"), w->tokens_per_s);
        w->eta_s = qlora_num(qlora_get(ev, "eta_s"), NAN);
        if (w->history)
            fprintf(w->history, "%.0f %.9g nan\n", step, w->loss);
    } else if (!strcmp(type, "eval")) {
        w->eval_loss = qlora_num(qlora_get(ev, "eval_loss"), qlora_num(qlora_get(ev, "loss"), NAN));
        if (w->history)
            fprintf(w->history, "%.0f nan %.9g\n", step, w->eval_loss);
    }
    if (w->x->json) {
        cli_print_json(ev);
        return 0;
    }
    if (!strcmp(type, "progress") || (!strcmp(type, "eval") && w->x->tty))
        show_progress(w);
    else if (!strcmp(type, "eval"))
        printf("eval at step %.0f: eval_loss %.4f\n", step, w->eval_loss);
    else if (!strcmp(type, "checkpoint") && !w->x->tty)
        printf("checkpoint at step %.0f\n", step);
    else if (!strcmp(type, "state"))
        show_line(w, "state: %s (step %.0f)\n", qlora_str(qlora_get(ev, "state"), "?", state, sizeof state), step);
    fflush(stdout);
    return 0;
}

int cli_watch_job(cli *x, unsigned long long job_id)
{
    qlora_args a;
    qlora_args_init(&a);
    cli_args_job(&a, job_id);
    qlora_reply r;
    watch_state w = {.x = x, .loss = NAN, .eval_loss = NAN, .tokens_per_s = NAN, .eta_s = NAN, .t0 = NAN};
    int rc = cli_request(x, "job.get", &a, NULL, NULL, &r); /* for the history file's name */
    if (rc == EXIT_OK) {
        char path[4096];
        w.total = qlora_num(qlora_get(&r.result, "total_steps"), 0);
        w.step = qlora_num(qlora_get(&r.result, "step"), 0);
        if (history_path(&r.result, path, sizeof path, 1) == 0)
            w.history = fopen(path, "a");
        if (!w.history)
            fprintf(stderr, "qlora: note: cannot keep the loss history for `plot` (no writable cache directory)\n");
    }
    qlora_reply_free(&r);
    if (rc == EXIT_OK)
        rc = cli_request(x, "job.watch", &a, on_event, &w, &r);
    qlora_args_free(&a);
    if (w.history)
        fclose(w.history);
    if (w.bar_shown)
        putchar('\n');
    if (rc != EXIT_OK)
        return rc;
    char state[32], error[512], name[128], loss[32], eval[32];
    qlora_str(qlora_get(&r.result, "state"), "?", state, sizeof state);
    if (x->json)
        cli_print_json(&r.result);
    else if (!strcmp(state, "succeeded"))
        printf("job %llu succeeded: loss %s, eval loss %s, adapter %s@%.0f\n", job_id,
               cli_format_fixed(qlora_get(&r.result, "loss"), 4, loss, sizeof loss),
               cli_format_fixed(qlora_get(&r.result, "eval_loss"), 4, eval, sizeof eval),
               qlora_str(qlora_get(&r.result, "adapter"), "?", name, sizeof name),
               qlora_num(qlora_get(&r.result, "adapter_version"), 0));
    if (strcmp(state, "succeeded"))
        fprintf(stderr, "qlora %s: job %llu %s%s%s\n", x->cmd->name, job_id, state,
                qlora_is_nil(qlora_get(&r.result, "error")) ? "" : ": ",
                qlora_str(qlora_get(&r.result, "error"), "", error, sizeof error));
    qlora_reply_free(&r);
    return strcmp(state, "succeeded") ? EXIT_SERVER : EXIT_OK;
}

static int by_step(const void *a, const void *b)
{
    double x = ((const cli_point *)a)->step, y = ((const cli_point *)b)->step;
    return (x > y) - (x < y);
}

int cli_history_load(cli *x, const msgpack_object *job, cli_point **points, size_t *n)
{
    (void)x;
    char path[4096];
    *points = NULL;
    *n = 0;
    FILE *f = history_path(job, path, sizeof path, 0) == 0 ? fopen(path, "r") : NULL;
    if (!f)
        return EXIT_OK;
    size_t cap = 0;
    cli_point p, *v = NULL;
    while (fscanf(f, "%lf %lf %lf", &p.step, &p.loss, &p.eval_loss) == 3) {
        if (*n == cap) {
            cli_point *nv = realloc(v, (cap = cap ? 2 * cap : 256) * sizeof *v);
            if (!nv) {
                free(v);
                fclose(f);
                fprintf(stderr, "qlora: out of memory reading %s\n", path);
                return EXIT_SERVER;
            }
            v = nv;
        }
        v[(*n)++] = p;
    }
    fclose(f);
    /* One point per step: several watches may have seen the same step, and a progress
     * and an eval event of one step are two lines. */
    qsort(v, *n, sizeof *v, by_step);
    size_t m = 0;
    for (size_t i = 0; i < *n; i++) {
        if (m > 0 && v[m - 1].step == v[i].step) {
            if (!isnan(v[i].loss))
                v[m - 1].loss = v[i].loss;
            if (!isnan(v[i].eval_loss))
                v[m - 1].eval_loss = v[i].eval_loss;
        } else {
            v[m++] = v[i];
        }
    }
    *n = m;
    *points = v;
    return EXIT_OK;
}
