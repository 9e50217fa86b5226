/* mapfile.h: a whole file mapped read-only, for every reader of model and data files. */
#ifndef QLORA_MAPFILE_H
#define QLORA_MAPFILE_H

#include <stddef.h>

/* Maps path read-only; an empty file gives *data NULL and *size 0. Returns 0, or -1 with
 * "PATH: cannot open|stat|map: why" in err. */
int map_file(const char *path, const void **data, size_t *size, char *err, size_t errlen);
void unmap_file(const void *data, size_t size);

#endif
