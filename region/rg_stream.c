/* rg_stream.c: the real-time stream of a workspace.
 *   GET /v1/workspaces/{id}/stream[?cursor=SEQ]  -> 101, WebSocket
 *
 * Authentication works from a browser, which cannot set headers: the token
 * is taken from Authorization: Bearer, else from the offered subprotocols
 * ("bearer.<token>", next to "meridian.v1", which is the one selected: the
 * token is never echoed), else from ?access_token=. The caller must be an
 * active member of the workspace (else 404 before any upgrade).
 *
 * Every frame is one JSON text message:
 *   {"type":"hello","workspace_id":...,"seq":HEAD}       first, always
 *   {"type":"event","event":{id, region, workspace_id, seq, type, channel_id, payload}}
 *   {"type":"resync_required","seq":HEAD}                 the cursor is further behind
 *                                                         than the server replays
 *   {"type":"reconnect","after_ms":N}                     the node is draining: come
 *                                                         back after N ms (jittered)
 *   {"type":"presence",...}, {"type":"typing",...}       signals (rg_presence.h): no seq,
 *                                                         never replayed
 *   {"type":"error","code":...,"message":...}             a client message was refused
 * Clients send {"type":"typing","channel_id":ID}. They are rate limited (a
 * token bucket per connection; 1008 when exhausted) and may send only small
 * JSON text messages (1003 for binary, 1009 over max_client_message_bytes).
 * seq is the workspace's gap-free event sequence: the client's cursor.
 *
 * Delivery: Postgres is the truth and NATS the fast path. A connection
 * replays from Postgres (outbox rows after its cursor) until it has caught
 * up, then takes live events from the worker's subscription to the
 * workspace's subject. A live event that is not the next one expected (a gap,
 * a reordering) sends it back to replaying; one already delivered is
 * dropped. So a client that reconnects with its last cursor gets every event
 * once, in order, whatever happened to NATS meanwhile.
 *
 * Privacy: events of a private channel reach only its members. Each
 * connection knows the workspace's private channels and which of them its
 * user belongs to; a channel or member event refreshes that knowledge (and
 * replays from the database with it) before delivery goes on, and a user who
 * left the workspace is disconnected.
 *
 * Encryption: message bodies travel encrypted (the outbox, JetStream); the
 * workspace's key is loaded into the worker's cache before a session opens
 * (503 key_unavailable when it cannot be), and each event is decrypted once
 * per worker, into reused buffers, before it is framed for every recipient.
 * An event that cannot be decrypted is never sent: its connections are told
 * to resume later. */
#include "region/rg_api.h"
#include "core/backoff.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics.h"
#include "core/ws.h"
#include "region/rg_keys.h"
#include "region/rg_presence.h"
#include "region/rg_relay.h"
#include "residency/res_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <sodium.h>

#define REPLAY_PAGE 500
#define RECONNECT_WINDOW_MS 5000 /* drain: clients come back within this, spread */
#define ID_CAP 72

typedef struct conn_s conn_t;

/* The workspaces this worker streams, each with one NATS subscription. */
typedef struct topic_s topic_t;
struct topic_s {
    char id[ID_CAP];
    int shard;
    core_nats_sub_t *sub;
    core_nats_sub_t *eph; /* presence and typing signals (rg_presence.h) */
    bool live_in;         /* sub is in place */
    bool eph_in;          /* eph is in place, or there is none */
    uint64_t ready_tick;  /* g_stream->tick when both were in place */
    int64_t live_max;     /* the highest seq that came live since */
    conn_t *conns;
    /* Presence changes gathered since the last flush (see flush_presence). */
    core_buf_t presence; /* {"user_id":..,"status":..},... */
    int npresence;
    bool presence_overflow;
    topic_t *presence_next; /* on the worker's list of topics to flush; */
    bool presence_listed;   /* NULL-terminated */
};

/* Both subscriptions are in place: live events and signals will come. */
static bool topic_ready(const topic_t *t)
{
    return t->live_in && t->eph_in;
}

typedef enum { C_REPLAY, C_LIVE } conn_state_t;

struct conn_s {
    conn_t *prev, *next; /* in the topic */
    topic_t *topic;
    rg_worker_t *w;
    core_ws_t *ws;
    char user[CORE_AUTH_ID_MAX + 1];
    int64_t delivered; /* highest seq sent or skipped as invisible */
    int64_t seen_live; /* highest seq that arrived live while this one replayed */
    int empty_rereads; /* empty pages read since, for seen_live (on_replay) */
    conn_state_t state;
    bool querying;         /* a statement for this connection is in flight */
    bool stale;            /* channel membership must be read again */
    bool closed;           /* the socket is gone: free once no statement is in flight */
    bool paced;            /* a replay waits for the send queue to drain */
    bool joined;           /* counted in presence: leaves when closed */
    uint32_t id;           /* the connection's number in this worker (presence) */
    uint32_t bucket_at_ms; /* client messages: token bucket, refilled from here */
    uint32_t tokens;
    uint32_t typing_at_ms; /* last typing signal taken from this connection */
    uint32_t typing_ch;    /* and a hash of its channel */
    core_map_t *priv;      /* private channel id -> (void *)1 member, (void *)2 not; NULL
                              while the workspace has none (most connections) */
};

typedef struct {
    core_map_t *topics; /* workspace id -> topic_t */
    core_buf_t frame;   /* the event frame being sent: reused, never shrunk */
    core_buf_t plain;   /* a decrypted body: reused */
    core_buf_t clear;   /* an envelope with its body decrypted: reused */
    core_ws_limits_t limits;
    rg_worker_t *w;
    uv_timer_t presence_timer; /* refreshes this worker's connections in presence */
    bool timer_open;
    uint32_t next_id;
    char instance[64];         /* node.pid: with a connection's id, unique in the region */
    uv_timer_t presence_flush; /* sends gathered presence changes, once a period */
    topic_t *presence_dirty;
    uint64_t tick; /* orders topics' readiness before sessions' head reads */
    core_metric_t m_conns, m_events, m_replayed, m_replay_reads, m_resyncs, m_signals,
        m_client_msgs;
} stream_t;

