/* eg_dir.h: the edge's copy of the world's directory (design.md, "Global
 * directory"): workspace id -> home region, allowed regions, epoch, pinned;
 * user id -> home region; keyed email hash -> home region. Opaque ids and
 * region names only: no names, emails or content.
 *
 * Pure data: eg_worker.c fetches the snapshot and the change feed of every
 * region (GET /v1/directory, /v1/directory/changes) and feeds the bodies here.
 * Every region serves the whole directory, but a region's own changes reach
 * its feed at commit and the others' only after replication: following every
 * region makes a new workspace routable within one poll of its creation, and
 * keeps the edge routing while any region answers. Reports are merged: a
 * higher epoch wins (a move bumps it); at equal epochs the workspace's home
 * region speaks for itself.
 * Regions are indexes into the world file's regions[]; a region the world
 * file does not name is never routed to (its bit is simply absent). One per
 * worker loop; not thread-safe. */
#ifndef EG_DIR_H
#define EG_DIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "residency/res_world.h"

typedef struct {
    int home;         /* index into the world's regions, or -1: not one of ours */
    uint64_t allowed; /* bit i: region i may hold the workspace (home included) */
    int64_t epoch;
    bool pinned;
    int source; /* the region whose feed reported this */
} eg_ws_route_t;

typedef struct eg_dir_s eg_dir_t;

eg_dir_t *eg_dir_new(const res_world_t *world);
void eg_dir_free(eg_dir_t *d);

/* Merges a snapshot served by region `source` and sets that source's
 * version. Returns 0, or a negative error with a reason in err (nothing
 * changed). */
int eg_dir_load_snapshot(eg_dir_t *d, int source, const char *json, size_t len, char *err,
                         size_t errlen);
/* Merges a page of source's changes; *more tells whether its feed has
 * further pages. Returns 0 or a negative error (nothing applied). */
int eg_dir_apply_changes(eg_dir_t *d, int source, const char *json, size_t len, bool *more,
                         char *err, size_t errlen);

/* Source's version ("<shard>:<n>", to ask for changes since); "" before its
 * first snapshot. */
const char *eg_dir_version(const eg_dir_t *d, int source);
/* The change number within source's version, for the version metric. */
int64_t eg_dir_version_number(const eg_dir_t *d, int source);

const eg_ws_route_t *eg_dir_workspace(const eg_dir_t *d, const char *id);
/* Home region index of a user or of a keyed email hash (64 hex), or -1. */
int eg_dir_user(const eg_dir_t *d, const char *id);
int eg_dir_email(const eg_dir_t *d, const char *hash_hex);
/* Sets a workspace's home (a region answered 421 naming it) when it is in
 * the allowed set; returns whether it did. The change feed confirms later. */
bool eg_dir_set_home(eg_dir_t *d, const char *id, int home);

size_t eg_dir_count(const eg_dir_t *d, char kind); /* 'w', 'u' or 'e' */

#endif
