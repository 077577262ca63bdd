#include "core/http.h"
#include "core/config.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <llhttp.h>
#include <sodium.h>

/* Input read but not yet parsed (pipelined requests waiting for an earlier
 * response) is capped here; past it we stop reading until the backlog drains. */
#define PIPELINE_BACKLOG_MAX (256 * 1024)
/* Output is written before the loop sleeps, or at once when it grows past this. */
#define OUT_FLUSH_AT (64 * 1024)
#define READ_BUF_SIZE (64 * 1024)
#define MAX_ROUTE_SEGMENTS 16

/* The one timer of a connection is re-armed lazily: a keep-alive request that
 * arrives whole in one read costs no timer operation at all. */
enum { T_NONE, T_IDLE, T_HEAD, T_BODY, T_OWNER, T_CLOSE };

typedef enum {
    ST_IDLE,     /* keep-alive: waiting for the first byte of a request */
    ST_HEADERS,  /* reading the request line and headers */
    ST_BODY,     /* reading the body */
    ST_HANDLER,  /* the handler owns the request; no parsing until it answers */
    ST_UPGRADED, /* raw bytes belong to the upgrade hooks */
} conn_state_t;

typedef struct {
    char *method;
    char *segs[MAX_ROUTE_SEGMENTS]; /* "{name}" segments are parameters */
    size_t nsegs;
    core_http_handler_t handler;
    void *ud;
} route_t;

/* Per-request storage, kept across requests on a keep-alive connection so
 * that the steady state allocates nothing. */
typedef struct {
    core_http_req_t pub;
    core_buf_t raw;     /* url and header names/values, NUL-separated */
    core_buf_t pathbuf; /* decoded path parameters */
    size_t url_off, url_len;
    size_t hoff[2]; /* name offset, value offset of the header being read */
    size_t *hoffs;  /* pairs of offsets, converted to pointers at headers-complete */
    size_t hoffs_cap;
    core_http_header_t *hdrs;
    size_t hdrs_cap;
    size_t nheaders;
    size_t header_bytes;
    bool in_value;
} req_t;

struct core_http_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    core_http_server_t *srv;
    llhttp_t parser;
    core_http_conn_t *prev, *next;  /* all connections of the server */
    core_http_conn_t *pending_next; /* flush/resume list, NULL-terminated */
    req_t *req;                     /* allocated at the first request */
    core_buf_t in;                  /* unparsed input (pipelining, upgrade leftovers) */
    bool upgrade_refused;           /* an upgrade request got an ordinary answer: parse no more */
    core_buf_t out;                 /* queued output */
    core_buf_t wbuf;                /* output owned by the write in flight */
    const core_http_upgrade_hooks_t *hooks;
    void *hooks_ud;
    uint64_t last_progress_ms; /* last time the kernel took our output */
    uint64_t idle_since_ms;    /* when the connection last became idle */
    uint64_t phase_start_ms;   /* when the current request's head (or body) began */
    int err_status;            /* limit hit inside a parser callback */
    int handles_open;
    uint8_t state;
    uint8_t timer_kind; /* what the armed timer is for; see on_timer */
    bool pending;       /* on the server's pending list */
    bool writing;
    bool closing;     /* close requested: flush, then close the socket */
    bool closed;      /* uv_close issued */
    bool read_paused; /* by backpressure or by the owner */
    bool owner_paused;
    bool peer_eof;
    bool close_after; /* answer this request, then close */
    bool expect_continue;
};

struct core_http_server_s {
    uv_loop_t *loop;
    core_http_limits_t lim;
    uv_tcp_t listener;
    uv_prepare_t prepare;
    bool listening;
    bool draining;
    bool freeing;
    int handles_open;
    core_http_conn_t *conns;
    core_http_conn_t *pending;
    size_t nconns;
    route_t *routes;
    size_t nroutes;
    core_http_handler_t fallback;
    void *fallback_ud;
    llhttp_settings_t settings;
    void (*drain_done)(void *);
    void *drain_ud;
    char **cors; /* allowed origins; "*" allows any */
    size_t ncors;
    char *read_buf; /* one per loop: every read is parsed before the next */
    bool read_buf_busy;
    bool access_log;
    uint64_t reqid_seq;
    char reqid_prefix[12];
    char date[40];
    time_t date_at;
    core_metric_t m_req[6]; /* by status class 1xx..5xx, [0] unused */
    core_metric_t m_dur;
    core_metric_t m_conns;
    core_metric_t m_accepted;
    core_metric_t m_rejected;
    core_metric_t m_timeouts;
};

static void conn_close(core_http_conn_t *c);
static const char *cors_origin(const core_http_req_t *q, size_t *len);
static void start_read(core_http_conn_t *c);
static void on_timer(uv_timer_t *t);
static void process_input(core_http_conn_t *c, const char *data, size_t len);
static void schedule(core_http_conn_t *c);
static void arm_idle(core_http_conn_t *c);

/* ---------------------------------------------------------------------- */

void core_http_limits_default(core_http_limits_t *l)
{
    l->max_header_bytes = 16384;
    l->max_headers = 100;
    l->max_body_bytes = 1 << 20;
    l->header_timeout_ms = 10000;
    l->body_timeout_ms = 30000;
    l->idle_timeout_ms = 60000;
    l->write_timeout_ms = 30000;
    l->max_connections = 16384;
}

const char *core_http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

static const char *http_date(core_http_server_t *s)
{
    time_t now = time(NULL);
    if (now != s->date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_at = now;
    }
    return s->date;
}

/* ---- output ---------------------------------------------------------- */

static void on_write(uv_write_t *w, int status);

static void flush(core_http_conn_t *c)
{
    if (c->writing || c->closed || c->out.len == 0)
        return;
    uv_buf_t b = uv_buf_init(c->out.base, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n > 0) {
        c->last_progress_ms = uv_now(c->srv->loop);
        core_buf_consume(&c->out, (size_t)n);
    } else if (n < 0 && n != UV_EAGAIN) {
        core_buf_reset(&c->out);
        c->peer_eof = true;
        conn_close(c);
        return;
    }
    if (c->out.len == 0) {
        /* An upgraded connection mostly idles between bursts: it keeps no
         * output memory while idle (one malloc per write pass, not per
         * message, is far below the write syscall it accompanies). */
        if (c->state == ST_UPGRADED)
            core_buf_free(&c->out);
        return;
    }
    /* The kernel took less than everything: hand the rest to a write request
     * and keep queueing new output in c->out meanwhile. */
    core_buf_t tmp = c->wbuf;
    c->wbuf = c->out;
    c->out = tmp;
    core_buf_reset(&c->out);
    b = uv_buf_init(c->wbuf.base, (unsigned)c->wbuf.len);
    c->writing = true;
    /* Allocated only when the kernel pushed back: most connections never
     * need one, and an idle one should not carry it. */
    uv_write_t *wr = core_xmalloc(sizeof *wr);
    wr->data = c;
    int rc = uv_write(wr, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc) {
        free(wr);
        c->writing = false;
        core_buf_reset(&c->wbuf);
        conn_close(c);
    }
}

