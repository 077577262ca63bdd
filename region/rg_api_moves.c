/* rg_api_moves.c: the admin API of workspace moves (docs/moves.md).
 *
 *   POST /v1/admin/residency/workspaces/{id}/move          {"target_region", "reason", "at"?,
 * "dry_run"?} GET  /v1/admin/residency/workspaces/{id}/move          the latest move and its steps
 *   POST /v1/admin/residency/workspaces/{id}/move/cancel   until the freeze begins
 *   GET  /v1/admin/residency/workspaces/{id}/move/report   the signed report of a finished move
 *
 * Who: as for the rest of the residency API, a compliance_admin member of the
 * workspace or an operator. Where: the workspace's home region (421 names
 * it). After the flip the home is the target, which answers from what the
 * source sent it, so the same URLs work through an edge for the whole move.
 * The move itself runs in rg_move.c. */
#include "core/core.h"
#include "core/log.h"
#include "region/rg_api.h"
#include "region/rg_audit.h"
#include "region/rg_move.h"
#include "replication/repl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REASON_MAX 500
/* Rows a move copies per second here, for the dry run's estimate (measured
 * by bench/move; a busy shard is slower). */
#define ROWS_PER_S 4000.0

typedef enum { MV_CREATE, MV_SHOW, MV_CANCEL, MV_REPORT, MV_PROMOTE } mv_action_t;

typedef struct {
    mv_action_t action;
    char ws[72];
    char target[33];
    char reason[REASON_MAX * 4 + 1];
    char at[40];
    bool has_at;
    bool dry_run;
    bool standby; /* a standby copy, not a move (migration 0013) */
    bool force;   /* promote even though the home answers */
    char home[33];
    char epoch[24];
    bool operator_;
    char move_id[40];
    core_buf_t out;
} ma_state_t;

#define ST(r) ((ma_state_t *)(r)->state)

static void on_free(rg_req_t *r)
{
    core_buf_free(&ST(r)->out);
}

static bool is_operator(const rg_worker_t *w, const char *user_id)
{
    for (size_t i = 0; i < w->cfg->nadmin_operators; i++)
        if (strcmp(w->cfg->admin_operators[i], user_id) == 0)
            return true;
    return false;
}

/* The caller may manage the workspace's residency: answers and returns false
 * when not. role is the caller's active role, or NULL. */
static bool allowed(rg_req_t *r, const char *role)
{
    ma_state_t *st = ST(r);
    st->operator_ = is_operator(r->w, r->who.sub);
    if (!st->operator_ && !role) {
        rg_req_fail(r, 404, "not_found", "no such workspace");
        return false;
    }
    if (!st->operator_ && strcmp(role, "compliance_admin") != 0) {
        rg_req_fail(r, 403, "forbidden",
                    "moves are made by the workspace's compliance admins and operators");
        return false;
    }
    return true;
}

static void reply_raw(rg_req_t *r, int status, const char *key, const char *json)
{
    ma_state_t *st = ST(r);
    core_buf_reset(&st->out);
    core_buf_appendf(&st->out, "{\"%s\":", key);
    core_buf_puts(&st->out, json);
    core_buf_putc(&st->out, '}');
    rg_req_reply(r, status, &st->out);
}

/* ---- create ---- */

static void on_scheduled_audit(void *ud, int err)
{
    rg_req_t *r = ud;
    r->pending--;
    if (rg_req_gone(r))
        return;
    if (err)
        core_log_warn("move.audit_failed", "workspace=%s action=move_scheduled", ST(r)->ws);
    rg_move_kick(r->w);
    rg_req_reply(r, 202, &ST(r)->out);
}

