/* Unit tests for core/backoff.c: full jitter stays within the exponential ceiling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/backoff.h"
#include "core/core.h"

static void test_ceiling_without_jitter(void **state)
{
    core_backoff_t b;
    core_backoff_init(&b, 100, 1000);
    b.jitter = false;
    static const uint32_t want[] = {100, 200, 400, 800, 1000, 1000, 1000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_int_equal(core_backoff_next(&b), want[i]);
    core_backoff_reset(&b);
    assert_int_equal(core_backoff_next(&b), 100);
}

static void test_full_jitter_range_and_spread(void **state)
{
    core_backoff_t b;
    core_backoff_init(&b, 100, 5000);
    uint32_t ceiling = 100;
    for (int attempt = 0; attempt < 12; attempt++) {
        uint32_t d = core_backoff_next(&b);
        assert_true(d <= ceiling);
        ceiling = ceiling * 2 > 5000 ? 5000 : ceiling * 2;
    }
    /* Many draws at the cap must spread over the range, not cluster. */
    uint32_t lo = UINT32_MAX, hi = 0;
    for (int i = 0; i < 2000; i++) {
        uint32_t d = core_backoff_next(&b);
        assert_true(d <= 5000);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    assert_true(lo < 500);
    assert_true(hi > 4500);
}

static void test_huge_attempt_does_not_overflow(void **state)
{
    core_backoff_t b;
    core_backoff_init(&b, 1, 60000);
    b.attempt = 4000000000u;
    b.jitter = false;
    assert_int_equal(core_backoff_next(&b), 60000);
}

int main(void)
{
    core_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ceiling_without_jitter),
        cmocka_unit_test(test_full_jitter_range_and_spread),
        cmocka_unit_test(test_huge_attempt_does_not_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
