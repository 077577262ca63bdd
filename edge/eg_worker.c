#include "edge/eg_worker.h"
#include "core/core.h"
#include "core/drain.h"
#include "core/log.h"
#include "core/prefork.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

/* ---- the directory followers -----------------------------------------------------
 *
 * One per region: a snapshot (GET /v1/directory), then the region's change
 * feed (GET /v1/directory/changes?since=V) every directory.poll_ms, and at
 * once when a request needs a fresh look (a workspace the copy does not know
 * yet, a 421). Each region's versions are its own. A follower whose region
 * stops answering keeps its version and resumes from it; a 409 (the version's
 * shard is gone) takes a new snapshot. */

typedef struct eg_follower_s {
    eg_worker_t *w;
    int source;
    core_httpc_req_t *req;
    bool loaded, snapshot_needed, poll_again;
    uint64_t gen;       /* polls started */
    uint64_t synced_ms; /* last time the feed answered */
    core_metric_t m_stale, m_version, m_errors;
} eg_follower_t;

struct eg_dir_waiter_s {
    struct eg_dir_waiter_s *next;
    eg_dir_refreshed_fn fn;
    void *ud;
    uint64_t need[RES_MAX_REGIONS]; /* the poll of each follower that must have completed */
    bool ok;
};

static void dir_poll(eg_follower_t *f);

static core_auth_token_seen_t *g_token_seen;

void eg_worker_set_token_seen(core_auth_token_seen_t *seen)
{
    g_token_seen = seen;
}

struct eg_dir_waiter_s *eg_dir_refresh(eg_worker_t *w, eg_dir_refreshed_fn fn, void *ud)
{
    struct eg_dir_waiter_s *wt = fn ? core_xcalloc(1, sizeof *wt) : NULL;
    for (size_t i = 0; i < w->nregions; i++) {
        eg_follower_t *f = &w->followers[i];
        /* A poll in flight may have been answered before the change: the next one counts. */
        if (f->req)
            f->poll_again = true;
        if (wt)
            wt->need[i] = f->gen + 1;
    }
    if (wt) {
        wt->fn = fn;
        wt->ud = ud;
        wt->next = w->dir_waiters;
        w->dir_waiters = wt;
    }
    for (size_t i = 0; i < w->nregions; i++)
        if (!w->followers[i].req)
            dir_poll(&w->followers[i]);
    return wt;
}

void eg_dir_refresh_cancel(eg_worker_t *w, struct eg_dir_waiter_s *waiter)
{
    for (struct eg_dir_waiter_s **pp = &w->dir_waiters; *pp; pp = &(*pp)->next) {
        if (*pp == waiter) {
            *pp = waiter->next;
            free(waiter);
            return;
        }
    }
}

/* Waiters whose polls have all completed are called from a timer, never
 * from inside eg_dir_refresh or a poll's own callback. */
static void on_notify_timer(uv_timer_t *h)
{
    eg_worker_t *w = h->data;
    struct eg_dir_waiter_s *due = NULL, **keep = &w->dir_waiters;
    while (*keep) {
        struct eg_dir_waiter_s *wt = *keep;
        bool done = true;
        for (size_t i = 0; i < w->nregions && done; i++)
            done = wt->need[i] == 0;
        if (!done) {
            keep = &wt->next;
            continue;
        }
        *keep = wt->next;
        wt->next = due;
        due = wt;
    }
    while (due) {
        struct eg_dir_waiter_s *wt = due;
        due = wt->next;
        wt->fn(wt->ok, wt->ud);
        free(wt);
    }
}

/* Follower f finished a poll, or could not start one (down: every wait on it
 * ends). */
static void dir_notify(eg_follower_t *f, bool ok, bool down)
{
    eg_worker_t *w = f->w;
    bool any = false;
    for (struct eg_dir_waiter_s *wt = w->dir_waiters; wt; wt = wt->next) {
        if (wt->need[f->source] && (down || wt->need[f->source] <= f->gen)) {
            wt->need[f->source] = 0;
            wt->ok |= ok;
            any = true;
        }
    }
    if (any && !w->drain.stopping)
        uv_timer_start(&w->notify_timer, on_notify_timer, 0, 0);
}

