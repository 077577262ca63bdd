/* main.c: meridian-loadgen's options, pacing, control and reports.
 *
 *   meridian-loadgen --port P [--host H] [--source 127.0.0.2 ...] --clients N
 *       [--proto meridian|socketio] [--tokens FILE] [--path P] [--auth subprotocol|header|query]
 *       [--duration S] [--connect-rate R] [--max-inflight N] [--handshake-timeout-ms MS]
 *       [--backoff-base-ms MS] [--backoff-cap-ms MS] [--no-jitter] [--no-reconnect] [--no-resume]
 *       [--post-rate R --post-targets FILE [--post-conns N] [--text-bytes N]]
 *       [--stats-interval-ms MS] [--timeline-ms MS]
 *
 * --tokens: one line per target, "TOKEN [PATH]" (PATH overrides --path);
 * client i uses line i % lines. For socketio a line may be "- PATH".
 * --post-targets: meridian "TOKEN PATH" (REST POST of a message to PATH);
 * socketio "ROOM" (a "post" event to that room). Posts go round-robin.
 *
 * Output: one JSON object on stdout at the end. While running, a line
 * "mark [label]" on stdin prints a JSON line on stdout with the figures since
 * the previous mark (a benchmark steps its load between marks); "mark storm"
 * also starts the recovery clock (time until every client is connected
 * again after the next disconnects); "cursors" prints every stream's cursor
 * sums (as in the final report) without stopping; "stop"
 * ends the run, "rate R" sets the post rate (posts/s, from now); periodic one-line JSON snapshots
 * go to stderr when
 * --stats-interval-ms is set. SIGINT/SIGTERM end the run like "stop". */
#include "tools/loadgen/loadgen.h"

#include "core/core.h"
#include "core/map.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

lg_t G;

uint64_t lg_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void stats_reset(lg_stats_t *s)
{
    s->events = s->timed = s->gaps = s->duplicates = s->connects = 0;
    s->posts_ok = s->posts_failed = s->posts_skipped = 0;
    lg_hist_reset(&s->lat);
    lg_hist_reset(&s->post_lat);
    lg_hist_reset(&s->connect_lat);
}

static void codes_json(core_buf_t *b, const int *codes, const uint64_t *counts, int n)
{
    core_buf_putc(b, '{');
    for (int i = 0; i < n; i++)
        core_buf_appendf(b, "%s\"%d\":%llu", i ? "," : "", codes[i], (unsigned long long)counts[i]);
    core_buf_putc(b, '}');
}

/* The figures of one stats block (a window or the whole run). */
static void stats_json(core_buf_t *b, const lg_stats_t *s, double secs, bool sparse)
{
    core_buf_appendf(b,
                     "\"seconds\":%.3f,\"events\":%llu,\"deliveries_per_s\":%.1f,\"timed\":%llu,"
                     "\"gaps\":%llu,\"duplicates\":%llu,\"connects\":%llu,\"connects_per_s\":%.1f,"
                     "\"posts_ok\":%llu,\"posts_failed\":%llu,\"posts_skipped\":%llu,"
                     "\"posts_per_s\":%.1f,\"latency_ms\":",
                     secs, (unsigned long long)s->events, secs > 0 ? (double)s->events / secs : 0.0,
                     (unsigned long long)s->timed, (unsigned long long)s->gaps,
                     (unsigned long long)s->duplicates, (unsigned long long)s->connects,
                     secs > 0 ? (double)s->connects / secs : 0.0, (unsigned long long)s->posts_ok,
                     (unsigned long long)s->posts_failed, (unsigned long long)s->posts_skipped,
                     secs > 0 ? (double)s->posts_ok / secs : 0.0);
    lg_hist_json(&s->lat, b);
    core_buf_puts(b, ",\"post_ack_ms\":");
    lg_hist_json(&s->post_lat, b);
    core_buf_puts(b, ",\"connect_ms\":");
    lg_hist_json(&s->connect_lat, b);
    if (sparse) {
        core_buf_puts(b, ",\"latency_hist_us\":");
        lg_hist_sparse_json(&s->lat, b);
    }
}

