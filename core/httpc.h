/* httpc.h: an HTTP/1.1 client pool to one origin, on libuv and llhttp.
 *
 * The edge's upstream side: one pool per region endpoint keeps connections
 * alive between requests (LIFO, so the warmest socket is reused and the rest
 * can time out), resolves DNS names through core/dns (TTL-honouring cache, so
 * a changed record is followed once its TTL expires), and carries at most one
 * request per connection at a time (no pipelining: a slow answer never holds
 * up an unrelated one).
 *
 * A request's callback runs exactly once, from the loop, never from inside
 * core_httpc_send: with the response (err 0) or a negative error
 * (UV_ETIMEDOUT, UV_ECONNREFUSED, UV_EPROTO for a malformed answer,
 * UV_E2BIG for one over max_response_bytes, UV_ECANCELED after
 * core_httpc_free). The response is valid only during the callback.
 *
 * Upgrades: a request sent with CORE_HTTPC_UPGRADE that gets 101 hands its
 * socket to the callback, which must take it with core_httpc_take_socket
 * (else it is closed). */
#ifndef CORE_HTTPC_H
#define CORE_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/buf.h"
#include "core/dns.h"
#include "core/http.h"

typedef struct core_httpc_s core_httpc_t;
typedef struct core_httpc_req_s core_httpc_req_t;

typedef struct {
    const char *host; /* DNS name or IP literal */
    int port;
    core_dns_t *dns;              /* for names; may be NULL when host is a literal */
    uint32_t connect_timeout_ms;  /* default 2000 */
    uint32_t response_timeout_ms; /* request sent to response complete; default 30000 */
    uint32_t idle_timeout_ms;     /* a kept-alive connection unused this long is closed; 30000 */
    size_t max_idle;              /* kept-alive connections; default 64 */
    size_t max_conns;             /* connections at once; more requests wait; default 1024 */
    size_t max_response_bytes;    /* head + body; default 8 MiB */
} core_httpc_opts_t;

typedef struct {
    int status;
    const core_http_header_t *headers;
    size_t nheaders;
    const char *body;
    size_t body_len;
    uint64_t connect_ns; /* 0 when a kept-alive connection was reused */
} core_httpc_resp_t;

typedef void (*core_httpc_cb)(core_httpc_req_t *r, const core_httpc_resp_t *resp, int err,
                              void *ud);

enum {
    CORE_HTTPC_IDEMPOTENT = 1, /* may be resent once when a reused connection turns out dead */
    CORE_HTTPC_UPGRADE = 2,    /* a 101 answer hands over the socket */
};

core_httpc_t *core_httpc_new(uv_loop_t *loop, const core_httpc_opts_t *o);
/* Cancels every request (callbacks get UV_ECANCELED before this returns) and
 * frees the pool; its connections finish closing on their own. Never call it
 * from inside one of the pool's callbacks. NULL is a no-op. */
void core_httpc_free(core_httpc_t *p);

/* Sends msg (the whole request: head and body; its buffer is taken over and
 * msg is left empty). Returns 0 (cb will run) or a negative error. *out may be
 * NULL; the handle is valid until the callback starts or cancel returns. */
int core_httpc_send(core_httpc_t *p, core_buf_t *msg, int flags, core_httpc_cb cb, void *ud,
                    core_httpc_req_t **out);
/* The callback will never run; the connection is closed if the request was
 * in flight. */
void core_httpc_cancel(core_httpc_req_t *r);

/* Inside the callback of a 101: takes the socket (a connected uv_tcp_t, not
 * reading; the caller now owns it, closes it and frees it with free() in its
 * close callback) and copies any bytes that followed the 101 into extra. */
uv_tcp_t *core_httpc_take_socket(core_httpc_req_t *r, core_buf_t *extra);

/* Connections open and idle (metrics, tests). */
size_t core_httpc_open(const core_httpc_t *p);
size_t core_httpc_idle(const core_httpc_t *p);

#endif
