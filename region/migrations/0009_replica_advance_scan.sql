-- 0009_replica_advance_scan: replica_advance reads only what lies past each
-- replica's watermark.
--
-- The first version found the end of the hole-free run with NOT EXISTS
-- (seq + 1), which the planner turned into an anti join over every event of
-- the workspace: 145 ms a call at 20,000 events each for 8 workspaces, so an
-- applier at 10,000 events/s fell further behind the more it held. Numbering
-- the events past the watermark in order (seq - row_number() is the
-- watermark exactly along the run that starts right after it) walks the
-- index from the watermark and no further back.
CREATE OR REPLACE FUNCTION replica_advance(wss text[])
RETURNS TABLE (workspace_id text, home_region text, applied_seq bigint, expected_seq bigint)
LANGUAGE sql AS $$
    WITH cur AS (
        SELECT r.workspace_id,
               coalesce((SELECT max(e.seq) FROM replica_events e
                         WHERE e.workspace_id = r.workspace_id), 0) AS mx,
               coalesce((SELECT max(x.seq) FROM (
                             SELECT e.seq, e.seq - row_number() OVER (ORDER BY e.seq) AS base
                             FROM replica_events e
                             WHERE e.workspace_id = r.workspace_id AND e.seq > r.applied_seq
                             ORDER BY e.seq) x
                         WHERE x.base = r.applied_seq), r.applied_seq) AS ap
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
