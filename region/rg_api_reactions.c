/* rg_api_reactions.c: reactions, read markers and unread counts, search.
 *   PUT    /v1/workspaces/{id}/messages/{mid}/reactions/{emoji}      -> 200 reaction (idempotent)
 *   DELETE /v1/workspaces/{id}/messages/{mid}/reactions/{emoji}      -> 204 (also when absent)
 *   GET    /v1/workspaces/{id}/messages/{mid}/reactions              -> 200 counts per emoji
 *   POST   /v1/workspaces/{id}/channels/{cid}/read         {seq}     -> 200 {last_read_seq}
 *   GET    /v1/workspaces/{id}/unread                                -> 200 unread per channel
 *   GET    /v1/workspaces/{id}/search?q=&limit=&channel_id=          -> 200 matches, newest first
 *
 * Every request is one statement on the workspace's shard. The statement
 * checks that the caller is an active member and may see the channel, makes
 * the change and writes its outbox event together, and returns an "outcome"
 * column first, so that the C side only maps outcomes to answers. Whatever
 * the caller may not see (another workspace, a message in a private channel
 * they are not in) is simply not found. */
#include "region/rg_api.h"
#include "region/rg_api_op.h"
#include "core/core.h"
#include "core/log.h"
#include "region/rg_dir.h"
#include "region/rg_keys.h"
#include "residency/res_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMOJI_MAX 64
#define SEARCH_Q_MAX 256
#define SEARCH_LIMIT_DEFAULT 20
#define SEARCH_LIMIT_MAX 200

/* Timestamps as RFC 3339 UTC with milliseconds. */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* Every statement takes $1 = workspace id and $2 = the caller. */
#define ME                                                                                         \
    "me AS (SELECT true AS ok FROM members WHERE workspace_id = $1 AND user_id = $2"               \
    " AND status = 'active')"
#define IS_MEMBER "EXISTS (SELECT 1 FROM me)"

/* The message $3 if the caller may see it: a member, and for a private
 * channel a member of the channel. */
#define MSG_FROM                                                                                   \
    " FROM messages m JOIN channels c ON c.workspace_id = m.workspace_id AND c.id = m.channel_id"  \
    " WHERE m.workspace_id = $1 AND m.id = $3 AND " IS_MEMBER                                      \
    " AND (NOT c.private OR EXISTS (SELECT 1 FROM channel_members cm"                              \
    "      WHERE cm.workspace_id = $1 AND cm.channel_id = m.channel_id AND cm.user_id = $2))"
#define MSG "msg AS (SELECT m.id, m.channel_id, m.deleted_at IS NOT NULL AS deleted" MSG_FROM ")"

/* Writers lock the workspace row first, as message writes do (they take
 * their sequence number before touching the message), so that no lock-order
 * cycle is possible with them: e.g. a reply (workspace, then its parent's
 * reply count) against a reaction to that parent. Non-members lock nothing. */
#define WS_LOCK "wl AS (SELECT 1 FROM workspaces WHERE id = $1 AND " IS_MEMBER " FOR NO KEY UPDATE)"

/* The message, share-locked after the workspace: a delete committed after
 * this statement's snapshot is seen (the lock re-reads the row), and one that
 * comes later waits for this reaction, so a tombstone never gains one. */
#define MSG_LOCKED                                                                                 \
    "msg AS (SELECT m.id, m.channel_id, m.deleted_at IS NOT NULL AS deleted" MSG_FROM              \
    " AND EXISTS (SELECT 1 FROM wl) FOR SHARE OF m)"

/* The event for the change CTE `chg` (at most one row). The sequence is
 * bumped only when the change happened, under the workspace row's lock, and
 * the outbox row takes that number in the same statement: a refused or empty
 * change burns no number, so the sequence stays gap-free in commit order. */
#define EVENT(type)                                                                                \
    " bump AS (UPDATE workspaces SET seq = seq + 1"                                                \
    "          WHERE id = $1 AND EXISTS (SELECT 1 FROM chg) RETURNING seq),"                       \
    " ev AS (INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)"                    \
    "        SELECT $1, bump.seq, '" type "', msg.channel_id,"                                     \
    "               jsonb_build_object('message_id', msg.id, 'channel_id', msg.channel_id,"        \
    "                                  'emoji', $4::text, 'user_id', $2::text)"                    \
    "        FROM bump, msg RETURNING seq)"
#define EVENT_ADDED EVENT("reaction.added")
#define EVENT_REMOVED EVENT("reaction.removed")

