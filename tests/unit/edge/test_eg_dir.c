/* Unit tests for edge/eg_dir.c: snapshots and change feeds from several
 * regions merged into one routing table, with a region's own word winning at
 * equal epochs and a feed that goes backwards refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "edge/eg_dir.h"
#include "residency/res_world.h"

#define REGION(name, jur, port)                                                                    \
    "{\"name\":\"" name "\",\"jurisdiction\":\"" jur "\","                                         \
    "\"nats\":{\"domain\":\"" name "\",\"urls\":[\"nats://127.0.0.1:" port "\"]},"                 \
    "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=127.0.0.1 port=1\"},"                 \
    "{\"id\":1,\"conninfo\":\"host=127.0.0.1 port=2\"}]},"                                         \
    "\"redis\":{\"host\":\"127.0.0.1\",\"port\":6379},"                                            \
    "\"api\":{\"urls\":[\"http://127.0.0.1:" port "\"]}}"

static const char WORLD[] =
    "{\"format\":\"meridian-world/1\",\"name\":\"local\","
    "\"jurisdictions\":[{\"name\":\"US\"},{\"name\":\"EU\"},{\"name\":\"IN\"}],"
    "\"hub\":{\"leaf_urls\":[\"nats-leaf://127.0.0.1:7422\"]},"
    "\"regions\":[" REGION("us-east", "US", "1") "," REGION("eu-west", "EU", "2") "," REGION(
        "ap-south", "IN", "3") "]}";

enum { US = 0, EU = 1, AP = 2 };
#define BIT(i) (1ull << (i))

#define HASH_A "aa00000000000000000000000000000000000000000000000000000000000001"
#define HASH_B "bb00000000000000000000000000000000000000000000000000000000000002"

typedef struct {
    res_world_t world;
    eg_dir_t *d;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    char *err = NULL;
    if (res_world_load_str(&f->world, WORLD, &err)) {
        fprintf(stderr, "world: %s\n", err);
        free(err);
        free(f);
        return -1;
    }
    assert_int_equal(f->world.nregions, 3);
    assert_string_equal(f->world.regions[EU].name, "eu-west");
    f->d = eg_dir_new(&f->world);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    eg_dir_free(f->d);
    res_world_free(&f->world);
    free(f);
    return 0;
}

static int snap(eg_dir_t *d, int source, const char *json, char *err, size_t errlen)
{
    err[0] = '\0';
    return eg_dir_load_snapshot(d, source, json, strlen(json), err, errlen);
}

static int changes(eg_dir_t *d, int source, const char *json, bool *more, char *err, size_t errlen)
{
    err[0] = '\0';
    return eg_dir_apply_changes(d, source, json, strlen(json), more, err, errlen);
}

/* A workspace entry as the region serves it. */
#define WS(id, home, allowed, epoch, pinned)                                                       \
    "{\"id\":\"" id "\",\"home_region\":\"" home "\",\"allowed_regions\":" allowed                 \
    ",\"epoch\":" #epoch ",\"pinned\":" #pinned "}"
#define CH(v, kind, id, home, allowed, epoch)                                                      \
    "{\"version\":" #v ",\"kind\":\"" kind "\",\"id\":\"" id "\",\"home_region\":\"" home          \
    "\",\"allowed_regions\":" allowed ",\"epoch\":" #epoch ",\"pinned\":false}"

