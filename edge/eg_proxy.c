/* eg_proxy.c: what the edge does with a client's request.
 *
 *  1. Classify the path (eg_route.h): workspace routes go to the workspace's
 *     home region (directory), user routes to the token's home region,
 *     signup and login to the home region of the email's keyed hash, refresh
 *     to the region the client names. Anything else is refused here.
 *  2. Verify the token here (Ed25519, every region's public keys from the
 *     world file), so that unauthenticated traffic never reaches a region.
 *  3. Refuse what the home region cannot take: a region whose endpoints are
 *     all down (breakers open) gets 503 with a jittered Retry-After, and new
 *     sessions over the region's admission bucket are shed the same way. A
 *     workspace's traffic never goes to a region outside its allowed set:
 *     the only region ever chosen for it is its home, as the directory (or a
 *     421 from a region in the allowed set) names it.
 *  4. Relay (proxy mode: keep-alive upstream pools, WebSockets tunnelled
 *     byte for byte with backpressure both ways) or redirect (307).
 *
 * Bodies and tokens are never logged; the access line names the region. */
#include "core/admit.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/ws.h"
#include "edge/eg_route.h"
#include "edge/eg_worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <llhttp.h>
#include <sodium.h>

#define RETRY_CAP_S 5
/* A stopping edge's streams come back within this, spread (as a region's). */
#define EG_DRAIN_WINDOW_MS 5000
#define TUNNEL_READ_BUF 65536

typedef struct {
    eg_worker_t *w;
    core_http_req_t *req;
    eg_region_t *region;
    eg_target_t *target;
    core_httpc_req_t *up;
    struct eg_dir_waiter_s *waiter;
    eg_route_t route;
    bool retried;       /* after a 421 */
    bool dir_refreshed; /* the directory was refreshed for this request */
    bool session;       /* starts a session: admission applies */
    bool preflight;     /* a browser's CORS preflight: no token, no body */
    bool admitted;      /* took its admission token before the token check */
    uint64_t sent_ns;
    core_auth_claims_t claims;
    bool has_claims;
} px_t;

static void px_free(px_t *p)
{
    free(p);
}

static void refuse(px_t *p, int status, const char *code, const char *msg, const char *hdrs)
{
    core_metrics_add(p->w->m_refused, 1);
    p->req->on_abort = NULL;
    core_http_respond_error_h(p->req, status, code, msg, hdrs);
    px_free(p);
}

static void unavailable(px_t *p, const char *code, const char *msg)
{
    char h[64];
    snprintf(h, sizeof h, "Retry-After: %u\r\n", eg_retry_after_s(RETRY_CAP_S));
    refuse(p, 503, code, msg, h);
}

/* A shed session's retry hint: its slot in the region's queue (the shed
 * come back at the rate the bucket admits), in milliseconds, and in whole
 * seconds for clients that only read Retry-After. */
static void shed(px_t *p, eg_region_t *r)
{
    char h[CORE_ADMIT_HINT_HEADERS];
    core_admit_hint_headers(h, sizeof h, eg_upstream_shed_hint_ms(r));
    refuse(p, 503, "overloaded",
           "too many new sessions for this region; retry after the hinted delay", h);
}

static void on_abort(core_http_req_t *req)
{
    px_t *p = req->user;
    if (p->up)
        core_httpc_cancel(p->up);
    if (p->waiter)
        eg_dir_refresh_cancel(p->w, p->waiter);
    px_free(p);
}

/* ---- building the upstream request ----------------------------------------- */

static bool drop_request_header(const core_http_req_t *q, const core_http_header_t *h, bool ws)
{
    if (eg_route_hop_header(h->name, h->name_len, ws))
        return true;
    if (ws && h->name_len == 7 && strncasecmp(h->name, "upgrade", 7) == 0)
        return false; /* named by Connection, and relayed on purpose */
    /* RFC 9110 7.6.1: headers the Connection header names are hop-by-hop too. */
    char name[64];
    if (h->name_len < sizeof name) {
        memcpy(name, h->name, h->name_len);
        name[h->name_len] = '\0';
        if (core_http_header_has_token(q, "connection", name))
            return true;
    }
    return false;
}