static void after_output(core_http_conn_t *c)
{
    if (c->closing && !c->writing && c->out.len == 0 && !c->closed) {
        conn_close(c);
    }
}

/* Tells an upgraded connection's owner that everything queued has gone to
 * the kernel. Called only from loop callbacks (a finished write, the flush
 * before the loop sleeps), never from inside the owner's own write. */
static void notify_writable(core_http_conn_t *c)
{
    if (!c->closed && !c->closing && !c->writing && c->out.len == 0 && c->state == ST_UPGRADED &&
        c->hooks && c->hooks->on_writable)
        c->hooks->on_writable(c->hooks_ud);
}

static void on_write(uv_write_t *w, int status)
{
    core_http_conn_t *c = w->data;
    free(w);
    c->writing = false;
    if (c->state == ST_UPGRADED)
        core_buf_free(&c->wbuf);
    else
        core_buf_reset(&c->wbuf);
    if (status < 0) {
        core_buf_reset(&c->out);
        c->peer_eof = true;
        conn_close(c);
        return;
    }
    c->last_progress_ms = uv_now(c->srv->loop);
    if (c->out.len)
        flush(c);
    after_output(c);
    notify_writable(c);
}

static void queue_out(core_http_conn_t *c, const void *data, size_t len)
{
    core_buf_append(&c->out, data, len);
    if (c->out.len >= OUT_FLUSH_AT)
        flush(c);
    else
        schedule(c);
}

int core_http_conn_write(core_http_conn_t *c, const void *data, size_t len, size_t limit)
{
    if (c->closing || c->closed)
        return UV_EPIPE;
    if (limit && c->out.len + c->wbuf.len + len > limit)
        return UV_ENOBUFS;
    queue_out(c, data, len);
    return 0;
}

size_t core_http_conn_queued(const core_http_conn_t *c)
{
    return c->out.len + c->wbuf.len;
}

/* ---- connection lifetime --------------------------------------------- */

static void server_maybe_done(core_http_server_t *s);

static void req_release(req_t *r)
{
    core_buf_free(&r->raw);
    core_buf_free(&r->pathbuf);
    core_buf_free(&r->pub.body);
    free(r->hoffs);
    free(r->hdrs);
    free(r);
}

static void conn_free(core_http_conn_t *c)
{
    core_http_server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    core_metrics_add(s->m_conns, -1);
    if (c->req)
        req_release(c->req);
    core_buf_free(&c->in);
    core_buf_free(&c->out);
    core_buf_free(&c->wbuf);
    free(c);
    server_maybe_done(s);
}

static void maybe_free(core_http_conn_t *c)
{
    if (c->handles_open > 0)
        return;
    /* A handler still holding the request frees the connection when it answers. */
    if (c->state == ST_HANDLER && c->req && !c->req->pub.on_abort)
        return;
    if (c->pending)
        return; /* the pending list still points at us; freed when it is walked */
    conn_free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    core_http_conn_t *c = h->data;
    c->handles_open--;
    if (c->handles_open > 0)
        return;
    if (c->state == ST_UPGRADED && c->hooks && c->hooks->on_close) {
        const core_http_upgrade_hooks_t *hk = c->hooks;
        c->hooks = NULL;
        hk->on_close(c->hooks_ud);
    }
    if (c->state == ST_HANDLER && c->req && c->req->pub.on_abort) {
        void (*abort_cb)(core_http_req_t *) = c->req->pub.on_abort;
        c->req->pub.on_abort = NULL;
        abort_cb(&c->req->pub);
        c->state = ST_IDLE;
    }
    maybe_free(c);
}

