/* rg_api_messages.c: messages and threads in a channel.
 *   POST   /v1/workspaces/{id}/channels/{cid}/messages        {text, client_msg_id?, parent_id?}
 *          -> 201 {message} (200 with the existing message for a repeated client_msg_id)
 *   GET    /v1/workspaces/{id}/channels/{cid}/messages        ?limit&before|after
 *          -> 200 {messages, next_before, next_after, has_more} (top-level, newest first)
 *   PATCH  /v1/workspaces/{id}/channels/{cid}/messages/{mid}  {text} -> 200 {message}
 *   DELETE /v1/workspaces/{id}/channels/{cid}/messages/{mid}  -> 204 (leaves a tombstone)
 *   GET    /v1/workspaces/{id}/channels/{cid}/messages/{mid}/replies ?limit&after
 *          -> 200 {replies, reply_count, next_after, has_more} (oldest first)
 *
 * Posts go as one set-based statement per shard per loop pass (see "set-based
 * posts" below). Edits and deletes, and posts that statement cannot settle,
 * are ONE statement each, group-committed through rg_batch: it checks
 * the caller's access, takes the next workspace sequence number under the
 * workspace row's lock, writes the row(s) and the outbox event, and reports
 * expected failures in a status column instead of raising errors, so that a
 * bad request never rolls back the other requests of its group.
 *
 * Races the statement's snapshot cannot see (it is taken before the
 * workspace lock is granted: a duplicate client_msg_id or a delete committed
 * meanwhile) end in an error rather than in a gap in the sequence: a plain
 * INSERT hits the unique key (23505), or the outbox row gets a NULL seq
 * (23502). The whole transaction rolls back and the request runs once more,
 * now seeing the committed row. */
#include "region/rg_api.h"
#include "core/core.h"
#include "core/log.h"
#include "region/rg_batch.h"
#include "region/rg_dir.h"
#include "region/rg_keys.h"
#include "residency/res_keys.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEXT_MAX 40000 /* characters (code points) */
#define PAGE_DEFAULT 50
#define PAGE_MAX 200
#define ID_CAP 65

typedef enum { OP_POST, OP_HISTORY, OP_EDIT, OP_DELETE, OP_REPLIES } op_kind_t;

typedef struct {
    op_kind_t kind;
    char ws[ID_CAP], ch[ID_CAP], mid[ID_CAP];
    char new_id[32];
    const char *text; /* in the parsed body, which lives as long as the request */
    size_t text_len;
    core_buf_t enc;   /* the body as stored: "e1." ciphertext (rg_keys_encrypting) */
    core_buf_t terms; /* the blind index of text, a bytea[] literal */
    const char *cmid;
    const char *parent;
    bool has_before, has_after;
    int64_t cursor;
    int limit;
    char cursor_txt[24], limit_txt[16];
    const char *params[8]; /* a batched write's parameters: kept until its callback */
    int nparams;
    const char *sql;
    int reruns;
} msg_state_t;

#define ST(r) ((msg_state_t *)(r)->state)

/* ---- SQL ---- */

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* The 12 columns put_message reads, in this order. */
#define MSG_COLS                                                                                   \
    "id, channel_id, seq, author_id, body, parent_id, client_msg_id, " TS(                         \
        "created_at") " AS c_at, " TS("edited_at") " AS e_at, deleted_at IS NOT NULL AS deleted, " \
                                                   "reply_count, " TS("last_reply_at") " AS l_at"
#define MSG_NCOLS 12

/* $1 workspace, $2 channel, $3 caller: one row (role, archived) when the
 * caller is an active member who may see the channel (private channels:
 * channel members only). */
#define VIS_CTE                                                                                    \
    "vis AS (SELECT m.role, c.archived FROM members m JOIN channels c"                             \
    " ON c.workspace_id = m.workspace_id AND c.id = $2"                                            \
    " WHERE m.workspace_id = $1 AND m.user_id = $3 AND m.status = 'active'"                        \
    " AND (NOT c.private OR EXISTS (SELECT 1 FROM channel_members cm"                              \
    " WHERE cm.workspace_id = $1 AND cm.channel_id = $2 AND cm.user_id = $3)))"

/* The key of messages_client_msg (migration 0015). A repeated client_msg_id
 * is looked up by this expression alone, never with a plain workspace_id
 * condition: every other index of messages leads with workspace_id, and a
 * generic plan costed on a nearly empty table could pick one of them and
 * then read the whole workspace per post. */
#define CLIENT_MSG_KEY "(workspace_id || ' ' || author_id || ' ' || client_msg_id)"

/* Statements add the workspace lock only when every check passed, so a
 * refused request takes no sequence number and no lock. */
#define SEQ_CTE                                                                                    \
    "ws AS (UPDATE workspaces SET seq = seq + 1 WHERE id = $1 AND (SELECT s FROM st) = 'ok'"       \
    " RETURNING seq)"

/* $4 new id, $5 body (encrypted), $6 client_msg_id, $7 parent_id, $8 terms */
static const char sql_post[] =
    "WITH " VIS_CTE ","
    " dup AS (SELECT " MSG_COLS " FROM messages WHERE " CLIENT_MSG_KEY " = $1 || ' ' || $3 || ' ' "
    "  || $6::text),"
    " st AS (SELECT CASE"
    "  WHEN NOT EXISTS (SELECT 1 FROM vis) THEN 'not_found'"
    "  WHEN EXISTS (SELECT 1 FROM dup) THEN 'duplicate'"
    "  WHEN (SELECT archived FROM vis) THEN 'archived'"
    "  WHEN $7::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM messages p"
    "   WHERE p.workspace_id = $1 AND p.id = $7::text AND p.channel_id = $2"
    "   AND p.parent_id IS NULL AND p.deleted_at IS NULL) THEN 'bad_parent'"
    "  ELSE 'ok' END AS s),"
    " " SEQ_CTE ","
    " ins AS (INSERT INTO messages"
    "  (workspace_id, id, channel_id, seq, author_id, parent_id, body, client_msg_id, terms)"
    "  SELECT $1, $4, $2, seq, $3, $7::text, $5, $6::text, $8::bytea[] FROM ws"
    "  RETURNING " MSG_COLS "),"
    " par AS (UPDATE messages SET reply_count = reply_count + 1, last_reply_at = now()"
    "  WHERE workspace_id = $1 AND id = $7::text AND EXISTS (SELECT 1 FROM ins) RETURNING 1),"
    " ob AS (INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)"
    "  SELECT $1, seq, 'message.created', $2, jsonb_build_object('id', id, 'channel_id',"
    "  channel_id, 'seq', seq, 'author_id', author_id, 'parent_id', parent_id,"
    "  'client_msg_id', client_msg_id, 'text', body, 'created_at', c_at) FROM ins RETURNING 1)"
    " SELECT st.s, m.* FROM st LEFT JOIN (SELECT * FROM ins UNION ALL SELECT * FROM dup) m"
    " ON st.s IN ('ok', 'duplicate')";

