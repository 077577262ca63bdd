/* rg_keys.c: master keys and the per-worker data key cache (rg_keys.h). */
#include "region/rg_keys.h"
#include "core/core.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <sodium.h>

#define WS_CAP 72

typedef struct waiter_s waiter_t;
struct waiter_s {
    rg_keys_cb cb;
    void *ud;
    waiter_t *next;
};

typedef struct entry_s entry_t;
struct entry_s {
    char ws[WS_CAP];
    int slot;       /* in the slab; -1 while loading */
    bool loading;   /* a query is in flight */
    bool forgotten; /* dropped while loading: answer the waiters, keep nothing */
    bool retried;   /* the load ran a second time (lost a creation race) */
    int shard;
    waiter_t *waiters;
    entry_t *prev, *next; /* LRU of loaded entries: head is the most recent */
};

/* Master keys: the process's, set before forking. */
static struct {
    bool configured;
    bool encrypting;
    char region[64];
    res_keys_master_t current; /* empty without master_key_file */
    res_keys_master_t *previous;
    size_t nprevious;
} g_masters;

/* This worker's cache (one per process: a worker is one loop). */
static struct {
    rg_worker_t *w;
    core_map_t *map; /* ws -> entry_t */
    rg_key_t *slab;  /* RG_KEYS_CACHE keys in locked memory */
    int free_slots[RG_KEYS_CACHE];
    int nfree;
    entry_t *head, *tail;
    core_metric_t m_hits, m_misses, m_errors;
} g_cache;

const char rg_keys_install_sql[] =
    "INSERT INTO workspace_keys (workspace_id, key_id, wrapped) VALUES ($1, $2, $3::bytea)"
    " ON CONFLICT (workspace_id) DO UPDATE SET key_id = EXCLUDED.key_id,"
    " wrapped = EXCLUDED.wrapped, rewrapped_at = now()";

const char rg_keys_destroy_sql[] = "DELETE FROM workspace_keys WHERE workspace_id = $1";

/* $1 workspace, $2 key id and $3 wrapped key of a fresh data key, $4 this
 * region. An existing row is only read. Without one, and only when the
 * workspace's home is this region, the fresh key is inserted; a concurrent
 * insert of another worker or node makes ON CONFLICT wait for it and return
 * the row that won (the no-op update), so every worker uses one key. */
static const char load_sql[] =
    "WITH cur AS (SELECT key_id, wrapped FROM workspace_keys WHERE workspace_id = $1),"
    " ins AS (INSERT INTO workspace_keys (workspace_id, key_id, wrapped)"
    "  SELECT $1, $2, $3::bytea WHERE $2 <> '' AND NOT EXISTS (SELECT 1 FROM cur)"
    "  AND EXISTS (SELECT 1 FROM dir_workspaces WHERE workspace_id = $1 AND home_region = $4)"
    "  ON CONFLICT (workspace_id) DO UPDATE SET key_id = workspace_keys.key_id"
    "  RETURNING key_id, wrapped)"
    " SELECT key_id, wrapped FROM cur UNION ALL SELECT key_id, wrapped FROM ins";

/* ---- master keys ---- */

int rg_keys_init(const rg_config_t *cfg, char *err, size_t errlen)
{
    rg_keys_shutdown();
    snprintf(g_masters.region, sizeof g_masters.region, "%s", cfg->region ? cfg->region : "");
    g_masters.encrypting = cfg->encryption.enabled;
    char kerr[400];
    if (cfg->encryption.master_key_file &&
        res_keys_master_load(&g_masters.current, cfg->encryption.master_key_file, kerr,
                             sizeof kerr) != 0) {
        snprintf(err, errlen, "encryption.master_key_file: %s", kerr);
        return RES_KEYS_EKEYFILE;
    }
    if (g_masters.encrypting && !g_masters.current.key) {
        snprintf(err, errlen, "encryption.master_key_file: is required while encryption is on");
        return RES_KEYS_EINVAL;
    }
    if (cfg->encryption.nprevious) {
        g_masters.previous = core_xcalloc(cfg->encryption.nprevious, sizeof *g_masters.previous);
        for (size_t i = 0; i < cfg->encryption.nprevious; i++) {
            if (res_keys_master_load(&g_masters.previous[i],
                                     cfg->encryption.previous_master_key_files[i], kerr,
                                     sizeof kerr) != 0) {
                snprintf(err, errlen, "encryption.previous_master_key_files[%zu]: %s", i, kerr);
                g_masters.nprevious = i;
                rg_keys_shutdown();
                return RES_KEYS_EKEYFILE;
            }
            g_masters.nprevious = i + 1;
        }
    }
    g_masters.configured = true;
    return 0;
}

