/* rg_relay.h: the outbox relay of one shard.
 *
 * Committed events sit in the shard's outbox (written in the same transaction
 * as the change). The relay publishes them to the region's JetStream stream
 * EV_<region> on ev.<region>.<region>.<workspace>.<type>, with Nats-Msg-Id =
 * the event id so that a republished event is dropped as a duplicate, and
 * then marks them published: one watermark per workspace (outbox_relay:
 * every event up to published_seq is out), since a workspace's events are
 * gap-free and in commit order.
 *
 * It wakes on commit (LISTEN meridian_outbox: a trigger names the workspaces
 * with new events), sweeps every second, and every 30 s compares every
 * workspace's sequence with its watermark, for what notifications missed (a
 * relay that was down, a NATS outage). Each node runs a relay per shard; the
 * one holding the shard's relay lock (a session-level advisory lock)
 * publishes, the others stand by and take over when its session ends. */
#ifndef RG_RELAY_H
#define RG_RELAY_H

#include "core/buf.h"
#include "region/rg_worker.h"

typedef struct rg_relay_s rg_relay_t;

/* Starts relaying shard `shard` of w's region (own pool of one listening
 * connection). */
rg_relay_t *rg_relay_new(rg_worker_t *w, int shard);
/* The event envelope every consumer sees (JSON: id, region, workspace_id,
 * seq, type, channel_id, payload[, at]), from a row of columns workspace_id,
 * seq, event_id, type, channel_id, payload::text[, commit time in ms since
 * the epoch]. Replaces b's content. */
void rg_relay_envelope(core_buf_t *b, const char *region, const PGresult *res, int row);

/* Stops; safe with work in flight (its callbacks are answered first). */
void rg_relay_free(rg_relay_t *r);

/* Creates (or checks) the region's event stream; runs on the thread pool and
 * retries until NATS answers. Call once per node (worker 0). The caller owns
 * the job: rg_relay_stream_cancel it before freeing the NATS client; it is
 * released once its work is done. */
typedef struct rg_stream_job_s rg_stream_job_t;
rg_stream_job_t *rg_relay_ensure_stream(rg_worker_t *w);
void rg_relay_stream_cancel(rg_stream_job_t *j);

#endif
