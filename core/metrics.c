#include "core/metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define MAX_SERIES 384
#define MAX_SLOTS 2048

enum { M_COUNTER, M_GAUGE, M_HISTOGRAM };

typedef struct {
    char name[96];
    char help[128];
    char labels[128];
    int type;
    int slot; /* first value slot */
    int nbounds;
    double bounds[CORE_METRICS_MAX_BUCKETS];
} series_t;

typedef struct {
    pthread_mutex_t mu; /* process-shared: guards registration only */
    int workers;
    _Atomic int nseries;
    int nslots;
    series_t series[MAX_SERIES];
    /* values[worker * MAX_SLOTS + slot], doubles stored as bits; one writer per column */
    _Atomic uint64_t values[];
} shm_t;

static shm_t *g_shm;
static int g_worker;

const double core_metrics_latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,    0.25,  0.5,    1,     2.5,  5};
const size_t core_metrics_latency_nbounds =
    sizeof core_metrics_latency_bounds / sizeof core_metrics_latency_bounds[0];

static inline double load(int worker, int slot)
{
    uint64_t bits = atomic_load_explicit(&g_shm->values[(size_t)worker * MAX_SLOTS + (size_t)slot],
                                         memory_order_relaxed);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline void store(int worker, int slot, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    atomic_store_explicit(&g_shm->values[(size_t)worker * MAX_SLOTS + (size_t)slot], bits,
                          memory_order_relaxed);
}

int core_metrics_init(int workers)
{
    if (workers < 1 || workers > CORE_METRICS_MAX_WORKERS)
        return -1;
    size_t size = sizeof(shm_t) + sizeof(uint64_t) * (size_t)workers * MAX_SLOTS;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    g_shm = p; /* mmap zero-fills: every value starts at 0.0 */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    /* A worker killed while registering must not wedge the others. */
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&g_shm->mu, &attr);
    pthread_mutexattr_destroy(&attr);
    g_shm->workers = workers;
    g_worker = 0;
    return 0;
}

void core_metrics_set_worker(int worker)
{
    if (!g_shm || worker < 0 || worker >= g_shm->workers)
        return;
    g_worker = worker;
    for (int i = 0; i < g_shm->nseries; i++) {
        series_t *s = &g_shm->series[i];
        if (s->type == M_GAUGE)
            store(worker, s->slot, 0);
    }
}

static void lock(void)
{
    if (pthread_mutex_lock(&g_shm->mu) == EOWNERDEAD)
        pthread_mutex_consistent(&g_shm->mu);
}

static core_metric_t reg(const char *name, const char *help, const char *labels, int type,
                         const double *bounds, size_t nbounds)
{
    if (!g_shm || nbounds > CORE_METRICS_MAX_BUCKETS)
        return -1;
    if (!labels)
        labels = "";
    lock();
    core_metric_t found = -1;
    for (int i = 0; i < g_shm->nseries; i++) {
        series_t *s = &g_shm->series[i];
        if (strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0) {
            found = s->type == type ? i : -1;
            goto out;
        }
    }
    int need = type == M_HISTOGRAM ? (int)nbounds + 3 : 1; /* buckets, +Inf, sum, count */
    if (g_shm->nseries == MAX_SERIES || g_shm->nslots + need > MAX_SLOTS ||
        strlen(name) >= sizeof g_shm->series[0].name ||
        strlen(labels) >= sizeof g_shm->series[0].labels)
        goto out;
    series_t *s = &g_shm->series[g_shm->nseries];
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->help, sizeof s->help, "%s", help ? help : "");
    snprintf(s->labels, sizeof s->labels, "%s", labels);
    s->type = type;
    s->slot = g_shm->nslots;
    s->nbounds = (int)nbounds;
    if (nbounds)
        memcpy(s->bounds, bounds, nbounds * sizeof *bounds);
    g_shm->nslots += need;
    found = g_shm->nseries++; /* published last: readers see only complete series */
out:
    pthread_mutex_unlock(&g_shm->mu);
    return found;
}

core_metric_t core_metrics_counter(const char *name, const char *help, const char *labels)
{
    return reg(name, help, labels, M_COUNTER, NULL, 0);
}

