/* safetensors.h: read-only view of a .safetensors file through mmap.
 * Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape,
 * data_offsets: [begin, end]}, "__metadata__": {...}}, then the data. Every tensor is
 * checked at open: known dtype, shape product x dtype size == end - begin, offsets inside
 * the file, no two tensors overlapping. */
#ifndef QLORA_SAFETENSORS_H
#define QLORA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

typedef enum { ST_F32, ST_F16, ST_BF16 } st_dtype;

#define ST_MAX_DIMS 4

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nelem;
    const void *data;
    size_t nbytes;  /* of data */
} st_tensor;

typedef struct {
    char path[4096];
    void *map;                  /* st_open's mapping, NULL for st_parse */
    size_t size;
    json_value *header;
    const json_value *metadata; /* "__metadata__" or NULL */
    st_tensor *tensors;
    size_t count;
} st_file;

/* Opens and validates; -1 with a message naming the file (and tensor) on error. */
int st_open(st_file *f, const char *path, char *err, size_t errlen);
/* The same checks over an image in memory (not copied: it must outlive f); name is what
 * messages call it. */
int st_parse(st_file *f, const char *name, const void *data, size_t size, char *err, size_t errlen);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
/* Converts a tensor to fp32 into out[nelem]. */
void st_to_f32(const st_tensor *t, float *out);
/* Lets go of the pages of a tensor of a file st_open mapped, once read (map_release);
 * nothing for st_parse's images, which are the caller's memory. */
void st_release(const st_file *f, const st_tensor *t);

#endif
