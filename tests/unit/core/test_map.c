/* Unit tests for core/map.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/map.h"

static int freed;
static void count_free(void *v)
{
    freed++;
    free(v);
}

static void test_put_get_replace_remove(void **state)
{
    core_map_t *m = core_map_new();
    assert_null(core_map_get(m, "a"));
    assert_null(core_map_put(m, "a", "1"));
    assert_null(core_map_put(m, "b", "2"));
    assert_string_equal(core_map_get(m, "a"), "1");
    assert_string_equal(core_map_put(m, "a", "3"), "1"); /* replace returns the old value */
    assert_string_equal(core_map_get(m, "a"), "3");
    assert_int_equal(core_map_len(m), 2);
    assert_string_equal(core_map_remove(m, "a"), "3");
    assert_null(core_map_remove(m, "a"));
    assert_null(core_map_get(m, "a"));
    assert_string_equal(core_map_get(m, "b"), "2");
    assert_null(core_map_get(m, ""));
    core_map_free(m, NULL);
}

static void count_each(const char *key, void *val, void *ud)
{
    (*(int *)ud)++;
}

static void test_many_keys_survive_growth(void **state)
{
    core_map_t *m = core_map_new();
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "w_%d", i);
        int *v = core_xmalloc(sizeof *v);
        *v = i;
        assert_null(core_map_put(m, key, v));
    }
    assert_int_equal(core_map_len(m), 20000);
    for (int i = 0; i < 20000; i += 7) {
        snprintf(key, sizeof key, "w_%d", i);
        int *v = core_map_get(m, key);
        assert_non_null(v);
        assert_int_equal(*v, i);
    }
    int n = 0;
    core_map_each(m, count_each, &n);
    assert_int_equal(n, 20000);
    freed = 0;
    core_map_clear(m, count_free);
    assert_int_equal(freed, 20000);
    assert_int_equal(core_map_len(m), 0);
    core_map_free(m, count_free);
}

static void test_take_empties_the_map(void **state)
{
    core_map_t *m = core_map_new();
    char key[32];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "k%d", i);
        core_map_put(m, key, (void *)(intptr_t)(i + 1));
    }
    int seen[100] = {0};
    int found;
    for (int i = 0; i < 100; i++) {
        void *v = core_map_take(m, key, sizeof key, &found);
        assert_true(found);
        int k = atoi(key + 1);
        assert_int_equal((intptr_t)v, k + 1);
        assert_false(seen[k]);
        seen[k] = 1;
    }
    assert_int_equal(core_map_len(m), 0);
    assert_null(core_map_take(m, key, sizeof key, &found));
    assert_false(found);
    core_map_free(m, NULL);
}

int main(void)
{
    core_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_replace_remove),
        cmocka_unit_test(test_many_keys_survive_growth),
        cmocka_unit_test(test_take_empties_the_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
