-- 0005_replication: the residency policy of home workspaces, and the replicas
-- this region keeps of other regions' workspaces.
--
-- allowed_regions lists every region allowed to hold the workspace's data,
-- its home included; the relay replicates its events to the others, and only
-- to them. Rows from before this migration allow only their home.
ALTER TABLE workspaces ADD COLUMN allowed_regions text[] NOT NULL DEFAULT '{}';

-- A replica of another region's workspace: its events, applied idempotently
-- by (workspace, seq) on the shard the workspace id hashes to. Every event up
-- to applied_seq is held; expected_seq is the highest seen, so a replica with
-- applied_seq < expected_seq has a gap that is filled from the home region.
CREATE TABLE replica_workspaces (
    workspace_id  text PRIMARY KEY,
    home_region   text NOT NULL,
    applied_seq   bigint NOT NULL DEFAULT 0,
    expected_seq  bigint NOT NULL DEFAULT 0,
    gap_since     timestamptz,
    gaps_found    bigint NOT NULL DEFAULT 0,
    backfilled    bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE replica_events (
    workspace_id text NOT NULL,
    seq          bigint NOT NULL,
    event_id     uuid NOT NULL,
    type         text NOT NULL,
    channel_id   text,
    payload      jsonb NOT NULL,
    home_region  text NOT NULL,
    committed_at timestamptz,                -- at the home region
    applied_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, seq)
);

-- Moves each replica's applied_seq over every event now held with no hole
-- before it, records the highest seq seen, and since when a hole has been
-- open. Idempotent and monotonic, so appliers on several nodes may call it
-- at once, and a call lost in a crash is made good by the next one.
CREATE FUNCTION replica_advance(wss text[])
RETURNS TABLE (workspace_id text, home_region text, applied_seq bigint, expected_seq bigint)
LANGUAGE sql AS $$
    WITH cur AS (
        SELECT r.workspace_id,
               coalesce((SELECT max(e.seq) FROM replica_events e
                         WHERE e.workspace_id = r.workspace_id), 0) AS mx,
               CASE WHEN EXISTS (SELECT 1 FROM replica_events e WHERE e.workspace_id = r.workspace_id
                                 AND e.seq = r.applied_seq + 1)
                    THEN (SELECT min(e.seq) FROM replica_events e
                          WHERE e.workspace_id = r.workspace_id AND e.seq > r.applied_seq
                            AND NOT EXISTS (SELECT 1 FROM replica_events e2
                                            WHERE e2.workspace_id = e.workspace_id
                                              AND e2.seq = e.seq + 1))
                    ELSE r.applied_seq END AS ap
        FROM replica_workspaces r WHERE r.workspace_id = ANY (wss))
    UPDATE replica_workspaces r SET
        applied_seq = GREATEST(r.applied_seq, cur.ap),
        expected_seq = GREATEST(r.expected_seq, cur.mx),
        gap_since = CASE WHEN GREATEST(r.applied_seq, cur.ap) < GREATEST(r.expected_seq, cur.mx)
                         THEN coalesce(r.gap_since, now()) END,
        gaps_found = r.gaps_found
            + CASE WHEN GREATEST(r.applied_seq, cur.ap) < GREATEST(r.expected_seq, cur.mx)
                        AND r.gap_since IS NULL THEN 1 ELSE 0 END,
        updated_at = now()
    FROM cur WHERE r.workspace_id = cur.workspace_id
    RETURNING r.workspace_id, r.home_region, r.applied_seq, r.expected_seq
$$;
