/* store.h: the daemon's persistent state in one LMDB environment.
 *
 * Named databases: adapters (name, NUL, big-endian u32 version -> msgpack record, then the
 * tensors as raw little-endian f32 at a 64-byte aligned offset; see docs/storage.md), jobs (big-endian u64 id ->
 * msgpack record, owned by the caller), checkpoints (job id -> trainer state bytes),
 * files (SHA-256 of the bytes -> a small msgpack record, then the bytes), meta (schema
 * version, next job id, next version per name). Every write is one
 * transaction: a version, a checkpoint or a job record is whole or absent after a crash.
 * The map grows by itself on MDB_MAP_FULL up to the cap given at open; past it a write
 * fails with "store full" and leaves nothing behind. Safe to call from several threads
 * (MDB_NOTLS; readers never block the writer) and from several processes, but open a
 * directory once per process (LMDB's rule). */
#ifndef QLORA_STORE_H
#define QLORA_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "lora.h"

typedef struct store store;

/* Creates dir (0700, files 0600) if missing. map_cap: largest map size in bytes (0: 64 GiB). Clears stale
 * reader slots left by dead processes. A second process may open the same dir. */
int store_open(store **s, const char *dir, size_t map_cap, char *err, size_t errlen);
void store_close(store *s);

/* One writer process per store: qlorad holds this for its life, qlora-tool for a command
 * that writes. An exclusive flock on dir/qlorad.lock, which then names the holder ("who
 * (pid N)"). Returns the descriptor that holds the lock, or -1 with err naming the
 * holder. Creates dir (0700) if missing. */
#define STORE_LOCK_FILE "qlorad.lock"
int store_lock(const char *dir, const char *who, char *err, size_t errlen);
void store_unlock(int fd);

/* An adapter's name: STORE_NAME_RULE. Every buffer for one is STORE_NAME_MAX + 1 bytes. */
#define STORE_NAME_MAX 64
#define STORE_STR_(x) #x
#define STORE_STR(x) STORE_STR_(x)
#define STORE_NAME_RULE "[A-Za-z0-9._-]{1," STORE_STR(STORE_NAME_MAX) "}, not . or .."
int store_name_valid(const char *name);
/* 0, or -1 with "name 'NAME' is invalid: STORE_NAME_RULE" in err. */
int store_name_check(const char *name, char *err, size_t errlen);

typedef struct {
    char name[STORE_NAME_MAX + 1];
    uint32_t version;          /* assigned by store_adapter_put */
    int rank;
    float alpha;
    int rslora;
    unsigned targets;          /* bit per llama_linear */
    float dropout;
    uint64_t base_fingerprint;
    llama_config base;         /* the base's shape, set by the caller of put (dim, hidden_dim,
                                  n_layers, n_heads, n_kv_heads, head_size are stored; q_dim
                                  and kv_dim derived): loads check it, exports lay tensors out
                                  by it */
    double created_at;         /* Unix seconds, set by store_adapter_put */
    uint64_t job_id;           /* 0: imported */
    double eval_loss, ppl_base, ppl_adapter; /* NAN when absent */
    uint64_t size_bytes;       /* tensor bytes */
} store_adapter_info;

/* Called inside the publishing transaction with the version just assigned: returns a
 * malloc'd msgpack job record to write for job_id in the same transaction (NULL: none). */
typedef void *(*store_job_update_fn)(void *ctx, uint32_t version, size_t *len);

/* Publishes a new version of info->name (next after every version ever stored under the
 * name, deleted ones included) with the tensors of ad; fills info->version, created_at and
 * size_bytes, and takes rank, alpha, rslora, targets and dropout from ad; refuses an
 * info->base whose layout does not match ad. With job_fn, also
 * rewrites the job record of info->job_id and deletes its checkpoint, all in one
 * transaction. job_fn may be called again when the map grows and the transaction is
 * retried: the record of the last call is the one written. */
int store_adapter_put(store *s, store_adapter_info *info, const llama_lora *ad, store_job_update_fn job_fn,
                      void *job_ctx, char *err, size_t errlen);