static void test_snapshot_load(void **state)
{
    fx_t *f = *state;
    char err[256];
    assert_string_equal(eg_dir_version(f->d, EU), "");
    assert_int_equal(eg_dir_count(f->d, 'w'), 0);
    const char *s = "{\"version\":\"1:42\",\"workspaces\":[" WS(
        "w1", "eu-west", "[\"eu-west\",\"us-east\"]", 3,
        true) "," WS("w2", "us-east", "[]", 0,
                     false) "," WS("w3", "ap-south", "null", 1,
                                   false) "],"
                                          "\"users\":[{\"id\":\"u1\",\"home_region\":\"eu-west\"},"
                                          "{\"id\":\"u2\",\"home_region\":\"ap-south\"}],"
                                          "\"emails\":[{\"hash\":\"" HASH_A
                                          "\",\"home_region\":\"us-east\"}]}";
    assert_int_equal(snap(f->d, EU, s, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_string_equal(eg_dir_version(f->d, EU), "1:42");
    assert_int_equal(eg_dir_version_number(f->d, EU), 42);
    /* Other sources keep their own (empty) versions. */
    assert_string_equal(eg_dir_version(f->d, US), "");
    assert_int_equal(eg_dir_version_number(f->d, US), 0);
    assert_string_equal(eg_dir_version(f->d, -1), "");
    assert_string_equal(eg_dir_version(f->d, 1000), "");

    assert_int_equal(eg_dir_count(f->d, 'w'), 3);
    assert_int_equal(eg_dir_count(f->d, 'u'), 2);
    assert_int_equal(eg_dir_count(f->d, 'e'), 1);
    const eg_ws_route_t *w1 = eg_dir_workspace(f->d, "w1");
    assert_non_null(w1);
    assert_int_equal(w1->home, EU);
    assert_int_equal(w1->allowed, BIT(EU) | BIT(US));
    assert_int_equal(w1->epoch, 3);
    assert_true(w1->pinned);
    assert_int_equal(w1->source, EU);
    /* The home is always allowed, even when the list leaves it out. */
    const eg_ws_route_t *w2 = eg_dir_workspace(f->d, "w2");
    assert_int_equal(w2->home, US);
    assert_int_equal(w2->allowed, BIT(US));
    assert_false(w2->pinned);
    const eg_ws_route_t *w3 = eg_dir_workspace(f->d, "w3");
    assert_int_equal(w3->home, AP);
    assert_int_equal(w3->allowed, BIT(AP));
    assert_null(eg_dir_workspace(f->d, "w4"));

    assert_int_equal(eg_dir_user(f->d, "u1"), EU);
    assert_int_equal(eg_dir_user(f->d, "u2"), AP);
    assert_int_equal(eg_dir_user(f->d, "u3"), -1);
    assert_int_equal(eg_dir_email(f->d, HASH_A), US);
    assert_int_equal(eg_dir_email(f->d, HASH_B), -1);
    /* Users and emails live in their own maps. */
    assert_int_equal(eg_dir_user(f->d, HASH_A), -1);
    assert_int_equal(eg_dir_email(f->d, "u1"), -1);
    assert_null(eg_dir_workspace(f->d, "u1"));
}

/* A region the world file does not name is never routed to. */
static void test_unknown_regions(void **state)
{
    fx_t *f = *state;
    char err[256];
    const char *s = "{\"version\":\"0:1\",\"workspaces\":[" WS(
        "w1", "eu-west", "[\"mars\",\"ap-south\",\"\",7,null]", 1,
        false) "," WS("w2", "mars", "[\"eu-west\",\"mars\"]", 1,
                      false) ","
                             "{\"id\":\"w3\",\"allowed_regions\":[\"us-east\"]}],"
                             "\"users\":[{\"id\":\"u1\",\"home_region\":\"mars\"}],"
                             "\"emails\":[{\"hash\":\"" HASH_A "\",\"home_region\":\"venus\"}]}";
    assert_int_equal(snap(f->d, US, s, err, sizeof err), 0);
    const eg_ws_route_t *w1 = eg_dir_workspace(f->d, "w1");
    assert_int_equal(w1->home, EU);
    assert_int_equal(w1->allowed, BIT(EU) | BIT(AP));
    /* An unknown home: not one of ours, and no bit for it. */
    const eg_ws_route_t *w2 = eg_dir_workspace(f->d, "w2");
    assert_int_equal(w2->home, -1);
    assert_int_equal(w2->allowed, BIT(EU));
    const eg_ws_route_t *w3 = eg_dir_workspace(f->d, "w3");
    assert_int_equal(w3->home, -1);
    assert_int_equal(w3->allowed, BIT(US));
    assert_int_equal(eg_dir_user(f->d, "u1"), -1);
    assert_int_equal(eg_dir_email(f->d, HASH_A), -1);
    /* Nothing unknown can be made the home. */
    assert_false(eg_dir_set_home(f->d, "w2", -1));
    assert_false(eg_dir_set_home(f->d, "w2", 3));
}

/* Malformed snapshots are refused whole: no entry, no version changes. */
static void test_malformed_snapshots_change_nothing(void **state)
{
    fx_t *f = *state;
    char err[256];
    const char *good = "{\"version\":\"0:5\",\"workspaces\":[" WS(
        "w1", "eu-west", "[]", 2, false) "],\"users\":[],\"emails\":[]}";
    assert_int_equal(snap(f->d, EU, good, err, sizeof err), 0);
    static const char *const bad[] = {
        "",
        "{",
        "[]",
        "null",
        "{\"workspaces\":[" WS("w9", "us-east", "[]", 9, false) "],\"users\":[],\"emails\":[]}",
        "{\"version\":\"0:9\",\"users\":[],\"emails\":[]}",
        "{\"version\":\"0:9\",\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                                   false) "],"
                                                          "\"emails\":[]}",
        "{\"version\":\"0:9\",\"workspaces\":[" WS("w9", "us-east", "[]", 9, false) "],"
                                                                                    "\"users\":[]}",
        "{\"version\":\"0:9\",\"workspaces\":{},\"users\":[],\"emails\":[]}",
        "{\"version\":\"0:9\",\"workspaces\":[],\"users\":{},\"emails\":[]}",
        "{\"version\":\"0:9\",\"workspaces\":[],\"users\":[],\"emails\":\"x\"}",
        "{\"version\":9,\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                             false) "],"
                                                    "\"users\":[],\"emails\":[]}",
        "{\"version\":\"9\",\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                                 false) "],"
                                                        "\"users\":[],\"emails\":[]}",
        "{\"version\":\"0:9x\",\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                                    false) "],"
                                                           "\"users\":[],\"emails\":[]}",
        "{\"version\":\"0:-9\",\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                                    false) "],"
                                                           "\"users\":[],\"emails\":[]}",
        "{\"version\":\"-1:9\",\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                                    false) "],"
                                                           "\"users\":[],\"emails\":[]}",
        "{\"version\":\"\",\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                                false) "],"
                                                       "\"users\":[],\"emails\":[]}",
        "{\"version\":\"0:99999999999999999999999999999999999999999999999999\","
        "\"workspaces\":[],\"users\":[],\"emails\":[]}",
        /* Valid, then truncated. */
        "{\"version\":\"0:9\",\"workspaces\":[" WS("w9", "us-east", "[]", 9,
                                                   false) "],"
                                                          "\"users\":[],\"emails\":[]",
        /* Nested deeper than a directory ever is. */
        "{\"version\":\"0:9\",\"workspaces\":[[[[[[[[[[[]]]]]]]]]]],\"users\":[],\"emails\":[]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (snap(f->d, EU, bad[i], err, sizeof err) >= 0)
            fail_msg("case %zu accepted: %s", i, bad[i]);
        if (!err[0])
            fail_msg("case %zu: no reason given", i);
        assert_string_equal(eg_dir_version(f->d, EU), "0:5");
        assert_int_equal(eg_dir_version_number(f->d, EU), 5);
        assert_int_equal(eg_dir_count(f->d, 'w'), 1);
        assert_int_equal(eg_dir_workspace(f->d, "w1")->epoch, 2);
        assert_null(eg_dir_workspace(f->d, "w9"));
    }
    /* A bad source index is refused too. */
    assert_true(snap(f->d, -1, good, err, sizeof err) < 0);
    assert_true(snap(f->d, RES_MAX_REGIONS, good, err, sizeof err) < 0);
}

