/* driver_pg_client: drives core/pg against a real PostgreSQL server for
 * tests/integration/pg_client.test.mjs.
 *
 * Usage: driver_pg_client <scenario> <conninfo>
 * Scenarios: basic, pipeline, batch, timeout, cancel, outage, throughput, listen.
 * Each prints one JSON line {"scenario":...,"ok":true,...} and exits 0, or
 * prints the failed check on stderr and exits 1. The pool runs on a real loop;
 * the scenarios are written as sequences by running that loop until each
 * awaited callback has fired.
 *
 * outage talks to the test over stdin/stdout: it prints {"phase":"up"},
 * expects "stopping" (the test is about to stop the server), prints
 * {"phase":"down",...} once readiness is false, expects "started" (the server
 * is back) and prints {"phase":"recovered",...} then the final line.
 *
 * A callback that runs twice, or for a cancelled request, fails the driver.
 * DRIVER_DEBUG=1 in the environment turns on debug logs (pings, reconnects). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "core/buf.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"

static uv_loop_t *loop;
static core_pg_pool_t *pool;
static const char *conninfo;
static const char *scenario;
static uv_timer_t wake; /* keeps UV_RUN_ONCE from sleeping past our own deadlines */

typedef struct {
    int calls;
    int err;
    bool must_not_run;
    char msg[256];
    char sqlstate[8];
    char val[256]; /* first column of the first row */
    int ntuples;
    uint64_t t0, ms;
    long expect; /* pipeline: expected value */
} res_t;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "driver_pg_client %s: FAIL: ", scenario);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail(__VA_ARGS__);                                                                     \
    } while (0)

static const char *ename(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case CORE_PG_ESQL:
        return "ESQL";
    case CORE_PG_EABORTED:
        return "EABORTED";
    default:
        return uv_err_name(err);
    }
}

static void on_res(const PGresult *res, int err, const char *msg, void *ud)
{
    res_t *r = ud;
    if (r->must_not_run)
        fail("callback ran for a cancelled request (err=%s)", ename(err));
    if (++r->calls > 1)
        fail("callback ran twice");
    r->err = err;
    r->ms = core_now_ms() - r->t0;
    snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "");
    snprintf(r->sqlstate, sizeof r->sqlstate, "%s", core_pg_sqlstate(res));
    if (err == 0 && !res)
        fail("success without a result");
    if (err != 0 && err != CORE_PG_ESQL && res)
        fail("error %s with a result", ename(err));
    if (err == CORE_PG_ESQL && !res)
        fail("ESQL without its error result");
    if (err == 0) {
        r->ntuples = PQntuples(res);
        if (r->ntuples > 0 && PQnfields(res) > 0)
            snprintf(r->val, sizeof r->val, "%s", PQgetvalue(res, 0, 0));
    }
}

static void on_wake(uv_timer_t *t) {}

/* Runs the loop until *flag is set; fails after timeout_ms. */
static void wait_flag(const int *flag, uint64_t timeout_ms, const char *what)
{
    uint64_t deadline = core_now_ms() + timeout_ms;
    while (!*flag) {
        if (core_now_ms() > deadline)
            fail("timed out after %llu ms waiting for %s", (unsigned long long)timeout_ms, what);
        uv_run(loop, UV_RUN_ONCE);
    }
}

static void wait_res(res_t *r, uint64_t timeout_ms, const char *what)
{
    wait_flag(&r->calls, timeout_ms, what);
}

/* Waits until readiness equals want; returns the time it took in ms. */
static uint64_t wait_ready(bool want, uint64_t timeout_ms)
{
    uint64_t t0 = core_now_ms();
    while (core_pg_pool_ready(pool) != want) {
        if (core_now_ms() - t0 > timeout_ms)
            fail("readiness did not become %s within %llu ms", want ? "true" : "false",
                 (unsigned long long)timeout_ms);
        uv_run(loop, UV_RUN_ONCE);
    }
    return core_now_ms() - t0;
}

static void sleep_ms(uint64_t ms)
{
    uint64_t until = core_now_ms() + ms;
    while (core_now_ms() < until)
        uv_run(loop, UV_RUN_ONCE);
}

