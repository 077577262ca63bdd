#include "core/nats.h"

#include <assert.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backoff.h"
#include "core/core.h"
#include "core/log.h"
#include "core/mbox.h"
#include "core/metrics.h"

/* A subscription whose loop falls this far behind drops messages (and counts
 * them) rather than growing without bound. */
#define SUB_MAX_PENDING 65536u
/* Messages delivered per mailbox turn, so one busy subscription cannot hold
 * the loop. */
#define SUB_BATCH 256u
#define REQ_BUCKETS 64u
/* Server pings: a peer that vanished without a FIN is noticed within ~3 of these. */
#define PING_INTERVAL_MS 10000

enum { SUB_PENDING, SUB_STARTING, SUB_ACTIVE, SUB_STOPPING, SUB_FAILED };
enum { JOB_CONNECT, JOB_SUB, JOB_UNSUB, JOB_JS, JOB_FLUSH, JOB_CLOSE, JOB_DESTROY };

typedef struct pub_s pub_t;
typedef struct req_s req_t;

struct core_nats_sub_s {
    core_nats_t *nc;
    char *subject;
    char *queue;
    core_nats_msg_cb cb;
    void *ud;
    core_nats_sub_ready_cb on_ready;
    natsSubscription *ns;
    int state;
    bool cancelled;    /* no more user callbacks */
    bool internal;     /* the request inbox */
    bool orphan;       /* cnats may call it at any time: never freed */
    bool done_pending; /* cnats is done, but msg_item is still queued */
    core_nats_sub_t *prev, *next;
    /* Filled by cnats's delivery thread, drained by the loop: a ring of
     * natsMsg pointers, so a message costs no allocation of ours. */
    uv_mutex_t mu;
    natsMsg **ring;
    uint32_t cap, head, count;
    bool posted;          /* msg_item is queued or running */
    uint64_t dropped;     /* total, for the log */
    uint32_t dropped_new; /* not yet counted in the metric (the loop owns metrics) */
    core_mbox_item_t msg_item;
    core_mbox_item_t done_item; /* cnats will not call back any more */
};

struct pub_s {
    core_mbox_item_t item;
    core_nats_t *nc;
    natsMsg *msg; /* table key; owned by cnats while in flight */
    pub_t *hnext;
    core_nats_js_ack_cb cb;
    void *ud;
    int err;
    natsStatus status; /* cnats's reason, for the log */
    int js_code;       /* JetStream's error code, 0 if none */
    uint64_t seq;
    bool duplicate;
};

struct req_s {
    uint64_t id;
    uint64_t deadline;
    req_t *prev, *next; /* by deadline */
    req_t *hnext;       /* bucket by id */
    core_nats_reply_cb cb;
    void *ud;
};

typedef struct {
    uv_work_t work;
    core_nats_t *nc;
    int kind;
    natsStatus status;
    natsConnection *conn; /* JOB_CONNECT results, handed over in the after-work */
    jsCtx *js;
    core_nats_sub_t *sub;
    natsSubscription *ns;
    bool orphan;            /* JOB_SUB: cnats may still call into the record */
    natsSubscription **nss; /* JOB_CLOSE: subscriptions to release */
    size_t nns;
    void (*js_work)(jsCtx *js, void *ud);
    void (*js_done)(void *ud);
    void *ud;
} job_t;

struct core_nats_s {
    uv_loop_t *loop;
    char *url;
    char *log_url; /* url without user:password@ */
    char *name;
    char *js_domain;
    unsigned connect_timeout_ms, write_deadline_ms, backoff_base_ms, backoff_cap_ms;
    unsigned js_api_timeout_ms, js_ack_timeout_ms, js_max_inflight;
    core_nats_state_cb on_state;
    void *ud;

    natsOptions *opts;
    natsConnection *conn; /* set on the loop once the first connect attempt returned */
    jsCtx *js;
    char *inbox; /* "_INBOX.<nuid>": replies to our requests */
    core_nats_sub_t *inbox_sub;

    core_mbox_t mbox;
    uv_timer_t req_timer;
    int handles;

    /* Written by cnats threads. link = (event count << 1) | up: the connect
     * job can tell whether an event raced it. */
    _Atomic uint64_t link;
    _Atomic uint32_t reconnects;
    _Atomic bool cn_closed;

    /* Guards posting to mbox, and the coalesced state/delay/error items. */
    uv_mutex_t post_mu;
    bool post_open;
    core_mbox_item_t state_item, delay_item, err_item, free_item;
    bool state_posted, delay_posted, err_posted;
    int delay_attempt;
    uint32_t delay_ms;
    natsStatus err_status;
    uint32_t err_count;

    /* Loop-only state. */
    bool ready;
    uint32_t reconnects_seen;
    bool closed_seen;
    bool connecting, freeing, close_queued, close_done, destroy_queued, destroy_done, finished;
    bool flushing, flush_again; /* core_nats_flush: a job is out; another is due after it */
    int sub_jobs, js_jobs, cnats_subs;
    core_nats_sub_t *subs;

    req_t *req_head, *req_tail;
    req_t *req_buckets[REQ_BUCKETS];
    uint64_t next_req_id;

    /* JetStream publishes in flight, keyed by natsMsg pointer: the ack
     * handler runs on a cnats thread and only gets the message back. */
    uv_mutex_t pub_mu;
    bool pub_shutting;
    pub_t **pub_table;
    size_t pub_mask;
    size_t inflight;
    bool js_used;    /* an async publish was accepted */
    pub_t *pub_free; /* recycled records, linked through hnext */

    core_metric_t m_connected, m_reconnects, m_published, m_received, m_dropped;
    core_metric_t m_js_ok, m_js_failed, m_requests;
};

static void maybe_finish(core_nats_t *nc);
static void queue_job(core_nats_t *nc, job_t *job);
static void start_sub(core_nats_sub_t *sub);
static void on_req_timer(uv_timer_t *t);

/* ---- pure helpers ---- */

uint32_t core_nats_backoff_delay(uint32_t base_ms, uint32_t cap_ms, int attempts)
{
    core_backoff_t b;
    core_backoff_init(&b, base_ms, cap_ms);
    b.attempt = attempts > 1 ? (uint32_t)(attempts - 1) : 0;
    return core_backoff_next(&b);
}

