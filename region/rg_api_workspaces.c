/* rg_api_workspaces.c: workspaces, members and channels.
 *   POST   /v1/workspaces                              {name, slug}      -> 201 workspace
 *   GET    /v1/workspaces                                                -> 200 my workspaces
 *   GET    /v1/workspaces/{id}                                           -> 200 workspace
 *   PATCH  /v1/workspaces/{id}                         {name}            -> 200 workspace
 *   POST   /v1/workspaces/{id}/members                 {user_id, role?}  -> 201 member (invited)
 *   GET    /v1/workspaces/{id}/members                                   -> 200 active members
 *   DELETE /v1/workspaces/{id}/members/{user_id}                         -> 204
 *   POST   /v1/workspaces/{id}/join                                      -> 200 member
 *   POST   /v1/workspaces/{id}/leave                                     -> 204
 *   POST   /v1/workspaces/{id}/channels                {name, private?}  -> 201 channel
 *   GET    /v1/workspaces/{id}/channels                                  -> 200 visible channels
 *   POST   /v1/workspaces/{id}/channels/{cid}/join                       -> 200 channel
 *   POST   /v1/workspaces/{id}/channels/{cid}/leave                      -> 204
 *   POST   /v1/workspaces/{id}/channels/{cid}/archive                    -> 200 channel
 *
 * A workspace lives on the shard that owns its slug's keyed hash; everything
 * about it (members, channels, events) lives there too. Every endpoint on an
 * existing workspace is one statement on its shard that checks the caller's
 * membership, makes the change and writes its outbox event together, and
 * returns one "outcome" column first so that the C side only maps outcomes to
 * answers. A workspace the caller is not an active member of is not found. */
#include "region/rg_api.h"
#include "region/rg_api_op.h"
#include "core/core.h"
#include "core/log.h"
#include "region/rg_dir.h"
#include "region/rg_gdir.h"
#include "residency/res_world.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_CHARS 80
#define SLUG_MIN 3
#define SLUG_MAX 40

/* ---- shared SQL fragments ---- */

/* Timestamps as RFC 3339 UTC with milliseconds. */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* Every statement on a workspace takes $1 = workspace id, $2 = caller. */
#define ME_ACTIVE                                                                                  \
    "me AS (SELECT role FROM members WHERE workspace_id = $1 AND user_id = $2"                     \
    " AND status = 'active')"

/* The event pattern. `chg` is the change's CTE (at most one row). The
 * workspace's sequence is bumped only when the change happened, under the
 * workspace row's lock, and the outbox row takes that number in the same
 * statement, so a failed or empty change burns no number: the sequence is
 * gap-free and in commit order. The change runs first (the bump's WHERE reads
 * it), so every writer locks its own rows before the workspace row, and holds
 * that lock only for the outbox insert: no lock-order cycle. */
#define EVENT(type, channel, payload)                                                              \
    " bump AS (UPDATE workspaces SET seq = seq + 1, updated_at = now()"                            \
    "          WHERE id = $1 AND EXISTS (SELECT 1 FROM chg) RETURNING seq),"                       \
    " ev AS (INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)"                    \
    "        SELECT $1, bump.seq, '" type "', " channel ", " payload " FROM bump, chg"             \
    "        RETURNING seq)"

/* The visible channel $3: private ones only for their members. */
#define CHANNEL                                                                                    \
    "ch AS (SELECT c.id, c.name, c.private, c.archived, c.created_by, c.created_at,"               \
    "              EXISTS (SELECT 1 FROM channel_members cm WHERE cm.workspace_id = $1"            \
    "                      AND cm.channel_id = $3 AND cm.user_id = $2) AS member"                  \
    "       FROM channels c WHERE c.workspace_id = $1 AND c.id = $3)"
#define CHANNEL_HIDDEN "(ch.id IS NULL OR (ch.private AND NOT ch.member))"

#define CHANNEL_COLS(p)                                                                            \
    p "id, " p "name, " p "private, " p "archived, " p "created_by, " TS(p "created_at")

/* ---- request state ---- */

typedef struct {
    rg_api_op_state_t base; /* first: the shared path's state */
    char cid[CORE_AUTH_ID_MAX + 1];
    char uid[CORE_AUTH_ID_MAX + 1];
    char new_id[32];
    /* create */
    uint8_t slug_hash[32];
    char slug_hash_lit[80];
    char shard_lit[16];
    char channel_id[32];
    char allowed[RES_MAX_REGIONS * 34 + 4]; /* text[] literal of the allowed regions */
    /* list: rows from every shard, as one JSON array */
    core_buf_t items;
    core_jw_t jw;
    int failures;
    bool retried; /* the statement ran again after repairing a directory row */
} ws_state_t;

#define ST(r) ((ws_state_t *)(r)->state)

static void on_state_free(rg_req_t *r)
{
    core_buf_free(&ST(r)->items);
}

static rg_req_t *new_req(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(ws_state_t));
    core_buf_init(&ST(r)->items);
    r->on_free = on_state_free;
    return r;
}

static bool is_true(const PGresult *res, int row, int col)
{
    return PQgetvalue(res, row, col)[0] == 't';
}