static uint64_t unix_ms_of(uint64_t mono_ms)
{
    return mono_ms ? G.start_unix_ms + (mono_ms - G.start_ms) : 0;
}

static void opt_u64(core_buf_t *b, const char *key, uint64_t v)
{
    if (v)
        core_buf_appendf(b, ",\"%s\":%llu", key, (unsigned long long)v);
    else
        core_buf_appendf(b, ",\"%s\":null", key);
}

/* The storm's recovery: instants in unix ms (several processes are merged by
 * the latest), and durations from the mark (else the first drop). */
static void storm_json(core_buf_t *b)
{
    core_buf_appendf(b, "\"storm\":{\"armed\":%s,\"min_connected\":%u",
                     G.storm_armed ? "true" : "false",
                     G.storm_armed ? G.min_connected : G.connected);
    opt_u64(b, "mark_unix_ms", unix_ms_of(G.storm_mark_ms));
    opt_u64(b, "first_drop_unix_ms", unix_ms_of(G.first_drop_ms));
    opt_u64(b, "recovered_unix_ms", unix_ms_of(G.recovered_ms));
    uint64_t from = G.storm_mark_ms ? G.storm_mark_ms : G.first_drop_ms;
    opt_u64(b, "recovery_ms", G.recovered_ms && from ? G.recovered_ms - from : 0);
    opt_u64(b, "recovery_from_drop_ms",
            G.recovered_ms && G.first_drop_ms ? G.recovered_ms - G.first_drop_ms : 0);
    core_buf_putc(b, '}');
}

static void common_json(core_buf_t *b, uint64_t now)
{
    core_buf_appendf(b,
                     "\"t_ms\":%llu,\"clients\":%u,\"connected\":%u,\"inflight\":%u,"
                     "\"waiting\":%u,\"reconnects\":%llu,\"tcp_errors\":%llu,"
                     "\"handshake_timeouts\":%llu,\"protocol_errors\":%llu,\"resyncs\":%llu,"
                     "\"reconnect_hints\":%llu,\"other_messages\":%llu,\"closes\":",
                     (unsigned long long)(now - G.start_ms), G.clients, G.connected, G.inflight,
                     G.heap_len, (unsigned long long)G.reconnects, (unsigned long long)G.tcp_errors,
                     (unsigned long long)G.hs_timeouts, (unsigned long long)G.proto_errors,
                     (unsigned long long)G.resyncs, (unsigned long long)G.hints,
                     (unsigned long long)G.other_msgs);
    codes_json(b, G.close_codes, G.close_counts, G.ncodes);
    core_buf_puts(b, ",\"handshake_status\":");
    codes_json(b, G.hs_status, G.hs_status_counts, G.nstatus);
    core_buf_appendf(b,
                     ",\"shed\":%llu,\"unavailable\":%llu,\"hint_waits\":%llu,"
                     "\"resync_skipped\":%llu,",
                     (unsigned long long)G.shed, (unsigned long long)G.unavailable,
                     (unsigned long long)G.hint_waits, (unsigned long long)G.resync_skipped);
    storm_json(b);
}

static void timeline_json(core_buf_t *b)
{
    static const char *names[LG_TL_KINDS] = {"connects", "shed", "failed", "attempts", "drops"};
    /* Trailing empty buckets carry nothing: the run's last event ends it. */
    size_t len = G.tl_len;
    while (len > 0) {
        bool any = false;
        for (int k = 0; k < LG_TL_KINDS; k++)
            any = any || G.tl[k][len - 1];
        if (any)
            break;
        len--;
    }
    core_buf_appendf(b, "\"timeline\":{\"bucket_ms\":%u,\"origin_unix_ms\":%llu", G.timeline_ms,
                     (unsigned long long)G.tl_origin_unix_ms);
    for (int k = 0; k < LG_TL_KINDS; k++) {
        core_buf_appendf(b, ",\"%s\":[", names[k]);
        for (size_t i = 0; i < len; i++)
            core_buf_appendf(b, "%s%u", i ? "," : "", G.tl[k][i]);
        core_buf_putc(b, ']');
    }
    core_buf_putc(b, '}');
}

