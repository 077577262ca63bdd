/* meridian-region: one node of a regional cell. The master process forks
 * workers (see core/prefork.h); each worker serves the REST API and the
 * WebSocket gateway on a shared SO_REUSEPORT port. */
#include "core/admit.h"
#include "core/core.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/prefork.h"
#include "core/auth.h"
#include "region/rg_config.h"
#include "region/rg_keys.h"
#include "region/rg_migrate.h"
#include "region/rg_worker.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MERIDIAN_VERSION "0.1.0"

static rg_config_t g_cfg;
static core_auth_keys_t g_keys; /* loaded by the master, inherited by the workers */
static res_world_t g_world;     /* likewise; empty without world_file */
static bool g_has_world;

static int worker_main(int index, void *ud)
{
    return rg_worker_run(&g_cfg, g_has_world ? &g_world : NULL, &g_keys, index);
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: meridian-region --config FILE [--check-config | --rewrap-keys] | --print-routes\n"
        "  --config FILE    the node's JSON configuration (see docs/configuration.md)\n"
        "  --check-config   validate the configuration (with MERIDIAN_* overrides) and exit\n"
        "  --rewrap-keys    rewrap every data key under the current master key, print\n"
        "                   {\"rewrapped\":N,\"shards\":M} and exit (docs/encryption.md)\n"
        "  --print-routes   print every API route (METHOD /pattern) and exit\n"
        "  --version        print the version and exit\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'v'},
        {"print-routes", no_argument, NULL, 'r'},
        {"rewrap-keys", no_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL;
    int check = 0, rewrap = 0, ch;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config = optarg;
            break;
        case 'k':
            check = 1;
            break;
        case 'w':
            rewrap = 1;
            break;
        case 'v':
            printf("meridian-region %s\n", MERIDIAN_VERSION);
            return 0;
        case 'r':
            core_init();
            rg_worker_print_routes(stdout);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!config || optind != argc || (check && rewrap)) {
        usage(stderr);
        return 2;
    }
    if (core_init() != 0) {
        fprintf(stderr, "meridian-region: cannot initialise libsodium\n");
        return 1;
    }
    char *errors = NULL;
    if (rg_config_load(&g_cfg, config, &errors) != 0) {
        fprintf(stderr, "meridian-region: invalid configuration %s:\n%s", config, errors);
        free(errors);
        return 1;
    }
    if (g_cfg.world_file) {
        if (res_world_load(&g_world, g_cfg.world_file, &errors) != 0) {
            fprintf(stderr, "meridian-region: invalid world file %s (world_file):\n%s",
                    g_cfg.world_file, errors);
            free(errors);
            rg_config_free(&g_cfg);
            return 1;
        }
        g_has_world = true;
        if (!res_world_region(&g_world, g_cfg.region)) {
            fprintf(stderr,
                    "meridian-region: invalid configuration %s:\nregion: \"%s\" is not a region "
                    "of the world in %s\n",
                    config, g_cfg.region, g_cfg.world_file);
            res_world_free(&g_world);
            rg_config_free(&g_cfg);
            return 1;
        }
    }
    char kerr[512];
    if (core_auth_keys_load(&g_keys, g_cfg.auth.signing_key_file, g_cfg.auth.email_hash_key_file,
                            kerr, sizeof kerr) != 0) {
        fprintf(stderr, "meridian-region: invalid configuration %s:\nauth: %s\n", config, kerr);
        rg_config_free(&g_cfg);
        return 1;
    }
    if (rg_keys_init(&g_cfg, kerr, sizeof kerr) != 0) {
        fprintf(stderr, "meridian-region: invalid configuration %s:\n%s\n", config, kerr);
        core_auth_keys_wipe(&g_keys);
        rg_config_free(&g_cfg);
        return 1;
    }
    if (check) {
        core_auth_keys_wipe(&g_keys);
        const res_keys_master_t *mk = rg_keys_master();
        printf("configuration ok: region=%s node=%s workers=%d listen=%s:%d shards=%d world=%s "
               "regions=%zu encryption=%s master_key_id=%s previous_keys=%zu\n",
               g_cfg.region, g_cfg.node, g_cfg.workers, g_cfg.listen_host, g_cfg.listen_port,
               g_cfg.pg.nshards, g_has_world ? g_world.name : "-",
               g_has_world ? g_world.nregions : (size_t)1, rg_keys_encrypting() ? "on" : "off",
               mk ? mk->id : "-", g_cfg.encryption.nprevious);
        rg_keys_shutdown();
        if (g_has_world)
            res_world_free(&g_world);
        rg_config_free(&g_cfg);
        return 0;
    }
    core_log_init("region", g_cfg.region, g_cfg.log_level);
    /* The schema is brought up to date before any worker serves a request. */
    const char *conninfos[RG_MAX_SHARDS];
    for (int i = 0; i < g_cfg.pg.nshards; i++)
        conninfos[i] = g_cfg.pg.shards[i].conninfo;
    if (rg_migrate_all(conninfos, g_cfg.pg.nshards, g_cfg.pg.connect_timeout_ms,
                       g_cfg.pg.startup_timeout_ms) != 0) {
        core_log_flush();
        rg_keys_shutdown();
        rg_config_free(&g_cfg);
        return 1;
    }
    if (rewrap) {
        /* Master key rotation: data keys are rewrapped, messages untouched. */
        int n = 0, failed = 0;
        char rerr[512];
        int rc = rg_keys_rewrap_all(&g_cfg, &n, &failed, rerr, sizeof rerr);
        if (rc == 0)
            printf("{\"rewrapped\":%d,\"shards\":%d,\"failed\":%d,\"master_key_id\":\"%s\"}\n", n,
                   g_cfg.pg.nshards, failed, rg_keys_master()->id);
        else
            fprintf(stderr, "meridian-region: --rewrap-keys: %s\n", rerr);
        core_log_flush();
        core_auth_keys_wipe(&g_keys);
        rg_keys_shutdown();
        if (g_has_world)
            res_world_free(&g_world);
        rg_config_free(&g_cfg);
        return rc == 0 && failed == 0 ? 0 : 1;
    }
    if (core_metrics_init(g_cfg.workers) != 0) {
        core_log_error("region.metrics_init_failed", "");
        return 1;
    }
    /* The node's admission bucket: shared by the workers, so that the cap
     * holds for the node whatever worker the kernel gives connections to. */
    core_admit_t *node_admission = NULL;
    if (g_cfg.admission.enabled) {
        node_admission =
            core_admit_shared_new(g_cfg.admission.sessions_per_s, g_cfg.admission.burst);
        if (!node_admission)
            core_log_warn("region.admission_unshared", "reason=\"mmap failed\"");
        rg_worker_set_node_admission(node_admission);
    }
    /* Verified tokens, shared by the workers and kept by the master: a
     * worker restarted after a crash finds its clients' tokens checked. */
    core_auth_token_seen_t *seen = core_auth_token_seen_shared_new(CORE_AUTH_SEEN_SLOTS);
    if (!seen)
        core_log_warn("region.token_table_unshared", "reason=\"mmap failed\"");
    rg_worker_set_token_seen(seen);
    core_prefork_opts_t po = {
        .name = "region",
        .workers = g_cfg.workers,
        .host = g_cfg.listen_host,
        .port = g_cfg.listen_port,
        .drain_timeout_ms = g_cfg.drain_timeout_ms,
        .worker_main = worker_main,
    };
    int rc = core_prefork_run(&po);
    core_auth_token_seen_free(seen);
    core_admit_shared_free(node_admission);
    core_auth_keys_wipe(&g_keys);
    rg_keys_shutdown();
    if (g_has_world)
        res_world_free(&g_world);
    rg_config_free(&g_cfg);
    return rc;
}
