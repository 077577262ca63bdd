/* rg_api_replicas.c: GET /metrics/replicas, the replicas this region holds,
 * one series per workspace, in Prometheus text format:
 *
 *   meridian_replica_applied_seq{workspace,home}   every event up to here is held
 *   meridian_replica_expected_seq{workspace,home}  the highest seq seen
 *   meridian_replica_gaps_total{workspace,home}    holes found
 *   meridian_replica_backfilled_total{workspace,home}
 *
 * Read from the shards at each scrape, not kept in the shared metrics
 * registry: its slots are fixed, and a region may hold many replicas.
 * Workspace ids are opaque; nothing here names or holds content. */
#include "core/core.h"
#include "core/log.h"
#include "region/rg_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERIES 20000 /* per shard: a scrape stays bounded */

typedef struct {
    core_buf_t out;
    int failures;
} rep_state_t;

#define RS(r) ((rep_state_t *)(r)->state)

static void free_state(rg_req_t *r)
{
    core_buf_free(&RS(r)->out);
}

static void series(core_buf_t *b, const char *name, const char *ws, const char *home,
                   const char *value)
{
    core_buf_puts(b, name);
    core_buf_puts(b, "{workspace=\"");
    core_buf_puts(b, ws); /* ids and region names need no escaping */
    core_buf_puts(b, "\",home=\"");
    core_buf_puts(b, home);
    core_buf_puts(b, "\"} ");
    core_buf_puts(b, value);
    core_buf_putc(b, '\n');
}

static void on_shard(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    rep_state_t *st = RS(r);
    if (err) {
        st->failures++;
    } else {
        for (int i = 0; i < PQntuples(res); i++) {
            const char *ws = PQgetvalue(res, i, 0), *home = PQgetvalue(res, i, 1);
            if (!rg_id_valid(ws) || strchr(home, '"') || strchr(home, '\\'))
                continue;
            series(&st->out, "meridian_replica_applied_seq", ws, home, PQgetvalue(res, i, 2));
            series(&st->out, "meridian_replica_expected_seq", ws, home, PQgetvalue(res, i, 3));
            series(&st->out, "meridian_replica_gaps_total", ws, home, PQgetvalue(res, i, 4));
            series(&st->out, "meridian_replica_backfilled_total", ws, home, PQgetvalue(res, i, 5));
        }
    }
    if (rg_req_gone(r) || r->pending > 0)
        return;
    char tail[96];
    snprintf(tail, sizeof tail, "meridian_replica_shards_unavailable %d\n", st->failures);
    core_buf_puts(&st->out, tail);
    if (r->http)
        core_http_respond(r->http, 200, "text/plain; version=0.0.4", NULL, st->out.base,
                          st->out.len);
    rg_req_release(r);
}

static void on_replicas(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(rep_state_t));
    r->on_free = free_state;
    rep_state_t *st = RS(r);
    core_buf_init(&st->out);
    core_buf_puts(&st->out,
                  "# HELP meridian_replica_applied_seq Every event of the workspace up to this "
                  "seq is held here.\n# TYPE meridian_replica_applied_seq gauge\n"
                  "# HELP meridian_replica_expected_seq The highest seq of the workspace seen "
                  "here.\n# TYPE meridian_replica_expected_seq gauge\n"
                  "# HELP meridian_replica_gaps_total Holes found in the replica's sequence.\n"
                  "# TYPE meridian_replica_gaps_total counter\n"
                  "# HELP meridian_replica_backfilled_total Events received from backfill "
                  "answers.\n# TYPE meridian_replica_backfilled_total counter\n"
                  "# HELP meridian_replica_shards_unavailable Shards that did not answer this "
                  "scrape.\n# TYPE meridian_replica_shards_unavailable gauge\n");
    char limit[16];
    snprintf(limit, sizeof limit, "%d", MAX_SERIES);
    const char *params[] = {limit};
    for (int i = 0; i < r->w->nshards; i++) {
        if (core_pg_query(r->w->shards[i],
                          "SELECT workspace_id, home_region, applied_seq, expected_seq, gaps_found,"
                          " backfilled FROM replica_workspaces ORDER BY workspace_id LIMIT $1::int",
                          1, params, NULL, on_shard, r, NULL) == 0)
            r->pending++;
        else
            st->failures++;
    }
    if (r->pending == 0) {
        r->pending++;
        on_shard(NULL, 0, NULL, r); /* no shard took it: answer with the count of them */
    }
}

int rg_api_replica_routes(rg_worker_t *w)
{
    return core_http_route(w->http, "GET", "/metrics/replicas", on_replicas, w);
}
