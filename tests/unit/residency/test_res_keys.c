/* Unit tests for residency/res_keys.c: wrapped data keys and encrypted bodies
 * open only with the right key and associated data, tampering is caught,
 * plaintext passes through, the blind index normalises as documented, and
 * key files are refused when malformed or readable by others. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"
#include "residency/res_keys.h"

static const uint8_t K1[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                               17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t K2[32] = {32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
                               16, 15, 14, 13, 12, 11, 10, 9,  8,  7,  6,  5,  4,  3,  2,  1};

static int setup(void **state)
{
    return core_init();
}

static void test_wrap_round_trip(void **state)
{
    res_keys_master_t m, other;
    res_keys_master_from_bytes(&m, K1);
    res_keys_master_from_bytes(&other, K2);
    assert_int_equal(strlen(m.id), RES_KEYS_ID_LEN);
    assert_string_not_equal(m.id, other.id);
    uint8_t dk[32], back[32], w[RES_KEYS_WRAPPED_BYTES], w2[RES_KEYS_WRAPPED_BYTES];
    res_keys_dk_new(dk);
    assert_int_equal(res_keys_wrap(&m, "w_1", "us-east", dk, w), 0);
    assert_int_equal(res_keys_unwrap(&m, "w_1", "us-east", w, sizeof w, back), 0);
    assert_memory_equal(dk, back, 32);
    /* A fresh nonce each time. */
    assert_int_equal(res_keys_wrap(&m, "w_1", "us-east", dk, w2), 0);
    assert_memory_not_equal(w, w2, sizeof w);
    /* Wrong master, workspace or region: refused, output zeroed. */
    assert_int_equal(res_keys_unwrap(&other, "w_1", "us-east", w, sizeof w, back), RES_KEYS_EAUTH);
    uint8_t zero[32] = {0};
    assert_memory_equal(back, zero, 32);
    assert_int_equal(res_keys_unwrap(&m, "w_2", "us-east", w, sizeof w, back), RES_KEYS_EAUTH);
    assert_int_equal(res_keys_unwrap(&m, "w_1", "eu-west", w, sizeof w, back), RES_KEYS_EAUTH);
    assert_int_equal(res_keys_unwrap(&m, "w_1", "us-east", w, sizeof w - 1, back),
                     RES_KEYS_EFORMAT);
    /* Any altered byte fails. */
    for (size_t i = 0; i < sizeof w; i += 7) {
        w[i] ^= 0x40;
        assert_int_equal(res_keys_unwrap(&m, "w_1", "us-east", w, sizeof w, back), RES_KEYS_EAUTH);
        w[i] ^= 0x40;
    }
    assert_int_equal(res_keys_wrap(&m, "", "us-east", dk, w), RES_KEYS_EINVAL);
    res_keys_master_free(&m);
    res_keys_master_free(&other);
    assert_null(m.key);
    res_keys_master_free(&m); /* twice is safe */
}

static void test_key_id(void **state)
{
    char a[RES_KEYS_ID_LEN + 1], b[RES_KEYS_ID_LEN + 1];
    res_keys_key_id(K1, a);
    res_keys_key_id(K1, b);
    assert_string_equal(a, b);
    uint8_t h[32];
    crypto_generichash(h, 32, K1, 32, NULL, 0);
    char want[17];
    sodium_bin2hex(want, sizeof want, h, 8);
    assert_string_equal(a, want);
    /* The id is not the key. */
    char khex[65];
    sodium_bin2hex(khex, sizeof khex, K1, 32);
    assert_null(strstr(khex, a));
}

