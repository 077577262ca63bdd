#include "region/rg_batch.h"
#include "core/core.h"
#include "core/log.h"
#include "core/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 64
#define MAX_STMTS 32
#define MAX_TRIES 2
/* Passes of flushing and delivering per loop turn; failures delivered from
 * a pass may queue new statements, which must go out before the loop sleeps. */
#define MAX_ROUNDS 8

typedef struct group_s group_t;
struct group_s {
    group_t *next_free;
    int shard;
    size_t left; /* statements whose callback has not run */
};

typedef struct op_s op_t;
struct op_s {
    op_t *next;
    rg_batch_t *b;
    group_t *group; /* the group in flight holding it, if any */
    int shard;
    int stmt; /* index into rg_batch_t.sql */
    int nparams;
    int tries;
    int err;        /* a failure found while sending, delivered on the next pass */
    uint32_t order; /* arrival order, so that sorting by key is stable */
    const char *values[RG_BATCH_MAX_PARAMS];
    core_pg_cb cb;
    void *ud;
    char key[KEY_MAX + 1];
};

typedef struct {
    op_t *head, *tail;
    size_t n;
} list_t;

typedef struct {
    list_t queue; /* new statements: the next group */
    list_t retry; /* aborted statements, retried as a group of their own */
    int inflight; /* groups sent and not answered */
    core_metric_t m_size, m_batches, m_retries;
} shard_t;

struct rg_batch_s {
    rg_worker_t *w;
    uv_prepare_t prepare;
    shard_t shards[RG_MAX_SHARDS];
    int nshards;
    const char *sql[MAX_STMTS];
    core_pg_stmt_t ids[MAX_STMTS][RG_MAX_SHARDS]; /* -1: not registered on that pool yet */
    int nsql;
    list_t failed; /* refused while sending: delivered on the next pass */
    op_t *free_ops;
    group_t *free_groups;
    size_t queued;
    uint32_t order;
    bool closing;
};

static void list_push(list_t *l, op_t *op)
{
    op->next = NULL;
    if (l->tail)
        l->tail->next = op;
    else
        l->head = op;
    l->tail = op;
    l->n++;
}

static op_t *list_take(list_t *l)
{
    op_t *all = l->head;
    l->head = l->tail = NULL;
    l->n = 0;
    return all;
}

static void op_recycle(rg_batch_t *b, op_t *op)
{
    op->next = b->free_ops;
    b->free_ops = op;
}

/* Hands the outcome to the caller; the op is recycled first so that the
 * callback may add statements at once. */
static void deliver(op_t *op, const PGresult *res, int err, const char *errmsg)
{
    core_pg_cb cb = op->cb;
    void *ud = op->ud;
    op_recycle(op->b, op);
    cb(res, err, errmsg, ud);
}

static int stmt_id(rg_batch_t *b, int k, int shard, core_pg_stmt_t *out)
{
    if (b->ids[k][shard] < 0) {
        int rc = core_pg_pool_prepare(b->w->shards[shard], b->sql[k], &b->ids[k][shard]);
        if (rc) {
            b->ids[k][shard] = -1;
            return rc;
        }
    }
    *out = b->ids[k][shard];
    return 0;
}

static void on_done(const PGresult *res, int err, const char *errmsg, void *ud);

static void fail_later(rg_batch_t *b, op_t *op, int err)
{
    op->err = err;
    list_push(&b->failed, op);
}

static int cmp_ops(const void *x, const void *y)
{
    const op_t *a = *(op_t *const *)x, *c = *(op_t *const *)y;
    int d = strcmp(a->key, c->key);
    if (d)
        return d;
    return a->order < c->order ? -1 : a->order > c->order;
}

static group_t *group_new(rg_batch_t *b, int s, size_t n)
{
    group_t *g = b->free_groups;
    if (g)
        b->free_groups = g->next_free;
    else
        g = core_xmalloc(sizeof *g);
    g->shard = s;
    g->left = n;
    b->shards[s].inflight++;
    return g;
}

/* One statement of a group has its answer; the last one frees the group's
 * slot, and whatever queued meanwhile goes out on the next pass. */
static void group_done(rg_batch_t *b, group_t *g)
{
    if (--g->left > 0)
        return;
    b->shards[g->shard].inflight--;
    g->next_free = b->free_groups;
    b->free_groups = g;
}

