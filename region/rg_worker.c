#include "region/rg_worker.h"
#include "core/core.h"
#include "core/drain.h"
#include "core/http.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/nats.h"
#include "core/obs.h"
#include "core/pg.h"
#include "core/prefork.h"
#include "core/redis.h"
#include "core/ws.h"
#include "region/rg_api.h"
#include "region/rg_gdir.h"
#include "region/rg_move.h"
#include "replication/repl.h"
#include "region/rg_batch.h"
#include "region/rg_debug.h"
#include "region/rg_dir.h"
#include "region/rg_relay.h"

#include <signal.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

static struct core_admit_s *g_node_admission;
static core_auth_token_seen_t *g_token_seen;

void rg_worker_set_node_admission(struct core_admit_s *a)
{
    g_node_admission = a;
}

void rg_worker_set_token_seen(core_auth_token_seen_t *seen)
{
    g_token_seen = seen;
}

/* The stores a session needs (live events, its shard) all answer, or the
 * worker has waited RG_WARMUP_MAX_MS for them: checked until then only, so
 * that a shard down later, or never up, fails only its own workspaces. */
static bool warmed_up(rg_worker_t *w)
{
    if (uv_now(&w->loop) - w->started_ms >= RG_WARMUP_MAX_MS)
        return true;
    if (!core_nats_ready(w->nats))
        return false;
    for (int i = 0; i < w->nshards; i++)
        if (!core_pg_pool_ready(w->shards[i]))
            return false;
    return true;
}

/* A refused session's slot: in the node's queue, shared by the workers
 * with the node's bucket; this worker's own when there is none. */
static uint32_t shed_hint_ms(rg_worker_t *w, uint64_t now)
{
    if (w->node_admission)
        return core_admit_slot_ms(w->node_admission, now);
    return core_admit_queue_slot_ms(&w->shed_queue, now,
                                    (double)w->cfg->admission.burst / w->cfg->workers);
}

rg_admit_t rg_worker_admit(rg_worker_t *w, uint32_t *hint_ms)
{
    if (!w->cfg->admission.enabled)
        return RG_ADMIT_OK;
    uint64_t now = core_now_ns();
    /* Still reaching its stores: up to its own bucket's burst goes through
     * (a lone reconnect just waits for the pools, as it always did), a herd
     * does not. */
    bool cold = !w->warm && !(w->warm = warmed_up(w));
    if (cold && w->cold_admitted >= w->admission.burst) {
        core_metrics_add(w->m_shed_starting, 1);
        *hint_ms = shed_hint_ms(w, now);
        return RG_ADMIT_STARTING;
    }
    bool ok = core_bucket_take(&w->admission, now);
    if (ok && w->node_admission && !core_admit_take(w->node_admission, now)) {
        core_bucket_refund(&w->admission);
        core_metrics_add(w->m_shed_node, 1);
        ok = false;
    } else if (!ok) {
        core_metrics_add(w->m_shed_worker, 1);
    }
    if (ok) {
        core_metrics_add(w->m_admitted, 1);
        w->cold_admitted += cold;
        return RG_ADMIT_OK;
    }
    *hint_ms = shed_hint_ms(w, now);
    return RG_ADMIT_SHED;
}

static bool redis_ready(void *ud)
{
    return core_redis_ready(ud);
}

static bool nats_ready(void *ud)
{
    return core_nats_ready(ud);
}

/* Live events published while this worker's NATS link was down never reach
 * it: streams catch up from the database when the link is back. */
static void on_nats_state(core_nats_t *nc, bool ready, void *ud)
{
    if (ready)
        rg_stream_resync_live(ud);
}

static bool pg_ready(void *ud)
{
    return core_pg_pool_ready(ud);
}

