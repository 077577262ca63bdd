/* httpc.c: HTTP/1.1 client pool (see httpc.h). */
#include "core/httpc.h"
#include "core/core.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#define MAX_RESP_HEADERS 64
#define READ_BUF 65536

typedef struct hc_conn_s hc_conn_t;

struct core_httpc_req_s {
    core_httpc_t *pool;
    hc_conn_t *conn;
    core_buf_t msg;
    int flags;
    core_httpc_cb cb;
    void *ud;
    core_httpc_req_t *next; /* wait queue */
    core_buf_t *extra;      /* during a 101's callback: bytes that followed it */
    bool retried;
    bool head; /* a HEAD request: its answer has no body whatever it says */
};

typedef struct {
    size_t name_off, name_len, val_off, val_len;
} hc_hdr_t;

struct hc_conn_s {
    core_httpc_t *pool;
    hc_conn_t *next; /* every connection of the pool */
    hc_conn_t **pprev;
    hc_conn_t *idle_next; /* the idle stack */
    bool idle;
    uv_tcp_t *tcp; /* separate so that an upgrade can hand it over */
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t wr;
    int handles;
    bool connected, closing, dns_pending, writing;
    bool reused; /* the current request did not open this connection */
    uint64_t connect_start_ns, connect_ns;
    uint64_t expires_ms; /* the DNS answer's TTL ran out: not reused after this (0: never) */
    int deferred_err;    /* a failure found inside a call: reported from the timer */
    core_httpc_req_t *req;
    llhttp_t parser;
    core_buf_t head; /* header names and values */
    core_buf_t body;
    hc_hdr_t hdr[MAX_RESP_HEADERS];
    size_t nhdr;
    int hstate; /* 0: before a header, 1: in a name, 2: in a value */
    size_t received;
    bool complete, upgraded, too_big, too_many;
};

struct core_httpc_s {
    uv_loop_t *loop;
    core_httpc_opts_t o;
    char *host;
    bool literal;
    struct sockaddr_storage literal_addr;
    hc_conn_t *conns;
    size_t nconns;
    hc_conn_t *idle;
    size_t nidle;
    core_httpc_req_t *wait_head, *wait_tail;
    llhttp_settings_t settings;
    unsigned rr; /* which resolved address next */
    bool freeing;
    char *read_buf;
    bool read_busy;
};

static void conn_close(hc_conn_t *c);
static void conn_start(hc_conn_t *c, core_httpc_req_t *r);
static int conn_open(core_httpc_t *p, core_httpc_req_t *r);

/* ---- requests ----------------------------------------------------------- */

static void req_free(core_httpc_req_t *r)
{
    core_buf_free(&r->msg);
    free(r);
}

static void deliver(core_httpc_req_t *r, const core_httpc_resp_t *resp, int err)
{
    r->cb(r, resp, err, r->ud);
}

static core_httpc_req_t *wait_pop(core_httpc_t *p)
{
    core_httpc_req_t *r = p->wait_head;
    if (r) {
        p->wait_head = r->next;
        if (!p->wait_head)
            p->wait_tail = NULL;
        r->next = NULL;
    }
    return r;
}

static void wait_push(core_httpc_t *p, core_httpc_req_t *r)
{
    r->next = NULL;
    if (p->wait_tail)
        p->wait_tail->next = r;
    else
        p->wait_head = r;
    p->wait_tail = r;
}

static void conn_close(hc_conn_t *c);

static bool expired(const hc_conn_t *c)
{
    return c->expires_ms && core_now_ms() >= c->expires_ms;
}

static hc_conn_t *idle_pop(core_httpc_t *p)
{
    hc_conn_t *c;
    while ((c = p->idle)) {
        p->idle = c->idle_next;
        c->idle_next = NULL;
        c->idle = false;
        p->nidle--;
        if (!expired(c))
            break;
        conn_close(c);
    }
    return c;
}

