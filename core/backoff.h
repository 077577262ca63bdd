/* backoff.h: exponential backoff with full jitter, used by every reconnecting
 * client of ours so that a region coming back is not flattened by its own
 * clients: delay = random(0, min(cap, base * 2^attempt)). */
#ifndef CORE_BACKOFF_H
#define CORE_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint32_t base_ms;
    uint32_t cap_ms;
    uint32_t attempt;
    bool jitter; /* off only to measure the naive behaviour */
} core_backoff_t;

void core_backoff_init(core_backoff_t *b, uint32_t base_ms, uint32_t cap_ms);
/* Returns the next delay in ms and advances the attempt counter. */
uint32_t core_backoff_next(core_backoff_t *b);
/* Call after a success. */
void core_backoff_reset(core_backoff_t *b);
/* Uniform in [0, n); fork-safe (kernel randomness). */
uint32_t core_rand_uniform(uint32_t n);

#endif