static void build_request(px_t *p, core_buf_t *m)
{
    core_http_req_t *q = p->req;
    bool ws = p->route.kind == EG_ROUTE_WORKSPACE && q->upgrade;
    core_buf_reserve(m, 512 + q->body.len);
    core_buf_puts(m, q->method_name);
    core_buf_putc(m, ' ');
    core_buf_append(m, q->path, q->path_len);
    if (*q->query) {
        core_buf_putc(m, '?');
        core_buf_puts(m, q->query);
    }
    core_buf_puts(m, " HTTP/1.1\r\nHost: ");
    core_buf_puts(m, p->target->hostport);
    core_buf_puts(m, "\r\n");
    const char *xff = NULL;
    size_t xff_len = 0;
    for (size_t i = 0; i < q->nheaders; i++) {
        const core_http_header_t *h = &q->headers[i];
        if (h->name_len == 15 && strncasecmp(h->name, "x-forwarded-for", 15) == 0) {
            xff = h->value;
            xff_len = h->value_len;
            continue;
        }
        if (drop_request_header(q, h, ws))
            continue;
        core_buf_append(m, h->name, h->name_len);
        core_buf_puts(m, ": ");
        core_buf_append(m, h->value, h->value_len);
        core_buf_puts(m, "\r\n");
    }
    /* The peer's address without its port. */
    const char *peer = core_http_conn_peer(q->conn);
    const char *colon = strrchr(peer, ':');
    size_t plen = colon ? (size_t)(colon - peer) : strlen(peer);
    core_buf_puts(m, "X-Forwarded-For: ");
    if (xff) {
        core_buf_append(m, xff, xff_len);
        core_buf_puts(m, ", ");
    }
    core_buf_append(m, peer, plen);
    core_buf_puts(m, "\r\nX-Request-Id: ");
    core_buf_puts(m, q->id);
    core_buf_puts(m, "\r\nMeridian-Edge: ");
    core_buf_puts(m, p->w->cfg->edge);
    core_buf_puts(m, "\r\n");
    if (ws)
        core_buf_puts(m, "Connection: Upgrade\r\n");
    if (q->body.len || q->method == HTTP_POST || q->method == HTTP_PUT || q->method == HTTP_PATCH)
        core_buf_appendf(m, "Content-Length: %zu\r\n", q->body.len);
    core_buf_puts(m, "\r\n");
    core_buf_append(m, q->body.base, q->body.len);
}

/* ---- answering ---------------------------------------------------------------- */

static bool drop_response_header(const core_http_header_t *h)
{
    static const char *const drop[] = {"connection",     "keep-alive",       "transfer-encoding",
                                       "content-length", "content-type",     "date",
                                       "x-request-id",   "proxy-connection", "te",
                                       "trailer",        "upgrade",          NULL};
    for (int i = 0; drop[i]; i++)
        if (strlen(drop[i]) == h->name_len && strncasecmp(drop[i], h->name, h->name_len) == 0)
            return true;
    return false;
}

static const char *resp_header(const core_httpc_resp_t *r, const char *name, size_t *len)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < r->nheaders; i++) {
        if (r->headers[i].name_len == n && strncasecmp(r->headers[i].name, name, n) == 0) {
            *len = r->headers[i].value_len;
            return r->headers[i].value;
        }
    }
    return NULL;
}

static void relay_response(px_t *p, const core_httpc_resp_t *resp)
{
    core_buf_t h;
    core_buf_init(&h);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const core_http_header_t *x = &resp->headers[i];
        if (drop_response_header(x))
            continue;
        core_buf_append(&h, x->name, x->name_len);
        core_buf_puts(&h, ": ");
        core_buf_append(&h, x->value, x->value_len);
        core_buf_puts(&h, "\r\n");
    }
    core_buf_puts(&h, "Meridian-Region: ");
    core_buf_puts(&h, p->region->def->name);
    core_buf_puts(&h, "\r\n");
    size_t ctl = 0;
    const char *ct = resp_header(resp, "content-type", &ctl);
    char ctype[128];
    if (ct && ctl < sizeof ctype) {
        memcpy(ctype, ct, ctl);
        ctype[ctl] = '\0';
    }
    p->req->on_abort = NULL;
    core_http_respond(p->req, resp->status, ct && ctl < sizeof ctype ? ctype : NULL,
                      core_buf_cstr(&h), resp->body, resp->body_len);
    core_buf_free(&h);
    px_free(p);
}

static void send_upstream(px_t *p);
static void tunnel_start(px_t *p, core_httpc_req_t *up, const core_httpc_resp_t *resp);

