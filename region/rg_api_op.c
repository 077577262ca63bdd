/* rg_api_op.c: authenticate, place the workspace, run one statement, map its
 * outcome (see rg_api_op.h). */
#include "region/rg_api_op.h"

#include <assert.h>
#include <string.h>

static void on_op_done(const PGresult *res, int err, const char *errmsg, void *ud)
{
    rg_req_t *r = ud;
    if (!rg_req_pg_ok(r, res, err))
        return;
    const rg_api_op_t *op = rg_api_op_state(r)->op;
    const char *outcome = PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "";
    if (strcmp(outcome, "ok") == 0) {
        if (op->reply)
            op->reply(r, res);
        else
            rg_req_no_content(r);
        return;
    }
    if (op->on_outcome && op->on_outcome(r, outcome))
        return;
    for (size_t i = 0; i < op->noutcomes; i++)
        if (op->outcomes[i].status == 404 && strcmp(outcome, op->outcomes[i].outcome) == 0) {
            rg_api_not_found(r, rg_api_op_state(r)->ws, op->outcomes[i].message);
            return;
        }
    rg_api_fail_outcome(r, outcome, op->outcomes, op->noutcomes);
}

void rg_api_op_query(rg_req_t *r)
{
    rg_api_op_state_t *st = rg_api_op_state(r);
    rg_req_query(r, st->shard, st->op->sql, st->nparams, st->params, on_op_done);
}

static void op_run(rg_req_t *r)
{
    rg_api_op_state(r)->shard = r->shard;
    rg_api_op_query(r);
}

static void op_authenticated(rg_req_t *r)
{
    rg_api_op_state_t *st = rg_api_op_state(r);
    if (!rg_req_path_id(r, "id", "workspace id", st->ws, sizeof st->ws))
        return;
    st->params[0] = st->ws;
    st->params[1] = r->who.sub;
    st->nparams = 2;
    if (st->op->parse && !st->op->parse(r))
        return;
    rg_api_in_workspace(r, st->ws, op_run);
}

void rg_api_op_start(rg_req_t *r, const rg_api_op_t *op)
{
    rg_api_op_state(r)->op = op;
    rg_api_authenticate(r, op_authenticated);
}

void rg_api_op_param(rg_req_t *r, const char *value)
{
    rg_api_op_state_t *st = rg_api_op_state(r);
    assert(st->nparams < RG_API_OP_MAX_PARAMS);
    st->params[st->nparams++] = value;
}

int rg_api_op_routes(rg_worker_t *w, const rg_api_op_route_t *routes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc =
            core_http_route(w->http, routes[i].method, routes[i].pattern, routes[i].handler, w);
        if (rc)
            return rc;
    }
    return 0;
}
