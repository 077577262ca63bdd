/* rg_move.c: the move driver (source side), the move server (target side)
 * and the "moved" notices (see rg_move.h). */
#include "region/rg_move.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics.h"
#include "region/rg_audit.h"
#include "region/rg_dir.h"
#include "region/rg_keys.h"
#include "region/rg_api.h"
#include "core/auth.h"
#include "replication/repl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#define TICK_MS 1000
#define LEASE "interval '10 seconds'"
#define REQ_TIMEOUT_MS 15000
#define FREEZE_AT 300  /* events behind the head: freeze now */
#define DELTA_ROUNDS 6 /* catch-up rounds after the copy before freezing anyway */
#define CHUNK_ROWS 500 /* rows per load, halved while a chunk is too big */
#define IDS_PER_CHUNK 200
#define PAYLOAD_MAX (800 * 1024) /* under NATS's 1 MiB default max_payload */
#define PURGE_CHUNK 5000
#define NO_SEQ "9223372036854775807"

/* ---- tables ---- */

/* The workspace's content, in foreign-key order. Each is copied in keyset
 * order of its primary key (after workspace_id): nkeys keys, sent back as a
 * JSON array of strings that becomes the next chunk's parameters. */
typedef struct {
    const char *name;
    int nkeys;
    const char *sql; /* $1 ws, $2.. keys, last: limit */
} table_t;

#define EXPORT(tbl, where, order, lastkey)                                                         \
    "WITH t AS (SELECT * FROM " tbl " WHERE " where " ORDER BY " order " LIMIT $%d)"               \
    " SELECT count(*), coalesce(jsonb_agg(to_jsonb(t) - 'moving_to'), '[]')::text,"                \
    " (SELECT " lastkey "::text FROM t ORDER BY " order " DESC LIMIT 1) FROM t"

enum {
    T_WORKSPACES,
    T_MEMBERS,
    T_CHANNELS,
    T_CHANNEL_MEMBERS,
    T_MESSAGES,
    T_REACTIONS,
    T_OUTBOX,
    NTABLES
};

/* The order list is written for DESC: each column gets it (see EXPORT). */
static const table_t TABLES[NTABLES] = {
    {"workspaces", 1,
     "WITH t AS (SELECT * FROM workspaces WHERE id = $1 AND $2::text = '' LIMIT $3)"
     " SELECT count(*), coalesce(jsonb_agg(to_jsonb(t) - 'moving_to'), '[]')::text,"
     " '[\"-\"]' FROM t"},
    {"members", 1,
     "WITH t AS (SELECT * FROM members WHERE workspace_id = $1 AND user_id > $2"
     " ORDER BY user_id LIMIT $3) SELECT count(*), coalesce(jsonb_agg(to_jsonb(t)), '[]')::text,"
     " (SELECT jsonb_build_array(user_id)::text FROM t ORDER BY user_id DESC LIMIT 1) FROM t"},
    {"channels", 1,
     "WITH t AS (SELECT * FROM channels WHERE workspace_id = $1 AND id > $2"
     " ORDER BY id LIMIT $3) SELECT count(*), coalesce(jsonb_agg(to_jsonb(t)), '[]')::text,"
     " (SELECT jsonb_build_array(id)::text FROM t ORDER BY id DESC LIMIT 1) FROM t"},
    {"channel_members", 2,
     "WITH t AS (SELECT * FROM channel_members WHERE workspace_id = $1"
     " AND (channel_id, user_id) > ($2, $3) ORDER BY channel_id, user_id LIMIT $4)"
     " SELECT count(*), coalesce(jsonb_agg(to_jsonb(t)), '[]')::text,"
     " (SELECT jsonb_build_array(channel_id, user_id)::text FROM t"
     "  ORDER BY channel_id DESC, user_id DESC LIMIT 1) FROM t"},
    {"messages", 1,
     "WITH t AS (SELECT * FROM messages WHERE workspace_id = $1 AND id > $2"
     " ORDER BY id LIMIT $3) SELECT count(*), coalesce(jsonb_agg(to_jsonb(t)), '[]')::text,"
     " (SELECT jsonb_build_array(id)::text FROM t ORDER BY id DESC LIMIT 1) FROM t"},
    {"reactions", 3,
     "WITH t AS (SELECT * FROM reactions WHERE workspace_id = $1"
     " AND (message_id, emoji, user_id) > ($2, $3, $4) ORDER BY message_id, emoji, user_id"
     " LIMIT $5) SELECT count(*), coalesce(jsonb_agg(to_jsonb(t)), '[]')::text,"
     " (SELECT jsonb_build_array(message_id, emoji, user_id)::text FROM t"
     "  ORDER BY message_id DESC, emoji DESC, user_id DESC LIMIT 1) FROM t"},
    /* $2 after this seq, $3 up to this one. */
    {"outbox", 2,
     "WITH t AS (SELECT * FROM outbox WHERE workspace_id = $1 AND seq > $2::bigint"
     " AND seq <= $3::bigint ORDER BY seq LIMIT $4)"
     " SELECT count(*), coalesce(jsonb_agg(to_jsonb(t)), '[]')::text,"
     " (SELECT jsonb_build_array(seq::text, $3::text)::text FROM t ORDER BY seq DESC LIMIT 1)"
     " FROM t"},
};

static int table_index(const char *name)
{
    for (int i = 0; i < NTABLES; i++)
        if (strcmp(TABLES[i].name, name) == 0)
            return i;
    return -1;
}

/* ---- state ---- */

typedef enum {
    ST_SCHEDULED,
    ST_CATCHING_UP,
    ST_FROZEN,
    ST_FLIPPED,
    ST_PURGING,
    ST_SHREDDING,
    ST_DONE,
    ST_CANCELLED,
    NSTATES
} mstate_t;

static const char *const STATE_NAME[NSTATES] = {"scheduled", "catching_up", "frozen", "flipped",
                                                "purging",   "shredding",   "done",   "cancelled"};

static mstate_t state_of(const char *s)
{
    for (int i = 0; i < NSTATES; i++)
        if (strcmp(STATE_NAME[i], s) == 0)
            return (mstate_t)i;
    return ST_CANCELLED;
}

typedef struct mv_s mv_t;

/* Catch-up phases after the bulk copy: one round of re-sending what the
 * events in (lo, hi] touched. */
typedef enum { D_WS, D_MEMBERS, D_CHANNELS, D_CHANNEL_MEMBERS, D_IDS, D_OUTBOX, D_DONE } dphase_t;

struct mv_s {
    rg_move_t *m;
    int shard;
    char id[40];
    char ws[72];
    char source[33], target[33];
    mstate_t state;
    mstate_t next_state; /* on_saved's: the state a saving statement leads to */
    bool synced;
    bool standby; /* a standby: catches up for ever, never freezes (migration 0013) */
    /* copy */
    int copy_table;
    char copy_key[3][160]; /* the keyset cursor */
    int nkey;
    int limit;
    int64_t base_seq, caught_seq, final_seq, epoch_before;
    char allowed_after[400]; /* text[] literal */
    int rounds;
    /* a delta round */
    dphase_t dphase;
    int64_t dlo, dhi;
    char *ids; /* the touched message ids, "a,b,c" (malloc'd) */
    size_t ids_off;
    bool replace_first; /* channel_members: the first chunk replaces all */
    char chunk_ids[IDS_PER_CHUNK * 40];
    bool reactions_next;
    /* out */
    core_buf_t msg;
    int64_t last_rows;
    char last_key[400];
    char target_state[16];
    char target_kid[64];
    int64_t purged_total;
    bool shredded; /* this run destroyed the key: the report is next */
};

struct rg_move_s {
    rg_worker_t *w;
    bool driver;
    bool stopping;
    int pending;
    uv_timer_t tick;
    bool tick_closed;
    core_nats_sub_t *in_sub, *notice_sub, *kick_sub;
    core_map_t *driving; /* move id -> mv_t */
    char owner[96];
    core_metric_t m_steps, m_failures, m_served;
};

static void dispatch(mv_t *v);
static void mv_fail(mv_t *v, const char *what, const char *detail);

/* Tests only (debug endpoints on): MERIDIAN_DEBUG_MOVE_CRASH="<point>:<file>"
 * makes this process die at <point> (a state name on the source, or
 * "target-load" / "target-commit" after the target's statement committed and
 * before it answers) unless <file> exists; the file is made first, so the
 * restarted worker goes on. */
static char g_crash_point[32], g_crash_file[256];

static void maybe_crash(const char *point)
{
    if (!g_crash_point[0] || strcmp(point, g_crash_point) != 0)
        return;
    FILE *f = fopen(g_crash_file, "wx");
    if (!f)
        return;
    fclose(f);
    core_log_warn("move.debug_crash", "point=%s", point);
    _exit(137);
}

static void maybe_free(rg_move_t *m)
{
    if (!m->stopping || m->pending > 0 || (m->driver && !m->tick_closed) ||
        core_map_len(m->driving) > 0)
        return;
    core_map_free(m->driving, NULL);
    free(m);
}

static void mv_free(mv_t *v)
{
    rg_move_t *m = v->m;
    core_map_remove(m->driving, v->id);
    core_buf_free(&v->msg);
    free(v->ids);
    free(v);
    maybe_free(m);
}

static bool mv_query(mv_t *v, const char *sql, int n, const char *const *params, core_pg_cb cb)
{
    if (v->m->stopping) {
        mv_free(v);
        return false;
    }
    if (core_pg_query(v->m->w->shards[v->shard], sql, n, params, NULL, cb, v, NULL) != 0) {
        mv_fail(v, "query", "shard unavailable");
        return false;
    }
    v->m->pending++;
    return true;
}

/* The start of every statement callback: false when the move stops here. */
static bool mv_ok(mv_t *v, const PGresult *res, int err, const char *errmsg, const char *what)
{
    v->m->pending--;
    (void)res;
    if (v->m->stopping) {
        mv_free(v);
        return false;
    }
    if (err) {
        /* The SQLSTATE, never the message: its detail may quote a row. */
        (void)errmsg;
        mv_fail(v, what, core_pg_errcode(res, err));
        return false;
    }
    return true;
}