bool core_nats_subject_valid(const char *s, bool wildcards)
{
    if (!s || !*s)
        return false;
    const char *tok = s;
    for (const char *p = s;; p++) {
        if (*p == '.' || *p == '\0') {
            size_t n = (size_t)(p - tok);
            if (n == 0)
                return false;
            bool last = *p == '\0';
            for (const char *q = tok; q < p; q++) {
                unsigned char c = (unsigned char)*q;
                if (c <= ' ' || c == 0x7f)
                    return false;
                if ((c == '*' || c == '>') && (!wildcards || n != 1 || (c == '>' && !last)))
                    return false;
            }
            if (last)
                return true;
            tok = p + 1;
        }
    }
}

static int map_status(natsStatus s)
{
    switch (s) {
    case NATS_OK:
        return 0;
    case NATS_TIMEOUT:
        return UV_ETIMEDOUT;
    case NATS_NO_RESPONDERS:
        return UV_EHOSTUNREACH;
    case NATS_CONNECTION_CLOSED:
        return UV_ECANCELED;
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
        return UV_ENOTCONN;
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
        return UV_EINVAL;
    default:
        return UV_EIO;
    }
}

/* ---- handing events to the loop ---- */

static void post(core_nats_t *nc, core_mbox_item_t *it)
{
    uv_mutex_lock(&nc->post_mu);
    if (nc->post_open)
        core_mbox_post(&nc->mbox, it);
    uv_mutex_unlock(&nc->post_mu);
}

/* Posts a coalescing item once: further events update the fields it reads. */
static void post_once(core_nats_t *nc, core_mbox_item_t *it, bool *posted)
{
    uv_mutex_lock(&nc->post_mu);
    if (!*posted && nc->post_open) {
        *posted = true;
        core_mbox_post(&nc->mbox, it);
    }
    uv_mutex_unlock(&nc->post_mu);
}

static void set_link(core_nats_t *nc, bool up)
{
    uint64_t old = atomic_load(&nc->link);
    while (!atomic_compare_exchange_weak(&nc->link, &old, (((old >> 1) + 1) << 1) | (up ? 1u : 0u)))
        ;
}

static bool link_up(const core_nats_t *nc)
{
    return atomic_load(&((core_nats_t *)nc)->link) & 1u;
}

/* cnats threads: connection events. */

static void on_nats_connected(natsConnection *c, void *closure)
{
    core_nats_t *nc = closure;
    set_link(nc, true);
    post_once(nc, &nc->state_item, &nc->state_posted);
}

static void on_nats_disconnected(natsConnection *c, void *closure)
{
    core_nats_t *nc = closure;
    set_link(nc, false);
    post_once(nc, &nc->state_item, &nc->state_posted);
}

static void on_nats_reconnected(natsConnection *c, void *closure)
{
    core_nats_t *nc = closure;
    atomic_fetch_add(&nc->reconnects, 1);
    set_link(nc, true);
    post_once(nc, &nc->state_item, &nc->state_posted);
}

static void on_nats_closed(natsConnection *c, void *closure)
{
    core_nats_t *nc = closure;
    set_link(nc, false);
    atomic_store(&nc->cn_closed, true);
    post_once(nc, &nc->state_item, &nc->state_posted);
}

static void on_nats_error(natsConnection *c, natsSubscription *s, natsStatus err, void *closure)
{
    core_nats_t *nc = closure;
    uv_mutex_lock(&nc->post_mu);
    nc->err_status = err;
    nc->err_count++;
    uv_mutex_unlock(&nc->post_mu);
    post_once(nc, &nc->err_item, &nc->err_posted);
}

/* Runs on cnats's reconnect thread before every attempt once the link is down
 * (the first connect's retries included). */
static int64_t on_nats_reconnect_delay(natsConnection *c, int attempts, void *closure)
{
    core_nats_t *nc = closure;
    /* Down from here on: publishers stop taking the connection mutex, which
     * the reconnect thread holds across each connect attempt. */
    if (link_up(nc))
        set_link(nc, false);
    uint32_t d = core_nats_backoff_delay(nc->backoff_base_ms, nc->backoff_cap_ms, attempts);
    uv_mutex_lock(&nc->post_mu);
    nc->delay_attempt = attempts;
    nc->delay_ms = d;
    uv_mutex_unlock(&nc->post_mu);
    post_once(nc, &nc->delay_item, &nc->delay_posted);
    return d;
}

/* Loop: the items above. */

static void set_ready(core_nats_t *nc, bool up)
{
    nc->ready = up;
    core_metrics_set(nc->m_connected, up ? 1 : 0);
    if (up)
        core_log_info("nats.connected", "name=%s url=%s", nc->name, nc->log_url);
    else
        core_log_warn("nats.disconnected", "name=%s url=%s", nc->name, nc->log_url);
    if (nc->on_state && !nc->freeing)
        nc->on_state(nc, up, nc->ud);
}

/* Ready means requests work too: the link is up and our reply inbox is
 * subscribed (until then a request is refused ENOTCONN; right after a first
 * connect, under load, a caller that had waited for ready got that). */
static bool usable(const core_nats_t *nc)
{
    return link_up(nc) && (!nc->inbox_sub || nc->inbox_sub->state == SUB_ACTIVE);
}

static void update_state(core_nats_t *nc)
{
    bool up = usable(nc);
    uint32_t rc = atomic_load(&nc->reconnects);
    uint32_t delta = rc - nc->reconnects_seen;
    nc->reconnects_seen = rc;
    core_metrics_add(nc->m_reconnects, delta);
    if (nc->freeing)
        return;
    if (up != nc->ready) {
        set_ready(nc, up);
    } else if (up && delta > 0) {
        /* Went down and came back between two looks: report both. */
        set_ready(nc, false);
        if (!nc->freeing)
            set_ready(nc, true);
    }
}

static void on_state_item(core_mbox_item_t *it)
{
    core_nats_t *nc = CORE_CONTAINER_OF(it, core_nats_t, state_item);
    uv_mutex_lock(&nc->post_mu);
    nc->state_posted = false;
    uv_mutex_unlock(&nc->post_mu);
    update_state(nc);
    if (atomic_load(&nc->cn_closed) && !nc->closed_seen) {
        nc->closed_seen = true;
        if (!nc->freeing)
            core_log_error("nats.closed", "name=%s", nc->name);
        maybe_finish(nc);
    }
}

