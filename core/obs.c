#include "core/obs.h"
#include "core/json.h"

#include <stdio.h>
#include <string.h>

void core_obs_init(core_obs_t *o)
{
    memset(o, 0, sizeof *o);
    o->m_ready =
        core_metrics_gauge("meridian_ready_workers",
                           "Workers whose dependencies were all reachable at the last check.", "");
}

int core_obs_add_check(core_obs_t *o, const char *name, core_obs_check_fn fn, void *ud)
{
    if (o->nchecks == CORE_OBS_MAX_CHECKS)
        return -1;
    snprintf(o->checks[o->nchecks].name, sizeof o->checks[0].name, "%s", name);
    o->checks[o->nchecks].fn = fn;
    o->checks[o->nchecks].ud = ud;
    o->nchecks++;
    return 0;
}

bool core_obs_ready(core_obs_t *o)
{
    if (o->draining)
        return false;
    for (int i = 0; i < o->nchecks; i++)
        if (!o->checks[i].fn(o->checks[i].ud))
            return false;
    return true;
}

static void on_healthz(core_http_req_t *req, void *ud)
{
    static const char body[] = "{\"status\":\"ok\"}";
    core_http_respond(req, 200, "application/json", "Cache-Control: no-store\r\n", body,
                      sizeof body - 1);
}

static void on_readyz(core_http_req_t *req, void *ud)
{
    core_obs_t *o = ud;
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t w;
    core_jw_init(&w, &b);
    bool ready = !o->draining;
    core_jw_obj_open(&w);
    core_jw_key(&w, "checks");
    core_jw_obj_open(&w);
    for (int i = 0; i < o->nchecks; i++) {
        bool ok = o->checks[i].fn(o->checks[i].ud);
        ready = ready && ok;
        core_jw_key(&w, o->checks[i].name);
        core_jw_str(&w, ok ? "ok" : "unavailable");
    }
    core_jw_obj_close(&w);
    core_jw_key(&w, "status");
    core_jw_str(&w, o->draining ? "draining" : ready ? "ready" : "not_ready");
    core_jw_obj_close(&w);
    core_metrics_set(o->m_ready, ready ? 1 : 0);
    core_http_respond(req, ready ? 200 : 503, "application/json",
                      ready ? "Cache-Control: no-store\r\n"
                            : "Cache-Control: no-store\r\nRetry-After: 1\r\n",
                      b.base, b.len);
    core_buf_free(&b);
}

static void on_metrics(core_http_req_t *req, void *ud)
{
    core_buf_t b;
    core_buf_init(&b);
    core_metrics_render(&b);
    core_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.base, b.len);
    core_buf_free(&b);
}

int core_obs_routes(core_obs_t *o, core_http_server_t *s)
{
    int rc = core_http_route(s, "GET", "/healthz", on_healthz, o);
    if (!rc)
        rc = core_http_route(s, "GET", "/readyz", on_readyz, o);
    if (!rc)
        rc = core_http_route(s, "GET", "/metrics", on_metrics, o);
    return rc;
}