static void on_upstream(core_httpc_req_t *up, const core_httpc_resp_t *resp, int err, void *ud)
{
    px_t *p = ud;
    p->up = NULL;
    eg_region_t *r = p->region;
    if (err == UV_ECANCELED) {
        /* The edge is shutting down. */
        unavailable(p, "edge_stopping", "the edge is restarting; retry shortly");
        return;
    }
    if (err) {
        core_metrics_add(r->m_err, 1);
        core_metrics_add(r->m_req[5], 1);
        eg_upstream_result(p->target, false);
        core_log_warn("edge.upstream_failed", "region=%s target=%s error=\"%s\"", r->def->name,
                      p->target->url, uv_strerror(err));
        if (err == UV_ETIMEDOUT) {
            refuse(p, 504, "upstream_timeout", "the home region did not answer in time", NULL);
            return;
        }
        unavailable(p, "region_unavailable", "the workspace's home region cannot be reached");
        return;
    }
    eg_upstream_result(p->target, true);
    core_metrics_observe(r->m_lat, (double)(core_now_ns() - p->sent_ns) / 1e9);
    int cls = resp->status / 100;
    if (cls >= 1 && cls <= 5)
        core_metrics_add(r->m_req[cls], 1);
    if (resp->status == 421 && !p->retried && p->route.kind == EG_ROUTE_WORKSPACE) {
        /* A stale route: the region names the home. Follow it once, and only
         * inside the allowed set. */
        size_t len = 0;
        const char *hr = resp_header(resp, "meridian-home-region", &len);
        eg_dir_refresh(p->w, NULL, NULL);
        for (size_t i = 0; hr && i < p->w->nregions; i++) {
            const char *name = p->w->regions[i].def->name;
            if (strlen(name) == len && strncmp(name, hr, len) == 0 &&
                eg_dir_set_home(p->w->dir, p->route.id, (int)i)) {
                core_log_info("edge.stale_route", "workspace=%s from=%s to=%s", p->route.id,
                              r->def->name, name);
                p->retried = true;
                p->region = &p->w->regions[i];
                p->req->access_note = p->region->note;
                send_upstream(p);
                return;
            }
        }
    }
    if (resp->status == 101 && p->req->upgrade) {
        tunnel_start(p, up, resp);
        return;
    }
    relay_response(p, resp);
}

static void send_upstream(px_t *p)
{
    eg_region_t *r = p->region;
    p->req->access_note = r->note;
    p->target = eg_upstream_pick(r);
    if (!p->target) {
        unavailable(p, "region_unavailable",
                    "the workspace's home region is unavailable; retry shortly");
        return;
    }
    if (p->w->cfg->mode == EG_MODE_REDIRECT) {
        core_buf_t h;
        core_buf_init(&h);
        core_buf_appendf(&h, "Location: %s", p->target->url);
        core_buf_append(&h, p->req->path, p->req->path_len);
        if (*p->req->query)
            core_buf_appendf(&h, "?%s", p->req->query);
        core_buf_appendf(&h, "\r\nMeridian-Region: %s\r\n", r->def->name);
        p->req->on_abort = NULL;
        core_http_respond(p->req, 307, NULL, core_buf_cstr(&h), NULL, 0);
        core_buf_free(&h);
        px_free(p);
        return;
    }
    core_buf_t m;
    core_buf_init(&m);
    build_request(p, &m);
    int flags = 0;
    if (p->req->method == HTTP_GET || p->req->method == HTTP_HEAD || p->req->method == HTTP_OPTIONS)
        flags |= CORE_HTTPC_IDEMPOTENT;
    if (p->req->upgrade)
        flags |= CORE_HTTPC_UPGRADE;
    p->sent_ns = core_now_ns();
    int rc = core_httpc_send(p->target->pool, &m, flags, on_upstream, p, &p->up);
    core_buf_free(&m);
    if (rc) {
        p->up = NULL;
        unavailable(p, "region_unavailable", "the home region cannot be reached");
    }
}

/* ---- routing ------------------------------------------------------------------ */

static void resolve(px_t *p);

static void on_dir_refreshed(bool ok, void *ud)
{
    px_t *p = ud;
    p->waiter = NULL;
    p->dir_refreshed = true;
    resolve(p);
}

