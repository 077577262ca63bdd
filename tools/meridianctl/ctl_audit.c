/* ctl_audit.c: `audit verify` and `audit export`, straight from every shard's
 * audit_log (region/migrations/0010_residency.sql).
 *
 * Each shard of each region holds one chain: entry n carries
 *   hash = BLAKE2b-256(prev_hash || entry text)   (prev_hash of entry 1: 32 zero bytes)
 *   signature = Ed25519(hash) by the region's signing key, key_id = its kid
 * Verification trusts nothing in the database: it recomputes every hash from
 * the stored text, follows prev_hash from row to row, and checks signatures
 * against the public keys in the world file, so an attacker with write access
 * to Postgres but not to a signing key cannot alter, remove, insert or
 * reorder an entry without it being named. Removing entries from the end of
 * a chain leaves a shorter valid chain: only a head recorded earlier
 * (--anchors) exposes that, which is why the output carries each head. */
#include "tools/meridianctl/ctl.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/auth.h"
#include "core/core.h"
#include "core/json.h"

#define AUDIT_QUERY                                                                                \
    "SELECT seq, region, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"     \
    " workspace_id, action, entry, encode(prev_hash, 'hex'), encode(hash, 'hex'),"                 \
    " encode(signature, 'hex'), key_id FROM audit_log ORDER BY seq"

typedef struct {
    int64_t seq;
    const char *region, *at, *workspace_id, *action, *entry, *prev_hex, *hash_hex, *sig_hex,
        *key_id;
    size_t entry_len;
} row_t;

typedef struct {
    const char *region;
    int shard;
    int64_t seq;
    const char *code;
    char detail[320];
} problem_t;

typedef struct {
    const char *region;
    int shard;
    int64_t entries;
    int64_t head_seq;
    char head_hash[65];
    size_t problems;
    char error[300]; /* unreachable or unreadable: the chain was not checked */
    /* an anchor from --anchors: this seq must still be there with this hash */
    int64_t anchor_seq;
    char anchor_hash[65];
    bool anchor_seen;
} chain_t;

typedef struct {
    problem_t *v;
    size_t n, cap;
} problems_t;

static void add_problem(problems_t *p, chain_t *ch, int64_t seq, const char *code, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));

static void add_problem(problems_t *p, chain_t *ch, int64_t seq, const char *code, const char *fmt,
                        ...)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->v = core_xrealloc(p->v, p->cap * sizeof *p->v);
    }
    problem_t *x = &p->v[p->n++];
    x->region = ch->region;
    x->shard = ch->shard;
    x->seq = seq;
    x->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->detail, sizeof x->detail, fmt, ap);
    va_end(ap);
    ch->problems++;
}

static void read_row(const PGresult *res, row_t *r)
{
    r->seq = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    r->region = PQgetvalue(res, 0, 1);
    r->at = PQgetvalue(res, 0, 2);
    r->workspace_id = PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3);
    r->action = PQgetvalue(res, 0, 4);
    r->entry = PQgetvalue(res, 0, 5);
    r->entry_len = (size_t)PQgetlength(res, 0, 5);
    r->prev_hex = PQgetvalue(res, 0, 6);
    r->hash_hex = PQgetvalue(res, 0, 7);
    r->sig_hex = PQgetvalue(res, 0, 8);
    r->key_id = PQgetvalue(res, 0, 9);
}

static bool unhex(uint8_t *out, size_t n, const char *hex)
{
    size_t got = 0;
    return sodium_hex2bin(out, n, hex, strlen(hex), NULL, &got, NULL) == 0 && got == n;
}

/* Streams one shard's audit_log in seq order, calling fn on every row.
 * Returns 0, or -1 with ch->error set. */
