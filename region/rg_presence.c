/* rg_presence.c: presence and typing in Redis, signals on core NATS (see
 * rg_presence.h for the key layout and the lifecycle). */
#include "region/rg_presence.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "region/rg_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_CAP 224
#define REFRESH_CHUNK 500 /* connections per script call: keeps each one short */

/* Redis's clock, not ours: every node of the region compares against it. */
#define NOW_MS                                                                                     \
    "local t = redis.call('TIME')\n"                                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS: pr, prc. ARGV: user, conn, ttl. Returns 1 when the user was offline. */
static const char JOIN[] = NOW_MS "local ttl = tonumber(ARGV[3])\n"
                                  "local exp = now + ttl\n"
                                  "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
                                  "redis.call('ZADD', KEYS[2], exp, ARGV[2])\n"
                                  "redis.call('PEXPIRE', KEYS[2], ttl * 2)\n"
                                  "redis.call('ZADD', KEYS[1], 'GT', exp, ARGV[1])\n"
                                  "redis.call('PEXPIRE', KEYS[1], ttl * 2)\n"
                                  "if s and tonumber(s) > now then return 0 end\n"
                                  "return 1\n";

/* KEYS: pr, prc. ARGV: user, conn. Returns 1 when the user went offline. */
static const char LEAVE[] =
    NOW_MS "redis.call('ZREM', KEYS[2], ARGV[2])\n"
           "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)\n"
           "local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')\n"
           "if #top == 0 then return redis.call('ZREM', KEYS[1], ARGV[1]) end\n"
           "redis.call('ZADD', KEYS[1], top[2], ARGV[1])\n"
           "return 0\n";

/* KEYS: pr. ARGV: ttl, prc key prefix, then user, conn pairs. Returns the
 * users whose every connection has expired (now offline). */
static const char REFRESH[] =
    NOW_MS "local ttl = tonumber(ARGV[1])\n"
           "local exp = now + ttl\n"
           "for i = 3, #ARGV, 2 do\n"
           "  local k = ARGV[2] .. ARGV[i]\n"
           "  redis.call('ZADD', k, exp, ARGV[i + 1])\n"
           "  redis.call('PEXPIRE', k, ttl * 2)\n"
           "  redis.call('ZADD', KEYS[1], 'GT', exp, ARGV[i])\n"
           "end\n"
           "if #ARGV > 2 then redis.call('PEXPIRE', KEYS[1], ttl * 2) end\n"
           "local off = {}\n"
           "for _, u in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do\n"
           "  local k = ARGV[2] .. u\n"
           "  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)\n"
           "  local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')\n"
           "  if #top == 0 then\n"
           "    redis.call('ZREM', KEYS[1], u)\n"
           "    off[#off + 1] = u\n"
           "  else\n"
           "    redis.call('ZADD', KEYS[1], top[2], u)\n"
           "  end\n"
           "end\n"
           "return off\n";

/* KEYS: pr. The users online now. */
static const char LIST[] = NOW_MS "return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')\n";

static struct {
    bool init;
    core_metric_t m_online, m_offline, m_typing, m_throttled, m_errors;
} g;

static void metrics_init(void)
{
    if (g.init)
        return;
    g.init = true;
    g.m_online = core_metrics_counter("meridian_presence_signals_total",
                                      "Presence and typing signals published.", "kind=\"online\"");
    g.m_offline =
        core_metrics_counter("meridian_presence_signals_total",
                             "Presence and typing signals published.", "kind=\"offline\"");
    g.m_typing = core_metrics_counter("meridian_presence_signals_total",
                                      "Presence and typing signals published.", "kind=\"typing\"");
    g.m_throttled =
        core_metrics_counter("meridian_typing_throttled_total",
                             "Typing signals not broadcast: the same one is still live.", "");
    g.m_errors = core_metrics_counter("meridian_presence_errors_total",
                                      "Presence or typing updates Redis could not take.", "");
}

void rg_presence_subject(char *out, size_t cap, const char *region, const char *ws)
{
    snprintf(out, cap, "eph.%s.%s", region, ws);
}

static void key_pr(char *out, const char *ws)
{
    snprintf(out, KEY_CAP, "pr:{%s}", ws);
}

static void key_prc(char *out, const char *ws, const char *user)
{
    snprintf(out, KEY_CAP, "prc:{%s}:%s", ws, user);
}

/* ---- signals ---- */

/* Starts a signal {"type","workspace_id","user_id", ...} in b; the caller
 * adds its own fields and hands it to signal_publish. */
static void signal_open(core_jw_t *jw, core_buf_t *b, const char *type, const char *ws,
                        const char *user)
{
    core_buf_init(b);
    core_jw_init(jw, b);
    core_jw_obj_open(jw);
    core_jw_key(jw, "type");
    core_jw_str(jw, type);
    core_jw_key(jw, "workspace_id");
    core_jw_str(jw, ws);
    core_jw_key(jw, "user_id");
    core_jw_str(jw, user);
}

