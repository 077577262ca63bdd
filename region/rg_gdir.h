/* rg_gdir.h: the global directory, the world-wide side of rg_dir.
 *
 * Every region holds the whole world's directory in its Postgres (rg_dir.h:
 * dir_workspaces, dir_users, and dir_emails for routing logins): opaque ids
 * and keyed hashes mapped to home regions, never names or content.
 *
 *   - Publishing: a change made here (a user signed up, a workspace created)
 *     is written to dir_outbox in its own transaction; the directory relay
 *     publishes each row to every other region (ev.<me>.<dest>._dir.<kind>,
 *     through their inbound streams, like replicated events) and marks it
 *     published once every region's stream has it. The applier
 *     (replication/repl.c) writes what arrives to every local shard.
 *   - Claims: an email or a slug belongs to whoever claimed it first at the
 *     key's owner region (res_world_owner over the world's regions). A claim
 *     for a key owned elsewhere is a NATS request to that region, decided by
 *     the primary key of its claims table. If the owner cannot be reached the
 *     claim fails (503) and nothing else stops. */
#ifndef RG_GDIR_H
#define RG_GDIR_H

#include <stdint.h>

#include "region/rg_req.h"
#include "region/rg_worker.h"

typedef struct rg_gdir_s rg_gdir_t;

/* Starts the directory relay of every shard and, in a world of several
 * regions, the claim server (worker 0 of each node). Alone, the relay only
 * marks its outbox rows published; published rows are pruned after an hour. */
rg_gdir_t *rg_gdir_start(rg_worker_t *w);
void rg_gdir_stop(rg_gdir_t *g);

#define RG_CLAIM_TAKEN (-7101) /* someone else holds the key */

/* Claims the key (kind "email" or "slug") for owner_id at its owner region.
 * cb runs once (it must begin with rg_req_gone(r)) with 0 when the claim is
 * ours or the key is owned here (the local statement then decides),
 * RG_CLAIM_TAKEN, or a negative UV error when the owner region did not
 * answer. It may run before rg_gdir_claim returns. */
void rg_gdir_claim(rg_req_t *r, const char *kind, const uint8_t hash[32], const char *owner_id,
                   void (*cb)(rg_req_t *r, int outcome));

#endif
