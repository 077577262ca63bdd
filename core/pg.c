#include "core/pg.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backoff.h"
#include "core/buf.h"
#include "core/core.h"
#include "core/log.h"
#include "core/metrics.h"

/* Connection states. BROKEN is a connection found dead inside a submitting
 * call: it is torn down from its timer on the next loop turn so that no
 * callback runs inside core_pg_query. */
enum { C_WAIT, C_CONNECTING, C_READY, C_BROKEN, C_CLOSED };
/* Request states. */
enum { R_FREE, R_BATCHING, R_QUEUED, R_INFLIGHT, R_DONE };
/* What the connection expects next from the server, in pipeline order. */
enum { IT_PREPARE, IT_QUERY, IT_SYNC };
/* Per-connection state of a registered statement. */
enum { ST_NONE, ST_SENT, ST_READY };

#define MAX_PARAMS 65535
#define FREE_REQS_MAX 4096
#define FREE_JOBS_MAX 1024
#define REQ_BUF_KEEP 16384 /* larger parameter buffers are released on recycle */

typedef struct core_pg_batch_s job_t;

struct core_pg_req_s {
    core_pg_req_t *next; /* within its job, or in the free list */
    job_t *job;
    core_pg_cb cb; /* NULL once cancelled */
    void *ud;
    PGresult *res;
    int err;
    int state;
    int stmt; /* registered statement, or -1 for ad hoc SQL */
    int nparams;
    bool binary;
    uint64_t start_ns;
    core_buf_t data;   /* SQL (ad hoc) then each parameter, NUL-terminated; reused */
    int *plen;         /* parameter lengths, -1 for NULL; reused */
    const char **pval; /* pointers into data, set right before sending */
    int pcap;
};

/* A job is one Sync group: a standalone query (one statement) or a batch. */
struct core_pg_batch_s {
    job_t *next, *prev; /* pool queue, connection in-flight list, or free list */
    core_pg_pool_t *pool;
    core_pg_req_t *first, *last;
    uint32_t n;
    uint64_t deadline; /* loop time, ms */
    bool batch;
    bool internal; /* health query: no callback, no metrics */
};

typedef struct {
    int kind;
    int stmt;
    core_pg_req_t *req;
    job_t *job;
} item_t;

typedef struct {
    core_pg_pool_t *pool;
    int idx;
    int state;
    PGconn *pg;
    uv_poll_t *poll; /* heap: a socket change needs a new handle before the old one closed */
    int poll_fd;
    int poll_events;
    uv_timer_t timer; /* backoff wait, connect timeout, deferred teardown */
    core_backoff_t backoff;
    job_t *jhead, *jtail; /* in flight, in pipeline order */
    uint32_t inflight;    /* statements */
    item_t *items;        /* ring of expected results */
    uint32_t icap, ihead, icount;
    uint8_t *stmt_state;
    uint64_t last_io;
    bool want_write;
    char errbuf[256];
} conn_t;

typedef struct {
    char *sql;
    const char *key; /* the caller's pointer: static SQL is found with one strcmp */
    char name[24];
} stmt_t;

struct core_pg_pool_s {
    uv_loop_t *loop;
    char *name;
    char *conninfo;
    char appname[64];
    uint32_t query_timeout_ms, connect_timeout_ms, max_queued, max_inflight;
    uint32_t ping_idle_ms, ping_timeout_ms, backoff_base_ms, backoff_cap_ms;

    conn_t *conns;
    int nconns;
    int nready;
    bool closing;
    bool down;             /* a connect failed or a connection was lost, and none is ready */
    bool logged_conn_fail; /* one warning per outage, the rest at debug */

    job_t *qhead, *qtail;
    size_t queued;   /* statements in the queue */
    size_t inflight; /* statements in flight over all connections */

    uv_timer_t tick; /* deadlines and health queries */
    uint64_t tick_due;

    int open_handles;
    int open_batches;

    core_pg_req_t *free_reqs;
    size_t nfree_reqs;
    job_t *free_jobs;
    size_t nfree_jobs;

    stmt_t *stmts;
    int nstmts, stmt_cap;
    int *ones; /* paramFormats for binary parameters */
    int ones_cap;

    core_metric_t m_queries, m_errors, m_timeouts, m_ready, m_duration, m_connects, m_queued;

    char *listen; /* LISTEN channel, or NULL */
    char *session_options;
    void (*on_notify)(const char *channel, const char *payload, void *ud);
    void *notify_ud;
};

static void dispatch(core_pg_pool_t *p);
static void tick_arm(core_pg_pool_t *p);
static void conn_start(conn_t *c);
static void conn_lost(conn_t *c, int err, const char *msg, bool server_fault);
static void on_poll(uv_poll_t *h, int status, int events);
static void on_conn_timer(uv_timer_t *t);
static void process_results(conn_t *c);
static void send_internal(conn_t *c, const char *sql);
static void drain_notifies(conn_t *c);

static const char *const MSG_TIMEOUT = "query timed out";
static const char *const MSG_CLOSED = "pool closed";
static const char *const MSG_ABORTED = "aborted: another statement of its batch failed";
static const char *const MSG_DOWN = "no connection to the database";
static const char *const MSG_TIMEOUT_DROP = "connection dropped after a query timeout";

/* ---- small helpers ---- */

static void set_err(conn_t *c, const char *msg)
{
    if (msg == c->errbuf)
        return;
    snprintf(c->errbuf, sizeof c->errbuf, "%s", msg && *msg ? msg : "unknown error");
    /* libpq messages end in a newline and may span lines: keep the first. */
    char *nl = strchr(c->errbuf, '\n');
    if (nl)
        *nl = '\0';
}

static char *quote(char *dst, size_t cap, const char *s)
{
    return core_log_quote(dst, cap, s, strlen(s));
}

static void maybe_free_pool(core_pg_pool_t *p);

static void on_handle_closed(uv_handle_t *h)
{
    core_pg_pool_t *p = h->data;
    if (h->type == UV_POLL) {
        conn_t *c = h->data;
        p = c->pool;
        free(h);
    }
    p->open_handles--;
    maybe_free_pool(p);
}

/* ---- requests and jobs (recycled: no malloc per query in steady state) ---- */

