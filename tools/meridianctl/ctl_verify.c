/* ctl_verify.c: `residency verify`: where every workspace's data is, read
 * from every region's real stores, against design.md's residency invariants.
 *
 * The policy of a workspace is the one its home region holds: the
 * workspaces row on the shard that the home region's directory places it on
 * (allowed_regions, home included; an empty set means the home alone).
 * Replicas' and edges' copies of the directory are not trusted for this: a
 * stale copy is exactly what verify must not be fooled by.
 *
 * Then every store of every region is read:
 *   Postgres: every table with a workspace_id column (plus workspaces itself),
 *     counted per workspace. Content anywhere outside the allowed set breaks
 *     invariant 1. replica_workspaces and outbox_relay hold ids and counters
 *     only and are reported, not judged.
 *   Redis: SCAN for the presence and typing keys (region/rg_presence.h):
 *     Redis holds only the home region's workspaces.
 *   JetStream: every stream of the region's domain, counted per subject
 *     ev.<origin>.<dest>.<ws>.<type>: the region holding the stream and the
 *     subject's origin and destination must all be allowed.
 *   The directory tables (invariant 8): no column that looks like a name,
 *     email, slug or content, and every value an id, a keyed hash or a region
 *     name of the world.
 * Invariant 7 (a former home keeps nothing after a move, and its data key
 * is destroyed): each region's own `moves` rows (migration 0012) say which
 * workspaces it moved away; there, nothing a home holds may be left (rows,
 * workspace_keys, Redis keys, events it published as home). Only replica
 * data is allowed, and only while the region stays in the allowed set. Its
 * audit chain is append-only and keeps its entries about the workspace. */
#include "tools/meridianctl/ctl.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <nats/nats.h>

#include "core/core.h"
#include "core/json.h"
#include "core/map.h"

#define ID_RE "'^[A-Za-z0-9_-]{1,64}$'"

typedef enum { ST_POSTGRES, ST_REDIS, ST_JETSTREAM } store_t;
static const char *const STORE_NAMES[] = {"postgres", "redis", "jetstream"};

typedef struct {
    int region; /* index in the world */
    store_t store;
    int shard;     /* postgres only, else -1 */
    char what[64]; /* table or stream */
    int dest;      /* jetstream: the subjects' destination region (index), else -1 */
    int origin;    /* jetstream: the subjects' origin region (index), else -1 */
    bool content;  /* false: ids and counters only, reported but not judged */
    int64_t count; /* rows, keys or messages */
} loc_t;

typedef struct {
    char *id;
    int home;         /* region index, -1 when no region holds its policy */
    uint64_t allowed; /* bit per region index */
    bool pinned;
    int homes; /* policies found: more than one is itself a violation */
    /* A home whose row is fenced (moving_to set, migration 0012): it counts
     * only while the target has not become the home. */
    int fenced_home;
    uint64_t fenced_allowed;
    bool fenced_pinned;
    uint64_t former; /* regions that completed a move of it away (bit per index) */
    uint64_t moving; /* regions moving it away right now, past the freeze */
    loc_t *locs;
    size_t nlocs, cap;
    size_t nviolations;
} ws_t;

typedef struct {
    int invariant;
    const char *ws; /* NULL for directory findings */
    int region;
    store_t store;
    int shard;
    char what[64];
    int64_t count;
    char message[400];
} violation_t;

typedef struct {
    ctl_t *c;
    core_map_t *ws; /* id -> ws_t */
    violation_t *v;
    size_t nv, capv;
    char **unreachable; /* "region store: reason" */
    size_t nunreachable;
    int64_t pg_rows, redis_keys, redis_scanned, js_subjects, js_msgs;
    const char *only;   /* --workspace */
    bool moves_seen;    /* some shard has the moves table: invariant 7 is checkable */
    int64_t moves_done; /* completed moves found at their source */
    size_t step, steps;
} verify_t;

static ws_t *ws_get(verify_t *v, const char *id)
{
    ws_t *w = core_map_get(v->ws, id);
    if (!w) {
        w = core_xcalloc(1, sizeof *w);
        w->id = core_xstrdup(id);
        w->home = -1;
        w->fenced_home = -1;
        core_map_put(v->ws, id, w);
    }
    return w;
}

static void ws_free(void *p)
{
    ws_t *w = p;
    free(w->id);
    free(w->locs);
    free(w);
}

static loc_t *add_loc(ws_t *w, int region, store_t store, int shard, const char *what, bool content,
                      int64_t count)
{
    for (size_t i = 0; i < w->nlocs; i++) {
        loc_t *l = &w->locs[i];
        if (l->region == region && l->store == store && l->shard == shard &&
            strcmp(l->what, what) == 0 && l->dest == -1) {
            l->count += count;
            return l;
        }
    }
    if (w->nlocs == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 8;
        w->locs = core_xrealloc(w->locs, w->cap * sizeof *w->locs);
    }
    loc_t *l = &w->locs[w->nlocs++];
    *l = (loc_t){.region = region,
                 .store = store,
                 .shard = shard,
                 .dest = -1,
                 .origin = -1,
                 .content = content,
                 .count = count};
    snprintf(l->what, sizeof l->what, "%s", what);
    return l;
}

static violation_t *add_violation(verify_t *v, int invariant, const char *ws, int region,
                                  store_t store, int shard, const char *what, int64_t count,
                                  const char *fmt, ...) __attribute__((format(printf, 9, 10)));

