/* rg_audit.c: see rg_audit.h. */
#include "region/rg_audit.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#define TRIES 8

typedef struct {
    rg_worker_t *w;
    int shard;
    char *ws, *action, *actor, *actor_as, *move_id, *reason;
    int tries;
    rg_audit_cb cb;
    void *ud;
} app_t;

static void app_free(app_t *a)
{
    free(a->ws);
    free(a->action);
    free(a->actor);
    free(a->actor_as);
    free(a->move_id);
    free(a->reason);
    free(a);
}

static void finish(app_t *a, int err)
{
    rg_audit_cb cb = a->cb;
    void *ud = a->ud;
    app_free(a);
    cb(ud, err);
}

void rg_audit_now(char *at, size_t cap)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(at, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(at + n, cap - n, ".%06ldZ", ts.tv_nsec / 1000);
}

void rg_audit_seal(const rg_worker_t *w, const uint8_t head_hash[32], const char *entry, size_t len,
                   char prev_hex[65], char hash_hex[65], char sig_hex[129])
{
    uint8_t hash[32], sig[64];
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, NULL, 0, sizeof hash);
    crypto_generichash_update(&hs, head_hash, 32);
    crypto_generichash_update(&hs, (const unsigned char *)entry, len);
    crypto_generichash_final(&hs, hash, sizeof hash);
    crypto_sign_detached(sig, NULL, hash, sizeof hash, w->keys->sk);
    sodium_bin2hex(prev_hex, 65, head_hash, 32);
    sodium_bin2hex(hash_hex, 65, hash, sizeof hash);
    sodium_bin2hex(sig_hex, 129, sig, sizeof sig);
}

void rg_audit_open_entry(core_jw_t *jw, const rg_worker_t *w, int64_t seq, int shard,
                         const char *at, const char *actor, const char *actor_as)
{
    core_jw_obj_open(jw);
    core_jw_key(jw, "v");
    core_jw_int(jw, 1);
    core_jw_key(jw, "seq");
    core_jw_int(jw, seq);
    core_jw_key(jw, "region");
    core_jw_str(jw, w->cfg->region);
    core_jw_key(jw, "shard");
    core_jw_int(jw, shard);
    core_jw_key(jw, "at");
    core_jw_str(jw, at);
    core_jw_key(jw, "actor");
    core_jw_obj_open(jw);
    core_jw_key(jw, "user_id");
    core_jw_str(jw, actor);
    core_jw_key(jw, "as");
    core_jw_str(jw, actor_as);
    core_jw_obj_close(jw);
}

static void read_head(app_t *a);

static void on_inserted(const PGresult *res, int err, const char *errmsg, void *ud)
{
    app_t *a = ud;
    (void)errmsg;
    bool raced = (err == CORE_PG_ESQL && strcmp(core_pg_sqlstate(res), "23505") == 0) ||
                 (!err && PQntuples(res) == 1 && PQgetisnull(res, 0, 0));
    if (raced && ++a->tries < TRIES) {
        read_head(a);
        return;
    }
    finish(a, err ? err : raced ? UV_EAGAIN : 0);
}

static void on_head(const PGresult *res, int err, const char *errmsg, void *ud)
{
    app_t *a = ud;
    (void)errmsg;
    if (err) {
        finish(a, err);
        return;
    }
    /* Columns: head seq, head hash (hex), already there. */
    if (PQgetvalue(res, 0, 2)[0] == 't') {
        finish(a, 0);
        return;
    }
    int64_t head_seq = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    uint8_t head[32] = {0};
    if (head_seq > 0 &&
        sodium_hex2bin(head, sizeof head, PQgetvalue(res, 0, 1), 64, NULL, NULL, NULL) != 0) {
        finish(a, UV_EINVAL);
        return;
    }
    int64_t seq = head_seq + 1;
    char at[40];
    rg_audit_now(at, sizeof at);
    core_buf_t entry;
    core_buf_init(&entry);
    core_jw_t jw;
    core_jw_init(&jw, &entry);
    rg_audit_open_entry(&jw, a->w, seq, a->shard, at, a->actor, a->actor_as);
    core_jw_key(&jw, "action");
    core_jw_str(&jw, a->action);
    core_jw_key(&jw, "workspace_id");
    core_jw_str(&jw, a->ws);
    if (a->move_id) {
        core_jw_key(&jw, "move_id");
        core_jw_str(&jw, a->move_id);
    }
    if (a->reason) {
        core_jw_key(&jw, "reason");
        core_jw_str(&jw, a->reason);
    }
    core_jw_obj_close(&jw);
    char prev_hex[65], hash_hex[65], sig_hex[129], seq_s[24];
    rg_audit_seal(a->w, head, entry.base, entry.len, prev_hex, hash_hex, sig_hex);
    snprintf(seq_s, sizeof seq_s, "%lld", (long long)seq);
    const char *p[] = {seq_s,     a->w->cfg->region,     at,       a->ws,
                       a->action, core_buf_cstr(&entry), prev_hex, hash_hex,
                       sig_hex,   a->w->keys->pub.kid};
    int rc =
        core_pg_query(a->w->shards[a->shard], RG_AUDIT_APPEND_CTE " SELECT (SELECT seq FROM a)", 10,
                      p, NULL, on_inserted, a, NULL);
    core_buf_free(&entry);
    if (rc)
        finish(a, rc);
}

static void read_head(app_t *a)
{
    const char *p[] = {a->ws, a->action, a->move_id};
    int rc = core_pg_query(
        a->w->shards[a->shard],
        "SELECT coalesce((SELECT max(seq) FROM audit_log), 0),"
        " coalesce(encode((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), 'hex'), ''),"
        " $3::text IS NOT NULL AND EXISTS (SELECT 1 FROM audit_log WHERE workspace_id = $1"
        "   AND action = $2 AND entry::jsonb->>'move_id' = $3)",
        3, p, NULL, on_head, a, NULL);
    if (rc)
        finish(a, rc);
}

int rg_audit_append(rg_worker_t *w, const rg_audit_entry_t *e, rg_audit_cb cb, void *ud)
{
    if (e->shard < 0 || e->shard >= w->nshards || !e->workspace_id || !e->action)
        return UV_EINVAL;
    app_t *a = core_xcalloc(1, sizeof *a);
    a->w = w;
    a->shard = e->shard;
    a->ws = core_xstrdup(e->workspace_id);
    a->action = core_xstrdup(e->action);
    a->actor = core_xstrdup(e->actor ? e->actor : "meridian-region");
    a->actor_as = core_xstrdup(e->actor_as ? e->actor_as : "system");
    a->move_id = e->move_id ? core_xstrdup(e->move_id) : NULL;
    a->reason = e->reason ? core_xstrdup(e->reason) : NULL;
    a->cb = cb;
    a->ud = ud;
    read_head(a);
    return 0;
}
