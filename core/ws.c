#include "core/ws.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"

/* ---------------------------------------------------------------- close codes */

bool core_ws_close_code_valid(int code)
{
    if (code >= 1000 && code <= 1003)
        return true;
    if (code >= 1007 && code <= 1014)
        return true;
    return code >= 3000 && code <= 4999;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Validator states: how many continuation bytes are still due, and whether
 * the next one has a narrowed range (which is how overlongs, surrogates and
 * code points past U+10FFFF are refused at their second byte). */
enum {
    U_ACCEPT = 0,
    U_NEED1, /* 80..BF then accept */
    U_NEED2, /* 80..BF then NEED1 */
    U_NEED3, /* 80..BF then NEED2 */
    U_E0,    /* A0..BF then NEED1: no overlong 3-byte forms */
    U_ED,    /* 80..9F then NEED1: no surrogates */
    U_F0,    /* 90..BF then NEED2: no overlong 4-byte forms */
    U_F4,    /* 80..8F then NEED2: nothing above U+10FFFF */
    U_REJECT,
};

static uint32_t utf8_lead(uint8_t c)
{
    if (c < 0x80)
        return U_ACCEPT;
    if (c < 0xC2) /* stray continuation, or C0/C1 overlong leads */
        return U_REJECT;
    if (c < 0xE0)
        return U_NEED1;
    if (c == 0xE0)
        return U_E0;
    if (c == 0xED)
        return U_ED;
    if (c < 0xF0)
        return U_NEED2;
    if (c == 0xF0)
        return U_F0;
    if (c < 0xF4)
        return U_NEED3;
    if (c == 0xF4)
        return U_F4;
    return U_REJECT;
}

bool core_ws_utf8_step(uint32_t *state, const uint8_t *p, size_t n)
{
    uint32_t s = *state;
    size_t i = 0;
    while (i < n) {
        if (s == U_ACCEPT) {
            /* Chat text is mostly ASCII: skip it eight bytes at a time. */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            while (i < n && p[i] < 0x80)
                i++;
            if (i == n)
                break;
            s = utf8_lead(p[i++]);
            if (s == U_REJECT)
                break;
            continue;
        }
        uint8_t c = p[i++];
        uint8_t lo = 0x80, hi = 0xBF;
        uint32_t next;
        switch (s) {
        case U_NEED1:
            next = U_ACCEPT;
            break;
        case U_NEED2:
            next = U_NEED1;
            break;
        case U_NEED3:
            next = U_NEED2;
            break;
        case U_E0:
            lo = 0xA0, next = U_NEED1;
            break;
        case U_ED:
            hi = 0x9F, next = U_NEED1;
            break;
        case U_F0:
            lo = 0x90, next = U_NEED2;
            break;
        case U_F4:
            hi = 0x8F, next = U_NEED2;
            break;
        default:
            next = U_REJECT;
            break;
        }
        if (c < lo || c > hi)
            next = U_REJECT;
        s = next;
        if (s == U_REJECT)
            break;
    }
    *state = s;
    return s != U_REJECT;
}

bool core_ws_utf8_valid(const uint8_t *p, size_t n)
{
    uint32_t s = CORE_WS_UTF8_ACCEPT;
    return core_ws_utf8_step(&s, p, n) && s == CORE_WS_UTF8_ACCEPT;
}

/* ---------------------------------------------------------------- encoding */

size_t core_ws_frame_header_ex(uint8_t out[CORE_WS_MAX_HEADER], int opcode, bool fin, size_t len,
                               const uint8_t *mask)
{
    size_t n;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    uint8_t mbit = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = (uint8_t)(mbit | len);
        n = 2;
    } else if (len <= 0xFFFF) {
        out[1] = mbit | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = mbit | 127;
        uint64_t l = len;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(l >> (56 - 8 * i));
        n = 10;
    }
    if (mask) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

size_t core_ws_frame_header(uint8_t out[10], int opcode, size_t len)
{
    uint8_t tmp[CORE_WS_MAX_HEADER];
    size_t n = core_ws_frame_header_ex(tmp, opcode, true, len, NULL);
    memcpy(out, tmp, n);
    return n;
}

void core_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset)
{
    size_t i = 0;
    /* Align to the mask phase, then XOR eight bytes at a time. */
    while (i < n && ((offset + i) & 3) != 0) {
        p[i] ^= mask[(offset + i) & 3];
        i++;
    }
    uint32_t m4;
    memcpy(&m4, mask, 4);
    uint64_t m8 = ((uint64_t)m4 << 32) | m4;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= m8;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++)
        p[i] ^= mask[(offset + i) & 3];
}

/* ---------------------------------------------------------------- scan */

/* The header length hdr[0..2) announces: 2, plus 2 or 8 of length, plus 4 of mask. */
static size_t scan_header_len(const uint8_t hdr[2])
{
    size_t len7 = hdr[1] & 0x7F;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((hdr[1] & 0x80) ? 4 : 0);
}

