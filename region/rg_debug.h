/* rg_debug.h: debug endpoints, mounted only when the configuration asks for them. */
#ifndef RG_DEBUG_H
#define RG_DEBUG_H

#include "core/http.h"
#include "core/ws.h"

/* Registers the diagnostic endpoints used by conformance and lifecycle tests:
 *   GET  /debug/ws-echo     WebSocket that sends every message back with its
 *                           opcode; selects subprotocol "meridian.echo" if offered
 *   POST /debug/echo        answers 200 with the request body
 *   GET  /debug/sleep?ms=N  answers 200 after N ms (at most 60 s), for drain tests
 * limits is copied. Returns 0 or a negative error from core_http_route.
 * Mounted only when the configuration sets debug.endpoints. */
int rg_debug_routes(core_http_server_t *s, uv_loop_t *loop, const core_ws_limits_t *limits);

#endif
