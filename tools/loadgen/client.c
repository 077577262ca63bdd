/* client.c: one WebSocket client of the load generator: connect from a given
 * source address, upgrade (meridian stream or Engine.IO), read frames with
 * core_ws_parse, answer pings, follow seqs, close properly, and come back
 * with backoff (and the cursor) when the connection goes away.
 *
 * Lifetime: a conn cycles WAIT -> CONNECTING -> HANDSHAKE -> OPEN ->
 * CLOSING -> WAIT. The TCP handle is closed only through conn_drop, and the
 * conn is rescheduled only from the close callback, once libuv has let go of
 * the handle: the uv_tcp_t is then initialised again for the next attempt. */
#define _GNU_SOURCE /* memmem */
#include "tools/loadgen/loadgen.h"

#include "core/core.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define HS_HEAD_MAX 4096
#define MSG_MAX (16u << 20)

struct lg_hs_s {
    uv_connect_t req;
    uint64_t started_ms;
    char accept[29]; /* the Sec-WebSocket-Accept we expect */
    size_t len;      /* response head bytes buffered */
    char head[HS_HEAD_MAX];
};

typedef struct {
    uv_write_t req;
    size_t len;
    uint8_t data[];
} wreq_t;

static void conn_drop(lg_conn_t *c, int code);

/* ---- the wait heap: one timer structure for every client ---- */

static void heap_swap(uint32_t a, uint32_t b)
{
    lg_conn_t *t = G.heap[a];
    G.heap[a] = G.heap[b];
    G.heap[b] = t;
    G.heap[a]->heap_pos = (int32_t)a;
    G.heap[b]->heap_pos = (int32_t)b;
}

void lg_heap_push(lg_conn_t *c)
{
    uint32_t i = G.heap_len++;
    G.heap[i] = c;
    c->heap_pos = (int32_t)i;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (G.heap[p]->due_ms <= G.heap[i]->due_ms)
            break;
        heap_swap(i, p);
        i = p;
    }
}

lg_conn_t *lg_heap_top(void)
{
    return G.heap_len ? G.heap[0] : NULL;
}

void lg_heap_pop(void)
{
    if (!G.heap_len)
        return;
    G.heap[0]->heap_pos = -1;
    if (--G.heap_len == 0)
        return;
    G.heap[0] = G.heap[G.heap_len];
    G.heap[0]->heap_pos = 0;
    uint32_t i = 0;
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < G.heap_len && G.heap[l]->due_ms < G.heap[m]->due_ms)
            m = l;
        if (r < G.heap_len && G.heap[r]->due_ms < G.heap[m]->due_ms)
            m = r;
        if (m == i)
            break;
        heap_swap(i, m);
        i = m;
    }
}

void lg_conn_schedule(lg_conn_t *c, uint64_t due_ms)
{
    c->state = LG_WAIT;
    c->due_ms = due_ms;
    lg_heap_push(c);
}

/* ---- counters ---- */

void lg_count_code(int *codes, uint64_t *counts, int *n, int code)
{
    for (int i = 0; i < *n; i++) {
        if (codes[i] == code) {
            counts[i]++;
            return;
        }
    }
    if (*n < LG_MAX_CODES) {
        codes[*n] = code;
        counts[(*n)++] = 1;
    }
}

void lg_timeline_add(int kind, uint64_t now_ms)
{
    size_t i =
        (size_t)((now_ms - G.start_ms + (G.start_unix_ms - G.tl_origin_unix_ms)) / G.timeline_ms);
    if (i >= G.tl_len) {
        size_t n = CORE_MAX(i + 1, G.tl_len * 2);
        for (int k = 0; k < LG_TL_KINDS; k++) {
            G.tl[k] = core_xrealloc(G.tl[k], n * sizeof *G.tl[k]);
            memset(G.tl[k] + G.tl_len, 0, (n - G.tl_len) * sizeof *G.tl[k]);
        }
        G.tl_len = n;
    }
    G.tl[kind][i]++;
}

/* Recovery is measured from the storm mark (or, without one, from the first
 * drop after everyone was connected) to the first instant at which every
 * client is connected again after a drop. */
void lg_storm_note(uint64_t now_ms)
{
    if (!G.storm_armed && G.all_connected_ms && G.connected < G.clients) {
        G.storm_armed = true; /* no mark: the first disconnect starts the storm */
        G.min_connected = G.connected;
    }
    if (!G.storm_armed || G.recovered_ms)
        return;
    if (G.connected < G.min_connected)
        G.min_connected = G.connected;
    if (!G.first_drop_ms && G.connected < G.clients)
        G.first_drop_ms = now_ms;
    else if (G.first_drop_ms && G.connected == G.clients)
        G.recovered_ms = now_ms;
}

