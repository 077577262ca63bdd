/* res_world.h: the description of a Meridian world — its jurisdictions,
 * regions, and for each region its stores and endpoints — read from one JSON
 * file (format "meridian-world/1", documented in docs/world-config.md).
 *
 * The same file comes out of deploy/local/world and out of the Terraform
 * example environment, so that what is tested locally is what is deployed.
 * It carries addresses, never secrets: database passwords and keys are
 * provisioned separately (PGPASSFILE, key files).
 *
 * The residency catalog (which region sits in which jurisdiction) is read
 * from here; so are the NATS domains that replication addresses and the
 * regions over which global keys (emails, slugs) are given an owner. */
#ifndef RES_WORLD_H
#define RES_WORLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RES_WORLD_FORMAT "meridian-world/1"
#define RES_MAX_REGIONS 64
#define RES_MAX_SHARDS 64

typedef struct {
    char *name;        /* "EU": 1-16 of A-Z, 0-9, '-' */
    char *description; /* for people; may be "" */
} res_jurisdiction_t;

typedef struct {
    int id;
    char *conninfo; /* libpq conninfo without a password */
} res_shard_t;

typedef struct {
    char *name;         /* "eu-west": 1-32 of a-z, 0-9, '-' */
    char *jurisdiction; /* one of the world's jurisdictions */
    char *nats_domain;  /* the region's JetStream domain, unique in the world */
    char **nats_urls;   /* the region's own NATS servers (clients connect here) */
    size_t nnats_urls;
    res_shard_t *shards;
    size_t nshards;
    char *redis_host;
    int redis_port;
    char **api_urls; /* the region's nodes, http(s)://host:port, for edges and tools */
    size_t napi_urls;
    char **token_keys; /* Ed25519 public keys (43 base64url characters) that sign the
                          region's access tokens: every region and edge verifies them */
    size_t ntoken_keys;
} res_region_t;

typedef struct {
    char *name;   /* "edge-1": 1-32 of a-z, 0-9, '-' */
    char *pop;    /* point of presence, for people and DNS; may be "" */
    char *region; /* the region nearest it, where new users sign up by default; may be NULL */
    char **urls;  /* where clients reach it, http(s)://host:port */
    size_t nurls;
} res_edge_t;

typedef struct {
    char *name; /* of the world: "local", "prod" */
    res_jurisdiction_t *jurisdictions;
    size_t njurisdictions;
    res_region_t *regions;
    size_t nregions;
    char **hub_leaf_urls; /* where regions' NATS attach as leafnodes */
    size_t nhub_leaf_urls;
    res_edge_t *edges; /* the edge nodes (optional) */
    size_t nedges;
} res_world_t;

/* Reads and validates a world file. On error returns a negative code and
 * sets *errors (malloc'd, one "field: problem" line each; caller frees). */
int res_world_load(res_world_t *w, const char *path, char **errors);
int res_world_load_str(res_world_t *w, const char *json, char **errors);
void res_world_free(res_world_t *w);

/* The region called name, or NULL. */
const res_region_t *res_world_region(const res_world_t *w, const char *name);
/* The edge called name, or NULL. */
const res_edge_t *res_world_edge(const res_world_t *w, const char *name);
/* The region whose NATS JetStream domain is domain, or NULL. */
const res_region_t *res_world_region_by_domain(const res_world_t *w, const char *domain);
/* The region that owns a global key (an email or slug hash): the highest
 * rendezvous score of the key over the regions' names, so that adding a
 * region moves only the keys it now owns. */
const res_region_t *res_world_owner(const res_world_t *w, const uint8_t *key, size_t len);

#endif
