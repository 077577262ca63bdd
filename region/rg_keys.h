/* rg_keys.h: the region's master keys and each worker's cache of workspace
 * data keys (docs/encryption.md).
 *
 * The master process loads the master keys (rg_keys_init) before it forks;
 * workers inherit them. Each worker keeps the data keys it has unwrapped in
 * one sodium_malloc'd (mlocked, guard-paged) slab, at most RG_KEYS_CACHE
 * workspaces, least recently used evicted first.
 *
 * A miss reads the workspace's row of workspace_keys on its shard; concurrent
 * misses for one workspace share that one query (single flight). When no row
 * exists and the workspace's home is this region, the same statement creates
 * one (a fresh data key wrapped by the current master key, INSERT ... ON
 * CONFLICT DO NOTHING) and the key that won is used: workers racing on a new
 * workspace agree. A workspace homed elsewhere never gets a key here except
 * through rg_keys_install (moves).
 *
 * With encryption.enabled false, data keys are still loaded (old encrypted
 * rows still decrypt, and the blind index is keyed) but new bodies are
 * written in plaintext. Without any master key (encryption off and no
 * master_key_file) there are no data keys: the blind index is keyed by a
 * value derived from the workspace id alone, which hides nothing the
 * plaintext bodies beside it do not already show. */
#ifndef RG_KEYS_H
#define RG_KEYS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/pg.h"
#include "region/rg_config.h"
#include "region/rg_req.h"
#include "region/rg_worker.h"
#include "residency/res_keys.h"

#define RG_KEYS_CACHE 4096 /* workspaces per worker */

/* Errors given to callbacks (besides the pool's: UV_ENOTCONN, UV_ETIMEDOUT...). */
#define RG_KEYS_ENOKEY UV_ENOENT  /* no key row, and this region is not the home */
#define RG_KEYS_EUNWRAP UV_EACCES /* a row, but no configured master key opens it */

/* A workspace's keys, in locked memory owned by the cache. */
typedef struct {
    uint8_t dk[RES_KEYS_KEY_BYTES];  /* the data key (meaningless when !has_dk) */
    uint8_t idx[RES_KEYS_KEY_BYTES]; /* the blind index key */
    bool has_dk;                     /* false only without any master key */
} rg_key_t;

/* Loads the master key and the previous ones named by cfg->encryption (each
 * checked as res_keys_master_load does) and remembers cfg's region. Called
 * once by the master process before forking, and by --check-config. On
 * error returns a negative code with the reason (naming the field and file)
 * in err. */
int rg_keys_init(const rg_config_t *cfg, char *err, size_t errlen);
/* Wipes every key: master keys and this process's cache. */
void rg_keys_shutdown(void);

/* True when new bodies are encrypted (encryption.enabled). */
bool rg_keys_encrypting(void);
/* The current master key, or NULL when none is configured. */
const res_keys_master_t *rg_keys_master(void);
/* The configured master key (current or previous) with this id, or NULL. */
const res_keys_master_t *rg_keys_master_by_id(const char *key_id);

/* err == 0: key is valid during the callback (and until this worker's loop
 * next runs a key load or rg_keys_forget: copy what must last longer). */
typedef void (*rg_keys_cb)(int err, const rg_key_t *key, void *ud);

/* The keys of workspace ws, stored on `shard`. On a cache hit cb runs before
 * this returns (then return right away); otherwise it runs exactly once,
 * later, from the loop. Returns 0, or a negative error (UV_EINVAL for a bad
 * id, or the pool's UV_EBUSY/UV_ENOTCONN) in which case cb is never called. */
int rg_keys_get(rg_worker_t *w, const char *ws, int shard, rg_keys_cb cb, void *ud);
/* The cached keys of ws, or NULL (no query is made). Marks them recently used. */
const rg_key_t *rg_keys_peek(const char *ws);
/* Drops ws from this worker's cache, wiping its keys (a load in flight
 * completes for its waiters but is not kept). */
void rg_keys_forget(const char *ws);

/* The columns of a key row for ws holding dk, wrapped by the current master
 * key for this region: key_id (hex) and the wrapped key as a bytea text
 * literal ("\\x" + 144 hex). Returns 0, or RES_KEYS_EINVAL without a master
 * key. For statements of the caller's own (moves). */
#define RG_KEYS_WRAPPED_HEX (2 + 2 * RES_KEYS_WRAPPED_BYTES + 1)
int rg_keys_wrap_row(const char *ws, const uint8_t dk[RES_KEYS_KEY_BYTES],
                     char key_id[RES_KEYS_ID_LEN + 1], char wrapped[RG_KEYS_WRAPPED_HEX]);
/* Upserts a key row: $1 workspace, $2 key_id, $3 wrapped (rg_keys_wrap_row). */
extern const char rg_keys_install_sql[];
/* Deletes the region's copy of a workspace's data key: $1 workspace. After
 * it commits (and rg_keys_forget in every worker, or their restart), this
 * region can no longer decrypt anything of the workspace: crypto-shredding. */
extern const char rg_keys_destroy_sql[];

/* Installs dk for ws (received from another region, e.g. by a move) on
 * `shard`: wraps it with this region's master key and upserts the row, then
 * drops any cached copy. cb is the pool's callback for the upsert. Returns 0,
 * RES_KEYS_EINVAL (no master key) or the pool's submission error. */
int rg_keys_install(rg_worker_t *w, const char *ws, int shard, const uint8_t dk[RES_KEYS_KEY_BYTES],
                    core_pg_cb cb, void *ud);

/* Answers a request whose keys could not be had (err from rg_keys_cb or
 * rg_keys_get): no key or none that opens (RG_KEYS_ENOKEY, RG_KEYS_EUNWRAP)
 * is 503 {"error":{"code":"key_unavailable",...}} with Retry-After, never
 * more detail; the shard's own failure is answered as rg_req_fail_pg does
 * (503 shard_unavailable). Frees r. */
void rg_keys_fail(rg_req_t *r, int err);

/* --rewrap-keys: on every shard, rewraps each data key whose key_id is not
 * the current master key's, unwrapping it with the previous master key of
 * that id. Blocking (libpq synchronous API): tools only. *rewrapped counts
 * the rows rewrapped, *failed those no configured key opens (left as they
 * are). Returns 0, or -1 with the reason in err (a shard unreachable). */
int rg_keys_rewrap_all(const rg_config_t *cfg, int *rewrapped, int *failed, char *err,
                       size_t errlen);

#endif
