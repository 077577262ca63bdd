/* ctl_residency.c: `residency list|show|pin|unpin|set-allowed`, through the
 * regions' admin API (/v1/admin/residency/...).
 *
 * Input is checked here first (workspace id shape, regions of the world, a
 * reason), so that a typo costs nothing and changes nothing. A workspace's
 * policy is changed only by its home region; meridianctl does not need to
 * know which that is: any region answers 421 naming the home
 * (Meridian-Home-Region), and the request is sent there once. */
#include "tools/meridianctl/ctl.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/json.h"

#include <uv.h>

static bool valid_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!isalnum((unsigned char)s[n]) && s[n] != '_' && s[n] != '-')
            return false;
    return n >= 1 && n <= 64;
}

/* The reason with surrounding blanks trimmed, or NULL when there is none. */
static char *trimmed(const char *s)
{
    if (!s)
        return NULL;
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (n == 0)
        return NULL;
    char *out = core_xcalloc(1, n + 1);
    memcpy(out, s, n);
    return out;
}

/* Checks "a,b" against the world; writes a JSON array of the names into out.
 * Returns 0, or -1 after printing what is wrong. */
static int parse_regions(const ctl_t *c, const char *list, core_buf_t *out)
{
    core_jw_t jw;
    core_jw_init(&jw, out);
    core_jw_arr_open(&jw);
    const char *seen[RES_MAX_REGIONS];
    size_t nseen = 0;
    const char *p = list;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char name[64];
        while (n && isspace((unsigned char)*p))
            p++, n--;
        while (n && isspace((unsigned char)p[n - 1]))
            n--;
        if (n == 0 || n >= sizeof name) {
            ctl_err("'%s' is not a list of regions (a,b,c)", list);
            return -1;
        }
        snprintf(name, sizeof name, "%.*s", (int)n, p);
        const res_region_t *r = res_world_region(&c->world, name);
        if (!r) {
            char names[512];
            ctl_err("unknown region '%s' (the world %s has: %s)", name, c->world.name,
                    ctl_region_list(&c->world, names, sizeof names));
            return -1;
        }
        for (size_t i = 0; i < nseen; i++) {
            if (seen[i] == r->name) {
                ctl_err("region '%s' is listed twice", name);
                return -1;
            }
        }
        seen[nseen++] = r->name;
        core_jw_str(&jw, r->name);
        if (!e)
            break;
        p = e + 1;
    }
    core_jw_arr_close(&jw);
    return 0;
}

/* Prints an answer that is not a success: the API's own code and message. */
static int api_failure(const char *region, const ctl_http_resp_t *r)
{
    core_json_doc_t *doc = NULL;
    char jerr[64];
    const char *code = NULL, *message = NULL;
    if (r->body.len &&
        core_json_parse(r->body.base, r->body.len, NULL, &doc, jerr, sizeof jerr) == 0) {
        const core_json_t *e = core_json_get(core_json_root(doc), "error");
        core_json_get_str(e, "code", &code);
        core_json_get_str(e, "message", &message);
    }
    if (code)
        ctl_err("%s answered %d %s: %s", region, r->status, code, message ? message : "");
    else
        ctl_err("%s answered %d: %.300s", region, r->status,
                r->body.len ? core_buf_cstr((core_buf_t *)&r->body) : "(no body)");
    if (doc)
        core_json_free(doc);
    return r->status >= 500 ? CTL_EXIT_UNAVAILABLE : CTL_EXIT_REFUSED;
}

/* One request to region r, trying its nodes in turn until one answers. */
static int region_call(const ctl_t *c, const res_region_t *r, const char *method, const char *path,
                       const char *body, ctl_http_resp_t *resp)
{
    int rc = UV_EINVAL;
    for (size_t i = 0; i < r->napi_urls; i++) {
        if (i)
            core_buf_free(&resp->body);
        rc = ctl_http(c, r->api_urls[i], method, path, body, resp);
        if (rc == 0)
            return 0;
    }
    if (r->napi_urls == 0)
        snprintf(resp->err, sizeof resp->err, "the world file lists no api.urls for %s", r->name);
    return rc;
}

