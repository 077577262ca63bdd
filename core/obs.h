/* obs.h: the observability endpoints every Meridian server exposes.
 *   GET /healthz  200 while the process is alive and its loop turns.
 *   GET /readyz   200 only while every registered dependency check passes
 *                 (and the server is not draining); 503 otherwise, with the
 *                 failing checks named in the body.
 *   GET /metrics  the metrics registry in Prometheus text format. */
#ifndef CORE_OBS_H
#define CORE_OBS_H

#include <stdbool.h>

#include "core/http.h"

#define CORE_OBS_MAX_CHECKS 80

typedef bool (*core_obs_check_fn)(void *ud);

typedef struct {
    struct {
        char name[48];
        core_obs_check_fn fn;
        void *ud;
    } checks[CORE_OBS_MAX_CHECKS];
    int nchecks;
    bool draining;
    core_metric_t m_ready;
} core_obs_t;

void core_obs_init(core_obs_t *o);
/* Registers a readiness check; name appears in /readyz output. */
int core_obs_add_check(core_obs_t *o, const char *name, core_obs_check_fn fn, void *ud);
/* Registers /healthz, /readyz and /metrics on s. */
int core_obs_routes(core_obs_t *o, core_http_server_t *s);
/* True when every check passes. */
bool core_obs_ready(core_obs_t *o);

#endif
