#include "core/json.h"
#include "core/core.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

/* ---- arena: every node and string of a document lives here ---- */

typedef struct chunk_s {
    struct chunk_s *next;
    size_t used, cap;
    char data[];
} chunk_t;

struct core_json_doc_s {
    chunk_t *chunks;
    core_json_t *root;
};

static void *arena_alloc(core_json_doc_t *d, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    chunk_t *c = d->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 4096 ? n : 4096;
        c = core_xmalloc(sizeof(chunk_t) + cap);
        c->used = 0;
        c->cap = cap;
        c->next = d->chunks;
        d->chunks = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

/* ---- parser state ---- */

typedef struct {
    core_json_t *node;
    size_t n, cap;
    core_json_t **items;
    const char **keys;
    const char *pending_key;
} frame_t;

typedef struct {
    core_json_doc_t *doc;
    const core_json_limits_t *lim;
    size_t max_depth;
    frame_t *stack;
    size_t depth;
    char err[128];
} pctx_t;

static char *arena_str(core_json_doc_t *d, const unsigned char *s, size_t len)
{
    char *p = arena_alloc(d, len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

static int attach(pctx_t *c, core_json_t *v)
{
    if (c->depth == 0) {
        c->doc->root = v;
        return 1;
    }
    frame_t *f = &c->stack[c->depth - 1];
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->items = core_xrealloc(f->items, f->cap * sizeof *f->items);
        /* Always both: a frame is reused by later containers of either
         * kind, and an object after an array must find room for keys. */
        f->keys = core_xrealloc(f->keys, f->cap * sizeof *f->keys);
    }
    if (f->node->type == CORE_JSON_OBJECT)
        f->keys[f->n] = f->pending_key;
    f->items[f->n++] = v;
    return 1;
}

static core_json_t *new_node(pctx_t *c, core_json_type_t t)
{
    core_json_t *v = arena_alloc(c->doc, sizeof *v);
    memset(v, 0, sizeof *v);
    v->type = t;
    return v;
}

static int on_null(void *ctx)
{
    pctx_t *c = ctx;
    return attach(c, new_node(c, CORE_JSON_NULL));
}

static int on_bool(void *ctx, int b)
{
    pctx_t *c = ctx;
    core_json_t *v = new_node(c, CORE_JSON_BOOL);
    v->u.b = b != 0;
    return attach(c, v);
}

static int on_number(void *ctx, const char *s, size_t len)
{
    pctx_t *c = ctx;
    char tmp[64];
    if (len >= sizeof tmp) {
        snprintf(c->err, sizeof c->err, "number too long");
        return 0;
    }
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    core_json_t *v = new_node(c, CORE_JSON_NUMBER);
    v->u.num.d = strtod(tmp, NULL);
    if (!strpbrk(tmp, ".eE")) {
        errno = 0;
        long long i = strtoll(tmp, NULL, 10);
        if (errno == 0) {
            v->u.num.i = i;
            v->u.num.is_int = true;
        }
    } else if (isfinite(v->u.num.d) && v->u.num.d == floor(v->u.num.d) &&
               fabs(v->u.num.d) < 9007199254740992.0) {
        v->u.num.i = (int64_t)v->u.num.d;
        v->u.num.is_int = true;
    }
    return attach(c, v);
}

static int check_string(pctx_t *c, size_t len)
{
    if (c->lim && c->lim->max_string && len > c->lim->max_string) {
        snprintf(c->err, sizeof c->err, "string longer than %zu bytes", c->lim->max_string);
        return 0;
    }
    return 1;
}

static int on_string(void *ctx, const unsigned char *s, size_t len)
{
    pctx_t *c = ctx;
    if (!check_string(c, len))
        return 0;
    core_json_t *v = new_node(c, CORE_JSON_STRING);
    v->u.str.s = arena_str(c->doc, s, len);
    v->u.str.len = len;
    return attach(c, v);
}

static int open_container(pctx_t *c, core_json_type_t t)
{
    if (c->depth >= c->max_depth) {
        snprintf(c->err, sizeof c->err, "nesting deeper than %zu levels", c->max_depth);
        return 0;
    }
    core_json_t *v = new_node(c, t);
    if (!attach(c, v))
        return 0;
    frame_t *f = &c->stack[c->depth++];
    f->node = v;
    f->n = 0;
    f->pending_key = NULL;
    return 1;
}

static int close_container(pctx_t *c)
{
    frame_t *f = &c->stack[--c->depth];
    core_json_t *v = f->node;
    v->u.kids.n = f->n;
    if (f->n) {
        v->u.kids.items = arena_alloc(c->doc, f->n * sizeof *f->items);
        memcpy(v->u.kids.items, f->items, f->n * sizeof *f->items);
        if (v->type == CORE_JSON_OBJECT) {
            v->u.kids.keys = arena_alloc(c->doc, f->n * sizeof *f->keys);
            memcpy(v->u.kids.keys, f->keys, f->n * sizeof *f->keys);
        }
    }
    return 1;
}

static int on_start_map(void *ctx)
{
    return open_container(ctx, CORE_JSON_OBJECT);
}

static int on_map_key(void *ctx, const unsigned char *s, size_t len)
{
    pctx_t *c = ctx;
    if (!check_string(c, len))
        return 0;
    c->stack[c->depth - 1].pending_key = arena_str(c->doc, s, len);
    return 1;
}

static int on_start_array(void *ctx)
{
    return open_container(ctx, CORE_JSON_ARRAY);
}

static const yajl_callbacks callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_bool,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_map_key,
    .yajl_end_map = (int (*)(void *))close_container,
    .yajl_start_array = on_start_array,
    .yajl_end_array = (int (*)(void *))close_container,
};

int core_json_parse(const char *buf, size_t len, const core_json_limits_t *limits,
                    core_json_doc_t **doc_out, char *err, size_t errlen)
{
    if (limits && limits->max_bytes && len > limits->max_bytes) {
        snprintf(err, errlen, "document larger than %zu bytes", limits->max_bytes);
        return -E2BIG;
    }
    pctx_t c = {0};
    c.lim = limits;
    c.max_depth = limits && limits->max_depth ? limits->max_depth : 32;
    c.doc = core_xcalloc(1, sizeof *c.doc);
    c.stack = core_xcalloc(c.max_depth, sizeof *c.stack);

    yajl_handle h = yajl_alloc(&callbacks, NULL, &c);
    yajl_status st = yajl_parse(h, (const unsigned char *)buf, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    int rc = 0;
    if (st != yajl_status_ok || !c.doc->root) {
        if (c.err[0]) {
            snprintf(err, errlen, "%s", c.err);
        } else {
            unsigned char *msg = yajl_get_error(h, 0, (const unsigned char *)buf, len);
            /* yajl says "parse error: <reason>\n"; keep the reason only */
            const char *m = (const char *)msg;
            if (strncmp(m, "parse error: ", 13) == 0)
                m += 13;
            snprintf(err, errlen, "invalid JSON: %.*s", (int)strcspn(m, "\n"), m);
            yajl_free_error(h, msg);
        }
        rc = -EINVAL;
    }
    yajl_free(h);
    for (size_t i = 0; i < c.max_depth; i++) {
        free(c.stack[i].items);
        free(c.stack[i].keys);
    }
    free(c.stack);
    if (rc) {
        core_json_free(c.doc);
        return rc;
    }
    *doc_out = c.doc;
    return 0;
}

const core_json_t *core_json_root(const core_json_doc_t *doc)
{
    return doc->root;
}

void core_json_free(core_json_doc_t *doc)
{
    if (!doc)
        return;
    chunk_t *c = doc->chunks;
    while (c) {
        chunk_t *next = c->next;
        free(c);
        c = next;
    }
    free(doc);
}

const core_json_t *core_json_get(const core_json_t *obj, const char *key)
{
    if (!obj || obj->type != CORE_JSON_OBJECT)
        return NULL;
    /* Last one wins for duplicate keys, as in most parsers. */
    for (size_t i = obj->u.kids.n; i-- > 0;)
        if (strcmp(obj->u.kids.keys[i], key) == 0)
            return obj->u.kids.items[i];
    return NULL;
}

int core_json_get_str(const core_json_t *obj, const char *key, const char **out)
{
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type != CORE_JSON_STRING)
        return -1;
    *out = v->u.str.s;
    return 0;
}

int core_json_get_int(const core_json_t *obj, const char *key, int64_t *out)
{
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type != CORE_JSON_NUMBER || !v->u.num.is_int)
        return -1;
    *out = v->u.num.i;
    return 0;
}

