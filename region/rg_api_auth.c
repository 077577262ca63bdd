/* rg_api_auth.c: accounts and sessions.
 *   POST /v1/auth/signup   {email, password, display_name} -> 201 user + tokens
 *   POST /v1/auth/login    {email, password}               -> 200 user + tokens
 *   POST /v1/auth/refresh  {refresh_token}                 -> 200 new tokens (rotated)
 *   POST /v1/auth/logout   {refresh_token?}                -> 204; revokes both
 *   GET  /v1/me                                            -> 200 user
 * A user lives on the shard that owns its email's keyed hash; passwords are
 * argon2id, hashed on the thread pool. */
#include "region/rg_api.h"
#include "region/rg_gdir.h"
#include "core/core.h"
#include "core/log.h"
#include "region/rg_dir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#define DISPLAY_NAME_MAX 80

typedef struct {
    char email[CORE_AUTH_EMAIL_MAX + 1];
    uint8_t email_hash[32];
    char user_id[32];
    char display_name[4 * DISPLAY_NAME_MAX + 1];
    char home_region[33];
    char stored_hash[256];
    bool user_found;
    char refresh[CORE_AUTH_REFRESH_LEN + 1];
    char sid[CORE_AUTH_SID_LEN + 1];
    uint8_t secret_hash[32];
    char old_sid[CORE_AUTH_SID_LEN + 1];
    uint8_t old_secret_hash[32];
    int answers; /* scatter: shards that answered */
    int failures;
    bool found;
    const char *password; /* in the parsed body, which lives as long as the request */
} auth_state_t;

#define ST(r) ((auth_state_t *)(r)->state)

static void ignore_result(const PGresult *res, int err, const char *errmsg, void *ud) {}

/* The user row is written on its own shard; the other shards get the
 * directory entry too, so any of them can say where the user lives. A copy
 * that fails now is repaired by the next lookup, which asks every shard. */
static void copy_dir_user(rg_req_t *r, int home_shard)
{
    auth_state_t *st = ST(r);
    char shard[16];
    snprintf(shard, sizeof shard, "%d", home_shard);
    char email_hash[80];
    rg_api_bytea(email_hash, sizeof email_hash, st->email_hash, 32);
    const char *params[] = {st->user_id, shard, r->w->cfg->region, email_hash};
    for (int i = 0; i < r->w->nshards; i++) {
        if (i == home_shard)
            continue;
        core_pg_query(r->w->shards[i],
                      "WITH e AS (INSERT INTO dir_emails (email_hash, user_id, home_region)"
                      " VALUES ($4, $1, $3) ON CONFLICT (email_hash) DO NOTHING)"
                      " INSERT INTO dir_users (user_id, shard, home_region) VALUES ($1, $2, $3) "
                      "ON CONFLICT (user_id) DO NOTHING",
                      4, params, NULL, ignore_result, NULL, NULL);
    }
    rg_place_t p = {.shard = home_shard};
    snprintf(p.home_region, sizeof p.home_region, "%s", r->w->cfg->region);
    rg_dir_remember(r->w->dir, RG_DIR_USER, st->user_id, &p);
}

static void put_user(core_jw_t *jw, const char *id, const char *email, const char *display_name,
                     const char *home_region)
{
    core_jw_key(jw, "user");
    core_jw_obj_open(jw);
    core_jw_key(jw, "id");
    core_jw_str(jw, id);
    core_jw_key(jw, "email");
    core_jw_str(jw, email);
    core_jw_key(jw, "display_name");
    core_jw_str(jw, display_name);
    core_jw_key(jw, "home_region");
    core_jw_str(jw, home_region);
    core_jw_obj_close(jw);
}

/* Answers with the user, a fresh access token and the refresh token. */
static void reply_session(rg_req_t *r, int status)
{
    auth_state_t *st = ST(r);
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    if (st->email[0])
        put_user(&jw, st->user_id, st->email, st->display_name, st->home_region);
    if (rg_api_put_access_token(r->w, &jw, st->user_id, st->home_region) != 0) {
        core_buf_free(&b);
        rg_req_fail(r, 500, "internal", "the token could not be issued");
        return;
    }
    core_jw_key(&jw, "refresh_token");
    core_jw_str(&jw, st->refresh);
    core_jw_key(&jw, "refresh_expires_in");
    core_jw_int(&jw, r->w->cfg->auth.refresh_ttl_s);
    core_jw_obj_close(&jw);
    sodium_memzero(st->refresh, sizeof st->refresh);
    rg_req_reply(r, status, &b);
}