static void on_created(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    (void)errmsg;
    if (rg_req_gone(r))
        return;
    if (err == CORE_PG_ESQL && strcmp(core_pg_sqlstate(res), "23505") == 0) {
        rg_req_fail(r, 409, "move_in_progress", "the workspace is already being moved");
        return;
    }
    if (!rg_req_pg_ok(r, res, err))
        return;
    ma_state_t *st = ST(r);
    snprintf(st->move_id, sizeof st->move_id, "%s", PQgetvalue(res, 0, 1));
    core_buf_reset(&st->out);
    core_buf_puts(&st->out, "{\"move\":");
    core_buf_puts(&st->out, PQgetvalue(res, 0, 0));
    core_buf_putc(&st->out, '}');
    core_log_info("move.scheduled", "move=%s workspace=%s target=%s", st->move_id, st->ws,
                  st->target);
    rg_audit_entry_t e = {.shard = r->shard,
                          .workspace_id = st->ws,
                          .action = st->standby ? "standby_started" : "move_scheduled",
                          .actor = r->who.sub,
                          .actor_as = st->operator_ ? "operator" : "compliance_admin",
                          .move_id = st->move_id,
                          .reason = st->reason[0] ? st->reason : NULL};
    r->pending++;
    if (rg_audit_append(r->w, &e, on_scheduled_audit, r) != 0) {
        r->pending--;
        rg_move_kick(r->w);
        rg_req_reply(r, 202, &st->out);
    }
}

static bool lit_has(const char *lit, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = lit + (*lit == '{'); *p && *p != '}';) {
        size_t len = strcspn(p, ",}");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len + (p[len] == ',');
    }
    return false;
}

static void on_checked(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    (void)errmsg;
    if (!rg_req_pg_ok(r, res, err))
        return;
    ma_state_t *st = ST(r);
    if (PQntuples(res) != 1) {
        rg_req_fail(r, 404, "not_found", "no such workspace");
        return;
    }
    if (!allowed(r, PQgetisnull(res, 0, 0) ? NULL : PQgetvalue(res, 0, 0)))
        return;
    const char *allowed_lit = PQgetvalue(res, 0, 1);
    bool pinned = PQgetvalue(res, 0, 2)[0] == 't';
    bool busy = !PQgetisnull(res, 0, 3);
    /* Problems, in the order an admin fixes them. */
    const char *code = NULL, *msg = NULL;
    int status = 422;
    if (strcmp(st->target, r->w->cfg->region) == 0) {
        /* Checked here, at the home: elsewhere the answer is 421. */
        code = "same_region";
        msg = "the workspace already lives in that region";
    } else if (busy) {
        code = "move_in_progress";
        msg = "the workspace is already being moved";
        status = 409;
    } else if (pinned) {
        code = "pinned";
        msg = "the workspace is pinned to its region: unpin it first";
        status = 409;
    } else if (!lit_has(allowed_lit, st->target)) {
        code = "target_not_allowed";
        msg = "the target region is not in the workspace's allowed_regions: allow it first";
    }
    if (st->dry_run) {
        int64_t rows = 0;
        for (int i = 4; i <= 8; i++)
            rows += strtoll(PQgetvalue(res, 0, i), NULL, 10);
        core_buf_t *b = &st->out;
        core_jw_t jw;
        core_buf_reset(b);
        core_jw_init(&jw, b);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "dry_run");
        core_jw_bool(&jw, true);
        core_jw_key(&jw, "workspace_id");
        core_jw_str(&jw, st->ws);
        core_jw_key(&jw, "source_region");
        core_jw_str(&jw, r->w->cfg->region);
        core_jw_key(&jw, "target_region");
        core_jw_str(&jw, st->target);
        core_jw_key(&jw, "size");
        core_jw_obj_open(&jw);
        static const char *const names[] = {"messages",  "channels", "members",
                                            "reactions", "events",   "bytes"};
        for (int i = 0; i < 6; i++) {
            core_jw_key(&jw, names[i]);
            core_jw_int(&jw, strtoll(PQgetvalue(res, 0, 4 + i), NULL, 10));
        }
        core_jw_obj_close(&jw);
        core_jw_key(&jw, "estimate_seconds");
        core_jw_double(&jw, 2.0 + (double)rows / ROWS_PER_S);
        core_jw_key(&jw, "problems");
        core_jw_arr_open(&jw);
        if (code) {
            core_jw_obj_open(&jw);
            core_jw_key(&jw, "code");
            core_jw_str(&jw, code);
            core_jw_key(&jw, "message");
            core_jw_str(&jw, msg);
            core_jw_obj_close(&jw);
        }
        core_jw_arr_close(&jw);
        core_jw_obj_close(&jw);
        rg_req_reply(r, code ? 422 : 200, b);
        return;
    }
    if (code) {
        rg_req_fail(r, status, code, msg);
        return;
    }
    const char *p[] = {st->ws,
                       r->w->cfg->region,
                       st->target,
                       st->has_at ? st->at : NULL,
                       st->reason,
                       r->who.sub,
                       st->standby ? "standby" : "move"};
    rg_req_query(r, r->shard,
                 "INSERT INTO moves AS m (workspace_id, source_region, target_region, state,"
                 " not_before, reason, created_by, kind) VALUES ($1, $2, $3, 'scheduled',"
                 " $4::timestamptz, $5, $6, $7) RETURNING move_status(m)::text, m.id",
                 7, p, on_created);
}

