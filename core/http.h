/* http.h: HTTP/1.1 server on libuv and llhttp.
 *
 * One server per worker loop. Requests on a connection are handled one at a
 * time and answered in order: a pipelined request is parsed only after the
 * previous one has been answered, so handlers may answer asynchronously
 * (after a database round trip) without any reordering logic.
 *
 * Output is buffered per connection and written once per loop pass, just
 * before the loop sleeps; a write watcher is installed only when the kernel
 * took less than everything.
 *
 * Ownership: the server owns connections; a connection owns its current
 * request. A request handed to a handler stays valid until the handler answers
 * it (core_http_respond*) or until its on_abort hook runs because the client
 * went away; after either, the handler must not touch it. Connections are
 * freed only in their close callback, never inside one of their own callbacks. */
#ifndef CORE_HTTP_H
#define CORE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "core/metrics.h"

typedef struct core_http_server_s core_http_server_t;
typedef struct core_http_conn_s core_http_conn_t;
typedef struct core_http_req_s core_http_req_t;

typedef struct {
    size_t max_header_bytes;    /* request line + headers; over it: 431 */
    size_t max_headers;         /* header count; over it: 431 */
    size_t max_body_bytes;      /* over it: 413 */
    uint32_t header_timeout_ms; /* first byte to end of headers; then 408 and close */
    uint32_t body_timeout_ms;   /* end of headers to end of body; then 408 and close */
    uint32_t idle_timeout_ms;   /* keep-alive wait for the next request; then close */
    uint32_t write_timeout_ms;  /* output stuck this long: the peer is not reading; close */
    uint32_t max_connections;   /* per worker; over it new connections are closed at once */
} core_http_limits_t;

void core_http_limits_default(core_http_limits_t *l);

/* Reads the limits from a configuration section (`http` in region and edge
 * configurations; obj may be NULL), starting from the defaults. Keys other
 * than the limits' own are errors unless listed in extra_keys (NULL-terminated;
 * may be NULL), which the caller reads itself. */
struct core_cfg_s;
struct core_json_s;
void core_http_limits_from_cfg(struct core_cfg_s *c, const struct core_json_s *obj,
                               const char *const *extra_keys, core_http_limits_t *h);

typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} core_http_header_t;

#define CORE_HTTP_MAX_PARAMS 8

struct core_http_req_s {
    core_http_conn_t *conn;
    int method;              /* llhttp_method_t */
    const char *method_name; /* "GET", ... */
    const char *path;        /* raw (not percent-decoded) path without the query, NUL-terminated */
    size_t path_len;
    const char *query; /* raw query without '?', NUL-terminated, or "" */
    core_http_header_t *headers;
    size_t nheaders;
    core_buf_t body;
    int http_minor; /* 0 or 1: HTTP/1.x */
    bool keep_alive;
    bool upgrade; /* the client asked for a protocol upgrade */
    char id[40];  /* request id: the client's X-Request-Id if sane, else ours */
    uint64_t start_ns;
    struct {
        const char *name;
        const char *value;
    } params[CORE_HTTP_MAX_PARAMS];
    size_t nparams;
    /* Set by a handler that answers later: called (once) if the client goes
     * away first, so the handler can cancel and forget the request. */
    void (*on_abort)(core_http_req_t *req);
    void *user;
    /* Optional "key=value ..." that the access log line appends (e.g. the
     * region an edge routed to). Must outlive the response. */
    const char *access_note;
};

typedef void (*core_http_handler_t)(core_http_req_t *req, void *ud);

/* Creates a server on loop. Routes are added before core_http_listen. */
core_http_server_t *core_http_server_new(uv_loop_t *loop, const core_http_limits_t *limits);
/* Adds a route. pattern: "/v1/workspaces/{id}/stream"; a {name} segment
 * matches one non-empty path segment. method: "GET", "POST", ... Returns 0 or
 * a negative error (bad pattern, too many params). */
int core_http_route(core_http_server_t *s, const char *method, const char *pattern,
                    core_http_handler_t handler, void *ud);
/* The handler for requests whose path matches no route (instead of 404):
 * a proxy routes everything it does not serve itself. */
void core_http_set_fallback(core_http_server_t *s, core_http_handler_t handler, void *ud);
/* Calls fn for every registered route, in registration order. */
void core_http_route_each(const core_http_server_t *s,
                          void (*fn)(const char *method, const char *pattern, void *ud), void *ud);
/* Cross-origin requests from browsers (CORS): origins allowed to call the
 * API ("scheme://host[:port]", or "*" for any). Preflights (OPTIONS with
 * Access-Control-Request-Method) to a route are answered 204, and every
 * response to an allowed Origin carries Access-Control-Allow-Origin. No
 * credentials mode: the API authenticates with bearer tokens, never cookies.
 * Copies the list; call before core_http_listen. */
