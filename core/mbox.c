#include "core/mbox.h"

#include <assert.h>

static core_mbox_item_t *take_all(core_mbox_t *mb)
{
    uv_mutex_lock(&mb->mu);
    core_mbox_item_t *head = mb->head;
    mb->head = mb->tail = NULL;
    uv_mutex_unlock(&mb->mu);
    return head;
}

static void run_all(core_mbox_t *mb)
{
    /* Several posts may coalesce into one wakeup: drain until empty. */
    core_mbox_item_t *it;
    while ((it = take_all(mb)) != NULL) {
        while (it) {
            core_mbox_item_t *next = it->next; /* fn may free the item */
            it->fn(it);
            it = next;
        }
    }
}

static void on_async(uv_async_t *h)
{
    run_all((core_mbox_t *)h->data);
}

int core_mbox_init(core_mbox_t *mb, uv_loop_t *loop)
{
    mb->head = mb->tail = NULL;
    mb->closed = 0;
    int rc = uv_mutex_init(&mb->mu);
    if (rc)
        return rc;
    rc = uv_async_init(loop, &mb->async, on_async);
    if (rc) {
        uv_mutex_destroy(&mb->mu);
        return rc;
    }
    mb->async.data = mb;
    return 0;
}

void core_mbox_post(core_mbox_t *mb, core_mbox_item_t *item)
{
    item->next = NULL;
    uv_mutex_lock(&mb->mu);
    assert(!mb->closed);
    if (mb->tail)
        mb->tail->next = item;
    else
        mb->head = item;
    mb->tail = item;
    uv_mutex_unlock(&mb->mu);
    uv_async_send(&mb->async);
}

void core_mbox_close(core_mbox_t *mb, uv_close_cb cb)
{
    run_all(mb);
    uv_mutex_lock(&mb->mu);
    mb->closed = 1;
    uv_mutex_unlock(&mb->mu);
    uv_close((uv_handle_t *)&mb->async, cb);
}
