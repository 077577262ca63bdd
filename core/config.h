/* config.h: reading a JSON configuration file with environment overrides.
 *
 * Every value is addressed by its dotted path ("http.max_body_bytes",
 * "postgres.shards[1].conninfo"). The environment variable
 * <PREFIX>_<PATH>, with path separators written as "__" and letters upper
 * case (MERIDIAN_HTTP__MAX_BODY_BYTES, MERIDIAN_POSTGRES__SHARDS__1__CONNINFO),
 * takes precedence over the file. Readers record every problem, each naming
 * its field, so that one start-up reports all of them at once. */
#ifndef CORE_CONFIG_H
#define CORE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/json.h"

typedef struct core_cfg_s {
    core_json_doc_t *doc;
    const char *env_prefix; /* e.g. "MERIDIAN" */
    core_buf_t errors;      /* one "field: problem" line per error */
    int nerrors;
} core_cfg_t;

/* Reads a whole configuration: the file path (or, when path is NULL, the
 * JSON text json), decoded by decode(c, obj), which records every problem.
 * Returns 0, or a negative error with all of them in *errors (malloc'd, one
 * "field: problem" line each; the caller frees it, and whatever decode left
 * in obj). */
int core_cfg_load(const char *path, const char *json, const char *env_prefix,
                  void (*decode)(core_cfg_t *c, void *obj), void *obj, char **errors);
/* Parses the file. Returns 0, or a negative error with the reason in errors. */
int core_cfg_open(core_cfg_t *cfg, const char *path, const char *env_prefix);
/* Same from a string, for tests. */
int core_cfg_open_str(core_cfg_t *cfg, const char *json, const char *env_prefix);
void core_cfg_close(core_cfg_t *cfg);
const core_json_t *core_cfg_root(const core_cfg_t *cfg);

/* Records an error about field `path`. */
void core_cfg_error(core_cfg_t *cfg, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Readers: `obj` is the JSON object holding the field (may be NULL when the
 * whole section is absent), `base` its path ("" at the top), `key` the field.
 * When the field is absent (in file and environment) the default is stored,
 * or an error is recorded if required. Strings are malloc'd: the caller frees. */
void core_cfg_str(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                  bool required, const char *def, char **out);
void core_cfg_int(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                  bool required, int64_t def, int64_t min, int64_t max, int64_t *out);
void core_cfg_bool(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                   bool def, bool *out);
/* Records an error for every key of obj not in the NULL-terminated list:
 * a misspelt option must not be silently ignored. */
void core_cfg_known_keys(core_cfg_t *cfg, const core_json_t *obj, const char *base,
                         const char *const *keys);
/* An object-valued field; records an error if present but not an object. */
const core_json_t *core_cfg_object(core_cfg_t *cfg, const core_json_t *obj, const char *base,
                                   const char *key);
/* An array-valued field; records an error if present but not an array. */
const core_json_t *core_cfg_array(core_cfg_t *cfg, const core_json_t *obj, const char *base,
                                  const char *key);
/* A list of strings: a JSON array of strings, or from the environment a
 * comma-separated list (empty items dropped). *out is a malloc'd array of
 * malloc'd strings (NULL when empty); free with core_cfg_str_list_free. */
void core_cfg_str_list(core_cfg_t *cfg, const core_json_t *obj, const char *base, const char *key,
                       char ***out, size_t *n);
void core_cfg_str_list_free(char **list, size_t n);
/* Joins base and key into a path ("a.b", "a[2]"). */
void core_cfg_path(char *dst, size_t cap, const char *base, const char *key);

#endif