/* $4 message id, $5 body (encrypted), $6 terms */
static const char sql_edit[] =
    "WITH " VIS_CTE ","
    " msg AS (SELECT author_id FROM messages"
    "  WHERE workspace_id = $1 AND id = $4 AND channel_id = $2 AND deleted_at IS NULL),"
    " st AS (SELECT CASE"
    "  WHEN NOT EXISTS (SELECT 1 FROM vis) OR NOT EXISTS (SELECT 1 FROM msg) THEN 'not_found'"
    "  WHEN (SELECT author_id FROM msg) <> $3 THEN 'forbidden'"
    "  WHEN (SELECT archived FROM vis) THEN 'archived'"
    "  ELSE 'ok' END AS s),"
    " " SEQ_CTE ","
    " up AS (UPDATE messages SET body = $5, terms = $6::bytea[], edited_at = now()"
    "  WHERE workspace_id = $1 AND id = $4 AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM ws)"
    "  RETURNING " MSG_COLS "),"
    /* A NULL seq (the row changed after the snapshot) fails the whole statement. */
    " ob AS (INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)"
    "  SELECT $1, CASE WHEN up.id IS NOT NULL THEN ws.seq END, 'message.updated', $2,"
    "  jsonb_build_object('id', up.id, 'channel_id', up.channel_id, 'seq', up.seq,"
    "  'author_id', up.author_id, 'parent_id', up.parent_id, 'text', up.body,"
    "  'edited_at', up.e_at) FROM ws LEFT JOIN up ON true RETURNING 1)"
    " SELECT st.s, up.* FROM st LEFT JOIN up ON true";

/* $4 message id */
static const char sql_delete[] =
    "WITH " VIS_CTE ","
    " msg AS (SELECT author_id, deleted_at FROM messages"
    "  WHERE workspace_id = $1 AND id = $4 AND channel_id = $2),"
    " st AS (SELECT CASE"
    "  WHEN NOT EXISTS (SELECT 1 FROM vis) OR NOT EXISTS (SELECT 1 FROM msg) THEN 'not_found'"
    "  WHEN (SELECT author_id FROM msg) <> $3"
    "   AND (SELECT role FROM vis) NOT IN ('owner', 'admin') THEN 'forbidden'"
    "  WHEN (SELECT deleted_at FROM msg) IS NOT NULL THEN 'gone'"
    "  ELSE 'ok' END AS s),"
    " " SEQ_CTE ","
    " del AS (UPDATE messages SET body = '', terms = NULL, deleted_at = now()"
    "  WHERE workspace_id = $1 AND id = $4 AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM ws)"
    "  RETURNING id, channel_id, seq, parent_id),"
    " ob AS (INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)"
    "  SELECT $1, CASE WHEN del.id IS NOT NULL THEN ws.seq END, 'message.deleted', $2,"
    "  jsonb_build_object('id', del.id, 'channel_id', del.channel_id, 'seq', del.seq,"
    "  'parent_id', del.parent_id, 'deleted_by', $3::text) FROM ws LEFT JOIN del ON true"
    "  RETURNING 1)"
    " SELECT s FROM st";

/* $4 cursor (NULL: newest), $5 rows to fetch. One row with NULL columns when
 * the channel is visible and empty; none when it is not visible. */
static const char sql_history_before[] =
    "WITH " VIS_CTE " SELECT m.* FROM vis LEFT JOIN LATERAL (SELECT " MSG_COLS " FROM messages"
    " WHERE workspace_id = $1 AND channel_id = $2 AND parent_id IS NULL"
    " AND seq < COALESCE($4::bigint, 9223372036854775807) ORDER BY seq DESC LIMIT $5::int) m"
    " ON true";
static const char sql_history_after[] =
    "WITH " VIS_CTE " SELECT m.* FROM vis LEFT JOIN LATERAL (SELECT " MSG_COLS " FROM messages"
    " WHERE workspace_id = $1 AND channel_id = $2 AND parent_id IS NULL"
    " AND seq > $4::bigint ORDER BY seq ASC LIMIT $5::int) m ON true";

/* $4 parent id, $5 after (NULL: from the start), $6 rows to fetch. */
static const char sql_replies[] =
    "WITH " VIS_CTE ","
    " par AS (SELECT reply_count FROM messages WHERE workspace_id = $1 AND id = $4"
    "  AND channel_id = $2 AND parent_id IS NULL AND EXISTS (SELECT 1 FROM vis))"
    " SELECT par.reply_count, m.* FROM par LEFT JOIN LATERAL (SELECT " MSG_COLS " FROM messages"
    " WHERE workspace_id = $1 AND parent_id = $4 AND seq > COALESCE($5::bigint, 0)"
    " ORDER BY seq ASC LIMIT $6::int) m ON true";

/* ---- answers ---- */

static void put_str_or_null(core_jw_t *jw, const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        core_jw_null(jw);
    else
        core_jw_strn(jw, PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col));
}

/* Plaintext of the body being written out: one buffer per worker, reused. */
static core_buf_t g_plain;

/* One message from MSG_COLS starting at column c, its body decrypted with k
 * (NULL: plaintext bodies only). Tombstones carry no text. Returns 0, or a
 * res_keys error when the body does not decrypt: the caller drops what was
 * written and answers an error, so no ciphertext ever reaches a client. */
