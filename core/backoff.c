#include "core/backoff.h"

#include <sodium.h>

void core_backoff_init(core_backoff_t *b, uint32_t base_ms, uint32_t cap_ms)
{
    b->base_ms = base_ms ? base_ms : 1;
    b->cap_ms = cap_ms < b->base_ms ? b->base_ms : cap_ms;
    b->attempt = 0;
    b->jitter = true;
}

uint32_t core_backoff_next(core_backoff_t *b)
{
    uint64_t ceiling = b->base_ms;
    /* Stop doubling once past the cap so the shift never overflows. */
    for (uint32_t i = 0; i < b->attempt && ceiling < b->cap_ms; i++)
        ceiling *= 2;
    if (ceiling > b->cap_ms)
        ceiling = b->cap_ms;
    if (b->attempt < UINT32_MAX)
        b->attempt++;
    if (!b->jitter)
        return (uint32_t)ceiling;
    return core_rand_uniform((uint32_t)ceiling + 1);
}

void core_backoff_reset(core_backoff_t *b)
{
    b->attempt = 0;
}

uint32_t core_rand_uniform(uint32_t n)
{
    return n ? randombytes_uniform(n) : 0;
}
