/* Unit tests for core/admit.c: the bucket refills at its rate up to its
 * size, refunds never overfill, the shared bucket is one bucket across
 * processes, and retry hints stay in their range. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/wait.h>
#include <unistd.h>

#include "core/admit.h"

#define SEC 1000000000ull

static void test_bucket(void **state)
{
    core_bucket_t b;
    core_bucket_init(&b, 10, 5); /* 10/s, 5 at once */
    uint64_t t = 1 * SEC;
    for (int i = 0; i < 5; i++)
        assert_true(core_bucket_take(&b, t));
    assert_false(core_bucket_take(&b, t));
    /* 100 ms later: one more token. */
    assert_true(core_bucket_take(&b, t + SEC / 10));
    assert_false(core_bucket_take(&b, t + SEC / 10));
    /* Long idle: full again, never more than the burst. */
    int n = 0;
    while (core_bucket_take(&b, t + 100 * SEC))
        n++;
    assert_int_equal(n, 5);
    core_bucket_refund(&b);
    assert_true(core_bucket_take(&b, t + 100 * SEC));
    /* A clock that goes back does not mint tokens. */
    assert_false(core_bucket_take(&b, t));
    core_bucket_t full;
    core_bucket_init(&full, 1, 2);
    core_bucket_refund(&full);
    assert_true(core_bucket_take(&full, SEC));
    assert_true(core_bucket_take(&full, SEC));
    assert_false(core_bucket_take(&full, SEC));
}

static void test_shared_across_processes(void **state)
{
    core_admit_t *a = core_admit_shared_new(0.001, 100); /* 100 tokens, no refill to speak of */
    assert_non_null(a);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    for (int k = 0; k < 4; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            int got = 0;
            for (int i = 0; i < 100; i++)
                got += core_admit_take(a, SEC);
            (void)!write(fds[1], &got, sizeof got);
            _exit(0);
        }
    }
    int total = 0;
    for (int k = 0; k < 4; k++) {
        int got;
        assert_int_equal(read(fds[0], &got, sizeof got), (ssize_t)sizeof got);
        total += got;
        wait(NULL);
    }
    /* Four processes asked 400 times: the node's bucket gave exactly 100. */
    assert_int_equal(total, 100);
    close(fds[0]);
    close(fds[1]);
    core_admit_shared_free(a);
    core_admit_shared_free(NULL);
}

static void test_retry_hint(void **state)
{
    for (int i = 0; i < 1000; i++) {
        uint32_t h = core_admit_retry_ms(250, 1250);
        assert_true(h >= 250 && h < 1250);
    }
    assert_int_equal(core_admit_retry_ms(500, 500), 500);
}

/* A herd shed at once is told to come back at the queue's rate, in order,
 * up to the cap; once the queue has drained, a shed client waits only the
 * jitter. */
static void test_queue_hint(void **state)
{
    core_admit_queue_t q;
    core_admit_queue_init(&q, 100); /* a slot every 10 ms */
    uint64_t t0 = 5000000000ull;
    /* Jitter 0 (min == max): the hint is the slot. */
    for (int i = 0; i < 300; i++)
        assert_int_equal(core_admit_queue_hint_ms(&q, t0, 0, 0, 60000), (uint32_t)(i * 10));
    /* 300 slots handed out: 3 s of admissions. Half a second later, the
     * next slot is 2.5 s away. */
    assert_int_equal(core_admit_queue_hint_ms(&q, t0 + 500000000ull, 0, 0, 60000), 2500);
    /* The cap: no slot further than cap_ms, and the end stays put. */
    assert_int_equal(core_admit_queue_hint_ms(&q, t0, 0, 0, 1000), 1000);
    assert_int_equal(core_admit_queue_hint_ms(&q, t0, 0, 0, 1000), 1000);
    /* Idle for over a second (no slot handed out): the herd is over, the
     * queue starts again at now although slots were still ahead. */
    core_admit_queue_t idle;
    core_admit_queue_init(&idle, 100);
    for (int i = 0; i < 300; i++)
        core_admit_queue_hint_ms(&idle, t0, 0, 0, 60000);
    assert_int_equal(core_admit_queue_hint_ms(&idle, t0 + 900000000ull, 0, 0, 60000), 2100);
    assert_int_equal(core_admit_queue_hint_ms(&idle, t0 + 1800000000ull, 0, 0, 60000), 1210);
    assert_int_equal(core_admit_queue_hint_ms(&idle, t0 + 2900000000ull, 0, 0, 60000), 0);
    assert_int_equal(core_admit_queue_hint_ms(&idle, t0 + 2900000000ull, 0, 0, 60000), 10);
    /* Drained: the next shed client waits the jitter only. */
    uint64_t later = t0 + 60000000000ull;
    for (int i = 0; i < 100; i++) {
        core_admit_queue_t d;
        core_admit_queue_init(&d, 100);
        uint32_t h = core_admit_queue_hint_ms(&d, later, 100, 300, 60000);
        assert_true(h >= 100 && h < 300);
    }
    uint32_t h = core_admit_queue_hint_ms(&q, later, 100, 300, 60000);
    assert_true(h >= 100 && h < 300);
}