/* One stream registry per worker process: a worker is one loop. */
static stream_t *g_stream;

typedef struct {
    char ws[ID_CAP];
    char token[CORE_AUTH_TOKEN_MAX + 1];
    int64_t cursor; /* -1: none given */
    int64_t head;
    uint64_t asked;   /* g_stream->tick when the head was asked for */
    core_map_t *priv; /* private channels -> member (1) or not (2), read with head */
} up_state_t;

#define UP(r) ((up_state_t *)(r)->state)

static void conn_pump(conn_t *c);

/* ---- sending ---- */

static void send_json(conn_t *c, const core_buf_t *b)
{
    if (!c->closed && c->ws)
        core_ws_send(c->ws, CORE_WS_TEXT, b->base, b->len);
}

static void send_hello(conn_t *c, const char *type, int64_t seq)
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "type");
    core_jw_str(&jw, type);
    core_jw_key(&jw, "workspace_id");
    core_jw_str(&jw, c->topic->id);
    core_jw_key(&jw, "seq");
    core_jw_int(&jw, seq);
    core_jw_obj_close(&jw);
    send_json(c, &b);
    core_buf_free(&b);
}

/* Whether c's user may see an event of channel ch (NULL: workspace-wide). */
static bool visible(const conn_t *c, const char *ch)
{
    if (!ch || !*ch)
        return true;
    void *v = c->priv ? core_map_get(c->priv, ch) : NULL;
    return v == NULL || v == (void *)1; /* public, or a private one we are in */
}

/* Events that change who sees what: read membership again before going on. */
static bool changes_visibility(const char *type)
{
    return strncmp(type, "channel.", 8) == 0 || strncmp(type, "member.", 7) == 0;
}

/* The first occurrence of n bytes of pat in len bytes of s, or NULL. */
static const char *find(const char *s, size_t len, const char *pat, size_t n)
{
    for (const char *p = s; (size_t)(s + len - p) >= n; p++) {
        p = memchr(p, pat[0], (size_t)(s + len - p) - n + 1);
        if (!p)
            return NULL;
        if (memcmp(p, pat, n) == 0)
            return p;
    }
    return NULL;
}

/* The envelope of a message event with its body in plaintext, from the
 * envelope as stored and published (rg_relay_envelope). The payload is
 * jsonb's canonical text, so a message event's payload begins
 * {"id": "<message id>" (jsonb orders keys by length) and its body is the
 * value of "text": "e1...." (base64url: nothing to unescape). A quote inside
 * a string value is always escaped, so neither pattern can be forged by a
 * message's content. Returns 0 with *out and *outlen set to the envelope to
 * send (env itself when no body is encrypted, else g_stream->clear), or
 * RG_KEYS_ENOKEY when the workspace's key is not cached, or a res_keys error
 * when the body does not decrypt. */
static int clear_envelope(const char *ws, const char *env, size_t len, const char **out,
                          size_t *outlen)
{
    static const char TEXT[] = "\"text\": \"e1.";
    static const char ESCAPED[] = "\"text\": \"e0.";
    static const char MID[] = "\"payload\":{\"id\": \"";
    *out = env;
    *outlen = len;
    const char *t = find(env, len, TEXT, sizeof TEXT - 1);
    if (!t) {
        /* A plaintext body that starts like a stored form: drop the escape. */
        const char *e = find(env, len, ESCAPED, sizeof ESCAPED - 1);
        if (e) {
            const char *at = e + sizeof ESCAPED - 1 - 3;
            core_buf_t *c = &g_stream->clear;
            core_buf_reset(c);
            core_buf_append(c, env, (size_t)(at - env));
            core_buf_append(c, at + 3, (size_t)(env + len - at - 3));
            *out = c->base;
            *outlen = c->len;
        }
        return 0;
    }
    const char *ct = t + sizeof TEXT - 1 - 3; /* at "e1." */
    const char *ct_end = memchr(ct, '"', (size_t)(env + len - ct));
    const char *m = find(env, len, MID, sizeof MID - 1);
    if (!ct_end || !m)
        return RES_KEYS_EFORMAT;
    m += sizeof MID - 1;
    const char *m_end = memchr(m, '"', (size_t)(env + len - m));
    if (!m_end || m_end - m >= ID_CAP)
        return RES_KEYS_EFORMAT;
    char mid[ID_CAP];
    memcpy(mid, m, (size_t)(m_end - m));
    mid[m_end - m] = 0;
    const rg_key_t *k = rg_keys_peek(ws);
    if (!k)
        return RG_KEYS_ENOKEY;
    int rc = res_keys_decrypt(k->has_dk ? k->dk : NULL, mid, ct, (size_t)(ct_end - ct),
                              &g_stream->plain);
    if (rc)
        return rc;
    core_buf_t *c = &g_stream->clear;
    core_buf_reset(c);
    core_buf_append(c, env, (size_t)(ct - 1 - env)); /* up to the opening quote */
    core_json_escape(c, g_stream->plain.base, g_stream->plain.len);
    core_buf_append(c, ct_end + 1, (size_t)(env + len - ct_end - 1));
    *out = c->base;
    *outlen = c->len;
    return 0;
}

/* Sends one event as {"type":"event","event":<envelope>}; the envelope is
 * already JSON, so it is framed, not re-encoded. */
static const char EVENT_OPEN[] = "{\"type\":\"event\",\"event\":";

/* Encodes the whole WebSocket frame of an event message into b (replacing
 * its content): done once per event, then sent to every recipient as is. */