static violation_t *add_violation(verify_t *v, int invariant, const char *ws, int region,
                                  store_t store, int shard, const char *what, int64_t count,
                                  const char *fmt, ...)
{
    if (v->nv == v->capv) {
        v->capv = v->capv ? v->capv * 2 : 16;
        v->v = core_xrealloc(v->v, v->capv * sizeof *v->v);
    }
    violation_t *x = &v->v[v->nv++];
    *x = (violation_t){.invariant = invariant,
                       .ws = ws,
                       .region = region,
                       .store = store,
                       .shard = shard,
                       .count = count};
    snprintf(x->what, sizeof x->what, "%s", what ? what : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->message, sizeof x->message, fmt, ap);
    va_end(ap);
    return x;
}

static void unreachable(verify_t *v, const char *region, const char *store, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void unreachable(verify_t *v, const char *region, const char *store, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char line[512];
    snprintf(line, sizeof line, "%s %s: %s", region, store, msg);
    v->unreachable = core_xrealloc(v->unreachable, (v->nunreachable + 1) * sizeof *v->unreachable);
    v->unreachable[v->nunreachable++] = core_xstrdup(line);
}

static int region_index(const ctl_t *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->world.nregions; i++)
        if (strlen(c->world.regions[i].name) == len &&
            memcmp(c->world.regions[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

static void step(verify_t *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void step(verify_t *v, const char *fmt, ...)
{
    if (!v->c->progress)
        return;
    char label[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(label, sizeof label, fmt, ap);
    va_end(ap);
    ctl_progress(v->c, label, v->step, v->steps);
}

/* ---- Postgres ---- */

/* Parses a text[] rendered by array_to_string(.., ',') into a region bitmask;
 * names the world does not know are returned in *unknown (first one). */
static uint64_t region_mask(const ctl_t *c, const char *list, char *unknown, size_t cap)
{
    uint64_t m = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        int i = region_index(c, p, n);
        if (i >= 0)
            m |= (uint64_t)1 << i;
        else if (n && unknown && !unknown[0])
            snprintf(unknown, cap, "%.*s", (int)n, p);
        p += n + (e ? 1 : 0);
    }
    return m;
}

static void pg_policies(verify_t *v, PGconn *pg, int ri, const res_shard_t *sh)
{
    const res_region_t *reg = &v->c->world.regions[ri];
    char shard[16];
    snprintf(shard, sizeof shard, "%d", sh->id);
    const char *params[] = {reg->name, shard};
    /* pinned arrives with migration 0010; read it through jsonb so that an
     * older schema still verifies. */
    PGresult *res = PQexecParams(pg,
                                 "SELECT w.id, array_to_string(w.allowed_regions, ','),"
                                 " coalesce((to_jsonb(w) ->> 'pinned')::boolean, false),"
                                 " coalesce(to_jsonb(w) ->> 'moving_to', '')"
                                 " FROM workspaces w JOIN dir_workspaces d ON d.workspace_id = w.id"
                                 " WHERE d.home_region = $1 AND d.shard = $2::int",
                                 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        unreachable(v, reg->name, "postgres", "shard %d: reading policies: %s", sh->id,
                    PQresultErrorMessage(res));
        PQclear(res);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        ws_t *w = ws_get(v, PQgetvalue(res, i, 0));
        char unknown[64] = "";
        uint64_t allowed = region_mask(v->c, PQgetvalue(res, i, 1), unknown, sizeof unknown);
        allowed |= (uint64_t)1 << ri; /* the home always holds its own data */
        if (PQgetvalue(res, i, 3)[0]) {
            /* Fenced for a move: the home until the target commits, then the
             * target's row wins (resolved in resolve_home). */
            w->fenced_home = ri;
            w->fenced_allowed = allowed;
            w->fenced_pinned = strcmp(PQgetvalue(res, i, 2), "t") == 0;
            if (unknown[0])
                add_violation(v, 1, w->id, ri, ST_POSTGRES, sh->id, "workspaces", 1,
                              "its allowed regions name '%s', which is not a region of the world",
                              unknown);
            continue;
        }
        w->homes++;
        if (w->homes > 1 && w->home != ri) {
            add_violation(v, 1, w->id, ri, ST_POSTGRES, sh->id, "workspaces", 1,
                          "two regions hold its policy as home: %s and %s",
                          v->c->world.regions[w->home].name, reg->name);
            continue;
        }
        w->home = ri;
        w->allowed = allowed;
        w->pinned = strcmp(PQgetvalue(res, i, 2), "t") == 0;
        if (unknown[0])
            add_violation(v, 1, w->id, ri, ST_POSTGRES, sh->id, "workspaces", 1,
                          "its allowed regions name '%s', which is not a region of the world",
                          unknown);
    }
    PQclear(res);
}

/* Tables that name a workspace but hold only ids and counters; `moves` and
 * `move_in` are a move's bookkeeping (ids, regions, counts, its report). */
static bool metadata_table(const char *t)
{
    return strcmp(t, "replica_workspaces") == 0 || strcmp(t, "outbox_relay") == 0 ||
           strcmp(t, "residency_refusals") == 0 || strcmp(t, "moves") == 0 ||
           strcmp(t, "move_in") == 0;
}

/* Tables a region holds for a workspace it replicates (not its home). */
static bool replica_table(const char *t)
{
    return strcmp(t, "replica_events") == 0;
}

/* The moves this region made as a source (migration 0012; absent before). */
static void pg_moves(verify_t *v, PGconn *pg, int ri, const res_shard_t *sh)
{
    const res_region_t *reg = &v->c->world.regions[ri];
    if (!ctl_pg_has_table(pg, "moves"))
        return;
    v->moves_seen = true;
    const char *params[] = {reg->name};
    PGresult *res = PQexecParams(pg,
                                 "SELECT workspace_id, target_region, state FROM moves"
                                 " WHERE source_region = $1 AND state NOT IN ('scheduled',"
                                 " 'catching_up', 'cancelled') ORDER BY created_at",
                                 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        unreachable(v, reg->name, "postgres", "shard %d: reading moves: %s", sh->id,
                    PQresultErrorMessage(res));
        PQclear(res);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        ws_t *w = ws_get(v, PQgetvalue(res, i, 0));
        const char *state = PQgetvalue(res, i, 2);
        if (strcmp(state, "done") == 0) {
            w->former |= (uint64_t)1 << ri;
            v->moves_done++;
        } else {
            /* frozen .. shredding: the source still holds what the purge is
             * about to remove; judging it now would be judging a snapshot. */
            w->moving |= (uint64_t)1 << ri;
            if (!v->only || strcmp(v->only, w->id) == 0)
                unreachable(v, reg->name, "move",
                            "workspace %s is moving to %s (state %s): what %s still holds of it "
                            "is judged once the move is done",
                            w->id, PQgetvalue(res, i, 1), state, reg->name);
        }
    }
    PQclear(res);
}

static void pg_content(verify_t *v, PGconn *pg, int ri, const res_shard_t *sh)
{
    const res_region_t *reg = &v->c->world.regions[ri];
    /* Every table with a workspace_id column, so that a table added later is
     * scanned without anyone remembering to list it here. The directory is
     * invariant 8's business (ids only), checked below. */
    PGresult *tabs =
        PQexec(pg, "SELECT table_name FROM information_schema.columns"
                   " WHERE table_schema = current_schema() AND column_name ="
                   " 'workspace_id' AND table_name NOT LIKE 'dir\\_%'"
                   " AND table_name IN (SELECT table_name FROM information_schema.tables"
                   "  WHERE table_schema = current_schema() AND table_type = 'BASE TABLE')"
                   " ORDER BY 1");
    if (PQresultStatus(tabs) != PGRES_TUPLES_OK) {
        unreachable(v, reg->name, "postgres", "shard %d: listing tables: %s", sh->id,
                    PQresultErrorMessage(tabs));
        PQclear(tabs);
        return;
    }
    int ntabs = PQntuples(tabs);
    for (int t = -1; t < ntabs; t++) {
        const char *table = t < 0 ? "workspaces" : PQgetvalue(tabs, t, 0);
        step(v, "%s shard %d: %s", reg->name, sh->id, table);
        char sql[256];
        if (t < 0)
            snprintf(sql, sizeof sql, "SELECT id, 1 FROM workspaces");
        else
            snprintf(sql, sizeof sql,
                     "SELECT workspace_id, count(*) FROM \"%s\" WHERE workspace_id IS NOT NULL"
                     " GROUP BY 1",
                     table);
        PGresult *res = PQexec(pg, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            unreachable(v, reg->name, "postgres", "shard %d: reading %s: %s", sh->id, table,
                        PQresultErrorMessage(res));
            PQclear(res);
            continue;
        }
        bool content = !metadata_table(table);
        for (int i = 0; i < PQntuples(res); i++) {
            int64_t n = strtoll(PQgetvalue(res, i, 1), NULL, 10);
            v->pg_rows += n;
            add_loc(ws_get(v, PQgetvalue(res, i, 0)), ri, ST_POSTGRES, sh->id, table, content, n);
        }
        PQclear(res);
    }
    PQclear(tabs);
}

/* Invariant 8: the directory holds ids, keyed hashes and region names only. */
static void pg_directory(verify_t *v, PGconn *pg, int ri, const res_shard_t *sh)
{
    const res_region_t *reg = &v->c->world.regions[ri];
    PGresult *res = PQexec(
        pg, "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
            " AND table_name IN ('dir_workspaces', 'dir_users', 'dir_emails', 'dir_changes')"
            " AND column_name ~ '(name|mail|slug|body|text|title|display|phone|content|payload)'"
            " AND column_name NOT IN ('email_hash', 'slug_hash') ORDER BY 1, 2");
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        for (int i = 0; i < PQntuples(res); i++)
            add_violation(v, 8, NULL, ri, ST_POSTGRES, sh->id, PQgetvalue(res, i, 0), 0,
                          "directory table %s has a column '%s': the directory may hold only "
                          "ids, keyed hashes and region names",
                          PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    } else {
        unreachable(v, reg->name, "postgres", "shard %d: reading the directory's columns: %s",
                    sh->id, PQresultErrorMessage(res));
    }
    PQclear(res);

    core_buf_t regions;
    core_buf_init(&regions);
    ctl_pg_region_array(&v->c->world, &regions);
    const char *params[] = {core_buf_cstr(&regions)};
    /* Counts only: a bad value may itself be the personal data that must not
     * spread, so it is never printed. */
    res = PQexecParams(
        pg,
        "SELECT 'dir_workspaces', count(*) FROM dir_workspaces WHERE workspace_id !~ " ID_RE
        "   OR NOT (home_region = ANY ($1::text[])) OR NOT (allowed_regions <@ $1::text[])"
        " UNION ALL SELECT 'dir_users', count(*) FROM dir_users WHERE user_id !~ " ID_RE
        "   OR NOT (home_region = ANY ($1::text[]))"
        " UNION ALL SELECT 'dir_emails', count(*) FROM dir_emails WHERE length(email_hash) <> 32"
        "   OR user_id !~ " ID_RE " OR NOT (home_region = ANY ($1::text[]))"
        " UNION ALL SELECT 'dir_changes', count(*) FROM dir_changes"
        "   WHERE NOT (home_region = ANY ($1::text[]))"
        "   OR (allowed IS NOT NULL AND NOT (allowed <@ $1::text[]))"
        "   OR (CASE WHEN kind = 'email' THEN id !~ '^[0-9a-f]{64}$' ELSE id !~ " ID_RE " END)",
        1, NULL, params, NULL, NULL, 0);
    core_buf_free(&regions);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        unreachable(v, reg->name, "postgres", "shard %d: reading the directory: %s", sh->id,
                    PQresultErrorMessage(res));
        PQclear(res);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t n = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        if (n > 0)
            add_violation(v, 8, NULL, ri, ST_POSTGRES, sh->id, PQgetvalue(res, i, 0), n,
                          "%" PRId64 " rows of %s hold a value that is not an id, a keyed hash "
                          "or a region name of the world",
                          n, PQgetvalue(res, i, 0));
    }
    PQclear(res);
}

/* Policies first, from every region: content can be judged only once every
 * home has been heard. Connections are kept for the content pass. */
static void scan_postgres(verify_t *v)
{
    const res_world_t *w = &v->c->world;
    PGconn *conns[RES_MAX_REGIONS][RES_MAX_SHARDS] = {{0}};
    for (size_t ri = 0; ri < w->nregions; ri++) {
        const res_region_t *reg = &w->regions[ri];
        for (size_t s = 0; s < reg->nshards; s++) {
            step(v, "%s shard %d: connecting", reg->name, reg->shards[s].id);
            char err[300];
            PGconn *pg = ctl_pg_connect(reg, &reg->shards[s], err, sizeof err);
            if (!pg) {
                unreachable(v, reg->name, "postgres", "shard %d: %s", reg->shards[s].id, err);
                continue;
            }
            conns[ri][s] = pg;
            pg_policies(v, pg, (int)ri, &reg->shards[s]);
            pg_moves(v, pg, (int)ri, &reg->shards[s]);
        }
    }
    for (size_t ri = 0; ri < w->nregions; ri++) {
        const res_region_t *reg = &w->regions[ri];
        for (size_t s = 0; s < reg->nshards; s++) {
            PGconn *pg = conns[ri][s];
            if (pg) {
                pg_content(v, pg, (int)ri, &reg->shards[s]);
                pg_directory(v, pg, (int)ri, &reg->shards[s]);
                PQfinish(pg);
            }
            v->step++;
        }
    }
}

/* ---- Redis ---- */

/* The workspace a presence or typing key belongs to (region/rg_presence.h:
 * pr:{ws}, prc:{ws}:<user>, ty:{ws}:<ch>:<user>), or 0. */
static size_t key_workspace(const char *key, size_t len, const char **ws)
{
    static const char *const prefixes[] = {"pr:{", "prc:{", "ty:{"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t p = strlen(prefixes[i]);
        if (len > p && memcmp(key, prefixes[i], p) == 0) {
            const char *end = memchr(key + p, '}', len - p);
            if (end && end > key + p) {
                *ws = key + p;
                return (size_t)(end - (key + p));
            }
        }
    }
    return 0;
}

static void scan_redis(verify_t *v, int ri)
{
    const res_region_t *reg = &v->c->world.regions[ri];
    step(v, "%s redis", reg->name);
    struct timeval tv = {5, 0};
    redisContext *rc = redisConnectWithTimeout(reg->redis_host, reg->redis_port, tv);
    if (!rc || rc->err) {
        unreachable(v, reg->name, "redis", "%s:%d: %s", reg->redis_host, reg->redis_port,
                    rc ? rc->errstr : "out of memory");
        if (rc)
            redisFree(rc);
        return;
    }
    redisSetTimeout(rc, tv);
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(rc, "SCAN %s COUNT 1000", cursor);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            unreachable(v, reg->name, "redis", "SCAN failed: %s",
                        r && r->type == REDIS_REPLY_ERROR ? r->str : rc->errstr);
            if (r)
                freeReplyObject(r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *ws;
            v->redis_scanned++;
            size_t n = key_workspace(keys->element[i]->str, keys->element[i]->len, &ws);
            if (n == 0 || n > 64)
                continue;
            char id[72];
            snprintf(id, sizeof id, "%.*s", (int)n, ws);
            v->redis_keys++;
            add_loc(ws_get(v, id), ri, ST_REDIS, -1, "presence/typing", true, 1);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    redisFree(rc);
}

/* ---- JetStream ---- */

static void js_subject(verify_t *v, int ri, const char *stream, const char *subject, uint64_t msgs)
{
    /* ev.<origin>.<dest>.<ws>.<type...> */
    if (strncmp(subject, "ev.", 3) != 0)
        return;
    const char *origin = subject + 3;
    const char *d = strchr(origin, '.');
    const char *wsp = d ? strchr(d + 1, '.') : NULL;
    const char *type = wsp ? strchr(wsp + 1, '.') : NULL;
    if (!type)
        return;
    size_t wslen = (size_t)(type - (wsp + 1));
    if (wslen == 0 || wslen > 64 || (wslen == 4 && memcmp(wsp + 1, "_dir", 4) == 0))
        return; /* directory events carry ids only (invariant 8) */
    char id[72];
    snprintf(id, sizeof id, "%.*s", (int)wslen, wsp + 1);
    int oi = region_index(v->c, origin, (size_t)(d - origin));
    int di = region_index(v->c, d + 1, (size_t)(wsp - (d + 1)));
    ws_t *w = ws_get(v, id);
    /* One location per (stream, origin, destination). */
    loc_t *l = NULL;
    for (size_t i = 0; i < w->nlocs; i++)
        if (w->locs[i].store == ST_JETSTREAM && w->locs[i].region == ri && w->locs[i].dest == di &&
            w->locs[i].origin == oi && strcmp(w->locs[i].what, stream) == 0)
            l = &w->locs[i];
    if (!l) {
        l = add_loc(w, ri, ST_JETSTREAM, -1, stream, true, 0);
        l->dest = di;
        l->origin = oi;
        if (di < 0 || oi < 0)
            add_violation(v, 1, w->id, ri, ST_JETSTREAM, -1, stream, (int64_t)msgs,
                          "stream %s holds subjects naming a region the world does not know "
                          "(%s)",
                          stream, subject);
    }
    l->count += (int64_t)msgs;
    v->js_subjects++;
    v->js_msgs += (int64_t)msgs;
}

static void scan_jetstream(verify_t *v, int ri)
{
    const res_region_t *reg = &v->c->world.regions[ri];
    step(v, "%s jetstream", reg->name);
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamNamesList *names = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, (const char **)reg->nats_urls, (int)reg->nnats_urls);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 5000);
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, false);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, o);
    if (s != NATS_OK) {
        unreachable(v, reg->name, "jetstream", "connecting to %s: %s",
                    reg->nnats_urls ? reg->nats_urls[0] : "-", natsStatus_GetText(s));
        goto out;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Domain = reg->nats_domain; /* this region's own JetStream, whoever routes the request */
    jo.Wait = 10000;
    jsErrCode jerr = 0;
    s = natsConnection_JetStream(&js, nc, &jo);
    if (s == NATS_OK)
        s = js_StreamNames(&names, js, NULL, &jerr);
    if (s == NATS_NOT_FOUND) {
        goto out; /* no streams at all */
    }
    if (s != NATS_OK) {
        unreachable(v, reg->name, "jetstream", "listing streams: %s (%d)", natsStatus_GetText(s),
                    (int)jerr);
        goto out;
    }
    for (int i = 0; i < names->Count; i++) {
        const char *stream = names->List[i];
        jsOptions so;
        jsOptions_Init(&so);
        so.Stream.Info.SubjectsFilter = ">";
        jsStreamInfo *si = NULL;
        s = js_GetStreamInfo(&si, js, stream, &so, &jerr);
        if (s != NATS_OK) {
            unreachable(v, reg->name, "jetstream", "stream %s: %s (%d)", stream,
                        natsStatus_GetText(s), (int)jerr);
            continue;
        }
        jsStreamStateSubjects *subs = si->State.Subjects;
        for (int k = 0; subs && k < subs->Count; k++)
            js_subject(v, ri, stream, subs->List[k].Subject, subs->List[k].Msgs);
        jsStreamInfo_Destroy(si);
    }
out:
    if (names)
        jsStreamNamesList_Destroy(names);
    if (js)
        jsCtx_Destroy(js);
    if (nc)
        natsConnection_Destroy(nc);
    if (o)
        natsOptions_Destroy(o);
    v->step++;
}

/* ---- judging ---- */

static bool allowed(const ws_t *w, int region)
{
    return region >= 0 && (w->allowed & ((uint64_t)1 << region)) != 0;
}

static void allowed_names(const verify_t *v, const ws_t *w, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < v->c->world.nregions && o < cap; i++)
        if (allowed(w, (int)i))
            o += (size_t)snprintf(out + o, cap - o, "%s%s", o ? "," : "",
                                  v->c->world.regions[i].name);
}

/* A fenced home is the home only when no region has taken over yet. */
static void resolve_home(const char *key, void *val, void *ud)
{
    ws_t *w = val;
    (void)key;
    (void)ud;
    if (w->home < 0 && w->fenced_home >= 0) {
        w->home = w->fenced_home;
        w->allowed = w->fenced_allowed;
        w->pinned = w->fenced_pinned;
    }
}

/* Invariant 7 at a former home: whatever a home holds must be gone. Returns
 * true when the location was judged here. */
static bool judge_former(verify_t *v, ws_t *w, loc_t *l)
{
    const res_world_t *world = &v->c->world;
    const char *rn = world->regions[l->region].name;
    const char *hn = w->home >= 0 ? world->regions[w->home].name : "?";
    switch (l->store) {
    case ST_POSTGRES:
        if (strcmp(l->what, "audit_log") == 0)
            return true; /* an append-only chain cannot drop its entries */
        if (replica_table(l->what))
            return false; /* replica data: allowed where the policy allows it */
        if (strcmp(l->what, "workspace_keys") == 0)
            add_violation(v, 7, w->id, l->region, l->store, l->shard, l->what, l->count,
                          "%s moved it to %s but still holds its data key (workspace_keys, "
                          "shard %d): the key should have been destroyed",
                          rn, hn, l->shard);
        else
            add_violation(v, 7, w->id, l->region, l->store, l->shard, l->what, l->count,
                          "%" PRId64 " rows of %s left in %s shard %d, which moved it to %s",
                          l->count, l->what, rn, l->shard, hn);
        return true;
    case ST_REDIS:
        add_violation(v, 7, w->id, l->region, l->store, -1, l->what, l->count,
                      "%" PRId64 " presence/typing keys left in %s's Redis, which moved it to %s",
                      l->count, rn, hn);
        return true;
    case ST_JETSTREAM:
        if (l->origin != l->region)
            return false; /* events from the new home: replica traffic */
        add_violation(v, 7, w->id, l->region, l->store, -1, l->what, l->count,
                      "%" PRId64 " messages it published as home are left in stream %s of %s, "
                      "which moved it to %s",
                      l->count, l->what, rn, hn);
        return true;
    }
    return false;
}

static void judge(const char *key, void *val, void *ud)
{
    verify_t *v = ud;
    ws_t *w = val;
    const res_world_t *world = &v->c->world;
    char al[256];
    allowed_names(v, w, al, sizeof al);
    size_t before = v->nv;
    for (size_t i = 0; i < w->nlocs; i++) {
        loc_t *l = &w->locs[i];
        const char *rn = world->regions[l->region].name;
        if (!l->content)
            continue;
        uint64_t bit = (uint64_t)1 << l->region;
        if (w->home >= 0 && l->region != w->home && (w->moving & bit))
            continue; /* named as "not checked" already */
        if (w->home >= 0 && l->region != w->home && (w->former & bit) && judge_former(v, w, l))
            continue;
        if (w->home < 0) {
            char place[96];
            if (l->store == ST_POSTGRES)
                snprintf(place, sizeof place, "%" PRId64 " rows of %s in %s shard %d", l->count,
                         l->what, rn, l->shard);
            else if (l->store == ST_REDIS)
                snprintf(place, sizeof place, "%" PRId64 " keys in %s's Redis", l->count, rn);
            else
                snprintf(place, sizeof place, "%" PRId64 " messages in stream %s of %s", l->count,
                         l->what, rn);
            add_violation(v, 1, w->id, l->region, l->store, l->shard, l->what, l->count,
                          "%s, but no region holds this workspace's policy as its home: nothing "
                          "allows it to be there",
                          place);
            continue;
        }
        switch (l->store) {
        case ST_POSTGRES:
            if (!allowed(w, l->region))
                add_violation(v, 1, w->id, l->region, l->store, l->shard, l->what, l->count,
                              "%" PRId64 " rows of %s in %s shard %d, but %s is not allowed "
                              "(allowed: %s)",
                              l->count, l->what, rn, l->shard, rn, al);
            break;
        case ST_REDIS:
            if (l->region != w->home)
                add_violation(v, 1, w->id, l->region, l->store, -1, l->what, l->count,
                              "%" PRId64 " presence/typing keys in %s's Redis, but only its home "
                              "%s may hold them",
                              l->count, rn, world->regions[w->home].name);
            break;
        case ST_JETSTREAM: {
            const char *dn = l->dest >= 0 ? world->regions[l->dest].name : "?";
            if (!allowed(w, l->region))
                add_violation(v, 1, w->id, l->region, l->store, -1, l->what, l->count,
                              "%" PRId64 " messages in stream %s of %s, but %s is not allowed "
                              "(allowed: %s)",
                              l->count, l->what, rn, rn, al);
            else if (l->dest >= 0 && !allowed(w, l->dest))
                add_violation(v, 1, w->id, l->region, l->store, -1, l->what, l->count,
                              "%" PRId64 " messages in stream %s of %s are addressed to %s, "
                              "which is not allowed (allowed: %s)",
                              l->count, l->what, rn, dn, al);
            /* Events a former home published while it was home are the
             * workspace's history, wherever they are allowed to be. */
            else if (l->origin >= 0 && !allowed(w, l->origin) &&
                     !(w->former & ((uint64_t)1 << l->origin)))
                add_violation(v, 1, w->id, l->region, l->store, -1, l->what, l->count,
                              "%" PRId64 " messages in stream %s of %s come from %s, which is "
                              "not allowed (allowed: %s)",
                              l->count, l->what, rn, world->regions[l->origin].name, al);
            break;
        }
        }
    }
    (void)key;
    w->nviolations += v->nv - before;
}

/* Violations found while reading (two homes, unknown regions) belong to their
 * workspace too. */
static void count_early(verify_t *v, size_t upto)
{
    for (size_t i = 0; i < upto; i++) {
        if (!v->v[i].ws)
            continue;
        ws_t *w = core_map_get(v->ws, v->v[i].ws);
        if (w)
            w->nviolations++;
    }
}

/* ---- output ---- */

typedef struct {
    ws_t **v;
    size_t n;
} list_t;

static void collect(const char *key, void *val, void *ud)
{
    list_t *l = ud;
    (void)key;
    l->v[l->n++] = val;
}

static int by_id(const void *a, const void *b)
{
    return strcmp((*(ws_t *const *)a)->id, (*(ws_t *const *)b)->id);
}

static const char INV7_OFF[] = "not checked: no region has the moves table (migration 0012), so "
                               "no region is a former home";

static const char *inv7(const verify_t *v, char *out, size_t cap)
{
    if (!v->moves_seen)
        return INV7_OFF;
    snprintf(out, cap, "checked (%" PRId64 " completed moves)", v->moves_done);
    return out;
}

static void out_json(verify_t *v, list_t *l, const char *only, double seconds)
{
    const res_world_t *world = &v->c->world;
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "ok");
    core_jw_bool(&jw, v->nv == 0 && v->nunreachable == 0);
    core_jw_key(&jw, "world");
    core_jw_str(&jw, world->name);
    core_jw_key(&jw, "invariants");
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "1");
    core_jw_str(&jw, "checked");
    core_jw_key(&jw, "7");
    char i7[96];
    core_jw_str(&jw, inv7(v, i7, sizeof i7));
    core_jw_key(&jw, "8");
    core_jw_str(&jw, "checked");
    core_jw_obj_close(&jw);
    core_jw_key(&jw, "scanned");
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "postgres_rows");
    core_jw_int(&jw, v->pg_rows);
    core_jw_key(&jw, "redis_keys");
    core_jw_int(&jw, v->redis_scanned);
    core_jw_key(&jw, "jetstream_subjects");
    core_jw_int(&jw, v->js_subjects);
    core_jw_key(&jw, "jetstream_messages");
    core_jw_int(&jw, v->js_msgs);
    core_jw_key(&jw, "seconds");
    core_jw_double(&jw, seconds);
    core_jw_key(&jw, "rows_per_s");
    core_jw_double(&jw, seconds > 0 ? (double)v->pg_rows / seconds : 0);
    core_jw_obj_close(&jw);
    core_jw_key(&jw, "workspaces");
    core_jw_arr_open(&jw);
    for (size_t i = 0; i < l->n; i++) {
        ws_t *w = l->v[i];
        if (only && strcmp(only, w->id) != 0)
            continue;
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "workspace_id");
        core_jw_str(&jw, w->id);
        core_jw_key(&jw, "home_region");
        if (w->home >= 0)
            core_jw_str(&jw, world->regions[w->home].name);
        else
            core_jw_null(&jw);
        core_jw_key(&jw, "allowed_regions");
        core_jw_arr_open(&jw);
        for (size_t r = 0; r < world->nregions; r++)
            if (allowed(w, (int)r))
                core_jw_str(&jw, world->regions[r].name);
        core_jw_arr_close(&jw);
        core_jw_key(&jw, "pinned");
        core_jw_bool(&jw, w->pinned);
        core_jw_key(&jw, "former_homes");
        core_jw_arr_open(&jw);
        for (size_t r = 0; r < world->nregions; r++)
            if ((w->former & ((uint64_t)1 << r)) && (int)r != w->home)
                core_jw_str(&jw, world->regions[r].name);
        core_jw_arr_close(&jw);
        core_jw_key(&jw, "ok");
        core_jw_bool(&jw, w->nviolations == 0);
        core_jw_key(&jw, "locations");
        core_jw_arr_open(&jw);
        for (size_t k = 0; k < w->nlocs; k++) {
            loc_t *x = &w->locs[k];
            core_jw_obj_open(&jw);
            core_jw_key(&jw, "region");
            core_jw_str(&jw, world->regions[x->region].name);
            core_jw_key(&jw, "store");
            core_jw_str(&jw, STORE_NAMES[x->store]);
            if (x->store == ST_POSTGRES) {
                core_jw_key(&jw, "shard");
                core_jw_int(&jw, x->shard);
                core_jw_key(&jw, "table");
                core_jw_str(&jw, x->what);
                core_jw_key(&jw, "rows");
            } else if (x->store == ST_REDIS) {
                core_jw_key(&jw, "keys");
            } else {
                core_jw_key(&jw, "stream");
                core_jw_str(&jw, x->what);
                core_jw_key(&jw, "origin");
                if (x->origin >= 0)
                    core_jw_str(&jw, world->regions[x->origin].name);
                else
                    core_jw_null(&jw);
                core_jw_key(&jw, "destination");
                if (x->dest >= 0)
                    core_jw_str(&jw, world->regions[x->dest].name);
                else
                    core_jw_null(&jw);
                core_jw_key(&jw, "messages");
            }
            core_jw_int(&jw, x->count);
            core_jw_key(&jw, "content");
            core_jw_bool(&jw, x->content);
            core_jw_obj_close(&jw);
        }
        core_jw_arr_close(&jw);
        core_jw_obj_close(&jw);
    }
    core_jw_arr_close(&jw);
    core_jw_key(&jw, "violations");
    core_jw_arr_open(&jw);
    for (size_t i = 0; i < v->nv; i++) {
        violation_t *x = &v->v[i];
        if (only && (!x->ws || strcmp(only, x->ws) != 0))
            continue;
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "invariant");
        core_jw_int(&jw, x->invariant);
        core_jw_key(&jw, "workspace_id");
        if (x->ws)
            core_jw_str(&jw, x->ws);
        else
            core_jw_null(&jw);
        core_jw_key(&jw, "region");
        core_jw_str(&jw, world->regions[x->region].name);
        core_jw_key(&jw, "store");
        core_jw_str(&jw, STORE_NAMES[x->store]);
        if (x->shard >= 0) {
            core_jw_key(&jw, "shard");
            core_jw_int(&jw, x->shard);
        }
        core_jw_key(&jw, x->store == ST_JETSTREAM  ? "stream"
                         : x->store == ST_POSTGRES ? "table"
                                                   : "keys");
        core_jw_str(&jw, x->what);
        core_jw_key(&jw, "count");
        core_jw_int(&jw, x->count);
        core_jw_key(&jw, "message");
        core_jw_str(&jw, x->message);
        core_jw_obj_close(&jw);
    }
    core_jw_arr_close(&jw);
    core_jw_key(&jw, "unreachable");
    core_jw_arr_open(&jw);
    for (size_t i = 0; i < v->nunreachable; i++)
        core_jw_str(&jw, v->unreachable[i]);
    core_jw_arr_close(&jw);
    core_jw_obj_close(&jw);
    printf("%s\n", core_buf_cstr(&b));
    core_buf_free(&b);
}

