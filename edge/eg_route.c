#include "edge/eg_route.h"

#include <string.h>
#include <strings.h>

#include <uv.h>

static bool seg_is(const char *p, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(p, lit, len) == 0;
}

static bool valid_id(const char *p, size_t len)
{
    if (len == 0 || len > EG_ROUTE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

int eg_route_classify(const char *method, const char *path, size_t len, eg_route_t *out)
{
    out->kind = EG_ROUTE_NONE;
    out->id[0] = '\0';
    /* Segments of the raw path; empty ones ("//") make it not ours. */
    const char *seg[5];
    size_t seglen[5];
    size_t n = 0;
    if (len == 0 || path[0] != '/')
        return 0;
    size_t i = 1;
    while (i <= len && n < 5) {
        size_t j = i;
        while (j < len && path[j] != '/')
            j++;
        seg[n] = path + i;
        seglen[n] = j - i;
        n++;
        i = j + 1;
        if (j >= len)
            break;
    }
    if (n == 0 || !seg_is(seg[0], seglen[0], "v1") || n < 2)
        return 0;
    if (seg_is(seg[1], seglen[1], "me") && n == 2) {
        out->kind = EG_ROUTE_USER;
        return 0;
    }
    if (seg_is(seg[1], seglen[1], "auth") && n == 3) {
        if (seg_is(seg[2], seglen[2], "signup"))
            out->kind = EG_ROUTE_SIGNUP;
        else if (seg_is(seg[2], seglen[2], "login"))
            out->kind = EG_ROUTE_LOGIN;
        else if (seg_is(seg[2], seglen[2], "refresh"))
            out->kind = EG_ROUTE_REFRESH;
        else if (seg_is(seg[2], seglen[2], "logout"))
            out->kind = EG_ROUTE_LOGOUT;
        return 0;
    }
    /* The residency admin API: a workspace's policy lives at its home. */
    if (seg_is(seg[1], seglen[1], "admin") && n >= 4 && seg_is(seg[2], seglen[2], "residency") &&
        seg_is(seg[3], seglen[3], "workspaces")) {
        if (n == 4) {
            out->kind = EG_ROUTE_USER;
            return 0;
        }
        if (!valid_id(seg[4], seglen[4]))
            return seglen[4] ? UV_EINVAL : 0;
        memcpy(out->id, seg[4], seglen[4]);
        out->id[seglen[4]] = '\0';
        out->kind = EG_ROUTE_WORKSPACE;
        return 0;
    }
    if (seg_is(seg[1], seglen[1], "workspaces")) {
        if (n == 2) {
            out->kind = EG_ROUTE_USER; /* create, list mine */
            return 0;
        }
        if (seglen[2] == 0)
            return 0;
        if (!valid_id(seg[2], seglen[2]))
            return UV_EINVAL;
        memcpy(out->id, seg[2], seglen[2]);
        out->id[seglen[2]] = '\0';
        out->kind = EG_ROUTE_WORKSPACE;
        return 0;
    }
    (void)method;
    return 0;
}

bool eg_route_hop_header(const char *name, size_t len, bool ws)
{
    static const char *const hop[] = {"connection",
                                      "keep-alive",
                                      "proxy-connection",
                                      "proxy-authorization",
                                      "proxy-authenticate",
                                      "te",
                                      "trailer",
                                      "transfer-encoding",
                                      "host",
                                      "content-length",
                                      "x-request-id",
                                      "meridian-edge",
                                      "x-forwarded-for",
                                      NULL};
    for (int i = 0; hop[i]; i++)
        if (strlen(hop[i]) == len && strncasecmp(hop[i], name, len) == 0)
            return true;
    if (len == 7 && strncasecmp(name, "upgrade", 7) == 0)
        return !ws;
    return false;
}
