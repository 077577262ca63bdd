/* repl.c: the inbound side of cross-region replication (see repl.h). */
#include "replication/repl.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#define BATCH_MAX 1024 /* events per statement: one commit each, and one in flight per shard */
#define ACK_WAIT_S 30  /* unacknowledged this long: JetStream delivers again */
#define MAX_ACK_PENDING 4096 /* in flight from the consumer to all appliers */
#define GAP_CHECK_MS 1000    /* how often open holes are looked for */
#define BACKFILL_MAX 200     /* events per backfill answer */
#define BACKFILL_TIMEOUT_MS 5000
#define CONSUMER "applier"
#define STREAM_MAX_AGE_S (7 * 24 * 3600)

typedef struct repl_s repl_t;

/* The events waiting for one shard, and the acknowledgements they owe. */
typedef struct {
    core_buf_t events;  /* "[env,env,...]" being built */
    core_buf_t replies; /* NUL-separated reply subjects to "+ACK" after COMMIT */
    int n;
    int nreplies;
} batch_t;

typedef struct {
    repl_t *r;
    int shard;
    batch_t cur;   /* accumulating */
    batch_t fly;   /* being written */
    bool busy;     /* fly is in a statement */
    bool backfill; /* fly came from a backfill answer */
    core_pg_stmt_t st_apply, st_advance;
} shard_t;

/* The applier's two statements (repl.c's hot path), prepared once per
 * connection: planned each time, they cost more than applying a small batch
 * (at 1,000 events/s a batch holds a few events). One statement: the
 * replica's bookkeeping row, its directory row (so that its requests are
 * answered 421 with the home region), and the events, each once. Returns
 * what was new, the newest event's source and commit time (lag), and the
 * workspaces touched. */
static const char sql_apply[] =
    "WITH ev AS (SELECT e->>'workspace_id' AS ws, (e->>'seq')::bigint AS seq,"
    "   (e->>'id')::uuid AS id, e->>'type' AS type, e->>'channel_id' AS ch,"
    "   e->'payload' AS payload, e->>'region' AS home, (e->>'at')::bigint AS at"
    "   FROM jsonb_array_elements($1::jsonb) e),"
    /* Design.md invariant 3: an event of a workspace whose policy, as this
     * region knows it, does not allow this region (or names another home)
     * is refused. A workspace not in the directory yet is taken on its
     * home's word (its relay sends only where the policy allows); the
     * directory change that follows can still drop it. */
    " chk AS (SELECT ev.*, coalesce(d.workspace_id IS NULL OR (d.home_region = ev.home"
    "     AND $4 = ANY (d.allowed_regions)), false) AS allowed"
    "   FROM ev LEFT JOIN dir_workspaces d ON d.workspace_id = ev.ws),"
    " ok AS (SELECT * FROM chk WHERE allowed),"
    " rw AS (INSERT INTO replica_workspaces (workspace_id, home_region)"
    "   SELECT DISTINCT ws, home FROM ok ON CONFLICT (workspace_id) DO NOTHING),"
    " dw AS (INSERT INTO dir_workspaces AS d (workspace_id, shard, home_region,"
    "   allowed_regions) SELECT DISTINCT ws, $2::int, home, ARRAY[home, $4] FROM ok"
    "   ON CONFLICT (workspace_id) DO UPDATE SET shard = $2::int WHERE d.shard = -1),"
    " ins AS (INSERT INTO replica_events (workspace_id, seq, event_id, type, channel_id,"
    "   payload, home_region, committed_at)"
    "   SELECT ws, seq, id, type, ch, payload, home, to_timestamp(at / 1000.0) FROM ok"
    "   ON CONFLICT (workspace_id, seq) DO NOTHING RETURNING 1),"
    " bf AS (UPDATE replica_workspaces rw2 SET backfilled = backfilled + x.n"
    "   FROM (SELECT ws, count(*) AS n FROM ok GROUP BY ws) x"
    "   WHERE $3::boolean AND rw2.workspace_id = x.ws),"
    " rf AS (INSERT INTO residency_refusals (workspace_id, home_region, reason, events)"
    "   SELECT ws, min(home), 'event_not_allowed', count(*) FROM chk"
    "   WHERE NOT allowed GROUP BY ws RETURNING workspace_id, events)"
    " SELECT (SELECT count(*) FROM ins),"
    "   (SELECT home FROM ok WHERE at IS NOT NULL ORDER BY at DESC LIMIT 1),"
    "   (SELECT max(at) FROM ok),"
    "   (SELECT array_agg(DISTINCT ws) FROM ev)::text,"
    "   (SELECT coalesce(sum(events), 0) FROM rf),"
    "   (SELECT string_agg(workspace_id, ',') FROM rf)";
static const char sql_advance[] = "SELECT count(*) FROM replica_advance(ARRAY(SELECT DISTINCT"
                                  " e->>'workspace_id' FROM jsonb_array_elements($1::jsonb) e))";

/* Directory changes from other regions, written to every local shard. */
typedef struct {
    batch_t cur, fly;
    bool busy;
    int waiting; /* shards not yet answered */
    bool failed;
} dirq_t;

struct repl_s {
    repl_opts_t o;
    dirq_t dir;
    core_nats_sub_t *in_sub;
    core_nats_sub_t *bf_sub;
    uv_timer_t flush_timer, gap_timer, job_timer;
    int handles_open;
    bool stopping;
    bool job_running;
    bool job_done;
    natsStatus job_status;
    jsErrCode job_jerr;
    shard_t *shards;
    core_map_t *backfilling; /* workspace id -> (void *)1 while a request is out */
    int pending;             /* statements and requests in flight */
    char in_stream[64];
    char deliver[96];
    core_metric_t m_dir_applied;
    core_metric_t m_applied, m_duplicates, m_rejected, m_gaps, m_backfilled, m_bf_served,
        m_bf_refused, m_failures, m_not_allowed, m_dropped;
    core_metric_t *m_lag; /* per source region, ms */
};

