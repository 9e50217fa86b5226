/* record.c: see record.h. */
#include "record.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What a value's record holds: the info and the checksum of the tensor bytes (FNV-1a 64). */
typedef struct {
    store_adapter_info info;
    uint64_t checksum;
} stored;

typedef enum { F_U32, F_INT, F_UINT, F_U64, F_F32, F_F64 } field_kind;

/* The record's fields besides "name", in the order written. Readers ignore fields they do
 * not know, so later versions may add some; a field added later is optional (records
 * written before it lack it: 0 then). */
static const struct {
    const char *key;
    field_kind kind;
    size_t off;
    int optional;
} fields[] = {
    {"version", F_U32, offsetof(stored, info.version), 0},
    {"rank", F_INT, offsetof(stored, info.rank), 0},
    {"alpha", F_F32, offsetof(stored, info.alpha), 0},
    {"rslora", F_INT, offsetof(stored, info.rslora), 0},
    {"targets", F_UINT, offsetof(stored, info.targets), 0},
    {"dropout", F_F32, offsetof(stored, info.dropout), 0},
    {"base_fingerprint", F_U64, offsetof(stored, info.base_fingerprint), 0},
    {"created_at", F_F64, offsetof(stored, info.created_at), 0},
    {"job_id", F_U64, offsetof(stored, info.job_id), 0},
    {"eval_loss", F_F64, offsetof(stored, info.eval_loss), 0},
    {"ppl_base", F_F64, offsetof(stored, info.ppl_base), 0},
    {"ppl_adapter", F_F64, offsetof(stored, info.ppl_adapter), 0},
    {"size_bytes", F_U64, offsetof(stored, info.size_bytes), 0},
    {"dim", F_INT, offsetof(stored, info.base.dim), 0},
    {"hidden_dim", F_INT, offsetof(stored, info.base.hidden_dim), 0},
    {"n_layers", F_INT, offsetof(stored, info.base.n_layers), 0},
    {"n_heads", F_INT, offsetof(stored, info.base.n_heads), 0},
    {"n_kv_heads", F_INT, offsetof(stored, info.base.n_kv_heads), 0},
    {"checksum", F_U64, offsetof(stored, checksum), 0},
    /* Qwen3's heads are not dim / n_heads wide; before it, they always were (0: derive) */
    {"head_size", F_INT, offsetof(stored, info.base.head_size), 1},
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

int record_pack(record_buf *rec, const store_adapter_info *info, const llama_lora *ad)
{
    stored st = {*info, fnv1a(ad->params, ad->n_params * sizeof(float))};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    size_t n = strlen(info->name);
    int bad = msgpack_pack_map(&pk, N_FIELDS + 1) || msgpack_pack_str_with_body(&pk, "name", 4) ||
              msgpack_pack_str_with_body(&pk, info->name, n);
    for (size_t i = 0; i < N_FIELDS && !bad; i++) {
        const char *p = (const char *)&st + fields[i].off;
        bad = msgpack_pack_str_with_body(&pk, fields[i].key, strlen(fields[i].key));
        switch (fields[i].kind) {
        case F_U32: bad |= msgpack_pack_uint64(&pk, *(const uint32_t *)p); break;
        case F_INT: bad |= msgpack_pack_int64(&pk, *(const int *)p); break;
        case F_UINT: bad |= msgpack_pack_uint64(&pk, *(const unsigned *)p); break;
        case F_U64: bad |= msgpack_pack_uint64(&pk, *(const uint64_t *)p); break;
        case F_F32: bad |= msgpack_pack_double(&pk, *(const float *)p); break;
        case F_F64: bad |= msgpack_pack_double(&pk, *(const double *)p); break;
        }
    }
    if (bad || sb.size > UINT32_MAX) {
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    rec->data = sb.data; /* msgpack_sbuffer_destroy would free exactly this */
    rec->len = sb.size;
    return 0;
}

void record_free(record_buf *rec)
{
    free(rec->data);
    rec->data = NULL;
}

size_t record_tensor_offset(size_t len)
{
    return (4 + len + 63) / 64 * 64;
}

void record_write_value(void *value, const record_buf *rec, const llama_lora *ad)
{
    unsigned char *v = value;
    uint32_t n = (uint32_t)rec->len;
    size_t off = record_tensor_offset(rec->len);
    memcpy(v, &n, 4);
    memcpy(v + 4, rec->data, rec->len);
    memset(v + 4 + rec->len, 0, off - 4 - rec->len);
    memcpy(v + off, ad->params, ad->n_params * sizeof(float));
}

/* One field's value from obj; -1 when its msgpack type does not fit the kind. */
static int read_field(const msgpack_object *obj, field_kind kind, char *p)
{
    int is_int = obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER || obj->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
    int is_float = obj->type == MSGPACK_OBJECT_FLOAT32 || obj->type == MSGPACK_OBJECT_FLOAT64;
    if (kind == F_F32 || kind == F_F64) {
        if (!is_float)
            return -1;
        if (kind == F_F32)
            *(float *)p = (float)obj->via.f64;
        else
            *(double *)p = obj->via.f64;
        return 0;
    }
    if (!is_int)
        return -1;
    int64_t i = obj->via.i64;
    uint64_t u = obj->via.u64;
    int neg = obj->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
    switch (kind) {
    case F_U32: if (neg || u > UINT32_MAX) return -1; *(uint32_t *)p = (uint32_t)u; break;
    case F_INT: if (neg ? i < -2147483647 : u > 2147483647) return -1; *(int *)p = neg ? (int)i : (int)u; break;
    case F_UINT: if (neg || u > UINT32_MAX) return -1; *(unsigned *)p = (unsigned)u; break;
    default: if (neg) return -1; *(uint64_t *)p = u; break;
    }
    return 0;
}

/* The record's fields into st; the name of the first missing or ill-typed field in *bad. */
static int unpack(const msgpack_object *map, stored *st, const char **bad)
{
    unsigned seen = 0;
    int have_name = 0;
    *bad = "the record";
    if (map->type != MSGPACK_OBJECT_MAP)
        return -1;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key, *v = &map->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        if (k->via.str.size == 4 && !memcmp(k->via.str.ptr, "name", 4)) {
            *bad = "name";
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > STORE_NAME_MAX)
                return -1;
            memcpy(st->info.name, v->via.str.ptr, v->via.str.size);
            st->info.name[v->via.str.size] = 0;
            have_name = 1;
            continue;
        }
        for (size_t f = 0; f < N_FIELDS; f++)
            if (strlen(fields[f].key) == k->via.str.size && !memcmp(fields[f].key, k->via.str.ptr, k->via.str.size)) {
                *bad = fields[f].key;
                if (read_field(v, fields[f].kind, (char *)st + fields[f].off) < 0)
                    return -1;
                seen |= 1u << f;
            }
    }
    *bad = "name";
    if (!have_name || !store_name_valid(st->info.name))
        return -1;
    for (size_t f = 0; f < N_FIELDS; f++)
        if (!(seen >> f & 1) && !fields[f].optional) {
            *bad = fields[f].key;
            return -1;
        }
    return 0;
}