void core_http_set_cors(core_http_server_t *s, char *const *origins, size_t n);
/* Starts accepting on an already bound and listening-capable socket fd
 * (SO_REUSEPORT set by the caller), or binds host:port itself when fd < 0. */
int core_http_listen(core_http_server_t *s, int fd, const char *host, int port);
/* Graceful drain: stop accepting, close idle connections, finish in-flight
 * requests (answered with Connection: close), and call done once every
 * connection is gone. Upgraded connections get their on_drain hook. */
void core_http_drain(core_http_server_t *s, void (*done)(void *ud), void *ud);
/* Closes everything at once and frees the server once all handles closed. */
void core_http_server_free(core_http_server_t *s);
/* Access log lines (info level, one per request) on or off; on by default. */
void core_http_server_set_access_log(core_http_server_t *s, bool on);
/* Counts for metrics and tests. */
size_t core_http_server_connections(const core_http_server_t *s);

/* Looks up a request header, case-insensitively; NULL if absent. */
const char *core_http_header(const core_http_req_t *req, const char *name, size_t *len);
/* True if any header `name` holds `token` in its comma-separated list,
 * case-insensitively (Connection: keep-alive, Upgrade). */
bool core_http_header_has_token(const core_http_req_t *req, const char *name, const char *token);
/* Looks up a path parameter by name; NULL if absent. */
const char *core_http_param(const core_http_req_t *req, const char *name);
/* Looks up a query parameter (percent-decoded into dst); returns its length or -1. */
int core_http_query(const core_http_req_t *req, const char *name, char *dst, size_t cap);

/* True when the query string names the parameter at all (with or without a
 * value), so that absent and malformed can get different answers. */
bool core_http_has_query(const core_http_req_t *req, const char *name);

/* Answers the request. extra_headers: "Name: value\r\n..." or NULL. The body
 * is copied. After this the request belongs to the server again. */
void core_http_respond(core_http_req_t *req, int status, const char *content_type,
                       const char *extra_headers, const void *body, size_t len);
void core_http_respond_json(core_http_req_t *req, int status, const core_buf_t *body);
/* {"error":{"code":code,"message":message}} with the given status. */
void core_http_respond_error(core_http_req_t *req, int status, const char *code,
                             const char *message);
/* The same with extra headers ("Name: value\r\n..."); 503 and 429 get
 * Retry-After: 1 when extra_headers is NULL. */
void core_http_respond_error_h(core_http_req_t *req, int status, const char *code,
                               const char *message, const char *extra_headers);
const char *core_http_status_text(int status);

/* ---- protocol upgrade (WebSocket) ----
 * After core_http_upgrade the connection carries raw bytes: reads go to
 * on_data, and the upgraded protocol writes with core_http_conn_write. The
 * connection (and its socket) still belongs to the server; the hooks' owner
 * frees its own state in on_close, which is called exactly once. */
typedef struct {
    void (*on_data)(void *ud, const char *data, size_t len);
    void (*on_timeout)(void *ud); /* the timer armed with core_http_conn_set_timer fired */
    void (*on_drain)(void *ud);   /* server is draining: say goodbye and close */
    void (*on_close)(void *ud);   /* connection closed; free your state */
    /* Optional: output that had to wait for the kernel has all been taken
     * (a paced sender can queue more). */
    void (*on_writable)(void *ud);
} core_http_upgrade_hooks_t;

/* Writes response_head (the 101 response, verbatim) and switches the
 * connection to the hooks. Bytes that followed the request are delivered to
 * on_data on the next loop pass. The request is released. */
int core_http_upgrade(core_http_req_t *req, const char *response_head, size_t len,
                      const core_http_upgrade_hooks_t *hooks, void *ud);
/* Queues bytes for the next flush (copied). Returns 0 or UV_ENOBUFS when the
 * connection already has more than `limit` bytes queued (0: no limit). */
int core_http_conn_write(core_http_conn_t *c, const void *data, size_t len, size_t limit);
/* Bytes queued but not yet taken by the kernel. */
size_t core_http_conn_queued(const core_http_conn_t *c);
/* Arms (ms > 0) or stops (ms == 0) the connection's single timer. */
void core_http_conn_set_timer(core_http_conn_t *c, uint32_t ms);
/* Flushes what is queued, then closes. Safe to call twice. */
void core_http_conn_close(core_http_conn_t *c);
/* Stops or resumes reading from the socket (backpressure). */
void core_http_conn_pause(core_http_conn_t *c, bool paused);
/* The peer's address as text, for logs. */
const char *core_http_conn_peer(const core_http_conn_t *c);

#endif
