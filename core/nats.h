/* nats.h: a NATS and JetStream client for the libuv loop, on cnats 3.4.1.
 *
 * cnats runs with its own I/O threads (its libuv adapter crashes in 3.4.1 and
 * never completes a retried first connect). Everything cnats reports on its
 * threads (messages, JetStream acks, connection state, async errors) is handed
 * to the loop through a core_mbox_t; every callback of this module runs on the
 * loop thread. cnats calls that can block (connect, subscribe/unsubscribe,
 * flush, JetStream management, close and destroy) run on the libuv thread pool
 * (uv_queue_work) and report back on the loop.
 *
 * Connection: the first connect and every reconnect are retried forever with
 * exponential backoff and full jitter (delay = random(0, min(cap, base *
 * 2^attempt)), re-drawn before every attempt, the first one included).
 * core_nats_ready is true between a (re)connect and the next disconnect.
 *
 * Blocking: core_nats_publish, core_nats_request and core_nats_js_publish run
 * on the loop and only append to cnats's 32 KiB write buffer (a full buffer is
 * written to the socket in place, which returns at once unless the kernel
 * buffer is full too: the write deadline, write_deadline_ms, bounds that and
 * drops the connection). They take the connection's mutex, which cnats's
 * reconnect thread holds across each connect attempt, so they refuse work with
 * UV_ENOTCONN while the connection is down instead of waiting on that mutex:
 * nothing is buffered across a disconnect.
 *
 * Callback contract (see core.h): a function that returns an error never calls
 * its callback. Otherwise the callback runs exactly once, on the loop:
 *   - requests: the reply, UV_ETIMEDOUT, UV_EHOSTUNREACH (no responders), or
 *     UV_ECANCELED when the client is freed first;
 *   - JetStream publishes: the ack, an error (UV_ETIMEDOUT when no ack came in
 *     js_ack_timeout_ms, UV_EHOSTUNREACH when no stream takes the subject,
 *     UV_EIO when JetStream refused the message), or UV_ECANCELED when the
 *     client is freed first. A failed publish may still have been stored:
 *     publish again with the same msg_id and the stream drops the duplicate;
 *   - core_nats_js_run: done always runs, after work has returned.
 * Message and state callbacks stop as soon as core_nats_unsubscribe /
 * core_nats_free is called.
 *
 * Metrics (label client="<name>"): meridian_nats_connected,
 * meridian_nats_reconnects_total, meridian_nats_published_total,
 * meridian_nats_received_total, meridian_nats_dropped_total,
 * meridian_nats_requests_total, meridian_nats_js_acks_total{result=ok|failed}.
 *
 * Processes: cnats starts threads, so create clients after fork, in each
 * worker. Payloads are never logged, nor URL credentials. */
#ifndef CORE_NATS_H
#define CORE_NATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>
#include <uv.h>

typedef struct core_nats_s core_nats_t;
typedef struct core_nats_sub_s core_nats_sub_t;

/* Called on the loop when readiness changes. A disconnect and reconnect that
 * both happen before the loop notices are still reported as false then true. */
typedef void (*core_nats_state_cb)(core_nats_t *nc, bool ready, void *ud);

typedef struct {
    const char *url;             /* "nats://127.0.0.1:4222"; a comma-separated list is allowed */
    const char *name;            /* connection name (server monitoring, logs, metric label);
                                    default "meridian" */
    unsigned connect_timeout_ms; /* per attempt: TCP connect + handshake; default 2000 */
    unsigned write_deadline_ms;  /* a socket write stuck this long drops the link; default 2000 */
    unsigned backoff_base_ms;    /* reconnect backoff; default 100 */
    unsigned backoff_cap_ms;     /* default 5000 */
    unsigned js_api_timeout_ms;  /* JetStream API calls made in core_nats_js_run; default 5000 */
    unsigned js_ack_timeout_ms; /* a JetStream publish without an ack by then fails; default 5000 */
    unsigned js_max_inflight;   /* unacked JetStream publishes before UV_EBUSY; default 1024 */
    const char *js_domain;      /* JetStream domain to address; NULL for the local one */
    core_nats_state_cb on_state; /* optional */
    void *ud;                    /* passed to on_state */
} core_nats_opts_t;

/* A received message, valid only during the callback. */
typedef struct {
    const char *subject;
    const char *reply; /* NULL when the sender expects no reply */
    const void *data;
    size_t len;
    natsMsg *raw; /* for headers (natsMsgHeader_Get); do not destroy */
} core_nats_msg_t;

typedef void (*core_nats_msg_cb)(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud);
/* err is 0 once cnats has the subscription (and the server has it, if
 * connected). After a non-zero err the handle is gone when cb returns. */
typedef void (*core_nats_sub_ready_cb)(core_nats_sub_t *sub, int err, void *ud);
/* reply is NULL exactly when err != 0. */
typedef void (*core_nats_reply_cb)(const core_nats_msg_t *reply, int err, void *ud);

typedef struct {
    uint64_t seq;   /* stream sequence */
    bool duplicate; /* the stream already had this Nats-Msg-Id */
} core_nats_js_ack_t;

