/* Unit tests for edge/eg_route.c: every path class an edge sees, and the
 * request headers it must not forward. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include <uv.h>

#include "edge/eg_route.h"

typedef struct {
    const char *path;
    int rc;
    eg_route_kind_t kind;
    const char *id; /* for EG_ROUTE_WORKSPACE */
} route_case_t;

#define ID64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static const route_case_t route_cases[] = {
    /* The token's home region. */
    {"/v1/me", 0, EG_ROUTE_USER, NULL},
    {"/v1/workspaces", 0, EG_ROUTE_USER, NULL},
    /* A workspace and everything under it. */
    {"/v1/workspaces/w1", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/workspaces/ws_A-9", 0, EG_ROUTE_WORKSPACE, "ws_A-9"},
    {"/v1/workspaces/w1/channels", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/workspaces/w1/channels/c1/messages", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/workspaces/w1/x/y", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/workspaces/w1/stream", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/workspaces/" ID64, 0, EG_ROUTE_WORKSPACE, ID64},
    {"/v1/workspaces/w1/", 0, EG_ROUTE_WORKSPACE, "w1"},
    /* The residency admin API: a policy at its workspace's home. */
    {"/v1/admin/residency/workspaces", 0, EG_ROUTE_USER, NULL},
    {"/v1/admin/residency/workspaces/w1", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/admin/residency/workspaces/w1/pin", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/admin/residency/workspaces/w1/allowed-regions", 0, EG_ROUTE_WORKSPACE, "w1"},
    {"/v1/admin/residency/workspaces/w.1/pin", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/admin/audit", 0, EG_ROUTE_NONE, NULL},
    {"/v1/admin/residency", 0, EG_ROUTE_NONE, NULL},
    /* Accounts. */
    {"/v1/auth/signup", 0, EG_ROUTE_SIGNUP, NULL},
    {"/v1/auth/login", 0, EG_ROUTE_LOGIN, NULL},
    {"/v1/auth/refresh", 0, EG_ROUTE_REFRESH, NULL},
    {"/v1/auth/logout", 0, EG_ROUTE_LOGOUT, NULL},
    /* Not for clients through an edge. */
    {"/v1/auth/unknown", 0, EG_ROUTE_NONE, NULL},
    {"/v1/auth", 0, EG_ROUTE_NONE, NULL},
    {"/v1/auth/login/x", 0, EG_ROUTE_NONE, NULL},
    {"/v1/auth/LOGIN", 0, EG_ROUTE_NONE, NULL},
    {"/v1/directory", 0, EG_ROUTE_NONE, NULL},
    {"/v1/directory/changes", 0, EG_ROUTE_NONE, NULL},
    {"/v1/unknown", 0, EG_ROUTE_NONE, NULL},
    {"/v1/me/x", 0, EG_ROUTE_NONE, NULL},
    {"/v1/ME", 0, EG_ROUTE_NONE, NULL},
    {"/v1", 0, EG_ROUTE_NONE, NULL},
    {"/v1/", 0, EG_ROUTE_NONE, NULL},
    {"/v2/me", 0, EG_ROUTE_NONE, NULL},
    {"/V1/me", 0, EG_ROUTE_NONE, NULL},
    {"/healthz", 0, EG_ROUTE_NONE, NULL},
    {"/metrics", 0, EG_ROUTE_NONE, NULL},
    {"/debug/echo", 0, EG_ROUTE_NONE, NULL},
    {"/", 0, EG_ROUTE_NONE, NULL},
    {"", 0, EG_ROUTE_NONE, NULL},
    {"v1/me", 0, EG_ROUTE_NONE, NULL},
    {"*", 0, EG_ROUTE_NONE, NULL},
    /* Empty segments and trailing slashes are not ours. */
    {"//v1/me", 0, EG_ROUTE_NONE, NULL},
    {"/v1//me", 0, EG_ROUTE_NONE, NULL},
    {"//", 0, EG_ROUTE_NONE, NULL},
    {"/v1/me/", 0, EG_ROUTE_NONE, NULL},
    {"/v1/auth/login/", 0, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/", 0, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces//channels", 0, EG_ROUTE_NONE, NULL},
    /* Percent-escapes are never decoded into a route. */
    {"/v1/m%65", 0, EG_ROUTE_NONE, NULL},
    {"/v1/%77orkspaces/w1", 0, EG_ROUTE_NONE, NULL},
    /* Bad workspace ids: refused, never routed. */
    {"/v1/workspaces/" ID64 "x", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w%31", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w%2F..", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w.1", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/..", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w 1", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w1;x", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w\xc3\xa9", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w1?x=1", UV_EINVAL, EG_ROUTE_NONE, NULL},
    {"/v1/workspaces/w1/channels/" ID64 "toolong/messages", 0, EG_ROUTE_WORKSPACE, "w1"},
};

static void test_classify_table(void **state)
{
    for (size_t i = 0; i < sizeof route_cases / sizeof route_cases[0]; i++) {
        const route_case_t *c = &route_cases[i];
        eg_route_t r;
        memset(&r, 0x5a, sizeof r); /* stale contents must not leak through */
        int rc = eg_route_classify("GET", c->path, strlen(c->path), &r);
        if (rc != c->rc)
            fail_msg("case %zu \"%s\": rc %d, wanted %d", i, c->path, rc, c->rc);
        if (r.kind != c->kind)
            fail_msg("case %zu \"%s\": kind %d, wanted %d", i, c->path, (int)r.kind, (int)c->kind);
        if (c->kind == EG_ROUTE_WORKSPACE) {
            if (strcmp(r.id, c->id) != 0)
                fail_msg("case %zu \"%s\": id \"%s\", wanted \"%s\"", i, c->path, r.id, c->id);
        } else if (r.id[0] != '\0') {
            fail_msg("case %zu \"%s\": id \"%.70s\" set for a non-workspace route", i, c->path,
                     r.id);
        }
    }
}

/* The path is a (pointer, length) slice of the request line: nothing past len
 * is read, and the method does not change the class. */
static void test_classify_uses_len_only(void **state)
{
    const char line[] = "/v1/workspaces/w1/channels HTTP/1.1";
    eg_route_t r;
    assert_int_equal(eg_route_classify("POST", line, strlen("/v1/workspaces/w1"), &r), 0);
    assert_int_equal(r.kind, EG_ROUTE_WORKSPACE);
    assert_string_equal(r.id, "w1");
    assert_int_equal(eg_route_classify("DELETE", line, strlen("/v1/workspaces/w"), &r), 0);
    assert_string_equal(r.id, "w");
    assert_int_equal(eg_route_classify("GET", "/v1/meX", 6, &r), 0);
    assert_int_equal(r.kind, EG_ROUTE_USER);
    assert_int_equal(eg_route_classify("PUT", "/v1/me", 0, &r), 0);
    assert_int_equal(r.kind, EG_ROUTE_NONE);
    const char methods[][8] = {"GET", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        assert_int_equal(eg_route_classify(methods[i], "/v1/auth/login", 14, &r), 0);
        assert_int_equal(r.kind, EG_ROUTE_LOGIN);
    }
}

typedef struct {
    const char *name;
    bool drop_http; /* dropped on a plain request */
    bool drop_ws;   /* dropped on a WebSocket upgrade */
} hop_case_t;

static const hop_case_t hop_cases[] = {
    /* RFC 9110 7.6.1 hop-by-hop, in any case. */
    {"Connection", true, true},
    {"connection", true, true},
    {"CONNECTION", true, true},
    {"Keep-Alive", true, true},
    {"Proxy-Connection", true, true},
    {"Proxy-Authorization", true, true},
    {"Proxy-Authenticate", true, true},
    {"TE", true, true},
    {"te", true, true},
    {"Trailer", true, true},
    {"Transfer-Encoding", true, true},
    {"tRaNsFeR-eNcOdInG", true, true},
    /* The edge sets these itself. */
    {"Host", true, true},
    {"Content-Length", true, true},
    {"X-Request-Id", true, true},
    {"x-request-id", true, true},
    {"Meridian-Edge", true, true},
    {"X-Forwarded-For", true, true},
    /* Upgrade survives only for a WebSocket. */
    {"Upgrade", true, false},
    {"UPGRADE", true, false},
    {"upgrade", true, false},
    /* End-to-end headers pass. */
    {"Authorization", false, false},
    {"Content-Type", false, false},
    {"Accept", false, false},
    {"Cookie", false, false},
    {"Idempotency-Key", false, false},
    {"Meridian-Home-Region", false, false},
    {"Sec-WebSocket-Key", false, false},
    {"Sec-WebSocket-Version", false, false},
    {"Sec-WebSocket-Protocol", false, false},
    {"Origin", false, false},
    /* Prefixes and extensions of hop names are different names. */
    {"Connections", false, false},
    {"Connectio", false, false},
    {"Hos", false, false},
    {"Hosts", false, false},
    {"Upgrade-Insecure-Requests", false, false},
    {"Upgrad", false, false},
    {"T", false, false},
    {"TEE", false, false},
    {"", false, false},
};

static void test_hop_headers(void **state)
{
    for (size_t i = 0; i < sizeof hop_cases / sizeof hop_cases[0]; i++) {
        const hop_case_t *c = &hop_cases[i];
        size_t len = strlen(c->name);
        if (eg_route_hop_header(c->name, len, false) != c->drop_http)
            fail_msg("case %zu \"%s\" (http): wanted %s", i, c->name,
                     c->drop_http ? "dropped" : "kept");
        if (eg_route_hop_header(c->name, len, true) != c->drop_ws)
            fail_msg("case %zu \"%s\" (ws): wanted %s", i, c->name,
                     c->drop_ws ? "dropped" : "kept");
    }
}

/* Names arrive as slices of the request buffer, not NUL-terminated. */
static void test_hop_header_slices(void **state)
{
    const char buf[] = "Hostname: x";
    assert_true(eg_route_hop_header(buf, 4, false));
    assert_false(eg_route_hop_header(buf, 8, false));
    const char up[] = "Upgrade: websocket";
    assert_true(eg_route_hop_header(up, 7, false));
    assert_false(eg_route_hop_header(up, 7, true));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_table),
        cmocka_unit_test(test_classify_uses_len_only),
        cmocka_unit_test(test_hop_headers),
        cmocka_unit_test(test_hop_header_slices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
