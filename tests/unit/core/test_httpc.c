/* Unit tests for core/httpc.c against a tiny HTTP server on the same libuv
 * loop (127.0.0.1, an ephemeral port). The server answers each request it
 * reads with the next scripted action, so every test states exactly what the
 * origin does: answer and keep the connection, answer and close, close without
 * answering, or hold the request until the test releases it. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "core/buf.h"
#include "core/core.h"
#include "core/httpc.h"

/* ---- the scripted origin ---------------------------------------------------- */

typedef enum {
    A_RESPOND,       /* write text, keep the connection */
    A_RESPOND_CLOSE, /* write text, then close */
    A_CLOSE,         /* close without answering */
    A_HOLD,          /* answer nothing until the test calls srv_release */
    A_RESPOND_RAW,   /* write text, then treat everything that follows as raw bytes */
} action_kind_t;

typedef struct {
    action_kind_t kind;
    const char *text;
} action_t;

typedef struct fx_s fx_t;

typedef struct {
    uv_tcp_t tcp;
    fx_t *f;
    core_buf_t in;
    bool raw, closing;
    int requests;
    int slot;
} sconn_t;

struct fx_s {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_timer_t guard;
    bool guard_fired;
    int port;
    const action_t *script;
    size_t nscript, next;
    int accepted, requests, closed;
    sconn_t *held;
    sconn_t *last;
    core_buf_t last_request;
    core_buf_t raw_in;  /* bytes after an upgrade */
    sconn_t *conns[64]; /* the server's open connections */
};

static void on_sconn_closed(uv_handle_t *h)
{
    sconn_t *c = h->data;
    c->f->closed++;
    c->f->conns[c->slot] = NULL;
    if (c->f->held == c)
        c->f->held = NULL;
    if (c->f->last == c)
        c->f->last = NULL;
    core_buf_free(&c->in);
    free(c);
}

static void sconn_close(sconn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_sconn_closed);
}

static void on_swritten(uv_write_t *w, int status)
{
    free(w->data);
    free(w);
}

static void swrite(sconn_t *c, const char *text, size_t len)
{
    uv_write_t *w = malloc(sizeof *w);
    char *copy = malloc(len ? len : 1);
    memcpy(copy, text, len);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    assert_int_equal(uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_swritten), 0);
}

/* Answers a held request. */
static void srv_release(fx_t *f, const char *text, bool close_after)
{
    assert_non_null(f->held);
    sconn_t *c = f->held;
    f->held = NULL;
    swrite(c, text, strlen(text));
    if (close_after)
        sconn_close(c);
}

static void srv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    b->base = malloc(65536);
    b->len = 65536;
}

static void srv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    sconn_t *c = s->data;
    fx_t *f = c->f;
    if (n < 0) {
        free(b->base);
        sconn_close(c);
        return;
    }
    if (c->raw) {
        core_buf_append(&f->raw_in, b->base, (size_t)n);
        free(b->base);
        return;
    }
    core_buf_append(&c->in, b->base, (size_t)n);
    free(b->base);
    /* Requests without bodies: each ends at an empty line. */
    char *end;
    while (!c->closing && !c->raw && c->in.len &&
           (end = memmem(c->in.base, c->in.len, "\r\n\r\n", 4)) != NULL) {
        size_t len = (size_t)(end - c->in.base) + 4;
        core_buf_reset(&f->last_request);
        core_buf_append(&f->last_request, c->in.base, len);
        core_buf_consume(&c->in, len);
        f->requests++;
        c->requests++;
        f->last = c;
        if (f->next >= f->nscript)
            fail_msg("request %d is not in the script", f->requests);
        const action_t *a = &f->script[f->next++];
        switch (a->kind) {
        case A_RESPOND:
            swrite(c, a->text, strlen(a->text));
            break;
        case A_RESPOND_CLOSE:
            swrite(c, a->text, strlen(a->text));
            sconn_close(c);
            break;
        case A_CLOSE:
            sconn_close(c);
            break;
        case A_HOLD:
            f->held = c;
            break;
        case A_RESPOND_RAW:
            swrite(c, a->text, strlen(a->text));
            c->raw = true;
            core_buf_append(&f->raw_in, c->in.base, c->in.len);
            core_buf_reset(&c->in);
            break;
        }
    }
}

static void on_accept(uv_stream_t *l, int status)
{
    fx_t *f = l->data;
    assert_int_equal(status, 0);
    sconn_t *c = calloc(1, sizeof *c);
    c->f = f;
    core_buf_init(&c->in);
    uv_tcp_init(&f->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    assert_true(f->accepted < 64);
    c->slot = f->accepted;
    f->conns[c->slot] = c;
    f->accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, srv_alloc, srv_read);
}