static int put_message(core_jw_t *jw, const PGresult *res, int row, int c, const rg_key_t *k,
                       const char *plain, size_t plain_len)
{
    bool deleted = PQgetvalue(res, row, c + 9)[0] == 't';
    core_jw_obj_open(jw);
    core_jw_key(jw, "id");
    put_str_or_null(jw, res, row, c);
    core_jw_key(jw, "channel_id");
    put_str_or_null(jw, res, row, c + 1);
    core_jw_key(jw, "seq");
    core_jw_int(jw, strtoll(PQgetvalue(res, row, c + 2), NULL, 10));
    core_jw_key(jw, "author_id");
    put_str_or_null(jw, res, row, c + 3);
    if (!deleted) {
        core_jw_key(jw, "text");
        if (PQgetisnull(res, row, c + 4)) {
            core_jw_null(jw);
        } else if (plain) {
            core_jw_strn(jw, plain, plain_len);
        } else {
            int rc = res_keys_decrypt(k && k->has_dk ? k->dk : NULL, PQgetvalue(res, row, c),
                                      PQgetvalue(res, row, c + 4),
                                      (size_t)PQgetlength(res, row, c + 4), &g_plain);
            if (rc)
                return rc;
            core_jw_strn(jw, g_plain.base ? g_plain.base : "", g_plain.len);
        }
    }
    core_jw_key(jw, "parent_id");
    put_str_or_null(jw, res, row, c + 5);
    core_jw_key(jw, "client_msg_id");
    put_str_or_null(jw, res, row, c + 6);
    core_jw_key(jw, "created_at");
    put_str_or_null(jw, res, row, c + 7);
    core_jw_key(jw, "edited_at");
    put_str_or_null(jw, res, row, c + 8);
    core_jw_key(jw, "deleted");
    core_jw_bool(jw, deleted);
    core_jw_key(jw, "reply_count");
    core_jw_int(jw, strtoll(PQgetvalue(res, row, c + 10), NULL, 10));
    core_jw_key(jw, "last_reply_at");
    put_str_or_null(jw, res, row, c + 11);
    core_jw_obj_close(jw);
    return 0;
}

static void not_found(rg_req_t *r)
{
    rg_api_not_found(r, ST(r)->ws, "no such workspace, channel or message");
}

/* A body that does not decrypt under the workspace's key (the key is there:
 * rg_keys_get succeeded): altered or misplaced ciphertext. Nothing of it is
 * sent. b (the answer being built) is dropped. */
static void fail_undecryptable(rg_req_t *r, core_buf_t *b, int err)
{
    core_buf_free(b);
    core_log(CORE_LOG_ERROR, r->http ? r->http->id : NULL, "api.messages.undecryptable",
             "shard=%d workspace=%s error=%d", r->shard, ST(r)->ws, err);
    rg_req_fail(r, 500, "undecryptable", "a message could not be decrypted; it has been logged");
}

/* The body and blind index of the text to write, for message id mid: the
 * body is encrypted while encryption is on, else stored as plaintext
 * (escaped when it starts like a stored form: res_keys_plain). The terms do
 * not depend on mid: computed once. */
static void seal(rg_req_t *r, const rg_key_t *k, const char *mid)
{
    msg_state_t *st = ST(r);
    if (k->has_dk && rg_keys_encrypting()) {
        res_keys_encrypt(k->dk, mid, st->text, st->text_len, &st->enc);
        st->params[4] = core_buf_cstr(&st->enc);
    } else {
        st->params[4] = res_keys_plain(st->text, st->text_len, &st->enc);
    }
    if (st->terms.len == 0) {
        uint8_t terms[RES_KEYS_MAX_TERMS][RES_KEYS_TERM_BYTES];
        size_t n = res_keys_terms(k->idx, st->text, st->text_len, terms, RES_KEYS_MAX_TERMS);
        res_keys_terms_literal(&st->terms, (const uint8_t(*)[RES_KEYS_TERM_BYTES])terms, n);
        sodium_memzero(terms, sizeof terms);
    }
}

/* ---- writes ---- */

static void submit_write(rg_req_t *r);

/* A race with a concurrent commit (see the top of the file) or a deadlock
 * victim: worth running once more. */
static bool worth_rerun(const PGresult *res)
{
    const char *s = res ? core_pg_sqlstate(res) : "";
    return !strcmp(s, "23505") || !strcmp(s, "23502") || !strcmp(s, "40P01") || !strcmp(s, "40001");
}

/* The statement answered in a way it never should: a bug, logged once here. */
static void fail_empty(rg_req_t *r, const char *status)
{
    core_log(CORE_LOG_ERROR, r->http ? r->http->id : NULL, "api.messages.bad_result",
             "shard=%d op=%d status=%s", r->shard, (int)ST(r)->kind, status);
    rg_req_fail(r, 500, "internal", "the write returned nothing; it has been logged");
}

/* Turns a write's status row (column c: status, then MSG_COLS) into the
 * answer. Shared by the one-statement path and the set-based posts. */
static void answer_write(rg_req_t *r, const PGresult *res, int row, int c)
{
    msg_state_t *st = ST(r);
    const char *s = PQgetvalue(res, row, c);
    if (!strcmp(s, "not_found")) {
        not_found(r);
        return;
    }
    if (!strcmp(s, "archived")) {
        rg_req_fail(r, 403, "channel_archived", "the channel is archived");
        return;
    }
    if (!strcmp(s, "forbidden")) {
        rg_req_fail(r, 403, "forbidden",
                    st->kind == OP_EDIT ? "only the author may edit a message"
                                        : "only the author or an admin may delete a message");
        return;
    }
    if (!strcmp(s, "bad_parent")) {
        rg_req_fail(r, 400, "invalid_parent",
                    "parent_id must be a top-level message of this channel");
        return;
    }
    if (st->kind == OP_DELETE) {
        rg_req_no_content(r); /* "ok", or "gone": already a tombstone */
        return;
    }
    if (PQnfields(res) < c + 1 + MSG_NCOLS || PQgetisnull(res, row, c + 1)) {
        fail_empty(r, s);
        return;
    }
    int status = st->kind == OP_POST && !strcmp(s, "ok") ? 201 : 200;
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "message");
    /* A write that went through answers with the text it was given: no need
     * to decrypt what was just encrypted. A duplicate is another message. */
    bool mine = !strcmp(s, "ok") && st->text;
    int rc = put_message(&jw, res, row, c + 1, rg_keys_peek(st->ws), mine ? st->text : NULL,
                         mine ? st->text_len : 0);
    if (rc) {
        fail_undecryptable(r, &b, rc);
        return;
    }
    core_jw_obj_close(&jw);
    rg_req_reply(r, status, &b);
}

