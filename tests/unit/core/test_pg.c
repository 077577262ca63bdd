/* Unit tests for core/pg.c: argument checks, the queue bound, cancellation,
 * batches and the close contract, with no server: the pool points at a closed
 * loopback port, or connects only after the test is over. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/core.h"
#include "core/log.h"
#include "core/pg.h"

/* Port 1 on loopback: nothing listens, connect() is refused at once. */
#define REFUSED "host=127.0.0.1 port=1 dbname=x user=x"

typedef struct {
    int calls;
    int err;
    bool res_null;
} rec_t;

static void on_rec(const PGresult *res, int err, const char *msg, void *ud)
{
    rec_t *r = ud;
    r->calls++;
    r->err = err;
    r->res_null = res == NULL;
    assert_non_null(msg);
}

static void on_never(const PGresult *res, int err, const char *msg, void *ud)
{
    fail_msg("callback of a cancelled or refused request ran (err=%d)", err);
}

/* A pool that does not try to connect during the test. */
static core_pg_pool_t *idle_pool(uv_loop_t *loop, uint32_t max_queued)
{
    core_pg_pool_opts_t o = {
        .name = "unit",
        .conninfo = REFUSED,
        .size = 2,
        .max_queued = max_queued,
        .backoff_base_ms = 60000,
        .backoff_cap_ms = 60000,
    };
    /* Full jitter may still draw a short first delay: make it irrelevant by
     * never running the loop before close. */
    return core_pg_pool_new(loop, &o);
}