/* mv_ok for a statement that changes the move's row under our lease: one
 * row back, or the lease (or the row's state) changed under us. */
static bool mv_saved(mv_t *v, const PGresult *res, int err, const char *errmsg, const char *what)
{
    if (!mv_ok(v, res, err, errmsg, what))
        return false;
    if (PQntuples(res) != 1) {
        mv_fail(v, what, "lease lost or the move changed");
        return false;
    }
    return true;
}

/* The callback of a statement that saves the move's progress under the
 * lease: the move goes on in v->next_state (set before the statement; the
 * same state when only a cursor moved). */
static void on_saved(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_saved(v, res, err, errmsg, "save"))
        return;
    v->state = v->next_state;
    dispatch(v);
}

/* Gives the move up until the next tick (the lease stays ours, so the next
 * tick on this node resumes it; another node's after the lease). */
static void mv_fail(mv_t *v, const char *what, const char *detail)
{
    core_metrics_add(v->m->m_failures, 1);
    core_log_warn("move.retry", "move=%s workspace=%s state=%s step=%s error=\"%.160s\"", v->id,
                  v->ws, STATE_NAME[v->state], what, detail);
    mv_free(v);
}

/* ---- requests to the target ---- */

typedef void (*reply_fn)(mv_t *v, const core_json_t *reply);

typedef struct {
    mv_t *v;
    reply_fn fn;
    char what[24];
} pending_req_t;

static void on_target_reply(const core_nats_msg_t *reply, int err, void *ud)
{
    pending_req_t *p = ud;
    mv_t *v = p->v;
    v->m->pending--;
    if (v->m->stopping) {
        free(p);
        mv_free(v);
        return;
    }
    if (err) {
        char what[24];
        snprintf(what, sizeof what, "%s", p->what);
        free(p);
        mv_fail(v, what, err == UV_ETIMEDOUT ? "target region did not answer" : uv_strerror(err));
        return;
    }
    core_json_doc_t *doc = NULL;
    char perr[64];
    static const core_json_limits_t lim = {.max_depth = 8};
    const char *e = NULL;
    if (core_json_parse(reply->data, reply->len, &lim, &doc, perr, sizeof perr) != 0 ||
        core_json_root(doc)->type != CORE_JSON_OBJECT) {
        free(p);
        if (doc)
            core_json_free(doc);
        mv_fail(v, "reply", "the target's answer is not JSON");
        return;
    }
    if (core_json_get_str(core_json_root(doc), "error", &e) == 0) {
        char what[24], msg[160];
        snprintf(what, sizeof what, "%s", p->what);
        snprintf(msg, sizeof msg, "target: %s", e);
        free(p);
        core_json_free(doc);
        mv_fail(v, what, msg);
        return;
    }
    reply_fn fn = p->fn;
    free(p);
    fn(v, core_json_root(doc));
    core_json_free(doc);
}

/* Sends v->msg (header line, then an optional body) to the target. */
static void to_target(mv_t *v, const char *what, reply_fn fn)
{
    if (v->m->stopping) {
        mv_free(v);
        return;
    }
    char subject[96];
    snprintf(subject, sizeof subject, "mv.%s.in", v->target);
    pending_req_t *p = core_xcalloc(1, sizeof *p);
    p->v = v;
    p->fn = fn;
    snprintf(p->what, sizeof p->what, "%s", what);
    int rc = core_nats_request(v->m->w->nats, subject, v->msg.base, v->msg.len, REQ_TIMEOUT_MS,
                               on_target_reply, p);
    if (rc) {
        free(p);
        mv_fail(v, what, "NATS unavailable");
        return;
    }
    v->m->pending++;
}

static void header(mv_t *v, const char *op)
{
    core_buf_reset(&v->msg);
    core_buf_appendf(&v->msg, "{\"op\":\"%s\",\"move\":\"%s\",\"ws\":\"%s\",\"source\":\"%s\"", op,
                     v->id, v->ws, v->source);
}

/* ---- audit ---- */

static void after_audit(void *ud, int err)
{
    mv_t *v = ud;
    v->m->pending--;
    if (v->m->stopping) {
        mv_free(v);
        return;
    }
    if (err) {
        mv_fail(v, "audit", "the audit entry could not be written");
        return;
    }
    dispatch(v);
}

/* Appends the step's audit entry (once per move and action: a resumed step
 * finds it there), then goes on with dispatch. */
static void audit_then_dispatch(mv_t *v, const char *action)
{
    rg_audit_entry_t e = {
        .shard = v->shard,
        .workspace_id = v->ws,
        .action = action,
        .actor = "meridian-region",
        .actor_as = "system",
        .move_id = v->id,
    };
    v->m->pending++;
    if (rg_audit_append(v->m->w, &e, after_audit, v) != 0) {
        v->m->pending--;
        mv_fail(v, "audit", "the audit entry could not be written");
    }
}

/* ---- scheduled: the target gets ready ---- */

static void on_started(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_saved(v, res, err, errmsg, "start"))
        return;
    v->state = ST_CATCHING_UP;
    v->base_seq = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    v->caught_seq = v->base_seq;
    v->epoch_before = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    audit_then_dispatch(v, "move_started");
}

static void begin_with_key(mv_t *v, reply_fn fn);
static void on_synced_saved(const PGresult *res, int err, const char *errmsg, void *ud);

static void on_begun(mv_t *v, const core_json_t *reply)
{
    const char *st = "", *kid = "";
    core_json_get_str(reply, "state", &st);
    core_json_get_str(reply, "kid", &kid);
    snprintf(v->target_state, sizeof v->target_state, "%s", st);
    if (v->standby && strcmp(st, "committed") == 0) {
        /* The standby was promoted while this region was away: it is the
         * home now, and this row is over. */
        const char *p[] = {v->id};
        core_log_warn("move.standby_promoted", "move=%s workspace=%s target=%s", v->id, v->ws,
                      v->target);
        mv_query(v,
                 "UPDATE moves SET state = 'cancelled', synced = true, updated_at = now(),"
                 " error = 'the standby was promoted to home' WHERE id = $1",
                 1, p, on_synced_saved);
        return;
    }
    bool learnt = !v->target_kid[0] && kid[0];
    snprintf(v->target_kid, sizeof v->target_kid, "%s", kid);
    if (learnt) {
        /* Now the key can be sealed to the target: begin again with it. */
        begin_with_key(v, on_begun);
        return;
    }
    if (v->state != ST_SCHEDULED) {
        dispatch(v);
        return;
    }
    /* The copy's base: the sequence now, and the policy after the move
     * (the source leaves, the target is in). */
    const char *params[] = {v->id, v->ws, v->source, v->m->owner};
    mv_query(v,
             "UPDATE moves m SET state = 'catching_up', updated_at = now(),"
             " lease_until = now() + " LEASE ","
             " base_seq = w.seq, caught_seq = w.seq, epoch_before = d.epoch,"
             " allowed_after = ARRAY(SELECT DISTINCT r FROM unnest(w.allowed_regions"
             "   || m.target_region) r WHERE r <> $3 ORDER BY r),"
             " steps = m.steps || jsonb_build_object('catch_up',"
             "   jsonb_build_object('started_at', now())),"
             " total_rows = (SELECT count(*) FROM messages x WHERE x.workspace_id = $2)"
             "   + (SELECT count(*) FROM outbox x WHERE x.workspace_id = $2)"
             "   + (SELECT count(*) FROM reactions x WHERE x.workspace_id = $2)"
             "   + (SELECT count(*) FROM channel_members x WHERE x.workspace_id = $2)"
             "   + (SELECT count(*) FROM members x WHERE x.workspace_id = $2)"
             "   + (SELECT count(*) FROM channels x WHERE x.workspace_id = $2) + 1"
             " FROM workspaces w, dir_workspaces d"
             " WHERE m.id = $1 AND m.state = 'scheduled' AND m.lease_owner = $4"
             "   AND w.id = $2 AND d.workspace_id = $2"
             " RETURNING m.base_seq, m.epoch_before",
             4, params, on_started);
}

static int target_box_pk(const rg_worker_t *w, const char *region, const char *kid,
                         uint8_t out[crypto_box_PUBLICKEYBYTES]);

/* Appends ,"dk":"<hex>": the data key sealed to the target region's key of
 * kid. Returns 0, or -1 when that key is not in the world file. */
static int put_sealed_dk(mv_t *v, const rg_key_t *key, const char *kid)
{
    uint8_t pk[crypto_box_PUBLICKEYBYTES];
    uint8_t sealed[crypto_box_SEALBYTES + RES_KEYS_KEY_BYTES];
    char hex[2 * sizeof sealed + 1];
    if (target_box_pk(v->m->w, v->target, kid, pk) != 0)
        return -1;
    crypto_box_seal(sealed, key->dk, RES_KEYS_KEY_BYTES, pk);
    sodium_bin2hex(hex, sizeof hex, sealed, sizeof sealed);
    core_buf_appendf(&v->msg, ",\"dk\":\"%s\"", hex);
    return 0;
}

typedef struct {
    mv_t *v;
    reply_fn fn;
} begin_t;

static void on_begin_key(int err, const rg_key_t *key, void *ud)
{
    begin_t *b = ud;
    mv_t *v = b->v;
    reply_fn fn = b->fn;
    free(b);
    v->m->pending--;
    if (v->m->stopping) {
        mv_free(v);
        return;
    }
    if (err) {
        mv_fail(v, "data key", "the workspace's data key is not available");
        return;
    }
    header(v, "begin");
    core_buf_appendf(&v->msg, ",\"kind\":\"%s\"", v->standby ? "standby" : "move");
    /* The target holds the key from the start: a standby must be able to
     * serve once promoted, when this region may be gone. The target's key id
     * is learnt from its first answer; the first begin goes without. */
    if (key->has_dk && v->target_kid[0] && put_sealed_dk(v, key, v->target_kid) != 0) {
        mv_fail(v, "seal", "the target's key (kid) is not in the world file");
        return;
    }
    core_buf_puts(&v->msg, "}\n");
    to_target(v, "begin", fn);
}

