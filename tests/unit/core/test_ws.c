/* Unit tests for core/ws.c: the frame parser at every split point, masking,
 * each protocol error with its close code, UTF-8 validation, close codes and
 * the handshake. No sockets: everything here is pure logic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/core.h"
#include "core/ws.h"

static const uint8_t test_mask[4] = {0x37, 0xfa, 0x21, 0x3d};

/* ---- frame building ---- */

typedef struct {
    uint8_t b0;          /* FIN | RSV | opcode, verbatim */
    bool unmasked;       /* send without a mask (protocol error from a client) */
    const char *payload; /* NULL: len bytes of 'x' */
    size_t len;          /* used when payload is NULL, or for payloads with NULs */
} fspec_t;

/* Appends one frame to out, masked with test_mask unless f->unmasked. */
static void put_frame(core_buf_t *out, const fspec_t *f)
{
    size_t len = f->payload && !f->len ? strlen(f->payload) : f->len;
    uint8_t hdr[CORE_WS_MAX_HEADER];
    size_t hlen = core_ws_frame_header_ex(hdr, f->b0 & 0x0F, f->b0 & 0x80, len,
                                          f->unmasked ? NULL : test_mask);
    hdr[0] = f->b0; /* keep RSV bits exactly as specified */
    core_buf_append(out, hdr, hlen);
    size_t at = out->len;
    core_buf_reserve(out, len);
    if (f->payload)
        memcpy(out->base + at, f->payload, len);
    else
        memset(out->base + at, 'x', len);
    out->len += len;
    if (!f->unmasked)
        core_ws_mask((uint8_t *)out->base + at, len, test_mask, 0);
}

/* ---- event transcript ---- */

typedef struct {
    core_buf_t log; /* one entry per message or control frame, '|'-terminated */
    core_buf_t msg; /* reassembly */
    bool in_msg;
    int err; /* close code of the first error, 0 if none */
    size_t events;
} sink_t;

static void sink_init(sink_t *s)
{
    memset(s, 0, sizeof *s);
    core_buf_init(&s->log);
    core_buf_init(&s->msg);
}

static void sink_free(sink_t *s)
{
    core_buf_free(&s->log);
    core_buf_free(&s->msg);
}

static void put_hex(core_buf_t *b, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        core_buf_appendf(b, "%02x", p[i]);
}

static void record(sink_t *s, const core_ws_event_t *ev)
{
    s->events++;
    switch (ev->type) {
    case CORE_WS_EV_NONE:
        break;
    case CORE_WS_EV_DATA:
        assert_int_equal(ev->first, !s->in_msg);
        s->in_msg = !ev->last;
        core_buf_append(&s->msg, ev->data, ev->len);
        if (ev->last) {
            if (ev->opcode == CORE_WS_TEXT) {
                core_buf_puts(&s->log, "T:");
                core_buf_append(&s->log, s->msg.base, s->msg.len);
            } else {
                assert_int_equal(ev->opcode, CORE_WS_BINARY);
                core_buf_puts(&s->log, "B:");
                put_hex(&s->log, (uint8_t *)s->msg.base, s->msg.len);
            }
            core_buf_putc(&s->log, '|');
            core_buf_reset(&s->msg);
        }
        break;
    case CORE_WS_EV_CONTROL:
        if (ev->opcode == CORE_WS_CLOSE) {
            core_buf_appendf(&s->log, "CLOSE:%d:", ev->code);
            core_buf_append(&s->log, ev->reason, ev->reason_len);
        } else {
            core_buf_puts(&s->log, ev->opcode == CORE_WS_PING ? "PING:" : "PONG:");
            core_buf_append(&s->log, ev->data, ev->len);
        }
        core_buf_putc(&s->log, '|');
        break;
    case CORE_WS_EV_ERROR:
        if (!s->err)
            s->err = ev->code;
        assert_non_null(ev->reason);
        break;
    }
}

/* Feeds one chunk; stops at the first error. Returns false after an error. */
static bool feed(core_ws_parser_t *p, sink_t *s, uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        core_ws_event_t ev;
        size_t n = core_ws_parse(p, data + off, len - off, &ev);
        assert_true(n <= len - off);
        assert_true(n > 0 || ev.type != CORE_WS_EV_NONE);
        off += n;
        record(s, &ev);
        if (ev.type == CORE_WS_EV_ERROR)
            return false;
    }
    return true;
}

/* Parses stream split at the given cut points (ascending). The stream is
 * copied first because the parser unmasks in place. */
static void run_split(const core_buf_t *stream, const size_t *cuts, size_t ncuts, sink_t *s,
                      uint64_t max_frame, uint64_t max_message, bool expect_masked)
{
    uint8_t *copy = malloc(stream->len ? stream->len : 1);
    memcpy(copy, stream->base, stream->len);
    core_ws_parser_t p;
    core_ws_parser_init(&p, max_frame, max_message, expect_masked);
    size_t prev = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : stream->len;
        if (!feed(&p, s, copy + prev, end - prev))
            break;
        prev = end;
    }
    core_ws_parser_free(&p);
    free(copy);
}

/* ---- parsing a valid stream at every split point ---- */