static void on_written(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    msg_state_t *st = ST(r);
    if (err == CORE_PG_ESQL && st->reruns == 0 && worth_rerun(res)) {
        st->reruns++;
        if (st->kind == OP_POST) { /* params[3] points here: a colliding id is not reused */
            rg_new_id(st->new_id, sizeof st->new_id, "m_");
            /* The id is the body's associated data: seal it again. */
            const rg_key_t *k = rg_keys_peek(st->ws);
            if (!k) {
                rg_keys_fail(r, RG_KEYS_ENOKEY);
                return;
            }
            seal(r, k, st->new_id);
        }
        submit_write(r);
        return;
    }
    if (err) {
        rg_req_fail_pg(r, err, res);
        return;
    }
    if (PQntuples(res) < 1) {
        fail_empty(r, "none");
        return;
    }
    answer_write(r, res, 0, 0);
}

static void submit_write(rg_req_t *r)
{
    msg_state_t *st = ST(r);
    int rc = rg_batch_add(rg_batch_of(r->w), r->shard, st->ws, st->sql, st->nparams, st->params,
                          on_written, r);
    if (rc == UV_EBUSY) {
        rg_req_fail(r, 503, "overloaded", "too many writes waiting; retry shortly");
        return;
    }
    if (rc) {
        rg_req_fail(r, 500, "internal", "the write could not be queued");
        return;
    }
    r->pending++;
}

/* ---- set-based posts ----
 *
 * Posts are the hot path, so they do not go one statement each: the posts a
 * worker receives for a shard during one loop pass become ONE statement
 * (arrays in, one row per post out), sent just before the loop sleeps. One
 * plan, one pass over the CTEs, one bump of each workspace's sequence by the
 * number of its posts, and one outbox trigger, instead of one of each per
 * message. While a shard's statement is in flight new posts wait for it, so
 * under load the statements grow instead of queueing up one commit each.
 *
 * Workspace rows are locked in id order before their sequences move, so two
 * workers' statements cannot deadlock. A post the statement cannot settle on
 * its own (a second post with the same client_msg_id in the same statement,
 * or a statement that failed as a whole: a race with another worker's
 * commit) goes through the one-statement path above, which sees the
 * committed rows. */

#define POSTQ_MAX 512             /* posts per statement */
#define POSTQ_MAX_BYTES (2 << 20) /* text per statement */
#define POSTQ_NARRAYS 8

/* $1..$8: workspace, channel, author, new id, body (encrypted), client_msg_id,
 * parent_id, terms (each element a bytea[] literal) */
static const char sql_post_many[] =
    "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
    "   $5::text[], $6::text[], $7::text[], $8::text[]) WITH ORDINALITY"
    "   AS t(i_ws, i_ch, i_author, i_mid, i_body, i_cmid, i_parent, i_terms, ord)),"
    /* Every lookup below is driven by the posts (LATERAL or = ANY), so each is
     * an index probe per post: a prepared statement runs a generic plan, and
     * a plan that scans or hashes a table (messages grows; workspaces is a
     * hot row with many dead versions) costs more with every message.
     * OFFSET 0 keeps a LATERAL lookup a probe: flattened into a join, it was
     * planned (on stale statistics) as a read of every active member of the
     * shard, joined to the posts: ~10 ms a statement at 10,000 members. */
    " vis AS (SELECT i.ord, c.archived FROM input i"
    "   CROSS JOIN LATERAL (SELECT 1 FROM members m WHERE m.workspace_id = i.i_ws"
    "     AND m.user_id = i.i_author AND m.status = 'active' OFFSET 0) m"
    "   CROSS JOIN LATERAL (SELECT c.archived, c.private FROM channels c"
    "     WHERE c.workspace_id = i.i_ws AND c.id = i.i_ch OFFSET 0) c"
    "   WHERE NOT c.private OR EXISTS (SELECT 1 FROM channel_members cm"
    "   WHERE cm.workspace_id = i.i_ws AND cm.channel_id = i.i_ch AND cm.user_id = i.i_author)),"
    " dup AS (SELECT i.ord, d.* FROM input i CROSS JOIN LATERAL (SELECT " MSG_COLS
    "   FROM messages WHERE " CLIENT_MSG_KEY " = i.i_ws || ' ' || i.i_author || ' ' || i.i_cmid"
    "   OFFSET 0) d),"
    " later AS (SELECT ord FROM (SELECT ord, row_number() OVER (PARTITION BY i_ws, i_author,"
    "   i_cmid ORDER BY ord) AS rn FROM input WHERE i_cmid IS NOT NULL) x WHERE rn > 1),"
    " par_ok AS (SELECT i.ord FROM input i CROSS JOIN LATERAL (SELECT 1 FROM messages p"
    "   WHERE p.workspace_id = i.i_ws AND p.id = i.i_parent AND p.channel_id = i.i_ch"
    "   AND p.parent_id IS NULL AND p.deleted_at IS NULL OFFSET 0) x"
    "   WHERE i.i_parent IS NOT NULL),"
    " st AS (SELECT i.*, CASE"
    "   WHEN v.ord IS NULL THEN 'not_found'"
    "   WHEN EXISTS (SELECT 1 FROM dup d WHERE d.ord = i.ord) THEN 'duplicate'"
    "   WHEN i.ord IN (SELECT ord FROM later) THEN 'again'"
    "   WHEN v.archived THEN 'archived'"
    "   WHEN i.i_parent IS NOT NULL AND NOT EXISTS (SELECT 1 FROM par_ok p WHERE p.ord = i.ord)"
    "     THEN 'bad_parent'"
    "   ELSE 'ok' END AS s FROM input i LEFT JOIN vis v ON v.ord = i.ord),"
    " ok AS (SELECT st.*, row_number() OVER (PARTITION BY i_ws ORDER BY ord) AS k FROM st"
    "   WHERE s = 'ok'),"
    " counts AS (SELECT i_ws, count(*) AS n FROM ok GROUP BY i_ws),"
    /* Rows locked in id order: two statements cannot deadlock. */
    " locked AS (SELECT w.id FROM (SELECT i_ws FROM counts ORDER BY i_ws) c"
    "   CROSS JOIN LATERAL (SELECT id FROM workspaces WHERE id = c.i_ws FOR UPDATE) w),"
    " bump AS (UPDATE workspaces w"
    "   SET seq = w.seq + (SELECT n FROM counts WHERE counts.i_ws = w.id)"
    "   WHERE w.id = ANY ((SELECT array_agg(id) FROM locked)::text[])"
    "   RETURNING w.id, w.seq, (SELECT n FROM counts WHERE counts.i_ws = w.id) AS n),"
    " ins AS (INSERT INTO messages (workspace_id, id, channel_id, seq, author_id, parent_id, body,"
    "   client_msg_id, terms) SELECT ok.i_ws, ok.i_mid, ok.i_ch, b.seq - b.n + ok.k, ok.i_author,"
    "   ok.i_parent, ok.i_body, ok.i_cmid, ok.i_terms::bytea[] FROM ok JOIN bump b ON b.id = "
    "ok.i_ws"
    "   RETURNING workspace_id AS w_id, " MSG_COLS "),"
    " par AS (UPDATE messages p SET last_reply_at = now(), reply_count = p.reply_count"
    "   + (SELECT count(*) FROM ok WHERE ok.i_ws = p.workspace_id AND ok.i_parent = p.id)"
    "   WHERE p.workspace_id = ANY ((SELECT array_agg(i_ws) FROM ok"
    "     WHERE i_parent IS NOT NULL)::text[])"
    "   AND p.id = ANY ((SELECT array_agg(i_parent) FROM ok WHERE i_parent IS NOT NULL)::text[])"
    "   RETURNING 1),"
    " ob AS (INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)"
    "   SELECT w_id, seq, 'message.created', channel_id, jsonb_build_object('id', id,"
    "   'channel_id', channel_id, 'seq', seq, 'author_id', author_id, 'parent_id', parent_id,"
    "   'client_msg_id', client_msg_id, 'text', body, 'created_at', c_at) FROM ins RETURNING 1),"
    " res AS (SELECT ok.ord, ins.id, ins.channel_id, ins.seq, ins.author_id, ins.body,"
    "   ins.parent_id, ins.client_msg_id, ins.c_at, ins.e_at, ins.deleted, ins.reply_count,"
    "   ins.l_at FROM ins JOIN ok ON ok.i_mid = ins.id"
    "   UNION ALL SELECT ord, id, channel_id, seq, author_id, body, parent_id, client_msg_id,"
    "   c_at, e_at, deleted, reply_count, l_at FROM dup)"
    " SELECT st.ord, st.s, res.id, res.channel_id, res.seq, res.author_id, res.body,"
    "   res.parent_id, res.client_msg_id, res.c_at, res.e_at, res.deleted, res.reply_count,"
    "   res.l_at"
    " FROM st LEFT JOIN res ON res.ord = st.ord AND st.s IN ('ok', 'duplicate') ORDER BY st.ord";

