/* rg_debug.h: debug endpoints, mounted only when the configuration asks for them. */
#ifndef RG_DEBUG_H
#define RG_DEBUG_H

#include "core/http.h"
#include "core/ws.h"

/* Registers GET /debug/ws-echo: a WebSocket endpoint that sends every message
 * back with its opcode (text stays text, binary stays binary), for protocol
 * conformance tests. limits is copied. Returns 0 or a negative error from
 * core_http_route. Mount only when websocket.echo_endpoint is true. */
int rg_debug_routes(core_http_server_t *s, const core_ws_limits_t *limits);

#endif