/* Where each stream's clients stand at the end: per path (a workspace's
 * stream), how many clients, their lowest and highest cursor and the sum of
 * cursors. Whoever knows the workspace's head seq sees from these whether
 * every client received every event: n * head - sum is what is missing at
 * the tail, which seq gaps cannot show. */
typedef struct {
    uint64_t n, none, sum;
    int64_t min, max;
} cursor_sum_t;

static void stream_entry(const char *key, void *val, void *ud)
{
    core_buf_t *b = ud;
    cursor_sum_t *cs = val;
    bool first = b->len && b->base[b->len - 1] == '[';
    core_buf_appendf(b, "%s{\"path\":\"", first ? "" : ",");
    for (const char *p = key; *p; p++)
        if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
            core_buf_putc(b, *p);
    core_buf_appendf(
        b, "\",\"clients\":%llu,\"no_cursor\":%llu,\"min\":%lld,\"max\":%lld,\"sum\":%llu}",
        (unsigned long long)cs->n, (unsigned long long)cs->none, (long long)cs->min,
        (long long)cs->max, (unsigned long long)cs->sum);
}

static void streams_json(core_buf_t *b)
{
    core_map_t *m = core_map_new();
    for (uint32_t i = 0; i < G.clients; i++) {
        const lg_conn_t *c = &G.conns[i];
        const lg_target_t *t = &G.targets[c->index % G.ntargets];
        const char *path = t->path ? t->path : G.default_path;
        cursor_sum_t *cs = core_map_get(m, path);
        if (!cs) {
            cs = core_xcalloc(1, sizeof *cs);
            cs->min = INT64_MAX;
            cs->max = -1;
            core_map_put(m, path, cs);
        }
        cs->n++;
        if (c->cursor < 0) {
            cs->none++;
            continue;
        }
        cs->sum += (uint64_t)c->cursor;
        cs->min = c->cursor < cs->min ? c->cursor : cs->min;
        cs->max = c->cursor > cs->max ? c->cursor : cs->max;
    }
    core_buf_puts(b, "\"streams\":[");
    core_map_each(m, stream_entry, b);
    core_buf_putc(b, ']');
    core_map_free(m, free);
}

static void print_mark(const char *label)
{
    uint64_t now = core_now_ms();
    core_buf_t b;
    core_buf_init(&b);
    core_buf_puts(&b, "{\"mark\":\"");
    for (const char *p = label; *p; p++)
        if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
            core_buf_putc(&b, *p);
    core_buf_puts(&b, "\",");
    common_json(&b, now);
    core_buf_putc(&b, ',');
    stats_json(&b, &G.window, (double)(now - G.window_start_ms) / 1000.0, true);
    core_buf_puts(&b, "}\n");
    fwrite(b.base, 1, b.len, stdout);
    fflush(stdout);
    core_buf_free(&b);
    stats_reset(&G.window);
    G.window_start_ms = now;
}

static void print_final(void)
{
    uint64_t now = core_now_ms();
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b, "{\"proto\":\"%s\",\"time_to_all_connected_ms\":",
                     G.proto == LG_PROTO_SOCKETIO ? "socketio" : "meridian");
    if (G.all_connected_ms)
        core_buf_appendf(&b, "%llu", (unsigned long long)(G.all_connected_ms - G.start_ms));
    else
        core_buf_puts(&b, "null");
    core_buf_putc(&b, ',');
    common_json(&b, now);
    core_buf_putc(&b, ',');
    stats_json(&b, &G.total, (double)(now - G.start_ms) / 1000.0, true);
    core_buf_puts(&b, ",\"connects_timeline\":[");
    for (size_t i = 0; i < G.connects_per_s_len; i++)
        core_buf_appendf(&b, "%s%llu", i ? "," : "", (unsigned long long)G.connects_per_s[i]);
    core_buf_puts(&b, "],");
    timeline_json(&b);
    if (G.proto == LG_PROTO_MERIDIAN && G.clients) {
        core_buf_putc(&b, ',');
        streams_json(&b);
    }
    core_buf_puts(&b, "}\n");
    fwrite(b.base, 1, b.len, stdout);
    fflush(stdout);
    core_buf_free(&b);
}