/* A request about one workspace: to the first region that answers (the
 * --region one first), then to the home it names if that was not it.
 * *served is the region that answered. Returns 0 with resp (any status), or
 * an exit code after printing why nothing answered. */
static int workspace_call(const ctl_t *c, const char *start, const char *method, const char *path,
                          const char *body, ctl_http_resp_t *resp, const res_region_t **served)
{
    const res_region_t *first = start ? res_world_region(&c->world, start) : NULL;
    const res_region_t *r = NULL;
    char errors[1024] = "";
    size_t eo = 0;
    for (size_t i = 0; i <= c->world.nregions; i++) {
        const res_region_t *cand = i == 0 ? first : &c->world.regions[i - 1];
        if (!cand || (i > 0 && cand == first))
            continue;
        if (region_call(c, cand, method, path, body, resp) == 0) {
            r = cand;
            break;
        }
        eo +=
            (size_t)snprintf(errors + eo, sizeof errors - eo, "\n  %s: %s", cand->name, resp->err);
        if (eo >= sizeof errors)
            eo = sizeof errors - 1;
        core_buf_free(&resp->body);
    }
    if (!r) {
        ctl_err("no region answered:%s", errors);
        return CTL_EXIT_UNAVAILABLE;
    }
    if (resp->status == 421 && resp->home[0]) {
        const res_region_t *home = res_world_region(&c->world, resp->home);
        if (!home) {
            ctl_err("%s names %s as the home region, which is not in the world file", r->name,
                    resp->home);
            return CTL_EXIT_UNAVAILABLE;
        }
        core_buf_free(&resp->body);
        if (region_call(c, home, method, path, body, resp) != 0) {
            ctl_err("the home region %s did not answer: %s", home->name, resp->err);
            return CTL_EXIT_UNAVAILABLE;
        }
        r = home;
    }
    *served = r;
    return 0;
}

static void print_str_array(const core_json_t *a, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; a && a->type == CORE_JSON_ARRAY && i < a->u.kids.n && o < cap; i++) {
        const core_json_t *s = a->u.kids.items[i];
        if (s->type == CORE_JSON_STRING)
            o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "," : "", s->u.str.s);
    }
}

static const char *str_or(const core_json_t *o, const char *key, const char *dflt)
{
    const char *s = NULL;
    return core_json_get_str(o, key, &s) == 0 ? s : dflt;
}

static void print_policy_row(const core_json_t *p)
{
    char al[256];
    print_str_array(core_json_get(p, "allowed_regions"), al, sizeof al);
    bool pinned = false;
    core_json_get_bool(p, "pinned", &pinned);
    int64_t epoch = 0;
    core_json_get_int(p, "epoch", &epoch);
    printf("%-26s %-10s %-24s %-6s %5" PRId64 "  %-24s %s\n", str_or(p, "workspace_id", "?"),
           str_or(p, "home_region", "?"), al, pinned ? "yes" : "no", epoch,
           str_or(p, "changed_at", "-"), str_or(p, "reason", "-"));
}

static const char POLICY_HEAD[] = "%-26s %-10s %-24s %-6s %5s  %-24s %s\n";

static core_json_doc_t *parse_body(const char *region, ctl_http_resp_t *r)
{
    core_json_doc_t *doc = NULL;
    char jerr[128];
    if (core_json_parse(r->body.base ? r->body.base : "", r->body.len, NULL, &doc, jerr,
                        sizeof jerr) != 0) {
        ctl_err("%s answered %d with a body that is not JSON: %s", region, r->status, jerr);
        return NULL;
    }
    return doc;
}