/* Closes the socket now, dropping unsent output. */
static void conn_close(core_http_conn_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

void core_http_conn_close(core_http_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (c->out.len || c->writing) {
        flush(c);
        /* Bound how long a peer that does not read can hold us. */
        if (!c->closed && c->srv->lim.write_timeout_ms) {
            c->timer_kind = T_CLOSE;
            uv_timer_start(&c->timer, on_timer, c->srv->lim.write_timeout_ms, 0);
        }
        after_output(c);
        return;
    }
    conn_close(c);
}

/* ---- pending list: flush output and resume parsing before the loop sleeps */

static void schedule(core_http_conn_t *c)
{
    if (c->pending || c->closed)
        return;
    c->pending = true;
    c->pending_next = c->srv->pending;
    c->srv->pending = c;
}

static void resume_input(core_http_conn_t *c)
{
    if (c->in.len == 0 || c->closing)
        return;
    if (c->state == ST_UPGRADED) {
        /* Bytes that arrived with the upgrade request belong to the new protocol. */
        core_buf_t tmp = c->in;
        core_buf_init(&c->in);
        if (c->hooks && c->hooks->on_data)
            c->hooks->on_data(c->hooks_ud, tmp.base, tmp.len);
        core_buf_free(&tmp);
        return;
    }
    if (c->state != ST_IDLE)
        return;
    core_buf_t tmp = c->in;
    core_buf_init(&c->in);
    process_input(c, tmp.base, tmp.len);
    core_buf_free(&tmp);
    if (c->read_paused && !c->owner_paused && c->in.len < PIPELINE_BACKLOG_MAX && !c->closing &&
        !c->peer_eof) {
        c->read_paused = false;
        start_read(c);
    }
}

static void on_prepare(uv_prepare_t *p)
{
    core_http_server_t *s = p->data;
    /* Resuming a connection may schedule it again: detach the list first. */
    while (s->pending) {
        core_http_conn_t *list = s->pending;
        s->pending = NULL;
        while (list) {
            core_http_conn_t *c = list;
            list = c->pending_next;
            c->pending = false;
            c->pending_next = NULL;
            if (c->closed) {
                maybe_free(c);
                continue;
            }
            resume_input(c);
            bool had_output = c->out.len > 0;
            if (!c->closed)
                flush(c);
            if (!c->closed)
                after_output(c);
            if (had_output)
                notify_writable(c);
        }
    }
    core_log_flush();
}

/* ---- timers ----------------------------------------------------------- */

static void respond_raw_error(core_http_conn_t *c, int status, const char *code, const char *msg);

static void timer_set(core_http_conn_t *c, int kind, uint64_t ms)
{
    c->timer_kind = (uint8_t)kind;
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static uint64_t remaining(core_http_conn_t *c, uint64_t since, uint64_t limit)
{
    uint64_t elapsed = uv_now(c->srv->loop) - since;
    return elapsed >= limit ? 0 : limit - elapsed;
}

/* Arms the header or body deadline when a read left a request incomplete. */
static void arm_phase(core_http_conn_t *c)
{
    if (c->closed)
        return;
    if (c->state == ST_HEADERS && c->timer_kind != T_HEAD)
        timer_set(c, T_HEAD, remaining(c, c->phase_start_ms, c->srv->lim.header_timeout_ms));
    else if (c->state == ST_BODY && c->timer_kind != T_BODY)
        timer_set(c, T_BODY, remaining(c, c->phase_start_ms, c->srv->lim.body_timeout_ms));
}

static void on_timer(uv_timer_t *t)
{
    core_http_conn_t *c = t->data;
    core_http_server_t *s = c->srv;
    int kind = c->timer_kind;
    c->timer_kind = T_NONE;
    if (c->closed)
        return;
    if (kind == T_CLOSE) {
        conn_close(c); /* the peer never took our last bytes */
        return;
    }
    if (c->closing)
        return;
    switch (c->state) {
    case ST_UPGRADED:
        if (kind == T_OWNER && c->hooks && c->hooks->on_timeout)
            c->hooks->on_timeout(c->hooks_ud);
        return;
    case ST_HEADERS:
    case ST_BODY: {
        bool head = c->state == ST_HEADERS;
        uint64_t left = remaining(c, c->phase_start_ms,
                                  head ? s->lim.header_timeout_ms : s->lim.body_timeout_ms);
        if (left > 0) {
            timer_set(c, head ? T_HEAD : T_BODY, left);
            return;
        }
        core_metrics_add(s->m_timeouts, 1);
        core_log_debug("http.timeout", "peer=%s state=%s", core_http_conn_peer(c),
                       head ? "headers" : "body");
        respond_raw_error(c, 408, "request_timeout", "the request was not received in time");
        return;
    }
    case ST_IDLE: {
        uint64_t left = remaining(c, c->idle_since_ms, s->lim.idle_timeout_ms);
        if (left == 0 && c->writing &&
            remaining(c, c->last_progress_ms, s->lim.write_timeout_ms) > 0)
            left = s->lim.idle_timeout_ms; /* the peer is still reading our output */
        if (left > 0) {
            timer_set(c, T_IDLE, left);
            return;
        }
        core_http_conn_close(c);
        return;
    }
    default:
        return; /* a handler has the request: the idle timer is re-armed when it answers */
    }
}

static void arm_idle(core_http_conn_t *c)
{
    if (c->closed)
        return;
    c->idle_since_ms = uv_now(c->srv->loop);
    if (c->timer_kind != T_IDLE)
        timer_set(c, T_IDLE, c->srv->lim.idle_timeout_ms);
}

void core_http_conn_set_timer(core_http_conn_t *c, uint32_t ms)
{
    if (c->closed)
        return;
    if (ms) {
        timer_set(c, T_OWNER, ms);
    } else {
        c->timer_kind = T_NONE;
        uv_timer_stop(&c->timer);
    }
}

/* ---- reading ---------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    core_http_conn_t *c = h->data;
    core_http_server_t *s = c->srv;
    /* One read buffer per loop: reads are consumed (or copied) before returning. */
    if (!s->read_buf_busy) {
        s->read_buf_busy = true;
        *buf = uv_buf_init(s->read_buf, READ_BUF_SIZE);
    } else {
        *buf = uv_buf_init(core_xmalloc(READ_BUF_SIZE), READ_BUF_SIZE);
    }
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    core_http_conn_t *c = st->data;
    core_http_server_t *s = c->srv;
    if (n > 0 && !c->closing) {
        if (c->state == ST_UPGRADED) {
            if (c->hooks && c->hooks->on_data)
                c->hooks->on_data(c->hooks_ud, buf->base, (size_t)n);
        } else if (c->state == ST_IDLE || c->state == ST_HEADERS || c->state == ST_BODY) {
            process_input(c, buf->base, (size_t)n);
        } else {
            /* Pipelined bytes behind a request still in its handler. */
            core_buf_append(&c->in, buf->base, (size_t)n);
            if (c->in.len >= PIPELINE_BACKLOG_MAX) {
                c->read_paused = true;
                uv_read_stop(st);
            }
        }
    } else if (n < 0) {
        c->peer_eof = true;
        if (c->state == ST_HANDLER) {
            /* A half-closed client may still want its answer. */
            uv_read_stop(st);
            c->close_after = true;
        } else if (!c->closing) {
            if (n == UV_EOF && (c->out.len || c->writing))
                core_http_conn_close(c);
            else
                conn_close(c);
        }
    }
    if (buf->base == s->read_buf)
        s->read_buf_busy = false;
    else if (buf->base)
        free(buf->base);
}

static void start_read(core_http_conn_t *c)
{
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

void core_http_conn_pause(core_http_conn_t *c, bool paused)
{
    if (c->closing)
        return;
    c->owner_paused = paused;
    if (paused && !c->read_paused) {
        c->read_paused = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
    } else if (!paused && c->read_paused) {
        c->read_paused = false;
        start_read(c);
    }
}

const char *core_http_conn_peer(const core_http_conn_t *c)
{
    static char buf[64];
    struct sockaddr_storage ss;
    int len = sizeof ss;
    buf[0] = '\0';
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[48];
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof ip);
            snprintf(buf, sizeof buf, "[%s]:%d", ip, ntohs(a->sin6_port));
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, ip, sizeof ip);
            snprintf(buf, sizeof buf, "%s:%d", ip, ntohs(a->sin_port));
        }
    } else {
        snprintf(buf, sizeof buf, "-");
    }
    return buf;
}

/* ---- parser callbacks -------------------------------------------------- */

static core_http_conn_t *conn_of(llhttp_t *p)
{
    return p->data;
}

static int over_header_limit(core_http_conn_t *c, size_t more)
{
    req_t *r = c->req;
    r->header_bytes += more;
    if (r->header_bytes > c->srv->lim.max_header_bytes) {
        c->err_status = 431;
        return 1;
    }
    return 0;
}

static void req_reset(req_t *r)
{
    core_buf_reset(&r->raw);
    core_buf_reset(&r->pathbuf);
    core_buf_reset(&r->pub.body);
    r->nheaders = 0;
    r->header_bytes = 0;
    r->in_value = false;
    r->url_off = r->url_len = 0;
    core_http_conn_t *conn = r->pub.conn;
    core_buf_t body = r->pub.body;
    memset(&r->pub, 0, sizeof r->pub);
    r->pub.conn = conn;
    r->pub.body = body;
    r->pub.query = "";
}

static int cb_message_begin(llhttp_t *p)
{
    core_http_conn_t *c = conn_of(p);
    if (!c->req) {
        c->req = core_xcalloc(1, sizeof *c->req);
        c->req->pub.conn = c;
    }
    req_reset(c->req);
    c->req->pub.start_ns = core_now_ns();
    c->state = ST_HEADERS;
    c->err_status = 0;
    c->expect_continue = false;
    /* The whole head must arrive within the header timeout, however slowly it
     * trickles in: a slowloris client gets no extension per byte. */
    c->phase_start_ms = uv_now(c->srv->loop);
    return 0;
}

static int cb_url(llhttp_t *p, const char *at, size_t len)
{
    core_http_conn_t *c = conn_of(p);
    if (over_header_limit(c, len))
        return HPE_USER;
    req_t *r = c->req;
    if (r->url_len == 0)
        r->url_off = r->raw.len;
    core_buf_append(&r->raw, at, len);
    r->url_len += len;
    return 0;
}

