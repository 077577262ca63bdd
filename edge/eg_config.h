/* eg_config.h: the configuration of one meridian-edge node.
 * The file format and every field are documented in docs/edge.md. */
#ifndef EG_CONFIG_H
#define EG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/http.h"
#include "core/log.h"

typedef enum {
    EG_MODE_PROXY,    /* requests and WebSockets are relayed to the home region */
    EG_MODE_REDIRECT, /* clients are sent to the home region with 307 */
} eg_mode_t;

typedef struct {
    char *edge; /* this node's name */
    int workers;
    char *listen_host;
    int listen_port;
    core_log_level_t log_level;
    bool access_log;
    char *world_file;
    eg_mode_t mode;
    char *signup_region; /* where an email the directory does not know signs up */
    char *directory_token_file;
    uint32_t directory_poll_ms;
    char *dns_servers; /* "host:port,..."; NULL: /etc/resolv.conf */
    char *email_hash_key_file;
    uint32_t sessions_per_s, sessions_burst; /* admission, per region per worker */
    core_http_limits_t http;
    uint32_t upstream_connect_timeout_ms, upstream_response_timeout_ms;
    uint32_t upstream_max_idle, upstream_max_conns;
    uint32_t tunnel_buffer_bytes; /* per direction, before reading from the other side stops */
    uint32_t health_interval_ms, health_timeout_ms, health_failures, breaker_open_ms;
    uint32_t drain_timeout_ms;
} eg_config_t;

/* Reads and validates path (with MERIDIAN_* overrides). On error returns a
 * negative code and every problem in *errors (malloc'd; caller frees). */
int eg_config_load(eg_config_t *cfg, const char *path, char **errors);
int eg_config_load_str(eg_config_t *cfg, const char *json, char **errors);
void eg_config_free(eg_config_t *cfg);

#endif
