#include "edge/eg_config.h"
#include "core/config.h"
#include "core/core.h"
#include "core/metrics.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 32)
        return false;
    for (const char *p = s; *p; p++)
        if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-')
            return false;
    return true;
}

static uint32_t u32(core_cfg_t *c, const core_json_t *obj, const char *base, const char *key,
                    int64_t def, int64_t min, int64_t max)
{
    int64_t v;
    core_cfg_int(c, obj, base, key, false, def, min, max, &v);
    return (uint32_t)v;
}

static void decode(core_cfg_t *c, void *obj)
{
    eg_config_t *cfg = obj;
    const core_json_t *root = core_cfg_root(c);
    static const char *const top[] = {
        "edge", "workers",   "listen", "log",      "world_file", "mode",     "directory", "dns",
        "auth", "admission", "http",   "upstream", "health",     "shutdown", "routing",   NULL};
    core_cfg_known_keys(c, root, "", top);
    core_cfg_str(c, root, "", "edge", true, NULL, &cfg->edge);
    if (cfg->edge && !valid_name(cfg->edge))
        core_cfg_error(c, "edge", "must be 1-32 characters of a-z, 0-9 and '-'");
    int64_t v;
    core_cfg_int(c, root, "", "workers", false, 2, 1, CORE_METRICS_MAX_WORKERS, &v);
    cfg->workers = (int)v;
    core_cfg_str(c, root, "", "world_file", true, NULL, &cfg->world_file);

    char *mode = NULL;
    core_cfg_str(c, root, "", "mode", false, "proxy", &mode);
    if (mode && strcmp(mode, "proxy") == 0)
        cfg->mode = EG_MODE_PROXY;
    else if (mode && strcmp(mode, "redirect") == 0)
        cfg->mode = EG_MODE_REDIRECT;
    else if (mode)
        core_cfg_error(c, "mode", "must be \"proxy\" or \"redirect\" (got \"%.20s\")", mode);
    free(mode);

    const core_json_t *listen = core_cfg_object(c, root, "", "listen");
    static const char *const listen_keys[] = {"host", "port", NULL};
    core_cfg_known_keys(c, listen, "listen", listen_keys);
    core_cfg_str(c, listen, "listen", "host", false, "127.0.0.1", &cfg->listen_host);
    core_cfg_int(c, listen, "listen", "port", true, 0, 1, 65535, &v);
    cfg->listen_port = (int)v;

    const core_json_t *log = core_cfg_object(c, root, "", "log");
    static const char *const log_keys[] = {"level", "access", NULL};
    core_cfg_known_keys(c, log, "log", log_keys);
    char *level = NULL;
    core_cfg_str(c, log, "log", "level", false, "info", &level);
    if (level && core_log_parse_level(level, &cfg->log_level))
        core_cfg_error(c, "log.level",
                       "must be one of debug, info, warn, error, off (got \"%.20s\")", level);
    free(level);
    core_cfg_bool(c, log, "log", "access", true, &cfg->access_log);

    const core_json_t *routing = core_cfg_object(c, root, "", "routing");
    static const char *const routing_keys[] = {"signup_region", NULL};
    core_cfg_known_keys(c, routing, "routing", routing_keys);
    core_cfg_str(c, routing, "routing", "signup_region", false, NULL, &cfg->signup_region);

    const core_json_t *dir = core_cfg_object(c, root, "", "directory");
    static const char *const dir_keys[] = {"token_file", "poll_ms", NULL};
    core_cfg_known_keys(c, dir, "directory", dir_keys);
    core_cfg_str(c, dir, "directory", "token_file", true, NULL, &cfg->directory_token_file);
    cfg->directory_poll_ms = u32(c, dir, "directory", "poll_ms", 500, 50, 600000);

    const core_json_t *dns = core_cfg_object(c, root, "", "dns");
    static const char *const dns_keys[] = {"servers", NULL};
    core_cfg_known_keys(c, dns, "dns", dns_keys);
    char **servers = NULL;
    size_t nservers = 0;
    core_cfg_str_list(c, dns, "dns", "servers", &servers, &nservers);
    if (nservers) {
        core_buf_t b;
        core_buf_init(&b);
        for (size_t i = 0; i < nservers; i++) {
            if (i)
                core_buf_putc(&b, ',');
            core_buf_puts(&b, servers[i]);
        }
        cfg->dns_servers = core_xstrdup(core_buf_cstr(&b));
        core_buf_free(&b);
    }
    core_cfg_str_list_free(servers, nservers);

    const core_json_t *auth = core_cfg_object(c, root, "", "auth");
    static const char *const auth_keys[] = {"email_hash_key_file", NULL};
    core_cfg_known_keys(c, auth, "auth", auth_keys);
    core_cfg_str(c, auth, "auth", "email_hash_key_file", true, NULL, &cfg->email_hash_key_file);

    const core_json_t *adm = core_cfg_object(c, root, "", "admission");
    static const char *const adm_keys[] = {"sessions_per_s", "burst", NULL};
    core_cfg_known_keys(c, adm, "admission", adm_keys);
    cfg->sessions_per_s = u32(c, adm, "admission", "sessions_per_s", 2000, 1, 10000000);
    cfg->sessions_burst = u32(c, adm, "admission", "burst", 4000, 1, 10000000);

    core_http_limits_from_cfg(c, core_cfg_object(c, root, "", "http"), NULL, &cfg->http);

    const core_json_t *up = core_cfg_object(c, root, "", "upstream");
    static const char *const up_keys[] = {"connect_timeout_ms", "response_timeout_ms", "max_idle",
                                          "max_conns",          "tunnel_buffer_bytes", NULL};
    core_cfg_known_keys(c, up, "upstream", up_keys);
    cfg->upstream_connect_timeout_ms =
        u32(c, up, "upstream", "connect_timeout_ms", 2000, 10, 60000);
    cfg->upstream_response_timeout_ms =
        u32(c, up, "upstream", "response_timeout_ms", 30000, 100, 600000);
    cfg->upstream_max_idle = u32(c, up, "upstream", "max_idle", 64, 0, 100000);
    cfg->upstream_max_conns = u32(c, up, "upstream", "max_conns", 4096, 1, 1000000);
    cfg->tunnel_buffer_bytes =
        u32(c, up, "upstream", "tunnel_buffer_bytes", 1 << 20, 4096, 256 << 20);

    const core_json_t *h = core_cfg_object(c, root, "", "health");
    static const char *const h_keys[] = {"interval_ms", "timeout_ms", "failures", "breaker_open_ms",
                                         NULL};
    core_cfg_known_keys(c, h, "health", h_keys);
    cfg->health_interval_ms = u32(c, h, "health", "interval_ms", 1000, 50, 600000);
    cfg->health_timeout_ms = u32(c, h, "health", "timeout_ms", 1000, 10, 600000);
    cfg->health_failures = u32(c, h, "health", "failures", 3, 1, 100);
    cfg->breaker_open_ms = u32(c, h, "health", "breaker_open_ms", 5000, 10, 3600000);

    const core_json_t *sd = core_cfg_object(c, root, "", "shutdown");
    static const char *const sd_keys[] = {"drain_timeout_ms", NULL};
    core_cfg_known_keys(c, sd, "shutdown", sd_keys);
    cfg->drain_timeout_ms = u32(c, sd, "shutdown", "drain_timeout_ms", 30000, 0, 600000);
}

static int load(eg_config_t *cfg, const char *path, const char *json, char **errors)
{
    memset(cfg, 0, sizeof *cfg);
    int rc = core_cfg_load(path, json, "MERIDIAN", decode, cfg, errors);
    if (rc)
        eg_config_free(cfg);
    return rc;
}

int eg_config_load(eg_config_t *cfg, const char *path, char **errors)
{
    return load(cfg, path, NULL, errors);
}

int eg_config_load_str(eg_config_t *cfg, const char *json, char **errors)
{
    return load(cfg, NULL, json, errors);
}

void eg_config_free(eg_config_t *cfg)
{
    free(cfg->edge);
    free(cfg->listen_host);
    free(cfg->world_file);
    free(cfg->signup_region);
    free(cfg->directory_token_file);
    free(cfg->dns_servers);
    free(cfg->email_hash_key_file);
    memset(cfg, 0, sizeof *cfg);
}