/* ---- envelopes ---- */

void repl_envelope(core_buf_t *b, const char *region, const PGresult *res, int row)
{
    core_jw_t jw;
    core_buf_reset(b);
    core_jw_init(&jw, b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "id");
    core_jw_str(&jw, PQgetvalue(res, row, 2));
    core_jw_key(&jw, "region");
    core_jw_str(&jw, region);
    core_jw_key(&jw, "workspace_id");
    core_jw_str(&jw, PQgetvalue(res, row, 0));
    core_jw_key(&jw, "seq");
    core_jw_raw(&jw, PQgetvalue(res, row, 1), (size_t)PQgetlength(res, row, 1));
    core_jw_key(&jw, "type");
    core_jw_str(&jw, PQgetvalue(res, row, 3));
    core_jw_key(&jw, "channel_id");
    if (PQgetisnull(res, row, 4))
        core_jw_null(&jw);
    else
        core_jw_str(&jw, PQgetvalue(res, row, 4));
    core_jw_key(&jw, "payload");
    core_jw_raw(&jw, PQgetvalue(res, row, 5), (size_t)PQgetlength(res, row, 5));
    if (PQnfields(res) > 6 && !PQgetisnull(res, row, 6)) {
        /* Commit time at the home region (ms since the epoch): replication lag. */
        core_jw_key(&jw, "at");
        core_jw_raw(&jw, PQgetvalue(res, row, 6), (size_t)PQgetlength(res, row, 6));
    }
    core_jw_obj_close(&jw);
}

int repl_replica_shard(const char *ws, int nshards)
{
    return core_rendezvous(ws, strlen(ws), nshards);
}

/* ---- lifetime ---- */

static void maybe_free(repl_t *r)
{
    if (!r->stopping || r->handles_open > 0 || r->pending > 0 || r->job_running)
        return;
    for (int i = 0; i < r->o.nshards; i++) {
        core_buf_free(&r->shards[i].cur.events);
        core_buf_free(&r->shards[i].cur.replies);
        core_buf_free(&r->shards[i].fly.events);
        core_buf_free(&r->shards[i].fly.replies);
    }
    free(r->shards);
    core_buf_free(&r->dir.cur.events);
    core_buf_free(&r->dir.cur.replies);
    core_buf_free(&r->dir.fly.events);
    core_buf_free(&r->dir.fly.replies);
    free(r->m_lag);
    core_map_free(r->backfilling, NULL);
    free(r);
}

static void on_handle_closed(uv_handle_t *h)
{
    repl_t *r = h->data;
    r->handles_open--;
    maybe_free(r);
}

void repl_stop(repl_t *r)
{
    if (!r || r->stopping)
        return;
    r->stopping = true;
    core_nats_unsubscribe(r->in_sub);
    core_nats_unsubscribe(r->bf_sub);
    r->in_sub = r->bf_sub = NULL;
    uv_close((uv_handle_t *)&r->flush_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->gap_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->job_timer, on_handle_closed);
    maybe_free(r);
}

/* ---- applying ---- */

static void flush_shard(shard_t *s);

static void batch_reset(batch_t *b)
{
    core_buf_reset(&b->events);
    core_buf_reset(&b->replies);
    b->n = 0;
    b->nreplies = 0;
}

/* Adds one envelope (and the JetStream message to acknowledge for it, if
 * any) to a batch being gathered. */
static void batch_add(batch_t *b, const void *data, size_t len, const char *reply)
{
    core_buf_putc(&b->events, b->n ? ',' : '[');
    core_buf_append(&b->events, data, len);
    b->n++;
    if (reply) {
        core_buf_append(&b->replies, reply, strlen(reply) + 1);
        b->nreplies++;
    }
}

/* Hands the gathered batch to the statement (fly, a JSON array) and starts
 * gathering anew: events keep arriving while it is written. */
static void batch_fly(batch_t *cur, batch_t *fly)
{
    batch_t tmp = *fly;
    *fly = *cur;
    *cur = tmp;
    batch_reset(cur);
    core_buf_putc(&fly->events, ']');
}

static void ack_all(repl_t *r, batch_t *b)
{
    const char *p = b->replies.base;
    for (int i = 0; i < b->nreplies; i++) {
        size_t len = strlen(p);
        /* A JetStream acknowledgement is a plain publish to the reply. */
        core_nats_publish(r->o.nats, p, "+ACK", 4);
        p += len + 1;
    }
}

/* The batch's first statement: what was new, and the lag of the newest. */
static void purge_inbound(repl_t *r, const char *list);

static void on_applied(const PGresult *res, int err, const char *errmsg, void *ud)
{
    shard_t *s = ud;
    repl_t *r = s->r;
    r->pending--;
    if (err || PQntuples(res) != 1)
        return; /* the group failed: on_advanced says so */
    int64_t inserted = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t refused = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
    core_metrics_add(r->m_applied, inserted);
    core_metrics_add(r->m_duplicates, s->fly.n - inserted - refused);
    if (refused) {
        core_metrics_add(r->m_not_allowed, refused);
        core_log_warn("repl.events_not_allowed", "shard=%d events=%lld", s->shard,
                      (long long)refused);
        /* Refused, and not kept in the inbound stream either. */
        if (!PQgetisnull(res, 0, 5) && !r->stopping)
            purge_inbound(r, PQgetvalue(res, 0, 5));
    }
    if (s->backfill)
        core_metrics_add(r->m_backfilled, inserted);
    if (!PQgetisnull(res, 0, 1) && !PQgetisnull(res, 0, 2)) {
        const char *src = PQgetvalue(res, 0, 1);
        int64_t at = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        for (size_t i = 0; i < r->o.world->nregions; i++)
            if (strcmp(r->o.world->regions[i].name, src) == 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts); /* "at" is wall-clock time */
                int64_t lag = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - at;
                core_metrics_set(r->m_lag[i], lag > 0 ? lag : 0);
            }
    }
}

