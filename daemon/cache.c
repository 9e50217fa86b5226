/* cache.c: adapters loaded from the store for inference, kept in memory within a byte
 * budget (--adapter-cache-mb), least recently used evicted first. A request holds its
 * adapter by reference count for its whole duration: eviction, deletion and activation of
 * another adapter never free one in use. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qlorad.h"

struct adapter_cache {
    pthread_mutex_t lock;
    size_t budget, bytes, count;
    uint64_t clock;
    uint64_t forgets;   /* cache_forget calls: a load that saw another count may be stale */
    unsigned load_delay_ms; /* tests only: widens the window between a load and its insert */
    cached_adapter *list;
};

adapter_cache *cache_new(size_t budget_bytes)
{
    adapter_cache *c = calloc(1, sizeof *c);
    if (c) {
        pthread_mutex_init(&c->lock, NULL);
        c->budget = budget_bytes;
        /* A race of a load with a delete lasts microseconds; tests make it last long
         * enough to be certain (tests/test_daemon_small.py). */
        const char *delay = getenv("QLORAD_TEST_CACHE_LOAD_DELAY_MS");
        c->load_delay_ms = delay ? (unsigned)strtoul(delay, NULL, 10) % 10000 : 0;
    }
    return c;
}

static void drop(adapter_cache *c, cached_adapter **link)
{
    cached_adapter *a = *link;
    *link = a->next;
    c->bytes -= a->bytes;
    c->count--;
    llama_lora_free(&a->lora);
    free(a);
}

void cache_free(adapter_cache *c)
{
    if (!c)
        return;
    while (c->list)
        drop(c, &c->list);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* Under the lock: evicts unused adapters, oldest first, until within budget. */
static void evict(adapter_cache *c)
{
    while (c->bytes > c->budget) {
        cached_adapter **oldest = NULL;
        for (cached_adapter **p = &c->list; *p; p = &(*p)->next)
            if ((*p)->refs == 0 && (!oldest || (*p)->last_used < (*oldest)->last_used))
                oldest = p;
        if (!oldest)
            return; /* everything is in use: over budget until released */
        qd_log(LOG_DEBUG, "adapter cache: evicting %s@%u", (*oldest)->name, (*oldest)->version);
        drop(c, oldest);
    }
}

static cached_adapter *find(adapter_cache *c, const char *name, uint32_t version)
{
    for (cached_adapter *a = c->list; a; a = a->next)
        if (!a->stale && a->version == version && !strcmp(a->name, name))
            return a;
    return NULL;
}

qd_error cache_acquire(qd *d, const char *name, uint32_t version, cached_adapter **out, char *err, size_t errlen)
{
    adapter_cache *c = d->cache;
    store_adapter_info info;
    int nf = 0;
    *out = NULL;
    if (version == 0) { /* the latest: one small read to learn which */
        if (store_adapter_get(d->db, name, 0, &info, &nf, err, errlen) < 0)
            return nf ? (snprintf(err, errlen, "%s does not exist", name), ERR_NOT_FOUND) : ERR_INTERNAL;
        version = info.version;
    }
    pthread_mutex_lock(&c->lock);
    cached_adapter *a = find(c, name, version);
    if (a) {
        a->refs++;
        a->last_used = ++c->clock;
        pthread_mutex_unlock(&c->lock);
        *out = a;
        return ERR_NONE;
    }
    uint64_t forgets = c->forgets;
    pthread_mutex_unlock(&c->lock);
    /* load outside the lock: other requests go on meanwhile */
    a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return ERR_BUSY;
    }
    if (store_adapter_load(d->db, name, version, &d->model.cfg, &a->info, &a->lora, &nf, err, errlen) < 0) {
        free(a);
        if (nf)
            snprintf(err, errlen, "%s@%u does not exist", name, version);
        return nf ? ERR_NOT_FOUND : ERR_INTERNAL;
    }
    if (a->info.base_fingerprint != d->model.fingerprint) {
        snprintf(err, errlen, "%s@%u was trained on base %016" PRIx64 ", not this one (%016" PRIx64 ")", name, version,
                 a->info.base_fingerprint, d->model.fingerprint);
        llama_lora_free(&a->lora);
        free(a);
        return ERR_CONFLICT;
    }
    snprintf(a->name, sizeof a->name, "%s", name);
    a->version = version;
    a->bytes = a->lora.n_params * sizeof(float);
    a->refs = 1;
    if (c->load_delay_ms)
        nanosleep(&(struct timespec){c->load_delay_ms / 1000, c->load_delay_ms % 1000 * 1000000L}, NULL);
    pthread_mutex_lock(&c->lock);
    cached_adapter *raced = find(c, name, version);
    if (raced) { /* another request loaded it meanwhile: use that one */
        raced->refs++;
        raced->last_used = ++c->clock;
        pthread_mutex_unlock(&c->lock);
        llama_lora_free(&a->lora);
        free(a);
        *out = raced;
        return ERR_NONE;
    }
    /* adapter.delete removes from the store first, then forgets: a forget since the miss
     * above may have been for this very version, read before it went. This request may
     * still use it (it was read while it existed, like a request that held it before the
     * delete), but no later one finds it: stale, dropped when released. */
    a->stale = c->forgets != forgets;
    a->last_used = ++c->clock;
    a->next = c->list;
    c->list = a;
    c->bytes += a->bytes;
    c->count++;
    evict(c);
    pthread_mutex_unlock(&c->lock);
    qd_log(LOG_DEBUG, "adapter cache: loaded %s@%u (%zu bytes)", name, version, a->bytes);
    *out = a;
    return ERR_NONE;
}

void cache_release(qd *d, cached_adapter *a)
{
    adapter_cache *c = d->cache;
    pthread_mutex_lock(&c->lock);
    a->refs--;
    if (a->refs == 0 && a->stale) {
        for (cached_adapter **p = &c->list; *p; p = &(*p)->next)
            if (*p == a) {
                drop(c, p);
                break;
            }
    } else {
        evict(c);
    }
    pthread_mutex_unlock(&c->lock);
}

void cache_forget(qd *d, const char *name, uint32_t version)
{
    adapter_cache *c = d->cache;
    pthread_mutex_lock(&c->lock);
    c->forgets++;
    for (cached_adapter **p = &c->list; *p;) {
        cached_adapter *a = *p;
        if (!strcmp(a->name, name) && (!version || a->version == version)) {
            a->stale = 1;
            if (a->refs == 0) {
                drop(c, p);
                continue;
            }
        }
        p = &a->next;
    }
    pthread_mutex_unlock(&c->lock);
}

void cache_stats(qd *d, size_t *count, size_t *bytes)
{
    adapter_cache *c = d->cache;
    pthread_mutex_lock(&c->lock);
    *count = c->count;
    *bytes = c->bytes;
    pthread_mutex_unlock(&c->lock);
}
