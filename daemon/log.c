/* log.c: one line per event on stderr: UTC time with milliseconds, level, message. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "qlorad.h"

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int verbose;

void qd_log_verbose(int on)
{
    verbose = on;
}

void qd_log(log_level level, const char *fmt, ...)
{
    if (level == LOG_DEBUG && !verbose)
        return;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    struct timespec ts;
    struct tm tm;
    char stamp[32], line[2048];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* one fprintf per line, so lines of different threads never interleave */
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, ts.tv_nsec / 1000000, names[level], line);
}
