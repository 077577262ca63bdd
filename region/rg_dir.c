#include "region/rg_dir.h"
#include "core/core.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Placements change only when a workspace moves; the move tells every worker
 * of both regions to forget the entry (rg_move.c), and the database fence
 * catches a worker that missed that. Otherwise entries stay until the cache
 * is full, then it starts over. */
#define CACHE_MAX 1000000

typedef struct waiter_s {
    struct waiter_s *next;
    rg_req_t *r;
    rg_dir_cb cb;
} waiter_t;

typedef struct {
    rg_dir_t *d;
    rg_dir_kind_t kind;
    char key[72]; /* kind prefix + id: the in-flight map key */
    waiter_t *waiters;
    int outstanding; /* shard queries not answered yet */
    int failed;
    bool found;
    bool have_fallback; /* place holds an answer not yet taken (see on_shard_answer) */
    bool in_map;
    rg_place_t place;
} lookup_t;

struct rg_dir_s {
    rg_worker_t *w;
    core_map_t *cache;    /* key -> rg_place_t* */
    core_map_t *inflight; /* key -> lookup_t* */
    core_metric_t m_hits, m_misses, m_queries;
};

static void make_key(char *out, size_t cap, rg_dir_kind_t kind, const char *id)
{
    snprintf(out, cap, "%c:%s", kind == RG_DIR_WORKSPACE ? 'w' : 'u', id);
}

rg_dir_t *rg_dir_new(rg_worker_t *w)
{
    rg_dir_t *d = core_xcalloc(1, sizeof *d);
    d->w = w;
    d->cache = core_map_new();
    d->inflight = core_map_new();
    d->m_hits = core_metrics_counter("meridian_directory_lookups_total",
                                     "Directory lookups by outcome.", "result=\"hit\"");
    d->m_misses = core_metrics_counter("meridian_directory_lookups_total",
                                       "Directory lookups by outcome.", "result=\"miss\"");
    d->m_queries = core_metrics_counter("meridian_directory_queries_total",
                                        "Shard queries made for directory misses.", "");
    return d;
}

const rg_place_t *rg_dir_cached(rg_dir_t *d, rg_dir_kind_t kind, const char *id)
{
    char key[72];
    make_key(key, sizeof key, kind, id);
    const rg_place_t *p = core_map_get(d->cache, key);
    core_metrics_add(p ? d->m_hits : d->m_misses, 1);
    return p;
}

void rg_dir_remember(rg_dir_t *d, rg_dir_kind_t kind, const char *id, const rg_place_t *p)
{
    char key[72];
    make_key(key, sizeof key, kind, id);
    if (core_map_len(d->cache) >= CACHE_MAX)
        core_map_clear(d->cache, free);
    rg_place_t *copy = core_xmalloc(sizeof *copy);
    *copy = *p;
    free(core_map_put(d->cache, key, copy));
}

void rg_dir_forget(rg_dir_t *d, rg_dir_kind_t kind, const char *id)
{
    char key[72];
    make_key(key, sizeof key, kind, id);
    free(core_map_remove(d->cache, key));
}

/* Answers every waiter; the lookup record itself lives on until the last
 * shard has answered, since each shard's callback points at it. */
static void notify(lookup_t *l, int err)
{
    waiter_t *wt = l->waiters;
    l->waiters = NULL;
    if (l->in_map) {
        core_map_remove(l->d->inflight, l->key);
        l->in_map = false;
    }
    if (!err)
        rg_dir_remember(l->d, l->kind, l->key + 2, &l->place);
    while (wt) {
        waiter_t *next = wt->next;
        wt->cb(wt->r, err, err ? NULL : &l->place);
        free(wt);
        wt = next;
    }
}

static void on_shard_answer(const PGresult *res, int err, const char *errmsg, void *ud)
{
    lookup_t *l = ud;
    l->outstanding--;
    if (err) {
        l->failed++;
    } else if (!l->found && PQntuples(res) == 1) {
        /* The first shard that has the row settles it, unless it places one
         * of our own workspaces nowhere: a copy that has not yet heard where
         * a workspace that moved here lives. Another shard may know; if none
         * does, it is used (and answered 503) when all have answered. */
        int shard = atoi(PQgetvalue(res, 0, 0));
        const char *home = PQgetvalue(res, 0, 1);
        int64_t epoch = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        bool ours_nowhere = shard < 0 && strcmp(home, l->d->w->cfg->region) == 0;
        if (!l->have_fallback || !ours_nowhere) {
            l->place.shard = shard;
            snprintf(l->place.home_region, sizeof l->place.home_region, "%s", home);
            l->place.epoch = epoch;
            l->have_fallback = true;
        }
        if (!ours_nowhere) {
            l->found = true;
            notify(l, 0);
        }
    }
    if (l->outstanding == 0) {
        if (!l->found && l->have_fallback) {
            l->found = true;
            notify(l, 0);
        } else if (!l->found) {
            notify(l, l->failed ? UV_EAGAIN : UV_ENOENT);
        }
        free(l);
    }
}

void rg_dir_lookup(rg_dir_t *d, rg_req_t *r, rg_dir_kind_t kind, const char *id, rg_dir_cb cb)
{
    char key[72];
    make_key(key, sizeof key, kind, id);
    waiter_t *wt = core_xcalloc(1, sizeof *wt);
    wt->r = r;
    wt->cb = cb;
    r->pending++;
    lookup_t *l = core_map_get(d->inflight, key);
    if (l) {
        wt->next = l->waiters;
        l->waiters = wt;
        return;
    }
    l = core_xcalloc(1, sizeof *l);
    l->d = d;
    l->kind = kind;
    snprintf(l->key, sizeof l->key, "%s", key);
    l->waiters = wt;
    l->in_map = true;
    core_map_put(d->inflight, key, l);
    static const char *const sql[] = {
        "SELECT shard, home_region, epoch FROM dir_workspaces WHERE workspace_id = $1",
        "SELECT shard, home_region, 0 FROM dir_users WHERE user_id = $1",
    };
    const char *params[] = {id};
    l->outstanding = d->w->nshards;
    for (int i = 0; i < d->w->nshards; i++) {
        core_metrics_add(d->m_queries, 1);
        int rc =
            core_pg_query(d->w->shards[i], sql[kind], 1, params, NULL, on_shard_answer, l, NULL);
        if (rc) {
            l->outstanding--;
            l->failed++;
        }
    }
    if (l->outstanding == 0) {
        /* Every shard refused at once (all down or overloaded). */
        notify(l, UV_EAGAIN);
        free(l);
    }
}

void rg_dir_free(rg_dir_t *d)
{
    if (!d)
        return;
    /* Called after the pools are closed: closing answered every shard query,
     * so no lookup is left in flight. */
    assert(core_map_len(d->inflight) == 0);
    core_map_free(d->inflight, NULL);
    core_map_free(d->cache, free);
    free(d);
}