/* The last statement: its callback runs once the group has committed. */
static void on_advanced(const PGresult *res, int err, const char *errmsg, void *ud)
{
    shard_t *s = ud;
    repl_t *r = s->r;
    r->pending--;
    if (err) {
        if (err != UV_ECANCELED) {
            core_metrics_add(r->m_failures, 1);
            core_log_warn("repl.apply_failed", "shard=%d events=%d error=\"%s\"", s->shard,
                          s->fly.n, core_pg_strerror(err));
        }
        /* Not acknowledged: JetStream delivers them again after ack_wait. */
    } else {
        /* Committed: only now may JetStream forget them. */
        ack_all(r, &s->fly);
    }
    batch_reset(&s->fly);
    s->busy = false;
    if (r->stopping) {
        maybe_free(r);
        return;
    }
    if (s->cur.n)
        flush_shard(s);
}

static void flush_shard(shard_t *s)
{
    repl_t *r = s->r;
    if (s->busy || s->cur.n == 0 || r->stopping)
        return;
    batch_fly(&s->cur, &s->fly);
    s->backfill = s->fly.nreplies == 0;
    char shard[16], backfill[8];
    snprintf(shard, sizeof shard, "%d", s->shard);
    snprintf(backfill, sizeof backfill, "%s", s->backfill ? "true" : "false");
    const char *params[] = {core_buf_cstr(&s->fly.events), shard, backfill, r->o.region};
    core_pg_batch_t *pb = core_pg_batch_begin(r->o.shards[s->shard]);
    int rc = core_pg_batch_add_prepared(pb, s->st_apply, 4, params, NULL, on_applied, s, NULL);
    /* In the same transaction (one commit, one fsync), after the rows are in. */
    if (!rc)
        rc = core_pg_batch_add_prepared(pb, s->st_advance, 1, params, NULL, on_advanced, s, NULL);
    if (rc)
        core_pg_batch_discard(pb);
    else
        rc = core_pg_batch_commit(pb);
    if (rc) {
        /* The shard is unavailable: leave them unacknowledged. */
        core_metrics_add(r->m_failures, 1);
        batch_reset(&s->fly);
        return;
    }
    s->busy = true;
    r->pending += 2;
}

static void flush_dir(repl_t *r);

typedef struct {
    char stream[64];
    char subject[200];
    natsStatus status;
} purge_t;

static void purge_work(jsCtx *js, void *ud)
{
    purge_t *p = ud;
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Purge.Subject = p->subject;
    jsErrCode jerr = 0;
    p->status = js_PurgeStream(js, p->stream, &o, &jerr);
}

static void purge_done(void *ud)
{
    purge_t *p = ud;
    if (p->status == NATS_OK)
        core_log_info("repl.purged", "stream=%s subject=%s", p->stream, p->subject);
    else
        core_log_warn("repl.purge_failed", "stream=%s subject=%s status=%d", p->stream, p->subject,
                      (int)p->status);
    free(p);
}

int repl_purge(core_nats_t *nc, const char *stream, const char *subject)
{
    purge_t *p = core_xcalloc(1, sizeof *p);
    snprintf(p->stream, sizeof p->stream, "%s", stream);
    snprintf(p->subject, sizeof p->subject, "%s", subject);
    int rc = core_nats_js_run(nc, purge_work, purge_done, p);
    if (rc)
        free(p);
    return rc;
}

/* Purges a comma-separated list of workspaces' messages from this region's
 * inbound stream: nothing of them stays in this region's stores. */
static void purge_inbound(repl_t *r, const char *list)
{
    for (const char *q = list; *q;) {
        size_t n = strcspn(q, ",");
        if (n && n < 80) {
            char subject[160];
            snprintf(subject, sizeof subject, "ev.*.*.%.*s.>", (int)n, q);
            repl_purge(r->o.nats, r->in_stream, subject);
        }
        q += n;
        if (*q == ',')
            q++;
    }
}

static void drop_replicas(repl_t *r, const char *list)
{
    for (const char *q = list; *q;) {
        size_t n = strcspn(q, ",");
        if (n) {
            core_metrics_add(r->m_dropped, 1);
            core_log_info("repl.replica_dropped", "workspace=%.*s reason=policy", (int)n, q);
        }
        q += n;
        if (*q == ',')
            q++;
    }
    purge_inbound(r, list);
}

/* Workspaces that stopped being homed here while this region was away:
 * every worker forgets their placement (rg_move.c listens on
 * mv.<region>.moved); the database fence already refuses their writes. */
static void fenced(repl_t *r, const char *list)
{
    char subject[96];
    snprintf(subject, sizeof subject, "mv.%s.moved", r->o.region);
    for (const char *q = list; *q;) {
        size_t n = strcspn(q, ",");
        if (n) {
            core_log_warn("repl.home_fenced", "workspace=%.*s reason=newer_epoch", (int)n, q);
            core_nats_publish(r->o.nats, subject, q, n);
        }
        q += n;
        if (*q == ',')
            q++;
    }
}

