/* rg_worker.h: one worker process of a meridian-region node: a single
 * libuv loop serving the REST API and WebSocket gateway, with its own
 * connections to the region's stores (shared-nothing). */
#ifndef RG_WORKER_H
#define RG_WORKER_H

#include "region/rg_config.h"

/* Runs the worker until it has drained after SIGTERM; returns the exit code. */
int rg_worker_run(const rg_config_t *cfg, int index);

#endif