/* $1: the workspaces of the posts (repeats allowed). Sent ahead of
 * sql_post_many in the same transaction: it waits here, in a statement of
 * its own, for another worker's statement holding the same workspaces to
 * commit. Waiting inside sql_post_many instead meant re-checking its whole
 * plan against the row that moved meanwhile (EvalPlanQual), a tenth of
 * Postgres's CPU under bench/ingest; sql_post_many then starts with a
 * snapshot that already holds the other commit. Ordered like its `locked`
 * CTE, so two groups cannot deadlock. */
static const char sql_post_lock[] =
    "SELECT count(*) FROM (SELECT DISTINCT unnest($1::text[]) AS id ORDER BY 1) d"
    " CROSS JOIN LATERAL (SELECT 1 FROM workspaces w WHERE w.id = d.id FOR UPDATE) x";

typedef struct {
    rg_req_t **reqs; /* waiting for the next statement */
    int n, cap;
    size_t bytes;
    rg_req_t **sent; /* in the statement in flight */
    int nsent;
    bool inflight;
    bool prepared;
    core_pg_stmt_t stmt, lock;
    core_buf_t arrays[POSTQ_NARRAYS];
} postq_shard_t;

struct rg_postq_s {
    rg_worker_t *w;
    uv_prepare_t prepare;
    postq_shard_t shards[RG_MAX_SHARDS];
    bool closing;
    core_metric_t m_size;
};

/* An element of a text[] literal: quoted, with " and \ escaped; NULL bare. */
static void put_elem(core_buf_t *b, const char *v)
{
    if (b->len > 1)
        core_buf_putc(b, ',');
    if (!v) {
        core_buf_puts(b, "NULL");
        return;
    }
    core_buf_putc(b, '"');
    const char *run = v;
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\') {
            core_buf_append(b, run, (size_t)(p - run));
            core_buf_putc(b, '\\');
            run = p;
        }
    }
    core_buf_puts(b, run);
    core_buf_putc(b, '"');
}

static void postq_flush(rg_postq_t *q, int s);

static void on_posts(const PGresult *res, int err, const char *errmsg, void *ud)
{
    postq_shard_t *sh = ud;
    rg_postq_t *q = NULL;
    rg_req_t **sent = sh->sent;
    int n = sh->nsent;
    sh->sent = NULL;
    sh->nsent = 0;
    sh->inflight = false;
    /* A statement that failed as a whole (a race with another worker's commit,
     * a deadlock victim, or one post the database refused): every post runs
     * through the one-statement path, where a bad post fails alone and the
     * others see what was committed meanwhile. */
    bool rerun = err == CORE_PG_ESQL || err == CORE_PG_EABORTED; /* the lock ahead failed */
    int rows = err ? 0 : PQntuples(res);
    for (int i = 0; i < n; i++) {
        rg_req_t *r = sent[i];
        q = r->w->postq;
        if (rg_req_gone(r))
            continue;
        if (err && !rerun) {
            rg_req_fail_pg(r, err, res);
            continue;
        }
        if (err || i >= rows || !strcmp(PQgetvalue(res, i, 1), "again")) {
            submit_write(r); /* the one-statement path */
            continue;
        }
        answer_write(r, res, i, 1);
    }
    free(sent);
    if (q && !q->closing) {
        int s = (int)(sh - q->shards);
        if (sh->n)
            postq_flush(q, s);
    }
}