static void on_dir_applied(const PGresult *res, int err, const char *errmsg, void *ud)
{
    repl_t *r = ud;
    dirq_t *d = &r->dir;
    r->pending--;
    if (err)
        d->failed = true;
    if (!err && res && PQntuples(res) == 1 && !PQgetisnull(res, 0, 1) && !r->stopping)
        drop_replicas(r, PQgetvalue(res, 0, 1));
    if (!err && res && PQntuples(res) == 1 && !PQgetisnull(res, 0, 2) && !r->stopping)
        fenced(r, PQgetvalue(res, 0, 2));
    if (--d->waiting > 0)
        return;
    if (!d->failed) {
        /* Every shard has them: JetStream may forget them. */
        ack_all(r, &d->fly);
        core_metrics_add(r->m_dir_applied, d->fly.n);
    } else if (err != UV_ECANCELED) {
        core_metrics_add(r->m_failures, 1);
        core_log_warn("repl.directory_failed", "changes=%d", d->fly.n);
    }
    batch_reset(&d->fly);
    d->busy = false;
    if (r->stopping) {
        maybe_free(r);
        return;
    }
    if (d->cur.n)
        flush_dir(r);
}

static void flush_dir(repl_t *r)
{
    dirq_t *d = &r->dir;
    if (d->busy || d->cur.n == 0 || r->stopping)
        return;
    batch_fly(&d->cur, &d->fly);
    const char *params[] = {core_buf_cstr(&d->fly.events), r->o.region};
    d->failed = false;
    d->waiting = 1;
    d->busy = true;
    /* The newest change per id wins; a workspace's epoch never goes back.
     * Rows of workspaces held here (home or replica) keep their shard. */
    for (int i = 0; i < r->o.nshards; i++) {
        if (core_pg_query(
                r->o.shards[i],
                "WITH ev AS (SELECT DISTINCT ON (e->>'dir', e->>'id') e->>'dir' AS kind,"
                "   e->>'id' AS id, e->'body' AS b FROM jsonb_array_elements($1::jsonb) e"
                "   ORDER BY e->>'dir', e->>'id', (e->>'version')::bigint DESC),"
                /* Workspaces homed here that a newer epoch homes elsewhere (a
                 * standby promoted while this region was away): every CTE
                 * sees the rows as they were before this statement. */
                " was AS (SELECT d.workspace_id, ev.b->>'home_region' AS home FROM dir_workspaces d"
                "   JOIN ev ON ev.kind = 'workspace' AND ev.id = d.workspace_id"
                "   WHERE d.home_region = $2 AND ev.b->>'home_region' <> $2"
                "   AND coalesce((ev.b->>'epoch')::bigint, 1) > d.epoch),"
                /* The write fence of migration 0012, so that no statement
                 * here issues a sequence number for it again. */
                " fence AS (UPDATE workspaces w SET moving_to = was.home FROM was"
                "   WHERE w.id = was.workspace_id AND w.moving_to IS NULL RETURNING w.id),"
                " ws AS (INSERT INTO dir_workspaces AS d (workspace_id, shard, home_region,"
                "   allowed_regions, epoch, pinned)"
                "   SELECT id, -1, b->>'home_region',"
                "     ARRAY(SELECT jsonb_array_elements_text(b->'allowed_regions')),"
                "     coalesce((b->>'epoch')::bigint, 1), coalesce((b->>'pinned')::boolean, false)"
                "   FROM ev WHERE kind = 'workspace'"
                "   ON CONFLICT (workspace_id) DO UPDATE SET home_region = EXCLUDED.home_region,"
                "     allowed_regions = EXCLUDED.allowed_regions, epoch = EXCLUDED.epoch,"
                "     pinned = EXCLUDED.pinned, updated_at = now(),"
                "     shard = CASE WHEN d.home_region = $2 OR $2 = ANY (EXCLUDED.allowed_regions)"
                "       THEN d.shard ELSE -1 END"
                "   WHERE d.epoch <= EXCLUDED.epoch RETURNING 1),"
                /* A policy that no longer allows this region: its replica goes
                 * (the workspace's events, its bookkeeping), counted. */
                " gone AS (SELECT id FROM ev WHERE kind = 'workspace' AND b->>'home_region' <> $2"
                "   AND NOT ($2 = ANY (ARRAY(SELECT "
                "jsonb_array_elements_text(b->'allowed_regions'))))),"
                " de AS (DELETE FROM replica_events e USING gone WHERE e.workspace_id = gone.id"
                "   RETURNING e.workspace_id),"
                " dr AS (DELETE FROM replica_workspaces x USING gone WHERE x.workspace_id = gone.id"
                "   RETURNING x.workspace_id, x.home_region),"
                " rf AS (INSERT INTO residency_refusals (workspace_id, home_region, reason, events)"
                "   SELECT dr.workspace_id, dr.home_region, 'replica_dropped',"
                "     (SELECT count(*) FROM de WHERE de.workspace_id = dr.workspace_id) FROM dr"
                "   RETURNING workspace_id),"
                /* A replica of a workspace that moved: gaps are now filled
                 * from its new home. */
                " rh AS (UPDATE replica_workspaces x SET home_region = ev.b->>'home_region'"
                "   FROM ev WHERE ev.kind = 'workspace' AND x.workspace_id = ev.id"
                "   AND x.home_region <> ev.b->>'home_region' AND ev.b->>'home_region' <> $2"
                "   RETURNING 1),"
                " us AS (INSERT INTO dir_users AS d (user_id, shard, home_region)"
                "   SELECT id, -1, b->>'home_region' FROM ev WHERE kind = 'user'"
                "   ON CONFLICT (user_id) DO UPDATE SET home_region = EXCLUDED.home_region,"
                "     updated_at = now() RETURNING 1),"
                " em AS (INSERT INTO dir_emails AS d (email_hash, user_id, home_region)"
                "   SELECT decode(b->>'email_hash', 'hex'), id, b->>'home_region' FROM ev"
                "   WHERE kind = 'user' AND b ? 'email_hash'"
                "   ON CONFLICT (email_hash) DO UPDATE SET user_id = EXCLUDED.user_id,"
                "     home_region = EXCLUDED.home_region, updated_at = now() RETURNING 1),"
                /* A claim this region granted is confirmed by its entity's
                 * arrival (it lives on one shard; the others match nothing). */
                " cf AS (UPDATE claims c SET confirmed = true FROM ev"
                "   WHERE NOT c.confirmed AND c.owner_id = ev.id AND ((ev.kind = 'user'"
                "     AND c.kind = 'email' AND c.key_hash = decode(ev.b->>'email_hash', 'hex'))"
                "   OR (ev.kind = 'workspace' AND c.kind = 'slug'"
                "     AND c.key_hash = decode(ev.b->>'slug_hash', 'hex'))) RETURNING 1)"
                " SELECT (SELECT count(*) FROM ws) + (SELECT count(*) FROM us),"
                "   (SELECT string_agg(workspace_id, ',') FROM rf),"
                "   (SELECT string_agg(id, ',') FROM fence)",
                2, params, NULL, on_dir_applied, r, NULL) == 0) {
            d->waiting++;
            r->pending++;
        } else {
            d->failed = true;
        }
    }
    r->pending++; /* the hold, released like a shard's answer */
    on_dir_applied(NULL, 0, NULL, r);
}

