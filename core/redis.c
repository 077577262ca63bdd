#include "core/redis.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>

#include "core/backoff.h"
#include "core/core.h"
#include "core/log.h"
#include "core/metrics.h"

/* Constant strings: callers may keep them, and logs never carry reply text. */
static const char err_timeout[] = "command timeout";
static const char err_conn_lost[] = "connection lost";
static const char err_not_connected[] = "not connected";
static const char err_closed[] = "client closed";
static const char err_bad_command[] = "invalid command";

typedef enum {
    ST_IDLE,       /* waiting for the backoff timer */
    ST_CONNECTING, /* TCP connect in progress */
    ST_HANDSHAKE,  /* connected, waiting for the first PONG */
    ST_READY,
} state_t;

/* One outstanding hiredis callback. It lives until hiredis calls on_reply,
 * which hiredis does exactly once per accepted command (with NULL when the
 * context goes away), so a record outlives its own timeout and a late reply
 * lands on a live record instead of freed memory. */
typedef struct cmd_s {
    struct cmd_s *next;
    core_redis_t *r;
    core_redis_cb cb; /* NULL once the caller has been answered, or for internal PINGs */
    void *ud;
    uint64_t sent_ms;
    uint64_t deadline_ms;
    bool handshake; /* the PING that makes a fresh connection ready */
} cmd_t;

struct core_redis_s {
    uv_loop_t *loop;
    char *host;
    int port;
    char *name;
    unsigned connect_timeout_ms, command_timeout_ms, ping_interval_ms, dead_timeout_ms;

    redisAsyncContext *ac;
    state_t state;
    core_backoff_t backoff;
    int drop_err; /* what pending callbacks get when the context goes away */

    uv_timer_t conn_timer; /* backoff delay while idle, connect timeout while connecting */
    uv_timer_t cmd_timer;  /* earliest command deadline */
    uv_timer_t ping_timer; /* periodic idle PING and dead-server check */
    int open_handles;
    bool closing;

    /* Outstanding records in hiredis's reply order; `expire` is the first one
     * whose caller has not had UV_ETIMEDOUT yet (deadlines only grow along the
     * list, since every command gets the same timeout). */
    cmd_t *head, *tail, *expire;
    cmd_t *pool; /* recycled records: no malloc per command once warm */
    size_t pool_len;
    size_t npending; /* callers not answered yet */
    uint64_t last_io_ms;

    core_metric_t m_commands, m_errors, m_timeouts, m_connected, m_reconnects;
};

#define POOL_MAX 1024

static void start_connect(core_redis_t *r);
static void drop(core_redis_t *r, int err, const char *why);
static void on_cmd_timer(uv_timer_t *t);
static void on_conn_timer(uv_timer_t *t);

/* --- event hooks ---------------------------------------------------------
 * hiredis's own libuv adapter (<hiredis/adapters/libuv.h>) drops poll errors:
 * libuv reports POLLERR (a refused connect, a reset) as a negative status and
 * stops the watcher, and the adapter returns without telling hiredis, so the
 * failure is only noticed by a timeout. These hooks are the same thing, except
 * that an error status is handed to hiredis as a read event, whose connect
 * check or read() then finds the socket error and disconnects at once. */

typedef struct {
    uv_poll_t h;
    redisAsyncContext *ac; /* NULL once hiredis has let go of the socket */
    int events;
} ev_t;

static void on_ev_poll(uv_poll_t *h, int status, int events);

static void ev_update(ev_t *e)
{
    if (e->events)
        uv_poll_start(&e->h, e->events, on_ev_poll);
    else
        uv_poll_stop(&e->h);
}

