#include "region/rg_migrate.h"
#include "core/backoff.h"
#include "core/core.h"
#include "core/log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

/* Any constant will do as long as every node uses the same one. */
#define MIGRATE_LOCK_KEY "7243100"

static int fail(PGconn *c, char *err, size_t errlen, const char *what, PGresult *r)
{
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c);
    snprintf(err, errlen, "%s: %.*s", what, (int)strcspn(msg, "\n"), msg);
    if (r)
        PQclear(r);
    return -EIO;
}

static bool ok(PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

int rg_migrate_shard(const char *conninfo, uint32_t connect_timeout_ms, int *applied, char *err,
                     size_t errlen)
{
    *applied = 0;
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%u", (connect_timeout_ms + 999) / 1000);
    /* Later keywords override what the expanded conninfo says. */
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {conninfo, timeout, "meridian-migrate", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        int rc = fail(c, err, errlen, "connect", NULL);
        PQfinish(c);
        return rc;
    }
    int rc = 0;
    char *have = NULL;
    PGresult *r = PQexec(c, "SET client_min_messages = warning");
    PQclear(r);
    r = PQexec(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")");
    if (!ok(r)) {
        rc = fail(c, err, errlen, "advisory lock", r);
        goto out;
    }
    PQclear(r);
    r = PQexec(c, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                  " version int PRIMARY KEY, name text NOT NULL,"
                  " applied_at timestamptz NOT NULL DEFAULT now())");
    if (!ok(r)) {
        rc = fail(c, err, errlen, "schema_migrations", r);
        goto unlock;
    }
    PQclear(r);
    /* Every version recorded, not only the newest: a migration added below
     * one already applied (branches merged in another order) still runs. */
    r = PQexec(c, "SELECT coalesce(max(version), 0), ','"
                  " || coalesce(string_agg(version::text, ','), '') || ',' FROM schema_migrations");
    if (!ok(r)) {
        rc = fail(c, err, errlen, "reading schema_migrations", r);
        goto unlock;
    }
    int current = atoi(PQgetvalue(r, 0, 0));
    have = strdup(PQgetvalue(r, 0, 1)); /* ",1,2,3," */
    PQclear(r);
    if (!have) {
        rc = -ENOMEM;
        goto unlock;
    }
    int newest = rg_migrations_count ? rg_migrations[rg_migrations_count - 1].version : 0;
    if (current > newest) {
        snprintf(err, errlen,
                 "the shard's schema is at version %d, newer than this binary's %d: refusing "
                 "to run an older binary against it",
                 current, newest);
        rc = -EPROTO;
        goto unlock;
    }
    for (int i = 0; i < rg_migrations_count; i++) {
        const rg_migration_t *m = &rg_migrations[i];
        char tag[16];
        snprintf(tag, sizeof tag, ",%d,", m->version);
        if (strstr(have, tag))
            continue;
        r = PQexec(c, "BEGIN");
        PQclear(r);
        r = PQexec(c, m->sql);
        if (!ok(r)) {
            char what[96];
            snprintf(what, sizeof what, "migration %s", m->name);
            rc = fail(c, err, errlen, what, r);
            PQclear(PQexec(c, "ROLLBACK"));
            goto unlock;
        }
        PQclear(r);
        char version[16];
        snprintf(version, sizeof version, "%d", m->version);
        const char *params[] = {version, m->name};
        r = PQexecParams(c, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2,
                         NULL, params, NULL, NULL, 0);
        if (!ok(r)) {
            rc = fail(c, err, errlen, "recording a migration", r);
            PQclear(PQexec(c, "ROLLBACK"));
            goto unlock;
        }
        PQclear(r);
        r = PQexec(c, "COMMIT");
        if (!ok(r)) {
            rc = fail(c, err, errlen, "commit", r);
            goto unlock;
        }
        PQclear(r);
        (*applied)++;
    }
unlock:
    free(have);
    PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
out:
    PQfinish(c);
    return rc;
}

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int rg_migrate_all(const char *const *conninfos, int nshards, uint32_t connect_timeout_ms,
                   uint32_t deadline_ms)
{
    uint64_t deadline = core_now_ms() + deadline_ms;
    for (int i = 0; i < nshards; i++) {
        core_backoff_t b;
        core_backoff_init(&b, 200, 5000);
        for (;;) {
            char err[512];
            int applied = 0;
            int rc = rg_migrate_shard(conninfos[i], connect_timeout_ms, &applied, err, sizeof err);
            if (rc == 0) {
                core_log_info("migrate.shard_ok", "shard=%d applied=%d version=%d", i, applied,
                              rg_migrations_count ? rg_migrations[rg_migrations_count - 1].version
                                                  : 0);
                break;
            }
            char q[400];
            core_log_quote(q, sizeof q, err, strlen(err));
            /* A refused schema or a failing migration will not fix itself. */
            if (rc == -EPROTO || strncmp(err, "migration ", 10) == 0 || core_now_ms() >= deadline) {
                core_log_error("migrate.shard_failed", "shard=%d error=%s", i, q);
                return -1;
            }
            uint32_t delay = core_backoff_next(&b);
            core_log_warn("migrate.shard_retry", "shard=%d error=%s retry_in_ms=%u", i, q, delay);
            sleep_ms(delay);
        }
    }
    return 0;
}
