/* rg_api_residency.c: the residency admin API (docs/residency.md).
 *
 *   GET  /v1/admin/residency/workspaces                      policies of home workspaces
 *   GET  /v1/admin/residency/workspaces/{id}                 one policy and its latest audit
 * entries POST /v1/admin/residency/workspaces/{id}/pin             {"reason", "allowed_regions"?}
 *   POST /v1/admin/residency/workspaces/{id}/unpin           {"reason"}
 *   PUT  /v1/admin/residency/workspaces/{id}/allowed-regions {"allowed_regions", "reason"}
 *   GET  /v1/admin/audit?shard=K&since=SEQ&limit=N           the audit chain of one shard
 *
 * Who: a compliance_admin member of the workspace, or a user listed in the
 * region's admin.operator_user_ids (every workspace; the audit chain).
 * Where: the workspace's home region; any other answers 421 naming it.
 *
 * A change is one statement on the workspace's shard: the policy, the
 * directory row (whose trigger feeds the edges' change feed), the directory
 * outbox (every other region) and the audit entry commit together or not at
 * all. The entry extends the shard's hash chain: hash = BLAKE2b-256(previous
 * hash || entry), signed with the region's Ed25519 key. The statement inserts
 * only if the chain's head is still the one the entry was built on; a
 * concurrent change makes it build again on the new head. */
#include "core/core.h"
#include "core/log.h"
#include "region/rg_api.h"
#include "region/rg_audit.h"
#include "replication/repl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#define REASON_MAX 500
#define AUDIT_PAGE_MAX 1000
#define APPEND_TRIES 5

typedef enum { ACT_SHOW, ACT_PIN, ACT_UNPIN, ACT_SET_ALLOWED } action_t;

typedef struct {
    action_t action;
    char ws[72];
    char reason[REASON_MAX * 4 + 1];
    bool has_allowed;
    char want[RES_MAX_REGIONS][33]; /* allowed_regions asked for */
    int nwant;
    int tries;
    bool operator_;
    /* the policy before the change */
    char home[33];
    char allowed_lit[RES_MAX_REGIONS * 34 + 4];
    bool pinned;
    /* the change */
    char new_lit[RES_MAX_REGIONS * 34 + 4];
    bool new_pinned;
    int limit; /* audit page size */
    /* list */
    core_buf_t items;
    core_jw_t jw;
    int failures;
} rs_state_t;

#define ST(r) ((rs_state_t *)(r)->state)

static const char *const ACTION_NAME[] = {"show", "pin", "unpin", "set_allowed_regions"};

static bool is_operator(const rg_worker_t *w, const char *user_id)
{
    for (size_t i = 0; i < w->cfg->nadmin_operators; i++)
        if (strcmp(w->cfg->admin_operators[i], user_id) == 0)
            return true;
    return false;
}

static void on_free(rg_req_t *r)
{
    core_buf_free(&ST(r)->items);
}

static rg_req_t *new_req(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(rs_state_t));
    r->on_free = on_free;
    core_buf_init(&ST(r)->items);
    return r;
}

/* ---- policies as JSON ---- */

/* Appends the names of a text[] literal ("{a,b}") as a JSON array. */
static void put_region_list(core_jw_t *jw, const char *lit)
{
    core_jw_arr_open(jw);
    const char *p = lit;
    if (*p == '{')
        p++;
    while (*p && *p != '}') {
        size_t n = strcspn(p, ",}");
        if (n)
            core_jw_strn(jw, p, n);
        p += n;
        if (*p == ',')
            p++;
    }
    core_jw_arr_close(jw);
}

static bool lit_has(const char *lit, const char *name)
{
    size_t n = strlen(name);
    const char *p = lit + (*lit == '{');
    while (*p && *p != '}') {
        size_t len = strcspn(p, ",}");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len;
        if (*p == ',')
            p++;
    }
    return false;
}

/* Copies addressed to regions the policy no longer allows leave this
 * region's stream too: they would be sourced there once the link is back. */
