/* Unit tests for region/rg_batch.c without a server: argument checks, one
 * batcher per worker, callbacks never inside rg_batch_add, the bound on
 * waiting statements, and the close contract (everything waiting fails with
 * UV_ECANCELED when the worker closes its pools, and the batcher frees
 * itself: the loop closes cleanly). Group commit itself, retries of aborted
 * statements and durability are covered by tests/integration/api_messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/core.h"
#include "core/log.h"
#include "region/rg_batch.h"

/* Port 1 on loopback: nothing listens, connect() is refused at once. */
#define REFUSED "host=127.0.0.1 port=1 dbname=x user=x"

static const char sql_a[] = "SELECT $1::text";
static const char sql_b[] = "SELECT 2";

typedef struct {
    rg_worker_t *w;
    int calls;
    int last_err;
    int errs_other; /* callbacks whose error was not the expected one */
    int expect;
    bool inside_add;
    bool close_on_first;
} rec_t;

static void on_rec(const PGresult *res, int err, const char *msg, void *ud)
{
    rec_t *r = ud;
    assert_false(r->inside_add);
    assert_null(res);
    assert_non_null(msg);
    r->calls++;
    r->last_err = err;
    if (err != r->expect)
        r->errs_other++;
    if (r->close_on_first && r->calls == 1) {
        /* What the worker does at shutdown (deps_close in rg_worker.c). */
        core_pg_pool_close(r->w->shards[0]);
        r->w->nshards = 0;
    }
}

static void on_never(const PGresult *res, int err, const char *msg, void *ud)
{
    fail_msg("callback of a refused statement ran (err=%d)", err);
}

static void worker_init(rg_worker_t *w, uint32_t backoff_ms)
{
    memset(w, 0, sizeof *w);
    uv_loop_init(&w->loop);
    snprintf(w->shard_names[0], sizeof w->shard_names[0], "shard0");
    core_pg_pool_opts_t o = {
        .name = "shard0",
        .conninfo = REFUSED,
        .size = 2,
        .max_queued = 100000,
        .backoff_base_ms = backoff_ms,
        .backoff_cap_ms = backoff_ms * 4,
    };
    w->shards[0] = core_pg_pool_new(&w->loop, &o);
    assert_non_null(w->shards[0]);
    w->nshards = 1;
}

static void worker_close(rg_worker_t *w)
{
    if (w->nshards) {
        core_pg_pool_close(w->shards[0]);
        w->nshards = 0;
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* Every handle, the batcher's too, has been closed. */
    assert_int_equal(uv_loop_close(&w->loop), 0);
}

static void test_bad_arguments(void **state)
{
    rg_worker_t w;
    worker_init(&w, 60000);
    rg_batch_t *b = rg_batch_of(&w);
    assert_non_null(b);
    assert_ptr_equal(rg_batch_of(&w), b);
    const char *v[RG_BATCH_MAX_PARAMS + 1] = {"x"};
    static const struct {
        int shard;
        const char *sql;
        int nparams;
        bool values;
        bool cb;
    } bad[] = {
        {-1, sql_a, 1, true, true},
        {1, sql_a, 1, true, true}, /* only shard 0 exists */
        {RG_MAX_SHARDS, sql_a, 1, true, true},
        {0, NULL, 0, true, true},
        {0, sql_a, -1, true, true},
        {0, sql_a, RG_BATCH_MAX_PARAMS + 1, true, true},
        {0, sql_a, 1, false, true},
        {0, sql_a, 1, true, false},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(bad); i++)
        assert_int_equal(rg_batch_add(b, bad[i].shard, "k", bad[i].sql, bad[i].nparams,
                                      bad[i].values ? v : NULL, bad[i].cb ? on_never : NULL, NULL),
                         UV_EINVAL);
    assert_int_equal(rg_batch_add(NULL, 0, "k", sql_a, 1, v, on_never, NULL), UV_EINVAL);
    assert_int_equal(rg_batch_queued(b), 0);
    worker_close(&w);
}

/* The shard refuses connections: statements fail with UV_ENOTCONN, from the
 * loop, after rg_batch_add has returned. The first callback closes the pool
 * as a stopping worker does; the rest still get exactly one answer each. */
static void test_shard_down_and_close_from_callback(void **state)
{
    core_log_level = CORE_LOG_OFF;
    rg_worker_t w;
    worker_init(&w, 5);
    rg_batch_t *b = rg_batch_of(&w);
    rec_t r = {.w = &w, .expect = UV_ENOTCONN, .close_on_first = true};
    const char *v[] = {"x"};
    r.inside_add = true;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(rg_batch_add(b, 0, i % 2 ? "b" : "a", i % 2 ? sql_b : sql_a, i % 2 ? 0 : 1,
                                      v, on_rec, &r),
                         0);
    }
    r.inside_add = false;
    assert_int_equal(rg_batch_queued(b), 5);
    assert_int_equal(r.calls, 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 5);
    assert_int_equal(r.errs_other, 0);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    core_log_level = CORE_LOG_INFO;
}

/* Waiting statements are bounded; beyond the bound rg_batch_add refuses at
 * once. Closing the pools fails every one of them with UV_ECANCELED. */
static void test_bound_and_cancel_on_close(void **state)
{
    rg_worker_t w;
    worker_init(&w, 60000); /* never connects during the test */
    rg_batch_t *b = rg_batch_of(&w);
    rec_t r = {.w = &w, .expect = UV_ECANCELED};
    const char *v[] = {"x"};
    int added = 0;
    r.inside_add = true;
    for (;;) {
        int rc = rg_batch_add(b, 0, "k", sql_a, 1, v, on_rec, &r);
        if (rc) {
            assert_int_equal(rc, UV_EBUSY);
            break;
        }
        added++;
        assert_true(added <= RG_BATCH_MAX + RG_BATCH_MAX_QUEUED);
    }
    r.inside_add = false;
    /* A full group went to the pool at once; the rest wait for it to commit. */
    assert_int_equal(added, RG_BATCH_MAX + RG_BATCH_MAX_QUEUED);
    assert_int_equal(rg_batch_queued(b), RG_BATCH_MAX_QUEUED);
    assert_int_equal(r.calls, 0);
    worker_close(&w);
    assert_int_equal(r.calls, added);
    assert_int_equal(r.errs_other, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_shard_down_and_close_from_callback),
        cmocka_unit_test(test_bound_and_cancel_on_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