/* ---- writing ---- */

static void on_written(uv_write_t *req, int status)
{
    free(CORE_CONTAINER_OF(req, wreq_t, req));
}

/* Writes now when the socket takes it (the usual case for the few small
 * frames a client sends); only what the kernel refused is copied. */
static int conn_write(lg_conn_t *c, const uint8_t *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (w == (int)n)
        return 0;
    if (w < 0 && w != UV_EAGAIN)
        return w;
    size_t done = w > 0 ? (size_t)w : 0;
    wreq_t *r = core_xmalloc(sizeof *r + n - done);
    r->len = n - done;
    memcpy(r->data, p + done, r->len);
    b = uv_buf_init((char *)r->data, (unsigned)r->len);
    int rc = uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc)
        free(r);
    return rc;
}

/* Masking keys need no cryptographic strength here (RFC 6455 asks for
 * unpredictability against proxies); a per-process xorshift costs nothing. */
static uint32_t mask_rand(void)
{
    static uint32_t s;
    if (!s)
        s = randombytes_random() | 1u;
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
}

static int send_frame(lg_conn_t *c, int opcode, const void *data, size_t len)
{
    uint8_t stack[1024];
    uint8_t *buf = stack;
    if (len + CORE_WS_MAX_HEADER > sizeof stack)
        buf = core_xmalloc(len + CORE_WS_MAX_HEADER);
    uint32_t m = mask_rand();
    uint8_t mask[4];
    memcpy(mask, &m, 4);
    size_t h = core_ws_frame_header_ex(buf, opcode, true, len, mask);
    memcpy(buf + h, data, len);
    core_ws_mask(buf + h, len, mask, 0);
    int rc = conn_write(c, buf, h + len);
    if (buf != stack)
        free(buf);
    return rc;
}

int lg_conn_send(lg_conn_t *c, int opcode, const void *data, size_t len)
{
    if (c->state != LG_OPEN || c->sent_close)
        return UV_EPIPE;
    return send_frame(c, opcode, data, len);
}

static void send_close(lg_conn_t *c, int code)
{
    if (c->sent_close || c->state != LG_OPEN)
        return;
    c->sent_close = true;
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_frame(c, CORE_WS_CLOSE, p, code ? 2 : 0);
}

/* ---- closing and coming back ---- */

static void on_closed(uv_handle_t *h)
{
    lg_conn_t *c = CORE_CONTAINER_OF(h, lg_conn_t, tcp);
    G.open_handles--;
    core_ws_parser_free(&c->parser);
    free(c->hs); /* only now: a pending connect request lived in it */
    c->hs = NULL;
    if (G.stopping || !G.reconnect) {
        c->state = LG_DONE;
        return;
    }
    /* Full-jitter backoff from the attempt counter, unless the server said
     * when to come back (a shed upgrade's retry hint, a draining node's
     * after_ms): then exactly then. A shed hint is the client's slot in the
     * server's queue, jittered by the server: earlier only gets shed again,
     * and later (a backoff grown over many sheds) leaves the bucket idle
     * while the herd waits. The naive client (--no-jitter) ignores hints
     * and keeps its plain exponential schedule. */
    core_backoff_t b = G.backoff;
    b.attempt = c->attempt;
    uint32_t delay = core_backoff_next(&b);
    c->attempt = b.attempt;
    if (c->hint_ms && G.backoff.jitter) {
        delay = c->hint_ms;
        G.hint_waits++;
    }
    c->hint_ms = 0;
    G.reconnects++;
    lg_conn_schedule(c, core_now_ms() + delay);
}

/* Closes the TCP connection; code is what we record for it (the peer's close
 * code, ours, or 1006 when TCP went away without one). Safe to call twice. */
