/* driver_nats_client: drives core/nats.h against a real nats-server for
 * tests/integration/nats_client.test.mjs.
 *
 * Usage: driver_nats_client --url nats://127.0.0.1:PORT [--name NAME] [--ack-timeout-ms N]
 * Reads one command per line on stdin and answers each with one JSON line on
 * stdout ({"reply":"<command>",...}); readiness changes are printed as
 * {"event":"state","ready":...}. "svc.sink" takes requests and never answers. Send the next command
 * only after the reply to the previous one. Logs (logfmt) go to stderr. It also serves "svc.echo"
 * (queue group "svc"), answering "echo:" + the request's data.
 *
 * Commands:
 *   state
 *   wait_ready <0|1> <timeout_ms>
 *   pubsub <subject> <count> <size> [<stop_after>]
 *                                       subscribe, publish count messages, receive them
 *                                       (unsubscribing after stop_after, default count);
 *                                       "state" reports deliveries after an unsubscribe
 *   pub_once <subject>                  one publish, timed
 *   request <subject> <data> <timeout_ms>
 *   js_stream <name> <subject>          create (or keep) a file stream via core_nats_js_run
 *   js_count <name>                     messages in the stream
 *   js_pub <subject> <count> <idprefix> JetStream publishes with Nats-Msg-Id idprefix-<i>
 *   metrics                             the Prometheus text
 *   pending_quit <subject> <count>      start JetStream publishes, a request to "svc.sink"
 *                                       (never answered) and a js_count, then quit at once
 *   quit                                core_nats_free, wait for the loop to drain, exit 0;
 *                                       the final {"reply":"quit"} counts the callbacks that
 *                                       ran after core_nats_free */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "core/buf.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/nats.h"

static uv_loop_t *loop;
static core_nats_t *nc;
static uv_pipe_t in;
static core_buf_t line;
static bool busy; /* one command at a time */
static bool eof;
static uv_idle_t kick; /* runs queued command lines once the current one is done */

static void out(core_buf_t *b)
{
    fwrite(b->base, 1, b->len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    core_buf_free(b);
}

static const char *errname(int err)
{
    return err ? uv_err_name(err) : "OK";
}

static void on_kick(uv_idle_t *h);

static void done(void)
{
    busy = false;
    if (!uv_is_closing((uv_handle_t *)&kick))
        uv_idle_start(&kick, on_kick);
}

/* ---- state ---- */

static struct {
    bool active;
    bool want;
    uint64_t start;
    uv_timer_t timer;
} wr;

static void wait_ready_end(bool ok)
{
    wr.active = false;
    uv_timer_stop(&wr.timer);
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b, "{\"reply\":\"wait_ready\",\"ok\":%s,\"ms\":%llu}", ok ? "true" : "false",
                     (unsigned long long)(uv_now(loop) - wr.start));
    out(&b);
    done();
}

static void on_state(core_nats_t *n, bool ready, void *ud)
{
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b, "{\"event\":\"state\",\"ready\":%s}", ready ? "true" : "false");
    out(&b);
    if (wr.active && ready == wr.want)
        wait_ready_end(true);
}

static void on_wait_timeout(uv_timer_t *t)
{
    wait_ready_end(false);
}

static void cmd_wait_ready(bool want, unsigned timeout_ms)
{
    wr.want = want;
    wr.start = uv_now(loop);
    if (core_nats_ready(nc) == want) {
        wr.active = true;
        wait_ready_end(true);
        return;
    }
    wr.active = true;
    uv_timer_start(&wr.timer, on_wait_timeout, timeout_ms, 0);
}

/* ---- pub/sub ---- */

static struct {
    char subject[128];
    unsigned count, size, received, next_expected, stop_after, late;
    bool in_order;
    uint64_t max_pub_ns;
    int pub_err;
    core_nats_sub_t *sub;
    uv_timer_t timer;
} ps;

static void pubsub_end(void)
{
    uv_timer_stop(&ps.timer);
    core_nats_unsubscribe(ps.sub);
    ps.sub = NULL;
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b,
                     "{\"reply\":\"pubsub\",\"sent\":%u,\"received\":%u,\"in_order\":%s,"
                     "\"max_publish_us\":%llu,\"err\":\"%s\"}",
                     ps.count, ps.received, ps.in_order ? "true" : "false",
                     (unsigned long long)(ps.max_pub_ns / 1000), errname(ps.pub_err));
    out(&b);
    done();
}

