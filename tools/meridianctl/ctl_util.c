/* ctl_util.c: small helpers shared by meridianctl's commands. */
#include "tools/meridianctl/ctl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

void ctl_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("meridianctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

PGconn *ctl_pg_connect(const res_region_t *r, const res_shard_t *s, char *err, size_t errlen)
{
    /* Keywords given later in a conninfo win, so ours only add what the world
     * file leaves out: a bounded connect and a name in pg_stat_activity. */
    char conninfo[1024];
    snprintf(conninfo, sizeof conninfo, "%s connect_timeout=5 application_name=meridianctl",
             s->conninfo);
    PGconn *pg = PQconnectdb(conninfo);
    if (!pg) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, errlen, "%s", PQerrorMessage(pg));
        size_t n = strlen(err);
        while (n && (err[n - 1] == '\n' || err[n - 1] == ' '))
            err[--n] = '\0';
        PQfinish(pg);
        return NULL;
    }
    (void)r;
    PGresult *res = PQexec(pg, "SET statement_timeout = 0; SET default_transaction_read_only = on");
    PQclear(res);
    return pg;
}

bool ctl_pg_has_table(PGconn *pg, const char *name)
{
    const char *params[] = {name};
    PGresult *res =
        PQexecParams(pg, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
              strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return ok;
}

void ctl_hex(char *out, const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

const char *ctl_region_list(const res_world_t *w, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < w->nregions && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? ", " : "", w->regions[i].name);
    return out;
}

void ctl_pg_region_array(const res_world_t *w, core_buf_t *out)
{
    core_buf_putc(out, '{');
    for (size_t i = 0; i < w->nregions; i++)
        core_buf_appendf(out, "%s\"%s\"", i ? "," : "", w->regions[i].name);
    core_buf_putc(out, '}');
}

void ctl_progress(const ctl_t *c, const char *label, size_t done, size_t total)
{
    if (!c->progress || total == 0)
        return;
    enum { WIDTH = 30 };
    size_t fill = done * WIDTH / total;
    char bar[WIDTH + 1];
    for (size_t i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = '\0';
    fprintf(stderr, "\r\033[K[%s] %3zu%% %-50.50s", bar, done * 100 / total, label);
    fflush(stderr);
}

void ctl_progress_end(const ctl_t *c)
{
    if (!c->progress)
        return;
    fputs("\r\033[K", stderr);
    fflush(stderr);
}

double ctl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