static void conn_drop(lg_conn_t *c, int code)
{
    if (c->state == LG_CLOSING || c->state == LG_DONE || c->state == LG_WAIT)
        return;
    uint64_t now = core_now_ms();
    if (c->state == LG_CONNECTING || c->state == LG_HANDSHAKE) {
        G.inflight--;
        if (!c->is_poster)
            lg_timeline_add(c->shed ? LG_TL_SHED : LG_TL_FAILED, now);
    }
    if (c->ready && !c->is_poster) {
        G.connected--;
        lg_timeline_add(LG_TL_DROPS, now);
        lg_storm_note(now);
    }
    if (c->state == LG_OPEN)
        lg_count_code(G.close_codes, G.close_counts, &G.ncodes, code);
    c->ready = false;
    c->close_code = (uint16_t)code;
    c->state = LG_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

void lg_conn_stop(lg_conn_t *c)
{
    if (c->state == LG_OPEN) {
        send_close(c, CORE_WS_CLOSE_NORMAL);
        /* The server answers with its close and drops TCP; the stop deadline
         * drops whatever has not gone by then. */
    } else if (c->state == LG_CONNECTING || c->state == LG_HANDSHAKE) {
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
    } else if (c->state == LG_WAIT) {
        c->state = LG_DONE;
    }
}

void lg_sweep_handshakes(uint64_t now)
{
    for (uint32_t i = 0; i < G.nconns; i++) {
        lg_conn_t *c = &G.conns[i];
        if ((c->state == LG_CONNECTING || c->state == LG_HANDSHAKE) && now >= c->due_ms) {
            G.hs_timeouts++;
            conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
        } else if (G.stopping && c->state == LG_OPEN && now >= G.stop_deadline_ms) {
            conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
        }
    }
}

/* ---- messages ---- */

static bool scan_int(const uint8_t *p, size_t n, const char *key, int64_t *out)
{
    size_t kl = strlen(key);
    const uint8_t *k = memmem(p, n, key, kl);
    if (!k)
        return false;
    const uint8_t *q = k + kl, *end = p + n;
    while (q < end && (*q == ' ' || *q == '"'))
        q++;
    int64_t v = 0;
    bool any = false;
    while (q < end && *q >= '0' && *q <= '9') {
        v = v * 10 + (*q++ - '0');
        any = true;
    }
    *out = v;
    return any;
}

static void stat_event(lg_stats_t *s, int64_t gap, bool dup, bool timed, uint64_t lat_us)
{
    s->events++;
    if (gap > 0)
        s->gaps += (uint64_t)gap;
    if (dup)
        s->duplicates++;
    if (timed) {
        s->timed++;
        lg_hist_add(&s->lat, lat_us);
    }
}

/* An event: check its seq against the last one, and time it. */
static void on_event(lg_conn_t *c, const uint8_t *p, size_t n)
{
    int64_t seq = -1, gap = 0;
    bool dup = false;
    if (scan_int(p, n, "\"seq\":", &seq)) {
        if (c->cursor >= 0 && seq <= c->cursor)
            dup = true;
        else {
            if (c->cursor >= 0 && seq > c->cursor + 1)
                gap = seq - c->cursor - 1;
            c->cursor = seq;
        }
    }
    int64_t ts = 0;
    bool timed = false;
    uint64_t lat = 0;
    if (scan_int(p, n, "MRDTS", &ts) && ts > 0) {
        uint64_t now = lg_realtime_ns();
        lat = now > (uint64_t)ts ? (now - (uint64_t)ts) / 1000 : 0;
        timed = true;
    }
    stat_event(&G.total, gap, dup, timed, lat);
    stat_event(&G.window, gap, dup, timed, lat);
}

static void became_ready(lg_conn_t *c)
{
    if (c->ready)
        return;
    c->ready = true;
    c->attempt = 0; /* a session came up: the next failure starts small */
    uint64_t now = core_now_ms();
    uint64_t us = (now - c->ready_ms) * 1000;
    c->ready_ms = now;
    if (c->is_poster) {
        lg_poster_sio_ready(c);
        return;
    }
    G.connected++;
    G.total.connects++;
    G.window.connects++;
    lg_hist_add(&G.total.connect_lat, us);
    lg_hist_add(&G.window.connect_lat, us);
    size_t sec = (size_t)((now - G.start_ms) / 1000);
    if (sec >= G.connects_per_s_len) {
        size_t n = CORE_MAX(sec + 1, G.connects_per_s_len * 2);
        G.connects_per_s = core_xrealloc(G.connects_per_s, n * sizeof *G.connects_per_s);
        memset(G.connects_per_s + G.connects_per_s_len, 0,
               (n - G.connects_per_s_len) * sizeof *G.connects_per_s);
        G.connects_per_s_len = n;
    }
    G.connects_per_s[sec]++;
    if (G.connected == G.clients && !G.all_connected_ms)
        G.all_connected_ms = now;
    lg_timeline_add(LG_TL_CONNECTS, now);
    lg_storm_note(now);
}

static bool starts(const uint8_t *p, size_t n, const char *s)
{
    size_t l = strlen(s);
    return n >= l && memcmp(p, s, l) == 0;
}

static void on_meridian(lg_conn_t *c, const uint8_t *p, size_t n)
{
    int64_t v;
    if (starts(p, n, "{\"type\":\"event\"")) {
        on_event(c, p, n);
    } else if (starts(p, n, "{\"type\":\"hello\"")) {
        /* First session: start from the head. Resumed: the server replays
         * from our cursor, and hello's seq is only its head. */
        if (c->cursor < 0 && scan_int(p, n, "\"seq\":", &v))
            c->cursor = v;
        became_ready(c);
    } else if (starts(p, n, "{\"type\":\"resync_required\"")) {
        /* The server will not replay that far back: what lies between our
         * cursor and its head is lost to this client. */
        G.resyncs++;
        if (scan_int(p, n, "\"seq\":", &v)) {
            if (c->cursor >= 0 && v > c->cursor)
                G.resync_skipped += (uint64_t)(v - c->cursor);
            c->cursor = v;
        }
    } else if (starts(p, n, "{\"type\":\"reconnect\"")) {
        G.hints++;
        if (scan_int(p, n, "\"after_ms\":", &v))
            c->hint_ms = v > 0 ? (uint32_t)v : 1;
    } else {
        G.other_msgs++;
    }
}

static void on_socketio(lg_conn_t *c, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    switch (p[0]) {
    case '0': /* Engine.IO open: connect the default namespace */
        lg_conn_send(c, CORE_WS_TEXT, "40", 2);
        return;
    case '2': /* ping: pong */
        lg_conn_send(c, CORE_WS_TEXT, "3", 1);
        return;
    case '1': /* Engine.IO close */
        send_close(c, CORE_WS_CLOSE_NORMAL);
        return;
    case '4':
        break;
    default:
        G.other_msgs++;
        return;
    }
    if (n >= 2 && p[1] == '0')
        became_ready(c);
    else if (n >= 2 && p[1] == '2' && !c->is_poster)
        on_event(c, p, n);
    else if (n >= 2 && p[1] == '4')
        G.proto_errors++; /* namespace connect refused */
    else
        G.other_msgs++;
}

static void on_message(lg_conn_t *c, const uint8_t *p, size_t n)
{
    if (G.proto == LG_PROTO_SOCKETIO)
        on_socketio(c, p, n);
    else
        on_meridian(c, p, n);
}

/* Feeds WebSocket bytes; returns false when the connection was dropped. */
static bool feed(lg_conn_t *c, uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && c->state == LG_OPEN) {
        core_ws_event_t ev;
        off += core_ws_parse(&c->parser, data + off, len - off, &ev);
        switch (ev.type) {
        case CORE_WS_EV_NONE:
            break;
        case CORE_WS_EV_DATA:
            if (ev.first && ev.last) {
                on_message(c, ev.data, ev.len);
                break;
            }
            /* Split across reads: gathered in the conn's own buffer, which
             * stays for the next split message. */
            if (ev.first)
                c->msg_len = 0;
            if ((uint64_t)c->msg_len + ev.len > MSG_MAX) {
                G.proto_errors++;
                send_close(c, CORE_WS_CLOSE_TOO_BIG);
                conn_drop(c, CORE_WS_CLOSE_TOO_BIG);
                return false;
            }
            if (c->msg_len + ev.len > c->msg_cap) {
                uint32_t cap = c->msg_cap ? c->msg_cap : 512;
                while (cap < c->msg_len + ev.len)
                    cap *= 2;
                c->msg = core_xrealloc(c->msg, cap);
                c->msg_cap = cap;
            }
            memcpy(c->msg + c->msg_len, ev.data, ev.len);
            c->msg_len += (uint32_t)ev.len;
            if (ev.last) {
                on_message(c, c->msg, c->msg_len);
                c->msg_len = 0;
            }
            break;
        case CORE_WS_EV_CONTROL:
            if (ev.opcode == CORE_WS_PING) {
                send_frame(c, CORE_WS_PONG, ev.data, ev.len);
            } else if (ev.opcode == CORE_WS_CLOSE) {
                /* Echo the peer's close, then let TCP go: the close
                 * handshake is complete from our side. */
                int code = ev.code;
                send_close(c, code == CORE_WS_CLOSE_NO_STATUS ? 0 : code);
                conn_drop(c, code);
                return false;
            }
            break;
        case CORE_WS_EV_ERROR:
            G.proto_errors++;
            send_close(c, ev.code);
            conn_drop(c, ev.code);
            return false;
        }
    }
    return c->state == LG_OPEN;
}

