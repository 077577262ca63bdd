/* driver_dns_client: drives core/dns against a real DNS server (dnsmasq) for
 * tests/integration/dns_client.test.mjs.
 *
 * Reads one request per line on stdin, "<id> <op> [args...]", and writes one
 * JSON line per answer on stdout, {"id":N,...}. Ops:
 *   resolve <name>       -> core_dns_resolve: {"err":null|"EAI_NONAME",...,"addrs":[...],"ttl":N}
 *   cached <name>        -> core_dns_lookup_cached, same shape plus "cached":bool
 *   burst <n> <name>     -> n concurrent cached lookups -> {"n":n,"ok":n,"queries":N}
 *   cancel <name>        -> a second resolver, a resolve and a cached lookup on it, then
 *                           core_dns_free twice -> {"errs":[...],"sync":bool}
 *   metrics              -> {"queries":N,"hits":N,"misses":N,"errors":N}
 * A callback that runs twice aborts the driver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "core/buf.h"
#include "core/core.h"
#include "core/dns.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"

static uv_loop_t *loop;
static core_dns_t *dns;
static core_dns_opts_t opts = {.name = "drv"};
static uv_pipe_t in;
static core_buf_t line;

static void **kept;
static size_t nkept;

/* Request records live until exit so that a second callback is caught, not a use-after-free. */
static void *keep(void *p)
{
    kept = core_xrealloc(kept, (nkept + 1) * sizeof *kept);
    kept[nkept++] = p;
    return p;
}

typedef struct {
    long id;
    uint64_t t0;
    int calls;
    bool cached_op;
    /* burst */
    int n, got, ok;
    double queries0;
    /* cancel */
    int errs[2];
    int nerrs;
    bool in_call;
    bool sync;
} req_t;

static void emit(core_buf_t *b)
{
    core_buf_putc(b, '\n');
    fwrite(b->base, 1, b->len, stdout);
    fflush(stdout);
    core_buf_free(b);
}

static void begin(core_buf_t *b, core_jw_t *w, long id)
{
    core_buf_init(b);
    core_jw_init(w, b);
    core_jw_obj_open(w);
    core_jw_key(w, "id");
    core_jw_int(w, id);
}

static double metric(const char *name)
{
    char labels[64];
    snprintf(labels, sizeof labels, "resolver=\"%s\"", opts.name);
    return core_metrics_value(core_metrics_counter(name, "", labels));
}

static void once(req_t *q)
{
    if (++q->calls > 1) {
        fprintf(stderr, "driver: callback for request %ld ran twice\n", q->id);
        abort();
    }
}

static void on_result(const core_dns_result_t *res, int err, void *ud)
{
    req_t *q = ud;
    once(q);
    if ((res == NULL) != (err != 0)) {
        fprintf(stderr, "driver: result/err mismatch for request %ld\n", q->id);
        abort();
    }
    core_buf_t b;
    core_jw_t w;
    begin(&b, &w, q->id);
    core_jw_key(&w, "err");
    if (err)
        core_jw_str(&w, uv_err_name(err));
    else
        core_jw_null(&w);
    core_jw_key(&w, "ms");
    core_jw_int(&w, (int64_t)(core_now_ms() - q->t0));
    if (res) {
        core_jw_key(&w, "ttl");
        core_jw_int(&w, res->ttl_s);
        core_jw_key(&w, "cached");
        core_jw_bool(&w, res->from_cache);
        core_jw_key(&w, "age_ms");
        core_jw_int(&w, res->age_ms);
        core_jw_key(&w, "addrs");
        core_jw_arr_open(&w);
        for (size_t i = 0; i < res->naddrs; i++) {
            char ip[64];
            core_jw_obj_open(&w);
            core_jw_key(&w, "ip");
            core_jw_str(&w, core_dns_addr_format(&res->addrs[i], ip, sizeof ip));
            core_jw_key(&w, "family");
            core_jw_int(&w, res->addrs[i].family == AF_INET6 ? 6 : 4);
            core_jw_key(&w, "ttl");
            core_jw_int(&w, res->addrs[i].ttl_s);
            core_jw_obj_close(&w);
        }
        core_jw_arr_close(&w);
    }
    core_jw_obj_close(&w);
    emit(&b);
}

typedef struct {
    req_t *q;
    int calls;
} slot_t;

static void on_burst(const core_dns_result_t *res, int err, void *ud)
{
    slot_t *s = ud;
    req_t *q = s->q;
    if (++s->calls > 1) {
        fprintf(stderr, "driver: burst callback ran twice\n");
        abort();
    }
    q->got++;
    if (!err && res && res->naddrs > 0)
        q->ok++;
    if (q->got == q->n) {
        core_buf_t b;
        core_jw_t w;
        begin(&b, &w, q->id);
        core_jw_key(&w, "n");
        core_jw_int(&w, q->n);
        core_jw_key(&w, "ok");
        core_jw_int(&w, q->ok);
        core_jw_key(&w, "queries");
        core_jw_int(&w, (int64_t)(metric("meridian_dns_queries_total") - q->queries0));
        core_jw_obj_close(&w);
        emit(&b);
    }
}

typedef struct {
    req_t *q;
    int calls;
} cslot_t;

static void on_cancel(const core_dns_result_t *res, int err, void *ud)
{
    cslot_t *s = ud;
    if (++s->calls > 1) {
        fprintf(stderr, "driver: cancel callback ran twice\n");
        abort();
    }
    req_t *q = s->q;
    if (q->in_call)
        q->sync = true;
    q->errs[q->nerrs++] = err;
}

