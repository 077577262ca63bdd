/* ctl_move.c: `residency move|move-status|move-cancel|move-report|verify-report`,
 * live moves of a workspace to another region (docs/moves.md), through the
 * admin API of the workspace's current home (/v1/admin/residency/workspaces/
 * {id}/move...); and `residency standby|standby-stop|promote`, a standby copy
 * in another region (a move of kind "standby" that never freezes) and its
 * promotion to home.
 *
 * Promotion is the one call NOT sent through the home: it exists for when the
 * home is down, so it goes straight to the standby's region (its api urls in
 * the world file), which refuses it while the home still answers.
 *
 * The home changes in the middle of a move: before the flip the source
 * answers, after it the target does (from the status the source pushes to
 * it), and a region that is not the home answers 421 naming it
 * (Meridian-Home-Region). So every call remembers the region that last
 * answered as home, starts there, and follows a 421 to the region it names;
 * waiting for a move rides out a region that does not answer for a while,
 * since one side may crash and resume mid-move.
 *
 * A move's report is signed (Ed25519, detached, over the exact bytes of
 * report_text) by the SOURCE region's key; it is checked here against the
 * source region's token_keys in the world file, as `audit verify` checks
 * audit entries, so a report proves what it says only to someone who trusts
 * the world file, not the server that handed it out. */
#include "tools/meridianctl/ctl.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "core/auth.h"
#include "core/core.h"
#include "core/json.h"

/* A region that stops answering while a move is waited for may be restarting
 * (the move resumes from its row): give it this long before exit 3. */
#define UNREACHABLE_GRACE_S 90.0
#define MAX_REPORT_BYTES (8u << 20)

static const char *const STEP_NAMES[] = {"catch_up", "freeze", "flip", "purge", "shred"};
enum { NSTEPS = 5 };

/* ---- pure parts (declared in ctl.h for tests) ---- */

bool ctl_move_is_command(const char *sub)
{
    return strcmp(sub, "move") == 0 || strcmp(sub, "move-status") == 0 ||
           strcmp(sub, "move-cancel") == 0 || strcmp(sub, "move-report") == 0 ||
           strcmp(sub, "verify-report") == 0 || strcmp(sub, "standby") == 0 ||
           strcmp(sub, "standby-stop") == 0 || strcmp(sub, "promote") == 0;
}

static bool valid_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!isalnum((unsigned char)s[n]) && s[n] != '_' && s[n] != '-')
            return false;
    return n >= 1 && n <= 64;
}

static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int ctl_move_parse_time(const char *s, time_t *out)
{
    /* RFC 3339 in UTC only: 2026-11-23T10:00:00[.fff]Z (or +00:00). A local
     * offset is refused rather than converted, so that what the admin typed
     * is what the audit entry shows. */
    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
        s[13] != ':' || s[16] != ':')
        return -1;
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
    int h = digits(s + 11, 2), mi = digits(s + 14, 2), se = digits(s + 17, 2);
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 ||
        se < 0 || se > 59)
        return -1;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (!((p[0] == 'Z' || p[0] == 'z') && p[1] == '\0') && strcmp(p, "+00:00") != 0)
        return -1;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = se};
    time_t t = timegm(&tm);
    /* timegm normalises 2026-02-31 to March: a date that moved is not a date. */
    if (t == (time_t)-1 || tm.tm_mday != d || tm.tm_mon != mo - 1)
        return -1;
    *out = t;
    return 0;
}

int ctl_move_parse_args(int argc, char **argv, ctl_move_args_t *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    a->sub = argv[0];
    const char *pos[3] = {0};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        bool takes = strcmp(o, "--reason") == 0 || strcmp(o, "--at") == 0 ||
                     strcmp(o, "--out") == 0 || strcmp(o, "--region") == 0;
        if (takes && i + 1 >= argc) {
            snprintf(err, errlen, "%s needs a value", o);
            return -1;
        }
        if (strcmp(o, "--reason") == 0)
            a->reason = argv[++i];
        else if (strcmp(o, "--at") == 0)
            a->at = argv[++i];
        else if (strcmp(o, "--out") == 0)
            a->out = argv[++i];
        else if (strcmp(o, "--region") == 0)
            a->region = argv[++i];
        else if (strcmp(o, "--dry-run") == 0)
            a->dry_run = true;
        else if (strcmp(o, "--no-wait") == 0)
            a->no_wait = true;
        else if (strcmp(o, "--wait") == 0)
            a->no_wait = false; /* the default, accepted for scripts that say so */
        else if (strcmp(o, "--verify") == 0)
            a->verify = true;
        else if (strcmp(o, "--force") == 0)
            a->force = true;
        else if (o[0] == '-' && o[1] == '-') {
            snprintf(err, errlen, "residency %s: unknown option '%s'", a->sub, o);
            return -1;
        } else if (npos < 3)
            pos[npos++] = o;
        else {
            snprintf(err, errlen, "residency %s: too many arguments", a->sub);
            return -1;
        }
    }
    bool move = strcmp(a->sub, "move") == 0, report = strcmp(a->sub, "move-report") == 0;
    bool offline = strcmp(a->sub, "verify-report") == 0;
    bool standby = strcmp(a->sub, "standby") == 0, stop = strcmp(a->sub, "standby-stop") == 0;
    bool promote = strcmp(a->sub, "promote") == 0;
    static const char *const usage[] = {
        "move WORKSPACE REGION [--reason TEXT] [--at UTC-TIME] [--dry-run] [--no-wait]",
        "move-status WORKSPACE",
        "move-cancel WORKSPACE [--reason TEXT]",
        "move-report WORKSPACE [--out FILE] [--verify]",
        "verify-report FILE",
        "standby WORKSPACE REGION --reason TEXT",
        "standby-stop WORKSPACE [--reason TEXT]",
        "promote WORKSPACE --region STANDBY-REGION [--force] --reason TEXT"};
    const char *use = move                                 ? usage[0]
                      : report                             ? usage[3]
                      : offline                            ? usage[4]
                      : standby                            ? usage[5]
                      : stop                               ? usage[6]
                      : promote                            ? usage[7]
                      : strcmp(a->sub, "move-cancel") == 0 ? usage[2]
                                                           : usage[1];
    if (npos != (move || standby ? 2 : 1)) {
        snprintf(err, errlen, "usage: residency %s", use);
        return -1;
    }
    if (offline) {
        a->file = pos[0];
    } else {
        a->ws = pos[0];
        if (!valid_id(a->ws)) {
            snprintf(err, errlen, "'%s' is not a workspace id (1-64 of A-Z a-z 0-9 _ -)", a->ws);
            return -1;
        }
    }
    if (move || standby)
        a->target = pos[1];
    bool cancel = strcmp(a->sub, "move-cancel") == 0 || stop;
    bool reasoned = cancel || standby || promote;
    const char *only_move = a->reason && !reasoned ? "--reason"
                            : a->at                ? "--at"
                            : a->dry_run           ? "--dry-run"
                            : a->no_wait           ? "--no-wait"
                                                   : NULL;
    if (!move && only_move) {
        snprintf(err, errlen, "%s is only for residency move", only_move);
        return -1;
    }
    if (a->force && !promote) {
        snprintf(err, errlen, "--force is only for residency promote");
        return -1;
    }
    if (promote && !a->region) {
        /* Never guessed: promoting makes that region the home. */
        snprintf(err, errlen,
                 "residency promote needs --region REGION: the region holding the standby copy, "
                 "which becomes the home");
        return -1;
    }
    if (!report && (a->out || a->verify)) {
        snprintf(err, errlen, "%s is only for residency move-report",
                 a->out ? "--out" : "--verify");
        return -1;
    }
    if (offline && a->region) {
        snprintf(err, errlen, "verify-report reads a file and asks no region");
        return -1;
    }
    if (a->at && a->dry_run) {
        snprintf(err, errlen, "--at and --dry-run do not go together (a dry run is for now)");
        return -1;
    }
    if (a->at) {
        time_t t;
        if (ctl_move_parse_time(a->at, &t) != 0) {
            snprintf(err, errlen,
                     "--at '%s' is not a UTC time in RFC 3339 form (e.g. 2026-11-23T10:00:00Z)",
                     a->at);
            return -1;
        }
        a->at_time = t;
    }
    /* A reason is recorded with the move (or standby) and its audit entries;
     * a dry run changes nothing and needs none. */
    if ((move && !a->dry_run) || standby || promote) {
        const char *r = a->reason;
        while (r && isspace((unsigned char)*r))
            r++;
        if (!r || !*r) {
            snprintf(err, errlen,
                     "residency %s needs --reason TEXT: every residency change is audited "
                     "with its reason",
                     a->sub);
            return -1;
        }
    }
    return 0;
}