int core_json_get_bool(const core_json_t *obj, const char *key, bool *out)
{
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type != CORE_JSON_BOOL)
        return -1;
    *out = v->u.b;
    return 0;
}

const char *core_json_type_name(core_json_type_t t)
{
    static const char *names[] = {"null", "boolean", "number", "string", "array", "object"};
    return t <= CORE_JSON_OBJECT ? names[t] : "?";
}

/* ---- writer ---- */

void core_jw_init(core_jw_t *w, core_buf_t *out)
{
    w->out = out;
    w->depth = 0;
    w->need_comma[0] = false;
}

static void before_value(core_jw_t *w)
{
    if (w->need_comma[w->depth])
        core_buf_putc(w->out, ',');
    w->need_comma[w->depth] = true;
}

static void open(core_jw_t *w, char c)
{
    before_value(w);
    core_buf_putc(w->out, c);
    if (w->depth + 1 < CORE_JW_MAX_DEPTH)
        w->depth++;
    w->need_comma[w->depth] = false;
}

static void close_(core_jw_t *w, char c)
{
    core_buf_putc(w->out, c);
    if (w->depth > 0)
        w->depth--;
}

void core_jw_obj_open(core_jw_t *w)
{
    open(w, '{');
}

void core_jw_obj_close(core_jw_t *w)
{
    close_(w, '}');
}