static bool slug_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < SLUG_MIN || n > SLUG_MAX || s[0] == '-' || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static bool channel_name_ok(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
            return false;
    return true;
}

static void put_workspace(core_jw_t *jw, const PGresult *res, int row, int col)
{
    static const char *const keys[] = {"id", "slug", "name", "created_by", "created_at", "role"};
    core_jw_obj_open(jw);
    for (int i = 0; i < 6; i++) {
        core_jw_key(jw, keys[i]);
        core_jw_str(jw, PQgetvalue(res, row, col + i));
    }
    core_jw_obj_close(jw);
}

/* Columns: id, name, private, archived, created_by, created_at, member. */
static void put_channel(core_jw_t *jw, const PGresult *res, int row, int col)
{
    core_jw_obj_open(jw);
    core_jw_key(jw, "id");
    core_jw_str(jw, PQgetvalue(res, row, col));
    core_jw_key(jw, "name");
    core_jw_str(jw, PQgetvalue(res, row, col + 1));
    core_jw_key(jw, "private");
    core_jw_bool(jw, is_true(res, row, col + 2));
    core_jw_key(jw, "archived");
    core_jw_bool(jw, is_true(res, row, col + 3));
    core_jw_key(jw, "created_by");
    core_jw_str(jw, PQgetvalue(res, row, col + 4));
    core_jw_key(jw, "created_at");
    core_jw_str(jw, PQgetvalue(res, row, col + 5));
    core_jw_key(jw, "member");
    core_jw_bool(jw, is_true(res, row, col + 6));
    core_jw_obj_close(jw);
}

/* Columns: user_id, role, status. */
static void put_member(core_jw_t *jw, const PGresult *res, int row, int col)
{
    core_jw_obj_open(jw);
    core_jw_key(jw, "user_id");
    core_jw_str(jw, PQgetvalue(res, row, col));
    core_jw_key(jw, "role");
    core_jw_str(jw, PQgetvalue(res, row, col + 1));
    core_jw_key(jw, "status");
    core_jw_str(jw, PQgetvalue(res, row, col + 2));
    core_jw_obj_close(jw);
}

/* Answers {"<key>": <one object from row 0, column 1>}. */
static void reply_one(rg_req_t *r, int status, const PGresult *res, const char *key,
                      void (*put)(core_jw_t *, const PGresult *, int, int))
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, key);
    put(&jw, res, 0, 1);
    core_jw_obj_close(&jw);
    rg_req_reply(r, status, &b);
}

/* Answers {"<key>": [objects from every row with a non-NULL column 1]}. */
static void reply_list(rg_req_t *r, const PGresult *res, const char *key,
                       void (*put)(core_jw_t *, const PGresult *, int, int))
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, key);
    core_jw_arr_open(&jw);
    for (int i = 0; i < PQntuples(res); i++)
        if (!PQgetisnull(res, i, 1))
            put(&jw, res, i, 1);
    core_jw_arr_close(&jw);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void reply_workspace(rg_req_t *r, const PGresult *res)
{
    reply_one(r, ST(r)->base.op->ok_status, res, "workspace", put_workspace);
}
static void reply_member(rg_req_t *r, const PGresult *res)
{
    reply_one(r, ST(r)->base.op->ok_status, res, "member", put_member);
}
static void reply_channel(rg_req_t *r, const PGresult *res)
{
    reply_one(r, ST(r)->base.op->ok_status, res, "channel", put_channel);
}
static void reply_members(rg_req_t *r, const PGresult *res)
{
    reply_list(r, res, "members", put_member);
}
static void reply_channels(rg_req_t *r, const PGresult *res)
{
    reply_list(r, res, "channels", put_channel);
}

/* ---- outcomes, and the invitation's directory repair ---- */

static const rg_outcome_t OUTCOMES[] = {
    {"not_found", 404, "not_found", "no such workspace"},
    {"channel_not_found", 404, "not_found", "no such channel"},
    {"member_not_found", 404, "not_found", "no such member"},
    {"user_not_found", 404, "user_not_found", "no such user"},
    {"forbidden", 403, "forbidden", "your role in this workspace does not allow this"},
    {"not_invited", 403, "not_invited", "you have no pending invitation to this workspace"},
    {"already_member", 409, "already_member", "already a member or invited"},
    {"last_owner", 409, "last_owner", "the workspace's last owner cannot leave or be removed"},
    {"archived", 409, "archived", "the channel is archived"},
    {"channel_exists", 409, "channel_exists", "a channel with this name already exists"},
};

/* Every endpoint here answers its outcomes from the one table. */
#define OUTCOME_TABLE .outcomes = OUTCOMES, .noutcomes = sizeof OUTCOMES / sizeof OUTCOMES[0]

static void on_invitee_copied(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    rg_api_op_query(r);
}