static void on_guard(uv_timer_t *t)
{
    ((fx_t *)t->data)->guard_fired = true;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    uv_loop_init(&f->loop);
    uv_tcp_init(&f->loop, &f->listener);
    f->listener.data = f;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&f->listener, (const struct sockaddr *)&sa, 0) ||
        uv_listen((uv_stream_t *)&f->listener, 64, on_accept))
        return -1;
    struct sockaddr_storage name;
    int len = sizeof name;
    uv_tcp_getsockname(&f->listener, (struct sockaddr *)&name, &len);
    f->port = ntohs(((struct sockaddr_in *)&name)->sin_port);
    uv_timer_init(&f->loop, &f->guard);
    f->guard.data = f;
    uv_timer_start(&f->guard, on_guard, 10000, 0);
    core_buf_init(&f->last_request);
    core_buf_init(&f->raw_in);
    *state = f;
    return 0;
}

/* Whatever a failed test left open (a pool it could not free) is closed
 * without its callbacks: only a failing test leaks. */
static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int teardown(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 64; i++)
        if (f->conns[i])
            sconn_close(f->conns[i]);
    uv_walk(&f->loop, close_walk, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    /* Every handle the client made is closed and gone: nothing leaks. */
    int rc = uv_loop_close(&f->loop);
    core_buf_free(&f->last_request);
    core_buf_free(&f->raw_in);
    free(f);
    return rc == 0 ? 0 : -1;
}

#define SCRIPT(f, ...)                                                                             \
    do {                                                                                           \
        static const action_t s_[] = {__VA_ARGS__};                                                \
        (f)->script = s_;                                                                          \
        (f)->nscript = sizeof s_ / sizeof s_[0];                                                   \
        (f)->next = 0;                                                                             \
    } while (0)

