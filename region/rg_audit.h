/* rg_audit.h: appending to a shard's audit chain outside a request (moves).
 *
 * The chain (migration 0010, docs/residency.md): entry n holds
 * hash = BLAKE2b-256(prev_hash || entry) and an Ed25519 signature of that
 * hash by the region's key. An append reads the head, builds the entry on it
 * and inserts only if the head is unchanged (a concurrent append makes it
 * build again on the new head).
 *
 * Idempotent per (workspace, action, move id): a step that is redone after a
 * crash finds its entry there and appends nothing. */
#ifndef RG_AUDIT_H
#define RG_AUDIT_H

#include "core/json.h"
#include "region/rg_worker.h"

typedef struct {
    int shard;
    const char *workspace_id;
    const char *action;
    const char *actor;    /* user id, or "meridian-region" for the region itself */
    const char *actor_as; /* "operator", "compliance_admin", "system" */
    const char *move_id;  /* may be NULL */
    const char *reason;   /* the admin's reason, or NULL */
} rg_audit_entry_t;

/* The statement head that appends one entry on an unchanged chain head:
 * $1 seq, $2 region, $3 at, $4 workspace, $5 action, $6 entry text,
 * $7 previous hash (hex), $8 hash (hex), $9 signature (hex), $10 key id.
 * The CTE `a` returns the seq when it was appended; callers add their own
 * CTEs (", x AS (... WHERE EXISTS (SELECT 1 FROM a))") and a SELECT. */
#define RG_AUDIT_APPEND_CTE                                                                        \
    "WITH head AS (SELECT coalesce((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1),"        \
    "   '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) AS h,"       \
    "   coalesce((SELECT max(seq) FROM audit_log), 0) AS s),"                                      \
    " a AS (INSERT INTO audit_log (seq, region, at, workspace_id, action, entry, prev_hash,"       \
    "   hash, signature, key_id)"                                                                  \
    "   SELECT $1::bigint, $2, $3::timestamptz, $4, $5, $6, decode($7, 'hex'),"                    \
    "     decode($8, 'hex'), decode($9, 'hex'), $10 FROM head"                                     \
    "   WHERE head.h = decode($7, 'hex') AND head.s + 1 = $1::bigint RETURNING seq)"

typedef void (*rg_audit_cb)(void *ud, int err);

/* Appends e (strings are copied); cb runs once, on the loop, with 0 or a
 * negative error. Returns 0, or a negative error without calling cb. */
int rg_audit_append(rg_worker_t *w, const rg_audit_entry_t *e, rg_audit_cb cb, void *ud);

/* The entry text for (head_seq + 1) and its hash and signature, as the
 * append builds them: shared with the residency API's own changes. at is
 * the RFC 3339 time written in the entry. */
void rg_audit_now(char *at, size_t cap);
/* Opens an entry object and writes the fields every entry starts with (v,
 * seq, region, shard, at, actor); the caller adds its own and closes it. */
void rg_audit_open_entry(core_jw_t *jw, const rg_worker_t *w, int64_t seq, int shard,
                         const char *at, const char *actor, const char *actor_as);
void rg_audit_seal(const rg_worker_t *w, const uint8_t head_hash[32], const char *entry, size_t len,
                   char prev_hex[65], char hash_hex[65], char sig_hex[129]);

#endif