static int scan(const res_region_t *reg, const res_shard_t *sh, chain_t *ch,
                void (*fn)(const row_t *r, void *ud), void *ud)
{
    PGconn *pg = ctl_pg_connect(reg, sh, ch->error, sizeof ch->error);
    if (!pg)
        return -1;
    if (!ctl_pg_has_table(pg, "audit_log")) {
        snprintf(ch->error, sizeof ch->error,
                 "no audit_log table (the region has not run migration 0010)");
        PQfinish(pg);
        return -1;
    }
    /* Single-row mode: a long trail streams instead of landing in memory. */
    if (!PQsendQuery(pg, AUDIT_QUERY) || !PQsetSingleRowMode(pg)) {
        snprintf(ch->error, sizeof ch->error, "%s", PQerrorMessage(pg));
        PQfinish(pg);
        return -1;
    }
    int rc = 0;
    PGresult *res;
    while ((res = PQgetResult(pg)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_SINGLE_TUPLE) {
            row_t r;
            read_row(res, &r);
            fn(&r, ud);
        } else if (st != PGRES_TUPLES_OK) {
            snprintf(ch->error, sizeof ch->error, "%s", PQresultErrorMessage(res));
            rc = -1;
        }
        PQclear(res);
    }
    PQfinish(pg);
    return rc;
}

/* ---- verify ---- */

typedef struct {
    const res_region_t *reg;
    core_auth_pubkey_t keys[16];
    size_t nkeys;
    chain_t *ch;
    problems_t *problems;
    int64_t expect;   /* the seq the next row must carry */
    uint8_t prev[32]; /* the hash of the previous row: the next row's prev_hash */
    bool prev_known;  /* false after an unreadable hash */
} verify_t;