/* ack is NULL exactly when err != 0. */
typedef void (*core_nats_js_ack_cb)(const core_nats_js_ack_t *ack, int err, void *ud);

/* Creates the client and starts connecting (on the thread pool). Strings in o
 * are copied. Returns NULL only for invalid options (no url). */
core_nats_t *core_nats_new(uv_loop_t *loop, const core_nats_opts_t *o);

/* True while connected. */
bool core_nats_ready(const core_nats_t *nc);

/* Publishes a core NATS message (at most once). Returns 0, UV_ENOTCONN while
 * down, UV_EINVAL for a bad subject, UV_ECANCELED after core_nats_free, or
 * UV_EIO when cnats refuses it. */
int core_nats_publish(core_nats_t *nc, const char *subject, const void *data, size_t len);
/* Same, with a reply subject (for answering requests: pass msg->reply as subject). */
int core_nats_publish_reply(core_nats_t *nc, const char *subject, const char *reply,
                            const void *data, size_t len);

/* Subscribes subject (wildcards allowed), in queue group `queue` unless NULL.
 * The subscription is set up on the thread pool, and resent by cnats after
 * every reconnect; messages arrive on the loop in order. Returns 0 and *out,
 * UV_EINVAL for a bad subject or queue, UV_ECANCELED after core_nats_free.
 * Messages that pile up beyond 65536 unread by the loop are dropped and
 * counted. */
int core_nats_subscribe(core_nats_t *nc, const char *subject, const char *queue,
                        core_nats_msg_cb cb, void *ud, core_nats_sub_t **out);
/* Optional: cb runs once on the loop when the subscription is in place (err 0)
 * or could not be made. Set it right after core_nats_subscribe. */
void core_nats_sub_on_ready(core_nats_sub_t *sub, core_nats_sub_ready_cb cb);
/* Stops delivery at once; the subscription is released later, off the loop.
 * Safe from inside the subscription's own callback; NULL is a no-op. The
 * handle must not be used afterwards (nor after core_nats_free). */
void core_nats_unsubscribe(core_nats_sub_t *sub);

/* Sends a request through the client's inbox subscription; the first reply
 * wins. Returns 0, UV_ENOTCONN while down, UV_EINVAL, UV_ECANCELED. */
int core_nats_request(core_nats_t *nc, const char *subject, const void *data, size_t len,
                      unsigned timeout_ms, core_nats_reply_cb cb, void *ud);

/* Sends what publishes have buffered now, instead of when cnats's flusher
 * thread gets to it: that thread waits 1 ms after being woken, to gather
 * more, before it writes. For a caller that just published a batch and
 * wants it on the wire (the relay: every event waited ~1 ms for nothing).
 * Runs on the thread pool (a PING written with the buffer, then its PONG
 * awaited there); calls made while one is out are folded into one more.
 * A no-op while not connected or once freed. */
void core_nats_flush(core_nats_t *nc);

/* Publishes to JetStream with Nats-Msg-Id = msg_id (NULL: no dedupe); cb gets
 * the ack. Returns 0, UV_ENOTCONN while down, UV_EBUSY when js_max_inflight
 * publishes are unacked (cnats would otherwise block the loop), UV_EINVAL,
 * UV_ECANCELED. */
int core_nats_js_publish(core_nats_t *nc, const char *subject, const void *data, size_t len,
                         const char *msg_id, core_nats_js_ack_cb cb, void *ud);
/* Unacked JetStream publishes. */
size_t core_nats_js_inflight(const core_nats_t *nc);

/* Runs work(js, ud) on the thread pool, where blocking JetStream calls
 * (js_AddStream, js_AddConsumer, ...) are fine, then done(ud) on the loop.
 * Returns 0,
 * UV_ENOTCONN before the first connect attempt finished, UV_ECANCELED after
 * core_nats_free. cnats 3.4.1 traps: an external source needs DeliverPrefix ""
 * (not NULL); placement by tags needs Cluster "" (not NULL). */
int core_nats_js_run(core_nats_t *nc, void (*work)(jsCtx *js, void *ud), void (*done)(void *ud),
                     void *ud);

/* Starts closing: message and state callbacks stop at once; pending requests
 * and JetStream publishes get their callback (UV_ECANCELED unless their
 * answer had already arrived) on a later loop pass; js_run's done still runs.
 * The connection is closed and destroyed on the thread pool, and memory is
 * released once that is done, so keep the loop running. Safe to call twice
 * and from inside a callback; NULL is a no-op. */
void core_nats_free(core_nats_t *nc);

/* Helpers, exposed for unit tests. */
/* Full-jitter delay before connect attempt `attempts` (1 = first). */
uint32_t core_nats_backoff_delay(uint32_t base_ms, uint32_t cap_ms, int attempts);
/* A subject: non-empty dot-separated tokens without whitespace; '*' and '>'
 * only as whole tokens (and '>' last), and only when wildcards is true. */
bool core_nats_subject_valid(const char *subject, bool wildcards);
/* A copy of a URL list without "user:password@" or "token@", for logs; free() it. */
char *core_nats_redact_url(const char *url);

#endif
