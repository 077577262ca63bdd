-- 0014_replica_advance_plpgsql: the same replica_advance, in PL/pgSQL.
--
-- A LANGUAGE sql function that cannot be inlined (this one updates) is
-- parsed and planned again on every call: the applier calls it once per
-- batch, and at 10,000 events/s that planning was a tenth of the replica
-- shard's CPU (perf). PL/pgSQL keeps the statement's plan for the session.
CREATE OR REPLACE FUNCTION replica_advance(wss text[])
RETURNS TABLE (workspace_id text, home_region text, applied_seq bigint, expected_seq bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
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
    RETURNING r.workspace_id, r.home_region, r.applied_seq, r.expected_seq;
END
$$;