static void entry_wipe_free(void *v);

void rg_keys_shutdown(void)
{
    res_keys_master_free(&g_masters.current);
    for (size_t i = 0; i < g_masters.nprevious; i++)
        res_keys_master_free(&g_masters.previous[i]);
    free(g_masters.previous);
    memset(&g_masters, 0, sizeof g_masters);
    if (g_cache.map) {
        core_map_free(g_cache.map, entry_wipe_free);
        g_cache.map = NULL;
    }
    if (g_cache.slab) {
        sodium_free(g_cache.slab); /* wipes */
        g_cache.slab = NULL;
    }
}

bool rg_keys_encrypting(void)
{
    return g_masters.encrypting;
}

const res_keys_master_t *rg_keys_master(void)
{
    return g_masters.current.key ? &g_masters.current : NULL;
}

const res_keys_master_t *rg_keys_master_by_id(const char *key_id)
{
    if (g_masters.current.key && strcmp(g_masters.current.id, key_id) == 0)
        return &g_masters.current;
    for (size_t i = 0; i < g_masters.nprevious; i++)
        if (strcmp(g_masters.previous[i].id, key_id) == 0)
            return &g_masters.previous[i];
    return NULL;
}

static void hex_bytea(char *out, const uint8_t *b, size_t n)
{
    out[0] = '\\';
    out[1] = 'x';
    sodium_bin2hex(out + 2, 2 * n + 1, b, n);
}

int rg_keys_wrap_row(const char *ws, const uint8_t dk[RES_KEYS_KEY_BYTES],
                     char key_id[RES_KEYS_ID_LEN + 1], char wrapped[RG_KEYS_WRAPPED_HEX])
{
    const res_keys_master_t *m = rg_keys_master();
    uint8_t w[RES_KEYS_WRAPPED_BYTES];
    if (!m || res_keys_wrap(m, ws, g_masters.region, dk, w) != 0)
        return RES_KEYS_EINVAL;
    snprintf(key_id, RES_KEYS_ID_LEN + 1, "%s", m->id);
    hex_bytea(wrapped, w, sizeof w);
    return 0;
}

/* Unwraps a row's columns (key_id text, wrapped bytea as "\x..." text). */
static int unwrap_row(const char *ws, const char *key_id, const char *wrapped_txt,
                      uint8_t dk[RES_KEYS_KEY_BYTES])
{
    const res_keys_master_t *m = rg_keys_master_by_id(key_id);
    if (!m)
        return RG_KEYS_EUNWRAP;
    uint8_t w[RES_KEYS_WRAPPED_BYTES];
    size_t n = 0;
    if (strncmp(wrapped_txt, "\\x", 2) != 0 ||
        sodium_hex2bin(w, sizeof w, wrapped_txt + 2, strlen(wrapped_txt + 2), NULL, &n, NULL) !=
            0 ||
        n != sizeof w)
        return RG_KEYS_EUNWRAP;
    return res_keys_unwrap(m, ws, g_masters.region, w, n, dk) == 0 ? 0 : RG_KEYS_EUNWRAP;
}

/* ---- the cache ---- */

