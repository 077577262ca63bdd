/* Unit tests for residency/res_world.c: a world file is read whole, every
 * problem names its field, and global keys get a stable owner region. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "residency/res_world.h"

#define REGION(name, jur, port)                                                                    \
    "{\"name\":\"" name "\",\"jurisdiction\":\"" jur "\","                                         \
    "\"nats\":{\"domain\":\"" name "\",\"urls\":[\"nats://127.0.0.1:" port "\"]},"                 \
    "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=127.0.0.1 port=1\"},"                 \
    "{\"id\":1,\"conninfo\":\"host=127.0.0.1 port=2\"}]},"                                         \
    "\"redis\":{\"host\":\"127.0.0.1\",\"port\":6379},"                                            \
    "\"api\":{\"urls\":[\"http://127.0.0.1:" port "\"]}}"

#define JURS                                                                                       \
    "\"jurisdictions\":[{\"name\":\"US\",\"description\":\"United States\"},{\"name\":\"EU\"},"    \
    "{\"name\":\"IN\"}]"
#define HUB "\"hub\":{\"leaf_urls\":[\"nats-leaf://127.0.0.1:7422\"]}"

static const char WORLD[] = "{\"format\":\"meridian-world/1\",\"name\":\"local\"," JURS "," HUB
                            ",\"regions\":[" REGION("us-east", "US", "1") "," REGION(
                                "eu-west", "EU", "2") "," REGION("ap-south", "IN", "3") "]}";

static void test_valid(void **state)
{
    res_world_t w;
    char *err = NULL;
    int rc = res_world_load_str(&w, WORLD, &err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(w.nregions, 3);
    assert_int_equal(w.njurisdictions, 3);
    assert_string_equal(w.jurisdictions[0].description, "United States");
    assert_string_equal(w.jurisdictions[1].description, "");
    const res_region_t *eu = res_world_region(&w, "eu-west");
    assert_non_null(eu);
    assert_string_equal(eu->jurisdiction, "EU");
    assert_int_equal(eu->nshards, 2);
    assert_string_equal(eu->shards[1].conninfo, "host=127.0.0.1 port=2");
    assert_string_equal(eu->nats_urls[0], "nats://127.0.0.1:2");
    assert_ptr_equal(res_world_region_by_domain(&w, "ap-south"), &w.regions[2]);
    assert_null(res_world_region(&w, "mars"));
    assert_int_equal(w.nhub_leaf_urls, 1);
    res_world_free(&w);
}

/* Owners are spread over the regions, and removing a region moves only the
 * keys it owned (the point of rendezvous hashing). */
static void test_owner_stable(void **state)
{
    res_world_t w, w2;
    char *err = NULL;
    assert_int_equal(res_world_load_str(&w, WORLD, &err), 0);
    assert_int_equal(res_world_load_str(&w2, WORLD, &err), 0);
    /* w2 without ap-south: keep only the first two regions. */
    w2.nregions = 2;
    int counts[3] = {0};
    for (int i = 0; i < 3000; i++) {
        uint8_t key[4] = {(uint8_t)i, (uint8_t)(i >> 8), 7, 9};
        const res_region_t *o = res_world_owner(&w, key, sizeof key);
        assert_non_null(o);
        assert_ptr_equal(o, res_world_owner(&w, key, sizeof key));
        counts[o - w.regions]++;
        const res_region_t *o2 = res_world_owner(&w2, key, sizeof key);
        if (strcmp(o->name, "ap-south") != 0)
            assert_string_equal(o->name, o2->name);
    }
    for (int i = 0; i < 3; i++)
        assert_in_range(counts[i], 800, 1200);
    w2.nregions = 3;
    res_world_free(&w);
    res_world_free(&w2);
}

typedef struct {
    const char *json;
    const char *want;
} bad_case_t;