static void encode_event(core_buf_t *b, const char *envelope, size_t len)
{
    size_t payload = sizeof EVENT_OPEN - 1 + len + 1;
    uint8_t head[10];
    size_t hlen = core_ws_frame_header(head, CORE_WS_TEXT, payload);
    core_buf_reset(b);
    core_buf_reserve(b, hlen + payload);
    core_buf_append(b, head, hlen);
    core_buf_append(b, EVENT_OPEN, sizeof EVENT_OPEN - 1);
    core_buf_append(b, envelope, len);
    core_buf_putc(b, '}');
}

static void send_frame(conn_t *c, const core_buf_t *frame)
{
    if (!c->closed && c->ws)
        core_ws_send_frame(c->ws, frame->base, frame->len);
}

/* ---- connection lifetime ---- */

static void conn_presence_id(const conn_t *c, char *out, size_t cap)
{
    snprintf(out, cap, "%s.%u", g_stream->instance, c->id);
}

static void conn_free(conn_t *c)
{
    core_map_free(c->priv, NULL);
    free(c);
}

static void topic_drop(topic_t *t)
{
    if (t->presence_listed) {
        topic_t **pp = &g_stream->presence_dirty;
        while (*pp != t)
            pp = &(*pp)->presence_next;
        *pp = t->presence_next;
    }
    core_buf_free(&t->presence);
    core_map_remove(g_stream->topics, t->id);
    core_nats_unsubscribe(t->sub);
    core_nats_unsubscribe(t->eph);
    free(t);
}

static void conn_unlink(conn_t *c)
{
    topic_t *t = c->topic;
    if (!t)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        t->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->topic = NULL;
    if (!t->conns)
        topic_drop(t);
}

static void on_ws_close(core_ws_t *ws, int code, void *ud)
{
    conn_t *c = ud;
    c->ws = NULL;
    c->closed = true;
    core_metrics_add(g_stream->m_conns, -1);
    if (c->joined && c->topic) {
        char pid[96];
        conn_presence_id(c, pid, sizeof pid);
        rg_presence_leave(c->w, c->topic->id, c->user, pid);
    }
    conn_unlink(c);
    if (!c->querying)
        conn_free(c);
}

static void send_error(conn_t *c, const char *code, const char *message)
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "type");
    core_jw_str(&jw, "error");
    core_jw_key(&jw, "code");
    core_jw_str(&jw, code);
    core_jw_key(&jw, "message");
    core_jw_str(&jw, message);
    core_jw_obj_close(&jw);
    send_json(c, &b);
    core_buf_free(&b);
}

/* A token bucket per connection: refilled at client_messages_per_s up to
 * client_message_burst. Returns false when empty. */
static bool take_msg_token(conn_t *c)
{
    const rg_config_t *cfg = c->w->cfg;
    uint32_t now = (uint32_t)uv_now(&c->w->loop);
    uint32_t rate = cfg->ws.client_messages_per_s, burst = cfg->ws.client_message_burst;
    uint64_t add = (uint64_t)(uint32_t)(now - c->bucket_at_ms) * rate / 1000;
    if (add) {
        c->tokens = c->tokens + add >= burst ? burst : (uint32_t)(c->tokens + add);
        /* Keep the remainder of the interval, so a steady client at the
         * rate never runs dry. */
        c->bucket_at_ms =
            c->tokens == burst ? now : c->bucket_at_ms + (uint32_t)(add * 1000 / rate);
    }
    if (c->tokens == 0)
        return false;
    c->tokens--;
    return true;
}