static void on_ev_poll(uv_poll_t *h, int status, int events)
{
    ev_t *e = h->data;
    if (status < 0)
        events = UV_READABLE;
    if (e->ac && (events & UV_READABLE))
        redisAsyncHandleRead(e->ac);
    if (e->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(e->ac);
    if (status < 0 && e->ac)
        ev_update(e); /* libuv stopped the watcher; hiredis still wants it */
}

static void ev_add_read(void *p)
{
    ev_t *e = p;
    e->events |= UV_READABLE;
    ev_update(e);
}

static void ev_del_read(void *p)
{
    ev_t *e = p;
    e->events &= ~UV_READABLE;
    ev_update(e);
}

static void ev_add_write(void *p)
{
    ev_t *e = p;
    e->events |= UV_WRITABLE;
    ev_update(e);
}

static void ev_del_write(void *p)
{
    ev_t *e = p;
    e->events &= ~UV_WRITABLE;
    ev_update(e);
}

static void on_ev_closed(uv_handle_t *h)
{
    free(h->data);
}

static void ev_cleanup(void *p)
{
    ev_t *e = p;
    if (!e->ac)
        return;
    e->ac = NULL;
    uv_close((uv_handle_t *)&e->h, on_ev_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    ev_t *e = core_xcalloc(1, sizeof *e);
    if (uv_poll_init(loop, &e->h, ac->c.fd) != 0) {
        free(e);
        return -1;
    }
    e->h.data = e;
    e->ac = ac;
    ac->ev.data = e;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    return 0;
}

/* --- client --------------------------------------------------------------- */

const char *core_redis_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case UV_ETIMEDOUT:
        return err_timeout;
    case UV_ECONNRESET:
        return err_conn_lost;
    case UV_ENOTCONN:
        return err_not_connected;
    case UV_ECANCELED:
        return err_closed;
    case UV_EINVAL:
        return err_bad_command;
    default:
        return uv_strerror(err);
    }
}

static cmd_t *cmd_get(core_redis_t *r)
{
    cmd_t *c = r->pool;
    if (c) {
        r->pool = c->next;
        r->pool_len--;
    } else {
        c = core_xmalloc(sizeof *c);
    }
    memset(c, 0, sizeof *c);
    c->r = r;
    return c;
}

static void cmd_put(core_redis_t *r, cmd_t *c)
{
    if (r->pool_len >= POOL_MAX) {
        free(c);
        return;
    }
    c->next = r->pool;
    r->pool = c;
    r->pool_len++;
}

static void set_connected(core_redis_t *r, bool up)
{
    core_metrics_set(r->m_connected, up ? 1 : 0);
}

/* Leaves the ready state (once); commands are refused from here on. */
static void mark_down(core_redis_t *r)
{
    if (r->state == ST_READY)
        set_connected(r, false);
    r->state = ST_IDLE;
}

/* Deadlines only grow along the list, so a timer armed for an earlier command
 * is never late for a later one: it is re-armed when it fires, not on every
 * reply (lazy: one heap operation per timer period instead of per command). */
static void arm_cmd_timer(core_redis_t *r)
{
    if (r->closing || !r->expire || uv_is_active((uv_handle_t *)&r->cmd_timer))
        return;
    uint64_t now = uv_now(r->loop);
    uint64_t d = r->expire->deadline_ms > now ? r->expire->deadline_ms - now : 0;
    uv_timer_start(&r->cmd_timer, on_cmd_timer, d, 0);
}

