/* poster.c: timestamped posts at a fixed rate (open loop), so that receivers
 * can time post->deliver. meridian: REST POSTs of messages over keep-alive
 * connections, one request in flight per connection (a post that finds
 * every connection busy is counted as skipped, not queued: the offered rate
 * stays what was asked). socketio: "post" events on WebSocket connections
 * (lg_conn_t with is_poster), which the peer broadcasts to the room.
 *
 * The text starts with "MRDTS<CLOCK_REALTIME ns>": receivers find it in the
 * event and subtract, on the same machine's clock. */
#include "tools/loadgen/loadgen.h"

#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

typedef struct pconn_s {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    llhttp_t parser;
    struct pconn_s *next_idle;
    core_buf_t req;
    uint64_t sent_ns;
    uint64_t retry_ms;
    uint32_t attempt;
    bool open; /* connected, not closing */
    bool busy; /* a request in flight */
    bool closing;
    bool active; /* handle initialised */
} pconn_t;

static struct {
    pconn_t *conns;
    uint32_t n;
    pconn_t *idle;
    uint64_t start_ms;
    uint64_t issued;
    uint32_t next_target;
    uint64_t *room_seq; /* socketio: per post target */
    uint32_t next_sio;
    llhttp_settings_t settings;
    bool stopped;
    bool enabled;
} P;

size_t lg_post_text(char *out, size_t cap, uint64_t ts_ns)
{
    int n = snprintf(out, cap, "MRDTS%llu ", (unsigned long long)ts_ns);
    size_t len = n > 0 ? (size_t)n : 0;
    while (len < G.text_bytes && len + 1 < cap) {
        out[len] = "abcdefghij klmnopqrst uvwxyz"[len % 28];
        len++;
    }
    out[len] = '\0';
    return len;
}

static void pconn_connect(pconn_t *p);

static void on_pclosed(uv_handle_t *h)
{
    pconn_t *p = CORE_CONTAINER_OF(h, pconn_t, tcp);
    p->active = false;
    p->closing = false;
    if (P.stopped)
        return;
    core_backoff_t b = G.backoff;
    b.attempt = p->attempt;
    p->retry_ms = core_now_ms() + core_backoff_next(&b);
    p->attempt = b.attempt;
}

static void pconn_drop(pconn_t *p)
{
    if (!p->active || p->closing)
        return;
    if (p->busy) {
        G.total.posts_failed++;
        G.window.posts_failed++;
    }
    p->open = false;
    p->busy = false;
    p->closing = true;
    /* Out of the idle list: it is rebuilt from open, idle connections. */
    pconn_t **pp = &P.idle;
    while (*pp && *pp != p)
        pp = &(*pp)->next_idle;
    if (*pp)
        *pp = p->next_idle;
    uv_close((uv_handle_t *)&p->tcp, on_pclosed);
}

static void make_idle(pconn_t *p)
{
    p->busy = false;
    p->next_idle = P.idle;
    P.idle = p;
}

static int on_complete(llhttp_t *parser)
{
    pconn_t *p = parser->data;
    uint64_t us = (core_now_ns() - p->sent_ns) / 1000;
    if (parser->status_code == 201) {
        G.total.posts_ok++;
        G.window.posts_ok++;
        lg_hist_add(&G.total.post_lat, us);
        lg_hist_add(&G.window.post_lat, us);
    } else {
        G.total.posts_failed++;
        G.window.posts_failed++;
    }
    p->attempt = 0;
    make_idle(p);
    return 0;
}

static void on_palloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[16384];
    *buf = uv_buf_init(slab, sizeof slab);
}

static void on_pread(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    pconn_t *p = CORE_CONTAINER_OF(s, pconn_t, tcp);
    if (n < 0) {
        pconn_drop(p);
        return;
    }
    if (n > 0 && llhttp_execute(&p->parser, buf->base, (size_t)n) != HPE_OK)
        pconn_drop(p);
}

static void on_pconnect(uv_connect_t *req, int status)
{
    pconn_t *p = CORE_CONTAINER_OF(req, pconn_t, creq);
    if (status == UV_ECANCELED)
        return;
    if (status < 0) {
        pconn_drop(p);
        return;
    }
    p->open = true;
    llhttp_init(&p->parser, HTTP_RESPONSE, &P.settings);
    p->parser.data = p;
    uv_read_start((uv_stream_t *)&p->tcp, on_palloc, on_pread);
    make_idle(p);
}

static void pconn_connect(pconn_t *p)
{
    if (uv_tcp_init(G.loop, &p->tcp) != 0) {
        p->retry_ms = core_now_ms() + 1000;
        return;
    }
    p->active = true;
    uv_tcp_nodelay(&p->tcp, 1);
    if (uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&G.dest, on_pconnect) != 0)
        pconn_drop(p);
}