int record_read_value(const void *value, size_t size, const llama_config *c, store_adapter_info *info,
                      llama_lora *ad, char *err, size_t errlen)
{
    const unsigned char *v = value;
    uint32_t n = 0;
    stored st;
    const char *bad = "the record length";
    memset(&st, 0, sizeof st);
    if (size >= 4)
        memcpy(&n, v, 4);
    int ok = size >= 4 && n <= size - 4;
    if (ok) {
        msgpack_unpacked u;
        size_t used = 0;
        msgpack_unpacked_init(&u);
        ok = msgpack_unpack_next(&u, (const char *)v + 4, n, &used) == MSGPACK_UNPACK_SUCCESS &&
             unpack(&u.data, &st, &bad) == 0;
        msgpack_unpacked_destroy(&u);
    }
    size_t off = record_tensor_offset(n);
    if (ok && (size < off || size - off != st.info.size_bytes || st.info.size_bytes % sizeof(float))) {
        ok = 0;
        bad = "size_bytes";
    }
    if (!ok) {
        snprintf(err, errlen, "stored adapter is corrupt: bad or missing %s", bad);
        return -1;
    }
    llama_config *b = &st.info.base;
    char why[160];
    if (b->n_layers < 1 || b->head_size < 0 || llama_config_derive(b, "base", why, sizeof why) < 0) {
        snprintf(err, errlen, "stored adapter is corrupt: bad base shape");
        return -1;
    }
    *info = st.info;
    if (!ad)
        return 0;
    const char *who = st.info.name;
    if (b->dim != c->dim || b->hidden_dim != c->hidden_dim || b->n_layers != c->n_layers ||
        b->n_heads != c->n_heads || b->n_kv_heads != c->n_kv_heads || b->head_size != c->head_size ||
        st.info.rank < 1 ||
        st.info.rank > c->dim || st.info.targets >> LIN_COUNT) {
        snprintf(err, errlen, "adapter '%s@%u' was stored for another model shape (dim %d, hidden %d, %d layers, "
                 "%d heads of %d, %d kv heads)", who, st.info.version, b->dim, b->hidden_dim, b->n_layers, b->n_heads,
                 b->head_size, b->n_kv_heads);
        return -1;
    }
    if (fnv1a(v + off, st.info.size_bytes) != st.checksum) {
        snprintf(err, errlen, "stored adapter '%s@%u' is corrupt: tensor checksum mismatch", who, st.info.version);
        return -1;
    }
    if (llama_lora_alloc(ad, c, st.info.rank, st.info.alpha, st.info.rslora, st.info.targets, st.info.dropout) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (ad->n_params * sizeof(float) != st.info.size_bytes) {
        snprintf(err, errlen, "adapter '%s@%u' has %llu tensor bytes, this model's layout needs %zu", who,
                 st.info.version, (unsigned long long)st.info.size_bytes, ad->n_params * sizeof(float));
        llama_lora_free(ad);
        return -1;
    }
    memcpy(ad->params, v + off, st.info.size_bytes);
    return 0;
}
