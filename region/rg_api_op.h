/* rg_api_op.h: the "one statement per endpoint" path shared by the API files
 * whose endpoints act on an existing workspace.
 *
 * An endpoint is a descriptor: after authentication the workspace id comes
 * from the path ({id}), params[0] = workspace and params[1] = caller, parse
 * validates the rest and appends params[2..], the workspace is placed on its
 * shard and the statement runs there. The statement returns an "outcome"
 * column first: "ok" is answered by reply (NULL: 204), anything else from
 * the descriptor's outcome table.
 *
 * A file's state struct embeds rg_api_op_state_t as its FIRST member, so that
 * r->state is both; requests are made by the file (rg_req_new with its own
 * state size, plus any cleanup) and handed to rg_api_op_start. */
#ifndef RG_API_OP_H
#define RG_API_OP_H

#include "region/rg_api.h"

#define RG_API_OP_MAX_PARAMS 6

typedef struct rg_api_op_s rg_api_op_t;

struct rg_api_op_s {
    const char *sql;
    /* Validates the path, query and body after authentication and appends
     * params[2..]; on failure it has answered and returns false. May be NULL. */
    bool (*parse)(rg_req_t *r);
    /* Builds the answer to "ok" from the result; NULL answers 204. */
    void (*reply)(rg_req_t *r, const PGresult *res);
    int ok_status; /* for reply's use; the shared path does not read it */
    const rg_outcome_t *outcomes;
    size_t noutcomes;
    /* A non-"ok" outcome the endpoint handles itself before the table (a
     * retry, say): returns true when it has taken the request. May be NULL. */
    bool (*on_outcome)(rg_req_t *r, const char *outcome);
};

typedef struct {
    const rg_api_op_t *op;
    char ws[CORE_AUTH_ID_MAX + 1];
    const char *params[RG_API_OP_MAX_PARAMS];
    int nparams;
    int shard; /* the workspace's shard: later steps may point r->shard elsewhere */
} rg_api_op_state_t;

/* The shared head of r's state. */
static inline rg_api_op_state_t *rg_api_op_state(rg_req_t *r)
{
    return (rg_api_op_state_t *)r->state;
}

/* Authenticates r, then parses, places the workspace and runs op's statement,
 * ending with one answer. r's state must begin with rg_api_op_state_t. */
void rg_api_op_start(rg_req_t *r, const rg_api_op_t *op);

/* Appends a statement parameter (the value must outlive the request's
 * statement: state fields, the parsed body, the caller's claims). */
void rg_api_op_param(rg_req_t *r, const char *value);

/* Runs the op's statement (again) on the workspace's shard, answered as
 * rg_api_op_start's would be. */
void rg_api_op_query(rg_req_t *r);

/* One route of a file's table. */
typedef struct {
    const char *method, *pattern;
    core_http_handler_t handler;
} rg_api_op_route_t;

/* Registers n routes on w->http (w is each handler's ud); stops at the first
 * error and returns it. */
int rg_api_op_routes(rg_worker_t *w, const rg_api_op_route_t *routes, size_t n);

#endif
