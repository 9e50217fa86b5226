/* log.c: one line per event on stderr: UTC time with milliseconds, level, message. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "qlorad.h"
#include "utf8.h"

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
    /* Messages quote what clients send (op names, adapter names, values): a newline, a
     * control character or an escape sequence in them must not forge a line or drive the
     * terminal of whoever reads the log. Escaped here, once for every caller, as \xNN
     * (and \\ itself, so that an escape is never ambiguous); invalid UTF-8 too. */
    char safe[4 * sizeof line];
    size_t k = 0, n = strlen(line);
    for (size_t i = 0; i < n;) {
        const unsigned char *p = (const unsigned char *)line + i;
        int len = utf8_char(p, n - i, NULL);
        /* C0, DEL and the C1 controls (U+0080..U+009F: some terminals take U+009B as CSI) */
        int control = p[0] < 0x20 || p[0] == 0x7f || (len == 2 && p[0] == 0xC2 && p[1] < 0xA0);
        if (len > 0 && !control && p[0] != '\\') {
            memcpy(safe + k, p, (size_t)len);
            k += (size_t)len, i += (size_t)len;
        } else if (p[0] == '\\') {
            safe[k++] = '\\', safe[k++] = '\\', i++;
        } else {
            k += (size_t)snprintf(safe + k, sizeof safe - k, "\\x%02x", p[0]), i++;
        }
    }
    safe[k] = 0;
    /* one fprintf per line, so lines of different threads never interleave */
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, ts.tv_nsec / 1000000, names[level], safe);
}