static void on_pubsub_msg(core_nats_sub_t *sub, const core_nats_msg_t *m, void *ud)
{
    if (sub != ps.sub) {
        ps.late++; /* core_nats_unsubscribe promises this never happens */
        return;
    }
    unsigned idx = 0;
    if (m->len >= 10)
        idx = (unsigned)strtoul(m->data, NULL, 10);
    if (idx != ps.next_expected || m->len != ps.size)
        ps.in_order = false;
    ps.next_expected = idx + 1;
    if (++ps.received == ps.stop_after)
        pubsub_end();
}

static void on_pubsub_timeout(uv_timer_t *t)
{
    pubsub_end();
}

static void on_pubsub_ready(core_nats_sub_t *sub, int err, void *ud)
{
    if (err) {
        ps.sub = NULL;
        ps.pub_err = err;
        pubsub_end();
        return;
    }
    char *payload = core_xcalloc(1, ps.size + 1);
    memset(payload, 'x', ps.size);
    for (unsigned i = 0; i < ps.count; i++) {
        char num[16];
        snprintf(num, sizeof num, "%010u", i);
        memcpy(payload, num, ps.size < 10 ? ps.size : 10);
        uint64_t t0 = core_now_ns();
        int rc = core_nats_publish(nc, ps.subject, payload, ps.size);
        uint64_t dt = core_now_ns() - t0;
        if (dt > ps.max_pub_ns)
            ps.max_pub_ns = dt;
        if (rc) {
            ps.pub_err = rc;
            break;
        }
    }
    free(payload);
    uv_timer_start(&ps.timer, on_pubsub_timeout, 15000, 0);
}

static void cmd_pubsub(const char *subject, unsigned count, unsigned size, unsigned stop_after)
{
    ps.stop_after = stop_after && stop_after < count ? stop_after : count;
    snprintf(ps.subject, sizeof ps.subject, "%s", subject);
    ps.count = count;
    ps.size = size < 10 ? 10 : size;
    ps.received = ps.next_expected = 0;
    ps.in_order = true;
    ps.max_pub_ns = 0;
    ps.pub_err = 0;
    int rc = core_nats_subscribe(nc, subject, NULL, on_pubsub_msg, NULL, &ps.sub);
    if (rc) {
        ps.sub = NULL;
        ps.pub_err = rc;
        pubsub_end();
        return;
    }
    core_nats_sub_on_ready(ps.sub, on_pubsub_ready);
}

static void cmd_pub_once(const char *subject)
{
    uint64_t t0 = core_now_ns();
    int rc = core_nats_publish(nc, subject, "ping", 4);
    uint64_t dt = core_now_ns() - t0;
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b, "{\"reply\":\"pub_once\",\"err\":\"%s\",\"us\":%llu}", errname(rc),
                     (unsigned long long)(dt / 1000));
    out(&b);
    done();
}

/* ---- request/reply ---- */

static void on_echo(core_nats_sub_t *sub, const core_nats_msg_t *m, void *ud)
{
    if (!m->reply)
        return;
    core_buf_t b;
    core_buf_init(&b);
    core_buf_puts(&b, "echo:");
    core_buf_append(&b, m->data, m->len);
    core_nats_publish(nc, m->reply, b.base, b.len);
    core_buf_free(&b);
}

/* Callbacks that ran after core_nats_free (pending_quit). */
static struct {
    bool quitting;
    unsigned js_acked, js_failed, js_cancelled, req_cancelled, req_other, js_run_done;
    unsigned js_accepted;
} pq;

static void on_sink(core_nats_sub_t *sub, const core_nats_msg_t *m, void *ud) {}

static void on_reply(const core_nats_msg_t *reply, int err, void *ud)
{
    if (pq.quitting) {
        if (err == UV_ECANCELED)
            pq.req_cancelled++;
        else
            pq.req_other++;
        return;
    }
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b, "{\"reply\":\"request\",\"err\":\"%s\",\"data\":", errname(err));
    core_json_escape(&b, reply ? reply->data : "", reply ? reply->len : 0);
    core_buf_puts(&b, "}");
    out(&b);
    done();
}