static void idle_remove(hc_conn_t *c)
{
    core_httpc_t *p = c->pool;
    if (!c->idle)
        return;
    for (hc_conn_t **pp = &p->idle; *pp; pp = &(*pp)->idle_next) {
        if (*pp == c) {
            *pp = c->idle_next;
            break;
        }
    }
    c->idle_next = NULL;
    c->idle = false;
    p->nidle--;
}

/* A connection freed up or closed: the oldest waiting request goes next. */
static void pump(core_httpc_t *p)
{
    while (p->wait_head && !p->freeing) {
        hc_conn_t *c = idle_pop(p);
        if (c) {
            conn_start(c, wait_pop(p));
            continue;
        }
        if (p->nconns >= p->o.max_conns)
            return;
        core_httpc_req_t *r = wait_pop(p);
        int rc = conn_open(p, r);
        if (rc) {
            deliver(r, NULL, rc);
            req_free(r);
        }
    }
}

/* ---- connections -------------------------------------------------------- */

static void conn_maybe_free(hc_conn_t *c)
{
    if (c->handles > 0 || c->dns_pending)
        return;
    core_buf_free(&c->head);
    core_buf_free(&c->body);
    free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    hc_conn_t *c = h->data;
    if ((uv_handle_t *)c->tcp == h) {
        free(c->tcp);
        c->tcp = NULL;
    }
    c->handles--;
    conn_maybe_free(c);
}

/* Unlinks and closes; the request (if any) must have been detached. */
static void conn_close(hc_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    core_httpc_t *p = c->pool;
    idle_remove(c);
    if (c->pprev) {
        *c->pprev = c->next;
        if (c->next)
            c->next->pprev = c->pprev;
        c->pprev = NULL;
        p->nconns--;
    }
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (c->tcp)
        uv_close((uv_handle_t *)c->tcp, on_handle_closed);
    else
        c->handles--; /* handed over: the taker closes it */
    conn_maybe_free(c);
}

/* The request on c failed with err: tell its owner, drop the connection. */
static void conn_fail(hc_conn_t *c, int err)
{
    core_httpc_t *p = c->pool;
    core_httpc_req_t *r = c->req;
    c->req = NULL;
    bool nothing_back = c->received == 0;
    bool reused = c->reused;
    conn_close(c);
    if (r) {
        r->conn = NULL;
        /* A kept-alive connection the server had already closed: the request
         * never reached it, so an idempotent one is sent again, once. */
        if (reused && nothing_back && !r->retried && (r->flags & CORE_HTTPC_IDEMPOTENT) &&
            !p->freeing && (err == UV_EOF || err == UV_ECONNRESET || err == UV_EPIPE)) {
            r->retried = true;
            int rc = conn_open(p, r);
            if (rc == 0)
                return;
            err = rc;
        }
        deliver(r, NULL, err == UV_EOF ? UV_ECONNRESET : err);
        req_free(r);
    }
    pump(p);
}

static void on_timer(uv_timer_t *t)
{
    hc_conn_t *c = t->data;
    if (c->deferred_err) {
        conn_fail(c, c->deferred_err);
        return;
    }
    if (c->idle) {
        conn_close(c);
        return;
    }
    conn_fail(c, UV_ETIMEDOUT);
}

static void reset_parse(hc_conn_t *c)
{
    llhttp_init(&c->parser, HTTP_RESPONSE, &c->pool->settings);
    c->parser.data = c;
    core_buf_reset(&c->head);
    core_buf_reset(&c->body);
    c->nhdr = 0;
    c->hstate = 0;
    c->received = 0;
    c->complete = c->upgraded = c->too_big = c->too_many = false;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    hc_conn_t *c = h->data;
    core_httpc_t *p = c->pool;
    if (p->read_busy) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    p->read_busy = true;
    buf->base = p->read_buf;
    buf->len = READ_BUF;
}