/* Records live until exit, so a late callback finds its record (and fails
 * the check) instead of freed memory; freed at exit for LeakSanitizer. */
static res_t **kept;
static size_t nkept;

static res_t *new_res(void)
{
    res_t *r = core_xcalloc(1, sizeof *r);
    r->t0 = core_now_ms();
    kept = core_xrealloc(kept, (nkept + 1) * sizeof *kept);
    kept[nkept++] = r;
    return r;
}

/* Submits a text query and returns its record (never NULL; fails on a
 * synchronous error). */
static res_t *q(const char *sql, int n, const char *const *vals)
{
    res_t *r = new_res();
    int rc = core_pg_query(pool, sql, n, vals, NULL, on_res, r, NULL);
    CHECK(rc == 0, "core_pg_query(%s) returned %s", sql, ename(rc));
    return r;
}

/* Runs one query to completion and checks it succeeded. */
static res_t *run_ok(const char *sql, int n, const char *const *vals)
{
    res_t *r = q(sql, n, vals);
    wait_res(r, 10000, sql);
    CHECK(r->err == 0, "%s: %s %s", sql, ename(r->err), r->msg);
    return r;
}

static void open_pool(int size, uint32_t timeout_ms, uint32_t max_queued, uint32_t max_inflight)
{
    core_pg_pool_opts_t o = {
        .name = "drv",
        .conninfo = conninfo,
        .size = size,
        .query_timeout_ms = timeout_ms,
        .connect_timeout_ms = 2000,
        .max_queued = max_queued,
        .max_inflight = max_inflight,
    };
    pool = core_pg_pool_new(loop, &o);
    CHECK(pool, "core_pg_pool_new failed");
}

static void close_pool(void)
{
    core_pg_pool_close(pool);
    core_pg_pool_close(pool); /* safe twice */
    pool = NULL;
}

static void emit(core_buf_t *b)
{
    core_buf_putc(b, '\n');
    fwrite(b->base, 1, b->len, stdout);
    fflush(stdout);
    core_buf_reset(b);
}

static void begin_line(core_buf_t *b, core_jw_t *w)
{
    core_buf_reset(b);
    core_jw_init(w, b);
    core_jw_obj_open(w);
    core_jw_key(w, "scenario");
    core_jw_str(w, scenario);
}

/* ---- stdin lines (outage) ---- */

static uv_pipe_t in;
static core_buf_t inbuf;
static char line[64];

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char slab[512];
    *b = uv_buf_init(slab, sizeof slab);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    if (n < 0)
        fail("stdin closed: %s", uv_strerror((int)n));
    core_buf_append(&inbuf, b->base, (size_t)n);
}

/* Waits for the next line on stdin and checks it equals want. */
static void expect_line(const char *want, uint64_t timeout_ms)
{
    uint64_t deadline = core_now_ms() + timeout_ms;
    for (;;) {
        char *nl = inbuf.len ? memchr(inbuf.base, '\n', inbuf.len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - inbuf.base);
            snprintf(line, sizeof line, "%.*s", (int)CORE_MIN(n, sizeof line - 1), inbuf.base);
            core_buf_consume(&inbuf, n + 1);
            break;
        }
        if (core_now_ms() > deadline)
            fail("no \"%s\" line on stdin within %llu ms", want, (unsigned long long)timeout_ms);
        uv_run(loop, UV_RUN_ONCE);
    }
    CHECK(strcmp(line, want) == 0, "expected \"%s\" on stdin, got \"%s\"", want, line);
}

/* ---- scenarios ---- */