/* Answers a caller at most once; the record itself stays until hiredis is done with it. */
static void answer(cmd_t *c, const redisReply *reply, int err)
{
    core_redis_cb cb = c->cb;
    if (!cb)
        return;
    c->cb = NULL;
    core_redis_t *r = c->r;
    r->npending--;
    if (err || (reply && reply->type == REDIS_REPLY_ERROR))
        core_metrics_add(r->m_errors, 1);
    cb(err ? NULL : reply, err, c->ud);
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    cmd_t *c = privdata;
    core_redis_t *r = c->r;
    redisReply *reply = reply_;
    /* hiredis answers in order, both for replies and when it fails the rest. */
    assert(r->head == c);
    r->head = c->next;
    if (!r->head)
        r->tail = NULL;
    if (r->expire == c)
        r->expire = c->next; /* the timer catches up when it fires */
    if (reply)
        r->last_io_ms = uv_now(r->loop);
    else if (!r->closing)
        mark_down(r); /* the context is going away: no new commands from inside callbacks */

    if (c->handshake && r->state == ST_HANDSHAKE && reply && reply->type != REDIS_REPLY_ERROR) {
        r->state = ST_READY;
        uv_timer_stop(&r->conn_timer);
        core_backoff_reset(&r->backoff);
        set_connected(r, true);
        core_log_info("redis.ready", "client=%s host=%s port=%d", r->name, r->host, r->port);
    } else if (c->handshake && r->state == ST_HANDSHAKE && reply) {
        /* e.g. NOAUTH or LOADING: not usable yet, so try again later. */
        c->next = NULL;
        cmd_put(r, c);
        drop(r, UV_ECONNRESET, "handshake refused");
        return;
    }

    if (reply)
        answer(c, reply, 0);
    else
        answer(c, NULL, r->closing ? UV_ECANCELED : r->drop_err);
    c->next = NULL;
    cmd_put(r, c);
    (void)ac;
}

/* Registers a record for a command hiredis accepted. */
static void track(core_redis_t *r, cmd_t *c)
{
    uint64_t now = uv_now(r->loop);
    c->sent_ms = now;
    c->deadline_ms = now + r->command_timeout_ms;
    c->next = NULL;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    if (!r->expire) {
        r->expire = c;
        arm_cmd_timer(r);
    }
    r->last_io_ms = now;
}

static void send_ping(core_redis_t *r, bool handshake)
{
    cmd_t *c = cmd_get(r);
    c->handshake = handshake;
    if (redisAsyncCommand(r->ac, on_reply, c, "PING") != REDIS_OK) {
        /* Only a context that is already going away refuses a command; its
         * disconnect (or our connect timeout) takes it from here. Dropping it
         * here could free it under hiredis's connect handler. */
        cmd_put(r, c);
        return;
    }
    track(r, c);
}

static void on_cmd_timer(uv_timer_t *t)
{
    core_redis_t *r = t->data;
    uint64_t now = uv_now(r->loop);
    while (r->expire && r->expire->deadline_ms <= now && !r->closing) {
        cmd_t *c = r->expire;
        r->expire = c->next;
        if (c->cb) {
            core_metrics_add(r->m_timeouts, 1);
            answer(c, NULL, UV_ETIMEDOUT);
        }
    }
    arm_cmd_timer(r);
}

static void on_ping_timer(uv_timer_t *t)
{
    core_redis_t *r = t->data;
    if (r->state != ST_READY)
        return;
    uint64_t now = uv_now(r->loop);
    if (r->head && now - r->head->sent_ms >= r->dead_timeout_ms) {
        drop(r, UV_ETIMEDOUT, "server not answering");
        return;
    }
    if (!r->head && now - r->last_io_ms >= r->ping_interval_ms)
        send_ping(r, false);
}

/* A server that stays down would log a line per retry: warn on the first
 * failure and every tenth, and keep the rest at debug. */
static core_log_level_t connect_log_level(const core_redis_t *r)
{
    return r->backoff.attempt % 10 == 0 ? CORE_LOG_WARN : CORE_LOG_DEBUG;
}

static void schedule_reconnect(core_redis_t *r)
{
    mark_down(r);
    if (r->closing)
        return;
    uint32_t delay = core_backoff_next(&r->backoff);
    core_metrics_add(r->m_reconnects, 1);
    uv_timer_start(&r->conn_timer, on_conn_timer, delay, 0);
}

/* Gives up on the current context: hiredis fails every pending callback
 * (on_reply with NULL) before redisAsyncFree returns, unless we are inside one
 * of its callbacks, in which case it finishes right after that callback. */
