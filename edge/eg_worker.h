/* eg_worker.h: one worker process of meridian-edge: a single-threaded loop
 * that serves clients (eg_proxy.c), keeps the directory (eg_dir.h) in step
 * with a region's change feed, and watches every region's endpoints
 * (eg_upstream.c). Shared-nothing: every worker holds its own copy. */
#ifndef EG_WORKER_H
#define EG_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "core/admit.h"
#include "core/auth.h"
#include "core/backoff.h"
#include "core/dns.h"
#include "core/drain.h"
#include "core/http.h"
#include "core/httpc.h"
#include "core/metrics.h"
#include "core/obs.h"
#include "edge/eg_config.h"
#include "edge/eg_dir.h"
#include "residency/res_world.h"

#define EG_MAX_TARGETS 16

typedef enum { EG_BREAKER_CLOSED, EG_BREAKER_OPEN, EG_BREAKER_HALF_OPEN } eg_breaker_t;

typedef struct eg_region_s eg_region_t;

/* One endpoint (api url) of a region: a keep-alive pool and its breaker. */
typedef struct {
    eg_region_t *region;
    char *url; /* "http://host:port", for redirects */
    char *host;
    char hostport[300]; /* the Host header */
    int port;
    core_httpc_t *pool;
    eg_breaker_t breaker;
    uint32_t failures; /* in a row */
    uint64_t open_until_ms;
    core_httpc_req_t *probe; /* the health check in flight */
    uint64_t next_probe_ms;  /* when the next health check is due */
    core_backoff_t backoff;  /* between checks of an endpoint that fails */
} eg_target_t;

struct eg_region_s {
    struct eg_worker_s *w;
    int index;
    const res_region_t *def;
    eg_target_t targets[EG_MAX_TARGETS];
    size_t ntargets;
    unsigned rr;
    core_bucket_t admission;       /* new sessions (core/admit.h)... */
    core_admit_queue_t shed_queue; /* ...and when the shed are told to come back, */
    core_admit_t *node_admission;  /* or both shared by all workers (eg_upstream.c) */
    char note[48];                 /* "region=<name>" for access logs */
    uint32_t tunnels;
    core_metric_t m_req[6], m_lat, m_err, m_shed, m_tunnels, m_tunnels_lost, m_up;
};

typedef struct eg_worker_s {
    const eg_config_t *cfg;
    const res_world_t *world;
    const core_auth_pubkey_t *keys;
    size_t nkeys;
    const core_auth_keys_t *hash_keys; /* only email_key is loaded */
    int index;
    uv_loop_t loop;
    core_http_server_t *http;
    core_obs_t obs;
    core_dns_t *dns;
    eg_dir_t *dir;
    eg_region_t *regions;
    size_t nregions;
    core_httpc_t **health_pools; /* [region * EG_MAX_TARGETS + target] */
    core_auth_token_cache_t *tokens;
    uv_timer_t health_timer;
    uv_timer_t dir_timer;
    uv_timer_t notify_timer;
    core_drain_t drain; /* SIGTERM: drain, then stop the loop */
    int exit_code;
    /* the directory followers: one per region (eg_worker.c) */
    char dir_token[300];
    struct eg_follower_s *followers; /* [nregions] */
    bool dir_loaded;                 /* some region's snapshot is in */
    struct eg_dir_waiter_s *dir_waiters;
    core_metric_t m_dir_entries, m_refused;
} eg_worker_t;

/* The node's table of verified tokens (core/auth.h), mapped by the master
 * before it forks; NULL: each worker verifies on its own. */
void eg_worker_set_token_seen(core_auth_token_seen_t *seen);
int eg_worker_run(const eg_config_t *cfg, const res_world_t *world, const core_auth_pubkey_t *keys,
                  size_t nkeys, const core_auth_keys_t *hash_keys, int index);

/* ---- eg_upstream.c ---- */
/* Called by the master before it forks: one admission bucket and queue of
 * shed sessions per region of the world, shared by the workers
 * (core/admit.h), at the sum of their buckets' rates and bursts. Without it
 * (mmap failed) each worker keeps its own. */
void eg_upstream_share_admission(const eg_config_t *cfg, const res_world_t *world);
/* The master, once its workers are gone. */
void eg_upstream_unshare_admission(void);
int eg_upstream_init(eg_worker_t *w);
void eg_upstream_free(eg_worker_t *w);
/* A target of region r that may take a request, or NULL when the region is down. */
eg_target_t *eg_upstream_pick(eg_region_t *r);
/* Feeds a request's outcome to the target's breaker (transport failure or not). */
void eg_upstream_result(eg_target_t *t, bool ok);
/* Takes a token from r's admission bucket; false: shed. */
bool eg_upstream_admit(eg_region_t *r);
/* The retry hint for a session r shed: its slot in r's queue (core/admit.h). */
uint32_t eg_upstream_shed_hint_ms(eg_region_t *r);
bool eg_upstream_region_up(const eg_region_t *r);
/* 0 when url is one the edge can reach ("http://host[:port]"), else UV_EINVAL. */
int eg_upstream_check_url(const char *url);
/* A jittered Retry-After in seconds (1..cap). */
uint32_t eg_retry_after_s(uint32_t cap);

/* ---- eg_proxy.c ---- */
int eg_proxy_routes(eg_worker_t *w);

/* ---- eg_worker.c: the directory follower ---- */
/* Calls fn once the directory has been brought up to date by a fresh poll
 * (single flight: one poll serves every waiter), or with ok false when it
 * could not be. */
typedef void (*eg_dir_refreshed_fn)(bool ok, void *ud);
struct eg_dir_waiter_s *eg_dir_refresh(eg_worker_t *w, eg_dir_refreshed_fn fn, void *ud);
void eg_dir_refresh_cancel(eg_worker_t *w, struct eg_dir_waiter_s *waiter);

#endif