static void on_dir_answer(core_httpc_req_t *req, const core_httpc_resp_t *resp, int err, void *ud)
{
    eg_follower_t *f = ud;
    eg_worker_t *w = f->w;
    const char *name = w->regions[f->source].def->name;
    f->req = NULL;
    if (err == UV_ECANCELED)
        return;
    bool snapshot = f->snapshot_needed || !f->loaded;
    char why[160] = "";
    bool ok = false, more = false;
    if (err) {
        snprintf(why, sizeof why, "%s", uv_strerror(err));
    } else if (resp->status == 409) {
        f->snapshot_needed = true;
        more = true;
    } else if (resp->status != 200) {
        snprintf(why, sizeof why, "status %d", resp->status);
    } else if (snapshot) {
        if (eg_dir_load_snapshot(w->dir, f->source, resp->body, resp->body_len, why, sizeof why) ==
            0) {
            ok = true;
            more = true; /* the changes since the snapshot, at once */
            core_log_info("edge.directory_loaded",
                          "source=%s version=%s workspaces=%zu users=%zu emails=%zu", name,
                          eg_dir_version(w->dir, f->source), eg_dir_count(w->dir, 'w'),
                          eg_dir_count(w->dir, 'u'), eg_dir_count(w->dir, 'e'));
            f->loaded = true;
            f->snapshot_needed = false;
            w->dir_loaded = true;
        }
    } else if (eg_dir_apply_changes(w->dir, f->source, resp->body, resp->body_len, &more, why,
                                    sizeof why) == 0) {
        ok = true;
    }
    if (ok) {
        f->synced_ms = core_now_ms();
        core_metrics_set(f->m_version, (double)eg_dir_version_number(w->dir, f->source));
        core_metrics_set(f->m_stale, 0);
        core_metrics_set(w->m_dir_entries, (double)eg_dir_count(w->dir, 'w'));
    } else if (!more) {
        core_metrics_add(f->m_errors, 1);
        core_log_warn("edge.directory_poll_failed", "source=%s reason=\"%s\"", name, why);
    }
    if (more && !w->drain.stopping) {
        dir_poll(f);
        return;
    }
    dir_notify(f, ok, false);
    if (f->poll_again && !w->drain.stopping) {
        f->poll_again = false;
        dir_poll(f);
    }
}

static void dir_poll(eg_follower_t *f)
{
    eg_worker_t *w = f->w;
    if (f->req || w->drain.stopping)
        return;
    eg_target_t *t = eg_upstream_pick(&w->regions[f->source]);
    if (!t) {
        /* The region is down: the others' copies serve meanwhile. */
        dir_notify(f, false, true);
        return;
    }
    core_buf_t m;
    core_buf_init(&m);
    if (f->snapshot_needed || !f->loaded)
        core_buf_appendf(&m, "GET /v1/directory HTTP/1.1\r\n");
    else
        core_buf_appendf(&m, "GET /v1/directory/changes?since=%s&limit=5000 HTTP/1.1\r\n",
                         eg_dir_version(w->dir, f->source));
    core_buf_appendf(&m, "Host: %s\r\nAuthorization: Bearer %s\r\nMeridian-Edge: %s\r\n\r\n",
                     t->hostport, w->dir_token, w->cfg->edge);
    f->gen++;
    int rc = core_httpc_send(t->pool, &m, CORE_HTTPC_IDEMPOTENT, on_dir_answer, f, &f->req);
    sodium_memzero(m.base, m.len);
    core_buf_free(&m);
    if (rc) {
        f->req = NULL;
        dir_notify(f, false, true);
    }
}

static void on_dir_timer(uv_timer_t *h)
{
    eg_worker_t *w = h->data;
    uint64_t now = core_now_ms();
    for (size_t i = 0; i < w->nregions; i++) {
        eg_follower_t *f = &w->followers[i];
        if (f->loaded)
            core_metrics_set(f->m_stale, (double)(now - f->synced_ms) / 1000.0);
        dir_poll(f);
    }
}

static void followers_init(eg_worker_t *w)
{
    w->followers = core_xcalloc(w->nregions, sizeof *w->followers);
    for (size_t i = 0; i < w->nregions; i++) {
        eg_follower_t *f = &w->followers[i];
        f->w = w;
        f->source = (int)i;
        char labels[64];
        snprintf(labels, sizeof labels, "source=\"%s\"", w->regions[i].def->name);
        f->m_stale = core_metrics_gauge("meridian_edge_directory_staleness_seconds",
                                        "Time since the source's directory feed last answered "
                                        "(summed over workers)",
                                        labels);
        f->m_version = core_metrics_gauge("meridian_edge_directory_version",
                                          "Change number of the source's feed that the copy has "
                                          "reached (summed over workers)",
                                          labels);
        f->m_errors = core_metrics_counter("meridian_edge_directory_errors_total",
                                           "Failed directory snapshot or feed polls", labels);
    }
}

static bool dir_ready(void *ud)
{
    eg_worker_t *w = ud;
    return w->dir_loaded;
}