static void drop(core_redis_t *r, int err, const char *why)
{
    redisAsyncContext *ac = r->ac;
    if (!ac)
        return;
    core_log_warn("redis.disconnect", "client=%s host=%s port=%d reason=\"%s\"", r->name, r->host,
                  r->port, why);
    r->ac = NULL; /* a nested core_redis_free must not free it again */
    r->drop_err = err;
    ac->data = NULL;
    schedule_reconnect(r);
    redisAsyncFree(ac);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    core_redis_t *r = ac->data;
    if (!r)
        return; /* we already gave up on this context */
    if (status != REDIS_OK) {
        /* hiredis frees the context itself after this callback. */
        core_log(connect_log_level(r), NULL, "redis.connect_failed",
                 "client=%s host=%s port=%d attempt=%u error=\"%s\"", r->name, r->host, r->port,
                 r->backoff.attempt, ac->errstr ? ac->errstr : "?");
        r->ac = NULL;
        uv_timer_stop(&r->conn_timer);
        schedule_reconnect(r);
        return;
    }
    r->state = ST_HANDSHAKE;
    send_ping(r, true);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    core_redis_t *r = ac->data;
    if (!r || r->closing)
        return; /* dropped or freed by us: the bookkeeping is done */
    /* The server closed or the socket failed; hiredis frees the context after this. */
    r->ac = NULL;
    core_log_warn("redis.disconnect", "client=%s host=%s port=%d reason=\"%s\"", r->name, r->host,
                  r->port, status == REDIS_OK ? "closed" : (ac->errstr ? ac->errstr : "error"));
    uv_timer_stop(&r->conn_timer);
    schedule_reconnect(r);
}

static void on_conn_timer(uv_timer_t *t)
{
    core_redis_t *r = t->data;
    if (r->state == ST_IDLE)
        start_connect(r);
    else if (r->state == ST_CONNECTING || r->state == ST_HANDSHAKE)
        drop(r, UV_ETIMEDOUT, "connect timeout");
}

