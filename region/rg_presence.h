/* rg_presence.h: presence and typing, kept in the region's Redis with TTLs
 * and broadcast as ephemeral signals on core NATS (eph.<region>.<ws>), never
 * JetStream: they are not events of the workspace's sequence, carry no
 * cursor, and nothing replays them.
 *
 * Redis layout (the {ws} hash tag keeps a workspace's keys in one slot):
 *   pr:{ws}              ZSET user -> expiry (ms, Redis clock): who is online
 *   prc:{ws}:<user>      ZSET connection -> expiry: that user's connections
 *   ty:{ws}:<ch>:<user>  string, PX typing_ttl: the user is typing there
 * Every key expires on its own (twice the presence TTL after the last
 * refresh), so a region that loses a node leaves nothing behind for long.
 *
 * A stream connection joins when it opens, is refreshed every third of the
 * presence TTL and leaves when it closes. A user is online while any of
 * their connections has not expired. Going online (first connection) and
 * offline (last one leaving, or expiring after a crash and being swept by a
 * refresh of the workspace) are published once each. Redis being down costs
 * presence and typing, never the stream. */
#ifndef RG_PRESENCE_H
#define RG_PRESENCE_H

#include <stddef.h>

#include "region/rg_worker.h"

/* The subject of a workspace's ephemeral signals. */
void rg_presence_subject(char *out, size_t cap, const char *region, const char *ws);

/* Records connection conn (unique in the region) of user in workspace ws. */
void rg_presence_join(rg_worker_t *w, const char *ws, const char *user, const char *conn);
/* Removes it; the user goes offline if it was their last connection. */
void rg_presence_leave(rg_worker_t *w, const char *ws, const char *user, const char *conn);
/* Refreshes n connections of ws (users[i], conns[i]) and sweeps the
 * workspace's expired connections, publishing who went offline. */
void rg_presence_refresh(rg_worker_t *w, const char *ws, const char *const *users,
                         const char *const *conns, size_t n);

/* user is typing in channel ch of ws: broadcast unless the same signal is
 * still live (throttle shared by all the user's connections). Returns 0, or
 * a negative error when Redis cannot take it now. */
int rg_typing(rg_worker_t *w, const char *ws, const char *ch, const char *user);

/* GET /v1/workspaces/{id}/presence: the members online now. */
int rg_api_presence_routes(rg_worker_t *w);

#endif
