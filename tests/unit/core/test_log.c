/* Unit tests for core/log.c: logfmt quoting keeps user-controlled strings on one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/log.h"

static void test_quote_table(void **state)
{
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"/v1/healthz", "/v1/healthz"},
        {"", "\"\""},
        {"a b", "\"a b\""},
        {"a=b", "\"a=b\""},
        {"say \"hi\"", "\"say \\\"hi\\\"\""},
        {"line\nbreak", "\"line\\x0abreak\""},
        {"\x1b[31mred", "\"\\x1b[31mred\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        core_log_quote(buf, sizeof buf, cases[i].in, strlen(cases[i].in));
        assert_string_equal(buf, cases[i].out);
    }
}

static void test_quote_truncates(void **state)
{
    char buf[16];
    const char *in = "abcdefghijklmnopqrstuvwxyz";
    core_log_quote(buf, sizeof buf, in, strlen(in));
    assert_true(strlen(buf) < sizeof buf);
    assert_non_null(strstr(buf, "..."));
}

static void test_levels(void **state)
{
    core_log_level_t l;
    assert_int_equal(core_log_parse_level("debug", &l), 0);
    assert_int_equal(l, CORE_LOG_DEBUG);
    assert_int_equal(core_log_parse_level("WARN", &l), 0);
    assert_int_equal(l, CORE_LOG_WARN);
    assert_int_equal(core_log_parse_level("verbose", &l), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quote_table),
        cmocka_unit_test(test_quote_truncates),
        cmocka_unit_test(test_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
