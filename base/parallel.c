/* parallel.c: the kernels' thread pool (see parallel.h).
 * Workers spin briefly before sleeping: a decode step calls several small kernels back
 * to back, and a condition-variable wake-up per call would cost more than the work. */
#include "parallel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 256
#define SPIN_ROUNDS 20000

static struct {
    pthread_once_t once;
    pthread_mutex_t busy;       /* held by the caller of the running parallel call */
    pthread_mutex_t lock;       /* guards the sleeping handshake */
    pthread_cond_t wake;
    int nthreads;               /* including the caller */
    int nworkers;               /* threads started so far */
    pthread_t workers[MAX_THREADS];
    unsigned first_seen[MAX_THREADS]; /* the generation a worker starts after */
    atomic_uint generation;     /* bumped for every parallel call */
    struct {                    /* thread t's share of the tasks: [next, end) */
        _Alignas(64) atomic_int next;
        int end;
    } share[MAX_THREADS];
    atomic_int done_workers;
    rt_task_fn fn;
    void *ctx;
} pool = {.once = PTHREAD_ONCE_INIT,
          .busy = PTHREAD_MUTEX_INITIALIZER,
          .lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER};

/* Each thread runs its own share first, in order, then helps with the others' (from their
 * front). Shares are the same contiguous ranges at every call, so work split the same way
 * from call to call (rows, mostly) stays with one thread and in its cache; the help
 * balances a thread the machine slows down. */
static void run_tasks(int thread)
{
    for (int o = 0; o < pool.nthreads; o++) {
        int q = (thread + o) % pool.nthreads, t;
        while ((t = atomic_fetch_add(&pool.share[q].next, 1)) < pool.share[q].end)
            pool.fn(pool.ctx, t, thread);
    }
}

static void *worker_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned seen = pool.first_seen[id];
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load(&pool.generation)) == seen && spins < SPIN_ROUNDS)
            spins++;
        if (gen == seen) {
            pthread_mutex_lock(&pool.lock);
            while ((gen = atomic_load(&pool.generation)) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = gen;
        if (id < pool.nthreads)
            run_tasks(id);
        atomic_fetch_add(&pool.done_workers, 1);
    }
    return NULL;
}

static int env_threads(void)
{
    const char *s = getenv("QLORA_THREADS");
    long n = s ? strtol(s, NULL, 10) : 0;
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

static void start_workers(int n)
{
    while (pool.nworkers < n - 1) {
        int id = pool.nworkers + 1;
        /* a worker added after parallel calls must not take the last one's generation
         * for news and acknowledge it (the callers hold pool.busy: it cannot move now) */
        pool.first_seen[id] = atomic_load(&pool.generation);
        if (pthread_create(&pool.workers[pool.nworkers], NULL, worker_main, (void *)(intptr_t)id)) {
            fprintf(stderr, "qlora: cannot start kernel thread %d; using %d\n", id, id);
            break;
        }
        pthread_detach(pool.workers[pool.nworkers]);
        pool.nworkers++;
    }
    pool.nthreads = pool.nworkers + 1 < n ? pool.nworkers + 1 : n;
}

static void init_pool(void)
{
    start_workers(env_threads());
}

int rt_threads(void)
{
    pthread_once(&pool.once, init_pool);
    return pool.nthreads;
}

void rt_set_threads(int n)
{
    pthread_once(&pool.once, init_pool);
    pthread_mutex_lock(&pool.busy);
    start_workers(n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : n);
    pthread_mutex_unlock(&pool.busy);
}

void rt_parallel(int ntasks, rt_task_fn fn, void *ctx)
{
    pthread_once(&pool.once, init_pool);
    if (ntasks <= 1 || pool.nthreads == 1 || pthread_mutex_trylock(&pool.busy) != 0) {
        for (int t = 0; t < ntasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    for (int t = 0; t < pool.nthreads; t++) {
        atomic_store(&pool.share[t].next, (int)((long)t * ntasks / pool.nthreads));
        pool.share[t].end = (int)((long)(t + 1) * ntasks / pool.nthreads);
    }
    atomic_store(&pool.done_workers, 0);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add(&pool.generation, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_tasks(0);
    /* Every started worker acknowledges the generation, so none can still be reading
     * pool.fn when the next call rewrites it. */
    while (atomic_load(&pool.done_workers) < pool.nworkers)
        ;
    pthread_mutex_unlock(&pool.busy);
}

typedef struct {
    rt_range_fn fn;
    void *ctx;
    size_t n, chunk;
} range_ctx;

static void range_task(void *p, int t, int thread)
{
    (void)thread;
    const range_ctx *c = p;
    size_t i0 = (size_t)t * c->chunk;
    c->fn(c->ctx, i0, c->n - i0 < c->chunk ? c->n : i0 + c->chunk);
}

void rt_parallel_for(size_t n, size_t item_work, rt_range_fn fn, void *ctx)
{
    /* up to 4 ranges per thread, so that a thread the machine takes away leaves little */
    size_t most = 4 * (size_t)rt_threads(), tasks = n / ((1u << 14) / (item_work ? item_work : 1) + 1);
    tasks = tasks < 1 ? 1 : tasks < most ? tasks : most;
    range_ctx c = {fn, ctx, n, (n + tasks - 1) / tasks};
    if (n)
        rt_parallel((int)((n + c.chunk - 1) / c.chunk), range_task, &c);
}
