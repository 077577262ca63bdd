/* eg_upstream.c: the regions as the edge sees them: their endpoints, a
 * keep-alive pool per endpoint, health checks, a circuit breaker per
 * endpoint, and the admission bucket for new sessions per region.
 *
 * Breaker: CLOSED until `health.failures` transport failures in a row
 * (requests or health checks), then OPEN for `health.breaker_open_ms`: no
 * request goes there, and the next request after that is the HALF_OPEN
 * trial, whose success closes it again. Health checks go on while it is
 * OPEN (on their backoff), and one that passes closes it at once: a node
 * whose workers were all killed is back in well under a second, and its
 * clients should not wait out the rest of the window. A region is down when
 * every endpoint is OPEN. */
#include "core/backoff.h"
#include "core/core.h"
#include "core/log.h"
#include "edge/eg_worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double LAT_BOUNDS[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,   0.25,   0.5,   1,    2.5};

uint32_t eg_retry_after_s(uint32_t cap)
{
    return 1 + core_rand_uniform(cap ? cap : 1);
}

static void set_up_metric(eg_region_t *r)
{
    core_metrics_set(r->m_up, eg_upstream_region_up(r) ? 1 : 0);
}

void eg_upstream_result(eg_target_t *t, bool ok)
{
    eg_worker_t *w = t->region->w;
    if (ok) {
        t->failures = 0;
        if (t->breaker != EG_BREAKER_CLOSED) {
            t->breaker = EG_BREAKER_CLOSED;
            core_log_info("edge.breaker_closed", "region=%s target=%s", t->region->def->name,
                          t->url);
            set_up_metric(t->region);
        }
        return;
    }
    t->failures++;
    if (t->breaker == EG_BREAKER_HALF_OPEN ||
        (t->breaker == EG_BREAKER_CLOSED && t->failures >= w->cfg->health_failures)) {
        t->breaker = EG_BREAKER_OPEN;
        t->open_until_ms = core_now_ms() + w->cfg->breaker_open_ms;
        core_log_warn("edge.breaker_open", "region=%s target=%s failures=%u", t->region->def->name,
                      t->url, t->failures);
        set_up_metric(t->region);
    }
    /* A failure while OPEN does not push the window on: it is a request
     * sent before the breaker opened (a connect timing out, a reset), or a
     * health check, whose backoff already spaces the next one. Pushing it on
     * kept a region out for seconds after it was back. */
}

static bool usable(eg_target_t *t, uint64_t now)
{
    if (t->breaker != EG_BREAKER_OPEN)
        return true;
    if (now < t->open_until_ms)
        return false;
    t->breaker = EG_BREAKER_HALF_OPEN; /* this one is the trial */
    return true;
}

eg_target_t *eg_upstream_pick(eg_region_t *r)
{
    uint64_t now = core_now_ms();
    for (size_t i = 0; i < r->ntargets; i++) {
        eg_target_t *t = &r->targets[(r->rr + i) % r->ntargets];
        if (usable(t, now)) {
            r->rr = (unsigned)((r->rr + i + 1) % r->ntargets);
            return t;
        }
    }
    return NULL;
}

bool eg_upstream_region_up(const eg_region_t *r)
{
    uint64_t now = core_now_ms();
    for (size_t i = 0; i < r->ntargets; i++)
        if (r->targets[i].breaker != EG_BREAKER_OPEN || now >= r->targets[i].open_until_ms)
            return true;
    return false;
}

/* The master's, inherited by every worker: [world->nregions], each the
 * region's bucket and queue for the whole node. */
static core_admit_t **g_admission;
static size_t g_nadmission;

void eg_upstream_share_admission(const eg_config_t *cfg, const res_world_t *world)
{
    g_admission = core_xcalloc(world->nregions ? world->nregions : 1, sizeof *g_admission);
    g_nadmission = world->nregions;
    for (size_t i = 0; i < world->nregions; i++) {
        g_admission[i] = core_admit_shared_new((double)cfg->sessions_per_s * cfg->workers,
                                               (double)cfg->sessions_burst * cfg->workers);
        if (!g_admission[i])
            core_log_warn("edge.admission_unshared", "region=%s reason=\"mmap failed\"",
                          world->regions[i].name);
    }
}

void eg_upstream_unshare_admission(void)
{
    /* The workers are gone (core_prefork_run reaped them); a worker would
     * keep its own mapping anyway. */
    for (size_t i = 0; i < g_nadmission; i++)
        core_admit_shared_free(g_admission[i]);
    free(g_admission);
    g_admission = NULL;
    g_nadmission = 0;
}

uint32_t eg_upstream_shed_hint_ms(eg_region_t *r)
{
    uint64_t now = core_now_ns();
    if (r->node_admission)
        return core_admit_slot_ms(r->node_admission, now);
    return core_admit_queue_slot_ms(&r->shed_queue, now, r->w->cfg->sessions_burst);
}