static void client_typing(conn_t *c, const core_json_t *root)
{
    const char *ch = NULL;
    if (core_json_get_str(root, "channel_id", &ch) != 0 || !rg_id_valid(ch)) {
        send_error(c, "invalid_message", "typing needs channel_id, a channel id");
        return;
    }
    if (!visible(c, ch)) {
        send_error(c, "channel_not_found", "no such channel");
        return;
    }
    /* Redis throttles per user and channel for every node; this spares it
     * the round trip for a client that signals on every keystroke. */
    uint32_t now = (uint32_t)uv_now(&c->w->loop);
    uint32_t gap = c->w->cfg->ws.typing_ttl_ms / 3;
    uint32_t h = 2166136261u; /* FNV-1a: only to tell the last channel apart */
    for (const char *p = ch; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    if (c->typing_at_ms && h == c->typing_ch && (uint32_t)(now - c->typing_at_ms) < gap)
        return;
    c->typing_at_ms = now ? now : 1;
    c->typing_ch = h;
    if (rg_typing(c->w, c->topic->id, ch, c->user) != 0)
        send_error(c, "typing_unavailable", "typing cannot be signalled now; retry later");
}

/* Client messages are small JSON objects; the one type today:
 *   {"type":"typing","channel_id":ID}
 * A bad message gets an error message back and the connection stays; a
 * client over its message rate is closed with 1008. */
static void on_ws_message(core_ws_t *ws, int opcode, const uint8_t *data, size_t len, void *ud)
{
    conn_t *c = ud;
    if (c->closed || !c->topic)
        return;
    core_metrics_add(g_stream->m_client_msgs, 1);
    if (!take_msg_token(c)) {
        core_ws_close(ws, CORE_WS_CLOSE_POLICY, "too many messages; slow down and reconnect");
        return;
    }
    if (opcode != CORE_WS_TEXT) {
        core_ws_close(ws, CORE_WS_CLOSE_UNSUPPORTED, "only JSON text messages are accepted");
        return;
    }
    static const core_json_limits_t lim = {.max_depth = 4, .max_string = 256};
    core_json_doc_t *doc;
    char err[64];
    if (core_json_parse((const char *)data, len, &lim, &doc, err, sizeof err) != 0) {
        send_error(c, "invalid_json", "a message must be a JSON object");
        return;
    }
    const core_json_t *root = core_json_root(doc);
    const char *type = NULL;
    if (root->type != CORE_JSON_OBJECT || core_json_get_str(root, "type", &type) != 0)
        send_error(c, "invalid_message", "a message needs a string \"type\"");
    else if (strcmp(type, "typing") == 0)
        client_typing(c, root);
    else
        send_error(c, "unknown_type", "unknown message type");
    core_json_free(doc);
}

/* ---- reading from the database ---- */

/* Returns true when the callback must stop (the connection is gone). */
static bool query_done(conn_t *c)
{
    c->querying = false;
    if (c->closed) {
        conn_free(c);
        return true;
    }
    return false;
}

static void on_replay(const PGresult *res, int err, const char *errmsg, void *ud)
{
    conn_t *c = ud;
    if (query_done(c))
        return;
    if (err) {
        core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN, "database unavailable; resume later");
        return;
    }
    int n = PQntuples(res);
    core_buf_t env;
    core_buf_init(&env);
    size_t pace = g_stream->limits.max_queued_bytes / 2;
    bool full = false;
    for (int i = 0; i < n; i++) {
        int64_t seq = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        if (seq != c->delivered + 1)
            break; /* cannot happen with a gap-free sequence; re-read from here */
        if (pace && core_ws_queued(c->ws) > pace) {
            /* A replay goes no faster than the client reads: the rest of
             * the page is read again once the queue has drained. */
            full = true;
            break;
        }
        c->delivered = seq;
        const char *type = PQgetvalue(res, i, 3);
        const char *ch = PQgetisnull(res, i, 4) ? NULL : PQgetvalue(res, i, 4);
        if (visible(c, ch)) {
            rg_relay_envelope(&env, c->w->cfg->region, res, i);
            const char *clear;
            size_t clen;
            if (clear_envelope(c->topic->id, env.base, env.len, &clear, &clen) != 0) {
                /* The key went from the cache, or the body is bad: the
                 * client resumes from what it has (nothing of this event). */
                core_buf_free(&env);
                core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN,
                              "message keys unavailable; resume later");
                return;
            }
            encode_event(&g_stream->frame, clear, clen);
            send_frame(c, &g_stream->frame);
            core_metrics_add(g_stream->m_replayed, 1);
        }
        if (changes_visibility(type)) {
            c->stale = true;
            break;
        }
    }
    core_buf_free(&env);
    if (full) {
        c->paced = true; /* on_ws_writable picks up from delivered */
        return;
    }
    /* Caught up with what was committed. Live only once the subscription is
     * in place: until then an event could fall between the two. */
    /* An event that came live while an empty page was read committed after
     * the page's snapshot: read again, a few times. (Only an event that the
     * database never shows could keep this going: after a few empty reads
     * it is let go, and the next live event's gap check catches up.) */
    if (n == 0 && c->seen_live > c->delivered && ++c->empty_rereads > 3)
        c->seen_live = c->delivered;
    if (n > 0)
        c->empty_rereads = 0;
    if (n < REPLAY_PAGE && !c->stale && topic_ready(c->topic) && c->seen_live <= c->delivered)
        c->state = C_LIVE;
    else if (n < REPLAY_PAGE && !c->stale && !topic_ready(c->topic))
        return; /* on_topic_ready replays once more and goes live */
    /* Otherwise read on: a full page, a visibility change, or an event that
     * came live while this page was read (committed after the page's
     * snapshot, so not in it, and passed over live because we replayed). */
    conn_pump(c);
}

/* The private channels of a membership result (columns 1 and 2: the
 * channel, whether the user is in it; a row of NULLs when there is none):
 * channel id -> (void *)1 member, (void *)2 not. NULL when there is none. */
static core_map_t *read_private(const PGresult *res)
{
    core_map_t *m = NULL;
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 1))
            continue;
        if (!m)
            m = core_map_new();
        core_map_put(m, PQgetvalue(res, i, 1),
                     PQgetvalue(res, i, 2)[0] == 't' ? (void *)1 : (void *)2);
    }
    return m;
}

static void on_membership(const PGresult *res, int err, const char *errmsg, void *ud)
{
    conn_t *c = ud;
    if (query_done(c))
        return;
    if (err) {
        core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN, "database unavailable; resume later");
        return;
    }
    /* Row 0 says whether the user is still an active member; then one row
     * per private channel with the user's membership. */
    if (PQntuples(res) == 0 || PQgetvalue(res, 0, 0)[0] != 't') {
        core_ws_close(c->ws, CORE_WS_CLOSE_POLICY, "not a member of this workspace");
        return;
    }
    core_map_free(c->priv, NULL);
    c->priv = read_private(res);
    c->stale = false;
    conn_pump(c);
}

static void on_conn_key(int err, const rg_key_t *k, void *ud)
{
    conn_t *c = ud;
    if (query_done(c))
        return;
    if (err) {
        core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN, "message keys unavailable; resume later");
        return;
    }
    conn_pump(c);
}

/* A session's queries, prepared once per connection of the pool: a reconnect
 * storm runs them for every client that comes back, and parsing and planning
 * them each time cost more than running them. */
static const char sql_membership[] =
    "SELECT EXISTS (SELECT 1 FROM members WHERE workspace_id = $1 AND user_id = $2"
    "  AND status = 'active'), p.id, p.member"
    " FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT c.id, EXISTS (SELECT 1 FROM"
    "  channel_members cm WHERE cm.workspace_id = $1 AND cm.channel_id = c.id"
    "  AND cm.user_id = $2) AS member FROM channels c WHERE c.workspace_id = $1"
    "  AND c.private) p ON true";
static const char sql_replay[] =
    "SELECT workspace_id, seq, event_id, type, channel_id, payload::text,"
    " (extract(epoch FROM created_at) * 1000)::bigint FROM outbox WHERE "
    "workspace_id = $1 AND seq > $2::bigint ORDER BY seq LIMIT $3::int";

