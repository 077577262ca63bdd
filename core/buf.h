/* buf.h: a growable byte buffer. Owned by whoever embeds it; freed by core_buf_free. */
#ifndef CORE_BUF_H
#define CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct {
    char *base; /* NULL until the first append: idle owners cost nothing */
    size_t len;
    size_t cap;
} core_buf_t;

/* Starts empty without allocating. */
void core_buf_init(core_buf_t *b);
/* Releases the storage; the buffer is empty and reusable afterwards. */
void core_buf_free(core_buf_t *b);
/* Ensures room for `extra` more bytes after len. */
void core_buf_reserve(core_buf_t *b, size_t extra);
/* Appends n bytes. */
void core_buf_append(core_buf_t *b, const void *p, size_t n);
/* Appends a NUL-terminated string (without the NUL). */
void core_buf_puts(core_buf_t *b, const char *s);
/* Appends one byte. */
void core_buf_putc(core_buf_t *b, char c);
/* Appends printf-formatted text. */
void core_buf_appendf(core_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void core_buf_vappendf(core_buf_t *b, const char *fmt, va_list ap);
/* Drops the first n bytes, keeping the rest. */
void core_buf_consume(core_buf_t *b, size_t n);
/* Empties the buffer but keeps its storage. */
static inline void core_buf_reset(core_buf_t *b)
{
    b->len = 0;
}
/* Returns a NUL-terminated view (the NUL is not counted in len). */
const char *core_buf_cstr(core_buf_t *b);

#endif
