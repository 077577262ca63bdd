/* rg_gdir.c: the global directory's relay and claims (see rg_gdir.h). */
#include "region/rg_gdir.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "region/rg_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_EVERY_MS 200 /* a new user or workspace reaches the world this fast */
#define RELAY_BATCH 100
#define CLAIM_TIMEOUT_MS 3000

typedef struct rg_gdir_s rg_gdir_t;

typedef struct {
    rg_gdir_t *g;
    int shard;
    bool busy;
    int waiting; /* publishes not yet acknowledged, plus a hold while sending */
    bool failed;
    core_buf_t versions; /* text[] literal of the versions being published */
    core_buf_t body;
} drelay_t;

struct rg_gdir_s {
    rg_worker_t *w;
    int nshards; /* the worker's count drops to 0 as it closes its pools */
    uv_timer_t timer;
    bool stopping;
    bool timer_closed;
    int pending;
    drelay_t *relays;
    core_nats_sub_t *claim_sub;
    core_metric_t m_published, m_claims_served, m_version;
    unsigned ticks;
};

/* ---- the relay ---- */

static void maybe_free(rg_gdir_t *g)
{
    if (!g->stopping || !g->timer_closed || g->pending > 0)
        return;
    for (int i = 0; i < g->nshards; i++) {
        core_buf_free(&g->relays[i].versions);
        core_buf_free(&g->relays[i].body);
    }
    free(g->relays);
    free(g);
}

static void on_marked(const PGresult *res, int err, const char *errmsg, void *ud)
{
    drelay_t *d = ud;
    d->g->pending--;
    d->busy = false;
    maybe_free(d->g);
}

static void relay_done(drelay_t *d)
{
    rg_gdir_t *g = d->g;
    if (d->failed || g->stopping || d->versions.len <= 1) {
        /* Read again next time: the streams drop what they already have. */
        d->busy = false;
        maybe_free(g);
        return;
    }
    core_buf_putc(&d->versions, '}');
    const char *params[] = {core_buf_cstr(&d->versions)};
    if (core_pg_query(g->w->shards[d->shard],
                      "UPDATE dir_outbox SET published = true WHERE version = ANY ($1::bigint[])",
                      1, params, NULL, on_marked, d, NULL) != 0) {
        d->busy = false;
        return;
    }
    g->pending++;
}

static void on_ack(const core_nats_js_ack_t *ack, int err, void *ud)
{
    drelay_t *d = ud;
    d->g->pending--; /* the relay outlives every ack it waits for */
    if (err)
        d->failed = true;
    else
        core_metrics_add(d->g->m_published, 1);
    if (--d->waiting == 0)
        relay_done(d);
}

static void on_rows(const PGresult *res, int err, const char *errmsg, void *ud)
{
    drelay_t *d = ud;
    rg_gdir_t *g = d->g;
    g->pending--;
    if (err || g->stopping || PQntuples(res) == 0) {
        d->busy = false;
        maybe_free(g);
        return;
    }
    rg_worker_t *w = g->w;
    d->failed = false;
    d->waiting = 1;
    core_buf_reset(&d->versions);
    core_buf_putc(&d->versions, '{');
    for (int i = 0; i < PQntuples(res); i++) {
        const char *version = PQgetvalue(res, i, 0), *kind = PQgetvalue(res, i, 1);
        core_buf_t *b = &d->body;
        core_buf_reset(b);
        core_jw_t jw;
        core_jw_init(&jw, b);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "dir");
        core_jw_str(&jw, kind);
        core_jw_key(&jw, "id");
        core_jw_str(&jw, PQgetvalue(res, i, 2));
        core_jw_key(&jw, "region");
        core_jw_str(&jw, w->cfg->region);
        core_jw_key(&jw, "version");
        core_jw_raw(&jw, version, strlen(version));
        core_jw_key(&jw, "body");
        core_jw_raw(&jw, PQgetvalue(res, i, 3), (size_t)PQgetlength(res, i, 3));
        core_jw_obj_close(&jw);
        /* To every other region: the directory is the whole world's. */
        for (size_t k = 0; w->world && k < w->world->nregions; k++) {
            const char *dest = w->world->regions[k].name;
            if (strcmp(dest, w->cfg->region) == 0)
                continue;
            char subject[160], msgid[128];
            snprintf(subject, sizeof subject, "ev.%s.%s._dir.%s", w->cfg->region, dest, kind);
            /* Unique in the world: the inbound stream that sources every
             * region dedupes on it too. */
            snprintf(msgid, sizeof msgid, "dir:%s:%d:%s:%s", w->cfg->region, d->shard, version,
                     dest);
            d->waiting++;
            g->pending++;
            if (core_nats_js_publish(w->nats, subject, b->base, b->len, msgid, on_ack, d) != 0) {
                d->waiting--;
                g->pending--;
                d->failed = true;
            }
        }
        if (d->versions.len > 1)
            core_buf_putc(&d->versions, ',');
        core_buf_puts(&d->versions, version);
    }
    if (--d->waiting == 0)
        relay_done(d);
}