static void finish(hc_conn_t *c, const char *rest, size_t rest_len);

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    hc_conn_t *c = s->data;
    core_httpc_t *p = c->pool;
    if (buf->base == p->read_buf)
        p->read_busy = false;
    if (n == 0)
        return;
    if (c->idle || !c->req) {
        /* Nothing is expected on an idle connection: EOF or stray bytes end it. */
        conn_close(c);
        pump(p);
        return;
    }
    if (n < 0) {
        /* A body delimited by the close: finishing the parse completes it (our
         * on_message_complete pauses, which llhttp_finish reports). */
        if (n == UV_EOF && c->received > 0 &&
            (llhttp_finish(&c->parser) == HPE_OK || c->complete) && c->complete) {
            finish(c, NULL, 0);
            return;
        }
        conn_fail(c, (int)n);
        return;
    }
    c->received += (size_t)n;
    if (c->received > p->o.max_response_bytes + READ_BUF) {
        conn_fail(c, UV_E2BIG);
        return;
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)n);
    if (c->too_big) {
        conn_fail(c, UV_E2BIG);
        return;
    }
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t used = pos ? (size_t)(pos - buf->base) : (size_t)n;
        finish(c, buf->base + used, (size_t)n - used);
        return;
    }
    if (e != HPE_OK || c->too_many) {
        core_log_warn("httpc.bad_response", "upstream=%s:%d reason=\"%s\"", p->host, p->o.port,
                      c->too_many ? "too many headers" : llhttp_errno_name(e));
        conn_fail(c, UV_EPROTO);
    }
}

/* The response is complete: hand it to its owner, then keep or drop c. */
static void finish(hc_conn_t *c, const char *rest, size_t rest_len)
{
    core_httpc_t *p = c->pool;
    core_httpc_req_t *r = c->req;
    uv_timer_stop(&c->timer);
    core_http_header_t hs[MAX_RESP_HEADERS];
    for (size_t i = 0; i < c->nhdr; i++) {
        hs[i].name = c->head.base + c->hdr[i].name_off;
        hs[i].name_len = c->hdr[i].name_len;
        hs[i].value = c->head.base + c->hdr[i].val_off;
        hs[i].value_len = c->hdr[i].val_len;
    }
    core_httpc_resp_t resp = {
        .status = llhttp_get_status_code(&c->parser),
        .headers = hs,
        .nheaders = c->nhdr,
        .body = c->body.base ? c->body.base : "",
        .body_len = c->body.len,
        .connect_ns = c->reused ? 0 : c->connect_ns,
    };
    bool upgrade = resp.status == 101 && (r->flags & CORE_HTTPC_UPGRADE);
    /* An answer that came before the whole request was written (an early
     * 413) leaves the write in flight: that connection cannot be reused; nor
     * one that carried an upgrade request, whatever the answer said (the
     * server's parser may not go on after it). */
    bool keep = !upgrade && resp.status != 101 && llhttp_should_keep_alive(&c->parser) &&
                rest_len == 0 && !c->writing && !(r->flags & CORE_HTTPC_UPGRADE);
    /* Bytes after a 101 belong to the new protocol. */
    core_buf_t extra;
    core_buf_init(&extra);
    if (upgrade && rest_len)
        core_buf_append(&extra, rest, rest_len);
    c->upgraded = upgrade;
    if (upgrade)
        uv_read_stop((uv_stream_t *)c->tcp);
    /* While the callback runs, take_socket finds the connection through r. */
    r->conn = c;
    r->extra = &extra;
    deliver(r, &resp, 0);
    r->extra = NULL;
    core_buf_free(&extra);
    c->req = NULL;
    req_free(r);
    if (upgrade || !keep || p->freeing || c->closing || expired(c)) {
        conn_close(c);
    } else if (p->wait_head) {
        reset_parse(c);
        conn_start(c, wait_pop(p));
        return;
    } else if (p->nidle >= p->o.max_idle) {
        conn_close(c);
    } else {
        reset_parse(c);
        c->idle = true;
        c->idle_next = p->idle;
        p->idle = c;
        p->nidle++;
        uv_timer_start(&c->timer, on_timer, p->o.idle_timeout_ms, 0);
    }
    pump(p);
}