static void on_flush_timer(uv_timer_t *t)
{
    repl_t *r = t->data;
    for (int i = 0; i < r->o.nshards; i++)
        flush_shard(&r->shards[i]);
    flush_dir(r);
}

/* A directory change: {"dir":kind,"id","region","version","body"}, on
 * ev.<origin>.<me>._dir.<kind>. */
static bool take_dir(repl_t *r, const core_json_t *root, const void *data, size_t len,
                     const char *subject, const char *reply)
{
    const char *kind = NULL, *id = NULL, *origin = NULL;
    int64_t version;
    if (core_json_get_str(root, "dir", &kind) != 0 || core_json_get_str(root, "id", &id) != 0 ||
        core_json_get_str(root, "region", &origin) != 0 ||
        core_json_get_int(root, "version", &version) != 0 || !core_json_get(root, "body") ||
        (strcmp(kind, "workspace") != 0 && strcmp(kind, "user") != 0) ||
        strcmp(origin, r->o.region) == 0 || !res_world_region(r->o.world, origin))
        return false;
    if (subject) {
        char want[160];
        snprintf(want, sizeof want, "ev.%s.%s._dir.%s", origin, r->o.region, kind);
        if (strcmp(subject, want) != 0)
            return false;
    }
    batch_t *b = &r->dir.cur;
    batch_add(b, data, len, reply);
    if (b->n >= BATCH_MAX)
        flush_dir(r);
    else if (!uv_is_active((uv_handle_t *)&r->flush_timer))
        uv_timer_start(&r->flush_timer, on_flush_timer, 0, 0);
    return true;
}

/* Checks an envelope against where it came from and where it is: an event
 * this region may not hold is refused (and acknowledged, so that it is not
 * delivered again). Returns the workspace id, or NULL. */
static const char *admit(repl_t *r, const core_json_t *root, const char *subject, char *ws,
                         size_t cap)
{
    const char *id = NULL, *origin = NULL, *type = NULL;
    int64_t seq;
    if (root->type != CORE_JSON_OBJECT || core_json_get_str(root, "workspace_id", &id) != 0 ||
        core_json_get_str(root, "region", &origin) != 0 ||
        core_json_get_str(root, "type", &type) != 0 || core_json_get_int(root, "seq", &seq) != 0 ||
        seq < 1 || strlen(id) >= cap || !core_json_get(root, "payload"))
        return NULL;
    if (strcmp(origin, r->o.region) == 0 || !res_world_region(r->o.world, origin))
        return NULL;
    if (subject) {
        /* ev.<origin>.<dest>.<ws>.<type>: it must be addressed to us, by its home. */
        char want[256];
        snprintf(want, sizeof want, "ev.%s.%s.%s.", origin, r->o.region, id);
        if (strncmp(subject, want, strlen(want)) != 0)
            return NULL;
    }
    snprintf(ws, cap, "%s", id);
    return ws;
}

/* Adds one envelope to its replica shard's batch. reply: the JetStream
 * message to acknowledge after COMMIT (NULL for backfilled events). */
static void take(repl_t *r, const void *data, size_t len, const char *subject, const char *reply)
{
    core_json_doc_t *doc = NULL;
    char err[64], ws[80];
    static const core_json_limits_t lim = {.max_depth = 32};
    if (core_json_parse(data, len, &lim, &doc, err, sizeof err) != 0)
        doc = NULL;
    if (doc && core_json_get(core_json_root(doc), "dir")) {
        bool ok = take_dir(r, core_json_root(doc), data, len, subject, reply);
        core_json_free(doc);
        if (!ok) {
            core_metrics_add(r->m_rejected, 1);
            core_log_warn("repl.event_refused", "subject=%.160s", subject ? subject : "-");
            if (reply)
                core_nats_publish(r->o.nats, reply, "+TERM", 5);
        }
        return;
    }
    if (!doc || !admit(r, core_json_root(doc), subject, ws, sizeof ws)) {
        if (doc)
            core_json_free(doc);
        core_metrics_add(r->m_rejected, 1);
        core_log_warn("repl.event_refused", "subject=%.160s", subject ? subject : "backfill");
        if (reply)
            core_nats_publish(r->o.nats, reply, "+TERM", 5);
        return;
    }
    core_json_free(doc);
    shard_t *s = &r->shards[repl_replica_shard(ws, r->o.nshards)];
    batch_t *b = &s->cur;
    batch_add(b, data, len, reply);
    if (b->n >= BATCH_MAX)
        flush_shard(s);
    else if (!uv_is_active((uv_handle_t *)&r->flush_timer))
        uv_timer_start(&r->flush_timer, on_flush_timer, 0, 0); /* next loop pass */
}