bool eg_upstream_admit(eg_region_t *r)
{
    /* The workers' buckets pooled, as the queue is: a worker's own bucket
     * (a burst of ~50 ms at the bench's rates) lost every token it could
     * not hold while its process waited for a core, and shed the clients
     * that came back at their slots meanwhile: half of a 50,000-client
     * storm, each shed one more TCP connection, request and 503 for a
     * machine already short of CPU, and one more trip to the queue's end. */
    uint64_t now = core_now_ns();
    if (r->node_admission ? core_admit_take(r->node_admission, now)
                          : core_bucket_take(&r->admission, now))
        return true;
    core_metrics_add(r->m_shed, 1);
    return false;
}

/* ---- health checks ---------------------------------------------------------- */

static void on_probe(core_httpc_req_t *req, const core_httpc_resp_t *resp, int err, void *ud)
{
    eg_target_t *t = ud;
    t->probe = NULL;
    if (err == UV_ECANCELED)
        return;
    bool ok = !err && resp->status == 200;
    /* Every edge worker checks every endpoint: a region coming back must not
     * be hit by all of them in step. Healthy: the interval, jittered by up to
     * a quarter; failing: exponential backoff with full jitter. */
    uint32_t interval = t->region->w->cfg->health_interval_ms;
    if (ok) {
        core_backoff_reset(&t->backoff);
        t->next_probe_ms =
            core_now_ms() + interval - interval / 4 + core_rand_uniform(interval / 2 + 1);
    } else {
        t->next_probe_ms = core_now_ms() + core_backoff_next(&t->backoff);
    }
    if (!ok && t->breaker == EG_BREAKER_CLOSED &&
        t->failures + 1 == t->region->w->cfg->health_failures)
        core_log_warn("edge.health_failed", "region=%s target=%s status=%d error=\"%s\"",
                      t->region->def->name, t->url, err ? 0 : resp->status,
                      err ? uv_strerror(err) : "");
    eg_upstream_result(t, ok);
}

static void probe(eg_target_t *t)
{
    if (t->probe || core_now_ms() < t->next_probe_ms)
        return;
    /* OPEN past its window: this check is the trial. Inside it, the check
     * runs anyway: one that passes closes the breaker early. */
    if (t->breaker == EG_BREAKER_OPEN && core_now_ms() >= t->open_until_ms)
        t->breaker = EG_BREAKER_HALF_OPEN;
    core_buf_t m;
    core_buf_init(&m);
    core_buf_appendf(&m, "GET /healthz HTTP/1.1\r\nHost: %s\r\nUser-Agent: meridian-edge\r\n\r\n",
                     t->hostport);
    /* Health checks get their own short timeout: a region that stalls must
     * be noticed long before a slow request would time out. */
    eg_worker_t *w = t->region->w;
    size_t slot = (size_t)t->region->index * EG_MAX_TARGETS + (size_t)(t - t->region->targets);
    if (core_httpc_send(w->health_pools[slot], &m, CORE_HTTPC_IDEMPOTENT, on_probe, t, &t->probe) !=
        0)
        eg_upstream_result(t, false);
    core_buf_free(&m);
}

static void on_health_timer(uv_timer_t *h)
{
    eg_worker_t *w = h->data;
    for (size_t i = 0; i < w->nregions; i++)
        for (size_t j = 0; j < w->regions[i].ntargets; j++)
            probe(&w->regions[i].targets[j]);
}

/* ---- set-up ------------------------------------------------------------------- */

/* "http://host:port" -> host, port. Returns 0 or UV_EINVAL. */
static int parse_url(const char *url, char *host, size_t cap, int *port)
{
    if (strncmp(url, "http://", 7) != 0)
        return UV_EINVAL;
    const char *h = url + 7;
    const char *end = h + strcspn(h, "/");
    const char *colon = NULL;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb)
            return UV_EINVAL;
        colon = rb[1] == ':' ? rb + 1 : NULL;
        if ((size_t)(rb - h - 1) >= cap)
            return UV_EINVAL;
        memcpy(host, h + 1, (size_t)(rb - h - 1));
        host[rb - h - 1] = '\0';
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        const char *he = colon ? colon : end;
        if (he == h || (size_t)(he - h) >= cap)
            return UV_EINVAL;
        memcpy(host, h, (size_t)(he - h));
        host[he - h] = '\0';
    }
    *port = 80;
    if (colon) {
        char *e;
        long p = strtol(colon + 1, &e, 10);
        if (e != end || p < 1 || p > 65535)
            return UV_EINVAL;
        *port = (int)p;
    }
    return 0;
}

int eg_upstream_check_url(const char *url)
{
    char host[256];
    int port;
    return parse_url(url, host, sizeof host, &port);
}