#define W(regions)                                                                                 \
    "{\"format\":\"meridian-world/1\",\"name\":\"local\"," JURS "," HUB ",\"regions\":[" regions   \
    "]}"

static const bad_case_t bad[] = {
    {"[]", "top level must be a JSON object"},
    {"{\"name\":\"x\"," JURS ",\"regions\":[" REGION("us-east", "US", "1") "]}",
     "format: is required"},
    {"{\"format\":\"meridian-world/2\",\"name\":\"x\"," JURS
     ",\"regions\":[" REGION("us-east", "US", "1") "]}",
     "format: must be \"meridian-world/1\""},
    {"{\"format\":\"meridian-world/1\",\"name\":\"x\",\"regions\":[" REGION("us-east", "US",
                                                                            "1") "]}",
     "jurisdictions: is required"},
    {"{\"format\":\"meridian-world/1\",\"name\":\"x\"," JURS ",\"regions\":[]}",
     "regions: is required"},
    {"{\"format\":\"meridian-world/1\",\"name\":\"x\"," JURS
     ",\"regions\":[" REGION("us-east", "US", "1") "," REGION("eu-west", "EU", "2") "]}",
     "hub: is required when there is more than one region"},
    {W(REGION("us-east", "US", "1") "," REGION("us-east", "EU", "2")),
     "regions[1].name: \"us-east\" is also regions[0]"},
    {W(REGION("us-east", "XX", "1")),
     "regions[0].jurisdiction: \"XX\" is not one of the world's jurisdictions"},
    {W(REGION("US East", "US", "1")), "regions[0].name: must be 1-32 characters"},
    {W("{\"name\":\"us-east\",\"jurisdiction\":\"US\",\"nats\":{\"domain\":\"d\",\"urls\":[\"nats:/"
       "/x\"]},"
       "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=a\"}]},\"redis\":{\"host\":\"a\","
       "\"port\":1},"
       "\"api\":{\"urls\":[\"http://a:1\"]},\"token_keys\":[\"not-a-key\"]}"),
     "regions[0].token_keys: item 0 must be an Ed25519 public key"},
    {W("{\"name\":\"us-east\",\"jurisdiction\":\"US\",\"nats\":{\"domain\":\"d\",\"urls\":[\"http:/"
       "/x\"]},"
       "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=a\"}]},\"redis\":{\"host\":\"a\","
       "\"port\":1},"
       "\"api\":{\"urls\":[\"http://a:1\"]}}"),
     "regions[0].nats.urls: item 0 must be a nats://host[:port] URL"},
    {W("{\"name\":\"us-east\",\"jurisdiction\":\"US\",\"nats\":{\"domain\":\"d\",\"urls\":[\"nats:/"
       "/x\"]},"
       "\"postgres\":{\"shards\":[{\"id\":1,\"conninfo\":\"host=a\"}]},\"redis\":{\"host\":\"a\","
       "\"port\":1},"
       "\"api\":{\"urls\":[\"http://a:1\"]}}"),
     "regions[0].postgres.shards[0]: id must be 0"},
    {W("{\"name\":\"us-east\",\"jurisdiction\":\"US\",\"nats\":{\"domain\":\"d\",\"urls\":[\"nats:/"
       "/x\"]},"
       "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=a "
       "password=hunter2\"}]},\"redis\":{\"host\":\"a\",\"port\":1},"
       "\"api\":{\"urls\":[\"http://a:1\"]}}"),
     "regions[0].postgres.shards[0]: conninfo must not carry a password"},
    {W("{\"name\":\"us-east\",\"jurisdiction\":\"US\",\"nats\":{\"domain\":\"d\",\"urls\":[\"nats:/"
       "/x\"]},"
       "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=a\"}]},\"redis\":{\"host\":\"a\","
       "\"port\":1}}"),
     "regions[0].api: is required"},
    {W("{\"name\":\"us-east\",\"jurisdiction\":\"US\",\"nats\":{\"domain\":\"d\",\"urls\":[\"nats:/"
       "/x\"]},"
       "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=a\"}]},\"redis\":{\"host\":\"a\","
       "\"port\":1},"
       "\"api\":{\"urls\":[\"http://a:1\"]},\"colour\":1}"),
     "regions[0].colour: unknown field"},
    {W(REGION("us-east", "US", "1") ","
                                    "{\"name\":\"eu-west\",\"jurisdiction\":\"EU\",\"nats\":{"
                                    "\"domain\":\"us-east\",\"urls\":[\"nats://x\"]},"
                                    "\"postgres\":{\"shards\":[{\"id\":0,\"conninfo\":\"host=a\"}]}"
                                    ",\"redis\":{\"host\":\"a\",\"port\":1},"
                                    "\"api\":{\"urls\":[\"http://a:1\"]}}"),
     "regions[1].nats.domain: \"us-east\" is also the domain of regions[0]"},
};

