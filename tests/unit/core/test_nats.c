/* Unit tests for the pure parts of core/nats.c: subject validation, the
 * reconnect delay, and URL redaction for logs. The client itself is tested
 * against a real nats-server (tests/integration/nats_client.test.mjs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "core/core.h"
#include "core/nats.h"

static void test_subject_valid(void **state)
{
    static const struct {
        const char *subject;
        bool plain;     /* valid for publishing */
        bool wildcards; /* valid for subscribing */
    } cases[] = {
        {"a", true, true},
        {"ev.us-east.eu-west.w1.msg", true, true},
        {"_INBOX.abc.17", true, true},
        {"a.*.c", false, true},
        {"a.>", false, true},
        {">", false, true},
        {"*", false, true},
        {"a.>.c", false, false},
        {"a.b*", false, false},
        {"a.*b", false, false},
        {"a.b>", false, false},
        {"", false, false},
        {".", false, false},
        {"a.", false, false},
        {".a", false, false},
        {"a..b", false, false},
        {"a b", false, false},
        {"a\tb", false, false},
        {"a\r\nPUB x 1", false, false},
        {"a\x7f", false, false},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++) {
        if (core_nats_subject_valid(cases[i].subject, false) != cases[i].plain ||
            core_nats_subject_valid(cases[i].subject, true) != cases[i].wildcards)
            fail_msg("case %zu: \"%s\"", i, cases[i].subject);
    }
    assert_false(core_nats_subject_valid(NULL, true));
}

static void test_backoff_delay_ceiling_and_jitter(void **state)
{
    /* attempt n waits random(0, min(cap, base * 2^(n-1))). */
    static const struct {
        int attempts;
        uint32_t ceiling;
    } cases[] = {{0, 100},  {1, 100},  {2, 200},  {3, 400},   {4, 800},    {5, 1600},
                 {6, 3200}, {7, 5000}, {8, 5000}, {40, 5000}, {1000, 5000}};
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++) {
        uint32_t lo = UINT32_MAX, hi = 0;
        for (int k = 0; k < 500; k++) {
            uint32_t d = core_nats_backoff_delay(100, 5000, cases[i].attempts);
            if (d > cases[i].ceiling)
                fail_msg("attempt %d: %u > %u", cases[i].attempts, d, cases[i].ceiling);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        /* Full jitter: draws cover most of [0, ceiling], not one value. */
        assert_true(lo < cases[i].ceiling / 4);
        assert_true(hi > cases[i].ceiling * 3 / 4);
    }
}

static void test_redact_url(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
        {"nats://user:secret@10.0.0.1:4222", "nats://10.0.0.1:4222"},
        {"nats://s3cr3t-token@host:4222", "nats://host:4222"},
        {"nats://a:b@h1:1,nats://h2:2,tls://c:d@h3:3", "nats://h1:1,nats://h2:2,tls://h3:3"},
        {"host:4222", "host:4222"},
        {"u:p@host:4222", "host:4222"},
        {"", ""},
    };
    for (size_t i = 0; i < CORE_ARRAY_LEN(cases); i++) {
        char *got = core_nats_redact_url(cases[i].in);
        assert_string_equal(got, cases[i].out);
        free(got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subject_valid),
        cmocka_unit_test(test_backoff_delay_ceiling_and_jitter),
        cmocka_unit_test(test_redact_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