static void cmd_request(const char *subject, const char *data, unsigned timeout_ms)
{
    int rc = core_nats_request(nc, subject, data, strlen(data), timeout_ms, on_reply, NULL);
    if (rc)
        on_reply(NULL, rc, NULL);
}

/* ---- JetStream ---- */

typedef struct {
    char name[64];
    char subject[128];
    natsStatus status;
    jsErrCode jerr;
    uint64_t msgs;
    const char *cmd;
} js_job_t;

static void js_stream_work(jsCtx *js, void *ud)
{
    js_job_t *j = ud;
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    const char *subjects[] = {j->subject};
    cfg.Name = j->name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    jsStreamInfo *si = NULL;
    j->status = js_AddStream(&si, js, &cfg, NULL, &j->jerr);
    jsStreamInfo_Destroy(si);
}

static void js_count_work(jsCtx *js, void *ud)
{
    js_job_t *j = ud;
    jsStreamInfo *si = NULL;
    j->status = js_GetStreamInfo(&si, js, j->name, NULL, &j->jerr);
    if (si)
        j->msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
}

static void js_job_done(void *ud)
{
    js_job_t *j = ud;
    if (pq.quitting) {
        pq.js_run_done++;
        free(j);
        return;
    }
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b, "{\"reply\":\"%s\",\"status\":\"%s\",\"jerr\":%d,\"msgs\":%llu}", j->cmd,
                     natsStatus_GetText(j->status), (int)j->jerr, (unsigned long long)j->msgs);
    out(&b);
    free(j);
    done();
}

static void cmd_js(const char *cmd, const char *name, const char *subject,
                   void (*work)(jsCtx *, void *))
{
    js_job_t *j = core_xcalloc(1, sizeof *j);
    j->cmd = cmd;
    snprintf(j->name, sizeof j->name, "%s", name);
    snprintf(j->subject, sizeof j->subject, "%s", subject ? subject : "");
    int rc = core_nats_js_run(nc, work, js_job_done, j);
    if (rc) {
        j->status = NATS_ERR;
        js_job_done(j);
    }
}

static struct {
    char subject[128];
    char idprefix[64];
    unsigned count, next, acked, dups, failed, busy;
    int first_err;
    uint64_t start;
    bool ended;
    bool flush; /* core_nats_flush after every pump, as the relay does after a batch */
} jp;

static void js_pub_pump(void);

static void js_pub_end(void)
{
    jp.ended = true;
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b,
                     "{\"reply\":\"js_pub\",\"acked\":%u,\"dups\":%u,\"failed\":%u,\"busy\":%u,"
                     "\"ms\":%llu,\"err\":\"%s\",\"inflight\":%zu}",
                     jp.acked, jp.dups, jp.failed, jp.busy,
                     (unsigned long long)(uv_now(loop) - jp.start), errname(jp.first_err),
                     core_nats_js_inflight(nc));
    out(&b);
    done();
}

static void on_js_ack(const core_nats_js_ack_t *ack, int err, void *ud)
{
    if (pq.quitting) {
        if (err == UV_ECANCELED)
            pq.js_cancelled++;
        else if (err)
            pq.js_failed++;
        else
            pq.js_acked++;
        return;
    }
    if (err) {
        jp.failed++;
        if (!jp.first_err)
            jp.first_err = err;
    } else {
        jp.acked++;
        if (ack->duplicate)
            jp.dups++;
        if (jp.acked == 1000) {
            /* Lets the test act while a long run is under way. */
            core_buf_t b;
            core_buf_init(&b);
            core_buf_appendf(&b, "{\"event\":\"js_progress\",\"acked\":%u}", jp.acked);
            out(&b);
        }
    }
    if (jp.ended)
        return;
    if (jp.acked + jp.failed == jp.count)
        js_pub_end();
    else
        js_pub_pump();
}

/* Publishes until the client says it has enough unacked; acks resume it. */
static void js_pub_pump(void)
{
    while (jp.next < jp.count) {
        char id[96], body[64];
        snprintf(id, sizeof id, "%s-%u", jp.idprefix, jp.next);
        int n = snprintf(body, sizeof body, "{\"i\":%u}", jp.next);
        int rc = core_nats_js_publish(nc, jp.subject, body, (size_t)n, id, on_js_ack, NULL);
        if (rc == UV_EBUSY) {
            jp.busy++;
            return;
        }
        if (rc) {
            /* Refused outright: count the rest as failed. */
            jp.first_err = rc;
            jp.failed += jp.count - jp.next;
            jp.next = jp.count;
            if (jp.acked + jp.failed == jp.count)
                js_pub_end();
            return;
        }
        jp.next++;
    }
    if (jp.flush)
        core_nats_flush(nc); /* most calls find one out already: folded */
}

