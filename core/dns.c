#include "core/dns.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ares.h>

#include "core/core.h"
#include "core/log.h"
#include "core/metrics.h"

#define NAME_MAX_LEN 253
#define WAITER_POOL_MAX 256

/* One answer, shared by the cache entry and every waiter it is delivered to,
 * so that a refresh can replace the entry while older waiters still read theirs. */
typedef struct {
    int refs;
    uint64_t at_ms; /* loop time when it arrived */
    char *name;
    uint32_t ttl_s;
    size_t naddrs;
    core_dns_addr_t addrs[];
} result_t;

typedef struct waiter_s {
    struct waiter_s *next;
    core_dns_cb cb;
    void *ud;
    result_t *res; /* a reference, when err == 0 */
    int err;
    bool from_cache;
} waiter_t;

typedef struct query_s query_t;

typedef struct entry_s {
    struct entry_s *next;
    char *name;
    result_t *res; /* latest answer, or NULL */
    uint64_t expires_ms;
    uint64_t used_ms;
    query_t *inflight; /* refresh in progress; an entry with one is never evicted */
} entry_t;

struct query_s {
    core_dns_t *d;
    char *name;
    entry_t *entry; /* the cache entry this query refreshes, or NULL */
    waiter_t *waiters;
};

typedef struct poll_s {
    uv_poll_t h;
    core_dns_t *d;
    ares_socket_t fd;
    struct poll_s *next;
} poll_t;

struct core_dns_s {
    uv_loop_t *loop;
    ares_channel ch;
    char *name;
    uv_timer_t timer;   /* c-ares retransmits and timeouts */
    uv_timer_t deliver; /* runs callbacks from the loop, never from inside c-ares */
    poll_t *polls;
    int open_handles;
    bool closing;

    waiter_t *done_head, *done_tail; /* answered, waiting for on_deliver */
    waiter_t *batch;                 /* the part on_deliver is working through */
    waiter_t *pool;
    size_t pool_len;

    entry_t *entries;
    size_t nentries, max_entries;

    core_metric_t m_queries, m_errors, m_hits, m_misses;
};

static void arm_timer(core_dns_t *d);
static void on_deliver(uv_timer_t *t);

int core_dns_status_to_err(int st)
{
    switch (st) {
    case ARES_SUCCESS:
        return 0;
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
        return UV_EAI_NONAME;
    case ARES_ENODATA:
        return UV_EAI_NODATA;
    case ARES_ETIMEOUT:
        return UV_ETIMEDOUT;
    case ARES_ECONNREFUSED:
        return UV_ECONNREFUSED;
    case ARES_ESERVFAIL:
        return UV_EAI_AGAIN;
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
        return UV_ECANCELED;
    case ARES_EBADNAME:
        return UV_EINVAL;
    default:
        return UV_EAI_FAIL;
    }
}

const char *core_dns_addr_format(const core_dns_addr_t *a, char *buf, size_t cap)
{
    if (!inet_ntop(a->family, &a->addr, buf, (socklen_t)cap))
        snprintf(buf, cap, "?");
    return buf;
}

socklen_t core_dns_addr_to_sockaddr(const core_dns_addr_t *a, uint16_t port,
                                    struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (a->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        s6->sin6_addr = a->addr.v6;
        return sizeof *s6;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)out;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    s4->sin_addr = a->addr.v4;
    return sizeof *s4;
}

/* --- results and waiters ------------------------------------------------ */

static void res_unref(result_t *res)
{
    if (res && --res->refs == 0) {
        free(res->name);
        free(res);
    }
}

