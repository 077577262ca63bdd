/* Unit tests for core/json.c: parsing limits, tree access and the writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/json.h"

typedef struct {
    const char *input;
    size_t max_depth;
    size_t max_bytes;
    size_t max_string;
    int ok;
    const char *err_substr;
} parse_case_t;

static const parse_case_t parse_cases[] = {
    {"{}", 0, 0, 0, 1, NULL},
    {"[1,2,3]", 0, 0, 0, 1, NULL},
    {"\"x\"", 0, 0, 0, 1, NULL},
    {"{\"a\":", 0, 0, 0, 0, "invalid JSON"},
    {"{\"a\":1,}", 0, 0, 0, 0, "invalid JSON"},
    {"", 0, 0, 0, 0, NULL},
    {"[[[[1]]]]", 4, 0, 0, 1, NULL},
    {"[[[[[1]]]]]", 4, 0, 0, 0, "nesting deeper than 4"},
    {"{\"a\":{\"b\":{\"c\":1}}}", 2, 0, 0, 0, "nesting deeper than 2"},
    {"\"0123456789\"", 0, 5, 0, 0, "larger than 5 bytes"},
    {"{\"k\":\"0123456789\"}", 0, 0, 4, 0, "string longer than 4"},
    {"{\"0123456789\":1}", 0, 0, 4, 0, "string longer than 4"},
    {"\"\xff\xfe\"", 0, 0, 0, 0, "invalid JSON"}, /* invalid UTF-8 */
    {"1 2", 0, 0, 0, 0, "invalid JSON"},
};

static void test_parse_table(void **state)
{
    for (size_t i = 0; i < sizeof parse_cases / sizeof parse_cases[0]; i++) {
        const parse_case_t *c = &parse_cases[i];
        core_json_limits_t lim = {c->max_bytes, c->max_depth, c->max_string};
        core_json_doc_t *doc = NULL;
        char err[128] = "";
        int rc = core_json_parse(c->input, strlen(c->input), &lim, &doc, err, sizeof err);
        if (c->ok) {
            assert_int_equal(rc, 0);
            assert_non_null(doc);
            core_json_free(doc);
        } else {
            assert_true(rc < 0);
            assert_null(doc);
            if (c->err_substr && !strstr(err, c->err_substr))
                fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err, c->err_substr);
        }
    }
}

static void test_default_depth_is_32(void **state)
{
    char deep[80];
    core_json_doc_t *doc;
    char err[128];
    memset(deep, '[', 32);
    memset(deep + 32, ']', 32);
    assert_int_equal(core_json_parse(deep, 64, NULL, &doc, err, sizeof err), 0);
    core_json_free(doc);
    memset(deep, '[', 33);
    memset(deep + 33, ']', 33);
    assert_true(core_json_parse(deep, 66, NULL, &doc, err, sizeof err) < 0);
}

static void test_tree_access(void **state)
{
    const char *in = "{\"s\":\"h\\u00e9\",\"i\":-42,\"d\":1.5,\"b\":true,\"n\":null,"
                     "\"a\":[1,{\"x\":2}],\"big\":9007199254740993,\"dup\":1,\"dup\":2}";
    core_json_doc_t *doc;
    char err[128];
    assert_int_equal(core_json_parse(in, strlen(in), NULL, &doc, err, sizeof err), 0);
    const core_json_t *r = core_json_root(doc);
    const char *s;
    int64_t i;
    bool b;
    assert_int_equal(core_json_get_str(r, "s", &s), 0);
    assert_string_equal(s, "h\xc3\xa9");
    assert_int_equal(core_json_get_int(r, "i", &i), 0);
    assert_int_equal(i, -42);
    assert_int_equal(core_json_get_int(r, "d", &i), -1); /* a fraction is not an int */
    assert_int_equal(core_json_get_bool(r, "b", &b), 0);
    assert_true(b);
    assert_int_equal(core_json_get(r, "n")->type, CORE_JSON_NULL);
    const core_json_t *a = core_json_get(r, "a");
    assert_int_equal(a->type, CORE_JSON_ARRAY);
    assert_int_equal(a->u.kids.n, 2);
    assert_int_equal(core_json_get_int(a->u.kids.items[1], "x", &i), 0);
    assert_int_equal(i, 2);
    assert_int_equal(core_json_get_int(r, "big", &i), 0);
    assert_true(i == 9007199254740993LL); /* integers keep full 64-bit precision */
    assert_int_equal(core_json_get_int(r, "dup", &i), 0);
    assert_int_equal(i, 2);
    assert_null(core_json_get(r, "missing"));
    assert_int_equal(core_json_get_str(r, "i", &s), -1);
    core_json_free(doc);
}

