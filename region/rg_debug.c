#include "region/rg_debug.h"
#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One copy per worker: connections keep a reference to their limits. */
static core_ws_limits_t echo_limits;

static void on_echo_message(core_ws_t *ws, int opcode, const uint8_t *data, size_t len, void *ud)
{
    /* A full send queue closes the connection (1008) inside core_ws_send. */
    core_ws_send(ws, opcode, data, len);
}

/* Selects "meridian.echo" when offered, so tests can see subprotocol negotiation work. */
static int on_echo_protocol(core_http_req_t *req, const core_ws_token_t *offered, size_t n,
                            void *ud)
{
    static const char want[] = "meridian.echo";
    for (size_t i = 0; i < n; i++)
        if (offered[i].len == sizeof want - 1 && memcmp(offered[i].ptr, want, offered[i].len) == 0)
            return (int)i;
    return -1;
}

static const core_ws_handlers_t echo_handlers = {
    .select_protocol = on_echo_protocol,
    .on_message = on_echo_message,
};

static void on_echo_request(core_http_req_t *req, void *ud)
{
    core_ws_accept(req, &echo_limits, &echo_handlers, NULL);
}

typedef struct {
    uv_timer_t timer;
    core_http_req_t *req; /* NULL once the client went away */
} sleeper_t;

static void on_echo(core_http_req_t *req, void *ud)
{
    size_t ctlen = 0;
    const char *ct = core_http_header(req, "content-type", &ctlen);
    char type[128];
    snprintf(type, sizeof type, "%.*s", (int)(ct && ctlen < 100 ? ctlen : 0), ct ? ct : "");
    core_http_respond(req, 200, *type ? type : "application/octet-stream", NULL, req->body.base,
                      req->body.len);
}

static void on_sleeper_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_sleep_done(uv_timer_t *t)
{
    sleeper_t *s = t->data;
    if (s->req) {
        static const char body[] = "{\"slept\":true}";
        core_http_respond(s->req, 200, "application/json", NULL, body, sizeof body - 1);
    }
    uv_close((uv_handle_t *)&s->timer, on_sleeper_closed);
}

static void on_sleep_abort(core_http_req_t *req)
{
    sleeper_t *s = req->user;
    s->req = NULL; /* the timer still fires and frees; it just answers nobody */
}

static void on_sleep(core_http_req_t *req, void *ud)
{
    char v[16];
    int n = core_http_query(req, "ms", v, sizeof v);
    long ms = n > 0 ? strtol(v, NULL, 10) : -1;
    if (ms < 0 || ms > 60000) {
        core_http_respond_error(req, 400, "bad_parameter", "ms must be an integer 0..60000");
        return;
    }
    sleeper_t *s = core_xcalloc(1, sizeof *s);
    s->req = req;
    req->user = s;
    req->on_abort = on_sleep_abort;
    uv_timer_init((uv_loop_t *)ud, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, on_sleep_done, (uint64_t)ms, 0);
}

int rg_debug_routes(core_http_server_t *s, uv_loop_t *loop, const core_ws_limits_t *limits)
{
    echo_limits = *limits;
    int rc = core_http_route(s, "GET", "/debug/ws-echo", on_echo_request, NULL);
    if (!rc)
        rc = core_http_route(s, "POST", "/debug/echo", on_echo, NULL);
    if (!rc)
        rc = core_http_route(s, "GET", "/debug/sleep", on_sleep, loop);
    return rc;
}
