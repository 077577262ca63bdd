-- 0002_outbox_relay: what the outbox relay needs.
--
-- claimed_at: a relay claims a batch of unpublished events before publishing
-- them, so that the relays of several nodes do not publish the same events;
-- a claim older than a few seconds (its relay died) is taken over.
ALTER TABLE outbox ADD COLUMN claimed_at timestamptz;

-- Committed events wake the relay at once (LISTEN meridian_outbox) instead
-- of waiting for its periodic sweep. One notification per statement, and
-- PostgreSQL folds identical ones within a transaction.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meridian_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