void core_ws_scan(core_ws_scan_t *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (s->skip > 0) {
            size_t k = s->skip < n ? (size_t)s->skip : n;
            s->skip -= k;
            p += k;
            n -= k;
            continue;
        }
        s->hdr[s->hdr_len++] = *p++;
        n--;
        if (s->hdr_len < 2 || s->hdr_len < scan_header_len(s->hdr))
            continue;
        size_t len7 = s->hdr[1] & 0x7F;
        uint64_t len = len7;
        if (len7 == 126) {
            len = ((uint64_t)s->hdr[2] << 8) | s->hdr[3];
        } else if (len7 == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | s->hdr[2 + i];
        }
        int opcode = s->hdr[0] & 0x0F;
        bool fin = (s->hdr[0] & 0x80) != 0;
        if (opcode == CORE_WS_CLOSE)
            s->saw_close = true;
        else if (opcode < CORE_WS_CLOSE) /* continuation, text, binary */
            s->in_message = !fin;
        s->skip = len;
        s->hdr_len = 0;
    }
}

bool core_ws_scan_between(const core_ws_scan_t *s)
{
    return s->skip == 0 && s->hdr_len == 0 && !s->in_message;
}

/* ---------------------------------------------------------------- parser */

enum { P_HEADER = 0, P_PAYLOAD, P_FAILED };

static uint8_t empty[1]; /* payload of empty frames: never written */

void core_ws_parser_init(core_ws_parser_t *p, uint64_t max_frame, uint64_t max_message,
                         bool expect_masked)
{
    memset(p, 0, sizeof *p);
    p->max_frame = max_frame;
    p->max_message = max_message;
    p->expect_masked = expect_masked;
    p->state = P_HEADER;
}

void core_ws_parser_free(core_ws_parser_t *p)
{
    free(p->ctl);
    p->ctl = NULL;
}

static size_t fail(core_ws_parser_t *p, core_ws_event_t *ev, int code, const char *reason,
                   size_t consumed)
{
    p->state = P_FAILED;
    p->err_code = (uint16_t)code;
    p->err_reason = reason;
    ev->type = CORE_WS_EV_ERROR;
    ev->code = code;
    ev->reason = reason;
    ev->reason_len = strlen(reason);
    return consumed;
}

/* Checks what the first two header bytes allow us to check, so that a bad
 * frame is refused before its length or payload arrives. */
static const char *check_first_bytes(core_ws_parser_t *p, uint8_t b0, uint8_t b1)
{
    int opcode = b0 & 0x0F;
    bool fin = b0 & 0x80;
    if (b0 & 0x70)
        return "reserved bits set";
    if ((opcode > CORE_WS_BINARY && opcode < CORE_WS_CLOSE) || opcode > CORE_WS_PONG)
        return "unknown opcode";
    bool masked = b1 & 0x80;
    if (p->expect_masked && !masked)
        return "client frame not masked";
    if (!p->expect_masked && masked)
        return "server frame masked";
    if (opcode & 0x08) {
        if (!fin)
            return "fragmented control frame";
        if ((b1 & 0x7F) > CORE_WS_MAX_CONTROL)
            return "control frame too long";
    } else if (opcode == CORE_WS_CONT) {
        if (!p->msg_opcode)
            return "continuation without a message";
    } else if (p->msg_opcode) {
        return "new message inside a fragmented one";
    }
    return NULL;
}

static size_t header_size(uint8_t b1)
{
    size_t n = 2;
    if ((b1 & 0x7F) == 126)
        n += 2;
    else if ((b1 & 0x7F) == 127)
        n += 8;
    if (b1 & 0x80)
        n += 4;
    return n;
}

/* Validates a complete close payload and fills the event's code and reason. */
static int check_close(core_ws_parser_t *p, core_ws_event_t *ev, uint8_t *data, size_t len,
                       const char **reason)
{
    ev->code = CORE_WS_CLOSE_NO_STATUS;
    ev->reason = "";
    ev->reason_len = 0;
    if (len == 0)
        return 0;
    if (len == 1) {
        *reason = "close frame with a 1-byte payload";
        return CORE_WS_CLOSE_PROTOCOL;
    }
    int code = (data[0] << 8) | data[1];
    if (!core_ws_close_code_valid(code)) {
        *reason = "invalid close code";
        return CORE_WS_CLOSE_PROTOCOL;
    }
    if (!core_ws_utf8_valid(data + 2, len - 2)) {
        *reason = "close reason not UTF-8";
        return CORE_WS_CLOSE_INVALID_DATA;
    }
    ev->code = code;
    ev->reason = (const char *)data + 2;
    ev->reason_len = len - 2;
    return 0;
}

