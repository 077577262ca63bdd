/* rg_ratelimit.h: the access check every authenticated request makes in
 * Redis: is the token revoked, and (for writes) may this user write now?
 *
 * One script call answers both, so a write costs one Redis round trip. Write
 * limits are token buckets per user in Redis (shared by every worker and node
 * of the region), refilled continuously, timed by the Redis server's clock so
 * that nodes' clocks do not matter. */
#ifndef RG_RATELIMIT_H
#define RG_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/redis.h"

typedef enum {
    RG_ACCESS_OK,
    RG_ACCESS_REVOKED,
    RG_ACCESS_LIMITED, /* retry_after_ms says when a token will be there */
} rg_access_t;

/* result: RG_ACCESS_*; err: 0, or a negative error when Redis could not
 * answer (callers fail closed with 503). */
typedef void (*rg_access_cb)(int err, rg_access_t result, uint32_t retry_after_ms, void *ud);

typedef struct {
    uint32_t rate_per_s; /* tokens added per second */
    uint32_t burst;      /* bucket size */
} rg_ratelimit_t;

/* Checks jti's revocation and, when is_write, takes one token from user's
 * bucket. cb runs exactly once, later. Returns 0, or a negative error (then
 * cb never runs). */
int rg_access_check(core_redis_t *redis, const rg_ratelimit_t *limit, const char *jti,
                    const char *user, bool is_write, rg_access_cb cb, void *ud);

#endif
