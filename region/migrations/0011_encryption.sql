-- 0011_encryption: encryption at rest of message bodies, and the keyed blind
-- index that replaces full-text search over them (docs/encryption.md).
--
-- workspace_keys holds this region's copy of each workspace's data key,
-- wrapped by the region's master key (key_id names which one: the hex of the
-- first 8 bytes of BLAKE2b of the master key, never the key). Deleting the
-- row destroys the region's copy: crypto-shredding. Rotating the master key
-- rewraps the rows (rewrapped_at); messages are never rewritten.
CREATE TABLE workspace_keys (
    workspace_id text PRIMARY KEY,
    key_id       text NOT NULL,
    wrapped      bytea NOT NULL CHECK (length(wrapped) = 72), -- nonce(24) || key(32) || tag(16)
    created_at   timestamptz DEFAULT now(),
    rewrapped_at timestamptz
);

-- The blind index: one 16-byte keyed hash per distinct normalised term of a
-- message (at most 256), keyed by the workspace's index key. A query's terms
-- are hashed the same way and matched with terms @> query (every term).
-- Tombstones have none.
ALTER TABLE messages ADD COLUMN terms bytea[];
-- The pending list is merged into the tree by whichever insert finds it
-- full: small lists merge often and briefly (see 0004).
CREATE INDEX messages_terms ON messages USING gin (terms) WITH (gin_pending_list_limit = 64);

-- Full-text search over bodies would index ciphertext: gone.
DROP INDEX IF EXISTS messages_search;
