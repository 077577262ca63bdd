/* Unit tests for edge/eg_config.c: defaults, every error names its field,
 * MERIDIAN_* environment overrides win. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edge/eg_config.h"

/* The required fields, each on its own so a case can leave one out. */
#define F_EDGE "\"edge\":\"edge-1\""
#define F_WORLD "\"world_file\":\"/w/world.json\""
#define F_LISTEN "\"listen\":{\"port\":8443}"
#define F_DIR "\"directory\":{\"token_file\":\"/k/dir\"}"
#define F_AUTH "\"auth\":{\"email_hash_key_file\":\"/k/email\"}"
#define BASE F_EDGE "," F_WORLD "," F_LISTEN "," F_DIR "," F_AUTH

static void test_valid_and_defaults(void **state)
{
    eg_config_t cfg;
    char *err = NULL;
    int rc = eg_config_load_str(&cfg, "{" BASE "}", &err);
    if (rc)
        fail_msg("%s", err);
    assert_string_equal(cfg.edge, "edge-1");
    assert_string_equal(cfg.world_file, "/w/world.json");
    assert_int_equal(cfg.listen_port, 8443);
    assert_string_equal(cfg.listen_host, "127.0.0.1");
    assert_string_equal(cfg.directory_token_file, "/k/dir");
    assert_string_equal(cfg.email_hash_key_file, "/k/email");
    assert_int_equal(cfg.workers, 2);
    assert_int_equal(cfg.mode, EG_MODE_PROXY);
    assert_int_equal(cfg.log_level, CORE_LOG_INFO);
    assert_true(cfg.access_log);
    assert_null(cfg.signup_region);
    assert_null(cfg.dns_servers);
    assert_int_equal(cfg.directory_poll_ms, 500);
    assert_int_equal(cfg.sessions_per_s, 2000);
    assert_int_equal(cfg.sessions_burst, 4000);
    assert_int_equal(cfg.upstream_connect_timeout_ms, 2000);
    assert_int_equal(cfg.upstream_response_timeout_ms, 30000);
    assert_int_equal(cfg.upstream_max_idle, 64);
    assert_int_equal(cfg.upstream_max_conns, 4096);
    assert_int_equal(cfg.tunnel_buffer_bytes, 1 << 20);
    assert_int_equal(cfg.health_interval_ms, 1000);
    assert_int_equal(cfg.health_timeout_ms, 1000);
    assert_int_equal(cfg.health_failures, 3);
    assert_int_equal(cfg.breaker_open_ms, 5000);
    assert_int_equal(cfg.drain_timeout_ms, 30000);
    assert_int_equal(cfg.http.max_body_bytes, 1 << 20);
    eg_config_free(&cfg);
    assert_null(cfg.edge); /* free leaves it empty */
}