static void purge_removed(rg_req_t *r)
{
    rs_state_t *st = ST(r);
    if (!r->w->nats || !r->w->world)
        return;
    char stream[64];
    snprintf(stream, sizeof stream, "EV_%s", r->w->cfg->region);
    for (size_t i = 0; i < r->w->world->nregions; i++) {
        const char *name = r->w->world->regions[i].name;
        if (lit_has(st->allowed_lit, name) && !lit_has(st->new_lit, name)) {
            char subject[200];
            snprintf(subject, sizeof subject, "ev.%s.%s.%s.>", r->w->cfg->region, name, st->ws);
            repl_purge(r->w->nats, stream, subject);
        }
    }
}

/* Columns: id, home_region, allowed::text, pinned, epoch, reason, changed_at, changed_by. */
#define POLICY_COLS                                                                                \
    "w.id, d.home_region, w.allowed_regions::text, w.pinned, d.epoch, w.policy_reason,"            \
    " to_char(w.policy_changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"       \
    " w.policy_changed_by"

static void put_policy(core_jw_t *jw, const PGresult *res, int row)
{
    core_jw_obj_open(jw);
    core_jw_key(jw, "workspace_id");
    core_jw_str(jw, PQgetvalue(res, row, 0));
    core_jw_key(jw, "home_region");
    core_jw_str(jw, PQgetvalue(res, row, 1));
    core_jw_key(jw, "allowed_regions");
    put_region_list(jw, PQgetvalue(res, row, 2));
    core_jw_key(jw, "pinned");
    core_jw_bool(jw, PQgetvalue(res, row, 3)[0] == 't');
    core_jw_key(jw, "epoch");
    core_jw_int(jw, strtoll(PQgetvalue(res, row, 4), NULL, 10));
    static const char *const opt[] = {"reason", "changed_at", "changed_by"};
    for (int i = 0; i < 3; i++) {
        core_jw_key(jw, opt[i]);
        if (PQgetisnull(res, row, 5 + i))
            core_jw_null(jw);
        else
            core_jw_str(jw, PQgetvalue(res, row, 5 + i));
    }
    core_jw_obj_close(jw);
}

/* Columns: seq, region, at, workspace_id, action, entry, prev_hash, hash, signature, key_id. */
#define AUDIT_COLS                                                                                 \
    "seq, region, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at,"      \
    " workspace_id, action, entry, encode(prev_hash, 'hex') AS prev_hash,"                         \
    " encode(hash, 'hex') AS hash, encode(signature, 'hex') AS signature, key_id"

static void put_audit(core_jw_t *jw, const PGresult *res, int row, int col)
{
    static const char *const keys[] = {"seq",   "region",    "at",   "workspace_id", "action",
                                       "entry", "prev_hash", "hash", "signature",    "key_id"};
    core_jw_obj_open(jw);
    for (int i = 0; i < 10; i++) {
        core_jw_key(jw, keys[i]);
        if (PQgetisnull(res, row, col + i))
            core_jw_null(jw);
        else if (i == 0)
            core_jw_int(jw, strtoll(PQgetvalue(res, row, col), NULL, 10));
        else
            core_jw_str(jw, PQgetvalue(res, row, col + i));
    }
    core_jw_obj_close(jw);
}

/* ---- one workspace: load, authorize, then show or change ---- */

static void load(rg_req_t *r);