static void on_pwritten(uv_write_t *w, int status)
{
    if (status < 0)
        pconn_drop(CORE_CONTAINER_OF(w, pconn_t, wreq));
}

static bool post_rest(void)
{
    pconn_t *p = P.idle;
    if (!p)
        return false;
    P.idle = p->next_idle;
    const lg_target_t *t = &G.post_targets[P.next_target++ % G.npost_targets];
    char text[30016];
    size_t tl = lg_post_text(text, sizeof text, lg_realtime_ns());
    char body[30100];
    int bl = snprintf(body, sizeof body, "{\"text\":\"%.*s\"}", (int)tl, text);
    core_buf_reset(&p->req);
    core_buf_appendf(&p->req,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
                     t->path, G.host, G.port, t->token ? t->token : "", bl);
    core_buf_append(&p->req, body, (size_t)bl);
    p->busy = true;
    p->sent_ns = core_now_ns();
    uv_buf_t b = uv_buf_init(p->req.base, (unsigned)p->req.len);
    if (uv_write(&p->wreq, (uv_stream_t *)&p->tcp, &b, 1, on_pwritten) != 0)
        pconn_drop(p);
    return true;
}

void lg_poster_sio_ready(lg_conn_t *c)
{
    /* Nothing to do: ready posters are found by their state. */
}

/* A room always posts through the same connection: its seqs then reach the
 * server, and every receiver, in order (several connections would race). */
static bool post_sio(void)
{
    uint32_t nposters = G.nconns - G.clients;
    uint32_t room = P.next_target++ % G.npost_targets;
    lg_conn_t *c = &G.conns[G.clients + room % nposters];
    if (c->state != LG_OPEN || !c->ready)
        return false;
    char text[30016];
    size_t tl = lg_post_text(text, sizeof text, lg_realtime_ns());
    char msg[30200];
    int n = snprintf(
        msg, sizeof msg, "42[\"post\",{\"room\":\"%s\",\"seq\":%llu,\"text\":\"%.*s\"}]",
        G.post_targets[room].path, (unsigned long long)(P.room_seq[room] + 1), (int)tl, text);
    if (lg_conn_send(c, CORE_WS_TEXT, msg, (size_t)n) != 0)
        return false;
    P.room_seq[room]++;
    G.total.posts_ok++;
    G.window.posts_ok++;
    return true;
}

void lg_poster_set_rate(double rate)
{
    G.post_rate = rate;
    P.start_ms = core_now_ms();
    P.issued = 0;
}

int lg_poster_start(void)
{
    if (!G.npost_targets)
        return 0;
    P.enabled = true;
    P.start_ms = core_now_ms();
    if (G.proto == LG_PROTO_SOCKETIO) {
        P.room_seq = core_xcalloc(G.npost_targets, sizeof *P.room_seq);
        return 0;
    }
    llhttp_settings_init(&P.settings);
    P.settings.on_message_complete = on_complete;
    P.n = G.post_conns;
    P.conns = core_xcalloc(P.n, sizeof *P.conns);
    for (uint32_t i = 0; i < P.n; i++) {
        core_buf_init(&P.conns[i].req);
        pconn_connect(&P.conns[i]);
    }
    return 0;
}

void lg_poster_tick(uint64_t now)
{
    if (!P.enabled || P.stopped)
        return;
    for (uint32_t i = 0; i < P.n; i++) {
        pconn_t *p = &P.conns[i];
        if (!p->active && p->retry_ms && now >= p->retry_ms) {
            p->retry_ms = 0;
            pconn_connect(p);
        }
    }
    if (G.post_rate <= 0)
        return;
    if (P.issued == 0 && !P.idle && G.proto == LG_PROTO_MERIDIAN)
        P.start_ms = now; /* the rate counts from the first connection up */
    uint64_t due = (uint64_t)((double)(now - P.start_ms) * G.post_rate / 1000.0);
    while (P.issued < due) {
        P.issued++;
        bool ok = G.proto == LG_PROTO_SOCKETIO ? post_sio() : post_rest();
        if (!ok) {
            G.total.posts_skipped++;
            G.window.posts_skipped++;
        }
    }
}

void lg_poster_stop(void)
{
    if (P.stopped)
        return;
    P.stopped = true;
    for (uint32_t i = 0; i < P.n; i++) {
        pconn_t *p = &P.conns[i];
        if (p->active && !p->closing) {
            p->busy = false; /* an answer still due is not a failure */
            pconn_drop(p);
        }
    }
}

bool lg_poster_idle(void)
{
    for (uint32_t i = 0; i < P.n; i++)
        if (P.conns[i].active)
            return false;
    return true;
}