static void out_table(verify_t *v, list_t *l, const char *only, double seconds)
{
    const res_world_t *world = &v->c->world;
    printf("%-26s %-10s %-24s %-6s %-6s %s\n", "WORKSPACE", "HOME", "ALLOWED", "PINNED", "STATUS",
           "WHERE ITS DATA IS (postgres rows / redis keys / jetstream messages)");
    for (size_t i = 0; i < l->n; i++) {
        ws_t *w = l->v[i];
        if (only && strcmp(only, w->id) != 0)
            continue;
        char al[256];
        allowed_names(v, w, al, sizeof al);
        core_buf_t where;
        core_buf_init(&where);
        for (size_t r = 0; r < world->nregions; r++) {
            int64_t n[3] = {0, 0, 0};
            bool any = false;
            for (size_t k = 0; k < w->nlocs; k++)
                if (w->locs[k].region == (int)r && w->locs[k].content) {
                    n[w->locs[k].store] += w->locs[k].count;
                    any = true;
                }
            if (any)
                core_buf_appendf(&where, "%s%s %" PRId64 "/%" PRId64 "/%" PRId64,
                                 where.len ? "; " : "", world->regions[r].name, n[0], n[1], n[2]);
        }
        printf("%-26s %-10s %-24s %-6s %-6s %s\n", w->id,
               w->home >= 0 ? world->regions[w->home].name : "(none)", w->home >= 0 ? al : "-",
               w->pinned ? "yes" : "no", w->nviolations ? "BAD" : "ok",
               where.len ? core_buf_cstr(&where) : "-");
        core_buf_free(&where);
    }
    size_t shown = 0, inv1 = 0;
    for (size_t i = 0; i < v->nv; i++) {
        violation_t *x = &v->v[i];
        if (only && (!x->ws || strcmp(only, x->ws) != 0))
            continue;
        inv1 += x->invariant == 1;
        if (!shown++)
            printf("\nVIOLATIONS\n");
        printf("  invariant %d: %s%s%s\n", x->invariant, x->ws ? x->ws : "directory",
               x->ws ? ": " : ": ", x->message);
    }
    if (v->nunreachable) {
        printf("\nNOT CHECKED (unreachable or unreadable)\n");
        for (size_t i = 0; i < v->nunreachable; i++)
            printf("  %s\n", v->unreachable[i]);
    }
    printf("\ninvariant 1 (content only in allowed regions): %s\n", inv1              ? "VIOLATED"
                                                                    : v->nunreachable ? "incomplete"
                                                                                      : "holds");
    bool dir_bad = false, moved_bad = false;
    for (size_t i = 0; i < v->nv; i++) {
        dir_bad |= v->v[i].invariant == 8;
        moved_bad |= v->v[i].invariant == 7 && (!only || (v->v[i].ws && !strcmp(only, v->v[i].ws)));
    }
    char i7[96];
    printf("invariant 7 (nothing left after a move, keys destroyed): %s\n",
           !v->moves_seen    ? inv7(v, i7, sizeof i7)
           : moved_bad       ? "VIOLATED"
           : v->nunreachable ? "incomplete"
                             : inv7(v, i7, sizeof i7));
    printf("invariant 8 (the directory holds ids, keyed hashes and regions only): %s\n",
           dir_bad           ? "VIOLATED"
           : v->nunreachable ? "incomplete"
                             : "holds");
    printf("scanned %" PRId64 " postgres rows, %" PRId64 " redis keys, %" PRId64
           " jetstream subjects in %.2f s (%.0f rows/s)\n",
           v->pg_rows, v->redis_scanned, v->js_subjects, seconds,
           seconds > 0 ? (double)v->pg_rows / seconds : 0);
}