uv_tcp_t *core_httpc_take_socket(core_httpc_req_t *r, core_buf_t *extra)
{
    hc_conn_t *c = r->conn;
    if (!c || !c->upgraded || !c->tcp)
        return NULL;
    if (extra && r->extra && r->extra->len)
        core_buf_append(extra, r->extra->base, r->extra->len);
    uv_tcp_t *t = c->tcp;
    c->tcp = NULL;
    t->data = NULL;
    return t;
}

static void on_written(uv_write_t *w, int status)
{
    hc_conn_t *c = w->data;
    c->writing = false;
    if (c->closing)
        return;
    if (status < 0 && c->req)
        conn_fail(c, status);
}

/* A failure found inside core_httpc_send (or another caller's call):
 * reported from the loop, as the callback contract says. */
static void fail_later(hc_conn_t *c, int err)
{
    c->deferred_err = err;
    uv_timer_stop(&c->timer);
    uv_timer_start(&c->timer, on_timer, 0, 0);
}

/* Sends r on the connected c. */
static void conn_start(hc_conn_t *c, core_httpc_req_t *r)
{
    core_httpc_t *p = c->pool;
    /* on_connect starts the request that opened c; anything else reuses it. */
    c->reused = c->req != r;
    c->req = r;
    r->conn = c;
    uv_timer_stop(&c->timer);
    uv_timer_start(&c->timer, on_timer, p->o.response_timeout_ms, 0);
    uv_buf_t b = uv_buf_init(r->msg.base, (unsigned)r->msg.len);
    c->wr.data = c;
    c->writing = true;
    int rc = uv_write(&c->wr, (uv_stream_t *)c->tcp, &b, 1, on_written);
    if (rc) {
        c->writing = false;
        fail_later(c, rc);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    hc_conn_t *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        conn_fail(c, status);
        return;
    }
    c->connected = true;
    c->connect_ns = core_now_ns() - c->connect_start_ns;
    uv_tcp_nodelay(c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read);
    if (rc) {
        conn_fail(c, rc);
        return;
    }
    conn_start(c, c->req);
}

static void connect_to(hc_conn_t *c, const struct sockaddr *sa)
{
    c->connect.data = c;
    int rc = uv_tcp_connect(&c->connect, c->tcp, sa, on_connect);
    if (rc)
        fail_later(c, rc); /* ENETUNREACH, EADDRNOTAVAIL, EMFILE come back at once */
}

static void on_dns(const core_dns_result_t *res, int err, void *ud)
{
    hc_conn_t *c = ud;
    c->dns_pending = false;
    if (c->closing) {
        conn_maybe_free(c);
        return;
    }
    if (err) {
        core_log_warn("httpc.dns_failed", "host=%s error=\"%s\"", c->pool->host, uv_strerror(err));
        conn_fail(c, err);
        return;
    }
    /* Several addresses: spread new connections over them. */
    const core_dns_addr_t *a = &res->addrs[c->pool->rr++ % res->naddrs];
    /* A kept-alive connection outlives its DNS answer only until the TTL: a
     * changed record is then followed by new connections. */
    uint64_t ttl_ms = (uint64_t)res->ttl_s * 1000;
    c->expires_ms = core_now_ms() + (ttl_ms > res->age_ms ? ttl_ms - res->age_ms : 0);
    struct sockaddr_storage ss;
    core_dns_addr_to_sockaddr(a, (uint16_t)c->pool->o.port, &ss);
    connect_to(c, (const struct sockaddr *)&ss);
}