/* ---- show, cancel, report ---- */

static void on_cancel_audited(void *ud, int err)
{
    (void)ud;
    if (err)
        core_log_warn("move.audit_failed", "action=move_cancelled error=%d", err);
}

static void on_cancelled(const PGresult *res, int err, const char *errmsg, void *ud);

static void on_shown(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    (void)errmsg;
    if (!rg_req_pg_ok(r, res, err))
        return;
    ma_state_t *st = ST(r);
    if (PQntuples(res) != 1 || !allowed(r, PQgetisnull(res, 0, 0) ? NULL : PQgetvalue(res, 0, 0)))
        return (void)(PQntuples(res) != 1 ? rg_req_fail(r, 404, "not_found", "no such workspace")
                                          : (void)0);
    switch (st->action) {
    case MV_SHOW:
        if (PQgetisnull(res, 0, 1)) {
            rg_req_fail(r, 404, "no_move", "the workspace has never been moved");
            return;
        }
        reply_raw(r, 200, "move", PQgetvalue(res, 0, 1));
        return;
    case MV_CANCEL: {
        const char *p[] = {st->ws};
        rg_req_query(r, r->shard,
                     "WITH c AS (UPDATE moves m SET state = 'cancelled', synced = false,"
                     "   updated_at = now(), lease_until = NULL"
                     "   WHERE m.workspace_id = $1 AND m.state IN ('scheduled', 'catching_up')"
                     "   RETURNING move_status(m) AS s, m.id)"
                     " SELECT (SELECT s::text FROM c), (SELECT id::text FROM c),"
                     " EXISTS (SELECT 1 FROM moves WHERE workspace_id = $1"
                     "   AND state NOT IN ('done', 'cancelled', 'scheduled', 'catching_up'))",
                     1, p, on_cancelled);
        return;
    }
    case MV_REPORT:
        if (PQgetisnull(res, 0, 1)) {
            rg_req_fail(r, 404, "no_move", "the workspace has never been moved");
            return;
        }
        if (PQgetisnull(res, 0, 2)) {
            rg_req_fail(r, 409, "not_finished", "the move has not finished: no report yet");
            return;
        }
        core_buf_reset(&st->out);
        core_buf_puts(&st->out, PQgetvalue(res, 0, 2));
        rg_req_reply(r, 200, &st->out);
        return;
    case MV_CREATE:
    case MV_PROMOTE:
        break;
    }
    rg_req_fail(r, 500, "internal", "the request failed; it has been logged");
}

