#include "region/rg_req.h"
#include "core/core.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

static void req_free(rg_req_t *r)
{
    if (r->on_free)
        r->on_free(r);
    core_json_free(r->doc);
    free(r);
}

static void on_abort(core_http_req_t *http)
{
    rg_req_t *r = http->user;
    r->http = NULL;
    /* A cancelled statement or job never calls back: nothing else holds r. */
    if (r->pg) {
        core_pg_cancel(r->pg);
        r->pg = NULL;
        r->pending--;
    }
    if (r->job) {
        core_auth_job_cancel(r->job);
        r->job = NULL;
        r->pending--;
    }
    if (r->pending == 0)
        req_free(r);
}

rg_req_t *rg_req_new(core_http_req_t *http, rg_worker_t *w, size_t state_size)
{
    rg_req_t *r = core_xcalloc(1, sizeof *r + state_size);
    r->http = http;
    r->w = w;
    r->shard = -1;
    http->user = r;
    http->on_abort = on_abort;
    return r;
}

bool rg_req_gone(rg_req_t *r)
{
    r->pending--;
    r->pg = NULL; /* whatever was in flight has answered */
    r->job = NULL;
    if (r->http)
        return false;
    if (r->pending == 0)
        req_free(r);
    return true;
}

void rg_req_reply(rg_req_t *r, int status, core_buf_t *json)
{
    if (r->http)
        core_http_respond_json(r->http, status, json);
    core_buf_free(json);
    req_free(r);
}

void rg_req_release(rg_req_t *r)
{
    r->http = NULL;
    req_free(r);
}

void rg_req_no_content(rg_req_t *r)
{
    if (r->http)
        core_http_respond(r->http, 204, NULL, NULL, NULL, 0);
    req_free(r);
}

void rg_req_fail_h(rg_req_t *r, int status, const char *code, const char *message,
                   const char *extra_headers)
{
    if (r->http)
        core_http_respond_error_h(r->http, status, code, message, extra_headers);
    req_free(r);
}

void rg_req_fail_home(rg_req_t *r, const char *home)
{
    char msg[128], hdr[96];
    snprintf(msg, sizeof msg, "this workspace is served by its home region %s", home);
    snprintf(hdr, sizeof hdr, "Meridian-Home-Region: %s\r\n", home);
    rg_req_fail_h(r, 421, "wrong_region", msg, hdr);
}

void rg_req_fail(rg_req_t *r, int status, const char *code, const char *message)
{
    rg_req_fail_h(r, status, code, message, NULL);
}

void rg_req_fail_pg(rg_req_t *r, int err, const PGresult *res)
{
    const char *state = res ? core_pg_sqlstate(res) : NULL;
    /* The write fence of a workspace being moved (migration 0012). */
    if (err == CORE_PG_ESQL && state && strcmp(state, "MR503") == 0) {
        char hdr[CORE_ADMIT_HINT_HEADERS];
        core_admit_hint_headers(hdr, sizeof hdr, 100 + randombytes_uniform(200));
        rg_req_fail_h(r, 503, "workspace_moving",
                      "the workspace is moving to another region; retry shortly", hdr);
        return;
    }
    if (err == CORE_PG_ESQL && state && strcmp(state, "MR421") == 0) {
        const char *home = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        if (!home || strlen(home) > 32 || strpbrk(home, "\r\n:"))
            home = "?";
        rg_req_fail_home(r, home);
        return;
    }
    if (err == CORE_PG_ESQL && state && strcmp(state, "23505") == 0) {
        rg_req_fail(r, 409, "conflict", "that already exists");
        return;
    }
    if (err == CORE_PG_ESQL && state && strcmp(state, "40001") != 0 &&
        strcmp(state, "40P01") != 0) {
        const char *constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
        core_log(CORE_LOG_ERROR, r->http ? r->http->id : NULL, "api.db_error",
                 "shard=%d sqlstate=%s constraint=%s", r->shard, state,
                 constraint ? constraint : "-");
        rg_req_fail(r, 500, "internal", "the request failed; it has been logged");
        return;
    }
    core_log(CORE_LOG_WARN, r->http ? r->http->id : NULL, "api.shard_unavailable",
             "shard=%d error=\"%s\"", r->shard, core_pg_strerror(err));
    rg_req_fail(r, 503, "shard_unavailable",
                "the workspace's database is unavailable; retry shortly");
}

bool rg_req_pg_ok(rg_req_t *r, const PGresult *res, int err)
{
    if (rg_req_gone(r))
        return false;
    if (err) {
        rg_req_fail_pg(r, err, res);
        return false;
    }
    return true;
}

