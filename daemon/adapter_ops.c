/* adapter_ops.c: the administration of stored adapters: adapter.list, get, delete,
 * activate, export and import in PEFT format (the adapters' bytes stay in the store; eval
 * and generate load them through the cache), their record on the wire, and how a request
 * names an adapter. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peft.h"
#include "qlorad.h"

int adapter_ref_parse(const msgpack_object *o, int versioned, char name[STORE_NAME_MAX + 1], uint32_t *version)
{
    const char *s = o->via.str.ptr, *end = s + o->via.str.size;
    const char *at = versioned ? memchr(s, '@', o->via.str.size) : NULL;
    size_t n = at ? (size_t)(at - s) : o->via.str.size;
    *version = 0;
    if (n > STORE_NAME_MAX || memchr(s, 0, o->via.str.size))
        return -1;
    memcpy(name, s, n);
    name[n] = 0;
    if (at) {
        uint64_t v = 0;
        if (at + 1 == end)
            return -1;
        for (const char *p = at + 1; p < end; p++) {
            if (*p < '0' || *p > '9' || (v = v * 10 + (uint64_t)(*p - '0')) > UINT32_MAX)
                return -1;
        }
        if (v == 0)
            return -1;
        *version = (uint32_t)v;
    }
    return store_name_valid(name) ? 0 : -1;
}

int adapter_name_arg(req *r, const char *field, const msgpack_object *o, char name[STORE_NAME_MAX + 1])
{
    uint32_t none;
    if (adapter_ref_parse(o, 0, name, &none) == 0)
        return 0;
    reply_error(r, ERR_INVALID_ARGUMENT, "%s: '%.*s' is not " STORE_NAME_RULE, field,
                (int)(o->via.str.size > 80 ? 80 : o->via.str.size), o->via.str.ptr);
    return -1;
}

/* ---- adapter records ---- */

const char *const lora_target_names[LIN_COUNT] = {
#define LINEAR_NAME(e, name, ...) [LIN_##e] = name,
    LLAMA_LINEARS(LINEAR_NAME)
#undef LINEAR_NAME
};

#define A(key, kind, member, flags) S_FIELD(store_adapter_info, key, kind, member, flags)
static const schema_field adapter_metrics_fields[] = {
    A("eval_loss", SK_REAL, eval_loss, 0),
    A("ppl_base", SK_REAL, ppl_base, 0),
    A("ppl_adapter", SK_REAL, ppl_adapter, 0),
};
static const schema adapter_metrics = SCHEMA(adapter_metrics_fields);
static const schema_field adapter_fields[] = {
    A("name", SK_CHARS, name, 0),
    A("version", SK_UINT, version, 0),
    A("rank", SK_INT, rank, 0),
    A("alpha", SK_REAL, alpha, 0),
    S_BITS(store_adapter_info, "targets", targets, lora_target_names, LIN_COUNT),
    A("base_fingerprint", SK_HEX64, base_fingerprint, 0),
    A("created_at", SK_REAL, created_at, 0),
    A("job_id", SK_UINT, job_id, SF_NIL_IF_ZERO), /* imported */
    S_GROUP("metrics", &adapter_metrics),
    A("size_bytes", SK_UINT, size_bytes, 0),
    A("rslora", SK_BOOL, rslora, 0),
};
#undef A
static const schema adapter_record = SCHEMA(adapter_fields);

/* The results of adapter.activate and adapter.export. */
typedef struct {
    char active[STORE_NAME_MAX + 1]; /* "": none */
    uint32_t version;
    const char *config;
    schema_bytes safetensors;
} admin_result;

static const schema_field activated_fields[] = {
    S_FIELD(admin_result, "active", SK_CHARS, active, SF_NIL_IF_ZERO),
    S_FIELD(admin_result, "version", SK_UINT, version, SF_NIL_IF_ZERO),
};
static const schema activated = SCHEMA(activated_fields);
static const schema_field peft_files_fields[] = {
    S_FIELD(admin_result, "adapter_config.json", SK_STR, config, 0),
    S_FIELD(admin_result, "adapter_model.safetensors", SK_BIN, safetensors, 0),
};
static const schema peft_files = SCHEMA(peft_files_fields);
static const schema_field exported_fields[] = {S_GROUP("files", &peft_files)};
static const schema exported = SCHEMA(exported_fields);

/* The arguments name (n) and version (v, may be NULL) of the adapter ops. 0, or -1 after
 * replying. */