/* Turns the loop until cond holds; the guard timer turns a hang into a failure. */
#define RUN_UNTIL(f, cond)                                                                         \
    do {                                                                                           \
        while (!(cond)) {                                                                          \
            if ((f)->guard_fired)                                                                  \
                fail_msg("timed out waiting for: %s", #cond);                                      \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                                       \
        }                                                                                          \
    } while (0)

/* ---- the client side ----------------------------------------------------------- */

typedef struct {
    int calls;
    int err;
    int status;
    char body[8192];
    size_t body_len;
    size_t nheaders;
    char hdr0[64];
    uint64_t connect_ns;
    bool take; /* take the socket of a 101 */
    uv_tcp_t *taken;
    core_buf_t extra;
    const bool *in_send; /* set while core_httpc_send runs */
    bool ran_inside_send;
} result_t;

static void on_resp(core_httpc_req_t *r, const core_httpc_resp_t *resp, int err, void *ud)
{
    result_t *res = ud;
    res->calls++;
    res->err = err;
    if (res->in_send && *res->in_send)
        res->ran_inside_send = true;
    if (!resp)
        return;
    res->status = resp->status;
    res->body_len = resp->body_len;
    memcpy(res->body, resp->body, resp->body_len < sizeof res->body ? resp->body_len : 0);
    res->nheaders = resp->nheaders;
    if (resp->nheaders)
        snprintf(res->hdr0, sizeof res->hdr0, "%.*s: %.*s", (int)resp->headers[0].name_len,
                 resp->headers[0].name, (int)resp->headers[0].value_len, resp->headers[0].value);
    res->connect_ns = resp->connect_ns;
    if (res->take) {
        core_buf_init(&res->extra);
        res->taken = core_httpc_take_socket(r, &res->extra);
    }
}

static core_httpc_t *pool(fx_t *f, core_httpc_opts_t o)
{
    o.host = "127.0.0.1";
    if (!o.port)
        o.port = f->port;
    core_httpc_t *p = core_httpc_new(&f->loop, &o);
    assert_non_null(p);
    return p;
}

static core_httpc_req_t *send_req(core_httpc_t *p, const char *method, const char *path, int flags,
                                  result_t *res)
{
    core_buf_t m;
    core_buf_init(&m);
    core_buf_appendf(&m, "%s %s HTTP/1.1\r\nHost: origin\r\n\r\n", method, path);
    core_httpc_req_t *r = NULL;
    assert_int_equal(core_httpc_send(p, &m, flags, on_resp, res, &r), 0);
    assert_int_equal(m.len, 0); /* taken over */
    core_buf_free(&m);
    return r;
}

static core_httpc_req_t *get(core_httpc_t *p, const char *path, int flags, result_t *res)
{
    return send_req(p, "GET", path, flags, res);
}

#define OK_HELLO "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: a\r\n\r\nhello"

/* ---- tests ------------------------------------------------------------------------ */

static void test_get_content_length(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t res = {0};
    get(p, "/a?b=c", CORE_HTTPC_IDEMPOTENT, &res);
    assert_int_equal(res.calls, 0); /* never from inside send */
    RUN_UNTIL(f, res.calls);
    assert_int_equal(res.err, 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, 5);
    assert_memory_equal(res.body, "hello", 5);
    assert_int_equal(res.nheaders, 2);
    assert_string_equal(res.hdr0, "Content-Length: 5");
    assert_true(res.connect_ns > 0);
    assert_string_equal(core_buf_cstr(&f->last_request),
                        "GET /a?b=c HTTP/1.1\r\nHost: origin\r\n\r\n");
    assert_int_equal(core_httpc_open(p), 1);
    assert_int_equal(core_httpc_idle(p), 1);
    core_httpc_free(p);
    RUN_UNTIL(f, f->closed == 1); /* the pool's connection goes away with it */
}

static void test_chunked(void **state)
{
    fx_t *f = *state;
    SCRIPT(f,
           {A_RESPOND, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"},
           {A_RESPOND, "HTTP/1.1 204 No Content\r\n\r\n"});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t res = {0};
    get(p, "/c", 0, &res);
    RUN_UNTIL(f, res.calls);
    assert_int_equal(res.err, 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, 11);
    assert_memory_equal(res.body, "hello world", 11);
    /* The connection stays usable after a chunked body: the next answer parses. */
    result_t r2 = {0};
    get(p, "/d", 0, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, 0);
    assert_int_equal(r2.status, 204);
    assert_int_equal(r2.body_len, 0);
    assert_int_equal(f->accepted, 1);
    core_httpc_free(p);
}

static void test_keep_alive_reuse(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO}, {A_RESPOND, OK_HELLO}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    get(p, "/1", 0, &r1);
    assert_int_equal(core_httpc_open(p), 1);
    assert_int_equal(core_httpc_idle(p), 0);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(core_httpc_idle(p), 1);
    assert_true(r1.connect_ns > 0);
    get(p, "/2", 0, &r2);
    assert_int_equal(core_httpc_idle(p), 0); /* taken at once */
    assert_int_equal(core_httpc_open(p), 1);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, 0);
    assert_int_equal(r2.status, 200);
    assert_int_equal(r2.connect_ns, 0); /* reused */
    get(p, "/3", 0, &r3);
    RUN_UNTIL(f, r3.calls);
    assert_int_equal(r3.err, 0);
    assert_int_equal(f->accepted, 1);
    assert_int_equal(f->requests, 3);
    assert_int_equal(core_httpc_open(p), 1);
    assert_int_equal(core_httpc_idle(p), 1);
    core_httpc_free(p);
}

/* "Connection: close" and HTTP/1.0 answers are not kept. */
static void test_connection_close_not_kept(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
           {A_RESPOND, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    get(p, "/1", 0, &r1);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(r1.status, 200);
    assert_int_equal(core_httpc_open(p), 0);
    get(p, "/2", 0, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.status, 200);
    assert_int_equal(core_httpc_open(p), 0);
    get(p, "/3", 0, &r3);
    RUN_UNTIL(f, r3.calls);
    assert_int_equal(f->accepted, 3);
    assert_int_equal(core_httpc_idle(p), 1);
    core_httpc_free(p);
}

/* The origin closes a kept-alive connection while it is idle: the pool notices
 * and the next request opens a new one without the caller seeing anything. */
static void test_idle_close_noticed(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND_CLOSE, OK_HELLO}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0};
    get(p, "/1", 0, &r1);
    RUN_UNTIL(f, r1.calls && f->closed == 1 && core_httpc_open(p) == 0);
    assert_int_equal(core_httpc_idle(p), 0);
    get(p, "/2", 0, &r2); /* not even idempotent: nothing was sent on a dead connection */
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, 0);
    assert_int_equal(r2.status, 200);
    assert_true(r2.connect_ns > 0);
    assert_int_equal(f->accepted, 2);
    core_httpc_free(p);
}

/* The origin closes a kept-alive connection just as a request reaches it
 * (nothing answered): an idempotent request is sent again, once, on a new
 * connection, and its owner sees only the answer. */
