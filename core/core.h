/* core.h: allocation, error conventions and small helpers shared by every module.
 *
 * Error contract: functions return 0 on success or a negative error code
 * (libuv's UV_E* values, which are negative errno values on Unix). A function
 * that takes a callback and returns an error never calls that callback.
 * Out of memory aborts: a chat server that cannot allocate cannot recover. */
#ifndef CORE_CORE_H
#define CORE_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define CORE_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CORE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CORE_MAX(a, b) ((a) > (b) ? (a) : (b))
#define CORE_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

/* Allocators that abort on failure; never return NULL. */
void *core_xmalloc(size_t n);
void *core_xcalloc(size_t count, size_t n);
void *core_xrealloc(void *p, size_t n);
char *core_xstrdup(const char *s);
char *core_xstrndup(const char *s, size_t n);

/* Monotonic clock in nanoseconds and milliseconds. */
uint64_t core_now_ns(void);
static inline uint64_t core_now_ms(void)
{
    return core_now_ns() / 1000000u;
}

/* Rendezvous (highest random weight) choice of one of n places for a key:
 * the i with the highest BLAKE2b-64(key || int32 i). Adding a place moves
 * only the keys it then wins. Every placement of ours uses it, so it must
 * never change: shards of existing workspaces depend on it. */
int core_rendezvous(const void *key, size_t len, int n);

/* One-time process initialisation (libsodium, signals); call in every process. */
int core_init(void);

#endif