void ctl_move_step_line(const char *name, const char *state, int64_t done, int64_t total, char *out,
                        size_t cap)
{
    enum { WIDTH = 24 };
    char bar[WIDTH + 1];
    bool finished = state && strcmp(state, "done") == 0;
    bool running = state && strcmp(state, "running") == 0;
    if (done < 0)
        done = 0;
    if (total > 0 && done > total)
        done = total;
    size_t fill = finished               ? WIDTH
                  : running && total > 0 ? (size_t)((double)done * WIDTH / (double)total)
                                         : 0;
    for (size_t i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = '\0';
    char pct[8];
    if (finished)
        snprintf(pct, sizeof pct, "100%%");
    else if (running && total > 0)
        snprintf(pct, sizeof pct, "%3d%%", (int)((double)done * 100.0 / (double)total));
    else
        snprintf(pct, sizeof pct, "   -");
    char count[48] = "";
    if (total > 0)
        snprintf(count, sizeof count, "%" PRId64 "/%" PRId64, done, total);
    snprintf(out, cap, "%-9s [%s] %s %-8s %s", name, bar, pct, state ? state : "?", count);
}

/* ---- report verification ---- */

static void problem(ctl_move_report_check_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void problem(ctl_move_report_check_t *r, const char *fmt, ...)
{
    if (r->nproblems >= CTL_MOVE_MAX_PROBLEMS)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->problems[r->nproblems++], sizeof r->problems[0], fmt, ap);
    va_end(ap);
}

static void copy_str(const core_json_t *o, const char *key, char *out, size_t cap)
{
    const char *s = NULL;
    out[0] = '\0';
    if (core_json_get_str(o, key, &s) == 0)
        snprintf(out, cap, "%s", s);
}

int ctl_move_report_check(const res_world_t *w, const char *doc, size_t len, const char *expect_ws,
                          ctl_move_report_check_t *r)
{
    memset(r, 0, sizeof *r);
    core_json_doc_t *outer = NULL, *inner = NULL;
    char jerr[128];
    if (core_json_parse(doc, len, NULL, &outer, jerr, sizeof jerr) != 0) {
        problem(r, "the report is not JSON: %s", jerr);
        return 1;
    }
    const core_json_t *o = core_json_root(outer);
    const core_json_t *text = core_json_get(o, "report_text");
    const char *sig_hex = NULL, *kid = NULL, *region = NULL;
    core_json_get_str(o, "signature", &sig_hex);
    core_json_get_str(o, "key_id", &kid);
    core_json_get_str(o, "region", &region);
    if (!text || text->type != CORE_JSON_STRING || !sig_hex || !kid) {
        problem(r, "not a move report: it needs report_text, signature and key_id (as "
                   "`residency move-report --out` saves it)");
        core_json_free(outer);
        return 1;
    }
    snprintf(r->key_id, sizeof r->key_id, "%s", kid);
    if (core_json_parse(text->u.str.s, text->u.str.len, NULL, &inner, jerr, sizeof jerr) != 0) {
        problem(r, "report_text is not JSON: %s", jerr);
        core_json_free(outer);
        return 1;
    }
    const core_json_t *rep = core_json_root(inner);
    r->parsed = true;
    copy_str(rep, "move_id", r->move_id, sizeof r->move_id);
    copy_str(rep, "workspace_id", r->workspace_id, sizeof r->workspace_id);
    copy_str(rep, "source_region", r->source, sizeof r->source);
    copy_str(rep, "target_region", r->target, sizeof r->target);
    copy_str(rep, "signed_at", r->signed_at, sizeof r->signed_at);
    core_json_get_int(rep, "freeze_ms", &r->freeze_ms);
    int64_t v = 0;
    if (core_json_get_int(rep, "v", &v) != 0 || v != 1)
        problem(r, "report version is not 1: this meridianctl cannot judge it");

    /* The signer is the source region named INSIDE the signed text; the
     * outer "region" is a convenience that must agree, never a choice. */
    const res_region_t *src = r->source[0] ? res_world_region(w, r->source) : NULL;
    if (!src)
        problem(r, "the report's source_region '%s' is not a region of the world file", r->source);
    else if (region && strcmp(region, src->name) != 0)
        problem(r, "the report names source region %s but claims to be signed by %s", src->name,
                region);
    uint8_t sig[64];
    size_t got = 0;
    if (sodium_hex2bin(sig, sizeof sig, sig_hex, strlen(sig_hex), NULL, &got, NULL) != 0 ||
        got != sizeof sig) {
        problem(r, "the signature is not 128 hex digits");
    } else if (src) {
        const core_auth_pubkey_t *key = NULL;
        core_auth_pubkey_t k;
        for (size_t i = 0; i < src->ntoken_keys && !key; i++)
            if (core_auth_pubkey_parse(&k, src->token_keys[i], strlen(src->token_keys[i])) == 0 &&
                strcmp(k.kid, kid) == 0)
                key = &k;
        if (!key)
            problem(r, "key_id '%.40s' is not one of %s's token_keys in the world file", kid,
                    src->name);
        else if (crypto_sign_verify_detached(sig, (const unsigned char *)text->u.str.s,
                                             text->u.str.len, key->pk) != 0)
            problem(r,
                    "the signature does not verify with %s's key %s: the report was altered "
                    "or signed by another key",
                    src->name, key->kid);
        else
            r->signature_ok = true;
    }
    if (expect_ws && strcmp(expect_ws, r->workspace_id) != 0)
        problem(r, "the report is about workspace '%s', not %s", r->workspace_id, expect_ws);

    bool destroyed = false;
    if (core_json_get_bool(rep, "key_destroyed", &destroyed) != 0 || !destroyed)
        problem(r, "key_destroyed is not true: the source's data key may still exist");
    else
        r->key_destroyed = true;
    const core_json_t *left = core_json_get(rep, "left_at_source");
    if (!left || left->type != CORE_JSON_OBJECT) {
        problem(r, "the report has no left_at_source counts");
    } else {
        for (size_t i = 0; i < left->u.kids.n; i++) {
            const core_json_t *n = left->u.kids.items[i];
            r->left_tables++;
            if (n->type != CORE_JSON_NUMBER || !n->u.num.is_int)
                problem(r, "left_at_source.%s is not a count", left->u.kids.keys[i]);
            else if (n->u.num.i != 0) {
                r->left_total += n->u.num.i;
                problem(r, "%" PRId64 " %s left at the source %s", n->u.num.i, left->u.kids.keys[i],
                        r->source);
            }
        }
    }
    core_json_free(inner);
    core_json_free(outer);
    return r->nproblems ? 1 : 0;
}

/* ---- talking to the home region ---- */

typedef struct {
    ctl_t *c;
    const res_region_t *at;     /* the region that last answered as the home */
    const res_region_t *failed; /* the region whose 5xx ws_call returned, if so */
} route_t;

/* One request to region r, trying its nodes in turn until one answers. */
static int region_call(const ctl_t *c, const res_region_t *r, const char *method, const char *path,
                       const char *body, ctl_http_resp_t *resp)
{
    int rc = -1;
    memset(resp, 0, sizeof *resp);
    for (size_t i = 0; i < r->napi_urls; i++) {
        if (i)
            core_buf_free(&resp->body);
        rc = ctl_http(c, r->api_urls[i], method, path, body, resp);
        if (rc == 0)
            return 0;
    }
    if (r->napi_urls == 0)
        snprintf(resp->err, sizeof resp->err, "the world file lists no api.urls for %s", r->name);
    return rc ? rc : -1;
}

/* A request about the workspace: to the last home first, then to every
 * region in turn until one answers; a 421 is followed to the home it names
 * (a few hops: the home may change while we ask). A GET answered 5xx is
 * asked of the next region too (a region that does not hold the workspace
 * may fail where another redirects); the last such answer is returned when
 * nobody does better. Returns 0 with resp (any status) and rt->at the region
 * that answered, or -1 with err set when no region answered (resp->body is
 * then empty). Only an answer under 500 moves rt->at: a region that failed
 * is not where the home is. */
static int ws_call(route_t *rt, const char *method, const char *path, const char *body,
                   ctl_http_resp_t *resp, char *err, size_t errlen)
{
    const res_world_t *w = &rt->c->world;
    bool retry_5xx = strcmp(method, "GET") == 0;
    ctl_http_resp_t fallback = {0};
    const res_region_t *fallback_at = NULL;
    rt->failed = NULL;
    size_t eo = 0;
    err[0] = '\0';
    for (size_t i = 0; i <= w->nregions; i++) {
        const res_region_t *cand = i == 0 ? rt->at : &w->regions[i - 1];
        if (!cand || (i > 0 && cand == rt->at))
            continue;
        if (region_call(rt->c, cand, method, path, body, resp) != 0) {
            eo += (size_t)snprintf(err + eo, errlen - eo, "%s%s: %s", eo ? "; " : "", cand->name,
                                   resp->err);
            if (eo >= errlen)
                eo = errlen - 1;
            core_buf_free(&resp->body);
            continue;
        }
        const res_region_t *r = cand;
        bool lost = false;
        for (int hop = 0; hop < 3 && resp->status == 421 && resp->home[0]; hop++) {
            const res_region_t *home = res_world_region(w, resp->home);
            if (!home || home == r)
                break; /* shown to the caller as the 421 it is */
            core_buf_free(&resp->body);
            if (region_call(rt->c, home, method, path, body, resp) != 0) {
                eo += (size_t)snprintf(err + eo, errlen - eo,
                                       "%s%s names %s as the home, which did not answer: %s",
                                       eo ? "; " : "", r->name, home->name, resp->err);
                if (eo >= errlen)
                    eo = errlen - 1;
                core_buf_free(&resp->body);
                lost = true;
                break;
            }
            r = home;
        }
        if (lost)
            continue;
        if (resp->status >= 500 && retry_5xx) {
            core_buf_free(&fallback.body);
            fallback = *resp;
            fallback_at = r;
            memset(resp, 0, sizeof *resp);
            continue;
        }
        core_buf_free(&fallback.body);
        if (resp->status < 500)
            rt->at = r;
        else
            rt->failed = r;
        return 0;
    }
    if (fallback_at) {
        *resp = fallback;
        if (!rt->at)
            rt->at = fallback_at;
        /* The caller names the region in its message: the one that failed. */
        rt->failed = fallback_at;
        return 0;
    }
    if (!eo)
        snprintf(err, errlen, "the world file has no regions to ask");
    return -1;
}

/* The region whose answer ws_call returned. */
static const res_region_t *who(const route_t *rt)
{
    return rt->failed ? rt->failed : rt->at;
}

/* The API's error code of an answer, into code (empty when none). */
static void error_code(const ctl_http_resp_t *r, char *code, size_t cap, char *msg, size_t mcap)
{
    code[0] = msg[0] = '\0';
    core_json_doc_t *doc = NULL;
    char jerr[64];
    if (r->body.len &&
        core_json_parse(r->body.base, r->body.len, NULL, &doc, jerr, sizeof jerr) == 0) {
        const core_json_t *e = core_json_get(core_json_root(doc), "error");
        copy_str(e, "code", code, cap);
        copy_str(e, "message", msg, mcap);
        core_json_free(doc);
    }
}

/* Prints an answer that is not a success: the API's own code and message. */
static int api_failure(const res_region_t *at, const ctl_http_resp_t *r)
{
    char code[64], msg[400];
    error_code(r, code, sizeof code, msg, sizeof msg);
    const char *name = at ? at->name : "the region";
    if (code[0])
        ctl_err("%s answered %d %s: %s", name, r->status, code, msg);
    else
        ctl_err("%s answered %d: %.300s", name, r->status,
                r->body.len ? core_buf_cstr((core_buf_t *)&r->body) : "(no body)");
    return r->status >= 500 || r->status == 421 ? CTL_EXIT_UNAVAILABLE : CTL_EXIT_REFUSED;
}

static core_json_doc_t *parse_body(const res_region_t *at, ctl_http_resp_t *r)
{
    core_json_doc_t *doc = NULL;
    char jerr[128];
    if (core_json_parse(r->body.base ? r->body.base : "", r->body.len, NULL, &doc, jerr,
                        sizeof jerr) != 0) {
        ctl_err("%s answered %d with a body that is not JSON: %s", at ? at->name : "?", r->status,
                jerr);
        return NULL;
    }
    return doc;
}

static const char *str_or(const core_json_t *o, const char *key, const char *dflt)
{
    const char *s = NULL;
    return core_json_get_str(o, key, &s) == 0 ? s : dflt;
}

static int64_t int_or(const core_json_t *o, const char *key, int64_t dflt)
{
    int64_t v = 0;
    return core_json_get_int(o, key, &v) == 0 ? v : dflt;
}

/* ---- printing ---- */

/* A standby is a move row of kind "standby" (regions before migration 0013
 * send no kind: those are moves). */
static bool is_standby(const core_json_t *m)
{
    return strcmp(str_or(m, "kind", "move"), "standby") == 0;
}

static void print_move(const core_json_t *m)
{
    bool standby = is_standby(m);
    const char *state = str_or(m, "state", "?");
    printf("move       %s\n", str_or(m, "id", "?"));
    if (standby)
        printf("kind       standby (a copy kept up to date about once a second; never freezes)\n");
    else
        printf("kind       move\n");
    printf("workspace  %s\n", str_or(m, "workspace_id", "?"));
    printf("from       %s\n", str_or(m, "source_region", "?"));
    printf("to         %s\n", str_or(m, "target_region", "?"));
    if (standby && strcmp(state, "catching_up") == 0)
        printf("state      %s (following the home; stop with standby-stop, fail over with "
               "promote)\n",
               state);
    else
        printf("state      %s\n", state);
    int64_t caught = int_or(m, "caught_seq", -1);
    if (caught >= 0)
        printf("caught seq %" PRId64 "%s\n", caught,
               standby ? " (the target holds every event up to it)" : "");
    else
        printf("caught seq -\n");
    printf("not before %s\n", str_or(m, "not_before", "-"));
    printf("reason     %s\n", str_or(m, "reason", "-"));
    printf("created    %s by %s\n", str_or(m, "created_at", "-"), str_or(m, "created_by", "-"));
    printf("updated    %s\n", str_or(m, "updated_at", "-"));
    int64_t fz = int_or(m, "freeze_ms", -1);
    if (fz >= 0)
        printf("freeze     %" PRId64 " ms (writes refused with 503 workspace_moving)\n", fz);
    else
        printf("freeze     -\n");
    printf("error      %s\n", str_or(m, "error", "-"));
    const core_json_t *steps = core_json_get(m, "steps");
    if (!steps || steps->type != CORE_JSON_ARRAY || steps->u.kids.n == 0)
        return;
    printf("\n%-9s %-8s %21s %5s  %-26s %s\n", "STEP", "STATE", "DONE/TOTAL", "", "STARTED",
           "FINISHED");
    for (size_t i = 0; i < steps->u.kids.n; i++) {
        const core_json_t *s = steps->u.kids.items[i];
        /* A standby only ever catches up: its other steps would stay
         * "pending" for ever, which reads like a stuck move. */
        if (standby && strcmp(str_or(s, "name", ""), "catch_up") != 0)
            continue;
        int64_t done = int_or(s, "done", 0), total = int_or(s, "total", 0);
        const char *st = str_or(s, "state", "?");
        char dt[48], pct[8] = "";
        snprintf(dt, sizeof dt, "%" PRId64 "/%" PRId64, done, total);
        if (strcmp(st, "done") == 0)
            snprintf(pct, sizeof pct, "100%%");
        else if (total > 0)
            snprintf(pct, sizeof pct, "%d%%", (int)(done * 100 / total));
        printf("%-9s %-8s %21s %5s  %-26s %s\n", str_or(s, "name", "?"), st, dt, pct,
               str_or(s, "started_at", "-"), str_or(s, "finished_at", "-"));
    }
}

/* Redraws the block of progress lines in place on stderr: a header, one
 * line per step, a note. Always the same number of lines, so that moving the
 * cursor up that many lands on the header again. */
typedef struct {
    bool drawn;
} board_t;

enum { BOARD_LINES = NSTEPS + 2 };

static void board_draw(const ctl_t *c, board_t *b, const core_json_t *m, const char *note)
{
    if (!c->progress)
        return;
    char line[256];
    if (b->drawn)
        fprintf(stderr, "\033[%dA", BOARD_LINES);
    b->drawn = true;
    int64_t fz = int_or(m, "freeze_ms", -1);
    char frz[48] = "";
    if (fz >= 0)
        snprintf(frz, sizeof frz, ", freeze %" PRId64 " ms", fz);
    fprintf(stderr, "\r\033[Kmoving %s: %s -> %s, %s%s\n", str_or(m, "workspace_id", "?"),
            str_or(m, "source_region", "?"), str_or(m, "target_region", "?"),
            str_or(m, "state", "starting"), frz);
    const core_json_t *steps = core_json_get(m, "steps");
    for (size_t i = 0; i < NSTEPS; i++) {
        const core_json_t *s = NULL;
        for (size_t k = 0; steps && steps->type == CORE_JSON_ARRAY && k < steps->u.kids.n; k++)
            if (strcmp(str_or(steps->u.kids.items[k], "name", ""), STEP_NAMES[i]) == 0)
                s = steps->u.kids.items[k];
        ctl_move_step_line(STEP_NAMES[i], s ? str_or(s, "state", "?") : "pending",
                           s ? int_or(s, "done", 0) : 0, s ? int_or(s, "total", 0) : 0, line,
                           sizeof line);
        fprintf(stderr, "\r\033[K  %s\n", line);
    }
    fprintf(stderr, "\r\033[K%.200s\n", note ? note : "");
    fflush(stderr);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- commands ---- */

static void move_path(char *out, size_t cap, const char *ws, const char *tail)
{
    snprintf(out, cap, "/v1/admin/residency/workspaces/%s/move%s", ws, tail);
}

static void print_dry_run(const core_json_t *d, int status)
{
    const core_json_t *size = core_json_get(d, "size");
    printf("dry run: move %s from %s to %s\n", str_or(d, "workspace_id", "?"),
           str_or(d, "source_region", "?"), str_or(d, "target_region", "?"));
    if (size && size->type == CORE_JSON_OBJECT) {
        printf("size      ");
        for (size_t i = 0; i < size->u.kids.n; i++) {
            const core_json_t *n = size->u.kids.items[i];
            if (n->type == CORE_JSON_NUMBER)
                printf("%s%s %" PRId64, i ? ", " : "", size->u.kids.keys[i],
                       n->u.num.is_int ? n->u.num.i : (int64_t)n->u.num.d);
        }
        printf("\n");
    }
    const core_json_t *est = core_json_get(d, "estimate_seconds");
    if (est && est->type == CORE_JSON_NUMBER)
        printf("estimate  %.1f s\n", est->u.num.is_int ? (double)est->u.num.i : est->u.num.d);
    const core_json_t *pr = core_json_get(d, "problems");
    size_t np = pr && pr->type == CORE_JSON_ARRAY ? pr->u.kids.n : 0;
    if (np) {
        printf("problems\n");
        for (size_t i = 0; i < np; i++) {
            const core_json_t *p = pr->u.kids.items[i];
            if (p->type == CORE_JSON_STRING)
                printf("  %s\n", p->u.str.s);
            else
                printf("  %s: %s\n", str_or(p, "code", "?"), str_or(p, "message", ""));
        }
    }
    printf("%s\n", np || status != 200 ? "REFUSED: the move would not be started"
                                       : "valid: the move can start");
}

/* Waits for the move to end, polling every 250-500 ms (jittered, so that
 * many waiting CLIs do not ask in step). Returns the exit code. */
static int wait_move(route_t *rt, const char *ws, const char *id)
{
    ctl_t *c = rt->c;
    char path[200], err[1024], note[300] = "";
    move_path(path, sizeof path, ws, "");
    board_t board = {0};
    double last_ok = ctl_now();
    core_buf_t last; /* the last good answer, printed at the end */
    core_buf_init(&last);
    int rc = CTL_EXIT_UNAVAILABLE;
    for (;;) {
        sleep_ms(250 + randombytes_uniform(251));
        ctl_http_resp_t resp;
        bool transient = false;
        if (ws_call(rt, "GET", path, NULL, &resp, err, sizeof err) != 0) {
            snprintf(note, sizeof note, "waiting: no answer (%.250s)", err);
            transient = true;
        } else if (resp.status == 200) {
            core_json_doc_t *doc = parse_body(who(rt), &resp);
            const core_json_t *m = doc ? core_json_get(core_json_root(doc), "move") : NULL;
            const char *mid = str_or(m, "id", "");
            if (!m) {
                snprintf(note, sizeof note, "waiting: %s answered without a move", who(rt)->name);
                transient = true;
            } else if (strcmp(mid, id) != 0) {
                /* The new home shows the latest move it knows; until the
                 * source's status reaches it that may be an older one. */
                snprintf(note, sizeof note, "waiting: %s does not show this move yet",
                         who(rt)->name);
                transient = true;
            } else {
                last_ok = ctl_now();
                note[0] = '\0';
                core_buf_reset(&last);
                core_buf_append(&last, resp.body.base, resp.body.len);
                const char *st = str_or(m, "state", "");
                if (is_standby(m)) {
                    /* A standby never reaches "done": it follows the home
                     * until stopped or promoted. Nothing to wait for. */
                    if (c->json)
                        printf("%s\n", core_buf_cstr(&last));
                    else
                        print_move(m);
                    rc = CTL_EXIT_OK;
                    core_json_free(doc);
                    core_buf_free(&resp.body);
                    break;
                }
                bool ended = strcmp(st, "done") == 0 || strcmp(st, "cancelled") == 0;
                board_draw(c, &board, m, ended ? NULL : str_or(m, "error", NULL));
                if (ended) {
                    if (c->json) {
                        printf("%s\n", core_buf_cstr(&last));
                    } else {
                        printf("move %s %s (answered by %s)\n\n", id,
                               strcmp(st, "done") == 0 ? "done" : "ended: cancelled",
                               who(rt)->name);
                        print_move(m);
                    }
                    rc = strcmp(st, "done") == 0 ? CTL_EXIT_OK : CTL_EXIT_FAIL;
                    core_json_free(doc);
                    core_buf_free(&resp.body);
                    break;
                }
            }
            if (doc)
                core_json_free(doc);
        } else if (resp.status >= 500 || resp.status == 404 || resp.status == 421) {
            /* A region restarting, or the new home before the source's
             * status reached it: keep asking for a while. */
            char code[64], msg[200];
            error_code(&resp, code, sizeof code, msg, sizeof msg);
            snprintf(note, sizeof note, "waiting: %s answered %d %s", who(rt)->name, resp.status,
                     code);
            transient = true;
        } else {
            rc = api_failure(who(rt), &resp);
            core_buf_free(&resp.body);
            break;
        }
        core_buf_free(&resp.body);
        if (transient) {
            if (ctl_now() - last_ok > UNREACHABLE_GRACE_S) {
                ctl_err("gave up waiting after %.0f s without news of move %s (%s); the move "
                        "goes on server-side: see `meridianctl residency move-status %s`",
                        UNREACHABLE_GRACE_S, id, note, ws);
                if (last.len && c->json)
                    printf("%s\n", core_buf_cstr(&last));
                rc = CTL_EXIT_UNAVAILABLE;
                break;
            }
            if (c->progress) {
                /* Keep the last good board, only the note changes. */
                core_json_doc_t *doc = NULL;
                char jerr[64];
                const core_json_t *m = NULL;
                if (last.len &&
                    core_json_parse(last.base, last.len, NULL, &doc, jerr, sizeof jerr) == 0)
                    m = core_json_get(core_json_root(doc), "move");
                board_draw(c, &board, m, note);
                if (doc)
                    core_json_free(doc);
            }
        }
    }
    core_buf_free(&last);
    return rc;
}

static int cmd_move(route_t *rt, const ctl_move_args_t *a)
{
    ctl_t *c = rt->c;
    bool standby = strcmp(a->sub, "standby") == 0;
    const res_region_t *target = res_world_region(&c->world, a->target);
    if (!target) {
        char names[512];
        ctl_err("unknown region '%s' (the world %s has: %s)", a->target, c->world.name,
                ctl_region_list(&c->world, names, sizeof names));
        return CTL_EXIT_USAGE;
    }
    core_buf_t body;
    core_buf_init(&body);
    core_jw_t jw;
    core_jw_init(&jw, &body);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "target_region");
    core_jw_str(&jw, target->name);
    if (a->reason) {
        core_jw_key(&jw, "reason");
        core_jw_str(&jw, a->reason);
    }
    if (a->at) {
        /* Sent normalised, so the server sees one spelling of a time. */
        char at[32];
        struct tm tm;
        gmtime_r(&a->at_time, &tm);
        strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%SZ", &tm);
        core_jw_key(&jw, "at");
        core_jw_str(&jw, at);
    }
    core_jw_key(&jw, "dry_run");
    core_jw_bool(&jw, a->dry_run);
    if (standby) {
        core_jw_key(&jw, "standby");
        core_jw_bool(&jw, true);
    }
    core_jw_obj_close(&jw);

    char path[200], err[1024];
    ctl_http_resp_t resp;
    if (!rt->at) {
        /* Find the home first, as `residency show` does: a region that is not
         * the home may judge a move by what it knows (e.g. answer 422
         * same_region for a move to itself) instead of naming the home. */
        snprintf(path, sizeof path, "/v1/admin/residency/workspaces/%s", a->ws);
        if (ws_call(rt, "GET", path, NULL, &resp, err, sizeof err) == 0)
            core_buf_free(&resp.body);
    }
    move_path(path, sizeof path, a->ws, "");
    int rc = ws_call(rt, "POST", path, core_buf_cstr(&body), &resp, err, sizeof err);
    core_buf_free(&body);
    if (rc != 0) {
        ctl_err("no region answered: %s", err);
        return CTL_EXIT_UNAVAILABLE;
    }
    if (a->dry_run) {
        /* A refused dry run (422) carries the same plan with its problems. */
        core_json_doc_t *doc = NULL;
        char jerr[64];
        const core_json_t *d = NULL;
        if ((resp.status == 200 || resp.status == 422) &&
            core_json_parse(resp.body.base ? resp.body.base : "", resp.body.len, NULL, &doc, jerr,
                            sizeof jerr) == 0)
            d = core_json_get(core_json_root(doc), "dry_run") ? core_json_root(doc) : NULL;
        if (!d) {
            rc = resp.status == 200 ? CTL_EXIT_UNAVAILABLE : api_failure(who(rt), &resp);
            if (resp.status == 200)
                ctl_err("%s answered the dry run without a plan", who(rt)->name);
        } else {
            const core_json_t *pr = core_json_get(d, "problems");
            bool refused =
                resp.status != 200 || (pr && pr->type == CORE_JSON_ARRAY && pr->u.kids.n);
            if (c->json)
                printf("%s\n", core_buf_cstr(&resp.body));
            else
                print_dry_run(d, resp.status);
            rc = refused ? CTL_EXIT_REFUSED : CTL_EXIT_OK;
        }
        if (doc)
            core_json_free(doc);
        core_buf_free(&resp.body);
        return rc;
    }
    if (resp.status != 202 && resp.status != 200) {
        rc = api_failure(who(rt), &resp);
        core_buf_free(&resp.body);
        return rc;
    }
    core_json_doc_t *doc = parse_body(who(rt), &resp);
    const core_json_t *m = doc ? core_json_get(core_json_root(doc), "move") : NULL;
    char id[80] = "";
    copy_str(m, "id", id, sizeof id);
    if (!id[0]) {
        ctl_err("%s accepted the move but did not say which (no move.id)", who(rt)->name);
        if (doc)
            core_json_free(doc);
        core_buf_free(&resp.body);
        return CTL_EXIT_UNAVAILABLE;
    }
    if (standby) {
        /* Nothing to wait for: the copy follows the home until stopped. */
        if (c->json) {
            printf("%s\n", core_buf_cstr(&resp.body));
        } else {
            printf("started standby copy %s of %s in %s (by %s, the home)\n\n", id, a->ws,
                   target->name, who(rt)->name);
            print_move(m);
            printf("\nthe first copy is under way; `meridianctl residency move-status %s` shows "
                   "how far it caught up\n",
                   a->ws);
        }
        core_json_free(doc);
        core_buf_free(&resp.body);
        return CTL_EXIT_OK;
    }
    if (a->no_wait || a->at) {
        if (c->json) {
            printf("%s\n", core_buf_cstr(&resp.body));
        } else {
            printf("%s move %s of %s to %s (by %s)\n\n",
                   strcmp(str_or(m, "state", ""), "scheduled") == 0 ? "scheduled" : "started", id,
                   a->ws, target->name, who(rt)->name);
            print_move(m);
        }
        core_json_free(doc);
        core_buf_free(&resp.body);
        return CTL_EXIT_OK;
    }
    if (c->progress)
        fprintf(stderr, "move %s started by %s; waiting (Ctrl-C stops waiting, not the move)\n", id,
                who(rt)->name);
    core_json_free(doc);
    core_buf_free(&resp.body);
    return wait_move(rt, a->ws, id);
}

/* GET or POST one move URL and print the MOVE it answers. */
static int cmd_show(route_t *rt, const char *ws, const char *method, const char *tail,
                    const char *verb, const char *reason)
{
    char path[200], err[1024];
    move_path(path, sizeof path, ws, tail);
    ctl_http_resp_t resp;
    core_buf_t body;
    core_buf_init(&body);
    if (strcmp(method, "POST") == 0) {
        core_jw_t jw;
        core_jw_init(&jw, &body);
        core_jw_obj_open(&jw);
        if (reason) {
            core_jw_key(&jw, "reason");
            core_jw_str(&jw, reason);
        }
        core_jw_obj_close(&jw);
    }
    int crc =
        ws_call(rt, method, path, body.len ? core_buf_cstr(&body) : NULL, &resp, err, sizeof err);
    core_buf_free(&body);
    if (crc != 0) {
        ctl_err("no region answered: %s", err);
        return CTL_EXIT_UNAVAILABLE;
    }
    int rc = CTL_EXIT_OK;
    if (resp.status != 200) {
        rc = api_failure(who(rt), &resp);
    } else if (rt->c->json) {
        printf("%s\n", core_buf_cstr(&resp.body));
    } else {
        core_json_doc_t *doc = parse_body(who(rt), &resp);
        const core_json_t *m = doc ? core_json_get(core_json_root(doc), "move") : NULL;
        if (!m) {
            ctl_err("%s answered without a move", who(rt)->name);
            rc = CTL_EXIT_UNAVAILABLE;
        } else {
            if (verb)
                printf("%s move %s of %s (by %s)\n\n", verb, str_or(m, "id", "?"), ws,
                       who(rt)->name);
            print_move(m);
        }
        if (doc)
            core_json_free(doc);
    }
    core_buf_free(&resp.body);
    return rc;
}

/* Stops the standby copy: the home's cancel of its latest move, once that is
 * known to be a standby (a cancel would also stop a real move). */
static int cmd_standby_stop(route_t *rt, const ctl_move_args_t *a)
{
    char path[200], err[1024];
    move_path(path, sizeof path, a->ws, "");
    ctl_http_resp_t resp;
    if (ws_call(rt, "GET", path, NULL, &resp, err, sizeof err) != 0) {
        ctl_err("no region answered: %s", err);
        return CTL_EXIT_UNAVAILABLE;
    }
    if (resp.status != 200) {
        int rc = api_failure(who(rt), &resp);
        core_buf_free(&resp.body);
        return rc;
    }
    core_json_doc_t *doc = parse_body(who(rt), &resp);
    core_buf_free(&resp.body);
    const core_json_t *m = doc ? core_json_get(core_json_root(doc), "move") : NULL;
    if (!m) {
        if (doc)
            core_json_free(doc);
        ctl_err("%s answered without a move", who(rt)->name);
        return CTL_EXIT_UNAVAILABLE;
    }
    const char *st = str_or(m, "state", "?");
    bool running = strcmp(st, "scheduled") == 0 || strcmp(st, "catching_up") == 0;
    if (!is_standby(m) || !running) {
        ctl_err("%s has no standby copy running: its latest move %s is a %s in state %s%s", a->ws,
                str_or(m, "id", "?"), is_standby(m) ? "standby" : "move", st,
                is_standby(m) ? "" : " (move-cancel cancels a move)");
        core_json_free(doc);
        return CTL_EXIT_REFUSED;
    }
    core_json_free(doc);
    return cmd_show(rt, a->ws, "POST", "/cancel", "stopped standby", a->reason);
}

/* Promotes the standby copy in a->region: sent to that region directly (the
 * home may be down), never through the home or a 421. */
static int cmd_promote(const ctl_t *c, const ctl_move_args_t *a)
{
    const res_region_t *r = res_world_region(&c->world, a->region);
    core_buf_t body;
    core_buf_init(&body);
    core_jw_t jw;
    core_jw_init(&jw, &body);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "reason");
    core_jw_str(&jw, a->reason);
    core_jw_key(&jw, "force");
    core_jw_bool(&jw, a->force);
    core_jw_obj_close(&jw);
    char path[200];
    snprintf(path, sizeof path, "/v1/admin/residency/workspaces/%s/promote", a->ws);
    ctl_http_resp_t resp;
    int crc = region_call(c, r, "POST", path, core_buf_cstr(&body), &resp);
    core_buf_free(&body);
    if (crc != 0) {
        ctl_err("the standby region %s did not answer: %s", r->name, resp.err);
        core_buf_free(&resp.body);
        return CTL_EXIT_UNAVAILABLE;
    }
    int rc = CTL_EXIT_OK;
    if (resp.status != 200) {
        char code[64], msg[8];
        error_code(&resp, code, sizeof code, msg, sizeof msg);
        rc = api_failure(r, &resp);
        if (strcmp(code, "home_reachable") == 0)
            ctl_err("a home that answers is moved, not replaced: `meridianctl residency move %s "
                    "%s`; add --force only if the home is cut off from its clients and will "
                    "fence itself when back",
                    a->ws, r->name);
        else if (strcmp(code, "no_standby") == 0)
            ctl_err("start one first (while the home is up) with `meridianctl residency standby "
                    "%s %s --reason ...`",
                    a->ws, r->name);
    } else if (c->json) {
        printf("%s\n", core_buf_cstr(&resp.body));
    } else {
        core_json_doc_t *doc = parse_body(r, &resp);
        const core_json_t *o = doc ? core_json_root(doc) : NULL;
        const char *prev = str_or(o, "previous_home", "?");
        printf("promoted %s: %s is its home now\n\n", a->ws, str_or(o, "home_region", r->name));
        printf("workspace     %s\n", str_or(o, "workspace_id", a->ws));
        printf("home          %s\n", str_or(o, "home_region", r->name));
        printf("previous home %s\n", prev);
        printf("epoch         %" PRId64 "\n", int_or(o, "epoch", 0));
        printf("last seq      %" PRId64 " (the standby's copy ends there)\n", int_or(o, "seq", 0));
        printf("\nwrites %s accepted after the standby's last sync are NOT in %s.\n"
               "%s fences the workspace when the new epoch reaches it (writes there get 421 "
               "naming %s);\nits copy stays until an admin moves or purges it "
               "(docs/moves.md).\n",
               prev, r->name, prev, r->name);
        if (doc)
            core_json_free(doc);
    }
    core_buf_free(&resp.body);
    return rc;
}