static void on_delay_item(core_mbox_item_t *it)
{
    core_nats_t *nc = CORE_CONTAINER_OF(it, core_nats_t, delay_item);
    uv_mutex_lock(&nc->post_mu);
    nc->delay_posted = false;
    int attempt = nc->delay_attempt;
    uint32_t d = nc->delay_ms;
    uv_mutex_unlock(&nc->post_mu);
    if (!nc->freeing)
        core_log_info("nats.reconnect_wait", "name=%s url=%s attempt=%d delay_ms=%" PRIu32,
                      nc->name, nc->log_url, attempt, d);
}

static void on_err_item(core_mbox_item_t *it)
{
    core_nats_t *nc = CORE_CONTAINER_OF(it, core_nats_t, err_item);
    uv_mutex_lock(&nc->post_mu);
    nc->err_posted = false;
    natsStatus s = nc->err_status;
    uint32_t n = nc->err_count;
    nc->err_count = 0;
    uv_mutex_unlock(&nc->post_mu);
    core_log_warn("nats.async_error", "name=%s status=\"%s\" count=%" PRIu32, nc->name,
                  natsStatus_GetText(s), n);
}

/* ---- subscriptions ---- */

static void sub_free(core_nats_sub_t *sub)
{
    core_nats_t *nc = sub->nc;
    if (sub->prev)
        sub->prev->next = sub->next;
    else if (nc->subs == sub)
        nc->subs = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    if (nc->inbox_sub == sub)
        nc->inbox_sub = NULL;
    for (uint32_t i = 0; i < sub->count; i++)
        natsMsg_Destroy(sub->ring[(sub->head + i) & (sub->cap - 1)]);
    if (sub->dropped)
        core_log_warn("nats.sub_dropped", "name=%s subject=%s dropped=%" PRIu64, nc->name,
                      sub->subject, sub->dropped);
    free(sub->ring);
    uv_mutex_destroy(&sub->mu);
    free(sub->subject);
    free(sub->queue);
    free(sub);
}

/* cnats delivery thread. */
static void on_nats_msg(natsConnection *c, natsSubscription *s, natsMsg *m, void *closure)
{
    core_nats_sub_t *sub = closure;
    uv_mutex_lock(&sub->mu);
    if (sub->count == SUB_MAX_PENDING) {
        sub->dropped++;
        sub->dropped_new++;
        uv_mutex_unlock(&sub->mu);
        natsMsg_Destroy(m);
        return; /* a full ring means msg_item is queued: it counts these */
    }
    if (sub->count == sub->cap) {
        /* Grow and unwrap: the ring's capacity stays a power of two. */
        uint32_t ncap = sub->cap ? sub->cap * 2 : 16;
        natsMsg **r = core_xmalloc(sizeof *r * ncap);
        for (uint32_t i = 0; i < sub->count; i++)
            r[i] = sub->ring[(sub->head + i) & (sub->cap - 1)];
        free(sub->ring);
        sub->ring = r;
        sub->cap = ncap;
        sub->head = 0;
    }
    sub->ring[(sub->head + sub->count) & (sub->cap - 1)] = m;
    sub->count++;
    bool need = !sub->posted;
    sub->posted = true;
    uv_mutex_unlock(&sub->mu);
    if (need)
        post(sub->nc, &sub->msg_item);
}

/* cnats delivery thread: the handler has returned for the last time. */
static void on_nats_sub_complete(void *closure)
{
    core_nats_sub_t *sub = closure;
    post(sub->nc, &sub->done_item);
}

static void deliver_reply(core_nats_t *nc, natsMsg *m);

/* cnats will not call into sub again and no item of its is queued. */
static void sub_complete(core_nats_sub_t *sub)
{
    core_nats_t *nc = sub->nc;
    nc->cnats_subs--;
    sub_free(sub);
    maybe_finish(nc);
}

static void on_sub_msg_item(core_mbox_item_t *it)
{
    core_nats_sub_t *sub = CORE_CONTAINER_OF(it, core_nats_sub_t, msg_item);
    core_nats_t *nc = sub->nc;
    for (uint32_t n = 0; n < SUB_BATCH; n++) {
        uv_mutex_lock(&sub->mu);
        if (sub->count == 0) {
            sub->posted = false;
            uv_mutex_unlock(&sub->mu);
            if (sub->done_pending)
                sub_complete(sub);
            return;
        }
        natsMsg *m = sub->ring[sub->head];
        sub->head = (sub->head + 1) & (sub->cap - 1);
        sub->count--;
        uint32_t dropped = sub->dropped_new;
        sub->dropped_new = 0;
        uv_mutex_unlock(&sub->mu);
        if (dropped)
            core_metrics_add(nc->m_dropped, dropped);
        if (!sub->cancelled && !nc->freeing) {
            core_metrics_add(nc->m_received, 1);
            if (sub->internal) {
                deliver_reply(nc, m);
            } else {
                core_nats_msg_t msg = {
                    .subject = natsMsg_GetSubject(m),
                    .reply = natsMsg_GetReply(m),
                    .data = natsMsg_GetData(m),
                    .len = (size_t)natsMsg_GetDataLength(m),
                    .raw = m,
                };
                sub->cb(sub, &msg, sub->ud);
            }
        }
        natsMsg_Destroy(m);
    }
    /* More left: go to the back of the mailbox queue. */
    post(nc, &sub->msg_item);
}

static void on_sub_done_item(core_mbox_item_t *it)
{
    core_nats_sub_t *sub = CORE_CONTAINER_OF(it, core_nats_sub_t, done_item);
    /* A batch-limited msg_item may have re-queued itself behind us: let it
     * finish the ring, then free. */
    uv_mutex_lock(&sub->mu);
    bool queued = sub->posted;
    uv_mutex_unlock(&sub->mu);
    if (queued) {
        core_log_debug("nats.sub_free_deferred", "subject=%s", sub->subject);
        sub->done_pending = true;
    } else
        sub_complete(sub);
}

static core_nats_sub_t *sub_new(core_nats_t *nc, const char *subject, const char *queue,
                                core_nats_msg_cb cb, void *ud)
{
    core_nats_sub_t *sub = core_xcalloc(1, sizeof *sub);
    sub->nc = nc;
    sub->subject = core_xstrdup(subject);
    sub->queue = queue ? core_xstrdup(queue) : NULL;
    sub->cb = cb;
    sub->ud = ud;
    sub->state = SUB_PENDING;
    int rc = uv_mutex_init(&sub->mu);
    if (rc)
        abort();
    sub->msg_item.fn = on_sub_msg_item;
    sub->done_item.fn = on_sub_done_item;
    sub->next = nc->subs;
    if (nc->subs)
        nc->subs->prev = sub;
    nc->subs = sub;
    return sub;
}

