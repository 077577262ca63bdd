/* rg_worker.h: one worker process of a meridian-region node: a single
 * libuv loop serving the REST API and WebSocket gateway, with its own
 * connections to the region's stores (shared-nothing). */
#ifndef RG_WORKER_H
#define RG_WORKER_H

#include <stdbool.h>
#include <stdio.h>

#include <uv.h>

#include "core/http.h"
#include "core/nats.h"
#include "core/obs.h"
#include "core/pg.h"
#include "core/redis.h"
#include "core/admit.h"
#include "core/auth.h"
#include "core/drain.h"
#include "region/rg_config.h"
#include "residency/res_world.h"

/* Longest a new worker refuses sessions while its stores connect. */
#define RG_WARMUP_MAX_MS 3000

/* Every statement of ours is prepared once per session and runs a cached
 * generic plan. A plan built while a table was small (a fresh shard) would
 * scan or hash whole tables that then grow without bound: measured, posts fell
 * from 8.7k/s to 2.9k/s as the messages table filled. Every query of the
 * region is index-driven by design, so its sessions rule those plans out.
 * JIT goes with them: a ruled-out node still costs 1e10, past jit_above_cost,
 * and Postgres then compiled such a statement with LLVM on every execution
 * (tens of ms each; at 10k events/s it was most of the machine's CPU). */
#define RG_PG_SESSION_OPTIONS "-c enable_seqscan=off -c enable_hashjoin=off -c jit=off"

/* Everything one worker owns; freed in one place, worker_close in rg_worker.c.
 * API handlers get it as their route's user data. */
typedef struct rg_worker_s {
    const rg_config_t *cfg;
    const res_world_t *world; /* the world description; NULL for a region on its own */
    int index;
    uv_loop_t loop;
    core_drain_t drain;    /* SIGTERM: drain, then stop the loop */
    uv_timer_t trim_timer; /* hands freed heap pages back to the kernel */
    core_http_server_t *http;
    core_obs_t obs;
    core_redis_t *redis;
    core_nats_t *nats;
    char nats_name[64];
    core_pg_pool_t *shards[RG_MAX_SHARDS]; /* one pool per shard, this worker's own */
    char shard_names[RG_MAX_SHARDS][16];
    int nshards;
    struct rg_dir_s *dir;                     /* placements of workspaces and users (rg_dir.h) */
    struct rg_relay_s *relays[RG_MAX_SHARDS]; /* outbox relays: worker 0 only */
    struct rg_postq_s *postq;                 /* set-based posts (rg_api_messages.c) */
    struct rg_batch_s *batch;                 /* group commit of writes (rg_batch.h) */
    struct rg_stream_job_s *stream_job;       /* creating the event stream: worker 0 */
    struct repl_s *repl;                      /* inbound replication: worker 0 */
    struct rg_gdir_s *gdir;                   /* directory relay and claims: worker 0 */
    struct rg_move_s *move;                   /* moves between regions (rg_move.h) */
    const core_auth_keys_t *keys;             /* this region's signing and keyed-hash keys */
    core_auth_pubkey_t *verify_keys; /* tokens verify against these: ours and every region's */
    size_t nverify_keys;
    core_auth_hasher_t *hasher;          /* argon2id on the thread pool, bounded */
    core_auth_token_cache_t *tokens;     /* verified access tokens */
    core_bucket_t admission;             /* this worker's share of new sessions */
    core_admit_queue_t shed_queue;       /* when its shed are told to come back */
    struct core_admit_s *node_admission; /* the node's, shared by its workers */
    core_metric_t m_admitted, m_shed_worker, m_shed_node, m_shed_starting;
    bool warm;              /* its stores were all reachable once, or it waited long enough */
    uint32_t cold_admitted; /* sessions admitted before that */
    uint64_t started_ms;    /* loop time at start */
    int exit_code;
} rg_worker_t;

/* Prints "METHOD /pattern" for every production route (debug routes are
 * left out), one per line: the API document is checked against it. */
void rg_worker_print_routes(FILE *out);

/* The node-wide admission bucket, mapped by the master before it forks
 * (core/admit.h); NULL: workers admit on their own buckets only. */
void rg_worker_set_node_admission(struct core_admit_s *a);
/* The node's table of verified tokens (core/auth.h), mapped by the master
 * before it forks; NULL: each worker verifies on its own. */
void rg_worker_set_token_seen(core_auth_token_seen_t *seen);

typedef enum {
    RG_ADMIT_OK,       /* go on */
    RG_ADMIT_SHED,     /* over the cap: 503 overloaded */
    RG_ADMIT_STARTING, /* a worker still connecting to its stores: 503 starting */
} rg_admit_t;

/* Admission of a new stream session. Unless RG_ADMIT_OK, the caller answers
 * 503 with the retry hint in hint_ms (the session's slot in the node's
 * queue; the worker's own when the node has none). A worker that has not
 * reached all its stores yet since it started admits no more than its
 * bucket's burst: what it admits waits for its pools and then completes all
 * at once, so a herd admitted then would pass the cap together. Cheap:
 * called before any token check or database work. */
rg_admit_t rg_worker_admit(rg_worker_t *w, uint32_t *hint_ms);

/* Runs the worker until it has drained after SIGTERM; returns the exit code. */
int rg_worker_run(const rg_config_t *cfg, const res_world_t *world, const core_auth_keys_t *keys,
                  int index);

#endif