/* Sends "begin" (idempotent at the target) with the sealed data key. */
static void begin_with_key(mv_t *v, reply_fn fn)
{
    begin_t *b = core_xcalloc(1, sizeof *b);
    b->v = v;
    b->fn = fn;
    v->m->pending++;
    if (rg_keys_get(v->m->w, v->ws, v->shard, on_begin_key, b) != 0) {
        free(b);
        v->m->pending--;
        mv_fail(v, "data key", "the workspace's data key is not available");
    }
}

static void send_begin(mv_t *v)
{
    begin_with_key(v, on_begun);
}

/* ---- catching up: the copy ---- */

static void export_chunk(mv_t *v);

/* Saves the cursor (and the lease) after an acknowledged chunk. */
static void save_cursor(mv_t *v, int64_t rows)
{
    char table[12], rows_s[24];
    snprintf(table, sizeof table, "%d", v->copy_table);
    snprintf(rows_s, sizeof rows_s, "%lld", (long long)rows);
    const char *tname = v->copy_table < NTABLES ? TABLES[v->copy_table].name : "-";
    const char *params[] = {v->id,  table, v->last_key[0] ? v->last_key : NULL,
                            rows_s, tname, v->m->owner};
    mv_query(v,
             "UPDATE moves SET copy_table = $2::int, copy_key = $3::jsonb,"
             " done_rows = done_rows + $4::bigint, updated_at = now(),"
             " copied = CASE WHEN $5 = '-' THEN copied ELSE jsonb_set(copied, ARRAY[$5],"
             "   to_jsonb(coalesce((copied->>$5)::bigint, 0) + $4::bigint)) END,"
             " lease_until = now() + " LEASE
             " WHERE id = $1 AND lease_owner = $6 AND state = 'catching_up' RETURNING 1",
             6, params, on_saved);
}

static void on_loaded(mv_t *v, const core_json_t *reply)
{
    (void)reply;
    core_metrics_add(v->m->m_steps, 1);
    save_cursor(v, v->last_rows);
}

/* Parses a JSON array of strings (a keyset cursor) into v->copy_key. */
static int parse_key(mv_t *v, const char *json)
{
    v->nkey = 0;
    if (!json || !*json)
        return 0;
    core_json_doc_t *doc = NULL;
    char err[64];
    static const core_json_limits_t lim = {.max_depth = 2};
    if (core_json_parse(json, strlen(json), &lim, &doc, err, sizeof err) != 0)
        return -1;
    const core_json_t *a = core_json_root(doc);
    if (a->type != CORE_JSON_ARRAY || a->u.kids.n > 3) {
        core_json_free(doc);
        return -1;
    }
    for (size_t i = 0; i < a->u.kids.n; i++) {
        const core_json_t *s = a->u.kids.items[i];
        if (s->type != CORE_JSON_STRING)
            break;
        snprintf(v->copy_key[i], sizeof v->copy_key[i], "%s", s->u.str.s);
        v->nkey++;
    }
    core_json_free(doc);
    return 0;
}

static void on_exported(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "export"))
        return;
    int64_t n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    const char *rows = PQgetvalue(res, 0, 1);
    size_t len = (size_t)PQgetlength(res, 0, 1);
    if (n == 0) {
        /* This table is done: the next one from its start. */
        v->copy_table++;
        v->last_key[0] = '\0';
        v->nkey = 0;
        v->limit = CHUNK_ROWS;
        save_cursor(v, 0);
        return;
    }
    if (len > PAYLOAD_MAX && v->limit > 1) {
        v->limit /= 2;
        export_chunk(v);
        return;
    }
    snprintf(v->last_key, sizeof v->last_key, "%s", PQgetvalue(res, 0, 2));
    parse_key(v, v->last_key);
    v->last_rows = n;
    header(v, "load");
    core_buf_appendf(&v->msg, ",\"table\":\"%s\"}\n", TABLES[v->copy_table].name);
    core_buf_append(&v->msg, rows, len);
    to_target(v, "load", on_loaded);
}

static void export_chunk(mv_t *v)
{
    const table_t *t = &TABLES[v->copy_table];
    char limit[12], base[24], sql[1024];
    snprintf(limit, sizeof limit, "%d", v->limit);
    snprintf(base, sizeof base, "%lld", (long long)v->base_seq);
    const char *params[6] = {v->ws};
    int n = 1;
    if (v->copy_table == T_OUTBOX) {
        params[n++] = v->nkey >= 1 ? v->copy_key[0] : "0";
        params[n++] = base;
    } else {
        for (int i = 0; i < t->nkeys; i++)
            params[n++] = v->nkey > i && v->copy_table != T_WORKSPACES ? v->copy_key[i] : "";
        if (v->copy_table == T_WORKSPACES && v->nkey > 0)
            params[1] = "-"; /* copied: the statement then matches nothing */
    }
    params[n++] = limit;
    snprintf(sql, sizeof sql, "%s", t->sql);
    mv_query(v, sql, n, params, on_exported);
}

/* ---- catching up: deltas ---- */

static void delta_step(mv_t *v);
static void delta_done(mv_t *v);

static void on_delta_loaded(mv_t *v, const core_json_t *reply)
{
    (void)reply;
    core_metrics_add(v->m->m_steps, 1);
    delta_step(v);
}

static void next_phase(mv_t *v)
{
    v->dphase++;
    v->nkey = 0;
    v->replace_first = v->dphase == D_CHANNEL_MEMBERS;
}

static void on_delta_exported(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "delta export"))
        return;
    int64_t n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    const char *rows = PQgetvalue(res, 0, 1);
    size_t len = (size_t)PQgetlength(res, 0, 1);
    const char *table = "workspaces", *col = NULL, *keys = NULL;
    bool keyset = true, advance = false;
    switch (v->dphase) {
    case D_WS:
        keyset = false;
        advance = true;
        break;
    case D_MEMBERS:
        table = "members";
        break;
    case D_CHANNELS:
        table = "channels";
        break;
    case D_CHANNEL_MEMBERS:
        table = "channel_members";
        if (v->replace_first)
            col = "*"; /* the first chunk replaces the target's whole set */
        break;
    case D_IDS:
        keyset = false;
        table = v->reactions_next ? "reactions" : "messages";
        if (v->reactions_next) {
            col = "message_id"; /* the reactions of these messages, whole */
            keys = v->chunk_ids;
        }
        v->reactions_next = !v->reactions_next;
        break;
    case D_OUTBOX:
        table = "outbox";
        break;
    case D_DONE:
        delta_done(v);
        return;
    }
    if (keyset) {
        if (n == 0 && !col) {
            next_phase(v);
            delta_step(v);
            return;
        }
        if (n > 0)
            parse_key(v, PQgetvalue(res, 0, 2));
        else
            advance = true; /* an empty set still clears the target's */
    }
    if (col && strcmp(col, "*") == 0)
        v->replace_first = false;
    if (advance)
        next_phase(v);
    header(v, "load");
    core_buf_appendf(&v->msg, ",\"table\":\"%s\"", table);
    if (col)
        core_buf_appendf(&v->msg, ",\"replace\":\"%s\"", col);
    if (keys)
        core_buf_appendf(&v->msg, ",\"keys\":\"{%s}\"", keys);
    core_buf_puts(&v->msg, "}\n");
    core_buf_append(&v->msg, rows, len);
    to_target(v, "delta", on_delta_loaded);
}

/* Takes the next chunk of touched message ids into v->chunk_ids. */
static bool next_ids(mv_t *v)
{
    if (!v->ids || !v->ids[v->ids_off])
        return false;
    const char *p = v->ids + v->ids_off;
    size_t len = 0;
    int k = 0;
    while (p[len] && k < IDS_PER_CHUNK) {
        size_t n = strcspn(p + len, ",");
        len += n;
        k++;
        if (p[len] == ',' && k < IDS_PER_CHUNK)
            len++;
    }
    if (len > 0 && p[len - 1] == ',')
        len--;
    if (len >= sizeof v->chunk_ids)
        len = sizeof v->chunk_ids - 1;
    memcpy(v->chunk_ids, p, len);
    v->chunk_ids[len] = '\0';
    v->ids_off += len;
    if (v->ids[v->ids_off] == ',')
        v->ids_off++;
    return true;
}

/* One statement of the round, by phase. */
static void delta_step(mv_t *v)
{
    char limit[12], lo[24], hi[24], ids[IDS_PER_CHUNK * 40 + 4];
    snprintf(limit, sizeof limit, "%d", CHUNK_ROWS);
    snprintf(lo, sizeof lo, "%lld", (long long)v->dlo);
    snprintf(hi, sizeof hi, "%lld", (long long)v->dhi);
    const char *p[6] = {v->ws};
    switch (v->dphase) {
    case D_WS:
        p[1] = "";
        p[2] = limit;
        mv_query(v, TABLES[T_WORKSPACES].sql, 3, p, on_delta_exported);
        return;
    case D_MEMBERS:
        p[1] = v->nkey ? v->copy_key[0] : "";
        p[2] = limit;
        mv_query(v, TABLES[T_MEMBERS].sql, 3, p, on_delta_exported);
        return;
    case D_CHANNELS:
        p[1] = v->nkey ? v->copy_key[0] : "";
        p[2] = limit;
        mv_query(v, TABLES[T_CHANNELS].sql, 3, p, on_delta_exported);
        return;
    case D_CHANNEL_MEMBERS:
        p[1] = v->nkey ? v->copy_key[0] : "";
        p[2] = v->nkey > 1 ? v->copy_key[1] : "";
        p[3] = limit;
        mv_query(v, TABLES[T_CHANNEL_MEMBERS].sql, 4, p, on_delta_exported);
        return;
    case D_IDS:
        if (!v->reactions_next && !next_ids(v)) {
            v->dphase = D_OUTBOX;
            v->nkey = 0;
            delta_step(v);
            return;
        }
        snprintf(ids, sizeof ids, "{%s}", v->chunk_ids);
        p[1] = ids;
        mv_query(v,
                 v->reactions_next ? "WITH t AS (SELECT * FROM reactions WHERE workspace_id = $1"
                                     " AND message_id = ANY ($2::text[])) SELECT count(*),"
                                     " coalesce(jsonb_agg(to_jsonb(t)), '[]')::text, NULL FROM t"
                                   : "WITH t AS (SELECT * FROM messages WHERE workspace_id = $1"
                                     " AND id = ANY ($2::text[])) SELECT count(*),"
                                     " coalesce(jsonb_agg(to_jsonb(t)), '[]')::text, NULL FROM t",
                 2, p, on_delta_exported);
        return;
    case D_OUTBOX:
        p[1] = v->nkey ? v->copy_key[0] : lo;
        p[2] = hi;
        p[3] = limit;
        mv_query(v, TABLES[T_OUTBOX].sql, 4, p, on_delta_exported);
        return;
    case D_DONE:
        delta_done(v);
        return;
    }
}

