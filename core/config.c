#include "core/config.h"
#include "core/core.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_BYTES (1 << 20)

static int open_buf(core_cfg_t *cfg, const char *data, size_t len, const char *what)
{
    char err[160];
    core_json_limits_t lim = {.max_bytes = CONFIG_MAX_BYTES, .max_depth = 16};
    int rc = core_json_parse(data, len, &lim, &cfg->doc, err, sizeof err);
    if (rc) {
        core_cfg_error(cfg, what, "%s", err);
        return rc;
    }
    if (core_json_root(cfg->doc)->type != CORE_JSON_OBJECT) {
        core_cfg_error(cfg, what, "the top level must be a JSON object");
        return -EINVAL;
    }
    return 0;
}

static void init(core_cfg_t *cfg, const char *env_prefix)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->env_prefix = env_prefix;
    core_buf_init(&cfg->errors);
}

int core_cfg_open(core_cfg_t *cfg, const char *path, const char *env_prefix)
{
    init(cfg, env_prefix);
    FILE *f = fopen(path, "rb");
    if (!f) {
        core_cfg_error(cfg, path, "cannot open: %s", strerror(errno));
        return -errno;
    }
    core_buf_t data;
    core_buf_init(&data);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && data.len <= CONFIG_MAX_BYTES)
        core_buf_append(&data, chunk, n);
    fclose(f);
    int rc = open_buf(cfg, data.base ? data.base : "", data.len, path);
    core_buf_free(&data);
    return rc;
}

int core_cfg_open_str(core_cfg_t *cfg, const char *json, const char *env_prefix)
{
    init(cfg, env_prefix);
    return open_buf(cfg, json, strlen(json), "config");
}

void core_cfg_close(core_cfg_t *cfg)
{
    core_json_free(cfg->doc);
    cfg->doc = NULL;
    core_buf_free(&cfg->errors);
}

const core_json_t *core_cfg_root(const core_cfg_t *cfg)
{
    return core_json_root(cfg->doc);
}

void core_cfg_error(core_cfg_t *cfg, const char *path, const char *fmt, ...)
{
    core_buf_appendf(&cfg->errors, "%s: ", path);
    va_list ap;
    va_start(ap, fmt);
    core_buf_vappendf(&cfg->errors, fmt, ap);
    va_end(ap);
    core_buf_putc(&cfg->errors, '\n');
    cfg->nerrors++;
}

void core_cfg_path(char *dst, size_t cap, const char *base, const char *key)
{
    if (!base || !*base)
        snprintf(dst, cap, "%s", key);
    else if (key[0] == '[')
        snprintf(dst, cap, "%s%s", base, key);
    else
        snprintf(dst, cap, "%s.%s", base, key);
}

/* "postgres.shards[1].conninfo" -> "MERIDIAN_POSTGRES__SHARDS__1__CONNINFO" */
static const char *env_lookup(const core_cfg_t *cfg, const char *path, char *name, size_t cap)
{
    if (!cfg->env_prefix)
        return NULL;
    size_t o = (size_t)snprintf(name, cap, "%s_", cfg->env_prefix);
    for (const char *p = path; *p && o + 3 < cap; p++) {
        if (*p == '.' || *p == '[') {
            name[o++] = '_';
            name[o++] = '_';
        } else if (*p != ']') {
            name[o++] = (char)toupper((unsigned char)*p);
        }
    }
    name[o] = '\0';
    return getenv(name);
}

void core_cfg_str(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                  bool required, const char *def, char **out)
{
    char path[256], env[300];
    core_cfg_path(path, sizeof path, base, key);
    const char *ev = env_lookup(cfg, path, env, sizeof env);
    if (ev) {
        *out = core_xstrdup(ev);
        return;
    }
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type == CORE_JSON_NULL) {
        if (required)
            core_cfg_error(cfg, path, "is required (a string)");
        *out = def ? core_xstrdup(def) : NULL;
        return;
    }
    if (v->type != CORE_JSON_STRING) {
        core_cfg_error(cfg, path, "must be a string, not %s", core_json_type_name(v->type));
        *out = def ? core_xstrdup(def) : NULL;
        return;
    }
    *out = core_xstrdup(v->u.str.s);
}

void core_cfg_str_list(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                       char ***out, size_t *n)
{
    char path[256], env[300];
    core_cfg_path(path, sizeof path, base, key);
    *out = NULL;
    *n = 0;
    const char *ev = env_lookup(cfg, path, env, sizeof env);
    if (ev) {
        for (const char *p = ev; *p;) {
            size_t len = strcspn(p, ",");
            const char *s = p;
            size_t l = len;
            while (l && isspace((unsigned char)*s))
                s++, l--;
            while (l && isspace((unsigned char)s[l - 1]))
                l--;
            if (l) {
                *out = core_xrealloc(*out, (*n + 1) * sizeof **out);
                (*out)[(*n)++] = core_xstrndup(s, l);
            }
            p += len;
            if (*p == ',')
                p++;
        }
        return;
    }
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type == CORE_JSON_NULL)
        return;
    if (v->type != CORE_JSON_ARRAY) {
        core_cfg_error(cfg, path, "must be an array of strings, not %s",
                       core_json_type_name(v->type));
        return;
    }
    for (size_t i = 0; i < v->u.kids.n; i++) {
        const core_json_t *it = v->u.kids.items[i];
        if (it->type != CORE_JSON_STRING) {
            core_cfg_error(cfg, path, "item %zu must be a string, not %s", i,
                           core_json_type_name(it->type));
            continue;
        }
        *out = core_xrealloc(*out, (*n + 1) * sizeof **out);
        (*out)[(*n)++] = core_xstrdup(it->u.str.s);
    }
}