static void start_connect(core_redis_t *r)
{
    if (r->closing)
        return;
    /* The host is an address or "localhost", so hiredis's getaddrinfo does not block. */
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac)
        abort(); /* hiredis returns NULL only when out of memory */
    if (ac->err) {
        core_log(connect_log_level(r), NULL, "redis.connect_failed",
                 "client=%s host=%s port=%d attempt=%u error=\"%s\"", r->name, r->host, r->port,
                 r->backoff.attempt, ac->errstr);
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    if (ev_attach(ac, r->loop) != 0) {
        core_log_error("redis.connect_failed", "client=%s error=\"event attach failed\"", r->name);
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    r->drop_err = UV_ECONNRESET;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->state = ST_CONNECTING;
    uv_timer_start(&r->conn_timer, on_conn_timer, r->connect_timeout_ms, 0);
}

static void on_handle_closed(uv_handle_t *h)
{
    core_redis_t *r = h->data;
    if (--r->open_handles > 0)
        return;
    while (r->pool) {
        cmd_t *c = r->pool;
        r->pool = c->next;
        free(c);
    }
    free(r->host);
    free(r->name);
    free(r);
}

core_redis_t *core_redis_new(uv_loop_t *loop, const core_redis_opts_t *o)
{
    core_redis_t *r = core_xcalloc(1, sizeof *r);
    r->loop = loop;
    r->host = core_xstrdup(o->host && *o->host ? o->host : "127.0.0.1");
    r->port = o->port > 0 ? o->port : 6379;
    r->name = core_xstrdup(o->name && *o->name ? o->name : "redis");
    r->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 1000;
    r->command_timeout_ms = o->command_timeout_ms ? o->command_timeout_ms : 1000;
    r->ping_interval_ms = o->ping_interval_ms ? o->ping_interval_ms : 1000;
    r->dead_timeout_ms =
        o->dead_timeout_ms ? o->dead_timeout_ms : CORE_MAX(2000u, 2 * r->command_timeout_ms);
    core_backoff_init(&r->backoff, o->backoff_base_ms ? o->backoff_base_ms : 100,
                      o->backoff_cap_ms ? o->backoff_cap_ms : 5000);
    r->drop_err = UV_ECONNRESET;

    uv_timer_init(loop, &r->conn_timer);
    uv_timer_init(loop, &r->cmd_timer);
    uv_timer_init(loop, &r->ping_timer);
    r->conn_timer.data = r->cmd_timer.data = r->ping_timer.data = r;
    r->open_handles = 3;
    /* The ping timer only ticks; it must not keep an otherwise finished loop alive. */
    uv_timer_start(&r->ping_timer, on_ping_timer, r->ping_interval_ms / 2 + 1,
                   r->ping_interval_ms / 2 + 1);
    uv_unref((uv_handle_t *)&r->ping_timer);

    char labels[128];
    snprintf(labels, sizeof labels, "client=\"%s\"", r->name);
    r->m_commands =
        core_metrics_counter("meridian_redis_commands_total", "Redis commands sent.", labels);
    r->m_errors = core_metrics_counter("meridian_redis_errors_total",
                                       "Redis commands answered with an error.", labels);
    r->m_timeouts = core_metrics_counter("meridian_redis_timeouts_total",
                                         "Redis commands that timed out.", labels);
    r->m_reconnects = core_metrics_counter("meridian_redis_reconnects_total",
                                           "Redis reconnect attempts scheduled.", labels);
    r->m_connected = core_metrics_gauge("meridian_redis_connected",
                                        "1 while the Redis connection is ready.", labels);
    set_connected(r, false);

    start_connect(r);
    return r;
}

static int precheck(core_redis_t *r)
{
    if (r->closing)
        return UV_ECANCELED;
    if (r->state != ST_READY || !r->ac || (r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        return UV_ENOTCONN;
    return 0;
}

static int accepted(core_redis_t *r, cmd_t *c, core_redis_cb cb, void *ud)
{
    c->cb = cb;
    c->ud = ud;
    track(r, c);
    r->npending++;
    core_metrics_add(r->m_commands, 1);
    return 0;
}

int core_redis_command(core_redis_t *r, core_redis_cb cb, void *ud, const char *fmt, ...)
{
    int rc = precheck(r);
    if (rc)
        return rc;
    cmd_t *c = cmd_get(r);
    va_list ap;
    va_start(ap, fmt);
    int st = redisvAsyncCommand(r->ac, on_reply, c, fmt, ap);
    va_end(ap);
    if (st != REDIS_OK) {
        cmd_put(r, c);
        return UV_EINVAL; /* the context is writable, so only formatting can fail */
    }
    return accepted(r, c, cb, ud);
}

int core_redis_commandargv(core_redis_t *r, core_redis_cb cb, void *ud, int argc, const char **argv,
                           const size_t *argvlen)
{
    if (argc < 1)
        return UV_EINVAL;
    int rc = precheck(r);
    if (rc)
        return rc;
    cmd_t *c = cmd_get(r);
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        cmd_put(r, c);
        return UV_EINVAL;
    }
    return accepted(r, c, cb, ud);
}

void core_redis_flush(core_redis_t *r)
{
    if (precheck(r))
        return;
    /* hiredis's own handler would disconnect, and so answer every pending
     * command, on a failed write; the bare write only marks the context,
     * and the write watcher, still armed, reports it. */
    int done = 0;
    (void)redisBufferWrite(&r->ac->c, &done);
}

bool core_redis_ready(const core_redis_t *r)
{
    return r && !r->closing && r->state == ST_READY;
}

size_t core_redis_pending(const core_redis_t *r)
{
    return r->npending;
}

void core_redis_free(core_redis_t *r)
{
    if (!r || r->closing)
        return;
    r->closing = true;
    mark_down(r);
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac) {
        /* Keeps ac->data so that the callbacks still find r while hiredis
         * fails what is pending; r->closing makes them answer UV_ECANCELED. */
        redisAsyncFree(ac);
    }
    uv_close((uv_handle_t *)&r->conn_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->cmd_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->ping_timer, on_handle_closed);
}