static void on_touched(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "delta ids"))
        return;
    free(v->ids);
    v->ids = core_xstrdup(PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0));
    v->ids_off = 0;
    v->dphase = D_WS;
    v->nkey = 0;
    v->reactions_next = false;
    v->replace_first = false;
    delta_step(v);
}

/* Re-sends what the events in (lo, hi] touched, and the small tables whole. */
static void delta_round(mv_t *v, int64_t lo, int64_t hi)
{
    v->dlo = lo;
    v->dhi = hi;
    char los[24], his[24];
    snprintf(los, sizeof los, "%lld", (long long)lo);
    snprintf(his, sizeof his, "%lld", (long long)hi);
    const char *p[] = {v->ws, los, his};
    mv_query(v,
             "SELECT string_agg(DISTINCT x.id, ',') FROM outbox o, LATERAL (VALUES"
             " (o.payload->>'id'), (o.payload->>'parent_id'), (o.payload->>'message_id')) x(id)"
             " WHERE o.workspace_id = $1 AND o.seq > $2::bigint AND o.seq <= $3::bigint"
             " AND (o.type LIKE 'message.%' OR o.type LIKE 'reaction.%') AND x.id IS NOT NULL",
             3, p, on_touched);
}

static void commit_at_target(mv_t *v);
static void flip(mv_t *v);

static void delta_done(mv_t *v)
{
    if (v->state == ST_FROZEN) {
        commit_at_target(v);
        return;
    }
    v->caught_seq = v->dhi;
    v->rounds++;
    char seq[24];
    snprintf(seq, sizeof seq, "%lld", (long long)v->caught_seq);
    const char *p[] = {v->id, seq, v->m->owner};
    mv_query(v,
             "UPDATE moves SET caught_seq = $2::bigint, updated_at = now(),"
             " lease_until = now() + " LEASE
             " WHERE id = $1 AND lease_owner = $3 AND state = 'catching_up' RETURNING 1",
             3, p, on_saved);
}

static void on_head(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_saved(v, res, err, errmsg, "head"))
        return;
    int64_t head = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (v->state == ST_FROZEN) {
        /* Under the fence the head cannot move. */
        v->final_seq = head;
        if (strcmp(v->target_state, "committed") == 0)
            flip(v);
        else
            delta_round(v, v->caught_seq, head);
        return;
    }
    if (v->standby) {
        /* A standby follows: nothing new, and the next tick looks again. */
        if (head > v->caught_seq)
            delta_round(v, v->caught_seq, head);
        else
            mv_free(v);
        return;
    }
    if (head - v->caught_seq > FREEZE_AT && v->rounds < DELTA_ROUNDS) {
        delta_round(v, v->caught_seq, head);
        return;
    }
    /* Few events left: the write fence goes up with the state change. */
    const char *p[] = {v->id, v->ws, v->target, v->m->owner};
    v->next_state = ST_FROZEN;
    mv_query(v,
             "WITH m AS (UPDATE moves SET state = 'frozen', updated_at = now(),"
             "   lease_until = now() + " LEASE ","
             "   steps = steps || jsonb_build_object('catch_up', steps->'catch_up'"
             "     || jsonb_build_object('finished_at', now()), 'freeze',"
             "     jsonb_build_object('started_at', now()))"
             "   WHERE id = $1 AND lease_owner = $4 AND state = 'catching_up' RETURNING 1),"
             " w AS (UPDATE workspaces SET moving_to = $3 WHERE id = $2"
             "   AND EXISTS (SELECT 1 FROM m) RETURNING 1)"
             " SELECT 1 FROM m, w",
             4, p, on_saved);
}

static void read_head(mv_t *v)
{
    const char *p[] = {v->ws};
    mv_query(v, "SELECT seq FROM workspaces WHERE id = $1", 1, p, on_head);
}

/* ---- frozen: commit at the target, then the flip here ---- */

static void notice(rg_worker_t *w, const char *region, const char *ws)
{
    char subject[96];
    snprintf(subject, sizeof subject, "mv.%s.moved", region);
    core_nats_publish(w->nats, subject, ws, strlen(ws));
}

static void on_flipped(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_saved(v, res, err, errmsg, "flip"))
        return;
    v->state = ST_FLIPPED;
    notice(v->m->w, v->source, v->ws);
    core_log_info("move.cut_over", "move=%s workspace=%s target=%s freeze_ms=%s", v->id, v->ws,
                  v->target, PQgetvalue(res, 0, 0));
    /* The other shards' copies of the directory row, at once (the relay's
     * copy reaches every other region). Best effort: the fence covers a
     * lookup that still finds the old row. */
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%lld", (long long)(v->epoch_before + 1));
    const char *p[] = {v->ws, v->target, epoch, v->allowed_after};
    for (int i = 0; i < v->m->w->nshards; i++)
        if (i != v->shard)
            core_pg_query(v->m->w->shards[i],
                          "UPDATE dir_workspaces SET home_region = $2, epoch = $3::bigint,"
                          " allowed_regions = $4::text[], pinned = false, shard = -1,"
                          " updated_at = now() WHERE workspace_id = $1 AND epoch < $3::bigint",
                          4, p, NULL, NULL, NULL, NULL);
    audit_then_dispatch(v, "move_cut_over");
}

static void flip(mv_t *v)
{
    char epoch[24], seq[24];
    snprintf(epoch, sizeof epoch, "%lld", (long long)(v->epoch_before + 1));
    snprintf(seq, sizeof seq, "%lld", (long long)v->final_seq);
    const char *p[] = {v->id, v->ws, v->target, epoch, v->allowed_after, seq, v->m->owner};
    mv_query(v,
             "WITH m AS (UPDATE moves SET state = 'flipped', updated_at = now(),"
             "   lease_until = now() + " LEASE ", final_seq = $6::bigint,"
             "   freeze_ms = (extract(epoch FROM now() - (steps->'freeze'->>'started_at')"
             "     ::timestamptz) * 1000)::bigint,"
             "   steps = steps || jsonb_build_object('freeze', steps->'freeze'"
             "     || jsonb_build_object('finished_at', now()), 'flip',"
             "     jsonb_build_object('started_at', now(), 'finished_at', now()))"
             "   WHERE id = $1 AND lease_owner = $7 AND state = 'frozen' RETURNING freeze_ms),"
             " d AS (UPDATE dir_workspaces SET home_region = $3, epoch = $4::bigint,"
             "   allowed_regions = $5::text[], pinned = false, updated_at = now()"
             "   WHERE workspace_id = $2 AND epoch < $4::bigint AND EXISTS (SELECT 1 FROM m)"
             "   RETURNING 1),"
             " o AS (INSERT INTO dir_outbox (kind, id, body) SELECT 'workspace', $2,"
             "   jsonb_build_object('home_region', $3, 'allowed_regions', $5::text[],"
             "   'epoch', $4::bigint, 'pinned', false) FROM d RETURNING 1)"
             " SELECT freeze_ms FROM m",
             7, p, on_flipped);
}

static void on_committed(mv_t *v, const core_json_t *reply)
{
    (void)reply;
    flip(v);
}

/* The target region's X25519 key: its Ed25519 token key of kid (the world
 * file vouches for it), converted. */
static int target_box_pk(const rg_worker_t *w, const char *region, const char *kid,
                         uint8_t out[crypto_box_PUBLICKEYBYTES])
{
    const res_region_t *r = res_world_region(w->world, region);
    for (size_t j = 0; r && j < r->ntoken_keys; j++) {
        core_auth_pubkey_t pk;
        if (core_auth_pubkey_parse(&pk, r->token_keys[j], strlen(r->token_keys[j])) == 0 &&
            strcmp(pk.kid, kid) == 0)
            return crypto_sign_ed25519_pk_to_curve25519(out, pk.pk) == 0 ? 0 : -1;
    }
    return -1;
}

static void on_dk(int err, const rg_key_t *key, void *ud)
{
    mv_t *v = ud;
    v->m->pending--;
    if (v->m->stopping) {
        mv_free(v);
        return;
    }
    if (err) {
        mv_fail(v, "data key", "the workspace's data key is not available");
        return;
    }
    header(v, "commit");
    core_buf_appendf(&v->msg, ",\"final_seq\":%lld,\"epoch\":%lld,\"allowed\":\"%s\"",
                     (long long)v->final_seq, (long long)(v->epoch_before + 1), v->allowed_after);
    /* Sealed to the target region's key: only the target opens it, and
     * nothing on the way (NATS, logs) sees the data key. */
    if (key->has_dk && put_sealed_dk(v, key, v->target_kid) != 0) {
        mv_fail(v, "seal", "the target's key (kid) is not in the world file");
        return;
    }
    core_buf_puts(&v->msg, "}\n");
    to_target(v, "commit", on_committed);
}

