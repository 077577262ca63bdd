/* loadgen.h: meridian-loadgen, a WebSocket load generator on libuv.
 *
 * One process runs N clients of one protocol against one host:port:
 *   - "meridian": the workspace stream (GET /v1/workspaces/{id}/stream), token
 *     as a bearer.<token> subprotocol (or header, or query), resuming with
 *     ?cursor=<last seq> after every reconnect;
 *   - "socketio": Engine.IO v4 over its websocket transport, the default
 *     namespace, events "42[...]".
 * and, optionally, a poster that sends timestamped messages at a fixed rate
 * (REST posts for meridian, "post" events for socketio), so that every
 * received event yields a post->deliver latency from the same machine's
 * CLOCK_REALTIME without any clock sync.
 *
 * Memory: a client is one lg_conn_t (a few hundred bytes, mostly the
 * uv_tcp_t); reads go into one shared slab; a message is copied only when it
 * arrives split across reads, into a buffer kept for the next one. Timers are
 * one heap for the whole process, not one uv_timer_t per client.
 *
 * Reconnects back off with full jitter (core/backoff.h), the first failure
 * included, and honour the server's retry hint (a shed upgrade's
 * Meridian-Retry-After-Ms or Retry-After, a draining node's after_ms) by
 * waiting at least that long. --no-jitter is the naive client of a
 * reconnect-storm comparison: plain exponential delays, hints ignored.
 *
 * Storm figures (bench/storm): a timeline of accepted sessions and shed
 * upgrades per --timeline-ms bucket, aligned on the wall clock so that the
 * timelines of several processes add up bucket by bucket; and the time to
 * full recovery, from "mark storm" on stdin (or the first disconnect) until
 * every client is connected again. */
#ifndef LG_LOADGEN_H
#define LG_LOADGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/backoff.h"
#include "core/buf.h"
#include "core/ws.h"

/* ---- latency histogram: log-linear, 1.6% resolution, microseconds ---- */

#define LG_HIST_SUB 64
#define LG_HIST_BUCKETS (LG_HIST_SUB * 40)

typedef struct {
    uint64_t counts[LG_HIST_BUCKETS];
    uint64_t n;
    uint64_t max_us;
    double sum_us;
} lg_hist_t;

void lg_hist_reset(lg_hist_t *h);
void lg_hist_add(lg_hist_t *h, uint64_t us);
/* Value (ms) at percentile p (0-100); 0 when empty. */
double lg_hist_pct_ms(const lg_hist_t *h, double p);
/* Appends {"n":..,"p50":..,"p90":..,"p99":..,"p999":..,"max":..,"mean":..} in ms. */
void lg_hist_json(const lg_hist_t *h, core_buf_t *b);
/* Appends [[lower_us,count],...] for the non-empty buckets, so that several
 * processes' histograms can be merged exactly by whoever reads them. */
void lg_hist_sparse_json(const lg_hist_t *h, core_buf_t *b);

/* ---- configuration ---- */

typedef enum { LG_PROTO_MERIDIAN, LG_PROTO_SOCKETIO } lg_proto_t;
typedef enum { LG_AUTH_SUBPROTOCOL, LG_AUTH_HEADER, LG_AUTH_QUERY } lg_auth_t;

typedef struct {
    char *token; /* meridian: access token; socketio: unused */
    char *path;  /* request target, may hold a query */
} lg_target_t;

/* ---- one client ---- */

typedef enum {
    LG_WAIT,       /* in the heap: (re)connect at due_ms */
    LG_CONNECTING, /* TCP connect in flight */
    LG_HANDSHAKE,  /* upgrade request sent, response head awaited */
    LG_OPEN,       /* WebSocket open */
    LG_CLOSING,    /* handle closing; back to WAIT (or done) in on_closed */
    LG_DONE,
} lg_state_t;

typedef struct lg_hs_s lg_hs_t;

typedef struct lg_conn_s {
    uv_tcp_t tcp;
    core_ws_parser_t parser;
    lg_hs_t *hs;  /* only while connecting: request, key, response head */
    uint8_t *msg; /* a message split across reads; kept for the next one */
    uint32_t msg_len;
    uint32_t msg_cap;
    int64_t cursor;    /* last seq seen (meridian: the resume cursor); -1 none */
    uint64_t due_ms;   /* WAIT: when to connect; HANDSHAKE: deadline */
    uint64_t ready_ms; /* when the session became ready (hello / "40") */
    uint32_t index;    /* which target and source address */
    uint32_t attempt;  /* backoff attempt */
    uint32_t hint_ms;  /* the server's reconnect hint, 0 none */
    int32_t heap_pos;  /* -1 when not in the heap */
    uint16_t close_code;
    uint8_t state;
    bool ready; /* hello (meridian) or namespace connect (socketio) received */
    bool sent_close;
    bool shed;              /* this attempt was shed: counted as such, not as failed */
    bool is_poster;         /* socketio poster connection: does not count as a client */
    uint32_t post_seq_room; /* socketio poster: round-robin position */
} lg_conn_t;

/* ---- process-wide state ---- */

/* What the storm timeline counts per bucket: sessions that became ready,
 * upgrades shed by admission, other failed attempts (refused, 503
 * unavailable, TCP errors, timeouts), attempts started (a TCP connect), and
 * ready sessions lost. Attempts against connects + shed + failed shows where
 * a herd waits: in the client's backoff, or in the servers' queues. */
