/* rg_config.h: the configuration of one meridian-region node.
 * The file format and every field are documented in docs/configuration.md. */
#ifndef RG_CONFIG_H
#define RG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/http.h"
#include "core/log.h"

#define RG_MAX_SHARDS 64

typedef struct {
    int id;
    char *conninfo;
} rg_shard_cfg_t;

typedef struct {
    char *region;
    char *node;
    char *world_file;           /* the world description (residency/res_world.h); optional alone */
    char *directory_token_file; /* bearer token of edges reading the directory; none: off */
    char **admin_operators;     /* admin.operator_user_ids: residency admins of every workspace */
    size_t nadmin_operators;
    int workers;
    char *listen_host;
    int listen_port;
    core_log_level_t log_level;
    bool access_log;
    core_http_limits_t http;
    char **cors_origins; /* http.cors_allowed_origins: browser origins allowed to call the API */
    size_t ncors;
    struct {
        uint32_t max_frame_bytes;
        uint32_t max_message_bytes;
        uint32_t ping_interval_ms;
        uint32_t idle_timeout_ms;
        uint32_t max_queued_bytes;
        uint32_t max_replay_events;        /* a resume further behind gets resync_required */
        uint32_t max_client_message_bytes; /* what a stream client may send in one message */
        uint32_t client_messages_per_s;    /* token bucket per stream connection */
        uint32_t client_message_burst;
        uint32_t presence_ttl_ms; /* a connection not refreshed for this long is offline */
        uint32_t typing_ttl_ms;   /* a typing signal lasts this long; one per user and channel */
    } ws;
    struct {
        char *signing_key_file;    /* Ed25519 seed, 64 hex characters, mode 0600 */
        char *email_hash_key_file; /* key of the email/slug keyed hashes, same format */
        uint32_t access_ttl_s;
        uint32_t refresh_ttl_s;
        int hash_concurrency; /* argon2id jobs at once per worker (~64 MiB each) */
        int hash_queue;       /* waiting jobs before 503 */
    } auth;
    struct {
        uint32_t write_rate_per_s; /* per user, shared by the region's nodes */
        uint32_t write_burst;
    } limits;
    struct {
        bool enabled;
        uint32_t sessions_per_s; /* new stream sessions, node-wide */
        uint32_t burst;
    } admission;
    uint32_t drain_timeout_ms;
    bool debug_endpoints; /* /debug/echo, /debug/sleep, /debug/ws-echo: tests only */
    struct {
        rg_shard_cfg_t shards[RG_MAX_SHARDS];
        int nshards;
        int pool_size;
        uint32_t query_timeout_ms;
        uint32_t connect_timeout_ms;
        uint32_t startup_timeout_ms; /* how long start-up waits for every shard to migrate */
    } pg;
    struct {
        char *host;
        int port;
        uint32_t connect_timeout_ms;
        uint32_t command_timeout_ms;
    } redis;
    struct {
        char *url;
        uint32_t connect_timeout_ms;
    } nats;
    struct {
        bool enabled;                     /* encrypt message bodies at rest (docs/encryption.md) */
        char *master_key_file;            /* wraps the data keys; required when enabled */
        char **previous_master_key_files; /* old master keys: only unwrap (rotation) */
        size_t nprevious;
    } encryption;
} rg_config_t;

/* Loads and validates path, with MERIDIAN_* environment overrides. On error
 * returns a negative code and writes every problem, one per line, to *errors
 * (malloc'd; the caller frees). */
int rg_config_load(rg_config_t *cfg, const char *path, char **errors);
int rg_config_load_str(rg_config_t *cfg, const char *json, char **errors);
void rg_config_free(rg_config_t *cfg);

#endif