/* Reads and normalises the email field; answers 400 itself on failure. */
static bool take_email(rg_req_t *r)
{
    auth_state_t *st = ST(r);
    const char *email;
    if (!rg_req_str(r, "email", 3, CORE_AUTH_EMAIL_MAX, true, &email))
        return false;
    if (core_auth_email_normalise(email, strlen(email), st->email, sizeof st->email) < 0) {
        rg_req_fail(r, 400, "invalid_request", "email is not a valid address");
        return false;
    }
    core_auth_email_hash(r->w->keys, st->email, strlen(st->email), st->email_hash);
    return true;
}

static void fail_hasher(rg_req_t *r, int rc)
{
    if (rc == UV_EBUSY)
        rg_req_fail(r, 503, "busy", "too many sign-ins at once; retry shortly");
    else
        rg_req_fail(r, 500, "internal", "the password could not be processed");
}

/* ---- signup ---- */

static void on_signup_written(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "1") != 0) {
        rg_req_fail(r, 409, "email_taken", "an account with this email already exists");
        return;
    }
    copy_dir_user(r, r->shard);
    core_log(CORE_LOG_INFO, r->http->id, "auth.signup", "user=%s shard=%d", ST(r)->user_id,
             r->shard);
    reply_session(r, 201);
}

static void signup_claimed(rg_req_t *r, int outcome);

static void on_signup_hashed(int result, const char *hash, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    if (result) {
        fail_hasher(r, result);
        return;
    }
    auth_state_t *st = ST(r);
    rg_new_id(st->user_id, sizeof st->user_id, "u_");
    snprintf(st->home_region, sizeof st->home_region, "%s", r->w->cfg->region);
    snprintf(st->stored_hash, sizeof st->stored_hash, "%s", hash);
    /* The email is the world's: its owner region decides first. */
    rg_gdir_claim(r, "email", st->email_hash, st->user_id, signup_claimed);
}

static void signup_claimed(rg_req_t *r, int outcome)
{
    if (rg_req_gone(r))
        return;
    if (outcome == RG_CLAIM_TAKEN) {
        rg_req_fail(r, 409, "email_taken", "an account with this email already exists");
        return;
    }
    if (outcome) {
        rg_req_fail_h(r, 503, "directory_unavailable",
                      "the region that owns this email cannot be reached; retry shortly",
                      "Retry-After: 2\r\n");
        return;
    }
    auth_state_t *st = ST(r);
    const char *hash = st->stored_hash;
    core_auth_refresh_new(st->refresh, sizeof st->refresh, st->sid, st->secret_hash);
    char email_hash[80], secret_hash[80], shard[16], ttl[16];
    rg_api_bytea(email_hash, sizeof email_hash, st->email_hash, 32);
    rg_api_bytea(secret_hash, sizeof secret_hash, st->secret_hash, 32);
    int owner = rg_api_owner_shard(r->w, st->email_hash);
    snprintf(shard, sizeof shard, "%d", owner);
    snprintf(ttl, sizeof ttl, "%u", r->w->cfg->auth.refresh_ttl_s);
    const char *params[] = {email_hash,      st->user_id, st->email, st->display_name, hash,
                            st->home_region, shard,       st->sid,   secret_hash,      ttl};
    /* One statement, so the claim, the user, its directory entry and its
     * first session commit together or not at all. */
    rg_req_query(
        r, owner,
        "WITH c AS (INSERT INTO claims (kind, key_hash, owner_id) VALUES ('email', $1, $2) "
        "           ON CONFLICT (kind, key_hash) DO UPDATE SET owner_id = EXCLUDED.owner_id,"
        "           confirmed = true, created_at = now() WHERE NOT claims.confirmed"
        "           AND claims.created_at < now() - interval '1 day' RETURNING owner_id),"
        " u AS (INSERT INTO users (id, email_hash, email, display_name, password_hash, home_region)"
        "       SELECT $2, $1, $3, $4, $5, $6 FROM c RETURNING id),"
        " d AS (INSERT INTO dir_users (user_id, shard, home_region) SELECT id, $7::int, $6 FROM u"
        "       RETURNING 1),"
        " s AS (INSERT INTO sessions (id, user_id, secret_hash, expires_at)"
        "       SELECT $8, id, $9, now() + make_interval(secs => $10::int) FROM u RETURNING 1),"
        " e AS (INSERT INTO dir_emails (email_hash, user_id, home_region) SELECT $1, id, $6 FROM u"
        "       ON CONFLICT (email_hash) DO UPDATE SET user_id = EXCLUDED.user_id,"
        "       home_region = EXCLUDED.home_region RETURNING 1),"
        /* The world's directory learns of the user through every other region. */
        " o AS (INSERT INTO dir_outbox (kind, id, body) SELECT 'user', id,"
        "       jsonb_build_object('home_region', $6::text, 'email_hash', encode($1, 'hex'))"
        "       FROM u RETURNING 1)"
        " SELECT count(*) FROM u", /* data-modifying CTEs always run in full */
        10, params, on_signup_written);
}

