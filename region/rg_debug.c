#include "region/rg_debug.h"

/* One copy per worker: connections keep a reference to their limits. */
static core_ws_limits_t echo_limits;

static void on_echo_message(core_ws_t *ws, int opcode, const uint8_t *data, size_t len, void *ud)
{
    /* A full send queue closes the connection (1008) inside core_ws_send. */
    core_ws_send(ws, opcode, data, len);
}

static const core_ws_handlers_t echo_handlers = {
    .on_message = on_echo_message,
};

static void on_echo_request(core_http_req_t *req, void *ud)
{
    core_ws_accept(req, &echo_limits, &echo_handlers, NULL);
}

int rg_debug_routes(core_http_server_t *s, const core_ws_limits_t *limits)
{
    echo_limits = *limits;
    return core_http_route(s, "GET", "/debug/ws-echo", on_echo_request, NULL);
}