static eg_region_t *region_named(eg_worker_t *w, const char *name, size_t len)
{
    for (size_t i = 0; i < w->nregions; i++) {
        const char *n = w->regions[i].def->name;
        if (strlen(n) == len && strncmp(n, name, len) == 0)
            return &w->regions[i];
    }
    return NULL;
}

/* The region for signup and login: the home of the email's keyed hash. */
static eg_region_t *email_region(px_t *p, bool *known)
{
    eg_worker_t *w = p->w;
    *known = false;
    core_json_doc_t *doc = NULL;
    char err[128];
    core_json_limits_t lim = {.max_bytes = w->cfg->http.max_body_bytes, .max_depth = 16};
    if (core_json_parse(p->req->body.base ? p->req->body.base : "", p->req->body.len, &lim, &doc,
                        err, sizeof err) != 0)
        return NULL;
    const char *email = NULL;
    eg_region_t *r = NULL;
    uint8_t hash[32];
    if (core_json_get_str(core_json_root(doc), "email", &email) == 0 &&
        core_auth_email_hash(w->hash_keys, email, strlen(email), hash) == 0) {
        char hex[65];
        sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
        int idx = eg_dir_email(w->dir, hex);
        if (idx >= 0) {
            r = &w->regions[idx];
            *known = true;
        }
    }
    core_json_free(doc);
    if (!r) {
        /* A new email: the region the client asks for, else this edge's. */
        size_t len = 0;
        const char *want = core_http_header(p->req, "meridian-home-region", &len);
        r = want ? region_named(w, want, len) : NULL;
        if (!r && w->cfg->signup_region)
            r = region_named(w, w->cfg->signup_region, strlen(w->cfg->signup_region));
        if (!r)
            r = &w->regions[0];
    }
    return r;
}

static void resolve(px_t *p)
{
    eg_worker_t *w = p->w;
    eg_region_t *r = NULL;
    switch (p->route.kind) {
    case EG_ROUTE_WORKSPACE: {
        const eg_ws_route_t *e = eg_dir_workspace(w->dir, p->route.id);
        if (!e && !p->dir_refreshed) {
            /* Perhaps created a moment ago: one fresh look at the feed. */
            p->waiter = eg_dir_refresh(w, on_dir_refreshed, p);
            return;
        }
        if (!e) {
            refuse(p, 404, "not_found", "no such workspace", NULL);
            return;
        }
        if (e->home < 0) {
            unavailable(p, "region_unknown", "the workspace's home region is not known here");
            return;
        }
        r = &w->regions[e->home];
        break;
    }
    case EG_ROUTE_USER:
    case EG_ROUTE_LOGOUT:
        if (p->preflight && !p->has_claims) {
            /* Every region answers preflights alike: any will do. */
            r = w->cfg->signup_region
                    ? region_named(w, w->cfg->signup_region, strlen(w->cfg->signup_region))
                    : NULL;
            r = r ? r : &w->regions[0];
            break;
        }
        r = region_named(w, p->claims.hr, strlen(p->claims.hr));
        if (!r) {
            unavailable(p, "region_unknown", "the token's home region is not known here");
            return;
        }
        break;
    case EG_ROUTE_REFRESH: {
        size_t len = 0;
        const char *want = core_http_header(p->req, "meridian-home-region", &len);
        r = want ? region_named(w, want, len) : NULL;
        if (!r && p->has_claims)
            r = region_named(w, p->claims.hr, strlen(p->claims.hr));
        if (!r) {
            refuse(p, 400, "home_region_required",
                   "name the session's region in Meridian-Home-Region (the home_region of login)",
                   NULL);
            return;
        }
        break;
    }
    case EG_ROUTE_SIGNUP:
    case EG_ROUTE_LOGIN: {
        bool known;
        if (p->preflight) {
            r = w->cfg->signup_region
                    ? region_named(w, w->cfg->signup_region, strlen(w->cfg->signup_region))
                    : NULL;
            r = r ? r : &w->regions[0];
            break;
        }
        r = email_region(p, &known);
        if (!r) {
            refuse(p, 400, "invalid_json", "the body must be a JSON object", NULL);
            return;
        }
        if (!known && p->route.kind == EG_ROUTE_LOGIN && !p->dir_refreshed) {
            p->waiter = eg_dir_refresh(w, on_dir_refreshed, p);
            return;
        }
        break;
    }
    default:
        refuse(p, 404, "not_found", "no such route", NULL);
        return;
    }
    p->region = r;
    p->req->access_note = r->note;
    if (p->session && !p->admitted && !eg_upstream_admit(r)) {
        shed(p, r);
        return;
    }
    send_upstream(p);
}