static void postq_flush(rg_postq_t *q, int s)
{
    postq_shard_t *sh = &q->shards[s];
    if (sh->inflight || sh->n == 0 || q->closing)
        return;
    rg_worker_t *w = q->w;
    if (!sh->prepared) {
        if (core_pg_pool_prepare(w->shards[s], sql_post_many, &sh->stmt) != 0 ||
            core_pg_pool_prepare(w->shards[s], sql_post_lock, &sh->lock) != 0)
            return;
        sh->prepared = true;
    }
    for (int a = 0; a < POSTQ_NARRAYS; a++) {
        core_buf_reset(&sh->arrays[a]);
        core_buf_putc(&sh->arrays[a], '{');
    }
    for (int i = 0; i < sh->n; i++) {
        msg_state_t *st = ST(sh->reqs[i]);
        for (int a = 0; a < POSTQ_NARRAYS; a++)
            put_elem(&sh->arrays[a], st->params[a]);
    }
    const char *values[POSTQ_NARRAYS];
    for (int a = 0; a < POSTQ_NARRAYS; a++) {
        core_buf_putc(&sh->arrays[a], '}');
        values[a] = core_buf_cstr(&sh->arrays[a]);
    }
    core_pg_batch_t *pb = core_pg_batch_begin(w->shards[s]);
    int rc = core_pg_batch_add_prepared(pb, sh->lock, 1, values, NULL, NULL, NULL, NULL);
    if (rc == 0)
        rc = core_pg_batch_add_prepared(pb, sh->stmt, POSTQ_NARRAYS, values, NULL, on_posts, sh,
                                        NULL);
    if (rc)
        core_pg_batch_discard(pb);
    else
        rc = core_pg_batch_commit(pb);
    core_metrics_observe(q->m_size, sh->n);
    rg_req_t **reqs = sh->reqs;
    int n = sh->n;
    sh->reqs = NULL;
    sh->n = sh->cap = 0;
    sh->bytes = 0;
    if (rc) {
        for (int i = 0; i < n; i++) {
            rg_req_t *r = reqs[i];
            if (!rg_req_gone(r))
                rg_req_fail_pg(r, rc, NULL);
        }
        free(reqs);
        return;
    }
    sh->sent = reqs;
    sh->nsent = n;
    sh->inflight = true;
}

static void on_postq_prepare(uv_prepare_t *h)
{
    rg_postq_t *q = h->data;
    for (int s = 0; s < q->w->nshards; s++)
        postq_flush(q, s);
}

static rg_postq_t *postq_of(rg_worker_t *w)
{
    if (w->postq)
        return w->postq;
    rg_postq_t *q = core_xcalloc(1, sizeof *q);
    q->w = w;
    for (int s = 0; s < RG_MAX_SHARDS; s++)
        for (int a = 0; a < POSTQ_NARRAYS; a++)
            core_buf_init(&q->shards[s].arrays[a]);
    static const double bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
    q->m_size = core_metrics_histogram("meridian_post_batch_size",
                                       "Posts written by one set-based statement.", "", bounds,
                                       sizeof bounds / sizeof bounds[0]);
    uv_prepare_init(&w->loop, &q->prepare);
    q->prepare.data = q;
    uv_prepare_start(&q->prepare, on_postq_prepare);
    uv_unref((uv_handle_t *)&q->prepare); /* it only serves work other handles bring */
    w->postq = q;
    return q;
}

static void post_enqueue(rg_req_t *r)
{
    rg_postq_t *q = postq_of(r->w);
    postq_shard_t *sh = &q->shards[r->shard];
    size_t len = strlen(ST(r)->params[4]) + strlen(ST(r)->params[7]);
    if (sh->n == POSTQ_MAX || sh->bytes + len > POSTQ_MAX_BYTES) {
        if (sh->inflight) {
            submit_write(r); /* the next statement is full: go alone */
            return;
        }
        postq_flush(q, r->shard);
    }
    if (sh->n == sh->cap) {
        sh->cap = sh->cap ? sh->cap * 2 : 16;
        sh->reqs = core_xrealloc(sh->reqs, (size_t)sh->cap * sizeof *sh->reqs);
    }
    sh->reqs[sh->n++] = r;
    sh->bytes += len;
    r->pending++;
}

static void on_postq_closed(uv_handle_t *h)
{
    rg_postq_t *q = h->data;
    for (int s = 0; s < RG_MAX_SHARDS; s++)
        for (int a = 0; a < POSTQ_NARRAYS; a++)
            core_buf_free(&q->shards[s].arrays[a]);
    free(q);
}

void rg_postq_free(rg_postq_t *q)
{
    if (!q || q->closing)
        return;
    /* After the pools closed: statements in flight were answered. Posts still
     * waiting never reached the database: the client may retry them. */
    q->closing = true;
    q->w->postq = NULL;
    for (int s = 0; s < RG_MAX_SHARDS; s++) {
        postq_shard_t *sh = &q->shards[s];
        for (int i = 0; i < sh->n; i++) {
            rg_req_t *r = sh->reqs[i];
            if (!rg_req_gone(r))
                rg_req_fail(r, 503, "shutting_down", "the server is shutting down; retry");
        }
        free(sh->reqs);
        free(sh->sent);
        sh->reqs = sh->sent = NULL;
        sh->n = sh->nsent = 0;
    }
    uv_close((uv_handle_t *)&q->prepare, on_postq_closed);
}

/* ---- reads ---- */