static void build_valid_stream(core_buf_t *out, const char **expected)
{
    static char big[200];
    memset(big, 'a', sizeof big);
    const fspec_t frames[] = {
        {0x81, false, "Hello", 0},
        /* binary in three fragments, a ping and an empty continuation in between */
        {0x02, false, "\x00\x01", 2},
        {0x89, false, "p", 0},
        {0x00, false, NULL, 0},
        {0x80, false, "\xff", 0},
        /* 16-bit length */
        {0x81, false, big, sizeof big},
        /* a two-byte character split across fragments */
        {0x01, false, "\xce\xba\xe1", 0},
        {0x80, false, "\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 0},
        /* an empty text message */
        {0x81, false, "", 0},
        {0x8A, false, "", 0},
        {0x88, false,
         "\x03\xe8"
         "bye",
         0},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(frames); i++)
        put_frame(out, &frames[i]);
    static char exp[512];
    snprintf(exp, sizeof exp,
             "T:Hello|PING:p|B:0001ff|T:%.*s|T:\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5|T:|"
             "PONG:|CLOSE:1000:bye|",
             (int)sizeof big, big);
    *expected = exp;
}

static void test_parse_every_split(void **state)
{
    core_buf_t stream;
    core_buf_init(&stream);
    const char *expected;
    build_valid_stream(&stream, &expected);

    /* whole, then two pieces at every point */
    for (size_t k = 0; k <= stream.len; k++) {
        sink_t s;
        sink_init(&s);
        run_split(&stream, &k, 1, &s, 1 << 20, 1 << 20, true);
        assert_int_equal(s.err, 0);
        if (strcmp(core_buf_cstr(&s.log), expected) != 0)
            fail_msg("split at %zu: got %zu bytes '%s'", k, s.log.len, core_buf_cstr(&s.log));
        sink_free(&s);
    }
    /* three pieces at every pair of points */
    for (size_t i = 0; i <= stream.len; i++) {
        for (size_t j = i; j <= stream.len; j += 3) {
            size_t cuts[2] = {i, j};
            sink_t s;
            sink_init(&s);
            run_split(&stream, cuts, 2, &s, 1 << 20, 1 << 20, true);
            assert_int_equal(s.err, 0);
            assert_string_equal(core_buf_cstr(&s.log), expected);
            sink_free(&s);
        }
    }
    /* byte by byte */
    size_t *cuts = malloc(stream.len * sizeof *cuts);
    for (size_t i = 0; i < stream.len; i++)
        cuts[i] = i + 1;
    sink_t s;
    sink_init(&s);
    run_split(&stream, cuts, stream.len, &s, 1 << 20, 1 << 20, true);
    assert_string_equal(core_buf_cstr(&s.log), expected);
    sink_free(&s);
    free(cuts);
    core_buf_free(&stream);
}

static void test_parse_large_frame(void **state)
{
    /* 64-bit length, split at many points; the mask phase must carry over. */
    size_t n = 70000;
    uint8_t *payload = malloc(n);
    for (size_t i = 0; i < n; i++)
        payload[i] = (uint8_t)(i * 7 + 3);
    core_buf_t stream;
    core_buf_init(&stream);
    fspec_t f = {0x82, false, (const char *)payload, n};
    put_frame(&stream, &f);
    assert_int_equal((uint8_t)stream.base[1], 0x80 | 127);
    size_t cuts[] = {1, 5, 13, 14, 15, 1000, 1001, 4099, 65536, 69999, 70013};
    sink_t s;
    sink_init(&s);
    run_split(&stream, cuts, CORE_ARRAY_LEN(cuts), &s, 1 << 20, 1 << 20, true);
    assert_int_equal(s.err, 0);
    core_buf_t exp;
    core_buf_init(&exp);
    core_buf_puts(&exp, "B:");
    put_hex(&exp, payload, n);
    core_buf_putc(&exp, '|');
    assert_string_equal(core_buf_cstr(&s.log), core_buf_cstr(&exp));
    core_buf_free(&exp);
    sink_free(&s);
    core_buf_free(&stream);
    free(payload);
}

static void test_parse_non_minimal_length(void **state)
{
    /* RFC 6455 asks for minimal lengths but we accept longer encodings. */
    const uint8_t raw[] = {
        0x81, 0xFE, 0x00, 0x02, 0, 0, 0, 0, 'h', 'i',                        /* 16-bit for 2 */
        0x81, 0xFF, 0,    0,    0, 0, 0, 0, 0,   0x02, 0, 0, 0, 0, 'y', 'o', /* 64-bit for 2 */
    };
    core_buf_t stream;
    core_buf_init(&stream);
    core_buf_append(&stream, raw, sizeof raw);
    for (size_t k = 0; k <= stream.len; k++) {
        sink_t s;
        sink_init(&s);
        run_split(&stream, &k, 1, &s, 1 << 20, 1 << 20, true);
        assert_int_equal(s.err, 0);
        assert_string_equal(core_buf_cstr(&s.log), "T:hi|T:yo|");
        sink_free(&s);
    }
    core_buf_free(&stream);
}

static void test_parse_client_side(void **state)
{
    /* A client parser takes unmasked server frames and refuses masked ones. */
    core_buf_t stream;
    core_buf_init(&stream);
    fspec_t ok[] = {{0x81, true, "hey", 0}, {0x89, true, "", 0}};
    put_frame(&stream, &ok[0]);
    put_frame(&stream, &ok[1]);
    sink_t s;
    sink_init(&s);
    run_split(&stream, NULL, 0, &s, 1 << 20, 1 << 20, false);
    assert_int_equal(s.err, 0);
    assert_string_equal(core_buf_cstr(&s.log), "T:hey|PING:|");
    sink_free(&s);

    core_buf_reset(&stream);
    fspec_t bad = {0x81, false, "hey", 0};
    put_frame(&stream, &bad);
    sink_init(&s);
    run_split(&stream, NULL, 0, &s, 1 << 20, 1 << 20, false);
    assert_int_equal(s.err, CORE_WS_CLOSE_PROTOCOL);
    sink_free(&s);
    core_buf_free(&stream);
}

static void test_parse_split_control_payload(void **state)
{
    /* A control frame split across inputs is buffered and handed out whole. */
    core_buf_t stream;
    core_buf_init(&stream);
    char ping[125];
    memset(ping, 'q', sizeof ping);
    fspec_t f = {0x89, false, ping, sizeof ping};
    put_frame(&stream, &f);
    fspec_t t = {0x81, false, "after", 0};
    put_frame(&stream, &t);
    size_t cuts[] = {10, 70, 100};
    sink_t s;
    sink_init(&s);
    run_split(&stream, cuts, 3, &s, 1 << 20, 1 << 20, true);
    char exp[200];
    snprintf(exp, sizeof exp, "PING:%.*s|T:after|", 125, ping);
    assert_string_equal(core_buf_cstr(&s.log), exp);
    sink_free(&s);
    core_buf_free(&stream);
}

/* ---- protocol errors ---- */

typedef struct {
    const char *name;
    fspec_t frames[4];
    int code;
} err_case_t;

#define MAX_FRAME 1000
#define MAX_MESSAGE 1500

static const err_case_t err_cases[] = {
    {"unmasked client frame", {{0x81, true, "hi", 0}}, 1002},
    {"rsv1", {{0xC1, false, "hi", 0}}, 1002},
    {"rsv2", {{0xA1, false, "hi", 0}}, 1002},
    {"rsv3", {{0x91, false, "hi", 0}}, 1002},
    {"rsv on a ping", {{0xC9, false, "", 0}}, 1002},
    {"opcode 3", {{0x83, false, "", 0}}, 1002},
    {"opcode 7", {{0x87, false, "", 0}}, 1002},
    {"opcode 0xB", {{0x8B, false, "", 0}}, 1002},
    {"opcode 0xF", {{0x8F, false, "x", 0}}, 1002},
    {"fragmented ping", {{0x09, false, "p", 0}}, 1002},
    {"fragmented pong", {{0x0A, false, "", 0}}, 1002},
    {"fragmented close", {{0x08, false, "", 0}}, 1002},
    {"ping over 125 bytes", {{0x89, false, NULL, 126}}, 1002},
    {"close over 125 bytes", {{0x88, false, NULL, 200}}, 1002},
    {"continuation first", {{0x80, false, "x", 0}}, 1002},
    {"unfinished continuation first", {{0x00, false, "x", 0}}, 1002},
    {"continuation after a whole message", {{0x81, false, "a", 0}, {0x80, false, "b", 0}}, 1002},
    {"text inside a fragmented text", {{0x01, false, "a", 0}, {0x81, false, "b", 0}}, 1002},
    {"binary inside a fragmented text", {{0x01, false, "a", 0}, {0x02, false, "b", 0}}, 1002},
    {"text inside fragmented binary after a ping",
     {{0x02, false, "a", 0}, {0x89, false, "", 0}, {0x81, false, "b", 0}},
     1002},
    {"frame over max_frame", {{0x82, false, NULL, MAX_FRAME + 1}}, 1009},
    {"message over max_message", {{0x02, false, NULL, 1000}, {0x80, false, NULL, 501}}, 1009},
    {"message over max_message in 3 frames",
     {{0x01, false, NULL, 600}, {0x00, false, NULL, 600}, {0x80, false, NULL, 301}},
     1009},
    {"invalid UTF-8 byte", {{0x81, false, "\xff", 0}}, 1007},
    {"overlong NUL", {{0x81, false, "\xc0\x80", 0}}, 1007},
    {"surrogate", {{0x81, false, "\xed\xa0\x80", 0}}, 1007},
    {"above U+10FFFF", {{0x81, false, "\xf4\x90\x80\x80", 0}}, 1007},
    {"truncated UTF-8", {{0x81, false, "a\xce", 0}}, 1007},
    {"truncated across fragments", {{0x01, false, "\xe2\x82", 0}, {0x80, false, "", 0}}, 1007},
    {"invalid in a later fragment",
     {{0x01, false, "\xce\xba\xe1\xbd\xb9", 0},
      {0x00, false, "\xf4\x90\x80\x80", 0},
      {0x80, false, "edited", 0}},
     1007},
    {"close with 1-byte payload", {{0x88, false, "\x03", 0}}, 1002},
    {"close code 0", {{0x88, false, "\x00\x00", 2}}, 1002},
    {"close code 999", {{0x88, false, "\x03\xe7", 0}}, 1002},
    {"close code 1004", {{0x88, false, "\x03\xec", 0}}, 1002},
    {"close code 1005", {{0x88, false, "\x03\xed", 0}}, 1002},
    {"close code 1006", {{0x88, false, "\x03\xee", 0}}, 1002},
    {"close code 1015", {{0x88, false, "\x03\xf7", 0}}, 1002},
    {"close code 1016", {{0x88, false, "\x03\xf8", 0}}, 1002},
    {"close code 2999", {{0x88, false, "\x0b\xb7", 0}}, 1002},
    {"close code 5000", {{0x88, false, "\x13\x88", 0}}, 1002},
    {"close code 65535", {{0x88, false, "\xff\xff", 0}}, 1002},
    {"close reason not UTF-8", {{0x88, false, "\x03\xe8\xff", 0}}, 1007},
    {"close reason with a surrogate", {{0x88, false, "\x03\xe8ok\xed\xbf\xbf", 0}}, 1007},
};

static void build_case(const err_case_t *c, core_buf_t *out)
{
    for (size_t i = 0; i < CORE_ARRAY_LEN(c->frames); i++) {
        if (!c->frames[i].b0 && !c->frames[i].payload && !c->frames[i].len)
            break;
        put_frame(out, &c->frames[i]);
    }
}

static void test_errors_table(void **state)
{
    for (size_t i = 0; i < CORE_ARRAY_LEN(err_cases); i++) {
        const err_case_t *c = &err_cases[i];
        core_buf_t stream;
        core_buf_init(&stream);
        build_case(c, &stream);
        for (size_t k = 0; k <= stream.len; k++) {
            sink_t s;
            sink_init(&s);
            run_split(&stream, &k, 1, &s, MAX_FRAME, MAX_MESSAGE, true);
            if (s.err != c->code)
                fail_msg("case '%s' split at %zu: got close code %d, want %d", c->name, k, s.err,
                         c->code);
            sink_free(&s);
        }
        core_buf_free(&stream);
    }
}

static void test_error_is_sticky(void **state)
{
    core_ws_parser_t p;
    core_ws_parser_init(&p, 100, 100, true);
    uint8_t bad[] = {0xC1, 0x80, 0, 0, 0, 0};
    core_ws_event_t ev;
    core_ws_parse(&p, bad, sizeof bad, &ev);
    assert_int_equal(ev.type, CORE_WS_EV_ERROR);
    assert_int_equal(ev.code, 1002);
    uint8_t good[] = {0x81, 0x80, 0, 0, 0, 0};
    assert_int_equal(core_ws_parse(&p, good, sizeof good, &ev), sizeof good);
    assert_int_equal(ev.type, CORE_WS_EV_ERROR);
    assert_int_equal(ev.code, 1002);
    core_ws_parser_free(&p);
}

static void test_error_64bit_msb(void **state)
{
    /* Refused at the header, before any payload arrives. */
    uint8_t raw[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    core_ws_parser_t p;
    core_ws_parser_init(&p, UINT64_MAX, UINT64_MAX, true);
    core_ws_event_t ev;
    core_ws_parse(&p, raw, sizeof raw, &ev);
    assert_int_equal(ev.type, CORE_WS_EV_ERROR);
    assert_int_equal(ev.code, 1002);
    core_ws_parser_free(&p);
}

static void test_error_fails_fast(void **state)
{
    /* Autobahn 6.4.x: invalid UTF-8 is reported as soon as its byte arrives,
     * without waiting for the rest of the frame or message. */
    const fspec_t f1 = {0x01, false, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 0};
    const fspec_t f2 = {0x00, false, "\xf4\x90\x80\x80", 0};
    core_buf_t head;
    core_buf_init(&head);
    put_frame(&head, &f1);
    size_t f2_start = head.len;
    put_frame(&head, &f2);
    /* Feed up to and including the 0x90 byte (header 6 bytes + 2 payload bytes) only. */
    sink_t s;
    sink_init(&s);
    core_ws_parser_t p;
    core_ws_parser_init(&p, 1 << 20, 1 << 20, true);
    feed(&p, &s, (uint8_t *)head.base, f2_start + 6 + 1);
    assert_int_equal(s.err, 0);
    feed(&p, &s, (uint8_t *)head.base + f2_start + 7, 1);
    assert_int_equal(s.err, 1007);
    core_ws_parser_free(&p);
    sink_free(&s);

    /* Also the header checks: a frame with RSV bits fails on its first two bytes. */
    uint8_t rsv[] = {0xC1, 0xFF};
    core_ws_parser_init(&p, 1 << 20, 1 << 20, true);
    core_ws_event_t ev;
    core_ws_parse(&p, rsv, 2, &ev);
    assert_int_equal(ev.type, CORE_WS_EV_ERROR);
    core_ws_parser_free(&p);
    core_buf_free(&head);
}

/* ---- close frames ---- */

static void test_close_valid(void **state)
{
    const int codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                         1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    for (size_t i = 0; i < CORE_ARRAY_LEN(codes); i++) {
        char pl[16];
        pl[0] = (char)(codes[i] >> 8);
        pl[1] = (char)codes[i];
        memcpy(pl + 2, "ok", 2);
        fspec_t f = {0x88, false, pl, 4};
        core_buf_t stream;
        core_buf_init(&stream);
        put_frame(&stream, &f);
        sink_t s;
        sink_init(&s);
        run_split(&stream, NULL, 0, &s, 1 << 20, 1 << 20, true);
        char exp[32];
        snprintf(exp, sizeof exp, "CLOSE:%d:ok|", codes[i]);
        assert_int_equal(s.err, 0);
        assert_string_equal(core_buf_cstr(&s.log), exp);
        sink_free(&s);
        core_buf_free(&stream);
    }
    /* no payload: 1005, "no status received" */
    core_buf_t stream;
    core_buf_init(&stream);
    fspec_t f = {0x88, false, "", 0};
    put_frame(&stream, &f);
    sink_t s;
    sink_init(&s);
    run_split(&stream, NULL, 0, &s, 1 << 20, 1 << 20, true);
    assert_string_equal(core_buf_cstr(&s.log), "CLOSE:1005:|");
    sink_free(&s);
    core_buf_free(&stream);
}

static void test_close_code_valid_table(void **state)
{
    static const struct {
        int code;
        bool valid;
    } cases[] = {
        {0, false},    {999, false},  {1000, true},  {1001, true},   {1002, true}, {1003, true},
        {1004, false}, {1005, false}, {1006, false}, {1007, true},   {1008, true}, {1009, true},
        {1010, true},  {1011, true},  {1012, true},  {1013, true},   {1014, true}, {1015, false},
        {1016, false}, {1100, false}, {2000, false}, {2999, false},  {3000, true}, {3999, true},
        {4000, true},  {4999, true},  {5000, false}, {65535, false}, {-1, false},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++)
        if (core_ws_close_code_valid(cases[i].code) != cases[i].valid)
            fail_msg("close code %d: want valid=%d", cases[i].code, cases[i].valid);
}

/* ---- UTF-8 ---- */

typedef struct {
    const char *s;
    int fail_at; /* -1: valid; index of the byte that must be rejected; len: truncated */
} utf8_case_t;

static const utf8_case_t utf8_cases[] = {
    {"", -1},
    {"hello", -1},
    {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", -1}, /* κόσμε */
    {"\x7f", -1},
    {"\xc2\x80", -1},         /* U+0080 */
    {"\xdf\xbf", -1},         /* U+07FF */
    {"\xe0\xa0\x80", -1},     /* U+0800 */
    {"\xed\x9f\xbf", -1},     /* U+D7FF */
    {"\xee\x80\x80", -1},     /* U+E000 */
    {"\xef\xbf\xbf", -1},     /* U+FFFF */
    {"\xf0\x90\x80\x80", -1}, /* U+10000 */
    {"\xf4\x8f\xbf\xbf", -1}, /* U+10FFFF */
    {"0123456789abcdef0123456789\xce\xba", -1},
    {"\x80", 0}, /* stray continuation */
    {"\xbf", 0},
    {"\xc0\x80", 0},     /* overlong NUL */
    {"\xc1\xbf", 0},     /* overlong */
    {"\xe0\x80\xaf", 1}, /* overlong 3-byte */
    {"\xe0\x9f\xbf", 1},
    {"\xf0\x80\x80\xaf", 1}, /* overlong 4-byte */
    {"\xf0\x8f\xbf\xbf", 1},
    {"\xed\xa0\x80", 1},             /* U+D800 */
    {"\xed\xbf\xbf", 1},             /* U+DFFF */
    {"\xed\xa0\x80\xed\xb0\x80", 1}, /* surrogate pair encoded in UTF-8 */
    {"\xf4\x90\x80\x80", 1},         /* U+110000 */
    {"\xf5\x80\x80\x80", 0},
    {"\xf8\x88\x80\x80\x80", 0}, /* 5-byte form */
    {"\xfe", 0},
    {"\xff", 0},
    {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
     "edited",
     12},
    {"\xce", 1}, /* truncated: only at the end */
    {"\xe0\xa0", 2},
    {"\xf0\x90\x80", 3},
    {"a\xce\xba\xe1", 4},
    {"\xce\xbaX\x80", 3},
    {"\xce\x41", 1}, /* continuation expected */
    {"0123456789abcdef\xe2\x82", 18},
};

static void test_utf8_table(void **state)
{
    for (size_t i = 0; i < CORE_ARRAY_LEN(utf8_cases); i++) {
        const utf8_case_t *c = &utf8_cases[i];
        const uint8_t *p = (const uint8_t *)c->s;
        size_t n = strlen(c->s);
        bool want = c->fail_at < 0;
        if (core_ws_utf8_valid(p, n) != want)
            fail_msg("utf8 case %zu: want valid=%d", i, want);
        /* Byte by byte: rejection happens exactly at fail_at. */
        uint32_t st = CORE_WS_UTF8_ACCEPT;
        int rejected_at = -1;
        for (size_t k = 0; k < n; k++) {
            if (!core_ws_utf8_step(&st, p + k, 1)) {
                rejected_at = (int)k;
                break;
            }
        }
        if (rejected_at < 0 && st != CORE_WS_UTF8_ACCEPT)
            rejected_at = (int)n;
        if (rejected_at != c->fail_at)
            fail_msg("utf8 case %zu: rejected at %d, want %d", i, rejected_at, c->fail_at);
        /* Two pieces at every point agree with the whole. */
        for (size_t k = 0; k <= n; k++) {
            st = CORE_WS_UTF8_ACCEPT;
            bool ok = core_ws_utf8_step(&st, p, k) && core_ws_utf8_step(&st, p + k, n - k) &&
                      st == CORE_WS_UTF8_ACCEPT;
            if (ok != want)
                fail_msg("utf8 case %zu split at %zu: got %d", i, k, ok);
        }
    }
}

static void test_utf8_fragmented_messages(void **state)
{
    /* Each invalid string sent as a text message in one-byte fragments must
     * fail with 1007 before the fragment after the offending byte is read;
     * valid strings must go through whole. */
    for (size_t i = 0; i < CORE_ARRAY_LEN(utf8_cases); i++) {
        const utf8_case_t *c = &utf8_cases[i];
        size_t n = strlen(c->s);
        core_buf_t stream;
        core_buf_init(&stream);
        size_t *ends = calloc(n + 2, sizeof *ends);
        for (size_t k = 0; k < n; k++) {
            fspec_t f = {(uint8_t)((k ? 0x00 : 0x01) | (k + 1 == n ? 0x80 : 0)), false, c->s + k,
                         1};
            put_frame(&stream, &f);
            ends[k] = stream.len;
        }
        if (n == 0) {
            fspec_t f = {0x81, false, "", 0};
            put_frame(&stream, &f);
        }
        core_ws_parser_t p;
        core_ws_parser_init(&p, 1 << 20, 1 << 20, true);
        sink_t s;
        sink_init(&s);
        size_t prev = 0;
        int failed_frame = -1;
        for (size_t k = 0; k < (n ? n : 1); k++) {
            size_t end = n ? ends[k] : stream.len;
            if (!feed(&p, &s, (uint8_t *)stream.base + prev, end - prev)) {
                failed_frame = (int)k;
                break;
            }
            prev = end;
        }
        if (c->fail_at < 0) {
            assert_int_equal(s.err, 0);
            char exp[128];
            snprintf(exp, sizeof exp, "T:%s|", c->s);
            assert_string_equal(core_buf_cstr(&s.log), exp);
        } else {
            assert_int_equal(s.err, 1007);
            int want = c->fail_at < (int)n ? c->fail_at : (int)n - 1;
            if (failed_frame != want)
                fail_msg("utf8 case %zu: failed at fragment %d, want %d", i, failed_frame, want);
        }
        sink_free(&s);
        core_ws_parser_free(&p);
        free(ends);
        core_buf_free(&stream);
    }
}

/* ---- encoding and masking ---- */

static void test_frame_header(void **state)
{
    static const struct {
        int opcode;
        size_t len;
        size_t hlen;
        uint8_t want[10];
    } cases[] = {
        {CORE_WS_TEXT, 0, 2, {0x81, 0x00}},
        {CORE_WS_BINARY, 125, 2, {0x82, 0x7D}},
        {CORE_WS_TEXT, 126, 4, {0x81, 0x7E, 0x00, 0x7E}},
        {CORE_WS_TEXT, 65535, 4, {0x81, 0x7E, 0xFF, 0xFF}},
        {CORE_WS_BINARY, 65536, 10, {0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0}},
        {CORE_WS_BINARY, 0x123456789ull, 10, {0x82, 0x7F, 0, 0, 0, 1, 0x23, 0x45, 0x67, 0x89}},
        {CORE_WS_PING, 3, 2, {0x89, 0x03}},
        {CORE_WS_CLOSE, 2, 2, {0x88, 0x02}},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++) {
        uint8_t out[10];
        size_t n = core_ws_frame_header(out, cases[i].opcode, cases[i].len);
        assert_int_equal(n, cases[i].hlen);
        assert_memory_equal(out, cases[i].want, n);
    }
    uint8_t out[CORE_WS_MAX_HEADER];
    size_t n = core_ws_frame_header_ex(out, CORE_WS_TEXT, false, 5, test_mask);
    const uint8_t want[] = {0x01, 0x85, 0x37, 0xfa, 0x21, 0x3d};
    assert_int_equal(n, sizeof want);
    assert_memory_equal(out, want, n);
    n = core_ws_frame_header_ex(out, CORE_WS_BINARY, true, 70000, test_mask);
    assert_int_equal(n, 14);
}

static void test_masking(void **state)
{
    /* RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d. */
    uint8_t hello[] = "Hello";
    core_ws_mask(hello, 5, test_mask, 0);
    const uint8_t want[] = {0x7f, 0x9f, 0x4d, 0x51, 0x58};
    assert_memory_equal(hello, want, 5);
    /* Every offset and length agrees with the byte-wise definition. */
    uint8_t buf[64], ref[64];
    for (size_t off = 0; off < 9; off++) {
        for (size_t len = 0; len <= 40; len++) {
            for (size_t i = 0; i < len; i++)
                buf[i] = ref[i] = (uint8_t)(i * 31 + off);
            core_ws_mask(buf, len, test_mask, off);
            for (size_t i = 0; i < len; i++)
                ref[i] ^= test_mask[(off + i) % 4];
            assert_memory_equal(buf, ref, len);
        }
    }
}

/* ---- handshake ---- */

static void test_accept_key(void **state)
{
    /* RFC 6455 §1.3's example (its section 4.2.2 has the same key and answer). */
    char out[29];
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    core_ws_accept_key(key, strlen(key), out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#define MAX_H 8

typedef struct {
    const char *name;
    const char *method;
    const char *headers[MAX_H]; /* "Name: value" */
    int status;                 /* 0: valid */
    bool http10;                /* sent as HTTP/1.0 */
} hs_case_t;

#define GOOD_HEADERS                                                                               \
    "Host: example.com", "Upgrade: websocket", "Connection: Upgrade",                              \
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"

static const hs_case_t hs_cases[] = {
    {"valid", "GET", {GOOD_HEADERS}, 0},
    {"HTTP/1.0", "GET", {GOOD_HEADERS}, 400, true},
    {"case-insensitive values",
     "GET",
     {"host: x", "upgrade: WebSocket", "connection: keep-alive, UPGRADE",
      "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version: 13"},
     0},
    {"connection token in a second header",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: keep-alive", "Connection: upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"},
     0},
    {"POST", "POST", {GOOD_HEADERS}, 400},
    {"no Host",
     "GET",
     {"Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"},
     400},
    {"no Upgrade",
     "GET",
     {"Host: x", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"},
     400},
    {"Upgrade: h2c",
     "GET",
     {"Host: x", "Upgrade: h2c", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"},
     400},
    {"Connection without upgrade",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: keep-alive",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"},
     400},
    {"Connection: upgraded (not the token)",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: upgraded",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"},
     400},
    {"no version",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="},
     426},
    {"version 8",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 8"},
     426},
    {"version 13, 8",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13, 8"},
     426},
    {"no key",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"},
     400},
    {"short key",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: AAAA",
      "Sec-WebSocket-Version: 13"},
     400},
    {"key without padding",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ", "Sec-WebSocket-Version: 13"},
     400},
    {"key of 17 bytes",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAB", "Sec-WebSocket-Version: 13"},
     400},
    {"key with a bad character",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==", "Sec-WebSocket-Version: 13"},
     400},
    {"two keys",
     "GET",
     {"Host: x", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version: 13"},
     400},
};

/* Fills req from "Name: value" strings; storage lives in hdrs. */
static void make_req(core_http_req_t *req, core_http_header_t *hdrs, const char *method,
                     const char *const *lines, size_t max)
{
    memset(req, 0, sizeof *req);
    size_t n = 0;
    for (size_t i = 0; i < max && lines[i]; i++) {
        const char *colon = strchr(lines[i], ':');
        hdrs[n].name = lines[i];
        hdrs[n].name_len = (size_t)(colon - lines[i]);
        hdrs[n].value = colon + 2;
        hdrs[n].value_len = strlen(colon + 2);
        n++;
    }
    req->method_name = method;
    req->http_minor = 1;
    req->headers = hdrs;
    req->nheaders = n;
    req->path = "/ws";
    req->query = "";
}

static void test_handshake_table(void **state)
{
    for (size_t i = 0; i < CORE_ARRAY_LEN(hs_cases); i++) {
        const hs_case_t *c = &hs_cases[i];
        core_http_req_t req;
        core_http_header_t hdrs[MAX_H];
        make_req(&req, hdrs, c->method, c->headers, MAX_H);
        if (c->http10)
            req.http_minor = 0;
        core_ws_handshake_t hs;
        int rc = core_ws_handshake_check(&req, &hs);
        if (hs.status != c->status || (rc == 0) != (c->status == 0))
            fail_msg("handshake case '%s': status %d rc %d, want %d", c->name, hs.status, rc,
                     c->status);
        if (rc == 0) {
            assert_int_equal(hs.key_len, 24);
            assert_memory_equal(hs.key, "dGhlIHNhbXBsZSBub25jZQ==", 24);
        } else {
            assert_non_null(hs.code);
            assert_non_null(hs.message);
        }
    }
}

static void test_offered_protocols(void **state)
{
    static const struct {
        const char *headers[4];
        int n;
        const char *joined; /* tokens joined with '/' */
    } cases[] = {
        {{NULL}, 0, ""},
        {{"Sec-WebSocket-Protocol: chat"}, 1, "chat"},
        {{"Sec-WebSocket-Protocol: chat, superchat"}, 2, "chat/superchat"},
        {{"Sec-WebSocket-Protocol: a,b", "sec-websocket-protocol:  c , d"}, 4, "a/b/c/d"},
        {{"Sec-WebSocket-Protocol: meridian.v1, auth.eyJhbGciOi-_Xx.y"},
         2,
         "meridian.v1/auth.eyJhbGciOi-_Xx.y"},
        {{"Sec-WebSocket-Protocol: a b"}, -1, NULL},
        {{"Sec-WebSocket-Protocol: tok/en"}, -1, NULL},
        {{"Sec-WebSocket-Protocol: x=1"}, -1, NULL},
        {{"Sec-WebSocket-Protocol: 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"}, -1, NULL},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++) {
        core_http_req_t req;
        core_http_header_t hdrs[4];
        make_req(&req, hdrs, "GET", cases[i].headers, 4);
        core_ws_token_t toks[CORE_WS_MAX_PROTOCOLS];
        int n = core_ws_offered_protocols(&req, toks, CORE_WS_MAX_PROTOCOLS);
        if (n != cases[i].n)
            fail_msg("protocols case %zu: got %d, want %d", i, n, cases[i].n);
        if (n < 0)
            continue;
        char joined[128] = "";
        for (int k = 0; k < n; k++) {
            if (k)
                strcat(joined, "/");
            strncat(joined, toks[k].ptr, toks[k].len);
        }
        assert_string_equal(joined, cases[i].joined);
    }
}

static void test_limits_default(void **state)
{
    core_ws_limits_t l;
    core_ws_limits_default(&l);
    assert_true(l.max_frame_bytes > 0 && l.max_message_bytes >= l.max_frame_bytes);
    assert_true(l.ping_interval_ms < l.idle_timeout_ms);
    assert_true(l.close_timeout_ms > 0);
}

/* Appends one frame (header by core_ws_frame_header_ex, payload of n bytes
 * of 'x') to buf at *o. */
static void scan_put(uint8_t *buf, size_t *o, int opcode, bool fin, size_t n, const uint8_t *mask)
{
    *o += core_ws_frame_header_ex(buf + *o, opcode, fin, n, mask);
    memset(buf + *o, 'x', n);
    *o += n;
}

/* The scanner follows frames of every length form, masked or not, fed in
 * pieces split at every byte: between whole messages only at their ends,
 * never inside a fragmented message (a ping inside one does not end it),
 * and it notices a close. */
static void test_scan_boundaries(void **state)
{
    (void)state;
    static uint8_t buf[200000];
    size_t ends[16], nends = 0, o = 0;
    const uint8_t mask[4] = {1, 2, 3, 4};
    scan_put(buf, &o, CORE_WS_TEXT, true, 5, NULL);
    ends[nends++] = o;
    scan_put(buf, &o, CORE_WS_BINARY, true, 300, NULL); /* 16-bit length */
    ends[nends++] = o;
    scan_put(buf, &o, CORE_WS_TEXT, true, 70000, NULL); /* 64-bit length */
    ends[nends++] = o;
    scan_put(buf, &o, CORE_WS_TEXT, true, 126, mask); /* masked (a client's) */
    ends[nends++] = o;
    scan_put(buf, &o, CORE_WS_TEXT, false, 10, NULL); /* a fragmented message... */
    size_t in_msg1 = o;
    scan_put(buf, &o, CORE_WS_PING, true, 4, NULL); /* ...a ping inside it... */
    size_t in_msg2 = o;
    scan_put(buf, &o, CORE_WS_CONT, true, 7, NULL); /* ...and its end */
    ends[nends++] = o;
    scan_put(buf, &o, CORE_WS_PONG, true, 0, NULL);
    ends[nends++] = o;
    size_t before_close = o;
    scan_put(buf, &o, CORE_WS_CLOSE, true, 2, NULL);
    ends[nends++] = o;
    size_t total = o;

    for (size_t step = 1; step <= 7; step += 3) {
        core_ws_scan_t sc;
        memset(&sc, 0, sizeof sc);
        size_t next_end = 0;
        for (size_t i = 0; i < total; i += step) {
            size_t k = i + step <= total ? step : total - i;
            /* Byte by byte around the boundaries, to check each position. */
            for (size_t j = 0; j < k; j++) {
                core_ws_scan(&sc, buf + i + j, 1);
                size_t at = i + j + 1;
                bool end = next_end < nends && at == ends[next_end];
                if (end)
                    next_end++;
                assert_int_equal(core_ws_scan_between(&sc), end);
                if (at == in_msg1 || at == in_msg2)
                    assert_false(core_ws_scan_between(&sc));
                assert_int_equal(sc.saw_close, at > before_close + 1);
            }
        }
        assert_int_equal(next_end, nends);
    }
    /* In bigger pieces: the same end state. */
    core_ws_scan_t sc;
    memset(&sc, 0, sizeof sc);
    core_ws_scan(&sc, buf, 1000);
    core_ws_scan(&sc, buf + 1000, total - 1000);
    assert_true(core_ws_scan_between(&sc));
    assert_true(sc.saw_close);
    memset(&sc, 0, sizeof sc);
    core_ws_scan(&sc, buf, ends[1] + 1);
    assert_false(core_ws_scan_between(&sc));
    assert_false(sc.saw_close);
}

static void test_parser_is_small(void **state)
{
    /* 100k idle connections at <= 2 KiB each: the parser must stay tiny. */
    assert_true(sizeof(core_ws_parser_t) <= 96);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_every_split),
        cmocka_unit_test(test_parse_large_frame),
        cmocka_unit_test(test_parse_non_minimal_length),
        cmocka_unit_test(test_parse_client_side),
        cmocka_unit_test(test_parse_split_control_payload),
        cmocka_unit_test(test_errors_table),
        cmocka_unit_test(test_error_is_sticky),
        cmocka_unit_test(test_error_64bit_msb),
        cmocka_unit_test(test_error_fails_fast),
        cmocka_unit_test(test_close_valid),
        cmocka_unit_test(test_close_code_valid_table),
        cmocka_unit_test(test_utf8_table),
        cmocka_unit_test(test_utf8_fragmented_messages),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_masking),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_handshake_table),
        cmocka_unit_test(test_offered_protocols),
        cmocka_unit_test(test_limits_default),
        cmocka_unit_test(test_scan_boundaries),
        cmocka_unit_test(test_parser_is_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