static void test_idempotent_retried_once(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO}, {A_CLOSE, NULL}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0};
    get(p, "/1", 0, &r1);
    RUN_UNTIL(f, r1.calls);
    get(p, "/2", CORE_HTTPC_IDEMPOTENT, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r2.err, 0);
    assert_int_equal(r2.status, 200);
    assert_int_equal(f->accepted, 2);
    assert_int_equal(f->requests, 3);
    assert_string_equal(core_buf_cstr(&f->last_request), "GET /2 HTTP/1.1\r\nHost: origin\r\n\r\n");
    core_httpc_free(p);
}

/* Only once: a second failure, on the fresh connection, reaches the owner. */
static void test_retry_not_repeated(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO}, {A_CLOSE, NULL}, {A_CLOSE, NULL});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0};
    get(p, "/1", 0, &r1);
    RUN_UNTIL(f, r1.calls);
    get(p, "/2", CORE_HTTPC_IDEMPOTENT, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, UV_ECONNRESET);
    assert_int_equal(f->requests, 3);
    assert_int_equal(f->accepted, 2);
    core_httpc_free(p);
}

/* A request that is not idempotent is never sent twice. */
static void test_not_idempotent_not_retried(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO}, {A_CLOSE, NULL});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0};
    get(p, "/1", 0, &r1);
    RUN_UNTIL(f, r1.calls);
    send_req(p, "POST", "/2", 0, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, UV_ECONNRESET);
    assert_int_equal(f->requests, 2);
    assert_int_equal(f->accepted, 1);
    assert_int_equal(core_httpc_open(p), 0);
    core_httpc_free(p);
}

static void test_response_timeout(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.response_timeout_ms = 100});
    result_t r1 = {0}, r2 = {0};
    uint64_t t0 = core_now_ms();
    get(p, "/slow", CORE_HTTPC_IDEMPOTENT, &r1);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(r1.err, UV_ETIMEDOUT);
    assert_true(core_now_ms() - t0 >= 90);
    assert_int_equal(core_httpc_open(p), 0); /* a timed-out connection is not reused */
    assert_int_equal(f->requests, 1);        /* nor retried */
    RUN_UNTIL(f, f->closed == 1);
    get(p, "/next", 0, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, 0);
    core_httpc_free(p);
}

/* A port nothing listens on (bound, then released). */
static int closed_tcp_port(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_tcp_t t;
    uv_tcp_init(&loop, &t);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&t, (const struct sockaddr *)&sa, 0);
    struct sockaddr_storage name;
    int len = sizeof name;
    uv_tcp_getsockname(&t, (struct sockaddr *)&name, &len);
    int port = ntohs(((struct sockaddr_in *)&name)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return port;
}

static void test_connection_refused(void **state)
{
    fx_t *f = *state;
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.port = closed_tcp_port()});
    result_t r1 = {0}, r2 = {0};
    get(p, "/", CORE_HTTPC_IDEMPOTENT, &r1);
    get(p, "/", 0, &r2);
    assert_int_equal(r1.calls + r2.calls, 0);
    RUN_UNTIL(f, r1.calls && r2.calls);
    assert_int_equal(r1.err, UV_ECONNREFUSED);
    assert_int_equal(r2.err, UV_ECONNREFUSED);
    assert_int_equal(core_httpc_open(p), 0);
    core_httpc_free(p);
}

/* A connect that fails at once (no route to a multicast address) must still
 * be reported from the loop, not from inside core_httpc_send. */
static void test_sync_connect_failure_is_async(void **state)
{
    fx_t *f = *state;
    core_httpc_opts_t o = {.host = "224.0.0.1", .port = 80};
    core_httpc_t *p = core_httpc_new(&f->loop, &o);
    assert_non_null(p);
    bool in_send = false;
    result_t res = {.in_send = &in_send};
    core_buf_t m;
    core_buf_init(&m);
    core_buf_puts(&m, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    in_send = true;
    int rc = core_httpc_send(p, &m, 0, on_resp, &res, NULL);
    in_send = false;
    core_buf_free(&m);
    bool inside = res.ran_inside_send;
    if (rc == 0)
        RUN_UNTIL(f, res.calls);
    core_httpc_free(p);
    if (rc == 0) {
        assert_int_equal(res.calls, 1);
        assert_true(res.err < 0);
        if (inside)
            fail_msg("the callback ran inside core_httpc_send (err %s)", uv_err_name(res.err));
    } else {
        assert_int_equal(res.calls, 0); /* an error return means no callback */
    }
}

static void test_response_too_big(void **state)
{
    fx_t *f = *state;
    static char big[4096];
    snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n");
    size_t hl = strlen(big);
    memset(big + hl, 'x', 2000);
    big[hl + 2000] = '\0';
    static char chunked[4096];
    snprintf(chunked, sizeof chunked, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 20; i++)
        strcat(chunked,
               "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n");
    strcat(chunked, "0\r\n\r\n");
    action_t s[] = {{A_RESPOND, big}, {A_RESPOND, chunked}, {A_RESPOND, OK_HELLO}};
    f->script = s;
    f->nscript = 3;
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_response_bytes = 1000});
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    get(p, "/big", CORE_HTTPC_IDEMPOTENT, &r1);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(r1.err, UV_E2BIG);
    assert_int_equal(core_httpc_open(p), 0);
    get(p, "/chunked", 0, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, UV_E2BIG);
    /* Under the limit is fine. */
    get(p, "/small", 0, &r3);
    RUN_UNTIL(f, r3.calls);
    assert_int_equal(r3.err, 0);
    assert_int_equal(f->requests, 3);
    core_httpc_free(p);
}

