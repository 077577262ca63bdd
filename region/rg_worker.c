#include "region/rg_worker.h"
#include "core/core.h"
#include "core/http.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/obs.h"
#include "core/prefork.h"
#include "region/rg_diag.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

/* Everything one worker owns; freed in one place, worker_close. */
typedef struct {
    const rg_config_t *cfg;
    int index;
    uv_loop_t loop;
    uv_signal_t sigterm;
    uv_timer_t drain_timer;
    core_http_server_t *http;
    core_obs_t obs;
    int exit_code;
    bool stopping;
} worker_t;

static void on_drained(void *ud)
{
    worker_t *w = ud;
    core_log_info("worker.drained", "");
    uv_stop(&w->loop);
}

static void on_drain_timeout(uv_timer_t *t)
{
    worker_t *w = t->data;
    core_log_warn("worker.drain_timeout", "connections=%zu", core_http_server_connections(w->http));
    w->exit_code = 0; /* a timed-out drain still ends in an orderly exit */
    uv_stop(&w->loop);
}

static void on_sigterm(uv_signal_t *s, int signum)
{
    worker_t *w = s->data;
    if (w->stopping)
        return;
    w->stopping = true;
    w->obs.draining = true;
    core_log_info("worker.draining", "connections=%zu", core_http_server_connections(w->http));
    if (w->cfg->drain_timeout_ms)
        uv_timer_start(&w->drain_timer, on_drain_timeout, w->cfg->drain_timeout_ms, 0);
    core_http_drain(w->http, on_drained, w);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void worker_close(worker_t *w)
{
    if (w->http)
        core_http_server_free(w->http);
    /* Let close callbacks run, then close whatever remains (timers, signals). */
    uv_run(&w->loop, UV_RUN_NOWAIT);
    uv_walk(&w->loop, close_walk, NULL);
    while (uv_run(&w->loop, UV_RUN_NOWAIT))
        ;
    uv_loop_close(&w->loop);
}

int rg_worker_run(const rg_config_t *cfg, int index)
{
    worker_t w;
    memset(&w, 0, sizeof w);
    w.cfg = cfg;
    w.index = index;
    core_metrics_set_worker(index);
    uv_loop_init(&w.loop);
    core_log_set_buffered(1);

    uv_signal_init(&w.loop, &w.sigterm);
    w.sigterm.data = &w;
    uv_signal_start(&w.sigterm, on_sigterm, SIGTERM);
    uv_timer_init(&w.loop, &w.drain_timer);
    w.drain_timer.data = &w;

    w.http = core_http_server_new(&w.loop, &cfg->http);
    core_http_server_set_access_log(w.http, cfg->access_log);
    core_obs_init(&w.obs);
    core_obs_routes(&w.obs, w.http);
    if (cfg->debug_endpoints)
        rg_diag_routes(w.http, &w.loop);

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