int rg_req_query(rg_req_t *r, int shard, const char *sql, int nparams, const char *const *values,
                 core_pg_cb cb)
{
    r->shard = shard;
    int rc = core_pg_query_static(r->w->shards[shard], sql, nparams, values, NULL, cb, r, &r->pg);
    if (rc) {
        r->pg = NULL;
        rg_req_fail_pg(r, rc, NULL);
        return -1;
    }
    r->pending++;
    return 0;
}

bool rg_req_body(rg_req_t *r, bool allow_empty)
{
    core_http_req_t *h = r->http;
    if (h->body.len == 0 && !allow_empty) {
        rg_req_fail(r, 400, "invalid_json", "a JSON object body is required");
        return false;
    }
    if (h->body.len == 0) {
        static const char empty[] = "{}";
        char err[8];
        core_json_parse(empty, 2, NULL, &r->doc, err, sizeof err);
        r->body = core_json_root(r->doc);
        return true;
    }
    size_t ctlen = 0;
    const char *ct = core_http_header(h, "content-type", &ctlen);
    if (!ct || ctlen < 16 || strncasecmp(ct, "application/json", 16) != 0 ||
        (ctlen > 16 && ct[16] != ';' && ct[16] != ' ')) {
        rg_req_fail(r, 415, "unsupported_media_type", "the body must be application/json");
        return false;
    }
    char err[160];
    core_json_limits_t lim = {.max_bytes = h->body.len, .max_depth = RG_JSON_MAX_DEPTH};
    if (core_json_parse(h->body.base ? h->body.base : "", h->body.len, &lim, &r->doc, err,
                        sizeof err) != 0) {
        rg_req_fail(r, 400, "invalid_json", err);
        return false;
    }
    r->body = core_json_root(r->doc);
    if (r->body->type != CORE_JSON_OBJECT) {
        rg_req_fail(r, 400, "invalid_json", "the body must be a JSON object");
        return false;
    }
    return true;
}

size_t rg_utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

bool rg_req_str(rg_req_t *r, const char *field, size_t min, size_t max, bool required,
                const char **out)
{
    char msg[160];
    const core_json_t *v = core_json_get(r->body, field);
    if (!v || v->type == CORE_JSON_NULL) {
        *out = NULL;
        if (!required)
            return true;
        snprintf(msg, sizeof msg, "%s is required", field);
        rg_req_fail(r, 400, "invalid_request", msg);
        return false;
    }
    if (v->type != CORE_JSON_STRING) {
        snprintf(msg, sizeof msg, "%s must be a string", field);
        rg_req_fail(r, 400, "invalid_request", msg);
        return false;
    }
    /* Limits count characters (code points), as clients do. */
    size_t n = rg_utf8_chars(v->u.str.s, v->u.str.len);
    if (n < min || n > max || memchr(v->u.str.s, 0, v->u.str.len)) {
        snprintf(msg, sizeof msg, "%s must be %zu to %zu characters", field, min, max);
        rg_req_fail(r, 400, "invalid_request", msg);
        return false;
    }
    *out = v->u.str.s;
    return true;
}

bool rg_req_bool(rg_req_t *r, const char *field, bool def, bool *out)
{
    const core_json_t *v = core_json_get(r->body, field);
    if (!v || v->type == CORE_JSON_NULL) {
        *out = def;
        return true;
    }
    if (v->type != CORE_JSON_BOOL) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s must be true or false", field);
        rg_req_fail(r, 400, "invalid_request", msg);
        return false;
    }
    *out = v->u.b;
    return true;
}

void rg_new_id(char *out, size_t cap, const char *prefix)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    unsigned char raw[20];
    randombytes_buf(raw, sizeof raw);
    size_t o = (size_t)snprintf(out, cap, "%s", prefix);
    for (size_t i = 0; i < sizeof raw && o + 1 < cap; i++)
        out[o++] = alphabet[raw[i] & 31];
    out[o] = '\0';
}

bool rg_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return n >= 1 && n <= 64;
}

bool rg_req_path_id(rg_req_t *r, const char *param, const char *what, char *out, size_t cap)
{
    const char *v = core_http_param(r->http, param);
    if (!v || !rg_id_valid(v) || strlen(v) >= cap) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s is not a valid id", what);
        rg_req_fail(r, 400, "invalid_request", msg);
        return false;
    }
    snprintf(out, cap, "%s", v);
    return true;
}