static void on_changed(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    rs_state_t *st = ST(r);
    if (rg_req_gone(r))
        return;
    bool raced = (err == CORE_PG_ESQL && strcmp(core_pg_sqlstate(res), "23505") == 0) ||
                 (!err && (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)));
    if (raced) {
        /* Another change took the chain's next entry: build on the new head. */
        if (++st->tries >= APPEND_TRIES) {
            rg_req_fail(r, 503, "busy", "the audit trail is busy; retry shortly");
            return;
        }
        load(r);
        return;
    }
    if (err) {
        rg_req_fail_pg(r, err, res);
        return;
    }
    core_log(CORE_LOG_INFO, r->http->id, "residency.changed",
             "workspace=%s action=%s allowed=%s pinned=%d audit_seq=%s by=%s", st->ws,
             ACTION_NAME[st->action], st->new_lit, st->new_pinned, PQgetvalue(res, 0, 0),
             r->who.sub);
    purge_removed(r);
    /* The region's other shards hold copies of the directory: they follow
     * now (the edges read one of them), and every other region through the
     * directory outbox. */
    const char *params[] = {st->ws, st->new_lit, st->new_pinned ? "true" : "false"};
    for (int i = 0; i < r->w->nshards; i++) {
        if (i == r->shard)
            continue;
        core_pg_query(r->w->shards[i],
                      "UPDATE dir_workspaces SET allowed_regions = $2::text[],"
                      " pinned = $3::boolean, updated_at = now() WHERE workspace_id = $1",
                      3, params, NULL, NULL, NULL, NULL);
    }
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "workspace");
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "workspace_id");
    core_jw_str(&jw, st->ws);
    core_jw_key(&jw, "home_region");
    core_jw_str(&jw, st->home);
    core_jw_key(&jw, "allowed_regions");
    put_region_list(&jw, st->new_lit);
    core_jw_key(&jw, "pinned");
    core_jw_bool(&jw, st->new_pinned);
    core_jw_key(&jw, "epoch");
    core_jw_int(&jw, strtoll(PQgetvalue(res, 0, 1), NULL, 10));
    core_jw_key(&jw, "reason");
    core_jw_str(&jw, st->reason);
    core_jw_key(&jw, "changed_at");
    core_jw_str(&jw, PQgetvalue(res, 0, 2));
    core_jw_key(&jw, "changed_by");
    core_jw_str(&jw, r->who.sub);
    core_jw_obj_close(&jw);
    core_jw_key(&jw, "audit_seq");
    core_jw_int(&jw, strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

/* The policy after the action, as a text[] literal; answers and returns
 * false when it is refused. */
static bool next_policy(rg_req_t *r)
{
    rs_state_t *st = ST(r);
    st->new_pinned = st->action == ACT_PIN ? true : st->action == ACT_UNPIN ? false : st->pinned;
    if (!st->has_allowed) {
        if (st->action == ACT_PIN)
            snprintf(st->new_lit, sizeof st->new_lit, "{%s}", st->home); /* pinned to its home */
        else
            snprintf(st->new_lit, sizeof st->new_lit, "%s", st->allowed_lit);
        return true;
    }
    bool home_in = false;
    for (int i = 0; i < st->nwant; i++)
        home_in = home_in || strcmp(st->want[i], st->home) == 0;
    if (!home_in) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "allowed_regions must include the home region %s, which holds the workspace's "
                 "data: move the workspace first",
                 st->home);
        rg_req_fail(r, 409, "would_strand_data", msg);
        return false;
    }
    size_t o = (size_t)snprintf(st->new_lit, sizeof st->new_lit, "{%s", st->home);
    for (int i = 0; i < st->nwant; i++) {
        if (strcmp(st->want[i], st->home) == 0)
            continue;
        o += (size_t)snprintf(st->new_lit + o, sizeof st->new_lit - o, ",%s", st->want[i]);
    }
    snprintf(st->new_lit + o, sizeof st->new_lit - o, "}");
    return true;
}

static void put_policy_obj(core_jw_t *jw, const char *home, const char *lit, bool pinned)
{
    core_jw_obj_open(jw);
    core_jw_key(jw, "home_region");
    core_jw_str(jw, home);
    core_jw_key(jw, "allowed_regions");
    put_region_list(jw, lit);
    core_jw_key(jw, "pinned");
    core_jw_bool(jw, pinned);
    core_jw_obj_close(jw);
}

/* Builds the audit entry on the chain's head (seq, hash) and commits it
 * with the change. */
