/* watch.c: following a job (progress bar or plain lines), and reading its loss history
 * from the daemon (job.history: the job record keeps it, so any client can plot any job). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define BAR_WIDTH 30

typedef struct {
    cli *x;
    double total, step, loss, eval_loss, tokens_per_s;
    double eta_s;     /* the daemon's estimate, when its events carry one */
    double t0, step0; /* time and step of the first progress event, for the ETA */
    int bar_shown;    /* a bar is on the current terminal line */
} watch_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
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
    } else if (!strcmp(type, "eval")) {
        w->eval_loss = qlora_num(qlora_get(ev, "eval_loss"), qlora_num(qlora_get(ev, "loss"), NAN));
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
    int rc = cli_request(x, "job.get", &a, NULL, NULL, &r); /* where it stands */
    if (rc == EXIT_OK) {
        w.total = qlora_num(qlora_get(&r.result, "total_steps"), 0);
        w.step = qlora_num(qlora_get(&r.result, "step"), 0);
    }
    qlora_reply_free(&r);
    if (rc == EXIT_OK)
        rc = cli_request(x, "job.watch", &a, on_event, &w, &r);
    qlora_args_free(&a);
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

/* The array at key of m as numbers (nil: NAN); its length into *n. */
static const msgpack_object *array_of(const msgpack_object *m, const char *key, size_t *n)
{
    const msgpack_object *a = qlora_get(m, key);
    if (!a || a->type != MSGPACK_OBJECT_ARRAY)
        return NULL;
    *n = a->via.array.size;
    return a->via.array.ptr;
}

int cli_history_load(cli *x, unsigned long long job_id, cli_point **points, size_t *n)
{
    *points = NULL;
    *n = 0;
    qlora_args a;
    qlora_args_init(&a);
    cli_args_job(&a, job_id);
    qlora_reply r;
    int rc = cli_request(x, "job.history", &a, NULL, NULL, &r);
    qlora_args_free(&a);
    size_t ns = 0, nl = 0, ne = 0, nel = 0;
    const msgpack_object *step = rc == EXIT_OK ? array_of(&r.result, "step", &ns) : NULL;
    const msgpack_object *loss = rc == EXIT_OK ? array_of(&r.result, "loss", &nl) : NULL;
    const msgpack_object *eval_step = rc == EXIT_OK ? array_of(&r.result, "eval_step", &ne) : NULL;
    const msgpack_object *eval_loss = rc == EXIT_OK ? array_of(&r.result, "eval_loss", &nel) : NULL;
    if (rc == EXIT_OK && (!step || !loss || !eval_step || !eval_loss || ns != nl || ne != nel)) {
        fprintf(stderr, "qlora: job.history of job %llu: not the arrays of the protocol\n", job_id);
        rc = EXIT_SERVER;
    }
    cli_point *v = rc == EXIT_OK ? malloc((ns + ne + 1) * sizeof *v) : NULL;
    if (rc == EXIT_OK && !v) {
        fprintf(stderr, "qlora: out of memory for the history of job %llu\n", job_id);
        rc = EXIT_SERVER;
    }
    /* the two series merged by step: one point per step, with the eval loss where there is one */
    size_t i = 0, e = 0, m = 0;
    while (v && (i < ns || e < ne)) {
        double si = i < ns ? qlora_num(&step[i], NAN) : INFINITY, se = e < ne ? qlora_num(&eval_step[e], NAN) : INFINITY;
        cli_point p = {si <= se ? si : se, NAN, NAN};
        if (si <= se)
            p.loss = qlora_num(&loss[i++], NAN);
        if (se <= si)
            p.eval_loss = qlora_num(&eval_loss[e++], NAN);
        v[m++] = p;
    }
    qlora_reply_free(&r);
    *points = v;
    *n = m;
    return rc;
}