static void test_body_round_trip(void **state)
{
    uint8_t dk[32], dk2[32];
    res_keys_dk_new(dk);
    res_keys_dk_new(dk2);
    core_buf_t enc, dec;
    core_buf_init(&enc);
    core_buf_init(&dec);
    const char *texts[] = {"hello", "x", "ünïcødé ✓ 日本語", "a\"quoted\\ body\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        res_keys_encrypt(dk, "m_abc", texts[i], strlen(texts[i]), &enc);
        assert_true(res_keys_is_encrypted(enc.base, enc.len));
        assert_int_equal(enc.len, res_keys_encrypted_len(strlen(texts[i])));
        assert_int_equal(strlen(core_buf_cstr(&enc)), enc.len);
        if (strlen(texts[i]) > 3) /* a short one could occur in base64 by chance */
            assert_null(strstr(core_buf_cstr(&enc), texts[i]));
        for (size_t k = 3; k < enc.len; k++) /* base64url, no padding */
            assert_non_null(strchr(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", enc.base[k]));
        assert_int_equal(res_keys_decrypt(dk, "m_abc", enc.base, enc.len, &dec), 0);
        assert_int_equal(dec.len, strlen(texts[i]));
        assert_string_equal(core_buf_cstr(&dec), texts[i]);
        /* Wrong message id (AD) or key. */
        assert_int_equal(res_keys_decrypt(dk, "m_abd", enc.base, enc.len, &dec), RES_KEYS_EAUTH);
        assert_int_equal(dec.len, 0);
        assert_int_equal(res_keys_decrypt(dk2, "m_abc", enc.base, enc.len, &dec), RES_KEYS_EAUTH);
        assert_int_equal(res_keys_decrypt(NULL, "m_abc", enc.base, enc.len, &dec), RES_KEYS_EAUTH);
    }
    /* Two encryptions of one text differ (random nonces). */
    core_buf_t enc2;
    core_buf_init(&enc2);
    res_keys_encrypt(dk, "m_abc", "same", 4, &enc);
    res_keys_encrypt(dk, "m_abc", "same", 4, &enc2);
    assert_string_not_equal(core_buf_cstr(&enc), core_buf_cstr(&enc2));
    /* Tampering: every character position changed fails (or is malformed). */
    char *t = strdup(core_buf_cstr(&enc));
    for (size_t k = 3; k < enc.len; k++) {
        char saved = t[k];
        t[k] = t[k] == 'A' ? 'B' : 'A';
        int rc = res_keys_decrypt(dk, "m_abc", t, enc.len, &dec);
        assert_true(rc == RES_KEYS_EAUTH || rc == RES_KEYS_EFORMAT);
        t[k] = saved;
    }
    /* Truncated, and not base64. */
    assert_int_equal(res_keys_decrypt(dk, "m_abc", t, 20, &dec), RES_KEYS_EFORMAT);
    assert_int_equal(res_keys_decrypt(dk, "m_abc", "e1.!!!!", 7, &dec), RES_KEYS_EFORMAT);
    assert_int_not_equal(res_keys_decrypt(dk, "m_abc", t, enc.len - 1, &dec), 0);
    free(t);
    /* Plaintext and tombstones pass through, with or without a key. */
    assert_int_equal(res_keys_decrypt(NULL, "m_abc", "plain text", 10, &dec), 0);
    assert_string_equal(core_buf_cstr(&dec), "plain text");
    assert_int_equal(res_keys_decrypt(dk, "m_abc", "", 0, &dec), 0);
    assert_string_equal(core_buf_cstr(&dec), "");
    res_keys_encrypt(dk, "m_abc", "", 0, &enc);
    assert_int_equal(enc.len, 0);
    assert_false(res_keys_is_encrypted("e1", 2));
    /* Plaintext that looks like a stored form is escaped, and reads back as written. */
    static const char *const looks[] = {"e1.abc", "e0.abc", "e1.", "plain", "e2.x", ""};
    for (size_t i = 0; i < sizeof looks / sizeof looks[0]; i++) {
        const char *stored = res_keys_plain(looks[i], strlen(looks[i]), &enc);
        bool esc = strncmp(looks[i], "e1.", 3) == 0 || strncmp(looks[i], "e0.", 3) == 0;
        if (esc)
            assert_true(strncmp(stored, "e0.", 3) == 0 && strcmp(stored + 3, looks[i]) == 0);
        else
            assert_ptr_equal(stored, looks[i]);
        assert_int_equal(res_keys_decrypt(NULL, "m_abc", stored, strlen(stored), &dec), 0);
        assert_string_equal(core_buf_cstr(&dec), looks[i]);
    }
    core_buf_free(&enc);
    core_buf_free(&enc2);
    core_buf_free(&dec);
}

/* The hashes of the terms of `text` as a literal. */
static char *lit(const uint8_t idx[32], const char *text)
{
    uint8_t t[RES_KEYS_MAX_TERMS][RES_KEYS_TERM_BYTES];
    size_t n = res_keys_terms(idx, text, strlen(text), t, RES_KEYS_MAX_TERMS);
    core_buf_t b;
    core_buf_init(&b);
    res_keys_terms_literal(&b, (const uint8_t(*)[RES_KEYS_TERM_BYTES])t, n);
    char *s = strdup(core_buf_cstr(&b));
    core_buf_free(&b);
    return s;
}

static size_t nterms(const uint8_t idx[32], const char *text)
{
    uint8_t t[RES_KEYS_MAX_TERMS][RES_KEYS_TERM_BYTES];
    return res_keys_terms(idx, text, strlen(text), t, RES_KEYS_MAX_TERMS);
}

static void test_terms(void **state)
{
    uint8_t dk[32], idx[32], dk2[32], idx2[32];
    memcpy(dk, K1, 32);
    memcpy(dk2, K2, 32);
    res_keys_index_key(dk, idx);
    res_keys_index_key(dk2, idx2);
    assert_memory_not_equal(idx, dk, 32);
    /* Table: text -> number of terms. */
    static const struct {
        const char *text;
        size_t n;
    } cases[] = {
        {"", 0},
        {"a", 0},                   /* shorter than 2 bytes */
        {"a b c", 0},               /* likewise */
        {"ab", 1},                  /* exactly 2 */
        {"Hello, hello HELLO!", 1}, /* case folded and deduplicated */
        {"the quick-brown_fox", 4}, /* '-' and '_' split */
        {"über straße", 2},         /* UTF-8 stays in its word */
        {"日本語 テキスト", 2},     /* any script */
        {"é", 1},                   /* one 2-byte character is 2 bytes */
        {"x1 2y 42", 3},            /* digits are term characters */
        {"...!!! ???", 0},          /* punctuation only */
        {"tab\tnew\nline", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = nterms(idx, cases[i].text);
        if (n != cases[i].n)
            fail_msg("\"%s\": %zu terms, want %zu", cases[i].text, n, cases[i].n);
    }
    /* Same term, same hash under one key; case and punctuation do not matter. */
    char *a = lit(idx, "Quokka"), *b = lit(idx, "...quokka!"), *c = lit(idx2, "quokka");
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(a), 2 + 2 + 3 + 32);
    assert_true(strncmp(a, "{\"\\\\x", 5) == 0);
    free(a);
    free(b);
    free(c);
    char *none = lit(idx, "!");
    assert_string_equal(none, "{}");
    free(none);
    char *two = lit(idx, "alpha beta");
    assert_int_equal(strlen(two), 2 + 2 * (2 + 3 + 32) + 1);
    free(two);
    /* Long terms are cut at 64 bytes: two words equal in their first 64. */
    char l1[200], l2[200];
    memset(l1, 'a', 100);
    l1[100] = 0;
    memset(l2, 'a', 64);
    memcpy(l2 + 64, "zzzz", 5);
    char *x = lit(idx, l1), *y = lit(idx, l2);
    assert_string_equal(x, y);
    free(x);
    free(y);
    /* ... and never inside a UTF-8 character: 63 'a' then 'é' keeps 63 bytes. */
    char u1[80], u2[80];
    memset(u1, 'a', 63);
    memcpy(u1 + 63, "é", 3);
    memset(u2, 'a', 63);
    u2[63] = 0;
    x = lit(idx, u1);
    y = lit(idx, u2);
    assert_string_equal(x, y);
    free(x);
    free(y);
    /* At most 256 terms per message, and max is honoured. */
    core_buf_t big;
    core_buf_init(&big);
    for (int i = 0; i < 1000; i++)
        core_buf_appendf(&big, "w%d ", i);
    uint8_t t[RES_KEYS_MAX_TERMS][RES_KEYS_TERM_BYTES];
    assert_int_equal(res_keys_terms(idx, big.base, big.len, t, 10000), RES_KEYS_MAX_TERMS);
    assert_int_equal(res_keys_terms(idx, big.base, big.len, t, 5), 5);
    /* Duplicates do not use up the cap. */
    core_buf_reset(&big);
    for (int i = 0; i < 1000; i++)
        core_buf_puts(&big, "same ");
    core_buf_puts(&big, "other");
    assert_int_equal(res_keys_terms(idx, big.base, big.len, t, 10000), 2);
    core_buf_free(&big);
}

static char g_dir[64];

static const char *key_file(const char *name, const char *content, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    chmod(path, mode);
    return path;
}

static void test_key_files(void **state)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/test_res_keys.XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    static const char HEX[] = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
    res_keys_master_t m;
    char err[256];
    assert_int_equal(res_keys_master_load(&m, key_file("ok", HEX, 0600), err, sizeof err), 0);
    assert_memory_equal(m.key, K1, 32);
    char want[17];
    res_keys_key_id(K1, want);
    assert_string_equal(m.id, want);
    res_keys_master_free(&m);
    char nl[80];
    snprintf(nl, sizeof nl, "%s\n", HEX);
    assert_int_equal(res_keys_master_load(&m, key_file("nl", nl, 0400), err, sizeof err), 0);
    res_keys_master_free(&m);

    static const struct {
        const char *content;
        mode_t mode;
        const char *mention;
    } bad[] = {
        {HEX, 0640, "permissions"},
        {HEX, 0604, "permissions"},
        {HEX, 0610, "permissions"},
        {"0102", 0600, "64 hex"},
        {"0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021", 0600, "64 hex"},
        {"zz02030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20", 0600, "not hex"},
        {"", 0600, "64 hex"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *p = key_file("bad", bad[i].content, bad[i].mode);
        err[0] = 0;
        assert_int_equal(res_keys_master_load(&m, p, err, sizeof err), RES_KEYS_EKEYFILE);
        assert_null(m.key);
        if (!strstr(err, bad[i].mention) || !strstr(err, p))
            fail_msg("case %zu: \"%s\" does not mention \"%s\" and the path", i, err,
                     bad[i].mention);
    }
    char missing[128];
    snprintf(missing, sizeof missing, "%s/missing", g_dir);
    assert_int_equal(res_keys_master_load(&m, missing, err, sizeof err), RES_KEYS_EKEYFILE);
    assert_non_null(strstr(err, "missing"));
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wrap_round_trip), cmocka_unit_test(test_key_id),
        cmocka_unit_test(test_body_round_trip), cmocka_unit_test(test_terms),
        cmocka_unit_test(test_key_files),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