/* Closes the signal, publishes it on the workspace's subject and frees it. */
static void signal_publish(rg_worker_t *w, const char *ws, core_jw_t *jw, core_buf_t *b,
                           core_metric_t published)
{
    core_jw_obj_close(jw);
    char subject[160];
    rg_presence_subject(subject, sizeof subject, w->cfg->region, ws);
    if (core_nats_publish(w->nats, subject, b->base, b->len) == 0)
        core_metrics_add(published, 1);
    core_buf_free(b);
}

static void publish_presence(rg_worker_t *w, const char *ws, const char *user, bool online)
{
    core_buf_t b;
    core_jw_t jw;
    signal_open(&jw, &b, "presence", ws, user);
    core_jw_key(&jw, "status");
    core_jw_str(&jw, online ? "online" : "offline");
    signal_publish(w, ws, &jw, &b, online ? g.m_online : g.m_offline);
}

/* What a Redis callback needs once the connection may be gone. */
typedef struct {
    rg_worker_t *w;
    char ws[72];
    char user[CORE_AUTH_ID_MAX + 1];
    char ch[72];
} pctx_t;

static pctx_t *pctx_new(rg_worker_t *w, const char *ws, const char *user, const char *ch)
{
    pctx_t *p = core_xcalloc(1, sizeof *p);
    p->w = w;
    snprintf(p->ws, sizeof p->ws, "%s", ws);
    snprintf(p->user, sizeof p->user, "%s", user);
    if (ch)
        snprintf(p->ch, sizeof p->ch, "%s", ch);
    return p;
}

static bool reply_ok(const redisReply *reply, int err)
{
    if (err || !reply || reply->type == REDIS_REPLY_ERROR) {
        core_metrics_add(g.m_errors, 1);
        return false;
    }
    return true;
}