/* Moves the connection on: refresh membership, replay, or nothing (live). */
static void conn_pump(conn_t *c)
{
    if (c->closed || c->querying)
        return;
    core_pg_pool_t *pool = c->w->shards[c->topic->shard];
    int rc;
    if (c->state == C_REPLAY && !c->stale && !rg_keys_peek(c->topic->id)) {
        /* Evicted from the cache since the session opened: load it again
         * before replaying (a hit cannot happen here: peek just missed). */
        c->querying = true;
        rc = rg_keys_get(c->w, c->topic->id, c->topic->shard, on_conn_key, c);
        if (rc) {
            c->querying = false;
            core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN, "message keys unavailable; resume later");
        }
        return;
    }
    if (c->stale) {
        const char *params[] = {c->topic->id, c->user};
        c->state = C_REPLAY;
        rc = core_pg_query_static(pool, sql_membership, 2, params, NULL, on_membership, c, NULL);
    } else if (c->state == C_REPLAY) {
        char after[24], limit[16];
        snprintf(after, sizeof after, "%lld", (long long)c->delivered);
        snprintf(limit, sizeof limit, "%d", REPLAY_PAGE);
        const char *params[] = {c->topic->id, after, limit};
        rc = core_pg_query_static(pool, sql_replay, 3, params, NULL, on_replay, c, NULL);
        if (rc == 0)
            core_metrics_add(g_stream->m_replay_reads, 1);
    } else {
        return;
    }
    if (rc) {
        core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN, "database unavailable; resume later");
        return;
    }
    c->querying = true;
}

/* ---- live events ---- */

static void on_live(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    topic_t *t = ud;
    /* Parsed once per worker, not per connection. */
    core_json_doc_t *doc;
    char err[64];
    if (core_json_parse(msg->data, msg->len, NULL, &doc, err, sizeof err) != 0)
        return;
    const core_json_t *root = core_json_root(doc);
    int64_t seq;
    const char *type = "", *ch = NULL;
    if (core_json_get_int(root, "seq", &seq) != 0) {
        core_json_free(doc);
        return;
    }
    core_json_get_str(root, "type", &type);
    core_json_get_str(root, "channel_id", &ch);
    core_metrics_add(g_stream->m_events, 1);
    if (seq > t->live_max)
        t->live_max = seq;
    bool visibility = changes_visibility(type);
    bool encoded = false; /* the frame is built once, for the first recipient */
    int clear_err = 0;    /* the body could not be decrypted: nobody gets it live */
    for (conn_t *c = t->conns, *next; c; c = next) {
        next = c->next;
        if (c->closed || seq <= c->delivered)
            continue;
        if (c->state != C_LIVE) {
            /* Replaying connections read it from the database; one whose
             * page was read before it committed reads once more. */
            if (seq > c->seen_live)
                c->seen_live = seq;
            continue;
        }
        if (seq != c->delivered + 1 || visibility) {
            /* A gap, or a change of who sees what: the database has it all,
             * and a visibility change is delivered after the refresh. */
            c->state = C_REPLAY;
            c->stale = c->stale || visibility;
            conn_pump(c);
            continue;
        }
        if (!visible(c, ch)) {
            c->delivered = seq;
            continue;
        }
        if (!encoded && !clear_err) {
            const char *clear;
            size_t clen;
            clear_err = clear_envelope(t->id, msg->data, msg->len, &clear, &clen);
            if (!clear_err) {
                encode_event(&g_stream->frame, clear, clen);
                encoded = true;
            }
        }
        if (clear_err) {
            /* No key in the cache (evicted): replay loads it and reads the
             * event from the database. A body that does not decrypt is
             * never sent: the client resumes later. */
            c->state = C_REPLAY;
            if (clear_err == RG_KEYS_ENOKEY)
                conn_pump(c);
            else
                core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN,
                              "message keys unavailable; resume later");
            continue;
        }
        c->delivered = seq;
        send_frame(c, &g_stream->frame);
    }
    core_json_free(doc);
}

/* Presence changes go out gathered: at most one frame per period per
 * connection, with at most PRESENCE_MAX changes. Sent one by one, a
 * workspace of N members connecting at once costs N x N frames (measured:
 * 10 workspaces of 10,000 members grew workers to ~750 MB). Past the cap the
 * frame only says "refetch" (GET /v1/workspaces/{id}/presence). */
#define PRESENCE_FLUSH_MS 1000
#define PRESENCE_MAX 100

static void encode_text(core_buf_t *frame, const char *json, size_t len)
{
    uint8_t head[10];
    size_t hlen = core_ws_frame_header(head, CORE_WS_TEXT, len);
    core_buf_reset(frame);
    core_buf_append(frame, head, hlen);
    core_buf_append(frame, json, len);
}

static void flush_topic_presence(topic_t *t)
{
    core_buf_t b;
    core_buf_init(&b);
    core_buf_puts(&b, t->presence_overflow ? "{\"type\":\"presence_reset\",\"workspace_id\":\""
                                           : "{\"type\":\"presence\",\"workspace_id\":\"");
    core_buf_puts(&b, t->id); /* an id: nothing to escape */
    if (t->presence_overflow) {
        core_buf_puts(&b, "\"}");
    } else {
        core_buf_puts(&b, "\",\"changes\":[");
        core_buf_append(&b, t->presence.base, t->presence.len);
        core_buf_puts(&b, "]}");
    }
    encode_text(&g_stream->frame, b.base, b.len);
    core_buf_free(&b);
    for (conn_t *c = t->conns; c; c = c->next)
        if (!c->closed && !c->stale)
            send_frame(c, &g_stream->frame);
    core_buf_free(&t->presence);
    t->npresence = 0;
    t->presence_overflow = false;
}

static void on_presence_flush(uv_timer_t *tm)
{
    topic_t *t = g_stream->presence_dirty;
    g_stream->presence_dirty = NULL;
    while (t) {
        topic_t *next = t->presence_next;
        t->presence_next = NULL;
        t->presence_listed = false;
        flush_topic_presence(t);
        t = next;
    }
}