#define MSG_OUTCOME                                                                                \
    "CASE WHEN NOT " IS_MEMBER " THEN 'not_found'"                                                 \
    " WHEN msg.id IS NULL THEN 'message_not_found'"

/* ---- request state ---- */

typedef struct {
    rg_api_op_state_t base;        /* first: the shared path's state */
    char id[CORE_AUTH_ID_MAX + 1]; /* message or channel */
    char emoji[EMOJI_MAX + 1];
    char seq[24];
    char q[12 * SEARCH_Q_MAX + 1]; /* core_http_query bounds the percent-encoded length */
    char limit[8];
    char channel[CORE_AUTH_ID_MAX + 1];
    core_buf_t terms; /* search: the query's blind index terms, a bytea[] literal */
} rx_state_t;

#define ST(r) ((rx_state_t *)(r)->state)

/* ---- validation ---- */

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is
 * invalid: overlong forms, surrogates and code points past U+10FFFF are. Sets
 * *cp to the code point. */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned *cp)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        min = 0x80;
        c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        min = 0x800;
        c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* Counts the characters of valid UTF-8 without control characters; -1 when
 * the text is not that. */
static long text_chars(const char *s, size_t n)
{
    long chars = 0;
    for (size_t i = 0; i < n; chars++) {
        unsigned cp;
        size_t len = utf8_seq((const unsigned char *)s + i, n - i, &cp);
        if (len == 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
            return -1;
        i += len;
    }
    return chars;
}

/* An emoji is a short name ("thumbsup", "+1") or the emoji itself: 1..64
 * bytes of valid UTF-8 without controls, spaces or '/' (it is a path
 * segment, and clients echo it back into paths). */
static bool emoji_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= EMOJI_MAX && !strchr(s, '/') && !strchr(s, ' ') && text_chars(s, n) >= 0;
}

/* Parses a decimal integer in [lo, hi] that is the whole string. */
static bool parse_int(const char *s, long long lo, long long hi, long long *out)
{
    if (!*s || strlen(s) > 19)
        return false;
    long long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    if (v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* ---- answers ---- */

static void reply_reaction(rg_req_t *r, const PGresult *res)
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "reaction");
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "message_id");
    core_jw_str(&jw, PQgetvalue(res, 0, 1));
    core_jw_key(&jw, "emoji");
    core_jw_str(&jw, ST(r)->emoji);
    core_jw_key(&jw, "user_id");
    core_jw_str(&jw, r->who.sub);
    core_jw_obj_close(&jw);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

/* Rows: outcome, emoji, count, me (NULL emoji: no reactions). */
static void reply_reactions(rg_req_t *r, const PGresult *res)
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "reactions");
    core_jw_arr_open(&jw);
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 1))
            continue;
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "emoji");
        core_jw_str(&jw, PQgetvalue(res, i, 1));
        core_jw_key(&jw, "count");
        core_jw_int(&jw, strtoll(PQgetvalue(res, i, 2), NULL, 10));
        core_jw_key(&jw, "me");
        core_jw_bool(&jw, PQgetvalue(res, i, 3)[0] == 't');
        core_jw_obj_close(&jw);
    }
    core_jw_arr_close(&jw);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

static void reply_marker(rg_req_t *r, const PGresult *res)
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "channel_id");
    core_jw_str(&jw, ST(r)->id);
    core_jw_key(&jw, "last_read_seq");
    core_jw_int(&jw, strtoll(PQgetvalue(res, 0, 1), NULL, 10));
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

/* Rows: outcome, channel_id, last_read_seq, unread (NULL channel: none). */
static void reply_unread(rg_req_t *r, const PGresult *res)
{
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "channels");
    core_jw_arr_open(&jw);
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 1))
            continue;
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "channel_id");
        core_jw_str(&jw, PQgetvalue(res, i, 1));
        core_jw_key(&jw, "last_read_seq");
        core_jw_int(&jw, strtoll(PQgetvalue(res, i, 2), NULL, 10));
        core_jw_key(&jw, "unread");
        core_jw_int(&jw, strtoll(PQgetvalue(res, i, 3), NULL, 10));
        core_jw_obj_close(&jw);
    }
    core_jw_arr_close(&jw);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

/* Rows: outcome, id, channel_id, seq, author_id, parent_id, body,
 * created_at, rank (NULL id: no hits). Bodies are decrypted into one
 * buffer per worker. */
