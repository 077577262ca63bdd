#include "region/rg_api.h"
#include "region/rg_presence.h"
#include "core/core.h"
#include "core/log.h"
#include "region/rg_dir.h"
#include "region/rg_ratelimit.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <llhttp.h>
#include <sodium.h>

int rg_api_routes(rg_worker_t *w)
{
    int rc = rg_api_auth_routes(w);
    if (!rc)
        rc = rg_api_stream_routes(w);
    rc = rc ? rc : rg_api_message_routes(w);
    if (!rc)
        rc = rg_api_workspace_routes(w);
    if (!rc)
        rc = rg_api_reaction_routes(w);
    if (!rc)
        rc = rg_api_presence_routes(w);
    if (!rc)
        rc = rg_api_directory_routes(w);
    if (!rc)
        rc = rg_api_replica_routes(w);
    if (!rc)
        rc = rg_api_residency_routes(w);
    if (!rc)
        rc = rg_api_move_routes(w);
    return rc;
}

static void on_placed(rg_req_t *r, int err, const rg_place_t *p)
{
    if (rg_req_gone(r))
        return;
    if (err == UV_ENOENT) {
        rg_req_fail(r, 404, "not_found", "no such workspace");
        return;
    }
    /* Another region's workspace (a replica here, or known from the global
     * directory): only its home takes its requests. 421 Misdirected Request
     * names it, so that a client or an edge can go there. */
    if (!err && p->home_region[0] && strcmp(p->home_region, r->w->cfg->region) != 0) {
        rg_req_fail_home(r, p->home_region);
        return;
    }
    /* A placement on a shard this node does not have is an operator error:
     * say unavailable rather than index out of range. */
    if (err || p->shard < 0 || p->shard >= r->w->nshards) {
        rg_req_fail(r, 503, "shard_unavailable",
                    "the workspace's database is unavailable; retry shortly");
        return;
    }
    r->shard = p->shard;
    r->next(r);
}

void rg_api_in_workspace(rg_req_t *r, const char *ws, void (*next)(rg_req_t *r))
{
    r->next = next;
    const rg_place_t *p = rg_dir_cached(r->w->dir, RG_DIR_WORKSPACE, ws);
    if (p) {
        r->pending++; /* on_placed balances it as a lookup callback would */
        on_placed(r, 0, p);
        return;
    }
    rg_dir_lookup(r->w->dir, r, RG_DIR_WORKSPACE, ws, on_placed);
}

static void on_rechecked(rg_req_t *r, int err, const rg_place_t *p)
{
    if (rg_req_gone(r))
        return;
    if (!err && p->home_region[0] && strcmp(p->home_region, r->w->cfg->region) != 0) {
        rg_req_fail_home(r, p->home_region);
        return;
    }
    rg_req_fail(r, 404, "not_found", r->not_found);
}

void rg_api_not_found(rg_req_t *r, const char *ws, const char *message)
{
    r->not_found = message;
    rg_dir_forget(r->w->dir, RG_DIR_WORKSPACE, ws);
    rg_dir_lookup(r->w->dir, r, RG_DIR_WORKSPACE, ws, on_rechecked);
}

void rg_api_fail_outcome(rg_req_t *r, const char *outcome, const rg_outcome_t *table, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(outcome, table[i].outcome) == 0) {
            rg_req_fail(r, table[i].status, table[i].code, table[i].message);
            return;
        }
    }
    core_log(CORE_LOG_ERROR, r->http ? r->http->id : NULL, "api.bad_outcome",
             "shard=%d outcome=%.32s", r->shard, outcome);
    rg_req_fail(r, 500, "internal", "the request failed; it has been logged");
}

int rg_api_owner_shard(const rg_worker_t *w, const uint8_t hash[32])
{
    return core_rendezvous(hash, 32, w->nshards);
}

void rg_api_bytea(char *out, size_t cap, const uint8_t *data, size_t len)
{
    if (cap < 3 + 2 * len) {
        out[0] = '\0';
        return;
    }
    out[0] = '\\';
    out[1] = 'x';
    sodium_bin2hex(out + 2, cap - 2, data, len);
}