static int cb_url_complete(llhttp_t *p)
{
    core_http_conn_t *c = conn_of(p);
    if (c->req->url_len == 0)
        c->req->url_off = c->req->raw.len;
    core_buf_putc(&c->req->raw, '\0');
    c->req->hoff[0] = c->req->raw.len; /* the first header name starts here */
    return 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    core_http_conn_t *c = conn_of(p);
    if (over_header_limit(c, len))
        return HPE_USER;
    core_buf_append(&c->req->raw, at, len);
    return 0;
}

static int cb_header_field_complete(llhttp_t *p)
{
    core_http_conn_t *c = conn_of(p);
    req_t *r = c->req;
    if (over_header_limit(c, 4)) /* ": " and CRLF count against the limit too */
        return HPE_USER;
    core_buf_putc(&r->raw, '\0');
    r->in_value = true;
    r->hoff[1] = r->raw.len; /* the value starts here */
    return 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    core_http_conn_t *c = conn_of(p);
    if (over_header_limit(c, len))
        return HPE_USER;
    core_buf_append(&c->req->raw, at, len);
    return 0;
}

static int cb_header_value_complete(llhttp_t *p)
{
    core_http_conn_t *c = conn_of(p);
    req_t *r = c->req;
    core_buf_putc(&r->raw, '\0');
    if (r->nheaders >= c->srv->lim.max_headers) {
        c->err_status = 431;
        return HPE_USER;
    }
    if (2 * (r->nheaders + 1) > r->hoffs_cap) {
        r->hoffs_cap = r->hoffs_cap ? r->hoffs_cap * 2 : 32;
        r->hoffs = core_xrealloc(r->hoffs, r->hoffs_cap * sizeof *r->hoffs);
    }
    r->hoffs[2 * r->nheaders] = r->hoff[0];
    r->hoffs[2 * r->nheaders + 1] = r->hoff[1];
    r->nheaders++;
    r->in_value = false;
    r->hoff[0] = r->raw.len; /* the next name starts here */
    return 0;
}

static bool token_in_list(const char *list, const char *token)
{
    size_t tl = strlen(token);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *te = e;
        while (te > p && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if ((size_t)(te - p) == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p = e;
    }
    return false;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static bool is_tchar(char ch)
{
    return isalnum((unsigned char)ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool sane_request_id(const char *s, size_t len)
{
    if (len == 0 || len >= sizeof(((core_http_req_t *)0)->id))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
            return false;
    }
    return true;
}

static int cb_headers_complete(llhttp_t *p)
{
    core_http_conn_t *c = conn_of(p);
    core_http_server_t *s = c->srv;
    req_t *r = c->req;
    core_http_req_t *q = &r->pub;

    /* raw is final now: turn offsets into pointers. */
    if (r->nheaders > r->hdrs_cap) {
        r->hdrs_cap = r->nheaders;
        r->hdrs = core_xrealloc(r->hdrs, r->hdrs_cap * sizeof *r->hdrs);
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        core_http_header_t *h = &r->hdrs[i];
        h->name = r->raw.base + r->hoffs[2 * i];
        h->name_len = r->hoffs[2 * i + 1] - r->hoffs[2 * i] - 1;
        char *v = r->raw.base + r->hoffs[2 * i + 1];
        size_t vl = strlen(v);
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            v[--vl] = '\0'; /* trailing whitespace is not part of a field value */
        h->value = v;
        h->value_len = vl;
    }
    q->headers = r->hdrs;
    q->nheaders = r->nheaders;
    q->method = p->method;
    q->method_name = llhttp_method_name((llhttp_method_t)p->method);
    q->http_minor = p->http_minor;
    q->keep_alive = llhttp_should_keep_alive(p) != 0;
    q->upgrade = p->upgrade != 0;

    /* Request target: origin-form, or absolute-form with the authority dropped. */
    char *url = r->raw.base + r->url_off;
    if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
        char *slash = strchr(strstr(url, "//") + 2, '/');
        url = slash ? slash : (char *)"/";
    }
    char *qm = strchr(url, '?');
    if (qm) {
        *qm = '\0';
        q->query = qm + 1;
    }
    char *hash = strchr(q->query, '#');
    if (hash)
        *hash = '\0';
    q->path = url;
    q->path_len = strlen(url);

    size_t idlen = 0;
    const char *cid = core_http_header(q, "x-request-id", &idlen);
    if (cid && sane_request_id(cid, idlen)) {
        memcpy(q->id, cid, idlen);
        q->id[idlen] = '\0';
    } else {
        snprintf(q->id, sizeof q->id, "%s-%llx", s->reqid_prefix,
                 (unsigned long long)++s->reqid_seq);
    }

    /* RFC 9112 3.2: an HTTP/1.1 request needs exactly one Host. */
    size_t nhost = 0;
    for (size_t i = 0; i < r->nheaders; i++)
        if (r->hdrs[i].name_len == 4 && strncasecmp(r->hdrs[i].name, "host", 4) == 0)
            nhost++;
    if ((p->http_major == 1 && p->http_minor >= 1 && nhost != 1) || nhost > 1) {
        c->err_status = 400;
        return HPE_USER;
    }
    if (p->http_major != 1) {
        c->err_status = 505;
        return HPE_USER;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > s->lim.max_body_bytes) {
        c->err_status = 413;
        return HPE_USER;
    }
    const char *expect = core_http_header(q, "expect", NULL);
    if (expect) {
        if (strcasecmp(expect, "100-continue") != 0) {
            c->err_status = 417;
            return HPE_USER;
        }
        c->expect_continue = true;
    }
    if (q->upgrade)
        return 0;
    bool has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length);
    if (has_body) {
        c->state = ST_BODY;
        c->phase_start_ms = uv_now(s->loop);
        if (c->expect_continue) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            queue_out(c, cont, sizeof cont - 1);
        }
    }
    return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    core_http_conn_t *c = conn_of(p);
    core_buf_t *b = &c->req->pub.body;
    if (b->len + len > c->srv->lim.max_body_bytes) {
        c->err_status = 413;
        return HPE_USER;
    }
    core_buf_append(b, at, len);
    return 0;
}

static int cb_message_complete(llhttp_t *p)
{
    core_http_conn_t *c = conn_of(p);
    c->state = ST_HANDLER;
    /* Stop here: the next pipelined request is parsed after this one is answered. */
    return HPE_PAUSED;
}

/* ---- routing ---------------------------------------------------------- */

static size_t split_path(char *path, char **segs, size_t max)
{
    size_t n = 0;
    char *p = path;
    while (*p == '/')
        p++;
    while (*p) {
        if (n == max)
            return max + 1;
        segs[n++] = p;
        char *e = strchr(p, '/');
        if (!e)
            break;
        *e = '\0';
        p = e + 1;
    }
    return n;
}