static void reply_search(rg_req_t *r, const PGresult *res)
{
    static core_buf_t plain;
    const rg_key_t *k = rg_keys_peek(rg_api_op_state(r)->ws);
    core_buf_t b;
    core_buf_init(&b);
    core_jw_t jw;
    core_jw_init(&jw, &b);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "results");
    core_jw_arr_open(&jw);
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 1))
            continue;
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "message");
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "id");
        core_jw_str(&jw, PQgetvalue(res, i, 1));
        core_jw_key(&jw, "channel_id");
        core_jw_str(&jw, PQgetvalue(res, i, 2));
        core_jw_key(&jw, "seq");
        core_jw_int(&jw, strtoll(PQgetvalue(res, i, 3), NULL, 10));
        core_jw_key(&jw, "author_id");
        core_jw_str(&jw, PQgetvalue(res, i, 4));
        core_jw_key(&jw, "parent_id");
        if (PQgetisnull(res, i, 5))
            core_jw_null(&jw);
        else
            core_jw_str(&jw, PQgetvalue(res, i, 5));
        core_jw_key(&jw, "text");
        int rc = res_keys_decrypt(k && k->has_dk ? k->dk : NULL, PQgetvalue(res, i, 1),
                                  PQgetvalue(res, i, 6), (size_t)PQgetlength(res, i, 6), &plain);
        if (rc) {
            /* Never ciphertext to a client; the key was there, the body is bad. */
            core_buf_free(&b);
            core_log(CORE_LOG_ERROR, r->http ? r->http->id : NULL, "api.search.undecryptable",
                     "workspace=%s error=%d", rg_api_op_state(r)->ws, rc);
            rg_req_fail(r, 500, "undecryptable",
                        "a message could not be decrypted; it has been logged");
            return;
        }
        core_jw_strn(&jw, plain.base ? plain.base : "", plain.len);
        core_jw_key(&jw, "created_at");
        core_jw_str(&jw, PQgetvalue(res, i, 7));
        core_jw_obj_close(&jw);
        core_jw_key(&jw, "rank");
        core_jw_double(&jw, strtod(PQgetvalue(res, i, 8), NULL));
        core_jw_obj_close(&jw);
    }
    core_jw_arr_close(&jw);
    core_jw_obj_close(&jw);
    rg_req_reply(r, 200, &b);
}

/* ---- outcomes ---- */

static const rg_outcome_t OUTCOMES[] = {
    {"not_found", 404, "not_found", "no such workspace"},
    {"message_not_found", 404, "not_found", "no such message"},
    {"channel_not_found", 404, "not_found", "no such channel"},
    {"message_deleted", 409, "message_deleted", "the message has been deleted"},
    {"not_in_channel", 409, "not_in_channel", "join the channel first"},
    {"seq_out_of_range", 400, "invalid_request", "seq is beyond the channel's newest message"},
};

/* Every endpoint here answers its outcomes from the one table. */
#define OUTCOME_TABLE .outcomes = OUTCOMES, .noutcomes = sizeof OUTCOMES / sizeof OUTCOMES[0]

/* ---- parsers: fill params[2..] ---- */

static bool parse_message_path(rg_req_t *r)
{
    rx_state_t *st = ST(r);
    if (!rg_req_path_id(r, "mid", "message id", st->id, sizeof st->id))
        return false;
    rg_api_op_param(r, st->id);
    return true;
}

static bool parse_reaction_path(rg_req_t *r)
{
    rx_state_t *st = ST(r);
    if (!parse_message_path(r))
        return false;
    const char *emoji = core_http_param(r->http, "emoji");
    if (!emoji || !emoji_ok(emoji)) {
        rg_req_fail(r, 400, "invalid_request",
                    "emoji must be 1 to 64 bytes of a short name or an emoji,"
                    " without spaces, '/' or control characters");
        return false;
    }
    snprintf(st->emoji, sizeof st->emoji, "%s", emoji);
    rg_api_op_param(r, st->emoji);
    return true;
}

static bool parse_marker(rg_req_t *r)
{
    rx_state_t *st = ST(r);
    if (!rg_req_path_id(r, "cid", "channel id", st->id, sizeof st->id) || !rg_req_body(r, false))
        return false;
    const core_json_t *v = core_json_get(r->body, "seq");
    if (!v || v->type != CORE_JSON_NUMBER || !v->u.num.is_int || v->u.num.i < 0) {
        rg_req_fail(r, 400, "invalid_request", "seq must be a non-negative integer");
        return false;
    }
    snprintf(st->seq, sizeof st->seq, "%lld", (long long)v->u.num.i);
    rg_api_op_param(r, st->id);
    rg_api_op_param(r, st->seq);
    return true;
}