/* Malformed entries are skipped (and counted); the rest of the snapshot stands. */
static void test_malformed_entries_skipped(void **state)
{
    fx_t *f = *state;
    char err[256];
    const char *s =
        "{\"version\":\"2:7\",\"workspaces\":[" WS("ok1", "eu-west", "[]", 1, false) "," WS(
            "bad id", "eu-west", "[]", 1,
            false) "," WS("", "eu-west", "[]", 1,
                          false) ","
                                 "{\"home_region\":\"eu-west\"},"
                                 "{\"id\":7,\"home_region\":\"eu-west\"},"
                                 "\"w-str\",5,null],"
                                 "\"users\":[{\"id\":\"u1\",\"home_region\":\"us-east\"},{\"id\":"
                                 "\"u/2\"},[]],"
                                 "\"emails\":[{\"hash\":\"" HASH_A
                                 "\",\"home_region\":\"ap-south\"},"
                                 "{\"id\":\"" HASH_B "\",\"home_region\":\"ap-south\"}]}";
    assert_int_equal(snap(f->d, EU, s, err, sizeof err), 0);
    assert_non_null(strstr(err, "10 malformed entries skipped"));
    assert_string_equal(eg_dir_version(f->d, EU), "2:7");
    assert_int_equal(eg_dir_count(f->d, 'w'), 1);
    assert_non_null(eg_dir_workspace(f->d, "ok1"));
    assert_int_equal(eg_dir_count(f->d, 'u'), 1);
    assert_int_equal(eg_dir_count(f->d, 'e'), 1);
    assert_int_equal(eg_dir_email(f->d, HASH_A), AP);
    /* Snapshots name an email by "hash", not "id". */
    assert_int_equal(eg_dir_email(f->d, HASH_B), -1);
}

