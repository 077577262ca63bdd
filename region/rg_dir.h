/* rg_dir.h: where a workspace or user of this region lives (its shard).
 *
 * The region's directory is the dir_workspaces/dir_users tables, present on
 * every shard (the owning shard writes its row in the creating transaction;
 * the others get a copy). A worker keeps what it has looked up in memory;
 * a miss asks every shard at once and takes the first answer, so a lookup
 * works while any shard holding the row is up. Concurrent misses for one id
 * share one set of queries (single flight): a cold start does not stampede
 * Postgres. Outcomes for the callback:
 *   0           found; *p is valid during the callback
 *   UV_ENOENT   every shard answered and none has it
 *   UV_EAGAIN   not found on the shards that answered, but some failed: the
 *               caller answers 503, never 404, since the row may be on a
 *               shard that is down */
#ifndef RG_DIR_H
#define RG_DIR_H

#include <stdint.h>

#include "region/rg_req.h"

typedef enum { RG_DIR_WORKSPACE, RG_DIR_USER } rg_dir_kind_t;

typedef struct {
    int shard;
    int64_t epoch;
    char home_region[33];
} rg_place_t;

typedef void (*rg_dir_cb)(rg_req_t *r, int err, const rg_place_t *p);

typedef struct rg_dir_s rg_dir_t;

rg_dir_t *rg_dir_new(rg_worker_t *w);
/* Frees the directory. Call after closing the worker's pools, which answers
 * every lookup still in flight (with UV_EAGAIN). */
void rg_dir_free(rg_dir_t *d);

/* The cached placement, or NULL (then call rg_dir_lookup). */
const rg_place_t *rg_dir_cached(rg_dir_t *d, rg_dir_kind_t kind, const char *id);
/* Looks id up; cb runs exactly once and must begin with rg_req_gone(r). It
 * may run before rg_dir_lookup returns (every shard refused at once), so the
 * caller must return right after starting the lookup. */
void rg_dir_lookup(rg_dir_t *d, rg_req_t *r, rg_dir_kind_t kind, const char *id, rg_dir_cb cb);
/* Records a placement this worker just created (no lookup needed later). */
void rg_dir_remember(rg_dir_t *d, rg_dir_kind_t kind, const char *id, const rg_place_t *p);
/* Drops the cached placement of id (it moved): the next use looks it up. */
void rg_dir_forget(rg_dir_t *d, rg_dir_kind_t kind, const char *id);

#endif