static void scenario_basic(core_buf_t *out, core_jw_t *w)
{
    open_pool(2, 5000, 0, 0);
    /* Submitted before any connection exists: it waits for the first connect. */
    res_t *early = q("SELECT 'early'", 0, NULL);
    wait_res(early, 10000, "early query");
    CHECK(early->err == 0 && strcmp(early->val, "early") == 0, "early: %s %s", ename(early->err),
          early->msg);
    CHECK(core_pg_pool_ready(pool), "not ready after a query succeeded");

    const char *v1[] = {"40", "2", "h\xc3\xa9llo 'quoted' \"x\"", NULL};
    res_t *r = q("SELECT ($1::int + $2::int)::text || '|' || $3::text || '|' || ($4::text IS NULL)",
                 4, v1);
    wait_res(r, 5000, "params");
    CHECK(r->err == 0, "params: %s %s", ename(r->err), r->msg);
    CHECK(strcmp(r->val, "42|h\xc3\xa9llo 'quoted' \"x\"|true") == 0, "params: got %s", r->val);

    /* Binary parameters, including a NUL byte. */
    const char bytes[] = {0, (char)0xff, 0};
    const char *bv[] = {bytes};
    const int bl[] = {3};
    res_t *b = new_res();
    CHECK(core_pg_query(pool, "SELECT length($1::bytea)::text || ':' || encode($1::bytea, 'hex')",
                        1, bv, bl, on_res, b, NULL) == 0,
          "binary submit");
    wait_res(b, 5000, "binary");
    CHECK(b->err == 0 && strcmp(b->val, "3:00ff00") == 0, "binary: %s %s %s", ename(b->err), b->msg,
          b->val);

    /* Prepared statement: prepared once per connection, then reused. */
    core_pg_stmt_t st, st2;
    CHECK(core_pg_pool_prepare(pool, "SELECT ($1::bigint * 2)::text", &st) == 0, "prepare");
    CHECK(core_pg_pool_prepare(pool, "SELECT ($1::bigint * 2)::text", &st2) == 0 && st2 == st,
          "prepare dedupe");
    int prepared_ok = 0;
    for (int i = 0; i < 6; i++) {
        char num[16];
        snprintf(num, sizeof num, "%d", i + 10);
        const char *pv[] = {num};
        res_t *pr = new_res();
        CHECK(core_pg_query_prepared(pool, st, 1, pv, NULL, on_res, pr, NULL) == 0, "prepared");
        wait_res(pr, 5000, "prepared");
        char want[16];
        snprintf(want, sizeof want, "%d", (i + 10) * 2);
        CHECK(pr->err == 0 && strcmp(pr->val, want) == 0, "prepared %d: %s %s %s", i,
              ename(pr->err), pr->msg, pr->val);
        prepared_ok++;
    }
    /* A bad prepared statement fails its use with ESQL, and later uses again. */
    core_pg_stmt_t bad;
    CHECK(core_pg_pool_prepare(pool, "SELECT * FROM no_such_table_xyz", &bad) == 0, "prepare bad");
    for (int i = 0; i < 2; i++) {
        res_t *br = new_res();
        CHECK(core_pg_query_prepared(pool, bad, 0, NULL, NULL, on_res, br, NULL) == 0, "bad");
        wait_res(br, 5000, "bad prepared");
        CHECK(br->err == CORE_PG_ESQL && strcmp(br->sqlstate, "42P01") == 0, "bad prepared: %s %s",
              ename(br->err), br->sqlstate);
    }

    res_t *e = q("SELECT 1/0", 0, NULL);
    wait_res(e, 5000, "division by zero");
    CHECK(e->err == CORE_PG_ESQL && strcmp(e->sqlstate, "22012") == 0 && e->msg[0], "1/0: %s %s",
          ename(e->err), e->sqlstate);
    /* The connection is still fine after an error. */
    res_t *after = run_ok("SELECT 'after'", 0, NULL);
    CHECK(strcmp(after->val, "after") == 0, "after error");

    CHECK(core_pg_query(pool, "SELECT 1", -1, NULL, NULL, on_res, NULL, NULL) == UV_EINVAL,
          "nparams -1 accepted");
    CHECK(core_pg_query(pool, NULL, 0, NULL, NULL, on_res, NULL, NULL) == UV_EINVAL,
          "NULL sql accepted");
    CHECK(core_pg_pool_pending(pool) == 0, "pending not 0");

    core_buf_t m;
    core_buf_init(&m);
    core_metrics_render(&m);
    const char *txt = core_buf_cstr(&m);
    bool metrics = strstr(txt, "meridian_pg_queries_total{shard=\"drv\"}") &&
                   strstr(txt, "meridian_pg_connections_ready{shard=\"drv\"} ") &&
                   strstr(txt, "meridian_pg_query_duration_seconds_bucket{shard=\"drv\"");
    CHECK(metrics, "metrics missing:\n%s", txt);
    core_buf_free(&m);

    close_pool();
    core_jw_key(w, "prepared_ok");
    core_jw_int(w, prepared_ok);
    core_jw_key(w, "sqlstate");
    core_jw_str(w, e->sqlstate);
    core_jw_key(w, "metrics");
    core_jw_bool(w, metrics);
}

