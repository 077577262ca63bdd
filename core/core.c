#include "core/core.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

static void oom(size_t n)
{
    fprintf(stderr, "level=fatal msg=\"out of memory\" bytes=%zu\n", n);
    abort();
}

void *core_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *core_xcalloc(size_t count, size_t n)
{
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (!p)
        oom(count * n);
    return p;
}

void *core_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *core_xstrdup(const char *s)
{
    return core_xstrndup(s, strlen(s));
}

char *core_xstrndup(const char *s, size_t n)
{
    char *p = core_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

uint64_t core_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int core_init(void)
{
    /* A peer that closes mid-write must give us EPIPE, not kill the worker. */
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return -1;
    return 0;
}

int core_rendezvous(const void *key, size_t len, int n)
{
    int best = 0;
    uint64_t best_score = 0;
    for (int i = 0; i < n; i++) {
        uint8_t out[8];
        int32_t idx = i;
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, sizeof out);
        crypto_generichash_update(&st, key, len);
        crypto_generichash_update(&st, (const uint8_t *)&idx, sizeof idx);
        crypto_generichash_final(&st, out, sizeof out);
        uint64_t score;
        memcpy(&score, out, sizeof score);
        if (i == 0 || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    return best;
}
