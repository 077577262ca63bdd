/* driver_redis_client: drives core/redis against a real redis-server for
 * tests/integration/redis_client.test.mjs.
 *
 * Reads one request per line on stdin, "<id> <op> [args...]", and writes one
 * JSON line per answer on stdout, {"id":N,...}. Ops:
 *   ready                      -> {"ready":bool}
 *   waitready <0|1> <ms>       -> waits until ready matches -> {"ready":bool,"ms":N}
 *   cmd <arg>...               -> {"err":null|"ETIMEDOUT",...,"reply":...,"ms":N}
 *   cmdx <hexarg>...           -> the same with hex-encoded (binary) arguments
 *   pipeline <n>               -> n SETs then n GETs in one go -> {"ok":bool,"n":n,"ms":N}
 *   pending                    -> {"pending":N}
 *   order <key> <0|1>          -> INCR key, core_redis_flush when 1, then, before
 *                                 the loop turns, GET key on a second (blocking)
 *                                 connection -> {"seen":"1"|null}
 *   metrics                    -> {"commands":N,"errors":N,"timeouts":N,"connected":N}
 *   free                       -> core_redis_free twice -> {"freed":true}
 * A callback that runs twice aborts the driver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "core/buf.h"
#include "core/core.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/redis.h"

static uv_loop_t *loop;
static core_redis_t *rc;
static uv_pipe_t in;
static core_buf_t line;
static const char *client_name = "drv";
static core_redis_opts_t opts;

/* Request records live until exit so that a late second callback finds them
 * (and aborts) instead of reading freed memory; freed at exit for LeakSanitizer. */
static void **kept;
static size_t nkept;

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
    int npipe; /* pipeline: replies expected, received, failures */
    int got;
    int bad;
    uv_timer_t timer; /* waitready */
    int want;
    uint64_t until;
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

static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

static void put_reply(core_jw_t *w, const redisReply *r)
{
    char hex[3];
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        if (printable(r->str, r->len)) {
            core_jw_strn(w, r->str, r->len);
        } else {
            core_buf_t h;
            core_buf_init(&h);
            for (size_t i = 0; i < r->len; i++) {
                snprintf(hex, sizeof hex, "%02x", (unsigned char)r->str[i]);
                core_buf_append(&h, hex, 2);
            }
            core_jw_obj_open(w);
            core_jw_key(w, "hex");
            core_jw_strn(w, h.base ? h.base : "", h.len);
            core_jw_obj_close(w);
            core_buf_free(&h);
        }
        break;
    case REDIS_REPLY_ERROR:
        core_jw_obj_open(w);
        core_jw_key(w, "error");
        core_jw_strn(w, r->str, r->len);
        core_jw_obj_close(w);
        break;
    case REDIS_REPLY_INTEGER:
        core_jw_int(w, r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        core_jw_arr_open(w);
        for (size_t i = 0; i < r->elements; i++)
            put_reply(w, r->element[i]);
        core_jw_arr_close(w);
        break;
    default:
        core_jw_null(w);
    }
}

static void on_cmd(const redisReply *reply, int err, void *ud)
{
    req_t *q = ud;
    if (++q->calls > 1) {
        fprintf(stderr, "driver: callback for request %ld ran twice\n", q->id);
        abort();
    }
    if ((reply == NULL) != (err != 0)) {
        fprintf(stderr, "driver: reply/err mismatch for request %ld\n", q->id);
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
    core_jw_key(&w, "reply");
    if (reply)
        put_reply(&w, reply);
    else
        core_jw_null(&w);
    core_jw_obj_close(&w);
    emit(&b);
}

static void on_quiet(const redisReply *reply, int err, void *ud)
{
    req_t *q = ud;
    if (++q->calls > 1) {
        fprintf(stderr, "driver: callback for a quiet request ran twice\n");
        abort();
    }
}

static void on_pipe_reply(const redisReply *reply, int err, void *ud)
{
    struct slot {
        req_t *q;
        int i;
        int calls;
    } *s = ud;
    req_t *q = s->q;
    if (++s->calls > 1) {
        fprintf(stderr, "driver: pipeline callback ran twice\n");
        abort();
    }
    int i = s->i;
    int expect = q->got; /* callbacks arrive in submission order */
    if (i != expect)
        q->bad++;
    else if (err || !reply)
        q->bad++;
    else if (i < q->npipe) {
        if (reply->type != REDIS_REPLY_STATUS || strcmp(reply->str, "OK") != 0)
            q->bad++;
    } else {
        char want[32];
        snprintf(want, sizeof want, "v%d", i - q->npipe);
        if (reply->type != REDIS_REPLY_STRING || strcmp(reply->str, want) != 0)
            q->bad++;
    }
    q->got++;
    if (q->got == 2 * q->npipe) {
        core_buf_t b;
        core_jw_t w;
        begin(&b, &w, q->id);
        core_jw_key(&w, "ok");
        core_jw_bool(&w, q->bad == 0);
        core_jw_key(&w, "n");
        core_jw_int(&w, q->npipe);
        core_jw_key(&w, "bad");
        core_jw_int(&w, q->bad);
        core_jw_key(&w, "ms");
        core_jw_int(&w, (int64_t)(core_now_ms() - q->t0));
        core_jw_obj_close(&w);
        emit(&b);
    }
}

static void reply_simple(long id, const char *key, const char *strval, int64_t ival, bool isbool)
{
    core_buf_t b;
    core_jw_t w;
    begin(&b, &w, id);
    core_jw_key(&w, key);
    if (strval)
        core_jw_str(&w, strval);
    else if (isbool)
        core_jw_bool(&w, ival != 0);
    else
        core_jw_int(&w, ival);
    core_jw_obj_close(&w);
    emit(&b);
}

static void on_wait_timer(uv_timer_t *t)
{
    req_t *q = t->data;
    bool ready = core_redis_ready(rc);
    if ((int)ready == q->want || core_now_ms() >= q->until) {
        uv_timer_stop(t);
        core_buf_t b;
        core_jw_t w;
        begin(&b, &w, q->id);
        core_jw_key(&w, "ready");
        core_jw_bool(&w, ready);
        core_jw_key(&w, "ms");
        core_jw_int(&w, (int64_t)(core_now_ms() - q->t0));
        core_jw_obj_close(&w);
        emit(&b);
        uv_close((uv_handle_t *)t, (uv_close_cb)free);
    }
}

static int unhex(const char *h, char *out)
{
    size_t n = strlen(h);
    if (n % 2)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (char)v;
    }
    return (int)(n / 2);
}