static int conn_open(core_httpc_t *p, core_httpc_req_t *r)
{
    hc_conn_t *c = core_xcalloc(1, sizeof *c);
    c->pool = p;
    c->tcp = core_xmalloc(sizeof *c->tcp);
    int rc = uv_tcp_init(p->loop, c->tcp);
    if (rc) {
        free(c->tcp);
        free(c);
        return rc;
    }
    uv_timer_init(p->loop, &c->timer);
    c->tcp->data = c;
    c->timer.data = c;
    c->handles = 2;
    core_buf_init(&c->head);
    core_buf_init(&c->body);
    reset_parse(c);
    c->next = p->conns;
    if (p->conns)
        p->conns->pprev = &c->next;
    c->pprev = &p->conns;
    p->conns = c;
    p->nconns++;
    c->req = r;
    r->conn = c;
    c->connect_start_ns = core_now_ns();
    uv_timer_start(&c->timer, on_timer, p->o.connect_timeout_ms, 0);
    if (p->literal) {
        connect_to(c, (const struct sockaddr *)&p->literal_addr);
        return 0;
    }
    c->dns_pending = true;
    rc = core_dns_lookup_cached(p->o.dns, p->host, on_dns, c);
    if (rc) {
        c->dns_pending = false;
        c->req = NULL;
        r->conn = NULL;
        conn_close(c);
        return rc;
    }
    return 0;
}

/* ---- the parser's callbacks ---------------------------------------------- */

static int on_hfield(llhttp_t *ps, const char *at, size_t len)
{
    hc_conn_t *c = ps->data;
    if (c->hstate != 1) {
        if (c->nhdr >= MAX_RESP_HEADERS) {
            c->too_many = true;
            return -1;
        }
        c->hdr[c->nhdr].name_off = c->head.len;
        c->hdr[c->nhdr].name_len = 0;
        c->hdr[c->nhdr].val_off = 0;
        c->hdr[c->nhdr].val_len = 0;
        c->nhdr++;
        c->hstate = 1;
    }
    core_buf_append(&c->head, at, len);
    c->hdr[c->nhdr - 1].name_len += len;
    return 0;
}

static int on_hvalue(llhttp_t *ps, const char *at, size_t len)
{
    hc_conn_t *c = ps->data;
    if (c->nhdr == 0)
        return 0;
    if (c->hstate != 2) {
        c->hdr[c->nhdr - 1].val_off = c->head.len;
        c->hstate = 2;
    }
    core_buf_append(&c->head, at, len);
    c->hdr[c->nhdr - 1].val_len += len;
    return 0;
}

static int on_hdone(llhttp_t *ps)
{
    hc_conn_t *c = ps->data;
    c->hstate = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *ps)
{
    hc_conn_t *c = ps->data;
    /* 1xx other than 101 (100 Continue): llhttp reports it as a message;
     * its headers are dropped when the real answer starts. The answer to a
     * HEAD has no body, whatever its Content-Length says (1: skip it). */
    return c->req && c->req->head ? 1 : 0;
}

