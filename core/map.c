#include "core/map.h"
#include "core/core.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

typedef struct entry_s {
    struct entry_s *next;
    uint64_t hash;
    void *val;
    char key[]; /* NUL-terminated */
} entry_t;

struct core_map_s {
    entry_t **buckets;
    size_t nbuckets; /* a power of two */
    size_t len;
    size_t cursor; /* where core_map_take looks next */
    unsigned char seed[crypto_shorthash_KEYBYTES];
};

static uint64_t hash(const core_map_t *m, const char *key)
{
    uint64_t h;
    crypto_shorthash((unsigned char *)&h, (const unsigned char *)key, strlen(key), m->seed);
    return h;
}

core_map_t *core_map_new(void)
{
    core_map_t *m = core_xcalloc(1, sizeof *m);
    m->nbuckets = 16;
    m->buckets = core_xcalloc(m->nbuckets, sizeof *m->buckets);
    crypto_shorthash_keygen(m->seed);
    return m;
}

static entry_t **find(const core_map_t *m, const char *key, uint64_t h)
{
    entry_t **pp = &m->buckets[h & (m->nbuckets - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0))
        pp = &(*pp)->next;
    return pp;
}

void *core_map_get(const core_map_t *m, const char *key)
{
    entry_t *e = *find(m, key, hash(m, key));
    return e ? e->val : NULL;
}

static void grow(core_map_t *m)
{
    size_t n = m->nbuckets * 2;
    entry_t **b = core_xcalloc(n, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++) {
        entry_t *e = m->buckets[i];
        while (e) {
            entry_t *next = e->next;
            entry_t **slot = &b[e->hash & (n - 1)];
            e->next = *slot;
            *slot = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

void *core_map_put(core_map_t *m, const char *key, void *val)
{
    uint64_t h = hash(m, key);
    entry_t **pp = find(m, key, h);
    if (*pp) {
        void *old = (*pp)->val;
        (*pp)->val = val;
        return old;
    }
    size_t klen = strlen(key);
    entry_t *e = core_xmalloc(sizeof *e + klen + 1);
    memcpy(e->key, key, klen + 1);
    e->hash = h;
    e->val = val;
    e->next = NULL;
    *pp = e;
    if (++m->len > m->nbuckets)
        grow(m);
    return NULL;
}

void *core_map_remove(core_map_t *m, const char *key)
{
    entry_t **pp = find(m, key, hash(m, key));
    entry_t *e = *pp;
    if (!e)
        return NULL;
    *pp = e->next;
    void *val = e->val;
    free(e);
    m->len--;
    return val;
}

void *core_map_take(core_map_t *m, char *key, size_t cap, int *found)
{
    *found = 0;
    if (m->len == 0)
        return NULL;
    for (size_t i = 0; i < m->nbuckets; i++) {
        size_t b = (m->cursor + i) & (m->nbuckets - 1);
        entry_t *e = m->buckets[b];
        if (!e)
            continue;
        m->buckets[b] = e->next;
        m->len--;
        m->cursor = b;
        if (cap) {
            size_t n = strlen(e->key);
            if (n >= cap)
                n = cap - 1;
            memcpy(key, e->key, n);
            key[n] = '\0';
        }
        void *val = e->val;
        free(e);
        *found = 1;
        return val;
    }
    return NULL;
}

size_t core_map_len(const core_map_t *m)
{
    return m->len;
}

void core_map_each(const core_map_t *m, void (*fn)(const char *, void *, void *), void *ud)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (entry_t *e = m->buckets[i]; e; e = e->next)
            fn(e->key, e->val, ud);
}

void core_map_clear(core_map_t *m, void (*free_val)(void *))
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        entry_t *e = m->buckets[i];
        while (e) {
            entry_t *next = e->next;
            if (free_val)
                free_val(e->val);
            free(e);
            e = next;
        }
        m->buckets[i] = NULL;
    }
    m->len = 0;
}

void core_map_free(core_map_t *m, void (*free_val)(void *))
{
    if (!m)
        return;
    core_map_clear(m, free_val);
    free(m->buckets);
    free(m);
}
