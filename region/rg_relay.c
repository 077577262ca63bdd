#include "region/rg_relay.h"
#include "replication/repl.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

/* Events read per sweep: measured, 256 could not keep up with 10k events/s
 * replicated to one other region (two publishes each). */
#define BATCH 1024
/* Sweeps whose publishes may await their acks at once. The next read need
 * not wait for the last one's acks (at 10k events/s a sweep's acks took
 * 5-15 ms, and every event committed meanwhile waited that long on top);
 * watermarks still move in read order, and only past acknowledged events. */
#define SLOTS 2
/* ... but only under load: while reads come back small (100 posts/s reads a
 * few events at a time; 10k events/s, 40-70), waiting for the acks gathers
 * what was committed meanwhile into one read, and every read costs CPU that
 * the same worker's fan-out needs. */
#define PIPELINE_MIN_EVENTS 32
#define WORKSPACES_PER_SWEEP 64
#define SWEEP_MS 1000      /* periodic sweep, for what notifications missed */
#define FULL_SCAN_MS 30000 /* and now and then a look at every workspace */
#define STREAM_MAX_AGE_S (7 * 24 * 3600)
#define DUPLICATE_WINDOW_S 120
/* One relay per shard publishes at a time: the holder of this session lock. */
#define LEADER_LOCK "hashtext('meridian.relay')"

typedef struct slot_s slot_t;

typedef struct {
    slot_t *slot;
    char workspace_id[72];
    int64_t seq;
    char event_id[40];
    char subject[192];
    int ack_err; /* 0 published, else why not */
} event_t;

/* One sweep's events, from their read until their watermark is sent. */
struct slot_s {
    struct rg_relay_s *relay;
    bool used;        /* published; its watermark is not sent yet */
    uint64_t order;   /* fill order: watermarks move in it */
    uint64_t read_no; /* which read filled it (see broken) */
    int waiting_acks; /* 0 once used: every ack is in */
    int nevents;
    event_t events[BATCH];
};

struct rg_relay_s {
    rg_worker_t *w;
    int shard;
    core_pg_pool_t *pool;
    uv_timer_t timer; /* periodic sweep and deferred wake-ups */
    char name[32];
    core_map_t *dirty; /* workspaces with events to publish -> (void *)1 */
    uint64_t next_full_scan;
    bool busy;   /* a lock, scan or read is in flight (one at a time) */
    bool again;  /* woken while busy or full: sweep once more afterwards */
    bool leader; /* the last lock query said this relay publishes the shard */
    bool closing;
    bool timer_closed;
    slot_t slots[SLOTS];
    uint64_t next_order; /* given to the next slot filled */
    uint64_t mark_order; /* the slot whose watermark goes next */
    uint64_t reads;      /* reads started; the one in flight is number reads */
    /* workspace -> last seq handed to NATS and not yet marked: the next read
     * starts after it instead of waiting for the acks. */
    core_map_t *sent;
    /* workspace -> first read that knew of a failed publish: slots filled
     * by earlier reads may hold events after the failure, and must not move
     * its watermark past it. */
    core_map_t *broken;
    int full_workspaces; /* workspaces whose read hit the per-workspace limit */
    int last_read_n;     /* events the last read found */
    int per_ws_limit;    /* events read per workspace this sweep */
    core_buf_t body;     /* envelopes are built here, one at a time */
    core_buf_t arr1, arr2;
    core_pg_stmt_t st_lock, st_read, st_mark, st_scan;
    core_metric_t m_published, m_failed, m_batches, m_replicated;
};

/* The relay's statements, prepared once per connection: a sweep runs three
 * of them, once per commit on a busy shard (~300 sweeps/s at 6k posts/s),
 * and parsing and planning them each time was a fifth of Postgres's CPU. */
static const char sql_lock[] = "SELECT pg_try_advisory_lock(" LEADER_LOCK ")";
/* Each workspace from its watermark, or from the last event handed to NATS
 * if later ($3: 0 when none is in flight); at most $2 events each. The
 * workspace's allowed regions are read once per workspace, not per event:
 * its row is the hottest of the shard (every write bumps its seq), and a
 * lookup per event walked its chain of row versions each time (16-25 us an
 * event under bench/ingest, 15 us with one lookup per workspace). OFFSET 0
 * keeps `c` from being pulled up into the select list, which would evaluate
 * the lookup per event again. */