static void test_too_many_headers(void **state)
{
    fx_t *f = *state;
    static char h64[8192], h65[8192];
    strcpy(h64, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
    for (int i = 1; i < 64; i++)
        sprintf(h64 + strlen(h64), "X-H%d: v\r\n", i);
    strcpy(h65, h64);
    strcat(h64, "\r\n");
    strcat(h65, "X-One-Too-Many: v\r\n\r\n");
    action_t s[] = {{A_RESPOND, h64}, {A_RESPOND, h65}};
    f->script = s;
    f->nscript = 2;
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0};
    get(p, "/64", 0, &r1);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(r1.err, 0);
    assert_int_equal(r1.nheaders, 64);
    get(p, "/65", CORE_HTTPC_IDEMPOTENT, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, UV_EPROTO);
    assert_int_equal(core_httpc_open(p), 0);
    core_httpc_free(p);
}

static void test_malformed_response(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, "HTTP/1.1 abc OK\r\n\r\n"}, {A_RESPOND, "SSH-2.0-OpenSSH\r\n\r\n"});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0}, r2 = {0};
    get(p, "/", 0, &r1);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(r1.err, UV_EPROTO);
    get(p, "/", 0, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, UV_EPROTO);
    core_httpc_free(p);
}

/* max_conns = 1: the second request waits for the first to complete, then
 * goes out on the same connection. */
static void test_max_conns_queues(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_conns = 1});
    result_t r1 = {0}, r2 = {0};
    get(p, "/1", 0, &r1);
    get(p, "/2", 0, &r2);
    RUN_UNTIL(f, f->held);
    /* Turn the loop a little more: the second request must stay queued. */
    for (int i = 0; i < 5; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->requests, 1);
    assert_int_equal(f->accepted, 1);
    assert_int_equal(core_httpc_open(p), 1);
    assert_int_equal(r1.calls + r2.calls, 0);
    srv_release(f, OK_HELLO, false);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r1.err, 0);
    assert_int_equal(r2.err, 0);
    assert_int_equal(r2.connect_ns, 0);
    assert_int_equal(f->accepted, 1);
    assert_int_equal(f->requests, 2);
    core_httpc_free(p);
}

/* max_conns = 1 and the first answer closes its connection: the queued one
 * gets a new connection. */
static void test_queue_after_close(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_conns = 1});
    result_t r1 = {0}, r2 = {0};
    get(p, "/1", 0, &r1);
    get(p, "/2", 0, &r2);
    RUN_UNTIL(f, f->held);
    srv_release(f, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", true);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r1.err, 0);
    assert_int_equal(r2.err, 0);
    assert_int_equal(f->accepted, 2);
    core_httpc_free(p);
}

static void test_cancel_queued(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_conns = 1});
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    get(p, "/1", 0, &r1);
    core_httpc_req_t *q2 = get(p, "/2", 0, &r2);
    get(p, "/3", 0, &r3);
    assert_non_null(q2);
    core_httpc_cancel(q2); /* from the middle of the queue */
    RUN_UNTIL(f, f->held);
    srv_release(f, OK_HELLO, false);
    RUN_UNTIL(f, r3.calls);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r2.calls, 0);
    assert_int_equal(r3.err, 0);
    assert_int_equal(f->requests, 2);
    assert_string_equal(core_buf_cstr(&f->last_request), "GET /3 HTTP/1.1\r\nHost: origin\r\n\r\n");
    core_httpc_free(p);
    assert_int_equal(r2.calls, 0);
}