static void test_every_field_set(void **state)
{
    eg_config_t cfg;
    char *err = NULL;
    const char *json =
        "{" BASE ",\"workers\":4,\"listen\":{\"host\":\"0.0.0.0\",\"port\":9000},"
        "\"log\":{\"level\":\"debug\",\"access\":false},\"mode\":\"redirect\","
        "\"routing\":{\"signup_region\":\"eu-west\"},"
        "\"directory\":{\"token_file\":\"/t\",\"poll_ms\":250},"
        "\"dns\":{\"servers\":[\"127.0.0.1:5353\",\"127.0.0.2:53\",\"[::1]:53\"]},"
        "\"admission\":{\"sessions_per_s\":10,\"burst\":20},"
        "\"http\":{\"max_body_bytes\":2048},"
        "\"upstream\":{\"connect_timeout_ms\":100,\"response_timeout_ms\":1000,\"max_idle\":0,"
        "\"max_conns\":8,\"tunnel_buffer_bytes\":4096},"
        "\"health\":{\"interval_ms\":50,\"timeout_ms\":10,\"failures\":1,\"breaker_open_ms\":10},"
        "\"shutdown\":{\"drain_timeout_ms\":0}}";
    int rc = eg_config_load_str(&cfg, json, &err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(cfg.workers, 4);
    assert_string_equal(cfg.listen_host, "0.0.0.0");
    assert_int_equal(cfg.listen_port, 9000);
    assert_int_equal(cfg.log_level, CORE_LOG_DEBUG);
    assert_false(cfg.access_log);
    assert_int_equal(cfg.mode, EG_MODE_REDIRECT);
    assert_string_equal(cfg.signup_region, "eu-west");
    assert_string_equal(cfg.directory_token_file, "/t");
    assert_int_equal(cfg.directory_poll_ms, 250);
    assert_string_equal(cfg.dns_servers, "127.0.0.1:5353,127.0.0.2:53,[::1]:53");
    assert_int_equal(cfg.sessions_per_s, 10);
    assert_int_equal(cfg.sessions_burst, 20);
    assert_int_equal(cfg.http.max_body_bytes, 2048);
    assert_int_equal(cfg.upstream_connect_timeout_ms, 100);
    assert_int_equal(cfg.upstream_response_timeout_ms, 1000);
    assert_int_equal(cfg.upstream_max_idle, 0);
    assert_int_equal(cfg.upstream_max_conns, 8);
    assert_int_equal(cfg.tunnel_buffer_bytes, 4096);
    assert_int_equal(cfg.health_interval_ms, 50);
    assert_int_equal(cfg.health_timeout_ms, 10);
    assert_int_equal(cfg.health_failures, 1);
    assert_int_equal(cfg.breaker_open_ms, 10);
    assert_int_equal(cfg.drain_timeout_ms, 0);
    eg_config_free(&cfg);
}

typedef struct {
    const char *json;
    const char *want; /* substring of the error text */
} bad_case_t;

static const bad_case_t bad[] = {
    {"[]", "top level must be a JSON object"},
    {"{\"edge\":", "invalid JSON"},
    /* Each required field, missing. */
    {"{" F_WORLD "," F_LISTEN "," F_DIR "," F_AUTH "}", "edge: is required"},
    {"{" F_EDGE "," F_LISTEN "," F_DIR "," F_AUTH "}", "world_file: is required"},
    {"{" F_EDGE "," F_WORLD "," F_DIR "," F_AUTH "}", "listen.port: is required"},
    {"{" F_EDGE "," F_WORLD "," F_LISTEN "," F_AUTH "}", "directory.token_file: is required"},
    {"{" F_EDGE "," F_WORLD "," F_LISTEN "," F_DIR "}", "auth.email_hash_key_file: is required"},
    {"{" F_EDGE "," F_WORLD ",\"listen\":{\"host\":\"::\"}," F_DIR "," F_AUTH "}",
     "listen.port: is required"},
    /* Unknown keys, at every level. */
    {"{" BASE ",\"wrokers\":2}", "wrokers: unknown field"},
    {"{" BASE ",\"listen\":{\"port\":1,\"prot\":2}}", "listen.prot: unknown field"},
    {"{" BASE ",\"log\":{\"levle\":\"info\"}}", "log.levle: unknown field"},
    {"{" BASE ",\"routing\":{\"signup\":\"x\"}}", "routing.signup: unknown field"},
    {"{" BASE ",\"directory\":{\"token_file\":\"/t\",\"poll\":1}}",
     "directory.poll: unknown field"},
    {"{" BASE ",\"dns\":{\"server\":[]}}", "dns.server: unknown field"},
    {"{" BASE ",\"auth\":{\"email_hash_key_file\":\"/k\",\"signing_key_file\":\"/s\"}}",
     "auth.signing_key_file: unknown field"},
    {"{" BASE ",\"admission\":{\"rate\":1}}", "admission.rate: unknown field"},
    {"{" BASE ",\"http\":{\"max_body\":1}}", "http.max_body: unknown field"},
    {"{" BASE ",\"upstream\":{\"timeout_ms\":1}}", "upstream.timeout_ms: unknown field"},
    {"{" BASE ",\"health\":{\"interval\":1}}", "health.interval: unknown field"},
    {"{" BASE ",\"shutdown\":{\"drain_ms\":1}}", "shutdown.drain_ms: unknown field"},
    /* Bad values. */
    {"{" BASE ",\"mode\":\"tunnel\"}", "mode: must be \"proxy\" or \"redirect\" (got \"tunnel\")"},
    {"{" BASE ",\"mode\":\"PROXY\"}", "mode: must be \"proxy\" or \"redirect\""},
    {"{" BASE ",\"mode\":1}", "mode: must be a string"},
    {"{" BASE ",\"edge\":\"Edge One\"}", "edge: must be 1-32 characters"},
    {"{" BASE ",\"edge\":\"\"}", "edge: must be 1-32 characters"},
    {"{" BASE ",\"edge\":\"a123456789012345678901234567890123\"}", "edge: must be 1-32"},
    {"{" BASE ",\"log\":{\"level\":\"loud\"}}", "log.level: must be one of"},
    {"{" BASE ",\"log\":{\"access\":\"yes\"}}", "log.access: must be"},
    {"{" BASE ",\"dns\":{\"servers\":\"127.0.0.1:53\"}}",
     "dns.servers: must be an array of strings"},
    {"{" BASE ",\"dns\":{\"servers\":[53]}}", "dns.servers: item 0 must be a string"},
    {"{" BASE ",\"listen\":[]}", "listen: must be an object"},
    /* Ranges, at both ends. */
    {"{" BASE ",\"workers\":0}", "workers: must be between 1 and"},
    {"{" BASE ",\"workers\":100000}", "workers: must be between 1 and"},
    {"{" BASE ",\"workers\":1.5}", "workers: must be an integer"},
    {"{" BASE ",\"listen\":{\"port\":0}}", "listen.port: must be between 1 and 65535"},
    {"{" BASE ",\"listen\":{\"port\":65536}}", "listen.port: must be between 1 and 65535"},
    {"{" BASE ",\"directory\":{\"token_file\":\"/t\",\"poll_ms\":49}}",
     "directory.poll_ms: must be between 50 and 600000"},
    {"{" BASE ",\"directory\":{\"token_file\":\"/t\",\"poll_ms\":600001}}",
     "directory.poll_ms: must be between 50 and 600000"},
    {"{" BASE ",\"admission\":{\"sessions_per_s\":0}}",
     "admission.sessions_per_s: must be between"},
    {"{" BASE ",\"admission\":{\"burst\":10000001}}", "admission.burst: must be between"},
    {"{" BASE ",\"upstream\":{\"connect_timeout_ms\":9}}",
     "upstream.connect_timeout_ms: must be between 10 and 60000"},
    {"{" BASE ",\"upstream\":{\"response_timeout_ms\":99}}",
     "upstream.response_timeout_ms: must be between 100"},
    {"{" BASE ",\"upstream\":{\"max_idle\":-1}}", "upstream.max_idle: must be between 0"},
    {"{" BASE ",\"upstream\":{\"max_conns\":0}}", "upstream.max_conns: must be between 1"},
    {"{" BASE ",\"upstream\":{\"tunnel_buffer_bytes\":4095}}",
     "upstream.tunnel_buffer_bytes: must be between 4096"},
    {"{" BASE ",\"upstream\":{\"tunnel_buffer_bytes\":268435457}}",
     "upstream.tunnel_buffer_bytes: must be between 4096"},
    {"{" BASE ",\"health\":{\"failures\":0}}", "health.failures: must be between 1 and 100"},
    {"{" BASE ",\"health\":{\"failures\":101}}", "health.failures: must be between 1 and 100"},
    {"{" BASE ",\"health\":{\"interval_ms\":49}}", "health.interval_ms: must be between 50"},
    {"{" BASE ",\"health\":{\"timeout_ms\":9}}", "health.timeout_ms: must be between 10"},
    {"{" BASE ",\"health\":{\"breaker_open_ms\":3600001}}",
     "health.breaker_open_ms: must be between 10 and 3600000"},
    {"{" BASE ",\"shutdown\":{\"drain_timeout_ms\":-1}}",
     "shutdown.drain_timeout_ms: must be between 0"},
    {"{" BASE ",\"http\":{\"max_body_bytes\":10}}", "http.max_body_bytes: must be between"},
};

static void test_bad_configs_name_the_field(void **state)
{
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        eg_config_t cfg;
        char *err = NULL;
        int rc = eg_config_load_str(&cfg, bad[i].json, &err);
        if (rc == 0)
            fail_msg("case %zu accepted: %s", i, bad[i].json);
        assert_true(rc < 0);
        assert_non_null(err);
        if (!strstr(err, bad[i].want))
            fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err, bad[i].want);
        free(err);
        /* A refused load leaves nothing behind to free. */
        assert_null(cfg.edge);
        assert_null(cfg.world_file);
    }
}