static void change(rg_req_t *r, int64_t head_seq, const uint8_t head_hash[32])
{
    rs_state_t *st = ST(r);
    const rg_worker_t *w = r->w;
    char at[40];
    rg_audit_now(at, sizeof at);
    int64_t seq = head_seq + 1;

    core_buf_t entry;
    core_buf_init(&entry);
    core_jw_t jw;
    core_jw_init(&jw, &entry);
    rg_audit_open_entry(&jw, w, seq, r->shard, at, r->who.sub,
                        st->operator_ ? "operator" : "compliance_admin");
    core_jw_key(&jw, "action");
    core_jw_str(&jw, ACTION_NAME[st->action]);
    core_jw_key(&jw, "workspace_id");
    core_jw_str(&jw, st->ws);
    core_jw_key(&jw, "before");
    put_policy_obj(&jw, st->home, st->allowed_lit, st->pinned);
    core_jw_key(&jw, "after");
    put_policy_obj(&jw, st->home, st->new_lit, st->new_pinned);
    core_jw_key(&jw, "reason");
    core_jw_str(&jw, st->reason);
    core_jw_obj_close(&jw);

    /* hash = BLAKE2b-256(prev || entry); signature over the hash. */
    char prev_hex[65], hash_hex[65], sig_hex[129], seq_s[24];
    rg_audit_seal(w, head_hash, entry.base, entry.len, prev_hex, hash_hex, sig_hex);
    snprintf(seq_s, sizeof seq_s, "%lld", (long long)seq);
    const char *params[] = {seq_s,
                            w->cfg->region,
                            at,
                            st->ws,
                            ACTION_NAME[st->action],
                            core_buf_cstr(&entry),
                            prev_hex,
                            hash_hex,
                            sig_hex,
                            w->keys->pub.kid,
                            st->new_lit,
                            st->new_pinned ? "true" : "false",
                            st->reason,
                            r->who.sub};
    rg_req_query(
        r, r->shard,
        RG_AUDIT_APPEND_CTE
        ","
        " w AS (UPDATE workspaces SET allowed_regions = $11::text[], pinned = $12::boolean,"
        "   policy_reason = $13, policy_changed_at = $3::timestamptz, policy_changed_by = $14"
        "   WHERE id = $4 AND EXISTS (SELECT 1 FROM a) RETURNING id),"
        " d AS (UPDATE dir_workspaces SET allowed_regions = $11::text[], pinned = $12::boolean,"
        "   updated_at = now() WHERE workspace_id = $4 AND EXISTS (SELECT 1 FROM w)"
        "   RETURNING epoch, home_region),"
        " o AS (INSERT INTO dir_outbox (kind, id, body) SELECT 'workspace', $4,"
        "   jsonb_build_object('home_region', home_region, 'allowed_regions', $11::text[],"
        "     'epoch', epoch, 'pinned', $12::boolean) FROM d RETURNING 1)"
        " SELECT (SELECT seq FROM a), (SELECT epoch FROM d), $3",
        14, params, on_changed);
    core_buf_free(&entry);
}