static void commit_at_target(mv_t *v)
{
    v->m->pending++;
    int rc = rg_keys_get(v->m->w, v->ws, v->shard, on_dk, v);
    if (rc) {
        v->m->pending--;
        mv_fail(v, "data key", "the workspace's data key is not available");
    }
}

/* The frozen step after a crash: a target that already committed is the
 * home; re-sending rows to it would overwrite its newer writes. */
static void on_frozen_begun(mv_t *v, const core_json_t *reply)
{
    const char *st = "", *kid = "";
    core_json_get_str(reply, "state", &st);
    core_json_get_str(reply, "kid", &kid);
    snprintf(v->target_state, sizeof v->target_state, "%s", st);
    snprintf(v->target_kid, sizeof v->target_kid, "%s", kid);
    read_head(v);
}

/* ---- purge and shred ---- */

static void on_purged_chunk(const PGresult *res, int err, const char *errmsg, void *ud);

static void purge_next(mv_t *v)
{
    char lim[12];
    snprintf(lim, sizeof lim, "%d", PURGE_CHUNK);
    const char *p[] = {v->id, v->ws, lim, v->m->owner};
    mv_query(
        v,
        "WITH x AS (SELECT * FROM move_purge($2, $3::int)),"
        " m AS (UPDATE moves SET updated_at = now(), lease_until = now() + " LEASE ","
        "   purged = purged || (SELECT jsonb_object_agg(tbl, coalesce((purged->>tbl)::bigint, 0)"
        "     + n) FROM x)"
        "   WHERE id = $1 AND lease_owner = $4 AND EXISTS (SELECT 1 FROM x) RETURNING 1)"
        " SELECT tbl, n, (SELECT count(*) FROM m) FROM x",
        4, p, on_purged_chunk);
}

static void on_redis_purged(const redisReply *reply, int err, void *ud)
{
    (void)reply;
    (void)err;
    (void)ud;
}

static void on_purge_done(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "purge done"))
        return;
    v->state = ST_SHREDDING;
    audit_then_dispatch(v, "move_purged");
}

static void on_purged_chunk(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "purge"))
        return;
    if (PQntuples(res) > 0) {
        v->purged_total += strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        purge_next(v);
        return;
    }
    /* Rows are gone: the stream messages and Redis keys too (both
     * idempotent, redone by a resumed purge). */
    rg_worker_t *w = v->m->w;
    char stream[64], subject[200], pattern[100];
    snprintf(stream, sizeof stream, "EV_%s", v->source);
    snprintf(subject, sizeof subject, "ev.%s.*.%s.>", v->source, v->ws);
    if (w->nats)
        repl_purge(w->nats, stream, subject);
    snprintf(stream, sizeof stream, "IN_%s", v->source);
    snprintf(subject, sizeof subject, "ev.*.%s.%s.>", v->source, v->ws);
    if (w->nats)
        repl_purge(w->nats, stream, subject);
    snprintf(pattern, sizeof pattern, "*{%s}*", v->ws);
    if (w->redis)
        core_redis_command(w->redis, on_redis_purged, NULL, "EVAL %s 0 %s",
                           "local c='0' local n=0 repeat local r=redis.call('SCAN',c,'MATCH',"
                           "ARGV[1],'COUNT',1000) c=r[1] for _,k in ipairs(r[2]) do "
                           "redis.call('DEL',k) n=n+1 end until c=='0' return n",
                           pattern);
    const char *p[] = {v->id, v->m->owner};
    mv_query(v,
             "UPDATE moves SET state = 'shredding', updated_at = now(),"
             " lease_until = now() + " LEASE ","
             " steps = steps || jsonb_build_object('purge', steps->'purge'"
             "   || jsonb_build_object('finished_at', now()), 'shred',"
             "   jsonb_build_object('started_at', now()))"
             " WHERE id = $1 AND lease_owner = $2 AND state = 'purging' RETURNING 1",
             2, p, on_purge_done);
}

static void on_report_saved(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "report"))
        return;
    v->state = ST_DONE;
    v->synced = false;
    core_log_info("move.done", "move=%s workspace=%s target=%s", v->id, v->ws, v->target);
    audit_then_dispatch(v, "move_completed");
}

/* The report: what moved, each step's times, what the source purged and
 * what is left of the workspace here (every count must be 0), signed with
 * the region's key over the exact text. */
static void on_left(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "report"))
        return;
    const char *text = PQgetvalue(res, 0, 0);
    uint8_t sig[64];
    crypto_sign_detached(sig, NULL, (const unsigned char *)text, strlen(text), v->m->w->keys->sk);
    char sig_hex[129];
    sodium_bin2hex(sig_hex, sizeof sig_hex, sig, sizeof sig);
    const char *p[] = {v->id, text, sig_hex, v->m->w->keys->pub.kid, v->m->owner};
    mv_query(v,
             "UPDATE moves SET state = 'done', updated_at = now(), synced = false,"
             " report_text = $2, report_sig = decode($3, 'hex'), report_kid = $4,"
             " steps = steps || jsonb_build_object('shred', steps->'shred'"
             "   || jsonb_build_object('finished_at', now()))"
             " WHERE id = $1 AND lease_owner = $5 AND state = 'shredding' RETURNING 1",
             5, p, on_report_saved);
}

static void on_vacuumed(const PGresult *res, int err, const char *errmsg, void *ud)
{
    (void)errmsg;
    (void)ud;
    if (err)
        core_log_warn("move.vacuum_failed", "error=%s", core_pg_errcode(res, err));
}

static void on_shredded(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "shred"))
        return;
    v->shredded = true;
    /* The deleted row's bytes stay in the heap file until it is rewritten:
     * rewrite the (small) key table now. Best effort; WAL segments and
     * backups keep a wrapped copy until the master key that wraps it is
     * rotated away (docs/encryption.md). */
    core_pg_query(v->m->w->shards[v->shard], "VACUUM (FULL) workspace_keys", 0, NULL, NULL,
                  on_vacuumed, NULL, NULL);
    rg_keys_forget(v->ws);
    notice(v->m->w, v->source, v->ws);
    audit_then_dispatch(v, "move_key_destroyed");
}

static void build_report(mv_t *v)
{
    /* Build the report in SQL: counts and times come from the row and the
     * tables themselves. */
    const char *p[] = {v->id, v->ws};
    mv_query(v,
             "SELECT jsonb_build_object('v', 1, 'move_id', m.id, 'workspace_id', m.workspace_id,"
             " 'source_region', m.source_region, 'target_region', m.target_region,"
             " 'epoch_before', m.epoch_before, 'epoch_after', m.epoch_before + 1,"
             " 'final_seq', m.final_seq, 'copied', m.copied, 'freeze_ms', m.freeze_ms,"
             " 'steps', m.steps, 'purged', m.purged, 'key_destroyed',"
             "   NOT EXISTS (SELECT 1 FROM workspace_keys k WHERE k.workspace_id = $2),"
             " 'left_at_source', jsonb_build_object("
             "   'workspaces', (SELECT count(*) FROM workspaces WHERE id = $2),"
             "   'members', (SELECT count(*) FROM members WHERE workspace_id = $2),"
             "   'channels', (SELECT count(*) FROM channels WHERE workspace_id = $2),"
             "   'channel_members', (SELECT count(*) FROM channel_members WHERE workspace_id = $2),"
             "   'messages', (SELECT count(*) FROM messages WHERE workspace_id = $2),"
             "   'reactions', (SELECT count(*) FROM reactions WHERE workspace_id = $2),"
             "   'outbox', (SELECT count(*) FROM outbox WHERE workspace_id = $2),"
             "   'workspace_keys', (SELECT count(*) FROM workspace_keys WHERE workspace_id = $2)),"
             " 'signed_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))"
             "::text FROM moves m WHERE m.id = $1",
             2, p, on_left);
}

static void on_shred_audited(mv_t *v)
{
    const char *p[] = {v->ws};
    mv_query(v, rg_keys_destroy_sql, 1, p, on_shredded);
}

/* ---- after the end: the target's copy of the status ---- */

static void on_synced_saved(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "sync"))
        return;
    mv_free(v);
}

static void on_synced(mv_t *v, const core_json_t *reply)
{
    (void)reply;
    const char *p[] = {v->id};
    mv_query(v, "UPDATE moves SET synced = true WHERE id = $1", 1, p, on_synced_saved);
}