static void on_pruned(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_gdir_t *g = ud;
    g->pending--;
    maybe_free(g);
}

static void on_version(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_gdir_t *g = ud;
    g->pending--;
    if (!err && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        core_metrics_set(g->m_version, (double)strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    maybe_free(g);
}

static void on_timer(uv_timer_t *t)
{
    rg_gdir_t *g = t->data;
    if (g->stopping)
        return;
    /* Shard 0's feed version, once a second: how far this region's
     * directory has come (compare regions' rates, not their numbers). */
    if (++g->ticks % 5 == 0 &&
        core_pg_query(g->w->shards[0], "SELECT max(version) FROM dir_changes", 0, NULL, NULL,
                      on_version, g, NULL) == 0)
        g->pending++;
    /* Published rows are kept an hour (for looking into), then pruned. */
    if (g->ticks % 300 == 1)
        for (int i = 0; i < g->nshards; i++)
            if (core_pg_query(g->w->shards[i],
                              "DELETE FROM dir_outbox WHERE published"
                              " AND created_at < now() - interval '1 hour'",
                              0, NULL, NULL, on_pruned, g, NULL) == 0)
                g->pending++;
    if (!core_nats_ready(g->w->nats))
        return;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", RELAY_BATCH);
    for (int i = 0; i < g->nshards; i++) {
        drelay_t *d = &g->relays[i];
        if (d->busy)
            continue;
        const char *params[] = {limit};
        if (core_pg_query(g->w->shards[i],
                          "SELECT version, kind, id, body::text FROM dir_outbox WHERE NOT published"
                          " ORDER BY version LIMIT $1::int",
                          1, params, NULL, on_rows, d, NULL) == 0) {
            d->busy = true;
            g->pending++;
        }
    }
}

/* ---- claims, served ---- */

typedef struct {
    rg_gdir_t *g;
    char reply[128];
    char kind[8];
    char key[80]; /* bytea literal */
    char owner[CORE_AUTH_ID_MAX + 1];
    int shard;
    bool retried;
} claim_serve_t;

static int claim_query(claim_serve_t *q);

static void on_claim_row(const PGresult *res, int err, const char *errmsg, void *ud)
{
    claim_serve_t *q = ud;
    rg_gdir_t *g = q->g;
    g->pending--;
    if (!err && PQntuples(res) == 0 && !q->retried && !g->stopping) {
        /* A concurrent claim of the same key committed while this one
         * waited on it: the statement's snapshot predates it. Once more
         * sees it. */
        q->retried = true;
        if (claim_query(q) == 0)
            return;
    }
    if (!err && PQntuples(res) == 1 && !g->stopping) {
        core_buf_t b;
        core_buf_init(&b);
        core_jw_t jw;
        core_jw_init(&jw, &b);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "owner_id");
        core_jw_str(&jw, PQgetvalue(res, 0, 0));
        core_jw_obj_close(&jw);
        core_nats_publish(g->w->nats, q->reply, b.base, b.len);
        core_buf_free(&b);
        core_metrics_add(g->m_claims_served, 1);
    }
    /* No answer on error: the requester times out and answers 503. */
    free(q);
    maybe_free(g);
}

static bool hex32(const char *s, uint8_t out[32])
{
    if (!s || strlen(s) != 64)
        return false;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return false;
        out[i] = (uint8_t)v;
    }
    return true;
}

