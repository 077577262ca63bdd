/* map.h: a hash map from strings to pointers.
 *
 * Keys are copied and owned by the map; values belong to the caller (pass a
 * free function to clear/free to release them). Hashing is SipHash with a
 * random key per map, so keys chosen by clients (ids in URLs) cannot be
 * crafted to collide. Not thread-safe: one map per loop. */
#ifndef CORE_MAP_H
#define CORE_MAP_H

#include <stddef.h>

typedef struct core_map_s core_map_t;

core_map_t *core_map_new(void);
/* The value stored under key, or NULL. */
void *core_map_get(const core_map_t *m, const char *key);
/* Stores val under key; returns the value it replaced, or NULL. */
void *core_map_put(core_map_t *m, const char *key, void *val);
/* Removes key; returns its value, or NULL. */
void *core_map_remove(core_map_t *m, const char *key);
size_t core_map_len(const core_map_t *m);
/* Removes every entry, calling free_val (if not NULL) on each value. */
void core_map_clear(core_map_t *m, void (*free_val)(void *));
/* Removes some entry (in no particular order) and copies its key into key
 * (truncated to cap); returns its value, or NULL when the map is empty (or
 * the value was NULL). Repeated calls take every entry eventually. */
void *core_map_take(core_map_t *m, char *key, size_t cap, int *found);
/* Calls fn on each entry; fn must not change the map. */
void core_map_each(const core_map_t *m, void (*fn)(const char *key, void *val, void *ud), void *ud);
/* Frees the map (clearing it first). NULL is a no-op. */
void core_map_free(core_map_t *m, void (*free_val)(void *));

#endif
