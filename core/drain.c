#include "core/drain.h"
#include "core/log.h"

static void on_drained(void *ud)
{
    core_drain_t *d = ud;
    core_log_info("worker.drained", "");
    uv_stop(d->loop);
}

static void on_timeout(uv_timer_t *t)
{
    core_drain_t *d = t->data;
    core_log_warn("worker.drain_timeout", "connections=%zu",
                  d->http ? core_http_server_connections(d->http) : (size_t)0);
    uv_stop(d->loop); /* a timed-out drain still ends in an orderly exit */
}

static void on_sigterm(uv_signal_t *s, int signum)
{
    core_drain_t *d = s->data;
    if (d->stopping)
        return;
    d->stopping = true;
    if (d->obs)
        d->obs->draining = true;
    core_log_info("worker.draining", "connections=%zu",
                  d->http ? core_http_server_connections(d->http) : (size_t)0);
    if (d->timeout_ms)
        uv_timer_start(&d->timer, on_timeout, d->timeout_ms, 0);
    if (d->http)
        core_http_drain(d->http, on_drained, d);
    else
        uv_stop(d->loop);
}

void core_drain_init(core_drain_t *d, uv_loop_t *loop, core_obs_t *obs, uint32_t timeout_ms)
{
    d->loop = loop;
    d->obs = obs;
    d->timeout_ms = timeout_ms;
    d->stopping = false;
    uv_signal_init(loop, &d->sigterm);
    d->sigterm.data = d;
    uv_signal_start(&d->sigterm, on_sigterm, SIGTERM);
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
}

void core_drain_close(core_drain_t *d)
{
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->timer, NULL);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_stuck(uv_timer_t *t)
{
    core_log_warn("worker.close_stuck", "action=close_all");
    uv_walk(t->loop, close_walk, NULL);
}

void core_loop_finish(uv_loop_t *loop)
{
    /* A guard that does not keep the loop alive by itself. */
    uv_timer_t guard;
    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, on_stuck, 3000, 0);
    uv_unref((uv_handle_t *)&guard);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
}