static result_t *res_build(const char *name, const struct ares_addrinfo *ai, uint64_t now)
{
    size_t n = 0;
    for (const struct ares_addrinfo_node *p = ai ? ai->nodes : NULL; p; p = p->ai_next)
        if (p->ai_family == AF_INET || p->ai_family == AF_INET6)
            n++;
    if (n == 0)
        return NULL;
    result_t *res = core_xcalloc(1, sizeof *res + n * sizeof res->addrs[0]);
    res->refs = 1;
    res->at_ms = now;
    res->name = core_xstrdup(name);
    res->ttl_s = UINT32_MAX;
    for (const struct ares_addrinfo_node *p = ai->nodes; p; p = p->ai_next) {
        core_dns_addr_t *a = &res->addrs[res->naddrs];
        if (p->ai_family == AF_INET)
            a->addr.v4 = ((const struct sockaddr_in *)p->ai_addr)->sin_addr;
        else if (p->ai_family == AF_INET6)
            a->addr.v6 = ((const struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
        else
            continue;
        a->family = p->ai_family;
        a->ttl_s = p->ai_ttl > 0 ? (uint32_t)p->ai_ttl : 0;
        res->ttl_s = CORE_MIN(res->ttl_s, a->ttl_s);
        res->naddrs++;
    }
    return res;
}

/* An IP literal needs no DNS. c-ares 1.18 still sends a query for one when
 * asked for AF_UNSPEC, so literals are answered here (TTL 0: never cached). */
static result_t *res_numeric(const char *name, uint64_t now)
{
    core_dns_addr_t a = {0};
    if (inet_pton(AF_INET, name, &a.addr.v4) == 1)
        a.family = AF_INET;
    else if (inet_pton(AF_INET6, name, &a.addr.v6) == 1)
        a.family = AF_INET6;
    else
        return NULL;
    result_t *res = core_xcalloc(1, sizeof *res + sizeof res->addrs[0]);
    res->refs = 1;
    res->at_ms = now;
    res->name = core_xstrdup(name);
    res->naddrs = 1;
    res->addrs[0] = a;
    return res;
}

static waiter_t *waiter_get(core_dns_t *d, core_dns_cb cb, void *ud)
{
    waiter_t *w = d->pool;
    if (w) {
        d->pool = w->next;
        d->pool_len--;
    } else {
        w = core_xmalloc(sizeof *w);
    }
    memset(w, 0, sizeof *w);
    w->cb = cb;
    w->ud = ud;
    return w;
}

static void waiter_put(core_dns_t *d, waiter_t *w)
{
    res_unref(w->res);
    w->res = NULL;
    if (d->pool_len >= WAITER_POOL_MAX) {
        free(w);
        return;
    }
    w->next = d->pool;
    d->pool = w;
    d->pool_len++;
}

/* Queues an answered waiter; callbacks run from on_deliver so that no caller
 * is ever called back from inside core_dns_resolve or from inside c-ares. */
static void finish(core_dns_t *d, waiter_t *w, result_t *res, int err)
{
    if (res) {
        res->refs++;
        w->res = res;
    }
    w->err = err;
    w->next = NULL;
    if (d->done_tail)
        d->done_tail->next = w;
    else
        d->done_head = w;
    d->done_tail = w;
    if (!d->closing && !uv_is_active((uv_handle_t *)&d->deliver))
        uv_timer_start(&d->deliver, on_deliver, 0, 0);
}

static void run_waiter(core_dns_t *d, waiter_t *w)
{
    if (w->err || !w->res) {
        w->cb(NULL, w->err ? w->err : UV_EAI_FAIL, w->ud);
    } else {
        uint64_t now = uv_now(d->loop);
        core_dns_result_t r = {
            .name = w->res->name,
            .addrs = w->res->addrs,
            .naddrs = w->res->naddrs,
            .ttl_s = w->res->ttl_s,
            .from_cache = w->from_cache,
            .age_ms = now > w->res->at_ms ? (uint32_t)(now - w->res->at_ms) : 0,
        };
        w->cb(&r, 0, w->ud);
    }
    waiter_put(d, w);
}

static void on_deliver(uv_timer_t *t)
{
    core_dns_t *d = t->data;
    /* Take the current queue as a batch: a callback that adds a cache hit is
     * answered on the next pass, so callbacks cannot starve the loop. */
    d->batch = d->done_head;
    d->done_head = d->done_tail = NULL;
    while (d->batch) {
        waiter_t *w = d->batch;
        d->batch = w->next;
        run_waiter(d, w); /* may call core_dns_free, which empties d->batch */
    }
}

/* Answers everything queued with UV_ECANCELED (core_dns_free). */
static void cancel_queued(core_dns_t *d)
{
    while (d->batch || d->done_head) {
        waiter_t *w;
        if (d->batch) {
            w = d->batch;
            d->batch = w->next;
        } else {
            w = d->done_head;
            d->done_head = w->next;
            if (!d->done_head)
                d->done_tail = NULL;
        }
        res_unref(w->res);
        w->res = NULL;
        w->err = UV_ECANCELED;
        run_waiter(d, w);
    }
}

/* --- c-ares plumbing ---------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    core_dns_t *d = t->data;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_timer(d);
}

static void arm_timer(core_dns_t *d)
{
    if (d->closing)
        return;
    struct timeval tv;
    if (!ares_timeout(d->ch, NULL, &tv)) {
        uv_timer_stop(&d->timer);
        return;
    }
    uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
    uv_timer_start(&d->timer, on_timer, ms, 0);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    poll_t *p = h->data;
    core_dns_t *d = p->d;
    ares_socket_t fd = p->fd;
    if (status < 0) {
        /* Let c-ares read the socket error and fail over on its own. */
        ares_process_fd(d->ch, fd, fd);
    } else {
        ares_process_fd(d->ch, (events & UV_READABLE) ? fd : ARES_SOCKET_BAD,
                        (events & UV_WRITABLE) ? fd : ARES_SOCKET_BAD);
    }
    arm_timer(d); /* p may be closing now: do not touch it */
}