/* Edges: an unknown region or a bad URL names its field. */
#define WE(edges)                                                                                  \
    "{\"format\":\"meridian-world/1\",\"name\":\"x\"," JURS                                        \
    ",\"regions\":[" REGION("us-east", "US", "1") "],\"edges\":[" edges "]}"
static const struct {
    const char *json, *want;
} bad_edges[] = {
    {WE("{\"name\":\"edge-1\",\"region\":\"mars\",\"urls\":[\"http://e:1\"]}"),
     "edges[0].region: \"mars\" is not one of the world's regions"},
    {WE("{\"name\":\"edge-1\",\"urls\":[\"ftp://e:1\"]}"), "edges[0].urls"},
    {WE("{\"name\":\"edge-1\"}"), "edges[0].urls: is required"},
    {WE("{\"name\":\"Edge 1\",\"urls\":[\"http://e:1\"]}"), "edges[0].name: must be"},
    {WE("{\"name\":\"e\",\"urls\":[\"http://e:1\"]},{\"name\":\"e\",\"urls\":[\"http://f:1\"]}"),
     "edges[1].name: \"e\" is also edges[0]"},
    {WE("{\"name\":\"e\",\"urls\":[\"http://e:1\"],\"colour\":1}"),
     "edges[0].colour: unknown field"},
};

static void test_edges(void **state)
{
    res_world_t w;
    char *err = NULL;
    int rc = res_world_load_str(&w,
                                WE("{\"name\":\"edge-1\",\"pop\":\"fra\",\"region\":\"us-east\","
                                   "\"urls\":[\"http://e:8080\"]}"),
                                &err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(w.nedges, 1);
    const res_edge_t *e = res_world_edge(&w, "edge-1");
    assert_non_null(e);
    assert_string_equal(e->pop, "fra");
    assert_string_equal(e->region, "us-east");
    assert_string_equal(e->urls[0], "http://e:8080");
    assert_null(res_world_edge(&w, "edge-2"));
    res_world_free(&w);
    for (size_t i = 0; i < sizeof bad_edges / sizeof bad_edges[0]; i++) {
        err = NULL;
        if (res_world_load_str(&w, bad_edges[i].json, &err) == 0)
            fail_msg("edge case %zu accepted; wanted \"%s\"", i, bad_edges[i].want);
        if (!strstr(err, bad_edges[i].want))
            fail_msg("edge case %zu: wanted \"%s\" in:\n%s", i, bad_edges[i].want, err);
        free(err);
    }
}

static void test_bad(void **state)
{
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        res_world_t w;
        char *err = NULL;
        int rc = res_world_load_str(&w, bad[i].json, &err);
        if (rc == 0)
            fail_msg("case %zu accepted; wanted \"%s\"", i, bad[i].want);
        assert_non_null(err);
        if (!strstr(err, bad[i].want))
            fail_msg("case %zu: wanted \"%s\" in:\n%s", i, bad[i].want, err);
        free(err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_owner_stable),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