static void start_sub(core_nats_sub_t *sub)
{
    core_nats_t *nc = sub->nc;
    job_t *job = core_xcalloc(1, sizeof *job);
    job->kind = JOB_SUB;
    job->sub = sub;
    sub->state = SUB_STARTING;
    nc->sub_jobs++;
    queue_job(nc, job);
}

static void stop_sub(core_nats_sub_t *sub)
{
    core_nats_t *nc = sub->nc;
    job_t *job = core_xcalloc(1, sizeof *job);
    job->kind = JOB_UNSUB;
    job->ns = sub->ns; /* the record may be gone by the time the job runs */
    sub->state = SUB_STOPPING;
    nc->sub_jobs++;
    queue_job(nc, job);
}

int core_nats_subscribe(core_nats_t *nc, const char *subject, const char *queue,
                        core_nats_msg_cb cb, void *ud, core_nats_sub_t **out)
{
    if (nc->freeing)
        return UV_ECANCELED;
    if (!cb || !core_nats_subject_valid(subject, true) ||
        (queue && !core_nats_subject_valid(queue, false)))
        return UV_EINVAL;
    core_nats_sub_t *sub = sub_new(nc, subject, queue, cb, ud);
    if (nc->conn)
        start_sub(sub);
    /* else: started once the connection object exists */
    if (out)
        *out = sub;
    return 0;
}

void core_nats_sub_on_ready(core_nats_sub_t *sub, core_nats_sub_ready_cb cb)
{
    sub->on_ready = cb;
}

void core_nats_unsubscribe(core_nats_sub_t *sub)
{
    if (!sub || sub->cancelled)
        return;
    sub->cancelled = true;
    switch (sub->state) {
    case SUB_PENDING:
        sub_free(sub);
        break;
    case SUB_ACTIVE:
        stop_sub(sub);
        break;
    default: /* STARTING: the job's completion stops it */
        break;
    }
}

/* ---- requests ---- */

static void req_unlink(core_nats_t *nc, req_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        nc->req_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        nc->req_tail = r->prev;
    req_t **pp = &nc->req_buckets[r->id % REQ_BUCKETS];
    while (*pp != r)
        pp = &(*pp)->hnext;
    *pp = r->hnext;
}

static void arm_req_timer(core_nats_t *nc)
{
    if (!nc->req_head) {
        uv_timer_stop(&nc->req_timer);
        return;
    }
    uint64_t now = uv_now(nc->loop);
    uint64_t d = nc->req_head->deadline > now ? nc->req_head->deadline - now : 0;
    uv_timer_start(&nc->req_timer, on_req_timer, d, 0);
}

static void on_req_timer(uv_timer_t *t)
{
    core_nats_t *nc = t->data;
    uint64_t now = uv_now(nc->loop);
    req_t *r;
    while ((r = nc->req_head) != NULL && r->deadline <= now) {
        req_unlink(nc, r);
        r->cb(NULL, UV_ETIMEDOUT, r->ud);
        free(r);
    }
    if (!nc->finished)
        arm_req_timer(nc);
}

static void deliver_reply(core_nats_t *nc, natsMsg *m)
{
    const char *subj = natsMsg_GetSubject(m);
    const char *dot = strrchr(subj, '.');
    if (!dot)
        return;
    char *end;
    uint64_t id = strtoull(dot + 1, &end, 10);
    if (*end != '\0')
        return;
    req_t *r = nc->req_buckets[id % REQ_BUCKETS];
    while (r && r->id != id)
        r = r->hnext;
    if (!r)
        return; /* late: it timed out already */
    req_unlink(nc, r);
    if (natsMsg_IsNoResponders(m)) {
        r->cb(NULL, UV_EHOSTUNREACH, r->ud);
    } else {
        core_nats_msg_t msg = {
            .subject = subj,
            .reply = natsMsg_GetReply(m),
            .data = natsMsg_GetData(m),
            .len = (size_t)natsMsg_GetDataLength(m),
            .raw = m,
        };
        r->cb(&msg, 0, r->ud);
    }
    free(r);
}

int core_nats_request(core_nats_t *nc, const char *subject, const void *data, size_t len,
                      unsigned timeout_ms, core_nats_reply_cb cb, void *ud)
{
    if (nc->freeing)
        return UV_ECANCELED;
    if (!cb || !core_nats_subject_valid(subject, false) || len > INT32_MAX)
        return UV_EINVAL;
    /* The inbox must be live, or the answer could come back to nobody. */
    if (!nc->conn || !link_up(nc) || !nc->inbox_sub || nc->inbox_sub->state != SUB_ACTIVE)
        return UV_ENOTCONN;
    uint64_t id = ++nc->next_req_id;
    char reply[128];
    snprintf(reply, sizeof reply, "%s.%" PRIu64, nc->inbox, id);
    natsStatus s = natsConnection_PublishRequest(nc->conn, subject, reply, data, (int)len);
    if (s != NATS_OK)
        return s == NATS_CONNECTION_CLOSED ? UV_ECANCELED : map_status(s);
    core_metrics_add(nc->m_requests, 1);
    req_t *r = core_xcalloc(1, sizeof *r);
    r->id = id;
    r->deadline = uv_now(nc->loop) + timeout_ms;
    r->cb = cb;
    r->ud = ud;
    /* Keep the list sorted by deadline; equal timeouts append at the tail. */
    req_t *after = nc->req_tail;
    while (after && after->deadline > r->deadline)
        after = after->prev;
    r->prev = after;
    r->next = after ? after->next : nc->req_head;
    if (r->next)
        r->next->prev = r;
    else
        nc->req_tail = r;
    if (after)
        after->next = r;
    else
        nc->req_head = r;
    r->hnext = nc->req_buckets[id % REQ_BUCKETS];
    nc->req_buckets[id % REQ_BUCKETS] = r;
    if (nc->req_head == r)
        arm_req_timer(nc);
    return 0;
}

/* ---- publish ---- */

