/* rg_batch.h: group commit of API writes, per shard, per worker.
 *
 * Statements added during one pass of the worker's loop go to their shard as
 * ONE core_pg batch (one pipeline Sync: one transaction, one WAL flush),
 * flushed just before the loop sleeps, or as soon as a shard has
 * RG_BATCH_MAX statements waiting. Concurrent requests thus share fsyncs
 * instead of paying one each. While a shard already has RG_BATCH_INFLIGHT
 * groups in flight, new statements wait for one of them to commit: under
 * load the groups grow instead of queueing up one fsync each.
 *
 * Contract for the statements (because a group is one transaction):
 *   - Expected failures must not raise errors. A statement reports them in
 *     its result (e.g. a status column computed by WHERE EXISTS checks, ON
 *     CONFLICT DO NOTHING) so that one request's bad input never rolls back
 *     the others' writes.
 *   - A statement that fails anyway gets CORE_PG_ESQL and rolls back its
 *     group; the others of the group got CORE_PG_EABORTED from core_pg and
 *     are retried here: first together, as a group of their own (without the
 *     failed statement), then, if aborted again, each alone. A statement is
 *     retried at most twice; only then does its callback see
 *     CORE_PG_EABORTED. Statements must therefore be safe to run again after
 *     a rollback (they are: nothing of a rolled-back group is kept).
 *   - Statements of one group take their row locks in the order of their
 *     `key` (a group is sorted by key before it is sent), so that two groups
 *     in flight on different connections cannot deadlock on each other:
 *     statements that lock a workspace's row first pass the workspace id.
 *
 * Callbacks run exactly once, from the loop, never inside rg_batch_add, and
 * only after the group's Sync has been answered: a success is committed
 * (durable under synchronous_commit=on) when it is reported. A write cannot
 * be cancelled once added (it may already be part of a transaction); a
 * request whose client went away just frees itself in the callback.
 *
 * Parameters are NOT copied: values[] (the pointer array is copied, up to
 * RG_BATCH_MAX_PARAMS) must point to strings that stay valid and unchanged
 * until the callback runs, since a retry sends them again. */
#ifndef RG_BATCH_H
#define RG_BATCH_H

#include "core/pg.h"
#include "region/rg_worker.h"

#define RG_BATCH_MAX 256
#define RG_BATCH_MAX_PARAMS 16
/* Groups in flight per shard per worker. One keeps Postgres (the CPU-bound
 * side on a small machine) busy with the fewest, largest transactions: it
 * measured better than 2 or 4 on 2 cores. */
#define RG_BATCH_INFLIGHT 1
/* Statements waiting, over every shard, beyond which rg_batch_add refuses. */
#define RG_BATCH_MAX_QUEUED 16384

typedef struct rg_batch_s rg_batch_t;

/* The worker's batcher (w->batch), made on first use. */
rg_batch_t *rg_batch_of(rg_worker_t *w);
/* Called by the worker after closing its shard pools: statements still
 * waiting fail with UV_ECANCELED; memory goes with the handle's close. */
void rg_batch_free(rg_batch_t *b);

/* Queues one statement for shard. sql must have static storage: its address
 * names a prepared statement (prepared on each connection at first use).
 * key orders the group's statements (see above); it is copied. Returns 0,
 * or UV_EINVAL (bad shard or parameter count) or UV_EBUSY (too many waiting:
 * answer 503), in which case cb is never called. The pool's errors
 * (UV_ENOTCONN while the shard is down, UV_EBUSY, UV_ETIMEDOUT,
 * UV_ECONNRESET: outcome unknown, UV_ECANCELED) reach the callback. */
int rg_batch_add(rg_batch_t *b, int shard, const char *key, const char *sql, int nparams,
                 const char *const *values, core_pg_cb cb, void *ud);

/* Statements queued and not yet sent, over every shard (for tests). */
size_t rg_batch_queued(const rg_batch_t *b);

#endif