/* ---- running and stopping ---- */

static void on_handle_closed(uv_handle_t *h) {}

static void finish(void)
{
    lg_poster_stop();
    uv_timer_stop(&G.tick);
    uv_close((uv_handle_t *)&G.tick, on_handle_closed);
    if (G.stats_interval_ms)
        uv_close((uv_handle_t *)&G.stats_timer, on_handle_closed);
    uv_close((uv_handle_t *)&G.sigint, on_handle_closed);
    uv_close((uv_handle_t *)&G.sigterm, on_handle_closed);
    if (G.ctl_open) {
        G.ctl_open = false;
        uv_close((uv_handle_t *)&G.ctl, on_handle_closed);
    }
}

static void begin_stop(void)
{
    if (G.stopping)
        return;
    G.stopping = true;
    G.stop_deadline_ms = core_now_ms() + 2000;
    lg_poster_stop();
    /* Waiting clients will not connect again. */
    for (uint32_t i = 0; i < G.heap_len; i++)
        G.heap[i]->heap_pos = -1;
    G.heap_len = 0;
    for (uint32_t i = 0; i < G.nconns; i++)
        lg_conn_stop(&G.conns[i]);
}

static void on_tick(uv_timer_t *t)
{
    uint64_t now = core_now_ms();
    static uint64_t last_sweep;
    if (G.stopping) {
        lg_sweep_handshakes(now);
        if (G.open_handles == 0 && lg_poster_idle())
            finish();
        return;
    }
    if (G.duration_s > 0 && now - G.start_ms >= (uint64_t)(G.duration_s * 1000)) {
        begin_stop();
        return;
    }
    /* Connects: due ones, at most max_inflight handshakes at a time, paced by
     * a token bucket when a rate is set. */
    if (G.connect_rate > 0) {
        G.rate_tokens += (double)(now - G.rate_last_ms) * G.connect_rate / 1000.0;
        double burst = G.connect_rate / 50 + 1; /* 20 ms worth */
        if (G.rate_tokens > burst)
            G.rate_tokens = burst;
    }
    G.rate_last_ms = now;
    for (lg_conn_t *c; (c = lg_heap_top()) && c->due_ms <= now && G.inflight < G.max_inflight;) {
        if (G.connect_rate > 0) {
            if (G.rate_tokens < 1)
                break;
            G.rate_tokens -= 1;
        }
        lg_heap_pop();
        lg_conn_start(c);
    }
    lg_poster_tick(now);
    if (now - last_sweep >= 250) {
        last_sweep = now;
        lg_sweep_handshakes(now);
    }
}

static void on_stats(uv_timer_t *t)
{
    uint64_t now = core_now_ms();
    core_buf_t b;
    core_buf_init(&b);
    core_buf_putc(&b, '{');
    common_json(&b, now);
    core_buf_appendf(&b,
                     ",\"events\":%llu,\"timed\":%llu,\"gaps\":%llu,\"duplicates\":%llu,"
                     "\"posts_ok\":%llu,\"connects\":%llu}\n",
                     (unsigned long long)G.total.events, (unsigned long long)G.total.timed,
                     (unsigned long long)G.total.gaps, (unsigned long long)G.total.duplicates,
                     (unsigned long long)G.total.posts_ok, (unsigned long long)G.total.connects);
    fwrite(b.base, 1, b.len, stderr);
    core_buf_free(&b);
}

static void on_signal(uv_signal_t *s, int signum)
{
    begin_stop();
}

/* "cursors": where every stream's clients stand now, without stopping (a
 * benchmark compares them with the heads before and after waiting, to tell
 * a slow delivery from a lost one). */
static void print_cursors(void)
{
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b, "{\"cursors\":true,\"connected\":%u,", G.connected);
    streams_json(&b);
    core_buf_puts(&b, "}\n");
    fwrite(b.base, 1, b.len, stdout);
    fflush(stdout);
    core_buf_free(&b);
}