static void on_poll_closed(uv_handle_t *h);

static void close_poll(core_dns_t *d, poll_t *p)
{
    for (poll_t **pp = &d->polls; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    uv_close((uv_handle_t *)&p->h, on_poll_closed);
}

/* c-ares tells us which of its sockets to watch; it calls with (0, 0) before it closes one. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    core_dns_t *d = data;
    poll_t *p = d->polls;
    while (p && p->fd != fd)
        p = p->next;
    if (!readable && !writable) {
        if (p)
            close_poll(d, p);
        return;
    }
    if (!p) {
        p = core_xcalloc(1, sizeof *p);
        p->d = d;
        p->fd = fd;
        if (uv_poll_init_socket(d->loop, &p->h, fd) != 0) {
            /* c-ares will time the query out; nothing else to do. */
            core_log_error("dns.poll_failed", "resolver=%s fd=%d", d->name, (int)fd);
            free(p);
            return;
        }
        p->h.data = p;
        p->next = d->polls;
        d->polls = p;
        d->open_handles++;
    }
    uv_poll_start(&p->h, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

/* --- queries and the cache --------------------------------------------- */

/* Stores a query's outcome in its cache entry and queues its waiters; frees q. */
static void finish_query(query_t *q, result_t *res, int err)
{
    core_dns_t *d = q->d;
    uint64_t now = res ? res->at_ms : uv_now(d->loop);
    entry_t *e = q->entry;
    if (e) {
        e->inflight = NULL;
        if (res) {
            res_unref(e->res);
            res->refs++;
            e->res = res;
            e->expires_ms = now + (uint64_t)res->ttl_s * 1000;
        } else {
            /* Failures are not cached, and a stale answer is not served. */
            res_unref(e->res);
            e->res = NULL;
        }
    }
    while (q->waiters) {
        waiter_t *w = q->waiters;
        q->waiters = w->next;
        finish(d, w, res, err);
    }
    free(q->name);
    free(q);
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    query_t *q = arg;
    core_dns_t *d = q->d;
    uint64_t now = uv_now(d->loop);
    result_t *res = NULL;
    int err = core_dns_status_to_err(status);
    if (!err) {
        res = res_build(q->name, ai, now);
        if (!res)
            err = UV_EAI_NODATA;
    }
    if (ai)
        ares_freeaddrinfo(ai);
    if (d->closing) {
        res_unref(res);
        res = NULL;
        err = UV_ECANCELED;
    }
    if (err && err != UV_ECANCELED) {
        core_metrics_add(d->m_errors, 1);
        core_log_info("dns.resolve_failed", "resolver=%s error=\"%s\" timeouts=%d", d->name,
                      ares_strerror(status), timeouts);
    }

    finish_query(q, res, err);
    res_unref(res);
}

static int start_query(core_dns_t *d, const char *name, entry_t *e, waiter_t *w)
{
    query_t *q = core_xcalloc(1, sizeof *q);
    q->d = d;
    q->name = core_xstrdup(name);
    q->entry = e;
    q->waiters = w;
    w->next = NULL;
    if (e)
        e->inflight = q;
    result_t *lit = res_numeric(name, uv_now(d->loop));
    if (lit) {
        finish_query(q, lit, 0);
        res_unref(lit);
        return 0;
    }
    core_metrics_add(d->m_queries, 1);
    struct ares_addrinfo_hints hints = {
        .ai_family = AF_UNSPEC,
        /* Sorting per RFC 6724 would connect a probe socket per address; callers pick. */
        .ai_flags = ARES_AI_NOSORT,
    };
    /* May complete synchronously (numeric names, hosts file): on_addrinfo only queues. */
    ares_getaddrinfo(d->ch, name, NULL, &hints, on_addrinfo, q);
    arm_timer(d);
    return 0;
}

static int check_name(core_dns_t *d, const char *name)
{
    if (!d || d->closing)
        return UV_ECANCELED;
    if (!name || !*name || strlen(name) > NAME_MAX_LEN)
        return UV_EINVAL;
    return 0;
}

int core_dns_resolve(core_dns_t *d, const char *name, core_dns_cb cb, void *ud)
{
    int rc = check_name(d, name);
    if (rc)
        return rc;
    return start_query(d, name, NULL, waiter_get(d, cb, ud));
}

static void entry_free(entry_t *e)
{
    if (e->inflight)
        e->inflight->entry = NULL; /* the query still answers its waiters */
    res_unref(e->res);
    free(e->name);
    free(e);
}

/* Makes room for one more entry: drops an expired one, else the least recently used. */
static void evict_one(core_dns_t *d, uint64_t now)
{
    entry_t **victim = NULL;
    for (entry_t **pp = &d->entries; *pp; pp = &(*pp)->next) {
        entry_t *e = *pp;
        if (e->inflight)
            continue;
        if (!e->res || e->expires_ms <= now) {
            victim = pp;
            break;
        }
        if (!victim || e->used_ms < (*victim)->used_ms)
            victim = pp;
    }
    if (!victim)
        return; /* everything is in flight: run over the limit for a while */
    entry_t *e = *victim;
    *victim = e->next;
    d->nentries--;
    entry_free(e);
}

int core_dns_lookup_cached(core_dns_t *d, const char *name, core_dns_cb cb, void *ud)
{
    int rc = check_name(d, name);
    if (rc)
        return rc;
    uint64_t now = uv_now(d->loop);
    entry_t *e = d->entries;
    while (e && strcasecmp(e->name, name) != 0)
        e = e->next;
    if (e && e->res && now < e->expires_ms) {
        e->used_ms = now;
        core_metrics_add(d->m_hits, 1);
        waiter_t *w = waiter_get(d, cb, ud);
        w->from_cache = true;
        finish(d, w, e->res, 0);
        return 0;
    }
    core_metrics_add(d->m_misses, 1);
    if (!e) {
        if (d->nentries >= d->max_entries)
            evict_one(d, now);
        e = core_xcalloc(1, sizeof *e);
        e->name = core_xstrdup(name);
        e->next = d->entries;
        d->entries = e;
        d->nentries++;
    }
    e->used_ms = now;
    waiter_t *w = waiter_get(d, cb, ud);
    if (e->inflight) {
        /* Single flight: join the query already on its way. */
        w->next = e->inflight->waiters;
        e->inflight->waiters = w;
        return 0;
    }
    return start_query(d, name, e, w);
}

void core_dns_cache_clear(core_dns_t *d)
{
    while (d->entries) {
        entry_t *e = d->entries;
        d->entries = e->next;
        entry_free(e);
    }
    d->nentries = 0;
}

/* --- lifecycle ---------------------------------------------------------- */

static void release(core_dns_t *d)
{
    while (d->pool) {
        waiter_t *w = d->pool;
        d->pool = w->next;
        free(w);
    }
    free(d->name);
    free(d);
    ares_library_cleanup();
}

static void on_poll_closed(uv_handle_t *h)
{
    poll_t *p = h->data;
    core_dns_t *d = p->d;
    free(p);
    if (--d->open_handles == 0)
        release(d);
}

static void on_timer_closed(uv_handle_t *h)
{
    core_dns_t *d = h->data;
    if (--d->open_handles == 0)
        release(d);
}

core_dns_t *core_dns_new(uv_loop_t *loop, const core_dns_opts_t *o)
{
    const char *name = o && o->name && *o->name ? o->name : "dns";
    int st = ares_library_init(ARES_LIB_INIT_ALL);
    if (st != ARES_SUCCESS) {
        core_log_error("dns.init_failed", "resolver=%s error=\"%s\"", name, ares_strerror(st));
        return NULL;
    }
    core_dns_t *d = core_xcalloc(1, sizeof *d);
    d->loop = loop;
    d->name = core_xstrdup(name);
    d->max_entries = o && o->cache_entries ? o->cache_entries : 1024;

    struct ares_options ao;
    memset(&ao, 0, sizeof ao);
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    ao.sock_state_cb = on_sock_state;
    ao.sock_state_cb_data = d;
    ao.timeout = o && o->timeout_ms ? (int)o->timeout_ms : 2000;
    ao.tries = o && o->tries ? (int)o->tries : 2;
    if (o && o->servers && *o->servers) {
        /* Explicit servers mean "ask them": the hosts file would shadow them. */
        ao.lookups = (char *)"b";
        mask |= ARES_OPT_LOOKUPS;
    }
    st = ares_init_options(&d->ch, &ao, mask);
    if (st == ARES_SUCCESS && o && o->servers && *o->servers) {
        st = ares_set_servers_ports_csv(d->ch, o->servers);
        if (st != ARES_SUCCESS)
            ares_destroy(d->ch);
    }
    if (st != ARES_SUCCESS) {
        core_log_error("dns.init_failed", "resolver=%s error=\"%s\"", name, ares_strerror(st));
        free(d->name);
        free(d);
        ares_library_cleanup();
        return NULL;
    }

    uv_timer_init(loop, &d->timer);
    uv_timer_init(loop, &d->deliver);
    d->timer.data = d->deliver.data = d;
    d->open_handles = 2;

    char labels[128];
    snprintf(labels, sizeof labels, "resolver=\"%s\"", d->name);
    d->m_queries =
        core_metrics_counter("meridian_dns_queries_total", "DNS resolutions started.", labels);
    d->m_errors =
        core_metrics_counter("meridian_dns_errors_total", "DNS resolutions that failed.", labels);
    d->m_hits = core_metrics_counter("meridian_dns_cache_hits_total",
                                     "Cached lookups answered from the cache.", labels);
    d->m_misses = core_metrics_counter("meridian_dns_cache_misses_total",
                                       "Cached lookups that needed a query.", labels);
    return d;
}

void core_dns_free(core_dns_t *d)
{
    if (!d || d->closing)
        return;
    d->closing = true;
    /* Fails every query in flight through on_addrinfo (which only queues) and
     * reports every socket closed through on_sock_state. */
    ares_destroy(d->ch);
    d->ch = NULL;
    cancel_queued(d);
    core_dns_cache_clear(d);
    while (d->polls)
        close_poll(d, d->polls);
    uv_close((uv_handle_t *)&d->timer, on_timer_closed);
    uv_close((uv_handle_t *)&d->deliver, on_timer_closed);
}
