/* ws.h: WebSocket (RFC 6455) server connections on top of core/http.h.
 *
 * Three layers, usable separately:
 *   - a pure incremental frame parser (core_ws_parser_t) that needs no socket,
 *     for the server, unit tests and a load generator;
 *   - frame encoding helpers (core_ws_frame_header*, core_ws_mask);
 *   - server connections: core_ws_accept validates the handshake of an HTTP
 *     request, answers 101 and then runs the protocol (ping/pong, close
 *     handshake, idle timeout, drain) on the upgraded connection.
 *
 * Ownership: the module owns every core_ws_t. The on_close handler is called
 * exactly once per accepted connection, after the TCP connection is gone; the
 * module frees the core_ws_t right after on_close returns, so the pointer must
 * not be kept past it. Handlers may call core_ws_send and core_ws_close from
 * inside any callback, including on_message.
 *
 * No extension (permessage-deflate) is negotiated: RSV bits are always errors. */
#ifndef CORE_WS_H
#define CORE_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/http.h"

/* Opcodes. */
enum {
    CORE_WS_CONT = 0x0,
    CORE_WS_TEXT = 0x1,
    CORE_WS_BINARY = 0x2,
    CORE_WS_CLOSE = 0x8,
    CORE_WS_PING = 0x9,
    CORE_WS_PONG = 0xA,
};

/* Close codes (RFC 6455 §7.4.1 and the IANA registry). */
enum {
    CORE_WS_CLOSE_NORMAL = 1000,
    CORE_WS_CLOSE_GOING_AWAY = 1001,
    CORE_WS_CLOSE_PROTOCOL = 1002,
    CORE_WS_CLOSE_UNSUPPORTED = 1003,
    CORE_WS_CLOSE_NO_STATUS = 1005, /* never sent: "the close frame had no code" */
    CORE_WS_CLOSE_ABNORMAL = 1006,  /* never sent: "TCP went away without a close frame" */
    CORE_WS_CLOSE_INVALID_DATA = 1007,
    CORE_WS_CLOSE_POLICY = 1008,
    CORE_WS_CLOSE_TOO_BIG = 1009,
    CORE_WS_CLOSE_INTERNAL = 1011,
    CORE_WS_CLOSE_RESTART = 1012, /* Service Restart (IANA registry) */
    CORE_WS_CLOSE_TRY_AGAIN = 1013,
};

/* Largest control frame payload, and of a close reason (125 minus the code). */
#define CORE_WS_MAX_CONTROL 125
#define CORE_WS_MAX_REASON 123
/* Largest frame header: 2 + 8 (64-bit length) + 4 (mask). */
#define CORE_WS_MAX_HEADER 14

/* ---- close codes and UTF-8 ---- */

/* True if code may appear in a close frame on the wire: 1000-1003, 1007-1014,
 * 3000-4999. 1004-1006 and 1015 are reserved, 1016-2999 unassigned. */
bool core_ws_close_code_valid(int code);

/* Incremental UTF-8 validation. State starts at CORE_WS_UTF8_ACCEPT; a
 * sequence may be split anywhere between calls. Rejects overlong forms,
 * surrogates (U+D800-DFFF) and code points above U+10FFFF as soon as the
 * offending byte is seen. */
#define CORE_WS_UTF8_ACCEPT 0u
/* Feeds n bytes; returns false (and leaves *state rejecting) on invalid input. */
bool core_ws_utf8_step(uint32_t *state, const uint8_t *p, size_t n);
/* True if p[0..n) is complete, valid UTF-8. */
bool core_ws_utf8_valid(const uint8_t *p, size_t n);

/* ---- frame encoding ---- */

/* Encodes the header of a final, unmasked (server) frame into out and returns
 * its length (2, 4 or 10). The payload follows it verbatim, so a frame sent to
 * many connections can be encoded once. */
size_t core_ws_frame_header(uint8_t out[10], int opcode, size_t len);
/* General form: fin flag, and mask (4 bytes) or NULL for an unmasked frame.
 * Returns the header length (2 to 14). The payload must be masked separately
 * with core_ws_mask when mask is given. */
size_t core_ws_frame_header_ex(uint8_t out[CORE_WS_MAX_HEADER], int opcode, bool fin, size_t len,
                               const uint8_t *mask);
/* XORs p[0..n) with mask, starting at byte `offset` of the payload (masking
 * is its own inverse). */
void core_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* ---- incremental parser ---- */

typedef enum {
    CORE_WS_EV_NONE = 0, /* all input consumed, more is needed */
    CORE_WS_EV_DATA,     /* a piece of a data message's payload */
    CORE_WS_EV_CONTROL,  /* a whole ping, pong or close frame */
    CORE_WS_EV_ERROR,    /* the peer broke the protocol: close with code */
} core_ws_ev_type_t;