int rg_api_put_access_token(rg_worker_t *w, core_jw_t *jw, const char *user_id,
                            const char *home_region)
{
    core_auth_claims_t c;
    memset(&c, 0, sizeof c);
    snprintf(c.sub, sizeof c.sub, "%s", user_id);
    snprintf(c.hr, sizeof c.hr, "%s", home_region);
    c.iat = (int64_t)time(NULL);
    c.exp = c.iat + w->cfg->auth.access_ttl_s;
    core_buf_t tok;
    core_buf_init(&tok);
    int rc = core_auth_token_issue(w->keys, &c, &tok);
    if (rc == 0) {
        core_jw_key(jw, "access_token");
        core_jw_strn(jw, tok.base, tok.len);
        core_jw_key(jw, "token_type");
        core_jw_str(jw, "Bearer");
        core_jw_key(jw, "expires_in");
        core_jw_int(jw, w->cfg->auth.access_ttl_s);
    }
    sodium_memzero(tok.base, tok.cap);
    core_buf_free(&tok);
    return rc;
}

/* ---- authentication ---- */

static void unauthenticated(rg_req_t *r, const char *code, const char *message)
{
    rg_req_fail_h(r, 401, code, message, "WWW-Authenticate: Bearer\r\n");
}

static void on_access(int err, rg_access_t result, uint32_t retry_after_ms, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    if (err) {
        /* Fail closed: a revoked token must never work because Redis is down. */
        rg_req_fail(r, 503, "auth_unavailable",
                    "token revocation cannot be checked; retry shortly");
        return;
    }
    if (result == RG_ACCESS_REVOKED) {
        unauthenticated(r, "token_revoked", "the access token has been revoked");
        return;
    }
    if (result == RG_ACCESS_LIMITED) {
        char hdr[48];
        snprintf(hdr, sizeof hdr, "Retry-After: %u\r\n", (retry_after_ms + 999) / 1000);
        rg_req_fail_h(r, 429, "rate_limited", "too many writes; slow down", hdr);
        return;
    }
    r->next(r);
}

void rg_api_authenticate(rg_req_t *r, void (*next)(rg_req_t *r))
{
    size_t len = 0;
    const char *h = core_http_header(r->http, "authorization", &len);
    if (!h || len < 8 || strncasecmp(h, "Bearer ", 7) != 0) {
        unauthenticated(r, "unauthenticated", "an Authorization: Bearer token is required");
        return;
    }
    const char *tok = h + 7;
    size_t toklen = len - 7;
    while (toklen && *tok == ' ') {
        tok++;
        toklen--;
    }
    rg_api_authenticate_token(r, tok, toklen, next);
}

void rg_api_authenticate_token(rg_req_t *r, const char *tok, size_t toklen,
                               void (*next)(rg_req_t *r))
{
    int rc = core_auth_token_verify_cached(r->w->tokens, r->w->verify_keys, r->w->nverify_keys, tok,
                                           toklen, (int64_t)time(NULL), &r->who);
    if (rc == CORE_AUTH_EEXPIRED) {
        unauthenticated(r, "token_expired", "the access token has expired; refresh it");
        return;
    }
    if (rc) {
        unauthenticated(r, "invalid_token", "the access token is not valid");
        return;
    }
    r->next = next;
    /* Every request but a read takes a token from the user's write bucket. */
    int method = r->http->method;
    bool is_write = method != HTTP_GET && method != HTTP_HEAD && method != HTTP_OPTIONS;
    rg_ratelimit_t limit = {r->w->cfg->limits.write_rate_per_s, r->w->cfg->limits.write_burst};
    rc = rg_access_check(r->w->redis, &limit, r->who.jti, r->who.sub, is_write, on_access, r);
    if (rc) {
        rg_req_fail(r, 503, "auth_unavailable",
                    "token revocation cannot be checked; retry shortly");
        return;
    }
    r->pending++;
}