static void cache_init(rg_worker_t *w)
{
    if (g_cache.map)
        return;
    g_cache.w = w;
    g_cache.map = core_map_new();
    g_cache.slab = sodium_malloc(sizeof(rg_key_t) * RG_KEYS_CACHE);
    if (!g_cache.slab)
        abort();
    g_cache.nfree = RG_KEYS_CACHE;
    for (int i = 0; i < RG_KEYS_CACHE; i++)
        g_cache.free_slots[i] = RG_KEYS_CACHE - 1 - i;
    g_cache.m_hits = core_metrics_counter("meridian_keys_cache_hits_total",
                                          "Data key lookups answered from the cache.", "");
    g_cache.m_misses =
        core_metrics_counter("meridian_keys_loads_total", "Data key loads from the shards.", "");
    g_cache.m_errors = core_metrics_counter(
        "meridian_keys_errors_total", "Data key loads that failed (no key, unwrap, shard).", "");
}

static void lru_unlink(entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else if (g_cache.head == e)
        g_cache.head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else if (g_cache.tail == e)
        g_cache.tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(entry_t *e)
{
    if (g_cache.head == e)
        return;
    lru_unlink(e);
    e->next = g_cache.head;
    if (g_cache.head)
        g_cache.head->prev = e;
    g_cache.head = e;
    if (!g_cache.tail)
        g_cache.tail = e;
}

static void slot_release(entry_t *e)
{
    if (e->slot < 0)
        return;
    sodium_memzero(&g_cache.slab[e->slot], sizeof(rg_key_t));
    g_cache.free_slots[g_cache.nfree++] = e->slot;
    e->slot = -1;
}

static void entry_wipe_free(void *v)
{
    entry_t *e = v;
    if (!e)
        return;
    if (e->loading) {
        e->forgotten = true; /* the load's callback frees it */
        return;
    }
    if (g_cache.slab)
        slot_release(e);
    lru_unlink(e);
    free(e);
}

/* A slot for a new key: a free one, else the least recently used key's. */
static int slot_take(void)
{
    if (g_cache.nfree == 0) {
        entry_t *victim = g_cache.tail;
        core_map_remove(g_cache.map, victim->ws);
        entry_wipe_free(victim);
    }
    return g_cache.free_slots[--g_cache.nfree];
}

/* Answers every waiter of e; a waiter may call back into this module. */
static void answer(entry_t *e, int err, const rg_key_t *key)
{
    waiter_t *wt = e->waiters;
    e->waiters = NULL;
    while (wt) {
        waiter_t *next = wt->next;
        wt->cb(err, key, wt->ud);
        free(wt);
        wt = next;
    }
}

static int load_start(entry_t *e);

static void on_loaded(const PGresult *res, int err, const char *errmsg, void *ud)
{
    entry_t *e = ud;
    e->loading = false;
    rg_key_t k;
    int rc = err;
    if (!rc && PQntuples(res) == 0) {
        if (!e->retried && !e->forgotten) {
            /* Not home here, or a row deleted meanwhile: ask once more. */
            e->retried = true;
            e->loading = true;
            if (load_start(e) == 0)
                return;
            e->loading = false;
        }
        rc = RG_KEYS_ENOKEY;
    }
    if (!rc) {
        rc = unwrap_row(e->ws, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), k.dk);
        if (rc)
            core_log_error("keys.unwrap_failed",
                           "workspace=%s key_id=%s reason=\"no configured master key opens it\"",
                           e->ws, PQgetvalue(res, 0, 0));
    }
    if (rc) {
        if (rc != RG_KEYS_ENOKEY && rc != RG_KEYS_EUNWRAP && rc != UV_ECANCELED)
            core_log_warn("keys.load_failed", "workspace=%s error=\"%s\"", e->ws,
                          core_pg_strerror(rc));
        core_metrics_add(g_cache.m_errors, 1);
        /* Not cached: the next request tries again. */
        if (!e->forgotten)
            core_map_remove(g_cache.map, e->ws);
        answer(e, rc, NULL);
        free(e);
        return;
    }
    k.has_dk = true;
    res_keys_index_key(k.dk, k.idx);
    if (e->forgotten || !g_cache.map) {
        answer(e, 0, &k);
        sodium_memzero(&k, sizeof k);
        free(e);
        return;
    }
    e->slot = slot_take();
    g_cache.slab[e->slot] = k;
    sodium_memzero(&k, sizeof k);
    lru_front(e);
    answer(e, 0, &g_cache.slab[e->slot]);
}

