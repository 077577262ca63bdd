/* ctl.h: meridianctl, the admin CLI (docs/meridianctl.md).
 *
 * A CLI may block, so everything here is synchronous: libpq (PQconnectdb,
 * PQexec), hiredis and cnats in their blocking forms, and HTTP through
 * core/httpc on a private libuv loop run until the one request completes.
 * Every command reads the world file (residency/res_world.h) to find the
 * stores and endpoints of every region.
 *
 * Exit codes are part of the interface (scripts branch on them):
 *   0  success; for verify commands: everything checked and clean
 *   1  a verify command found a problem (tampered audit entry, misplaced data)
 *   2  bad input, found before anything was changed or asked
 *   3  a store or region could not be reached or read: the check is incomplete
 *   4  the region's admin API refused the request (its error code is shown) */
#ifndef CTL_H
#define CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <libpq-fe.h>

#include "core/buf.h"
#include "residency/res_world.h"

enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAIL = 1,
    CTL_EXIT_USAGE = 2,
    CTL_EXIT_UNAVAILABLE = 3,
    CTL_EXIT_REFUSED = 4,
};

typedef struct {
    const char *world_path;
    res_world_t world;
    bool world_loaded;
    char *token;     /* access token, or NULL (only the admin API needs one) */
    const char *dns; /* "host:port" of a DNS server for api URLs' names; NULL: the system's */
    bool json;
    bool progress; /* draw a progress bar on stderr (a terminal, no --quiet) */
} ctl_t;

/* Commands: each returns an exit code. argv[0] is the subcommand's name. */
int ctl_audit_main(ctl_t *c, int argc, char **argv);
int ctl_verify_main(ctl_t *c, int argc, char **argv);
int ctl_residency_main(ctl_t *c, int argc, char **argv);
/* `residency move|move-status|move-cancel|move-report|verify-report|standby|
 * standby-stop|promote` (ctl_move.c). */
int ctl_move_main(ctl_t *c, int argc, char **argv);
bool ctl_move_is_command(const char *sub);

/* ---- the pure parts of ctl_move.c, for tests ---- */

typedef struct {
    const char *sub; /* argv[0] */
    const char *ws, *target, *reason, *at, *out, *file, *region;
    time_t at_time; /* --at, parsed */
    bool dry_run, no_wait, verify;
    bool force; /* promote: even though the home answers */
} ctl_move_args_t;

/* Parses a move subcommand's arguments (argv[0] is its name) and checks what
 * needs no world file: usage, the workspace id's shape, --at, a reason for a
 * real move, a standby or a promotion, --region for promote, options that
 * belong to another subcommand. 0, or -1 with err. */
int ctl_move_parse_args(int argc, char **argv, ctl_move_args_t *a, char *err, size_t errlen);
/* An RFC 3339 time in UTC ("Z" or "+00:00", optional fraction) into *out. 0 or -1. */
int ctl_move_parse_time(const char *s, time_t *out);
/* One progress line for a step of a move: name, bar, percent, state, done/total. */
void ctl_move_step_line(const char *name, const char *state, int64_t done, int64_t total, char *out,
                        size_t cap);

#define CTL_MOVE_MAX_PROBLEMS 16
typedef struct {
    bool parsed;        /* report_text was read */
    bool signature_ok;  /* Ed25519 over report_text by a token_key of the source region */
    bool key_destroyed; /* the report says so */
    int64_t left_total; /* sum of left_at_source */
    size_t left_tables;
    int64_t freeze_ms;
    char move_id[64], workspace_id[72], source[64], target[64], key_id[32], signed_at[40];
    char problems[CTL_MOVE_MAX_PROBLEMS][240];
    size_t nproblems;
} ctl_move_report_check_t;

/* Judges a move report as GET .../move/report answers it ({report_text,
 * signature, key_id, region}): the signature with the source region's
 * token_keys from the world, key_destroyed, left_at_source all zero, and the
 * workspace when expect_ws is set. 0 when all hold, else 1 with problems. */
int ctl_move_report_check(const res_world_t *w, const char *doc, size_t len, const char *expect_ws,
                          ctl_move_report_check_t *r);

/* ---- helpers (ctl_util.c) ---- */

/* Prints "meridianctl: <msg>" on stderr. */
void ctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Connects to one shard (the world's conninfo plus a connect timeout;
 * passwords come from PGPASSFILE). NULL on failure, with libpq's reason in err. */
PGconn *ctl_pg_connect(const res_region_t *r, const res_shard_t *s, char *err, size_t errlen);
/* True when the connected database has table `name` (in its search path). */
bool ctl_pg_has_table(PGconn *pg, const char *name);

/* Lower-case hex of n bytes into out (2n + 1 bytes). */
void ctl_hex(char *out, const uint8_t *p, size_t n);

/* The world's region names, comma-separated, into out (for messages). */
const char *ctl_region_list(const res_world_t *w, char *out, size_t cap);

/* Region names as a Postgres text[] literal: {"us-east","eu-west"}. */
void ctl_pg_region_array(const res_world_t *w, core_buf_t *out);

/* The progress bar on stderr: label, done of total steps. No-op unless c->progress. */
void ctl_progress(const ctl_t *c, const char *label, size_t done, size_t total);
/* Clears the bar line. */
void ctl_progress_end(const ctl_t *c);

/* Seconds since an arbitrary point (CLOCK_MONOTONIC). */
double ctl_now(void);

/* ---- HTTP (ctl_http.c) ---- */

typedef struct {
    int status;      /* 0 when no answer came (see err) */
    core_buf_t body; /* the response body, NUL-terminated via core_buf_cstr */
    char home[64];   /* Meridian-Home-Region, when present */
    char err[256];   /* transport failure, for people */
} ctl_http_resp_t;

/* One request to base (an api URL from the world file), with the token as a
 * bearer when set. body may be NULL. Returns 0 with resp filled (any status)
 * or a negative error with resp->err set. Free resp->body with core_buf_free. */
int ctl_http(const ctl_t *c, const char *base, const char *method, const char *path,
             const char *body, ctl_http_resp_t *resp);

#endif