/* Cancelling the last of the queue, then queueing again: the tail is right. */
static void test_cancel_queue_tail(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_conns = 1});
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    get(p, "/1", 0, &r1);
    core_httpc_cancel(get(p, "/2", 0, &r2));
    get(p, "/3", 0, &r3);
    RUN_UNTIL(f, f->held);
    srv_release(f, OK_HELLO, false);
    RUN_UNTIL(f, r3.calls);
    assert_int_equal(r2.calls, 0);
    assert_int_equal(r3.err, 0);
    core_httpc_free(p);
}

static void test_cancel_in_flight(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_conns = 1});
    result_t r1 = {0}, r2 = {0};
    core_httpc_req_t *q1 = get(p, "/1", 0, &r1);
    get(p, "/2", 0, &r2);
    RUN_UNTIL(f, f->held);
    core_httpc_cancel(q1);
    /* Its connection is closed (the origin sees it go), the queued one moves up. */
    assert_int_equal(core_httpc_open(p), 1);
    RUN_UNTIL(f, r2.calls && f->closed == 1);
    assert_int_equal(r1.calls, 0);
    assert_int_equal(r2.err, 0);
    assert_int_equal(f->accepted, 2);
    core_httpc_free(p);
    assert_int_equal(r1.calls, 0);
}

/* Cancel before the connection is even established. */
static void test_cancel_while_connecting(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {0};
    core_httpc_cancel(get(p, "/1", 0, &r1));
    assert_int_equal(core_httpc_open(p), 0);
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(r1.calls, 0);
    assert_int_equal(f->requests, 0);
    core_httpc_free(p);
}

static void on_taken_closed(uv_handle_t *h)
{
    free(h);
}

static void on_taken_written(uv_write_t *w, int status)
{
    assert_int_equal(status, 0);
    free(w);
}

static void test_upgrade_take_socket(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND_RAW, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\n\r\n\x81\x05hello-after"});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t res = {.take = true};
    get(p, "/ws", CORE_HTTPC_UPGRADE, &res);
    RUN_UNTIL(f, res.calls);
    assert_int_equal(res.err, 0);
    assert_int_equal(res.status, 101);
    assert_non_null(res.taken);
    assert_int_equal(res.extra.len, 13);
    assert_memory_equal(res.extra.base, "\x81\x05hello-after", 13);
    core_buf_free(&res.extra);
    /* The pool no longer counts it; the socket is ours and still connected. */
    assert_int_equal(core_httpc_open(p), 0);
    assert_int_equal(core_httpc_idle(p), 0);
    uv_write_t *w = malloc(sizeof *w);
    uv_buf_t b = uv_buf_init("ping", 4);
    assert_int_equal(uv_write(w, (uv_stream_t *)res.taken, &b, 1, on_taken_written), 0);
    RUN_UNTIL(f, f->raw_in.len == 4);
    assert_memory_equal(f->raw_in.base, "ping", 4);
    core_httpc_free(p); /* the taken socket outlives the pool */
    uv_write_t *w2 = malloc(sizeof *w2);
    b = uv_buf_init("pong", 4);
    assert_int_equal(uv_write(w2, (uv_stream_t *)res.taken, &b, 1, on_taken_written), 0);
    RUN_UNTIL(f, f->raw_in.len == 8);
    uv_close((uv_handle_t *)res.taken, on_taken_closed);
    RUN_UNTIL(f, f->closed == 1);
}

/* A 101 with nothing after it: no extra bytes. A 101 the callback does not
 * take is closed. */