static void scenario_pipeline(core_buf_t *out, core_jw_t *w)
{
    enum { N = 1000 };
    open_pool(2, 10000, 0, 0);
    wait_ready(true, 10000);
    res_t *rs[N];
    char num[N][12];
    uint64_t t0 = core_now_ms();
    for (int i = 0; i < N; i++) {
        snprintf(num[i], sizeof num[i], "%d", i);
        const char *v[] = {num[i]};
        rs[i] = q("SELECT $1::int * 3", 1, v);
    }
    size_t pending = core_pg_pool_pending(pool);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        wait_res(rs[i], 20000, "pipelined query");
        char want[16];
        snprintf(want, sizeof want, "%d", i * 3);
        CHECK(rs[i]->err == 0 && strcmp(rs[i]->val, want) == 0, "query %d: %s %s %s", i,
              ename(rs[i]->err), rs[i]->msg, rs[i]->val);
        ok++;
    }
    uint64_t ms = core_now_ms() - t0;
    CHECK(core_pg_pool_pending(pool) == 0, "pending after all answered");
    close_pool();
    core_jw_key(w, "n");
    core_jw_int(w, N);
    core_jw_key(w, "ok_count");
    core_jw_int(w, ok);
    core_jw_key(w, "pending_at_submit");
    core_jw_int(w, (int64_t)pending);
    core_jw_key(w, "ms");
    core_jw_int(w, (int64_t)ms);
}

static res_t *badd(core_pg_batch_t *b, const char *sql, int n, const char *const *v)
{
    res_t *r = new_res();
    CHECK(core_pg_batch_add(b, sql, n, v, NULL, on_res, r, NULL) == 0, "batch_add");
    return r;
}

static void scenario_batch(core_buf_t *out, core_jw_t *w)
{
    open_pool(2, 10000, 0, 0);
    wait_ready(true, 10000);
    run_ok("DROP TABLE IF EXISTS t_batch", 0, NULL);
    run_ok("CREATE TABLE t_batch (id int PRIMARY KEY, v text)", 0, NULL);
    const char *ins = "INSERT INTO t_batch (id, v) VALUES ($1::int, $2)";

    /* One failing statement: it gets ESQL, every other one EABORTED, none committed. */
    core_pg_batch_t *b = core_pg_batch_begin(pool);
    const char *a1[] = {"1", "a"}, *a2[] = {"1", "dup"}, *a3[] = {"2", "b"};
    res_t *r1 = badd(b, ins, 2, a1), *r2 = badd(b, ins, 2, a2), *r3 = badd(b, ins, 2, a3);
    CHECK(core_pg_batch_len(b) == 3, "batch len");
    CHECK(core_pg_batch_commit(b) == 0, "commit 1");
    wait_res(r1, 5000, "b1 r1");
    wait_res(r2, 5000, "b1 r2");
    wait_res(r3, 5000, "b1 r3");
    CHECK(r1->err == CORE_PG_EABORTED && r2->err == CORE_PG_ESQL && r3->err == CORE_PG_EABORTED,
          "batch 1: %s %s %s", ename(r1->err), ename(r2->err), ename(r3->err));
    CHECK(strcmp(r2->sqlstate, "23505") == 0, "batch 1 sqlstate %s", r2->sqlstate);
    res_t *c1 = run_ok("SELECT count(*) FROM t_batch", 0, NULL);
    CHECK(strcmp(c1->val, "0") == 0, "after failed batch count=%s", c1->val);

    /* The next batch on the same pool is fine. */
    b = core_pg_batch_begin(pool);
    const char *g1[] = {"1", "a"}, *g2[] = {"2", "b"}, *g3[] = {"3", NULL};
    res_t *s1 = badd(b, ins, 2, g1), *s2 = badd(b, ins, 2, g2), *s3 = badd(b, ins, 2, g3);
    CHECK(core_pg_batch_commit(b) == 0, "commit 2");
    wait_res(s3, 5000, "b2");
    wait_res(s1, 5000, "b2");
    wait_res(s2, 5000, "b2");
    CHECK(s1->err == 0 && s2->err == 0 && s3->err == 0, "batch 2: %s %s %s", ename(s1->err),
          ename(s2->err), ename(s3->err));

    /* Prepared statements inside a batch. */
    core_pg_stmt_t st;
    CHECK(core_pg_pool_prepare(pool, ins, &st) == 0, "prepare");
    b = core_pg_batch_begin(pool);
    res_t *p[2];
    const char *pv[2][2] = {{"4", "d"}, {"5", "e"}};
    for (int i = 0; i < 2; i++) {
        p[i] = new_res();
        CHECK(core_pg_batch_add_prepared(b, st, 2, pv[i], NULL, on_res, p[i], NULL) == 0, "addp");
    }
    CHECK(core_pg_batch_commit(b) == 0, "commit 3");
    wait_res(p[0], 5000, "b3");
    wait_res(p[1], 5000, "b3");
    CHECK(p[0]->err == 0 && p[1]->err == 0, "batch 3: %s %s", ename(p[0]->err), ename(p[1]->err));

    /* Empty and discarded batches. */
    b = core_pg_batch_begin(pool);
    CHECK(core_pg_batch_commit(b) == UV_EINVAL, "empty batch committed");
    b = core_pg_batch_begin(pool);
    res_t *dr = badd(b, ins, 2, a1);
    dr->must_not_run = true;
    core_pg_batch_discard(b);

    res_t *c2 = run_ok("SELECT count(*)::text || ',' || count(v)::text FROM t_batch", 0, NULL);
    CHECK(strcmp(c2->val, "5,4") == 0, "after good batches count=%s", c2->val);
    run_ok("DROP TABLE t_batch", 0, NULL);
    close_pool();
    core_jw_key(w, "failed_batch");
    core_jw_str(w, "EABORTED,ESQL,EABORTED");
    core_jw_key(w, "rows");
    core_jw_int(w, 5);
}