static const char sql_read[] =
    "SELECT o.workspace_id, o.seq, o.event_id, o.type, o.channel_id,"
    " o.payload::text, (extract(epoch FROM o.created_at) * 1000)::bigint, c.allowed"
    " FROM unnest($1::text[], $3::bigint[]) AS d(ws, sent)"
    " CROSS JOIN LATERAL (SELECT GREATEST(d.sent, coalesce((SELECT published_seq"
    "   FROM outbox_relay WHERE workspace_id = d.ws), 0)) AS p,"
    "   (SELECT allowed_regions::text FROM workspaces WHERE id = d.ws) AS allowed OFFSET 0) c"
    " CROSS JOIN LATERAL (SELECT * FROM outbox o WHERE o.workspace_id = d.ws"
    "   AND o.seq > c.p ORDER BY o.seq LIMIT $2::int) o"
    " ORDER BY o.workspace_id, o.seq";
static const char sql_mark[] = "INSERT INTO outbox_relay (workspace_id, published_seq)"
                               " SELECT * FROM unnest($1::text[], $2::bigint[])"
                               " ON CONFLICT (workspace_id) DO UPDATE SET published_seq ="
                               " GREATEST(outbox_relay.published_seq, EXCLUDED.published_seq)";
/* Workspaces whose sequence is past their watermark. */
static const char sql_scan[] = "SELECT w.id FROM workspaces w"
                               " WHERE w.seq > coalesce((SELECT published_seq FROM outbox_relay"
                               " WHERE workspace_id = w.id), 0) LIMIT 10000";

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
    /* From inside the pool's I/O: only note it. */
    rg_relay_t *r = ud;
    if (*payload && core_map_len(r->dirty) < 1000000)
        core_map_put(r->dirty, payload, (void *)1);
    wake_soon(r);
}

static void done_sweep(rg_relay_t *r, bool more)
{
    r->busy = false;
    if (r->closing) {
        maybe_free(r);
        return;
    }
    if (more || r->again) {
        r->again = false;
        wake_soon(r);
    }
}

static slot_t *free_slot(rg_relay_t *r)
{
    for (int i = 0; i < SLOTS; i++)
        if (!r->slots[i].used)
            return &r->slots[i];
    return NULL;
}

/* Appends one element to a text[] literal (ids only: no quoting needed). */
static void arr_add(core_buf_t *b, const char *v)
{
    if (b->len > 1)
        core_buf_putc(b, ',');
    core_buf_puts(b, v);
}

static void arr_open(core_buf_t *b)
{
    core_buf_reset(b);
    core_buf_putc(b, '{');
}

/* No read waits for this: a failed mark only means publishing again. */
static void on_marked(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_relay_t *r = ud;
    if (err && err != UV_ECANCELED)
        core_log_warn("relay.mark_failed", "relay=%s error=\"%s\"", r->name, core_pg_strerror(err));
}

/* A publish of ws failed: what was read after it in slots already filled is
 * not marked, and the next read starts again from the watermark (JetStream
 * drops what it already holds by Nats-Msg-Id). */
static void break_workspace(rg_relay_t *r, const char *ws)
{
    core_map_put(r->dirty, ws, (void *)1);
    core_map_remove(r->sent, ws);
    /* Reads from this one on start at the watermark. */
    core_map_put(r->broken, ws, (void *)(uintptr_t)(r->reads + 1));
}

/* A slot's acks are all in, and every slot filled before it is marked: move
 * each workspace's watermark to its last event that was published with every
 * event before it; the rest is read again. */
static void mark_slot(rg_relay_t *r, slot_t *s)
{
    arr_open(&r->arr1);
    arr_open(&r->arr2);
    int marked = 0;
    for (int i = 0; i < s->nevents;) {
        event_t *e = &s->events[i];
        int64_t upto = -1;
        int j = i;
        bool broken = false;
        for (; j < s->nevents && !strcmp(s->events[j].workspace_id, e->workspace_id); j++) {
            if (s->events[j].ack_err)
                broken = true;
            if (!broken)
                upto = s->events[j].seq;
            core_metrics_add(s->events[j].ack_err ? r->m_failed : r->m_published, 1);
        }
        uintptr_t from = (uintptr_t)core_map_get(r->broken, e->workspace_id);
        if (from && s->read_no < from) {
            upto = -1; /* read past an earlier slot's failure */
        } else if (from) {
            core_map_remove(r->broken, e->workspace_id); /* read after it: settled */
        }
        if (broken)
            break_workspace(r, e->workspace_id);
        if (upto >= 0) {
            if ((int64_t)(intptr_t)core_map_get(r->sent, e->workspace_id) == upto)
                core_map_remove(r->sent, e->workspace_id); /* nothing after it in flight */
            char seq[24];
            snprintf(seq, sizeof seq, "%lld", (long long)upto);
            arr_add(&r->arr1, e->workspace_id);
            arr_add(&r->arr2, seq);
            marked++;
        }
        i = j;
    }
    if (marked == 0 || r->closing)
        return;
    core_buf_putc(&r->arr1, '}');
    core_buf_putc(&r->arr2, '}');
    const char *params[] = {core_buf_cstr(&r->arr1), core_buf_cstr(&r->arr2)};
    /* Not waited for: the relay's one connection runs its statements in
     * order, so any later read already sees it. */
    core_pg_query_prepared(r->pool, r->st_mark, 2, params, NULL, on_marked, r, NULL);
}

