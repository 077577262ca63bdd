/* mbox.h: hands work from any thread to a loop thread without races.
 *
 * Items are intrusive: the sender embeds a core_mbox_item_t in its own object,
 * so posting never allocates. Items posted before core_mbox_close run on the
 * loop; items posted after it are a bug (assert). Each item's fn runs exactly
 * once, on the loop thread, in posting order. */
#ifndef CORE_MBOX_H
#define CORE_MBOX_H

#include <uv.h>

typedef struct core_mbox_item_s core_mbox_item_t;
typedef void (*core_mbox_fn)(core_mbox_item_t *item);

struct core_mbox_item_s {
    core_mbox_item_t *next;
    core_mbox_fn fn;
};

typedef struct {
    uv_async_t async;
    uv_mutex_t mu;
    core_mbox_item_t *head;
    core_mbox_item_t *tail;
    int closed;
} core_mbox_t;

int core_mbox_init(core_mbox_t *mb, uv_loop_t *loop);
/* Thread-safe. item->fn must be set by the caller. */
void core_mbox_post(core_mbox_t *mb, core_mbox_item_t *item);
/* Runs what is still queued, then closes the async handle; cb gets the handle. */
void core_mbox_close(core_mbox_t *mb, uv_close_cb cb);

#endif