static void on_claim_request(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    rg_gdir_t *g = ud;
    if (g->stopping || !msg->reply || strlen(msg->reply) >= 128)
        return;
    core_json_doc_t *doc;
    char err[64];
    if (core_json_parse(msg->data, msg->len, NULL, &doc, err, sizeof err) != 0)
        return;
    const core_json_t *root = core_json_root(doc);
    const char *kind = NULL, *key = NULL, *owner = NULL;
    uint8_t hash[32];
    if (core_json_get_str(root, "kind", &kind) != 0 ||
        core_json_get_str(root, "key_hash", &key) != 0 ||
        core_json_get_str(root, "owner_id", &owner) != 0 ||
        (strcmp(kind, "email") != 0 && strcmp(kind, "slug") != 0) || !hex32(key, hash) ||
        !rg_id_valid(owner)) {
        core_json_free(doc);
        return;
    }
    claim_serve_t *q = core_xcalloc(1, sizeof *q);
    q->g = g;
    snprintf(q->reply, sizeof q->reply, "%s", msg->reply);
    snprintf(q->kind, sizeof q->kind, "%s", kind);
    snprintf(q->owner, sizeof q->owner, "%s", owner);
    rg_api_bytea(q->key, sizeof q->key, hash, 32);
    q->shard = rg_api_owner_shard(g->w, hash);
    core_json_free(doc);
    if (claim_query(q) != 0)
        free(q);
}

/* The key's owner shard decides, as for local claims: the first owner stays;
 * asking again for the same owner is answered the same. */
static int claim_query(claim_serve_t *q)
{
    const char *params[] = {q->kind, q->key, q->owner};
    int rc =
        core_pg_query(q->g->w->shards[q->shard],
                      /* Granted unconfirmed: the directory confirms it when the
                       * entity arrives (repl.c); abandoned, it is taken over
                       * after a day. */
                      "WITH i AS (INSERT INTO claims (kind, key_hash, owner_id, confirmed)"
                      "  VALUES ($1, $2, $3, false) ON CONFLICT (kind, key_hash) DO UPDATE"
                      "  SET owner_id = EXCLUDED.owner_id, created_at = now()"
                      "  WHERE NOT claims.confirmed AND claims.owner_id <> EXCLUDED.owner_id"
                      "  AND claims.created_at < now() - interval '1 day' RETURNING owner_id)"
                      " SELECT owner_id FROM i UNION ALL"
                      " (SELECT owner_id FROM claims WHERE kind = $1 AND key_hash = $2) LIMIT 1",
                      3, params, NULL, on_claim_row, q, NULL);
    if (rc == 0)
        q->g->pending++;
    return rc;
}

/* ---- claims, asked ---- */

typedef struct {
    char owner_id[CORE_AUTH_ID_MAX + 1];
    void (*cb)(rg_req_t *r, int outcome);
} claim_ask_t;

/* The request's state is the caller's; the claim keeps its own small part
 * in a heap object that lives as long as the NATS request. */
typedef struct {
    rg_req_t *r;
    claim_ask_t ask;
} claim_ctx_t;

static core_metric_t m_asked, m_ask_failed;
static bool m_init;

static void on_claim_reply(const core_nats_msg_t *reply, int err, void *ud)
{
    claim_ctx_t *c = ud;
    rg_req_t *r = c->r;
    claim_ask_t ask = c->ask;
    free(c);
    int outcome = err;
    if (!err) {
        core_json_doc_t *doc;
        char e[64];
        const char *owner = NULL;
        outcome = UV_EPROTO;
        if (core_json_parse(reply->data, reply->len, NULL, &doc, e, sizeof e) == 0) {
            if (core_json_get_str(core_json_root(doc), "owner_id", &owner) == 0)
                outcome = strcmp(owner, ask.owner_id) == 0 ? 0 : RG_CLAIM_TAKEN;
            core_json_free(doc);
        }
    }
    if (outcome && outcome != RG_CLAIM_TAKEN)
        core_metrics_add(m_ask_failed, 1);
    ask.cb(r, outcome);
}