int eg_upstream_init(eg_worker_t *w)
{
    const eg_config_t *cfg = w->cfg;
    w->nregions = w->world->nregions;
    w->regions = core_xcalloc(w->nregions, sizeof *w->regions);
    w->health_pools = core_xcalloc(w->nregions * EG_MAX_TARGETS, sizeof *w->health_pools);
    for (size_t i = 0; i < w->nregions; i++) {
        eg_region_t *r = &w->regions[i];
        r->w = w;
        r->index = (int)i;
        r->def = &w->world->regions[i];
        snprintf(r->note, sizeof r->note, "region=%s", r->def->name);
        core_bucket_init(&r->admission, cfg->sessions_per_s, cfg->sessions_burst);
        core_admit_queue_init(&r->shed_queue, cfg->sessions_per_s);
        r->node_admission = g_admission ? g_admission[i] : NULL;
        char labels[96];
        for (int c = 1; c <= 5; c++) {
            snprintf(labels, sizeof labels, "region=\"%s\",code=\"%dxx\"", r->def->name, c);
            r->m_req[c] =
                core_metrics_counter("meridian_edge_requests_total",
                                     "Requests routed to a region, by status class", labels);
        }
        snprintf(labels, sizeof labels, "region=\"%s\"", r->def->name);
        r->m_lat = core_metrics_histogram("meridian_edge_upstream_seconds",
                                          "Time from forwarding a request to its answer", labels,
                                          LAT_BOUNDS, sizeof LAT_BOUNDS / sizeof LAT_BOUNDS[0]);
        r->m_err = core_metrics_counter("meridian_edge_upstream_errors_total",
                                        "Requests the region could not answer (connect, "
                                        "timeout, malformed answer)",
                                        labels);
        r->m_shed = core_metrics_counter("meridian_edge_shed_total",
                                         "New sessions shed by admission control", labels);
        r->m_tunnels = core_metrics_gauge("meridian_edge_tunnels_open",
                                          "WebSocket tunnels open to the region", labels);
        r->m_tunnels_lost = core_metrics_counter(
            "meridian_edge_tunnels_lost_total",
            "Streams the region dropped without a close (a crash): each client was told when "
            "to come back",
            labels);
        r->m_up = core_metrics_gauge("meridian_edge_region_up",
                                     "Workers that consider the region up (any endpoint's breaker "
                                     "not open)",
                                     labels);
        for (size_t j = 0; j < r->def->napi_urls && r->ntargets < EG_MAX_TARGETS; j++) {
            eg_target_t *t = &r->targets[r->ntargets];
            char host[256];
            int port;
            if (parse_url(r->def->api_urls[j], host, sizeof host, &port) != 0) {
                core_log_error("edge.bad_api_url", "region=%s url=%s", r->def->name,
                               r->def->api_urls[j]);
                return UV_EINVAL;
            }
            t->region = r;
            t->next_probe_ms = core_now_ms() + core_rand_uniform(cfg->health_interval_ms / 4 + 1);
            core_backoff_init(&t->backoff, cfg->health_interval_ms / 4 + 1, cfg->breaker_open_ms);
            t->url = core_xstrdup(r->def->api_urls[j]);
            size_t n = strlen(t->url);
            while (n && t->url[n - 1] == '/')
                t->url[--n] = '\0';
            t->host = core_xstrdup(host);
            t->port = port;
            snprintf(t->hostport, sizeof t->hostport, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
                     port);
            core_httpc_opts_t o = {
                .host = host,
                .port = port,
                .dns = w->dns,
                .connect_timeout_ms = cfg->upstream_connect_timeout_ms,
                .response_timeout_ms = cfg->upstream_response_timeout_ms,
                .max_idle = cfg->upstream_max_idle,
                .max_conns = cfg->upstream_max_conns,
                .max_response_bytes = 64u << 20, /* directory snapshots */
            };
            t->pool = core_httpc_new(&w->loop, &o);
            o.response_timeout_ms = cfg->health_timeout_ms;
            o.connect_timeout_ms = cfg->health_timeout_ms;
            o.max_idle = 1;
            o.max_conns = 2;
            w->health_pools[i * EG_MAX_TARGETS + r->ntargets] = core_httpc_new(&w->loop, &o);
            if (!t->pool || !w->health_pools[i * EG_MAX_TARGETS + r->ntargets])
                return UV_EINVAL;
            r->ntargets++;
        }
        set_up_metric(r);
    }
    uv_timer_init(&w->loop, &w->health_timer);
    w->health_timer.data = w;
    /* Ticks finer than the interval: each endpoint keeps its own jittered
     * schedule (next_probe_ms), the first check included. */
    uint32_t tick = cfg->health_interval_ms / 4;
    uv_timer_start(&w->health_timer, on_health_timer, 0, tick < 10 ? 10 : tick > 250 ? 250 : tick);
    return 0;
}

void eg_upstream_free(eg_worker_t *w)
{
    if (!w->regions)
        return;
    for (size_t i = 0; i < w->nregions; i++) {
        eg_region_t *r = &w->regions[i];
        for (size_t j = 0; j < r->ntargets; j++) {
            eg_target_t *t = &r->targets[j];
            core_httpc_free(t->pool);
            core_httpc_free(w->health_pools[i * EG_MAX_TARGETS + j]);
            free(t->url);
            free(t->host);
        }
    }
    free(w->health_pools);
    free(w->regions);
    w->regions = NULL;
}