static void invitee_placed(rg_req_t *r, int err, const rg_place_t *p)
{
    if (rg_req_gone(r))
        return;
    if (err == UV_ENOENT) {
        rg_req_fail(r, 404, "user_not_found", "no such user");
        return;
    }
    if (err) {
        rg_req_fail(r, 503, "shard_unavailable", "users cannot be looked up now; retry shortly");
        return;
    }
    ws_state_t *st = ST(r);
    char shard[16];
    snprintf(shard, sizeof shard, "%d", p->shard);
    const char *params[] = {st->base.params[2], shard, p->home_region};
    rg_req_query(r, st->base.shard,
                 "INSERT INTO dir_users (user_id, shard, home_region) VALUES ($1, $2, $3)"
                 " ON CONFLICT (user_id) DO NOTHING",
                 3, params, on_invitee_copied);
}

/* The invitee is unknown to the workspace shard's copy of the directory,
 * which signup fills fire-and-forget: the copy may be late or lost. The
 * directory lookup asks every shard; if the user exists, this shard's copy
 * is repaired and the invitation tried once more. */
static void find_invitee(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    st->retried = true;
    const rg_place_t *p = rg_dir_cached(r->w->dir, RG_DIR_USER, st->base.params[2]);
    if (p) {
        r->pending++; /* invitee_placed balances it as a lookup callback would */
        invitee_placed(r, 0, p);
        return;
    }
    rg_dir_lookup(r->w->dir, r, RG_DIR_USER, st->base.params[2], invitee_placed);
}

/* OP_INVITE's outcome hook: the first "user_not_found" may only mean a
 * missing directory row. */
static bool invitee_unknown(rg_req_t *r, const char *outcome)
{
    if (strcmp(outcome, "user_not_found") != 0 || ST(r)->retried)
        return false;
    find_invitee(r);
    return true;
}

/* ---- parsers: fill params[2..] ---- */

static bool parse_name(rg_req_t *r)
{
    const char *name;
    if (!rg_req_body(r, false) || !rg_req_str(r, "name", 1, NAME_MAX_CHARS, true, &name))
        return false;
    rg_api_op_param(r, name);
    return true;
}

static bool parse_invite(rg_req_t *r)
{
    const char *user_id, *role;
    if (!rg_req_body(r, false) || !rg_req_str(r, "user_id", 1, CORE_AUTH_ID_MAX, true, &user_id) ||
        !rg_req_str(r, "role", 1, 32, false, &role))
        return false;
    if (!rg_id_valid(user_id)) {
        rg_req_fail(r, 400, "invalid_request", "user_id is not a valid id");
        return false;
    }
    if (!role)
        role = "member";
    if (strcmp(role, "owner") != 0 && strcmp(role, "admin") != 0 && strcmp(role, "member") != 0 &&
        strcmp(role, "compliance_admin") != 0) {
        rg_req_fail(r, 400, "invalid_request",
                    "role must be one of owner, admin, member, compliance_admin");
        return false;
    }
    rg_api_op_param(r, user_id);
    rg_api_op_param(r, role);
    return true;
}

static bool parse_member_path(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    if (!rg_req_path_id(r, "user_id", "user id", st->uid, sizeof st->uid))
        return false;
    rg_api_op_param(r, st->uid);
    return true;
}

static bool parse_channel_path(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    if (!rg_req_path_id(r, "cid", "channel id", st->cid, sizeof st->cid))
        return false;
    rg_api_op_param(r, st->cid);
    return true;
}

static bool parse_new_channel(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    const char *name;
    bool priv;
    if (!rg_req_body(r, false) || !rg_req_str(r, "name", 1, NAME_MAX_CHARS, true, &name) ||
        !rg_req_bool(r, "private", false, &priv))
        return false;
    if (!channel_name_ok(name)) {
        rg_req_fail(r, 400, "invalid_request",
                    "name may hold only lower-case letters, digits, '-' and '_'");
        return false;
    }
    rg_new_id(st->new_id, sizeof st->new_id, "c_");
    rg_api_op_param(r, st->new_id);
    rg_api_op_param(r, name);
    rg_api_op_param(r, priv ? "true" : "false");
    return true;
}

/* ---- the statements ---- */

/* The SQL is laid out by hand: clang-format would break it at the macros. */
/* clang-format off */

static const rg_api_op_t OP_GET_WORKSPACE = {
    .sql = "WITH " ME_ACTIVE
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found' ELSE 'ok' END,"
           "        w.id, w.slug, w.name, w.created_by, " TS("w.created_at") ", me.role"
           " FROM (SELECT 1) one LEFT JOIN me ON true"
           " LEFT JOIN workspaces w ON w.id = $1 AND me.role IS NOT NULL",
    .reply = reply_workspace,
    .ok_status = 200,
    OUTCOME_TABLE,
};

/* The change and the sequence bump update the same row, which one statement
 * may do only once: here they are one UPDATE. $3 = name. */
