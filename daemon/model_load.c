/* model_load.c: the base model (and the recovery teacher) as qlorad loads it, through
 * the model cache (docs/architecture.md, The model cache); in the core library, since the
 * job runner and the fuzzers call it as well as main. */
#include "qlorad.h"

static void cache_log(void *ctx, const char *line)
{
    (void)ctx;
    qd_log(LOG_WARN, "%s", line);
}

int qd_load_model(const qd *d, qt_spec spec, llama_model *m, char *err, size_t errlen)
{
    llama_model_cache cache = {.dir = d->cache_dir[0] ? d->cache_dir : NULL, .log = cache_log};
    int rc = llama_load_cached(m, d->model_dir, spec, &cache, err, errlen);
    if (rc == 0 && (cache.state == LLAMA_CACHE_HIT || cache.state == LLAMA_CACHE_BUILT))
        qd_log(LOG_INFO, "model cache %s: %s", cache.path, cache.state == LLAMA_CACHE_HIT ? "mapped" : "written");
    return rc;
}
