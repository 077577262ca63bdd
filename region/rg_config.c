#include "region/rg_config.h"
#include "core/config.h"
#include "core/core.h"

#include <ctype.h>
#include <errno.h>
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

/* "*", or scheme://host[:port] as a browser sends it in Origin: no path,
 * no trailing slash, nothing a header could not carry. */
static bool valid_origin(const char *s)
{
    if (strcmp(s, "*") == 0)
        return true;
    const char *sep = strstr(s, "://");
    if (!sep || sep == s || !sep[3])
        return false;
    for (const char *p = s; p < sep; p++)
        if (!isalnum((unsigned char)*p) && *p != '+' && *p != '-' && *p != '.')
            return false;
    for (const char *p = sep + 3; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-.:[]", *p))
            return false;
    return true;
}

#define U32(cfg, obj, base, key, def, min, max, dst)                                               \
    do {                                                                                           \
        int64_t v_;                                                                                \
        core_cfg_int(cfg, obj, base, key, false, def, min, max, &v_);                              \
        (dst) = (uint32_t)v_;                                                                      \
    } while (0)

static void decode(core_cfg_t *c, rg_config_t *cfg)
{
    const core_json_t *root = core_cfg_root(c);
    static const char *const top[] = {
        "region",     "node",      "workers", "listen",    "log",        "http", "websocket",
        "shutdown",   "postgres",  "redis",   "nats",      "debug",      "auth", "limits",
        "world_file", "directory", "admin",   "admission", "encryption", NULL};
    core_cfg_known_keys(c, root, "", top);

    core_cfg_str(c, root, "", "region", true, NULL, &cfg->region);
    if (cfg->region && !valid_name(cfg->region))
        core_cfg_error(c, "region", "must be 1-32 characters of a-z, 0-9 and '-'");
    core_cfg_str(c, root, "", "node", false, cfg->region ? cfg->region : "node", &cfg->node);
    if (cfg->node && !valid_name(cfg->node))
        core_cfg_error(c, "node", "must be 1-32 characters of a-z, 0-9 and '-'");
    core_cfg_str(c, root, "", "world_file", false, NULL, &cfg->world_file);
    const core_json_t *dirc = core_cfg_object(c, root, "", "directory");
    static const char *const dir_keys[] = {"edge_token_file", NULL};
    core_cfg_known_keys(c, dirc, "directory", dir_keys);
    core_cfg_str(c, dirc, "directory", "edge_token_file", false, NULL, &cfg->directory_token_file);
    const core_json_t *admin = core_cfg_object(c, root, "", "admin");
    static const char *const admin_keys[] = {"operator_user_ids", NULL};
    core_cfg_known_keys(c, admin, "admin", admin_keys);
    core_cfg_str_list(c, admin, "admin", "operator_user_ids", &cfg->admin_operators,
                      &cfg->nadmin_operators);
    int64_t v;
    core_cfg_int(c, root, "", "workers", false, 2, 1, CORE_METRICS_MAX_WORKERS, &v);
    cfg->workers = (int)v;

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

    const core_json_t *http = core_cfg_object(c, root, "", "http");
    static const char *const http_extra[] = {"cors_allowed_origins", NULL};
    core_http_limits_from_cfg(c, http, http_extra, &cfg->http);
    core_cfg_str_list(c, http, "http", "cors_allowed_origins", &cfg->cors_origins, &cfg->ncors);
    for (size_t i = 0; i < cfg->ncors; i++)
        if (!valid_origin(cfg->cors_origins[i]))
            core_cfg_error(c, "http.cors_allowed_origins",
                           "item %zu must be \"*\" or an origin like https://chat.example.com "
                           "(scheme://host[:port], no path), got \"%.60s\"",
                           i, cfg->cors_origins[i]);

    const core_json_t *ws = core_cfg_object(c, root, "", "websocket");
    static const char *const ws_keys[] = {
        "max_frame_bytes",          "max_message_bytes",     "ping_interval_ms",
        "idle_timeout_ms",          "max_queued_bytes",      "max_replay_events",
        "max_client_message_bytes", "client_messages_per_s", "client_message_burst",
        "presence_ttl_ms",          "typing_ttl_ms",         NULL};
    core_cfg_known_keys(c, ws, "websocket", ws_keys);
    U32(c, ws, "websocket", "max_frame_bytes", 1 << 20, 125, 64 << 20, cfg->ws.max_frame_bytes);
    U32(c, ws, "websocket", "max_message_bytes", 1 << 20, 125, 64 << 20, cfg->ws.max_message_bytes);
    U32(c, ws, "websocket", "ping_interval_ms", 30000, 100, 3600000, cfg->ws.ping_interval_ms);
    U32(c, ws, "websocket", "idle_timeout_ms", 75000, 200, 3600000, cfg->ws.idle_timeout_ms);
    U32(c, ws, "websocket", "max_queued_bytes", 4 << 20, 4096, 256 << 20, cfg->ws.max_queued_bytes);
    U32(c, ws, "websocket", "max_replay_events", 10000, 1, 10000000, cfg->ws.max_replay_events);
    U32(c, ws, "websocket", "max_client_message_bytes", 4096, 125, 1 << 20,
        cfg->ws.max_client_message_bytes);
    U32(c, ws, "websocket", "client_messages_per_s", 10, 1, 10000, cfg->ws.client_messages_per_s);
    U32(c, ws, "websocket", "client_message_burst", 20, 1, 100000, cfg->ws.client_message_burst);
    U32(c, ws, "websocket", "presence_ttl_ms", 30000, 1000, 3600000, cfg->ws.presence_ttl_ms);
    U32(c, ws, "websocket", "typing_ttl_ms", 3000, 100, 60000, cfg->ws.typing_ttl_ms);

    const core_json_t *sd = core_cfg_object(c, root, "", "shutdown");
    static const char *const sd_keys[] = {"drain_timeout_ms", NULL};
    core_cfg_known_keys(c, sd, "shutdown", sd_keys);
    U32(c, sd, "shutdown", "drain_timeout_ms", 30000, 0, 600000, cfg->drain_timeout_ms);

    const core_json_t *auth = core_cfg_object(c, root, "", "auth");
    static const char *const auth_keys[] = {"signing_key_file",
                                            "email_hash_key_file",
                                            "access_ttl_s",
                                            "refresh_ttl_s",
                                            "hash_concurrency",
                                            "hash_queue",
                                            NULL};
    core_cfg_known_keys(c, auth, "auth", auth_keys);
    core_cfg_str(c, auth, "auth", "signing_key_file", true, NULL, &cfg->auth.signing_key_file);
    core_cfg_str(c, auth, "auth", "email_hash_key_file", true, NULL,
                 &cfg->auth.email_hash_key_file);
    U32(c, auth, "auth", "access_ttl_s", 900, 60, 86400, cfg->auth.access_ttl_s);
    U32(c, auth, "auth", "refresh_ttl_s", 2592000, 3600, 31536000, cfg->auth.refresh_ttl_s);
    core_cfg_int(c, auth, "auth", "hash_concurrency", false, 2, 1, 16, &v);
    cfg->auth.hash_concurrency = (int)v;
    core_cfg_int(c, auth, "auth", "hash_queue", false, 64, 1, 10000, &v);
    cfg->auth.hash_queue = (int)v;

    const core_json_t *lim = core_cfg_object(c, root, "", "limits");
    static const char *const lim_keys[] = {"write_rate_per_s", "write_burst", NULL};
    core_cfg_known_keys(c, lim, "limits", lim_keys);
    U32(c, lim, "limits", "write_rate_per_s", 10, 1, 1000000, cfg->limits.write_rate_per_s);
    U32(c, lim, "limits", "write_burst", 50, 1, 1000000, cfg->limits.write_burst);

    const core_json_t *adm = core_cfg_object(c, root, "", "admission");
    static const char *const adm_keys[] = {"enabled", "sessions_per_s", "burst", NULL};
    core_cfg_known_keys(c, adm, "admission", adm_keys);
    core_cfg_bool(c, adm, "admission", "enabled", true, &cfg->admission.enabled);
    U32(c, adm, "admission", "sessions_per_s", 1000, 1, 10000000, cfg->admission.sessions_per_s);
    U32(c, adm, "admission", "burst", 2000, 1, 10000000, cfg->admission.burst);

    const core_json_t *dbg = core_cfg_object(c, root, "", "debug");
    static const char *const dbg_keys[] = {"endpoints", NULL};
    core_cfg_known_keys(c, dbg, "debug", dbg_keys);
    core_cfg_bool(c, dbg, "debug", "endpoints", false, &cfg->debug_endpoints);

    const core_json_t *pg = core_cfg_object(c, root, "", "postgres");
    static const char *const pg_keys[] = {
        "shards", "pool_size", "query_timeout_ms", "connect_timeout_ms", "startup_timeout_ms",
        NULL};
    core_cfg_known_keys(c, pg, "postgres", pg_keys);
    const core_json_t *shards = core_cfg_array(c, pg, "postgres", "shards");
    if (!shards || shards->u.kids.n == 0) {
        core_cfg_error(c, "postgres.shards", "is required: a non-empty array of {id, conninfo}");
    } else if (shards->u.kids.n > RG_MAX_SHARDS) {
        core_cfg_error(c, "postgres.shards", "has more than %d shards", RG_MAX_SHARDS);
    } else {
        for (size_t i = 0; i < shards->u.kids.n; i++) {
            char base[64], idx[24];
            snprintf(idx, sizeof idx, "[%zu]", i);
            core_cfg_path(base, sizeof base, "postgres.shards", idx);
            const core_json_t *sh = shards->u.kids.items[i];
            if (sh->type != CORE_JSON_OBJECT) {
                core_cfg_error(c, base, "must be an object {id, conninfo}");
                continue;
            }
            static const char *const sh_keys[] = {"id", "conninfo", NULL};
            core_cfg_known_keys(c, sh, base, sh_keys);
            rg_shard_cfg_t *s = &cfg->pg.shards[cfg->pg.nshards++];
            core_cfg_int(c, sh, base, "id", true, 0, 0, RG_MAX_SHARDS - 1, &v);
            s->id = (int)v;
            core_cfg_str(c, sh, base, "conninfo", true, NULL, &s->conninfo);
            /* Shard ids are the placement keys: they must be exactly 0..n-1. */
            if (s->id != (int)i)
                core_cfg_error(c, base, "id must be %zu: shard ids run 0..n-1 in order", i);
        }
    }
    core_cfg_int(c, pg, "postgres", "pool_size", false, 4, 1, 64, &v);
    cfg->pg.pool_size = (int)v;
    U32(c, pg, "postgres", "query_timeout_ms", 5000, 10, 600000, cfg->pg.query_timeout_ms);
    U32(c, pg, "postgres", "connect_timeout_ms", 5000, 10, 600000, cfg->pg.connect_timeout_ms);
    U32(c, pg, "postgres", "startup_timeout_ms", 60000, 0, 3600000, cfg->pg.startup_timeout_ms);

    const core_json_t *redis = core_cfg_object(c, root, "", "redis");
    static const char *const redis_keys[] = {"host", "port", "connect_timeout_ms",
                                             "command_timeout_ms", NULL};
    core_cfg_known_keys(c, redis, "redis", redis_keys);
    core_cfg_str(c, redis, "redis", "host", false, "127.0.0.1", &cfg->redis.host);
    core_cfg_int(c, redis, "redis", "port", true, 6379, 1, 65535, &v);
    cfg->redis.port = (int)v;
    U32(c, redis, "redis", "connect_timeout_ms", 2000, 10, 600000, cfg->redis.connect_timeout_ms);
    U32(c, redis, "redis", "command_timeout_ms", 2000, 10, 600000, cfg->redis.command_timeout_ms);

    const core_json_t *nats = core_cfg_object(c, root, "", "nats");
    static const char *const nats_keys[] = {"url", "connect_timeout_ms", NULL};
    core_cfg_known_keys(c, nats, "nats", nats_keys);
    core_cfg_str(c, nats, "nats", "url", true, NULL, &cfg->nats.url);
    if (cfg->nats.url && strncmp(cfg->nats.url, "nats://", 7) != 0)
        core_cfg_error(c, "nats.url", "must start with nats://");
    U32(c, nats, "nats", "connect_timeout_ms", 2000, 10, 600000, cfg->nats.connect_timeout_ms);

    const core_json_t *enc = core_cfg_object(c, root, "", "encryption");
    static const char *const enc_keys[] = {"enabled", "master_key_file",
                                           "previous_master_key_files", NULL};
    core_cfg_known_keys(c, enc, "encryption", enc_keys);
    core_cfg_bool(c, enc, "encryption", "enabled", true, &cfg->encryption.enabled);
    core_cfg_str(c, enc, "encryption", "master_key_file", false, NULL,
                 &cfg->encryption.master_key_file);
    core_cfg_str_list(c, enc, "encryption", "previous_master_key_files",
                      &cfg->encryption.previous_master_key_files, &cfg->encryption.nprevious);
    /* The files themselves are read (and their modes checked) by the
     * master at start-up and by --check-config: rg_keys_init. */
    if (cfg->encryption.enabled && !cfg->encryption.master_key_file)
        core_cfg_error(c, "encryption.master_key_file",
                       "is required while encryption.enabled is true (a key file of 64 hex "
                       "characters, mode 0600)");
    if (cfg->encryption.nprevious && !cfg->encryption.master_key_file)
        core_cfg_error(c, "encryption.previous_master_key_files",
                       "needs encryption.master_key_file: old keys only unwrap, for rewrapping "
                       "under the current one");
}

static void decode_obj(core_cfg_t *c, void *obj)
{
    decode(c, obj);
}

static int load(rg_config_t *cfg, const char *path, const char *json, char **errors)
{
    memset(cfg, 0, sizeof *cfg);
    int rc = core_cfg_load(path, json, "MERIDIAN", decode_obj, cfg, errors);
    if (rc)
        rg_config_free(cfg);
    return rc;
}

int rg_config_load(rg_config_t *cfg, const char *path, char **errors)
{
    return load(cfg, path, NULL, errors);
}

int rg_config_load_str(rg_config_t *cfg, const char *json, char **errors)
{
    return load(cfg, NULL, json, errors);
}

void rg_config_free(rg_config_t *cfg)
{
    free(cfg->region);
    free(cfg->node);
    free(cfg->world_file);
    free(cfg->directory_token_file);
    free(cfg->listen_host);
    core_cfg_str_list_free(cfg->cors_origins, cfg->ncors);
    core_cfg_str_list_free(cfg->admin_operators, cfg->nadmin_operators);
    for (int i = 0; i < cfg->pg.nshards; i++)
        free(cfg->pg.shards[i].conninfo);
    free(cfg->redis.host);
    free(cfg->nats.url);
    free(cfg->auth.signing_key_file);
    free(cfg->auth.email_hash_key_file);
    free(cfg->encryption.master_key_file);
    core_cfg_str_list_free(cfg->encryption.previous_master_key_files, cfg->encryption.nprevious);
    memset(cfg, 0, sizeof *cfg);
}