void core_jw_arr_open(core_jw_t *w)
{
    open(w, '[');
}

void core_jw_arr_close(core_jw_t *w)
{
    close_(w, ']');
}

void core_jw_key(core_jw_t *w, const char *key)
{
    before_value(w);
    core_json_escape(w->out, key, strlen(key));
    core_buf_putc(w->out, ':');
    w->need_comma[w->depth] = false; /* the value follows the colon directly */
}

void core_jw_str(core_jw_t *w, const char *s)
{
    core_jw_strn(w, s, strlen(s));
}

void core_jw_strn(core_jw_t *w, const char *s, size_t n)
{
    before_value(w);
    core_json_escape(w->out, s, n);
    /* after a key, the next key needs a comma */
    w->need_comma[w->depth] = true;
}

void core_jw_int(core_jw_t *w, int64_t v)
{
    before_value(w);
    core_buf_appendf(w->out, "%lld", (long long)v);
    w->need_comma[w->depth] = true;
}

void core_jw_double(core_jw_t *w, double v)
{
    before_value(w);
    if (isfinite(v))
        core_buf_appendf(w->out, "%.17g", v);
    else
        core_buf_puts(w->out, "null"); /* JSON has no NaN or Infinity */
    w->need_comma[w->depth] = true;
}

void core_jw_bool(core_jw_t *w, bool v)
{
    before_value(w);
    core_buf_puts(w->out, v ? "true" : "false");
    w->need_comma[w->depth] = true;
}

void core_jw_null(core_jw_t *w)
{
    before_value(w);
    core_buf_puts(w->out, "null");
    w->need_comma[w->depth] = true;
}

void core_jw_raw(core_jw_t *w, const char *json, size_t n)
{
    before_value(w);
    core_buf_append(w->out, json, n);
    w->need_comma[w->depth] = true;
}

void core_json_escape(core_buf_t *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    core_buf_reserve(out, n + 2);
    core_buf_putc(out, '"');
    size_t run = 0; /* copy unescaped runs in one append */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        core_buf_append(out, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"':
            core_buf_puts(out, "\\\"");
            break;
        case '\\':
            core_buf_puts(out, "\\\\");
            break;
        case '\n':
            core_buf_puts(out, "\\n");
            break;
        case '\r':
            core_buf_puts(out, "\\r");
            break;
        case '\t':
            core_buf_puts(out, "\\t");
            break;
        default: {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            core_buf_append(out, e, 6);
        }
        }
    }
    core_buf_append(out, s + run, n - run);
    core_buf_putc(out, '"');
}