/* "mark storm": the recovery clock starts now (a later mark restarts it). */
static void arm_storm(void)
{
    uint64_t now = core_now_ms();
    G.storm_armed = true;
    G.storm_mark_ms = now;
    G.recovered_ms = 0;
    G.min_connected = G.connected;
    G.first_drop_ms = G.connected < G.clients ? now : 0;
}

static void on_ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char b[4096];
    *buf = uv_buf_init(b, sizeof b);
}

static void on_ctl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n < 0) {
        /* stdin closed: the controller went away; keep running to the end
         * of --duration (or a signal). */
        if (G.ctl_open) {
            G.ctl_open = false;
            uv_close((uv_handle_t *)&G.ctl, on_handle_closed);
        }
        return;
    }
    core_buf_append(&G.ctl_buf, buf->base, (size_t)n);
    for (;;) {
        char *nl = memchr(G.ctl_buf.base, '\n', G.ctl_buf.len);
        if (!nl)
            break;
        *nl = '\0';
        char *line = G.ctl_buf.base;
        if (strncmp(line, "mark", 4) == 0) {
            const char *label = line[4] == ' ' ? line + 5 : "";
            if (strcmp(label, "storm") == 0)
                arm_storm();
            print_mark(label);
        } else if (strcmp(line, "cursors") == 0)
            print_cursors();
        else if (strcmp(line, "stop") == 0)
            begin_stop();
        else if (strncmp(line, "rate ", 5) == 0)
            lg_poster_set_rate(atof(line + 5));
        core_buf_consume(&G.ctl_buf, (size_t)(nl - G.ctl_buf.base) + 1);
    }
}

/* ---- options ---- */

static int load_targets(const char *file, lg_target_t **out, uint32_t *n, bool two_fields)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        fprintf(stderr, "loadgen: %s: %s\n", file, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        char *a = strtok(line, " \t\r\n");
        char *b = strtok(NULL, " \t\r\n");
        if (!a)
            continue;
        *out = core_xrealloc(*out, (size_t)(*n + 1) * sizeof **out);
        lg_target_t *t = &(*out)[(*n)++];
        if (two_fields) {
            t->token = strcmp(a, "-") == 0 ? NULL : core_xstrdup(a);
            t->path = b ? core_xstrdup(b) : NULL;
        } else {
            t->token = NULL;
            t->path = core_xstrdup(a);
        }
    }
    free(line);
    fclose(f);
    if (!*n) {
        fprintf(stderr, "loadgen: %s: no targets\n", file);
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: meridian-loadgen --port P [--host H] [--source ADDR]... [--clients N]\n"
            "  [--proto meridian|socketio] [--tokens FILE] [--path PATH]\n"
            "  [--auth subprotocol|header|query] [--duration S] [--connect-rate R]\n"
            "  [--max-inflight N] [--handshake-timeout-ms MS] [--backoff-base-ms MS]\n"
            "  [--backoff-cap-ms MS] [--no-jitter] [--no-reconnect] [--no-resume]\n"
            "  [--post-rate R --post-targets FILE [--post-conns N] [--text-bytes N]]\n"
            "  [--stats-interval-ms MS] [--timeline-ms MS]\n"
            "stdin: \"mark [label]\" prints the figures since the last mark (\"mark storm\"\n"
            "  also starts the recovery clock); \"cursors\" prints the streams' cursor sums;\n"
            "  \"rate R\" sets posts/s; \"stop\" ends.\n");
}

