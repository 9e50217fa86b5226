/* gguf.h: read-only view of a GGUF file (llama.cpp's format, versions 2 and 3) through
 * mmap.
 *
 * Layout, little-endian: magic "GGUF", u32 version, u64 tensor count, u64 key count; the
 * keys, each a string (u64 length, bytes, no terminator), a u32 value type and the value
 * (scalars; a string; an array: u32 element type, u64 count, the elements, which may be
 * arrays again); the tensor infos, each a name, u32 n_dims (1..4), n_dims u64 dims
 * (ne[0], the number of columns, first), u32 ggml type, u64 offset from the start of the
 * data; then, at the next multiple of general.alignment (u32, a power of two; default 32),
 * the data. Everything is checked at open, so that no reader needs to check again: every
 * count against the bytes left, keys and tensor names unique, dims whose product and byte
 * size fit, a known ggml type whose block divides ne[0], offsets aligned and inside the
 * file, no two tensors' bytes overlapping. A file that fails is refused with a message
 * naming the file, the byte offset and the key or tensor at fault. */
#ifndef QLORA_GGUF_H
#define QLORA_GGUF_H

#include <stddef.h>
#include <stdint.h>

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* The value types, in the format's numbering. */
typedef enum {
    GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL,
    GGUF_STRING, GGUF_ARRAY, GGUF_U64, GGUF_I64, GGUF_F64, GGUF_NTYPES
} gguf_type;

/* A string of the file: bytes in the mapping, not NUL-terminated. */
typedef struct {
    const char *s;
    size_t n;
} gguf_str;

typedef struct {
    const char *key;        /* NUL-terminated copy */
    gguf_type type;
    gguf_type elem;         /* arrays: the elements' type */
    uint64_t count;         /* arrays: elements; scalars and strings: 1 */
    const uint8_t *data;    /* the value (an array's first element) in the mapping */
    size_t offset;          /* of the key's record in the file, for messages */
} gguf_kv;

typedef struct {
    const char *name;       /* NUL-terminated copy */
    int n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] columns first; unused dims 1 */
    uint32_t type;          /* ggml's type number */
    uint64_t nelem;
    size_t nbytes;
    const void *data;       /* in the mapping */
    size_t offset;          /* of the data in the file */
    size_t info_offset;     /* of the tensor's info record, for messages */
} gguf_tensor;

typedef struct {
    char path[4096];
    const uint8_t *map;     /* gguf_open's mapping; the caller's image for gguf_parse */
    size_t size;
    int owned;              /* gguf_close unmaps */
    uint32_t version;
    uint32_t alignment;
    size_t data_offset;
    gguf_kv *kv;
    size_t n_kv;
    gguf_tensor *tensors;
    size_t n_tensors;
    uint32_t *kv_sorted, *tensor_sorted; /* indices by name, for lookups */
    char *names;            /* the copies of keys and names */
} gguf_file;

/* Opens path read-only and checks it all; -1 with a message in err. */
int gguf_open(gguf_file *f, const char *path, char *err, size_t errlen);
/* The same over an image in memory, which must outlive f (the fuzzer's entry). */
int gguf_parse(gguf_file *f, const char *name, const void *data, size_t size, char *err, size_t errlen);
void gguf_close(gguf_file *f);
/* Whether the first bytes of path are GGUF's magic: 1, 0, or 0 when it cannot be read. */
int gguf_is_file(const char *path);

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed reads of a value; -1 when kv is NULL or of another type (or out of [lo, hi]).
 * Integers accept every integer type; floats F32 and F64. */
int gguf_kv_int(const gguf_kv *kv, int64_t lo, int64_t hi, int64_t *out);
int gguf_kv_float(const gguf_kv *kv, double *out);
int gguf_kv_bool(const gguf_kv *kv, int *out);
int gguf_kv_str(const gguf_kv *kv, gguf_str *out);
/* An array of strings into out[kv->count]; -1 if kv is not one. */
int gguf_arr_strs(const gguf_kv *kv, gguf_str *out);
/* Element i of an array of numbers (integers, floats, bools) as a double. */
int gguf_arr_num(const gguf_kv *kv, uint64_t i, double *out);

const char *gguf_type_name(gguf_type t);
/* ggml's name of type ("f32", "q4_K" ...), or NULL for a number it does not have. */
const char *gguf_ggml_type_name(uint32_t type);
enum { GGUF_GGML_F32 = 0, GGUF_GGML_F16 = 1, GGUF_GGML_BF16 = 30 };

#endif