static void test_upgrade_no_extra_and_not_taken(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND_RAW, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"},
           {A_RESPOND_RAW, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t r1 = {.take = true}, r2 = {0};
    get(p, "/ws", CORE_HTTPC_UPGRADE, &r1);
    RUN_UNTIL(f, r1.calls);
    assert_non_null(r1.taken);
    assert_int_equal(r1.extra.len, 0);
    core_buf_free(&r1.extra);
    get(p, "/ws", CORE_HTTPC_UPGRADE, &r2);
    RUN_UNTIL(f, r2.calls && f->closed == 1);
    assert_int_equal(r2.status, 101);
    assert_int_equal(f->accepted, 2);
    assert_int_equal(core_httpc_open(p), 0);
    uv_close((uv_handle_t *)r1.taken, on_taken_closed);
    core_httpc_free(p);
}

/* Without CORE_HTTPC_UPGRADE a 101 is an answer like any other, but its
 * socket is not handed over and the connection is not kept. */
static void test_101_without_upgrade_flag(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND_RAW, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxx"});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t res = {.take = true};
    get(p, "/ws", 0, &res);
    RUN_UNTIL(f, res.calls && f->closed == 1);
    assert_int_equal(res.status, 101);
    assert_null(res.taken);
    assert_int_equal(res.extra.len, 0);
    core_buf_free(&res.extra);
    assert_int_equal(core_httpc_open(p), 0);
    core_httpc_free(p);
}

/* take_socket outside a 101 gives nothing, and a connection that carried
 * an upgrade request is not kept whatever the answer (the server's parser
 * may not go on after an upgrade request). */
static void test_take_socket_not_101(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t res = {.take = true};
    get(p, "/", CORE_HTTPC_UPGRADE, &res);
    RUN_UNTIL(f, res.calls);
    assert_int_equal(res.status, 200);
    assert_null(res.taken);
    core_buf_free(&res.extra);
    assert_int_equal(core_httpc_idle(p), 0);
    core_httpc_free(p);
}

static void test_free_cancels_everything(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO}, {A_HOLD, NULL}, {A_HOLD, NULL});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_conns = 2});
    result_t r0 = {0}, r1 = {0}, r2 = {0}, r3 = {0};
    get(p, "/0", 0, &r0);
    RUN_UNTIL(f, r0.calls);
    assert_int_equal(core_httpc_idle(p), 1);
    get(p, "/1", 0, &r1); /* on the idle connection: held by the origin */
    get(p, "/2", 0, &r2); /* connecting */
    get(p, "/3", 0, &r3); /* queued */
    RUN_UNTIL(f, f->requests == 3);
    assert_int_equal(core_httpc_open(p), 2);
    core_httpc_free(p);
    /* Every callback has run, with UV_ECANCELED, before free returned. */
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r3.calls, 1);
    assert_int_equal(r1.err, UV_ECANCELED);
    assert_int_equal(r2.err, UV_ECANCELED);
    assert_int_equal(r3.err, UV_ECANCELED);
    assert_int_equal(r0.calls, 1);
    /* The connections close on their own (teardown checks nothing is left). */
    RUN_UNTIL(f, f->closed == f->accepted);
    core_httpc_free(NULL);
}

/* A send from inside a callback of free is refused, and the free of an idle pool
 * leaves nothing behind. */
static void on_resp_resend(core_httpc_req_t *r, const core_httpc_resp_t *resp, int err, void *ud)
{
    core_httpc_t *p = ud;
    core_buf_t m;
    core_buf_init(&m);
    core_buf_puts(&m, "GET / HTTP/1.1\r\n\r\n");
    assert_int_equal(core_httpc_send(p, &m, 0, on_resp_resend, p, NULL), UV_ECANCELED);
    core_buf_free(&m);
}

static void test_send_during_free(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_conns = 1});
    core_buf_t m;
    core_buf_init(&m);
    core_buf_puts(&m, "GET / HTTP/1.1\r\n\r\n");
    assert_int_equal(core_httpc_send(p, &m, 0, on_resp_resend, p, NULL), 0);
    core_buf_init(&m);
    core_buf_puts(&m, "GET / HTTP/1.1\r\n\r\n");
    assert_int_equal(core_httpc_send(p, &m, 0, on_resp_resend, p, NULL), 0);
    RUN_UNTIL(f, f->held);
    core_httpc_free(p);
    /* An empty message or no callback is refused without a callback. */
    core_httpc_t *p2 = pool(f, (core_httpc_opts_t){0});
    core_buf_init(&m);
    assert_int_equal(core_httpc_send(p2, &m, 0, on_resp, NULL, NULL), UV_EINVAL);
    core_buf_puts(&m, "GET / HTTP/1.1\r\n\r\n");
    assert_int_equal(core_httpc_send(p2, &m, 0, NULL, NULL, NULL), UV_EINVAL);
    core_buf_free(&m);
    core_httpc_free(p2);
    /* A name without a resolver is refused at creation. */
    core_httpc_opts_t o = {.host = "origin.invalid", .port = 80};
    assert_null(core_httpc_new(&f->loop, &o));
}

/* An idle connection is closed after idle_timeout_ms. */
static void test_idle_timeout(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.idle_timeout_ms = 50});
    result_t r1 = {0};
    get(p, "/", 0, &r1);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(core_httpc_idle(p), 1);
    RUN_UNTIL(f, core_httpc_idle(p) == 0 && f->closed == 1);
    assert_int_equal(core_httpc_open(p), 0);
    core_httpc_free(p);
}

/* max_idle bounds the kept-alive connections. */
static void test_max_idle(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_HOLD, NULL}, {A_RESPOND, OK_HELLO}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.max_idle = 1});
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    get(p, "/1", 0, &r1);
    RUN_UNTIL(f, f->held);
    get(p, "/2", 0, &r2);
    get(p, "/3", 0, &r3);
    RUN_UNTIL(f, r2.calls && r3.calls);
    srv_release(f, OK_HELLO, false);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(f->accepted, 3);
    assert_int_equal(core_httpc_idle(p), 1);
    assert_int_equal(core_httpc_open(p), 1);
    core_httpc_free(p);
}

