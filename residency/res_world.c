/* res_world.c: reading and validating a world file (see res_world.h). */
#include "residency/res_world.h"
#include "core/config.h"
#include "core/core.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

static bool valid_region_name(const char *s)
{
    if (!s || !*s || strlen(s) > 32)
        return false;
    for (const char *p = s; *p; p++)
        if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-')
            return false;
    return true;
}

static bool valid_jurisdiction(const char *s)
{
    if (!s || !*s || strlen(s) > 16)
        return false;
    for (const char *p = s; *p; p++)
        if (!isupper((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-')
            return false;
    return true;
}

/* scheme://host[:port][/...] with one of the given schemes. */
static bool valid_url(const char *s, const char *const *schemes)
{
    for (; *schemes; schemes++) {
        size_t n = strlen(*schemes);
        if (strncmp(s, *schemes, n) == 0 && strncmp(s + n, "://", 3) == 0 && s[n + 3] &&
            s[n + 3] != '/' && !strpbrk(s, " \t\r\n"))
            return true;
    }
    return false;
}

/* A non-empty array of URLs with one of schemes. */
static void url_list(core_cfg_t *c, const core_json_t *obj, const char *base, const char *key,
                     const char *const *schemes, char ***out, size_t *n)
{
    char path[256];
    core_cfg_path(path, sizeof path, base, key);
    core_cfg_str_list(c, obj, base, key, out, n);
    if (*n == 0 && core_json_get(obj, key) == NULL) {
        core_cfg_error(c, path, "is required: a non-empty array of URLs");
        return;
    }
    if (*n == 0)
        core_cfg_error(c, path, "must not be empty");
    for (size_t i = 0; i < *n; i++)
        if (!valid_url((*out)[i], schemes))
            core_cfg_error(c, path, "item %zu must be a %s://host[:port] URL, got \"%.60s\"", i,
                           schemes[0], (*out)[i]);
}

static const char *const NATS_SCHEMES[] = {"nats", "tls", NULL};
static const char *const LEAF_SCHEMES[] = {"nats-leaf", "nats", "tls", NULL};
static const char *const API_SCHEMES[] = {"http", "https", NULL};

static void decode_region(core_cfg_t *c, const core_json_t *o, const char *base, res_region_t *r)
{
    static const char *const keys[] = {"name",  "jurisdiction", "nats",       "postgres",
                                       "redis", "api",          "token_keys", NULL};
    core_cfg_known_keys(c, o, base, keys);
    char path[128];
    core_cfg_str(c, o, base, "name", true, NULL, &r->name);
    if (r->name && !valid_region_name(r->name)) {
        core_cfg_path(path, sizeof path, base, "name");
        core_cfg_error(c, path, "must be 1-32 characters of a-z, 0-9 and '-'");
    }
    core_cfg_str(c, o, base, "jurisdiction", true, NULL, &r->jurisdiction);

    char sub[128];
    core_cfg_path(sub, sizeof sub, base, "nats");
    const core_json_t *nats = core_cfg_object(c, o, base, "nats");
    if (!nats)
        core_cfg_error(c, sub, "is required: {domain, urls}");
    static const char *const nats_keys[] = {"domain", "urls", NULL};
    core_cfg_known_keys(c, nats, sub, nats_keys);
    core_cfg_str(c, nats, sub, "domain", true, NULL, &r->nats_domain);
    if (r->nats_domain && !valid_region_name(r->nats_domain)) {
        core_cfg_path(path, sizeof path, sub, "domain");
        core_cfg_error(c, path, "must be 1-32 characters of a-z, 0-9 and '-'");
    }
    if (nats)
        url_list(c, nats, sub, "urls", NATS_SCHEMES, &r->nats_urls, &r->nnats_urls);

    core_cfg_path(sub, sizeof sub, base, "postgres");
    const core_json_t *pg = core_cfg_object(c, o, base, "postgres");
    static const char *const pg_keys[] = {"shards", NULL};
    core_cfg_known_keys(c, pg, sub, pg_keys);
    char spath[160];
    core_cfg_path(spath, sizeof spath, sub, "shards");
    const core_json_t *shards = pg ? core_cfg_array(c, pg, sub, "shards") : NULL;
    if (!shards || shards->u.kids.n == 0) {
        core_cfg_error(c, spath, "is required: a non-empty array of {id, conninfo}");
    } else if (shards->u.kids.n > RES_MAX_SHARDS) {
        core_cfg_error(c, spath, "has more than %d shards", RES_MAX_SHARDS);
    } else {
        r->shards = core_xcalloc(shards->u.kids.n, sizeof *r->shards);
        for (size_t i = 0; i < shards->u.kids.n; i++) {
            char sb[192], idx[24];
            snprintf(idx, sizeof idx, "[%zu]", i);
            core_cfg_path(sb, sizeof sb, spath, idx);
            const core_json_t *sh = shards->u.kids.items[i];
            if (sh->type != CORE_JSON_OBJECT) {
                core_cfg_error(c, sb, "must be an object {id, conninfo}");
                continue;
            }
            static const char *const sh_keys[] = {"id", "conninfo", NULL};
            core_cfg_known_keys(c, sh, sb, sh_keys);
            res_shard_t *s = &r->shards[r->nshards++];
            int64_t v;
            core_cfg_int(c, sh, sb, "id", true, 0, 0, RES_MAX_SHARDS - 1, &v);
            s->id = (int)v;
            core_cfg_str(c, sh, sb, "conninfo", true, NULL, &s->conninfo);
            if (s->id != (int)i)
                core_cfg_error(c, sb, "id must be %zu: shard ids run 0..n-1 in order", i);
            if (s->conninfo && strstr(s->conninfo, "password"))
                core_cfg_error(c, sb,
                               "conninfo must not carry a password: a world file is shared; "
                               "use PGPASSFILE");
        }
    }

    core_cfg_path(sub, sizeof sub, base, "redis");
    const core_json_t *redis = core_cfg_object(c, o, base, "redis");
    if (!redis)
        core_cfg_error(c, sub, "is required: {host, port}");
    static const char *const redis_keys[] = {"host", "port", NULL};
    core_cfg_known_keys(c, redis, sub, redis_keys);
    core_cfg_str(c, redis, sub, "host", redis != NULL, NULL, &r->redis_host);
    int64_t port;
    core_cfg_int(c, redis, sub, "port", redis != NULL, 6379, 1, 65535, &port);
    r->redis_port = (int)port;

    core_cfg_path(sub, sizeof sub, base, "api");
    const core_json_t *api = core_cfg_object(c, o, base, "api");
    if (!api)
        core_cfg_error(c, sub, "is required: {urls}");
    static const char *const api_keys[] = {"urls", NULL};
    core_cfg_known_keys(c, api, sub, api_keys);
    if (api)
        url_list(c, api, sub, "urls", API_SCHEMES, &r->api_urls, &r->napi_urls);

    core_cfg_path(sub, sizeof sub, base, "token_keys");
    core_cfg_str_list(c, o, base, "token_keys", &r->token_keys, &r->ntoken_keys);
    for (size_t i = 0; i < r->ntoken_keys; i++) {
        const char *k = r->token_keys[i];
        bool ok = strlen(k) == 43;
        for (const char *p = k; ok && *p; p++)
            ok = isalnum((unsigned char)*p) || *p == '-' || *p == '_';
        if (!ok)
            core_cfg_error(c, sub,
                           "item %zu must be an Ed25519 public key: 43 base64url characters", i);
    }
}

/* edges: [{name, pop, region, urls}]: the world's edge nodes. */
static void decode_edges(core_cfg_t *c, const core_json_t *root, res_world_t *w)
{
    const core_json_t *edges = core_cfg_array(c, root, "", "edges");
    if (!edges || edges->u.kids.n == 0)
        return;
    w->edges = core_xcalloc(edges->u.kids.n, sizeof *w->edges);
    for (size_t i = 0; i < edges->u.kids.n; i++) {
        char b[64], p[96];
        snprintf(b, sizeof b, "edges[%zu]", i);
        const core_json_t *o = edges->u.kids.items[i];
        if (o->type != CORE_JSON_OBJECT) {
            core_cfg_error(c, b, "must be an object {name, pop, region, urls}");
            continue;
        }
        static const char *const keys[] = {"name", "pop", "region", "urls", NULL};
        core_cfg_known_keys(c, o, b, keys);
        res_edge_t *e = &w->edges[w->nedges++];
        core_cfg_str(c, o, b, "name", true, NULL, &e->name);
        core_cfg_path(p, sizeof p, b, "name");
        if (e->name && !valid_region_name(e->name))
            core_cfg_error(c, p, "must be 1-32 characters of a-z, 0-9 and '-'");
        for (size_t k = 0; e->name && k + 1 < w->nedges; k++)
            if (w->edges[k].name && strcmp(w->edges[k].name, e->name) == 0)
                core_cfg_error(c, p, "\"%s\" is also edges[%zu]", e->name, k);
        core_cfg_str(c, o, b, "pop", false, "", &e->pop);
        core_cfg_str(c, o, b, "region", false, NULL, &e->region);
        core_cfg_path(p, sizeof p, b, "region");
        if (e->region && w->nregions && !res_world_region(w, e->region))
            core_cfg_error(c, p, "\"%.32s\" is not one of the world's regions", e->region);
        url_list(c, o, b, "urls", API_SCHEMES, &e->urls, &e->nurls);
    }
}

static void decode(core_cfg_t *c, res_world_t *w)
{
    const core_json_t *root = core_cfg_root(c);
    static const char *const top[] = {"format", "name",    "description", "jurisdictions",
                                      "hub",    "regions", "edges",       NULL};
    core_cfg_known_keys(c, root, "", top);
    char *format = NULL;
    core_cfg_str(c, root, "", "format", true, NULL, &format);
    if (format && strcmp(format, RES_WORLD_FORMAT) != 0)
        core_cfg_error(c, "format", "must be \"%s\" (got \"%.40s\")", RES_WORLD_FORMAT, format);
    free(format);
    core_cfg_str(c, root, "", "name", true, NULL, &w->name);
    if (w->name && !valid_region_name(w->name))
        core_cfg_error(c, "name", "must be 1-32 characters of a-z, 0-9 and '-'");

    const core_json_t *jur = core_cfg_array(c, root, "", "jurisdictions");
    if (!jur || jur->u.kids.n == 0) {
        core_cfg_error(c, "jurisdictions", "is required: a non-empty array of {name, description}");
    } else {
        w->jurisdictions = core_xcalloc(jur->u.kids.n, sizeof *w->jurisdictions);
        for (size_t i = 0; i < jur->u.kids.n; i++) {
            char b[64];
            snprintf(b, sizeof b, "jurisdictions[%zu]", i);
            const core_json_t *j = jur->u.kids.items[i];
            if (j->type != CORE_JSON_OBJECT) {
                core_cfg_error(c, b, "must be an object {name, description}");
                continue;
            }
            static const char *const jkeys[] = {"name", "description", NULL};
            core_cfg_known_keys(c, j, b, jkeys);
            res_jurisdiction_t *x = &w->jurisdictions[w->njurisdictions++];
            core_cfg_str(c, j, b, "name", true, NULL, &x->name);
            core_cfg_str(c, j, b, "description", false, "", &x->description);
            char p[96];
            core_cfg_path(p, sizeof p, b, "name");
            if (x->name && !valid_jurisdiction(x->name))
                core_cfg_error(c, p, "must be 1-16 characters of A-Z, 0-9 and '-'");
            for (size_t k = 0; x->name && k + 1 < w->njurisdictions; k++)
                if (w->jurisdictions[k].name && strcmp(w->jurisdictions[k].name, x->name) == 0)
                    core_cfg_error(c, p, "\"%s\" is listed twice", x->name);
        }
    }

    const core_json_t *hub = core_cfg_object(c, root, "", "hub");
    static const char *const hub_keys[] = {"leaf_urls", NULL};
    core_cfg_known_keys(c, hub, "hub", hub_keys);
    if (hub)
        url_list(c, hub, "hub", "leaf_urls", LEAF_SCHEMES, &w->hub_leaf_urls, &w->nhub_leaf_urls);

    const core_json_t *regions = core_cfg_array(c, root, "", "regions");
    if (!regions || regions->u.kids.n == 0) {
        core_cfg_error(c, "regions", "is required: a non-empty array of regions");
        return;
    }
    if (regions->u.kids.n > RES_MAX_REGIONS) {
        core_cfg_error(c, "regions", "has more than %d regions", RES_MAX_REGIONS);
        return;
    }
    if (regions->u.kids.n > 1 && !hub)
        core_cfg_error(c, "hub", "is required when there is more than one region: {leaf_urls}");
    w->regions = core_xcalloc(regions->u.kids.n, sizeof *w->regions);
    for (size_t i = 0; i < regions->u.kids.n; i++) {
        char b[64];
        snprintf(b, sizeof b, "regions[%zu]", i);
        const core_json_t *o = regions->u.kids.items[i];
        if (o->type != CORE_JSON_OBJECT) {
            core_cfg_error(c, b, "must be an object");
            continue;
        }
        res_region_t *r = &w->regions[w->nregions++];
        decode_region(c, o, b, r);
        char p[96];
        if (r->jurisdiction) {
            bool known = false;
            for (size_t k = 0; k < w->njurisdictions; k++)
                known = known || (w->jurisdictions[k].name &&
                                  strcmp(w->jurisdictions[k].name, r->jurisdiction) == 0);
            core_cfg_path(p, sizeof p, b, "jurisdiction");
            if (!known)
                core_cfg_error(c, p, "\"%.32s\" is not one of the world's jurisdictions",
                               r->jurisdiction);
        }
        for (size_t k = 0; k + 1 < w->nregions; k++) {
            const res_region_t *q = &w->regions[k];
            if (r->name && q->name && strcmp(r->name, q->name) == 0) {
                core_cfg_path(p, sizeof p, b, "name");
                core_cfg_error(c, p, "\"%s\" is also regions[%zu]", r->name, k);
            }
            if (r->nats_domain && q->nats_domain && strcmp(r->nats_domain, q->nats_domain) == 0) {
                core_cfg_path(p, sizeof p, b, "nats.domain");
                core_cfg_error(c, p,
                               "\"%s\" is also the domain of regions[%zu]: one JetStream "
                               "domain per region",
                               r->nats_domain, k);
            }
        }
    }
    decode_edges(c, root, w);
}

static void decode_obj(core_cfg_t *c, void *obj)
{
    decode(c, obj);
}

/* No environment overrides: a world file describes the world as deployed. */
static int load(res_world_t *w, const char *path, const char *json, char **errors)
{
    memset(w, 0, sizeof *w);
    int rc = core_cfg_load(path, json, NULL, decode_obj, w, errors);
    if (rc)
        res_world_free(w);
    return rc;
}

int res_world_load(res_world_t *w, const char *path, char **errors)
{
    return load(w, path, NULL, errors);
}

int res_world_load_str(res_world_t *w, const char *json, char **errors)
{
    return load(w, NULL, json, errors);
}

void res_world_free(res_world_t *w)
{
    free(w->name);
    for (size_t i = 0; i < w->njurisdictions; i++) {
        free(w->jurisdictions[i].name);
        free(w->jurisdictions[i].description);
    }
    free(w->jurisdictions);
    for (size_t i = 0; i < w->nregions; i++) {
        res_region_t *r = &w->regions[i];
        free(r->name);
        free(r->jurisdiction);
        free(r->nats_domain);
        core_cfg_str_list_free(r->nats_urls, r->nnats_urls);
        for (size_t k = 0; k < r->nshards; k++)
            free(r->shards[k].conninfo);
        free(r->shards);
        free(r->redis_host);
        core_cfg_str_list_free(r->api_urls, r->napi_urls);
        core_cfg_str_list_free(r->token_keys, r->ntoken_keys);
    }
    free(w->regions);
    core_cfg_str_list_free(w->hub_leaf_urls, w->nhub_leaf_urls);
    for (size_t i = 0; i < w->nedges; i++) {
        free(w->edges[i].name);
        free(w->edges[i].pop);
        free(w->edges[i].region);
        core_cfg_str_list_free(w->edges[i].urls, w->edges[i].nurls);
    }
    free(w->edges);
    memset(w, 0, sizeof *w);
}

const res_region_t *res_world_region(const res_world_t *w, const char *name)
{
    for (size_t i = 0; i < w->nregions; i++)
        if (w->regions[i].name && strcmp(w->regions[i].name, name) == 0)
            return &w->regions[i];
    return NULL;
}

const res_edge_t *res_world_edge(const res_world_t *w, const char *name)
{
    for (size_t i = 0; i < w->nedges; i++)
        if (w->edges[i].name && strcmp(w->edges[i].name, name) == 0)
            return &w->edges[i];
    return NULL;
}

const res_region_t *res_world_region_by_domain(const res_world_t *w, const char *domain)
{
    for (size_t i = 0; i < w->nregions; i++)
        if (w->regions[i].nats_domain && strcmp(w->regions[i].nats_domain, domain) == 0)
            return &w->regions[i];
    return NULL;
}

const res_region_t *res_world_owner(const res_world_t *w, const uint8_t *key, size_t len)
{
    const res_region_t *best = NULL;
    uint64_t best_score = 0;
    for (size_t i = 0; i < w->nregions; i++) {
        const res_region_t *r = &w->regions[i];
        crypto_generichash_state st;
        uint8_t out[8];
        crypto_generichash_init(&st, NULL, 0, sizeof out);
        crypto_generichash_update(&st, (const uint8_t *)r->name, strlen(r->name) + 1);
        crypto_generichash_update(&st, key, len);
        crypto_generichash_final(&st, out, sizeof out);
        uint64_t score = 0;
        for (int k = 0; k < 8; k++)
            score = score << 8 | out[k];
        if (!best || score > best_score) {
            best = r;
            best_score = score;
        }
    }
    return best;
}
