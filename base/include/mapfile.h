/* mapfile.h: a whole file mapped read-only, for every reader of model and data files. */
#ifndef QLORA_MAPFILE_H
#define QLORA_MAPFILE_H

#include <stddef.h>

/* Maps path read-only; an empty file gives *data NULL and *size 0. Returns 0, or -1 with
 * "PATH: cannot open|stat|map: why" in err. */
int map_file(const char *path, const void **data, size_t *size, char *err, size_t errlen);
void unmap_file(const void *data, size_t size);
/* Drops the resident pages of bytes [p, p + n) of a mapping of map_file, once they have
 * been read: they come back from the file if read again. Loading a checkpoint this way
 * holds one tensor's pages at a time rather than the whole file (a 1.1B model's 4.4 GB
 * fp32 file would otherwise count in RSS until the load ends). */
void map_release(const void *p, size_t n);

#endif