static void on_status_read(const PGresult *res, int err, const char *errmsg, void *ud)
{
    mv_t *v = ud;
    if (!mv_ok(v, res, err, errmsg, "status"))
        return;
    header(v, v->state == ST_CANCELLED ? "abort" : "status");
    core_buf_puts(&v->msg, "}\n");
    core_buf_append(&v->msg, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    to_target(v, "sync", on_synced);
}

static void sync_target(mv_t *v)
{
    const char *p[] = {v->id};
    mv_query(v,
             "SELECT jsonb_build_object('status', move_status(m), 'report_text', m.report_text,"
             " 'signature', encode(m.report_sig, 'hex'), 'key_id', m.report_kid,"
             " 'region', m.source_region)::text FROM moves m WHERE m.id = $1",
             1, p, on_status_read);
}

/* ---- the state machine ---- */

static void on_shred_started(mv_t *v)
{
    if (v->shredded)
        build_report(v);
    else
        on_shred_audited(v);
}

static void dispatch(mv_t *v)
{
    if (v->m->stopping) {
        mv_free(v);
        return;
    }
    maybe_crash(STATE_NAME[v->state]);
    v->next_state = v->state; /* a saved cursor keeps the state */
    switch (v->state) {
    case ST_SCHEDULED:
        send_begin(v);
        return;
    case ST_CATCHING_UP:
        if (v->copy_table < NTABLES) {
            export_chunk(v);
            return;
        }
        read_head(v);
        return;
    case ST_FROZEN:
        begin_with_key(v, on_frozen_begun);
        return;
    case ST_FLIPPED: {
        const char *p[] = {v->id, v->m->owner};
        v->next_state = ST_PURGING;
        mv_query(v,
                 "UPDATE moves SET state = 'purging', updated_at = now(),"
                 " lease_until = now() + " LEASE ","
                 " steps = steps || jsonb_build_object('purge', jsonb_build_object('started_at',"
                 "   now()))"
                 " WHERE id = $1 AND lease_owner = $2 AND state = 'flipped' RETURNING 1",
                 2, p, on_saved);
        return;
    }
    case ST_PURGING:
        purge_next(v);
        return;
    case ST_SHREDDING:
        on_shred_started(v);
        return;
    case ST_DONE:
    case ST_CANCELLED:
        if (!v->synced) {
            sync_target(v);
            return;
        }
        mv_free(v);
        return;
    case NSTATES:
        break;
    }
    mv_free(v);
}

/* ---- claiming moves ---- */

typedef struct {
    rg_move_t *m;
    int shard;
} claim_t;

static void take_claimed(rg_move_t *m, int shard, const PGresult *res, int i)
{
    const char *id = PQgetvalue(res, i, 0);
    if (core_map_get(m->driving, id))
        return;
    mv_t *v = core_xcalloc(1, sizeof *v);
    v->m = m;
    v->shard = shard;
    snprintf(v->id, sizeof v->id, "%s", id);
    snprintf(v->ws, sizeof v->ws, "%s", PQgetvalue(res, i, 1));
    snprintf(v->source, sizeof v->source, "%s", PQgetvalue(res, i, 2));
    snprintf(v->target, sizeof v->target, "%s", PQgetvalue(res, i, 3));
    v->state = state_of(PQgetvalue(res, i, 4));
    v->copy_table = atoi(PQgetvalue(res, i, 5));
    v->base_seq = PQgetisnull(res, i, 7) ? 0 : strtoll(PQgetvalue(res, i, 7), NULL, 10);
    v->caught_seq = PQgetisnull(res, i, 8) ? v->base_seq : strtoll(PQgetvalue(res, i, 8), NULL, 10);
    v->epoch_before = PQgetisnull(res, i, 9) ? 0 : strtoll(PQgetvalue(res, i, 9), NULL, 10);
    snprintf(v->allowed_after, sizeof v->allowed_after, "%s",
             PQgetisnull(res, i, 10) ? "{}" : PQgetvalue(res, i, 10));
    v->final_seq = PQgetisnull(res, i, 11) ? 0 : strtoll(PQgetvalue(res, i, 11), NULL, 10);
    v->synced = PQgetvalue(res, i, 12)[0] == 't';
    v->standby = strcmp(PQgetvalue(res, i, 13), "standby") == 0;
    v->limit = CHUNK_ROWS;
    core_buf_init(&v->msg);
    if (!PQgetisnull(res, i, 6) && parse_key(v, PQgetvalue(res, i, 6)) != 0)
        v->nkey = 0;
    core_map_put(m->driving, v->id, v);
    if (!v->standby || v->state != ST_CATCHING_UP)
        core_log_info("move.resume", "move=%s workspace=%s state=%s", v->id, v->ws,
                      STATE_NAME[v->state]);
    /* A standby catching up learns the target's key id first (its begin
     * carries the data key), then follows. */
    if (v->standby && v->state == ST_CATCHING_UP && !v->target_kid[0]) {
        begin_with_key(v, on_begun);
        return;
    }
    dispatch(v);
}

static void on_claimed(const PGresult *res, int err, const char *errmsg, void *ud)
{
    claim_t *c = ud;
    rg_move_t *m = c->m;
    int shard = c->shard;
    free(c);
    m->pending--;
    (void)errmsg;
    if (m->stopping || err) {
        maybe_free(m);
        return;
    }
    for (int i = 0; i < PQntuples(res) && !m->stopping; i++)
        take_claimed(m, shard, res, i);
}

static void put_id(const char *key, void *val, void *ud)
{
    (void)val;
    core_buf_t *b = ud;
    if (b->len > 1)
        core_buf_putc(b, ',');
    core_buf_puts(b, key);
}

static void claim(rg_move_t *m, int shard)
{
    /* Moves this node drives already are left out by id. */
    core_buf_t ids;
    core_buf_init(&ids);
    core_buf_putc(&ids, '{');
    core_map_each(m->driving, put_id, &ids);
    core_buf_putc(&ids, '}');
    const char *p[] = {m->owner, core_buf_cstr(&ids)};
    claim_t *c = core_xcalloc(1, sizeof *c);
    c->m = m;
    c->shard = shard;
    int rc = core_pg_query(
        m->w->shards[shard],
        "UPDATE moves SET lease_owner = $1, lease_until = now() + " LEASE
        " WHERE id IN (SELECT id FROM moves WHERE ((state NOT IN ('done', 'cancelled')"
        "   AND coalesce(not_before, '-infinity') <= now()) OR (state IN ('done', 'cancelled')"
        "   AND NOT synced)) AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1)"
        "   AND NOT (id = ANY ($2::uuid[])) ORDER BY created_at LIMIT 8 FOR UPDATE SKIP LOCKED)"
        " RETURNING id, workspace_id, source_region, target_region, state, copy_table,"
        "   copy_key::text, base_seq, caught_seq, epoch_before, allowed_after::text, final_seq,"
        "   synced, kind",
        2, p, NULL, on_claimed, c, NULL);
    core_buf_free(&ids);
    if (rc) {
        free(c);
        return;
    }
    m->pending++;
}

static void on_tick(uv_timer_t *t)
{
    rg_move_t *m = t->data;
    if (m->stopping)
        return;
    for (int i = 0; i < m->w->nshards; i++)
        claim(m, i);
}

/* ---- the server for moves into this region ---- */

typedef struct {
    rg_move_t *m;
    char reply[128];
    char op[16];
    char move[40];
    char ws[72];
    char source[33];
    int shard;
    char epoch[24];    /* commit: the new epoch */
    char allowed[400]; /* commit: the policy after the move (text[] literal) */
} serve_t;

static void answer(rg_move_t *m, const char *reply, const char *json)
{
    core_nats_publish(m->w->nats, reply, json, strlen(json));
}

static void serve_done(serve_t *s, const char *json)
{
    s->m->pending--;
    if (!s->m->stopping)
        answer(s->m, s->reply, json);
    core_metrics_add(s->m->m_served, 1);
    rg_move_t *m = s->m;
    free(s);
    maybe_free(m);
}

static void on_received_audited(void *ud, int err)
{
    (void)ud;
    if (err)
        core_log_warn("move.audit_failed", "action=move_received error=%d", err);
}

static void on_served(const PGresult *res, int err, const char *errmsg, void *ud)
{
    serve_t *s = ud;
    if (err) {
        char msg[256];
        core_log_warn("move.serve_failed", "op=%s move=%s workspace=%s error=\"%.160s\"", s->op,
                      s->move, s->ws, core_pg_errcode(res, err));
        snprintf(msg, sizeof msg, "{\"error\":\"%s failed at the target\"}", s->op);
        serve_done(s, msg);
        return;
    }
    char out[256], point[32];
    snprintf(point, sizeof point, "target-%s", s->op);
    maybe_crash(point);
    const char *st = PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : "";
    if (strcmp(s->op, "load") == 0 && strcmp(st, "loading") != 0) {
        snprintf(out, sizeof out, "{\"error\":\"the move is %s here\"}", *st ? st : "unknown");
        serve_done(s, out);
        return;
    }
    if (strcmp(s->op, "commit") == 0 && strcmp(st, "committed") == 0) {
        notice(s->m->w, s->m->w->cfg->region, s->ws);
        rg_dir_forget(s->m->w->dir, RG_DIR_WORKSPACE, s->ws);
        /* The target's own chain records what it received (once per move:
         * a repeated commit finds the entry). */
        rg_audit_entry_t e = {.shard = s->shard,
                              .workspace_id = s->ws,
                              .action = "move_received",
                              .actor = "meridian-region",
                              .actor_as = "system",
                              .move_id = s->move};
        rg_audit_append(s->m->w, &e, on_received_audited, NULL);
        rg_move_drop_replica(s->m->w, s->ws, s->shard);
        /* Every other shard's copy of the directory row learns where the
         * workspace lives now (the lookup also prefers a placed copy). */
        char shard_s[8];
        snprintf(shard_s, sizeof shard_s, "%d", s->shard);
        const char *p[] = {s->ws, shard_s, s->m->w->cfg->region, s->epoch, s->allowed};
        for (int i = 0; i < s->m->w->nshards; i++)
            if (i != s->shard)
                core_pg_query(s->m->w->shards[i],
                              "INSERT INTO dir_workspaces AS d (workspace_id, shard, home_region,"
                              " epoch, allowed_regions, pinned)"
                              " VALUES ($1, $2::int, $3, $4::bigint, $5::text[], false)"
                              " ON CONFLICT (workspace_id) DO UPDATE SET shard = EXCLUDED.shard,"
                              " home_region = EXCLUDED.home_region, epoch = EXCLUDED.epoch,"
                              " allowed_regions = EXCLUDED.allowed_regions, pinned = false,"
                              " updated_at = now() WHERE d.epoch <= EXCLUDED.epoch",
                              5, p, NULL, NULL, NULL, NULL);
        core_log_info("move.received", "move=%s workspace=%s source=%s", s->move, s->ws, s->source);
    }
    if (strcmp(s->op, "status") == 0)
        rg_move_drop_replica(s->m->w, s->ws, s->shard);
    if (strcmp(s->op, "commit") == 0 && strcmp(st, "committed") != 0) {
        snprintf(out, sizeof out, "{\"error\":\"the move is %s here\"}", *st ? st : "unknown");
        serve_done(s, out);
        return;
    }
    snprintf(out, sizeof out, "{\"state\":\"%s\",\"shard\":%d,\"kid\":\"%s\"}", st, s->shard,
             s->m->w->keys->pub.kid);
    serve_done(s, out);
}

static void on_abort_chunk(const PGresult *res, int err, const char *errmsg, void *ud);

static void abort_next(serve_t *s)
{
    char lim[12];
    snprintf(lim, sizeof lim, "%d", PURGE_CHUNK);
    const char *p[] = {s->move, s->ws, lim};
    if (core_pg_query(s->m->w->shards[s->shard],
                      "SELECT * FROM move_purge($2, $3::int)"
                      " WHERE EXISTS (SELECT 1 FROM move_in WHERE move_id = $1::uuid"
                      "   AND state = 'loading')",
                      3, p, NULL, on_abort_chunk, s, NULL) != 0)
        serve_done(s, "{\"error\":\"shard unavailable\"}");
}

static void on_abort_chunk(const PGresult *res, int err, const char *errmsg, void *ud)
{
    serve_t *s = ud;
    if (err) {
        on_served(res, err, errmsg, s);
        return;
    }
    if (PQntuples(res) > 0) {
        abort_next(s);
        return;
    }
    const char *p[] = {s->move};
    if (core_pg_query(s->m->w->shards[s->shard],
                      "WITH d AS (DELETE FROM move_in WHERE move_id = $1::uuid"
                      "   AND state = 'loading' RETURNING workspace_id),"
                      " k AS (DELETE FROM workspace_keys WHERE workspace_id IN (SELECT"
                      "   workspace_id FROM d) RETURNING 1) SELECT 'aborted'",
                      1, p, NULL, on_served, s, NULL) != 0)
        serve_done(s, "{\"error\":\"shard unavailable\"}");
}

/* Opens a data key sealed to this region's key and wraps it with this
 * region's master key, for the commit's key row. */
static int unseal_wrap(const rg_worker_t *w, const char *ws, const char *hex,
                       char key_id[RES_KEYS_ID_LEN + 1], char wrapped[RG_KEYS_WRAPPED_HEX])
{
    uint8_t sealed[crypto_box_SEALBYTES + RES_KEYS_KEY_BYTES];
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES], dk[RES_KEYS_KEY_BYTES];
    size_t n = 0;
    if (sodium_hex2bin(sealed, sizeof sealed, hex, strlen(hex), NULL, &n, NULL) != 0 ||
        n != sizeof sealed || crypto_sign_ed25519_pk_to_curve25519(pk, w->keys->pub.pk) != 0 ||
        crypto_sign_ed25519_sk_to_curve25519(sk, w->keys->sk) != 0)
        return -1;
    int rc = crypto_box_seal_open(dk, sealed, sizeof sealed, pk, sk);
    sodium_memzero(sk, sizeof sk);
    if (rc == 0)
        rc = rg_keys_wrap_row(ws, dk, key_id, wrapped);
    sodium_memzero(dk, sizeof dk);
    return rc == 0 ? 0 : -1;
}

