/* rg_diag.h: diagnostic HTTP endpoints for conformance and lifecycle tests,
 * registered only when the configuration sets debug.endpoints:
 *   POST /debug/echo        answers 200 with the request body (any method body path)
 *   GET  /debug/sleep?ms=N  answers 200 after N ms (at most 60 s); tests drains */
#ifndef RG_DIAG_H
#define RG_DIAG_H

#include "core/http.h"

int rg_diag_routes(core_http_server_t *s, uv_loop_t *loop);

#endif