static void on_cancelled(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    (void)errmsg;
    if (!rg_req_pg_ok(r, res, err))
        return;
    ma_state_t *st = ST(r);
    if (PQgetisnull(res, 0, 0)) {
        if (PQgetvalue(res, 0, 2)[0] == 't')
            rg_req_fail(r, 409, "too_late",
                        "the move's write freeze has begun: it can no longer be cancelled");
        else
            rg_req_fail(r, 404, "no_move", "no move of this workspace is waiting or catching up");
        return;
    }
    snprintf(st->move_id, sizeof st->move_id, "%s", PQgetvalue(res, 0, 1));
    core_log_info("move.cancelled", "move=%s workspace=%s", st->move_id, st->ws);
    /* The audit entry and the target's clean-up follow; the answer is not
     * held for them (the entry's strings are copied). */
    rg_audit_entry_t e = {.shard = r->shard,
                          .workspace_id = st->ws,
                          .action = "move_cancelled",
                          .actor = r->who.sub,
                          .actor_as = st->operator_ ? "operator" : "compliance_admin",
                          .move_id = st->move_id,
                          .reason = st->reason[0] ? st->reason : NULL};
    rg_audit_append(r->w, &e, on_cancel_audited, r->w);
    rg_move_kick(r->w);
    reply_raw(r, 200, "move", PQgetvalue(res, 0, 0));
}

/* The latest move of the workspace here: the source's row, or (after the
 * flip) what the source sent this region as its target. */
#define LATEST                                                                                     \
    " latest AS (SELECT s, at FROM (SELECT move_status(m) AS s, m.created_at AS at FROM moves m"   \
    "   WHERE m.workspace_id = $1 UNION ALL SELECT coalesce(i.status, jsonb_build_object('id',"    \
    "   i.move_id, 'workspace_id', i.workspace_id, 'source_region', i.source_region,"              \
    "   'target_region', $3::text, 'kind', i.kind, 'state', CASE WHEN i.promoted_at IS NOT NULL"   \
    "   THEN 'promoted' ELSE 'flipped' END, 'promoted_at', i.promoted_at,"                         \
    "   'created_at', i.created_at)),"                                                             \
    "   i.created_at FROM move_in i WHERE i.workspace_id = $1 AND i.state = 'committed') x"        \
    "   ORDER BY at DESC LIMIT 1)"
#define ROLE                                                                                       \
    "(SELECT role FROM members WHERE workspace_id = $1 AND user_id = $2 AND status = 'active')"

static void load(rg_req_t *r)
{
    ma_state_t *st = ST(r);
    const char *p[] = {st->ws, r->who.sub, r->w->cfg->region, st->reason};
    switch (st->action) {
    case MV_CREATE: {
        const char *q[] = {st->ws, r->who.sub, st->dry_run ? "t" : "f"};
        rg_req_query(
            r, r->shard,
            "SELECT " ROLE ", w.allowed_regions::text, w.pinned,"
            " (SELECT id FROM moves WHERE workspace_id = $1 AND state NOT IN ('done', "
            "'cancelled')),"
            " CASE WHEN $3 THEN (SELECT count(*) FROM messages WHERE workspace_id = $1) END,"
            " CASE WHEN $3 THEN (SELECT count(*) FROM channels WHERE workspace_id = $1) END,"
            " CASE WHEN $3 THEN (SELECT count(*) FROM members WHERE workspace_id = $1) END,"
            " CASE WHEN $3 THEN (SELECT count(*) FROM reactions WHERE workspace_id = $1) END,"
            " CASE WHEN $3 THEN (SELECT count(*) FROM outbox WHERE workspace_id = $1) END,"
            " CASE WHEN $3 THEN (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM messages x"
            "   WHERE workspace_id = $1) END"
            " FROM workspaces w WHERE w.id = $1",
            3, q, on_checked);
        return;
    }
    case MV_SHOW:
        rg_req_query(r, r->shard,
                     "WITH" LATEST " SELECT " ROLE ", (SELECT s::text FROM latest), NULL, false"
                     " WHERE $4::text IS NULL OR true",
                     4, p, on_shown);
        return;
    case MV_REPORT:
        rg_req_query(
            r, r->shard,
            "WITH" LATEST ","
            " rep AS (SELECT report_text, report_sig, report_kid, source_region, created_at"
            "   FROM moves WHERE workspace_id = $1 AND state = 'done' UNION ALL"
            "   SELECT report_text, report_sig, report_kid, source_region, created_at FROM move_in"
            "   WHERE workspace_id = $1 AND report_text IS NOT NULL ORDER BY created_at DESC"
            "   LIMIT 1)"
            " SELECT " ROLE ", (SELECT s::text FROM latest),"
            " (SELECT jsonb_build_object('report_text', report_text, 'signature',"
            "   encode(report_sig, 'hex'), 'key_id', report_kid, 'region', source_region)::text"
            "   FROM rep), false WHERE $4::text IS NULL OR true",
            4, p, on_shown);
        return;
    case MV_CANCEL:
        rg_req_query(r, r->shard,
                     "WITH" LATEST " SELECT " ROLE ", (SELECT s::text FROM latest), NULL, false"
                     " WHERE $4::text IS NULL OR true",
                     4, p, on_shown);
        return;
    case MV_PROMOTE:
        break; /* not placed through the home: promote_authenticated */
    }
}