/* Sends l as groups of up to RG_BATCH_MAX statements. New statements wait
 * while the shard has RG_BATCH_INFLIGHT groups in flight: that wait is what
 * makes groups grow with the load. Retries always go. */
static void flush_list(rg_batch_t *b, int s, list_t *l)
{
    shard_t *sh = &b->shards[s];
    bool is_queue = l == &sh->queue;
    while (l->n > 0 && (!is_queue || sh->inflight < RG_BATCH_INFLIGHT)) {
        op_t *group[RG_BATCH_MAX];
        size_t n = 0;
        while (l->head && n < RG_BATCH_MAX) {
            op_t *op = l->head;
            l->head = op->next;
            l->n--;
            group[n++] = op;
        }
        if (!l->head)
            l->tail = NULL;
        if (is_queue)
            b->queued -= n;
        /* A fixed lock order across groups: see "key" in rg_batch.h. */
        qsort(group, n, sizeof group[0], cmp_ops);
        core_pg_batch_t *pb = core_pg_batch_begin(b->w->shards[s]);
        op_t *sent[RG_BATCH_MAX];
        size_t nsent = 0;
        for (size_t i = 0; i < n; i++) {
            op_t *op = group[i];
            core_pg_stmt_t id;
            int rc = stmt_id(b, op->stmt, s, &id);
            if (!rc)
                rc = core_pg_batch_add_prepared(pb, id, op->nparams, op->values, NULL, on_done, op,
                                                NULL);
            if (rc)
                fail_later(b, op, rc);
            else
                sent[nsent++] = op;
        }
        if (nsent == 0) {
            core_pg_batch_discard(pb);
            continue;
        }
        int rc = core_pg_batch_commit(pb);
        if (rc) {
            /* Nothing of the group was sent and no callback of it will run. */
            for (size_t i = 0; i < nsent; i++)
                fail_later(b, sent[i], rc);
            continue;
        }
        group_t *g = group_new(b, s, nsent);
        for (size_t i = 0; i < nsent; i++)
            sent[i]->group = g;
        core_metrics_observe(sh->m_size, (double)nsent);
        core_metrics_add(sh->m_batches, 1);
    }
}

static void deliver_failed(rg_batch_t *b)
{
    op_t *op = list_take(&b->failed);
    while (op) {
        op_t *next = op->next;
        deliver(op, NULL, op->err, core_pg_strerror(op->err));
        op = next;
    }
}

static void on_closed(uv_handle_t *h)
{
    rg_batch_t *b = h->data;
    op_t *op = b->free_ops;
    while (op) {
        op_t *next = op->next;
        free(op);
        op = next;
    }
    group_t *g = b->free_groups;
    while (g) {
        group_t *next = g->next_free;
        free(g);
        g = next;
    }
    free(b);
}

/* The worker closed its pools: everything still waiting fails, and the
 * batcher goes away with its handle. */
static void batch_close(rg_batch_t *b)
{
    if (b->closing)
        return;
    b->closing = true;
    if (b->w->batch == b)
        b->w->batch = NULL;
    for (int s = 0; s < b->nshards; s++) {
        shard_t *sh = &b->shards[s];
        list_t *lists[] = {&sh->retry, &sh->queue};
        for (size_t i = 0; i < 2; i++) {
            op_t *op = list_take(lists[i]);
            while (op) {
                op_t *next = op->next;
                fail_later(b, op, UV_ECANCELED);
                op = next;
            }
        }
    }
    b->queued = 0;
    deliver_failed(b);
    uv_close((uv_handle_t *)&b->prepare, on_closed);
}

/* Runs just before the loop sleeps: every statement added during this pass
 * goes out now, one group per shard. */
static void on_prepare(uv_prepare_t *h)
{
    rg_batch_t *b = h->data;
    if (b->closing)
        return;
    if (b->w->nshards == 0) {
        batch_close(b);
        return;
    }
    for (int round = 0; round < MAX_ROUNDS; round++) {
        for (int s = 0; s < b->nshards; s++) {
            /* Retries go first and alone: they were aborted by someone else. */
            flush_list(b, s, &b->shards[s].retry);
            flush_list(b, s, &b->shards[s].queue);
        }
        if (!b->failed.head)
            break;
        deliver_failed(b);
    }
}