static void scenario_timeout(core_buf_t *out, core_jw_t *w)
{
    open_pool(1, 200, 0, 0);
    wait_ready(true, 10000);
    res_t *slow = q("SELECT pg_sleep(5)", 0, NULL);
    sleep_ms(50);
    /* Pipelined behind it on the one connection, with a later deadline: it is
     * lost with the connection, not timed out. */
    res_t *behind = q("SELECT 'behind'", 0, NULL);
    wait_res(slow, 3000, "slow query");
    CHECK(slow->err == UV_ETIMEDOUT, "slow: %s %s", ename(slow->err), slow->msg);
    CHECK(slow->ms >= 150 && slow->ms < 1500, "slow timed out after %llu ms",
          (unsigned long long)slow->ms);
    wait_res(behind, 3000, "query behind the slow one");
    CHECK(behind->err == UV_ECONNRESET, "behind: %s", ename(behind->err));
    /* The pool reconnects by itself; a query submitted now waits for that. */
    res_t *next = q("SELECT 'next'", 0, NULL);
    wait_res(next, 5000, "query after the timeout");
    CHECK(next->err == 0 && strcmp(next->val, "next") == 0, "next: %s %s", ename(next->err),
          next->msg);
    close_pool();
    core_jw_key(w, "timeout_ms");
    core_jw_int(w, (int64_t)slow->ms);
    core_jw_key(w, "behind");
    core_jw_str(w, ename(behind->err));
    core_jw_key(w, "recovered_ms");
    core_jw_int(w, (int64_t)next->ms);
}