static const rg_api_op_t OP_PATCH_WORKSPACE = {
    .sql = "WITH " ME_ACTIVE ","
           " chg AS (UPDATE workspaces SET name = $3, seq = seq + 1, updated_at = now()"
           "         WHERE id = $1"
           "         AND EXISTS (SELECT 1 FROM me WHERE me.role IN ('owner', 'admin'))"
           "         RETURNING id, slug, name, created_by, created_at, seq),"
           " ev AS (INSERT INTO outbox (workspace_id, seq, type, payload)"
           "        SELECT $1, chg.seq, 'workspace.updated',"
           "               jsonb_build_object('workspace_id', chg.id, 'name', chg.name,"
           "                                  'by', $2::text) FROM chg RETURNING seq)"
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN chg.id IS NULL THEN 'forbidden' ELSE 'ok' END,"
           "        chg.id, chg.slug, chg.name, chg.created_by, " TS("chg.created_at") ", me.role"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN chg ON true",
    .parse = parse_name,
    .reply = reply_workspace,
    .ok_status = 200,
    OUTCOME_TABLE,
};

/* $3 = user, $4 = role. Owners grant any role, admins only member. A member
 * who left or was removed can be invited again. The user must be known to
 * the region's directory. */
#define MAY_GRANT "(me.role = 'owner' OR (me.role = 'admin' AND $4::text = 'member'))"
static const rg_api_op_t OP_INVITE = {
    .sql = "WITH " ME_ACTIVE ","
           " chg AS (INSERT INTO members (workspace_id, user_id, role, status, invited_by)"
           "         SELECT $1, $3, $4, 'invited', $2 FROM me WHERE " MAY_GRANT
           "         AND EXISTS (SELECT 1 FROM dir_users WHERE user_id = $3)"
           "         ON CONFLICT (workspace_id, user_id) DO UPDATE"
           "         SET role = EXCLUDED.role, status = 'invited',"
           "             invited_by = EXCLUDED.invited_by, updated_at = now()"
           "         WHERE members.status IN ('left', 'removed')"
           "         RETURNING user_id, role, status),"
           EVENT("member.invited", "NULL",
                 "jsonb_build_object('user_id', chg.user_id, 'role', chg.role, 'by', $2::text)")
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN NOT " MAY_GRANT " THEN 'forbidden'"
           "             WHEN NOT EXISTS (SELECT 1 FROM dir_users WHERE user_id = $3)"
           "               THEN 'user_not_found'"
           "             WHEN chg.user_id IS NULL THEN 'already_member' ELSE 'ok' END,"
           "        chg.user_id, chg.role, chg.status"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN chg ON true",
    .parse = parse_invite,
    .reply = reply_member,
    .ok_status = 201,
    OUTCOME_TABLE,
    .on_outcome = invitee_unknown,
};

/* An invited user is not active yet: only "no membership at all" is 404. */
static const rg_api_op_t OP_JOIN = {
    .sql = "WITH mine AS (SELECT status FROM members WHERE workspace_id = $1 AND user_id = $2),"
           " chg AS (UPDATE members SET status = 'active', updated_at = now()"
           "         WHERE workspace_id = $1 AND user_id = $2 AND status = 'invited'"
           "         RETURNING user_id, role, status),"
           EVENT("member.joined", "NULL",
                 "jsonb_build_object('user_id', chg.user_id, 'role', chg.role)")
           " SELECT CASE WHEN mine.status IS NULL THEN 'not_found'"
           "             WHEN chg.user_id IS NOT NULL THEN 'ok'"
           "             WHEN mine.status = 'active' THEN 'already_member'"
           "             ELSE 'not_invited' END,"
           "        chg.user_id, chg.role, chg.status"
           " FROM (SELECT 1) one LEFT JOIN mine ON true LEFT JOIN chg ON true",
    .reply = reply_member,
    .ok_status = 200,
    OUTCOME_TABLE,
};

/* The last active owner must stay. The owners' rows are locked, and a locked
 * row is re-read at its latest version, so of two owners leaving at once the
 * second sees the first gone: both cannot leave. */
#define OWNERS                                                                                     \
    "owners AS (SELECT user_id FROM members WHERE workspace_id = $1 AND role = 'owner'"           \
    " AND status = 'active' ORDER BY user_id FOR UPDATE)"
#define OTHER_OWNERS(uid) "EXISTS (SELECT 1 FROM owners WHERE owners.user_id <> " uid ")"

/* Leaving the workspace leaves its channels too. */
static const rg_api_op_t OP_LEAVE = {
    .sql = "WITH " ME_ACTIVE ", " OWNERS ","
           " chg AS (UPDATE members SET status = 'left', updated_at = now()"
           "         WHERE workspace_id = $1 AND user_id = $2 AND status = 'active'"
           "         AND (role <> 'owner' OR " OTHER_OWNERS("$2") ")"
           "         RETURNING user_id, role),"
           " chm AS (DELETE FROM channel_members WHERE workspace_id = $1 AND user_id = $2"
           "         AND EXISTS (SELECT 1 FROM chg) RETURNING 1),"
           EVENT("member.left", "NULL", "jsonb_build_object('user_id', chg.user_id)")
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN chg.user_id IS NULL THEN 'last_owner' ELSE 'ok' END"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN chg ON true",
    .reply = NULL,
    .ok_status = 204,
    OUTCOME_TABLE,
};