static int load_start(entry_t *e)
{
    core_pg_pool_t *pool = g_cache.w->shards[e->shard];
    char key_id[RES_KEYS_ID_LEN + 1] = "", wrapped[RG_KEYS_WRAPPED_HEX] = "\\x";
    if (rg_keys_master()) {
        uint8_t dk[RES_KEYS_KEY_BYTES];
        res_keys_dk_new(dk);
        rg_keys_wrap_row(e->ws, dk, key_id, wrapped);
        sodium_memzero(dk, sizeof dk);
    }
    const char *params[] = {e->ws, key_id, wrapped, g_masters.region};
    core_metrics_add(g_cache.m_misses, 1);
    return core_pg_query(pool, load_sql, 4, params, NULL, on_loaded, e, NULL);
}

/* Without any master key: the index key is derived from the workspace id
 * (see rg_keys.h), in the cache like any other. */
static const rg_key_t *plain_key(const char *ws)
{
    entry_t *e = core_xcalloc(1, sizeof *e);
    snprintf(e->ws, sizeof e->ws, "%s", ws);
    e->slot = slot_take();
    rg_key_t *k = &g_cache.slab[e->slot];
    memset(k, 0, sizeof *k);
    static const char ctx[] = "meridian-idx-plain:v1:";
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof k->idx);
    crypto_generichash_update(&st, (const uint8_t *)ctx, sizeof ctx - 1);
    crypto_generichash_update(&st, (const uint8_t *)ws, strlen(ws));
    crypto_generichash_final(&st, k->idx, sizeof k->idx);
    core_map_put(g_cache.map, e->ws, e);
    lru_front(e);
    return k;
}

int rg_keys_get(rg_worker_t *w, const char *ws, int shard, rg_keys_cb cb, void *ud)
{
    if (!ws || strlen(ws) >= WS_CAP || shard < 0 || shard >= w->nshards)
        return UV_EINVAL;
    cache_init(w);
    entry_t *e = core_map_get(g_cache.map, ws);
    if (e && !e->loading) {
        core_metrics_add(g_cache.m_hits, 1);
        lru_front(e);
        cb(0, &g_cache.slab[e->slot], ud);
        return 0;
    }
    if (!e && !rg_keys_master() && !g_masters.nprevious) {
        cb(0, plain_key(ws), ud);
        return 0;
    }
    waiter_t *wt = core_xcalloc(1, sizeof *wt);
    wt->cb = cb;
    wt->ud = ud;
    if (e) { /* single flight: wait for the load in flight */
        wt->next = e->waiters;
        e->waiters = wt;
        return 0;
    }
    e = core_xcalloc(1, sizeof *e);
    snprintf(e->ws, sizeof e->ws, "%s", ws);
    e->slot = -1;
    e->shard = shard;
    e->loading = true;
    int rc = load_start(e);
    if (rc) {
        free(wt);
        free(e);
        return rc;
    }
    e->waiters = wt;
    core_map_put(g_cache.map, e->ws, e);
    return 0;
}

const rg_key_t *rg_keys_peek(const char *ws)
{
    entry_t *e = g_cache.map ? core_map_get(g_cache.map, ws) : NULL;
    if (!e || e->loading)
        return NULL;
    lru_front(e);
    return &g_cache.slab[e->slot];
}

void rg_keys_forget(const char *ws)
{
    if (!g_cache.map)
        return;
    entry_t *e = core_map_remove(g_cache.map, ws);
    entry_wipe_free(e);
}

int rg_keys_install(rg_worker_t *w, const char *ws, int shard, const uint8_t dk[RES_KEYS_KEY_BYTES],
                    core_pg_cb cb, void *ud)
{
    if (shard < 0 || shard >= w->nshards)
        return UV_EINVAL;
    char key_id[RES_KEYS_ID_LEN + 1], wrapped[RG_KEYS_WRAPPED_HEX];
    if (rg_keys_wrap_row(ws, dk, key_id, wrapped) != 0)
        return RES_KEYS_EINVAL;
    const char *params[] = {ws, key_id, wrapped};
    int rc = core_pg_query(w->shards[shard], rg_keys_install_sql, 3, params, NULL, cb, ud, NULL);
    rg_keys_forget(ws);
    return rc;
}

