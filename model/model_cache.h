/* model_cache.h: the quantized model in a file, mapped at the next load (model_cache.c;
 * docs/architecture.md, "The model cache", gives the format). Private to model/: model.c's
 * llama_load_cached is its one user. */
#ifndef QLORA_MODEL_CACHE_H
#define QLORA_MODEL_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* What a cache file must have been built from: the cache format and quant layout
 * versions, the spec, the config, and each source file's identity (real path, size,
 * mtime and ctime in ns, inode, device), as bytes compared whole. */
typedef struct {
    uint8_t *bytes;
    size_t len, cap;
} mcache_key;

/* Starts the key of model m (cfg, spec, tied and layout set). -1: out of memory. */
int mcache_key_init(mcache_key *k, const llama_model *m);
/* Adds a source file read by the load; -1 with a message when it cannot be stat'ed. */
int mcache_key_file(mcache_key *k, const char *path, char *err, size_t errlen);
void mcache_key_free(mcache_key *k);
int mcache_key_equal(const mcache_key *a, const mcache_key *b);

/* The cache file of model_dir in spec under cache_dir: <dir>/<name>-<format>-b<block>
 * [-dq]-<hash of the real path and spec>.qlc. -1 with a message when it does not fit. */
int mcache_path(char *out, size_t n, const char *cache_dir, const char *model_dir, qt_spec spec, char *err,
                size_t errlen);

/* Fills m (cfg, spec, tied and layout set; nothing else) from the cache file at path if
 * it holds exactly key: the linears, embeddings and head borrowed from its read-only
 * mapping (kept in m->cache_map), the fp32 vectors copied, the fingerprint. 1: no such
 * file; -1 with why (which names the fault) for a file refused; m's arrays are then
 * partly set: the caller frees them (llama_free). */
int mcache_load(llama_model *m, const char *path, const mcache_key *key, char *why, size_t whylen);
/* Writes m as the cache file at path, atomically (a temporary file beside it, fsync'ed,
 * renamed over it), creating the directories; -1 with a message. */
int mcache_store(const llama_model *m, const char *path, const mcache_key *key, char *err, size_t errlen);

/* The checksum of n bytes (n a multiple of 32) cached files carry: 64-bit Fletcher sums
 * over little-endian words in four lanes. */
uint64_t mcache_checksum(const void *p, size_t n);

#endif
