/* Unit tests for region/rg_config.c: every error names its field; env overrides win. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "region/rg_config.h"

#define BASE BASE0 ",\"encryption\":{\"master_key_file\":\"/k/m\"}"
#define BASE0                                                                                      \
    "\"region\":\"eu-west\",\"listen\":{\"port\":8080},"                                           \
    "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=a\"},{\"id\":1,\"conninfo\":\"host="  \
    "b\"}]},"                                                                                      \
    "\"redis\":{\"port\":6379},\"nats\":{\"url\":\"nats://127.0.0.1:4222\"},"                      \
    "\"auth\":{\"signing_key_file\":\"/k/s\",\"email_hash_key_file\":\"/k/e\"}"

static void test_valid_and_defaults(void **state)
{
    rg_config_t cfg;
    char *err;
    assert_int_equal(rg_config_load_str(&cfg, "{" BASE "}", &err), 0);
    assert_string_equal(cfg.region, "eu-west");
    assert_string_equal(cfg.node, "eu-west");
    assert_int_equal(cfg.workers, 2);
    assert_int_equal(cfg.listen_port, 8080);
    assert_string_equal(cfg.listen_host, "127.0.0.1");
    assert_int_equal(cfg.pg.nshards, 2);
    assert_string_equal(cfg.pg.shards[1].conninfo, "host=b");
    assert_int_equal(cfg.http.max_body_bytes, 1 << 20);
    assert_true(cfg.access_log);
    assert_true(cfg.encryption.enabled);
    assert_string_equal(cfg.encryption.master_key_file, "/k/m");
    assert_int_equal(cfg.encryption.nprevious, 0);
    rg_config_free(&cfg);
    /* Off: no master key needed; previous keys come as a list. */
    assert_int_equal(
        rg_config_load_str(&cfg, "{" BASE0 ",\"encryption\":{\"enabled\":false}}", &err), 0);
    assert_false(cfg.encryption.enabled);
    assert_null(cfg.encryption.master_key_file);
    rg_config_free(&cfg);
    assert_int_equal(rg_config_load_str(&cfg,
                                        "{" BASE0 ",\"encryption\":{\"master_key_file\":\"/k/m\","
                                        "\"previous_master_key_files\":[\"/k/a\",\"/k/b\"]}}",
                                        &err),
                     0);
    assert_int_equal(cfg.encryption.nprevious, 2);
    assert_string_equal(cfg.encryption.previous_master_key_files[1], "/k/b");
    rg_config_free(&cfg);
}

typedef struct {
    const char *json;
    const char *want; /* substring of the error text */
} bad_case_t;