static void on_loaded(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    rs_state_t *st = ST(r);
    if (!rg_req_pg_ok(r, res, err))
        return;
    if (PQntuples(res) < 1) {
        rg_req_fail(r, 404, "not_found", "no such workspace");
        return;
    }
    /* Columns: POLICY_COLS (0-7), role (8), head seq (9), head hash (10), then audit rows. */
    const char *role = PQgetisnull(res, 0, 8) ? NULL : PQgetvalue(res, 0, 8);
    st->operator_ = is_operator(r->w, r->who.sub);
    if (!st->operator_ && !role) {
        /* Not a member: the workspace does not exist for them. */
        rg_req_fail(r, 404, "not_found", "no such workspace");
        return;
    }
    if (!st->operator_ && strcmp(role, "compliance_admin") != 0) {
        rg_req_fail(r, 403, "forbidden",
                    "residency is managed by the workspace's compliance admins and operators");
        return;
    }
    snprintf(st->home, sizeof st->home, "%s", PQgetvalue(res, 0, 1));
    /* The worker's placement cache can lag a promotion elsewhere by a
     * moment; the directory row read here cannot. Only the home answers:
     * its audit entries are the workspace's latest, not this region's. */
    if (strcmp(st->home, r->w->cfg->region) != 0) {
        rg_req_fail_home(r, st->home);
        return;
    }
    snprintf(st->allowed_lit, sizeof st->allowed_lit, "%s", PQgetvalue(res, 0, 2));
    st->pinned = PQgetvalue(res, 0, 3)[0] == 't';
    if (st->action == ACT_SHOW) {
        core_buf_t b;
        core_buf_init(&b);
        core_jw_t jw;
        core_jw_init(&jw, &b);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "workspace");
        put_policy(&jw, res, 0);
        core_jw_key(&jw, "audit");
        core_jw_arr_open(&jw);
        for (int i = 0; i < PQntuples(res); i++)
            if (!PQgetisnull(res, i, 11))
                put_audit(&jw, res, i, 11);
        core_jw_arr_close(&jw);
        core_jw_obj_close(&jw);
        rg_req_reply(r, 200, &b);
        return;
    }
    /* A move or a standby copies under the policy it started with: the
     * policy waits for it (the last column). */
    if (strcmp(PQgetvalue(res, 0, PQnfields(res) - 1), "0") != 0) {
        rg_req_fail(
            r, 409, "move_in_progress",
            "the workspace is being moved or has a standby copy: cancel or stop it, or wait "
            "for the move to end, before changing its policy");
        return;
    }
    if (!next_policy(r))
        return;
    int64_t head_seq = strtoll(PQgetvalue(res, 0, 9), NULL, 10);
    uint8_t head[32] = {0};
    if (head_seq > 0 &&
        sodium_hex2bin(head, sizeof head, PQgetvalue(res, 0, 10), 64, NULL, NULL, NULL) != 0) {
        rg_req_fail(r, 500, "internal", "the audit trail's head is unreadable");
        return;
    }
    change(r, head_seq, head);
}

static void load(rg_req_t *r)
{
    rs_state_t *st = ST(r);
    const char *params[] = {st->ws, r->who.sub};
    rg_req_query(r, r->shard,
                 "SELECT " POLICY_COLS ","
                 " (SELECT role FROM members m WHERE m.workspace_id = w.id AND m.user_id = $2"
                 "   AND m.status = 'active'),"
                 " coalesce((SELECT max(seq) FROM audit_log), 0),"
                 " (SELECT encode(hash, 'hex') FROM audit_log ORDER BY seq DESC LIMIT 1),"
                 " a.seq, a.region, a.at, a.workspace_id, a.action, a.entry, a.prev_hash, a.hash,"
                 " a.signature, a.key_id,"
                 " (SELECT count(*) FROM moves x WHERE x.workspace_id = w.id"
                 "   AND x.state NOT IN ('done', 'cancelled'))"
                 " FROM workspaces w JOIN dir_workspaces d ON d.workspace_id = w.id"
                 " LEFT JOIN LATERAL (SELECT " AUDIT_COLS " FROM audit_log l"
                 "   WHERE l.workspace_id = w.id ORDER BY l.seq DESC LIMIT 20) a ON true"
                 " WHERE w.id = $1 ORDER BY a.seq DESC NULLS LAST",
                 2, params, on_loaded);
}

static void authenticated(rg_req_t *r)
{
    rg_api_in_workspace(r, ST(r)->ws, load);
}