static bool parse_search(rg_req_t *r)
{
    rx_state_t *st = ST(r);
    int n = core_http_query(r->http, "q", st->q, sizeof st->q);
    long chars = n > 0 ? text_chars(st->q, (size_t)n) : -1;
    if (chars < 1 || chars > SEARCH_Q_MAX) {
        rg_req_fail(r, 400, "invalid_request", "q is required: 1 to 256 characters of text");
        return false;
    }
    long long limit = SEARCH_LIMIT_DEFAULT;
    if (core_http_has_query(r->http, "limit")) {
        char buf[24];
        if (core_http_query(r->http, "limit", buf, sizeof buf) < 0 ||
            !parse_int(buf, 1, SEARCH_LIMIT_MAX, &limit)) {
            rg_req_fail(r, 400, "invalid_request", "limit must be an integer from 1 to 200");
            return false;
        }
    }
    snprintf(st->limit, sizeof st->limit, "%lld", limit);
    const char *channel = NULL;
    if (core_http_has_query(r->http, "channel_id")) {
        if (core_http_query(r->http, "channel_id", st->channel, sizeof st->channel) < 0 ||
            !rg_id_valid(st->channel)) {
            rg_req_fail(r, 400, "invalid_request", "channel_id is not a valid id");
            return false;
        }
        channel = st->channel;
    }
    rg_api_op_param(r, st->q);
    rg_api_op_param(r, st->limit);
    rg_api_op_param(r, channel);
    return true;
}

/* ---- the statements ---- */

/* $3 = message, $4 = emoji. Adding a reaction twice changes nothing and
 * writes no second event (ON CONFLICT sees concurrent adds as well). */
static const rg_api_op_t OP_ADD = {
    .sql = "WITH " ME ", " WS_LOCK ", " MSG_LOCKED ","
           " chg AS (INSERT INTO reactions (workspace_id, message_id, emoji, user_id)"
           "         SELECT $1, msg.id, $4, $2 FROM msg WHERE NOT msg.deleted"
           "         ON CONFLICT DO NOTHING RETURNING message_id)," EVENT_ADDED
           " SELECT " MSG_OUTCOME " WHEN msg.deleted THEN 'message_deleted' ELSE 'ok' END, msg.id"
           " FROM (SELECT 1) one LEFT JOIN msg ON true",
    .parse = parse_reaction_path,
    .reply = reply_reaction,
    OUTCOME_TABLE,
};

/* Removing a reaction that is not there answers 204 and writes no event; a
 * tombstone's reactions may still be removed. */
static const rg_api_op_t OP_REMOVE = {
    .sql = "WITH " ME ", " WS_LOCK ", " MSG ","
           " chg AS (DELETE FROM reactions WHERE workspace_id = $1"
           "         AND message_id = (SELECT id FROM msg) AND emoji = $4 AND user_id = $2"
           "         AND EXISTS (SELECT 1 FROM wl) RETURNING message_id)," EVENT_REMOVED
           " SELECT " MSG_OUTCOME " ELSE 'ok' END FROM (SELECT 1) one LEFT JOIN msg ON true",
    .parse = parse_reaction_path,
    .reply = NULL,
    OUTCOME_TABLE,
};

/* Emoji in the order they were first used on the message. */
static const rg_api_op_t OP_LIST = {
    .sql = "WITH " ME ", " MSG " SELECT " MSG_OUTCOME " ELSE 'ok' END, agg.emoji, agg.n, agg.mine"
           " FROM (SELECT 1) one LEFT JOIN msg ON true"
           " LEFT JOIN LATERAL (SELECT emoji, count(*) AS n, bool_or(user_id = $2) AS mine,"
           "                           min(created_at) AS first FROM reactions"
           "                    WHERE workspace_id = $1 AND message_id = msg.id"
           "                    GROUP BY emoji) agg ON true"
           " ORDER BY agg.first, agg.emoji",
    .parse = parse_message_path,
    .reply = reply_reactions,
    OUTCOME_TABLE,
};

