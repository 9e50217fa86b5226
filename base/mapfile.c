/* mapfile.c: see mapfile.h. */
#include "mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int map_file(const char *path, const void **data, size_t *size, char *err, size_t errlen)
{
    *data = NULL, *size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    void *map = st.st_size ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    int why = errno;
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map: %s", path, strerror(why));
        return -1;
    }
    *data = map, *size = (size_t)st.st_size;
    return 0;
}

void unmap_file(const void *data, size_t size)
{
    if (data)
        munmap((void *)data, size);
}

void map_release(const void *p, size_t n)
{
    const long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p / (uintptr_t)page * (uintptr_t)page, b = (uintptr_t)p + n;
    if (page > 0 && n > 0)
        (void)madvise((void *)a, b - a, MADV_DONTNEED); /* advice: a failure costs memory, not data */
}
