/* pg.h: an asynchronous PostgreSQL client pool on the libuv loop (libpq).
 *
 * One pool per shard per worker. Each connection is fully non-blocking:
 * PQconnectStart/PQconnectPoll driven by a uv_poll (re-created whenever libpq
 * switches sockets), then PQsetnonblocking + pipeline mode, with PQflush driven
 * by writable events. Nothing here blocks the loop: no PQexec, no
 * PQconnectdb, no PQcancel. (PQconnectStart resolves host names with a
 * blocking getaddrinfo: give IP addresses or Unix socket paths in conninfo.)
 *
 * Pipelining and transactions: every standalone query is sent followed by its
 * own Sync, so it is its own implicit transaction and its failure affects no
 * other query. A batch (core_pg_batch_*) sends all its statements on one
 * connection followed by one Sync: the group is one implicit transaction, the
 * form used for group commit. If one statement of a batch fails, it gets
 * CORE_PG_ESQL and every other statement of the group gets CORE_PG_EABORTED
 * (nothing of the group was committed). Callbacks run only once the group's
 * Sync has been answered, i.e. after the commit, never before: a success is
 * durable when reported.
 *
 * Scheduling: a query or batch goes to the ready connection with the fewest
 * statements in flight, bounded by max_inflight per connection (a batch larger
 * than that may still use an empty connection); the rest wait in one FIFO
 * queue per pool, bounded by max_queued (beyond it submission fails with
 * UV_EBUSY so callers can answer 503).
 *
 * Readiness and failure: connections are opened with exponential backoff and
 * full jitter (the first attempt too, so a fleet starting together does not
 * stampede the server). A connection whose socket closes or errors is dropped
 * at once and its in-flight statements fail with UV_ECONNRESET (their outcome
 * is unknown). A connection idle for ping_idle_ms sends a health query; no
 * answer within ping_timeout_ms drops it (TCP keepalives and tcp_user_timeout
 * are also set through conninfo defaults that the caller's conninfo
 * overrides). core_pg_pool_ready is true while at least one connection is
 * established. Once a connect has failed or the server has closed or stopped
 * answering the last ready connection, the pool is down: queued work fails
 * with UV_ENOTCONN and submission fails fast with UV_ENOTCONN (callers answer
 * 503) until a connection is back. Before the first connect, and while the
 * pool reconnects after dropping a connection for a query timeout, work waits
 * in the queue.
 *
 * Timeouts: every query or batch has a deadline, query_timeout_ms after
 * submission. A queued one that expires fails with UV_ETIMEDOUT. One that is
 * in flight cannot be cancelled without blocking (libpq's cancel is a
 * synchronous connect), so its connection is dropped and reconnected: the
 * expired statements get UV_ETIMEDOUT, the others pipelined behind them on
 * that connection get UV_ECONNRESET. Keep query_timeout_ms well above normal
 * query times.
 *
 * Callback contract (libuv style): when a function that takes a callback
 * returns an error, the callback is never called. Otherwise the callback runs
 * exactly once, from the loop and never from inside the submitting call,
 * unless the request is cancelled with core_pg_cancel first:
 *   err == 0                res is the statement's result (PGRES_TUPLES_OK or
 *                           PGRES_COMMAND_OK), errmsg is NULL;
 *   err == CORE_PG_ESQL     the server rejected the statement: res is the
 *                           error result (core_pg_sqlstate(res) gives the
 *                           SQLSTATE), errmsg its primary message;
 *   any other err           res is NULL, errmsg a short constant or the
 *                           connection's error text (see core_pg_strerror).
 * res and errmsg are valid only during the callback.
 *
 * Ownership: the pool copies the SQL text and parameters; the caller's
 * buffers may be reused as soon as the submitting call returns. A request
 * handle is valid until its callback has started or it has been cancelled.
 *
 * Parameters and statements are never logged (they may hold message bodies). */
#ifndef CORE_PG_H
#define CORE_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <uv.h>

typedef struct core_pg_pool_s core_pg_pool_t;
typedef struct core_pg_req_s core_pg_req_t;
typedef struct core_pg_batch_s core_pg_batch_t;
/* A prepared statement registered on a pool (>= 0). */
typedef int core_pg_stmt_t;

/* The server rejected the statement; res holds the error (SQLSTATE). */
#define CORE_PG_ESQL UV_EIO
/* Not executed, or rolled back, because another statement of its batch (or
 * the batch's commit) failed. Retrying it is safe. */
#define CORE_PG_EABORTED UV_EAGAIN

typedef struct {
    const char *name;            /* logs and the metrics `shard` label; default "pg" */
    const char *conninfo;        /* libpq keyword/value string or URI; required */
    int size;                    /* connections; default 4 */
    uint32_t query_timeout_ms;   /* submission to answer; default 5000 */
    uint32_t connect_timeout_ms; /* TCP connect + startup + auth; default 3000 */
    uint32_t max_queued;         /* queued statements before UV_EBUSY; default 10000 */
    uint32_t max_inflight;       /* statements in flight per connection; default 256 */
    uint32_t ping_idle_ms;       /* health query after this long idle; default 2000 */
    uint32_t ping_timeout_ms;    /* its deadline; default min(2000, query_timeout_ms) */
    uint32_t backoff_base_ms;    /* reconnect backoff; default 100 */
    uint32_t backoff_cap_ms;     /* default 5000 */
    /* Run-time parameters for every session, as libpq's "options" keyword
     * ("-c name=value ..."); NULL for none. */
    const char *session_options;
    /* LISTEN: every connection listens on this channel once it is ready, and
     * on_notify runs for each notification (payload may be ""). It runs from
     * inside the pool's I/O handling, so it must not call into the pool:
     * note the wake-up and act on it later (a timer, the next loop pass).
     * Notifications sent while no connection was up are lost: a listener
     * must also look for work when it starts and now and then. */
    const char *listen;
    void (*on_notify)(const char *channel, const char *payload, void *ud);
    void *notify_ud;
} core_pg_pool_opts_t;