/* Reads the body of a change; answers 400 and returns false on bad input. */
static bool read_change(rg_req_t *r)
{
    rs_state_t *st = ST(r);
    if (!rg_req_body(r, false))
        return false;
    const core_json_t *reason = core_json_get(r->body, "reason");
    if (!reason || reason->type != CORE_JSON_STRING || reason->u.str.len == 0) {
        rg_req_fail(r, 400, "reason_required",
                    "every residency change needs a \"reason\" (1-500 characters), recorded in "
                    "the audit trail");
        return false;
    }
    if (rg_utf8_chars(reason->u.str.s, reason->u.str.len) > REASON_MAX) {
        rg_req_fail(r, 400, "invalid_request", "reason: at most 500 characters");
        return false;
    }
    memcpy(st->reason, reason->u.str.s, reason->u.str.len);
    st->reason[reason->u.str.len] = '\0';
    const core_json_t *a = core_json_get(r->body, "allowed_regions");
    if (st->action == ACT_SET_ALLOWED && !a) {
        rg_req_fail(r, 400, "invalid_request", "allowed_regions is required");
        return false;
    }
    if (!a || a->type == CORE_JSON_NULL || st->action == ACT_UNPIN)
        return true;
    if (a->type != CORE_JSON_ARRAY || a->u.kids.n == 0 || a->u.kids.n > RES_MAX_REGIONS) {
        rg_req_fail(r, 400, "invalid_request",
                    "allowed_regions must be a non-empty array of region names");
        return false;
    }
    st->has_allowed = true;
    for (size_t i = 0; i < a->u.kids.n; i++) {
        const core_json_t *v = a->u.kids.items[i];
        if (v->type != CORE_JSON_STRING) {
            rg_req_fail(r, 400, "invalid_request",
                        "allowed_regions must be a non-empty array of region names");
            return false;
        }
        bool known = strcmp(v->u.str.s, r->w->cfg->region) == 0 ||
                     (r->w->world && res_world_region(r->w->world, v->u.str.s));
        if (!known || v->u.str.len > 32) {
            char msg[128];
            snprintf(msg, sizeof msg, "allowed_regions: \"%.40s\" is not a region of this world",
                     v->u.str.s);
            rg_req_fail(r, 400, "unknown_region", msg);
            return false;
        }
        bool dup = false;
        for (int k = 0; k < st->nwant; k++)
            dup = dup || strcmp(st->want[k], v->u.str.s) == 0;
        if (!dup)
            snprintf(st->want[st->nwant++], sizeof st->want[0], "%s", v->u.str.s);
    }
    return true;
}

static void start(core_http_req_t *http, void *ud, action_t action)
{
    rg_req_t *r = new_req(http, ud);
    rs_state_t *st = ST(r);
    st->action = action;
    if (!rg_req_path_id(r, "id", "workspace id", st->ws, sizeof st->ws))
        return;
    if (action != ACT_SHOW && !read_change(r))
        return;
    rg_api_authenticate(r, authenticated);
}

static void on_show(core_http_req_t *http, void *ud)
{
    start(http, ud, ACT_SHOW);
}

static void on_pin(core_http_req_t *http, void *ud)
{
    start(http, ud, ACT_PIN);
}

static void on_unpin(core_http_req_t *http, void *ud)
{
    start(http, ud, ACT_UNPIN);
}

static void on_set_allowed(core_http_req_t *http, void *ud)
{
    start(http, ud, ACT_SET_ALLOWED);
}

/* ---- every home workspace the caller administers: every shard is asked ---- */

static void on_list_shard(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    rs_state_t *st = ST(r);
    if (err)
        st->failures++;
    else
        for (int i = 0; i < PQntuples(res); i++)
            put_policy(&st->jw, res, i);
    if (rg_req_gone(r) || r->pending > 0)
        return;
    if (st->failures == r->w->nshards) {
        rg_req_fail(r, 503, "shard_unavailable", "no database is available; retry shortly");
        return;
    }
    core_jw_arr_close(&st->jw);
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "region");
    core_jw_str(&jw, r->w->cfg->region);
    core_jw_key(&jw, "workspaces");
    core_jw_raw(&jw, st->items.base, st->items.len);
    core_jw_key(&jw, "partial");
    core_jw_bool(&jw, st->failures > 0);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void list_authenticated(rg_req_t *r)
{
    rs_state_t *st = ST(r);
    core_jw_init(&st->jw, &st->items);
    core_jw_arr_open(&st->jw);
    const char *params[] = {r->who.sub, r->w->cfg->region,
                            is_operator(r->w, r->who.sub) ? "true" : "false"};
    for (int i = 0; i < r->w->nshards; i++) {
        if (core_pg_query(r->w->shards[i],
                          "SELECT " POLICY_COLS " FROM workspaces w"
                          " JOIN dir_workspaces d ON d.workspace_id = w.id"
                          " WHERE d.home_region = $2 AND ($3::boolean OR EXISTS (SELECT 1"
                          "   FROM members m WHERE m.workspace_id = w.id AND m.user_id = $1"
                          "   AND m.status = 'active' AND m.role = 'compliance_admin'))"
                          " ORDER BY w.id LIMIT 10000",
                          3, params, NULL, on_list_shard, r, NULL) == 0)
            r->pending++;
        else
            st->failures++;
    }
    if (r->pending == 0)
        rg_req_fail(r, 503, "shard_unavailable", "no database is available; retry shortly");
}