static void on_signup(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(auth_state_t));
    auth_state_t *st = ST(r);
    const char *password, *display_name;
    if (!rg_req_body(r, false) || !take_email(r) ||
        !rg_req_str(r, "password", 1, CORE_AUTH_PW_MAX, true, &password) ||
        !rg_req_str(r, "display_name", 1, DISPLAY_NAME_MAX, true, &display_name))
        return;
    const char *why;
    if (core_auth_password_ok(password, strlen(password), &why) < 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "password %s", why);
        rg_req_fail(r, 400, "weak_password", msg);
        return;
    }
    snprintf(st->display_name, sizeof st->display_name, "%s", display_name);
    int rc = core_auth_hash_password(r->w->hasher, password, strlen(password), on_signup_hashed, r,
                                     &r->job);
    if (rc) {
        fail_hasher(r, rc);
        return;
    }
    r->pending++;
}

/* ---- login ---- */

static void on_login_session(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    reply_session(r, 200);
}

static void on_login_verified(int result, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    auth_state_t *st = ST(r);
    if (result == CORE_AUTH_EMISMATCH || (result == 0 && !st->user_found)) {
        core_log(CORE_LOG_INFO, r->http->id, "auth.login_failed", "shard=%d", r->shard);
        rg_req_fail(r, 401, "invalid_credentials", "the email or the password is wrong");
        return;
    }
    if (result) {
        fail_hasher(r, result);
        return;
    }
    core_auth_refresh_new(st->refresh, sizeof st->refresh, st->sid, st->secret_hash);
    char secret_hash[80], ttl[16];
    rg_api_bytea(secret_hash, sizeof secret_hash, st->secret_hash, 32);
    snprintf(ttl, sizeof ttl, "%u", r->w->cfg->auth.refresh_ttl_s);
    const char *params[] = {st->sid, st->user_id, secret_hash, ttl};
    rg_req_query(r, r->shard,
                 "INSERT INTO sessions (id, user_id, secret_hash, expires_at)"
                 " VALUES ($1, $2, $3, now() + make_interval(secs => $4::int))",
                 4, params, on_login_session);
}

static void on_login_user(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    auth_state_t *st = ST(r);
    st->user_found = PQntuples(res) == 1;
    if (st->user_found) {
        snprintf(st->user_id, sizeof st->user_id, "%s", PQgetvalue(res, 0, 0));
        snprintf(st->stored_hash, sizeof st->stored_hash, "%s", PQgetvalue(res, 0, 1));
        snprintf(st->display_name, sizeof st->display_name, "%s", PQgetvalue(res, 0, 2));
        snprintf(st->home_region, sizeof st->home_region, "%s", PQgetvalue(res, 0, 3));
    }
    /* An unknown email still costs one argon2id run: timing must not tell. */
    int rc = core_auth_verify_password(r->w->hasher, st->user_found ? st->stored_hash : NULL,
                                       st->password, strlen(st->password), on_login_verified, r,
                                       &r->job);
    if (rc) {
        fail_hasher(r, rc);
        return;
    }
    r->pending++;
}