int ctl_verify_main(ctl_t *c, int argc, char **argv)
{
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--workspace") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            ctl_err("residency verify: unexpected argument '%s'", argv[i]);
            return CTL_EXIT_USAGE;
        }
    }
    if (c->world.nregions > 64) {
        ctl_err("residency verify handles at most 64 regions");
        return CTL_EXIT_USAGE;
    }
    double t0 = ctl_now();
    verify_t v = {.c = c, .ws = core_map_new(), .only = only};
    for (size_t i = 0; i < c->world.nregions; i++)
        v.steps += c->world.regions[i].nshards + 2;
    scan_postgres(&v);
    for (size_t i = 0; i < c->world.nregions; i++) {
        scan_redis(&v, (int)i);
        v.step++;
        scan_jetstream(&v, (int)i);
    }
    ctl_progress_end(c);

    core_map_each(v.ws, resolve_home, &v);
    size_t early = v.nv;
    count_early(&v, early);
    core_map_each(v.ws, judge, &v);
    double seconds = ctl_now() - t0;

    list_t l = {.v = core_xcalloc(core_map_len(v.ws) + 1, sizeof(ws_t *))};
    core_map_each(v.ws, collect, &l);
    qsort(l.v, l.n, sizeof *l.v, by_id);
    if (c->json)
        out_json(&v, &l, only, seconds);
    else
        out_table(&v, &l, only, seconds);

    size_t counted = 0;
    for (size_t i = 0; i < v.nv; i++)
        if (!only || !v.v[i].ws || strcmp(only, v.v[i].ws) == 0)
            counted++;
    int rc = counted ? CTL_EXIT_FAIL : v.nunreachable ? CTL_EXIT_UNAVAILABLE : CTL_EXIT_OK;
    free(l.v);
    free(v.v);
    for (size_t i = 0; i < v.nunreachable; i++)
        free(v.unreachable[i]);
    free(v.unreachable);
    core_map_free(v.ws, ws_free);
    return rc;
}