static void finish_loop(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_bad_arguments(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    assert_null(core_pg_pool_new(&loop, &(core_pg_pool_opts_t){.name = "x"}));
    assert_null(core_pg_pool_new(NULL, &(core_pg_pool_opts_t){.conninfo = REFUSED}));
    core_pg_pool_t *p = idle_pool(&loop, 0);
    assert_non_null(p);
    assert_string_equal(core_pg_pool_name(p), "unit");
    assert_false(core_pg_pool_ready(p));

    const char *v[] = {"1"};
    const int badlen[] = {-2};
    assert_int_equal(core_pg_query(p, NULL, 0, NULL, NULL, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_query(p, "SELECT 1", -1, NULL, NULL, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_query(p, "SELECT $1", 1, NULL, NULL, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_query(p, "SELECT $1", 1, v, badlen, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_query(p, "SELECT 1", 70000, v, NULL, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_query_prepared(p, 0, 0, NULL, NULL, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_query_prepared(p, -1, 0, NULL, NULL, on_never, NULL, NULL), UV_EINVAL);

    core_pg_stmt_t a, b, c;
    assert_int_equal(core_pg_pool_prepare(p, "SELECT 1", &a), 0);
    assert_int_equal(core_pg_pool_prepare(p, "SELECT 2", &b), 0);
    assert_int_equal(core_pg_pool_prepare(p, "SELECT 1", &c), 0);
    assert_int_equal(a, c);
    assert_int_not_equal(a, b);
    assert_int_equal(core_pg_pool_prepare(p, NULL, &c), UV_EINVAL);
    /* Static SQL is registered once and refused like any query when bad. */
    assert_int_equal(core_pg_query_static(p, NULL, 0, NULL, NULL, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_query_static(p, "SELECT $1", 1, NULL, NULL, on_never, NULL, NULL),
                     UV_EINVAL);
    assert_int_equal(core_pg_pool_prepare(p, "SELECT $1", &c), 0);
    assert_int_equal(c, b + 1); /* registered by the refused call, not twice */

    assert_int_equal(core_pg_pool_pending(p), 0);
    core_pg_pool_close(p);
    core_pg_pool_close(p);
    core_pg_pool_close(NULL);
    finish_loop(&loop);
}

static void test_queue_bound_cancel_and_close(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    core_pg_pool_t *p = idle_pool(&loop, 3);
    rec_t r1 = {0}, r3 = {0};
    core_pg_req_t *h2;
    /* No connection yet: work waits in the queue. */
    assert_int_equal(core_pg_query(p, "SELECT 1", 0, NULL, NULL, on_rec, &r1, NULL), 0);
    assert_int_equal(core_pg_query(p, "SELECT 2", 0, NULL, NULL, on_never, NULL, &h2), 0);
    assert_int_equal(core_pg_query(p, "SELECT 3", 0, NULL, NULL, on_rec, &r3, NULL), 0);
    assert_int_equal(core_pg_pool_pending(p), 3);
    assert_int_equal(core_pg_query(p, "SELECT 4", 0, NULL, NULL, on_never, NULL, NULL), UV_EBUSY);
    /* A cancelled queued query leaves at once and frees its slot. */
    core_pg_cancel(h2);
    core_pg_cancel(NULL);
    assert_int_equal(core_pg_pool_pending(p), 2);
    /* A batch counts all its statements against the bound. */
    core_pg_batch_t *b = core_pg_batch_begin(p);
    assert_int_equal(core_pg_batch_add(b, "SELECT 5", 0, NULL, NULL, on_never, NULL, NULL), 0);
    assert_int_equal(core_pg_batch_add(b, "SELECT 6", 0, NULL, NULL, on_never, NULL, NULL), 0);
    assert_int_equal(core_pg_batch_add(b, NULL, 0, NULL, NULL, on_never, NULL, NULL), UV_EINVAL);
    assert_int_equal(core_pg_batch_len(b), 2);
    assert_int_equal(core_pg_batch_commit(b), UV_EBUSY); /* consumed, no callbacks */
    assert_int_equal(core_pg_batch_commit(core_pg_batch_begin(p)), UV_EINVAL); /* empty */
    assert_int_equal(core_pg_pool_pending(p), 2);

    /* Close runs every pending callback with UV_ECANCELED before it returns. */
    core_pg_batch_t *open = core_pg_batch_begin(p);
    assert_int_equal(core_pg_batch_add(open, "SELECT 7", 0, NULL, NULL, on_never, NULL, NULL), 0);
    core_pg_pool_close(p);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r1.err, UV_ECANCELED);
    assert_true(r1.res_null);
    assert_int_equal(r3.calls, 1);
    assert_int_equal(r3.err, UV_ECANCELED);
    assert_int_equal(core_pg_query(p, "SELECT 8", 0, NULL, NULL, on_never, NULL, NULL),
                     UV_ECANCELED);
    /* An uncommitted batch outlives close; its commit fails without callbacks. */
    assert_int_equal(core_pg_batch_commit(open), UV_ECANCELED);
    core_pg_pool_close(p);
    finish_loop(&loop);
}

typedef struct {
    core_pg_pool_t *pool;
    rec_t first;
    int second_rc;
} down_ctx_t;

static void on_first(const PGresult *res, int err, const char *msg, void *ud)
{
    down_ctx_t *d = ud;
    on_rec(res, err, msg, &d->first);
    /* From inside a callback: the pool is down, so new work is refused at once. */
    d->second_rc = core_pg_query(d->pool, "SELECT 2", 0, NULL, NULL, on_never, NULL, NULL);
    core_pg_pool_close(d->pool); /* close from inside a callback */
}

static void test_refused_server_fails_fast(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    core_log_level = CORE_LOG_OFF;
    core_pg_pool_opts_t o = {.name = "refused",
                             .conninfo = REFUSED,
                             .size = 2,
                             .backoff_base_ms = 5,
                             .backoff_cap_ms = 20};
    down_ctx_t d = {.pool = core_pg_pool_new(&loop, &o)};
    assert_int_equal(core_pg_query(d.pool, "SELECT 1", 0, NULL, NULL, on_first, &d, NULL), 0);
    finish_loop(&loop);
    assert_int_equal(d.first.calls, 1);
    assert_int_equal(d.first.err, UV_ENOTCONN);
    assert_int_equal(d.second_rc, UV_ENOTCONN);
    core_log_level = CORE_LOG_INFO;
}

static void test_strerror_and_sqlstate(void **state)
{
    static const int errs[] = {
        0,           CORE_PG_ESQL, CORE_PG_EABORTED, UV_ETIMEDOUT, UV_ECONNRESET,
        UV_ENOTCONN, UV_ECANCELED, UV_EBUSY};
    for (size_t i = 0; i < CORE_ARRAY_LEN(errs); i++) {
        const char *s = core_pg_strerror(errs[i]);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, core_pg_strerror(errs[j]));
    }
    assert_string_equal(core_pg_sqlstate(NULL), "");
    /* No server answer: what is logged is the client-side description. */
    assert_string_equal(core_pg_errcode(NULL, errs[0]), core_pg_strerror(errs[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_queue_bound_cancel_and_close),
        cmocka_unit_test(test_refused_server_fails_fast),
        cmocka_unit_test(test_strerror_and_sqlstate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