static const bad_case_t bad[] = {
    {"[]", "top level must be a JSON object"},
    {"{" BASE ",\"wokers\":2}", "wokers: unknown field"},
    {"{" BASE ",\"workers\":0}", "workers: must be between 1 and 64"},
    {"{" BASE ",\"workers\":\"2\"}", "workers: must be an integer, not string"},
    {"{" BASE ",\"workers\":1.5}", "workers: must be an integer, not a fraction"},
    {"{\"listen\":{\"port\":1},\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"x\"}]},"
     "\"redis\":{\"port\":1},\"nats\":{\"url\":\"nats://x\"}}",
     "region: is required"},
    {"{\"region\":\"x\",\"listen\":{\"port\":1},\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":"
     "\"x\"}]},"
     "\"redis\":{\"port\":1},\"nats\":{\"url\":\"nats://x\"}}",
     "auth.signing_key_file: is required"},
    {"{" BASE
     ",\"auth\":{\"signing_key_file\":\"a\",\"email_hash_key_file\":\"b\",\"access_ttl_s\":5}}",
     "auth.access_ttl_s: must be between 60 and 86400"},
    {"{" BASE ",\"region\":\"EU West\"}", "region: must be 1-32 characters"},
    {"{" BASE0 "}", "encryption.master_key_file: is required while encryption.enabled is true"},
    {"{" BASE0 ",\"encryption\":{\"enabled\":true}}", "encryption.master_key_file: is required"},
    {"{" BASE0 ",\"encryption\":{\"enabled\":false,\"previous_master_key_files\":[\"/k/o\"]}}",
     "encryption.previous_master_key_files: needs encryption.master_key_file"},
    {"{" BASE0
     ",\"encryption\":{\"master_key_file\":\"/k/m\",\"previous_master_key_files\":\"/k/o\"}}",
     "encryption.previous_master_key_files"},
    {"{" BASE0 ",\"encryption\":{\"master_key\":\"/k/m\"}}",
     "encryption.master_key: unknown field"},
    {"{" BASE ",\"listen\":{\"port\":70000}}", "listen.port: must be between 1 and 65535"},
    {"{" BASE ",\"listen\":{\"prot\":80}}", "listen.prot: unknown field"},
    {"{" BASE ",\"log\":{\"level\":\"loud\"}}", "log.level: must be one of"},
    {"{" BASE ",\"http\":{\"max_body_bytes\":10}}", "http.max_body_bytes: must be between"},
    {"{" BASE ",\"postgres\":{\"shards\":[]}}", "postgres.shards: is required"},
    {"{" BASE ",\"postgres\":{\"shards\":[{\"id\":1,\"conninfo\":\"x\"}]}}",
     "postgres.shards[0]: id must be 0"},
    {"{" BASE ",\"postgres\":{\"shards\":[{\"id\":0}]}}",
     "postgres.shards[0].conninfo: is required"},
    {"{" BASE ",\"nats\":{\"url\":\"http://x\"}}", "nats.url: must start with nats://"},
    {"{" BASE ",\"redis\":[]}", "redis: must be an object, not array"},
    {"{\"region\":", "invalid JSON"},
};

static void test_bad_configs_name_the_field(void **state)
{
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rg_config_t cfg;
        char *err = NULL;
        int rc = rg_config_load_str(&cfg, bad[i].json, &err);
        if (rc == 0)
            fail_msg("case %zu accepted: %s", i, bad[i].json);
        assert_non_null(err);
        if (!strstr(err, bad[i].want))
            fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err, bad[i].want);
        free(err);
    }
}

static void test_all_errors_reported_at_once(void **state)
{
    rg_config_t cfg;
    char *err = NULL;
    assert_true(rg_config_load_str(&cfg, "{" BASE ",\"workers\":0,\"listen\":{\"port\":0}}", &err) <
                0);
    assert_non_null(strstr(err, "workers:"));
    assert_non_null(strstr(err, "listen.port:"));
    free(err);
}

static void test_env_overrides(void **state)
{
    rg_config_t cfg;
    char *err = NULL;
    setenv("MERIDIAN_LISTEN__PORT", "9090", 1);
    setenv("MERIDIAN_POSTGRES__SHARDS__1__CONNINFO", "host=override", 1);
    setenv("MERIDIAN_LOG__ACCESS", "false", 1);
    assert_int_equal(rg_config_load_str(&cfg, "{" BASE "}", &err), 0);
    assert_int_equal(cfg.listen_port, 9090);
    assert_string_equal(cfg.pg.shards[1].conninfo, "host=override");
    assert_false(cfg.access_log);
    rg_config_free(&cfg);

    setenv("MERIDIAN_LISTEN__PORT", "abc", 1);
    assert_true(rg_config_load_str(&cfg, "{" BASE "}", &err) < 0);
    assert_non_null(
        strstr(err, "listen.port: must be an integer (got \"abc\" from MERIDIAN_LISTEN__PORT)"));
    free(err);
    unsetenv("MERIDIAN_LISTEN__PORT");
    unsetenv("MERIDIAN_POSTGRES__SHARDS__1__CONNINFO");
    unsetenv("MERIDIAN_LOG__ACCESS");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_and_defaults),
        cmocka_unit_test(test_bad_configs_name_the_field),
        cmocka_unit_test(test_all_errors_reported_at_once),
        cmocka_unit_test(test_env_overrides),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