static void print_report(const char *doc, size_t len)
{
    core_json_doc_t *outer = NULL, *inner = NULL;
    char jerr[64];
    if (core_json_parse(doc, len, NULL, &outer, jerr, sizeof jerr) != 0)
        return;
    const core_json_t *t = core_json_get(core_json_root(outer), "report_text");
    if (t && t->type == CORE_JSON_STRING &&
        core_json_parse(t->u.str.s, t->u.str.len, NULL, &inner, jerr, sizeof jerr) == 0) {
        const core_json_t *r = core_json_root(inner);
        static const char *const sections[] = {"copied", "purged", "left_at_source"};
        for (size_t s = 0; s < 3; s++) {
            const core_json_t *o = core_json_get(r, sections[s]);
            if (!o || o->type != CORE_JSON_OBJECT)
                continue;
            printf("%-15s ", sections[s]);
            for (size_t i = 0; i < o->u.kids.n; i++) {
                const core_json_t *n = o->u.kids.items[i];
                if (n->type == CORE_JSON_NUMBER)
                    printf("%s%s %" PRId64, i ? ", " : "", o->u.kids.keys[i],
                           n->u.num.is_int ? n->u.num.i : (int64_t)n->u.num.d);
            }
            printf("\n");
        }
        printf("%-15s %" PRId64 " -> %" PRId64 "\n", "epoch", int_or(r, "epoch_before", 0),
               int_or(r, "epoch_after", 0));
        printf("%-15s %" PRId64 "\n", "final seq", int_or(r, "final_seq", 0));
        const core_json_t *steps = core_json_get(r, "steps");
        for (size_t i = 0; steps && steps->type == CORE_JSON_ARRAY && i < steps->u.kids.n; i++) {
            const core_json_t *s = steps->u.kids.items[i];
            printf("%-15s %-9s %s .. %s\n", i ? "" : "steps", str_or(s, "name", "?"),
                   str_or(s, "started_at", "-"), str_or(s, "finished_at", "-"));
        }
        core_json_free(inner);
    }
    core_json_free(outer);
}