static void on_request(core_http_req_t *req, void *ud)
{
    eg_worker_t *w = ud;
    px_t *p = core_xcalloc(1, sizeof *p);
    p->w = w;
    p->req = req;
    req->user = p;
    req->on_abort = on_abort;
    if (eg_route_classify(req->method_name, req->path, req->path_len, &p->route) != 0 ||
        p->route.kind == EG_ROUTE_NONE) {
        refuse(p, 404, "not_found", "no such route", NULL);
        return;
    }
    if (req->upgrade && !(p->route.kind == EG_ROUTE_WORKSPACE &&
                          core_http_header_has_token(req, "upgrade", "websocket"))) {
        refuse(p, 400, "bad_upgrade", "only workspace streams upgrade, and only to WebSocket",
               NULL);
        return;
    }
    p->session =
        !p->preflight && (req->upgrade || p->route.kind == EG_ROUTE_LOGIN ||
                          p->route.kind == EG_ROUTE_SIGNUP || p->route.kind == EG_ROUTE_REFRESH);
    /* Browsers send CORS preflights without credentials: the region answers them. */
    p->preflight = req->method == HTTP_OPTIONS &&
                   core_http_header(req, "access-control-request-method", NULL) != NULL;
    bool need_token =
        !p->preflight && (p->route.kind == EG_ROUTE_WORKSPACE || p->route.kind == EG_ROUTE_USER ||
                          p->route.kind == EG_ROUTE_LOGOUT);
    /* A stream's admission comes before its token check: in a reconnect
     * storm most of them are shed, and Ed25519 is the costly part. */
    if (req->upgrade) {
        const eg_ws_route_t *e = eg_dir_workspace(w->dir, p->route.id);
        if (e && e->home >= 0) {
            if (!eg_upstream_admit(&w->regions[e->home])) {
                p->req->access_note = w->regions[e->home].note;
                shed(p, &w->regions[e->home]);
                return;
            }
            p->admitted = true;
        }
    }
    char token[CORE_AUTH_TOKEN_MAX + 1];
    int tlen = core_auth_request_token(req, token, sizeof token);
    if (tlen > 0) {
        int rc = core_auth_token_verify_cached(w->tokens, w->keys, w->nkeys, token, (size_t)tlen,
                                               (int64_t)time(NULL), &p->claims);
        sodium_memzero(token, sizeof token);
        if (rc == 0) {
            p->has_claims = true;
        } else if (need_token) {
            refuse(p, 401, rc == CORE_AUTH_EEXPIRED ? "token_expired" : "invalid_token",
                   rc == CORE_AUTH_EEXPIRED ? "the access token has expired: refresh it"
                                            : "the access token is not valid",
                   "WWW-Authenticate: Bearer\r\n");
            return;
        }
    } else if (need_token) {
        refuse(p, 401, "unauthenticated",
               "a token is required (Authorization: Bearer, a bearer.<token> subprotocol, or "
               "access_token)",
               "WWW-Authenticate: Bearer\r\n");
        return;
    }
    resolve(p);
}

/* ---- WebSocket tunnels ----------------------------------------------------------- */

typedef struct {
    eg_worker_t *w;
    eg_region_t *region;
    core_http_conn_t *client;
    uv_tcp_t *up;
    size_t up_pending;   /* written to the region, not yet taken by the kernel */
    core_ws_scan_t down; /* the region's frames to the client, by their headers */
    bool up_reading, client_paused, client_gone, up_closed;
} tun_t;

typedef struct {
    uv_write_t wr;
    tun_t *t;
    size_t len;
    char data[];
} tun_write_t;

static char g_tun_buf[TUNNEL_READ_BUF];
static bool g_tun_buf_busy;

static void tun_maybe_free(tun_t *t)
{
    if (t->client_gone && t->up_closed && t->up_pending == 0)
        free(t);
}

static void on_up_closed(uv_handle_t *h)
{
    tun_t *t = h->data;
    free(h);
    t->up_closed = true;
    tun_maybe_free(t);
}

static void tun_close_up(tun_t *t)
{
    if (t->up && !uv_is_closing((uv_handle_t *)t->up)) {
        uv_close((uv_handle_t *)t->up, on_up_closed);
    }
}