static core_pg_req_t *req_new(core_pg_pool_t *p)
{
    core_pg_req_t *r = p->free_reqs;
    if (r) {
        p->free_reqs = r->next;
        p->nfree_reqs--;
    } else {
        r = core_xcalloc(1, sizeof *r);
    }
    r->next = NULL;
    r->job = NULL;
    r->cb = NULL;
    r->ud = NULL;
    r->res = NULL;
    r->err = 0;
    r->stmt = -1;
    r->nparams = 0;
    r->binary = false;
    core_buf_reset(&r->data);
    return r;
}

static void req_destroy(core_pg_req_t *r)
{
    core_buf_free(&r->data);
    free(r->plen);
    free(r->pval);
    free(r);
}

static void req_recycle(core_pg_pool_t *p, core_pg_req_t *r)
{
    PQclear(r->res);
    r->res = NULL;
    r->state = R_FREE;
    if (p->nfree_reqs >= FREE_REQS_MAX) {
        req_destroy(r);
        return;
    }
    if (r->data.cap > REQ_BUF_KEEP)
        core_buf_free(&r->data);
    r->next = p->free_reqs;
    p->free_reqs = r;
    p->nfree_reqs++;
}

static job_t *job_new(core_pg_pool_t *p)
{
    job_t *j = p->free_jobs;
    if (j) {
        p->free_jobs = j->next;
        p->nfree_jobs--;
    } else {
        j = core_xmalloc(sizeof *j);
    }
    memset(j, 0, sizeof *j);
    j->pool = p;
    return j;
}

static void job_recycle(core_pg_pool_t *p, job_t *j)
{
    if (p->nfree_jobs >= FREE_JOBS_MAX) {
        free(j);
        return;
    }
    j->next = p->free_jobs;
    p->free_jobs = j;
    p->nfree_jobs++;
}

/* Copies SQL and parameters into the request's reusable buffer. */
static int req_fill(core_pg_pool_t *p, core_pg_req_t *r, int stmt, const char *sql, int nparams,
                    const char *const *values, const int *lengths)
{
    if (nparams < 0 || nparams > MAX_PARAMS || (nparams > 0 && !values))
        return UV_EINVAL;
    if (stmt >= 0 && stmt >= p->nstmts)
        return UV_EINVAL;
    if (stmt < 0 && !sql)
        return UV_EINVAL;
    if (lengths) {
        for (int i = 0; i < nparams; i++)
            if (values[i] && lengths[i] < 0)
                return UV_EINVAL;
    }
    r->stmt = stmt;
    r->nparams = nparams;
    r->binary = lengths != NULL;
    core_buf_reset(&r->data);
    if (stmt < 0)
        core_buf_append(&r->data, sql, strlen(sql) + 1);
    if (nparams > r->pcap) {
        r->plen = core_xrealloc(r->plen, sizeof *r->plen * (size_t)nparams);
        r->pval = core_xrealloc(r->pval, sizeof *r->pval * (size_t)nparams);
        r->pcap = nparams;
    }
    for (int i = 0; i < nparams; i++) {
        if (!values[i]) {
            r->plen[i] = -1;
            continue;
        }
        size_t len = lengths ? (size_t)lengths[i] : strlen(values[i]);
        if (len > INT32_MAX - 1)
            return UV_EINVAL;
        r->plen[i] = (int)len;
        core_buf_append(&r->data, values[i], len);
        core_buf_putc(&r->data, '\0');
    }
    return 0;
}

/* Points pval into the buffer; done right before sending because the buffer
 * may move while it is being filled. */
static void req_bind(core_pg_req_t *r)
{
    size_t off = r->stmt < 0 ? strlen(r->data.base) + 1 : 0;
    for (int i = 0; i < r->nparams; i++) {
        if (r->plen[i] < 0) {
            r->pval[i] = NULL;
            continue;
        }
        r->pval[i] = r->data.base + off;
        off += (size_t)r->plen[i] + 1;
    }
}

static const int *formats_for(core_pg_pool_t *p, const core_pg_req_t *r)
{
    if (!r->binary || r->nparams == 0)
        return NULL;
    if (r->nparams > p->ones_cap) {
        p->ones = core_xrealloc(p->ones, sizeof *p->ones * (size_t)r->nparams);
        for (int i = p->ones_cap; i < r->nparams; i++)
            p->ones[i] = 1;
        p->ones_cap = r->nparams;
    }
    return p->ones;
}

static void job_append(job_t *j, core_pg_req_t *r)
{
    r->job = j;
    r->next = NULL;
    if (j->last)
        j->last->next = r;
    else
        j->first = r;
    j->last = r;
    j->n++;
}

/* ---- the pool queue (doubly linked: a cancelled query leaves from anywhere) ---- */

static void queue_push(core_pg_pool_t *p, job_t *j)
{
    j->next = NULL;
    j->prev = p->qtail;
    if (p->qtail)
        p->qtail->next = j;
    else
        p->qhead = j;
    p->qtail = j;
    p->queued += j->n;
    core_metrics_add(p->m_queued, j->n);
}

static void queue_remove(core_pg_pool_t *p, job_t *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        p->qhead = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        p->qtail = j->prev;
    j->next = j->prev = NULL;
    p->queued -= j->n;
    core_metrics_add(p->m_queued, -(double)j->n);
}

/* ---- completion ---- */

static const char *errmsg_for(const core_pg_req_t *r, int err, const char *msg)
{
    if (err == 0)
        return NULL;
    if (err == CORE_PG_ESQL && r->res) {
        const char *m = PQresultErrorField(r->res, PG_DIAG_MESSAGE_PRIMARY);
        if (m)
            return m;
        return PQresultErrorMessage(r->res);
    }
    return msg ? msg : core_pg_strerror(err);
}

/* Runs one request's callback and recycles it. err overrides the request's
 * own outcome unless it is 0. */