/* Judges a saved or fetched report and prints the verdict. */
static int judge_report(const ctl_t *c, const char *doc, size_t len, const char *expect_ws,
                        const char *source)
{
    ctl_move_report_check_t r;
    int bad = ctl_move_report_check(&c->world, doc, len, expect_ws, &r);
    if (c->json) {
        core_buf_t b;
        core_buf_init(&b);
        core_jw_t jw;
        core_jw_init(&jw, &b);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "ok");
        core_jw_bool(&jw, !bad);
        core_jw_key(&jw, "signature_ok");
        core_jw_bool(&jw, r.signature_ok);
        core_jw_key(&jw, "key_destroyed");
        core_jw_bool(&jw, r.key_destroyed);
        core_jw_key(&jw, "left_at_source");
        core_jw_int(&jw, r.left_total);
        core_jw_key(&jw, "move_id");
        core_jw_str(&jw, r.move_id);
        core_jw_key(&jw, "workspace_id");
        core_jw_str(&jw, r.workspace_id);
        core_jw_key(&jw, "source_region");
        core_jw_str(&jw, r.source);
        core_jw_key(&jw, "target_region");
        core_jw_str(&jw, r.target);
        core_jw_key(&jw, "key_id");
        core_jw_str(&jw, r.key_id);
        core_jw_key(&jw, "problems");
        core_jw_arr_open(&jw);
        for (size_t i = 0; i < r.nproblems; i++)
            core_jw_str(&jw, r.problems[i]);
        core_jw_arr_close(&jw);
        core_jw_obj_close(&jw);
        printf("%s\n", core_buf_cstr(&b));
        core_buf_free(&b);
        return bad ? CTL_EXIT_FAIL : CTL_EXIT_OK;
    }
    if (source)
        printf("report of %s\n", source);
    if (r.parsed) {
        printf("%-15s %s\n", "move", r.move_id);
        printf("%-15s %s\n", "workspace", r.workspace_id);
        printf("%-15s %s -> %s\n", "regions", r.source, r.target);
        printf("%-15s %" PRId64 " ms\n", "freeze", r.freeze_ms);
        print_report(doc, len);
        printf("%-15s %s, key %s, at %s: %s\n", "signed by", r.source, r.key_id,
               r.signed_at[0] ? r.signed_at : "-",
               r.signature_ok ? "signature OK" : "NOT VERIFIED");
        printf("%-15s %s\n", "key destroyed", r.key_destroyed ? "yes" : "NO");
    }
    for (size_t i = 0; i < r.nproblems; i++)
        printf("problem: %s\n", r.problems[i]);
    printf("\n%s\n", bad ? "REPORT VERIFICATION FAILED"
                         : "the report verifies: signed by the source region, nothing left "
                           "there, its data key destroyed");
    return bad ? CTL_EXIT_FAIL : CTL_EXIT_OK;
}