int core_http_route(core_http_server_t *s, const char *method, const char *pattern,
                    core_http_handler_t handler, void *ud)
{
    if (pattern[0] != '/')
        return UV_EINVAL;
    route_t rt = {0};
    char *copy = core_xstrdup(pattern);
    rt.nsegs = split_path(copy, rt.segs, MAX_ROUTE_SEGMENTS);
    if (rt.nsegs > MAX_ROUTE_SEGMENTS) {
        free(copy);
        return UV_EINVAL;
    }
    size_t nparams = 0;
    for (size_t i = 0; i < rt.nsegs; i++) {
        rt.segs[i] = core_xstrdup(rt.segs[i]);
        if (rt.segs[i][0] == '{')
            nparams++;
    }
    free(copy);
    if (nparams > CORE_HTTP_MAX_PARAMS) {
        for (size_t i = 0; i < rt.nsegs; i++)
            free(rt.segs[i]);
        return UV_EINVAL;
    }
    rt.method = core_xstrdup(method);
    rt.handler = handler;
    rt.ud = ud;
    s->routes = core_xrealloc(s->routes, (s->nroutes + 1) * sizeof *s->routes);
    s->routes[s->nroutes++] = rt;
    return 0;
}

void core_http_route_each(const core_http_server_t *s,
                          void (*fn)(const char *method, const char *pattern, void *ud), void *ud)
{
    for (size_t i = 0; i < s->nroutes; i++) {
        const route_t *rt = &s->routes[i];
        char pattern[512] = "";
        size_t o = 0;
        for (size_t j = 0; j < rt->nsegs && o + 2 < sizeof pattern; j++)
            o += (size_t)snprintf(pattern + o, sizeof pattern - o, "/%s", rt->segs[j]);
        if (rt->nsegs == 0)
            snprintf(pattern, sizeof pattern, "/");
        fn(rt->method, pattern, ud);
    }
}

/* Percent-decodes src into dst (same or shorter); returns false on bad escapes or NUL. */
static bool pct_decode(char *dst, const char *src, size_t len, bool plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = src[i];
        if (ch == '%') {
            if (i + 2 >= len)
                return false;
            int hi = hexval((unsigned char)src[i + 1]);
            int lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return false;
            dst[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (ch == '+' && plus_is_space) {
            dst[o++] = ' ';
        } else {
            dst[o++] = ch;
        }
    }
    dst[o] = '\0';
    return true;
}

static int route_match(const route_t *rt, char **segs, size_t nsegs, core_http_req_t *q)
{
    if (rt->nsegs != nsegs)
        return 0;
    for (size_t i = 0; i < nsegs; i++) {
        if (rt->segs[i][0] == '{') {
            if (!*segs[i])
                return 0;
        } else if (strcmp(rt->segs[i], segs[i]) != 0) {
            return 0;
        }
    }
    q->nparams = 0;
    for (size_t i = 0; i < nsegs; i++) {
        if (rt->segs[i][0] != '{')
            continue;
        /* "{id}" -> "id" lives in the route; values were decoded in place */
        q->params[q->nparams].name = rt->segs[i] + 1;
        q->params[q->nparams].value = segs[i];
        q->nparams++;
    }
    return 1;
}

/* A CORS preflight to an existing route: which methods and headers a page
 * of an allowed origin may use. A refused origin gets 403 without any
 * Access-Control-* header, which the browser reports as a CORS failure. */
static void preflight(core_http_req_t *q, const char *allow)
{
    size_t len;
    if (!cors_origin(q, &len)) {
        core_http_respond_error(q, 403, "cors_origin_forbidden",
                                "this origin may not call the API from a browser");
        return;
    }
    char hdr[320];
    snprintf(hdr, sizeof hdr,
             "Access-Control-Allow-Methods: %s\r\n"
             "Access-Control-Allow-Headers: Authorization, Content-Type, X-Request-Id\r\n"
             "Access-Control-Max-Age: 600\r\n",
             allow);
    core_http_respond(q, 204, NULL, hdr, NULL, 0);
}

static void dispatch(core_http_conn_t *c)
{
    core_http_server_t *s = c->srv;
    req_t *r = c->req;
    core_http_req_t *q = &r->pub;

    core_buf_reset(&r->pathbuf);
    core_buf_append(&r->pathbuf, q->path, q->path_len + 1);
    char *segs[MAX_ROUTE_SEGMENTS + 1];
    size_t nsegs = split_path(r->pathbuf.base, segs, MAX_ROUTE_SEGMENTS);
    if (nsegs > MAX_ROUTE_SEGMENTS) {
        if (s->fallback)
            s->fallback(q, s->fallback_ud);
        else
            core_http_respond_error(q, 404, "not_found", "no such route");
        return;
    }
    for (size_t i = 0; i < nsegs; i++) {
        if (!pct_decode(segs[i], segs[i], strlen(segs[i]), false)) {
            core_http_respond_error(q, 400, "bad_path", "the path has an invalid percent-escape");
            return;
        }
    }
    bool path_found = false;
    char allow[128] = "";
    const route_t *head_fallback = NULL;
    for (size_t i = 0; i < s->nroutes; i++) {
        const route_t *rt = &s->routes[i];
        if (!route_match(rt, segs, nsegs, q))
            continue;
        path_found = true;
        if (strcmp(rt->method, q->method_name) == 0) {
            rt->handler(q, rt->ud);
            return;
        }
        if (q->method == HTTP_HEAD && strcmp(rt->method, "GET") == 0)
            head_fallback = rt;
        if (strlen(allow) + strlen(rt->method) + 3 < sizeof allow) {
            if (*allow)
                strcat(allow, ", ");
            strcat(allow, rt->method);
        }
    }
    if (path_found && q->method == HTTP_OPTIONS && s->ncors &&
        core_http_header(q, "access-control-request-method", NULL)) {
        preflight(q, allow);
        return;
    }
    if (head_fallback) {
        route_match(head_fallback, segs, nsegs, q);
        head_fallback->handler(q, head_fallback->ud);
        return;
    }
    if (path_found) {
        char hdr[160];
        snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
        core_buf_t body;
        core_buf_init(&body);
        core_buf_puts(&body, "{\"error\":{\"code\":\"method_not_allowed\",\"message\":");
        char msg[96];
        snprintf(msg, sizeof msg, "%s is not allowed here", q->method_name);
        core_json_escape(&body, msg, strlen(msg));
        core_buf_puts(&body, "}}");
        core_http_respond(q, 405, "application/json", hdr, body.base, body.len);
        core_buf_free(&body);
        return;
    }
    if (s->fallback) {
        s->fallback(q, s->fallback_ud);
        return;
    }
    core_http_respond_error(q, 404, "not_found", "no such route");
}

void core_http_limits_from_cfg(core_cfg_t *c, const core_json_t *http,
                               const char *const *extra_keys, core_http_limits_t *h)
{
    core_http_limits_default(h);
    const char *keys[24] = {"max_header_bytes",  "max_headers",     "max_body_bytes",
                            "header_timeout_ms", "body_timeout_ms", "idle_timeout_ms",
                            "write_timeout_ms",  "max_connections"};
    size_t n = 8;
    for (size_t i = 0; extra_keys && extra_keys[i] && n < 23; i++)
        keys[n++] = extra_keys[i];
    keys[n] = NULL;
    core_cfg_known_keys(c, http, "http", keys);
    int64_t v;
    core_cfg_int(c, http, "http", "max_header_bytes", false, (int64_t)h->max_header_bytes, 1024,
                 1 << 20, &v);
    h->max_header_bytes = (size_t)v;
    core_cfg_int(c, http, "http", "max_headers", false, (int64_t)h->max_headers, 8, 1000, &v);
    h->max_headers = (size_t)v;
    core_cfg_int(c, http, "http", "max_body_bytes", false, (int64_t)h->max_body_bytes, 1024,
                 64 << 20, &v);
    h->max_body_bytes = (size_t)v;
    static const struct {
        const char *key;
        size_t off;
        int64_t min, max;
    } ms[] = {
        {"header_timeout_ms", offsetof(core_http_limits_t, header_timeout_ms), 100, 600000},
        {"body_timeout_ms", offsetof(core_http_limits_t, body_timeout_ms), 100, 600000},
        {"idle_timeout_ms", offsetof(core_http_limits_t, idle_timeout_ms), 100, 3600000},
        {"write_timeout_ms", offsetof(core_http_limits_t, write_timeout_ms), 100, 600000},
        {"max_connections", offsetof(core_http_limits_t, max_connections), 1, 1000000},
    };
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        uint32_t *dst = (uint32_t *)((char *)h + ms[i].off);
        core_cfg_int(c, http, "http", ms[i].key, false, *dst, ms[i].min, ms[i].max, &v);
        *dst = (uint32_t)v;
    }
}

