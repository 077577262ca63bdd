#include "region/rg_relay.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#define BATCH 256     /* events claimed per sweep */
#define SWEEP_MS 1000 /* periodic sweep, for what notifications missed */
#define CLAIM_EXPIRY "5 seconds"
#define STREAM_MAX_AGE_S (7 * 24 * 3600)
#define DUPLICATE_WINDOW_S 120

typedef struct {
    struct rg_relay_s *relay;
    int row; /* in the claim's result */
    char workspace_id[72];
    char seq[24];
    char event_id[40];
    char subject[192];
    int ack_err; /* 0 published, else why not */
} event_t;

struct rg_relay_s {
    rg_worker_t *w;
    int shard;
    core_pg_pool_t *pool;
    uv_timer_t timer; /* periodic sweep and deferred wake-ups */
    char name[32];
    bool busy;  /* a claim, publish or mark is in flight */
    bool again; /* woken while busy: sweep once more afterwards */
    bool closing;
    bool timer_closed;
    int waiting_acks;
    event_t events[BATCH];
    int nevents;
    core_buf_t body; /* envelopes are built here, one at a time */
    core_metric_t m_published, m_failed, m_batches;
};

static void sweep(rg_relay_t *r);
static void maybe_free(rg_relay_t *r);

static void on_timer(uv_timer_t *t)
{
    sweep(t->data);
}

static void wake_soon(rg_relay_t *r)
{
    if (!r->closing)
        uv_timer_start(&r->timer, on_timer, 0, SWEEP_MS);
}

static void on_notify(const char *channel, const char *payload, void *ud)
{
    /* From inside the pool's I/O: only schedule. */
    wake_soon(ud);
}

static void done_batch(rg_relay_t *r, bool full)
{
    r->busy = false;
    r->nevents = 0;
    if (r->closing) {
        maybe_free(r);
        return;
    }
    if (full || r->again) {
        r->again = false;
        wake_soon(r);
    }
}

static void on_marked(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_relay_t *r = ud;
    if (err && err != UV_ECANCELED)
        core_log_warn("relay.mark_failed", "relay=%s error=\"%s\"", r->name, core_pg_strerror(err));
    done_batch(r, r->nevents == BATCH);
}

/* Every ack is in: mark what was published, leave the rest to a later sweep. */
static void mark_published(rg_relay_t *r)
{
    core_buf_t ws, seqs;
    core_buf_init(&ws);
    core_buf_init(&seqs);
    core_buf_putc(&ws, '{');
    core_buf_putc(&seqs, '{');
    int ok = 0;
    for (int i = 0; i < r->nevents; i++) {
        event_t *e = &r->events[i];
        if (e->ack_err) {
            core_metrics_add(r->m_failed, 1);
            continue;
        }
        if (ok++) {
            core_buf_putc(&ws, ',');
            core_buf_putc(&seqs, ',');
        }
        /* Ids are [A-Za-z0-9_-]: safe in an array literal without quoting. */
        core_buf_puts(&ws, e->workspace_id);
        core_buf_puts(&seqs, e->seq);
    }
    core_buf_putc(&ws, '}');
    core_buf_putc(&seqs, '}');
    core_metrics_add(r->m_published, ok);
    if (ok == 0 || r->closing) {
        core_buf_free(&ws);
        core_buf_free(&seqs);
        done_batch(r, false);
        return;
    }
    const char *params[] = {core_buf_cstr(&ws), core_buf_cstr(&seqs)};
    int rc = core_pg_query(r->pool,
                           "UPDATE outbox o SET published_at = now()"
                           " FROM unnest($1::text[], $2::bigint[]) AS u(w, s)"
                           " WHERE o.workspace_id = u.w AND o.seq = u.s",
                           2, params, NULL, on_marked, r, NULL);
    core_buf_free(&ws);
    core_buf_free(&seqs);
    if (rc)
        done_batch(r, false);
}

static void ack_one(rg_relay_t *r, event_t *e, int err)
{
    e->ack_err = err;
    if (--r->waiting_acks == 0)
        mark_published(r);
}

static void on_ack(const core_nats_js_ack_t *ack, int err, void *ud)
{
    event_t *e = ud;
    ack_one(e->relay, e, err);
}

static int cmp_events(const void *a, const void *b)
{
    const event_t *x = a, *y = b;
    int c = strcmp(x->workspace_id, y->workspace_id);
    if (c)
        return c;
    long long sx = atoll(x->seq), sy = atoll(y->seq);
    return sx < sy ? -1 : sx > sy;
}

