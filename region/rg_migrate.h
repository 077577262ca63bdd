/* rg_migrate.h: schema migrations for every Postgres shard of a region.
 *
 * Migrations are the files region/migrations/NNNN_name.sql, compiled into the
 * binary (cmake/embed_migrations.cmake). The master applies them to every
 * shard at start-up, before forking workers: each in its own transaction,
 * under an advisory lock so that nodes starting together take turns, and
 * recorded in schema_migrations so that applying them twice is a no-op.
 * A shard whose schema is newer than the binary is refused. */
#ifndef RG_MIGRATE_H
#define RG_MIGRATE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int version;
    const char *name;
    const char *sql;
} rg_migration_t;

extern const rg_migration_t rg_migrations[];
extern const int rg_migrations_count;

/* Applies what is missing on one shard. Blocking (libpq synchronous API):
 * only for the master at start-up and for tools. Returns 0, or a negative
 * error with the reason in err. *applied counts the migrations it ran. */
int rg_migrate_shard(const char *conninfo, uint32_t connect_timeout_ms, int *applied, char *err,
                     size_t errlen);

/* Migrates every shard, retrying an unreachable one with jittered backoff
 * until deadline_ms has passed. Logs each shard's outcome. Returns 0 or -1. */
int rg_migrate_all(const char *const *conninfos, int nshards, uint32_t connect_timeout_ms,
                   uint32_t deadline_ms);

#endif