void core_http_set_fallback(core_http_server_t *s, core_http_handler_t handler, void *ud)
{
    s->fallback = handler;
    s->fallback_ud = ud;
}

/* ---- the parse loop ---------------------------------------------------- */

static void finish_request_state(core_http_conn_t *c);

static const char *parse_error_message(int err, int *status, const char **code)
{
    switch (err) {
    case HPE_INVALID_METHOD:
        *status = 501;
        *code = "not_implemented";
        return "the request method is not supported";
    case HPE_INVALID_VERSION:
        *status = 505;
        *code = "http_version_not_supported";
        return "only HTTP/1.0 and HTTP/1.1 are supported";
    case HPE_INVALID_URL:
        *status = 400;
        *code = "bad_request";
        return "the request target is malformed";
    default:
        *status = 400;
        *code = "bad_request";
        return "the request is malformed";
    }
}

static const char *limit_message(int status, const char **code)
{
    switch (status) {
    case 431:
        *code = "headers_too_large";
        return "the request headers are too large or too many";
    case 413:
        *code = "body_too_large";
        return "the request body is too large";
    case 417:
        *code = "expectation_failed";
        return "only Expect: 100-continue is supported";
    case 505:
        *code = "http_version_not_supported";
        return "only HTTP/1.0 and HTTP/1.1 are supported";
    default:
        *code = "bad_request";
        return "the request needs exactly one Host header";
    }
}

static void process_input(core_http_conn_t *c, const char *data, size_t len)
{
    /* Pipelined requests answered synchronously are parsed in this loop, not
     * by recursion, so a burst of thousands of tiny requests cannot blow the stack. */
    core_buf_t owned;
    core_buf_init(&owned);
    while (len > 0 && !c->closing) {
        /* The last answer said the connection ends: nothing after it is
         * parsed (after an upgrade request llhttp would hand that same
         * request back, and it would run twice). */
        if (c->upgrade_refused && c->state == ST_IDLE)
            break;
        llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
        if (err == HPE_OK)
            break; /* all consumed; the request continues in the next read */
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&c->parser);
            size_t used = pos ? (size_t)(pos - data) : len;
            if (used > len)
                used = len;
            if (err == HPE_PAUSED)
                llhttp_resume(&c->parser);
            else
                /* The parser cannot go on after an upgrade request: whatever
                 * follows belongs to the new protocol, or the connection ends. */
                c->close_after = true;
            if (len > used)
                core_buf_append(&c->in, data + used, len - used);
            len = 0;
            dispatch(c);
            /* A connection that will close after this answer parses nothing
             * more: after an upgrade request llhttp would hand the same
             * request back (HPE_PAUSED_UPGRADE) and it would run twice. */
            if (c->state == ST_IDLE && !c->closing && !c->upgrade_refused && c->in.len) {
                core_buf_free(&owned);
                owned = c->in;
                core_buf_init(&c->in);
                data = owned.base;
                len = owned.len;
            }
            continue;
        }
        /* A parse error or a limit hit in a callback: answer and close. */
        int status;
        const char *code;
        const char *msg;
        if (c->err_status) { /* a limit hit in one of our callbacks */
            status = c->err_status;
            msg = limit_message(status, &code);
        } else {
            msg = parse_error_message(err, &status, &code);
            /* An unknown but well-formed method token is 501 (RFC 9110 9.1);
             * bytes that are no token at all (TLS on a plaintext port) are 400. */
            const char *pos = llhttp_get_error_pos(&c->parser);
            if (err == HPE_INVALID_METHOD && pos >= data && pos < data + len && !is_tchar(*pos) &&
                *pos != ' ') {
                status = 400;
                code = "bad_request";
                msg = "the request line is malformed";
            }
        }
        core_log_debug("http.bad_request", "peer=%s status=%d llhttp=%s", core_http_conn_peer(c),
                       status, llhttp_errno_name(err));
        respond_raw_error(c, status, code, msg);
        break;
    }
    core_buf_free(&owned);
    arm_phase(c);
}

/* Answers outside of a dispatched request (parse errors, limits, timeouts)
 * and closes: the rest of the input cannot be trusted. */
static void respond_raw_error(core_http_conn_t *c, int status, const char *code, const char *msg)
{
    if (!c->req) {
        c->req = core_xcalloc(1, sizeof *c->req);
        c->req->pub.conn = c;
        req_reset(c->req);
    }
    core_http_req_t *q = &c->req->pub;
    if (!q->id[0])
        snprintf(q->id, sizeof q->id, "%s-%llx", c->srv->reqid_prefix,
                 (unsigned long long)++c->srv->reqid_seq);
    if (!q->method_name)
        q->method_name = "-";
    if (!q->path)
        q->path = "-";
    c->close_after = true;
    c->state = ST_HANDLER;
    core_http_respond_error(q, status, code, msg);
}

/* ---- responding --------------------------------------------------------- */

const char *core_http_header(const core_http_req_t *q, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < q->nheaders; i++) {
        const core_http_header_t *h = &q->headers[i];
        if (h->name_len == nl && strncasecmp(h->name, name, nl) == 0) {
            if (len)
                *len = h->value_len;
            return h->value;
        }
    }
    return NULL;
}

bool core_http_header_has_token(const core_http_req_t *q, const char *name, const char *token)
{
    for (size_t i = 0; i < q->nheaders; i++) {
        const core_http_header_t *h = &q->headers[i];
        if (strlen(name) == h->name_len && strncasecmp(h->name, name, h->name_len) == 0 &&
            token_in_list(h->value, token))
            return true;
    }
    return false;
}

const char *core_http_param(const core_http_req_t *q, const char *name)
{
    for (size_t i = 0; i < q->nparams; i++) {
        const char *pn = q->params[i].name;
        size_t nl = strlen(name);
        if (strncmp(pn, name, nl) == 0 && pn[nl] == '}')
            return q->params[i].value;
    }
    return NULL;
}