int core_nats_publish_reply(core_nats_t *nc, const char *subject, const char *reply,
                            const void *data, size_t len)
{
    if (nc->freeing)
        return UV_ECANCELED;
    if (!core_nats_subject_valid(subject, false) ||
        (reply && !core_nats_subject_valid(reply, false)) || len > INT32_MAX)
        return UV_EINVAL;
    if (!nc->conn || !link_up(nc))
        return UV_ENOTCONN;
    natsStatus s = reply ? natsConnection_PublishRequest(nc->conn, subject, reply, data, (int)len)
                         : natsConnection_Publish(nc->conn, subject, data, (int)len);
    if (s != NATS_OK)
        return map_status(s);
    core_metrics_add(nc->m_published, 1);
    return 0;
}

int core_nats_publish(core_nats_t *nc, const char *subject, const void *data, size_t len)
{
    return core_nats_publish_reply(nc, subject, NULL, data, len);
}

/* ---- JetStream publish ---- */

static size_t pub_slot(const core_nats_t *nc, const natsMsg *m)
{
    uint64_t h = (uint64_t)(uintptr_t)m * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & nc->pub_mask;
}

/* pub_mu held. */
static pub_t *pub_take(core_nats_t *nc, const natsMsg *m)
{
    pub_t **pp = &nc->pub_table[pub_slot(nc, m)];
    while (*pp && (*pp)->msg != m)
        pp = &(*pp)->hnext;
    pub_t *p = *pp;
    if (p)
        *pp = p->hnext;
    return p;
}

static void pub_recycle(core_nats_t *nc, pub_t *p)
{
    p->msg = NULL;
    p->cb = NULL;
    p->ud = NULL;
    p->hnext = nc->pub_free;
    nc->pub_free = p;
}

/* cnats thread (the async-reply subscription or the ack timeout timer). */
static void on_nats_pub_ack(jsCtx *js, natsMsg *m, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    core_nats_t *nc = closure;
    uv_mutex_lock(&nc->pub_mu);
    pub_t *p = nc->pub_shutting ? NULL : pub_take(nc, m);
    if (p) {
        if (pa) {
            p->err = 0;
            p->seq = pa->Sequence;
            p->duplicate = pa->Duplicate;
        } else {
            natsStatus e = pae ? pae->Err : NATS_ERR;
            p->status = e;
            p->js_code = pae ? (int)pae->ErrCode : 0;
            p->err = e == NATS_TIMEOUT         ? UV_ETIMEDOUT
                     : e == NATS_NO_RESPONDERS ? UV_EHOSTUNREACH
                                               : UV_EIO;
        }
        p->msg = NULL;
        /* Posted under pub_mu so that shutdown either sees it queued or finds
         * the record still in the table. */
        post(nc, &p->item);
    }
    uv_mutex_unlock(&nc->pub_mu);
    natsMsg_Destroy(m);
}

static void on_pub_done(core_mbox_item_t *it)
{
    pub_t *p = CORE_CONTAINER_OF(it, pub_t, item);
    core_nats_t *nc = p->nc;
    nc->inflight--;
    core_metrics_add(p->err ? nc->m_js_failed : nc->m_js_ok, 1);
    if (p->err)
        core_log_debug("nats.js_publish_failed", "name=%s err=%s status=\"%s\" js_code=%d",
                       nc->name, uv_err_name(p->err), natsStatus_GetText(p->status), p->js_code);
    core_nats_js_ack_cb cb = p->cb;
    void *ud = p->ud;
    core_nats_js_ack_t ack = {.seq = p->seq, .duplicate = p->duplicate};
    int err = p->err;
    pub_recycle(nc, p);
    cb(err ? NULL : &ack, err, ud);
}

int core_nats_js_publish(core_nats_t *nc, const char *subject, const void *data, size_t len,
                         const char *msg_id, core_nats_js_ack_cb cb, void *ud)
{
    if (nc->freeing)
        return UV_ECANCELED;
    if (!cb || !core_nats_subject_valid(subject, false) || len > INT32_MAX || (msg_id && !*msg_id))
        return UV_EINVAL;
    if (!nc->js || !link_up(nc))
        return UV_ENOTCONN;
    if (nc->inflight >= nc->js_max_inflight)
        return UV_EBUSY;

    natsMsg *m = NULL;
    if (natsMsg_Create(&m, subject, NULL, data, (int)len) != NATS_OK)
        return UV_EINVAL;
    pub_t *p = nc->pub_free;
    if (p) {
        nc->pub_free = p->hnext;
    } else {
        p = core_xcalloc(1, sizeof *p);
        p->nc = nc;
        p->item.fn = on_pub_done;
    }
    p->msg = m;
    p->cb = cb;
    p->ud = ud;
    p->err = 0;
    p->seq = 0;
    p->duplicate = false;

    /* In the table before cnats sees the message: the ack can beat us back. */
    uv_mutex_lock(&nc->pub_mu);
    size_t slot = pub_slot(nc, m);
    p->hnext = nc->pub_table[slot];
    nc->pub_table[slot] = p;
    uv_mutex_unlock(&nc->pub_mu);

    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = nc->js_ack_timeout_ms;
    natsMsg *owned = m;
    natsStatus s = js_PublishMsgAsync(nc->js, &owned, &po);
    if (s != NATS_OK) {
        uv_mutex_lock(&nc->pub_mu);
        pub_t *q = pub_take(nc, m);
        uv_mutex_unlock(&nc->pub_mu);
        if (q == p) {
            natsMsg_Destroy(owned);
            pub_recycle(nc, p);
            return map_status(s);
        }
        /* The ack handler already answered it: its callback is queued. */
    }
    nc->inflight++;
    nc->js_used = true;
    core_metrics_add(nc->m_published, 1);
    return 0;
}

size_t core_nats_js_inflight(const core_nats_t *nc)
{
    return nc->inflight;
}

/* ---- thread-pool jobs ---- */