static size_t emit_control(core_ws_parser_t *p, core_ws_event_t *ev, uint8_t *payload,
                           size_t consumed)
{
    p->state = P_HEADER;
    ev->type = CORE_WS_EV_CONTROL;
    ev->opcode = p->opcode;
    ev->data = payload;
    ev->len = (size_t)p->frame_len;
    if (p->opcode == CORE_WS_CLOSE) {
        const char *reason = NULL;
        int code = check_close(p, ev, payload, ev->len, &reason);
        if (code)
            return fail(p, ev, code, reason, consumed);
    }
    return consumed;
}

/* The whole header is in p->hdr: decode the length and mask, start the frame. */
static size_t start_frame(core_ws_parser_t *p, core_ws_event_t *ev, size_t consumed)
{
    uint8_t *h = p->hdr;
    p->fin = h[0] & 0x80;
    p->opcode = h[0] & 0x0F;
    p->masked = h[1] & 0x80;
    uint64_t len = h[1] & 0x7F;
    size_t off = 2;
    if (len == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
        off = 4;
    } else if (len == 127) {
        if (h[2] & 0x80)
            return fail(p, ev, CORE_WS_CLOSE_PROTOCOL, "frame length has its top bit set",
                        consumed);
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | h[2 + i];
        off = 10;
    }
    if (p->masked)
        memcpy(p->mask, h + off, 4);
    if (len > p->max_frame)
        return fail(p, ev, CORE_WS_CLOSE_TOO_BIG, "frame too big", consumed);
    p->frame_len = len;
    p->frame_got = 0;
    p->hdr_len = 0;
    p->state = P_PAYLOAD;
    if (p->opcode & 0x08) {
        p->ctl_len = 0;
        if (len == 0)
            return emit_control(p, ev, empty, consumed);
        return consumed;
    }
    if (p->opcode != CORE_WS_CONT) {
        p->msg_opcode = p->opcode;
        p->msg_len = 0;
        p->msg_first = true;
        p->utf8 = CORE_WS_UTF8_ACCEPT;
    }
    if (p->msg_len + len > p->max_message)
        return fail(p, ev, CORE_WS_CLOSE_TOO_BIG, "message too big", consumed);
    if (len == 0) {
        /* An empty frame still moves the message along (and may end it). */
        p->state = P_HEADER;
        ev->type = CORE_WS_EV_DATA;
        ev->opcode = p->msg_opcode;
        ev->data = empty;
        ev->len = 0;
        ev->first = p->msg_first;
        ev->last = p->fin;
        p->msg_first = false;
        if (p->fin) {
            if (p->msg_opcode == CORE_WS_TEXT && p->utf8 != CORE_WS_UTF8_ACCEPT)
                return fail(p, ev, CORE_WS_CLOSE_INVALID_DATA, "truncated UTF-8", consumed);
            p->msg_opcode = 0;
        }
    }
    return consumed;
}

size_t core_ws_parse(core_ws_parser_t *p, uint8_t *data, size_t len, core_ws_event_t *ev)
{
    memset(ev, 0, sizeof *ev);
    if (p->state == P_FAILED) {
        fail(p, ev, p->err_code, p->err_reason, 0);
        return len;
    }
    /* A split control payload is handed out from ctl until this next call. */
    if (p->ctl && p->state == P_HEADER) {
        free(p->ctl);
        p->ctl = NULL;
    }
    size_t off = 0;
    while (off < len) {
        if (p->state == P_HEADER) {
            /* Buffer header bytes (at most 14) until the header is whole. */
            if (p->hdr_len < 2) {
                p->hdr[p->hdr_len++] = data[off++];
                if (p->hdr_len < 2)
                    continue;
                const char *why = check_first_bytes(p, p->hdr[0], p->hdr[1]);
                if (why)
                    return fail(p, ev, CORE_WS_CLOSE_PROTOCOL, why, off);
            }
            size_t need = header_size(p->hdr[1]) - p->hdr_len;
            size_t take = CORE_MIN(need, len - off);
            memcpy(p->hdr + p->hdr_len, data + off, take);
            p->hdr_len = (uint8_t)(p->hdr_len + take);
            off += take;
            if (take < need)
                break;
            off = start_frame(p, ev, off);
            if (ev->type != CORE_WS_EV_NONE)
                return off;
            continue;
        }

        /* P_PAYLOAD */
        size_t avail = (size_t)CORE_MIN((uint64_t)(len - off), p->frame_len - p->frame_got);
        uint8_t *chunk = data + off;
        if (p->masked)
            core_ws_mask(chunk, avail, p->mask, p->frame_got);

        if (p->opcode & 0x08) {
            if (p->frame_got == 0 && avail == p->frame_len) {
                /* Whole control payload in this input: hand it out in place. */
                off += avail;
                return emit_control(p, ev, chunk, off);
            }
            if (!p->ctl)
                p->ctl = core_xmalloc(CORE_WS_MAX_CONTROL);
            memcpy(p->ctl + p->ctl_len, chunk, avail);
            p->ctl_len = (uint8_t)(p->ctl_len + avail);
            p->frame_got += avail;
            off += avail;
            if (p->frame_got < p->frame_len)
                continue;
            return emit_control(p, ev, p->ctl, off);
        }

        if (p->msg_opcode == CORE_WS_TEXT && !core_ws_utf8_step(&p->utf8, chunk, avail))
            return fail(p, ev, CORE_WS_CLOSE_INVALID_DATA, "invalid UTF-8", off + avail);
        p->frame_got += avail;
        p->msg_len += avail;
        off += avail;
        bool frame_done = p->frame_got == p->frame_len;
        ev->type = CORE_WS_EV_DATA;
        ev->opcode = p->msg_opcode;
        ev->data = chunk;
        ev->len = avail;
        ev->first = p->msg_first;
        ev->last = frame_done && p->fin;
        p->msg_first = false;
        if (frame_done) {
            p->state = P_HEADER;
            if (p->fin) {
                if (p->msg_opcode == CORE_WS_TEXT && p->utf8 != CORE_WS_UTF8_ACCEPT)
                    return fail(p, ev, CORE_WS_CLOSE_INVALID_DATA, "truncated UTF-8", off);
                p->msg_opcode = 0;
            }
        }
        return off;
    }
    return off;
}

