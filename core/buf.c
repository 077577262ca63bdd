#include "core/buf.h"
#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void core_buf_init(core_buf_t *b)
{
    b->base = NULL;
    b->len = b->cap = 0;
}

void core_buf_free(core_buf_t *b)
{
    free(b->base);
    core_buf_init(b);
}

void core_buf_reserve(core_buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->base = core_xrealloc(b->base, cap);
    b->cap = cap;
}

void core_buf_append(core_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    core_buf_reserve(b, n);
    memcpy(b->base + b->len, p, n);
    b->len += n;
}

void core_buf_puts(core_buf_t *b, const char *s)
{
    core_buf_append(b, s, strlen(s));
}

void core_buf_putc(core_buf_t *b, char c)
{
    core_buf_reserve(b, 1);
    b->base[b->len++] = c;
}

void core_buf_vappendf(core_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    core_buf_reserve(b, 64);
    int n = vsnprintf(b->base + b->len, b->cap - b->len, fmt, ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        core_buf_reserve(b, (size_t)n + 1);
        vsnprintf(b->base + b->len, b->cap - b->len, fmt, ap2);
    }
    va_end(ap2);
    b->len += (size_t)n;
}

void core_buf_appendf(core_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    core_buf_vappendf(b, fmt, ap);
    va_end(ap);
}

void core_buf_consume(core_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->base, b->base + n, b->len - n);
    b->len -= n;
}

const char *core_buf_cstr(core_buf_t *b)
{
    core_buf_reserve(b, 1);
    b->base[b->len] = '\0';
    return b->base;
}