static void on_login(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(auth_state_t));
    auth_state_t *st = ST(r);
    if (!rg_req_body(r, false) || !take_email(r) ||
        !rg_req_str(r, "password", 1, CORE_AUTH_PW_MAX, true, &st->password))
        return;
    char email_hash[80];
    rg_api_bytea(email_hash, sizeof email_hash, st->email_hash, 32);
    const char *params[] = {email_hash};
    rg_req_query(r, rg_api_owner_shard(r->w, st->email_hash),
                 "SELECT id, password_hash, display_name, home_region FROM users"
                 " WHERE email_hash = $1",
                 1, params, on_login_user);
}

/* ---- refresh: the session's shard is unknown, so every shard is asked ---- */

static void on_refresh_shard(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    auth_state_t *st = ST(r);
    st->answers++;
    if (err)
        st->failures++;
    else if (PQntuples(res) == 1) {
        st->found = true;
        snprintf(st->user_id, sizeof st->user_id, "%s", PQgetvalue(res, 0, 0));
        snprintf(st->home_region, sizeof st->home_region, "%s", PQgetvalue(res, 0, 1));
    }
    if (rg_req_gone(r))
        return;
    if (r->pending > 0)
        return; /* the other shards have not answered yet */
    if (st->found) {
        st->email[0] = '\0'; /* refresh answers tokens only */
        reply_session(r, 200);
    } else if (st->failures) {
        rg_req_fail(r, 503, "shard_unavailable", "sessions cannot be checked now; retry shortly");
    } else {
        rg_req_fail(r, 401, "invalid_refresh_token", "the refresh token is not valid");
    }
}

static void on_refresh(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(auth_state_t));
    auth_state_t *st = ST(r);
    const char *token;
    if (!rg_req_body(r, false) || !rg_req_str(r, "refresh_token", 1, 256, true, &token))
        return;
    if (core_auth_refresh_parse(token, strlen(token), st->old_sid, st->old_secret_hash) != 0) {
        rg_req_fail(r, 401, "invalid_refresh_token", "the refresh token is not valid");
        return;
    }
    core_auth_refresh_new(st->refresh, sizeof st->refresh, st->sid, st->secret_hash);
    char old_hash[80], new_hash[80], ttl[16];
    rg_api_bytea(old_hash, sizeof old_hash, st->old_secret_hash, 32);
    rg_api_bytea(new_hash, sizeof new_hash, st->secret_hash, 32);
    snprintf(ttl, sizeof ttl, "%u", r->w->cfg->auth.refresh_ttl_s);
    const char *params[] = {st->old_sid, old_hash, st->sid, new_hash, ttl};
    /* Rotation: the old session ends as the new one begins, in one statement. */
    static const char sql[] =
        "WITH old AS (UPDATE sessions SET revoked_at = now() WHERE id = $1 AND secret_hash = $2"
        "             AND revoked_at IS NULL AND expires_at > now() RETURNING user_id),"
        " new AS (INSERT INTO sessions (id, user_id, secret_hash, expires_at)"
        "         SELECT $3, user_id, $4, now() + make_interval(secs => $5::int) FROM old"
        "         RETURNING user_id)"
        " SELECT u.id, u.home_region FROM new JOIN users u ON u.id = new.user_id";
    for (int i = 0; i < r->w->nshards; i++) {
        if (core_pg_query(r->w->shards[i], sql, 5, params, NULL, on_refresh_shard, r, NULL) == 0)
            r->pending++;
        else
            st->failures++;
    }
    if (r->pending == 0)
        rg_req_fail(r, 503, "shard_unavailable", "sessions cannot be checked now; retry shortly");
}

/* ---- logout ---- */

static void on_logout_shard(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (err)
        ST(r)->failures++;
    if (rg_req_gone(r) || r->pending > 0)
        return;
    if (ST(r)->failures) {
        rg_req_fail(r, 503, "shard_unavailable", "the session could not be ended; retry");
        return;
    }
    rg_req_no_content(r);
}