static void on_history(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    msg_state_t *st = ST(r);
    int n = PQntuples(res);
    if (n == 0) {
        not_found(r);
        return;
    }
    if (PQgetisnull(res, 0, 0))
        n = 0; /* visible, and nothing on this page */
    bool has_more = n > st->limit;
    if (has_more)
        n = st->limit;
    /* Rows come in paging order; the page is always newest first. */
    bool asc = st->has_after;
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "messages");
    core_jw_arr_open(&jw);
    const rg_key_t *k = rg_keys_peek(st->ws);
    for (int i = 0; i < n; i++) {
        int rc = put_message(&jw, res, asc ? n - 1 - i : i, 0, k, NULL, 0);
        if (rc) {
            fail_undecryptable(r, &b, rc);
            return;
        }
    }
    core_jw_arr_close(&jw);
    int64_t lo = 0, hi = 0;
    if (n > 0) {
        int first = 0, last = n - 1;
        int64_t a = strtoll(PQgetvalue(res, first, 2), NULL, 10);
        int64_t z = strtoll(PQgetvalue(res, last, 2), NULL, 10);
        lo = a < z ? a : z;
        hi = a < z ? z : a;
    }
    core_jw_key(&jw, "next_before");
    if (n > 0)
        core_jw_int(&jw, lo);
    else
        core_jw_null(&jw);
    core_jw_key(&jw, "next_after");
    if (n > 0)
        core_jw_int(&jw, hi);
    else if (st->has_after)
        core_jw_int(&jw, st->cursor); /* nothing newer yet: poll from the same place */
    else
        core_jw_null(&jw);
    core_jw_key(&jw, "has_more");
    core_jw_bool(&jw, has_more);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void on_replies(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    msg_state_t *st = ST(r);
    int n = PQntuples(res);
    if (n == 0) {
        not_found(r);
        return;
    }
    int64_t reply_count = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (PQgetisnull(res, 0, 1))
        n = 0;
    bool has_more = n > st->limit;
    if (has_more)
        n = st->limit;
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "replies");
    core_jw_arr_open(&jw);
    const rg_key_t *k = rg_keys_peek(st->ws);
    for (int i = 0; i < n; i++) {
        int rc = put_message(&jw, res, i, 1, k, NULL, 0);
        if (rc) {
            fail_undecryptable(r, &b, rc);
            return;
        }
    }
    core_jw_arr_close(&jw);
    core_jw_key(&jw, "reply_count");
    core_jw_int(&jw, reply_count);
    core_jw_key(&jw, "next_after");
    if (n > 0)
        core_jw_int(&jw, strtoll(PQgetvalue(res, n - 1, 3), NULL, 10));
    else if (st->has_after)
        core_jw_int(&jw, st->cursor);
    else
        core_jw_null(&jw);
    core_jw_key(&jw, "has_more");
    core_jw_bool(&jw, has_more);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

/* ---- the common path: authenticate, find the shard, run ---- */

/* Runs the operation once the workspace's keys are in the cache (k; NULL
 * for a delete, which needs none). */
static void run_keyed(rg_req_t *r, const rg_key_t *k)
{
    msg_state_t *st = ST(r);
    const char *user = r->who.sub;
    switch (st->kind) {
    case OP_POST:
        rg_new_id(st->new_id, sizeof st->new_id, "m_");
        st->sql = sql_post;
        st->params[0] = st->ws;
        st->params[1] = st->ch;
        st->params[2] = user;
        st->params[3] = st->new_id;
        st->params[5] = st->cmid;
        st->params[6] = st->parent;
        seal(r, k, st->new_id); /* params[4] and [7] */
        st->params[7] = core_buf_cstr(&st->terms);
        st->nparams = 8;
        post_enqueue(r);
        return;
    case OP_EDIT:
        st->sql = sql_edit;
        st->params[0] = st->ws;
        st->params[1] = st->ch;
        st->params[2] = user;
        st->params[3] = st->mid;
        seal(r, k, st->mid);
        st->params[5] = core_buf_cstr(&st->terms);
        st->nparams = 6;
        submit_write(r);
        return;
    case OP_DELETE:
        st->sql = sql_delete;
        st->params[0] = st->ws;
        st->params[1] = st->ch;
        st->params[2] = user;
        st->params[3] = st->mid;
        st->nparams = 4;
        submit_write(r);
        return;
    case OP_HISTORY: {
        snprintf(st->limit_txt, sizeof st->limit_txt, "%d", st->limit + 1);
        if (st->has_before || st->has_after)
            snprintf(st->cursor_txt, sizeof st->cursor_txt, "%lld", (long long)st->cursor);
        const char *params[] = {st->ws, st->ch, user,
                                st->has_before || st->has_after ? st->cursor_txt : NULL,
                                st->limit_txt};
        rg_req_query(r, r->shard, st->has_after ? sql_history_after : sql_history_before, 5, params,
                     on_history);
        return;
    }
    case OP_REPLIES: {
        snprintf(st->limit_txt, sizeof st->limit_txt, "%d", st->limit + 1);
        if (st->has_after)
            snprintf(st->cursor_txt, sizeof st->cursor_txt, "%lld", (long long)st->cursor);
        const char *params[] = {
            st->ws, st->ch, user, st->mid, st->has_after ? st->cursor_txt : NULL, st->limit_txt};
        rg_req_query(r, r->shard, sql_replies, 6, params, on_replies);
        return;
    }
    }
}

static void on_key(int err, const rg_key_t *k, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    if (err) {
        rg_keys_fail(r, err);
        return;
    }
    run_keyed(r, k);
}

/* Every operation but a delete reads or writes bodies: the workspace's keys
 * first (a cache hit answers at once). */
static void run(rg_req_t *r)
{
    msg_state_t *st = ST(r);
    if (st->kind == OP_DELETE) {
        run_keyed(r, NULL);
        return;
    }
    r->pending++;
    int rc = rg_keys_get(r->w, st->ws, r->shard, on_key, r);
    if (rc) {
        r->pending--;
        rg_keys_fail(r, rc);
    }
}

static void authenticated(rg_req_t *r)
{
    rg_api_in_workspace(r, ST(r)->ws, run);
}

/* ---- request parsing ---- */

/* Copies the path's ids: the request's own memory goes if the client does,
 * while a batched write still reads its parameters. A malformed id names
 * nothing: 404. */
static bool take_ids(rg_req_t *r, bool with_mid)
{
    msg_state_t *st = ST(r);
    const char *ws = core_http_param(r->http, "id");
    const char *ch = core_http_param(r->http, "cid");
    const char *mid = with_mid ? core_http_param(r->http, "mid") : "x";
    if (!ws || !ch || !mid || !rg_id_valid(ws) || !rg_id_valid(ch) || !rg_id_valid(mid)) {
        not_found(r);
        return false;
    }
    snprintf(st->ws, sizeof st->ws, "%s", ws);
    snprintf(st->ch, sizeof st->ch, "%s", ch);
    if (with_mid)
        snprintf(st->mid, sizeof st->mid, "%s", mid);
    return true;
}