static void gather_presence(topic_t *t, const char *user, const char *status)
{
    if (t->npresence >= PRESENCE_MAX) {
        t->presence_overflow = true;
    } else {
        core_jw_t jw;
        if (t->npresence++)
            core_buf_putc(&t->presence, ',');
        core_jw_init(&jw, &t->presence);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "user_id");
        core_jw_str(&jw, user);
        core_jw_key(&jw, "status");
        core_jw_str(&jw, status);
        core_jw_obj_close(&jw);
    }
    if (!t->presence_listed) {
        t->presence_listed = true;
        t->presence_next = g_stream->presence_dirty;
        g_stream->presence_dirty = t;
    }
    if (!uv_is_active((uv_handle_t *)&g_stream->presence_flush))
        uv_timer_start(&g_stream->presence_flush, on_presence_flush, PRESENCE_FLUSH_MS, 0);
}

/* A presence or typing signal: not an event of the sequence (no cursor, no
 * replay). Typing goes at once, as is, to the live connections that may see
 * its channel; presence is gathered (gather_presence). */
static void on_signal(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    topic_t *t = ud;
    core_json_doc_t *doc;
    char err[64];
    if (core_json_parse(msg->data, msg->len, NULL, &doc, err, sizeof err) != 0)
        return;
    const core_json_t *root = core_json_root(doc);
    const char *type = "", *ch = NULL, *user = "";
    core_json_get_str(root, "type", &type);
    core_json_get_str(root, "channel_id", &ch);
    core_json_get_str(root, "user_id", &user);
    bool typing = strcmp(type, "typing") == 0;
    core_metrics_add(g_stream->m_signals, 1);
    if (!typing) {
        const char *status = "";
        core_json_get_str(root, "status", &status);
        if (strcmp(type, "presence") == 0 && rg_id_valid(user) &&
            (strcmp(status, "online") == 0 || strcmp(status, "offline") == 0))
            gather_presence(t, user, status);
        core_json_free(doc);
        return;
    }
    bool encoded = false;
    for (conn_t *c = t->conns; c; c = c->next) {
        /* Visibility is known only once membership has been read. */
        if (c->closed || c->stale || (typing && strcmp(c->user, user) == 0) || !visible(c, ch))
            continue;
        if (!encoded) {
            encode_text(&g_stream->frame, msg->data, msg->len);
            encoded = true;
        }
        send_frame(c, &g_stream->frame);
    }
    core_json_free(doc);
}

/* Connections go live once both subscriptions are in place: a signal sent
 * to a member who is already live is not lost to a subscription still on its
 * way (signals are not replayed). */
static void topic_maybe_ready(topic_t *t)
{
    if (!topic_ready(t))
        return; /* the other subscription's callback comes later, once */
    t->ready_tick = ++g_stream->tick;
    for (conn_t *c = t->conns; c; c = c->next)
        if (c->state == C_REPLAY)
            conn_pump(c);
}

static void on_topic_ready(core_nats_sub_t *sub, int err, void *ud)
{
    topic_t *t = ud;
    if (err) {
        /* No live path: every connection of the topic resumes elsewhere. */
        for (conn_t *c = t->conns; c; c = c->next)
            if (!c->closed)
                core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN, "events unavailable; resume later");
        return;
    }
    t->live_in = true;
    topic_maybe_ready(t);
}

static void on_eph_ready(core_nats_sub_t *sub, int err, void *ud)
{
    topic_t *t = ud;
    if (err)
        t->eph = NULL; /* freed by core_nats; signals are best effort */
    t->eph_in = true;
    topic_maybe_ready(t);
}

/* ---- the upgrade ---- */

static int on_protocol(core_http_req_t *req, const core_ws_token_t *offered, size_t n, void *ud)
{
    static const char want[] = "meridian.v1";
    for (size_t i = 0; i < n; i++)
        if (offered[i].len == sizeof want - 1 && memcmp(offered[i].ptr, want, offered[i].len) == 0)
            return (int)i;
    return -1; /* a client that offers none still streams */
}

/* The server is going away: tell the client when to come back, at a random
 * point in a window (full jitter), so that the clients of a restarting node
 * do not all return in the same instant. They resume from their cursor. */
static void on_ws_drain(core_ws_t *ws, void *ud)
{
    conn_t *c = ud;
    char msg[64];
    int n = snprintf(msg, sizeof msg, "{\"type\":\"reconnect\",\"after_ms\":%u}",
                     core_rand_uniform(RECONNECT_WINDOW_MS + 1));
    if (!c->closed)
        core_ws_send(ws, CORE_WS_TEXT, msg, (size_t)n);
}

static void on_ws_writable(core_ws_t *ws, void *ud)
{
    conn_t *c = ud;
    if (c->paced && !c->closed) {
        c->paced = false;
        conn_pump(c);
    }
}

static const core_ws_handlers_t handlers = {
    .select_protocol = on_protocol,
    .on_message = on_ws_message,
    .on_close = on_ws_close,
    .on_drain = on_ws_drain,
    .on_writable = on_ws_writable,
};