/* Marks, in fill order, every slot whose acks are all in and whose
 * predecessors are marked, and frees them for the next reads. */
static void marks_due(rg_relay_t *r)
{
    bool freed = false;
    for (bool found = true; found;) {
        found = false;
        for (int i = 0; i < SLOTS; i++) {
            slot_t *s = &r->slots[i];
            if (s->used && s->waiting_acks == 0 && s->order == r->mark_order) {
                mark_slot(r, s);
                s->used = false;
                s->nevents = 0;
                r->mark_order++;
                found = freed = true;
            }
        }
    }
    if (r->closing) {
        maybe_free(r);
        return;
    }
    if (freed && (r->again || core_map_len(r->dirty) > 0 || r->full_workspaces > 0)) {
        r->again = false;
        wake_soon(r);
    }
}

/* Drops one hold on the slot: an ack, or a hold taken while publishing. */
static void slot_release(slot_t *s)
{
    if (--s->waiting_acks == 0)
        marks_due(s->relay);
}

static void ack_one(slot_t *s, event_t *e, int err)
{
    if (err)
        e->ack_err = err;
    slot_release(s);
}

static void on_ack(const core_nats_js_ack_t *ack, int err, void *ud)
{
    event_t *e = ud;
    ack_one(e->slot, e, err);
}

/* Publishes the event once more for every other region its workspace allows
 * (column 7, a text[] literal), and for no other: the subject names the
 * destination, whose inbound stream sources only its own subjects. The
 * message id is per destination, since JetStream dedupes per stream. */
static void replicate(rg_relay_t *r, event_t *e, const PGresult *res, int row)
{
    const rg_worker_t *w = r->w;
    if (!w->world || PQnfields(res) < 8 || PQgetisnull(res, row, 7))
        return;
    const char *p = PQgetvalue(res, row, 7);
    if (*p == '{')
        p++;
    while (*p && *p != '}') {
        size_t n = strcspn(p, ",}");
        char dest[40];
        if (n > 0 && n < sizeof dest) {
            memcpy(dest, p, n);
            dest[n] = '\0';
            if (strcmp(dest, w->cfg->region) != 0 && res_world_region(w->world, dest)) {
                char subject[192], msgid[80];
                snprintf(subject, sizeof subject, "ev.%s.%s.%s.%s", w->cfg->region, dest,
                         e->workspace_id, PQgetvalue(res, row, 3));
                snprintf(msgid, sizeof msgid, "%s:%s", e->event_id, dest);
                e->slot->waiting_acks++;
                int rc = core_nats_js_publish(w->nats, subject, r->body.base, r->body.len, msgid,
                                              on_ack, e);
                if (rc)
                    ack_one(e->slot, e, rc);
                else
                    core_metrics_add(r->m_replicated, 1);
            }
        }
        p += n;
        if (*p == ',')
            p++;
    }
}

void rg_relay_envelope(core_buf_t *b, const char *region, const PGresult *res, int row)
{
    repl_envelope(b, region, res, row); /* the wire format is replication's */
}