static void error_reply(long id, int err)
{
    core_buf_t b;
    core_jw_t w;
    begin(&b, &w, id);
    core_jw_key(&w, "err");
    core_jw_str(&w, uv_err_name(err));
    core_jw_key(&w, "submit");
    core_jw_bool(&w, true);
    core_jw_obj_close(&w);
    emit(&b);
}

static void handle(char *s)
{
    char *save = NULL;
    char *tok[8];
    int n = 0;
    for (char *t = strtok_r(s, " ", &save); t && n < 8; t = strtok_r(NULL, " ", &save))
        tok[n++] = t;
    if (n < 2)
        return;
    long id = strtol(tok[0], NULL, 10);
    const char *op = tok[1];
    req_t *q = keep(core_xcalloc(1, sizeof *q));
    q->id = id;
    q->t0 = core_now_ms();
    if ((strcmp(op, "resolve") == 0 || strcmp(op, "cached") == 0) && n >= 3) {
        q->in_call = true;
        int err = op[0] == 'r' ? core_dns_resolve(dns, tok[2], on_result, q)
                               : core_dns_lookup_cached(dns, tok[2], on_result, q);
        q->in_call = false;
        if (q->calls) {
            fprintf(stderr, "driver: callback ran from inside the call\n");
            abort();
        }
        if (err)
            error_reply(id, err);
    } else if (strcmp(op, "burst") == 0 && n >= 4) {
        q->n = atoi(tok[2]);
        q->queries0 = metric("meridian_dns_queries_total");
        slot_t *slots = keep(core_xcalloc((size_t)q->n, sizeof *slots));
        for (int i = 0; i < q->n; i++) {
            slots[i].q = q;
            int err = core_dns_lookup_cached(dns, tok[3], on_burst, &slots[i]);
            if (err) {
                error_reply(id, err);
                return;
            }
        }
    } else if (strcmp(op, "cancel") == 0 && n >= 3) {
        core_dns_t *d2 = core_dns_new(loop, &opts);
        cslot_t *slots = keep(core_xcalloc(2, sizeof *slots));
        slots[0].q = slots[1].q = q;
        int e1 = core_dns_resolve(d2, tok[2], on_cancel, &slots[0]);
        int e2 = core_dns_lookup_cached(d2, tok[2], on_cancel, &slots[1]);
        q->in_call = true; /* callbacks from inside core_dns_free are expected here */
        core_dns_free(d2);
        core_dns_free(d2); /* safe twice */
        q->in_call = false;
        core_buf_t b;
        core_jw_t w;
        begin(&b, &w, id);
        core_jw_key(&w, "submit");
        core_jw_arr_open(&w);
        core_jw_int(&w, e1);
        core_jw_int(&w, e2);
        core_jw_arr_close(&w);
        core_jw_key(&w, "errs");
        core_jw_arr_open(&w);
        for (int i = 0; i < q->nerrs; i++)
            core_jw_str(&w, uv_err_name(q->errs[i]));
        core_jw_arr_close(&w);
        core_jw_obj_close(&w);
        emit(&b);
    } else if (strcmp(op, "metrics") == 0) {
        core_buf_t b;
        core_jw_t w;
        begin(&b, &w, id);
        core_jw_key(&w, "queries");
        core_jw_int(&w, (int64_t)metric("meridian_dns_queries_total"));
        core_jw_key(&w, "hits");
        core_jw_int(&w, (int64_t)metric("meridian_dns_cache_hits_total"));
        core_jw_key(&w, "misses");
        core_jw_int(&w, (int64_t)metric("meridian_dns_cache_misses_total"));
        core_jw_key(&w, "errors");
        core_jw_int(&w, (int64_t)metric("meridian_dns_errors_total"));
        core_jw_obj_close(&w);
        emit(&b);
    } else {
        error_reply(id, UV_EINVAL);
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char slab[65536];
    buf->base = slab;
    buf->len = sizeof slab;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    if (nread < 0) {
        uv_close((uv_handle_t *)s, NULL);
        core_dns_free(dns);
        return; /* the loop ends once the resolver's handles are closed */
    }
    core_buf_append(&line, buf->base, (size_t)nread);
    for (;;) {
        char *nl = line.base ? memchr(line.base, '\n', line.len) : NULL;
        if (!nl)
            break;
        size_t n = (size_t)(nl - line.base);
        char *one = core_xstrndup(line.base, n);
        core_buf_consume(&line, n + 1);
        handle(one);
        free(one);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--servers") == 0)
            opts.servers = v;
        else if (strcmp(k, "--timeout") == 0)
            opts.timeout_ms = (unsigned)atoi(v);
        else if (strcmp(k, "--tries") == 0)
            opts.tries = (unsigned)atoi(v);
        else {
            fprintf(stderr, "usage: %s [--servers H:P,...] [--timeout MS] [--tries N]\n", argv[0]);
            return 2;
        }
    }
    core_init();
    core_log_init("driver_dns", "-", CORE_LOG_INFO);
    core_metrics_init(1);
    loop = uv_default_loop();
    dns = core_dns_new(loop, &opts);
    if (!dns)
        return 1;
    uv_pipe_init(loop, &in, 0);
    uv_pipe_open(&in, 0);
    uv_read_start((uv_stream_t *)&in, on_alloc, on_read);
    uv_run(loop, UV_RUN_DEFAULT);
    core_buf_free(&line);
    for (size_t i = 0; i < nkept; i++)
        free(kept[i]);
    free(kept);
    return uv_loop_close(loop) == 0 ? 0 : 3;
}