/* Connects to the region's stores; each client reconnects on its own. */
static void deps_open(rg_worker_t *w)
{
    const rg_config_t *cfg = w->cfg;
    core_redis_opts_t ro = {
        .host = cfg->redis.host,
        .port = cfg->redis.port,
        .connect_timeout_ms = cfg->redis.connect_timeout_ms,
        .command_timeout_ms = cfg->redis.command_timeout_ms,
        .name = "region",
    };
    w->redis = core_redis_new(&w->loop, &ro);
    core_obs_add_check(&w->obs, "redis", redis_ready, w->redis);

    /* cnats starts threads: the client is made here, after fork, in each worker. */
    snprintf(w->nats_name, sizeof w->nats_name, "%s-w%d", cfg->node, w->index);
    core_nats_opts_t no = {
        .url = cfg->nats.url,
        .name = w->nats_name,
        .connect_timeout_ms = cfg->nats.connect_timeout_ms,
        /* A relay sweep publishes up to 1024 events, each once per region
         * that holds the workspace: room for a few regions. */
        .js_max_inflight = 8192,
        .on_state = on_nats_state,
        .ud = w,
    };
    w->nats = core_nats_new(&w->loop, &no);
    core_obs_add_check(&w->obs, "nats", nats_ready, w->nats);

    for (int i = 0; i < cfg->pg.nshards; i++) {
        snprintf(w->shard_names[i], sizeof w->shard_names[i], "shard%d", cfg->pg.shards[i].id);
        core_pg_pool_opts_t po = {
            .name = w->shard_names[i],
            .conninfo = cfg->pg.shards[i].conninfo,
            .size = cfg->pg.pool_size,
            .query_timeout_ms = cfg->pg.query_timeout_ms,
            .connect_timeout_ms = cfg->pg.connect_timeout_ms,
            .session_options = RG_PG_SESSION_OPTIONS,
        };
        w->shards[i] = core_pg_pool_new(&w->loop, &po);
        char check[32];
        snprintf(check, sizeof check, "postgres.%s", w->shard_names[i]);
        core_obs_add_check(&w->obs, check, pg_ready, w->shards[i]);
    }
    w->nshards = cfg->pg.nshards;
    w->dir = rg_dir_new(w);
    /* One relay per shard per node is enough; the others' workers serve. */
    if (w->index == 0) {
        w->stream_job = rg_relay_ensure_stream(w);
        for (int i = 0; i < w->nshards; i++)
            w->relays[i] = rg_relay_new(w, i);
        /* The inbound side of replication: every node's worker 0 applies a
         * share of what other regions send (a queue group) and answers
         * their backfill requests. */
        repl_opts_t ro = {
            .loop = &w->loop,
            .nats = w->nats,
            .shards = w->shards,
            .nshards = w->nshards,
            .world = w->world,
            .region = cfg->region,
            .create_stream = true,
        };
        w->repl = repl_start(&ro);
        w->gdir = rg_gdir_start(w);
    }
    w->move = rg_move_start(w);
    /* Tokens of every region's users verify here (a user of another region
     * gets 421 with its workspace's home, not 401). */
    size_t nkeys = 1;
    for (size_t i = 0; w->world && i < w->world->nregions; i++)
        nkeys += w->world->regions[i].ntoken_keys;
    w->verify_keys = core_xcalloc(nkeys, sizeof *w->verify_keys);
    w->verify_keys[w->nverify_keys++] = w->keys->pub;
    for (size_t i = 0; w->world && i < w->world->nregions; i++) {
        const res_region_t *rg = &w->world->regions[i];
        for (size_t k = 0; k < rg->ntoken_keys; k++) {
            core_auth_pubkey_t pk;
            if (core_auth_pubkey_parse(&pk, rg->token_keys[k], strlen(rg->token_keys[k])) != 0) {
                core_log_warn("worker.bad_token_key", "region=%s index=%zu", rg->name, k);
                continue;
            }
            bool dup = false;
            for (size_t j = 0; j < w->nverify_keys; j++)
                dup = dup || memcmp(w->verify_keys[j].pk, pk.pk, 32) == 0;
            if (!dup)
                w->verify_keys[w->nverify_keys++] = pk;
        }
    }
    core_auth_metrics_init();
    w->hasher = core_auth_hasher_new(&w->loop, cfg->auth.hash_concurrency, cfg->auth.hash_queue);
    w->tokens = core_auth_token_cache_new(4096, g_token_seen);
}

static void deps_close(rg_worker_t *w)
{
    /* Relays first: they stop claiming, and their publishes in flight are
     * answered when the NATS client below closes. */
    for (int i = 0; i < RG_MAX_SHARDS; i++) {
        rg_relay_free(w->relays[i]);
        w->relays[i] = NULL;
    }
    rg_relay_stream_cancel(w->stream_job);
    w->stream_job = NULL;
    repl_stop(w->repl);
    w->repl = NULL;
    rg_gdir_stop(w->gdir);
    w->gdir = NULL;
    rg_move_stop(w->move);
    w->move = NULL;
    if (w->redis)
        core_redis_free(w->redis);
    w->redis = NULL;
    if (w->nats)
        core_nats_free(w->nats);
    w->nats = NULL;
    for (int i = 0; i < w->nshards; i++)
        core_pg_pool_close(w->shards[i]);
    w->nshards = 0;
    rg_postq_free(w->postq); /* after the pools: they answered what was in flight */
    rg_batch_free(w->batch);
    w->batch = NULL;
    rg_dir_free(w->dir); /* after the pools: closing them answered its lookups */
    w->dir = NULL;
    core_auth_hasher_free(w->hasher);
    w->hasher = NULL;
    core_auth_token_cache_free(w->tokens);
    w->tokens = NULL;
    free(w->verify_keys);
    w->verify_keys = NULL;
    w->nverify_keys = 0;
}

/* Frees everything the worker owns. The clients finish closing on the loop
 * (NATS closes on the thread pool), so the loop runs until they are done; a
 * guard timer that does not keep the loop alive forces the rest closed. */
static void worker_close(rg_worker_t *w)
{
    core_drain_close(&w->drain);
    uv_close((uv_handle_t *)&w->trim_timer, NULL);
    rg_stream_close(w);
    deps_close(w);
    if (w->http)
        core_http_server_free(w->http);
    w->http = NULL;
    core_loop_finish(&w->loop);
}

