/* drain.h: how a prefork worker stops (region and edge alike).
 *
 * SIGTERM (sent by the master, core/prefork.h) starts a drain: /readyz turns
 * 503 so that load balancers look elsewhere, the HTTP server stops accepting
 * and finishes what is in flight (upgraded connections get their on_drain
 * hook), and the loop stops once every connection is gone or after the drain
 * timeout. The worker then frees what it owns and runs core_loop_finish. */
#ifndef CORE_DRAIN_H
#define CORE_DRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "core/http.h"
#include "core/obs.h"

typedef struct {
    uv_loop_t *loop;
    core_http_server_t *http; /* set once the server exists */
    core_obs_t *obs;
    uint32_t timeout_ms; /* 0: wait for every connection */
    uv_signal_t sigterm;
    uv_timer_t timer;
    bool stopping;
} core_drain_t;

/* Installs the SIGTERM handler on loop. */
void core_drain_init(core_drain_t *d, uv_loop_t *loop, core_obs_t *obs, uint32_t timeout_ms);
/* Closes the drain's handles (before core_loop_finish). */
void core_drain_close(core_drain_t *d);

/* Runs loop until every handle has closed (clients finishing their own
 * shutdown), forcing any left after 3 s closed, then closes the loop. */
void core_loop_finish(uv_loop_t *loop);

#endif