static void req_finish(core_pg_pool_t *p, core_pg_req_t *r, int err, const char *msg)
{
    job_t *j = r->job;
    if (err) {
        PQclear(r->res);
        r->res = NULL;
        r->err = err;
    }
    if (!j->internal) {
        core_metrics_add(p->m_queries, 1);
        if (r->err)
            core_metrics_add(p->m_errors, 1);
        if (r->err == UV_ETIMEDOUT)
            core_metrics_add(p->m_timeouts, 1);
        core_metrics_observe(p->m_duration, (double)(uv_hrtime() - r->start_ns) / 1e9);
    }
    r->state = R_DONE;
    core_pg_cb cb = r->cb;
    if (cb) {
        const PGresult *res = r->err == 0 || r->err == CORE_PG_ESQL ? r->res : NULL;
        cb(res, r->err, errmsg_for(r, r->err, msg), r->ud);
    }
    req_recycle(p, r);
}

/* Fails every statement of a job with err (UV_ETIMEDOUT when its deadline
 * has passed) and recycles it. */
static void job_fail(core_pg_pool_t *p, job_t *j, int err, const char *msg, uint64_t now)
{
    if (j->deadline <= now && err != UV_ECANCELED) {
        err = UV_ETIMEDOUT;
        msg = MSG_TIMEOUT;
    }
    core_pg_req_t *r = j->first;
    while (r) {
        core_pg_req_t *next = r->next;
        req_finish(p, r, err, msg);
        r = next;
    }
    job_recycle(p, j);
}

static void list_fail(core_pg_pool_t *p, job_t *list, int err, const char *msg)
{
    uint64_t now = uv_now(p->loop);
    while (list) {
        job_t *next = list->next;
        job_fail(p, list, err, msg, now);
        list = next;
    }
}

/* Fails everything still queued (the pool has no connection to offer). */
static void queue_fail(core_pg_pool_t *p, int err, const char *msg)
{
    job_t *list = p->qhead;
    p->qhead = p->qtail = NULL;
    core_metrics_add(p->m_queued, -(double)p->queued);
    p->queued = 0;
    list_fail(p, list, err, msg);
}

/* The group's Sync was answered: it committed unless a statement failed. */
static void job_complete(core_pg_pool_t *p, job_t *j)
{
    bool failed = false;
    for (core_pg_req_t *r = j->first; r; r = r->next) {
        if (r->err == 0 && !r->res)
            r->err = UV_EPROTO; /* no result at all: libpq and we disagree */
        if (r->err != 0 && r->err != CORE_PG_EABORTED)
            failed = true;
    }
    core_pg_req_t *r = j->first;
    while (r) {
        core_pg_req_t *next = r->next;
        if (j->internal && r->err)
            core_log_debug("pg.ping.failed", "pool=%s err=%d", p->name, r->err);
        req_finish(p, r, failed && r->err == 0 ? CORE_PG_EABORTED : 0, MSG_ABORTED);
        r = next;
    }
    job_recycle(p, j);
}

/* ---- connection I/O ---- */

static void items_push(conn_t *c, int kind, int stmt, core_pg_req_t *r, job_t *j)
{
    if (c->icount == c->icap) {
        uint32_t ncap = c->icap ? c->icap * 2 : 64;
        item_t *n = core_xmalloc(sizeof *n * ncap);
        for (uint32_t i = 0; i < c->icount; i++)
            n[i] = c->items[(c->ihead + i) & (c->icap - 1)];
        free(c->items);
        c->items = n;
        c->icap = ncap;
        c->ihead = 0;
    }
    c->items[(c->ihead + c->icount) & (c->icap - 1)] =
        (item_t){.kind = kind, .stmt = stmt, .req = r, .job = j};
    c->icount++;
}

static item_t items_pop(conn_t *c)
{
    item_t it = c->items[c->ihead];
    c->ihead = (c->ihead + 1) & (c->icap - 1);
    c->icount--;
    return it;
}

static void poll_close(conn_t *c)
{
    if (!c->poll)
        return;
    uv_poll_stop(c->poll);
    c->poll->data = c;
    uv_close((uv_handle_t *)c->poll, on_handle_closed);
    c->pool->open_handles++;
    c->poll = NULL;
    c->poll_fd = -1;
    c->poll_events = 0;
}

/* Watches fd for events. rearm re-registers the socket with epoll even when
 * its number is unchanged: while connecting, libpq may close a socket and
 * open another that gets the same number. */
static int poll_set(conn_t *c, int fd, int events, bool rearm)
{
    if (c->poll && c->poll_fd != fd)
        poll_close(c);
    if (c->poll && rearm)
        uv_poll_stop(c->poll);
    else if (c->poll && c->poll_events == events)
        return 0;
    if (!c->poll) {
        c->poll = core_xmalloc(sizeof *c->poll);
        int rc = uv_poll_init(c->pool->loop, c->poll, fd);
        if (rc < 0) {
            free(c->poll);
            c->poll = NULL;
            return rc;
        }
        c->poll->data = c;
        c->poll_fd = fd;
    }
    c->poll_events = events;
    return uv_poll_start(c->poll, events, on_poll);
}

/* Closes the libpq connection and its poll handle (the poll stops first, while
 * the socket still exists). Resets per-session state. */
static void conn_teardown(conn_t *c)
{
    poll_close(c);
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    uv_timer_stop(&c->timer);
    c->icount = 0;
    c->ihead = 0;
    c->want_write = false;
    if (c->stmt_state)
        memset(c->stmt_state, ST_NONE, (size_t)c->pool->stmt_cap);
}

static void conn_schedule(conn_t *c)
{
    c->state = C_WAIT;
    uint32_t delay = core_backoff_next(&c->backoff);
    uv_timer_start(&c->timer, on_conn_timer, delay, 0);
}

/* Marks the pool down (no connection and a failure seen) and fails what waits. */
static void pool_maybe_down(core_pg_pool_t *p)
{
    if (p->nready > 0 || p->closing || p->down)
        return;
    p->down = true;
    core_log_warn("pg.pool.down", "pool=%s queued=%zu", p->name, p->queued);
    queue_fail(p, UV_ENOTCONN, MSG_DOWN);
}

static void connect_failed(conn_t *c, const char *msg)
{
    core_pg_pool_t *p = c->pool;
    set_err(c, msg);
    conn_teardown(c);
    char q[200];
    if (!p->logged_conn_fail) {
        p->logged_conn_fail = true;
        core_log_warn("pg.connect.failed", "pool=%s conn=%d reason=%s", p->name, c->idx,
                      quote(q, sizeof q, c->errbuf));
    } else {
        core_log_debug("pg.connect.failed", "pool=%s conn=%d attempt=%u reason=%s", p->name, c->idx,
                       c->backoff.attempt, quote(q, sizeof q, c->errbuf));
    }
    conn_schedule(c);
    pool_maybe_down(p);
}

