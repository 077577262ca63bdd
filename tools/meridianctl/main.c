/* main.c: meridianctl's command line: global options, then a command
 * (docs/meridianctl.md). */
#include "tools/meridianctl/ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"
#include "core/log.h"

static const char USAGE[] =
    "usage: meridianctl [--world FILE] [--token TOKEN | --token-file FILE] [--dns HOST:PORT]\n"
    "                   [--json] [--quiet] COMMAND\n"
    "\n"
    "residency commands (the home region's admin API; need a token):\n"
    "  residency list [--region R]              workspaces whose policy you administer\n"
    "  residency show WS                        a workspace's policy and its latest audit entries\n"
    "  residency pin WS [--regions a,b] --reason TEXT\n"
    "  residency unpin WS --reason TEXT\n"
    "  residency set-allowed WS a,b --reason TEXT\n"
    "  residency move WS REGION --reason TEXT [--at UTC-TIME] [--dry-run] [--no-wait]\n"
    "                                           live move to another allowed region; waits\n"
    "  residency move-status WS | move-cancel WS [--reason TEXT]\n"
    "  residency move-report WS [--out FILE] [--verify]\n"
    "                                           the move's signed report\n"
    "  residency standby WS REGION --reason TEXT\n"
    "                                           keep a standby copy in REGION (for fail-over)\n"
    "  residency standby-stop WS [--reason TEXT]  stop it; the copy there is deleted\n"
    "  residency promote WS --region REGION [--force] --reason TEXT\n"
    "                                           make the standby in REGION the home (asks\n"
    "                                           REGION directly: for when the home is down)\n"
    "verification (reads every region's stores directly; no token):\n"
    "  residency verify [--workspace WS]        where each workspace's data is; exit 1 on a "
    "violation\n"
    "  audit verify [--region R] [--anchors FILE]  check every audit chain; exit 1 naming bad "
    "entries\n"
    "  audit export [--region R]                JSON lines, one audit entry per line\n"
    "  residency verify-report FILE             check a saved move report offline; exit 1 if bad\n"
    "\n"
    "--world defaults to $MERIDIAN_WORLD, the token to $MERIDIAN_TOKEN (or the file\n"
    "$MERIDIAN_TOKEN_FILE). Database passwords come from PGPASSFILE.\n"
    "Exit codes: 0 ok, 1 verification failed, 2 bad input, 3 a store or region\n"
    "unreachable, 4 refused by the admin API.\n";

static int read_token_file(ctl_t *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        ctl_err("cannot read the token file %s: %s", path, strerror(errno));
        return -1;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    if (n == 0) {
        ctl_err("the token file %s is empty", path);
        return -1;
    }
    free(c->token);
    c->token = core_xstrdup(buf);
    sodium_memzero(buf, sizeof buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0) {
        ctl_err("libsodium failed to initialise");
        return CTL_EXIT_UNAVAILABLE;
    }
    /* The core clients log through core_log; a CLI shows its own messages. */
    core_log_init("meridianctl", "-", CORE_LOG_ERROR);

    ctl_t c = {0};
    c.world_path = getenv("MERIDIAN_WORLD");
    const char *token_file = NULL;
    bool quiet = false;
    /* Global options may come anywhere; what remains is the command. */
    char **rest = core_xcalloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0;
    int rc = CTL_EXIT_USAGE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool takes = strcmp(a, "--world") == 0 || strcmp(a, "--token") == 0 ||
                     strcmp(a, "--token-file") == 0 || strcmp(a, "--dns") == 0;
        if (takes && i + 1 >= argc) {
            ctl_err("%s needs a value", a);
            goto done;
        }
        if (strcmp(a, "--world") == 0)
            c.world_path = argv[++i];
        else if (strcmp(a, "--token") == 0)
            c.token = core_xstrdup(argv[++i]);
        else if (strcmp(a, "--token-file") == 0)
            token_file = argv[++i];
        else if (strcmp(a, "--dns") == 0)
            c.dns = argv[++i];
        else if (strcmp(a, "--json") == 0)
            c.json = true;
        else if (strcmp(a, "--quiet") == 0 || strcmp(a, "--no-progress") == 0)
            quiet = true;
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(USAGE, stdout);
            rc = CTL_EXIT_OK;
            goto done;
        } else
            rest[nrest++] = argv[i];
    }
    if (nrest == 0) {
        fputs(USAGE, stderr);
        goto done;
    }
    if (!c.token && token_file && read_token_file(&c, token_file) != 0)
        goto done;
    if (!c.token && !token_file) {
        const char *t = getenv("MERIDIAN_TOKEN");
        const char *tf = getenv("MERIDIAN_TOKEN_FILE");
        if (t && *t)
            c.token = core_xstrdup(t);
        else if (tf && *tf && read_token_file(&c, tf) != 0)
            goto done;
    }
    if (!c.dns)
        c.dns = getenv("MERIDIAN_DNS");
    c.progress = !quiet && isatty(STDERR_FILENO);

    const char *cmd = rest[0];
    bool known = strcmp(cmd, "residency") == 0 || strcmp(cmd, "audit") == 0;
    if (!known) {
        ctl_err("unknown command '%s' (try --help)", cmd);
        goto done;
    }
    if (nrest < 2) {
        ctl_err("'%s' needs a subcommand (try --help)", cmd);
        goto done;
    }
    if (!c.world_path || !*c.world_path) {
        ctl_err("no world file: pass --world FILE or set MERIDIAN_WORLD");
        goto done;
    }
    char *errors = NULL;
    if (res_world_load(&c.world, c.world_path, &errors) != 0) {
        ctl_err("the world file %s is not valid:\n%s", c.world_path, errors ? errors : "");
        free(errors);
        goto done;
    }
    c.world_loaded = true;

    if (strcmp(cmd, "audit") == 0)
        rc = ctl_audit_main(&c, nrest - 1, rest + 1);
    else if (strcmp(rest[1], "verify") == 0)
        rc = ctl_verify_main(&c, nrest - 1, rest + 1);
    else
        rc = ctl_residency_main(&c, nrest - 1, rest + 1);

done:
    fflush(stdout);
    if (c.world_loaded)
        res_world_free(&c.world);
    if (c.token) {
        sodium_memzero(c.token, strlen(c.token));
        free(c.token);
    }
    free(rest);
    return rc;
}