/* res: the result, or the error result for CORE_PG_ESQL, else NULL. */
typedef void (*core_pg_cb)(const PGresult *res, int err, const char *errmsg, void *ud);

/* Creates the pool and starts connecting (after a jittered delay of at most
 * backoff_base_ms). Strings in opts are copied. Returns NULL when opts lacks
 * a conninfo. Registers the pool's metrics (label shard="<name>"). */
core_pg_pool_t *core_pg_pool_new(uv_loop_t *loop, const core_pg_pool_opts_t *opts);

/* Closes every connection. Every pending callback (queued, in flight or
 * committed batches) runs with UV_ECANCELED before this returns; callbacks
 * that are being delivered when it is called from inside a callback finish
 * with their real results. Uncommitted batches stay valid until committed
 * (which then fails with UV_ECANCELED) or discarded. Memory is released once
 * the loop has run the handles' close callbacks. Safe to call twice and from
 * inside a callback; NULL is a no-op. */
void core_pg_pool_close(core_pg_pool_t *p);

/* True while at least one connection is established and the pool is open. */
bool core_pg_pool_ready(const core_pg_pool_t *p);

/* Statements queued or in flight whose callbacks have not run yet. */
size_t core_pg_pool_pending(const core_pg_pool_t *p);

/* The pool's name as given in opts. */
const char *core_pg_pool_name(const core_pg_pool_t *p);

/* Registers a statement to be prepared lazily, once per connection, in the
 * same pipeline as its first use (a failed prepare fails that first use with
 * CORE_PG_ESQL and is retried on the next). Registering the same SQL again
 * returns the same id (looked for at the same address first, then by text):
 * meant for static SQL, since a registered statement lives as long as the
 * pool. Parameter types are inferred by the server: cast in
 * the SQL ($1::bigint) where that is ambiguous. Returns 0 or UV_EINVAL. */
int core_pg_pool_prepare(core_pg_pool_t *p, const char *sql, core_pg_stmt_t *out);

/* Submits one statement with its own Sync. values[i] == NULL is SQL NULL.
 * lengths == NULL: every value is NUL-terminated text; otherwise every value
 * is binary, lengths[i] bytes, in the type's binary send format. Results are
 * always text. out_handle (may be NULL) receives a handle for core_pg_cancel.
 * Returns 0, UV_EINVAL (bad arguments), UV_EBUSY (queue full), UV_ENOTCONN
 * (no connection after a failure), UV_ECANCELED (pool closed). */
int core_pg_query(core_pg_pool_t *p, const char *sql, int nparams, const char *const *values,
                  const int *lengths, core_pg_cb cb, void *ud, core_pg_req_t **out_handle);
/* The same with a statement from core_pg_pool_prepare. */
int core_pg_query_prepared(core_pg_pool_t *p, core_pg_stmt_t stmt, int nparams,
                           const char *const *values, const int *lengths, core_pg_cb cb, void *ud,
                           core_pg_req_t **out_handle);
/* The same with static SQL, registered on first use (core_pg_pool_prepare)
 * and then run as its prepared statement: for callers that would otherwise
 * keep one statement id per pool. */
int core_pg_query_static(core_pg_pool_t *p, const char *sql, int nparams, const char *const *values,
                         const int *lengths, core_pg_cb cb, void *ud, core_pg_req_t **out_handle);

/* Starts an empty batch. It must end with core_pg_batch_commit or
 * core_pg_batch_discard (also after the pool was closed). Never NULL. */
core_pg_batch_t *core_pg_batch_begin(core_pg_pool_t *p);
/* Appends a statement (arguments as for core_pg_query); nothing is sent
 * before the commit. Returns 0 or UV_EINVAL. */
int core_pg_batch_add(core_pg_batch_t *b, const char *sql, int nparams, const char *const *values,
                      const int *lengths, core_pg_cb cb, void *ud, core_pg_req_t **out_handle);
int core_pg_batch_add_prepared(core_pg_batch_t *b, core_pg_stmt_t stmt, int nparams,
                               const char *const *values, const int *lengths, core_pg_cb cb,
                               void *ud, core_pg_req_t **out_handle);
/* Statements added so far. */
size_t core_pg_batch_len(const core_pg_batch_t *b);
/* Submits the batch as one group (one Sync, one transaction). The batch is
 * consumed whatever the outcome. Returns 0, UV_EINVAL (empty batch),
 * UV_EBUSY, UV_ENOTCONN or UV_ECANCELED as core_pg_query; on an error no
 * callback of the batch is called. */
int core_pg_batch_commit(core_pg_batch_t *b);
/* Drops an uncommitted batch without calling any of its callbacks. */
void core_pg_batch_discard(core_pg_batch_t *b);

/* The callback of this request will not be called. A standalone query still
 * waiting in the queue is dropped without being sent; a statement already
 * sent, or part of a batch, still runs (a group is one transaction) and its
 * result is discarded. NULL is a no-op. */
void core_pg_cancel(core_pg_req_t *req);

/* A constant description of an err passed to a callback. */
const char *core_pg_strerror(int err);
/* The SQLSTATE of an error result ("23505"), or "" when there is none. */
const char *core_pg_sqlstate(const PGresult *res);
/* What may be logged of a failure: the SQLSTATE when the server answered
 * with one, else core_pg_strerror(err); never the server's message, whose
 * detail may quote a row. */
const char *core_pg_errcode(const PGresult *res, int err);

#endif
