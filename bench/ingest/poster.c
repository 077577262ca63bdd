/* poster: the ingest benchmark's client. It keeps N keep-alive connections
 * to a region node, each posting one message at a time (a new one as soon as
 * the last is acknowledged), for a fixed time, and prints one JSON object:
 * throughput, status counts and acknowledgement latency percentiles.
 *
 *   bench_poster --host 127.0.0.1 --port 17010 --conns 64 --duration 10 \
 *                --targets FILE [--text-bytes 200] [--warmup 2]
 *
 * FILE has one line per target: "<bearer token> <path>"; connection i posts
 * to target i % lines, so several users and channels can share the load.
 * Responses are parsed with llhttp; 201 counts as acknowledged. */
#include "core/core.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>
#include <sodium.h>
#include <uv.h>

typedef struct {
    char *token;
    char *path;
} target_t;

typedef struct conn_s {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t wreq;
    llhttp_t parser;
    int index;
    const target_t *target;
    char *req; /* the request being sent */
    size_t req_len;
    size_t req_cap; /* reused for the next request */
    uint64_t sent_ns;
    uint64_t seq;
    int status;
    bool done;
} conn_t;

static struct {
    const char *host;
    int port;
    int conns;
    double duration_s;
    double warmup_s;
    size_t text_bytes;
    target_t *targets;
    int ntargets;
    uv_loop_t *loop;
    uint64_t start_ns, measure_ns, end_ns;
    uint64_t *lat_us; /* latencies of acknowledged posts in the measured window */
    size_t nlat, caplat;
    uint64_t ok, other[6], errors;
    char *text;
    uint32_t run; /* in every client_msg_id: a later run's posts are new, not retries */
    int open;
    llhttp_settings_t settings;
} G;

static void send_next(conn_t *c);

static void record(conn_t *c)
{
    uint64_t now = core_now_ns();
    if (now < G.measure_ns)
        return;
    if (c->status == 201) {
        G.ok++;
        if (G.nlat == G.caplat) {
            G.caplat = G.caplat ? G.caplat * 2 : 65536;
            G.lat_us = core_xrealloc(G.lat_us, G.caplat * sizeof *G.lat_us);
        }
        G.lat_us[G.nlat++] = (now - c->sent_ns) / 1000;
    } else {
        int cls = c->status / 100;
        G.other[cls >= 0 && cls <= 5 ? cls : 0]++;
    }
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    c->status = p->status_code;
    record(c);
    send_next(c);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[65536];
    *buf = uv_buf_init(slab, sizeof slab);
}

static void on_closed(uv_handle_t *h)
{
    G.open--;
}

static void finish(conn_t *c)
{
    if (c->done)
        return;
    c->done = true;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (n < 0) {
        if (!c->done)
            G.errors++;
        finish(c);
        return;
    }
    if (llhttp_execute(&c->parser, buf->base, (size_t)n) != HPE_OK) {
        G.errors++;
        finish(c);
    }
}

static void on_write(uv_write_t *w, int status)
{
    if (status < 0) {
        G.errors++;
        finish(w->data);
    }
}

static void send_next(conn_t *c)
{
    if (c->done)
        return;
    if (core_now_ns() >= G.end_ns) {
        finish(c);
        return;
    }
    char body[128 + 65536];
    int blen = snprintf(body, sizeof body, "{\"text\":\"%s\",\"client_msg_id\":\"b%08x-%d-%llu\"}",
                        G.text, G.run, c->index, (unsigned long long)++c->seq);
    char head[2048];
    int hlen = snprintf(head, sizeof head,
                        "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
                        c->target->path, G.host, c->target->token, blen);
    c->req_len = (size_t)hlen + (size_t)blen;
    if (c->req_len > c->req_cap) {
        c->req_cap = c->req_len;
        c->req = core_xrealloc(c->req, c->req_cap);
    }
    memcpy(c->req, head, (size_t)hlen);
    memcpy(c->req + hlen, body, (size_t)blen);
    uv_buf_t b = uv_buf_init(c->req, (unsigned)c->req_len);
    c->wreq.data = c;
    c->sent_ns = core_now_ns();
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        G.errors++;
        finish(c);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0) {
        fprintf(stderr, "poster: connect: %s\n", uv_strerror(status));
        G.errors++;
        finish(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    send_next(c);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (!G.nlat)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)(G.nlat - 1) + 0.5);
    return (double)G.lat_us[i] / 1000.0;
}