static void tun_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    if (g_tun_buf_busy) {
        b->base = NULL;
        b->len = 0;
        return;
    }
    g_tun_buf_busy = true;
    b->base = g_tun_buf;
    b->len = sizeof g_tun_buf;
}

/* Tells the client, on the stream it has, when to come back, then closes
 * it: {"type":"reconnect","after_ms":N} (the message a draining region
 * sends) and a close frame. Only between whole messages, so that the
 * client's stream stays valid; a stream the region closed itself passes as
 * it is. Returns whether it was sent. */
/* Whether the edge may add its own frames to the client's stream: the
 * client is there, the region has not closed it, and no message is open. */
static bool tun_may_hint(const tun_t *t)
{
    return !t->client_gone && !t->down.saw_close && core_ws_scan_between(&t->down);
}

static bool tun_hint(tun_t *t, uint32_t after_ms, int code, const char *reason)
{
    if (!tun_may_hint(t))
        return false;
    char msg[64];
    int n = snprintf(msg, sizeof msg, "{\"type\":\"reconnect\",\"after_ms\":%u}", after_ms);
    size_t rlen = strlen(reason);
    if (rlen > CORE_WS_MAX_REASON)
        rlen = CORE_WS_MAX_REASON;
    uint8_t out[10 + sizeof msg + 4 + 2 + CORE_WS_MAX_REASON];
    size_t o = core_ws_frame_header(out, CORE_WS_TEXT, (size_t)n);
    memcpy(out + o, msg, (size_t)n);
    o += (size_t)n;
    o += core_ws_frame_header(out + o, CORE_WS_CLOSE, 2 + rlen);
    out[o++] = (uint8_t)(code >> 8);
    out[o++] = (uint8_t)(code & 0xFF);
    memcpy(out + o, reason, rlen);
    o += rlen;
    core_http_conn_write(t->client, (const char *)out, o, 0);
    return true;
}

/* The region dropped the stream without closing it: its worker crashed, or
 * the node was killed. Every client of that worker loses its stream in the
 * same instant and, left to its own backoff, comes back in the same 100 ms
 * or so, to be shed by the thousand (each a TCP connection, a request and a
 * 503). Instead each is told its slot in the region's queue of shed
 * sessions, the same hint a shed upgrade gets, and closed with 1012. */
static void tun_lost(tun_t *t)
{
    if (!tun_may_hint(t)) /* checked first: a slot is not taken for nothing */
        return;
    if (tun_hint(t, eg_upstream_shed_hint_ms(t->region), CORE_WS_CLOSE_RESTART,
                 "the region restarted; reconnect and resume"))
        core_metrics_add(t->region->m_tunnels_lost, 1);
}

static void on_up_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    tun_t *t = s->data;
    if (b->base == g_tun_buf)
        g_tun_buf_busy = false;
    if (n == 0)
        return;
    if (n < 0) {
        /* The region closed (or failed): flush what the client has, then close. */
        uv_read_stop(s);
        t->up_reading = false;
        tun_close_up(t);
        if (!t->client_gone) {
            tun_lost(t);
            core_http_conn_close(t->client);
        }
        return;
    }
    if (t->client_gone)
        return;
    core_ws_scan(&t->down, (const uint8_t *)b->base, (size_t)n);
    core_http_conn_write(t->client, b->base, (size_t)n, 0);
    if (core_http_conn_queued(t->client) > t->w->cfg->tunnel_buffer_bytes) {
        /* The client reads slower than the region sends: stop reading the
         * region until the client has caught up (the region's own send queue
         * limit then applies, as it would to a direct client). */
        uv_read_stop(s);
        t->up_reading = false;
    }
}

static void tun_on_writable(void *ud)
{
    tun_t *t = ud;
    if (!t->up_reading && !t->up_closed && t->up && !uv_is_closing((uv_handle_t *)t->up)) {
        if (uv_read_start((uv_stream_t *)t->up, tun_alloc, on_up_read) == 0)
            t->up_reading = true;
    }
}

static void on_up_written(uv_write_t *wr, int status)
{
    tun_write_t *tw = (tun_write_t *)wr;
    tun_t *t = tw->t;
    t->up_pending -= tw->len;
    free(tw);
    if (status < 0 && !t->client_gone)
        core_http_conn_close(t->client);
    if (t->client_paused && !t->client_gone && t->up_pending < t->w->cfg->tunnel_buffer_bytes / 2) {
        core_http_conn_pause(t->client, false);
        t->client_paused = false;
    }
    tun_maybe_free(t);
}