/* ---------------------------------------------------------------- handshake */

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

void core_ws_accept_key(const char *key, size_t key_len, char out[29])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        abort(); /* out of memory */
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) && EVP_DigestUpdate(ctx, key, key_len) &&
             EVP_DigestUpdate(ctx, ws_guid, sizeof ws_guid - 1) &&
             EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    assert(ok && mdlen == 20);
    (void)ok;
    sodium_bin2base64(out, 29, md, 20, sodium_base64_VARIANT_ORIGINAL);
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static void trim(const char **s, size_t *n)
{
    while (*n && is_ows(**s))
        (*s)++, (*n)--;
    while (*n && is_ows((*s)[*n - 1]))
        (*n)--;
}

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool name_is(const core_http_header_t *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* Calls fn for each comma-separated element of every `name` header; stops
 * and returns false when fn does. Empty elements are skipped (RFC 9110 §5.6.1). */
static bool each_element(const core_http_req_t *req, const char *name,
                         bool (*fn)(const char *s, size_t n, void *arg), void *arg)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const core_http_header_t *h = &req->headers[i];
        if (!name_is(h, name))
            continue;
        const char *v = h->value, *end = h->value + h->value_len;
        while (v < end) {
            const char *comma = memchr(v, ',', (size_t)(end - v));
            const char *stop = comma ? comma : end;
            const char *s = v;
            size_t n = (size_t)(stop - v);
            trim(&s, &n);
            if (n && !fn(s, n, arg))
                return false;
            v = comma ? comma + 1 : end;
        }
    }
    return true;
}

/* The value of the only `name` header, trimmed; NULL if absent; *count says
 * how many there were. */
static const char *single_header(const core_http_req_t *req, const char *name, size_t *len,
                                 int *count)
{
    const char *v = NULL;
    *count = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const core_http_header_t *h = &req->headers[i];
        if (!name_is(h, name))
            continue;
        if ((*count)++ == 0) {
            v = h->value;
            *len = h->value_len;
            trim(&v, len);
        }
    }
    return v;
}

static int bad(core_ws_handshake_t *out, int status, const char *code, const char *message)
{
    out->status = status;
    out->code = code;
    out->message = message;
    return -1;
}

