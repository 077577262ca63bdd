/* admit.h: token buckets for admission control.
 *
 * A region or an edge under a reconnect storm admits new sessions at a
 * configured rate and sheds the rest early and cheaply (design.md,
 * "Thundering herds"). A core_bucket_t is one worker's own; a
 * core_admit_t lives in memory shared by every worker of a node (mapped
 * by the master before it forks), so that the node as a whole keeps its cap
 * whichever worker the kernel hands the connections to. */
#ifndef CORE_ADMIT_H
#define CORE_ADMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    double rate;  /* tokens per second */
    double burst; /* bucket size */
    double tokens;
    uint64_t at_ns; /* last refill; 0: full */
} core_bucket_t;

void core_bucket_init(core_bucket_t *b, double rate, double burst);
/* Takes one token at now_ns; false when the bucket is empty. */
bool core_bucket_take(core_bucket_t *b, uint64_t now_ns);
/* Gives back a token taken in vain (another check refused the session). */
void core_bucket_refund(core_bucket_t *b);

typedef struct core_admit_s core_admit_t;

/* A bucket in shared memory; call before fork. NULL when mmap fails. */
core_admit_t *core_admit_shared_new(double rate, double burst);
/* The master's, once its workers are gone (a worker keeps its own mapping
 * anyway); NULL is a no-op. */
void core_admit_shared_free(core_admit_t *a);
/* core_bucket_take on the shared bucket (a spinlock: a few ns held). */
bool core_admit_take(core_admit_t *a, uint64_t now_ns);

/* A retry hint for a shed client, jittered so that the shed do not come
 * back together: uniform in [min_ms, max_ms). */
uint32_t core_admit_retry_ms(uint32_t min_ms, uint32_t max_ms);

/* Where shed clients are told to come back: a virtual queue, one per
 * bucket. Each shed session gets the next slot after those already handed
 * out, slots spaced at the rate the bucket admits, so that a herd comes back
 * at the cap: not all at once, and not (as with the clients' own growing
 * backoff) seconds after the bucket has room again. Nothing is held for a
 * slot: a client that never comes back only leaves a gap. */
typedef struct {
    double rate;      /* slots per second: the bucket's rate */
    uint64_t next_ns; /* the first free slot */
    uint64_t last_ns; /* when a slot was last handed out */
} core_admit_queue_t;

/* A queue that handed out no slot for this long starts again at now: the
 * herd it spaced out is over, and what it still holds are slots of clients
 * that came back early or never (a queue left seconds ahead by the last
 * herd made the next one wait for nothing). */
#define CORE_ADMIT_QUEUE_IDLE_NS 1000000000ull

void core_admit_queue_init(core_admit_queue_t *q, double rate);
/* The hint for one shed session at now_ns: the wait until its slot (at most
 * cap_ms ahead; slots past that are not handed out) plus a jitter uniform in
 * [min_ms, max_ms). */
uint32_t core_admit_queue_hint_ms(core_admit_queue_t *q, uint64_t now_ns, uint32_t min_ms,
                                  uint32_t max_ms, uint32_t cap_ms);

/* core_admit_queue_hint_ms on a queue shared by every worker of a node, the
 * shared bucket's (slots at its rate). Per-worker queues drift apart: the
 * kernel spreads connections unevenly, and the clients of the worker that
 * shed the most were told to come back last, at that one worker's rate,
 * while the others' buckets sat idle. */
uint32_t core_admit_hint_ms(core_admit_t *a, uint64_t now_ns, uint32_t min_ms, uint32_t max_ms,
                            uint32_t cap_ms);

/* The hint every shed session is given, one policy for the edge and the
 * region: its slot (at most CORE_ADMIT_QUEUE_MAX_MS ahead) plus a jitter
 * uniform in [100 ms, 100 ms + max(100 ms, burst/rate)), so that the
 * clients of neighbouring slots do not arrive in the same instant. The
 * first takes a worker's own queue (burst: its bucket's), the second the
 * shared one (its bucket's burst and rate). */
#define CORE_ADMIT_QUEUE_MAX_MS 30000
/* The headers that carry a hint: "Retry-After" in whole seconds (rounded
 * up, for clients that read only that) and "Meridian-Retry-After-Ms". Each
 * ends in CRLF; out needs CORE_ADMIT_HINT_HEADERS bytes. */
#define CORE_ADMIT_HINT_HEADERS 72
void core_admit_hint_headers(char *out, size_t cap, uint32_t hint_ms);
uint32_t core_admit_queue_slot_ms(core_admit_queue_t *q, uint64_t now_ns, double burst);
uint32_t core_admit_slot_ms(core_admit_t *a, uint64_t now_ns);

#endif