static void test_change_feed(void **state)
{
    fx_t *f = *state;
    char err[256];
    bool more = true;
    assert_int_equal(snap(f->d, EU,
                          "{\"version\":\"0:10\",\"workspaces\":[],\"users\":[],\"emails\":[]}",
                          err, sizeof err),
                     0);
    const char *page1 = "{\"version\":\"0:14\",\"more\":true,\"changes\":[" CH(
        11, "workspace", "w1", "eu-west", "[\"ap-south\",\"mars\"]",
        1) "," CH(12, "user", "u1", "eu-west", "null",
                  0) ","
                     "{\"version\":13,\"kind\":\"email\",\"id\":\"" HASH_A "\","
                     "\"home_region\":\"eu-west\",\"allowed_regions\":null,\"epoch\":null,"
                     "\"pinned\":null}," CH(14, "channel", "c1", "eu-west", "null", 0) "]}";
    assert_int_equal(changes(f->d, EU, page1, &more, err, sizeof err), 0);
    assert_true(more);
    assert_string_equal(eg_dir_version(f->d, EU), "0:14");
    assert_int_equal(eg_dir_version_number(f->d, EU), 14);
    const eg_ws_route_t *w1 = eg_dir_workspace(f->d, "w1");
    assert_non_null(w1);
    assert_int_equal(w1->home, EU);
    assert_int_equal(w1->allowed, BIT(EU) | BIT(AP));
    assert_int_equal(w1->epoch, 1);
    assert_int_equal(eg_dir_user(f->d, "u1"), EU);
    /* Changes name an email by its hash in "id". */
    assert_int_equal(eg_dir_email(f->d, HASH_A), EU);
    /* Unknown kinds are skipped, not stored anywhere. */
    assert_int_equal(eg_dir_count(f->d, 'w'), 1);
    assert_int_equal(eg_dir_count(f->d, 'u'), 1);
    assert_int_equal(eg_dir_count(f->d, 'e'), 1);

    /* A move: a higher epoch names a new home. A user and an email move too. */
    const char *page2 = "{\"version\":\"0:17\",\"more\":false,\"changes\":[" CH(
        15, "workspace", "w1", "ap-south", "[\"eu-west\"]",
        2) "," CH(16, "user", "u1", "us-east", "null",
                  0) ","
                     "{\"version\":17,\"kind\":\"email\",\"id\":\"" HASH_A "\","
                     "\"home_region\":\"ap-south\"},"
                     "{\"kind\":\"email\",\"id\":\"not hex!\",\"home_region\":\"ap-south\"},"
                     "{\"kind\":7},{\"id\":\"x\"},[],\"junk\"]}";
    assert_int_equal(changes(f->d, EU, page2, &more, err, sizeof err), 0);
    assert_false(more);
    w1 = eg_dir_workspace(f->d, "w1");
    assert_int_equal(w1->home, AP);
    assert_int_equal(w1->epoch, 2);
    assert_int_equal(w1->allowed, BIT(EU) | BIT(AP));
    assert_int_equal(eg_dir_user(f->d, "u1"), US);
    assert_int_equal(eg_dir_email(f->d, HASH_A), AP);
    assert_int_equal(eg_dir_count(f->d, 'e'), 1);

    /* An empty page at the same version is fine; "more" defaults to false. */
    more = true;
    assert_int_equal(
        changes(f->d, EU, "{\"version\":\"0:17\",\"changes\":[]}", &more, err, sizeof err), 0);
    assert_false(more);
}

