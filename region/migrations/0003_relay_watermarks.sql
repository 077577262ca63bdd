-- 0003_relay_watermarks: the relay marks what it published per workspace
-- instead of per event.
--
-- Marking every event (claimed_at, published_at) cost two extra row versions
-- and index entries per event, which measured as about half of the write
-- path's database time. A workspace's events are gap-free and in commit order
-- (its seq), so one watermark per workspace says exactly what was published:
-- every event with seq <= published_seq.
CREATE TABLE outbox_relay (
    workspace_id  text PRIMARY KEY,
    published_seq bigint NOT NULL
);

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN claimed_at, DROP COLUMN published_at;

-- The notification now names the workspaces that have news, once each per
-- statement, so the relay reads only those.
DROP TRIGGER outbox_notify ON outbox;
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meridian_outbox', w) FROM (SELECT DISTINCT workspace_id AS w FROM new_rows) x;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