int main(int argc, char **argv)
{
    enum {
        O_HOST = 256,
        O_PORT,
        O_SOURCE,
        O_CLIENTS,
        O_PROTO,
        O_TOKENS,
        O_PATH,
        O_AUTH,
        O_DURATION,
        O_RATE,
        O_INFLIGHT,
        O_HS_TIMEOUT,
        O_BASE,
        O_CAP,
        O_NOJITTER,
        O_NORECONNECT,
        O_NORESUME,
        O_POST_RATE,
        O_POST_TARGETS,
        O_POST_CONNS,
        O_TEXT,
        O_STATS,
        O_TIMELINE,
        O_HELP,
    };
    static const struct option opts[] = {
        {"host", required_argument, NULL, O_HOST},
        {"port", required_argument, NULL, O_PORT},
        {"source", required_argument, NULL, O_SOURCE},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"proto", required_argument, NULL, O_PROTO},
        {"tokens", required_argument, NULL, O_TOKENS},
        {"path", required_argument, NULL, O_PATH},
        {"auth", required_argument, NULL, O_AUTH},
        {"duration", required_argument, NULL, O_DURATION},
        {"connect-rate", required_argument, NULL, O_RATE},
        {"max-inflight", required_argument, NULL, O_INFLIGHT},
        {"handshake-timeout-ms", required_argument, NULL, O_HS_TIMEOUT},
        {"backoff-base-ms", required_argument, NULL, O_BASE},
        {"backoff-cap-ms", required_argument, NULL, O_CAP},
        {"no-jitter", no_argument, NULL, O_NOJITTER},
        {"no-reconnect", no_argument, NULL, O_NORECONNECT},
        {"no-resume", no_argument, NULL, O_NORESUME},
        {"post-rate", required_argument, NULL, O_POST_RATE},
        {"post-targets", required_argument, NULL, O_POST_TARGETS},
        {"post-conns", required_argument, NULL, O_POST_CONNS},
        {"text-bytes", required_argument, NULL, O_TEXT},
        {"stats-interval-ms", required_argument, NULL, O_STATS},
        {"timeline-ms", required_argument, NULL, O_TIMELINE},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    G.host = "127.0.0.1";
    G.max_inflight = 256;
    G.handshake_timeout_ms = 10000;
    G.reconnect = true;
    G.resume = true;
    G.post_conns = 32;
    G.text_bytes = 100;
    G.timeline_ms = 250;
    uint32_t base_ms = 100, cap_ms = 10000;
    bool jitter = true;
    const char *tokens = NULL, *post_targets = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case O_HOST:
            G.host = optarg;
            break;
        case O_PORT:
            G.port = atoi(optarg);
            break;
        case O_SOURCE:
            if (G.nsources == LG_MAX_SOURCES ||
                uv_ip4_addr(optarg, 0, &G.sources[G.nsources]) != 0) {
                fprintf(stderr, "loadgen: bad or too many --source: %s\n", optarg);
                return 2;
            }
            G.nsources++;
            break;
        case O_CLIENTS:
            G.clients = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_PROTO:
            if (strcmp(optarg, "socketio") == 0)
                G.proto = LG_PROTO_SOCKETIO;
            else if (strcmp(optarg, "meridian") == 0)
                G.proto = LG_PROTO_MERIDIAN;
            else {
                fprintf(stderr, "loadgen: --proto meridian|socketio\n");
                return 2;
            }
            break;
        case O_TOKENS:
            tokens = optarg;
            break;
        case O_PATH:
            G.default_path = optarg;
            break;
        case O_AUTH:
            if (strcmp(optarg, "header") == 0)
                G.auth = LG_AUTH_HEADER;
            else if (strcmp(optarg, "query") == 0)
                G.auth = LG_AUTH_QUERY;
            else if (strcmp(optarg, "subprotocol") == 0)
                G.auth = LG_AUTH_SUBPROTOCOL;
            else {
                fprintf(stderr, "loadgen: --auth subprotocol|header|query\n");
                return 2;
            }
            break;
        case O_DURATION:
            G.duration_s = atof(optarg);
            break;
        case O_RATE:
            G.connect_rate = atof(optarg);
            break;
        case O_INFLIGHT:
            G.max_inflight = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_HS_TIMEOUT:
            G.handshake_timeout_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_BASE:
            base_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_CAP:
            cap_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_NOJITTER:
            jitter = false;
            break;
        case O_NORECONNECT:
            G.reconnect = false;
            break;
        case O_NORESUME:
            G.resume = false;
            break;
        case O_POST_RATE:
            G.post_rate = atof(optarg);
            break;
        case O_POST_TARGETS:
            post_targets = optarg;
            break;
        case O_POST_CONNS:
            G.post_conns = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_TEXT:
            G.text_bytes = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_STATS:
            G.stats_interval_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_TIMELINE:
            G.timeline_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_HELP:
            usage();
            return 0;
        default:
            usage();
            return 2;
        }
    }
    if (G.port <= 0 || G.max_inflight == 0 || G.timeline_ms == 0 ||
        (G.post_rate > 0 && !post_targets) || G.text_bytes > 30000 ||
        (G.clients == 0 && !post_targets)) {
        usage();
        return 2;
    }
    if (!G.default_path)
        G.default_path = G.proto == LG_PROTO_SOCKETIO ? "/socket.io/?EIO=4&transport=websocket"
                                                      : "/v1/workspaces/-/stream";
    core_init();
    if (uv_ip4_addr(G.host, G.port, &G.dest) != 0) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address: %s\n", G.host);
        return 2;
    }
    if (tokens && load_targets(tokens, &G.targets, &G.ntargets, true) != 0)
        return 2;
    if (!G.ntargets) {
        G.targets = core_xcalloc(1, sizeof *G.targets);
        G.ntargets = 1;
    }
    if (post_targets && load_targets(post_targets, &G.post_targets, &G.npost_targets,
                                     G.proto == LG_PROTO_MERIDIAN) != 0)
        return 2;
    if (!post_targets)
        G.post_conns = 0;
    core_backoff_init(&G.backoff, base_ms, cap_ms);
    G.backoff.jitter = jitter;
    core_buf_init(&G.ctl_buf);

    G.loop = uv_default_loop();
    G.start_ms = core_now_ms();
    /* Buckets start at multiples of timeline_ms on the wall clock, so that
     * the timelines of every loadgen process line up. */
    G.start_unix_ms = lg_realtime_ns() / 1000000u;
    G.tl_origin_unix_ms = G.start_unix_ms - G.start_unix_ms % G.timeline_ms;
    G.rate_last_ms = G.start_ms;
    G.window_start_ms = G.start_ms;
    /* Socket.IO posters are WebSocket clients too: they sit after the
     * receiving clients in the same array. */
    uint32_t sio_posters = G.proto == LG_PROTO_SOCKETIO ? G.post_conns : 0;
    G.nconns = G.clients + sio_posters;
    G.conns = core_xcalloc((size_t)G.clients + sio_posters, sizeof *G.conns);
    G.heap = core_xcalloc((size_t)G.clients + sio_posters + 1, sizeof *G.heap);
    for (uint32_t i = 0; i < G.clients + sio_posters; i++) {
        lg_conn_t *c = &G.conns[i];
        c->index = i;
        c->cursor = -1;
        c->heap_pos = -1;
        c->is_poster = i >= G.clients;
        lg_conn_schedule(c, G.start_ms);
    }
    if (lg_poster_start() != 0)
        return 1;

    uv_timer_init(G.loop, &G.tick);
    uv_timer_start(&G.tick, on_tick, 0, 1);
    if (G.stats_interval_ms) {
        uv_timer_init(G.loop, &G.stats_timer);
        uv_timer_start(&G.stats_timer, on_stats, G.stats_interval_ms, G.stats_interval_ms);
    }
    uv_signal_init(G.loop, &G.sigint);
    uv_signal_start(&G.sigint, on_signal, SIGINT);
    uv_signal_init(G.loop, &G.sigterm);
    uv_signal_start(&G.sigterm, on_signal, SIGTERM);
    if (uv_pipe_init(G.loop, &G.ctl, 0) == 0 && uv_pipe_open(&G.ctl, 0) == 0 &&
        uv_read_start((uv_stream_t *)&G.ctl, on_ctl_alloc, on_ctl_read) == 0)
        G.ctl_open = true;
    else
        uv_close((uv_handle_t *)&G.ctl, NULL);

    uv_run(G.loop, UV_RUN_DEFAULT);
    print_final();
    return 0;
}