static int cmd_list(const ctl_t *c, const char *only)
{
    core_buf_t out;
    core_buf_init(&out);
    core_jw_t jw;
    core_jw_init(&jw, &out);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "workspaces");
    core_jw_arr_open(&jw);
    int rc = CTL_EXIT_OK;
    bool head = false;
    for (size_t i = 0; i < c->world.nregions; i++) {
        const res_region_t *r = &c->world.regions[i];
        if (only && strcmp(only, r->name) != 0)
            continue;
        ctl_http_resp_t resp;
        if (region_call(c, r, "GET", "/v1/admin/residency/workspaces", NULL, &resp) != 0) {
            ctl_err("%s: %s", r->name, resp.err);
            rc = CTL_EXIT_UNAVAILABLE;
            core_buf_free(&resp.body);
            continue;
        }
        if (resp.status != 200) {
            int e = api_failure(r->name, &resp);
            rc = rc == CTL_EXIT_OK ? e : rc;
            core_buf_free(&resp.body);
            continue;
        }
        core_json_doc_t *doc = parse_body(r->name, &resp);
        core_buf_free(&resp.body);
        if (!doc) {
            rc = CTL_EXIT_UNAVAILABLE;
            continue;
        }
        const core_json_t *ws = core_json_get(core_json_root(doc), "workspaces");
        for (size_t k = 0; ws && ws->type == CORE_JSON_ARRAY && k < ws->u.kids.n; k++) {
            const core_json_t *p = ws->u.kids.items[k];
            if (c->json) {
                /* Re-encoded from the tree: the API's own fields, unchanged. */
                core_buf_t one;
                core_buf_init(&one);
                core_jw_t w1;
                core_jw_init(&w1, &one);
                core_jw_obj_open(&w1);
                for (size_t f = 0; f < p->u.kids.n; f++) {
                    const core_json_t *val = p->u.kids.items[f];
                    core_jw_key(&w1, p->u.kids.keys[f]);
                    if (val->type == CORE_JSON_STRING)
                        core_jw_strn(&w1, val->u.str.s, val->u.str.len);
                    else if (val->type == CORE_JSON_BOOL)
                        core_jw_bool(&w1, val->u.b);
                    else if (val->type == CORE_JSON_NUMBER && val->u.num.is_int)
                        core_jw_int(&w1, val->u.num.i);
                    else if (val->type == CORE_JSON_NUMBER)
                        core_jw_double(&w1, val->u.num.d);
                    else if (val->type == CORE_JSON_ARRAY) {
                        core_jw_arr_open(&w1);
                        for (size_t x = 0; x < val->u.kids.n; x++)
                            if (val->u.kids.items[x]->type == CORE_JSON_STRING)
                                core_jw_str(&w1, val->u.kids.items[x]->u.str.s);
                        core_jw_arr_close(&w1);
                    } else
                        core_jw_null(&w1);
                }
                core_jw_obj_close(&w1);
                core_jw_raw(&jw, one.base, one.len);
                core_buf_free(&one);
            } else {
                if (!head) {
                    printf(POLICY_HEAD, "WORKSPACE", "HOME", "ALLOWED", "PINNED", "EPOCH",
                           "CHANGED", "REASON");
                    head = true;
                }
                print_policy_row(p);
            }
        }
        core_json_free(doc);
    }
    core_jw_arr_close(&jw);
    core_jw_obj_close(&jw);
    if (c->json)
        printf("%s\n", core_buf_cstr(&out));
    else if (!head)
        printf("no workspaces that you administer\n");
    core_buf_free(&out);
    return rc;
}

static void print_policy(const core_json_t *p)
{
    char al[256];
    print_str_array(core_json_get(p, "allowed_regions"), al, sizeof al);
    bool pinned = false;
    core_json_get_bool(p, "pinned", &pinned);
    int64_t epoch = 0;
    core_json_get_int(p, "epoch", &epoch);
    printf("workspace  %s\n", str_or(p, "workspace_id", "?"));
    printf("home       %s\n", str_or(p, "home_region", "?"));
    printf("allowed    %s\n", al);
    printf("pinned     %s\n", pinned ? "yes" : "no");
    printf("epoch      %" PRId64 "\n", epoch);
    printf("reason     %s\n", str_or(p, "reason", "-"));
    printf("changed    %s by %s\n", str_or(p, "changed_at", "-"), str_or(p, "changed_by", "-"));
}