void rg_keys_fail(rg_req_t *r, int err)
{
    /* A key that could not be read because its shard is down is the shard's
     * failure, answered as any statement there would be: which answer a
     * client got must not depend on whether the key happened to be cached. */
    if (err != RG_KEYS_ENOKEY && err != RG_KEYS_EUNWRAP) {
        rg_req_fail_pg(r, err, NULL);
        return;
    }
    rg_req_fail_h(r, 503, "key_unavailable",
                  "the workspace's encryption key is not available in this region now",
                  "Retry-After: 1\r\n");
}

/* ---- --rewrap-keys ---- */

static int rewrap_shard(PGconn *c, int *rewrapped, int *failed, char *err, size_t errlen)
{
    const res_keys_master_t *cur = rg_keys_master();
    PGresult *r = PQexec(c, "BEGIN");
    PQclear(r);
    const char *p1[] = {cur->id};
    r = PQexecParams(c,
                     "SELECT workspace_id, key_id, wrapped FROM workspace_keys WHERE key_id <> $1"
                     " ORDER BY workspace_id FOR UPDATE",
                     1, NULL, p1, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "%s", PQerrorMessage(c));
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        const char *ws = PQgetvalue(r, i, 0);
        uint8_t dk[RES_KEYS_KEY_BYTES];
        if (unwrap_row(ws, PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), dk) != 0) {
            fprintf(stderr,
                    "meridian-region: workspace %s: its data key is wrapped by master key %s, "
                    "which no configured key file opens; left as it is\n",
                    ws, PQgetvalue(r, i, 1));
            (*failed)++;
            continue;
        }
        char key_id[RES_KEYS_ID_LEN + 1], wrapped[RG_KEYS_WRAPPED_HEX];
        rg_keys_wrap_row(ws, dk, key_id, wrapped);
        sodium_memzero(dk, sizeof dk);
        const char *p[] = {ws, key_id, wrapped};
        PGresult *u = PQexecParams(c,
                                   "UPDATE workspace_keys SET key_id = $2, wrapped = $3::bytea,"
                                   " rewrapped_at = now() WHERE workspace_id = $1",
                                   3, NULL, p, NULL, NULL, 0);
        sodium_memzero(wrapped, sizeof wrapped);
        if (PQresultStatus(u) != PGRES_COMMAND_OK) {
            snprintf(err, errlen, "%s", PQerrorMessage(c));
            PQclear(u);
            PQclear(r);
            PQclear(PQexec(c, "ROLLBACK"));
            return -1;
        }
        PQclear(u);
        (*rewrapped)++;
    }
    PQclear(r);
    r = PQexec(c, "COMMIT");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "%s", PQerrorMessage(c));
    PQclear(r);
    return ok ? 0 : -1;
}

int rg_keys_rewrap_all(const rg_config_t *cfg, int *rewrapped, int *failed, char *err,
                       size_t errlen)
{
    *rewrapped = *failed = 0;
    if (!rg_keys_master()) {
        snprintf(err, errlen, "encryption.master_key_file is not set: nothing to rewrap under");
        return -1;
    }
    for (int i = 0; i < cfg->pg.nshards; i++) {
        PGconn *c = PQconnectdb(cfg->pg.shards[i].conninfo);
        if (PQstatus(c) != CONNECTION_OK) {
            snprintf(err, errlen, "shard %d: %s", i, PQerrorMessage(c));
            PQfinish(c);
            return -1;
        }
        int n = 0, f = 0;
        char e[256];
        int rc = rewrap_shard(c, &n, &f, e, sizeof e);
        PQfinish(c);
        if (rc) {
            /* The shard's transaction rolled back: none of its rows changed. */
            snprintf(err, errlen, "shard %d: %s", i, e);
            return -1;
        }
        *rewrapped += n;
        *failed += f;
    }
    return 0;
}