static void on_move_in(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    (void)sub;
    rg_move_t *m = ud;
    if (m->stopping || !msg->reply)
        return;
    const char *data = msg->data;
    const char *nl = memchr(data, '\n', msg->len);
    size_t hlen = nl ? (size_t)(nl - data) : msg->len;
    const char *body = nl ? nl + 1 : "";
    size_t blen = nl ? msg->len - hlen - 1 : 0;
    core_json_doc_t *doc = NULL;
    char err[64];
    static const core_json_limits_t lim = {.max_depth = 4};
    const char *op = NULL, *move = NULL, *ws = NULL, *source = NULL;
    if (core_json_parse(data, hlen, &lim, &doc, err, sizeof err) != 0) {
        answer(m, msg->reply, "{\"error\":\"bad request\"}");
        return;
    }
    const core_json_t *h = core_json_root(doc);
    if (h->type == CORE_JSON_OBJECT && core_json_get_str(h, "op", &op) == 0 &&
        strcmp(op, "ping") == 0) {
        /* A region about to promote a standby asks whether we are alive. */
        core_json_free(doc);
        answer(m, msg->reply, "{\"state\":\"alive\"}");
        return;
    }
    if (h->type != CORE_JSON_OBJECT || core_json_get_str(h, "op", &op) != 0 ||
        core_json_get_str(h, "move", &move) != 0 || core_json_get_str(h, "ws", &ws) != 0 ||
        core_json_get_str(h, "source", &source) != 0 || strlen(move) >= 40 || strlen(ws) >= 72 ||
        !res_world_region(m->w->world, source) || strcmp(source, m->w->cfg->region) == 0) {
        core_json_free(doc);
        answer(m, msg->reply, "{\"error\":\"bad request\"}");
        return;
    }
    serve_t *s = core_xcalloc(1, sizeof *s);
    s->m = m;
    snprintf(s->reply, sizeof s->reply, "%s", msg->reply);
    snprintf(s->op, sizeof s->op, "%s", op);
    snprintf(s->move, sizeof s->move, "%s", move);
    snprintf(s->ws, sizeof s->ws, "%s", ws);
    snprintf(s->source, sizeof s->source, "%s", source);
    s->shard = repl_replica_shard(ws, m->w->nshards);
    m->pending++;
    core_pg_pool_t *pool = m->w->shards[s->shard];
    int rc = -1;
    char me[40];
    snprintf(me, sizeof me, "%s", m->w->cfg->region);
    if (strcmp(op, "begin") == 0) {
        const char *kind = "move", *dk = NULL;
        core_json_get_str(h, "kind", &kind);
        core_json_get_str(h, "dk", &dk);
        char key_id[RES_KEYS_ID_LEN + 1] = "", wrapped[RG_KEYS_WRAPPED_HEX] = "";
        bool key_ok = !dk || unseal_wrap(m->w, ws, dk, key_id, wrapped) == 0;
        const char *p[] = {move,
                           ws,
                           source,
                           strcmp(kind, "standby") == 0 ? "standby" : "move",
                           dk && key_ok ? key_id : NULL,
                           dk && key_ok ? wrapped : NULL};
        if (!key_ok) {
            core_json_free(doc);
            serve_done(s, "{\"error\":\"the data key does not open here\"}");
            return;
        }
        rc = core_pg_query(
            pool,
            "WITH mi AS (INSERT INTO move_in (move_id, workspace_id, source_region, state, kind)"
            "   VALUES ($1::uuid, $2, $3, 'loading', $4) ON CONFLICT (move_id) DO NOTHING"
            "   RETURNING 1),"
            /* The data key, from the start (a standby serves once promoted);
             * never over the key of a workspace this region is home of. */
            " k AS (INSERT INTO workspace_keys (workspace_id, key_id, wrapped)"
            "   SELECT $2, $5, $6::bytea WHERE $5::text IS NOT NULL AND EXISTS (SELECT 1"
            "   FROM move_in WHERE move_id = $1::uuid AND state = 'loading' UNION ALL"
            "   SELECT 1 FROM mi) ON CONFLICT (workspace_id) DO UPDATE SET key_id = "
            "EXCLUDED.key_id,"
            "   wrapped = EXCLUDED.wrapped RETURNING 1),"
            /* Rows copied into the outbox are not this region's to publish
             * until the commit names the sequence it publishes after. */
            " rl AS (INSERT INTO outbox_relay (workspace_id, published_seq)"
            "   SELECT $2, " NO_SEQ " FROM mi ON CONFLICT (workspace_id) DO UPDATE"
            "   SET published_seq = " NO_SEQ " RETURNING 1)"
            " SELECT coalesce((SELECT state FROM move_in WHERE move_id = $1::uuid),"
            "   (SELECT 'loading' FROM mi), 'unknown')",
            6, p, NULL, on_served, s, NULL);
        if (rc == 0 && dk)
            rg_keys_forget(ws); /* a cached copy from before is stale */
    } else if (strcmp(op, "load") == 0) {
        const char *table = NULL, *replace = NULL, *keys = NULL;
        core_json_get_str(h, "table", &table);
        core_json_get_str(h, "replace", &replace);
        core_json_get_str(h, "keys", &keys);
        if (table && table_index(table) >= 0 &&
            (!replace || strcmp(replace, "*") == 0 || strcmp(replace, "message_id") == 0)) {
            char *rows = core_xmalloc(blen + 1);
            memcpy(rows, body, blen);
            rows[blen] = '\0';
            const char *p[] = {move, ws, table, replace, keys, rows};
            rc = core_pg_query(
                pool,
                "SELECT CASE WHEN move_load($3::regclass, $2, $4, $5::text[], $6::jsonb) >= 0"
                " THEN 'loading' END FROM move_in WHERE move_id = $1::uuid AND state = 'loading'",
                6, p, NULL, on_served, s, NULL);
            free(rows);
        }
    } else if (strcmp(op, "commit") == 0) {
        int64_t final_seq = 0, epoch = 0;
        const char *allowed = NULL, *dk = NULL;
        core_json_get_int(h, "final_seq", &final_seq);
        core_json_get_int(h, "epoch", &epoch);
        core_json_get_str(h, "allowed", &allowed);
        core_json_get_str(h, "dk", &dk);
        char seq_s[24], epoch_s[24], shard_s[8];
        snprintf(seq_s, sizeof seq_s, "%lld", (long long)final_seq);
        snprintf(epoch_s, sizeof epoch_s, "%lld", (long long)epoch);
        snprintf(s->epoch, sizeof s->epoch, "%s", epoch_s);
        snprintf(s->allowed, sizeof s->allowed, "%s", allowed ? allowed : "{}");
        snprintf(shard_s, sizeof shard_s, "%d", s->shard);
        char key_id[RES_KEYS_ID_LEN + 1] = "", wrapped[RG_KEYS_WRAPPED_HEX] = "";
        bool key_ok = !dk || unseal_wrap(m->w, ws, dk, key_id, wrapped) == 0;
        if (allowed && epoch > 0 && final_seq >= 0 && key_ok) {
            const char *p[] = {move,
                               ws,
                               shard_s,
                               me,
                               epoch_s,
                               allowed,
                               seq_s,
                               dk ? key_id : NULL,
                               dk ? wrapped : NULL};
            rc = core_pg_query(
                pool,
                "WITH mi AS (UPDATE move_in SET state = 'committed', committed_at = now()"
                "   WHERE move_id = $1::uuid AND state = 'loading' RETURNING workspace_id),"
                " d AS (INSERT INTO dir_workspaces AS d (workspace_id, shard, home_region, epoch,"
                "   allowed_regions, pinned) SELECT $2, $3::int, $4, $5::bigint, $6::text[], false"
                "   FROM mi ON CONFLICT (workspace_id) DO UPDATE SET shard = EXCLUDED.shard,"
                "   home_region = EXCLUDED.home_region, epoch = EXCLUDED.epoch,"
                "   allowed_regions = EXCLUDED.allowed_regions, pinned = false, updated_at = now()"
                "   WHERE d.epoch <= EXCLUDED.epoch RETURNING 1),"
                " w AS (UPDATE workspaces SET allowed_regions = $6::text[], pinned = false,"
                "   moving_to = NULL WHERE id = $2 AND EXISTS (SELECT 1 FROM mi) RETURNING 1),"
                " rl AS (UPDATE outbox_relay SET published_seq = $7::bigint WHERE workspace_id = $2"
                "   AND EXISTS (SELECT 1 FROM mi) RETURNING 1),"
                " o AS (INSERT INTO dir_outbox (kind, id, body) SELECT 'workspace', $2,"
                "   jsonb_build_object('home_region', $4, 'allowed_regions', $6::text[],"
                "   'epoch', $5::bigint, 'pinned', false) FROM mi RETURNING 1),"
                " k AS (INSERT INTO workspace_keys (workspace_id, key_id, wrapped)"
                "   SELECT $2, $8, $9::bytea FROM mi WHERE $8::text IS NOT NULL"
                "   ON CONFLICT (workspace_id) DO UPDATE SET key_id = EXCLUDED.key_id,"
                "   wrapped = EXCLUDED.wrapped RETURNING 1),"
                /* The replica's events go after the commit, in chunks
                 * (rg_move_drop_replica): a big replica would hold the
                 * freeze for seconds. */
                " rw AS (DELETE FROM replica_workspaces WHERE workspace_id = $2"
                "   AND EXISTS (SELECT 1 FROM mi) RETURNING 1)"
                " SELECT coalesce((SELECT 'committed' FROM mi),"
                "   (SELECT state FROM move_in WHERE move_id = $1::uuid), 'unknown')",
                9, p, NULL, on_served, s, NULL);
        }
    } else if (strcmp(op, "status") == 0) {
        char *text = core_xmalloc(blen + 1);
        memcpy(text, body, blen);
        text[blen] = '\0';
        const char *p[] = {move, text};
        rc = core_pg_query(pool,
                           "WITH x AS (SELECT $2::jsonb AS j) UPDATE move_in SET"
                           " status = x.j->'status', report_text = x.j->>'report_text',"
                           " report_sig = decode(x.j->>'signature', 'hex'),"
                           " report_kid = x.j->>'key_id' FROM x WHERE move_id = $1::uuid"
                           " RETURNING state",
                           2, p, NULL, on_served, s, NULL);
        free(text);
    } else if (strcmp(op, "abort") == 0) {
        core_json_free(doc);
        abort_next(s);
        return;
    }
    core_json_free(doc);
    if (rc != 0)
        serve_done(s, "{\"error\":\"bad request or shard unavailable\"}");
}