/* ---- promote: a standby becomes the home ---- */

static void on_promote_audited(void *ud, int err)
{
    (void)ud;
    if (err)
        core_log_warn("move.audit_failed", "action=standby_promoted error=%d", err);
}

static void on_promoted(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    (void)errmsg;
    if (!rg_req_pg_ok(r, res, err))
        return;
    ma_state_t *st = ST(r);
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        rg_req_fail(r, 409, "conflict", "the standby changed meanwhile; look again");
        return;
    }
    core_log_info("move.promoted", "workspace=%s old_home=%s epoch=%s", st->ws, st->home,
                  st->epoch);
    rg_audit_entry_t e = {.shard = r->shard,
                          .workspace_id = st->ws,
                          .action = "standby_promoted",
                          .actor = r->who.sub,
                          .actor_as = st->operator_ ? "operator" : "compliance_admin",
                          .move_id = PQgetvalue(res, 0, 0),
                          .reason = st->reason[0] ? st->reason : NULL};
    rg_audit_append(r->w, &e, on_promote_audited, NULL);
    rg_move_promoted(r->w, st->ws, r->shard);
    core_buf_t *b = &st->out;
    core_buf_reset(b);
    core_jw_t jw;
    core_jw_init(&jw, b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "workspace_id");
    core_jw_str(&jw, st->ws);
    core_jw_key(&jw, "home_region");
    core_jw_str(&jw, r->w->cfg->region);
    core_jw_key(&jw, "previous_home");
    core_jw_str(&jw, st->home);
    core_jw_key(&jw, "epoch");
    core_jw_int(&jw, strtoll(st->epoch, NULL, 10));
    core_jw_key(&jw, "seq");
    core_jw_int(&jw, strtoll(PQgetvalue(res, 0, 1), NULL, 10));
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, b);
}