static void upgrade(rg_req_t *r)
{
    up_state_t *st = UP(r);
    rg_worker_t *w = r->w;
    topic_t *t = core_map_get(g_stream->topics, st->ws);
    if (!t) {
        t = core_xcalloc(1, sizeof *t);
        snprintf(t->id, sizeof t->id, "%s", st->ws);
        t->shard = r->shard;
        char subject[160];
        snprintf(subject, sizeof subject, "ev.%s.%s.%s.>", w->cfg->region, w->cfg->region, st->ws);
        if (core_nats_subscribe(w->nats, subject, NULL, on_live, t, &t->sub) != 0) {
            free(t);
            rg_req_fail(r, 503, "stream_unavailable", "events cannot be followed now; retry");
            return;
        }
        core_nats_sub_on_ready(t->sub, on_topic_ready);
        /* Signals are best effort: a topic without them still streams. */
        rg_presence_subject(subject, sizeof subject, w->cfg->region, st->ws);
        if (core_nats_subscribe(w->nats, subject, NULL, on_signal, t, &t->eph) != 0)
            t->eph = NULL;
        if (t->eph)
            core_nats_sub_on_ready(t->eph, on_eph_ready);
        else
            t->eph_in = true;
        core_map_put(g_stream->topics, t->id, t);
    }
    /* Where the connection starts: from the cursor, or from now. Further
     * behind than we replay, the client is told to reload, then follows. */
    int64_t from = st->cursor < 0 ? st->head : st->cursor;
    bool resync = st->head - from > (int64_t)w->cfg->ws.max_replay_events;
    if (resync)
        from = st->head;
    int64_t head = st->head;
    uint64_t asked = st->asked;

    conn_t *c = core_xcalloc(1, sizeof *c);
    c->w = w;
    c->id = ++g_stream->next_id;
    c->tokens = w->cfg->ws.client_message_burst;
    c->bucket_at_ms = (uint32_t)uv_now(&w->loop);
    snprintf(c->user, sizeof c->user, "%s", r->who.sub);
    c->priv = st->priv; /* the connection's now */
    st->priv = NULL;
    /* Subscribed before reading: nothing committed from here on can be missed. */
    c->ws = core_ws_accept(r->http, &g_stream->limits, &handlers, c);
    /* The request is answered (101, or a refused handshake): nothing of it
     * (st, r) may be touched after this. */
    rg_req_release(r);
    if (!c->ws) {
        conn_free(c);
        if (!t->conns)
            topic_drop(t);
        return;
    }
    c->topic = t;
    c->next = t->conns;
    if (t->conns)
        t->conns->prev = c;
    t->conns = c;
    core_metrics_add(g_stream->m_conns, 1);
    char pid[96];
    conn_presence_id(c, pid, sizeof pid);
    rg_presence_join(w, t->id, c->user, pid);
    c->joined = true;
    send_hello(c, "hello", head);
    if (resync) {
        core_metrics_add(g_stream->m_resyncs, 1);
        send_hello(c, "resync_required", head);
    }
    c->delivered = from;
    c->state = C_REPLAY;
    c->stale = false; /* c->priv was read with the head */
    /* Nothing to read: the client has everything up to the head, the topic
     * was live before the head was read (every event committed after it
     * comes live), and none past the head has come yet. A new session, or
     * one that missed nothing, then costs one statement instead of two. */
    if (from == head && topic_ready(t) && t->ready_tick < asked && t->live_max <= head)
        c->state = C_LIVE;
    conn_pump(c);
}

/* The workspace's key is in the worker's cache before the session opens, so
 * live events never wait for a query (and a region that cannot read the
 * workspace says so before the upgrade). */
static void on_session_key(int err, const rg_key_t *k, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    if (err) {
        rg_keys_fail(r, err);
        return;
    }
    upgrade(r);
}

static void on_member(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    if (PQntuples(res) < 1) {
        rg_req_fail(r, 404, "not_found", "no such workspace");
        return;
    }
    up_state_t *st = UP(r);
    st->head = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    /* One row per private channel (or one of NULLs): the session starts
     * with the membership of the same snapshot as its head, and a change
     * after it comes as an event (seq > head), which refreshes it. */
    core_map_free(st->priv, NULL);
    st->priv = read_private(res);
    if (st->cursor > st->head) {
        rg_req_fail(r, 400, "invalid_cursor", "cursor is ahead of the workspace's events");
        return;
    }
    /* The key after the head: a client without a cursor starts from the
     * head as read here, so the key load does not widen the time in which a
     * commit could fall before it. */
    r->pending++;
    int rc = rg_keys_get(r->w, st->ws, r->shard, on_session_key, r);
    if (rc) {
        r->pending--;
        rg_keys_fail(r, rc);
    }
}

static void up_free(rg_req_t *r)
{
    core_map_free(UP(r)->priv, NULL);
}

static void placed(rg_req_t *r)
{
    const char *params[] = {UP(r)->ws, r->who.sub};
    UP(r)->asked = ++g_stream->tick;
    /* The head, the membership and the private channels in one statement:
     * a reconnect storm runs it for every client that comes back. */
    rg_req_query(r, r->shard,
                 "SELECT w.seq, p.id, p.member FROM workspaces w JOIN members m"
                 " ON m.workspace_id = w.id AND m.user_id = $2 AND m.status = 'active'"
                 " LEFT JOIN LATERAL (SELECT c.id, EXISTS (SELECT 1 FROM channel_members cm"
                 "  WHERE cm.workspace_id = $1 AND cm.channel_id = c.id AND cm.user_id = $2)"
                 "  AS member FROM channels c WHERE c.workspace_id = $1 AND c.private) p ON true"
                 " WHERE w.id = $1",
                 2, params, on_member);
}

static void authenticated(rg_req_t *r)
{
    rg_api_in_workspace(r, UP(r)->ws, placed);
}

/* The token: Authorization header, else a "bearer.<token>" subprotocol, else
 * ?access_token=. Copied into the request's state. */
static bool take_token(rg_req_t *r)
{
    up_state_t *st = UP(r);
    if (core_auth_request_token(r->http, st->token, sizeof st->token) > 0)
        return true;
    rg_req_fail_h(r, 401, "unauthenticated",
                  "a token is required (Authorization, a bearer.<token> subprotocol, or "
                  "access_token)",
                  "WWW-Authenticate: Bearer\r\n");
    return false;
}

static void on_stream(core_http_req_t *http, void *ud)
{
    /* Admission first: a shed session costs no token check, no database. */
    uint32_t hint_ms = 0;
    rg_admit_t a = rg_worker_admit(ud, &hint_ms);
    if (a != RG_ADMIT_OK) {
        char hdr[CORE_ADMIT_HINT_HEADERS];
        core_admit_hint_headers(hdr, sizeof hdr, hint_ms);
        if (a == RG_ADMIT_STARTING)
            core_http_respond_error_h(http, 503, "starting",
                                      "this node is starting; retry after the hinted delay", hdr);
        else
            core_http_respond_error_h(http, 503, "overloaded",
                                      "too many new sessions; retry after the hinted delay", hdr);
        return;
    }
    rg_req_t *r = rg_req_new(http, ud, sizeof(up_state_t));
    r->on_free = up_free;
    up_state_t *st = UP(r);
    if (!rg_req_path_id(r, "id", "workspace id", st->ws, sizeof st->ws))
        return;
    st->cursor = -1;
    if (core_http_has_query(http, "cursor")) {
        char v[24];
        char *end = NULL;
        int n = core_http_query(http, "cursor", v, sizeof v);
        long long x = n > 0 ? strtoll(v, &end, 10) : -1;
        if (n <= 0 || !end || *end || x < 0) {
            rg_req_fail(r, 400, "invalid_cursor", "cursor must be a non-negative integer");
            return;
        }
        st->cursor = x;
    }
    if (!take_token(r))
        return;
    rg_api_authenticate_token(r, st->token, strlen(st->token), authenticated);
}