static void scenario_cancel(core_buf_t *out, core_jw_t *w)
{
    /* One connection, one statement in flight: the rest queue. */
    open_pool(1, 5000, 2, 1);
    wait_ready(true, 10000);

    core_pg_req_t *h;
    res_t *inflight = new_res();
    CHECK(core_pg_query(pool, "SELECT pg_sleep(0.3)", 0, NULL, NULL, on_res, inflight, &h) == 0,
          "submit");
    inflight->must_not_run = true;
    core_pg_cancel(h);

    res_t *queued = new_res();
    CHECK(core_pg_query(pool, "SELECT 'queued'", 0, NULL, NULL, on_res, queued, &h) == 0,
          "submit queued");
    CHECK(core_pg_pool_pending(pool) == 2, "pending %zu, want 2", core_pg_pool_pending(pool));
    queued->must_not_run = true;
    core_pg_cancel(h);
    CHECK(core_pg_pool_pending(pool) == 1, "cancelled queued query still pending");

    /* Queue bound: 2 queued, then UV_EBUSY. */
    res_t *f1 = q("SELECT 'f1'", 0, NULL);
    res_t *f2 = q("SELECT 'f2'", 0, NULL);
    int busy = core_pg_query(pool, "SELECT 'f3'", 0, NULL, NULL, on_res, NULL, NULL);
    CHECK(busy == UV_EBUSY, "third queued query: %s", ename(busy));
    wait_res(f1, 5000, "f1");
    wait_res(f2, 5000, "f2");
    CHECK(f1->err == 0 && strcmp(f1->val, "f1") == 0 && f2->err == 0, "f1/f2: %s %s / %s %s",
          ename(f1->err), f1->msg, ename(f2->err), f2->msg);
    CHECK(f1->ms >= 250, "f1 did not wait for the cancelled query (%llu ms)",
          (unsigned long long)f1->ms);

    /* Cancelling a statement of a batch drops its callback, not the statement. */
    run_ok("DROP TABLE IF EXISTS t_cancel", 0, NULL);
    run_ok("CREATE TABLE t_cancel (id int PRIMARY KEY)", 0, NULL);
    core_pg_batch_t *b = core_pg_batch_begin(pool);
    res_t *x1 = new_res(), *x2 = new_res();
    const char *v1[] = {"1"}, *v2[] = {"2"};
    CHECK(core_pg_batch_add(b, "INSERT INTO t_cancel VALUES ($1::int)", 1, v1, NULL, on_res, x1,
                            &h) == 0,
          "add");
    x1->must_not_run = true;
    CHECK(core_pg_batch_add(b, "INSERT INTO t_cancel VALUES ($1::int)", 1, v2, NULL, on_res, x2,
                            NULL) == 0,
          "add");
    core_pg_cancel(h);
    CHECK(core_pg_batch_commit(b) == 0, "commit");
    wait_res(x2, 5000, "x2");
    CHECK(x2->err == 0, "x2: %s", ename(x2->err));
    res_t *cnt = run_ok("SELECT count(*) FROM t_cancel", 0, NULL);
    CHECK(strcmp(cnt->val, "2") == 0, "t_cancel count=%s", cnt->val);
    run_ok("DROP TABLE t_cancel", 0, NULL);
    sleep_ms(100); /* a late callback for a cancelled request would abort us here */

    /* Close: every pending callback runs with UV_ECANCELED before close returns. */
    res_t *c1 = q("SELECT pg_sleep(2)", 0, NULL);
    res_t *c2 = q("SELECT 'c2'", 0, NULL);
    core_pg_batch_t *open_batch = core_pg_batch_begin(pool);
    res_t *c3 = badd(open_batch, "SELECT 1", 0, NULL);
    c3->must_not_run = true;
    core_pg_pool_t *p = pool;
    close_pool();
    CHECK(c1->calls == 1 && c1->err == UV_ECANCELED, "close: in flight got %s (%d calls)",
          ename(c1->err), c1->calls);
    CHECK(c2->calls == 1 && c2->err == UV_ECANCELED, "close: queued got %s", ename(c2->err));
    CHECK(!core_pg_pool_ready(p), "ready after close");
    CHECK(core_pg_query(p, "SELECT 1", 0, NULL, NULL, on_res, NULL, NULL) == UV_ECANCELED,
          "query after close accepted");
    CHECK(core_pg_batch_commit(open_batch) == UV_ECANCELED, "batch commit after close");
    core_jw_key(w, "busy");
    core_jw_str(w, ename(busy));
    core_jw_key(w, "close");
    core_jw_str(w, ename(c1->err));
}

