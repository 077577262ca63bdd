-- 0006_global_directory: the directory every region holds of the whole world.
--
-- dir_workspaces and dir_users already map ids to a shard and a home region;
-- rows for other regions' workspaces and users have shard -1 (not here), or
-- the shard of a local replica. The directory carries opaque ids and keyed
-- hashes only: no names, emails or content (design.md, invariant 8).
ALTER TABLE dir_workspaces
    ADD COLUMN allowed_regions text[] NOT NULL DEFAULT '{}',
    ADD COLUMN pinned boolean NOT NULL DEFAULT false;

-- The keyed hash of a user's email -> their home region: logins are routed by it.
CREATE TABLE dir_emails (
    email_hash  bytea PRIMARY KEY,
    user_id     text NOT NULL,
    home_region text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Directory changes made in this region, published to every other region by
-- the directory relay, written in the transaction that makes them.
CREATE TABLE dir_outbox (
    version    bigserial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('workspace', 'user')),
    id         text NOT NULL,
    body       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published  boolean NOT NULL DEFAULT false
);
CREATE INDEX dir_outbox_unpublished ON dir_outbox (version) WHERE NOT published;