static int read_token(eg_worker_t *w)
{
    FILE *f = fopen(w->cfg->directory_token_file, "r");
    if (!f) {
        core_log_error("edge.directory_token_unreadable", "file=%s", w->cfg->directory_token_file);
        return UV_ENOENT;
    }
    size_t n = fread(w->dir_token, 1, sizeof w->dir_token - 1, f);
    fclose(f);
    while (n && (w->dir_token[n - 1] == '\n' || w->dir_token[n - 1] == '\r' ||
                 w->dir_token[n - 1] == ' '))
        n--;
    w->dir_token[n] = '\0';
    if (n < 16) {
        core_log_error("edge.directory_token_too_short", "file=%s", w->cfg->directory_token_file);
        return UV_EINVAL;
    }
    return 0;
}

/* ---- the worker --------------------------------------------------------------------- */

static void worker_close(eg_worker_t *w)
{
    core_drain_close(&w->drain);
    uv_close((uv_handle_t *)&w->dir_timer, NULL);
    uv_close((uv_handle_t *)&w->notify_timer, NULL);
    if (w->regions)
        uv_close((uv_handle_t *)&w->health_timer, NULL);
    w->drain.stopping = true;
    if (w->http)
        core_http_server_free(w->http);
    w->http = NULL;
    eg_upstream_free(w); /* answers the followers' requests with UV_ECANCELED */
    free(w->followers);
    while (w->dir_waiters) {
        struct eg_dir_waiter_s *wt = w->dir_waiters;
        w->dir_waiters = wt->next;
        free(wt);
    }
    eg_dir_free(w->dir);
    core_auth_token_cache_free(w->tokens);
    core_dns_free(w->dns);
    core_loop_finish(&w->loop);
}

int eg_worker_run(const eg_config_t *cfg, const res_world_t *world, const core_auth_pubkey_t *keys,
                  size_t nkeys, const core_auth_keys_t *hash_keys, int index)
{
    eg_worker_t w;
    memset(&w, 0, sizeof w);
    w.cfg = cfg;
    w.world = world;
    w.keys = keys;
    w.nkeys = nkeys;
    w.hash_keys = hash_keys;
    w.index = index;
    core_metrics_set_worker(index);
    uv_loop_init(&w.loop);
    core_log_set_buffered(1);
    core_drain_init(&w.drain, &w.loop, &w.obs, cfg->drain_timeout_ms);
    uv_timer_init(&w.loop, &w.dir_timer);
    w.dir_timer.data = &w;
    uv_timer_init(&w.loop, &w.notify_timer);
    w.notify_timer.data = &w;

    w.m_dir_entries =
        core_metrics_gauge("meridian_edge_directory_workspaces",
                           "Workspaces in the directory copy (summed over workers)", "");
    w.m_refused = core_metrics_counter("meridian_edge_refused_total",
                                       "Requests answered by the edge itself (bad route, no or "
                                       "bad token, shed, region down)",
                                       "");

    core_dns_opts_t dopts = {.servers = cfg->dns_servers, .name = "edge"};
    w.dns = core_dns_new(&w.loop, &dopts);
    w.tokens = core_auth_token_cache_new(4096, g_token_seen);
    w.dir = eg_dir_new(world);
    w.http = core_http_server_new(&w.loop, &cfg->http);
    w.drain.http = w.http;
    core_http_server_set_access_log(w.http, cfg->access_log);
    core_obs_init(&w.obs);
    core_obs_routes(&w.obs, w.http);
    core_obs_add_check(&w.obs, "directory", dir_ready, &w);
    int rc = w.dns ? 0 : UV_EINVAL;
    if (!rc)
        rc = read_token(&w);
    if (!rc)
        rc = eg_upstream_init(&w);
    if (!rc)
        followers_init(&w);
    if (!rc)
        rc = eg_proxy_routes(&w);
    int fd;
    if (!rc)
        rc = core_reuseport_socket(cfg->listen_host, cfg->listen_port, &fd);
    if (!rc)
        rc = core_http_listen(w.http, fd, NULL, 0);
    if (rc) {
        core_log_error("worker.start_failed", "host=%s port=%d error=\"%s\"", cfg->listen_host,
                       cfg->listen_port, uv_strerror(rc));
        worker_close(&w);
        return 1;
    }
    /* The first poll waits for the first health checks, so that it picks a
     * region that answers. */
    uv_timer_start(&w.dir_timer, on_dir_timer, 50, cfg->directory_poll_ms);
    core_log_info("worker.started", "pid=%d", (int)getpid());
    uv_run(&w.loop, UV_RUN_DEFAULT);
    worker_close(&w);
    core_log_info("worker.exited", "code=%d", w.exit_code);
    core_log_set_buffered(0);
    return w.exit_code;
}