static int on_body(llhttp_t *ps, const char *at, size_t len)
{
    hc_conn_t *c = ps->data;
    if (c->body.len + len > c->pool->o.max_response_bytes) {
        c->too_big = true;
        return -1;
    }
    core_buf_append(&c->body, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *ps)
{
    hc_conn_t *c = ps->data;
    int status = llhttp_get_status_code(ps);
    if (status >= 100 && status < 200 && status != 101) {
        /* An interim answer: wait for the final one. */
        c->nhdr = 0;
        core_buf_reset(&c->head);
        return 0;
    }
    c->complete = true;
    return HPE_PAUSED;
}

/* ---- the pool --------------------------------------------------------------- */

core_httpc_t *core_httpc_new(uv_loop_t *loop, const core_httpc_opts_t *o)
{
    core_httpc_t *p = core_xcalloc(1, sizeof *p);
    p->loop = loop;
    p->o = *o;
    if (!p->o.connect_timeout_ms)
        p->o.connect_timeout_ms = 2000;
    if (!p->o.response_timeout_ms)
        p->o.response_timeout_ms = 30000;
    if (!p->o.idle_timeout_ms)
        p->o.idle_timeout_ms = 30000;
    if (!p->o.max_idle)
        p->o.max_idle = 64;
    if (!p->o.max_conns)
        p->o.max_conns = 1024;
    if (!p->o.max_response_bytes)
        p->o.max_response_bytes = 8u << 20;
    p->host = core_xstrdup(o->host);
    p->o.host = p->host;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&p->literal_addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&p->literal_addr;
    if (inet_pton(AF_INET, p->host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)o->port);
        p->literal = true;
    } else if (inet_pton(AF_INET6, p->host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)o->port);
        p->literal = true;
    } else if (!o->dns) {
        free(p->host);
        free(p);
        return NULL;
    }
    llhttp_settings_init(&p->settings);
    p->settings.on_header_field = on_hfield;
    p->settings.on_header_value = on_hvalue;
    p->settings.on_header_value_complete = on_hdone;
    p->settings.on_headers_complete = on_headers_complete;
    p->settings.on_body = on_body;
    p->settings.on_message_complete = on_message_complete;
    p->read_buf = core_xmalloc(READ_BUF);
    return p;
}

int core_httpc_send(core_httpc_t *p, core_buf_t *msg, int flags, core_httpc_cb cb, void *ud,
                    core_httpc_req_t **out)
{
    if (p->freeing)
        return UV_ECANCELED;
    if (!cb || !msg->len)
        return UV_EINVAL;
    core_httpc_req_t *r = core_xcalloc(1, sizeof *r);
    r->pool = p;
    r->msg = *msg;
    core_buf_init(msg);
    r->flags = flags;
    r->cb = cb;
    r->ud = ud;
    r->head = r->msg.len >= 5 && memcmp(r->msg.base, "HEAD ", 5) == 0;
    if (out)
        *out = r;
    hc_conn_t *c = idle_pop(p);
    if (c) {
        conn_start(c, r);
        return 0;
    }
    if (p->nconns >= p->o.max_conns) {
        wait_push(p, r);
        return 0;
    }
    int rc = conn_open(p, r);
    if (rc) {
        /* Nothing was started: the caller keeps ownership of nothing. */
        req_free(r);
        if (out)
            *out = NULL;
        return rc;
    }
    return 0;
}

void core_httpc_cancel(core_httpc_req_t *r)
{
    core_httpc_t *p = r->pool;
    if (r->conn) {
        hc_conn_t *c = r->conn;
        c->req = NULL;
        r->conn = NULL;
        conn_close(c);
        req_free(r);
        pump(p);
        return;
    }
    for (core_httpc_req_t **pp = &p->wait_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            if (p->wait_tail == r)
                p->wait_tail = prev;
            req_free(r);
            return;
        }
    }
}

void core_httpc_free(core_httpc_t *p)
{
    if (!p || p->freeing)
        return;
    p->freeing = true;
    core_httpc_req_t *r;
    while ((r = wait_pop(p))) {
        deliver(r, NULL, UV_ECANCELED);
        req_free(r);
    }
    while (p->conns) {
        hc_conn_t *c = p->conns;
        core_httpc_req_t *q = c->req;
        c->req = NULL;
        conn_close(c);
        if (q) {
            q->conn = NULL;
            deliver(q, NULL, UV_ECANCELED);
            req_free(q);
        }
    }
    /* Connections free themselves as their handles close; none points back. */
    free(p->read_buf);
    free(p->host);
    free(p);
}

size_t core_httpc_open(const core_httpc_t *p)
{
    return p->nconns;
}

size_t core_httpc_idle(const core_httpc_t *p)
{
    return p->nidle;
}
