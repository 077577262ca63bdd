/* log.h: structured logging, one logfmt line per event.
 *
 * Every line carries ts, level, service, region, worker and (when known) the
 * request id, then the event name and its fields. The level is checked before
 * any formatting happens. Lines are buffered and written once per loop pass
 * (core_log_flush), each write holding whole lines only, so that workers
 * sharing one stderr never interleave.
 *
 * Never log message bodies, passwords or tokens: callers pass identifiers and
 * sizes, and user-controlled strings go through core_log_quote. */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stddef.h>

typedef enum {
    CORE_LOG_DEBUG = 0,
    CORE_LOG_INFO = 1,
    CORE_LOG_WARN = 2,
    CORE_LOG_ERROR = 3,
    CORE_LOG_OFF = 4,
} core_log_level_t;

extern core_log_level_t core_log_level;

/* Sets the context printed on every line. Strings are copied. */
void core_log_init(const char *service, const char *region, core_log_level_t level);
void core_log_set_worker(int worker); /* -1 for the master */
/* Parses "debug", "info", "warn", "error", "off"; returns 0 or -1. */
int core_log_parse_level(const char *s, core_log_level_t *out);
/* When set, lines are buffered until core_log_flush (call it once per loop pass). */
void core_log_set_buffered(int on);
void core_log_flush(void);

#define core_log(level, reqid, event, ...)                                                         \
    do {                                                                                           \
        if ((level) >= core_log_level)                                                             \
            core_log_emit((level), (reqid), (event), __VA_ARGS__);                                 \
    } while (0)

#define core_log_debug(event, ...) core_log(CORE_LOG_DEBUG, NULL, event, __VA_ARGS__)
#define core_log_info(event, ...) core_log(CORE_LOG_INFO, NULL, event, __VA_ARGS__)
#define core_log_warn(event, ...) core_log(CORE_LOG_WARN, NULL, event, __VA_ARGS__)
#define core_log_error(event, ...) core_log(CORE_LOG_ERROR, NULL, event, __VA_ARGS__)

/* fmt holds the event's own fields, "key=value key2=value2", or "". */
void core_log_emit(core_log_level_t level, const char *reqid, const char *event, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));

/* Writes src as a logfmt value into dst (always NUL-terminated, truncated with
 * "..." if needed): quoted and escaped when it has spaces, quotes, '=' or
 * control bytes. Returns dst so it can be used inline in a format argument. */
char *core_log_quote(char *dst, size_t cap, const char *src, size_t len);

#endif