/* $3 = channel, $4 = seq. A read marker is the caller's own state: nobody
 * else is told about it, so it writes no outbox event and takes no sequence
 * number; it is keyed by the caller, so it never touches another user's.
 * It only moves forward (the WHERE is re-checked under the row lock, so
 * concurrent markers keep the highest), and may point at most at the
 * channel's newest message, top-level or reply; 0 is always allowed. */
static const rg_api_op_t OP_MARK_READ = {
    .sql = "WITH " ME ","
           " ch AS (SELECT c.id, c.private, cm.last_read_seq, cm.user_id IS NOT NULL AS member"
           "        FROM channels c LEFT JOIN channel_members cm"
           "             ON cm.workspace_id = c.workspace_id AND cm.channel_id = c.id"
           "             AND cm.user_id = $2"
           "        WHERE c.workspace_id = $1 AND c.id = $3 AND " IS_MEMBER "),"
           " fits AS (SELECT $4::bigint = 0"
           "          OR EXISTS (SELECT 1 FROM messages WHERE workspace_id = $1"
           "                     AND channel_id = $3 AND parent_id IS NULL AND seq >= $4::bigint)"
           "          OR EXISTS (SELECT 1 FROM messages WHERE workspace_id = $1"
           "                     AND channel_id = $3 AND parent_id IS NOT NULL"
           "                     AND seq >= $4::bigint) AS ok),"
           " upd AS (UPDATE channel_members SET last_read_seq = $4::bigint"
           "         WHERE workspace_id = $1 AND channel_id = $3 AND user_id = $2"
           "         AND last_read_seq < $4::bigint AND " IS_MEMBER
           "         AND (SELECT ok FROM fits) RETURNING last_read_seq)"
           " SELECT CASE WHEN NOT " IS_MEMBER " THEN 'not_found'"
           "             WHEN ch.id IS NULL OR (ch.private AND NOT ch.member)"
           "               THEN 'channel_not_found'"
           "             WHEN NOT ch.member THEN 'not_in_channel'"
           "             WHEN NOT (SELECT ok FROM fits) THEN 'seq_out_of_range' ELSE 'ok' END,"
           " COALESCE((SELECT last_read_seq FROM upd), ch.last_read_seq)"
           " FROM (SELECT 1) one LEFT JOIN ch ON true",
    .parse = parse_marker,
    .reply = reply_marker,
    OUTCOME_TABLE,
};

/* Unread: top-level, non-deleted messages by others after the marker, in
 * every channel the caller is in. Each count stops at 10,000 (a client shows
 * "many"), so one huge backlog cannot make every poll slow. */
static const rg_api_op_t OP_UNREAD = {
    .sql = "WITH " ME " SELECT CASE WHEN NOT " IS_MEMBER " THEN 'not_found' ELSE 'ok' END,"
           " cm.channel_id, cm.last_read_seq, u.n"
           " FROM (SELECT 1) one LEFT JOIN me ON true"
           " LEFT JOIN channel_members cm ON cm.workspace_id = $1 AND cm.user_id = $2"
           "      AND me.ok"
           " LEFT JOIN LATERAL (SELECT count(*) AS n FROM (SELECT 1 FROM messages m"
           "                    WHERE m.workspace_id = $1 AND m.channel_id = cm.channel_id"
           "                    AND m.parent_id IS NULL AND m.seq > cm.last_read_seq"
           "                    AND m.deleted_at IS NULL AND m.author_id <> $2"
           "                    LIMIT 10000) x) u ON true"
           " ORDER BY cm.channel_id",
    .reply = reply_unread,
    OUTCOME_TABLE,
};

/* $3 = the query's blind index terms (bytea[]), $4 = limit, $5 = channel or
 * NULL. Bodies are encrypted, so matching is on the blind index
 * (messages.terms, GIN): a message matches when it holds every term of the
 * query (whole words after normalisation: no prefixes, phrases or
 * operators), newest first. A query without terms matches nothing. Only
 * channels the caller may see are searched, and tombstones never match
 * (their terms are cleared; deleted_at is checked too). Every hit has rank 1:
 * the index says only whether a message matches. */
