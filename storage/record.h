/* record.h: an adapter version as one LMDB value.
 *
 * Layout: u32 little-endian n, n bytes of msgpack record (a map of named fields, see
 * docs/storage.md), zeros up to the next multiple of 64, then the adapter's params as raw
 * little-endian f32 in llama_lora's order. The record carries the checksum of the tensor
 * bytes, checked on every load. */
#ifndef QLORA_RECORD_H
#define QLORA_RECORD_H

#include <stddef.h>

#include "store.h"

typedef struct {
    char *data;
    size_t len;
} record_buf;

/* The record of info + ad (malloc'd into rec); -1 when out of memory. */
int record_pack(record_buf *rec, const store_adapter_info *info, const llama_lora *ad);
void record_free(record_buf *rec);
/* Where the tensors start in a value whose record is len bytes. */
size_t record_tensor_offset(size_t len);
/* Fills a value of record_tensor_offset(rec->len) + ad's tensor bytes. */
void record_write_value(void *value, const record_buf *rec, const llama_lora *ad);
/* Reads a value into info and, when ad is not NULL, the tensors into ad laid out for c
 * (rank, layer count and size checked against c, checksum verified). */
int record_read_value(const void *value, size_t size, const llama_config *c, store_adapter_info *info,
                      llama_lora *ad, char *err, size_t errlen);

#endif