static void on_join(const redisReply *reply, int err, void *ud)
{
    pctx_t *p = ud;
    if (reply_ok(reply, err) && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        publish_presence(p->w, p->ws, p->user, true);
    free(p);
}

static void on_leave(const redisReply *reply, int err, void *ud)
{
    pctx_t *p = ud;
    if (reply_ok(reply, err) && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        publish_presence(p->w, p->ws, p->user, false);
    free(p);
}

static void on_refresh(const redisReply *reply, int err, void *ud)
{
    pctx_t *p = ud;
    if (reply_ok(reply, err) && reply->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < reply->elements; i++)
            if (reply->element[i]->type == REDIS_REPLY_STRING)
                publish_presence(p->w, p->ws, reply->element[i]->str, false);
    free(p);
}

static void presence_call(rg_worker_t *w, const char *script, core_redis_cb cb, const char *ws,
                          const char *user, const char *conn)
{
    metrics_init();
    char pr[KEY_CAP], prc[KEY_CAP], ttl[16];
    key_pr(pr, ws);
    key_prc(prc, ws, user);
    snprintf(ttl, sizeof ttl, "%u", w->cfg->ws.presence_ttl_ms);
    const char *argv[] = {"EVAL", script, "2", pr, prc, user, conn, ttl};
    size_t argvlen[8];
    for (int i = 0; i < 8; i++)
        argvlen[i] = strlen(argv[i]);
    pctx_t *p = pctx_new(w, ws, user, NULL);
    if (core_redis_commandargv(w->redis, cb, p, 8, argv, argvlen) != 0) {
        core_metrics_add(g.m_errors, 1);
        free(p);
    }
}

void rg_presence_join(rg_worker_t *w, const char *ws, const char *user, const char *conn)
{
    presence_call(w, JOIN, on_join, ws, user, conn);
    /* The caller sends hello next. Written on the loop's next turn, the join
     * could reach Redis after the leave of the user's other connection,
     * closed on another worker as soon as the client saw this hello: the
     * user would flap offline and online (stream_signals caught it). */
    core_redis_flush(w->redis);
}

void rg_presence_leave(rg_worker_t *w, const char *ws, const char *user, const char *conn)
{
    presence_call(w, LEAVE, on_leave, ws, user, conn);
}

void rg_presence_refresh(rg_worker_t *w, const char *ws, const char *const *users,
                         const char *const *conns, size_t n)
{
    metrics_init();
    char pr[KEY_CAP], prefix[KEY_CAP], ttl[16];
    key_pr(pr, ws);
    snprintf(prefix, sizeof prefix, "prc:{%s}:", ws);
    snprintf(ttl, sizeof ttl, "%u", w->cfg->ws.presence_ttl_ms);
    /* Run at least once with no connection: the sweep alone. */
    size_t done = 0;
    do {
        size_t k = n - done < REFRESH_CHUNK ? n - done : REFRESH_CHUNK;
        int argc = 6 + 2 * (int)k;
        const char **argv = core_xmalloc((size_t)argc * sizeof *argv);
        size_t *argvlen = core_xmalloc((size_t)argc * sizeof *argvlen);
        argv[0] = "EVAL";
        argv[1] = REFRESH;
        argv[2] = "1";
        argv[3] = pr;
        argv[4] = ttl;
        argv[5] = prefix;
        for (size_t i = 0; i < k; i++) {
            argv[6 + 2 * i] = users[done + i];
            argv[7 + 2 * i] = conns[done + i];
        }
        for (int i = 0; i < argc; i++)
            argvlen[i] = strlen(argv[i]);
        pctx_t *p = pctx_new(w, ws, "", NULL);
        if (core_redis_commandargv(w->redis, on_refresh, p, argc, argv, argvlen) != 0) {
            core_metrics_add(g.m_errors, 1);
            free(p);
        }
        free(argv);
        free(argvlen);
        done += k;
    } while (done < n);
}

/* ---- typing ---- */

static void on_typing(const redisReply *reply, int err, void *ud)
{
    pctx_t *p = ud;
    if (!reply_ok(reply, err)) {
        free(p);
        return;
    }
    if (reply->type != REDIS_REPLY_STATUS) {
        core_metrics_add(g.m_throttled, 1); /* nil: the same signal is still live */
        free(p);
        return;
    }
    core_buf_t b;
    core_jw_t jw;
    signal_open(&jw, &b, "typing", p->ws, p->user);
    core_jw_key(&jw, "channel_id");
    core_jw_str(&jw, p->ch);
    core_jw_key(&jw, "ttl_ms");
    core_jw_int(&jw, p->w->cfg->ws.typing_ttl_ms);
    signal_publish(p->w, p->ws, &jw, &b, g.m_typing);
    free(p);
}

int rg_typing(rg_worker_t *w, const char *ws, const char *ch, const char *user)
{
    metrics_init();
    char key[KEY_CAP], ttl[16];
    snprintf(key, sizeof key, "ty:{%s}:%s:%s", ws, ch, user);
    snprintf(ttl, sizeof ttl, "%u", w->cfg->ws.typing_ttl_ms);
    const char *argv[] = {"SET", key, "1", "PX", ttl, "NX"};
    size_t argvlen[6];
    for (int i = 0; i < 6; i++)
        argvlen[i] = strlen(argv[i]);
    pctx_t *p = pctx_new(w, ws, user, ch);
    int rc = core_redis_commandargv(w->redis, on_typing, p, 6, argv, argvlen);
    if (rc != 0) {
        core_metrics_add(g.m_errors, 1);
        free(p);
    }
    return rc;
}

/* ---- GET /v1/workspaces/{id}/presence ---- */

typedef struct {
    char ws[72];
} list_state_t;

#define LS(r) ((list_state_t *)(r)->state)

static void on_list(const redisReply *reply, int err, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY) {
        core_metrics_add(g.m_errors, 1);
        rg_req_fail_h(r, 503, "presence_unavailable", "presence cannot be read now; retry",
                      "Retry-After: 1\r\n");
        return;
    }
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "workspace_id");
    core_jw_str(&jw, LS(r)->ws);
    core_jw_key(&jw, "online");
    core_jw_arr_open(&jw);
    for (size_t i = 0; i < reply->elements; i++) {
        if (reply->element[i]->type != REDIS_REPLY_STRING)
            continue;
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "user_id");
        core_jw_str(&jw, reply->element[i]->str);
        core_jw_obj_close(&jw);
    }
    core_jw_arr_close(&jw);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void on_member(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    if (PQntuples(res) != 1) {
        rg_req_fail(r, 404, "not_found", "no such workspace");
        return;
    }
    char pr[KEY_CAP];
    key_pr(pr, LS(r)->ws);
    const char *argv[] = {"EVAL", LIST, "1", pr};
    size_t argvlen[4];
    for (int i = 0; i < 4; i++)
        argvlen[i] = strlen(argv[i]);
    r->pending++;
    if (core_redis_commandargv(r->w->redis, on_list, r, 4, argv, argvlen) != 0) {
        r->pending--;
        core_metrics_add(g.m_errors, 1);
        rg_req_fail_h(r, 503, "presence_unavailable", "presence cannot be read now; retry",
                      "Retry-After: 1\r\n");
    }
}

static void placed(rg_req_t *r)
{
    const char *params[] = {LS(r)->ws, r->who.sub};
    rg_req_query(r, r->shard,
                 "SELECT 1 FROM members WHERE workspace_id = $1 AND user_id = $2"
                 " AND status = 'active'",
                 2, params, on_member);
}

static void authenticated(rg_req_t *r)
{
    rg_api_in_workspace(r, LS(r)->ws, placed);
}

static void on_presence(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(list_state_t));
    if (!rg_req_path_id(r, "id", "workspace id", LS(r)->ws, sizeof LS(r)->ws))
        return;
    rg_api_authenticate(r, authenticated);
}

int rg_api_presence_routes(rg_worker_t *w)
{
    metrics_init();
    return core_http_route(w->http, "GET", "/v1/workspaces/{id}/presence", on_presence, w);
}
