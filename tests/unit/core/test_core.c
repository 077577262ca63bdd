/* Unit tests for core/core.c: rendezvous placement. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "core/core.h"

/* Growing from n to n+1 places moves keys only to the new place, and the
 * keys spread evenly. */
static void test_rendezvous_moves_only_to_new_place(void **state)
{
    int counts[4] = {0};
    int moved = 0;
    for (int k = 0; k < 4000; k++) {
        char key[32];
        int len = snprintf(key, sizeof key, "w_%d", k);
        int a = core_rendezvous(key, (size_t)len, 3);
        int b = core_rendezvous(key, (size_t)len, 4);
        assert_in_range(a, 0, 2);
        assert_true(b == a || b == 3);
        moved += b == 3;
        counts[a]++;
        assert_int_equal(a, core_rendezvous(key, (size_t)len, 3));
    }
    for (int i = 0; i < 3; i++)
        assert_in_range(counts[i], 1100, 1570);
    assert_in_range(moved, 800, 1200); /* about a quarter */
    assert_int_equal(core_rendezvous("x", 1, 1), 0);
}

/* Placements of existing workspaces depend on the exact function: pin it to
 * BLAKE2b-64 over key || int32 index, highest score wins. */
static void test_rendezvous_is_pinned(void **state)
{
    const uint8_t key[32] = {1, 2, 3};
    int best = 0;
    uint64_t best_score = 0;
    for (int i = 0; i < 5; i++) {
        uint8_t in[36], out[8];
        memcpy(in, key, 32);
        int32_t idx = i;
        memcpy(in + 32, &idx, 4);
        crypto_generichash(out, sizeof out, in, sizeof in, NULL, 0);
        uint64_t score;
        memcpy(&score, out, sizeof score);
        if (i == 0 || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    assert_int_equal(core_rendezvous(key, sizeof key, 5), best);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rendezvous_moves_only_to_new_place),
        cmocka_unit_test(test_rendezvous_is_pinned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
