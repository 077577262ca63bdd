/* redis.h: an asynchronous Redis client on the libuv loop (hiredis 0.14.1).
 *
 * One client owns one connection, watched by a uv_poll through hiredis's event
 * hooks (its bundled libuv adapter ignores poll errors, so redis.c has its
 * own). hiredis's async API has no timeouts, so the client arms its own
 * timers: a connect timeout (which covers the TCP connect and a PING
 * handshake), a per-command timeout, and an idle PING that finds a dead server
 * quickly.
 *
 * Lifecycle: core_redis_new starts connecting at once; failed connects and
 * dropped connections are retried with exponential backoff and full jitter.
 * core_redis_ready is true only between a successful handshake and the next
 * disconnect. Commands are accepted only while ready (otherwise
 * core_redis_command returns UV_ENOTCONN and the callback is never called).
 *
 * Callback contract: every accepted command's callback runs exactly once:
 *   - with the reply (err == 0); a Redis error reply is a reply of type
 *     REDIS_REPLY_ERROR, not an err;
 *   - with UV_ETIMEDOUT once command_timeout_ms passes; the late reply that
 *     hiredis delivers afterwards is dropped;
 *   - with UV_ECONNRESET when the connection drops (UV_ETIMEDOUT when the
 *     client drops it because the server stopped answering);
 *   - with UV_ECANCELED when the client is freed.
 * The reply is valid only during the callback. Commands are pipelined on the
 * one connection, so their callbacks run in submission order.
 *
 * Not supported: pub/sub and blocking commands (BLPOP etc.): an outstanding
 * reply older than dead_timeout_ms is taken as a dead server.
 *
 * Command arguments are never logged. */
#ifndef CORE_REDIS_H
#define CORE_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct core_redis_s core_redis_t;

typedef struct {
    const char *host;            /* IP address or "localhost"; default "127.0.0.1" */
    int port;                    /* default 6379 */
    unsigned connect_timeout_ms; /* connect + handshake; default 1000 */
    unsigned command_timeout_ms; /* default 1000 */
    unsigned ping_interval_ms;   /* PING after this long without traffic; default 1000 */
    unsigned dead_timeout_ms;    /* drop the connection when a reply is this late;
                                    default max(2000, 2 * command_timeout_ms) */
    unsigned backoff_base_ms;    /* reconnect backoff; default 100 */
    unsigned backoff_cap_ms;     /* default 5000 */
    const char *name; /* for logs and the metrics label client="name" (one client per name
                         and worker); default "redis" */
} core_redis_opts_t;

/* reply is NULL exactly when err != 0. */
typedef void (*core_redis_cb)(const redisReply *reply, int err, void *ud);

/* Creates the client and starts connecting. Strings in o are copied. */
core_redis_t *core_redis_new(uv_loop_t *loop, const core_redis_opts_t *o);

/* Sends a command built by hiredis's printf-like format ("%s" C string, "%b"
 * binary pointer + size_t length). Returns 0, UV_ENOTCONN when not ready,
 * UV_EINVAL for a bad format, UV_ECANCELED after core_redis_free. */
int core_redis_command(core_redis_t *r, core_redis_cb cb, void *ud, const char *fmt, ...);
/* Binary-safe variant: argc arguments of argvlen[i] bytes each. */
int core_redis_commandargv(core_redis_t *r, core_redis_cb cb, void *ud, int argc, const char **argv,
                           const size_t *argvlen);

/* Writes the commands queued so far now rather than on the loop's next turn,
 * for a caller whose next step lets a peer act on what it just asked (a
 * stream's hello, after its presence join): Redis then holds the command
 * before anything that peer causes on another connection. A write error is
 * left to the loop, so no callback runs from here. */
void core_redis_flush(core_redis_t *r);

/* True when connected, handshaken and not closing. */
bool core_redis_ready(const core_redis_t *r);

/* Number of commands whose callback has not run yet. */
size_t core_redis_pending(const core_redis_t *r);

/* Closes the connection; every pending callback runs with UV_ECANCELED before
 * this returns (or, when called from inside a callback, right after that
 * callback returns). Memory is released once the loop has run the handles'
 * close callbacks, so a second call is safe until then (not after: drop the
 * pointer). Safe from inside a callback; NULL is a no-op. */
void core_redis_free(core_redis_t *r);

/* A constant description of an err passed to a callback. */
const char *core_redis_strerror(int err);

#endif
