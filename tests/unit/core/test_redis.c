/* Unit tests for core/redis on paths that need no server: constant error
 * strings, refusing commands while not connected, reconnect scheduling, and a
 * free that is safe twice and leaves the loop clean. Everything against a
 * real redis-server is in tests/integration/redis_client.test.mjs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include <uv.h>

#include "core/core.h"
#include "core/metrics.h"
#include "core/redis.h"

static void test_strerror_constants(void **state)
{
    static const struct {
        int err;
        const char *s;
    } cases[] = {
        {0, "ok"},
        {UV_ETIMEDOUT, "command timeout"},
        {UV_ECONNRESET, "connection lost"},
        {UV_ENOTCONN, "not connected"},
        {UV_ECANCELED, "client closed"},
        {UV_EINVAL, "invalid command"},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++) {
        assert_string_equal(core_redis_strerror(cases[i].err), cases[i].s);
        /* Constant storage: the same pointer every time. */
        assert_ptr_equal(core_redis_strerror(cases[i].err), core_redis_strerror(cases[i].err));
    }
    assert_non_null(core_redis_strerror(UV_EPIPE));
}

/* A TCP port nothing listens on (bound, then released). */
static int closed_tcp_port(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_tcp_t t;
    uv_tcp_init(&loop, &t);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&t, (const struct sockaddr *)&sa, 0);
    struct sockaddr_storage name;
    int len = sizeof name;
    uv_tcp_getsockname(&t, (struct sockaddr *)&name, &len);
    int port = ntohs(((struct sockaddr_in *)&name)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return port;
}

static int cb_calls;

static void on_reply(const redisReply *reply, int err, void *ud)
{
    cb_calls++;
}

static void on_stop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static void test_not_connected_refuses_and_retries(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    core_redis_opts_t o = {.port = closed_tcp_port(),
                           .connect_timeout_ms = 200,
                           .backoff_base_ms = 10,
                           .backoff_cap_ms = 40,
                           .name = "unit"};
    core_redis_t *r = core_redis_new(&loop, &o);
    assert_non_null(r);
    assert_false(core_redis_ready(r));
    cb_calls = 0;
    assert_int_equal(core_redis_command(r, on_reply, NULL, "PING"), UV_ENOTCONN);
    const char *argv[] = {"GET", "k"};
    const size_t lens[] = {3, 1};
    assert_int_equal(core_redis_commandargv(r, on_reply, NULL, 2, argv, lens), UV_ENOTCONN);
    assert_int_equal(core_redis_commandargv(r, on_reply, NULL, 0, argv, lens), UV_EINVAL);

    /* Let it fail to connect a few times: it keeps retrying, never ready. */
    double before = core_metrics_value(
        core_metrics_counter("meridian_redis_reconnects_total", "", "client=\"unit\""));
    uv_timer_t stop;
    uv_timer_init(&loop, &stop);
    uv_timer_start(&stop, on_stop, 300, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    double after = core_metrics_value(
        core_metrics_counter("meridian_redis_reconnects_total", "", "client=\"unit\""));
    assert_true(after - before >= 2);
    assert_false(core_redis_ready(r));
    assert_int_equal(core_redis_pending(r), 0);
    assert_true(core_metrics_value(
                    core_metrics_gauge("meridian_redis_connected", "", "client=\"unit\"")) == 0);

    core_redis_free(r);
    core_redis_free(r); /* safe twice */
    assert_false(core_redis_ready(r));
    assert_int_equal(core_redis_command(r, on_reply, NULL, "PING"), UV_ECANCELED);
    uv_close((uv_handle_t *)&stop, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(cb_calls, 0);
    core_redis_free(NULL);
}

static void test_free_right_away(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    core_redis_opts_t o = {.port = closed_tcp_port()};
    core_redis_t *r = core_redis_new(&loop, &o); /* connecting */
    core_redis_free(r);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    core_init();
    core_metrics_init(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_constants),
        cmocka_unit_test(test_not_connected_refuses_and_retries),
        cmocka_unit_test(test_free_right_away),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