static int cmd_show(const ctl_t *c, const char *ws, const char *start)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/admin/residency/workspaces/%s", ws);
    ctl_http_resp_t resp;
    const res_region_t *served = NULL;
    int rc = workspace_call(c, start, "GET", path, NULL, &resp, &served);
    if (rc != 0) {
        core_buf_free(&resp.body);
        return rc;
    }
    if (resp.status != 200) {
        rc = api_failure(served->name, &resp);
        core_buf_free(&resp.body);
        return rc;
    }
    if (c->json) {
        printf("%s\n", core_buf_cstr(&resp.body));
        core_buf_free(&resp.body);
        return CTL_EXIT_OK;
    }
    core_json_doc_t *doc = parse_body(served->name, &resp);
    core_buf_free(&resp.body);
    if (!doc)
        return CTL_EXIT_UNAVAILABLE;
    const core_json_t *root = core_json_root(doc);
    print_policy(core_json_get(root, "workspace"));
    const core_json_t *audit = core_json_get(root, "audit");
    if (audit && audit->type == CORE_JSON_ARRAY && audit->u.kids.n) {
        printf("\n%-6s %-26s %-18s %s\n", "SEQ", "AT", "ACTION", "ENTRY");
        for (size_t i = 0; i < audit->u.kids.n; i++) {
            const core_json_t *e = audit->u.kids.items[i];
            int64_t seq = 0;
            core_json_get_int(e, "seq", &seq);
            printf("%-6" PRId64 " %-26s %-18s %s\n", seq, str_or(e, "at", "-"),
                   str_or(e, "action", "-"), str_or(e, "entry", "-"));
        }
    }
    core_json_free(doc);
    return CTL_EXIT_OK;
}

static int cmd_change(const ctl_t *c, const char *verb, const char *ws, const char *method,
                      const char *path, const char *body, const char *start)
{
    ctl_http_resp_t resp;
    const res_region_t *served = NULL;
    int rc = workspace_call(c, start, method, path, body, &resp, &served);
    if (rc != 0) {
        core_buf_free(&resp.body);
        return rc;
    }
    if (resp.status != 200) {
        rc = api_failure(served->name, &resp);
        core_buf_free(&resp.body);
        return rc;
    }
    if (c->json) {
        printf("%s\n", core_buf_cstr(&resp.body));
        core_buf_free(&resp.body);
        return CTL_EXIT_OK;
    }
    core_json_doc_t *doc = parse_body(served->name, &resp);
    core_buf_free(&resp.body);
    if (!doc)
        return CTL_EXIT_UNAVAILABLE;
    const core_json_t *root = core_json_root(doc);
    int64_t seq = 0;
    core_json_get_int(root, "audit_seq", &seq);
    printf("%s %s: done by %s, audit entry %" PRId64 "\n\n", verb, ws, served->name, seq);
    print_policy(core_json_get(root, "workspace"));
    core_json_free(doc);
    return CTL_EXIT_OK;
}