/* $3 = the member (active or invited) to remove. Admins cannot remove owners. */
static const rg_api_op_t OP_REMOVE = {
    .sql = "WITH " ME_ACTIVE ", " OWNERS ","
           " tgt AS (SELECT role, status FROM members WHERE workspace_id = $1 AND user_id = $3"
           "         AND status IN ('active', 'invited')),"
           " chg AS (UPDATE members m SET status = 'removed', updated_at = now()"
           "         WHERE m.workspace_id = $1 AND m.user_id = $3"
           "         AND m.status IN ('active', 'invited')"
           "         AND EXISTS (SELECT 1 FROM me WHERE me.role = 'owner'"
           "                     OR (me.role = 'admin' AND m.role <> 'owner'))"
           "         AND (m.role <> 'owner' OR m.status <> 'active' OR " OTHER_OWNERS("$3") ")"
           "         RETURNING m.user_id, m.role),"
           " chm AS (DELETE FROM channel_members WHERE workspace_id = $1 AND user_id = $3"
           "         AND EXISTS (SELECT 1 FROM chg) RETURNING 1),"
           EVENT("member.removed", "NULL",
                 "jsonb_build_object('user_id', chg.user_id, 'by', $2::text)")
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN me.role NOT IN ('owner', 'admin') THEN 'forbidden'"
           "             WHEN tgt.role IS NULL THEN 'member_not_found'"
           "             WHEN tgt.role = 'owner' AND me.role <> 'owner' THEN 'forbidden'"
           "             WHEN chg.user_id IS NULL THEN 'last_owner' ELSE 'ok' END"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN tgt ON true"
           " LEFT JOIN chg ON true",
    .parse = parse_member_path,
    .reply = NULL,
    .ok_status = 204,
    OUTCOME_TABLE,
};

static const rg_api_op_t OP_LIST_MEMBERS = {
    .sql = "WITH " ME_ACTIVE
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found' ELSE 'ok' END,"
           "        m.user_id, m.role, m.status"
           " FROM (SELECT 1) one LEFT JOIN me ON true"
           " LEFT JOIN members m ON m.workspace_id = $1 AND m.status = 'active'"
           "                    AND me.role IS NOT NULL"
           " ORDER BY m.created_at, m.user_id",
    .reply = reply_members,
    .ok_status = 200,
    OUTCOME_TABLE,
};

/* $3 = new id, $4 = name, $5 = private. The creator joins the channel; a
 * taken name inserts nothing and answers 409, burning no sequence number. */
static const rg_api_op_t OP_CREATE_CHANNEL = {
    .sql = "WITH " ME_ACTIVE ","
           " chg AS (INSERT INTO channels (workspace_id, id, name, private, created_by)"
           "         SELECT $1, $3, $4, $5::boolean, $2 FROM me"
           "         ON CONFLICT (workspace_id, name) DO NOTHING"
           "         RETURNING id, name, private, archived, created_by, created_at),"
           " cm AS (INSERT INTO channel_members (workspace_id, channel_id, user_id)"
           "        SELECT $1, chg.id, $2 FROM chg RETURNING 1),"
           EVENT("channel.created", "chg.id",
                 "jsonb_build_object('channel_id', chg.id, 'name', chg.name,"
                 "                   'private', chg.private, 'by', $2::text)")
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN chg.id IS NULL THEN 'channel_exists' ELSE 'ok' END,"
           "        " CHANNEL_COLS("chg.") ", true"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN chg ON true",
    .parse = parse_new_channel,
    .reply = reply_channel,
    .ok_status = 201,
    OUTCOME_TABLE,
};

/* Public channels, and private ones the caller is in. */
static const rg_api_op_t OP_LIST_CHANNELS = {
    .sql = "WITH " ME_ACTIVE ","
           " vis AS (SELECT c.*, cm.user_id IS NOT NULL AS member FROM channels c"
           "         LEFT JOIN channel_members cm ON cm.workspace_id = c.workspace_id"
           "              AND cm.channel_id = c.id AND cm.user_id = $2"
           "         WHERE c.workspace_id = $1 AND (NOT c.private OR cm.user_id IS NOT NULL))"
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found' ELSE 'ok' END,"
           "        " CHANNEL_COLS("vis.") ", vis.member"
           " FROM (SELECT 1) one LEFT JOIN me ON true"
           " LEFT JOIN vis ON me.role IS NOT NULL ORDER BY vis.name",
    .reply = reply_channels,
    .ok_status = 200,
    OUTCOME_TABLE,
};

/* $3 = channel. Joining a channel one is in already answers 200 and writes
 * no event. */
static const rg_api_op_t OP_JOIN_CHANNEL = {
    .sql = "WITH " ME_ACTIVE ", " CHANNEL ","
           " chg AS (INSERT INTO channel_members (workspace_id, channel_id, user_id)"
           "         SELECT $1, ch.id, $2 FROM ch, me WHERE NOT ch.private AND NOT ch.archived"
           "         ON CONFLICT DO NOTHING RETURNING channel_id),"
           EVENT("channel.member_joined", "chg.channel_id",
                 "jsonb_build_object('channel_id', chg.channel_id, 'user_id', $2::text)")
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN " CHANNEL_HIDDEN " THEN 'channel_not_found'"
           "             WHEN ch.archived THEN 'archived' ELSE 'ok' END,"
           "        " CHANNEL_COLS("ch.") ", true"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN ch ON true",
    .parse = parse_channel_path,
    .reply = reply_channel,
    .ok_status = 200,
    OUTCOME_TABLE,
};