/* A burst of connections (a reconnect storm, a benchmark) allocates request
 * state for every handshake at once; freed, those pages sit between the
 * long-lived connection objects and stay resident, several KiB per open
 * connection. Trimming returns them when there is much to return. */
#define TRIM_EVERY_MS 5000

#define TRIM_FREE_BYTES (8u << 20)

static void on_trim(uv_timer_t *t)
{
    /* Only after a burst: a trim walks the heap and the pages it returns
     * fault back in, a stall on every worker in steady state for nothing. */
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks > TRIM_FREE_BYTES)
        malloc_trim(0);
}

int rg_worker_run(const rg_config_t *cfg, const res_world_t *world, const core_auth_keys_t *keys,
                  int index)
{
    rg_worker_t w;
    memset(&w, 0, sizeof w);
    w.cfg = cfg;
    w.world = world;
    w.keys = keys;
    w.index = index;
    core_metrics_set_worker(index);
    uv_loop_init(&w.loop);
    w.started_ms = uv_now(&w.loop);
    /* A worker's share is 1.5 times its fair part: one worker may run
     * ahead of the others, never take the node's whole cap. */
    double share = 1.5 / cfg->workers;
    core_bucket_init(&w.admission, cfg->admission.sessions_per_s * share,
                     cfg->admission.burst * share);
    /* The node admits sessions_per_s: each worker hands out its fair part
     * of the slots. */
    core_admit_queue_init(&w.shed_queue, (double)cfg->admission.sessions_per_s / cfg->workers);
    w.node_admission = g_node_admission;
    w.m_admitted = core_metrics_counter("meridian_admission_admitted_total",
                                        "New stream sessions admitted.", "");
    w.m_shed_worker =
        core_metrics_counter("meridian_admission_shed_total",
                             "New stream sessions shed before any work.", "scope=\"worker\"");
    w.m_shed_starting =
        core_metrics_counter("meridian_admission_shed_total",
                             "New stream sessions shed before any work.", "scope=\"starting\"");
    w.m_shed_node =
        core_metrics_counter("meridian_admission_shed_total",
                             "New stream sessions shed before any work.", "scope=\"node\"");
    core_log_set_buffered(1);

    core_drain_init(&w.drain, &w.loop, &w.obs, cfg->drain_timeout_ms);
    uv_timer_init(&w.loop, &w.trim_timer);
    uv_timer_start(&w.trim_timer, on_trim, TRIM_EVERY_MS, TRIM_EVERY_MS);
    uv_unref((uv_handle_t *)&w.trim_timer);

    w.http = core_http_server_new(&w.loop, &cfg->http);
    w.drain.http = w.http;
    core_http_set_cors(w.http, cfg->cors_origins, cfg->ncors);
    core_http_server_set_access_log(w.http, cfg->access_log);
    core_obs_init(&w.obs);
    core_obs_routes(&w.obs, w.http);
    if (cfg->debug_endpoints) {
        core_ws_limits_t wl;
        core_ws_limits_default(&wl);
        wl.max_frame_bytes = cfg->ws.max_frame_bytes;
        wl.max_message_bytes = cfg->ws.max_message_bytes;
        wl.ping_interval_ms = cfg->ws.ping_interval_ms;
        wl.idle_timeout_ms = cfg->ws.idle_timeout_ms;
        wl.max_queued_bytes = cfg->ws.max_queued_bytes;
        rg_debug_routes(w.http, &w.loop, &wl);
    }
    deps_open(&w);
    rg_api_routes(&w);

    int fd;
    int rc = core_reuseport_socket(cfg->listen_host, cfg->listen_port, &fd);
    if (!rc)
        rc = core_http_listen(w.http, fd, NULL, 0);
    if (rc) {
        core_log_error("worker.listen_failed", "host=%s port=%d error=\"%s\"", cfg->listen_host,
                       cfg->listen_port, uv_strerror(rc));
        worker_close(&w);
        return 1;
    }
    core_log_info("worker.started", "pid=%d", (int)getpid());
    uv_run(&w.loop, UV_RUN_DEFAULT);
    worker_close(&w);
    core_log_info("worker.exited", "code=%d", w.exit_code);
    core_log_set_buffered(0);
    return w.exit_code;
}

static void print_route(const char *method, const char *pattern, void *ud)
{
    fprintf(ud, "%s %s\n", method, pattern);
}

void rg_worker_print_routes(FILE *out)
{
    rg_worker_t w;
    memset(&w, 0, sizeof w);
    uv_loop_init(&w.loop);
    w.http = core_http_server_new(&w.loop, NULL);
    core_obs_init(&w.obs);
    core_obs_routes(&w.obs, w.http);
    rg_api_routes(&w);
    core_http_route_each(w.http, print_route, out);
    core_http_server_free(w.http);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    uv_loop_close(&w.loop);
}