int ctl_residency_main(ctl_t *c, int argc, char **argv)
{
    const char *sub = argv[0];
    if (ctl_move_is_command(sub))
        return ctl_move_main(c, argc, argv);
    const char *reason_arg = NULL, *regions = NULL, *region = NULL;
    const char *pos[3] = {0};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool takes =
            strcmp(a, "--reason") == 0 || strcmp(a, "--regions") == 0 || strcmp(a, "--region") == 0;
        if (takes && i + 1 >= argc) {
            ctl_err("%s needs a value", a);
            return CTL_EXIT_USAGE;
        }
        if (strcmp(a, "--reason") == 0)
            reason_arg = argv[++i];
        else if (strcmp(a, "--regions") == 0)
            regions = argv[++i];
        else if (strcmp(a, "--region") == 0)
            region = argv[++i];
        else if (a[0] == '-' && a[1] == '-') {
            ctl_err("residency %s: unknown option '%s'", sub, a);
            return CTL_EXIT_USAGE;
        } else if (npos < 3)
            pos[npos++] = a;
        else {
            ctl_err("residency %s: too many arguments", sub);
            return CTL_EXIT_USAGE;
        }
    }
    if (region && !res_world_region(&c->world, region)) {
        char names[512];
        ctl_err("unknown region '%s' (the world %s has: %s)", region, c->world.name,
                ctl_region_list(&c->world, names, sizeof names));
        return CTL_EXIT_USAGE;
    }
    bool list = strcmp(sub, "list") == 0, show = strcmp(sub, "show") == 0;
    bool pin = strcmp(sub, "pin") == 0, unpin = strcmp(sub, "unpin") == 0;
    bool set = strcmp(sub, "set-allowed") == 0;
    if (!list && !show && !pin && !unpin && !set) {
        ctl_err("unknown residency command '%s' (list, show, pin, unpin, set-allowed, verify, "
                "move, move-status, move-cancel, move-report, verify-report, standby, "
                "standby-stop, promote)",
                sub);
        return CTL_EXIT_USAGE;
    }
    int want = list ? 0 : set ? 2 : 1;
    if (npos != want) {
        ctl_err("usage: residency %s%s", sub,
                list    ? " [--region R]"
                : show  ? " WORKSPACE"
                : pin   ? " WORKSPACE [--regions a,b] --reason TEXT"
                : unpin ? " WORKSPACE --reason TEXT"
                        : " WORKSPACE a,b --reason TEXT");
        return CTL_EXIT_USAGE;
    }
    if (!list && !valid_id(pos[0])) {
        ctl_err("'%s' is not a workspace id (1-64 of A-Z a-z 0-9 _ -)", pos[0]);
        return CTL_EXIT_USAGE;
    }
    if (regions && !pin) {
        ctl_err("--regions is for pin (set-allowed takes the regions as its second argument)");
        return CTL_EXIT_USAGE;
    }
    char *reason = trimmed(reason_arg);
    if ((pin || unpin || set) && !reason) {
        ctl_err("residency %s needs --reason TEXT: every residency change is audited with its "
                "reason",
                sub);
        return CTL_EXIT_USAGE;
    }
    if ((list || show) && reason_arg) {
        ctl_err("--reason is only for changes");
        free(reason);
        return CTL_EXIT_USAGE;
    }
    if (!c->token) {
        ctl_err("residency %s needs an access token: --token, --token-file or MERIDIAN_TOKEN", sub);
        free(reason);
        return CTL_EXIT_USAGE;
    }
    int rc;
    if (list) {
        rc = cmd_list(c, region);
    } else if (show) {
        rc = cmd_show(c, pos[0], region);
    } else {
        core_buf_t arr, body;
        core_buf_init(&arr);
        core_buf_init(&body);
        const char *list_arg = set ? pos[1] : regions;
        if (list_arg && parse_regions(c, list_arg, &arr) != 0) {
            core_buf_free(&arr);
            free(reason);
            return CTL_EXIT_USAGE;
        }
        core_jw_t jw;
        core_jw_init(&jw, &body);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "reason");
        core_jw_str(&jw, reason);
        if (list_arg) {
            core_jw_key(&jw, "allowed_regions");
            core_jw_raw(&jw, arr.base, arr.len);
        }
        core_jw_obj_close(&jw);
        char path[200];
        snprintf(path, sizeof path, "/v1/admin/residency/workspaces/%s/%s", pos[0],
                 pin     ? "pin"
                 : unpin ? "unpin"
                         : "allowed-regions");
        rc = cmd_change(c,
                        pin     ? "pinned"
                        : unpin ? "unpinned"
                                : "allowed regions set for",
                        pos[0], set ? "PUT" : "POST", path, core_buf_cstr(&body), region);
        core_buf_free(&arr);
        core_buf_free(&body);
    }
    free(reason);
    return rc;
}