/* ---- handshake ---- */

static bool header_value(const char *head, const char *name, const char **v, size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2;
        if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
            const char *s = l + nl + 1;
            while (*s == ' ' || *s == '\t')
                s++;
            const char *e = strstr(s, "\r\n");
            if (!e)
                return false;
            while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *v = s;
            *vlen = (size_t)(e - s);
            return true;
        }
    }
    return false;
}

/* Handles the response head once complete; returns the offset where frames
 * start in the head buffer, or -1 when the connection was dropped. */
static int handshake_done(lg_conn_t *c, size_t head_len)
{
    lg_hs_t *hs = c->hs;
    char save = hs->head[head_len];
    hs->head[head_len] = '\0';
    int status = 0;
    if (sscanf(hs->head, "HTTP/1.%*d %d", &status) != 1)
        status = -1;
    if (status != 101) {
        /* Shed (503/429), refused (401/404) or broken: counted by status. */
        lg_count_code(G.hs_status, G.hs_status_counts, &G.nstatus, status);
        const char *ra;
        size_t ral;
        char tmp[12];
        /* The millisecond hint is the precise one (jittered by the server);
         * Retry-After has whole seconds only. */
        if (header_value(hs->head, "Meridian-Retry-After-Ms", &ra, &ral) && ral < sizeof tmp) {
            memcpy(tmp, ra, ral);
            tmp[ral] = '\0';
            c->hint_ms = (uint32_t)strtoul(tmp, NULL, 10);
        } else if (header_value(hs->head, "Retry-After", &ra, &ral) && ral < 8) {
            memcpy(tmp, ra, ral);
            tmp[ral] = '\0';
            c->hint_ms = (uint32_t)atoi(tmp) * 1000u;
        }
        if (status == 503) {
            /* The error body usually came with the head: admission's code
             * tells a shed from a region that is down. */
            hs->head[head_len] = save;
            bool overloaded =
                memmem(hs->head + head_len, hs->len - head_len, "\"overloaded\"", 12) != NULL;
            if (overloaded) {
                G.shed++;
                c->shed = true;
            } else {
                G.unavailable++;
            }
        }
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
        return -1;
    }
    const char *acc;
    size_t accl;
    if (!header_value(hs->head, "Sec-WebSocket-Accept", &acc, &accl) || accl != 28 ||
        memcmp(acc, hs->accept, 28) != 0) {
        lg_count_code(G.hs_status, G.hs_status_counts, &G.nstatus, -101);
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
        return -1;
    }
    hs->head[head_len] = save;
    G.inflight--;
    c->state = LG_OPEN;
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    /* Every read is consumed before the next: one slab serves all. */
    *buf = uv_buf_init((char *)G.slab, sizeof G.slab);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    lg_conn_t *c = CORE_CONTAINER_OF(s, lg_conn_t, tcp);
    if (n == 0)
        return;
    if (n < 0) {
        if (c->state == LG_CONNECTING || c->state == LG_HANDSHAKE)
            G.tcp_errors++;
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
        return;
    }
    uint8_t *data = (uint8_t *)buf->base;
    size_t len = (size_t)n;
    if (c->state == LG_HANDSHAKE) {
        lg_hs_t *hs = c->hs;
        size_t room = HS_HEAD_MAX - 1 - hs->len;
        size_t take = len < room ? len : room;
        size_t before = hs->len;
        memcpy(hs->head + hs->len, data, take);
        hs->len += take;
        hs->head[hs->len] = '\0';
        char *end = strstr(hs->head, "\r\n\r\n");
        if (!end) {
            if (hs->len >= HS_HEAD_MAX - 1) {
                lg_count_code(G.hs_status, G.hs_status_counts, &G.nstatus, -1);
                conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
            }
            return;
        }
        size_t head_len = (size_t)(end - hs->head) + 4;
        if (handshake_done(c, head_len) < 0)
            return;
        /* Frames that came with the head (the hello) are in this read after
         * the head's last byte. */
        size_t used = head_len - before;
        free(c->hs);
        c->hs = NULL;
        data += used;
        len -= used;
    }
    if (c->state == LG_OPEN && len)
        feed(c, data, len);
}