static void cmd_js_pub(const char *subject, unsigned count, const char *idprefix, bool flush)
{
    memset(&jp, 0, sizeof jp);
    jp.flush = flush;
    snprintf(jp.subject, sizeof jp.subject, "%s", subject);
    snprintf(jp.idprefix, sizeof jp.idprefix, "%s", idprefix);
    jp.count = count;
    jp.start = uv_now(loop);
    if (count == 0) {
        js_pub_end();
        return;
    }
    js_pub_pump();
}

/* ---- command loop ---- */

static void cmd_metrics(void)
{
    core_buf_t text, b;
    core_buf_init(&text);
    core_buf_init(&b);
    core_metrics_render(&text);
    core_buf_puts(&b, "{\"reply\":\"metrics\",\"text\":");
    core_json_escape(&b, text.base ? text.base : "", text.len);
    core_buf_puts(&b, "}");
    core_buf_free(&text);
    out(&b);
    done();
}

static void on_closed(uv_handle_t *h) {}

static void cmd_quit(void)
{
    core_nats_free(nc);
    core_nats_free(nc); /* safe twice */
    uv_read_stop((uv_stream_t *)&in);
    uv_close((uv_handle_t *)&in, on_closed);
    uv_close((uv_handle_t *)&kick, on_closed);
    uv_close((uv_handle_t *)&wr.timer, on_closed);
    uv_close((uv_handle_t *)&ps.timer, on_closed);
}

static void cmd_pending_quit(const char *subject, unsigned count)
{
    char body[] = "{}";
    for (unsigned i = 0; i < count; i++) {
        char id[64];
        snprintf(id, sizeof id, "pq-%u", i);
        if (core_nats_js_publish(nc, subject, body, 2, id, on_js_ack, NULL) != 0)
            break;
        pq.js_accepted++;
    }
    core_nats_flush(nc); /* a flush job out on the pool when the client is freed */
    pq.quitting = true;
    if (core_nats_request(nc, "svc.sink", "x", 1, 10000, on_reply, NULL) != 0)
        pq.req_other = 1000; /* shows up as a failure in the test */
    cmd_js("js_count", "NONE", NULL, js_count_work);
    cmd_quit();
}

static void run_command(char *cmdline)
{
    char *argv[8] = {0};
    int argc = 0;
    for (char *tok = strtok(cmdline, " "); tok && argc < 8; tok = strtok(NULL, " "))
        argv[argc++] = tok;
    if (argc == 0)
        return;
    busy = true;
    const char *c = argv[0];
    if (!strcmp(c, "state")) {
        core_buf_t b;
        core_buf_init(&b);
        core_buf_appendf(&b, "{\"reply\":\"state\",\"ready\":%s,\"late\":%u}",
                         core_nats_ready(nc) ? "true" : "false", ps.late);
        out(&b);
        done();
    } else if (!strcmp(c, "wait_ready") && argc == 3) {
        cmd_wait_ready(atoi(argv[1]) != 0, (unsigned)atoi(argv[2]));
    } else if (!strcmp(c, "pubsub") && (argc == 4 || argc == 5)) {
        cmd_pubsub(argv[1], (unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]),
                   argc == 5 ? (unsigned)atoi(argv[4]) : 0);
    } else if (!strcmp(c, "pub_once") && argc == 2) {
        cmd_pub_once(argv[1]);
    } else if (!strcmp(c, "request") && argc == 4) {
        cmd_request(argv[1], argv[2], (unsigned)atoi(argv[3]));
    } else if (!strcmp(c, "js_stream") && argc == 3) {
        cmd_js("js_stream", argv[1], argv[2], js_stream_work);
    } else if (!strcmp(c, "js_count") && argc == 2) {
        cmd_js("js_count", argv[1], NULL, js_count_work);
    } else if (!strcmp(c, "js_pub") && (argc == 4 || (argc == 5 && !strcmp(argv[4], "flush")))) {
        cmd_js_pub(argv[1], (unsigned)atoi(argv[2]), argv[3], argc == 5);
    } else if (!strcmp(c, "metrics")) {
        cmd_metrics();
    } else if (!strcmp(c, "pending_quit") && argc == 3) {
        cmd_pending_quit(argv[1], (unsigned)atoi(argv[2]));
    } else if (!strcmp(c, "quit")) {
        cmd_quit();
    } else {
        core_buf_t b;
        core_buf_init(&b);
        core_buf_appendf(&b, "{\"reply\":\"error\",\"err\":\"bad command\"}");
        out(&b);
        done();
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char slab[4096];
    buf->base = slab;
    buf->len = sizeof slab;
}

