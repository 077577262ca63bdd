#include "core/log.h"
#include "core/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

core_log_level_t core_log_level = CORE_LOG_INFO;

static char g_service[32] = "meridian";
static char g_region[64] = "-";
static int g_worker = -1;
static int g_buffered;
static core_buf_t g_out;

/* Past this much pending output we write at once rather than wait for the loop. */
#define LOG_FLUSH_AT 16384

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

void core_log_init(const char *service, const char *region, core_log_level_t level)
{
    if (service)
        snprintf(g_service, sizeof g_service, "%s", service);
    if (region)
        snprintf(g_region, sizeof g_region, "%s", region);
    core_log_level = level;
}

void core_log_set_worker(int worker)
{
    g_worker = worker;
}

int core_log_parse_level(const char *s, core_log_level_t *out)
{
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (core_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void core_log_set_buffered(int on)
{
    if (!on)
        core_log_flush();
    g_buffered = on;
}

void core_log_flush(void)
{
    size_t off = 0;
    while (off < g_out.len) {
        ssize_t n = write(STDERR_FILENO, g_out.base + off, g_out.len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* nowhere left to report a logging failure */
        }
        off += (size_t)n;
    }
    core_buf_reset(&g_out);
}

void core_log_emit(core_log_level_t level, const char *reqid, const char *event, const char *fmt,
                   ...)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);

    core_buf_appendf(&g_out,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s service=%s region=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), level_names[level], g_service, g_region);
    if (g_worker >= 0)
        core_buf_appendf(&g_out, " worker=%d", g_worker);
    else
        core_buf_puts(&g_out, " worker=master");
    if (reqid && *reqid)
        core_buf_appendf(&g_out, " req=%s", reqid);
    core_buf_appendf(&g_out, " event=%s", event);
    if (fmt && *fmt) {
        core_buf_putc(&g_out, ' ');
        va_list ap;
        va_start(ap, fmt);
        core_buf_vappendf(&g_out, fmt, ap);
        va_end(ap);
    }
    core_buf_putc(&g_out, '\n');
    if (!g_buffered || g_out.len >= LOG_FLUSH_AT || level >= CORE_LOG_ERROR)
        core_log_flush();
}

char *core_log_quote(char *dst, size_t cap, const char *src, size_t len)
{
    int need_quotes = len == 0;
    for (size_t i = 0; i < len && !need_quotes; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
            need_quotes = 1;
    }
    size_t o = 0;
    if (cap < 8) {
        if (cap)
            dst[0] = '\0';
        return dst;
    }
    if (need_quotes)
        dst[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        char esc[5];
        size_t elen;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", c);
            elen = 4;
        } else {
            esc[0] = (char)c;
            elen = 1;
        }
        if (o + elen + 5 > cap) { /* room for "...", a quote and the NUL */
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(dst + o, esc, elen);
        o += elen;
    }
    if (need_quotes)
        dst[o++] = '"';
    dst[o] = '\0';
    return dst;
}