static void on_inbound(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    repl_t *r = ud;
    if (r->stopping || !msg->reply)
        return;
    /* A push delivery carries the subject the event was stored under:
     * checked against the envelope when it is one of ours. */
    const char *subject =
        strncmp(msg->subject, "ev.", 3) == 0 && strcmp(msg->subject, r->deliver) != 0 ? msg->subject
                                                                                      : NULL;
    take(r, msg->data, msg->len, subject, msg->reply);
}

/* ---- gaps ---- */

typedef struct {
    repl_t *r;
    char ws[80];
} bf_req_t;

static void on_backfill_reply(const core_nats_msg_t *reply, int err, void *ud)
{
    bf_req_t *q = ud;
    repl_t *r = q->r;
    r->pending--;
    core_map_remove(r->backfilling, q->ws);
    if (!err && !r->stopping) {
        core_json_doc_t *doc;
        char e[64];
        if (core_json_parse(reply->data, reply->len, NULL, &doc, e, sizeof e) == 0) {
            /* Each envelope comes as a JSON string: the exact bytes the
             * home region built, stored as they are. */
            const core_json_t *evs = core_json_get(core_json_root(doc), "events");
            if (evs && evs->type == CORE_JSON_ARRAY)
                for (size_t i = 0; i < evs->u.kids.n; i++) {
                    const core_json_t *t = evs->u.kids.items[i];
                    if (t->type == CORE_JSON_STRING)
                        take(r, t->u.str.s, t->u.str.len, NULL, NULL);
                }
            core_json_free(doc);
        }
    } else if (err && err != UV_ECANCELED) {
        core_log_warn("repl.backfill_failed", "workspace=%s error=\"%s\"", q->ws, uv_strerror(err));
    }
    free(q);
    maybe_free(r);
}

static void on_gaps(const PGresult *res, int err, const char *errmsg, void *ud)
{
    repl_t *r = ud;
    r->pending--;
    if (err || r->stopping) {
        maybe_free(r);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        const char *ws = PQgetvalue(res, i, 0), *home = PQgetvalue(res, i, 1);
        int64_t applied = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        int64_t expected = strtoll(PQgetvalue(res, i, 3), NULL, 10);
        if (core_map_get(r->backfilling, ws) || !res_world_region(r->o.world, home))
            continue;
        int64_t to = expected - 1;
        if (to - applied > BACKFILL_MAX)
            to = applied + BACKFILL_MAX;
        char subject[128], body[256];
        snprintf(subject, sizeof subject, "repl.backfill.%s", home);
        int n = snprintf(body, sizeof body,
                         "{\"workspace_id\":\"%s\",\"from\":%lld,\"to\":%lld,\"region\":\"%s\"}",
                         ws, (long long)(applied + 1), (long long)to, r->o.region);
        bf_req_t *q = core_xcalloc(1, sizeof *q);
        q->r = r;
        snprintf(q->ws, sizeof q->ws, "%s", ws);
        if (core_nats_request(r->o.nats, subject, body, (size_t)n, BACKFILL_TIMEOUT_MS,
                              on_backfill_reply, q) != 0) {
            free(q);
            continue;
        }
        core_metrics_add(r->m_gaps, 1);
        core_log_info("repl.backfill", "workspace=%s home=%s from=%lld to=%lld", ws, home,
                      (long long)(applied + 1), (long long)to);
        core_map_put(r->backfilling, q->ws, (void *)1);
        r->pending++;
    }
    maybe_free(r);
}

static void on_gap_timer(uv_timer_t *t)
{
    repl_t *r = t->data;
    if (r->stopping || !core_nats_ready(r->o.nats))
        return;
    /* A hole open for a second is not a reordering any more. */
    for (int i = 0; i < r->o.nshards; i++)
        if (core_pg_query(r->o.shards[i],
                          "SELECT workspace_id, home_region, applied_seq, expected_seq"
                          " FROM replica_workspaces WHERE gap_since < now() - interval '1 second'"
                          " ORDER BY gap_since LIMIT 32",
                          0, NULL, NULL, on_gaps, r, NULL) == 0)
            r->pending++;
}

/* ---- answering backfills ---- */

typedef struct {
    repl_t *r;
    char reply[128];
    int waiting;
    core_buf_t raw; /* the envelopes, each as a JSON string, comma-separated */
    int n;
    bool refused;
} bf_serve_t;

static void bf_answer(bf_serve_t *q)
{
    repl_t *r = q->r;
    core_buf_t b;
    core_buf_init(&b);
    /* Each envelope as a JSON string, so the replica stores exactly the
     * bytes built here. */
    char head[64];
    snprintf(head, sizeof head, "{\"count\":%d,\"events\":[", q->n);
    core_buf_puts(&b, head);
    core_buf_append(&b, q->raw.base, q->raw.len);
    core_buf_puts(&b, "]}");
    if (!r->stopping)
        core_nats_publish(r->o.nats, q->reply, b.base, b.len);
    core_metrics_add(q->refused ? r->m_bf_refused : r->m_bf_served, 1);
    core_buf_free(&b);
    core_buf_free(&q->raw);
    free(q);
}