/* ---- notices ---- */

static void on_notice(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    (void)sub;
    rg_move_t *m = ud;
    char ws[72];
    if (m->stopping || msg->len == 0 || msg->len >= sizeof ws)
        return;
    memcpy(ws, msg->data, msg->len);
    ws[msg->len] = '\0';
    rg_dir_forget(m->w->dir, RG_DIR_WORKSPACE, ws);
    rg_keys_forget(ws);
    rg_stream_close_workspace(m->w, ws);
}

static void on_kick(core_nats_sub_t *sub, const core_nats_msg_t *msg, void *ud)
{
    (void)sub;
    (void)msg;
    rg_move_t *m = ud;
    if (!m->stopping)
        on_tick(&m->tick);
}

/* ---- the replica's events of a workspace now homed here ---- */

typedef struct {
    rg_worker_t *w;
    char ws[72];
    int shard;
    int rounds;
} drop_t;

static void drop_next(drop_t *d);

static void on_dropped(const PGresult *res, int err, const char *errmsg, void *ud)
{
    drop_t *d = ud;
    if (err || PQntuples(res) != 1 || strtoll(PQgetvalue(res, 0, 0), NULL, 10) == 0 ||
        ++d->rounds > 100000) {
        if (err && err != UV_ECANCELED)
            core_log_warn("move.replica_drop_failed", "workspace=%s error=\"%.120s\"", d->ws,
                          core_pg_errcode(res, err));
        free(d);
        return;
    }
    drop_next(d);
}

static void drop_next(drop_t *d)
{
    char lim[12];
    snprintf(lim, sizeof lim, "%d", PURGE_CHUNK);
    const char *p[] = {d->ws, lim};
    if (core_pg_query(d->w->shards[d->shard],
                      "WITH x AS (DELETE FROM replica_events WHERE ctid = ANY (ARRAY(SELECT ctid"
                      "   FROM replica_events WHERE workspace_id = $1 LIMIT $2::int)) RETURNING 1)"
                      " SELECT count(*) FROM x",
                      2, p, NULL, on_dropped, d, NULL) != 0)
        free(d);
}

void rg_move_drop_replica(rg_worker_t *w, const char *ws, int shard)
{
    drop_t *d = core_xcalloc(1, sizeof *d);
    d->w = w;
    snprintf(d->ws, sizeof d->ws, "%s", ws);
    d->shard = shard;
    drop_next(d);
}

void rg_move_promoted(rg_worker_t *w, const char *ws, int shard)
{
    rg_move_drop_replica(w, ws, shard);
    char shard_s[8];
    snprintf(shard_s, sizeof shard_s, "%d", shard);
    const char *p[] = {ws, shard_s, w->cfg->region};
    for (int i = 0; i < w->nshards; i++)
        if (i != shard)
            core_pg_query(w->shards[i],
                          "UPDATE dir_workspaces SET shard = $2::int, home_region = $3,"
                          " epoch = epoch + 1, updated_at = now() WHERE workspace_id = $1"
                          " AND home_region <> $3",
                          3, p, NULL, NULL, NULL, NULL);
    rg_dir_forget(w->dir, RG_DIR_WORKSPACE, ws);
    rg_keys_forget(ws);
    if (w->nats)
        notice(w, w->cfg->region, ws);
}

void rg_move_kick(rg_worker_t *w)
{
    char subject[96];
    snprintf(subject, sizeof subject, "mv.%s.kick", w->cfg->region);
    if (w->nats)
        core_nats_publish(w->nats, subject, "", 0);
}

/* ---- lifetime ---- */

rg_move_t *rg_move_start(rg_worker_t *w)
{
    if (!w->nats || !w->world || w->world->nregions < 2)
        return NULL;
    rg_move_t *m = core_xcalloc(1, sizeof *m);
    m->w = w;
    m->driving = core_map_new();
    m->tick_closed = true;
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    uint8_t nonce[6];
    randombytes_buf(nonce, sizeof nonce);
    char hex[13];
    sodium_bin2hex(hex, sizeof hex, nonce, sizeof nonce);
    /* The node's master process: a worker it restarts takes its moves up at
     * once; another node waits for the lease to run out. */
    snprintf(m->owner, sizeof m->owner, "%.40s:%d", host, (int)getppid());
    (void)hex;
    const char *crash = getenv("MERIDIAN_DEBUG_MOVE_CRASH");
    if (crash && w->cfg->debug_endpoints) {
        const char *colon = strchr(crash, ':');
        if (colon && (size_t)(colon - crash) < sizeof g_crash_point) {
            snprintf(g_crash_point, sizeof g_crash_point, "%.*s", (int)(colon - crash), crash);
            snprintf(g_crash_file, sizeof g_crash_file, "%s", colon + 1);
        }
    }
    m->m_steps = core_metrics_counter("meridian_move_chunks_total",
                                      "Chunks of workspace rows sent to a move's target.", "");
    m->m_failures = core_metrics_counter("meridian_move_retries_total",
                                         "Move steps that failed and will be retried.", "");
    m->m_served = core_metrics_counter("meridian_move_served_total",
                                       "Requests of moves into this region answered.", "");
    char subject[96];
    snprintf(subject, sizeof subject, "mv.%s.moved", w->cfg->region);
    core_nats_subscribe(w->nats, subject, NULL, on_notice, m, &m->notice_sub);
    if (w->index == 0) {
        m->driver = true;
        snprintf(subject, sizeof subject, "mv.%s.in", w->cfg->region);
        core_nats_subscribe(w->nats, subject, "move", on_move_in, m, &m->in_sub);
        snprintf(subject, sizeof subject, "mv.%s.kick", w->cfg->region);
        core_nats_subscribe(w->nats, subject, NULL, on_kick, m, &m->kick_sub);
        uv_timer_init(&w->loop, &m->tick);
        m->tick.data = m;
        m->tick_closed = false;
        uv_timer_start(&m->tick, on_tick, TICK_MS, TICK_MS);
    }
    return m;
}

static void on_tick_closed(uv_handle_t *h)
{
    rg_move_t *m = h->data;
    m->tick_closed = true;
    maybe_free(m);
}

void rg_move_stop(rg_move_t *m)
{
    if (!m || m->stopping)
        return;
    m->stopping = true;
    core_nats_unsubscribe(m->notice_sub);
    core_nats_unsubscribe(m->in_sub);
    core_nats_unsubscribe(m->kick_sub);
    if (m->driver)
        uv_close((uv_handle_t *)&m->tick, on_tick_closed);
    else
        maybe_free(m);
}