/* The events after each dirty workspace's watermark, in seq order. */
static void on_events(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_relay_t *r = ud;
    if (err) {
        if (err != UV_ECANCELED)
            core_log_warn("relay.read_failed", "relay=%s error=\"%s\"", r->name,
                          core_pg_strerror(err));
        done_sweep(r, false);
        return;
    }
    if (!r->leader) {
        /* The lock read just before says another node's relay publishes
         * this shard: what was read is its to send. */
        core_map_clear(r->dirty, NULL);
        core_map_clear(r->sent, NULL);
        done_sweep(r, false);
        return;
    }
    int n = PQntuples(res);
    if (n > BATCH)
        n = BATCH;
    slot_t *s = free_slot(r); /* sweep() reads only when one is free */
    r->last_read_n = n;
    if (n == 0 || r->closing || !s) {
        done_sweep(r, core_map_len(r->dirty) > 0);
        return;
    }
    core_metrics_add(r->m_batches, 1);
    s->used = true;
    s->order = r->next_order++;
    s->read_no = r->reads;
    s->nevents = n;
    r->full_workspaces = 0;
    const char *region = r->w->cfg->region;
    s->waiting_acks = 1; /* held until every publish is sent */
    int run = 0;
    for (int i = 0; i < n; i++) {
        event_t *e = &s->events[i];
        e->slot = s;
        e->ack_err = 0;
        s->waiting_acks++; /* the event's own hold, released once its publishes are sent */
        snprintf(e->workspace_id, sizeof e->workspace_id, "%s", PQgetvalue(res, i, 0));
        e->seq = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        snprintf(e->event_id, sizeof e->event_id, "%s", PQgetvalue(res, i, 2));
        run = i > 0 && !strcmp(e->workspace_id, s->events[i - 1].workspace_id) ? run + 1 : 1;
        if (run == r->per_ws_limit) { /* this workspace may have more waiting */
            core_map_put(r->dirty, e->workspace_id, (void *)1);
            r->full_workspaces++;
        }
        snprintf(e->subject, sizeof e->subject, "ev.%s.%s.%s.%s", region, region, e->workspace_id,
                 PQgetvalue(res, i, 3));
        rg_relay_envelope(&r->body, region, res, i);
        s->waiting_acks++;
        int rc = core_nats_js_publish(r->w->nats, e->subject, r->body.base, r->body.len,
                                      e->event_id, on_ack, e);
        if (rc)
            ack_one(s, e, rc); /* the watermark stops before it: read again later */
        replicate(r, e, res, i);
        ack_one(s, e, 0); /* the event's own hold */
    }
    core_nats_flush(r->w->nats); /* on the wire now, not when cnats's flusher wakes */
    /* Where the next read of each workspace starts: after its last event
     * here, unless one of its publishes already failed (then at the mark). */
    for (int i = 0; i < n;) {
        int j = i;
        bool failed = false;
        for (; j < n && !strcmp(s->events[j].workspace_id, s->events[i].workspace_id); j++)
            failed = failed || s->events[j].ack_err;
        uintptr_t from = (uintptr_t)core_map_get(r->broken, s->events[i].workspace_id);
        if (failed || (from && s->read_no < from)) /* read past a failure */
            core_map_remove(r->sent, s->events[i].workspace_id);
        else
            core_map_put(r->sent, s->events[i].workspace_id,
                         (void *)(intptr_t)s->events[j - 1].seq);
        i = j;
    }
    /* The next read goes out now (if a slot is free), not after the acks. */
    done_sweep(r, r->full_workspaces > 0 || core_map_len(r->dirty) > 0);
    slot_release(s);
}

static void read_events(rg_relay_t *r)
{
    arr_open(&r->arr1);
    arr_open(&r->arr2);
    char ws[72];
    int found, taken = 0;
    while (taken < WORKSPACES_PER_SWEEP) {
        core_map_take(r->dirty, ws, sizeof ws, &found);
        if (!found)
            break;
        arr_add(&r->arr1, ws);
        char seq[24];
        snprintf(seq, sizeof seq, "%lld", (long long)(intptr_t)core_map_get(r->sent, ws));
        arr_add(&r->arr2, seq);
        taken++;
    }
    if (taken == 0) {
        done_sweep(r, false);
        return;
    }
    core_buf_putc(&r->arr1, '}');
    core_buf_putc(&r->arr2, '}');
    r->reads++;
    /* At most BATCH events in all, shared by the workspaces taken. */
    r->per_ws_limit = BATCH / taken;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", r->per_ws_limit);
    const char *params[] = {core_buf_cstr(&r->arr1), limit, core_buf_cstr(&r->arr2)};
    if (core_pg_query_prepared(r->pool, r->st_read, 3, params, NULL, on_events, r, NULL) != 0)
        done_sweep(r, false);
}

/* Workspaces whose sequence is past their watermark: what notifications
 * missed while this relay was not the leader, or not running. */
static void on_full_scan(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_relay_t *r = ud;
    if (err) {
        done_sweep(r, false);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++)
        core_map_put(r->dirty, PQgetvalue(res, i, 0), (void *)1);
    if (r->closing) {
        done_sweep(r, false);
        return;
    }
    read_events(r);
}

static bool is_leader(const PGresult *res, int err)
{
    return !err && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
}

/* The lock sent just ahead of a read (sweep): only note the answer. */
static void on_lock(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_relay_t *r = ud;
    r->leader = is_leader(res, err);
}