/* Leaving a visible channel one is not in answers 204 and writes no event. */
static const rg_api_op_t OP_LEAVE_CHANNEL = {
    .sql = "WITH " ME_ACTIVE ", " CHANNEL ","
           " chg AS (DELETE FROM channel_members WHERE workspace_id = $1 AND channel_id = $3"
           "         AND user_id = $2 AND EXISTS (SELECT 1 FROM me) RETURNING channel_id),"
           EVENT("channel.member_left", "chg.channel_id",
                 "jsonb_build_object('channel_id', chg.channel_id, 'user_id', $2::text)")
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN " CHANNEL_HIDDEN " THEN 'channel_not_found' ELSE 'ok' END"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN ch ON true",
    .parse = parse_channel_path,
    .reply = NULL,
    .ok_status = 204,
    OUTCOME_TABLE,
};

/* Owners, admins and the channel's creator may archive; archiving twice
 * answers 200 and writes no second event. */
#define MAY_ARCHIVE "(me.role IN ('owner', 'admin') OR ch.created_by = $2)"
static const rg_api_op_t OP_ARCHIVE_CHANNEL = {
    .sql = "WITH " ME_ACTIVE ", " CHANNEL ","
           " chg AS (UPDATE channels c SET archived = true FROM me, ch"
           "         WHERE c.workspace_id = $1 AND c.id = ch.id AND NOT c.archived"
           "         AND NOT " CHANNEL_HIDDEN " AND " MAY_ARCHIVE " RETURNING c.id),"
           EVENT("channel.archived", "chg.id",
                 "jsonb_build_object('channel_id', chg.id, 'archived', true, 'by', $2::text)")
           " SELECT CASE WHEN me.role IS NULL THEN 'not_found'"
           "             WHEN " CHANNEL_HIDDEN " THEN 'channel_not_found'"
           "             WHEN NOT " MAY_ARCHIVE " THEN 'forbidden' ELSE 'ok' END,"
           "        ch.id, ch.name, ch.private, true, ch.created_by, " TS("ch.created_at") ","
           "        ch.member"
           " FROM (SELECT 1) one LEFT JOIN me ON true LEFT JOIN ch ON true",
    .parse = parse_channel_path,
    .reply = reply_channel,
    .ok_status = 200,
    OUTCOME_TABLE,
};

/* clang-format on */

#define HANDLER(fn, op)                                                                            \
    static void fn(core_http_req_t *http, void *ud)                                                \
    {                                                                                              \
        rg_api_op_start(new_req(http, ud), &op);                                                   \
    }
HANDLER(on_get_workspace, OP_GET_WORKSPACE)
HANDLER(on_patch_workspace, OP_PATCH_WORKSPACE)
HANDLER(on_invite, OP_INVITE)
HANDLER(on_join, OP_JOIN)
HANDLER(on_leave, OP_LEAVE)
HANDLER(on_remove, OP_REMOVE)
HANDLER(on_list_members, OP_LIST_MEMBERS)
HANDLER(on_create_channel, OP_CREATE_CHANNEL)
HANDLER(on_list_channels, OP_LIST_CHANNELS)
HANDLER(on_join_channel, OP_JOIN_CHANNEL)
HANDLER(on_leave_channel, OP_LEAVE_CHANNEL)
HANDLER(on_archive_channel, OP_ARCHIVE_CHANNEL)

/* ---- create ---- */

static void ignore_result(const PGresult *res, int err, const char *errmsg, void *ud) {}

/* The other shards get the directory row too, so any live shard can say
 * where the workspace lives; a copy that fails now is found by the next
 * lookup on the owning shard. */
static void copy_dir_workspace(rg_req_t *r, int home_shard)
{
    ws_state_t *st = ST(r);
    const char *params[] = {st->new_id, st->shard_lit, r->w->cfg->region, st->allowed};
    for (int i = 0; i < r->w->nshards; i++) {
        if (i == home_shard)
            continue;
        core_pg_query(
            r->w->shards[i],
            "INSERT INTO dir_workspaces (workspace_id, shard, home_region, allowed_regions)"
            " VALUES ($1, $2, $3, $4::text[]) ON CONFLICT (workspace_id) DO NOTHING",
            4, params, NULL, ignore_result, NULL, NULL);
    }
    rg_place_t p = {.shard = home_shard, .epoch = 1};
    snprintf(p.home_region, sizeof p.home_region, "%s", r->w->cfg->region);
    rg_dir_remember(r->w->dir, RG_DIR_WORKSPACE, st->new_id, &p);
}

static void on_created(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    if (PQntuples(res) != 1) {
        rg_req_fail(r, 409, "slug_taken", "a workspace with this slug already exists");
        return;
    }
    copy_dir_workspace(r, r->shard);
    core_log(CORE_LOG_INFO, r->http->id, "workspace.created", "workspace=%s shard=%d",
             ST(r)->new_id, r->shard);
    reply_one(r, 201, res, "workspace", put_workspace);
}