static void on_bf_rows(const PGresult *res, int err, const char *errmsg, void *ud)
{
    bf_serve_t *q = ud;
    repl_t *r = q->r;
    r->pending--;
    if (!err) {
        core_buf_t env;
        core_buf_init(&env);
        for (int i = 0; i < PQntuples(res); i++) {
            repl_envelope(&env, r->o.region, res, i);
            if (q->n++)
                core_buf_putc(&q->raw, ',');
            core_json_escape(&q->raw, env.base, env.len);
        }
        core_buf_free(&env);
    }
    if (--q->waiting == 0)
        bf_answer(q);
    maybe_free(r);
}

static void on_backfill_request(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    repl_t *r = ud;
    if (r->stopping || !msg->reply || strlen(msg->reply) >= 128)
        return;
    core_json_doc_t *doc;
    char err[64];
    if (core_json_parse(msg->data, msg->len, NULL, &doc, err, sizeof err) != 0)
        return;
    const core_json_t *root = core_json_root(doc);
    const char *ws = NULL, *region = NULL;
    int64_t from, to;
    if (core_json_get_str(root, "workspace_id", &ws) != 0 ||
        core_json_get_str(root, "region", &region) != 0 ||
        core_json_get_int(root, "from", &from) != 0 || core_json_get_int(root, "to", &to) != 0 ||
        from < 1 || to < from || !res_world_region(r->o.world, region)) {
        core_json_free(doc);
        return;
    }
    if (to - from >= BACKFILL_MAX)
        to = from + BACKFILL_MAX - 1;
    bf_serve_t *q = core_xcalloc(1, sizeof *q);
    q->r = r;
    snprintf(q->reply, sizeof q->reply, "%s", msg->reply);
    core_buf_init(&q->raw);
    char f[24], t[24];
    snprintf(f, sizeof f, "%lld", (long long)from);
    snprintf(t, sizeof t, "%lld", (long long)to);
    const char *params[] = {ws, f, t, region};
    /* The workspace lives on one shard: every shard is asked, the others
     * answer nothing. Only a region the workspace allows gets its events. */
    for (int i = 0; i < r->o.nshards; i++)
        if (core_pg_query(r->o.shards[i],
                          "SELECT o.workspace_id, o.seq, o.event_id, o.type, o.channel_id,"
                          " o.payload::text, (extract(epoch FROM o.created_at) * 1000)::bigint"
                          " FROM outbox o JOIN workspaces w ON w.id = o.workspace_id"
                          " AND $4 = ANY (w.allowed_regions)"
                          " WHERE o.workspace_id = $1 AND o.seq BETWEEN $2::bigint AND $3::bigint"
                          " ORDER BY o.seq",
                          4, params, NULL, on_bf_rows, q, NULL) == 0) {
            q->waiting++;
            r->pending++;
        }
    core_json_free(doc);
    if (q->waiting == 0)
        bf_answer(q); /* no shard available: an empty answer, asked again later */
}

/* ---- the inbound stream and its consumer ---- */

static void job_work(jsCtx *js, void *ud)
{
    repl_t *r = ud;
    const res_world_t *w = r->o.world;
    jsStreamSource *srcs = core_xcalloc(w->nregions, sizeof *srcs);
    jsStreamSource **ptrs = core_xcalloc(w->nregions, sizeof *ptrs);
    jsExternalStream *ext = core_xcalloc(w->nregions, sizeof *ext);
    char(*names)[64] = core_xcalloc(w->nregions, 64);
    char(*filters)[128] = core_xcalloc(w->nregions, 128);
    char(*prefixes)[96] = core_xcalloc(w->nregions, 96);
    int n = 0;
    for (size_t i = 0; i < w->nregions; i++) {
        const res_region_t *o = &w->regions[i];
        if (strcmp(o->name, r->o.region) == 0)
            continue;
        snprintf(names[n], 64, "EV_%s", o->name);
        /* One filter per origin: 2.9 silently merges two from one origin. */
        snprintf(filters[n], 128, "ev.%s.%s.>", o->name, r->o.region);
        snprintf(prefixes[n], 96, "$JS.%s.API", o->nats_domain);
        ext[n].APIPrefix = prefixes[n];
        ext[n].DeliverPrefix = ""; /* NULL crashes cnats 3.4.1 */
        srcs[n].Name = names[n];
        srcs[n].FilterSubject = filters[n];
        srcs[n].External = &ext[n];
        ptrs[n] = &srcs[n];
        n++;
    }
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = r->in_stream;
    cfg.Sources = ptrs;
    cfg.SourcesLen = n;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.MaxAge = (int64_t)STREAM_MAX_AGE_S * 1000000000LL;
    jsStreamInfo *si = NULL;
    r->job_jerr = 0;
    r->job_status = js_AddStream(&si, js, &cfg, NULL, &r->job_jerr);
    if (r->job_status != NATS_OK && r->job_jerr == JSStreamNameExistErr) {
        /* It exists, maybe with another world's sources: bring it up to date. */
        r->job_status = js_UpdateStream(&si, js, &cfg, NULL, &r->job_jerr);
    }
    if (si)
        jsStreamInfo_Destroy(si);
    if (r->job_status == NATS_OK) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = CONSUMER;
        cc.DeliverSubject = r->deliver;
        cc.DeliverGroup = CONSUMER;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = (int64_t)ACK_WAIT_S * 1000000000LL;
        cc.MaxAckPending = MAX_ACK_PENDING;
        cc.DeliverPolicy = js_DeliverAll;
        jsConsumerInfo *ci = NULL;
        r->job_status = js_AddConsumer(&ci, js, r->in_stream, &cc, NULL, &r->job_jerr);
        if (r->job_status != NATS_OK && r->job_jerr == JSConsumerNameExistErr)
            r->job_status = NATS_OK;
        if (ci)
            jsConsumerInfo_Destroy(ci);
    }
    free(srcs);
    free(ptrs);
    free(ext);
    free(names);
    free(filters);
    free(prefixes);
}