/* version 0: the latest. Returns 0, or -1 with err; *not_found set when it does not exist. */
int store_adapter_get(store *s, const char *name, uint32_t version, store_adapter_info *info, int *not_found,
                      char *err, size_t errlen);
/* The record and the tensors, copied into ad (laid out for config c); refuses an adapter
 * stored for another shape than c (c may be &info->base of a store_adapter_get). */
int store_adapter_load(store *s, const char *name, uint32_t version, const llama_config *c,
                       store_adapter_info *info, llama_lora *ad, int *not_found, char *err, size_t errlen);
/* Every stored version, sorted by name then version; *out malloc'd. */
int store_adapter_list(store *s, store_adapter_info **out, size_t *n, char *err, size_t errlen);
/* version 0: every version of name. *deleted: how many went. */
int store_adapter_delete(store *s, const char *name, uint32_t version, int *deleted, char *err, size_t errlen);

/* Jobs: the records are the caller's msgpack bytes. Ids start at 1 and are never reused. */
int store_job_next_id(store *s, uint64_t *id, char *err, size_t errlen);
int store_job_put(store *s, uint64_t id, const void *rec, size_t len, char *err, size_t errlen);
/* *rec malloc'd; *not_found when absent. */
int store_job_get(store *s, uint64_t id, void **rec, size_t *len, int *not_found, char *err, size_t errlen);
/* Calls fn for every job in id order (the record valid only during the call); stops at the
 * first nonzero return of fn and returns it. */
int store_job_each(store *s, int (*fn)(void *ctx, uint64_t id, const void *rec, size_t len), void *ctx,
                   char *err, size_t errlen);

/* Checkpoints: trainer_state bytes per job, replaced in one transaction; optionally the
 * job record rewritten in the same transaction. */
int store_checkpoint_put(store *s, uint64_t job_id, const void *state, size_t len, const void *job_rec,
                         size_t job_len, char *err, size_t errlen);
int store_checkpoint_get(store *s, uint64_t job_id, void **state, size_t *len, int *not_found, char *err,
                         size_t errlen);

/* Deletes a job's record and its checkpoint in one transaction; *not_found when the
 * record is absent. */
int store_job_delete(store *s, uint64_t id, int *not_found, char *err, size_t errlen);

/* Files: bytes stored once under their content address, "file-" + the lowercase hex of
 * their SHA-256 (STORE_FILE_ID_LEN characters). */
#define STORE_FILE_ID_LEN (5 + 64)
#define STORE_FILE_NAME_MAX 128
#define STORE_FILE_PURPOSE_MAX 32

typedef struct {
    char id[STORE_FILE_ID_LEN + 1];
    uint64_t bytes;
    char filename[STORE_FILE_NAME_MAX + 1]; /* as given to put, "" when none */
    char purpose[STORE_FILE_PURPOSE_MAX + 1];
    double created_at;                      /* Unix seconds of the first put */
} store_file_info;

/* The id of len bytes at data. */
void store_file_id(const void *data, size_t len, char id[STORE_FILE_ID_LEN + 1]);
/* "file-" and 64 lowercase hex digits. */
int store_file_id_valid(const char *id);
/* Stores the bytes unless bytes of the same id are stored already (then the first put's
 * record stays: *existed = 1). filename and purpose are cut to their maxima and must not
 * hold NUL; info filled either way. */
int store_file_put(store *s, const void *data, size_t len, const char *filename, const char *purpose,
                   store_file_info *info, int *existed, char *err, size_t errlen);
/* The record and, when data is not NULL, a malloc'd copy of the bytes, verified against the
 * id (a mismatch is an error saying the file is corrupt). *not_found when absent. */
int store_file_get(store *s, const char *id, store_file_info *info, void **data, size_t *len, int *not_found,
                   char *err, size_t errlen);
/* Every file's record, in id order; *out malloc'd. */
int store_file_list(store *s, store_file_info **out, size_t *n, char *err, size_t errlen);
/* *deleted: 1, or 0 when there was no such file. */
int store_file_delete(store *s, const char *id, int *deleted, char *err, size_t errlen);

/* Sizes for status: bytes of the environment's data file in use. */
int store_stat(store *s, size_t *used_bytes, size_t *n_adapters, char *err, size_t errlen);

#endif
