/* rg_api.h: the REST API under /v1, served by every region worker.
 *
 * Handlers follow rg_req.h: make an rg_req_t, take asynchronous steps, end
 * with exactly one answer. Every endpoint but signup, login and refresh
 * starts with rg_api_authenticate. Errors are {"error":{"code","message"}}
 * with the right status; an error body never says more than the caller may
 * know (a workspace the caller does not belong to is simply not found). */
#ifndef RG_API_H
#define RG_API_H

#include "region/rg_req.h"
#include "region/rg_worker.h"

/* Registers every /v1 route on w->http. */
int rg_api_routes(rg_worker_t *w);

/* Checks the bearer token (signature, expiry, revocation in Redis). On
 * success fills r->who and calls next; otherwise answers 401 (or 503 when
 * revocation cannot be checked: it fails closed) and frees r. next may run
 * before this returns: return right after calling it. */
void rg_api_authenticate(rg_req_t *r, void (*next)(rg_req_t *r));
/* The same with the token given (a WebSocket may carry it elsewhere). */
void rg_api_authenticate_token(rg_req_t *r, const char *tok, size_t toklen,
                               void (*next)(rg_req_t *r));

/* Finds the shard of workspace ws (worker cache, else a directory lookup),
 * sets r->shard and calls next; answers 404 when no shard has it and 503 when
 * the shards that could have it cannot say. next may run before this
 * returns: return right after calling it. */
void rg_api_in_workspace(rg_req_t *r, const char *ws, void (*next)(rg_req_t *r));

/* A statement's "outcome" column mapped to an answer. */
typedef struct {
    const char *outcome;
    int status;
    const char *code;
    const char *message;
} rg_outcome_t;

/* Answers the outcome from the table; an outcome missing from it is a bug:
 * logged, answered 500. "ok" is the caller's to handle. */
void rg_api_fail_outcome(rg_req_t *r, const char *outcome, const rg_outcome_t *table, size_t n);
/* Answers 404 with message (a static string), unless the workspace turns
 * out to have moved: a worker's cached placement can be older than a move
 * (its rows at the old home are then being purged, and a statement finds
 * nothing). The placement is looked up afresh; another home gets 421 naming
 * it, as rg_api_in_workspace would have answered. */
void rg_api_not_found(rg_req_t *r, const char *ws, const char *message);

/* The shard that owns a uniqueness key (email or slug hash): a rendezvous
 * of the hash over the region's shards. */
int rg_api_owner_shard(const rg_worker_t *w, const uint8_t hash[32]);

/* Writes bytes as a Postgres bytea text literal ("\\x..."), NUL-terminated. */
void rg_api_bytea(char *out, size_t cap, const uint8_t *data, size_t len);

/* Issues an access token for the claims' user and appends the token fields
 * ("access_token", "token_type", "expires_in") to an open JSON object. */
int rg_api_put_access_token(rg_worker_t *w, core_jw_t *jw, const char *user_id,
                            const char *home_region);

/* Route groups, one per file. */
int rg_api_auth_routes(rg_worker_t *w);      /* rg_api_auth.c: signup, login, refresh, logout, me */
int rg_api_stream_routes(rg_worker_t *w);    /* rg_stream.c: the real-time stream */
int rg_api_directory_routes(rg_worker_t *w); /* rg_api_directory.c: the directory, for edges */
int rg_api_replica_routes(rg_worker_t *w);   /* rg_api_replicas.c: GET /metrics/replicas */
int rg_api_residency_routes(rg_worker_t *w); /* rg_api_residency.c: policies and the audit trail */
int rg_api_move_routes(rg_worker_t *w);      /* rg_api_moves.c: moves between regions */
/* Sends every live stream of this worker back to the database to catch up
 * (after its NATS link was down: live events of that time are lost). */
void rg_stream_resync_live(rg_worker_t *w);
/* Closes every stream of workspace ws on this worker with 1013 (it moved:
 * clients reconnect through the directory and resume from their cursor). */
void rg_stream_close_workspace(rg_worker_t *w, const char *ws);
/* Stops the stream's timers (worker shutdown). */
void rg_stream_close(rg_worker_t *w);
int rg_api_workspace_routes(
    rg_worker_t *w);                        /* rg_api_workspaces.c: workspaces, members, channels */
int rg_api_reaction_routes(rg_worker_t *w); /* rg_api_reactions.c: reactions, markers, search */

int rg_api_message_routes(rg_worker_t *w); /* rg_api_messages.c: messages and threads */
/* The worker's set-based post queue (rg_api_messages.c); freed after the pools. */
typedef struct rg_postq_s rg_postq_t;
void rg_postq_free(rg_postq_t *q);

#endif