static int name_version(req *r, const msgpack_object *n, const msgpack_object *v, char name[STORE_NAME_MAX + 1],
                        uint32_t *version)
{
    if (adapter_name_arg(r, "name", n, name) < 0)
        return -1;
    *version = 0;
    if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (v->via.u64 == 0 || v->via.u64 > UINT32_MAX) {
            reply_error(r, ERR_INVALID_ARGUMENT, "version: %llu is not in 1..%u", (unsigned long long)v->via.u64,
                        UINT32_MAX);
            return -1;
        }
        *version = (uint32_t)v->via.u64;
    }
    return 0;
}

static int get_record(req *r, const char *name, uint32_t version, store_adapter_info *info)
{
    char err[512];
    int nf = 0;
    if (store_adapter_get(r->d->db, name, version, info, &nf, err, sizeof err) == 0)
        return 0;
    if (nf && version)
        reply_error(r, ERR_NOT_FOUND, "adapter %s@%u does not exist", name, version);
    else if (nf)
        reply_error(r, ERR_NOT_FOUND, "adapter %s does not exist", name);
    else
        reply_error(r, ERR_INTERNAL, "%s", err);
    return -1;
}

void op_adapter_list(req *r)
{
    store_adapter_info *list;
    size_t n;
    char err[512];
    if (store_adapter_list(r->d->db, &list, &n, err, sizeof err) < 0) {
        reply_error(r, ERR_INTERNAL, "%s", err);
        return;
    }
    reply_records(r, "adapters", &adapter_record, list, n, sizeof *list);
    free(list);
}

void op_adapter_get(req *r)
{
    char name[STORE_NAME_MAX + 1];
    uint32_t version;
    store_adapter_info info;
    if (name_version(r, r->arg[ADAPTER_GET_NAME], r->arg[ADAPTER_GET_VERSION], name, &version) < 0 ||
        get_record(r, name, version, &info) < 0)
        return;
    mp_out o;
    reply_begin(r, &o);
    schema_pack(&o.pk, &adapter_record, &info, SCHEMA_WIRE);
    reply_end(r, &o);
}

void op_adapter_delete(req *r)
{
    char name[STORE_NAME_MAX + 1], err[512];
    uint32_t version;
    int deleted = 0;
    if (name_version(r, r->arg[ADAPTER_DELETE_NAME], r->arg[ADAPTER_DELETE_VERSION], name, &version) < 0)
        return;
    if (store_adapter_delete(r->d->db, name, version, &deleted, err, sizeof err) < 0) {
        reply_error(r, ERR_INTERNAL, "%s", err);
        return;
    }
    if (deleted == 0) {
        reply_error(r, ERR_NOT_FOUND, "adapter %s%s%.0u does not exist", name, version ? "@" : "", version);
        return;
    }
    cache_forget(r->d, name, version);
    pthread_mutex_lock(&r->d->active_lock);
    if (!strcmp(r->d->active_name, name) && (!version || version == r->d->active_version)) {
        qd_log(LOG_INFO, "the active adapter %s@%u was deleted; none is active now", name, r->d->active_version);
        r->d->active_name[0] = 0, r->d->active_version = 0;
    }
    pthread_mutex_unlock(&r->d->active_lock);
    reply_deleted(r, deleted);
}

void op_adapter_activate(req *r)
{
    qd *d = r->d;
    char name[STORE_NAME_MAX + 1] = "";
    uint32_t version = 0;
    store_adapter_info info;
    if (r->arg[ACTIVATE_NAME]->type != MSGPACK_OBJECT_NIL) {
        if (name_version(r, r->arg[ACTIVATE_NAME], r->arg[ACTIVATE_VERSION], name, &version) < 0 ||
            get_record(r, name, version, &info) < 0)
            return;
        if (info.base_fingerprint != d->model.fingerprint) {
            reply_error(r, ERR_CONFLICT, "adapter %s@%u was trained on base %016" PRIx64 ", not this one (%016" PRIx64 ")",
                        name, info.version, info.base_fingerprint, d->model.fingerprint);
            return;
        }
        version = info.version;
    }
    pthread_mutex_lock(&d->active_lock);
    memcpy(d->active_name, name, sizeof name);
    d->active_version = version;
    pthread_mutex_unlock(&d->active_lock);
    qd_log(LOG_INFO, "active adapter: %s%s%.0u", name[0] ? name : "none", version ? "@" : "", version);
    admin_result res = {.version = version};
    memcpy(res.active, name, sizeof res.active);
    mp_out o;
    reply_begin(r, &o);
    schema_pack(&o.pk, &activated, &res, SCHEMA_WIRE);
    reply_end(r, &o);
}