static void tun_on_data(void *ud, const char *data, size_t len)
{
    tun_t *t = ud;
    if (!t->up || uv_is_closing((uv_handle_t *)t->up) || len == 0)
        return;
    tun_write_t *tw = core_xmalloc(sizeof *tw + len);
    tw->t = t;
    tw->len = len;
    memcpy(tw->data, data, len);
    uv_buf_t b = uv_buf_init(tw->data, (unsigned)len);
    if (uv_write(&tw->wr, (uv_stream_t *)t->up, &b, 1, on_up_written) != 0) {
        free(tw);
        core_http_conn_close(t->client);
        return;
    }
    t->up_pending += len;
    if (t->up_pending > t->w->cfg->tunnel_buffer_bytes && !t->client_paused) {
        core_http_conn_pause(t->client, true);
        t->client_paused = true;
    }
}

static void tun_on_drain(void *ud)
{
    tun_t *t = ud;
    /* The edge is stopping: the client reconnects and resumes from its
     * cursor through another edge, at a random point of the window, as a
     * draining region's clients do (not all at once onto the others). */
    tun_hint(t, core_rand_uniform(EG_DRAIN_WINDOW_MS + 1), CORE_WS_CLOSE_GOING_AWAY,
             "the edge is restarting; reconnect and resume");
    tun_close_up(t);
    core_http_conn_close(t->client);
}

static void tun_on_close(void *ud)
{
    tun_t *t = ud;
    t->client_gone = true;
    t->region->tunnels--;
    core_metrics_add(t->region->m_tunnels, -1);
    tun_close_up(t);
    tun_maybe_free(t);
}

static void tun_on_timeout(void *ud) {}

static void tunnel_start(px_t *p, core_httpc_req_t *up, const core_httpc_resp_t *resp)
{
    core_buf_t extra;
    core_buf_init(&extra);
    uv_tcp_t *sock = core_httpc_take_socket(up, &extra);
    if (!sock) {
        core_buf_free(&extra);
        unavailable(p, "region_unavailable", "the stream could not be opened");
        return;
    }
    tun_t *t = core_xcalloc(1, sizeof *t);
    t->w = p->w;
    t->region = p->region;
    t->client = p->req->conn;
    t->up = sock;
    sock->data = t;
    /* The region's 101, verbatim: its Sec-WebSocket-Accept and protocol. */
    core_buf_t head;
    core_buf_init(&head);
    core_buf_puts(&head, "HTTP/1.1 101 Switching Protocols\r\n");
    for (size_t i = 0; i < resp->nheaders; i++) {
        core_buf_append(&head, resp->headers[i].name, resp->headers[i].name_len);
        core_buf_puts(&head, ": ");
        core_buf_append(&head, resp->headers[i].value, resp->headers[i].value_len);
        core_buf_puts(&head, "\r\n");
    }
    core_buf_appendf(&head, "Meridian-Region: %s\r\n\r\n", p->region->def->name);
    static const core_http_upgrade_hooks_t hooks = {
        .on_data = tun_on_data,
        .on_timeout = tun_on_timeout,
        .on_drain = tun_on_drain,
        .on_close = tun_on_close,
        .on_writable = tun_on_writable,
    };
    core_http_conn_t *client = p->req->conn;
    p->req->on_abort = NULL;
    int rc = core_http_upgrade(p->req, head.base, head.len, &hooks, t);
    core_buf_free(&head);
    px_free(p);
    if (rc) {
        t->client_gone = true;
        tun_close_up(t);
        core_buf_free(&extra);
        return;
    }
    t->region->tunnels++;
    core_metrics_add(t->region->m_tunnels, 1);
    if (extra.len) {
        core_ws_scan(&t->down, (const uint8_t *)extra.base, extra.len);
        core_http_conn_write(client, extra.base, extra.len, 0);
    }
    core_buf_free(&extra);
    uv_tcp_nodelay(sock, 1);
    if (uv_read_start((uv_stream_t *)sock, tun_alloc, on_up_read) == 0)
        t->up_reading = true;
    else
        core_http_conn_close(client);
}

int eg_proxy_routes(eg_worker_t *w)
{
    core_http_set_fallback(w->http, on_request, w);
    return 0;
}