enum { LG_TL_CONNECTS, LG_TL_SHED, LG_TL_FAILED, LG_TL_ATTEMPTS, LG_TL_DROPS, LG_TL_KINDS };

#define LG_MAX_SOURCES 64
#define LG_MAX_CODES 32

typedef struct {
    uint64_t events;     /* event messages received */
    uint64_t timed;      /* of which carried a post timestamp */
    uint64_t gaps;       /* seqs missing between two received events */
    uint64_t duplicates; /* events at or below the last seq seen */
    uint64_t connects;   /* sessions that became ready */
    uint64_t posts_ok, posts_failed, posts_skipped;
    lg_hist_t lat;         /* post -> deliver */
    lg_hist_t post_lat;    /* post -> acknowledged (REST) */
    lg_hist_t connect_lat; /* connect start -> ready */
} lg_stats_t;

typedef struct {
    /* options */
    lg_proto_t proto;
    lg_auth_t auth;
    const char *host;
    int port;
    struct sockaddr_in dest;
    struct sockaddr_in sources[LG_MAX_SOURCES];
    int nsources;
    uint32_t clients;
    double duration_s;   /* 0: until stopped */
    double connect_rate; /* per second, 0: unlimited */
    uint32_t max_inflight;
    uint32_t handshake_timeout_ms;
    core_backoff_t backoff; /* template: attempt comes from each conn */
    bool reconnect;
    bool resume; /* meridian: ?cursor= on reconnect */
    uint32_t stats_interval_ms;
    lg_target_t *targets;
    uint32_t ntargets;
    const char *default_path;
    /* poster */
    double post_rate;
    uint32_t post_conns;
    lg_target_t *post_targets;
    uint32_t npost_targets;
    uint32_t text_bytes;
    /* runtime */
    uv_loop_t *loop;
    uv_timer_t tick;
    uv_timer_t stats_timer;
    uv_signal_t sigint, sigterm;
    uv_pipe_t ctl;
    bool ctl_open;
    core_buf_t ctl_buf;
    lg_conn_t *conns;
    uint32_t nconns; /* clients, then socketio posters */
    lg_conn_t **heap;
    uint32_t heap_len;
    uint32_t inflight;  /* CONNECTING + HANDSHAKE */
    uint32_t connected; /* ready clients (posters excluded) */
    uint32_t open_handles;
    double rate_tokens;
    uint64_t rate_last_ms;
    uint64_t start_ms;
    uint64_t all_connected_ms; /* first time connected == clients, 0 not yet */
    bool stopping;
    uint64_t stop_deadline_ms;
    /* outcomes */
    uint64_t tcp_errors, hs_timeouts, proto_errors, reconnects, resyncs, hints, other_msgs;
    int close_codes[LG_MAX_CODES];
    uint64_t close_counts[LG_MAX_CODES];
    int ncodes;
    int hs_status[LG_MAX_CODES];
    uint64_t hs_status_counts[LG_MAX_CODES];
    int nstatus;
    uint64_t *connects_per_s; /* timeline, one slot per second since start */
    size_t connects_per_s_len;
    /* storm timeline: one slot per timeline_ms since tl_origin_unix_ms */
    uint32_t timeline_ms;
    uint64_t start_unix_ms;
    uint64_t tl_origin_unix_ms;
    uint32_t *tl[LG_TL_KINDS];
    size_t tl_len;
    uint64_t shed;           /* upgrades refused by admission: 503 "overloaded" */
    uint64_t unavailable;    /* other 503s (region down at the edge, draining) */
    uint64_t hint_waits;     /* reconnects that a retry hint made wait longer */
    uint64_t resync_skipped; /* events a resync_required jumped over: lost */
    /* storm: armed by "mark storm" (or the first drop once all were connected) */
    bool storm_armed;
    uint64_t storm_mark_ms, first_drop_ms, recovered_ms; /* monotonic, 0 not yet */
    uint32_t min_connected;
    lg_stats_t total, window;
    uint64_t window_start_ms;
    uint8_t slab[65536];
} lg_t;

extern lg_t G;

/* Realtime clock in ns: what the poster stamps and the receiver compares. */
uint64_t lg_realtime_ns(void);

/* client.c */
void lg_conn_schedule(lg_conn_t *c, uint64_t due_ms);
void lg_conn_start(lg_conn_t *c);
void lg_conn_stop(lg_conn_t *c); /* end of run: close 1000 */
void lg_heap_push(lg_conn_t *c);
lg_conn_t *lg_heap_top(void);
void lg_heap_pop(void);
/* Sends one masked data frame; 0 or a negative libuv error. */
int lg_conn_send(lg_conn_t *c, int opcode, const void *data, size_t len);
void lg_count_code(int *codes, uint64_t *counts, int *n, int code);
/* Counts one event of kind LG_TL_* in the storm timeline at now_ms (monotonic). */
void lg_timeline_add(int kind, uint64_t now_ms);
/* Storm bookkeeping after G.connected changed. */
void lg_storm_note(uint64_t now_ms);
void lg_sweep_handshakes(uint64_t now);

/* poster.c */
int lg_poster_start(void);
void lg_poster_tick(uint64_t now_ms);
void lg_poster_stop(void);
void lg_poster_set_rate(double rate);
bool lg_poster_idle(void);
/* socketio: a poster connection became ready */
void lg_poster_sio_ready(lg_conn_t *c);
/* Writes "MRDTS<ns>" and padding to text_bytes into out (at most cap). */
size_t lg_post_text(char *out, size_t cap, uint64_t ts_ns);

#endif