/* Whether name is one of the comma-separated names in list. */
static bool in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",}");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len;
        if (*p)
            p++;
    }
    return false;
}

/* The optional "allowed_regions": regions of the world allowed to hold the
 * workspace's data; the home region (this one) is always among them, first.
 * Answers 400 naming the field and returns false when it is not valid. */
static bool allowed_regions(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    const char *home = r->w->cfg->region;
    size_t o = (size_t)snprintf(st->allowed, sizeof st->allowed, "{%s", home);
    const core_json_t *a = core_json_get(r->body, "allowed_regions");
    if (!a || a->type == CORE_JSON_NULL) {
        snprintf(st->allowed + o, sizeof st->allowed - o, "}");
        return true;
    }
    if (a->type != CORE_JSON_ARRAY || a->u.kids.n > RES_MAX_REGIONS) {
        rg_req_fail(r, 400, "invalid_request", "allowed_regions must be an array of region names");
        return false;
    }
    for (size_t i = 0; i < a->u.kids.n; i++) {
        const core_json_t *v = a->u.kids.items[i];
        if (v->type != CORE_JSON_STRING) {
            rg_req_fail(r, 400, "invalid_request",
                        "allowed_regions must be an array of region names");
            return false;
        }
        const char *name = v->u.str.s;
        bool known =
            strcmp(name, home) == 0 || (r->w->world && res_world_region(r->w->world, name) != NULL);
        if (!known) {
            char msg[128];
            snprintf(msg, sizeof msg, "allowed_regions: \"%.40s\" is not a region of this world",
                     name);
            rg_req_fail(r, 400, "unknown_region", msg);
            return false;
        }
        if (in_list(st->allowed + 1, name))
            continue; /* the home is always in; a duplicate once */
        o += (size_t)snprintf(st->allowed + o, sizeof st->allowed - o, ",%s", name);
    }
    snprintf(st->allowed + o, sizeof st->allowed - o, "}");
    return true;
}

static void create_claimed(rg_req_t *r, int outcome);

static void create_authenticated(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    const char *name, *slug;
    if (!rg_req_body(r, false) || !rg_req_str(r, "name", 1, NAME_MAX_CHARS, true, &name) ||
        !rg_req_str(r, "slug", SLUG_MIN, SLUG_MAX, true, &slug))
        return;
    if (!slug_ok(slug)) {
        rg_req_fail(r, 400, "invalid_request",
                    "slug must be 3 to 40 of a-z, 0-9 and '-', not starting or ending with '-'");
        return;
    }
    if (!allowed_regions(r))
        return;
    core_auth_key_hash(r->w->keys, CORE_AUTH_HASH_SLUG, slug, strlen(slug), st->slug_hash);
    rg_api_bytea(st->slug_hash_lit, sizeof st->slug_hash_lit, st->slug_hash, 32);
    int owner = rg_api_owner_shard(r->w, st->slug_hash);
    snprintf(st->shard_lit, sizeof st->shard_lit, "%d", owner);
    rg_new_id(st->new_id, sizeof st->new_id, "w_");
    rg_new_id(st->channel_id, sizeof st->channel_id, "c_");
    /* The slug is the world's: its owner region decides first. */
    rg_gdir_claim(r, "slug", st->slug_hash, st->new_id, create_claimed);
}

static void create_claimed(rg_req_t *r, int outcome)
{
    if (rg_req_gone(r))
        return;
    if (outcome == RG_CLAIM_TAKEN) {
        rg_req_fail(r, 409, "slug_taken", "a workspace with this slug already exists");
        return;
    }
    if (outcome) {
        rg_req_fail_h(r, 503, "directory_unavailable",
                      "the region that owns this slug cannot be reached; retry shortly",
                      "Retry-After: 2\r\n");
        return;
    }
    ws_state_t *st = ST(r);
    const char *name = NULL, *slug = NULL; /* checked already; the body lives with r */
    core_json_get_str(r->body, "name", &name);
    core_json_get_str(r->body, "slug", &slug);
    int owner = rg_api_owner_shard(r->w, st->slug_hash);
    const char *params[] = {
        st->slug_hash_lit, st->new_id,        slug,           name,       r->who.sub,
        st->shard_lit,     r->w->cfg->region, st->channel_id, st->allowed};
    /* One statement: the claim decides the race for the slug, and the
     * workspace, its directory row, its owner, its #general and its first
     * event (seq 1) commit with it or not at all. */
    rg_req_query(
        r, owner,
        "WITH c AS (INSERT INTO claims (kind, key_hash, owner_id) VALUES ('slug', $1, $2)"
        "           ON CONFLICT (kind, key_hash) DO UPDATE SET owner_id = EXCLUDED.owner_id,"
        "           confirmed = true, created_at = now() WHERE NOT claims.confirmed"
        "           AND claims.created_at < now() - interval '1 day' RETURNING owner_id),"
        " w AS (INSERT INTO workspaces (id, slug, name, created_by, seq, allowed_regions)"
        "       SELECT $2, $3, $4, $5, 1, $9::text[] FROM c"
        "       RETURNING id, slug, name, created_by, created_at),"
        " d AS (INSERT INTO dir_workspaces (workspace_id, shard, home_region, allowed_regions)"
        "       SELECT id, $6::int, $7, $9::text[] FROM w RETURNING 1),"
        /* The world's directory learns of it through every other region. */
        " o AS (INSERT INTO dir_outbox (kind, id, body) SELECT 'workspace', id,"
        "       jsonb_build_object('home_region', $7::text, 'allowed_regions', $9::text[],"
        "                          'epoch', 1, 'pinned', false, 'slug_hash', encode($1, 'hex'))"
        "       FROM w RETURNING 1),"
        " m AS (INSERT INTO members (workspace_id, user_id, role, status)"
        "       SELECT id, $5, 'owner', 'active' FROM w RETURNING 1),"
        " ch AS (INSERT INTO channels (workspace_id, id, name, private, created_by)"
        "        SELECT id, $8, 'general', false, $5 FROM w RETURNING id),"
        " cm AS (INSERT INTO channel_members (workspace_id, channel_id, user_id)"
        "        SELECT $2, id, $5 FROM ch RETURNING 1),"
        " ev AS (INSERT INTO outbox (workspace_id, seq, type, payload)"
        "        SELECT id, 1, 'workspace.created',"
        "               jsonb_build_object('workspace_id', id, 'created_by', created_by,"
        "                                  'channel_id', $8::text, 'home_region', $7::text,"
        "                                  'allowed_regions', $9::text[]) FROM w RETURNING 1)"
        " SELECT 'ok', id, slug, name, created_by, " TS("created_at") ", 'owner' FROM w",
        9, params, on_created);
}

