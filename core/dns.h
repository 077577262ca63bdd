/* dns.h: asynchronous name resolution on the libuv loop (c-ares 1.18), with a
 * small cache that honours record TTLs.
 *
 * c-ares does the DNS work; its sockets are watched with uv_poll and its
 * retransmit/timeout schedule with one uv_timer, so nothing blocks the loop.
 *
 * Callback contract: when core_dns_resolve or core_dns_lookup_cached returns
 * 0, the callback runs exactly once, always from the loop (never from inside
 * the call that started it), with either a result (err == 0) or a negative
 * error code (see core_dns_status_to_err). core_dns_free answers everything
 * still pending with UV_ECANCELED. The result is valid only during the
 * callback.
 *
 * The cache: core_dns_lookup_cached answers from the cache while the answer's
 * TTL (the smallest over its addresses) has not run out, and resolves again
 * afterwards, so a changed record is followed once its TTL expires and not
 * before. Concurrent lookups of one name share one query (single flight).
 * Failures are not cached. */
#ifndef CORE_DNS_H
#define CORE_DNS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

typedef struct core_dns_s core_dns_t;

typedef struct {
    const char *servers;  /* "host:port,host:port" (IPv6 as "[::1]:53"); NULL: /etc/resolv.conf */
    unsigned timeout_ms;  /* per try; default 2000 */
    unsigned tries;       /* default 2 */
    size_t cache_entries; /* default 1024 names */
    const char *name;     /* for logs and the metrics label; default "dns" */
} core_dns_opts_t;

typedef struct {
    int family; /* AF_INET or AF_INET6 */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } addr;
    uint32_t ttl_s; /* as the server gave it */
} core_dns_addr_t;

typedef struct {
    const char *name;
    const core_dns_addr_t *addrs; /* IPv4 and IPv6 as the server answered */
    size_t naddrs;                /* >= 1 */
    uint32_t ttl_s;               /* smallest over addrs: how long the answer may be cached */
    bool from_cache;              /* answered by core_dns_lookup_cached without a query */
    uint32_t age_ms;              /* how long ago the answer arrived (0 for a fresh one) */
} core_dns_result_t;

typedef void (*core_dns_cb)(const core_dns_result_t *res, int err, void *ud);

/* Creates a resolver. NULL when c-ares cannot be set up (a bad servers string,
 * no usable resolv.conf); the reason is logged. */
core_dns_t *core_dns_new(uv_loop_t *loop, const core_dns_opts_t *o);

/* Resolves name (A and AAAA) without the cache. Returns 0, UV_EINVAL for an
 * empty or over-long name, UV_ECANCELED after core_dns_free. */
int core_dns_resolve(core_dns_t *d, const char *name, core_dns_cb cb, void *ud);

/* Like core_dns_resolve, but answers from the cache while the TTL lasts. */
int core_dns_lookup_cached(core_dns_t *d, const char *name, core_dns_cb cb, void *ud);

/* Forgets every cached answer (in-flight queries still complete). */
void core_dns_cache_clear(core_dns_t *d);

/* Cancels everything pending (callbacks get UV_ECANCELED before this
 * returns) and releases the resolver once the loop has closed its handles, so
 * a second call is safe until then (not after: drop the pointer). Safe from
 * inside a callback; NULL is a no-op. */
void core_dns_free(core_dns_t *d);

/* Maps a c-ares status to this module's negative error code: ARES_ENOTFOUND
 * and ARES_ENONAME -> UV_EAI_NONAME, ARES_ENODATA -> UV_EAI_NODATA,
 * ARES_ETIMEOUT -> UV_ETIMEDOUT, ARES_ECONNREFUSED -> UV_ECONNREFUSED,
 * ARES_ESERVFAIL -> UV_EAI_AGAIN, ARES_EDESTRUCTION and ARES_ECANCELLED ->
 * UV_ECANCELED, ARES_EBADNAME -> UV_EINVAL, anything else -> UV_EAI_FAIL. */
int core_dns_status_to_err(int ares_status);

/* Writes the address as text ("10.0.0.1", "fd00::1"); returns buf. */
const char *core_dns_addr_format(const core_dns_addr_t *a, char *buf, size_t cap);

/* Fills a sockaddr for connecting to a:port; returns its length. */
socklen_t core_dns_addr_to_sockaddr(const core_dns_addr_t *a, uint16_t port,
                                    struct sockaddr_storage *out);

#endif