static void verify_row(const row_t *r, void *ud)
{
    verify_t *v = ud;
    chain_t *ch = v->ch;
    ch->entries++;
    ch->head_seq = r->seq;
    snprintf(ch->head_hash, sizeof ch->head_hash, "%s", r->hash_hex);

    if (r->seq != v->expect) {
        if (r->seq > v->expect) {
            if (r->seq - 1 == v->expect)
                add_problem(v->problems, ch, v->expect, "missing",
                            "entry %" PRId64 " is missing (removed)", v->expect);
            else
                add_problem(v->problems, ch, v->expect, "missing",
                            "entries %" PRId64 "..%" PRId64 " are missing (removed)", v->expect,
                            r->seq - 1);
        } else {
            add_problem(v->problems, ch, r->seq, "out_of_order",
                        "seq %" PRId64 " follows seq %" PRId64, r->seq, v->expect - 1);
        }
    }
    uint8_t prev[32], hash[32], sig[64];
    bool prev_ok = unhex(prev, sizeof prev, r->prev_hex);
    bool hash_ok = unhex(hash, sizeof hash, r->hash_hex);
    bool sig_ok = unhex(sig, sizeof sig, r->sig_hex);
    if (!prev_ok || !hash_ok || !sig_ok) {
        add_problem(v->problems, ch, r->seq, "malformed",
                    "prev_hash, hash or signature has the wrong length");
    } else {
        if (v->prev_known && sodium_memcmp(prev, v->prev, 32) != 0) {
            if (r->seq == 1)
                add_problem(v->problems, ch, r->seq, "prev_hash_mismatch",
                            "the first entry's prev_hash is not 32 zero bytes (entries were "
                            "inserted before it or it was edited)");
            else
                add_problem(v->problems, ch, r->seq, "prev_hash_mismatch",
                            "prev_hash is not the hash of the entry before it (an entry was "
                            "removed, inserted or reordered here)");
        }
        uint8_t want[32];
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, sizeof want);
        crypto_generichash_update(&st, prev, sizeof prev);
        crypto_generichash_update(&st, (const unsigned char *)r->entry, r->entry_len);
        crypto_generichash_final(&st, want, sizeof want);
        if (sodium_memcmp(want, hash, 32) != 0)
            add_problem(v->problems, ch, r->seq, "hash_mismatch",
                        "the hash does not match the entry's text and prev_hash (the entry was "
                        "edited)");
        const core_auth_pubkey_t *key = NULL;
        for (size_t i = 0; i < v->nkeys; i++)
            if (strcmp(v->keys[i].kid, r->key_id) == 0)
                key = &v->keys[i];
        if (!key)
            add_problem(v->problems, ch, r->seq, "unknown_key",
                        "key_id '%.40s' is not one of %s's token_keys in the world file", r->key_id,
                        v->reg->name);
        else if (crypto_sign_verify_detached(sig, hash, sizeof hash, key->pk) != 0)
            add_problem(v->problems, ch, r->seq, "bad_signature",
                        "the signature does not verify with key %s (the entry or its hash was "
                        "altered)",
                        key->kid);
    }
    if (strcmp(r->region, v->reg->name) != 0)
        add_problem(v->problems, ch, r->seq, "region_mismatch",
                    "the row names region '%.40s' but is stored in %s", r->region, v->reg->name);

    /* The entry text must agree with the columns people query by. */
    core_json_doc_t *doc = NULL;
    char jerr[128];
    if (core_json_parse(r->entry, r->entry_len, NULL, &doc, jerr, sizeof jerr) != 0) {
        add_problem(v->problems, ch, r->seq, "entry_invalid", "the entry is not JSON: %s", jerr);
    } else {
        const core_json_t *e = core_json_root(doc);
        int64_t eseq = 0;
        const char *s = NULL;
        if (core_json_get_int(e, "seq", &eseq) != 0 || eseq != r->seq)
            add_problem(v->problems, ch, r->seq, "entry_mismatch",
                        "the entry's own \"seq\" is not %" PRId64 " (the row was renumbered)",
                        r->seq);
        if (core_json_get_str(e, "region", &s) != 0 || strcmp(s, r->region) != 0)
            add_problem(v->problems, ch, r->seq, "entry_mismatch",
                        "the entry's own \"region\" is not the row's region '%.40s'", r->region);
        if (core_json_get(e, "workspace_id") && r->workspace_id &&
            (core_json_get_str(e, "workspace_id", &s) != 0 || strcmp(s, r->workspace_id) != 0))
            add_problem(v->problems, ch, r->seq, "entry_mismatch",
                        "the entry's \"workspace_id\" is not the row's '%.64s'", r->workspace_id);
        int64_t eshard = 0;
        if (core_json_get(e, "shard") &&
            (core_json_get_int(e, "shard", &eshard) != 0 || eshard != ch->shard))
            add_problem(v->problems, ch, r->seq, "entry_mismatch",
                        "the entry's own \"shard\" is not %d (the row was copied from another "
                        "shard's chain)",
                        ch->shard);
        if (core_json_get(e, "action") &&
            (core_json_get_str(e, "action", &s) != 0 || strcmp(s, r->action) != 0))
            add_problem(v->problems, ch, r->seq, "entry_mismatch",
                        "the entry's \"action\" is not the row's '%.40s'", r->action);
        core_json_free(doc);
    }
    if (ch->anchor_seq > 0 && r->seq == ch->anchor_seq) {
        ch->anchor_seen = true;
        if (strcmp(ch->anchor_hash, r->hash_hex) != 0)
            add_problem(v->problems, ch, r->seq, "anchor_mismatch",
                        "the hash differs from the anchored head %.16s... (history was rewritten)",
                        ch->anchor_hash);
    }
    v->expect = r->seq + 1;
    v->prev_known = hash_ok;
    if (hash_ok)
        memcpy(v->prev, hash, 32);
}