/* Refreshes every connection of every topic in presence: one script call
 * per workspace (chunked), which also sweeps the workspace's connections
 * that expired elsewhere (a crashed worker's). */
static void refresh_topic(const char *key, void *val, void *ud)
{
    topic_t *t = val;
    size_t n = 0;
    for (conn_t *c = t->conns; c; c = c->next)
        n += c->joined && !c->closed;
    const char **users = core_xmalloc((n ? n : 1) * sizeof *users);
    const char **ids = core_xmalloc((n ? n : 1) * sizeof *ids);
    char *idbuf = core_xmalloc((n ? n : 1) * 96);
    size_t i = 0;
    for (conn_t *c = t->conns; c && i < n; c = c->next) {
        if (!c->joined || c->closed)
            continue;
        users[i] = c->user;
        ids[i] = idbuf + i * 96;
        conn_presence_id(c, idbuf + i * 96, 96);
        i++;
    }
    rg_presence_refresh(g_stream->w, t->id, users, ids, i);
    free(users);
    free(ids);
    free(idbuf);
}

static void on_presence_timer(uv_timer_t *tm)
{
    if (core_redis_ready(g_stream->w->redis))
        core_map_each(g_stream->topics, refresh_topic, NULL);
}

void rg_stream_close(rg_worker_t *w)
{
    if (g_stream && g_stream->timer_open) {
        g_stream->timer_open = false;
        uv_close((uv_handle_t *)&g_stream->presence_timer, NULL);
        uv_close((uv_handle_t *)&g_stream->presence_flush, NULL);
    }
}

int rg_api_stream_routes(rg_worker_t *w)
{
    if (!g_stream) {
        g_stream = core_xcalloc(1, sizeof *g_stream);
        g_stream->topics = core_map_new();
        core_ws_limits_default(&g_stream->limits);
        if (w->cfg) {
            g_stream->limits.max_frame_bytes = w->cfg->ws.max_frame_bytes;
            g_stream->limits.max_message_bytes = w->cfg->ws.max_message_bytes;
            g_stream->limits.ping_interval_ms = w->cfg->ws.ping_interval_ms;
            g_stream->limits.idle_timeout_ms = w->cfg->ws.idle_timeout_ms;
            g_stream->limits.max_queued_bytes = w->cfg->ws.max_queued_bytes;
            /* Clients send only small signals. */
            g_stream->limits.max_frame_bytes = w->cfg->ws.max_client_message_bytes;
            g_stream->limits.max_message_bytes = w->cfg->ws.max_client_message_bytes;
            g_stream->w = w;
            snprintf(g_stream->instance, sizeof g_stream->instance, "%s.%d", w->cfg->node,
                     (int)getpid());
            uint32_t every = w->cfg->ws.presence_ttl_ms / 3;
            uv_timer_init(&w->loop, &g_stream->presence_timer);
            uv_timer_start(&g_stream->presence_timer, on_presence_timer, every, every);
            uv_unref((uv_handle_t *)&g_stream->presence_timer);
            uv_timer_init(&w->loop, &g_stream->presence_flush);
            uv_unref((uv_handle_t *)&g_stream->presence_flush);
            g_stream->timer_open = true;
        }
        g_stream->m_conns =
            core_metrics_gauge("meridian_stream_connections", "Open workspace streams.", "");
        g_stream->m_events = core_metrics_counter("meridian_stream_live_events_total",
                                                  "Live events received for streams.", "");
        g_stream->m_replayed = core_metrics_counter("meridian_stream_replayed_events_total",
                                                    "Events sent from the database.", "");
        g_stream->m_replay_reads = core_metrics_counter("meridian_stream_replay_reads_total",
                                                        "Replay pages read from the database.", "");
        g_stream->m_resyncs = core_metrics_counter("meridian_stream_resyncs_total",
                                                   "Resumes too far behind: resync_required.", "");
        g_stream->m_signals =
            core_metrics_counter("meridian_stream_signals_total",
                                 "Presence and typing signals received for streams.", "");
        g_stream->m_client_msgs = core_metrics_counter(
            "meridian_stream_client_messages_total", "Messages received from stream clients.", "");
    }
    return core_http_route(w->http, "GET", "/v1/workspaces/{id}/stream", on_stream, w);
}

static void resync_topic(const char *key, void *val, void *ud)
{
    topic_t *t = val;
    for (conn_t *c = t->conns; c; c = c->next) {
        if (c->closed || c->state != C_LIVE)
            continue;
        c->state = C_REPLAY;
        conn_pump(c);
    }
}

void rg_stream_resync_live(rg_worker_t *w)
{
    if (g_stream)
        core_map_each(g_stream->topics, resync_topic, NULL);
}

void rg_stream_close_workspace(rg_worker_t *w, const char *ws)
{
    (void)w;
    if (!g_stream)
        return;
    topic_t *t = core_map_get(g_stream->topics, ws);
    /* Closing the last connection frees the topic: take each next first. */
    for (conn_t *c = t ? t->conns : NULL, *next; c; c = next) {
        next = c->next;
        core_ws_close(c->ws, CORE_WS_CLOSE_TRY_AGAIN,
                      "the workspace moved to another region; reconnect and resume");
    }
}
