/* jobs_history.c: a job's metric history (step, loss, lr, grad norm, tokens/s; and its
 * evaluations), kept in its record so that any client can plot any job, finished or not,
 * without having watched it (job.history).
 *
 * Each series holds at most HISTORY_MAX points. When it is full every other point goes and
 * the spacing a new point needs to be kept doubles, so a long job keeps an evenly thinned
 * curve of bounded size (the stored record stays under ~20 KB whatever the step count);
 * the latest point is always there (a "tail" point replaced by the next one until it is
 * far enough from the last kept one). All of it is changed and packed under the jobs lock. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"
#include "mp.h"

#define STEP_WIDTH 4 /* loss, lr, grad_norm, tokens_per_s */
#define EVAL_WIDTH 1 /* eval_loss */

/* Keeps the points where keep[i], in order. */
static void compact(job_series *s, int width, const unsigned char *keep)
{
    size_t w = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (!keep[i])
            continue;
        s->step[w] = s->step[i];
        for (int k = 0; k < width; k++)
            s->value[k][w] = s->value[k][i];
        w++;
    }
    s->n = w;
}

/* Every other point, and the last: the spacing a kept point needs doubles. */
static void thin(job_series *s, int width)
{
    unsigned char keep[HISTORY_MAX + 1];
    for (size_t i = 0; i < s->n; i++)
        keep[i] = i % 2 == 0 || i + 1 == s->n;
    compact(s, width, keep);
    s->gap = s->gap ? 2 * s->gap : (s->n > 1 ? s->step[1] - s->step[0] : 1);
}

/* Room for want points (at most HISTORY_MAX + 1: one over the bound until it thins). */
static int reserve(job_series *s, int width, size_t want)
{
    if (want <= s->cap)
        return 0;
    size_t cap = s->cap ? 2 * s->cap : 16;
    while (cap < want)
        cap *= 2;
    if (cap > HISTORY_MAX + 1)
        cap = HISTORY_MAX + 1;
    int *step = realloc(s->step, cap * sizeof *step);
    if (!step)
        return -1;
    s->step = step;
    for (int k = 0; k < width; k++) {
        float *v = realloc(s->value[k], cap * sizeof *v);
        if (!v)
            return -1;
        s->value[k] = v;
    }
    s->cap = cap;
    return 0;
}

/* Adds the point (step, values[width]); out of memory it is dropped (the history is a
 * record for plots, not state training depends on). */
static void series_add(job_series *s, int width, int step, const double *values)
{
    if (s->tail) /* the previous latest point: this one replaces it */
        s->n--, s->tail = 0;
    if (reserve(s, width, s->n + 1) < 0)
        return;
    s->tail = s->n > 0 && step - s->step[s->n - 1] < s->gap;
    s->step[s->n] = step;
    for (int k = 0; k < width; k++)
        s->value[k][s->n] = (float)values[k];
    s->n++;
    if (s->n > HISTORY_MAX)
        thin(s, width), s->tail = 0;
}

static void series_truncate(job_series *s, int step)
{
    while (s->n && s->step[s->n - 1] > step)
        s->n--;
    s->tail = 0;
}

static void series_free(job_series *s)
{
    free(s->step);
    for (int k = 0; k < 4; k++)
        free(s->value[k]);
    memset(s, 0, sizeof *s);
}

void job_history_step(job_history *h, const train_progress *p)
{
    const double v[4] = {p->loss, p->lr, p->grad_norm, p->tokens_per_s};
    series_add(&h->steps, STEP_WIDTH, p->step, v);
}

void job_history_eval(job_history *h, int step, double eval_loss)
{
    series_add(&h->evals, EVAL_WIDTH, step, &eval_loss);
}

void job_history_truncate(job_history *h, int step)
{
    series_truncate(&h->steps, step);
    series_truncate(&h->evals, step);
}

void job_history_free(job_history *h)
{
    series_free(&h->steps);
    series_free(&h->evals);
}

/* ---- on the wire and in the store ---- */

static const char *const step_keys[STEP_WIDTH] = {"loss", "lr", "grad_norm", "tokens_per_s"};
static const char *const eval_keys[] = {"eval_loss"};

static void pack_key(msgpack_packer *pk, const char *key)
{
    mp_str(pk, key);
}

