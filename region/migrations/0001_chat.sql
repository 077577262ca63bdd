-- 0001_chat: the chat domain on one shard of a region.
--
-- Every shard of a region has this same schema. A workspace's content lives
-- on exactly one shard (its placement, in dir_workspaces); the dir_* tables
-- are the region's directory, written by the owning shard in the creating
-- transaction and copied to the other shards so any live shard can answer a
-- lookup. Ids are opaque strings; the directory holds no names or content.

CREATE TABLE dir_workspaces (
    workspace_id text PRIMARY KEY,
    shard        int NOT NULL,
    home_region  text NOT NULL,
    epoch        bigint NOT NULL DEFAULT 1,   -- bumped at every move; fences old homes
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dir_users (
    user_id     text PRIMARY KEY,
    shard       int NOT NULL,
    home_region text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Uniqueness of emails and slugs: a claim on the key's owner shard, chosen by
-- hashing the key; its primary key decides races. Keys are keyed hashes.
CREATE TABLE claims (
    kind       text NOT NULL CHECK (kind IN ('email', 'slug')),
    key_hash   bytea NOT NULL,
    owner_id   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key_hash)
);

-- A user lives on the shard that owns its email claim.
CREATE TABLE users (
    id            text PRIMARY KEY,
    email_hash    bytea NOT NULL UNIQUE,
    email         text NOT NULL,
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    home_region   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Refresh sessions: only a hash of the refresh secret is stored.
CREATE TABLE sessions (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id),
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE workspaces (
    id         text PRIMARY KEY,
    slug       text NOT NULL,
    name       text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    seq        bigint NOT NULL DEFAULT 0     -- the last event sequence number issued
);

CREATE TABLE members (
    workspace_id text NOT NULL REFERENCES workspaces (id),
    user_id      text NOT NULL,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'compliance_admin')),
    status       text NOT NULL CHECK (status IN ('invited', 'active', 'left', 'removed')),
    invited_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX members_user ON members (user_id) WHERE status = 'active';

CREATE TABLE channels (
    workspace_id text NOT NULL REFERENCES workspaces (id),
    id           text NOT NULL,
    name         text NOT NULL,
    private      boolean NOT NULL DEFAULT false,
    archived     boolean NOT NULL DEFAULT false,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, name)
);

CREATE TABLE channel_members (
    workspace_id  text NOT NULL,
    channel_id    text NOT NULL,
    user_id       text NOT NULL,
    last_read_seq bigint NOT NULL DEFAULT 0,
    joined_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, channel_id, user_id),
    FOREIGN KEY (workspace_id, channel_id) REFERENCES channels (workspace_id, id)
);

-- Messages are ordered by seq: the workspace sequence number of the event
-- that created them, issued under the workspace row's lock, so seq order is
-- commit order.
CREATE TABLE messages (
    workspace_id  text NOT NULL,
    id            text NOT NULL,
    channel_id    text NOT NULL,
    seq           bigint NOT NULL,
    author_id     text NOT NULL,
    parent_id     text,                      -- thread parent; NULL for top-level messages
    body          text NOT NULL,
    client_msg_id text,
    reply_count   int NOT NULL DEFAULT 0,
    last_reply_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    edited_at     timestamptz,
    deleted_at    timestamptz,               -- a tombstone keeps the row, drops the body
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, author_id, client_msg_id),
    FOREIGN KEY (workspace_id, channel_id) REFERENCES channels (workspace_id, id)
);
CREATE INDEX messages_channel_seq ON messages (workspace_id, channel_id, seq) WHERE parent_id IS NULL;
CREATE INDEX messages_thread_seq ON messages (workspace_id, parent_id, seq) WHERE parent_id IS NOT NULL;
CREATE INDEX messages_search ON messages USING gin (to_tsvector('simple', body));

CREATE TABLE reactions (
    workspace_id text NOT NULL,
    message_id   text NOT NULL,
    emoji        text NOT NULL,
    user_id      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, message_id, emoji, user_id),
    FOREIGN KEY (workspace_id, message_id) REFERENCES messages (workspace_id, id)
);

-- The transactional outbox: every state change writes its event here in the
-- same transaction. (workspace_id, seq) is gap-free per workspace.
CREATE TABLE outbox (
    workspace_id text NOT NULL,
    seq          bigint NOT NULL,
    event_id     uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    type         text NOT NULL,
    channel_id   text,                       -- set for channel events: private fan-out filters on it
    payload      jsonb NOT NULL,
    residency    text NOT NULL DEFAULT 'workspace',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    PRIMARY KEY (workspace_id, seq)
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