static int load_targets(const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        fprintf(stderr, "poster: %s: %s\n", file, strerror(errno));
        return -1;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char *tok = strtok(line, " \t\r\n");
        char *path = strtok(NULL, " \t\r\n");
        if (!tok || !path)
            continue;
        G.targets = core_xrealloc(G.targets, (size_t)(G.ntargets + 1) * sizeof *G.targets);
        G.targets[G.ntargets].token = core_xstrdup(tok);
        G.targets[G.ntargets].path = core_xstrdup(path);
        G.ntargets++;
    }
    fclose(f);
    return G.ntargets ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", required_argument, NULL, 'H'},       {"port", required_argument, NULL, 'p'},
        {"conns", required_argument, NULL, 'c'},      {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},     {"targets", required_argument, NULL, 't'},
        {"text-bytes", required_argument, NULL, 'b'}, {NULL, 0, NULL, 0},
    };
    G.host = "127.0.0.1";
    G.conns = 64;
    G.duration_s = 10;
    G.warmup_s = 2;
    G.text_bytes = 200;
    const char *targets = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            G.host = optarg;
            break;
        case 'p':
            G.port = atoi(optarg);
            break;
        case 'c':
            G.conns = atoi(optarg);
            break;
        case 'd':
            G.duration_s = atof(optarg);
            break;
        case 'w':
            G.warmup_s = atof(optarg);
            break;
        case 't':
            targets = optarg;
            break;
        case 'b':
            G.text_bytes = (size_t)atol(optarg);
            break;
        default:
            return 2;
        }
    }
    if (!targets || G.port <= 0 || G.conns <= 0 || G.text_bytes > 60000 || load_targets(targets)) {
        fprintf(stderr, "usage: bench_poster --port P --targets FILE [--host H] [--conns N] "
                        "[--duration S] [--warmup S] [--text-bytes N]\n");
        return 2;
    }
    core_init();
    G.run = randombytes_random();
    G.text = core_xmalloc(G.text_bytes + 1);
    for (size_t i = 0; i < G.text_bytes; i++)
        G.text[i] = "abcdefghij klmnopqrst uvwxyz"[i % 28];
    G.text[G.text_bytes] = '\0';
    llhttp_settings_init(&G.settings);
    G.settings.on_message_complete = on_message_complete;
    G.loop = uv_default_loop();
    struct sockaddr_in addr;
    uv_ip4_addr(G.host, G.port, &addr);
    G.start_ns = core_now_ns();
    G.measure_ns = G.start_ns + (uint64_t)(G.warmup_s * 1e9);
    G.end_ns = G.measure_ns + (uint64_t)(G.duration_s * 1e9);
    conn_t *conns = core_xcalloc((size_t)G.conns, sizeof *conns);
    for (int i = 0; i < G.conns; i++) {
        conn_t *c = &conns[i];
        c->index = i;
        c->target = &G.targets[i % G.ntargets];
        llhttp_init(&c->parser, HTTP_RESPONSE, &G.settings);
        c->parser.data = c;
        uv_tcp_init(G.loop, &c->tcp);
        c->tcp.data = c;
        c->connect.data = c;
        G.open++;
        uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&addr, on_connect);
    }
    uv_run(G.loop, UV_RUN_DEFAULT);
    double secs = (double)(core_now_ns() - G.measure_ns) / 1e9;
    if (secs > G.duration_s)
        secs = G.duration_s;
    qsort(G.lat_us, G.nlat, sizeof *G.lat_us, cmp_u64);
    printf("{\"conns\":%d,\"duration_s\":%.2f,\"acknowledged\":%llu,\"messages_per_s\":%.1f,"
           "\"status\":{\"2xx_other\":%llu,\"4xx\":%llu,\"5xx\":%llu},\"errors\":%llu,"
           "\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}}\n",
           G.conns, secs, (unsigned long long)G.ok, (double)G.ok / secs,
           (unsigned long long)G.other[2], (unsigned long long)G.other[4],
           (unsigned long long)G.other[5], (unsigned long long)G.errors, pct(50), pct(90), pct(99),
           G.nlat ? (double)G.lat_us[G.nlat - 1] / 1000.0 : 0);
    for (int i = 0; i < G.conns; i++)
        free(conns[i].req);
    free(conns);
    return 0;
}