static void job_work(uv_work_t *w)
{
    job_t *job = CORE_CONTAINER_OF(w, job_t, work);
    core_nats_t *nc = job->nc;
    switch (job->kind) {
    case JOB_CONNECT: {
        natsConnection *conn = NULL;
        job->status = natsConnection_Connect(&conn, nc->opts);
        if (job->status == NATS_OK) {
            /* cnats calls no connected callback for a first-try success: mark
             * the link up unless an event (a disconnect) already raced us. */
            uint64_t expect = 0;
            atomic_compare_exchange_strong(&nc->link, &expect, (1u << 1) | 1u);
        }
        if (conn) {
            job->conn = conn;
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Domain = nc->js_domain;
            jo.Wait = nc->js_api_timeout_ms;
            /* Above our own bound: cnats stalls the publisher at MaxPending. */
            jo.PublishAsync.MaxPending = (int64_t)nc->js_max_inflight + 1;
            jo.PublishAsync.AckHandler = on_nats_pub_ack;
            jo.PublishAsync.AckHandlerClosure = nc;
            if (natsConnection_JetStream(&job->js, conn, &jo) != NATS_OK)
                job->js = NULL;
        }
        break;
    }
    case JOB_SUB: {
        core_nats_sub_t *sub = job->sub;
        natsSubscription *ns = NULL;
        natsStatus s =
            sub->queue ? natsConnection_QueueSubscribe(&ns, nc->conn, sub->subject, sub->queue,
                                                       on_nats_msg, sub)
                       : natsConnection_Subscribe(&ns, nc->conn, sub->subject, on_nats_msg, sub);
        if (s == NATS_OK) {
            s = natsSubscription_SetOnCompleteCB(ns, on_nats_sub_complete, sub);
            if (s != NATS_OK) {
                /* Closed under us (cannot happen while we hold the close job
                 * back); we cannot know when its handler last runs. */
                natsSubscription_Destroy(ns);
                ns = NULL;
                s = NATS_CONNECTION_CLOSED;
                job->orphan = true;
            }
        }
        /* So that "ready" means the server has the interest too. */
        if (s == NATS_OK && natsConnection_Status(nc->conn) == NATS_CONN_STATUS_CONNECTED)
            (void)natsConnection_FlushTimeout(nc->conn, nc->connect_timeout_ms);
        job->ns = ns;
        job->status = s;
        break;
    }
    case JOB_UNSUB:
        (void)natsSubscription_Unsubscribe(job->ns);
        natsSubscription_Destroy(job->ns);
        break;
    case JOB_JS:
        job->js_work(nc->js, job->ud);
        break;
    case JOB_FLUSH:
        /* Writes what is buffered in place, then waits for the PONG (this
         * pool thread, not the loop). Disconnected: nothing to write. */
        if (natsConnection_Status(job->conn) == NATS_CONN_STATUS_CONNECTED)
            (void)natsConnection_FlushTimeout(job->conn, nc->write_deadline_ms);
        break;
    case JOB_CLOSE:
        natsConnection_Close(nc->conn);
        for (size_t i = 0; i < job->nns; i++)
            natsSubscription_Destroy(job->nss[i]);
        break;
    case JOB_DESTROY:
        if (nc->js) {
            /* Messages still waiting for an ack are ours again; their
             * records are cancelled on the loop. cnats 3.4.1 crashes here
             * if the context never published asynchronously. */
            natsMsgList pending = {0};
            if (nc->js_used && js_PublishAsyncGetPendingList(&pending, nc->js) == NATS_OK)
                natsMsgList_Destroy(&pending);
            jsCtx_Destroy(nc->js);
        }
        natsConnection_Destroy(nc->conn);
        break;
    }
}

static void after_connect(core_nats_t *nc, job_t *job)
{
    nc->connecting = false;
    nc->conn = job->conn;
    nc->js = job->js;
    if (job->status == NATS_OK) {
        core_log_debug("nats.connect_ok", "name=%s url=%s", nc->name, nc->log_url);
    } else if (job->status == NATS_NOT_YET_CONNECTED) {
        core_log_warn("nats.connect_pending", "name=%s url=%s status=\"%s\"", nc->name, nc->log_url,
                      natsStatus_GetText(job->status));
    } else {
        core_log_error("nats.connect_failed", "name=%s url=%s status=\"%s\"", nc->name, nc->log_url,
                       natsStatus_GetText(job->status));
    }
    if (nc->conn && !nc->freeing) {
        for (core_nats_sub_t *s = nc->subs; s; s = s->next)
            if (s->state == SUB_PENDING)
                start_sub(s);
    }
    update_state(nc);
    maybe_finish(nc);
}

static void after_sub(core_nats_t *nc, job_t *job)
{
    core_nats_sub_t *sub = job->sub;
    nc->sub_jobs--;
    if (job->status != NATS_OK) {
        int err = map_status(job->status);
        core_log_error("nats.subscribe_failed", "name=%s subject=%s status=\"%s\"", nc->name,
                       sub->subject, natsStatus_GetText(job->status));
        bool notify = !sub->cancelled && !nc->freeing && sub->on_ready;
        sub->state = SUB_FAILED;
        sub->cancelled = true;
        if (notify)
            sub->on_ready(sub, err, sub->ud);
        if (job->orphan) {
            sub->orphan = true;
            core_log_error("nats.subscription_orphaned", "name=%s subject=%s", nc->name,
                           sub->subject);
        } else {
            sub_free(sub);
        }
        maybe_finish(nc);
        return;
    }
    sub->ns = job->ns;
    sub->state = SUB_ACTIVE;
    nc->cnats_subs++;
    if (sub->cancelled || nc->freeing) {
        if (!nc->freeing)
            stop_sub(sub);
        maybe_finish(nc);
        return;
    }
    if (sub == nc->inbox_sub)
        update_state(nc);
    if (sub->on_ready)
        sub->on_ready(sub, 0, sub->ud);
    maybe_finish(nc);
}

static void after_job(uv_work_t *w, int status)
{
    job_t *job = CORE_CONTAINER_OF(w, job_t, work);
    core_nats_t *nc = job->nc;
    switch (job->kind) {
    case JOB_CONNECT:
        after_connect(nc, job);
        break;
    case JOB_SUB:
        after_sub(nc, job);
        break;
    case JOB_UNSUB:
        nc->sub_jobs--;
        maybe_finish(nc);
        break;
    case JOB_JS:
        nc->js_jobs--;
        job->js_done(job->ud);
        maybe_finish(nc);
        break;
    case JOB_FLUSH:
        nc->js_jobs--;
        nc->flushing = false;
        if (nc->flush_again && !nc->freeing)
            core_nats_flush(nc);
        maybe_finish(nc);
        break;
    case JOB_CLOSE:
        nc->close_done = true;
        maybe_finish(nc);
        break;
    case JOB_DESTROY:
        nc->destroy_done = true;
        nc->conn = NULL;
        nc->js = NULL;
        maybe_finish(nc);
        break;
    }
    free(job->nss);
    free(job);
}

static void queue_job(core_nats_t *nc, job_t *job)
{
    job->nc = nc;
    int rc = uv_queue_work(nc->loop, &job->work, job_work, after_job);
    /* uv_queue_work fails only without a work callback. */
    assert(rc == 0);
    (void)rc;
}

