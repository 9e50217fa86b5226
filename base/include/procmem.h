/* procmem.h: this process's memory as Linux reports it, for status replies, inspect,
 * benchmarks and memory tests. On another system (or where /proc refuses) the readings
 * are 0 and resetting does nothing. */
#ifndef QLORA_PROCMEM_H
#define QLORA_PROCMEM_H

#include <stddef.h>

/* Resident bytes now (/proc/self/statm). */
size_t rt_rss_bytes(void);
/* The highest resident bytes since the start or the last rt_reset_peak (VmHWM). */
size_t rt_peak_bytes(void);
/* Lets the peak restart from the current RSS (writing 5 to clear_refs, Linux 4.0+). */
void rt_reset_peak(void);

#endif
