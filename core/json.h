/* json.h: JSON parsing (yajl underneath) into a read-only tree, and a writer.
 *
 * Parsing enforces limits on input size, nesting depth and string length, and
 * reports the first problem as a message fit for an API error body. A parsed
 * document owns all of its nodes in one arena: one core_json_free releases
 * everything. */
#ifndef CORE_JSON_H
#define CORE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

typedef enum {
    CORE_JSON_NULL,
    CORE_JSON_BOOL,
    CORE_JSON_NUMBER,
    CORE_JSON_STRING,
    CORE_JSON_ARRAY,
    CORE_JSON_OBJECT,
} core_json_type_t;

typedef struct core_json_s core_json_t;
struct core_json_s {
    core_json_type_t type;
    union {
        bool b;
        struct {
            double d;
            int64_t i; /* valid when is_int */
            bool is_int;
        } num;
        struct {
            const char *s; /* NUL-terminated; may hold embedded NULs, see len */
            size_t len;
        } str;
        struct {
            core_json_t **items;
            const char **keys; /* objects only */
            size_t n;
        } kids;
    } u;
};

typedef struct {
    size_t max_bytes;  /* 0: no limit */
    size_t max_depth;  /* 0: 32 */
    size_t max_string; /* 0: no limit */
} core_json_limits_t;

typedef struct core_json_doc_s core_json_doc_t;

/* Parses a whole document. On error returns a negative code and writes a
 * human-readable reason into err. *doc_out is set only on success. */
int core_json_parse(const char *buf, size_t len, const core_json_limits_t *limits,
                    core_json_doc_t **doc_out, char *err, size_t errlen);
const core_json_t *core_json_root(const core_json_doc_t *doc);
void core_json_free(core_json_doc_t *doc);

/* Object member by key, or NULL (also when obj is not an object). */
const core_json_t *core_json_get(const core_json_t *obj, const char *key);
/* Typed getters: return 0 and set *out, or -1 when absent or of another type. */
int core_json_get_str(const core_json_t *obj, const char *key, const char **out);
int core_json_get_int(const core_json_t *obj, const char *key, int64_t *out);
int core_json_get_bool(const core_json_t *obj, const char *key, bool *out);
const char *core_json_type_name(core_json_type_t t);

/* Writer: appends compact JSON to a core_buf_t, inserting commas itself. */
#define CORE_JW_MAX_DEPTH 64
typedef struct {
    core_buf_t *out;
    int depth;
    bool need_comma[CORE_JW_MAX_DEPTH];
} core_jw_t;

void core_jw_init(core_jw_t *w, core_buf_t *out);
void core_jw_obj_open(core_jw_t *w);
void core_jw_obj_close(core_jw_t *w);
void core_jw_arr_open(core_jw_t *w);
void core_jw_arr_close(core_jw_t *w);
void core_jw_key(core_jw_t *w, const char *key);
void core_jw_str(core_jw_t *w, const char *s);
void core_jw_strn(core_jw_t *w, const char *s, size_t n);
void core_jw_int(core_jw_t *w, int64_t v);
void core_jw_double(core_jw_t *w, double v);
void core_jw_bool(core_jw_t *w, bool v);
void core_jw_null(core_jw_t *w);
/* Appends already-encoded JSON as one value. */
void core_jw_raw(core_jw_t *w, const char *json, size_t n);
/* Escapes a string as a JSON string literal (with quotes) into out. */
void core_json_escape(core_buf_t *out, const char *s, size_t n);

#endif