static void on_claimed(const PGresult *res, int err, const char *errmsg, void *ud);

static void sweep(rg_relay_t *r)
{
    if (r->closing)
        return;
    if (r->busy) {
        r->again = true;
        return;
    }
    /* Claims would only expire unpublished while NATS is away. */
    if (!core_nats_ready(r->w->nats) || !core_pg_pool_ready(r->pool))
        return;
    r->busy = true;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", BATCH);
    const char *params[] = {limit};
    int rc = core_pg_query(
        r->pool,
        "UPDATE outbox o SET claimed_at = now() FROM ("
        "  SELECT workspace_id, seq FROM outbox"
        "  WHERE published_at IS NULL"
        "    AND (claimed_at IS NULL OR claimed_at < now() - interval '" CLAIM_EXPIRY "')"
        "  ORDER BY created_at LIMIT $1::int FOR UPDATE SKIP LOCKED) c"
        " WHERE o.workspace_id = c.workspace_id AND o.seq = c.seq"
        " RETURNING o.workspace_id, o.seq, o.event_id, o.type, o.channel_id, o.payload::text",
        1, params, NULL, on_claimed, r, NULL);
    if (rc)
        r->busy = false;
}

static void put_envelope(core_buf_t *b, const char *region, const PGresult *res, int row)
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
    core_jw_obj_close(&jw);
}

static void on_claimed(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_relay_t *r = ud;
    if (err) {
        if (err != UV_ECANCELED)
            core_log_warn("relay.claim_failed", "relay=%s error=\"%s\"", r->name,
                          core_pg_strerror(err));
        done_batch(r, false);
        return;
    }
    int n = PQntuples(res);
    if (n == 0 || r->closing) {
        done_batch(r, false);
        return;
    }
    core_metrics_add(r->m_batches, 1);
    r->nevents = n;
    for (int i = 0; i < n; i++) {
        event_t *e = &r->events[i];
        e->relay = r;
        e->row = i;
        snprintf(e->workspace_id, sizeof e->workspace_id, "%s", PQgetvalue(res, i, 0));
        snprintf(e->seq, sizeof e->seq, "%s", PQgetvalue(res, i, 1));
        snprintf(e->event_id, sizeof e->event_id, "%s", PQgetvalue(res, i, 2));
    }
    /* Rows come back in any order: publish each workspace's events by seq. */
    qsort(r->events, (size_t)n, sizeof r->events[0], cmp_events);
    const char *region = r->w->cfg->region;
    r->waiting_acks = n + 1; /* held until every publish is sent */
    for (int i = 0; i < n; i++) {
        event_t *e = &r->events[i];
        snprintf(e->subject, sizeof e->subject, "ev.%s.%s.%s.%s", region, region, e->workspace_id,
                 PQgetvalue(res, e->row, 3));
        put_envelope(&r->body, region, res, e->row);
        int rc = core_nats_js_publish(r->w->nats, e->subject, r->body.base, r->body.len,
                                      e->event_id, on_ack, e);
        if (rc)
            ack_one(r, e, rc); /* left claimed: a later sweep takes it over */
    }
    if (--r->waiting_acks == 0)
        mark_published(r);
}

rg_relay_t *rg_relay_new(rg_worker_t *w, int shard)
{
    rg_relay_t *r = core_xcalloc(1, sizeof *r);
    r->w = w;
    r->shard = shard;
    snprintf(r->name, sizeof r->name, "relay%d", shard);
    core_buf_init(&r->body);
    core_pg_pool_opts_t po = {
        .name = r->name,
        .conninfo = w->cfg->pg.shards[shard].conninfo,
        .size = 1,
        .query_timeout_ms = w->cfg->pg.query_timeout_ms,
        .connect_timeout_ms = w->cfg->pg.connect_timeout_ms,
        .session_options = RG_PG_SESSION_OPTIONS,
        .listen = "meridian_outbox",
        .on_notify = on_notify,
        .notify_ud = r,
    };
    r->pool = core_pg_pool_new(&w->loop, &po);
    uv_timer_init(&w->loop, &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, on_timer, SWEEP_MS, SWEEP_MS);
    char labels[48];
    snprintf(labels, sizeof labels, "shard=\"%d\"", shard);
    r->m_published = core_metrics_counter("meridian_relay_published_total",
                                          "Outbox events published to JetStream.", labels);
    r->m_failed =
        core_metrics_counter("meridian_relay_publish_failures_total",
                             "Outbox events whose publish failed (retried later).", labels);
    r->m_batches = core_metrics_counter("meridian_relay_batches_total",
                                        "Outbox batches claimed by this node's relay.", labels);
    return r;
}