static int write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        ctl_err("cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    bool ok = fwrite(data, 1, len, f) == len && fputc('\n', f) != EOF;
    ok = fclose(f) == 0 && ok;
    if (!ok)
        ctl_err("writing %s failed", path);
    return ok ? 0 : -1;
}

static int cmd_report(route_t *rt, const ctl_move_args_t *a)
{
    char path[200], err[1024];
    move_path(path, sizeof path, a->ws, "/report");
    ctl_http_resp_t resp;
    if (ws_call(rt, "GET", path, NULL, &resp, err, sizeof err) != 0) {
        ctl_err("no region answered: %s", err);
        return CTL_EXIT_UNAVAILABLE;
    }
    int rc = CTL_EXIT_OK;
    if (resp.status != 200) {
        rc = api_failure(who(rt), &resp);
        core_buf_free(&resp.body);
        return rc;
    }
    const char *doc = core_buf_cstr(&resp.body);
    if (a->out) {
        if (write_file(a->out, doc, resp.body.len) != 0)
            rc = CTL_EXIT_UNAVAILABLE;
        else if (!rt->c->json)
            fprintf(stderr, "meridianctl: report saved to %s\n", a->out);
    }
    if (rc == CTL_EXIT_OK) {
        if (a->verify)
            rc = judge_report(rt->c, doc, resp.body.len, a->ws, NULL);
        else if (rt->c->json)
            printf("%s\n", doc);
        else if (!a->out) {
            ctl_move_report_check_t r;
            ctl_move_report_check(&rt->c->world, doc, resp.body.len, a->ws, &r);
            printf("%-15s %s\n%-15s %s\n%-15s %s -> %s\n%-15s %" PRId64 " ms\n", "move", r.move_id,
                   "workspace", r.workspace_id, "regions", r.source, r.target, "freeze",
                   r.freeze_ms);
            print_report(doc, resp.body.len);
            printf("\nnot verified here: add --verify, or save it with --out FILE and run "
                   "`meridianctl residency verify-report FILE`\n");
        }
    }
    core_buf_free(&resp.body);
    return rc;
}