int core_nats_js_run(core_nats_t *nc, void (*work)(jsCtx *js, void *ud), void (*done)(void *ud),
                     void *ud)
{
    if (nc->freeing)
        return UV_ECANCELED;
    if (!work || !done)
        return UV_EINVAL;
    if (!nc->js)
        return UV_ENOTCONN;
    job_t *job = core_xcalloc(1, sizeof *job);
    job->kind = JOB_JS;
    job->js_work = work;
    job->js_done = done;
    job->ud = ud;
    nc->js_jobs++;
    queue_job(nc, job);
    return 0;
}

void core_nats_flush(core_nats_t *nc)
{
    if (!nc || nc->freeing || !nc->conn || nc->close_queued)
        return;
    if (nc->flushing) {
        nc->flush_again = true; /* what was buffered after that flush began */
        return;
    }
    job_t *job = core_xcalloc(1, sizeof *job);
    job->kind = JOB_FLUSH;
    job->conn = nc->conn;
    nc->flushing = true;
    nc->flush_again = false;
    nc->js_jobs++; /* the connection outlives it, as it does JetStream jobs */
    queue_job(nc, job);
}

/* ---- lifecycle ---- */

bool core_nats_ready(const core_nats_t *nc)
{
    return nc && nc->ready && !nc->freeing;
}

static void release(core_nats_t *nc)
{
    if (--nc->handles > 0)
        return;
    while (nc->pub_free) {
        pub_t *p = nc->pub_free;
        nc->pub_free = p->hnext;
        free(p);
    }
    free(nc->pub_table);
    uv_mutex_destroy(&nc->pub_mu);
    uv_mutex_destroy(&nc->post_mu);
    if (nc->opts)
        natsOptions_Destroy(nc->opts);
    natsInbox_Destroy(nc->inbox);
    free(nc->url);
    free(nc->log_url);
    free(nc->name);
    free(nc->js_domain);
    free(nc);
}

static void on_mbox_closed(uv_handle_t *h)
{
    release(CORE_CONTAINER_OF(h, core_nats_t, mbox.async));
}

static void on_timer_closed(uv_handle_t *h)
{
    release(CORE_CONTAINER_OF(h, core_nats_t, req_timer));
}

static void finish(core_nats_t *nc)
{
    nc->finished = true;
    uv_mutex_lock(&nc->post_mu);
    nc->post_open = false;
    uv_mutex_unlock(&nc->post_mu);
    /* Runs what cnats posted before it went quiet: acks that did arrive
     * report their real result. */
    nc->handles = 2;
    core_mbox_close(&nc->mbox, on_mbox_closed);

    while (nc->req_head) {
        req_t *r = nc->req_head;
        req_unlink(nc, r);
        r->cb(NULL, UV_ECANCELED, r->ud);
        free(r);
    }
    uv_timer_stop(&nc->req_timer);
    uv_close((uv_handle_t *)&nc->req_timer, on_timer_closed);

    for (size_t i = 0; i <= nc->pub_mask; i++) {
        pub_t *p;
        while ((p = nc->pub_table[i]) != NULL) {
            nc->pub_table[i] = p->hnext;
            nc->inflight--;
            core_metrics_add(nc->m_js_failed, 1);
            core_nats_js_ack_cb cb = p->cb;
            void *ud = p->ud;
            pub_recycle(nc, p);
            cb(NULL, UV_ECANCELED, ud);
        }
    }
    /* Left: subscriptions that never started (nothing of theirs is queued)
     * and orphans, which are leaked on purpose: cnats may still call them. */
    core_nats_sub_t *s = nc->subs;
    while (s) {
        core_nats_sub_t *next = s->next;
        if (!s->orphan)
            sub_free(s);
        s = next;
    }
    core_metrics_set(nc->m_connected, 0);
    core_log_info("nats.closed", "name=%s", nc->name);
}

/* The shutdown state machine: called after anything that can unblock it. */
static void maybe_finish(core_nats_t *nc)
{
    if (!nc->freeing || nc->finished || nc->connecting)
        return;
    if (!nc->conn) {
        finish(nc);
        return;
    }
    if (!nc->close_queued) {
        if (nc->sub_jobs)
            return;
        job_t *job = core_xcalloc(1, sizeof *job);
        job->kind = JOB_CLOSE;
        for (core_nats_sub_t *s = nc->subs; s; s = s->next)
            if (s->state == SUB_ACTIVE)
                job->nns++;
        job->nss = core_xcalloc(job->nns ? job->nns : 1, sizeof *job->nss);
        size_t i = 0;
        for (core_nats_sub_t *s = nc->subs; s; s = s->next)
            if (s->state == SUB_ACTIVE)
                job->nss[i++] = s->ns;
        nc->close_queued = true;
        queue_job(nc, job);
        return;
    }
    if (!nc->close_done || !nc->closed_seen || nc->cnats_subs || nc->js_jobs || nc->sub_jobs) {
        core_log_debug("nats.closing_wait",
                       "name=%s close_done=%d closed_seen=%d subs=%d js_jobs=%d sub_jobs=%d",
                       nc->name, nc->close_done, nc->closed_seen, nc->cnats_subs, nc->js_jobs,
                       nc->sub_jobs);
        return;
    }
    if (!nc->destroy_queued) {
        job_t *job = core_xcalloc(1, sizeof *job);
        job->kind = JOB_DESTROY;
        nc->destroy_queued = true;
        queue_job(nc, job);
        return;
    }
    if (nc->destroy_done)
        finish(nc);
}

static void on_free_item(core_mbox_item_t *it)
{
    core_nats_t *nc = CORE_CONTAINER_OF(it, core_nats_t, free_item);
    maybe_finish(nc);
}

void core_nats_free(core_nats_t *nc)
{
    if (!nc || nc->freeing)
        return;
    nc->freeing = true;
    nc->on_state = NULL;
    nc->ready = false;
    uv_mutex_lock(&nc->pub_mu);
    nc->pub_shutting = true;
    uv_mutex_unlock(&nc->pub_mu);
    for (core_nats_sub_t *s = nc->subs; s; s = s->next)
        s->cancelled = true;
    core_log_info("nats.closing", "name=%s", nc->name);
    /* Continue on a fresh stack: we may be inside one of our callbacks. */
    post(nc, &nc->free_item);
}

