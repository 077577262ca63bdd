#include "core/admit.h"
#include "core/backoff.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>

void core_bucket_init(core_bucket_t *b, double rate, double burst)
{
    b->rate = rate;
    b->burst = burst < 1 ? 1 : burst;
    b->tokens = b->burst;
    b->at_ns = 0;
}

bool core_bucket_take(core_bucket_t *b, uint64_t now_ns)
{
    if (b->at_ns && now_ns > b->at_ns) {
        b->tokens += (double)(now_ns - b->at_ns) / 1e9 * b->rate;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
    }
    if (!b->at_ns || now_ns > b->at_ns)
        b->at_ns = now_ns;
    if (b->tokens < 1)
        return false;
    b->tokens -= 1;
    return true;
}

void core_bucket_refund(core_bucket_t *b)
{
    if (b->tokens + 1 <= b->burst)
        b->tokens += 1;
}

struct core_admit_s {
    atomic_flag lock;
    core_bucket_t b;
    core_admit_queue_t q;
};

core_admit_t *core_admit_shared_new(double rate, double burst)
{
    core_admit_t *a =
        mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED)
        return NULL;
    atomic_flag_clear(&a->lock);
    core_bucket_init(&a->b, rate, burst);
    core_admit_queue_init(&a->q, rate);
    return a;
}

void core_admit_shared_free(core_admit_t *a)
{
    if (a)
        munmap(a, sizeof *a);
}

static void admit_lock(core_admit_t *a)
{
    /* Held for a few ns; a worker killed (-9) inside it would hold it
     * forever, so a waiter that spins far longer than that takes it over. */
    for (unsigned spins = 0; atomic_flag_test_and_set_explicit(&a->lock, memory_order_acquire);)
        if (++spins > (1u << 22))
            break;
}

static void admit_unlock(core_admit_t *a)
{
    atomic_flag_clear_explicit(&a->lock, memory_order_release);
}

bool core_admit_take(core_admit_t *a, uint64_t now_ns)
{
    admit_lock(a);
    bool ok = core_bucket_take(&a->b, now_ns);
    admit_unlock(a);
    return ok;
}

uint32_t core_admit_hint_ms(core_admit_t *a, uint64_t now_ns, uint32_t min_ms, uint32_t max_ms,
                            uint32_t cap_ms)
{
    uint32_t jitter = core_admit_retry_ms(min_ms, max_ms);
    admit_lock(a);
    uint32_t wait = core_admit_queue_hint_ms(&a->q, now_ns, 0, 0, cap_ms);
    admit_unlock(a);
    return wait + jitter;
}

uint32_t core_admit_retry_ms(uint32_t min_ms, uint32_t max_ms)
{
    return max_ms > min_ms ? min_ms + core_rand_uniform(max_ms - min_ms) : min_ms;
}

void core_admit_queue_init(core_admit_queue_t *q, double rate)
{
    q->rate = rate > 0 ? rate : 1;
    q->next_ns = 0;
    q->last_ns = 0;
}

uint32_t core_admit_queue_hint_ms(core_admit_queue_t *q, uint64_t now_ns, uint32_t min_ms,
                                  uint32_t max_ms, uint32_t cap_ms)
{
    if (q->next_ns < now_ns || now_ns > q->last_ns + CORE_ADMIT_QUEUE_IDLE_NS)
        q->next_ns = now_ns; /* drained, or idle: this one goes first */
    q->last_ns = now_ns;
    uint64_t wait_ns = q->next_ns - now_ns;
    uint64_t cap_ns = (uint64_t)cap_ms * 1000000u;
    if (wait_ns >= cap_ns)
        wait_ns = cap_ns; /* the queue is full: sent to its end, which stays put */
    else
        q->next_ns += (uint64_t)(1e9 / q->rate);
    return (uint32_t)(wait_ns / 1000000u) + core_admit_retry_ms(min_ms, max_ms);
}

/* The jitter's span for a bucket of this rate and burst. */
static uint32_t jitter_span_ms(double rate, double burst)
{
    double span = 1000.0 * burst / rate;
    return span < 100 ? 100 : (uint32_t)span;
}

uint32_t core_admit_queue_slot_ms(core_admit_queue_t *q, uint64_t now_ns, double burst)
{
    return core_admit_queue_hint_ms(q, now_ns, 100, 100 + jitter_span_ms(q->rate, burst),
                                    CORE_ADMIT_QUEUE_MAX_MS);
}

void core_admit_hint_headers(char *out, size_t cap, uint32_t hint_ms)
{
    snprintf(out, cap, "Retry-After: %u\r\nMeridian-Retry-After-Ms: %u\r\n",
             hint_ms / 1000 + (hint_ms % 1000 != 0), hint_ms);
}

uint32_t core_admit_slot_ms(core_admit_t *a, uint64_t now_ns)
{
    /* rate and burst never change after core_admit_shared_new: no lock. */
    return core_admit_hint_ms(a, now_ns, 100, 100 + jitter_span_ms(a->q.rate, a->b.burst),
                              CORE_ADMIT_QUEUE_MAX_MS);
}
