#include "edge/eg_dir.h"
#include "core/core.h"
#include "core/json.h"
#include "core/map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#define DIR_MAX_BYTES (256u << 20)

struct eg_dir_s {
    const res_world_t *world;
    core_map_t *ws;     /* id -> eg_ws_route_t* */
    core_map_t *users;  /* id -> (void *)(home + 1) */
    core_map_t *emails; /* hex -> (void *)(home + 1) */
    char version[RES_MAX_REGIONS][48];
    int64_t version_n[RES_MAX_REGIONS];
};

static int region_index(const eg_dir_t *d, const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < d->world->nregions && i < 64; i++)
        if (strcmp(d->world->regions[i].name, name) == 0)
            return (int)i;
    return -1;
}

eg_dir_t *eg_dir_new(const res_world_t *world)
{
    eg_dir_t *d = core_xcalloc(1, sizeof *d);
    d->world = world;
    d->ws = core_map_new();
    d->users = core_map_new();
    d->emails = core_map_new();
    return d;
}

void eg_dir_free(eg_dir_t *d)
{
    if (!d)
        return;
    core_map_free(d->ws, free);
    core_map_free(d->users, NULL);
    core_map_free(d->emails, NULL);
    free(d);
}

static bool valid_id(const char *s, size_t len)
{
    if (len == 0 || len > 128)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* One entry ({id|hash, home_region, allowed_regions, epoch, pinned}) of kind
 * into the maps. Returns false when it is malformed. */
static bool put_entry(eg_dir_t *d, int source, char kind, const core_json_t *o)
{
    if (!o || o->type != CORE_JSON_OBJECT)
        return false;
    const char *id = NULL, *home = NULL;
    if (core_json_get_str(o, kind == 'e' ? "hash" : "id", &id) || !valid_id(id, strlen(id)))
        return false;
    core_json_get_str(o, "home_region", &home);
    int h = region_index(d, home);
    if (kind == 'w') {
        eg_ws_route_t nr = {.home = h, .source = source};
        eg_ws_route_t *r = &nr;
        const core_json_t *al = core_json_get(o, "allowed_regions");
        if (al && al->type == CORE_JSON_ARRAY) {
            for (size_t i = 0; i < al->u.kids.n; i++) {
                const core_json_t *a = al->u.kids.items[i];
                int idx = a->type == CORE_JSON_STRING ? region_index(d, a->u.str.s) : -1;
                if (idx >= 0)
                    r->allowed |= 1ull << idx;
            }
        }
        /* The home is always allowed; a home outside the set is not ours to fix. */
        if (h >= 0)
            r->allowed |= 1ull << h;
        core_json_get_int(o, "epoch", &r->epoch);
        core_json_get_bool(o, "pinned", &r->pinned);
        eg_ws_route_t *old = core_map_get(d->ws, id);
        if (!old) {
            old = core_xmalloc(sizeof *old);
            *old = nr;
            core_map_put(d->ws, id, old);
        } else if (nr.epoch > old->epoch || (nr.epoch == old->epoch &&
                                             (old->source == source || old->source != old->home))) {
            /* A newer epoch (a move); at equal epochs a home region's report
             * about itself is replaced only by that same region's later one. */
            *old = nr;
        }
    } else {
        core_map_put(kind == 'u' ? d->users : d->emails, id, (void *)(intptr_t)(h + 1));
    }
    return true;
}

static int parse(const char *json, size_t len, core_json_doc_t **doc, char *err, size_t errlen)
{
    core_json_limits_t lim = {.max_bytes = DIR_MAX_BYTES, .max_depth = 8};
    return core_json_parse(json, len, &lim, doc, err, errlen);
}

/* Parses "<shard>:<n>"; false when it is not one. */
static bool parse_version(const char *v, int64_t *n_out)
{
    int shard;
    long long n;
    char extra;
    if (!v || strlen(v) >= sizeof((eg_dir_t *)0)->version[0] ||
        sscanf(v, "%d:%lld%c", &shard, &n, &extra) != 2 || shard < 0 || n < 0)
        return false;
    *n_out = n;
    return true;
}

int eg_dir_load_snapshot(eg_dir_t *d, int source, const char *json, size_t len, char *err,
                         size_t errlen)
{
    core_json_doc_t *doc;
    int rc = parse(json, len, &doc, err, errlen);
    if (rc)
        return rc;
    const core_json_t *root = core_json_root(doc);
    const char *version = NULL;
    core_json_get_str(root, "version", &version);
    const core_json_t *lists[3] = {core_json_get(root, "workspaces"), core_json_get(root, "users"),
                                   core_json_get(root, "emails")};
    if (!version || !lists[0] || lists[0]->type != CORE_JSON_ARRAY || !lists[1] ||
        lists[1]->type != CORE_JSON_ARRAY || !lists[2] || lists[2]->type != CORE_JSON_ARRAY) {
        snprintf(err, errlen, "a snapshot needs version, workspaces, users and emails");
        core_json_free(doc);
        return UV_EINVAL;
    }
    int64_t vn;
    if (source < 0 || source >= RES_MAX_REGIONS || !parse_version(version, &vn)) {
        snprintf(err, errlen, "version is not \"<shard>:<number>\"");
        core_json_free(doc);
        return UV_EINVAL;
    }
    static const char kinds[3] = {'w', 'u', 'e'};
    size_t bad = 0;
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < lists[k]->u.kids.n; i++)
            bad += !put_entry(d, source, kinds[k], lists[k]->u.kids.items[i]);
    snprintf(d->version[source], sizeof d->version[source], "%s", version);
    d->version_n[source] = vn;
    core_json_free(doc);
    if (bad)
        snprintf(err, errlen, "%zu malformed entries skipped", bad);
    return 0;
}