int core_http_query(const core_http_req_t *q, const char *name, char *dst, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = q->query;
    while (p && *p) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t)(eq - p) : plen;
        if (klen == nl && strncmp(p, name, nl) == 0) {
            const char *v = eq ? eq + 1 : p + plen;
            size_t vlen = eq ? plen - klen - 1 : 0;
            if (vlen + 1 > cap)
                return -1;
            if (!pct_decode(dst, v, vlen, true))
                return -1;
            return (int)strlen(dst);
        }
        p = amp ? amp + 1 : NULL;
    }
    return -1;
}

bool core_http_has_query(const core_http_req_t *q, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = q->query; p && *p;) {
        if (strncmp(p, name, nl) == 0 && (p[nl] == '=' || p[nl] == '&' || p[nl] == '\0'))
            return true;
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return false;
}

static void finish_request_state(core_http_conn_t *c)
{
    core_http_server_t *s = c->srv;
    c->state = ST_IDLE; /* answered: the request no longer pins the connection */
    if (c->close_after || s->draining || c->peer_eof) {
        core_http_conn_close(c);
        return;
    }
    arm_idle(c);
    if (c->in.len)
        schedule(c); /* parse the next pipelined request before the loop sleeps */
}

static void access_log(core_http_req_t *q, int status, size_t bytes)
{
    core_http_conn_t *c = q->conn;
    core_http_server_t *s = c->srv;
    double secs = (double)(core_now_ns() - q->start_ns) / 1e9;
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        core_metrics_add(s->m_req[cls], 1);
    core_metrics_observe(s->m_dur, secs);
    if (!s->access_log || CORE_LOG_INFO < core_log_level)
        return;
    /* The path only: query strings may carry tokens. */
    char path[256];
    core_log_quote(path, sizeof path, q->path, q->path_len);
    core_log(CORE_LOG_INFO, q->id, "http.access",
             "method=%s path=%s status=%d bytes=%zu ms=%.3f peer=%s%s%s", q->method_name, path,
             status, bytes, secs * 1000, core_http_conn_peer(c), q->access_note ? " " : "",
             q->access_note ? q->access_note : "");
}

/* ---- CORS ------------------------------------------------------------ */

/* The request's Origin when it is allowed, else NULL. */
static const char *cors_origin(const core_http_req_t *q, size_t *len)
{
    const core_http_server_t *s = q->conn->srv;
    const char *o = core_http_header(q, "origin", len);
    if (!o || *len == 0)
        return NULL;
    for (size_t i = 0; i < s->ncors; i++) {
        const char *a = s->cors[i];
        if (strcmp(a, "*") == 0 || (strlen(a) == *len && strncasecmp(a, o, *len) == 0))
            return o;
    }
    return NULL;
}

static void cors_headers(const core_http_req_t *q, core_buf_t *o)
{
    size_t len;
    const char *origin = cors_origin(q, &len);
    /* Caches must not serve one origin's answer to another. */
    core_buf_puts(o, "Vary: Origin\r\n");
    if (!origin)
        return;
    /* The origin is echoed (llhttp refuses CR and LF in header values). */
    core_buf_puts(o, "Access-Control-Allow-Origin: ");
    core_buf_append(o, origin, len);
    core_buf_puts(o, "\r\nAccess-Control-Expose-Headers: Retry-After, X-Request-Id, "
                     "WWW-Authenticate, Location, Meridian-Home-Region\r\n");
}

void core_http_set_cors(core_http_server_t *s, char *const *origins, size_t n)
{
    for (size_t i = 0; i < s->ncors; i++)
        free(s->cors[i]);
    free(s->cors);
    s->cors = n ? core_xcalloc(n, sizeof *s->cors) : NULL;
    s->ncors = n;
    for (size_t i = 0; i < n; i++)
        s->cors[i] = core_xstrdup(origins[i]);
}

void core_http_respond(core_http_req_t *q, int status, const char *content_type,
                       const char *extra_headers, const void *body, size_t len)
{
    core_http_conn_t *c = q->conn;
    core_http_server_t *s = c->srv;
    assert(c->state == ST_HANDLER);
    q->on_abort = NULL;
    if (c->closed) {
        /* The client left while the handler worked: nothing to send. */
        c->state = ST_IDLE;
        maybe_free(c);
        return;
    }
    /* A request that asked for an upgrade and got an ordinary answer ends
     * its connection: llhttp cannot parse on after an upgrade request, and a
     * client (an edge's pool) that sent more on it would have that taken for
     * the old request again. */
    bool closing = c->close_after || s->draining || c->peer_eof || !q->keep_alive || q->upgrade;
    if (q->upgrade)
        c->upgrade_refused = true;
    if (closing)
        c->close_after = true;
    core_buf_t *o = &c->out;
    core_buf_reserve(o, 256 + len);
    /* Built by hand: printf was the largest user-space cost per request. */
    char code[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10), ' '};
    core_buf_append(o, "HTTP/1.1 ", 9);
    core_buf_append(o, code, 4);
    core_buf_puts(o, core_http_status_text(status));
    core_buf_append(o, "\r\nDate: ", 8);
    core_buf_puts(o, http_date(s));
    core_buf_append(o, "\r\nX-Request-Id: ", 16);
    core_buf_puts(o, q->id);
    core_buf_append(o, "\r\n", 2);
    if (status == 204 || status == 304) {
        len = 0; /* RFC 9110 8.6: no Content-Length, and no content */
    } else {
        char num[24];
        size_t n = sizeof num;
        size_t v = len;
        do {
            num[--n] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        core_buf_append(o, "Content-Length: ", 16);
        core_buf_append(o, num + n, sizeof num - n);
        core_buf_append(o, "\r\n", 2);
    }
    if (content_type) {
        core_buf_append(o, "Content-Type: ", 14);
        core_buf_puts(o, content_type);
        core_buf_append(o, "\r\n", 2);
    }
    if (closing)
        core_buf_puts(o, "Connection: close\r\n");
    else if (c->parser.http_minor == 0)
        core_buf_puts(o, "Connection: keep-alive\r\n");
    if (s->ncors)
        cors_headers(q, o);
    if (extra_headers)
        core_buf_puts(o, extra_headers);
    core_buf_puts(o, "\r\n");
    if (q->method != HTTP_HEAD)
        core_buf_append(o, body, len);
    if (s->lim.max_body_bytes && q->body.cap > 4 * 65536)
        core_buf_free(&q->body); /* do not keep a large body buffer on an idle connection */
    access_log(q, status, len);
    if (o->len >= OUT_FLUSH_AT)
        flush(c);
    else
        schedule(c);
    finish_request_state(c);
}

void core_http_respond_json(core_http_req_t *q, int status, const core_buf_t *body)
{
    core_http_respond(q, status, "application/json", NULL, body->base, body->len);
}

