/* rg_move.h: live moves of a workspace from this region to another
 * (docs/moves.md), crash-safe at every step on either side.
 *
 * The source region drives a move from its row in `moves` (migration 0012)
 * on the workspace's shard. Any node's worker 0 may drive it while it holds
 * the row's lease; a crashed driver's lease runs out and another (or the same
 * one, restarted) resumes from the row. Steps:
 *
 *   catching_up  copy every row of the workspace to the target in keyset
 *                order (the cursor is saved after each acknowledged chunk),
 *                then re-send what the events since the copy began touched,
 *                until few events are left;
 *   frozen       the write fence: the source's workspace row names the
 *                target, and a trigger refuses any statement that would issue
 *                a sequence number (503 workspace_moving); the last changes
 *                are sent and the target commits: it becomes the home, epoch
 *                + 1, with the data key sealed to it;
 *   flipped      the source's directory names the target (epoch + 1), every
 *                worker of the region forgets the placement and closes the
 *                workspace's streams (clients resume at the new home);
 *   purging      rows, stream messages and Redis keys go;
 *   shredding    the source's copy of the data key is destroyed; a report of
 *                the move is signed with the region's key;
 *   done.
 *
 * Never two homes: the fence is committed at the source before the target is
 * asked to commit, and stays until the rows are purged. The target takes
 * requests from its own commit on; a source worker with a stale placement
 * hits the fence (421 naming the target).
 *
 * Messages between regions are NATS requests on mv.<target>.in (queue group
 * "move"); every operation is idempotent, so a lost answer is simply asked
 * again. Every worker listens on mv.<region>.moved for "forget this
 * workspace" notices. */
#ifndef RG_MOVE_H
#define RG_MOVE_H

#include "region/rg_worker.h"

typedef struct rg_move_s rg_move_t;

/* Starts the notice listener; on worker 0 also the driver and the server for
 * moves into this region (in a world of several regions). */
rg_move_t *rg_move_start(rg_worker_t *w);
void rg_move_stop(rg_move_t *m);

/* After a standby of ws was promoted here (rg_api_moves.c): every worker of
 * the region forgets the placement, and every shard's directory copy learns
 * the home shard. */
void rg_move_promoted(rg_worker_t *w, const char *ws, int shard);

/* Deletes the replica events of ws (now homed here) from `shard`, in
 * chunks after the commit that made it home: in the commit they would hold
 * the write freeze for as long as the replica is big. */
void rg_move_drop_replica(rg_worker_t *w, const char *ws, int shard);

/* Wakes the drivers of the region (a move was created or cancelled). */
void rg_move_kick(rg_worker_t *w);

#endif