/* The text field: 1..TEXT_MAX characters, with its own error for too long. */
static bool take_text(rg_req_t *r)
{
    const core_json_t *v = core_json_get(r->body, "text");
    if (!v || v->type == CORE_JSON_NULL) {
        rg_req_fail(r, 400, "invalid_request", "text is required");
        return false;
    }
    if (v->type != CORE_JSON_STRING) {
        rg_req_fail(r, 400, "invalid_request", "text must be a string");
        return false;
    }
    size_t n = rg_utf8_chars(v->u.str.s, v->u.str.len);
    if (n > TEXT_MAX) {
        rg_req_fail(r, 400, "message_too_long", "text must be at most 40000 characters");
        return false;
    }
    if (n == 0) {
        rg_req_fail(r, 400, "invalid_request", "text must not be empty");
        return false;
    }
    if (memchr(v->u.str.s, 0, v->u.str.len)) {
        rg_req_fail(r, 400, "invalid_request", "text must not contain NUL characters");
        return false;
    }
    ST(r)->text = v->u.str.s;
    ST(r)->text_len = v->u.str.len;
    return true;
}

/* An optional id field of the body: 1..64 of [A-Za-z0-9_-]. */
static bool take_opt_id(rg_req_t *r, const char *field, const char **out)
{
    if (!rg_req_str(r, field, 1, 64, false, out))
        return false;
    if (*out && !rg_id_valid(*out)) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s must be 1 to 64 of A-Z, a-z, 0-9, _ and -", field);
        rg_req_fail(r, 400, "invalid_request", msg);
        return false;
    }
    return true;
}

/* Reads a decimal query parameter in [min, max]. Absent: *present = false.
 * Present and malformed: answers 400 naming it and returns false. */
static bool take_num(rg_req_t *r, const char *name, int64_t min, int64_t max, bool *present,
                     int64_t *out)
{
    *present = core_http_has_query(r->http, name);
    if (!*present)
        return true;
    char buf[32], msg[128];
    int len = core_http_query(r->http, name, buf, sizeof buf);
    bool ok = len > 0 && len <= 19;
    for (int i = 0; ok && i < len; i++)
        ok = buf[i] >= '0' && buf[i] <= '9';
    if (ok) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        ok = errno == 0 && v >= min && v <= max;
        *out = v;
    }
    if (!ok) {
        snprintf(msg, sizeof msg, "%s must be an integer from %lld to %lld", name, (long long)min,
                 (long long)max);
        rg_req_fail(r, 400, "invalid_request", msg);
        return false;
    }
    return true;
}

static bool take_limit(rg_req_t *r)
{
    bool present;
    int64_t v = PAGE_DEFAULT;
    if (!take_num(r, "limit", 1, PAGE_MAX, &present, &v))
        return false;
    ST(r)->limit = (int)v;
    return true;
}

static void free_state(rg_req_t *r)
{
    core_buf_free(&ST(r)->enc);
    core_buf_free(&ST(r)->terms);
}

static rg_req_t *start(core_http_req_t *http, void *ud, op_kind_t kind)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(msg_state_t));
    ST(r)->kind = kind;
    r->on_free = free_state; /* the buffers start empty: nothing to free until sealed */
    return r;
}

static void on_post(core_http_req_t *http, void *ud)
{
    rg_req_t *r = start(http, ud, OP_POST);
    msg_state_t *st = ST(r);
    if (!take_ids(r, false) || !rg_req_body(r, false) || !take_text(r) ||
        !take_opt_id(r, "client_msg_id", &st->cmid) || !take_opt_id(r, "parent_id", &st->parent))
        return;
    rg_api_authenticate(r, authenticated);
}

static void on_list(core_http_req_t *http, void *ud)
{
    rg_req_t *r = start(http, ud, OP_HISTORY);
    msg_state_t *st = ST(r);
    int64_t before = 0, after = 0;
    if (!take_ids(r, false) || !take_limit(r) ||
        !take_num(r, "before", 1, INT64_MAX, &st->has_before, &before) ||
        !take_num(r, "after", 0, INT64_MAX, &st->has_after, &after))
        return;
    if (st->has_before && st->has_after) {
        rg_req_fail(r, 400, "invalid_request", "give before or after, not both");
        return;
    }
    st->cursor = st->has_before ? before : after;
    rg_api_authenticate(r, authenticated);
}

static void on_edit(core_http_req_t *http, void *ud)
{
    rg_req_t *r = start(http, ud, OP_EDIT);
    if (!take_ids(r, true) || !rg_req_body(r, false) || !take_text(r))
        return;
    rg_api_authenticate(r, authenticated);
}

static void on_delete(core_http_req_t *http, void *ud)
{
    rg_req_t *r = start(http, ud, OP_DELETE);
    if (!take_ids(r, true))
        return;
    rg_api_authenticate(r, authenticated);
}

static void on_replies_list(core_http_req_t *http, void *ud)
{
    rg_req_t *r = start(http, ud, OP_REPLIES);
    msg_state_t *st = ST(r);
    if (!take_ids(r, true) || !take_limit(r) ||
        !take_num(r, "after", 0, INT64_MAX, &st->has_after, &st->cursor))
        return;
    rg_api_authenticate(r, authenticated);
}

int rg_api_message_routes(rg_worker_t *w)
{
    static const char base[] = "/v1/workspaces/{id}/channels/{cid}/messages";
    int rc = core_http_route(w->http, "POST", base, on_post, w);
    if (!rc)
        rc = core_http_route(w->http, "GET", base, on_list, w);
    if (!rc)
        rc = core_http_route(w->http, "PATCH", "/v1/workspaces/{id}/channels/{cid}/messages/{mid}",
                             on_edit, w);
    if (!rc)
        rc = core_http_route(w->http, "DELETE", "/v1/workspaces/{id}/channels/{cid}/messages/{mid}",
                             on_delete, w);
    if (!rc)
        rc = core_http_route(w->http, "GET",
                             "/v1/workspaces/{id}/channels/{cid}/messages/{mid}/replies",
                             on_replies_list, w);
    return rc;
}
