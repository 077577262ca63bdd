/* prefork.h: the master process of a prefork server.
 *
 * The master forks N workers that each bind their own SO_REUSEPORT socket
 * and run one single-threaded loop (shared-nothing). It replaces a worker
 * that dies (with jittered backoff when one keeps crashing at start-up), and
 * on SIGTERM or SIGINT forwards SIGTERM so that workers drain, waits for them
 * up to the drain timeout (then SIGKILLs the rest), and returns 0. */
#ifndef CORE_PREFORK_H
#define CORE_PREFORK_H

#include <stdint.h>

typedef struct {
    const char *name; /* for logs: "region", "edge" */
    int workers;
    const char *host; /* the master reserves host:port before forking */
    int port;
    uint32_t drain_timeout_ms;
    /* Runs in the forked worker; its return value is the worker's exit code. */
    int (*worker_main)(int index, void *ud);
    void *ud;
} core_prefork_opts_t;

/* Runs the master until shutdown; returns the process exit code. */
int core_prefork_run(const core_prefork_opts_t *o);

/* Creates a TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound to host:port,
 * not yet listening. Returns 0 and the fd, or a negative error. */
int core_reuseport_socket(const char *host, int port, int *fd_out);

#endif
