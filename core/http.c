#include "core/http.h"

void core_http_limits_default(core_http_limits_t *l)
{
    l->max_header_bytes = 16384;
    l->max_headers = 100;
    l->max_body_bytes = 1 << 20;
    l->header_timeout_ms = 10000;
    l->body_timeout_ms = 30000;
    l->idle_timeout_ms = 60000;
    l->write_timeout_ms = 30000;
    l->max_connections = 16384;
}
