/* meridian-edge: an edge node. The master forks workers (core/prefork.h);
 * each routes clients' requests and WebSockets to their workspace's home
 * region (edge/eg_proxy.c), following the world's directory. */
#include "core/auth.h"
#include "core/core.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/prefork.h"
#include "edge/eg_config.h"
#include "edge/eg_worker.h"
#include "residency/res_world.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define MERIDIAN_VERSION "0.1.0"

static eg_config_t g_cfg;
static res_world_t g_world;
static core_auth_pubkey_t *g_keys; /* every region's token keys */
static size_t g_nkeys;
static core_auth_keys_t g_hash; /* only the email hash key */

static int worker_main(int index, void *ud)
{
    return eg_worker_run(&g_cfg, &g_world, g_keys, g_nkeys, &g_hash, index);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: meridian-edge --config FILE [--check-config]\n"
               "  --config FILE    the edge's JSON configuration (see docs/edge.md)\n"
               "  --check-config   validate the configuration, the world file and the key and\n"
               "                   token files it names, and exit\n"
               "  --version        print the version and exit\n");
}

/* Everything the configuration points at, checked before any worker starts:
 * every problem on its own line, each naming its field. */
static int check_refs(core_buf_t *errs)
{
    char *werr = NULL;
    if (res_world_load(&g_world, g_cfg.world_file, &werr) != 0) {
        core_buf_appendf(errs, "world_file: %s is not a valid world file:\n%s", g_cfg.world_file,
                         werr);
        free(werr);
        return -1;
    }
    for (size_t i = 0; i < g_world.nregions; i++) {
        const res_region_t *r = &g_world.regions[i];
        if (r->napi_urls == 0)
            core_buf_appendf(errs,
                             "world_file: regions[%zu].api.urls: an edge needs at least one\n", i);
        for (size_t j = 0; j < r->napi_urls; j++)
            if (eg_upstream_check_url(r->api_urls[j]) != 0)
                core_buf_appendf(errs,
                                 "world_file: regions[%zu].api.urls[%zu]: \"%s\": the edge "
                                 "reaches regions over http://host[:port] (TLS terminates in "
                                 "front of it)\n",
                                 i, j, r->api_urls[j]);
        for (size_t j = 0; j < r->ntoken_keys; j++) {
            g_keys = core_xrealloc(g_keys, (g_nkeys + 1) * sizeof *g_keys);
            if (core_auth_pubkey_parse(&g_keys[g_nkeys], r->token_keys[j],
                                       strlen(r->token_keys[j])) == 0)
                g_nkeys++;
            else
                core_buf_appendf(errs, "world_file: regions[%zu].token_keys[%zu]: not a key\n", i,
                                 j);
        }
    }
    if (g_nkeys == 0)
        core_buf_appendf(errs, "world_file: no region lists token_keys: the edge could verify no "
                               "token\n");
    /* Without routing.signup_region, new users sign up in the region the
     * world file names for this edge (its nearest). */
    const res_edge_t *me = res_world_edge(&g_world, g_cfg.edge);
    if (!g_cfg.signup_region && me && me->region)
        g_cfg.signup_region = core_xstrdup(me->region);
    if (g_cfg.signup_region && !res_world_region(&g_world, g_cfg.signup_region))
        core_buf_appendf(errs, "routing.signup_region: \"%s\" is not a region of the world\n",
                         g_cfg.signup_region);
    char kerr[256];
    uint8_t key[32];
    if (core_auth_key_file_read(g_cfg.email_hash_key_file, key, kerr, sizeof kerr) != 0) {
        core_buf_appendf(errs, "auth.email_hash_key_file: %s\n", kerr);
    } else {
        memcpy(g_hash.email_key, key, sizeof key);
        sodium_memzero(key, sizeof key);
    }
    FILE *f = fopen(g_cfg.directory_token_file, "r");
    if (!f) {
        core_buf_appendf(errs, "directory.token_file: cannot read %s\n",
                         g_cfg.directory_token_file);
    } else {
        char tok[300];
        size_t n = fread(tok, 1, sizeof tok - 1, f);
        fclose(f);
        while (n && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' '))
            n--;
        sodium_memzero(tok, sizeof tok);
        if (n < 16)
            core_buf_appendf(errs, "directory.token_file: %s holds fewer than 16 characters\n",
                             g_cfg.directory_token_file);
    }
    return errs->len ? -1 : 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL;
    int check = 0, ch;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config = optarg;
            break;
        case 'k':
            check = 1;
            break;
        case 'v':
            printf("meridian-edge %s\n", MERIDIAN_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!config || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (core_init() != 0) {
        fprintf(stderr, "meridian-edge: cannot initialise libsodium\n");
        return 1;
    }
    char *errors = NULL;
    if (eg_config_load(&g_cfg, config, &errors) != 0) {
        fprintf(stderr, "meridian-edge: invalid configuration %s:\n%s", config, errors);
        free(errors);
        return 1;
    }
    core_buf_t errs;
    core_buf_init(&errs);
    if (check_refs(&errs) != 0) {
        fprintf(stderr, "meridian-edge: invalid configuration %s:\n%s", config,
                core_buf_cstr(&errs));
        core_buf_free(&errs);
        eg_config_free(&g_cfg);
        return 1;
    }
    core_buf_free(&errs);
    if (check) {
        printf("configuration ok: edge=%s workers=%d listen=%s:%d mode=%s world=%s regions=%zu "
               "token_keys=%zu\n",
               g_cfg.edge, g_cfg.workers, g_cfg.listen_host, g_cfg.listen_port,
               g_cfg.mode == EG_MODE_PROXY ? "proxy" : "redirect", g_world.name, g_world.nregions,
               g_nkeys);
        core_auth_keys_wipe(&g_hash);
        res_world_free(&g_world);
        free(g_keys);
        eg_config_free(&g_cfg);
        return 0;
    }
    core_log_init("edge", g_cfg.edge, g_cfg.log_level);
    if (core_metrics_init(g_cfg.workers) != 0) {
        core_log_error("edge.metrics_init_failed", "");
        return 1;
    }
    eg_upstream_share_admission(&g_cfg, &g_world);
    /* Verified tokens, shared by the workers: a returning client may land
     * on any of them. */
    core_auth_token_seen_t *seen = core_auth_token_seen_shared_new(CORE_AUTH_SEEN_SLOTS);
    if (!seen)
        core_log_warn("edge.token_table_unshared", "reason=\"mmap failed\"");
    eg_worker_set_token_seen(seen);
    core_prefork_opts_t po = {
        .name = "edge",
        .workers = g_cfg.workers,
        .host = g_cfg.listen_host,
        .port = g_cfg.listen_port,
        .drain_timeout_ms = g_cfg.drain_timeout_ms,
        .worker_main = worker_main,
    };
    int rc = core_prefork_run(&po);
    eg_upstream_unshare_admission();
    core_auth_token_seen_free(seen);
    core_auth_keys_wipe(&g_hash);
    res_world_free(&g_world);
    free(g_keys);
    eg_config_free(&g_cfg);
    return rc;
}