static void maybe_free(rg_relay_t *r)
{
    if (!r->closing || !r->timer_closed || r->busy)
        return;
    core_buf_free(&r->body);
    free(r);
}

static void on_timer_closed(uv_handle_t *h)
{
    rg_relay_t *r = h->data;
    r->timer_closed = true;
    maybe_free(r);
}

void rg_relay_free(rg_relay_t *r)
{
    if (!r || r->closing)
        return;
    r->closing = true;
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
    /* Answers a claim or mark in flight now; publishes awaiting acks are
     * answered when the NATS client closes, and the relay is freed then. */
    core_pg_pool_close(r->pool);
    r->pool = NULL;
    maybe_free(r);
}

/* ---- the stream ---- */

struct rg_stream_job_s {
    rg_worker_t *w;
    uv_timer_t retry;
    bool running; /* a js_run is in flight: its done still comes */
    bool cancelled;
    bool timer_closed;
    char name[64];
    char subjects[96];
    natsStatus status;
    jsErrCode jerr;
    bool created;
};
typedef struct rg_stream_job_s stream_job_t;

static void stream_work(jsCtx *js, void *ud)
{
    stream_job_t *j = ud;
    jsStreamInfo *si = NULL;
    j->status = js_GetStreamInfo(&si, js, j->name, NULL, &j->jerr);
    if (j->status == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return;
    }
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = j->name;
    const char *subjects[] = {j->subjects};
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.MaxAge = (int64_t)STREAM_MAX_AGE_S * 1000000000LL;
    cfg.Duplicates = (int64_t)DUPLICATE_WINDOW_S * 1000000000LL;
    j->status = js_AddStream(&si, js, &cfg, NULL, &j->jerr);
    if (j->status == NATS_OK) {
        j->created = true;
        jsStreamInfo_Destroy(si);
    }
}

static void stream_try(uv_timer_t *t);

/* The worker owns the job: it is freed only after rg_relay_stream_cancel,
 * once its timer has closed and no js_run is in flight. */
static void stream_maybe_free(stream_job_t *j)
{
    if (j->cancelled && j->timer_closed && !j->running)
        free(j);
}

static void on_stream_retry_closed(uv_handle_t *h)
{
    stream_job_t *j = h->data;
    j->timer_closed = true;
    stream_maybe_free(j);
}

static void stream_finish(stream_job_t *j)
{
    if (!uv_is_closing((uv_handle_t *)&j->retry))
        uv_close((uv_handle_t *)&j->retry, on_stream_retry_closed);
}

static void stream_done(void *ud)
{
    stream_job_t *j = ud;
    j->running = false;
    if (j->cancelled) {
        stream_maybe_free(j);
        return;
    }
    if (j->status == NATS_OK) {
        core_log_info("relay.stream_ready", "stream=%s created=%s", j->name,
                      j->created ? "true" : "false");
        stream_finish(j);
        return;
    }
    core_log_warn("relay.stream_failed", "stream=%s status=%d jerr=%d retry_ms=2000", j->name,
                  (int)j->status, (int)j->jerr);
    uv_timer_start(&j->retry, stream_try, 2000, 0);
}

static void stream_try(uv_timer_t *t)
{
    stream_job_t *j = t->data;
    int rc = core_nats_js_run(j->w->nats, stream_work, stream_done, j);
    if (rc == 0) {
        j->running = true;
        return;
    }
    if (rc == UV_ECANCELED) {
        stream_finish(j);
        return;
    }
    uv_timer_start(&j->retry, stream_try, 500, 0);
}

void rg_relay_stream_cancel(stream_job_t *j)
{
    if (!j || j->cancelled)
        return;
    j->cancelled = true;
    stream_finish(j);
    stream_maybe_free(j); /* the timer may have closed long ago */
}

stream_job_t *rg_relay_ensure_stream(rg_worker_t *w)
{
    stream_job_t *j = core_xcalloc(1, sizeof *j);
    j->w = w;
    snprintf(j->name, sizeof j->name, "EV_%s", w->cfg->region);
    snprintf(j->subjects, sizeof j->subjects, "ev.%s.>", w->cfg->region);
    uv_timer_init(&w->loop, &j->retry);
    j->retry.data = j;
    uv_timer_start(&j->retry, stream_try, 0, 0);
    return j;
}