/* A body delimited by the end of the connection (no Content-Length, not
 * chunked: RFC 9112 6.3, last rule) is a complete answer. */
static void test_close_delimited_body(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND_CLOSE, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof"});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t res = {0};
    get(p, "/", 0, &res);
    RUN_UNTIL(f, res.calls);
    core_httpc_free(p);
    assert_int_equal(res.err, 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, 9);
    assert_memory_equal(res.body, "until-eof", 9);
}

/* The answer to HEAD has no body whatever its Content-Length says (RFC 9110
 * 9.3.2); the region's core/http answers HEAD exactly so. */
static void test_head_response(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"}, {A_RESPOND, OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){.response_timeout_ms = 1000});
    result_t r1 = {0}, r2 = {0};
    send_req(p, "HEAD", "/v1/me", CORE_HTTPC_IDEMPOTENT, &r1);
    RUN_UNTIL(f, r1.calls);
    if (r1.err)
        core_httpc_free(p);
    assert_int_equal(r1.err, 0);
    assert_int_equal(r1.status, 200);
    assert_int_equal(r1.body_len, 0);
    /* And the connection is still in step for the next answer. */
    get(p, "/", 0, &r2);
    RUN_UNTIL(f, r2.calls);
    assert_int_equal(r2.err, 0);
    assert_int_equal(r2.body_len, 5);
    core_httpc_free(p);
}

/* An interim 100 Continue is skipped; the final answer is delivered. */
static void test_100_continue_skipped(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND, "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" OK_HELLO});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    result_t res = {0};
    get(p, "/", 0, &res);
    RUN_UNTIL(f, res.calls);
    assert_int_equal(res.err, 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.nheaders, 2);
    assert_string_equal(res.hdr0, "Content-Length: 5");
    core_httpc_free(p);
}

/* The origin answers before it has read the whole request (an early 413 is
 * legal, RFC 9112 9.3): the request's buffer is still being written, so the
 * connection cannot go back to the pool with that write pending (its
 * uv_write_t would be reused, and the buffer freed under libuv's feet). */
static void test_early_answer_while_writing(void **state)
{
    fx_t *f = *state;
    SCRIPT(f, {A_RESPOND_RAW, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"});
    core_httpc_t *p = pool(f, (core_httpc_opts_t){0});
    enum { N = 32 << 20 };
    core_buf_t m;
    core_buf_init(&m);
    core_buf_appendf(&m, "POST /up HTTP/1.1\r\nHost: origin\r\nContent-Length: %d\r\n\r\n", N);
    core_buf_reserve(&m, N);
    memset(m.base + m.len, 'x', N);
    m.len += N;
    result_t r1 = {0};
    assert_int_equal(core_httpc_send(p, &m, 0, on_resp, &r1, NULL), 0);
    core_buf_free(&m);
    RUN_UNTIL(f, r1.calls);
    assert_int_equal(r1.err, 0);
    assert_int_equal(r1.status, 413);
    size_t idle = core_httpc_idle(p);
    /* A few more turns: libuv goes on writing what is left of the request. */
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    core_httpc_free(p);
    assert_int_equal(idle, 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_get_content_length),
        T(test_chunked),
        T(test_keep_alive_reuse),
        T(test_connection_close_not_kept),
        T(test_idle_close_noticed),
        T(test_idempotent_retried_once),
        T(test_retry_not_repeated),
        T(test_not_idempotent_not_retried),
        T(test_response_timeout),
        T(test_connection_refused),
        T(test_sync_connect_failure_is_async),
        T(test_response_too_big),
        T(test_too_many_headers),
        T(test_malformed_response),
        T(test_max_conns_queues),
        T(test_queue_after_close),
        T(test_cancel_queued),
        T(test_cancel_queue_tail),
        T(test_cancel_in_flight),
        T(test_cancel_while_connecting),
        T(test_upgrade_take_socket),
        T(test_upgrade_no_extra_and_not_taken),
        T(test_101_without_upgrade_flag),
        T(test_take_socket_not_101),
        T(test_free_cancels_everything),
        T(test_send_during_free),
        T(test_idle_timeout),
        T(test_max_idle),
        T(test_close_delimited_body),
        T(test_head_response),
        T(test_100_continue_skipped),
        T(test_early_answer_while_writing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
