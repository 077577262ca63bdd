-- 0010_residency: the residency policy of home workspaces and the audit trail
-- of every change to it (docs/residency.md).
--
-- A workspace's policy is its home region (dir_workspaces.home_region), the
-- regions allowed to hold its data (workspaces.allowed_regions, home
-- included), whether it is pinned, and the reason for the last change.
ALTER TABLE workspaces
    ADD COLUMN pinned boolean NOT NULL DEFAULT false,
    ADD COLUMN policy_reason text,
    ADD COLUMN policy_changed_at timestamptz,
    ADD COLUMN policy_changed_by text;

-- The audit trail: append-only, one hash chain per shard. Entry n holds
--   hash = BLAKE2b-256(prev_hash || entry)      (prev_hash of entry 1: 32 zero bytes)
--   signature = Ed25519(hash) with the region's signing key (key_id = its kid)
-- where entry is the canonical JSON text exactly as stored. Any edited,
-- removed, inserted or reordered row breaks the chain or a signature, which
-- `meridianctl audit verify` names.
CREATE TABLE audit_log (
    seq         bigint PRIMARY KEY CHECK (seq >= 1),
    region      text NOT NULL,
    at          timestamptz NOT NULL,
    workspace_id text,
    action      text NOT NULL,
    entry       text NOT NULL,
    prev_hash   bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash        bytea NOT NULL CHECK (length(hash) = 32),
    signature   bytea NOT NULL CHECK (length(signature) = 64),
    key_id      text NOT NULL
);
CREATE INDEX audit_log_workspace ON audit_log (workspace_id, seq);

-- Append-only for every writer that goes through SQL: changing history takes
-- disabling this trigger first, which the chain still exposes.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Events a replica region refused because the workspace does not allow it
-- (design.md invariant 3), and replicas dropped when a policy change removed
-- this region: counted here as well as in metrics, so that they survive restarts.
CREATE TABLE residency_refusals (
    workspace_id text NOT NULL,
    home_region  text,
    reason       text NOT NULL CHECK (reason IN ('event_not_allowed', 'replica_dropped')),
    events       bigint NOT NULL DEFAULT 0,
    at           timestamptz NOT NULL DEFAULT now()
);