static int cmd_verify_report(const ctl_t *c, const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        ctl_err("cannot read %s: %s", file, strerror(errno));
        return CTL_EXIT_USAGE;
    }
    core_buf_t b;
    core_buf_init(&b);
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0 && b.len <= MAX_REPORT_BYTES)
        core_buf_append(&b, tmp, n);
    bool err = ferror(f);
    fclose(f);
    if (err || b.len > MAX_REPORT_BYTES) {
        ctl_err("cannot read %s: %s", file, err ? "read error" : "larger than 8 MiB");
        core_buf_free(&b);
        return CTL_EXIT_USAGE;
    }
    int rc = judge_report(c, b.base ? b.base : "", b.len, NULL, file);
    core_buf_free(&b);
    return rc;
}

int ctl_move_main(ctl_t *c, int argc, char **argv)
{
    ctl_move_args_t a;
    char err[400];
    if (ctl_move_parse_args(argc, argv, &a, err, sizeof err) != 0) {
        ctl_err("%s", err);
        return CTL_EXIT_USAGE;
    }
    if (strcmp(a.sub, "verify-report") == 0)
        return cmd_verify_report(c, a.file); /* offline: the world file is all it needs */
    route_t rt = {.c = c};
    if (a.region) {
        rt.at = res_world_region(&c->world, a.region);
        if (!rt.at) {
            char names[512];
            ctl_err("unknown region '%s' (the world %s has: %s)", a.region, c->world.name,
                    ctl_region_list(&c->world, names, sizeof names));
            return CTL_EXIT_USAGE;
        }
    }
    if (a.at && a.at_time < time(NULL) - 60) {
        ctl_err("--at %s is in the past: leave --at out to move now", a.at);
        return CTL_EXIT_USAGE;
    }
    if (!c->token) {
        ctl_err("residency %s needs an access token: --token, --token-file or MERIDIAN_TOKEN",
                a.sub);
        return CTL_EXIT_USAGE;
    }
    if (strcmp(a.sub, "promote") == 0)
        return cmd_promote(c, &a);
    if (strcmp(a.sub, "move") == 0 || strcmp(a.sub, "standby") == 0)
        return cmd_move(&rt, &a);
    if (strcmp(a.sub, "standby-stop") == 0)
        return cmd_standby_stop(&rt, &a);
    if (strcmp(a.sub, "move-status") == 0)
        return cmd_show(&rt, a.ws, "GET", "", NULL, NULL);
    if (strcmp(a.sub, "move-cancel") == 0)
        return cmd_show(&rt, a.ws, "POST", "/cancel", "cancelled", a.reason);
    return cmd_report(&rt, &a);
}