static void test_all_errors_reported_at_once(void **state)
{
    eg_config_t cfg;
    char *err = NULL;
    assert_true(eg_config_load_str(&cfg, "{\"mode\":\"x\",\"workers\":0}", &err) < 0);
    static const char *const want[] = {"edge:",
                                       "world_file:",
                                       "listen.port:",
                                       "directory.token_file:",
                                       "auth.email_hash_key_file:",
                                       "mode:",
                                       "workers:"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(err, want[i]))
            fail_msg("\"%s\" missing from:\n%s", want[i], err);
    free(err);
}

static void test_env_overrides(void **state)
{
    eg_config_t cfg;
    char *err = NULL;
    setenv("MERIDIAN_LISTEN__PORT", "9090", 1);
    setenv("MERIDIAN_MODE", "redirect", 1);
    setenv("MERIDIAN_DNS__SERVERS", " 127.0.0.1:5353 ,,127.0.0.2:53,", 1);
    setenv("MERIDIAN_UPSTREAM__MAX_CONNS", "7", 1);
    setenv("MERIDIAN_LOG__ACCESS", "false", 1);
    int rc = eg_config_load_str(&cfg, "{" BASE ",\"dns\":{\"servers\":[\"10.0.0.1:53\"]}}", &err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(cfg.listen_port, 9090);
    assert_int_equal(cfg.mode, EG_MODE_REDIRECT);
    assert_string_equal(cfg.dns_servers, "127.0.0.1:5353,127.0.0.2:53");
    assert_int_equal(cfg.upstream_max_conns, 7);
    assert_false(cfg.access_log);
    eg_config_free(&cfg);

    /* A required field may come from the environment alone. */
    setenv("MERIDIAN_EDGE", "edge-env", 1);
    rc = eg_config_load_str(&cfg, "{" F_WORLD "," F_LISTEN "," F_DIR "," F_AUTH "}", &err);
    if (rc)
        fail_msg("%s", err);
    assert_string_equal(cfg.edge, "edge-env");
    eg_config_free(&cfg);

    /* Overrides are validated like the file. */
    setenv("MERIDIAN_LISTEN__PORT", "abc", 1);
    setenv("MERIDIAN_MODE", "bogus", 1);
    assert_true(eg_config_load_str(&cfg, "{" BASE "}", &err) < 0);
    if (!strstr(err, "listen.port: must be an integer (got \"abc\" from MERIDIAN_LISTEN__PORT)"))
        fail_msg("%s", err);
    if (!strstr(err, "mode: must be \"proxy\" or \"redirect\" (got \"bogus\")"))
        fail_msg("%s", err);
    free(err);
    unsetenv("MERIDIAN_LISTEN__PORT");
    unsetenv("MERIDIAN_MODE");
    unsetenv("MERIDIAN_DNS__SERVERS");
    unsetenv("MERIDIAN_UPSTREAM__MAX_CONNS");
    unsetenv("MERIDIAN_LOG__ACCESS");
    unsetenv("MERIDIAN_EDGE");
}

static void test_load_file(void **state)
{
    char path[] = "/tmp/eg_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char json[] = "{" BASE ",\"workers\":3}";
    assert_int_equal(write(fd, json, sizeof json - 1), (ssize_t)(sizeof json - 1));
    close(fd);
    eg_config_t cfg;
    char *err = NULL;
    int rc = eg_config_load(&cfg, path, &err);
    unlink(path);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(cfg.workers, 3);
    eg_config_free(&cfg);
    assert_true(eg_config_load(&cfg, "/nonexistent/edge.json", &err) < 0);
    assert_non_null(strstr(err, "cannot open"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_and_defaults),
        cmocka_unit_test(test_every_field_set),
        cmocka_unit_test(test_bad_configs_name_the_field),
        cmocka_unit_test(test_all_errors_reported_at_once),
        cmocka_unit_test(test_env_overrides),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