static int load_anchors(const char *path, chain_t *chains, size_t nchains)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        ctl_err("cannot read the anchors file %s", path);
        return -1;
    }
    core_buf_t b;
    core_buf_init(&b);
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        core_buf_append(&b, tmp, n);
    fclose(f);
    core_json_doc_t *doc = NULL;
    char jerr[128];
    int rc = core_json_parse(b.base ? b.base : "", b.len, NULL, &doc, jerr, sizeof jerr);
    core_buf_free(&b);
    if (rc != 0) {
        ctl_err("the anchors file %s is not JSON: %s", path, jerr);
        return -1;
    }
    const core_json_t *arr = core_json_get(core_json_root(doc), "chains");
    if (!arr || arr->type != CORE_JSON_ARRAY) {
        ctl_err("the anchors file %s has no \"chains\" (use the output of audit verify --json)",
                path);
        core_json_free(doc);
        return -1;
    }
    for (size_t i = 0; i < arr->u.kids.n; i++) {
        const core_json_t *a = arr->u.kids.items[i];
        const char *region = NULL, *hash = NULL;
        int64_t shard = -1, seq = 0;
        if (core_json_get_str(a, "region", &region) != 0 ||
            core_json_get_int(a, "shard", &shard) != 0 ||
            core_json_get_int(a, "head_seq", &seq) != 0 ||
            core_json_get_str(a, "head_hash", &hash) != 0 || seq <= 0)
            continue; /* an empty or unreadable chain anchors nothing */
        for (size_t k = 0; k < nchains; k++) {
            if (strcmp(chains[k].region, region) == 0 && chains[k].shard == shard) {
                chains[k].anchor_seq = seq;
                snprintf(chains[k].anchor_hash, sizeof chains[k].anchor_hash, "%s", hash);
            }
        }
    }
    core_json_free(doc);
    return 0;
}

static chain_t *make_chains(const ctl_t *c, const char *only, size_t *n)
{
    size_t total = 0;
    for (size_t i = 0; i < c->world.nregions; i++)
        if (!only || strcmp(only, c->world.regions[i].name) == 0)
            total += c->world.regions[i].nshards;
    chain_t *chains = core_xcalloc(total ? total : 1, sizeof *chains);
    size_t k = 0;
    for (size_t i = 0; i < c->world.nregions; i++) {
        const res_region_t *r = &c->world.regions[i];
        if (only && strcmp(only, r->name) != 0)
            continue;
        for (size_t s = 0; s < r->nshards; s++, k++) {
            chains[k].region = r->name;
            chains[k].shard = r->shards[s].id;
        }
    }
    *n = total;
    return chains;
}