static const rg_api_op_t OP_SEARCH = {
    .sql = "WITH " ME ","
           " vis AS (SELECT c.id FROM channels c WHERE c.workspace_id = $1 AND " IS_MEMBER
           "         AND ($5::text IS NULL OR c.id = $5::text)"
           "         AND (NOT c.private OR EXISTS (SELECT 1 FROM channel_members cm"
           "              WHERE cm.workspace_id = $1 AND cm.channel_id = c.id"
           "              AND cm.user_id = $2))),"
           " hits AS (SELECT m.id, m.channel_id, m.seq, m.author_id, m.parent_id, m.body,"
           "                 m.created_at FROM messages m"
           "          WHERE cardinality($3::bytea[]) > 0 AND m.terms @> $3::bytea[]"
           "          AND m.workspace_id = $1 AND m.channel_id IN (SELECT id FROM vis)"
           "          AND m.deleted_at IS NULL ORDER BY m.seq DESC LIMIT $4::int)"
           " SELECT CASE WHEN NOT " IS_MEMBER " THEN 'not_found'"
           "             WHEN $5::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM vis)"
           "               THEN 'channel_not_found' ELSE 'ok' END,"
           " hits.id, hits.channel_id, hits.seq, hits.author_id, hits.parent_id, hits.body,"
           " " TS("hits.created_at") ", 1::float8"
                                     " FROM (SELECT 1) one LEFT JOIN hits ON true"
                                     " ORDER BY hits.seq DESC",
    .parse = parse_search,
    .reply = reply_search,
    OUTCOME_TABLE,
};

/* ---- search: the op path with a step for the workspace's index key ---- */

static void on_search_key(int err, const rg_key_t *k, void *ud)
{
    rg_req_t *r = ud;
    if (rg_req_gone(r))
        return;
    if (err) {
        rg_keys_fail(r, err);
        return;
    }
    rx_state_t *st = ST(r);
    uint8_t terms[RES_KEYS_MAX_TERMS][RES_KEYS_TERM_BYTES];
    size_t n = res_keys_terms(k->idx, st->q, strlen(st->q), terms, RES_KEYS_MAX_TERMS);
    core_buf_reset(&st->terms);
    res_keys_terms_literal(&st->terms, (const uint8_t(*)[RES_KEYS_TERM_BYTES])terms, n);
    st->base.params[2] = core_buf_cstr(&st->terms); /* in place of q (parse_search) */
    rg_api_op_query(r);
}

static void search_placed(rg_req_t *r)
{
    rg_api_op_state(r)->shard = r->shard;
    r->pending++;
    int rc = rg_keys_get(r->w, rg_api_op_state(r)->ws, r->shard, on_search_key, r);
    if (rc) {
        r->pending--;
        rg_keys_fail(r, rc);
    }
}

static void search_authenticated(rg_req_t *r)
{
    rg_api_op_state_t *st = rg_api_op_state(r);
    if (!rg_req_path_id(r, "id", "workspace id", st->ws, sizeof st->ws))
        return;
    st->params[0] = st->ws;
    st->params[1] = r->who.sub;
    st->nparams = 2;
    if (!parse_search(r))
        return;
    rg_api_in_workspace(r, st->ws, search_placed);
}

static void free_search(rg_req_t *r)
{
    core_buf_free(&ST(r)->terms);
}

static void on_search(core_http_req_t *http, void *ud)
{
    rg_req_t *r = rg_req_new(http, ud, sizeof(rx_state_t));
    r->on_free = free_search;
    rg_api_op_state(r)->op = &OP_SEARCH;
    rg_api_authenticate(r, search_authenticated);
}

#define HANDLER(fn, op)                                                                            \
    static void fn(core_http_req_t *http, void *ud)                                                \
    {                                                                                              \
        rg_api_op_start(rg_req_new(http, ud, sizeof(rx_state_t)), &op);                            \
    }
HANDLER(on_add_reaction, OP_ADD)
HANDLER(on_remove_reaction, OP_REMOVE)
HANDLER(on_list_reactions, OP_LIST)
HANDLER(on_mark_read, OP_MARK_READ)
HANDLER(on_unread, OP_UNREAD)

int rg_api_reaction_routes(rg_worker_t *w)
{
    static const rg_api_op_route_t routes[] = {
        {"PUT", "/v1/workspaces/{id}/messages/{mid}/reactions/{emoji}", on_add_reaction},
        {"DELETE", "/v1/workspaces/{id}/messages/{mid}/reactions/{emoji}", on_remove_reaction},
        {"GET", "/v1/workspaces/{id}/messages/{mid}/reactions", on_list_reactions},
        {"POST", "/v1/workspaces/{id}/channels/{cid}/read", on_mark_read},
        {"GET", "/v1/workspaces/{id}/unread", on_unread},
        {"GET", "/v1/workspaces/{id}/search", on_search},
    };
    return rg_api_op_routes(w, routes, sizeof routes / sizeof routes[0]);
}