static void scenario_outage(core_buf_t *out, core_jw_t *w)
{
    open_pool(2, 3000, 0, 0);
    wait_ready(true, 10000);
    for (int i = 0; i < 10; i++)
        run_ok("SELECT 1", 0, NULL);
    res_t *longq = q("SELECT pg_sleep(30)", 0, NULL);
    sleep_ms(50);

    core_jw_t lw;
    core_buf_t lb;
    core_buf_init(&lb);
    begin_line(&lb, &lw);
    core_jw_key(&lw, "phase");
    core_jw_str(&lw, "up");
    core_jw_obj_close(&lw);
    emit(&lb);

    expect_line("stopping", 30000);
    uint64_t down_ms = wait_ready(false, 10000);
    wait_res(longq, 5000, "in-flight query during the outage");
    /* While down, work fails fast instead of piling up. */
    res_t *dq = new_res();
    int rc = core_pg_query(pool, "SELECT 1", 0, NULL, NULL, on_res, dq, NULL);
    if (rc == 0) {
        wait_res(dq, 5000, "query while down");
        rc = dq->err;
    }
    CHECK(rc != 0, "a query succeeded while the server was down");
    begin_line(&lb, &lw);
    core_jw_key(&lw, "phase");
    core_jw_str(&lw, "down");
    core_jw_key(&lw, "ms");
    core_jw_int(&lw, (int64_t)down_ms);
    core_jw_key(&lw, "inflight_err");
    core_jw_str(&lw, ename(longq->err));
    core_jw_key(&lw, "query_err");
    core_jw_str(&lw, ename(rc));
    core_jw_obj_close(&lw);
    emit(&lb);

    expect_line("started", 60000);
    uint64_t up_ms = wait_ready(true, 15000);
    begin_line(&lb, &lw);
    core_jw_key(&lw, "phase");
    core_jw_str(&lw, "recovered");
    core_jw_key(&lw, "ms");
    core_jw_int(&lw, (int64_t)up_ms);
    core_jw_obj_close(&lw);
    emit(&lb);
    core_buf_free(&lb);

    enum { N = 100 };
    res_t *rs[N];
    for (int i = 0; i < N; i++)
        rs[i] = q("SELECT 'back'", 0, NULL);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        wait_res(rs[i], 10000, "query after recovery");
        CHECK(rs[i]->err == 0, "after recovery: %s %s", ename(rs[i]->err), rs[i]->msg);
        ok++;
    }
    close_pool();
    core_jw_key(w, "phase");
    core_jw_str(w, "done");
    core_jw_key(w, "ok_after");
    core_jw_int(w, ok);
}

static int notified;
static char notified_payload[64];

static void on_notify(const char *channel, const char *payload, void *ud)
{
    /* Must not call into the pool from here: only record. */
    if (strcmp(channel, "drv_events") == 0) {
        notified++;
        snprintf(notified_payload, sizeof notified_payload, "%s", payload);
    }
}