/* A connection that was established is gone: everything in flight on it
 * fails (its outcome is unknown), and it reconnects after a backoff. */
static void conn_lost(conn_t *c, int err, const char *msg, bool server_fault)
{
    core_pg_pool_t *p = c->pool;
    assert(c->state == C_READY || c->state == C_BROKEN);
    set_err(c, msg);
    p->nready--;
    core_metrics_add(p->m_ready, -1);
    job_t *list = c->jhead;
    c->jhead = c->jtail = NULL;
    p->inflight -= c->inflight;
    c->inflight = 0;
    conn_teardown(c);
    char q[200];
    core_log_warn("pg.conn.lost", "pool=%s conn=%d ready=%d reason=%s", p->name, c->idx, p->nready,
                  quote(q, sizeof q, c->errbuf));
    conn_schedule(c);
    if (p->nready == 0)
        core_log_warn("pg.pool.unready", "pool=%s", p->name);
    /* c->errbuf may be rewritten by a reconnect started from a callback. */
    char why[sizeof c->errbuf];
    memcpy(why, c->errbuf, sizeof why);
    list_fail(p, list, err, err == UV_ECONNRESET ? why : msg);
    if (server_fault)
        pool_maybe_down(p);
}

/* Called inside a submitting call when libpq reports a dead connection:
 * defer the teardown so callbacks never run inside core_pg_query. */
static void conn_break(conn_t *c, const char *msg)
{
    if (c->state != C_READY)
        return;
    set_err(c, msg);
    c->state = C_BROKEN;
    uv_timer_start(&c->timer, on_conn_timer, 0, 0);
}

static void conn_ready(conn_t *c)
{
    core_pg_pool_t *p = c->pool;
    uv_timer_stop(&c->timer);
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    int rc = poll_set(c, PQsocket(c->pg), UV_READABLE, true);
    if (rc < 0) {
        connect_failed(c, uv_strerror(rc));
        return;
    }
    c->state = C_READY;
    c->last_io = uv_now(p->loop);
    core_backoff_reset(&c->backoff);
    p->nready++;
    core_metrics_add(p->m_ready, 1);
    core_log_debug("pg.conn.ready", "pool=%s conn=%d", p->name, c->idx);
    if (p->nready == 1) {
        p->down = false;
        p->logged_conn_fail = false;
        core_log_info("pg.pool.ready", "pool=%s", p->name);
        /* The server is back: the other connections need not wait out long
         * backoffs; a fresh short jittered delay still spreads them. */
        for (int i = 0; i < p->nconns; i++) {
            conn_t *o = &p->conns[i];
            if (o != c && o->state == C_WAIT && o->backoff.attempt > 1) {
                core_backoff_reset(&o->backoff);
                conn_schedule(o);
            }
        }
    }
    if (p->listen) {
        /* The channel name was checked to be an identifier at pool creation. */
        char sql[96];
        snprintf(sql, sizeof sql, "LISTEN %s", p->listen);
        send_internal(c, sql);
        if (c->state != C_READY)
            return;
    }
    tick_arm(p);
    dispatch(p);
}