static int audit_verify(ctl_t *c, const char *only, const char *anchors)
{
    size_t nchains = 0;
    chain_t *chains = make_chains(c, only, &nchains);
    if (anchors && load_anchors(anchors, chains, nchains) != 0) {
        free(chains);
        return CTL_EXIT_USAGE;
    }
    problems_t problems = {0};
    size_t k = 0, unreadable = 0;
    for (size_t i = 0; i < c->world.nregions; i++) {
        const res_region_t *reg = &c->world.regions[i];
        if (only && strcmp(only, reg->name) != 0)
            continue;
        verify_t v = {.reg = reg, .problems = &problems};
        for (size_t j = 0; j < reg->ntoken_keys && v.nkeys < 16; j++)
            if (core_auth_pubkey_parse(&v.keys[v.nkeys], reg->token_keys[j],
                                       strlen(reg->token_keys[j])) == 0)
                v.nkeys++;
        for (size_t s = 0; s < reg->nshards; s++, k++) {
            char label[96];
            snprintf(label, sizeof label, "audit %s shard %d", reg->name, reg->shards[s].id);
            ctl_progress(c, label, k, nchains);
            v.ch = &chains[k];
            v.expect = 1;
            memset(v.prev, 0, sizeof v.prev);
            v.prev_known = true;
            if (scan(reg, &reg->shards[s], &chains[k], verify_row, &v) != 0) {
                unreadable++;
                continue;
            }
            chain_t *ch = &chains[k];
            if (ch->anchor_seq > 0 && !ch->anchor_seen)
                add_problem(&problems, ch, ch->anchor_seq, "truncated",
                            "the anchored head %" PRId64 " is gone: the chain now ends at %" PRId64
                            " (entries were removed "
                            "from its end)",
                            ch->anchor_seq, ch->head_seq);
        }
    }
    ctl_progress_end(c);

    bool ok = problems.n == 0 && unreadable == 0;
    if (c->json) {
        core_buf_t b;
        core_buf_init(&b);
        core_jw_t jw;
        core_jw_init(&jw, &b);
        core_jw_obj_open(&jw);
        core_jw_key(&jw, "ok");
        core_jw_bool(&jw, ok);
        core_jw_key(&jw, "chains");
        core_jw_arr_open(&jw);
        for (size_t i = 0; i < nchains; i++) {
            chain_t *ch = &chains[i];
            core_jw_obj_open(&jw);
            core_jw_key(&jw, "region");
            core_jw_str(&jw, ch->region);
            core_jw_key(&jw, "shard");
            core_jw_int(&jw, ch->shard);
            core_jw_key(&jw, "entries");
            core_jw_int(&jw, ch->entries);
            core_jw_key(&jw, "head_seq");
            core_jw_int(&jw, ch->head_seq);
            core_jw_key(&jw, "head_hash");
            if (ch->entries)
                core_jw_str(&jw, ch->head_hash);
            else
                core_jw_null(&jw);
            core_jw_key(&jw, "status");
            core_jw_str(&jw, ch->error[0] ? "unreadable" : ch->problems ? "tampered" : "ok");
            if (ch->error[0]) {
                core_jw_key(&jw, "error");
                core_jw_str(&jw, ch->error);
            }
            core_jw_obj_close(&jw);
        }
        core_jw_arr_close(&jw);
        core_jw_key(&jw, "problems");
        core_jw_arr_open(&jw);
        for (size_t i = 0; i < problems.n; i++) {
            problem_t *p = &problems.v[i];
            core_jw_obj_open(&jw);
            core_jw_key(&jw, "region");
            core_jw_str(&jw, p->region);
            core_jw_key(&jw, "shard");
            core_jw_int(&jw, p->shard);
            core_jw_key(&jw, "seq");
            core_jw_int(&jw, p->seq);
            core_jw_key(&jw, "problem");
            core_jw_str(&jw, p->code);
            core_jw_key(&jw, "detail");
            core_jw_str(&jw, p->detail);
            core_jw_obj_close(&jw);
        }
        core_jw_arr_close(&jw);
        core_jw_obj_close(&jw);
        printf("%s\n", core_buf_cstr(&b));
        core_buf_free(&b);
    } else {
        printf("%-12s %5s %8s %8s  %-18s %s\n", "REGION", "SHARD", "ENTRIES", "HEAD", "HEAD HASH",
               "STATUS");
        for (size_t i = 0; i < nchains; i++) {
            chain_t *ch = &chains[i];
            char status[340];
            if (ch->error[0])
                snprintf(status, sizeof status, "UNREADABLE: %s", ch->error);
            else if (ch->problems)
                snprintf(status, sizeof status, "TAMPERED (%zu problems)", ch->problems);
            else
                snprintf(status, sizeof status, "ok");
            printf("%-12s %5d %8" PRId64 " %8" PRId64 "  %-18.16s %s\n", ch->region, ch->shard,
                   ch->entries, ch->head_seq, ch->entries ? ch->head_hash : "-", status);
        }
        if (problems.n) {
            printf("\n");
            for (size_t i = 0; i < problems.n; i++) {
                problem_t *p = &problems.v[i];
                printf("%s shard %d seq %" PRId64 ": %s: %s\n", p->region, p->shard, p->seq,
                       p->code, p->detail);
            }
        }
        printf("\n%s\n", ok           ? "every audit chain verifies"
                         : problems.n ? "AUDIT VERIFICATION FAILED"
                                      : "INCOMPLETE: some chains could not be read");
    }
    free(problems.v);
    free(chains);
    if (problems.n)
        return CTL_EXIT_FAIL;
    return unreadable ? CTL_EXIT_UNAVAILABLE : CTL_EXIT_OK;
}

