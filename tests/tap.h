/* tap.h: a minimal TAP producer for the C tests (meson reads TAP; so does CI's summary).
 * CHECK records one assertion; each test_case() ends one numbered TAP line that passes
 * only if every CHECK since the previous line passed. */
#ifndef QLORA_TAP_H
#define QLORA_TAP_H

#include <stdarg.h>
#include <stdio.h>

static int tap_count, tap_failed, tap_case_failures;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            tap_case_failures++;                                                          \
            printf("# %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);              \
            printf(__VA_ARGS__);                                                          \
            printf("\n");                                                                 \
        }                                                                                 \
    } while (0)

static inline void test_case(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tap_count++;
    printf("%sok %d - ", tap_case_failures ? "not " : "", tap_count);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (tap_case_failures)
        tap_failed++;
    tap_case_failures = 0;
    fflush(stdout);
}

static inline int tap_done(void)
{
    printf("1..%d\n", tap_count);
    return tap_failed ? 1 : 0;
}

#endif