static void promote_now(rg_req_t *r)
{
    ma_state_t *st = ST(r);
    char shard[8];
    snprintf(shard, sizeof shard, "%d", r->shard);
    const char *p[] = {st->ws, shard, r->w->cfg->region, st->epoch, st->reason};
    /* The standby's copy commits as home on its own: the directory (epoch
     * + 1, whose change feed the edges follow and whose outbox row reaches
     * every region, the old home included, which then fences itself), the
     * relay's watermark at the copy's head, and the move_in row. */
    rg_req_query(
        r, r->shard,
        "WITH mi AS (UPDATE move_in SET state = 'committed', committed_at = now(),"
        "   promoted_at = now(), promote_reason = $5 WHERE workspace_id = $1"
        "   AND kind = 'standby'"
        "   AND state = 'loading' RETURNING move_id),"
        " w AS (UPDATE workspaces SET moving_to = NULL WHERE id = $1"
        "   AND EXISTS (SELECT 1 FROM mi) RETURNING seq, allowed_regions),"
        " d AS (INSERT INTO dir_workspaces AS d (workspace_id, shard, home_region, epoch,"
        "   allowed_regions, pinned) SELECT $1, $2::int, $3, $4::bigint, w.allowed_regions,"
        "   false FROM w ON CONFLICT (workspace_id) DO UPDATE SET shard = EXCLUDED.shard,"
        "   home_region = EXCLUDED.home_region, epoch = EXCLUDED.epoch,"
        "   allowed_regions = EXCLUDED.allowed_regions, updated_at = now()"
        "   WHERE d.epoch < EXCLUDED.epoch RETURNING 1),"
        " rl AS (INSERT INTO outbox_relay (workspace_id, published_seq)"
        "   SELECT $1, w.seq FROM w ON CONFLICT (workspace_id) DO UPDATE"
        "   SET published_seq = EXCLUDED.published_seq RETURNING 1),"
        " o AS (INSERT INTO dir_outbox (kind, id, body) SELECT 'workspace', $1,"
        "   jsonb_build_object('home_region', $3, 'allowed_regions', w.allowed_regions,"
        "   'epoch', $4::bigint, 'pinned', false) FROM w RETURNING 1),"
        " rw AS (DELETE FROM replica_workspaces WHERE workspace_id = $1"
        "   AND EXISTS (SELECT 1 FROM mi) RETURNING 1)"
        " SELECT (SELECT move_id::text FROM mi), (SELECT seq FROM w)",
        5, p, on_promoted);
}

static void on_home_pinged(const core_nats_msg_t *reply, int err, void *ud)
{
    rg_req_t *r = ud;
    (void)reply;
    if (rg_req_gone(r))
        return;
    if (err == 0) {
        rg_req_fail(r, 409, "home_reachable",
                    "the home region answers: move the workspace instead (or promote with "
                    "\"force\": true if it is cut off from its clients)");
        return;
    }
    /* No answer (timeout, nobody listening, NATS itself down): the home is
     * down as far as this region can tell. */
    promote_now(r);
}

static void on_standby_found(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    (void)errmsg;
    if (!rg_req_pg_ok(r, res, err))
        return;
    ma_state_t *st = ST(r);
    if (PQntuples(res) != 1) {
        rg_req_fail(r, 404, "no_standby", "this region holds no standby copy of the workspace");
        return;
    }
    if (!allowed(r, PQgetisnull(res, 0, 0) ? NULL : PQgetvalue(res, 0, 0)))
        return;
    if (PQgetisnull(res, 0, 2)) {
        /* The copy is here but the directory has not heard of the workspace
         * yet: its epoch is unknown, so no epoch can be claimed over it. */
        rg_req_fail(r, 503, "directory_unavailable",
                    "this region's directory does not know the workspace yet; retry shortly");
        return;
    }
    snprintf(st->home, sizeof st->home, "%s", PQgetvalue(res, 0, 1));
    snprintf(st->epoch, sizeof st->epoch, "%lld", strtoll(PQgetvalue(res, 0, 2), NULL, 10) + 1);
    if (strcmp(st->home, r->w->cfg->region) == 0) {
        rg_req_fail(r, 409, "already_home", "the workspace's home is this region");
        return;
    }
    if (st->force) {
        promote_now(r);
        return;
    }
    /* Never two homes on purpose: a home that still answers is moved, not
     * replaced. (One cut off from this region but not from its clients is
     * the operator's call: force, and the home fences itself when the new
     * epoch reaches it.) */
    char subject[96];
    snprintf(subject, sizeof subject, "mv.%s.in", st->home);
    r->pending++;
    if (!r->w->nats || core_nats_request(r->w->nats, subject, "{\"op\":\"ping\"}", 13, 1500,
                                         on_home_pinged, r) != 0) {
        r->pending--;
        promote_now(r);
    }
}

