-- 0004_write_path_indexes: index settings measured on the posting path.
--
-- The search index's pending list (fastupdate) is merged into the GIN tree by
-- whichever insert finds it full. At the default 4 MB one merge held a
-- shard's write transaction for 100-200 ms, so every post behind it waited:
-- p99 acknowledgement ~100 ms. Small pending lists merge often and briefly:
-- measured p99 ~20 ms and more posts per second (6.5-7k/s against ~4.5k/s).
ALTER INDEX messages_search SET (gin_pending_list_limit = 64);

-- Unread counts and channel lists look up a user's channel memberships in a
-- workspace; the primary key leads with the channel.
CREATE INDEX channel_members_user ON channel_members (workspace_id, user_id);