static void on_done(const PGresult *res, int err, const char *errmsg, void *ud)
{
    op_t *op = ud;
    rg_batch_t *b = op->b;
    if (op->group) {
        group_done(b, op->group);
        op->group = NULL;
    }
    /* The pools are closing from inside a callback: keep the loop alive for
     * the pass in which the batcher closes itself. */
    if (b->w->nshards == 0 && !b->closing)
        uv_ref((uv_handle_t *)&b->prepare);
    if (err == CORE_PG_EABORTED && op->tries < MAX_TRIES && !b->closing && b->w->nshards > 0) {
        shard_t *sh = &b->shards[op->shard];
        core_metrics_add(sh->m_retries, 1);
        if (++op->tries == 1) {
            list_push(&sh->retry, op); /* sent as one group on the next pass */
            return;
        }
        /* Aborted twice: this time with a Sync of its own. */
        core_pg_stmt_t id;
        int rc = stmt_id(b, op->stmt, op->shard, &id);
        if (!rc)
            rc = core_pg_query_prepared(b->w->shards[op->shard], id, op->nparams, op->values, NULL,
                                        on_done, op, NULL);
        if (!rc)
            return;
        deliver(op, NULL, rc, core_pg_strerror(rc));
        return;
    }
    deliver(op, res, err, errmsg);
}

static const double size_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

void rg_batch_free(rg_batch_t *b)
{
    if (b)
        batch_close(b);
}

rg_batch_t *rg_batch_of(rg_worker_t *w)
{
    if (w->batch)
        return w->batch;
    rg_batch_t *b = core_xcalloc(1, sizeof *b);
    b->w = w;
    b->nshards = w->nshards;
    for (int k = 0; k < MAX_STMTS; k++)
        for (int s = 0; s < RG_MAX_SHARDS; s++)
            b->ids[k][s] = -1;
    for (int s = 0; s < b->nshards; s++) {
        char labels[64];
        snprintf(labels, sizeof labels, "shard=\"%s\"", w->shard_names[s]);
        shard_t *sh = &b->shards[s];
        sh->m_size =
            core_metrics_histogram("meridian_batch_size", "Statements per group-commit transaction",
                                   labels, size_bounds, sizeof size_bounds / sizeof size_bounds[0]);
        sh->m_batches = core_metrics_counter("meridian_batches_total",
                                             "Group-commit transactions sent", labels);
        sh->m_retries = core_metrics_counter(
            "meridian_batch_retries_total",
            "Statements re-sent because another statement aborted their group", labels);
    }
    uv_prepare_init(&w->loop, &b->prepare);
    b->prepare.data = b;
    uv_prepare_start(&b->prepare, on_prepare);
    /* It must not keep the loop alive: it only serves work other handles bring. */
    uv_unref((uv_handle_t *)&b->prepare);
    w->batch = b;
    return b;
}

int rg_batch_add(rg_batch_t *b, int shard, const char *key, const char *sql, int nparams,
                 const char *const *values, core_pg_cb cb, void *ud)
{
    if (b && b->queued + b->failed.n >= RG_BATCH_MAX_QUEUED)
        return UV_EBUSY;
    if (!b || b->closing || shard < 0 || shard >= b->nshards || !sql || !cb || nparams < 0 ||
        nparams > RG_BATCH_MAX_PARAMS || (nparams > 0 && !values))
        return UV_EINVAL;
    int k = 0;
    while (k < b->nsql && b->sql[k] != sql)
        k++;
    if (k == b->nsql) {
        if (b->nsql == MAX_STMTS)
            return UV_EINVAL;
        b->sql[b->nsql++] = sql;
    }
    op_t *op = b->free_ops;
    if (op)
        b->free_ops = op->next;
    else
        op = core_xmalloc(sizeof *op);
    op->b = b;
    op->shard = shard;
    op->stmt = k;
    op->nparams = nparams;
    op->group = NULL;
    op->tries = 0;
    op->err = 0;
    op->order = b->order++;
    for (int i = 0; i < nparams; i++)
        op->values[i] = values[i];
    op->cb = cb;
    op->ud = ud;
    snprintf(op->key, sizeof op->key, "%s", key ? key : "");
    shard_t *sh = &b->shards[shard];
    list_push(&sh->queue, op);
    b->queued++;
    /* A full group goes at once; failures wait for the next pass, since a
     * callback must never run inside the call that submitted it. */
    if (sh->queue.n >= RG_BATCH_MAX && sh->inflight < RG_BATCH_INFLIGHT)
        flush_list(b, shard, &sh->queue);
    return 0;
}

size_t rg_batch_queued(const rg_batch_t *b)
{
    return b ? b->queued : 0;
}