/* Each source has its own version; a feed that goes backwards is refused
 * and applies nothing. */
static void test_feed_versions(void **state)
{
    fx_t *f = *state;
    char err[256];
    bool more = false;
    assert_int_equal(
        changes(f->d, US, "{\"version\":\"1:100\",\"changes\":[]}", &more, err, sizeof err), 0);
    assert_int_equal(
        changes(f->d, EU, "{\"version\":\"0:3\",\"changes\":[]}", &more, err, sizeof err), 0);
    assert_string_equal(eg_dir_version(f->d, US), "1:100");
    assert_string_equal(eg_dir_version(f->d, EU), "0:3");
    assert_string_equal(eg_dir_version(f->d, AP), "");
    assert_int_equal(eg_dir_version_number(f->d, US), 100);
    assert_int_equal(eg_dir_version_number(f->d, EU), 3);

    more = true;
    const char *back = "{\"version\":\"1:99\",\"more\":false,\"changes\":[" CH(
        99, "workspace", "wb", "us-east", "[]", 1) "]}";
    assert_true(changes(f->d, US, back, &more, err, sizeof err) < 0);
    assert_non_null(strstr(err, "backwards"));
    assert_true(more); /* untouched */
    assert_null(eg_dir_workspace(f->d, "wb"));
    assert_string_equal(eg_dir_version(f->d, US), "1:100");
    assert_int_equal(eg_dir_version_number(f->d, US), 100);
    /* The same page is fine for a source that is not that far along. */
    assert_int_equal(changes(f->d, AP, back, &more, err, sizeof err), 0);
    assert_non_null(eg_dir_workspace(f->d, "wb"));
    assert_string_equal(eg_dir_version(f->d, AP), "1:99");
    assert_string_equal(eg_dir_version(f->d, US), "1:100");

    /* Malformed pages: refused whole. */
    static const char *const bad[] = {
        "",
        "[]",
        "{\"changes\":[" CH(200, "workspace", "wx", "us-east", "[]", 1) "]}",
        "{\"version\":\"1:200\"}",
        "{\"version\":\"1:200\",\"changes\":{}}",
        "{\"version\":\"200\",\"changes\":[" CH(200, "workspace", "wx", "us-east", "[]", 1) "]}",
        "{\"version\":200,\"changes\":[" CH(200, "workspace", "wx", "us-east", "[]", 1) "]}",
        "{\"version\":\"1:200:3\",\"changes\":[" CH(200, "workspace", "wx", "us-east", "[]",
                                                    1) "]}",
        "{\"version\":\"1:200\",\"changes\":[" CH(200, "workspace", "wx", "us-east", "[]", 1) "]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (changes(f->d, US, bad[i], &more, err, sizeof err) >= 0)
            fail_msg("case %zu accepted: %s", i, bad[i]);
        assert_null(eg_dir_workspace(f->d, "wx"));
        assert_string_equal(eg_dir_version(f->d, US), "1:100");
    }
    assert_true(
        changes(f->d, -1, "{\"version\":\"1:200\",\"changes\":[]}", &more, err, sizeof err) < 0);
    assert_true(changes(f->d, RES_MAX_REGIONS, "{\"version\":\"1:200\",\"changes\":[]}", &more, err,
                        sizeof err) < 0);
}

