/* repl.h: cross-region replication of workspace events.
 *
 * Outbound, the region's outbox relay publishes each event once for every
 * other region the workspace allows, on ev.<origin>.<dest>.<ws>.<type>, into
 * the origin's EV_<origin> stream. This module runs the inbound side:
 *
 *   - The inbound stream IN_<me> sources every other region's EV_ stream
 *     through that region's JetStream domain, one filter per origin,
 *     ev.<origin>.<me>.>: a region's stream never holds what is not meant
 *     for it (design.md, "NATS topology").
 *   - The applier: a durable push consumer on IN_<me> delivered to a queue
 *     group, so every node's applier shares the work. Events are written to
 *     the replica shard (the workspace id's rendezvous shard) idempotently
 *     by (workspace, seq), acknowledged only after COMMIT, and each replica's
 *     applied_seq moves over what is held without a hole.
 *   - Gaps: a replica whose hole stays open is filled by asking its home
 *     region (NATS request, repl.backfill.<home>), which answers from its
 *     Postgres outbox: JetStream is a transport, never the durable copy.
 *   - The backfill server answers those requests for this region's
 *     workspaces, and only to regions the workspace allows.
 *
 * One repl_t per worker process that runs it. */
#ifndef REPL_H
#define REPL_H

#include <stdbool.h>

#include <libpq-fe.h>
#include <uv.h>

#include "core/buf.h"
#include "core/nats.h"
#include "core/pg.h"
#include "residency/res_world.h"

typedef struct repl_s repl_t;

typedef struct {
    uv_loop_t *loop;
    core_nats_t *nats;
    core_pg_pool_t *const *shards; /* this worker's pools, one per shard of the region */
    int nshards;
    const res_world_t *world;
    const char *region;
    bool create_stream; /* create or update IN_<region> and the applier's consumer */
} repl_opts_t;

/* Starts the inbound side. Strings are borrowed: they must outlive it. */
repl_t *repl_start(const repl_opts_t *o);
/* Stops; safe with work in flight. */
void repl_stop(repl_t *r);

/* The envelope of an event as every consumer sees it (JSON: id, region,
 * workspace_id, seq, type, channel_id, payload[, at]), from a row of columns
 * workspace_id, seq, event_id, type, channel_id, payload::text[, commit time
 * in ms since the epoch]. Replaces b's content. */
void repl_envelope(core_buf_t *b, const char *region, const PGresult *res, int row);

/* The shard of this region that holds the replica of workspace ws. */
int repl_replica_shard(const char *ws, int nshards);

/* Purges a stream's messages matching subject (wildcards allowed), on the
 * thread pool; the outcome is logged. Returns 0 or a negative error. */
int repl_purge(core_nats_t *nc, const char *stream, const char *subject);

#endif