/* The shared queue is one for every process of the node: slots a child
 * handed out are not handed out again by its parent. */
static void test_shared_queue_hint(void **state)
{
    core_admit_t *a = core_admit_shared_new(100, 10); /* a slot every 10 ms */
    assert_non_null(a);
    uint64_t t0 = 7000000000ull;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < 50; i++)
            if (core_admit_hint_ms(a, t0, 0, 0, 60000) != (uint32_t)(i * 10))
                _exit(1);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(core_admit_hint_ms(a, t0, 0, 0, 60000), 500);
    uint32_t h = core_admit_hint_ms(a, t0, 100, 200, 60000);
    assert_true(h >= 510 + 100 && h < 510 + 200);
    core_admit_shared_free(a);
}

/* The one hint policy: slot + 100 ms + up to max(100 ms, burst/rate). */
static void test_slot_policy(void **state)
{
    core_admit_queue_t q;
    core_admit_queue_init(&q, 100);
    uint64_t t0 = 9000000000ull;
    uint32_t h = core_admit_queue_slot_ms(&q, t0, 50); /* burst/rate: 500 ms */
    assert_true(h >= 100 && h < 600);
    h = core_admit_queue_slot_ms(&q, t0, 1); /* 10 ms: the floor, 100 ms */
    assert_true(h >= 10 + 100 && h < 10 + 200);
    core_admit_t *a = core_admit_shared_new(100, 50);
    assert_non_null(a);
    h = core_admit_slot_ms(a, t0);
    assert_true(h >= 100 && h < 600);
    h = core_admit_slot_ms(a, t0); /* the next slot, 10 ms behind */
    assert_true(h >= 10 + 100 && h < 10 + 600);
    h = core_admit_slot_ms(a, t0 + 3600000000000ull); /* an hour on: drained */
    assert_true(h >= 100 && h < 600);
    core_admit_shared_free(a);
}

/* The headers of a hint: whole seconds rounded up, and the milliseconds. */
static void test_hint_headers(void **state)
{
    char h[CORE_ADMIT_HINT_HEADERS];
    core_admit_hint_headers(h, sizeof h, 1500);
    assert_string_equal(h, "Retry-After: 2\r\nMeridian-Retry-After-Ms: 1500\r\n");
    core_admit_hint_headers(h, sizeof h, 3000);
    assert_string_equal(h, "Retry-After: 3\r\nMeridian-Retry-After-Ms: 3000\r\n");
    core_admit_hint_headers(h, sizeof h, UINT32_MAX); /* the longest fits */
    assert_string_equal(h, "Retry-After: 4294968\r\nMeridian-Retry-After-Ms: 4294967295\r\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_shared_across_processes),
        cmocka_unit_test(test_retry_hint),
        cmocka_unit_test(test_queue_hint),
        cmocka_unit_test(test_shared_queue_hint),
        cmocka_unit_test(test_slot_policy),
        cmocka_unit_test(test_hint_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