void core_http_respond_error_h(core_http_req_t *q, int status, const char *code,
                               const char *message, const char *extra_headers)
{
    core_buf_t b;
    core_buf_init(&b);
    core_buf_puts(&b, "{\"error\":{\"code\":");
    core_json_escape(&b, code, strlen(code));
    core_buf_puts(&b, ",\"message\":");
    core_json_escape(&b, message, strlen(message));
    core_buf_puts(&b, "}}");
    if (!extra_headers && (status == 503 || status == 429))
        extra_headers = "Retry-After: 1\r\n";
    core_http_respond(q, status, "application/json", extra_headers, b.base, b.len);
    core_buf_free(&b);
}

void core_http_respond_error(core_http_req_t *q, int status, const char *code, const char *message)
{
    core_http_respond_error_h(q, status, code, message, NULL);
}

int core_http_upgrade(core_http_req_t *q, const char *head, size_t len,
                      const core_http_upgrade_hooks_t *hooks, void *ud)
{
    core_http_conn_t *c = q->conn;
    assert(c->state == ST_HANDLER);
    if (c->closing)
        return UV_EPIPE;
    access_log(q, 101, 0);
    c->state = ST_UPGRADED;
    c->hooks = hooks;
    c->hooks_ud = ud;
    c->close_after = false;
    queue_out(c, head, len);
    c->timer_kind = T_NONE;
    uv_timer_stop(&c->timer);
    /* The request is done with; an upgraded connection keeps no HTTP state. */
    req_release(c->req);
    c->req = NULL;
    if (c->in.len)
        schedule(c);
    return 0;
}

/* ---- accepting ---------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status)
{
    core_http_server_t *s = server->data;
    if (status < 0) {
        core_log_warn("http.accept_failed", "error=%s", uv_strerror(status));
        return;
    }
    core_http_conn_t *c = core_xcalloc(1, sizeof *c);
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    core_metrics_add(s->m_conns, 1);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    if (s->nconns > s->lim.max_connections || s->draining) {
        core_metrics_add(s->m_rejected, 1);
        conn_close(c);
        return;
    }
    core_metrics_add(s->m_accepted, 1);
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->state = ST_IDLE;
    c->last_progress_ms = uv_now(s->loop);
    arm_idle(c);
    start_read(c);
}

core_http_server_t *core_http_server_new(uv_loop_t *loop, const core_http_limits_t *limits)
{
    core_http_server_t *s = core_xcalloc(1, sizeof *s);
    s->loop = loop;
    if (limits)
        s->lim = *limits;
    else
        core_http_limits_default(&s->lim);
    s->read_buf = core_xmalloc(READ_BUF_SIZE);
    s->access_log = true;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = cb_message_begin;
    s->settings.on_url = cb_url;
    s->settings.on_url_complete = cb_url_complete;
    s->settings.on_header_field = cb_header_field;
    s->settings.on_header_field_complete = cb_header_field_complete;
    s->settings.on_header_value = cb_header_value;
    s->settings.on_header_value_complete = cb_header_value_complete;
    s->settings.on_headers_complete = cb_headers_complete;
    s->settings.on_body = cb_body;
    s->settings.on_message_complete = cb_message_complete;
    uint32_t rnd = randombytes_random();
    snprintf(s->reqid_prefix, sizeof s->reqid_prefix, "%08x", rnd);
    uv_prepare_init(loop, &s->prepare);
    s->prepare.data = s;
    uv_prepare_start(&s->prepare, on_prepare);
    s->handles_open = 1;

    static const char *classes[] = {NULL, "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int i = 1; i <= 5; i++) {
        char labels[32];
        snprintf(labels, sizeof labels, "code=\"%s\"", classes[i]);
        s->m_req[i] = core_metrics_counter("meridian_http_requests_total",
                                           "HTTP requests answered, by status class.", labels);
    }
    s->m_dur = core_metrics_histogram("meridian_http_request_duration_seconds",
                                      "Time from the first byte of a request to its answer.", "",
                                      core_metrics_latency_bounds, core_metrics_latency_nbounds);
    s->m_conns = core_metrics_gauge("meridian_http_connections", "Open client connections.", "");
    s->m_accepted = core_metrics_counter("meridian_http_connections_accepted_total",
                                         "Client connections accepted.", "");
    s->m_rejected =
        core_metrics_counter("meridian_http_connections_rejected_total",
                             "Client connections refused over the connection limit.", "");
    s->m_timeouts = core_metrics_counter("meridian_http_request_timeouts_total",
                                         "Requests closed by the header or body timeout.", "");
    return s;
}

int core_http_listen(core_http_server_t *s, int fd, const char *host, int port)
{
    int rc = uv_tcp_init(s->loop, &s->listener);
    if (rc)
        return rc;
    s->listener.data = s;
    s->handles_open++;
    s->listening = true;
    if (fd >= 0) {
        rc = uv_tcp_open(&s->listener, fd);
    } else {
        struct sockaddr_storage ss;
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
        if (rc)
            rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
        if (!rc)
            rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
    }
    if (!rc)
        rc = uv_listen((uv_stream_t *)&s->listener, 4096, on_connection);
    return rc;
}

void core_http_server_set_access_log(core_http_server_t *s, bool on)
{
    s->access_log = on;
}

size_t core_http_server_connections(const core_http_server_t *s)
{
    return s->nconns;
}

static void on_server_handle_closed(uv_handle_t *h)
{
    core_http_server_t *s = h->data;
    s->handles_open--;
    server_maybe_done(s);
}

static void stop_listening(core_http_server_t *s)
{
    if (s->listening) {
        s->listening = false;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    }
}

static void server_maybe_done(core_http_server_t *s)
{
    if (s->draining && s->nconns == 0 && s->drain_done) {
        void (*done)(void *) = s->drain_done;
        s->drain_done = NULL;
        done(s->drain_ud);
    }
    if (s->freeing && s->nconns == 0 && s->handles_open == 0) {
        for (size_t i = 0; i < s->nroutes; i++) {
            free(s->routes[i].method);
            for (size_t j = 0; j < s->routes[i].nsegs; j++)
                free(s->routes[i].segs[j]);
        }
        free(s->routes);
        for (size_t i = 0; i < s->ncors; i++)
            free(s->cors[i]);
        free(s->cors);
        free(s->read_buf);
        free(s);
    }
}

void core_http_drain(core_http_server_t *s, void (*done)(void *ud), void *ud)
{
    s->draining = true;
    s->drain_done = done;
    s->drain_ud = ud;
    stop_listening(s);
    for (core_http_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        if (c->state == ST_UPGRADED) {
            if (c->hooks && c->hooks->on_drain)
                c->hooks->on_drain(c->hooks_ud);
            else
                core_http_conn_close(c);
        } else if (c->state == ST_IDLE && c->in.len == 0) {
            core_http_conn_close(c);
        } else {
            /* In flight: answered with Connection: close, then closed. */
            c->close_after = true;
        }
    }
    server_maybe_done(s);
}

void core_http_server_free(core_http_server_t *s)
{
    if (s->freeing)
        return;
    s->freeing = true;
    s->drain_done = NULL;
    stop_listening(s);
    for (core_http_conn_t *c = s->conns; c; c = c->next)
        conn_close(c);
    uv_prepare_stop(&s->prepare);
    uv_close((uv_handle_t *)&s->prepare, on_server_handle_closed);
    server_maybe_done(s);
}
