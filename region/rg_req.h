/* rg_req.h: the life of one API request in a region worker.
 *
 * A handler makes an rg_req_t (with room for its own state), then moves
 * through asynchronous steps (database, Redis, thread pool) and ends with
 * exactly one rg_req_reply* or rg_req_fail*, which answers the client and
 * frees the request: that is the one place it is freed.
 *
 * If the client goes away mid-way, `http` becomes NULL and the statement in
 * flight is cancelled; every step's callback begins with rg_req_gone(), which
 * frees the request and tells the step to stop. */
#ifndef RG_REQ_H
#define RG_REQ_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"
#include "core/http.h"
#include "core/json.h"
#include "core/pg.h"
#include "core/auth.h"
#include "region/rg_worker.h"

#define RG_JSON_MAX_DEPTH 32

typedef struct rg_req_s rg_req_t;

struct rg_req_s {
    core_http_req_t *http; /* NULL once the client has gone */
    rg_worker_t *w;
    core_json_doc_t *doc;         /* the parsed body, when rg_req_body was called */
    const core_json_t *body;      /* its root: always an object */
    core_pg_req_t *pg;            /* the statement in flight, cancelled if the client goes */
    core_auth_job_t *job;         /* the password job in flight, cancelled likewise */
    core_auth_claims_t who;       /* the caller, after rg_api_authenticate */
    void (*next)(rg_req_t *r);    /* the step after authentication */
    void (*on_free)(rg_req_t *r); /* the handler's own cleanup, if any */
    int shard;                    /* the shard the request works on, once known */
    int pending;                  /* async steps in flight whose callback has not run */
    const char *not_found;        /* rg_api_not_found's message (static) */
    char state[];                 /* the handler's state, zeroed */
};

/* Starts a request with state_size bytes of zeroed handler state. */
rg_req_t *rg_req_new(core_http_req_t *http, rg_worker_t *w, size_t state_size);

/* Parses the body as a JSON object (depth <= 32). On failure answers 400/415
 * itself, frees r and returns false. An empty body parses as {} when
 * allow_empty is set. */
bool rg_req_body(rg_req_t *r, bool allow_empty);

/* In a step's callback: true if the client has gone, in which case the
 * request has been freed and the step must return at once. Decrements the
 * pending count, so call it exactly once per callback. */
bool rg_req_gone(rg_req_t *r);

/* Answers with a JSON body (taken and freed) and frees the request. */
void rg_req_reply(rg_req_t *r, int status, core_buf_t *json);
/* Frees a request that has been answered another way (upgraded to a
 * WebSocket): nothing more is sent. */
void rg_req_release(rg_req_t *r);
/* Answers 204 No Content and frees the request. */
void rg_req_no_content(rg_req_t *r);
/* Answers {"error":{code,message}} and frees the request. */
void rg_req_fail(rg_req_t *r, int status, const char *code, const char *message);
/* The same with extra headers ("Name: value\r\n..."). */
void rg_req_fail_h(rg_req_t *r, int status, const char *code, const char *message,
                   const char *extra_headers);
/* Answers 421 Misdirected Request naming the workspace's home region (in
 * the message and in Meridian-Home-Region, which clients and edges follow). */
void rg_req_fail_home(rg_req_t *r, const char *home);
/* Maps a database failure to an answer (503 with Retry-After for an
 * unavailable or overloaded shard, 409 for a unique violation, else 500,
 * logged with the SQLSTATE only: error texts may quote user data). */
void rg_req_fail_pg(rg_req_t *r, int err, const PGresult *res);

/* The usual start of a statement's callback: returns false when the request
 * is finished (the client has gone: freed; the statement failed: answered as
 * rg_req_fail_pg does), true when the callback should carry on with res. */
bool rg_req_pg_ok(rg_req_t *r, const PGresult *res, int err);

/* Runs one statement on shard; cb gets the result. On an immediate error
 * (queue full, shard down) it answers 503 itself, frees r and returns -1.
 * sql must be static: it is prepared once per connection of the shard's pool
 * and stays registered (parsing and planning an API statement each time
 * cost more than running most of them). */
int rg_req_query(rg_req_t *r, int shard, const char *sql, int nparams, const char *const *values,
                 core_pg_cb cb);

/* Body field helpers: on a missing or invalid field they answer 400 naming
 * the field, free r and return false. Strings are limited to max bytes of
 * valid UTF-8 (yajl validates it) and, when min > 0, must be that long. */
bool rg_req_str(rg_req_t *r, const char *field, size_t min, size_t max, bool required,
                const char **out);
bool rg_req_bool(rg_req_t *r, const char *field, bool def, bool *out);

/* Copies the path parameter `param`, which must be an id, into out; on a
 * malformed one answers 400 naming it (`what`), frees r and returns false. */
bool rg_req_path_id(rg_req_t *r, const char *param, const char *what, char *out, size_t cap);

/* Characters (code points) in len bytes of valid UTF-8: limits count these. */
size_t rg_utf8_chars(const char *s, size_t len);

/* Opaque random ids: prefix + 20 base32 characters (100 bits). */
void rg_new_id(char *out, size_t cap, const char *prefix);
/* An id from a path or body: 1..64 of [A-Za-z0-9_-]. */
bool rg_id_valid(const char *s);

#endif