void op_adapter_export(req *r)
{
    qd *d = r->d;
    char name[STORE_NAME_MAX + 1], err[512];
    uint32_t version;
    if (name_version(r, r->arg[EXPORT_NAME], r->arg[EXPORT_VERSION], name, &version) < 0)
        return;
    if (r->arg[EXPORT_FORMAT] && !mp_is_str(r->arg[EXPORT_FORMAT], "peft")) {
        reply_error(r, ERR_INVALID_ARGUMENT, "format: only \"peft\" is supported");
        return;
    }
    store_adapter_info info;
    llama_lora ad;
    int nf = 0;
    if (store_adapter_load(d->db, name, version, &d->model.cfg, &info, &ad, &nf, err, sizeof err) < 0) {
        reply_error(r, nf ? ERR_NOT_FOUND : ERR_INTERNAL, "%s", err);
        return;
    }
    char *config = NULL;
    void *st = NULL;
    size_t st_len = 0;
    if (peft_config_encode(&ad, d->model_dir, &config, err, sizeof err) < 0 ||
        peft_encode(&ad, &d->model.cfg, info.base_fingerprint, &st, &st_len, err, sizeof err) < 0) {
        reply_error(r, ERR_INTERNAL, "%s", err);
    } else if (strlen(config) + st_len + 256 > d->max_frame) {
        reply_error(r, ERR_BUSY, "the export (%zu bytes) exceeds max_frame %zu", strlen(config) + st_len, d->max_frame);
    } else {
        admin_result res = {.config = config, .safetensors = {st, st_len}};
        mp_out o;
        reply_begin(r, &o);
        schema_pack(&o.pk, &exported, &res, SCHEMA_WIRE);
        reply_end(r, &o);
    }
    free(config);
    free(st);
    llama_lora_free(&ad);
}

void op_adapter_import(req *r)
{
    qd *d = r->d;
    char name[STORE_NAME_MAX + 1], err[1024];
    uint32_t version;
    if (name_version(r, r->arg[IMPORT_NAME], NULL, name, &version) < 0)
        return;
    const msgpack_object *files = r->arg[IMPORT_FILES];
    const msgpack_object *config = mp_get(files, "adapter_config.json");
    const msgpack_object *st = mp_get(files, "adapter_model.safetensors");
    if (!config || !st || (config->type != MSGPACK_OBJECT_STR && config->type != MSGPACK_OBJECT_BIN) ||
        st->type != MSGPACK_OBJECT_BIN) {
        reply_error(r, ERR_BAD_REQUEST, "files: needs \"adapter_config.json\" (str) and "
                                      "\"adapter_model.safetensors\" (bin)");
        return;
    }
    llama_lora ad;
    uint64_t fp = 0;
    if (peft_import(config->via.str.ptr, config->via.str.size, st->via.bin.ptr, st->via.bin.size, &d->model.cfg, &ad,
                    &fp, err, sizeof err) < 0) {
        reply_error(r, ERR_INVALID_ARGUMENT, "files: %s", err);
        return;
    }
    if (fp && fp != d->model.fingerprint) {
        reply_error(r, ERR_CONFLICT, "files: the adapter was trained on base %016" PRIx64 ", not this one (%016" PRIx64 ")",
                    fp, d->model.fingerprint);
        llama_lora_free(&ad);
        return;
    }
    store_adapter_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.name, sizeof info.name, "%s", name);
    info.rank = ad.rank, info.alpha = ad.alpha, info.rslora = ad.rslora, info.targets = ad.targets;
    info.base_fingerprint = d->model.fingerprint;
    info.base = d->model.cfg;
    info.eval_loss = info.ppl_base = info.ppl_adapter = NAN;
    if (store_adapter_put(d->db, &info, &ad, NULL, NULL, err, sizeof err) < 0) {
        reply_error(r, store_error(err), "%s", err);
    } else {
        qd_log(LOG_INFO, "imported adapter %s@%u", info.name, info.version);
        mp_out o;
        reply_begin(r, &o);
        schema_pack(&o.pk, &adapter_record, &info, SCHEMA_WIRE);
        reply_end(r, &o);
    }
    llama_lora_free(&ad);
}