static void scenario_listen(core_buf_t *out, core_jw_t *w)
{
    core_pg_pool_opts_t o = {
        .name = "drv",
        .conninfo = conninfo,
        .size = 2,
        .listen = "drv_events",
        .on_notify = on_notify,
    };
    core_pg_pool_opts_t bad = o;
    bad.listen = "x; DROP TABLE y";
    CHECK(core_pg_pool_new(loop, &bad) == NULL, "a channel that is not an identifier is refused");
    pool = core_pg_pool_new(loop, &o);
    CHECK(pool, "core_pg_pool_new failed");
    wait_ready(true, 10000);
    /* The LISTEN goes out with the connection's first statements; a round trip
     * on every connection makes sure it has been processed. */
    run_ok("SELECT 1", 0, NULL);
    run_ok("SELECT 1", 0, NULL);
    run_ok("SELECT pg_notify('drv_events', 'first')", 0, NULL);
    wait_flag(&notified, 5000, "the first notification");
    CHECK(strcmp(notified_payload, "first") == 0, "payload %s", notified_payload);
    /* Again, as another statement (possibly on the other connection); the
     * notification may come with the statement's own answer. */
    int before = notified;
    run_ok("SELECT pg_notify('drv_events', 'second')", 0, NULL);
    uint64_t deadline = core_now_ms() + 5000;
    while (notified == before && core_now_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    CHECK(notified > before, "second notification");
    close_pool();
    core_jw_key(w, "notifications");
    core_jw_int(w, notified);
}

static void scenario_throughput(core_buf_t *out, core_jw_t *w)
{
    enum { N = 10000 };
    open_pool(1, 30000, 0, 0);
    wait_ready(true, 10000);
    run_ok("DROP TABLE IF EXISTS t_tp", 0, NULL);
    run_ok("CREATE TABLE t_tp (id bigint PRIMARY KEY, body text NOT NULL)", 0, NULL);
    core_pg_stmt_t st;
    CHECK(core_pg_pool_prepare(pool, "INSERT INTO t_tp (id, body) VALUES ($1::bigint, $2)", &st) ==
              0,
          "prepare");
    res_t *last = NULL;
    core_pg_batch_t *b = core_pg_batch_begin(pool);
    char id[24];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "%d", i);
        const char *v[] = {id, "a message body of a typical small size, sixty-four bytes long"};
        last = new_res();
        CHECK(core_pg_batch_add_prepared(b, st, 2, v, NULL, on_res, last, NULL) == 0, "add");
    }
    uint64_t t0 = core_now_ns();
    CHECK(core_pg_batch_commit(b) == 0, "commit");
    wait_res(last, 30000, "10k batch");
    double secs = (double)(core_now_ns() - t0) / 1e9;
    CHECK(last->err == 0, "batch: %s %s", ename(last->err), last->msg);
    res_t *c = run_ok("SELECT count(*) FROM t_tp", 0, NULL);
    CHECK(strcmp(c->val, "10000") == 0, "count %s", c->val);
    run_ok("DROP TABLE t_tp", 0, NULL);
    close_pool();
    core_jw_key(w, "rows");
    core_jw_int(w, N);
    core_jw_key(w, "ms");
    core_jw_int(w, (int64_t)(secs * 1000));
    core_jw_key(w, "rows_per_s");
    core_jw_int(w, (int64_t)(N / secs));
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: driver_pg_client <scenario> <conninfo>\n");
        return 2;
    }
    scenario = argv[1];
    conninfo = argv[2];
    core_init();
    core_log_init("driver_pg_client", "-", getenv("DRIVER_DEBUG") ? CORE_LOG_DEBUG : CORE_LOG_INFO);
    core_metrics_init(1);
    loop = core_xmalloc(sizeof *loop);
    uv_loop_init(loop);
    uv_timer_init(loop, &wake);
    uv_timer_start(&wake, on_wake, 20, 20);

    bool outage = strcmp(scenario, "outage") == 0;
    if (outage) {
        core_buf_init(&inbuf);
        uv_pipe_init(loop, &in, 0);
        CHECK(uv_pipe_open(&in, 0) == 0, "stdin is not a pipe");
        uv_read_start((uv_stream_t *)&in, on_alloc, on_read);
    }

    core_buf_t out;
    core_buf_init(&out);
    core_jw_t w;
    begin_line(&out, &w);
    if (strcmp(scenario, "basic") == 0)
        scenario_basic(&out, &w);
    else if (strcmp(scenario, "pipeline") == 0)
        scenario_pipeline(&out, &w);
    else if (strcmp(scenario, "batch") == 0)
        scenario_batch(&out, &w);
    else if (strcmp(scenario, "timeout") == 0)
        scenario_timeout(&out, &w);
    else if (strcmp(scenario, "cancel") == 0)
        scenario_cancel(&out, &w);
    else if (outage)
        scenario_outage(&out, &w);
    else if (strcmp(scenario, "throughput") == 0)
        scenario_throughput(&out, &w);
    else if (strcmp(scenario, "listen") == 0)
        scenario_listen(&out, &w);
    else
        fail("unknown scenario");
    core_jw_key(&w, "ok");
    core_jw_bool(&w, true);
    core_jw_obj_close(&w);
    emit(&out);
    core_buf_free(&out);

    /* Every handle of the pool must close: the loop has to end by itself. */
    uv_close((uv_handle_t *)&wake, NULL);
    if (outage) {
        uv_close((uv_handle_t *)&in, NULL);
        core_buf_free(&inbuf);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(loop) == 0, "handles left open on the loop");
    free(loop);
    for (size_t i = 0; i < nkept; i++)
        free(kept[i]);
    free(kept);
    core_log_flush();
    return 0;
}
