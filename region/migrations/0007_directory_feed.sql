-- 0007_directory_feed: every change to this shard's copy of the directory,
-- in order, for edges that follow it (GET /v1/directory/changes). Each shard
-- holds the whole directory, so each keeps its own feed; a cursor names its
-- shard.
--
-- A follower asks for versions after its cursor, so versions must become
-- visible in order: a sequence alone hands out 5 and 6 and may commit 6
-- first. The triggers take a transaction-scoped lock before numbering, which
-- orders numbering by commit. Directory writes are rare (sign-ups, workspace
-- creation, policy changes), so serialising them per shard costs nothing.
CREATE TABLE dir_changes (
    version     bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('workspace', 'user', 'email')),
    id          text NOT NULL,          -- workspace id, user id, or the email hash in hex
    home_region text NOT NULL,
    allowed     text[],
    epoch       bigint,
    pinned      boolean,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION dir_changes_workspace() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('meridian.dir_changes'));
    INSERT INTO dir_changes (kind, id, home_region, allowed, epoch, pinned)
    VALUES ('workspace', NEW.workspace_id, NEW.home_region, NEW.allowed_regions, NEW.epoch, NEW.pinned);
    RETURN NULL;
END
$$;
CREATE TRIGGER dir_workspaces_feed AFTER INSERT OR UPDATE ON dir_workspaces
    FOR EACH ROW EXECUTE FUNCTION dir_changes_workspace();

CREATE FUNCTION dir_changes_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('meridian.dir_changes'));
    INSERT INTO dir_changes (kind, id, home_region) VALUES ('user', NEW.user_id, NEW.home_region);
    RETURN NULL;
END
$$;
CREATE TRIGGER dir_users_feed AFTER INSERT OR UPDATE ON dir_users
    FOR EACH ROW EXECUTE FUNCTION dir_changes_user();

CREATE FUNCTION dir_changes_email() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('meridian.dir_changes'));
    INSERT INTO dir_changes (kind, id, home_region)
    VALUES ('email', encode(NEW.email_hash, 'hex'), NEW.home_region);
    RETURN NULL;
END
$$;
CREATE TRIGGER dir_emails_feed AFTER INSERT OR UPDATE ON dir_emails
    FOR EACH ROW EXECUTE FUNCTION dir_changes_email();