static void on_leader(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_relay_t *r = ud;
    r->leader = is_leader(res, err);
    if (!r->leader || r->closing) {
        /* Another node's relay publishes this shard; it also reads what this
         * one was told about. */
        core_map_clear(r->dirty, NULL);
        core_map_clear(r->sent, NULL);
        done_sweep(r, false);
        return;
    }
    uint64_t now = uv_now(&r->w->loop);
    if (now >= r->next_full_scan) {
        r->next_full_scan = now + FULL_SCAN_MS;
        if (core_pg_query_prepared(r->pool, r->st_scan, 0, NULL, NULL, on_full_scan, r, NULL) != 0)
            done_sweep(r, false);
        return;
    }
    read_events(r);
}

static void sweep(rg_relay_t *r)
{
    if (r->closing)
        return;
    bool inflight = false;
    for (int i = 0; i < SLOTS; i++)
        inflight = inflight || r->slots[i].used;
    if (r->busy || !free_slot(r) || (inflight && r->last_read_n < PIPELINE_MIN_EVENTS)) {
        r->again = true; /* swept again when the read ends or a slot frees */
        return;
    }
    if (!core_nats_ready(r->w->nats) || !core_pg_pool_ready(r->pool))
        return;
    r->busy = true;
    /* Session-level and re-entrant: taken once, it stays ours until the
     * connection ends (then another node's relay may take over). */
    if (uv_now(&r->w->loop) < r->next_full_scan && core_map_len(r->dirty) > 0) {
        /* The usual case: the lock and the read go out together (one round
         * trip, not two); the read's answer is used only if the lock's says
         * this relay leads. */
        if (core_pg_query_prepared(r->pool, r->st_lock, 0, NULL, NULL, on_lock, r, NULL) != 0) {
            r->busy = false;
            return;
        }
        read_events(r);
        return;
    }
    if (core_pg_query_prepared(r->pool, r->st_lock, 0, NULL, NULL, on_leader, r, NULL) != 0)
        r->busy = false;
}

rg_relay_t *rg_relay_new(rg_worker_t *w, int shard)
{
    rg_relay_t *r = core_xcalloc(1, sizeof *r);
    r->w = w;
    r->shard = shard;
    snprintf(r->name, sizeof r->name, "relay%d", shard);
    core_buf_init(&r->body);
    core_buf_init(&r->arr1);
    core_buf_init(&r->arr2);
    r->dirty = core_map_new();
    r->sent = core_map_new();
    r->broken = core_map_new();
    for (int i = 0; i < SLOTS; i++)
        r->slots[i].relay = r;
    core_pg_pool_opts_t po = {
        .name = r->name,
        .conninfo = w->cfg->pg.shards[shard].conninfo,
        .size = 1,
        .query_timeout_ms = w->cfg->pg.query_timeout_ms,
        .connect_timeout_ms = w->cfg->pg.connect_timeout_ms,
        /* The relay's only writes are its watermarks, and a sweep waits for
         * its mark before the next: an fsync there delayed every event that
         * arrived meanwhile (post->deliver p99 ~58 ms at 100 posts/s). A
         * watermark lost in a crash only makes the relay publish again,
         * which the streams drop (Nats-Msg-Id) and every consumer ignores
         * (seq already held), so it need not wait for the disk. */
        .session_options = RG_PG_SESSION_OPTIONS " -c synchronous_commit=off",
        .listen = "meridian_outbox",
        .on_notify = on_notify,
        .notify_ud = r,
    };
    r->pool = core_pg_pool_new(&w->loop, &po);
    /* Static SQL on a pool just made: registering cannot fail. */
    core_pg_pool_prepare(r->pool, sql_lock, &r->st_lock);
    core_pg_pool_prepare(r->pool, sql_read, &r->st_read);
    core_pg_pool_prepare(r->pool, sql_mark, &r->st_mark);
    core_pg_pool_prepare(r->pool, sql_scan, &r->st_scan);
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
                                        "Outbox reads that found events to publish.", labels);
    r->m_replicated =
        core_metrics_counter("meridian_replication_published_total",
                             "Events published for another region allowed to hold them.", labels);
    return r;
}

static void maybe_free(rg_relay_t *r)
{
    if (!r->closing || !r->timer_closed || r->busy)
        return;
    for (int i = 0; i < SLOTS; i++)
        if (r->slots[i].used)
            return; /* its acks are answered when the NATS client closes */
    core_buf_free(&r->body);
    core_buf_free(&r->arr1);
    core_buf_free(&r->arr2);
    core_map_free(r->dirty, NULL);
    core_map_free(r->sent, NULL);
    core_map_free(r->broken, NULL);
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
