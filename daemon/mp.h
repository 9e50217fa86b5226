/* mp.h: msgpack for the wire protocol: a bounds check of an untrusted frame before
 * msgpack-c allocates anything for it, typed reads of decoded objects, and packing helpers
 * for responses. */
#ifndef QLORAD_MP_H
#define QLORAD_MP_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "json.h"

#define MP_MAX_DEPTH 32

/* Checks that buf[0..len) holds exactly one well-formed msgpack object nested at most
 * MP_MAX_DEPTH deep, every array, map, str and bin length fitting in the bytes that remain
 * (so decoding allocates O(len)). 0, or -1 with a message. */
int mp_check(const char *buf, size_t len, char *err, size_t errlen);

/* The value of key in map o, or NULL. */
const msgpack_object *mp_get(const msgpack_object *o, const char *key);
int mp_is_str(const msgpack_object *o, const char *s);
/* NUL-terminated copy of a str object (malloc'd), NULL when out of memory. */
char *mp_strdup(const msgpack_object *o);
/* o as a JSON tree (json_free it), for what takes JSON (chat templates): maps with str
 * keys, arrays, strs, numbers, booleans and nil. NULL out of memory, for a bin or ext, or
 * a key that is not a str. */
json_value *mp_to_json(const msgpack_object *o);
/* A number (int or float) as double; 0 when o is not a number. */
int mp_number(const msgpack_object *o, double *out);

/* A buffer with a packer, for one frame: room for the 4-byte length first. */
typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} mp_out;

void mp_out_init(mp_out *o);
/* Writes the big-endian length in front; the frame is o->sb.data[0..sb.size). */
void mp_out_finish(mp_out *o);
void mp_out_free(mp_out *o);

/* Every str the daemon packs goes through mp_str_n, so that it is valid UTF-8 (clients
 * decode strs as text): each invalid subpart of s[0..n) becomes one U+FFFD, as Python's
 * errors="replace" has it; valid text is packed unchanged. */
void mp_str_n(msgpack_packer *pk, const char *s, size_t n);
void mp_str(msgpack_packer *pk, const char *s);
void mp_f64(msgpack_packer *pk, double v); /* NaN: nil */
void mp_bool(msgpack_packer *pk, int v);
void mp_kv_u64(msgpack_packer *pk, const char *key, uint64_t v);
void mp_kv_i64(msgpack_packer *pk, const char *key, int64_t v);
void mp_kv_f64(msgpack_packer *pk, const char *key, double v);     /* NaN: nil */
void mp_kv_bool(msgpack_packer *pk, const char *key, int v);

#endif
