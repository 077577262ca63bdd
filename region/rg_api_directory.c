/* rg_api_directory.c: the world's directory, served to edges (rg_gdir.h).
 *
 *   GET /v1/directory                         -> {"version", "workspaces", "users", "emails"}
 *   GET /v1/directory/changes?since=V[&limit=N] -> {"version", "changes", "more"}
 *
 * The callers are edges, not users: they present the bearer token named by
 * directory.edge_token_file (compared in constant time); without that file
 * the routes answer 404. Everything here is opaque ids, keyed email hashes in
 * hex and region names: no names, emails or content (design.md, invariant 8).
 *
 * Every shard holds the whole directory and numbers its own changes, so a
 * version is "<shard>:<number>". A follower whose shard is gone gets 409
 * resync_required and takes a new snapshot. */
#include "core/core.h"
#include "core/log.h"
#include "region/rg_api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#define CHANGES_MAX 5000
#define TOKEN_MAX 256

static char g_token[TOKEN_MAX + 1];
static size_t g_token_len;

typedef struct {
    int shard;
    int64_t since;
    int limit;
} dir_state_t;

#define DS(r) ((dir_state_t *)(r)->state)

/* Reads the edge token once per worker. Returns false when reading is off. */
static bool load_token(const rg_worker_t *w)
{
    if (g_token_len)
        return true;
    if (!w->cfg || !w->cfg->directory_token_file)
        return false;
    FILE *f = fopen(w->cfg->directory_token_file, "r");
    if (!f) {
        core_log_error("directory.token_unreadable", "file=%s error=\"%s\"",
                       w->cfg->directory_token_file, strerror(errno));
        return false;
    }
    size_t n = fread(g_token, 1, TOKEN_MAX, f);
    fclose(f);
    while (n && (g_token[n - 1] == '\n' || g_token[n - 1] == '\r' || g_token[n - 1] == ' '))
        n--;
    g_token[n] = '\0';
    g_token_len = n;
    if (n < 16) {
        core_log_error("directory.token_too_short", "file=%s", w->cfg->directory_token_file);
        g_token_len = 0;
    }
    return g_token_len > 0;
}

/* The edge's bearer token; answers and returns false when it is missing or wrong. */
static bool edge_authorized(rg_req_t *r)
{
    if (!load_token(r->w)) {
        rg_req_fail(r, 404, "not_found", "no such route");
        return false;
    }
    size_t len = 0;
    const char *h = core_http_header(r->http, "authorization", &len);
    if (!h || len < 8 || strncasecmp(h, "Bearer ", 7) != 0 || len - 7 != g_token_len ||
        sodium_memcmp(h + 7, g_token, g_token_len) != 0) {
        rg_req_fail_h(r, 401, "unauthenticated", "the directory is for edges: a token is required",
                      "WWW-Authenticate: Bearer\r\n");
        return false;
    }
    return true;
}

/* The first shard that can answer: every shard holds the whole directory. */
static int live_shard(const rg_worker_t *w)
{
    for (int i = 0; i < w->nshards; i++)
        if (core_pg_pool_ready(w->shards[i]))
            return i;
    return -1;
}

static void on_json(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    if (PQntuples(res) != 1) {
        rg_req_fail(r, 500, "internal", "the directory could not be read");
        return;
    }
    core_buf_t b;
    core_buf_init(&b);
    core_buf_append(&b, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    rg_req_reply(r, 200, &b);
}

static void on_snapshot(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(dir_state_t));
    if (!edge_authorized(r))
        return;
    int shard = live_shard(r->w);
    if (shard < 0) {
        rg_req_fail(r, 503, "shard_unavailable", "no database is available; retry shortly");
        return;
    }
    r->shard = shard;
    char s[16];
    snprintf(s, sizeof s, "%d", shard);
    const char *params[] = {s};
    /* One statement, one snapshot: the version matches the rows. */
    rg_req_query(
        r, shard,
        "SELECT json_build_object("
        " 'version', $1 || ':' || (SELECT coalesce(max(version), 0) FROM dir_changes),"
        " 'workspaces', (SELECT coalesce(json_agg(json_build_object('id', workspace_id,"
        "   'home_region', home_region, 'allowed_regions', allowed_regions, 'epoch', epoch,"
        "   'pinned', pinned) ORDER BY workspace_id), '[]') FROM dir_workspaces),"
        " 'users', (SELECT coalesce(json_agg(json_build_object('id', user_id,"
        "   'home_region', home_region) ORDER BY user_id), '[]') FROM dir_users),"
        " 'emails', (SELECT coalesce(json_agg(json_build_object('hash', encode(email_hash, 'hex'),"
        "   'home_region', home_region) ORDER BY email_hash), '[]') FROM dir_emails))::text",
        1, params, on_json);
}

static void on_changes(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(dir_state_t));
    dir_state_t *st = DS(r);
    char since[48], lim[16];
    int shard;
    long long v;
    char extra;
    if (core_http_query(http, "since", since, sizeof since) <= 0 ||
        sscanf(since, "%d:%lld%c", &shard, &v, &extra) != 2 || shard < 0 || v < 0) {
        rg_req_fail(r, 400, "invalid_since", "since must be a version \"<shard>:<number>\"");
        return;
    }
    st->limit = 1000;
    if (core_http_query(http, "limit", lim, sizeof lim) > 0) {
        char *end;
        long l = strtol(lim, &end, 10);
        if (*end || l < 1 || l > CHANGES_MAX) {
            rg_req_fail(r, 400, "invalid_limit", "limit must be 1 to 5000");
            return;
        }
        st->limit = (int)l;
    }
    if (!edge_authorized(r))
        return;
    if (shard >= r->w->nshards || !core_pg_pool_ready(r->w->shards[shard])) {
        rg_req_fail(r, 409, "resync_required",
                    "the version's shard cannot answer: take a new snapshot");
        return;
    }
    r->shard = shard;
    char s[16], vs[24], ls[16];
    snprintf(s, sizeof s, "%d", shard);
    snprintf(vs, sizeof vs, "%lld", v);
    snprintf(ls, sizeof ls, "%d", st->limit);
    const char *params[] = {s, vs, ls};
    rg_req_query(
        r, shard,
        "WITH c AS (SELECT * FROM dir_changes WHERE version > $2::bigint ORDER BY version"
        "   LIMIT $3::int + 1),"
        " page AS (SELECT * FROM c ORDER BY version LIMIT $3::int)"
        " SELECT json_build_object("
        "  'version', $1 || ':' || coalesce((SELECT max(version) FROM page), $2::bigint),"
        "  'more', (SELECT count(*) FROM c) > $3::int,"
        "  'changes', (SELECT coalesce(json_agg(json_build_object('version', version, 'kind', kind,"
        "    'id', id, 'home_region', home_region, 'allowed_regions', allowed, 'epoch', epoch,"
        "    'pinned', pinned) ORDER BY version), '[]') FROM page))::text",
        3, params, on_json);
}

int rg_api_directory_routes(rg_worker_t *w)
{
    int rc = core_http_route(w->http, "GET", "/v1/directory", on_snapshot, w);
    return rc ? rc : core_http_route(w->http, "GET", "/v1/directory/changes", on_changes, w);
}