void core_cfg_str_list_free(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void core_cfg_int(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                  bool required, int64_t def, int64_t min, int64_t max, int64_t *out)
{
    char path[256], env[300];
    core_cfg_path(path, sizeof path, base, key);
    *out = def;
    int64_t v;
    const char *ev = env_lookup(cfg, path, env, sizeof env);
    if (ev) {
        char *end;
        errno = 0;
        long long x = strtoll(ev, &end, 10);
        if (errno || end == ev || *end) {
            core_cfg_error(cfg, path, "must be an integer (got \"%.40s\" from %s)", ev, env);
            return;
        }
        v = x;
    } else {
        const core_json_t *j = core_json_get(obj, key);
        if (!j || j->type == CORE_JSON_NULL) {
            if (required)
                core_cfg_error(cfg, path, "is required (an integer)");
            return;
        }
        if (j->type != CORE_JSON_NUMBER || !j->u.num.is_int) {
            core_cfg_error(cfg, path, "must be an integer, not %s",
                           j->type == CORE_JSON_NUMBER ? "a fraction"
                                                       : core_json_type_name(j->type));
            return;
        }
        v = j->u.num.i;
    }
    if (v < min || v > max) {
        core_cfg_error(cfg, path, "must be between %lld and %lld (got %lld)", (long long)min,
                       (long long)max, (long long)v);
        return;
    }
    *out = v;
}

void core_cfg_bool(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                   bool def, bool *out)
{
    char path[256], env[300];
    core_cfg_path(path, sizeof path, base, key);
    *out = def;
    const char *ev = env_lookup(cfg, path, env, sizeof env);
    if (ev) {
        if (!strcmp(ev, "true") || !strcmp(ev, "1"))
            *out = true;
        else if (!strcmp(ev, "false") || !strcmp(ev, "0"))
            *out = false;
        else
            core_cfg_error(cfg, path, "must be true or false (got \"%.40s\" from %s)", ev, env);
        return;
    }
    const core_json_t *j = core_json_get(obj, key);
    if (!j || j->type == CORE_JSON_NULL)
        return;
    if (j->type != CORE_JSON_BOOL) {
        core_cfg_error(cfg, path, "must be true or false, not %s", core_json_type_name(j->type));
        return;
    }
    *out = j->u.b;
}

void core_cfg_known_keys(core_cfg_t *cfg, const core_json_t *obj, const char *base,
                         const char *const *keys)
{
    if (!obj || obj->type != CORE_JSON_OBJECT)
        return;
    for (size_t i = 0; i < obj->u.kids.n; i++) {
        const char *k = obj->u.kids.keys[i];
        bool known = false;
        for (const char *const *p = keys; *p && !known; p++)
            known = strcmp(*p, k) == 0;
        if (!known) {
            char path[256];
            core_cfg_path(path, sizeof path, base, k);
            core_cfg_error(cfg, path, "unknown field");
        }
    }
}

static const core_json_t *typed(core_cfg_t *cfg, const core_json_t *obj, const char *base,
                                const char *key, core_json_type_t t)
{
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type == CORE_JSON_NULL)
        return NULL;
    if (v->type != t) {
        char path[256];
        core_cfg_path(path, sizeof path, base, key);
        core_cfg_error(cfg, path, "must be an %s, not %s", core_json_type_name(t),
                       core_json_type_name(v->type));
        return NULL;
    }
    return v;
}

const core_json_t *core_cfg_object(core_cfg_t *cfg, const core_json_t *obj, const char *base,
                                   const char *key)
{
    return typed(cfg, obj, base, key, CORE_JSON_OBJECT);
}

const core_json_t *core_cfg_array(core_cfg_t *cfg, const core_json_t *obj, const char *base,
                                  const char *key)
{
    return typed(cfg, obj, base, key, CORE_JSON_ARRAY);
}

int core_cfg_load(const char *path, const char *json, const char *env_prefix,
                  void (*decode)(core_cfg_t *c, void *obj), void *obj, char **errors)
{
    core_cfg_t c;
    *errors = NULL;
    int rc = path ? core_cfg_open(&c, path, env_prefix) : core_cfg_open_str(&c, json, env_prefix);
    if (rc == 0) {
        decode(&c, obj);
        rc = c.nerrors ? -EINVAL : 0;
    }
    if (rc)
        *errors = core_xstrdup(core_buf_cstr(&c.errors));
    core_cfg_close(&c);
    return rc;
}
