/* eg_route.h: which region a request belongs to, by its path alone (pure
 * functions, table-tested in tests/unit/edge/test_eg_route.c). */
#ifndef EG_ROUTE_H
#define EG_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    EG_ROUTE_NONE,      /* not for clients through an edge: refused here */
    EG_ROUTE_WORKSPACE, /* /v1/workspaces/{id}[/...]: the workspace's home region */
    EG_ROUTE_USER,      /* /v1/me, /v1/workspaces: the token's home region */
    EG_ROUTE_SIGNUP,    /* by the keyed hash of the body's email */
    EG_ROUTE_LOGIN,
    EG_ROUTE_REFRESH, /* the region the client names (Meridian-Home-Region) */
    EG_ROUTE_LOGOUT,  /* the token's home region */
} eg_route_kind_t;

#define EG_ROUTE_ID_MAX 64

typedef struct {
    eg_route_kind_t kind;
    char id[EG_ROUTE_ID_MAX + 1]; /* the workspace id for EG_ROUTE_WORKSPACE */
} eg_route_t;

/* Classifies a raw path (no query). Returns 0, or UV_EINVAL for a workspace
 * id that is not 1-64 of [A-Za-z0-9_-] (out->kind is then EG_ROUTE_NONE). */
int eg_route_classify(const char *method, const char *path, size_t len, eg_route_t *out);

/* True for request headers an edge must not forward: hop-by-hop ones (RFC
 * 9110 7.6.1), and the ones it sets itself (Host, Content-Length,
 * X-Request-Id, Meridian-Edge). Upgrade survives for a WebSocket (ws). */
bool eg_route_hop_header(const char *name, size_t len, bool ws);

#endif