/* Containers at the same depth reuse the parser's frame: an object after an
 * array (or after more than eight array items) must still get its keys.
 * This once crashed on any body shaped like {"a":[1],"b":{"c":1}}. */
static void test_object_after_array_at_same_depth(void **state)
{
    const char *in = "{\"a\":[1,2,3,4,5,6,7,8,9,10],\"b\":{\"c\":1,\"d\":[{\"e\":2}]},"
                     "\"f\":[[1],{\"g\":3}],\"h\":{\"i\":{\"j\":4}}}";
    core_json_doc_t *doc;
    char err[128];
    assert_int_equal(core_json_parse(in, strlen(in), NULL, &doc, err, sizeof err), 0);
    const core_json_t *r = core_json_root(doc);
    int64_t i;
    assert_int_equal(core_json_get(r, "a")->u.kids.n, 10);
    assert_int_equal(core_json_get_int(core_json_get(r, "b"), "c", &i), 0);
    assert_int_equal(i, 1);
    const core_json_t *d = core_json_get(core_json_get(r, "b"), "d");
    assert_int_equal(core_json_get_int(d->u.kids.items[0], "e", &i), 0);
    assert_int_equal(i, 2);
    const core_json_t *f = core_json_get(r, "f");
    assert_int_equal(core_json_get_int(f->u.kids.items[1], "g", &i), 0);
    assert_int_equal(i, 3);
    assert_int_equal(core_json_get_int(core_json_get(core_json_get(r, "h"), "i"), "j", &i), 0);
    assert_int_equal(i, 4);
    core_json_free(doc);
}

static void test_writer_roundtrip(void **state)
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t w;
    core_jw_init(&w, &b);
    core_jw_obj_open(&w);
    core_jw_key(&w, "text");
    core_jw_str(&w, "quote\" backslash\\ nl\n ctl\x01 utf8 \xc3\xa9");
    core_jw_key(&w, "n");
    core_jw_int(&w, -7);
    core_jw_key(&w, "list");
    core_jw_arr_open(&w);
    core_jw_bool(&w, true);
    core_jw_null(&w);
    core_jw_double(&w, 0.25);
    core_jw_obj_open(&w);
    core_jw_obj_close(&w);
    core_jw_arr_close(&w);
    core_jw_key(&w, "raw");
    core_jw_raw(&w, "[1]", 3);
    core_jw_obj_close(&w);
    const char *out = core_buf_cstr(&b);
    assert_string_equal(out, "{\"text\":\"quote\\\" backslash\\\\ nl\\n ctl\\u0001 utf8 \xc3\xa9\","
                             "\"n\":-7,\"list\":[true,null,0.25,{}],\"raw\":[1]}");
    core_json_doc_t *doc;
    char err[128];
    assert_int_equal(core_json_parse(b.base, b.len, NULL, &doc, err, sizeof err), 0);
    const char *s;
    assert_int_equal(core_json_get_str(core_json_root(doc), "text", &s), 0);
    assert_string_equal(s, "quote\" backslash\\ nl\n ctl\x01 utf8 \xc3\xa9");
    core_json_free(doc);
    core_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_default_depth_is_32),
        cmocka_unit_test(test_tree_access),
        cmocka_unit_test(test_object_after_array_at_same_depth),
        cmocka_unit_test(test_writer_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