static void on_list(core_http_req_t *http, void *ud)
{
    rg_api_authenticate(new_req(http, ud), list_authenticated);
}

/* ---- the audit chain of one shard (operators) ---- */

static void on_audit_rows(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    int limit = ST(r)->limit;
    int n = PQntuples(res);
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "region");
    core_jw_str(&jw, r->w->cfg->region);
    core_jw_key(&jw, "shard");
    core_jw_int(&jw, r->shard);
    core_jw_key(&jw, "entries");
    core_jw_arr_open(&jw);
    for (int i = 0; i < n && i < limit; i++)
        put_audit(&jw, res, i, 0);
    core_jw_arr_close(&jw);
    core_jw_key(&jw, "more");
    core_jw_bool(&jw, n > limit);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void audit_authenticated(rg_req_t *r)
{
    if (!is_operator(r->w, r->who.sub)) {
        rg_req_fail(r, 403, "forbidden", "the audit trail is for operators");
        return;
    }
    char v[24];
    long long shard = 0, since = 0, limit = 500;
    if (core_http_query(r->http, "shard", v, sizeof v) > 0) {
        char *e;
        shard = strtoll(v, &e, 10);
        if (*e || shard < 0 || shard >= r->w->nshards) {
            rg_req_fail(r, 400, "invalid_shard", "shard must be one of this region's shards");
            return;
        }
    }
    if (core_http_query(r->http, "since", v, sizeof v) > 0) {
        char *e;
        since = strtoll(v, &e, 10);
        if (*e || since < 0) {
            rg_req_fail(r, 400, "invalid_since", "since must be an audit seq (0 or more)");
            return;
        }
    }
    if (core_http_query(r->http, "limit", v, sizeof v) > 0) {
        char *e;
        limit = strtoll(v, &e, 10);
        if (*e || limit < 1 || limit > AUDIT_PAGE_MAX) {
            rg_req_fail(r, 400, "invalid_limit", "limit must be 1 to 1000");
            return;
        }
    }
    ST(r)->limit = (int)limit;
    char s[24], l[24];
    snprintf(s, sizeof s, "%lld", since);
    snprintf(l, sizeof l, "%lld", limit + 1);
    const char *params[] = {s, l};
    rg_req_query(r, (int)shard,
                 "SELECT " AUDIT_COLS " FROM audit_log WHERE seq > $1::bigint ORDER BY seq"
                 " LIMIT $2::int",
                 2, params, on_audit_rows);
}

static void on_audit(core_http_req_t *http, void *ud)
{
    rg_api_authenticate(new_req(http, ud), audit_authenticated);
}

int rg_api_residency_routes(rg_worker_t *w)
{
    static const struct {
        const char *method, *pattern;
        core_http_handler_t fn;
    } routes[] = {
        {"GET", "/v1/admin/residency/workspaces", on_list},
        {"GET", "/v1/admin/residency/workspaces/{id}", on_show},
        {"POST", "/v1/admin/residency/workspaces/{id}/pin", on_pin},
        {"POST", "/v1/admin/residency/workspaces/{id}/unpin", on_unpin},
        {"PUT", "/v1/admin/residency/workspaces/{id}/allowed-regions", on_set_allowed},
        {"GET", "/v1/admin/audit", on_audit},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        int rc = core_http_route(w->http, routes[i].method, routes[i].pattern, routes[i].fn, w);
        if (rc)
            return rc;
    }
    return 0;
}
