/* ctl_http.c: one blocking HTTP/1.1 request to a region's API.
 *
 * core/httpc does the protocol (llhttp, timeouts) and core/dns the names,
 * on a private libuv loop that runs until the request completes. Using the
 * same client as the edge means the same parsing and limits; using c-ares
 * means --dns can name the world's own DNS server (the local world serves
 * <node>.meridian.local from dnsmasq, which the system resolver does not ask). */
#include "tools/meridianctl/ctl.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

#include "core/dns.h"
#include "core/httpc.h"

typedef struct {
    ctl_http_resp_t *resp;
    int err;
    bool done;
} call_t;

static void on_response(core_httpc_req_t *r, const core_httpc_resp_t *res, int err, void *ud)
{
    call_t *call = ud;
    (void)r;
    call->done = true;
    call->err = err;
    if (err == 0) {
        call->resp->status = res->status;
        core_buf_append(&call->resp->body, res->body ? res->body : "", res->body_len);
        for (size_t i = 0; i < res->nheaders; i++) {
            const core_http_header_t *h = &res->headers[i];
            if (h->name_len == 20 && strncasecmp(h->name, "Meridian-Home-Region", 20) == 0)
                snprintf(call->resp->home, sizeof call->resp->home, "%.*s", (int)h->value_len,
                         h->value);
        }
    }
}

/* Splits "http://host:port[/...]" (or [v6]:port). 0 or -1. */
static int parse_base(const char *base, char *host, size_t cap, int *port, char *prefix,
                      size_t pcap)
{
    if (strncmp(base, "http://", 7) != 0)
        return -1;
    const char *h = base + 7;
    const char *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    const char *colon = NULL;
    if (h[0] == '[') {
        const char *end = memchr(h, ']', hl);
        if (!end)
            return -1;
        snprintf(host, cap, "%.*s", (int)(end - h - 1), h + 1);
        colon = end + 1 < h + hl && end[1] == ':' ? end + 1 : NULL;
    } else {
        colon = memchr(h, ':', hl);
        snprintf(host, cap, "%.*s", (int)(colon ? (size_t)(colon - h) : hl), h);
    }
    *port = colon ? atoi(colon + 1) : 80;
    snprintf(prefix, pcap, "%.*s", slash ? (int)strlen(slash) : 0, slash ? slash : "");
    size_t pl = strlen(prefix);
    if (pl && prefix[pl - 1] == '/')
        prefix[pl - 1] = '\0';
    return *port > 0 && *port < 65536 && host[0] ? 0 : -1;
}

int ctl_http(const ctl_t *c, const char *base, const char *method, const char *path,
             const char *body, ctl_http_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    core_buf_init(&resp->body);
    char host[256], prefix[256];
    int port = 0;
    if (parse_base(base, host, sizeof host, &port, prefix, sizeof prefix) != 0) {
        snprintf(resp->err, sizeof resp->err,
                 "%s: not an http:// URL (meridianctl speaks plain HTTP to region APIs)", base);
        return UV_EINVAL;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct in6_addr a6;
    struct in_addr a4;
    bool literal = inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
    core_dns_t *dns = NULL;
    if (!literal) {
        core_dns_opts_t dopts = {.servers = c->dns, .timeout_ms = 2000, .tries = 2};
        dns = core_dns_new(&loop, &dopts);
        if (!dns) {
            snprintf(resp->err, sizeof resp->err, "cannot set up DNS resolution (--dns %s)",
                     c->dns ? c->dns : "from /etc/resolv.conf");
            uv_loop_close(&loop);
            return UV_EINVAL;
        }
    }
    core_httpc_opts_t o = {.host = host,
                           .port = port,
                           .dns = dns,
                           .connect_timeout_ms = 5000,
                           .response_timeout_ms = 30000,
                           .max_idle = 1,
                           .max_conns = 1,
                           .max_response_bytes = 64u << 20};
    core_httpc_t *pool = core_httpc_new(&loop, &o);
    core_buf_t msg;
    core_buf_init(&msg);
    size_t blen = body ? strlen(body) : 0;
    core_buf_appendf(&msg, "%s %s%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/json\r\n",
                     method, prefix, path, host, port);
    core_buf_puts(&msg, "User-Agent: meridianctl\r\n");
    if (c->token)
        core_buf_appendf(&msg, "Authorization: Bearer %s\r\n", c->token);
    if (body)
        core_buf_appendf(&msg, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
    core_buf_puts(&msg, "\r\n");
    if (body)
        core_buf_append(&msg, body, blen);
    call_t call = {.resp = resp};
    int rc = core_httpc_send(pool, &msg, 0, on_response, &call, NULL);
    if (rc == 0) {
        while (!call.done && uv_run(&loop, UV_RUN_ONCE))
            ;
        rc = call.done ? call.err : UV_EPIPE;
    }
    core_buf_free(&msg);
    core_httpc_free(pool);
    core_dns_free(dns);
    uv_run(&loop, UV_RUN_DEFAULT); /* lets every handle close */
    uv_loop_close(&loop);
    if (rc != 0)
        snprintf(resp->err, sizeof resp->err, "%s %s%s: %s", method, base, path, uv_strerror(rc));
    return rc;
}