static void promote_authenticated(rg_req_t *r)
{
    ma_state_t *st = ST(r);
    st->operator_ = is_operator(r->w, r->who.sub);
    r->shard = repl_replica_shard(st->ws, r->w->nshards);
    const char *p[] = {st->ws, r->who.sub};
    rg_req_query(r, r->shard,
                 "SELECT " ROLE ", d.home_region, d.epoch FROM move_in i"
                 " LEFT JOIN dir_workspaces d ON d.workspace_id = i.workspace_id"
                 " WHERE i.workspace_id = $1 AND i.kind = 'standby' AND i.state = 'loading'"
                 " ORDER BY i.created_at DESC LIMIT 1",
                 2, p, on_standby_found);
}

static void authenticated(rg_req_t *r)
{
    ST(r)->operator_ = is_operator(r->w, r->who.sub);
    rg_api_in_workspace(r, ST(r)->ws, load);
}

/* "2026-11-23T10:00:00Z" or with fractional seconds or an offset: a time
 * Postgres reads without guessing. */
static bool utc_time_ok(const char *s, size_t n)
{
    if (n < 20 || n > 35)
        return false;
    int y, mo, d, h, mi, sec;
    char t;
    if (sscanf(s, "%4d-%2d-%2d%c%2d:%2d:%2d", &y, &mo, &d, &t, &h, &mi, &sec) != 7 ||
        (t != 'T' && t != 't') || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
        sec > 60)
        return false;
    char last = s[n - 1];
    return last == 'Z' || last == 'z' || strchr(s + 19, '+') || strchr(s + 19, '-');
}

static bool read_create(rg_req_t *r)
{
    ma_state_t *st = ST(r);
    if (!rg_req_body(r, false))
        return false;
    const core_json_t *t = core_json_get(r->body, "target_region");
    if (!t || t->type != CORE_JSON_STRING || t->u.str.len == 0 || t->u.str.len > 32) {
        rg_req_fail(r, 400, "invalid_request", "target_region (a region name) is required");
        return false;
    }
    if (!r->w->world || !res_world_region(r->w->world, t->u.str.s)) {
        rg_req_fail(r, 422, "unknown_region", "target_region is not a region of this world");
        return false;
    }
    snprintf(st->target, sizeof st->target, "%s", t->u.str.s);
    const core_json_t *d = core_json_get(r->body, "dry_run");
    if (d && d->type != CORE_JSON_BOOL && d->type != CORE_JSON_NULL) {
        rg_req_fail(r, 400, "invalid_request", "dry_run must be a boolean");
        return false;
    }
    st->dry_run = d && d->type == CORE_JSON_BOOL && d->u.b;
    const core_json_t *sb = core_json_get(r->body, "standby");
    if (sb && sb->type != CORE_JSON_BOOL && sb->type != CORE_JSON_NULL) {
        rg_req_fail(r, 400, "invalid_request", "standby must be a boolean");
        return false;
    }
    st->standby = sb && sb->type == CORE_JSON_BOOL && sb->u.b;
    const core_json_t *reason = core_json_get(r->body, "reason");
    if (!st->dry_run && (!reason || reason->type != CORE_JSON_STRING || reason->u.str.len == 0)) {
        rg_req_fail(r, 400, "reason_required",
                    "a move needs a \"reason\" (1-500 characters), recorded in the audit trail");
        return false;
    }
    if (reason && reason->type == CORE_JSON_STRING) {
        if (rg_utf8_chars(reason->u.str.s, reason->u.str.len) > REASON_MAX) {
            rg_req_fail(r, 400, "invalid_request", "reason: at most 500 characters");
            return false;
        }
        memcpy(st->reason, reason->u.str.s, reason->u.str.len);
        st->reason[reason->u.str.len] = '\0';
    }
    const core_json_t *at = core_json_get(r->body, "at");
    if (at && at->type != CORE_JSON_NULL) {
        if (at->type != CORE_JSON_STRING || !utc_time_ok(at->u.str.s, at->u.str.len)) {
            rg_req_fail(r, 400, "invalid_request",
                        "at must be an RFC 3339 time such as 2026-11-23T10:00:00Z");
            return false;
        }
        snprintf(st->at, sizeof st->at, "%s", at->u.str.s);
        st->has_at = true;
    }
    return true;
}