static void on_create_workspace(core_http_req_t *http, void *ud)
{
    rg_api_authenticate(new_req(http, ud), create_authenticated);
}

/* ---- list mine: memberships live with each workspace, so every shard is asked ---- */

static void reply_mine(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    core_jw_arr_close(&st->jw);
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "workspaces");
    core_jw_raw(&jw, st->items.base, st->items.len);
    core_jw_key(&jw, "partial");
    core_jw_bool(&jw, st->failures > 0);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void on_mine_shard(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    ws_state_t *st = ST(r);
    if (err) {
        st->failures++;
        core_log(CORE_LOG_WARN, NULL, "api.shard_unavailable", "error=\"%s\"",
                 core_pg_strerror(err));
    } else {
        for (int i = 0; i < PQntuples(res); i++)
            put_workspace(&st->jw, res, i, 0);
    }
    if (rg_req_gone(r) || r->pending > 0)
        return; /* gone, or other shards have not answered yet */
    if (st->failures == r->w->nshards) {
        rg_req_fail(r, 503, "shard_unavailable", "no database is available; retry shortly");
        return;
    }
    reply_mine(r);
}

static void mine_authenticated(rg_req_t *r)
{
    ws_state_t *st = ST(r);
    core_jw_init(&st->jw, &st->items);
    core_jw_arr_open(&st->jw);
    const char *params[] = {r->who.sub};
    for (int i = 0; i < r->w->nshards; i++) {
        if (core_pg_query(r->w->shards[i],
                          "SELECT w.id, w.slug, w.name, w.created_by, " TS(
                              "w.created_at") ","
                                              " m.role FROM members m JOIN workspaces w ON w.id = "
                                              "m.workspace_id"
                                              " WHERE m.user_id = $1 AND m.status = 'active'"
                                              " ORDER BY w.created_at, w.id",
                          1, params, NULL, on_mine_shard, r, NULL) == 0)
            r->pending++;
        else
            st->failures++;
    }
    if (r->pending > 0)
        return;
    rg_req_fail(r, 503, "shard_unavailable", "no database is available; retry shortly");
}

static void on_list_workspaces(core_http_req_t *http, void *ud)
{
    rg_api_authenticate(new_req(http, ud), mine_authenticated);
}

int rg_api_workspace_routes(rg_worker_t *w)
{
    static const rg_api_op_route_t routes[] = {
        {"POST", "/v1/workspaces", on_create_workspace},
        {"GET", "/v1/workspaces", on_list_workspaces},
        {"GET", "/v1/workspaces/{id}", on_get_workspace},
        {"PATCH", "/v1/workspaces/{id}", on_patch_workspace},
        {"POST", "/v1/workspaces/{id}/members", on_invite},
        {"GET", "/v1/workspaces/{id}/members", on_list_members},
        {"DELETE", "/v1/workspaces/{id}/members/{user_id}", on_remove},
        {"POST", "/v1/workspaces/{id}/join", on_join},
        {"POST", "/v1/workspaces/{id}/leave", on_leave},
        {"POST", "/v1/workspaces/{id}/channels", on_create_channel},
        {"GET", "/v1/workspaces/{id}/channels", on_list_channels},
        {"POST", "/v1/workspaces/{id}/channels/{cid}/join", on_join_channel},
        {"POST", "/v1/workspaces/{id}/channels/{cid}/leave", on_leave_channel},
        {"POST", "/v1/workspaces/{id}/channels/{cid}/archive", on_archive_channel},
    };
    return rg_api_op_routes(w, routes, sizeof routes / sizeof routes[0]);
}
