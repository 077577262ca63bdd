/* Unit tests for core/metrics.c: registration, updates and the text format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/metrics.h"

static int setup(void **state)
{
    static int done;
    if (!done) {
        assert_int_equal(core_metrics_init(4), 0);
        done = 1;
    }
    return 0;
}

static char *render(void)
{
    core_buf_t b;
    core_buf_init(&b);
    core_metrics_render(&b);
    core_buf_cstr(&b);
    return b.base;
}

static void test_counter_and_gauge(void **state)
{
    core_metric_t c = core_metrics_counter("t_requests_total", "Requests.", "code=\"2xx\"");
    core_metric_t c2 = core_metrics_counter("t_requests_total", "Requests.", "code=\"5xx\"");
    core_metric_t g = core_metrics_gauge("t_open", "Open things.", "");
    assert_true(c >= 0 && c2 >= 0 && g >= 0);
    /* Registering the same series again returns the same handle. */
    assert_int_equal(core_metrics_counter("t_requests_total", "Requests.", "code=\"2xx\""), c);
    /* A name cannot change type. */
    assert_true(core_metrics_gauge("t_requests_total", "x", "code=\"2xx\"") < 0);
    core_metrics_add(c, 3);
    core_metrics_add(c2, 1);
    core_metrics_set(g, 7);
    core_metrics_add(g, -2);
    char *out = render();
    assert_non_null(strstr(out, "# TYPE t_requests_total counter\n"
                                "t_requests_total{code=\"2xx\"} 3\n"
                                "t_requests_total{code=\"5xx\"} 1\n"));
    assert_non_null(strstr(out, "# HELP t_open Open things.\n# TYPE t_open gauge\nt_open 5\n"));
    free(out);
    core_metrics_add(-1, 5); /* invalid handles are ignored */
}

static void test_histogram(void **state)
{
    static const double bounds[] = {0.1, 1};
    core_metric_t h = core_metrics_histogram("t_latency_seconds", "Latency.", "", bounds, 2);
    assert_true(h >= 0);
    core_metrics_observe(h, 0.05);
    core_metrics_observe(h, 0.5);
    core_metrics_observe(h, 5);
    char *out = render();
    assert_non_null(strstr(out, "t_latency_seconds_bucket{le=\"0.1\"} 1\n"
                                "t_latency_seconds_bucket{le=\"1\"} 2\n"
                                "t_latency_seconds_bucket{le=\"+Inf\"} 3\n"
                                "t_latency_seconds_sum 5.5499999999999998\n"
                                "t_latency_seconds_count 3\n"));
    free(out);
}

static void test_workers_are_summed(void **state)
{
    core_metric_t c = core_metrics_counter("t_forked_total", "Across processes.", "");
    core_metrics_set_worker(0);
    core_metrics_add(c, 1);
    pid_t pid = fork();
    if (pid == 0) {
        core_metrics_set_worker(2);
        core_metrics_add(c, 10);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    char *out = render();
    assert_non_null(strstr(out, "t_forked_total 11\n"));
    free(out);
}

static void test_restarted_worker_zeroes_gauges_only(void **state)
{
    core_metric_t g = core_metrics_gauge("t_conns", "Connections.", "");
    core_metric_t c = core_metrics_counter("t_done_total", "Done.", "");
    core_metrics_set_worker(1);
    core_metrics_set(g, 4);
    core_metrics_add(c, 4);
    core_metrics_set_worker(1); /* as a replacement worker does at start */
    assert_true(core_metrics_value(g) == 0);
    assert_true(core_metrics_value(c) == 4);
    core_metrics_set_worker(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_counter_and_gauge, setup),
        cmocka_unit_test_setup(test_histogram, setup),
        cmocka_unit_test_setup(test_workers_are_summed, setup),
        cmocka_unit_test_setup(test_restarted_worker_zeroes_gauges_only, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