typedef struct {
    core_ws_ev_type_t type;
    int opcode;    /* DATA: the message's opcode (TEXT/BINARY); CONTROL: the frame's */
    uint8_t *data; /* payload bytes, unmasked; valid until the next parse call */
    size_t len;
    bool first;         /* DATA: first piece of the message */
    bool last;          /* DATA: last piece of the message (text: UTF-8 is complete) */
    int code;           /* CONTROL close: the peer's code, 1005 if none; ERROR: code to send */
    const char *reason; /* CONTROL close: the peer's reason (validated UTF-8); ERROR: static text */
    size_t reason_len;
} core_ws_event_t;

typedef struct {
    /* configuration, set by core_ws_parser_init */
    uint64_t max_frame;   /* payload bytes of one frame; over it: 1009 */
    uint64_t max_message; /* payload bytes of a reassembled message; over it: 1009 */
    bool expect_masked;   /* server side: client frames must be masked (else 1002);
                           * client side: server frames must not be */
    /* state */
    uint8_t state;   /* header, payload, failed */
    uint8_t hdr_len; /* header bytes buffered so far */
    uint8_t hdr[CORE_WS_MAX_HEADER];
    uint8_t opcode; /* current frame's */
    bool fin;
    bool masked;
    bool msg_first;     /* no DATA event of the open message emitted yet */
    uint8_t msg_opcode; /* open data message: TEXT or BINARY, 0 if none */
    uint8_t mask[4];
    uint8_t ctl_len;        /* control payload bytes buffered in ctl */
    uint16_t err_code;      /* failed: the close code to send */
    uint32_t utf8;          /* validator state of the open text message */
    uint64_t frame_len;     /* current frame's payload length */
    uint64_t frame_got;     /* payload bytes of the current frame consumed */
    uint64_t msg_len;       /* payload bytes of the open message so far */
    uint8_t *ctl;           /* control payload split across inputs; allocated only then */
    const char *err_reason; /* failed: static text */
} core_ws_parser_t;

/* Prepares a parser; it holds no memory until a control frame arrives split. */
void core_ws_parser_init(core_ws_parser_t *p, uint64_t max_frame, uint64_t max_message,
                         bool expect_masked);
/* Releases what the parser holds. */
void core_ws_parser_free(core_ws_parser_t *p);
/* Consumes input from data[0..len) up to the next event and returns the number
 * of bytes consumed; *ev says what happened (CORE_WS_EV_NONE when everything
 * was consumed without completing an event). Call again with the rest. Payload
 * is unmasked in place, which is why data is writable. After an ERROR the
 * parser stays failed: every later call returns that error again. */
size_t core_ws_parse(core_ws_parser_t *p, uint8_t *data, size_t len, core_ws_event_t *ev);

/* ---- following a relayed stream ---- */

/* Follows a stream of frames by their headers alone: payloads are skipped,
 * never copied or unmasked. A proxy that relays one side's frames verbatim
 * uses it to know whether it may add a frame of its own (between whole
 * messages: not inside a fragmented one, not mid-frame) and whether that
 * side already closed. Zero-initialise. */
typedef struct {
    uint64_t skip; /* payload bytes of the current frame still to come */
    uint8_t hdr[CORE_WS_MAX_HEADER];
    uint8_t hdr_len; /* header bytes seen of the next frame */
    bool in_message; /* a data message's final frame has not come yet */
    bool saw_close;  /* a close frame went by */
} core_ws_scan_t;

/* Feeds the next n bytes of the stream. */
void core_ws_scan(core_ws_scan_t *s, const uint8_t *p, size_t n);
/* True when the stream stands between whole messages. */
bool core_ws_scan_between(const core_ws_scan_t *s);

/* ---- handshake ---- */

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)), 28 chars + NUL. */
void core_ws_accept_key(const char *key, size_t key_len, char out[29]);

typedef struct {
    const char *ptr;
    size_t len;
} core_ws_token_t;

#define CORE_WS_MAX_PROTOCOLS 16

/* Splits the request's Sec-WebSocket-Protocol header(s) into tokens (pointing
 * into the request). Returns the count (at most max), or -1 when a value is
 * not a list of HTTP tokens or there are more than max. */
int core_ws_offered_protocols(const core_http_req_t *req, core_ws_token_t *out, size_t max);