core_metric_t core_metrics_gauge(const char *name, const char *help, const char *labels)
{
    return reg(name, help, labels, M_GAUGE, NULL, 0);
}

core_metric_t core_metrics_histogram(const char *name, const char *help, const char *labels,
                                     const double *bounds, size_t nbounds)
{
    return reg(name, help, labels, M_HISTOGRAM, bounds, nbounds);
}

void core_metrics_add(core_metric_t m, double v)
{
    if (m < 0 || !g_shm)
        return;
    int slot = g_shm->series[m].slot;
    store(g_worker, slot, load(g_worker, slot) + v);
}

void core_metrics_set(core_metric_t m, double v)
{
    if (m < 0 || !g_shm)
        return;
    store(g_worker, g_shm->series[m].slot, v);
}

double core_metrics_value(core_metric_t m)
{
    if (m < 0 || !g_shm)
        return 0;
    return load(g_worker, g_shm->series[m].slot);
}

void core_metrics_observe(core_metric_t m, double v)
{
    if (m < 0 || !g_shm)
        return;
    series_t *s = &g_shm->series[m];
    int b = 0;
    while (b < s->nbounds && v > s->bounds[b])
        b++;
    int slot = s->slot;
    store(g_worker, slot + b, load(g_worker, slot + b) + 1);
    store(g_worker, slot + s->nbounds + 1, load(g_worker, slot + s->nbounds + 1) + v);
    store(g_worker, slot + s->nbounds + 2, load(g_worker, slot + s->nbounds + 2) + 1);
}

static double sum_slot(int slot)
{
    double t = 0;
    for (int w = 0; w < g_shm->workers; w++)
        t += load(w, slot);
    return t;
}

static void put_value(core_buf_t *out, double v)
{
    if (v == (double)(int64_t)v && v < 9e15 && v > -9e15)
        core_buf_appendf(out, "%lld\n", (long long)v);
    else
        core_buf_appendf(out, "%.17g\n", v);
}

static void put_labels(core_buf_t *out, const char *labels, const char *extra)
{
    if (!*labels && !extra)
        return;
    core_buf_putc(out, '{');
    core_buf_puts(out, labels);
    if (extra) {
        if (*labels)
            core_buf_putc(out, ',');
        core_buf_puts(out, extra);
    }
    core_buf_putc(out, '}');
}

static void render_series(core_buf_t *out, const series_t *s)
{
    if (s->type != M_HISTOGRAM) {
        core_buf_puts(out, s->name);
        put_labels(out, s->labels, NULL);
        core_buf_putc(out, ' ');
        put_value(out, sum_slot(s->slot));
        return;
    }
    double cum = 0;
    char le[48];
    for (int b = 0; b <= s->nbounds; b++) {
        cum += sum_slot(s->slot + b);
        if (b < s->nbounds)
            snprintf(le, sizeof le, "le=\"%g\"", s->bounds[b]);
        else
            snprintf(le, sizeof le, "le=\"+Inf\"");
        core_buf_appendf(out, "%s_bucket", s->name);
        put_labels(out, s->labels, le);
        core_buf_putc(out, ' ');
        put_value(out, cum);
    }
    core_buf_appendf(out, "%s_sum", s->name);
    put_labels(out, s->labels, NULL);
    core_buf_putc(out, ' ');
    put_value(out, sum_slot(s->slot + s->nbounds + 1));
    core_buf_appendf(out, "%s_count", s->name);
    put_labels(out, s->labels, NULL);
    core_buf_putc(out, ' ');
    put_value(out, sum_slot(s->slot + s->nbounds + 2));
}

void core_metrics_render(core_buf_t *out)
{
    if (!g_shm)
        return;
    static const char *types[] = {"counter", "gauge", "histogram"};
    int n = atomic_load_explicit(&g_shm->nseries, memory_order_acquire);
    /* A family's series must be contiguous in the exposition: group by name. */
    for (int i = 0; i < n; i++) {
        const series_t *s = &g_shm->series[i];
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = strcmp(g_shm->series[j].name, s->name) == 0;
        if (seen)
            continue;
        core_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", s->name, s->help, s->name,
                         types[s->type]);
        for (int k = i; k < n; k++)
            if (strcmp(g_shm->series[k].name, s->name) == 0)
                render_series(out, &g_shm->series[k]);
    }
}