char *core_nats_redact_url(const char *url)
{
    size_t n = strlen(url);
    char *out = core_xmalloc(n + 1);
    size_t o = 0;
    const char *seg = url;
    while (*seg) {
        size_t len = strcspn(seg, ",");
        const char *host = seg;
        const char *scheme = strstr(seg, "://");
        if (scheme && (size_t)(scheme - seg) < len)
            host = scheme + 3;
        memcpy(out + o, seg, (size_t)(host - seg));
        o += (size_t)(host - seg);
        const char *at = memchr(host, '@', len - (size_t)(host - seg));
        const char *rest = at ? at + 1 : host;
        size_t rlen = len - (size_t)(rest - seg);
        memcpy(out + o, rest, rlen);
        o += rlen;
        seg += len;
        if (*seg == ',')
            out[o++] = *seg++;
    }
    out[o] = '\0';
    return out;
}

static char *copy_label(const char *name)
{
    char *l = core_xstrdup(name);
    for (char *p = l; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < ' ')
            *p = '_';
    return l;
}

static void register_metrics(core_nats_t *nc)
{
    char labels[160], labels2[200];
    char *l = copy_label(nc->name);
    snprintf(labels, sizeof labels, "client=\"%.100s\"", l);
    nc->m_connected =
        core_metrics_gauge("meridian_nats_connected", "1 while the NATS connection is up.", labels);
    nc->m_reconnects = core_metrics_counter("meridian_nats_reconnects_total",
                                            "NATS reconnects completed.", labels);
    nc->m_published = core_metrics_counter("meridian_nats_published_total",
                                           "Messages published (core and JetStream).", labels);
    nc->m_received = core_metrics_counter("meridian_nats_received_total",
                                          "Messages delivered to subscribers.", labels);
    nc->m_dropped = core_metrics_counter("meridian_nats_dropped_total",
                                         "Messages dropped because the loop fell behind.", labels);
    nc->m_requests = core_metrics_counter("meridian_nats_requests_total", "Requests sent.", labels);
    snprintf(labels2, sizeof labels2, "%s,result=\"ok\"", labels);
    nc->m_js_ok =
        core_metrics_counter("meridian_nats_js_acks_total", "JetStream publish outcomes.", labels2);
    snprintf(labels2, sizeof labels2, "%s,result=\"failed\"", labels);
    nc->m_js_failed =
        core_metrics_counter("meridian_nats_js_acks_total", "JetStream publish outcomes.", labels2);
    free(l);
}

static int build_options(core_nats_t *nc)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, nc->url);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, nc->name);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, nc->connect_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetWriteDeadline(o, nc->write_deadline_ms);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, PING_INTERVAL_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetCustomReconnectDelay(o, on_nats_reconnect_delay, nc);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(o, true, on_nats_connected, nc);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, on_nats_disconnected, nc);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, on_nats_reconnected, nc);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, on_nats_closed, nc);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, on_nats_error, nc);
    /* One shared delivery thread instead of one per subscription: our
     * handlers only queue for the loop. */
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(o, true);
    if (s != NATS_OK) {
        core_log_error("nats.options_invalid", "name=%s url=%s status=\"%s\"", nc->name,
                       nc->log_url, natsStatus_GetText(s));
        natsOptions_Destroy(o);
        return UV_EINVAL;
    }
    nc->opts = o;
    return 0;
}

core_nats_t *core_nats_new(uv_loop_t *loop, const core_nats_opts_t *o)
{
    if (!o || !o->url || !*o->url)
        return NULL;
    core_nats_t *nc = core_xcalloc(1, sizeof *nc);
    nc->loop = loop;
    nc->url = core_xstrdup(o->url);
    nc->log_url = core_nats_redact_url(o->url);
    nc->name = core_xstrdup(o->name && *o->name ? o->name : "meridian");
    nc->js_domain = o->js_domain && *o->js_domain ? core_xstrdup(o->js_domain) : NULL;
    nc->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 2000;
    nc->write_deadline_ms = o->write_deadline_ms ? o->write_deadline_ms : 2000;
    nc->backoff_base_ms = o->backoff_base_ms ? o->backoff_base_ms : 100;
    nc->backoff_cap_ms = o->backoff_cap_ms ? o->backoff_cap_ms : 5000;
    nc->js_api_timeout_ms = o->js_api_timeout_ms ? o->js_api_timeout_ms : 5000;
    nc->js_ack_timeout_ms = o->js_ack_timeout_ms ? o->js_ack_timeout_ms : 5000;
    nc->js_max_inflight = o->js_max_inflight ? o->js_max_inflight : 1024;
    nc->on_state = o->on_state;
    nc->ud = o->ud;

    size_t buckets = 16;
    while (buckets < nc->js_max_inflight)
        buckets *= 2;
    nc->pub_table = core_xcalloc(buckets, sizeof *nc->pub_table);
    nc->pub_mask = buckets - 1;

    if (uv_mutex_init(&nc->post_mu) || uv_mutex_init(&nc->pub_mu))
        abort();
    nc->state_item.fn = on_state_item;
    nc->delay_item.fn = on_delay_item;
    nc->err_item.fn = on_err_item;
    nc->free_item.fn = on_free_item;

    if (build_options(nc) != 0 || natsInbox_Create(&nc->inbox) != NATS_OK ||
        core_mbox_init(&nc->mbox, loop) != 0) {
        if (nc->opts)
            natsOptions_Destroy(nc->opts);
        natsInbox_Destroy(nc->inbox);
        uv_mutex_destroy(&nc->pub_mu);
        uv_mutex_destroy(&nc->post_mu);
        free(nc->pub_table);
        free(nc->url);
        free(nc->log_url);
        free(nc->name);
        free(nc->js_domain);
        free(nc);
        return NULL;
    }
    nc->post_open = true;
    uv_timer_init(loop, &nc->req_timer);
    nc->req_timer.data = nc;
    register_metrics(nc);

    /* The reply inbox: one wildcard subscription serves every request. */
    char inbox_subject[96];
    snprintf(inbox_subject, sizeof inbox_subject, "%s.*", nc->inbox);
    nc->inbox_sub = sub_new(nc, inbox_subject, NULL, NULL, NULL);
    nc->inbox_sub->internal = true;

    job_t *job = core_xcalloc(1, sizeof *job);
    job->kind = JOB_CONNECT;
    nc->connecting = true;
    queue_job(nc, job);
    return nc;
}