int core_ws_handshake_check(const core_http_req_t *req, core_ws_handshake_t *out)
{
    static const char bad_code[] = "bad_websocket_handshake";
    memset(out, 0, sizeof *out);
    if (!req->method_name || strcmp(req->method_name, "GET") != 0)
        return bad(out, 400, bad_code, "a WebSocket handshake must be a GET request");
    if (req->http_minor < 1) /* RFC 6455 4.1: the handshake needs HTTP/1.1 */
        return bad(out, 400, bad_code, "a WebSocket handshake needs HTTP/1.1");
    size_t len = 0;
    int count;
    if (!single_header(req, "Host", &len, &count))
        return bad(out, 400, bad_code, "missing Host header");
    if (!core_http_header_has_token(req, "Upgrade", "websocket"))
        return bad(out, 400, bad_code, "missing Upgrade: websocket header");
    if (!core_http_header_has_token(req, "Connection", "upgrade"))
        return bad(out, 400, bad_code, "Connection header must contain the upgrade token");
    const char *ver = single_header(req, "Sec-WebSocket-Version", &len, &count);
    if (!ver || count != 1 || len != 2 || memcmp(ver, "13", 2) != 0)
        return bad(out, 426, "unsupported_websocket_version", "Sec-WebSocket-Version must be 13");
    const char *key = single_header(req, "Sec-WebSocket-Key", &len, &count);
    if (!key)
        return bad(out, 400, bad_code, "missing Sec-WebSocket-Key header");
    unsigned char bin[18];
    size_t binlen = 0;
    const char *end = NULL;
    if (count != 1 || len != 24 ||
        sodium_base642bin(bin, sizeof bin, key, len, NULL, &binlen, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        end != key + len || binlen != 16)
        return bad(out, 400, bad_code, "Sec-WebSocket-Key must be 16 bytes in base64");
    out->key = key;
    out->key_len = len;
    return 0;
}

struct proto_list {
    core_ws_token_t *out;
    size_t max;
    size_t n;
    bool bad;
};

static bool add_protocol(const char *s, size_t n, void *arg)
{
    struct proto_list *l = arg;
    for (size_t i = 0; i < n; i++) {
        if (!is_tchar((unsigned char)s[i])) {
            l->bad = true;
            return false;
        }
    }
    if (l->n == l->max) {
        l->bad = true;
        return false;
    }
    l->out[l->n].ptr = s;
    l->out[l->n].len = n;
    l->n++;
    return true;
}

int core_ws_offered_protocols(const core_http_req_t *req, core_ws_token_t *out, size_t max)
{
    struct proto_list l = {out, max, 0, false};
    each_element(req, "Sec-WebSocket-Protocol", add_protocol, &l);
    return l.bad ? -1 : (int)l.n;
}

/* ---------------------------------------------------------------- connections */

enum {
    WS_OPEN = 0, /* messages flow */
    WS_CLOSING,  /* our close frame is out; waiting for the peer's */
    WS_CLOSED,   /* TCP close requested; waiting for the connection's on_close */
};

struct core_ws_s {
    core_http_conn_t *conn;
    const core_ws_limits_t *limits;
    const core_ws_handlers_t *h;
    void *ud;
    core_buf_t msg; /* reassembly of a message split across frames or reads; empty between */
    core_ws_parser_t parser;
    uint32_t last_rx_ms; /* low 32 bits of the monotonic clock: differences wrap safely */
    uint32_t last_ping_ms;
    uint16_t sent_code; /* our close frame's code (0: none or without code) */
    uint16_t peer_code; /* the peer's close code, 0 until its close frame arrives */
    uint8_t state;
    uint8_t depth; /* nesting of our hooks on the stack: free only at depth 0 */
    bool gone;     /* the connection's on_close has run */
};

static struct {
    bool registered;
    core_metric_t conns, msgs_in, msgs_out, errors, rejected;
} m;

static void register_metrics(void)
{
    if (m.registered)
        return;
    m.registered = true;
    m.conns = core_metrics_gauge("meridian_ws_connections", "Open WebSocket connections", "");
    m.msgs_in = core_metrics_counter("meridian_ws_messages_received_total",
                                     "WebSocket messages received", "");
    m.msgs_out =
        core_metrics_counter("meridian_ws_messages_sent_total", "WebSocket messages sent", "");
    m.errors = core_metrics_counter("meridian_ws_protocol_errors_total",
                                    "WebSocket connections failed for a protocol error", "");
    m.rejected = core_metrics_counter("meridian_ws_handshakes_rejected_total",
                                      "WebSocket handshakes refused", "");
}

void core_ws_limits_default(core_ws_limits_t *l)
{
    l->max_frame_bytes = 1 << 20;
    l->max_message_bytes = 1 << 20;
    l->ping_interval_ms = 30000;
    l->idle_timeout_ms = 75000;
    l->max_queued_bytes = 4 << 20;
    l->close_timeout_ms = 3000;
}

static uint32_t now32(void)
{
    return (uint32_t)core_now_ms();
}

/* Writes a frame's header and payload; they are queued whole or not at all. */
static int write_frame(core_ws_t *ws, const void *hdr, size_t hlen, const void *payload,
                       size_t plen, bool limited)
{
    size_t limit = limited ? ws->limits->max_queued_bytes : 0;
    int rc = core_http_conn_write(ws->conn, hdr, hlen, limit);
    if (rc == 0 && plen)
        rc = core_http_conn_write(ws->conn, payload, plen, 0);
    if (rc == UV_ENOBUFS) {
        core_log_info("ws.send_queue_full", "peer=%s queued=%zu", core_http_conn_peer(ws->conn),
                      core_http_conn_queued(ws->conn));
        core_ws_close(ws, CORE_WS_CLOSE_POLICY, "send queue full");
    }
    return rc;
}

static void send_close_frame(core_ws_t *ws, int code, const char *reason)
{
    /* Payload <= 125 bytes, so the header is two bytes and the frame is built whole. */
    uint8_t frame[2 + CORE_WS_MAX_CONTROL];
    size_t plen = 0;
    if (code) {
        assert(core_ws_close_code_valid(code));
        size_t rlen = reason ? strlen(reason) : 0;
        if (rlen > CORE_WS_MAX_REASON)
            rlen = CORE_WS_MAX_REASON;
        frame[2] = (uint8_t)(code >> 8);
        frame[3] = (uint8_t)code;
        if (rlen)
            memcpy(frame + 4, reason, rlen);
        plen = 2 + rlen;
    }
    frame[0] = 0x80 | CORE_WS_CLOSE;
    frame[1] = (uint8_t)plen;
    /* A close frame is never refused for a full queue: it is how we get out. */
    core_http_conn_write(ws->conn, frame, 2 + plen, 0);
    ws->sent_code = (uint16_t)code;
}

static void drop(core_ws_t *ws)
{
    if (ws->state == WS_CLOSED)
        return;
    ws->state = WS_CLOSED;
    core_http_conn_set_timer(ws->conn, 0);
    core_http_conn_close(ws->conn);
}

void core_ws_close(core_ws_t *ws, int code, const char *reason)
{
    if (ws->state != WS_OPEN)
        return;
    send_close_frame(ws, code, reason);
    ws->state = WS_CLOSING;
    if (ws->limits->close_timeout_ms)
        core_http_conn_set_timer(ws->conn, ws->limits->close_timeout_ms);
    else
        drop(ws);
}

/* Sends a close frame (if none went out yet) and closes TCP without waiting
 * for the peer's answer. */
static void close_now(core_ws_t *ws, int code, const char *reason)
{
    if (ws->state == WS_OPEN)
        send_close_frame(ws, code, reason);
    drop(ws);
}

/* Fails the connection (RFC 6455 §7.1.7): close frame with the error's code, then TCP. */
static void fail_conn(core_ws_t *ws, int code, const char *reason)
{
    char q[128];
    core_log_info("ws.protocol_error", "peer=%s code=%d reason=%s", core_http_conn_peer(ws->conn),
                  code, core_log_quote(q, sizeof q, reason, strlen(reason)));
    core_metrics_add(m.errors, 1);
    close_now(ws, code, reason);
}

int core_ws_send(core_ws_t *ws, int opcode, const void *data, size_t len)
{
    assert(opcode == CORE_WS_TEXT || opcode == CORE_WS_BINARY || opcode == CORE_WS_PING ||
           opcode == CORE_WS_PONG);
    assert(!(opcode & 0x08) || len <= CORE_WS_MAX_CONTROL);
    if (ws->state != WS_OPEN)
        return UV_EPIPE;
    uint8_t hdr[10];
    size_t hlen = core_ws_frame_header(hdr, opcode, len);
    int rc = write_frame(ws, hdr, hlen, data, len, true);
    if (rc == 0 && !(opcode & 0x08))
        core_metrics_add(m.msgs_out, 1);
    return rc;
}

int core_ws_send_frame(core_ws_t *ws, const void *frame, size_t len)
{
    if (ws->state != WS_OPEN)
        return UV_EPIPE;
    int rc = write_frame(ws, frame, len, NULL, 0, true);
    if (rc == 0)
        core_metrics_add(m.msgs_out, 1);
    return rc;
}

void *core_ws_ud(const core_ws_t *ws)
{
    return ws->ud;
}

void core_ws_set_ud(core_ws_t *ws, void *ud)
{
    ws->ud = ud;
}

size_t core_ws_queued(const core_ws_t *ws)
{
    return core_http_conn_queued(ws->conn);
}

const char *core_ws_peer(const core_ws_t *ws)
{
    return core_http_conn_peer(ws->conn);
}

/* Calls on_close and frees ws: only once the connection is gone and none of
 * our hooks is on the stack. */
static void maybe_free(core_ws_t *ws)
{
    if (!ws->gone || ws->depth)
        return;
    int code = ws->peer_code          ? ws->peer_code
               : ws->sent_code        ? ws->sent_code
               : ws->state != WS_OPEN ? CORE_WS_CLOSE_NO_STATUS
                                      : CORE_WS_CLOSE_ABNORMAL;
    core_log_debug("ws.close", "code=%d", code);
    core_metrics_add(m.conns, -1);
    ws->state = WS_CLOSED; /* sends from on_close fail without touching the connection */
    if (ws->h->on_close)
        ws->h->on_close(ws, code, ws->ud);
    core_ws_parser_free(&ws->parser);
    core_buf_free(&ws->msg);
    free(ws);
}

static void deliver(core_ws_t *ws, int opcode, const uint8_t *data, size_t len)
{
    core_metrics_add(m.msgs_in, 1);
    if (ws->h->on_message)
        ws->h->on_message(ws, opcode, data, len, ws->ud);
}

/* Handles one parser event; returns false when parsing must stop. */
static bool handle_event(core_ws_t *ws, const core_ws_event_t *ev)
{
    switch (ev->type) {
    case CORE_WS_EV_NONE:
        return true;
    case CORE_WS_EV_DATA:
        if (ws->state != WS_OPEN) {
            /* After our close frame, messages are read only to reach the peer's close. */
            core_buf_free(&ws->msg);
            return true;
        }
        if (ev->first && ev->last) {
            deliver(ws, ev->opcode, ev->data, ev->len); /* zero-copy: the common case */
            return true;
        }
        core_buf_append(&ws->msg, ev->data, ev->len);
        if (ev->last) {
            deliver(ws, ev->opcode, ws->msg.base ? (uint8_t *)ws->msg.base : empty, ws->msg.len);
            /* Free, not reset: an idle connection keeps no buffer. */
            core_buf_free(&ws->msg);
        }
        return true;
    case CORE_WS_EV_CONTROL:
        if (ev->opcode == CORE_WS_PING) {
            if (ws->state == WS_OPEN) {
                uint8_t hdr[10];
                size_t hlen = core_ws_frame_header(hdr, CORE_WS_PONG, ev->len);
                write_frame(ws, hdr, hlen, ev->data, ev->len, true);
            }
            return true;
        }
        if (ev->opcode == CORE_WS_PONG)
            return true; /* liveness is any input at all; last_rx is already updated */
        /* close */
        ws->peer_code = (uint16_t)ev->code;
        if (ws->state == WS_OPEN) {
            int code = ev->code == CORE_WS_CLOSE_NO_STATUS ? CORE_WS_CLOSE_NORMAL : ev->code;
            send_close_frame(ws, code, NULL);
        }
        drop(ws); /* the server closes TCP first (RFC 6455 §7.1.1) */
        return false;
    case CORE_WS_EV_ERROR:
        fail_conn(ws, ev->code, ev->reason);
        return false;
    }
    return false;
}

/* Input is unmasked in place, but the connection hands it to us read-only:
 * copy it through one worker-wide scratch buffer rather than allocating. */
static uint8_t scratch[64 * 1024];
static bool scratch_busy;

static void on_data(void *ud, const char *data, size_t len)
{
    core_ws_t *ws = ud;
    if (ws->state == WS_CLOSED)
        return;
    ws->last_rx_ms = now32();
    ws->depth++;
    bool own = !scratch_busy; /* re-entry from a handler gets its own copy */
    uint8_t *buf = own ? scratch : core_xmalloc(sizeof scratch);
    scratch_busy = true;
    bool go = true;
    while (go && len > 0 && ws->state != WS_CLOSED) {
        size_t n = CORE_MIN(len, sizeof scratch);
        memcpy(buf, data, n);
        data += n;
        len -= n;
        size_t off = 0;
        while (go && off < n && ws->state != WS_CLOSED) {
            core_ws_event_t ev;
            off += core_ws_parse(&ws->parser, buf + off, n - off, &ev);
            go = handle_event(ws, &ev);
        }
    }
    if (own)
        scratch_busy = false;
    else
        free(buf);
    ws->depth--;
    maybe_free(ws);
}

/* Arms the timer for the next ping or the idle deadline, whichever is first. */
static void arm_liveness(core_ws_t *ws)
{
    const core_ws_limits_t *l = ws->limits;
    uint32_t now = now32();
    uint32_t quiet = now - ws->last_rx_ms;
    uint32_t since_ping = now - ws->last_ping_ms;
    uint32_t wait = 0;
    if (l->ping_interval_ms) {
        uint32_t since = CORE_MIN(quiet, since_ping);
        wait = since >= l->ping_interval_ms ? 1 : l->ping_interval_ms - since;
    }
    if (l->idle_timeout_ms) {
        uint32_t idle = quiet >= l->idle_timeout_ms ? 1 : l->idle_timeout_ms - quiet;
        wait = wait ? CORE_MIN(wait, idle) : idle;
    }
    core_http_conn_set_timer(ws->conn, wait);
}

static void on_timeout(void *ud)
{
    core_ws_t *ws = ud;
    ws->depth++;
    if (ws->state == WS_CLOSING) {
        core_log_debug("ws.close_timeout", "peer=%s", core_http_conn_peer(ws->conn));
        drop(ws);
    } else if (ws->state == WS_OPEN) {
        const core_ws_limits_t *l = ws->limits;
        uint32_t now = now32();
        uint32_t quiet = now - ws->last_rx_ms;
        if (l->idle_timeout_ms && quiet >= l->idle_timeout_ms) {
            core_log_info("ws.idle_timeout", "peer=%s quiet_ms=%u", core_http_conn_peer(ws->conn),
                          quiet);
            /* A peer silent this long will not answer a close either: don't wait for it. */
            close_now(ws, CORE_WS_CLOSE_GOING_AWAY, "idle timeout");
        } else {
            /* Ping only a connection that has been quiet: any input proves liveness. */
            if (l->ping_interval_ms &&
                CORE_MIN(quiet, now - ws->last_ping_ms) >= l->ping_interval_ms) {
                ws->last_ping_ms = now;
                core_ws_send(ws, CORE_WS_PING, NULL, 0);
            }
            if (ws->state == WS_OPEN)
                arm_liveness(ws);
        }
    }
    ws->depth--;
    maybe_free(ws);
}

static void on_drain(void *ud)
{
    core_ws_t *ws = ud;
    ws->depth++;
    if (ws->h->on_drain)
        ws->h->on_drain(ws, ws->ud);
    core_ws_close(ws, CORE_WS_CLOSE_GOING_AWAY, "server shutting down");
    ws->depth--;
    maybe_free(ws);
}

static void on_conn_close(void *ud)
{
    core_ws_t *ws = ud;
    ws->gone = true;
    maybe_free(ws);
}

static void on_writable(void *ud)
{
    core_ws_t *ws = ud;
    if (ws->h->on_writable && ws->state == WS_OPEN && !ws->gone) {
        ws->depth++;
        ws->h->on_writable(ws, ws->ud);
        ws->depth--;
        maybe_free(ws);
    }
}

static const core_http_upgrade_hooks_t ws_hooks = {
    .on_data = on_data,
    .on_timeout = on_timeout,
    .on_drain = on_drain,
    .on_close = on_conn_close,
    .on_writable = on_writable,
};

static void reject(core_http_req_t *req, int status, const char *code, const char *message)
{
    core_metrics_add(m.rejected, 1);
    core_log_info("ws.handshake_rejected", "status=%d code=%s", status, code);
    if (status != 426) {
        core_http_respond_error(req, status, code, message);
        return;
    }
    /* 426 must name the version we speak (RFC 6455 §4.4). */
    core_buf_t body;
    core_buf_init(&body);
    core_jw_t w;
    core_jw_init(&w, &body);
    core_jw_obj_open(&w);
    core_jw_key(&w, "error");
    core_jw_obj_open(&w);
    core_jw_key(&w, "code");
    core_jw_str(&w, code);
    core_jw_key(&w, "message");
    core_jw_str(&w, message);
    core_jw_obj_close(&w);
    core_jw_obj_close(&w);
    core_http_respond(req, 426, "application/json", "Sec-WebSocket-Version: 13\r\n", body.base,
                      body.len);
    core_buf_free(&body);
}

core_ws_t *core_ws_accept(core_http_req_t *req, const core_ws_limits_t *limits,
                          const core_ws_handlers_t *h, void *ud)
{
    register_metrics();
    core_ws_handshake_t hs;
    if (core_ws_handshake_check(req, &hs) < 0) {
        reject(req, hs.status, hs.code, hs.message);
        return NULL;
    }
    core_ws_token_t offered[CORE_WS_MAX_PROTOCOLS];
    int n = core_ws_offered_protocols(req, offered, CORE_WS_MAX_PROTOCOLS);
    if (n < 0) {
        reject(req, 400, "bad_websocket_handshake",
               "Sec-WebSocket-Protocol must be a list of at most 16 tokens");
        return NULL;
    }
    int sel = -1;
    if (h->select_protocol) {
        sel = h->select_protocol(req, offered, (size_t)n, ud);
        if (sel == CORE_WS_REJECTED) {
            core_metrics_add(m.rejected, 1);
            return NULL;
        }
        assert(sel >= -1 && sel < n);
    }

    char accept[29];
    core_ws_accept_key(hs.key, hs.key_len, accept);
    core_buf_t head;
    core_buf_init(&head);
    core_buf_appendf(&head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
                     accept);
    if (sel >= 0)
        core_buf_appendf(&head, "Sec-WebSocket-Protocol: %.*s\r\n", (int)offered[sel].len,
                         offered[sel].ptr);
    core_buf_puts(&head, "\r\n");

    core_ws_t *ws = core_xcalloc(1, sizeof *ws);
    ws->conn = req->conn;
    ws->limits = limits;
    ws->h = h;
    ws->ud = ud;
    core_buf_init(&ws->msg);
    core_ws_parser_init(&ws->parser, limits->max_frame_bytes, limits->max_message_bytes, true);
    ws->last_rx_ms = ws->last_ping_ms = now32();
    ws->state = WS_OPEN;

    int rc = core_http_upgrade(req, head.base, head.len, &ws_hooks, ws);
    core_buf_free(&head);
    if (rc < 0) {
        core_log_error("ws.upgrade_failed", "err=%s", uv_strerror(rc));
        core_ws_parser_free(&ws->parser);
        free(ws);
        core_http_respond_error(req, 500, "internal", "WebSocket upgrade failed");
        return NULL;
    }
    core_metrics_add(m.conns, 1);
    core_log_debug("ws.open", "peer=%s", core_http_conn_peer(ws->conn));
    arm_liveness(ws);
    return ws;
}
