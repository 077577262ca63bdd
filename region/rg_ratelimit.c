#include "region/rg_ratelimit.h"
#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

/* KEYS[1] revocation key, KEYS[2] bucket key; ARGV: rate/s, burst, write(0/1).
 * Returns {status, retry_after_ms}: 1 ok, -1 revoked, 0 limited. */
static const char script[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0} end\n"
    "if ARGV[3] == '0' then return {1, 0} end\n"
    "local rate = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local b = redis.call('HMGET', KEYS[2], 'tokens', 'at')\n"
    "local tokens = tonumber(b[1]) or burst\n"
    "local at = tonumber(b[2]) or now\n"
    "tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)\n"
    "local ttl = math.ceil(burst * 1000 / rate) + 1000\n"
    "if tokens < 1 then\n"
    "  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'at', now)\n"
    "  redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "  return {0, math.ceil((1 - tokens) * 1000 / rate)}\n"
    "end\n"
    "redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'at', now)\n"
    "redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "return {1, 0}\n";

static char script_sha[41];

typedef struct {
    core_redis_t *redis;
    rg_access_cb cb;
    void *ud;
    bool retried;
    /* Arguments are kept so that a NOSCRIPT answer can be retried with EVAL. */
    char keys[2][96];
    char rate[16], burst[16], write[2];
} call_t;

static int send_script(call_t *c, bool eval);

static void on_reply(const redisReply *reply, int err, void *ud)
{
    call_t *c = ud;
    if (!err && reply && reply->type == REDIS_REPLY_ERROR && !c->retried &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        /* A restarted Redis forgot the script: load it with EVAL once. */
        c->retried = true;
        if (send_script(c, true) == 0)
            return;
        err = UV_EIO;
    }
    rg_access_cb cb = c->cb;
    void *cbud = c->ud;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER) {
        free(c);
        cb(err ? err : UV_EIO, RG_ACCESS_OK, 0, cbud);
        return;
    }
    long long status = reply->element[0]->integer;
    long long wait =
        reply->element[1]->type == REDIS_REPLY_INTEGER ? reply->element[1]->integer : 0;
    free(c);
    if (status < 0)
        cb(0, RG_ACCESS_REVOKED, 0, cbud);
    else if (status == 0)
        cb(0, RG_ACCESS_LIMITED, (uint32_t)(wait > 0 ? wait : 1), cbud);
    else
        cb(0, RG_ACCESS_OK, 0, cbud);
}

static int send_script(call_t *c, bool eval)
{
    const char *argv[] = {eval ? "EVAL" : "EVALSHA",
                          eval ? script : script_sha,
                          "2",
                          c->keys[0],
                          c->keys[1],
                          c->rate,
                          c->burst,
                          c->write};
    size_t argvlen[8];
    for (int i = 0; i < 8; i++)
        argvlen[i] = strlen(argv[i]);
    return core_redis_commandargv(c->redis, on_reply, c, 8, argv, argvlen);
}

int rg_access_check(core_redis_t *redis, const rg_ratelimit_t *limit, const char *jti,
                    const char *user, bool is_write, rg_access_cb cb, void *ud)
{
    if (!script_sha[0]) {
        unsigned char d[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)script, sizeof script - 1, d);
        for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
            snprintf(script_sha + 2 * i, 3, "%02x", d[i]);
    }
    call_t *c = core_xcalloc(1, sizeof *c);
    c->redis = redis;
    c->cb = cb;
    c->ud = ud;
    snprintf(c->keys[0], sizeof c->keys[0], "meridian:revoked:%s", jti);
    snprintf(c->keys[1], sizeof c->keys[1], "meridian:rl:w:%s", user);
    snprintf(c->rate, sizeof c->rate, "%u", limit->rate_per_s ? limit->rate_per_s : 1);
    snprintf(c->burst, sizeof c->burst, "%u", limit->burst ? limit->burst : 1);
    snprintf(c->write, sizeof c->write, "%d", is_write ? 1 : 0);
    int rc = send_script(c, false);
    if (rc)
        free(c);
    return rc;
}