static void b64(const uint8_t *in, size_t n, char *out, size_t cap)
{
    sodium_bin2base64(out, cap, in, n, sodium_base64_VARIANT_ORIGINAL);
}

static void on_connect(uv_connect_t *req, int status)
{
    if (status == UV_ECANCELED)
        return; /* the conn is being dropped */
    lg_conn_t *c = req->data;
    if (status < 0) {
        G.tcp_errors++;
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
        return;
    }
    lg_target_t poster_target = {.token = NULL, .path = (char *)G.default_path};
    const lg_target_t *t = c->is_poster ? &poster_target : &G.targets[c->index % G.ntargets];
    const char *path = t->path ? t->path : G.default_path;
    uint8_t key[16];
    randombytes_buf(key, sizeof key);
    char key64[32];
    b64(key, sizeof key, key64, sizeof key64);
    core_ws_accept_key(key64, strlen(key64), c->hs->accept);

    char req_buf[4096 + 256];
    int n;
    char cursor[40] = "";
    if (G.proto == LG_PROTO_MERIDIAN && G.resume && c->cursor >= 0)
        snprintf(cursor, sizeof cursor, "%ccursor=%lld", strchr(path, '?') ? '&' : '?',
                 (long long)c->cursor);
    char auth_q[2200] = "";
    const char *tok = t->token;
    if (G.proto == LG_PROTO_MERIDIAN && tok && G.auth == LG_AUTH_QUERY)
        snprintf(auth_q, sizeof auth_q, "%caccess_token=%s",
                 (strchr(path, '?') || cursor[0]) ? '&' : '?', tok);
    n = snprintf(req_buf, sizeof req_buf,
                 "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                 path, cursor, auth_q, G.host, G.port, key64);
    if (G.proto == LG_PROTO_MERIDIAN) {
        if (tok && G.auth == LG_AUTH_SUBPROTOCOL)
            n += snprintf(req_buf + n, sizeof req_buf - (size_t)n,
                          "Sec-WebSocket-Protocol: meridian.v1, bearer.%s\r\n", tok);
        else
            n += snprintf(req_buf + n, sizeof req_buf - (size_t)n,
                          "Sec-WebSocket-Protocol: meridian.v1\r\n");
        if (tok && G.auth == LG_AUTH_HEADER)
            n += snprintf(req_buf + n, sizeof req_buf - (size_t)n, "Authorization: Bearer %s\r\n",
                          tok);
    }
    n += snprintf(req_buf + n, sizeof req_buf - (size_t)n, "\r\n");
    if (n >= (int)sizeof req_buf) {
        G.proto_errors++;
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
        return;
    }
    c->state = LG_HANDSHAKE;
    if (conn_write(c, (const uint8_t *)req_buf, (size_t)n) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        G.tcp_errors++;
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
    }
}

/* Starts one connection attempt from the conn's source address. */
void lg_conn_start(lg_conn_t *c)
{
    uint64_t now = core_now_ms();
    int rc = uv_tcp_init_ex(G.loop, &c->tcp, AF_INET);
    if (rc) {
        /* Out of descriptors, most likely: try again later. */
        G.tcp_errors++;
        core_backoff_t b = G.backoff;
        b.attempt = c->attempt;
        uint32_t d = core_backoff_next(&b);
        c->attempt = b.attempt;
        lg_conn_schedule(c, now + d);
        return;
    }
    G.open_handles++;
    c->hs = core_xcalloc(1, sizeof *c->hs);
    c->hs->started_ms = now;
    c->ready_ms = now;
    c->ready = false;
    c->sent_close = false;
    c->shed = false;
    c->msg_len = 0;
    c->state = LG_CONNECTING;
    c->due_ms = now + G.handshake_timeout_ms;
    G.inflight++;
    if (!c->is_poster)
        lg_timeline_add(LG_TL_ATTEMPTS, now);
    core_ws_parser_init(&c->parser, MSG_MAX, MSG_MAX, false);
    uv_tcp_nodelay(&c->tcp, 1);
    if (G.nsources) {
        /* The port is chosen at connect time, per (source, destination):
         * without this, bind() would reserve a port for any destination. */
        uv_os_fd_t fd;
        int one = 1;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&G.sources[c->index % G.nsources], 0);
        if (rc) {
            G.tcp_errors++;
            conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
            return;
        }
    }
    c->hs->req.data = c;
    rc = uv_tcp_connect(&c->hs->req, &c->tcp, (const struct sockaddr *)&G.dest, on_connect);
    if (rc) {
        G.tcp_errors++;
        conn_drop(c, CORE_WS_CLOSE_ABNORMAL);
    }
}
