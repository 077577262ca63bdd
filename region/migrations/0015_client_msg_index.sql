-- 0015_client_msg_index: idempotency lookups that only one index can serve.
--
-- A post with a client_msg_id first looks for the same (workspace, author,
-- client_msg_id). Through UNIQUE (workspace_id, author_id, client_msg_id)
-- that is one index probe, but every index of messages leads with
-- workspace_id, and a prepared statement's generic plan is costed on the
-- statistics of the moment it is built. Built while a new shard's table was
-- nearly empty, it could rank the primary key as cheap as the unique index
-- and keep it: then each post read every message of its workspace (measured
-- under bench/ingest: 1.5 ms a post at ~2,500 messages a workspace, growing,
-- until autovacuum's next analyze replanned it).
--
-- The same uniqueness as one expression (ids are [A-Za-z0-9_-], so the
-- separator cannot occur in them) is matched by the lookups' expression only,
-- which no other index can serve. NULL client_msg_ids stay unconstrained.
CREATE UNIQUE INDEX messages_client_msg
    ON messages ((workspace_id || ' ' || author_id || ' ' || client_msg_id));
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_workspace_id_author_id_client_msg_id_key;
