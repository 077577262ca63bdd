/* Unit tests for core/dns: status mapping, address helpers, and the callback
 * contract on paths that need no DNS server (numeric names, a refused server,
 * cancellation on free). Real resolution against dnsmasq is covered by
 * tests/integration/dns_client.test.mjs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>

#include <ares.h>
#include <uv.h>

#include "core/core.h"
#include "core/dns.h"
#include "core/metrics.h"

static void test_status_map(void **state)
{
    static const struct {
        int st;
        int err;
    } cases[] = {
        {ARES_SUCCESS, 0},
        {ARES_ENOTFOUND, UV_EAI_NONAME},
        {ARES_ENONAME, UV_EAI_NONAME},
        {ARES_ENODATA, UV_EAI_NODATA},
        {ARES_ETIMEOUT, UV_ETIMEDOUT},
        {ARES_ECONNREFUSED, UV_ECONNREFUSED},
        {ARES_ESERVFAIL, UV_EAI_AGAIN},
        {ARES_EDESTRUCTION, UV_ECANCELED},
        {ARES_ECANCELLED, UV_ECANCELED},
        {ARES_EBADNAME, UV_EINVAL},
        {ARES_EREFUSED, UV_EAI_FAIL},
        {ARES_EFORMERR, UV_EAI_FAIL},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++) {
        int err = core_dns_status_to_err(cases[i].st);
        assert_int_equal(err, cases[i].err);
        if (cases[i].st != ARES_SUCCESS)
            assert_true(err < 0);
    }
}

static void test_addr_helpers(void **state)
{
    core_dns_addr_t a4 = {.family = AF_INET};
    inet_pton(AF_INET, "10.1.2.3", &a4.addr.v4);
    core_dns_addr_t a6 = {.family = AF_INET6};
    inet_pton(AF_INET6, "fd00::7", &a6.addr.v6);
    char buf[64];
    assert_string_equal(core_dns_addr_format(&a4, buf, sizeof buf), "10.1.2.3");
    assert_string_equal(core_dns_addr_format(&a6, buf, sizeof buf), "fd00::7");

    struct sockaddr_storage ss;
    assert_int_equal(core_dns_addr_to_sockaddr(&a4, 443, &ss), sizeof(struct sockaddr_in));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(ntohs(s4->sin_port), 443);
    assert_memory_equal(&s4->sin_addr, &a4.addr.v4, 4);
    assert_int_equal(core_dns_addr_to_sockaddr(&a6, 8080, &ss), sizeof(struct sockaddr_in6));
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(s6->sin6_port), 8080);
    assert_memory_equal(&s6->sin6_addr, &a6.addr.v6, 16);
}

typedef struct {
    int calls;
    int err;
    bool from_cache;
    char ip[64];
    size_t naddrs;
} got_t;

static void on_got(const core_dns_result_t *res, int err, void *ud)
{
    got_t *g = ud;
    g->calls++;
    g->err = err;
    if (res) {
        g->from_cache = res->from_cache;
        g->naddrs = res->naddrs;
        core_dns_addr_format(&res->addrs[0], g->ip, sizeof g->ip);
    }
}

/* A port nothing listens on (bound, then released). */
static int closed_udp_port(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_udp_t u;
    uv_udp_init(&loop, &u);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_udp_bind(&u, (const struct sockaddr *)&sa, 0);
    struct sockaddr_storage name;
    int len = sizeof name;
    uv_udp_getsockname(&u, (struct sockaddr *)&name, &len);
    int port = ntohs(((struct sockaddr_in *)&name)->sin_port);
    uv_close((uv_handle_t *)&u, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return port;
}

static core_dns_t *new_resolver(uv_loop_t *loop, unsigned timeout_ms)
{
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%d", closed_udp_port());
    core_dns_opts_t o = {.servers = servers, .timeout_ms = timeout_ms, .tries = 1, .name = "unit"};
    core_dns_t *d = core_dns_new(loop, &o);
    assert_non_null(d);
    return d;
}

static void test_numeric_is_async_and_ttl0_not_cached(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    core_dns_t *d = new_resolver(&loop, 500);
    got_t g = {0};
    assert_int_equal(core_dns_resolve(d, "127.0.0.1", on_got, &g), 0);
    assert_int_equal(g.calls, 0); /* never from inside the call */
    uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.err, 0);
    assert_string_equal(g.ip, "127.0.0.1");

    /* A numeric answer has TTL 0: the cache never serves it. */
    for (int i = 0; i < 2; i++) {
        got_t c = {0};
        assert_int_equal(core_dns_lookup_cached(d, "::1", on_got, &c), 0);
        assert_int_equal(c.calls, 0);
        uv_run(&loop, UV_RUN_ONCE);
        assert_int_equal(c.calls, 1);
        assert_int_equal(c.err, 0);
        assert_false(c.from_cache);
        assert_string_equal(c.ip, "::1");
    }

    assert_int_equal(core_dns_resolve(d, "", on_got, &g), UV_EINVAL);
    assert_int_equal(core_dns_lookup_cached(d, NULL, on_got, &g), UV_EINVAL);
    core_dns_free(d);
    core_dns_free(d);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(g.calls, 1);
}

static void test_refused_server_errors_once(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    core_dns_t *d = new_resolver(&loop, 200);
    got_t g = {0};
    assert_int_equal(core_dns_resolve(d, "edge.example.test", on_got, &g), 0);
    while (g.calls == 0)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(g.calls, 1);
    assert_true(g.err == UV_ECONNREFUSED || g.err == UV_ETIMEDOUT);
    core_dns_free(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(g.calls, 1);
}

static void test_free_cancels_pending_once(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    core_dns_t *d = new_resolver(&loop, 5000);
    got_t a = {0}, b = {0}, c = {0}, n = {0};
    assert_int_equal(core_dns_resolve(d, "a.example.test", on_got, &a), 0);
    assert_int_equal(core_dns_lookup_cached(d, "b.example.test", on_got, &b), 0);
    assert_int_equal(core_dns_lookup_cached(d, "b.example.test", on_got, &c), 0); /* joins b */
    assert_int_equal(core_dns_resolve(d, "10.0.0.1", on_got, &n), 0);
    core_dns_free(d);
    /* Everything undelivered is answered before free returns, with UV_ECANCELED. */
    got_t *all[] = {&a, &b, &c, &n};
    for (size_t i = 0; i < CORE_ARRAY_LEN(all); i++) {
        assert_int_equal(all[i]->calls, 1);
        assert_int_equal(all[i]->err, UV_ECANCELED);
    }
    core_dns_free(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    for (size_t i = 0; i < CORE_ARRAY_LEN(all); i++)
        assert_int_equal(all[i]->calls, 1);
}

int main(void)
{
    core_init();
    core_metrics_init(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_map),
        cmocka_unit_test(test_addr_helpers),
        cmocka_unit_test(test_numeric_is_async_and_ttl0_not_cached),
        cmocka_unit_test(test_refused_server_errors_once),
        cmocka_unit_test(test_free_cancels_pending_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