static void connect_watch(conn_t *c, PostgresPollingStatusType st)
{
    int fd = PQsocket(c->pg);
    if (fd < 0) {
        connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    int rc = poll_set(c, fd, st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE, true);
    if (rc < 0)
        connect_failed(c, uv_strerror(rc));
}

static void connect_step(conn_t *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    if (st == PGRES_POLLING_OK)
        conn_ready(c);
    else if (st == PGRES_POLLING_FAILED)
        connect_failed(c, PQerrorMessage(c->pg));
    else
        connect_watch(c, st);
}

static void on_notice(void *arg, const PGresult *res)
{
    conn_t *c = arg;
    /* Notices can quote data: log only their severity and SQLSTATE. */
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    core_log_debug("pg.notice", "pool=%s conn=%d severity=%s sqlstate=%s", c->pool->name, c->idx,
                   sev ? sev : "?", core_pg_sqlstate(res));
}

static void conn_start(conn_t *c)
{
    core_pg_pool_t *p = c->pool;
    /* Defaults first: with expand_dbname the caller's conninfo overrides them. */
    const char *keys[] = {"keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "tcp_user_timeout",
                          "fallback_application_name",
                          "dbname",
                          p->session_options ? "options" : NULL,
                          NULL};
    const char *vals[] = {"1", "5", "2", "3", "10000", p->appname, p->conninfo, p->session_options,
                          NULL};
    core_metrics_add(p->m_connects, 1);
    c->pg = PQconnectStartParams(keys, vals, 1);
    if (!c->pg) {
        fprintf(stderr, "level=fatal msg=\"out of memory\" where=PQconnectStartParams\n");
        abort();
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    PQsetNoticeReceiver(c->pg, on_notice, c);
    c->state = C_CONNECTING;
    uv_timer_start(&c->timer, on_conn_timer, p->connect_timeout_ms, 0);
    /* libpq: start as if PQconnectPoll had returned PGRES_POLLING_WRITING. */
    connect_watch(c, PGRES_POLLING_WRITING);
}

static void on_conn_timer(uv_timer_t *t)
{
    conn_t *c = t->data;
    if (c->state == C_WAIT)
        conn_start(c);
    else if (c->state == C_CONNECTING)
        connect_failed(c, "connect timed out");
    else if (c->state == C_BROKEN)
        conn_lost(c, UV_ECONNRESET, c->errbuf, true);
    else if (c->state == C_READY)
        process_results(c);
}

/* libpq reads whatever the server sent while it waits to write, so results can
 * be buffered with no readable event to come: process them on the next turn. */
static void conn_kick(conn_t *c)
{
    if (c->state == C_READY && c->icount > 0 && !PQisBusy(c->pg))
        uv_timer_start(&c->timer, on_conn_timer, 0, 0);
}

/* Writes what libpq holds; watches for writability only while some is left. */
static int conn_flush(conn_t *c)
{
    int r = PQflush(c->pg);
    if (r < 0)
        return -1;
    bool want = r == 1;
    if (want != c->want_write) {
        c->want_write = want;
        int rc = poll_set(c, c->poll_fd, want ? UV_READABLE | UV_WRITABLE : UV_READABLE, false);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static void store_result(conn_t *c, const item_t *it, PGresult *res)
{
    core_pg_req_t *r = it->req;
    ExecStatusType st = PQresultStatus(res);
    if (it->kind == IT_PREPARE) {
        if (st == PGRES_COMMAND_OK) {
            c->stmt_state[it->stmt] = ST_READY;
        } else {
            c->stmt_state[it->stmt] = ST_NONE;
            if (st == PGRES_FATAL_ERROR && r->err == 0 && !r->res) {
                /* The statement's first use reports why its prepare failed. */
                r->res = res;
                r->err = CORE_PG_ESQL;
                return;
            }
        }
        PQclear(res);
        return;
    }
    if (r->res || r->err) {
        PQclear(res);
        return;
    }
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        r->res = res;
        break;
    case PGRES_PIPELINE_ABORTED:
        PQclear(res);
        r->err = CORE_PG_EABORTED;
        break;
    default:
        r->res = res;
        r->err = CORE_PG_ESQL;
        break;
    }
}

/* Reads every complete result libpq has buffered and completes groups at
 * their Sync. Stops as soon as a callback changed the connection. */
static void process_results(conn_t *c)
{
    core_pg_pool_t *p = c->pool;
    PGconn *pg = c->pg;
    int sync_nulls = 0;
    bool completed = false;
    while (c->icount > 0 && c->state == C_READY && c->pg == pg && !PQisBusy(pg)) {
        item_t head = c->items[c->ihead];
        PGresult *res = PQgetResult(pg);
        if (head.kind == IT_SYNC) {
            if (!res) {
                /* libpq is between groups; one more look, then wait for input. */
                if (++sync_nulls > 1)
                    break;
                continue;
            }
            sync_nulls = 0;
            if (PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
                /* An error after the last statement (at commit): the group failed. */
                core_pg_req_t *last = head.job->last;
                if (last->err == 0) {
                    PQclear(last->res);
                    last->res = res;
                    last->err = CORE_PG_ESQL;
                } else {
                    PQclear(res);
                }
                continue;
            }
            PQclear(res);
            items_pop(c);
            job_t *j = c->jhead;
            assert(j == head.job);
            c->jhead = j->next;
            if (!c->jhead)
                c->jtail = NULL;
            c->inflight -= j->n;
            p->inflight -= j->n;
            c->last_io = uv_now(p->loop);
            job_complete(p, j);
            completed = true;
            continue;
        }
        if (!res) {
            items_pop(c); /* this statement's results are complete */
            continue;
        }
        store_result(c, &head, res);
    }
    if (c->state == C_READY && c->pg == pg && PQstatus(pg) == CONNECTION_BAD)
        conn_lost(c, UV_ECONNRESET, PQerrorMessage(pg), true);
    /* Room was made on this connection: the queue moves on. */
    if (completed && p->qhead)
        dispatch(p);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    conn_t *c = h->data;
    if (c->poll != h)
        return;
    if (c->state == C_CONNECTING) {
        if (status < 0)
            connect_failed(c, uv_strerror(status));
        else
            connect_step(c);
        return;
    }
    if (c->state != C_READY)
        return;
    if (status < 0) {
        conn_lost(c, UV_ECONNRESET, uv_strerror(status), true);
        return;
    }
    if (events & UV_READABLE) {
        if (!PQconsumeInput(c->pg)) {
            conn_lost(c, UV_ECONNRESET, PQerrorMessage(c->pg), true);
            return;
        }
        process_results(c);
        if (c->state != C_READY)
            return;
        drain_notifies(c);
    }
    /* libpq: after reading, flush again; a full send buffer may have drained. */
    if (c->want_write || (events & UV_WRITABLE)) {
        if (conn_flush(c) < 0) {
            conn_lost(c, UV_ECONNRESET, PQerrorMessage(c->pg), true);
            return;
        }
        if (c->icount > 0 && !PQisBusy(c->pg))
            process_results(c);
    }
}

/* ---- sending ---- */

/* Sends one group on c. Returns false when the connection broke (the group
 * is then in c's in-flight list and fails with it). */
static bool send_job(conn_t *c, job_t *j)
{
    core_pg_pool_t *p = c->pool;
    PGconn *pg = c->pg;
    j->next = NULL;
    j->prev = c->jtail;
    if (c->jtail)
        c->jtail->next = j;
    else
        c->jhead = j;
    c->jtail = j;
    c->inflight += j->n;
    p->inflight += j->n;
    for (core_pg_req_t *r = j->first; r; r = r->next) {
        r->state = R_INFLIGHT;
        req_bind(r);
        const int *fmts = formats_for(p, r);
        if (r->stmt >= 0) {
            stmt_t *s = &p->stmts[r->stmt];
            if (c->stmt_state[r->stmt] == ST_NONE) {
                if (!PQsendPrepare(pg, s->name, s->sql, 0, NULL))
                    goto broken;
                items_push(c, IT_PREPARE, r->stmt, r, j);
                c->stmt_state[r->stmt] = ST_SENT;
            }
            if (!PQsendQueryPrepared(pg, s->name, r->nparams, r->pval, r->plen, fmts, 0))
                goto broken;
        } else {
            if (!PQsendQueryParams(pg, r->data.base, r->nparams, NULL, r->pval, r->plen, fmts, 0))
                goto broken;
        }
        items_push(c, IT_QUERY, r->stmt, r, j);
    }
    if (!PQpipelineSync(pg))
        goto broken;
    items_push(c, IT_SYNC, -1, NULL, j);
    c->last_io = uv_now(p->loop);
    return true;
broken:
    conn_break(c, PQerrorMessage(pg));
    return false;
}

static conn_t *pick_conn(core_pg_pool_t *p, uint32_t n)
{
    conn_t *best = NULL;
    for (int i = 0; i < p->nconns; i++) {
        conn_t *c = &p->conns[i];
        if (c->state != C_READY)
            continue;
        if (c->inflight > 0 && c->inflight + n > p->max_inflight)
            continue;
        if (!best || c->inflight < best->inflight)
            best = c;
    }
    return best;
}

/* Moves queued groups onto connections, oldest first. Never runs callbacks. */
static void dispatch(core_pg_pool_t *p)
{
    while (p->qhead && !p->closing) {
        job_t *j = p->qhead;
        conn_t *c = pick_conn(p, j->n);
        if (!c)
            break;
        queue_remove(p, j);
        if (send_job(c, j) && conn_flush(c) < 0)
            conn_break(c, PQerrorMessage(c->pg));
        conn_kick(c);
    }
}

/* ---- deadlines and health queries ---- */

/* Delivers the notifications libpq has read (call after PQconsumeInput). */
static void drain_notifies(conn_t *c)
{
    core_pg_pool_t *p = c->pool;
    PGnotify *n;
    while ((n = PQnotifies(c->pg)) != NULL) {
        if (p->on_notify && !p->closing)
            p->on_notify(n->relname, n->extra ? n->extra : "", p->notify_ud);
        PQfreemem(n);
    }
}

/* Sends an internal statement (health query, LISTEN) whose result nobody reads. */
static void send_internal(conn_t *c, const char *sql)
{
    core_pg_pool_t *p = c->pool;
    job_t *j = job_new(p);
    j->internal = true;
    j->deadline = uv_now(p->loop) + p->ping_timeout_ms;
    core_pg_req_t *r = req_new(p);
    r->start_ns = uv_hrtime();
    core_buf_append(&r->data, sql, strlen(sql) + 1);
    job_append(j, r);
    if (send_job(c, j) && conn_flush(c) < 0)
        conn_break(c, PQerrorMessage(c->pg));
    conn_kick(c);
}

static void send_ping(conn_t *c)
{
    core_pg_pool_t *p = c->pool;
    core_log_debug("pg.ping", "pool=%s conn=%d", p->name, c->idx);
    send_internal(c, "SELECT 1");
}

static void on_tick(uv_timer_t *t)
{
    core_pg_pool_t *p = t->data;
    uint64_t now = uv_now(p->loop);
    p->tick_due = 0;
    for (int i = 0; i < p->nconns && !p->closing; i++) {
        conn_t *c = &p->conns[i];
        if (c->state != C_READY || !c->jhead || c->jhead->deadline > now)
            continue;
        /* Answers may be sitting unread: a finished query is not a timeout. */
        if (!PQconsumeInput(c->pg)) {
            conn_lost(c, UV_ECONNRESET, PQerrorMessage(c->pg), true);
            continue;
        }
        process_results(c);
        if (c->state == C_READY)
            drain_notifies(c);
        if (c->state != C_READY || !c->jhead || c->jhead->deadline > now)
            continue;
        if (c->jhead->internal) {
            core_log_warn("pg.conn.unresponsive", "pool=%s conn=%d timeout_ms=%u", p->name, c->idx,
                          p->ping_timeout_ms);
            conn_lost(c, UV_ETIMEDOUT, "server did not answer a health query", true);
        } else {
            core_log_warn("pg.query.timeout", "pool=%s conn=%d inflight=%u timeout_ms=%u", p->name,
                          c->idx, c->inflight, p->query_timeout_ms);
            conn_lost(c, UV_ECONNRESET, MSG_TIMEOUT_DROP, false);
        }
    }
    while (p->qhead && p->qhead->deadline <= now && !p->closing) {
        job_t *j = p->qhead;
        queue_remove(p, j);
        job_fail(p, j, UV_ETIMEDOUT, MSG_TIMEOUT, now);
    }
    if (p->closing)
        return;
    for (int i = 0; i < p->nconns; i++) {
        conn_t *c = &p->conns[i];
        if (c->state == C_READY && !c->jhead && now >= c->last_io + p->ping_idle_ms)
            send_ping(c);
    }
    dispatch(p);
    tick_arm(p);
}

/* Arms the tick for the earliest deadline or health query due. */
static void tick_arm(core_pg_pool_t *p)
{
    if (p->closing)
        return;
    uint64_t due = UINT64_MAX;
    if (p->qhead)
        due = p->qhead->deadline;
    for (int i = 0; i < p->nconns; i++) {
        conn_t *c = &p->conns[i];
        if (c->state != C_READY)
            continue;
        /* In-flight groups are in submission order: the head expires first. */
        uint64_t d = c->jhead ? c->jhead->deadline : c->last_io + p->ping_idle_ms;
        due = CORE_MIN(due, d);
    }
    if (due == UINT64_MAX) {
        uv_timer_stop(&p->tick);
        p->tick_due = 0;
        return;
    }
    uint64_t now = uv_now(p->loop);
    uv_timer_start(&p->tick, on_tick, due > now ? due - now : 0, 0);
    p->tick_due = due;
}

/* ---- public API ---- */

static int admit(core_pg_pool_t *p, uint32_t n)
{
    if (p->closing)
        return UV_ECANCELED;
    if (p->down && p->nready == 0)
        return UV_ENOTCONN;
    if (p->queued + n > p->max_queued && !(p->queued == 0 && pick_conn(p, n)))
        return UV_EBUSY;
    return 0;
}

static void submit(core_pg_pool_t *p, job_t *j)
{
    uint64_t now = uv_now(p->loop);
    j->deadline = now + p->query_timeout_ms;
    uint64_t t = uv_hrtime();
    for (core_pg_req_t *r = j->first; r; r = r->next) {
        r->state = R_QUEUED;
        r->start_ns = t;
    }
    queue_push(p, j);
    dispatch(p);
    if (!uv_is_active((uv_handle_t *)&p->tick) || j->deadline < p->tick_due)
        tick_arm(p);
}

static int query(core_pg_pool_t *p, int stmt, const char *sql, int nparams,
                 const char *const *values, const int *lengths, core_pg_cb cb, void *ud,
                 core_pg_req_t **out)
{
    if (!p)
        return UV_EINVAL;
    int rc = admit(p, 1);
    if (rc < 0)
        return rc;
    core_pg_req_t *r = req_new(p);
    rc = req_fill(p, r, stmt, sql, nparams, values, lengths);
    if (rc < 0) {
        req_recycle(p, r);
        return rc;
    }
    r->cb = cb;
    r->ud = ud;
    job_t *j = job_new(p);
    job_append(j, r);
    if (out)
        *out = r;
    submit(p, j);
    return 0;
}

int core_pg_query(core_pg_pool_t *p, const char *sql, int nparams, const char *const *values,
                  const int *lengths, core_pg_cb cb, void *ud, core_pg_req_t **out_handle)
{
    if (!sql)
        return UV_EINVAL;
    return query(p, -1, sql, nparams, values, lengths, cb, ud, out_handle);
}

int core_pg_query_prepared(core_pg_pool_t *p, core_pg_stmt_t stmt, int nparams,
                           const char *const *values, const int *lengths, core_pg_cb cb, void *ud,
                           core_pg_req_t **out_handle)
{
    if (stmt < 0)
        return UV_EINVAL;
    return query(p, stmt, NULL, nparams, values, lengths, cb, ud, out_handle);
}

int core_pg_query_static(core_pg_pool_t *p, const char *sql, int nparams, const char *const *values,
                         const int *lengths, core_pg_cb cb, void *ud, core_pg_req_t **out_handle)
{
    core_pg_stmt_t stmt;
    int rc = core_pg_pool_prepare(p, sql, &stmt);
    return rc ? rc : core_pg_query_prepared(p, stmt, nparams, values, lengths, cb, ud, out_handle);
}

core_pg_batch_t *core_pg_batch_begin(core_pg_pool_t *p)
{
    job_t *j = job_new(p);
    j->batch = true;
    p->open_batches++;
    return j;
}

static int batch_add(job_t *j, int stmt, const char *sql, int nparams, const char *const *values,
                     const int *lengths, core_pg_cb cb, void *ud, core_pg_req_t **out)
{
    core_pg_pool_t *p = j->pool;
    core_pg_req_t *r = req_new(p);
    int rc = req_fill(p, r, stmt, sql, nparams, values, lengths);
    if (rc < 0) {
        req_recycle(p, r);
        return rc;
    }
    r->cb = cb;
    r->ud = ud;
    r->state = R_BATCHING;
    job_append(j, r);
    if (out)
        *out = r;
    return 0;
}

int core_pg_batch_add(core_pg_batch_t *b, const char *sql, int nparams, const char *const *values,
                      const int *lengths, core_pg_cb cb, void *ud, core_pg_req_t **out_handle)
{
    if (!b || !sql)
        return UV_EINVAL;
    return batch_add(b, -1, sql, nparams, values, lengths, cb, ud, out_handle);
}

int core_pg_batch_add_prepared(core_pg_batch_t *b, core_pg_stmt_t stmt, int nparams,
                               const char *const *values, const int *lengths, core_pg_cb cb,
                               void *ud, core_pg_req_t **out_handle)
{
    if (!b || stmt < 0)
        return UV_EINVAL;
    return batch_add(b, stmt, NULL, nparams, values, lengths, cb, ud, out_handle);
}

size_t core_pg_batch_len(const core_pg_batch_t *b)
{
    return b ? b->n : 0;
}

void core_pg_batch_discard(core_pg_batch_t *b)
{
    if (!b)
        return;
    core_pg_pool_t *p = b->pool;
    core_pg_req_t *r = b->first;
    while (r) {
        core_pg_req_t *next = r->next;
        req_recycle(p, r);
        r = next;
    }
    job_recycle(p, b);
    p->open_batches--;
    maybe_free_pool(p);
}

int core_pg_batch_commit(core_pg_batch_t *b)
{
    if (!b)
        return UV_EINVAL;
    core_pg_pool_t *p = b->pool;
    int rc = b->n == 0 ? UV_EINVAL : admit(p, b->n);
    if (rc < 0) {
        core_pg_batch_discard(b);
        return rc;
    }
    p->open_batches--;
    submit(p, b);
    return 0;
}

void core_pg_cancel(core_pg_req_t *r)
{
    if (!r || r->state == R_FREE || r->state == R_DONE)
        return;
    job_t *j = r->job;
    if (r->state == R_QUEUED && !j->batch) {
        core_pg_pool_t *p = j->pool;
        queue_remove(p, j);
        req_recycle(p, r);
        job_recycle(p, j);
        return;
    }
    r->cb = NULL;
}

int core_pg_pool_prepare(core_pg_pool_t *p, const char *sql, core_pg_stmt_t *out)
{
    if (!p || !sql || !out || p->closing)
        return UV_EINVAL;
    for (int i = 0; i < p->nstmts; i++) {
        if (p->stmts[i].key == sql && strcmp(p->stmts[i].sql, sql) == 0) {
            *out = i;
            return 0;
        }
    }
    for (int i = 0; i < p->nstmts; i++) {
        if (strcmp(p->stmts[i].sql, sql) == 0) {
            *out = i;
            return 0;
        }
    }
    if (p->nstmts == p->stmt_cap) {
        int ncap = p->stmt_cap ? p->stmt_cap * 2 : 8;
        p->stmts = core_xrealloc(p->stmts, sizeof *p->stmts * (size_t)ncap);
        for (int i = 0; i < p->nconns; i++) {
            conn_t *c = &p->conns[i];
            c->stmt_state = core_xrealloc(c->stmt_state, (size_t)ncap);
            memset(c->stmt_state + p->stmt_cap, ST_NONE, (size_t)(ncap - p->stmt_cap));
        }
        p->stmt_cap = ncap;
    }
    stmt_t *s = &p->stmts[p->nstmts];
    s->sql = core_xstrdup(sql);
    s->key = sql;
    snprintf(s->name, sizeof s->name, "meridian_%d", p->nstmts);
    *out = p->nstmts++;
    return 0;
}

core_pg_pool_t *core_pg_pool_new(uv_loop_t *loop, const core_pg_pool_opts_t *o)
{
    if (!loop || !o || !o->conninfo)
        return NULL;
    core_pg_pool_t *p = core_xcalloc(1, sizeof *p);
    p->loop = loop;
    p->name = core_xstrdup(o->name && *o->name ? o->name : "pg");
    p->conninfo = core_xstrdup(o->conninfo);
    snprintf(p->appname, sizeof p->appname, "meridian-%s", p->name);
    p->nconns = o->size > 0 ? CORE_MIN(o->size, 256) : 4;
    p->query_timeout_ms = o->query_timeout_ms ? o->query_timeout_ms : 5000;
    p->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 3000;
    p->max_queued = o->max_queued ? o->max_queued : 10000;
    p->max_inflight = o->max_inflight ? o->max_inflight : 256;
    p->ping_idle_ms = o->ping_idle_ms ? o->ping_idle_ms : 2000;
    p->ping_timeout_ms =
        o->ping_timeout_ms ? o->ping_timeout_ms : CORE_MIN(2000u, p->query_timeout_ms);
    p->backoff_base_ms = o->backoff_base_ms ? o->backoff_base_ms : 100;
    p->backoff_cap_ms = o->backoff_cap_ms ? o->backoff_cap_ms : 5000;
    if (o->session_options)
        p->session_options = core_xstrdup(o->session_options);
    if (o->listen) {
        /* Sent as SQL text: only plain identifiers are accepted. */
        size_t n = strspn(o->listen, "abcdefghijklmnopqrstuvwxyz_0123456789");
        if (n == 0 || n > 63 || o->listen[n] != '\0') {
            free(p->name);
            free(p->conninfo);
            free(p);
            return NULL;
        }
        p->listen = core_xstrdup(o->listen);
        p->on_notify = o->on_notify;
        p->notify_ud = o->notify_ud;
    }

    char labels[128];
    snprintf(labels, sizeof labels, "shard=\"%s\"", p->name);
    p->m_queries = core_metrics_counter("meridian_pg_queries_total",
                                        "PostgreSQL statements completed.", labels);
    p->m_errors = core_metrics_counter("meridian_pg_errors_total",
                                       "PostgreSQL statements that failed.", labels);
    p->m_timeouts = core_metrics_counter("meridian_pg_timeouts_total",
                                         "PostgreSQL statements that timed out.", labels);
    p->m_connects = core_metrics_counter("meridian_pg_connect_attempts_total",
                                         "PostgreSQL connection attempts.", labels);
    p->m_ready = core_metrics_gauge("meridian_pg_connections_ready",
                                    "PostgreSQL connections established.", labels);
    p->m_queued = core_metrics_gauge("meridian_pg_queued",
                                     "PostgreSQL statements waiting for a connection.", labels);
    p->m_duration = core_metrics_histogram(
        "meridian_pg_query_duration_seconds", "PostgreSQL statement time, submission to answer.",
        labels, core_metrics_latency_bounds, core_metrics_latency_nbounds);

    uv_timer_init(loop, &p->tick);
    p->tick.data = p;
    p->open_handles = 1;
    p->conns = core_xcalloc((size_t)p->nconns, sizeof *p->conns);
    for (int i = 0; i < p->nconns; i++) {
        conn_t *c = &p->conns[i];
        c->pool = p;
        c->idx = i;
        c->poll_fd = -1;
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        p->open_handles++;
        core_backoff_init(&c->backoff, p->backoff_base_ms, p->backoff_cap_ms);
        conn_schedule(c);
    }
    return p;
}

static void on_conn_timer_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    core_pg_pool_t *p = c->pool;
    p->open_handles--;
    maybe_free_pool(p);
}

void core_pg_pool_close(core_pg_pool_t *p)
{
    if (!p || p->closing)
        return;
    p->closing = true;
    job_t *list = NULL, **tail = &list;
    for (int i = 0; i < p->nconns; i++) {
        conn_t *c = &p->conns[i];
        if (c->state == C_READY || c->state == C_BROKEN) {
            p->nready--;
            core_metrics_add(p->m_ready, -1);
        }
        *tail = c->jhead;
        if (c->jtail)
            tail = &c->jtail->next;
        c->jhead = c->jtail = NULL;
        c->inflight = 0;
        conn_teardown(c);
        c->state = C_CLOSED;
        uv_close((uv_handle_t *)&c->timer, on_conn_timer_closed);
    }
    p->inflight = 0;
    *tail = p->qhead;
    p->qhead = p->qtail = NULL;
    core_metrics_add(p->m_queued, -(double)p->queued);
    p->queued = 0;
    uv_close((uv_handle_t *)&p->tick, on_handle_closed);
    core_log_info("pg.pool.closed", "pool=%s", p->name);
    list_fail(p, list, UV_ECANCELED, MSG_CLOSED);
}

static void maybe_free_pool(core_pg_pool_t *p)
{
    if (!p->closing || p->open_handles > 0 || p->open_batches > 0)
        return;
    for (int i = 0; i < p->nconns; i++) {
        free(p->conns[i].items);
        free(p->conns[i].stmt_state);
    }
    free(p->conns);
    while (p->free_reqs) {
        core_pg_req_t *r = p->free_reqs;
        p->free_reqs = r->next;
        req_destroy(r);
    }
    while (p->free_jobs) {
        job_t *j = p->free_jobs;
        p->free_jobs = j->next;
        free(j);
    }
    for (int i = 0; i < p->nstmts; i++)
        free(p->stmts[i].sql);
    free(p->stmts);
    free(p->ones);
    free(p->name);
    free(p->conninfo);
    free(p->listen);
    free(p->session_options);
    free(p);
}

bool core_pg_pool_ready(const core_pg_pool_t *p)
{
    return p && !p->closing && p->nready > 0;
}

size_t core_pg_pool_pending(const core_pg_pool_t *p)
{
    return p ? p->queued + p->inflight : 0;
}

const char *core_pg_pool_name(const core_pg_pool_t *p)
{
    return p ? p->name : "";
}

const char *core_pg_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case CORE_PG_ESQL:
        return "statement failed";
    case CORE_PG_EABORTED:
        return MSG_ABORTED;
    case UV_ETIMEDOUT:
        return MSG_TIMEOUT;
    case UV_ECONNRESET:
        return "connection lost; outcome unknown";
    case UV_ENOTCONN:
        return MSG_DOWN;
    case UV_ECANCELED:
        return MSG_CLOSED;
    case UV_EBUSY:
        return "too many queued queries";
    case UV_EINVAL:
        return "invalid argument";
    default:
        return uv_strerror(err);
    }
}

const char *core_pg_sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

const char *core_pg_errcode(const PGresult *res, int err)
{
    const char *s = core_pg_sqlstate(res);
    return *s ? s : core_pg_strerror(err);
}
