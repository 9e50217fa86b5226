/* schema.h: records, events and results as field tables, the idiom of storage/record.c
 * made generic. A table names each key of a msgpack map, what its value is and where it
 * lives in a C struct; schema_pack writes any struct through its table and counts the
 * map's entries itself, schema_unpack fills a struct back from a map (the stored job
 * record at start). Nothing counts map sizes by hand.
 *
 *     static const schema_field file_fields[] = {
 *         S_FIELD(store_file_info, "file_id", SK_CHARS, id, 0),
 *         S_FIELD(store_file_info, "bytes", SK_UINT, bytes, 0),
 *     };
 *     static const schema file_record = SCHEMA(file_fields);
 *     schema_pack(pk, &file_record, &info, SCHEMA_WIRE);
 */
#ifndef QLORAD_SCHEMA_H
#define QLORAD_SCHEMA_H

#include <msgpack.h>
#include <stddef.h>

typedef enum {
    SK_UINT,   /* an unsigned integer of the field's size (uint32_t, uint64_t, size_t, unsigned) */
    SK_INT,    /* a signed integer of its size (int, an enum, int64_t) */
    SK_REAL,   /* float or double, by its size; NaN is nil */
    SK_BOOL,   /* int: false when 0 */
    SK_CHARS,  /* char[size], NUL-terminated */
    SK_STR,    /* a (const) char *; NULL is nil */
    SK_STRN,   /* schema_bytes, packed as str */
    SK_BIN,    /* schema_bytes, packed as bin */
    SK_INTS,   /* schema_ints, packed as an array */
    SK_HEX64,  /* uint64_t as 16 lowercase hex digits */
    SK_NAME,   /* an int (an enum) as its name: .names[value], "?" out of range */
    SK_BITS,   /* an unsigned of bits, as the array of the names of those set, in bit order */
    SK_CONST,  /* no field: the str .text */
    SK_MAP,    /* a nested map through .sub, whose offsets start at this field's */
    SK_CUSTOM, /* .pack, and .unpack when the table is read back */
} schema_kind;

enum {
    SF_NIL_IF_ZERO = 1, /* nil when 0 or "" (a map: when its first field is) */
    SF_STORED = 2,      /* packed only for the store (SCHEMA_STORED) */
    SF_REQUIRED = 4,    /* unpack: absent, nil or (SK_NAME) an unknown name is an error */
    SF_DERIVED = 8,     /* a copy of another field for readers: packed, never read back */
};

typedef enum { SCHEMA_WIRE, SCHEMA_STORED } schema_mode;

typedef struct {
    const char *p;
    size_t n;
} schema_bytes;

typedef struct {
    const int *p;
    size_t n;
} schema_ints;

typedef struct schema schema;
typedef struct schema_field {
    const char *key;
    schema_kind kind;
    unsigned flags;
    size_t off, size;
    const char *const *names; /* SK_NAME, SK_BITS */
    int n_names;
    const char *text;         /* SK_CONST */
    const schema *sub;        /* SK_MAP */
    void (*pack)(msgpack_packer *pk, const void *value);                                        /* SK_CUSTOM */
    int (*unpack)(const msgpack_object *o, void *value, const void *ctx, char *err, size_t errlen); /* 0 or -1 */
} schema_field;

struct schema {
    const schema_field *fields;
    size_t n;
};

#define SCHEMA(fields) {fields, sizeof fields / sizeof fields[0]}
#define S_SIZE(T, member) sizeof(((T *)0)->member)
#define S_AT(T, member) .off = offsetof(T, member), .size = S_SIZE(T, member)
/* member of struct T as a value of kind (not SK_NAME, SK_BITS, SK_CONST, SK_MAP, SK_CUSTOM) */
#define S_FIELD(T, key_, kind_, member, flags_) {.key = key_, .kind = kind_, .flags = flags_, S_AT(T, member)}
#define S_NAME(T, key_, member, names_, n_names_, flags_) \
    {.key = key_, .kind = SK_NAME, .flags = flags_, S_AT(T, member), .names = names_, .n_names = n_names_}
#define S_BITS(T, key_, member, names_, n_names_) \
    {.key = key_, .kind = SK_BITS, S_AT(T, member), .names = names_, .n_names = n_names_}
#define S_CONST(key_, text_) {.key = key_, .kind = SK_CONST, .text = text_}
/* a nested map of the same struct's fields (its table's offsets are the struct's) */
#define S_GROUP(key_, sub_) {.key = key_, .kind = SK_MAP, .sub = sub_}
/* a nested map of the struct member of T (its table's offsets are the member's) */
#define S_MAP(T, key_, member, sub_, flags_) {.key = key_, .kind = SK_MAP, .flags = flags_, S_AT(T, member), .sub = sub_}
#define S_CUSTOM(T, key_, member, pack_, unpack_, flags_) \
    {.key = key_, .kind = SK_CUSTOM, .flags = flags_, S_AT(T, member), .pack = pack_, .unpack = unpack_}

/* How many entries the map of base has in mode. */
size_t schema_count(const schema *s, schema_mode mode);
/* The map of base: its size, then its entries in the table's order. */
void schema_pack(msgpack_packer *pk, const schema *s, const void *base, schema_mode mode);
/* Only the entries, for a map that has others besides (its size is the caller's, with
 * schema_count). */
void schema_pack_entries(msgpack_packer *pk, const schema *s, const void *base, schema_mode mode);

/* Every field of base as it is when its key is absent: NaN for reals, NULL, "", 0. */
void schema_clear(const schema *s, void *base);
/* Fills base from the map o. A key absent or nil leaves its field as it is (schema_clear,
 * then the caller's defaults), unless it is SF_REQUIRED; so does a name SK_NAME does not
 * know. A value of another type, out of its field's range or longer than its field is an
 * error; keys the table does not know are ignored (a later version may have added them).
 * ctx goes to the custom readers. 0, or -1 with a message naming the key ("base.quant:
 * ..."). SK_STR fields are malloc'd: the caller frees them (also after an error). */
int schema_unpack(const schema *s, const msgpack_object *o, void *base, const void *ctx, char *err, size_t errlen);

#endif