/* Merging what several regions report about one workspace. */
static void test_merge_rules(void **state)
{
    fx_t *f = *state;
    char err[256];
    bool more;
#define PAGE(v, entry) "{\"version\":\"0:" #v "\",\"changes\":[" entry "]}"
    /* A replica (us-east) reports first: taken, there is nothing else. */
    assert_int_equal(
        changes(f->d, US,
                PAGE(1, CH(1, "workspace", "w", "eu-west", "[\"us-east\",\"ap-south\"]", 5)), &more,
                err, sizeof err),
        0);
    const eg_ws_route_t *w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, EU);
    assert_int_equal(w->source, US);

    /* The home region speaks for itself at an equal epoch (here: a narrower set). */
    assert_int_equal(changes(f->d, EU,
                             PAGE(1, CH(1, "workspace", "w", "eu-west", "[\"us-east\"]", 5)), &more,
                             err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->source, EU);
    assert_int_equal(w->allowed, BIT(EU) | BIT(US));

    /* A stale replica at the same epoch never overrides the home's report. */
    assert_int_equal(
        changes(f->d, AP,
                PAGE(1, CH(1, "workspace", "w", "eu-west", "[\"us-east\",\"ap-south\"]", 5)), &more,
                err, sizeof err),
        0);
    assert_int_equal(changes(f->d, US,
                             PAGE(2, CH(2, "workspace", "w", "eu-west", "[\"ap-south\"]", 5)),
                             &more, err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, EU);
    assert_int_equal(w->source, EU);
    assert_int_equal(w->allowed, BIT(EU) | BIT(US));

    /* A lower epoch never wins, not even from the region it names as home. */
    assert_int_equal(changes(f->d, AP,
                             PAGE(2, CH(2, "workspace", "w", "ap-south", "[\"eu-west\"]", 4)),
                             &more, err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, EU);
    assert_int_equal(w->epoch, 5);

    /* A higher epoch wins whoever reports it (a move seen first by a replica). */
    assert_int_equal(changes(f->d, US,
                             PAGE(3, CH(3, "workspace", "w", "ap-south", "[\"us-east\"]", 6)),
                             &more, err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, AP);
    assert_int_equal(w->epoch, 6);
    assert_int_equal(w->source, US);
    assert_int_equal(w->allowed, BIT(AP) | BIT(US));

    /* The old home, still at the old epoch, cannot take it back. */
    assert_int_equal(changes(f->d, EU, PAGE(2, CH(2, "workspace", "w", "eu-west", "[]", 5)), &more,
                             err, sizeof err),
                     0);
    assert_int_equal(eg_dir_workspace(f->d, "w")->home, AP);

    /* At an equal epoch, one non-home report may replace another non-home one... */
    assert_int_equal(
        changes(f->d, EU,
                PAGE(3, CH(3, "workspace", "w", "ap-south", "[\"us-east\",\"eu-west\"]", 6)), &more,
                err, sizeof err),
        0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->source, EU);
    assert_int_equal(w->allowed, BIT(AP) | BIT(US) | BIT(EU));
    /* ...and the new home's own report replaces both. */
    assert_int_equal(changes(f->d, AP,
                             PAGE(3, CH(3, "workspace", "w", "ap-south", "[\"us-east\"]", 6)),
                             &more, err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->source, AP);
    assert_int_equal(w->allowed, BIT(AP) | BIT(US));
    /* After which no replica at that epoch changes it. */
    assert_int_equal(
        changes(f->d, US,
                PAGE(4, CH(4, "workspace", "w", "ap-south", "[\"us-east\",\"eu-west\"]", 6)), &more,
                err, sizeof err),
        0);
    assert_int_equal(changes(f->d, EU,
                             PAGE(4, CH(4, "workspace", "w", "ap-south", "[\"eu-west\"]", 6)),
                             &more, err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, AP);
    assert_int_equal(w->source, AP);
    assert_int_equal(w->allowed, BIT(AP) | BIT(US));

    /* Snapshots merge by the same rules. */
    assert_int_equal(snap(f->d, US,
                          "{\"version\":\"0:9\",\"workspaces\":[" WS(
                              "w", "ap-south", "[]", 6, false) "],\"users\":[],\"emails\":[]}",
                          err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, AP);
    assert_int_equal(w->allowed, BIT(AP) | BIT(US));
    assert_int_equal(snap(f->d, US,
                          "{\"version\":\"0:10\",\"workspaces\":[" WS(
                              "w", "us-east", "[]", 7, true) "],\"users\":[],\"emails\":[]}",
                          err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, US);
    assert_int_equal(w->epoch, 7);
    assert_true(w->pinned);
    assert_int_equal(eg_dir_count(f->d, 'w'), 1);
#undef PAGE
}

/* A 421 names the home: taken only inside the allowed set. */
static void test_set_home(void **state)
{
    fx_t *f = *state;
    char err[256];
    assert_int_equal(
        snap(f->d, EU,
             "{\"version\":\"0:1\",\"workspaces\":[" WS("w", "eu-west", "[\"us-east\"]", 3,
                                                        false) "],"
                                                               "\"users\":[],\"emails\":[]}",
             err, sizeof err),
        0);
    assert_false(eg_dir_set_home(f->d, "w", AP)); /* not allowed */
    assert_int_equal(eg_dir_workspace(f->d, "w")->home, EU);
    assert_false(eg_dir_set_home(f->d, "w", -1));
    assert_false(eg_dir_set_home(f->d, "w", 63));
    assert_false(eg_dir_set_home(f->d, "nope", US));
    assert_null(eg_dir_workspace(f->d, "nope"));
    assert_true(eg_dir_set_home(f->d, "w", US));
    const eg_ws_route_t *w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, US);
    assert_int_equal(w->allowed, BIT(EU) | BIT(US));
    assert_int_equal(w->epoch, 3);
    assert_true(eg_dir_set_home(f->d, "w", EU));
    assert_int_equal(eg_dir_workspace(f->d, "w")->home, EU);

    /* The feed confirms (or corrects) later: a move to us-east arrives. */
    assert_true(eg_dir_set_home(f->d, "w", US));
    bool more;
    assert_int_equal(changes(f->d, US,
                             "{\"version\":\"0:2\",\"changes\":[" CH(2, "workspace", "w", "us-east",
                                                                     "[\"eu-west\"]", 4) "]}",
                             &more, err, sizeof err),
                     0);
    w = eg_dir_workspace(f->d, "w");
    assert_int_equal(w->home, US);
    assert_int_equal(w->epoch, 4);
    assert_int_equal(w->source, US);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_snapshot_load),
        T(test_unknown_regions),
        T(test_malformed_snapshots_change_nothing),
        T(test_malformed_entries_skipped),
        T(test_change_feed),
        T(test_feed_versions),
        T(test_merge_rules),
        T(test_set_home),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