static void process_lines(void)
{
    while (!busy && !uv_is_closing((uv_handle_t *)&in)) {
        char *nl = line.len ? memchr(line.base, '\n', line.len) : NULL;
        if (!nl) {
            if (eof) /* stdin closed: the test is gone; shut down cleanly */
                cmd_quit();
            return;
        }
        size_t len = (size_t)(nl - line.base);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "%.*s", (int)len, line.base);
        core_buf_consume(&line, len + 1);
        run_command(cmd);
    }
}

static void on_kick(uv_idle_t *h)
{
    uv_idle_stop(h);
    process_lines();
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n < 0) {
        eof = true;
        uv_read_stop(s);
    } else {
        core_buf_append(&line, buf->base, (size_t)n);
    }
    process_lines();
}

int main(int argc, char **argv)
{
    const char *url = NULL, *name = "driver";
    unsigned ack_timeout_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--url"))
            url = argv[i + 1];
        else if (!strcmp(argv[i], "--name"))
            name = argv[i + 1];
        else if (!strcmp(argv[i], "--ack-timeout-ms"))
            ack_timeout_ms = (unsigned)atoi(argv[i + 1]);
    }
    if (!url) {
        fprintf(stderr, "usage: %s --url nats://host:port [--name NAME]\n", argv[0]);
        return 2;
    }
    core_init();
    core_log_level_t level = CORE_LOG_INFO;
    if (getenv("MERIDIAN_LOG_LEVEL"))
        core_log_parse_level(getenv("MERIDIAN_LOG_LEVEL"), &level);
    core_log_init("driver_nats", "-", level);
    core_metrics_init(1);
    core_metrics_set_worker(0);
    loop = uv_default_loop();
    core_buf_init(&line);
    uv_timer_init(loop, &wr.timer);
    uv_timer_init(loop, &ps.timer);
    uv_idle_init(loop, &kick);

    core_nats_opts_t o = {
        .url = url,
        .name = name,
        .connect_timeout_ms = 1000,
        .js_ack_timeout_ms = ack_timeout_ms,
        .on_state = on_state,
    };
    nc = core_nats_new(loop, &o);
    if (!nc)
        return 1;
    core_nats_sub_t *echo, *sink;
    if (core_nats_subscribe(nc, "svc.echo", "svc", on_echo, NULL, &echo) != 0 ||
        core_nats_subscribe(nc, "svc.sink", NULL, on_sink, NULL, &sink) != 0)
        return 1;

    uv_pipe_init(loop, &in, 0);
    if (uv_pipe_open(&in, 0) != 0)
        return 1;
    uv_read_start((uv_stream_t *)&in, on_alloc, on_read);

    uv_run(loop, UV_RUN_DEFAULT);
    core_buf_t b;
    core_buf_init(&b);
    core_buf_appendf(&b,
                     "{\"reply\":\"quit\",\"js_accepted\":%u,\"js_acked\":%u,\"js_failed\":%u,"
                     "\"js_cancelled\":%u,\"req_cancelled\":%u,\"req_other\":%u,"
                     "\"js_run_done\":%u}",
                     pq.js_accepted, pq.js_acked, pq.js_failed, pq.js_cancelled, pq.req_cancelled,
                     pq.req_other, pq.js_run_done);
    out(&b);
    core_buf_free(&line);
    uv_loop_close(loop);
    /* No nats_CloseAndWait: the region's processes exit without tearing
     * cnats's library threads down, and so does this driver. Under CPU load
     * that teardown, right after a connection was destroyed with publishes
     * in flight, ended in a SIGABRT inside cnats or in LSan reports of its
     * messages in 2-3 runs of 20; without it, 30 of 30 passed. */
    return 0;
}
