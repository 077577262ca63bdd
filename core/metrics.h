/* metrics.h: a metrics registry that spans prefork workers.
 *
 * The master maps one shared-memory segment before forking; each worker writes
 * only its own column, and /metrics (served by whichever worker the kernel
 * picks) sums every worker's column, so a scrape sees the whole node. Series
 * are registered by name + label set; registering the same series again (as a
 * restarted worker does) returns the same handle. Rendering follows the
 * Prometheus text exposition format.
 *
 * Handles are small integers. Updating a metric never allocates or locks. */
#ifndef CORE_METRICS_H
#define CORE_METRICS_H

#include <stddef.h>

#include "core/buf.h"

typedef int core_metric_t; /* < 0: invalid handle; updates through it are no-ops */

#define CORE_METRICS_MAX_WORKERS 64
#define CORE_METRICS_MAX_BUCKETS 16

/* Maps the shared segment for up to `workers` columns. Call once, before fork. */
int core_metrics_init(int workers);
/* Selects this process's column and zeroes its gauges (a restarted worker's
 * connections are gone); counters keep counting. */
void core_metrics_set_worker(int worker);

/* labels: "" or a Prometheus label list without braces, e.g. `code="2xx"`. */
core_metric_t core_metrics_counter(const char *name, const char *help, const char *labels);
core_metric_t core_metrics_gauge(const char *name, const char *help, const char *labels);
/* bounds: ascending upper bounds, at most CORE_METRICS_MAX_BUCKETS; +Inf is implied. */
core_metric_t core_metrics_histogram(const char *name, const char *help, const char *labels,
                                     const double *bounds, size_t nbounds);

void core_metrics_add(core_metric_t m, double v);     /* counter or gauge */
void core_metrics_set(core_metric_t m, double v);     /* gauge */
void core_metrics_observe(core_metric_t m, double v); /* histogram */
/* This worker's own value of a counter or gauge (for tests and readiness logic). */
double core_metrics_value(core_metric_t m);

/* Appends every series, summed over workers, in text format 0.0.4. */
void core_metrics_render(core_buf_t *out);

/* Common bucket sets, in seconds. */
extern const double core_metrics_latency_bounds[];
extern const size_t core_metrics_latency_nbounds;

#endif