/* ---- export ---- */

typedef struct {
    int shard;
    core_buf_t line;
} export_t;

static void export_row(const row_t *r, void *ud)
{
    export_t *x = ud;
    core_buf_reset(&x->line);
    core_jw_t jw;
    core_jw_init(&jw, &x->line);
    core_jw_obj_open(&jw);
    core_jw_key(&jw, "seq");
    core_jw_int(&jw, r->seq);
    core_jw_key(&jw, "region");
    core_jw_str(&jw, r->region);
    core_jw_key(&jw, "shard");
    core_jw_int(&jw, x->shard);
    core_jw_key(&jw, "at");
    core_jw_str(&jw, r->at);
    core_jw_key(&jw, "workspace_id");
    if (r->workspace_id)
        core_jw_str(&jw, r->workspace_id);
    else
        core_jw_null(&jw);
    core_jw_key(&jw, "action");
    core_jw_str(&jw, r->action);
    core_jw_key(&jw, "entry");
    core_jw_strn(&jw, r->entry, r->entry_len);
    core_jw_key(&jw, "prev_hash");
    core_jw_str(&jw, r->prev_hex);
    core_jw_key(&jw, "hash");
    core_jw_str(&jw, r->hash_hex);
    core_jw_key(&jw, "signature");
    core_jw_str(&jw, r->sig_hex);
    core_jw_key(&jw, "key_id");
    core_jw_str(&jw, r->key_id);
    core_jw_obj_close(&jw);
    core_buf_putc(&x->line, '\n');
    fwrite(x->line.base, 1, x->line.len, stdout);
}

static int audit_export(ctl_t *c, const char *only)
{
    size_t nchains = 0;
    chain_t *chains = make_chains(c, only, &nchains);
    export_t x = {0};
    core_buf_init(&x.line);
    size_t k = 0, unreadable = 0;
    for (size_t i = 0; i < c->world.nregions; i++) {
        const res_region_t *reg = &c->world.regions[i];
        if (only && strcmp(only, reg->name) != 0)
            continue;
        for (size_t s = 0; s < reg->nshards; s++, k++) {
            x.shard = reg->shards[s].id;
            if (scan(reg, &reg->shards[s], &chains[k], export_row, &x) != 0) {
                ctl_err("%s shard %d: %s", reg->name, x.shard, chains[k].error);
                unreadable++;
            }
        }
    }
    core_buf_free(&x.line);
    free(chains);
    if (fflush(stdout) != 0) {
        ctl_err("writing the export failed");
        return CTL_EXIT_UNAVAILABLE;
    }
    return unreadable ? CTL_EXIT_UNAVAILABLE : CTL_EXIT_OK;
}

int ctl_audit_main(ctl_t *c, int argc, char **argv)
{
    const char *sub = argv[0];
    const char *region = NULL, *anchors = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--region") == 0 && i + 1 < argc)
            region = argv[++i];
        else if (strcmp(argv[i], "--anchors") == 0 && i + 1 < argc && strcmp(sub, "verify") == 0)
            anchors = argv[++i];
        else {
            ctl_err("audit %s: unexpected argument '%s'", sub, argv[i]);
            return CTL_EXIT_USAGE;
        }
    }
    if (region && !res_world_region(&c->world, region)) {
        char names[512];
        ctl_err("unknown region '%s' (the world has: %s)", region,
                ctl_region_list(&c->world, names, sizeof names));
        return CTL_EXIT_USAGE;
    }
    if (strcmp(sub, "verify") == 0)
        return audit_verify(c, region, anchors);
    if (strcmp(sub, "export") == 0)
        return audit_export(c, region);
    ctl_err("unknown audit command '%s' (verify, export)", sub);
    return CTL_EXIT_USAGE;
}