static core_metric_t metric(const char *name, bool gauge)
{
    char labels[64];
    snprintf(labels, sizeof labels, "client=\"%s\"", client_name);
    return gauge ? core_metrics_gauge(name, "", labels) : core_metrics_counter(name, "", labels);
}

static void handle(char *s)
{
    char *save = NULL;
    char *tok[64];
    int n = 0;
    for (char *t = strtok_r(s, " ", &save); t && n < 64; t = strtok_r(NULL, " ", &save))
        tok[n++] = t;
    if (n < 2)
        return;
    long id = strtol(tok[0], NULL, 10);
    const char *op = tok[1];
    if (!rc && strcmp(op, "ready") != 0 && strcmp(op, "metrics") != 0) {
        reply_simple(id, "err", "ECANCELED", 0, false); /* freed by an earlier "free" */
        return;
    }
    if (strcmp(op, "ready") == 0) {
        reply_simple(id, "ready", NULL, rc && core_redis_ready(rc), true);
    } else if (strcmp(op, "pending") == 0) {
        reply_simple(id, "pending", NULL, (int64_t)core_redis_pending(rc), false);
    } else if (strcmp(op, "waitready") == 0 && n >= 4) {
        req_t *q = keep(core_xcalloc(1, sizeof *q));
        q->id = id;
        q->t0 = core_now_ms();
        q->want = atoi(tok[2]);
        q->until = q->t0 + (uint64_t)atol(tok[3]);
        uv_timer_t *t = core_xmalloc(sizeof *t);
        uv_timer_init(loop, t);
        t->data = q;
        uv_timer_start(t, on_wait_timer, 0, 10);
    } else if ((strcmp(op, "cmd") == 0 || strcmp(op, "cmdx") == 0) && n >= 3) {
        bool hex = op[3] == 'x';
        const char *argv[64];
        size_t lens[64];
        int argc = n - 2;
        for (int i = 0; i < argc; i++) {
            if (hex) {
                char *bin = core_xmalloc(strlen(tok[i + 2]) / 2 + 1);
                int len = unhex(tok[i + 2], bin);
                argv[i] = bin;
                lens[i] = len < 0 ? 0 : (size_t)len;
            } else {
                argv[i] = tok[i + 2];
                lens[i] = strlen(tok[i + 2]);
            }
        }
        req_t *q = keep(core_xcalloc(1, sizeof *q));
        q->id = id;
        q->t0 = core_now_ms();
        int err = core_redis_commandargv(rc, on_cmd, q, argc, argv, lens);
        if (hex)
            for (int i = 0; i < argc; i++)
                free((void *)argv[i]);
        if (err) {
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
    } else if (strcmp(op, "pipeline") == 0 && n >= 3) {
        req_t *q = keep(core_xcalloc(1, sizeof *q));
        q->id = id;
        q->t0 = core_now_ms();
        q->npipe = atoi(tok[2]);
        struct slot {
            req_t *q;
            int i;
            int calls;
        } *slots = keep(core_xcalloc((size_t)(2 * q->npipe), sizeof *slots));
        for (int i = 0; i < 2 * q->npipe; i++) {
            slots[i].q = q;
            slots[i].i = i;
            char key[32], val[32];
            snprintf(key, sizeof key, "pl:%d", i % q->npipe);
            snprintf(val, sizeof val, "v%d", i % q->npipe);
            int err = i < q->npipe
                          ? core_redis_command(rc, on_pipe_reply, &slots[i], "SET %s %s", key, val)
                          : core_redis_command(rc, on_pipe_reply, &slots[i], "GET %s", key);
            if (err) {
                reply_simple(id, "err", uv_err_name(err), 0, false);
                return;
            }
        }
    } else if (strcmp(op, "order") == 0 && n >= 4) {
        req_t *q = keep(core_xcalloc(1, sizeof *q));
        q->id = -1; /* the INCR's own answer is not reported */
        int err = core_redis_command(rc, on_quiet, q, "INCR %s", tok[2]);
        if (err) {
            reply_simple(id, "err", uv_err_name(err), 0, false);
            return;
        }
        if (atoi(tok[3]))
            core_redis_flush(rc);
        /* Another connection, as another worker's would be: does Redis hold
         * the INCR before anything sent after it elsewhere? */
        redisContext *other = redisConnect(opts.host, opts.port);
        redisReply *got = other && !other->err ? redisCommand(other, "GET %s", tok[2]) : NULL;
        if (!got) {
            reply_simple(id, "err", "ECONNREFUSED", 0, false);
        } else {
            core_buf_t b;
            core_jw_t w;
            begin(&b, &w, id);
            core_jw_key(&w, "seen");
            put_reply(&w, got);
            core_jw_obj_close(&w);
            emit(&b);
            freeReplyObject(got);
        }
        redisFree(other);
    } else if (strcmp(op, "metrics") == 0) {
        core_buf_t b;
        core_jw_t w;
        begin(&b, &w, id);
        core_jw_key(&w, "commands");
        core_jw_int(&w, (int64_t)core_metrics_value(metric("meridian_redis_commands_total", 0)));
        core_jw_key(&w, "errors");
        core_jw_int(&w, (int64_t)core_metrics_value(metric("meridian_redis_errors_total", 0)));
        core_jw_key(&w, "timeouts");
        core_jw_int(&w, (int64_t)core_metrics_value(metric("meridian_redis_timeouts_total", 0)));
        core_jw_key(&w, "connected");
        core_jw_int(&w, (int64_t)core_metrics_value(metric("meridian_redis_connected", 1)));
        core_jw_obj_close(&w);
        emit(&b);
    } else if (strcmp(op, "free") == 0) {
        core_redis_free(rc);
        core_redis_free(rc); /* safe twice (before the loop runs again) */
        rc = NULL;
        reply_simple(id, "freed", NULL, 1, true);
    } else {
        reply_simple(id, "err", "EINVAL", 0, false);
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
        /* stdin closed: the test is done with us. */
        uv_close((uv_handle_t *)s, NULL);
        core_redis_free(rc);
        uv_stop(loop);
        return;
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
    core_redis_opts_t o = {.host = "127.0.0.1", .port = 6379, .name = client_name};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--host") == 0)
            o.host = v;
        else if (strcmp(k, "--port") == 0)
            o.port = atoi(v);
        else if (strcmp(k, "--connect-timeout") == 0)
            o.connect_timeout_ms = (unsigned)atoi(v);
        else if (strcmp(k, "--command-timeout") == 0)
            o.command_timeout_ms = (unsigned)atoi(v);
        else if (strcmp(k, "--ping-interval") == 0)
            o.ping_interval_ms = (unsigned)atoi(v);
        else if (strcmp(k, "--dead-timeout") == 0)
            o.dead_timeout_ms = (unsigned)atoi(v);
        else if (strcmp(k, "--name") == 0)
            o.name = client_name = v;
        else {
            fprintf(stderr,
                    "usage: %s [--host H] [--port P] [--connect-timeout MS] "
                    "[--command-timeout MS] [--ping-interval MS] [--dead-timeout MS] [--name N]\n",
                    argv[0]);
            return 2;
        }
    }
    opts = o;
    core_init();
    core_log_init("driver_redis", "-", CORE_LOG_INFO);
    core_metrics_init(1);
    loop = uv_default_loop();
    rc = core_redis_new(loop, &o);
    uv_pipe_init(loop, &in, 0);
    uv_pipe_open(&in, 0);
    uv_read_start((uv_stream_t *)&in, on_alloc, on_read);
    uv_run(loop, UV_RUN_DEFAULT);
    /* Let the client's close callbacks run so sanitizers see a clean exit. */
    uv_run(loop, UV_RUN_NOWAIT);
    core_buf_free(&line);
    for (size_t i = 0; i < nkept; i++)
        free(kept[i]);
    free(kept);
    return 0;
}