static void on_logout_revoked(const redisReply *reply, int err, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    if (err) {
        rg_req_fail(r, 503, "auth_unavailable", "the token could not be revoked; retry");
        return;
    }
    auth_state_t *st = ST(r);
    const char *token = NULL;
    if (!rg_req_str(r, "refresh_token", 1, 256, false, &token))
        return;
    if (!token || core_auth_refresh_parse(token, strlen(token), st->old_sid, st->old_secret_hash)) {
        rg_req_no_content(r); /* no (valid) refresh token: the access token was all there was */
        return;
    }
    char hash[80];
    rg_api_bytea(hash, sizeof hash, st->old_secret_hash, 32);
    const char *params[] = {st->old_sid, hash, r->who.sub};
    for (int i = 0; i < r->w->nshards; i++) {
        if (core_pg_query(r->w->shards[i],
                          "UPDATE sessions SET revoked_at = now() WHERE id = $1"
                          " AND secret_hash = $2 AND user_id = $3 AND revoked_at IS NULL",
                          3, params, NULL, on_logout_shard, r, NULL) == 0)
            r->pending++;
        else
            st->failures++;
    }
    if (r->pending == 0)
        rg_req_fail(r, 503, "shard_unavailable", "the session could not be ended; retry");
}

static void logout_authenticated(rg_req_t *r)
{
    /* The access token stays revoked until it would have expired anyway. */
    char key[64], ttl[24];
    snprintf(key, sizeof key, "meridian:revoked:%s", r->who.jti);
    int64_t left = r->who.exp - (int64_t)time(NULL) + CORE_AUTH_LEEWAY_S;
    snprintf(ttl, sizeof ttl, "%lld", (long long)(left > 1 ? left : 1));
    const char *argv[] = {"SET", key, "1", "EX", ttl};
    size_t argvlen[] = {3, strlen(key), 1, 2, strlen(ttl)};
    if (core_redis_commandargv(r->w->redis, on_logout_revoked, r, 5, argv, argvlen) != 0) {
        rg_req_fail(r, 503, "auth_unavailable", "the token could not be revoked; retry");
        return;
    }
    r->pending++;
}

static void on_logout(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(auth_state_t));
    if (!rg_req_body(r, true))
        return;
    rg_api_authenticate(r, logout_authenticated);
}

/* ---- me ---- */

static void on_me_row(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    if (PQntuples(res) != 1) {
        rg_req_fail(r, 404, "not_found", "no such user");
        return;
    }
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    put_user(&jw, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
             PQgetvalue(res, 0, 3));
    core_jw_key(&jw, "created_at");
    core_jw_str(&jw, PQgetvalue(res, 0, 4));
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void me_placed(rg_req_t *r, int err, const rg_place_t *p)
{
    if (rg_req_gone(r))
        return;
    if (err == UV_ENOENT) {
        rg_req_fail(r, 404, "not_found", "no such user");
        return;
    }
    if (err) {
        rg_req_fail(r, 503, "shard_unavailable", "the user's database is unavailable; retry");
        return;
    }
    const char *params[] = {r->who.sub};
    rg_req_query(r, p->shard,
                 "SELECT id, email, display_name, home_region,"
                 " to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                 " FROM users WHERE id = $1",
                 1, params, on_me_row);
}

static void me_authenticated(rg_req_t *r)
{
    const rg_place_t *p = rg_dir_cached(r->w->dir, RG_DIR_USER, r->who.sub);
    if (p) {
        r->pending++; /* me_placed balances it as a lookup callback would */
        me_placed(r, 0, p);
        return;
    }
    rg_dir_lookup(r->w->dir, r, RG_DIR_USER, r->who.sub, me_placed);
}

static void on_me(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(auth_state_t));
    rg_api_authenticate(r, me_authenticated);
}

int rg_api_auth_routes(rg_worker_t *w)
{
    int rc = core_http_route(w->http, "POST", "/v1/auth/signup", on_signup, w);
    if (!rc)
        rc = core_http_route(w->http, "POST", "/v1/auth/login", on_login, w);
    if (!rc)
        rc = core_http_route(w->http, "POST", "/v1/auth/refresh", on_refresh, w);
    if (!rc)
        rc = core_http_route(w->http, "POST", "/v1/auth/logout", on_logout, w);
    if (!rc)
        rc = core_http_route(w->http, "GET", "/v1/me", on_me, w);
    return rc;
}