void rg_gdir_claim(rg_req_t *r, const char *kind, const uint8_t hash[32], const char *owner_id,
                   void (*cb)(rg_req_t *r, int outcome))
{
    rg_worker_t *w = r->w;
    if (!m_init) {
        m_init = true;
        m_asked = core_metrics_counter("meridian_directory_claims_asked_total",
                                       "Claims of emails or slugs sent to their owner region.", "");
        m_ask_failed = core_metrics_counter(
            "meridian_directory_claims_unanswered_total",
            "Claims whose owner region did not answer (the request got 503).", "");
    }
    const res_region_t *owner = w->world ? res_world_owner(w->world, hash, 32) : NULL;
    r->pending++;
    if (!owner || strcmp(owner->name, w->cfg->region) == 0) {
        cb(r, 0); /* owned here: the local statement's claim decides */
        return;
    }
    char subject[96], body[256], hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
    snprintf(subject, sizeof subject, "dir.claim.%s", owner->name);
    int n = snprintf(body, sizeof body, "{\"kind\":\"%s\",\"key_hash\":\"%s\",\"owner_id\":\"%s\"}",
                     kind, hex, owner_id);
    claim_ctx_t *c = core_xcalloc(1, sizeof *c);
    c->r = r;
    snprintf(c->ask.owner_id, sizeof c->ask.owner_id, "%s", owner_id);
    c->ask.cb = cb;
    core_metrics_add(m_asked, 1);
    int rc =
        core_nats_request(w->nats, subject, body, (size_t)n, CLAIM_TIMEOUT_MS, on_claim_reply, c);
    if (rc) {
        free(c);
        core_metrics_add(m_ask_failed, 1);
        cb(r, rc);
    }
}

/* ---- lifetime ---- */

rg_gdir_t *rg_gdir_start(rg_worker_t *w)
{
    rg_gdir_t *g = core_xcalloc(1, sizeof *g);
    g->w = w;
    g->nshards = w->nshards;
    g->relays = core_xcalloc((size_t)g->nshards, sizeof *g->relays);
    for (int i = 0; i < g->nshards; i++) {
        g->relays[i].g = g;
        g->relays[i].shard = i;
        core_buf_init(&g->relays[i].versions);
        core_buf_init(&g->relays[i].body);
    }
    g->m_published = core_metrics_counter("meridian_directory_published_total",
                                          "Directory changes published to another region.", "");
    g->m_claims_served =
        core_metrics_counter("meridian_directory_claims_served_total",
                             "Claims of keys owned here answered for other regions.", "");
    g->m_version = core_metrics_gauge("meridian_directory_version",
                                      "Changes applied to the directory (shard 0's feed).", "");
    uv_timer_init(&w->loop, &g->timer);
    g->timer.data = g;
    uv_timer_start(&g->timer, on_timer, RELAY_EVERY_MS, RELAY_EVERY_MS);
    /* Alone in the world there is nobody to publish to or claim for: the
     * relay only marks and prunes the outbox. */
    if (w->world && w->world->nregions > 1) {
        char subject[96];
        snprintf(subject, sizeof subject, "dir.claim.%s", w->cfg->region);
        core_nats_subscribe(w->nats, subject, "claim", on_claim_request, g, &g->claim_sub);
    }
    return g;
}

static void on_timer_closed(uv_handle_t *h)
{
    rg_gdir_t *g = h->data;
    g->timer_closed = true;
    maybe_free(g);
}

void rg_gdir_stop(rg_gdir_t *g)
{
    if (!g || g->stopping)
        return;
    g->stopping = true;
    core_nats_unsubscribe(g->claim_sub);
    g->claim_sub = NULL;
    uv_close((uv_handle_t *)&g->timer, on_timer_closed);
}