static void job_try(uv_timer_t *t);

static void job_done(void *ud)
{
    repl_t *r = ud;
    r->job_running = false;
    if (r->stopping) {
        maybe_free(r);
        return;
    }
    if (r->job_status == NATS_OK) {
        core_log_info("repl.inbound_ready", "stream=%s consumer=%s", r->in_stream, CONSUMER);
        r->job_done = true;
        return;
    }
    core_log_warn("repl.inbound_failed", "stream=%s status=%d jerr=%d retry_ms=2000", r->in_stream,
                  (int)r->job_status, (int)r->job_jerr);
    uv_timer_start(&r->job_timer, job_try, 2000, 0);
}

static void job_try(uv_timer_t *t)
{
    repl_t *r = t->data;
    if (r->stopping)
        return;
    if (core_nats_js_run(r->o.nats, job_work, job_done, r) == 0)
        r->job_running = true;
    else
        uv_timer_start(&r->job_timer, job_try, 500, 0);
}

repl_t *repl_start(const repl_opts_t *o)
{
    if (!o->world || o->world->nregions < 2)
        return NULL; /* nothing to replicate with */
    repl_t *r = core_xcalloc(1, sizeof *r);
    r->o = *o;
    snprintf(r->in_stream, sizeof r->in_stream, "IN_%s", o->region);
    /* Under ev.: the leaf links deny ev.> both ways, so deliveries stay in
     * the region; and outside ev.<region>.>, so EV_<region> never stores them. */
    snprintf(r->deliver, sizeof r->deliver, "ev._in.%s", o->region);
    r->shards = core_xcalloc((size_t)o->nshards, sizeof *r->shards);
    for (int i = 0; i < o->nshards; i++) {
        r->shards[i].r = r;
        r->shards[i].shard = i;
        /* Static SQL: registering cannot fail on an open pool. */
        core_pg_pool_prepare(o->shards[i], sql_apply, &r->shards[i].st_apply);
        core_pg_pool_prepare(o->shards[i], sql_advance, &r->shards[i].st_advance);
    }
    r->backfilling = core_map_new();
    uv_timer_init(o->loop, &r->flush_timer);
    uv_timer_init(o->loop, &r->gap_timer);
    uv_timer_init(o->loop, &r->job_timer);
    r->flush_timer.data = r->gap_timer.data = r->job_timer.data = r;
    r->handles_open = 3;
    const char *lbl = "";
    r->m_dir_applied = core_metrics_counter(
        "meridian_directory_applied_total",
        "Directory changes from other regions written to this region's shards.", lbl);
    r->m_applied = core_metrics_counter("meridian_replication_applied_total",
                                        "Replicated events written to this region.", lbl);
    r->m_duplicates = core_metrics_counter("meridian_replication_duplicates_total",
                                           "Replicated events received again (ignored).", lbl);
    r->m_rejected = core_metrics_counter(
        "meridian_replication_rejected_total",
        "Inbound events refused: not addressed to this region, or from no region of the world.",
        lbl);
    r->m_not_allowed = core_metrics_counter(
        "meridian_residency_refused_events_total",
        "Inbound events refused because the workspace's policy does not allow this region.", lbl);
    r->m_dropped = core_metrics_counter(
        "meridian_residency_replicas_dropped_total",
        "Replicas deleted because a policy change no longer allows this region.", lbl);
    r->m_gaps =
        core_metrics_counter("meridian_replication_gaps_total",
                             "Holes in a replica's sequence, asked of the home region.", lbl);
    r->m_backfilled = core_metrics_counter("meridian_replication_backfilled_total",
                                           "Events written from backfill answers.", lbl);
    r->m_bf_served = core_metrics_counter("meridian_replication_backfill_served_total",
                                          "Backfill requests answered for other regions.", lbl);
    r->m_bf_refused = core_metrics_counter("meridian_replication_backfill_refused_total",
                                           "Backfill requests answered empty.", lbl);
    r->m_failures = core_metrics_counter("meridian_replication_apply_failures_total",
                                         "Batches not written (delivered again later).", lbl);
    r->m_lag = core_xcalloc(o->world->nregions, sizeof *r->m_lag);
    for (size_t i = 0; i < o->world->nregions; i++) {
        char l[64];
        snprintf(l, sizeof l, "source=\"%s\"", o->world->regions[i].name);
        r->m_lag[i] = core_metrics_gauge(
            "meridian_replication_lag_ms",
            "Commit at the home region to applied here, for the newest event applied.", l);
    }
    if (o->create_stream)
        uv_timer_start(&r->job_timer, job_try, 0, 0);
    core_nats_subscribe(o->nats, r->deliver, CONSUMER, on_inbound, r, &r->in_sub);
    char bf[96];
    snprintf(bf, sizeof bf, "repl.backfill.%s", o->region);
    core_nats_subscribe(o->nats, bf, "backfill", on_backfill_request, r, &r->bf_sub);
    uv_timer_start(&r->gap_timer, on_gap_timer, GAP_CHECK_MS, GAP_CHECK_MS);
    return r;
}
