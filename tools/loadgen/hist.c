/* hist.c: a log-linear latency histogram. Values below LG_HIST_SUB us are
 * exact; above, each power of two is split into LG_HIST_SUB buckets, so a
 * percentile is within 1/LG_HIST_SUB of the true value at any scale, in a
 * fixed array (no allocation while recording). */
#include "tools/loadgen/loadgen.h"

#include <string.h>

void lg_hist_reset(lg_hist_t *h)
{
    memset(h, 0, sizeof *h);
}

static size_t bucket_of(uint64_t v)
{
    if (v < LG_HIST_SUB)
        return (size_t)v;
    int msb = 63 - __builtin_clzll(v); /* >= 6 */
    int shift = msb - 6;               /* keep 6 significant bits below the msb */
    size_t sub = (size_t)((v >> shift) & (LG_HIST_SUB - 1));
    size_t b = (size_t)(shift + 1) * LG_HIST_SUB + sub;
    return b < LG_HIST_BUCKETS ? b : LG_HIST_BUCKETS - 1;
}

/* Lowest value that falls in bucket b. */
static uint64_t bucket_low(size_t b)
{
    if (b < LG_HIST_SUB)
        return b;
    size_t shift = b / LG_HIST_SUB - 1;
    uint64_t sub = b % LG_HIST_SUB;
    return (LG_HIST_SUB + sub) << shift;
}

void lg_hist_add(lg_hist_t *h, uint64_t us)
{
    h->counts[bucket_of(us)]++;
    h->n++;
    h->sum_us += (double)us;
    if (us > h->max_us)
        h->max_us = us;
}

double lg_hist_pct_ms(const lg_hist_t *h, double p)
{
    if (!h->n)
        return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->n)
        rank = h->n;
    uint64_t seen = 0;
    for (size_t b = 0; b < LG_HIST_BUCKETS; b++) {
        seen += h->counts[b];
        if (seen >= rank) {
            /* The middle of the bucket, never above the largest value seen. */
            uint64_t lo = bucket_low(b), hi = b + 1 < LG_HIST_BUCKETS ? bucket_low(b + 1) : lo;
            uint64_t mid = lo + (hi - lo) / 2;
            return (double)(mid > h->max_us ? h->max_us : mid) / 1000.0;
        }
    }
    return (double)h->max_us / 1000.0;
}

void lg_hist_json(const lg_hist_t *h, core_buf_t *b)
{
    core_buf_appendf(b,
                     "{\"n\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
                     "\"max\":%.3f,\"mean\":%.3f}",
                     (unsigned long long)h->n, lg_hist_pct_ms(h, 50), lg_hist_pct_ms(h, 90),
                     lg_hist_pct_ms(h, 99), lg_hist_pct_ms(h, 99.9), (double)h->max_us / 1000.0,
                     h->n ? h->sum_us / (double)h->n / 1000.0 : 0.0);
}

void lg_hist_sparse_json(const lg_hist_t *h, core_buf_t *b)
{
    core_buf_putc(b, '[');
    bool first = true;
    for (size_t i = 0; i < LG_HIST_BUCKETS; i++) {
        if (!h->counts[i])
            continue;
        core_buf_appendf(b, "%s[%llu,%llu]", first ? "" : ",", (unsigned long long)bucket_low(i),
                         (unsigned long long)h->counts[i]);
        first = false;
    }
    core_buf_putc(b, ']');
}