int eg_dir_apply_changes(eg_dir_t *d, int source, const char *json, size_t len, bool *more,
                         char *err, size_t errlen)
{
    core_json_doc_t *doc;
    int rc = parse(json, len, &doc, err, errlen);
    if (rc)
        return rc;
    const core_json_t *root = core_json_root(doc);
    const char *version = NULL;
    core_json_get_str(root, "version", &version);
    const core_json_t *changes = core_json_get(root, "changes");
    bool m = false;
    core_json_get_bool(root, "more", &m);
    int64_t vn;
    if (source < 0 || source >= RES_MAX_REGIONS || !changes || changes->type != CORE_JSON_ARRAY ||
        !parse_version(version, &vn)) {
        snprintf(err, errlen, "changes need a version \"<shard>:<number>\" and a changes array");
        core_json_free(doc);
        return UV_EINVAL;
    }
    if (vn < d->version_n[source]) {
        /* A feed going backwards is not ours to follow. */
        snprintf(err, errlen, "the feed went backwards");
        core_json_free(doc);
        return UV_EINVAL;
    }
    for (size_t i = 0; i < changes->u.kids.n; i++) {
        const core_json_t *c = changes->u.kids.items[i];
        const char *kind = NULL;
        if (c->type != CORE_JSON_OBJECT || core_json_get_str(c, "kind", &kind))
            continue;
        char k = strcmp(kind, "workspace") == 0 ? 'w'
                 : strcmp(kind, "user") == 0    ? 'u'
                 : strcmp(kind, "email") == 0   ? 'e'
                                                : 0;
        if (!k)
            continue;
        if (k == 'e') {
            /* Changes name an email by its hash in "id". */
            const char *id = NULL, *home = NULL;
            if (core_json_get_str(c, "id", &id) || !valid_id(id, strlen(id)))
                continue;
            core_json_get_str(c, "home_region", &home);
            core_map_put(d->emails, id, (void *)(intptr_t)(region_index(d, home) + 1));
            continue;
        }
        put_entry(d, source, k, c);
    }
    snprintf(d->version[source], sizeof d->version[source], "%s", version);
    d->version_n[source] = vn;
    *more = m;
    core_json_free(doc);
    return 0;
}

const char *eg_dir_version(const eg_dir_t *d, int source)
{
    return source >= 0 && source < RES_MAX_REGIONS ? d->version[source] : "";
}

int64_t eg_dir_version_number(const eg_dir_t *d, int source)
{
    return source >= 0 && source < RES_MAX_REGIONS ? d->version_n[source] : 0;
}

const eg_ws_route_t *eg_dir_workspace(const eg_dir_t *d, const char *id)
{
    return core_map_get(d->ws, id);
}

int eg_dir_user(const eg_dir_t *d, const char *id)
{
    return (int)(intptr_t)core_map_get(d->users, id) - 1;
}

int eg_dir_email(const eg_dir_t *d, const char *hash_hex)
{
    return (int)(intptr_t)core_map_get(d->emails, hash_hex) - 1;
}

bool eg_dir_set_home(eg_dir_t *d, const char *id, int home)
{
    eg_ws_route_t *r = core_map_get(d->ws, id);
    if (!r || home < 0 || !(r->allowed & (1ull << home)))
        return false;
    r->home = home;
    return true;
}

size_t eg_dir_count(const eg_dir_t *d, char kind)
{
    return core_map_len(kind == 'w' ? d->ws : kind == 'u' ? d->users : d->emails);
}