/* Result of validating an upgrade request without answering it. */
typedef struct {
    int status;          /* 0 when valid; else 400 or 426 */
    const char *code;    /* API error code, e.g. "bad_websocket_handshake" */
    const char *message; /* what was wrong, for the client */
    const char *key;     /* valid: the Sec-WebSocket-Key value */
    size_t key_len;
} core_ws_handshake_t;

/* Checks an upgrade request against RFC 6455 §4.2.1. Returns 0 or -1 with
 * out->status/code/message set. */
int core_ws_handshake_check(const core_http_req_t *req, core_ws_handshake_t *out);

/* ---- server connections ---- */

typedef struct core_ws_s core_ws_t;

typedef struct {
    uint32_t max_frame_bytes;   /* one frame's payload; over it: close 1009 */
    uint32_t max_message_bytes; /* a reassembled message; over it: close 1009 */
    uint32_t ping_interval_ms;  /* ping a connection that has been quiet this long */
    uint32_t idle_timeout_ms;   /* nothing received this long: close 1001 "idle timeout" */
    uint32_t max_queued_bytes;  /* output queued beyond this: close 1008 "send queue full" */
    uint32_t close_timeout_ms;  /* after our close frame, wait this long for the peer's */
} core_ws_limits_t;

/* Fills the defaults (1 MiB frames and messages, 30 s ping, 75 s idle, 4 MiB
 * queue, 3 s close wait), the same as the region's configuration defaults. */
void core_ws_limits_default(core_ws_limits_t *l);

typedef struct {
    /* Optional. Sees the client's offered subprotocols (possibly none) and
     * returns the index of the one to echo in Sec-WebSocket-Protocol, or -1 to
     * select none. To refuse the handshake it answers the request itself (e.g.
     * core_http_respond_error 401) and returns CORE_WS_REJECTED. */
    int (*select_protocol)(core_http_req_t *req, const core_ws_token_t *offered, size_t n,
                           void *ud);
    /* A whole message: opcode CORE_WS_TEXT (valid UTF-8) or CORE_WS_BINARY.
     * data is valid only during the call. */
    void (*on_message)(core_ws_t *ws, int opcode, const uint8_t *data, size_t len, void *ud);
    /* The connection is gone. code: the peer's close code (1005 when its close
     * frame had none), else the code we sent, else 1006. Called exactly once;
     * the ws is freed when it returns. */
    void (*on_close)(core_ws_t *ws, int code, void *ud);
    /* Optional: the server is draining. The handler may send a last message
     * (a reconnect hint) before the module closes with 1001. */
    void (*on_drain)(core_ws_t *ws, void *ud);
    /* Optional: everything queued has gone to the kernel: a paced sender
     * (a replay) may send more. */
    void (*on_writable)(core_ws_t *ws, void *ud);
} core_ws_handlers_t;

#define CORE_WS_REJECTED (-2)

/* Validates the handshake of req, answers 101 and returns the connection. On
 * a bad handshake it answers the request itself (400, or 426 with
 * Sec-WebSocket-Version: 13) and returns NULL; the handlers are then never
 * called. limits and h are kept by reference and must outlive the connection
 * (static or server-lifetime storage). */
core_ws_t *core_ws_accept(core_http_req_t *req, const core_ws_limits_t *limits,
                          const core_ws_handlers_t *h, void *ud);

/* Sends one whole message (TEXT, BINARY) or a control frame (PING, PONG;
 * len <= 125). Returns 0; UV_EPIPE once the connection is closing; or
 * UV_ENOBUFS when more than max_queued_bytes were already queued: then nothing
 * was queued and the module has started closing the connection with 1008
 * "send queue full" (a client that cannot keep up reconnects and resumes from
 * its cursor rather than silently missing messages). */
int core_ws_send(core_ws_t *ws, int opcode, const void *data, size_t len);
/* Same contract, for a frame already encoded with core_ws_frame_header
 * followed by its payload (a broadcast encodes once for every recipient). */
int core_ws_send_frame(core_ws_t *ws, const void *frame, size_t len);
/* Starts the closing handshake: sends a close frame (code 0: without a code;
 * otherwise core_ws_close_code_valid(code) must hold; reason truncated to 123
 * bytes), then waits up to close_timeout_ms for the peer's close before
 * dropping TCP. Safe to call twice and from any callback. */
void core_ws_close(core_ws_t *ws, int code, const char *reason);

/* Per-connection user data (starts as the ud given to core_ws_accept). */
void *core_ws_ud(const core_ws_t *ws);
void core_ws_set_ud(core_ws_t *ws, void *ud);
/* Bytes queued for the peer and not yet taken by the kernel. */
size_t core_ws_queued(const core_ws_t *ws);
/* The peer's address, for logs. */
const char *core_ws_peer(const core_ws_t *ws);

#endif