static void start(core_http_req_t *http, void *ud, mv_action_t action)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(ma_state_t));
    r->on_free = on_free;
    core_buf_init(&ST(r)->out);
    ST(r)->action = action;
    if (!rg_req_path_id(r, "id", "workspace id", ST(r)->ws, sizeof ST(r)->ws))
        return;
    if (action == MV_CREATE && !read_create(r))
        return;
    if (action == MV_CANCEL) {
        /* An optional reason, kept in the audit entry. */
        if (!rg_req_body(r, true))
            return;
        const core_json_t *reason = core_json_get(r->body, "reason");
        if (reason && reason->type == CORE_JSON_STRING &&
            rg_utf8_chars(reason->u.str.s, reason->u.str.len) <= REASON_MAX) {
            memcpy(ST(r)->reason, reason->u.str.s, reason->u.str.len);
            ST(r)->reason[reason->u.str.len] = '\0';
        }
    }
    if (action == MV_PROMOTE) {
        if (!rg_req_body(r, true))
            return;
        const core_json_t *f = core_json_get(r->body, "force");
        if (f && f->type != CORE_JSON_BOOL && f->type != CORE_JSON_NULL) {
            rg_req_fail(r, 400, "invalid_request", "force must be a boolean");
            return;
        }
        ST(r)->force = f && f->type == CORE_JSON_BOOL && f->u.b;
        const core_json_t *reason = core_json_get(r->body, "reason");
        if (!reason || reason->type != CORE_JSON_STRING || reason->u.str.len == 0 ||
            rg_utf8_chars(reason->u.str.s, reason->u.str.len) > REASON_MAX) {
            rg_req_fail(r, 400, "reason_required",
                        "a promotion needs a \"reason\" (1-500 characters), recorded in the audit "
                        "trail");
            return;
        }
        memcpy(ST(r)->reason, reason->u.str.s, reason->u.str.len);
        ST(r)->reason[reason->u.str.len] = '\0';
        rg_api_authenticate(r, promote_authenticated);
        return;
    }
    rg_api_authenticate(r, authenticated);
}

static void on_create(core_http_req_t *http, void *ud)
{
    start(http, ud, MV_CREATE);
}

static void on_show(core_http_req_t *http, void *ud)
{
    start(http, ud, MV_SHOW);
}

static void on_cancel(core_http_req_t *http, void *ud)
{
    start(http, ud, MV_CANCEL);
}

static void on_report(core_http_req_t *http, void *ud)
{
    start(http, ud, MV_REPORT);
}

static void on_promote(core_http_req_t *http, void *ud)
{
    start(http, ud, MV_PROMOTE);
}

int rg_api_move_routes(rg_worker_t *w)
{
    static const struct {
        const char *method, *pattern;
        core_http_handler_t fn;
    } routes[] = {
        {"POST", "/v1/admin/residency/workspaces/{id}/move", on_create},
        {"GET", "/v1/admin/residency/workspaces/{id}/move", on_show},
        {"POST", "/v1/admin/residency/workspaces/{id}/move/cancel", on_cancel},
        {"GET", "/v1/admin/residency/workspaces/{id}/move/report", on_report},
        {"POST", "/v1/admin/residency/workspaces/{id}/promote", on_promote},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        int rc = core_http_route(w->http, routes[i].method, routes[i].pattern, routes[i].fn, w);
        if (rc)
            return rc;
    }
    return 0;
}