static void pack_floats(msgpack_packer *pk, const float *v, size_t n)
{
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++)
        isfinite(v[i]) ? msgpack_pack_float(pk, v[i]) : msgpack_pack_nil(pk);
}

static void pack_steps(msgpack_packer *pk, const job_series *s)
{
    msgpack_pack_array(pk, s->n);
    for (size_t i = 0; i < s->n; i++)
        msgpack_pack_int(pk, s->step[i]);
}

size_t job_history_entries(void)
{
    return 2 + 4 + 1 + 3; /* step, eval_step, the five series, max_points, gap, eval_gap */
}

void job_history_pack_entries(msgpack_packer *pk, const job_history *h)
{
    pack_key(pk, "max_points");
    msgpack_pack_int(pk, HISTORY_MAX);
    pack_key(pk, "gap");
    msgpack_pack_int(pk, h->steps.gap);
    pack_key(pk, "eval_gap");
    msgpack_pack_int(pk, h->evals.gap);
    pack_key(pk, "step");
    pack_steps(pk, &h->steps);
    for (int k = 0; k < STEP_WIDTH; k++) {
        pack_key(pk, step_keys[k]);
        pack_floats(pk, h->steps.value[k], h->steps.n);
    }
    pack_key(pk, "eval_step");
    pack_steps(pk, &h->evals);
    pack_key(pk, eval_keys[0]);
    pack_floats(pk, h->evals.value[0], h->evals.n);
}

void job_history_pack(msgpack_packer *pk, const void *value)
{
    msgpack_pack_map(pk, job_history_entries());
    job_history_pack_entries(pk, value);
}

/* The array at key of map o as n numbers (nil: NAN) into out (step: ints), or -1. */
static int read_array(const msgpack_object *o, const char *key, size_t *n, int *steps, float *out)
{
    const msgpack_object *a = mp_get(o, key);
    if (!a || a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size > HISTORY_MAX + 1)
        return -1;
    if (*n != SIZE_MAX && a->via.array.size != *n)
        return -1;
    *n = a->via.array.size;
    for (size_t i = 0; i < *n; i++) {
        const msgpack_object *e = &a->via.array.ptr[i];
        double x;
        if (e->type == MSGPACK_OBJECT_NIL && out)
            x = NAN;
        else if (!mp_number(e, &x))
            return -1;
        if (steps) {
            if (x != floor(x) || x < 0 || x > 2147483647.0 || (i && x <= steps[i - 1]))
                return -1; /* steps increase */
            steps[i] = (int)x;
        } else {
            out[i] = (float)x;
        }
    }
    return 0;
}

static int read_series(const msgpack_object *o, const char *step_key, const char *const *keys, int width,
                       job_series *s)
{
    size_t n = SIZE_MAX;
    const msgpack_object *a = mp_get(o, step_key);
    if (!a || a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size > HISTORY_MAX)
        return -1;
    if (reserve(s, width, a->via.array.size) < 0)
        return -1;
    if (read_array(o, step_key, &n, s->step, NULL) < 0)
        return -1;
    for (int k = 0; k < width; k++)
        if (read_array(o, keys[k], &n, NULL, s->value[k]) < 0)
            return -1;
    s->n = n;
    return 0;
}

/* A stored history that does not read is dropped, not the job: it only serves plots. */
int job_history_unpack(const msgpack_object *o, void *value, const void *ctx, char *err, size_t errlen)
{
    (void)ctx, (void)err, (void)errlen;
    job_history *h = value;
    memset(h, 0, sizeof *h);
    const int is_map = o->type == MSGPACK_OBJECT_MAP;
    const msgpack_object *gap = is_map ? mp_get(o, "gap") : NULL, *eval_gap = is_map ? mp_get(o, "eval_gap") : NULL;
    double g, eg;
    if (!gap || !eval_gap || !mp_number(gap, &g) || !mp_number(eval_gap, &eg) || !(g >= 0 && g < 1e9) ||
        !(eg >= 0 && eg < 1e9) || read_series(o, "step", step_keys, STEP_WIDTH, &h->steps) < 0 ||
        read_series(o, "eval_step", eval_keys, EVAL_WIDTH, &h->evals) < 0) {
        job_history_free(h);
        return 0;
    }
    h->steps.gap = (int)g, h->evals.gap = (int)eg;
    return 0;
}
