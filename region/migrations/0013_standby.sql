-- 0013_standby: a standby copy of a workspace in another allowed region,
-- kept up to date by the same catch-up as a move (docs/moves.md), that an
-- admin promotes when the home region is down.
--
-- A standby is a move that never freezes: its row stays in catching_up and
-- the driver re-sends what new events touched about once a second. The
-- target holds it as a move_in row in 'loading', with the data key sealed to
-- it at the start. Promotion commits that row at the target on its own (the
-- home cannot answer): epoch + 1, the target is home. The old home fences
-- itself when the new epoch reaches it (replication's directory applier).
ALTER TABLE moves ADD COLUMN kind text NOT NULL DEFAULT 'move'
    CHECK (kind IN ('move', 'standby'));
ALTER TABLE move_in ADD COLUMN kind text NOT NULL DEFAULT 'move'
    CHECK (kind IN ('move', 'standby'));
ALTER TABLE move_in ADD COLUMN promoted_at timestamptz;
ALTER TABLE move_in ADD COLUMN promote_reason text;

CREATE OR REPLACE FUNCTION move_status(m moves) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id, 'kind', m.kind, 'workspace_id', m.workspace_id,
        'source_region', m.source_region, 'target_region', m.target_region, 'state', m.state,
        'not_before', m.not_before, 'created_at', m.created_at, 'created_by', m.created_by,
        'reason', m.reason, 'updated_at', m.updated_at, 'freeze_ms', m.freeze_ms,
        'error', m.error, 'caught_seq', m.caught_seq,
        'steps', (SELECT jsonb_agg(jsonb_build_object(
                'name', s.name,
                'state', CASE WHEN m.steps->s.name->>'finished_at' IS NOT NULL
                               OR m.state = 'done' THEN 'done'
                              WHEN m.steps->s.name->>'started_at' IS NOT NULL THEN 'running'
                              ELSE 'pending' END,
                'started_at', m.steps->s.name->'started_at',
                'finished_at', m.steps->s.name->'finished_at',
                'done', CASE s.name WHEN 'catch_up' THEN m.done_rows
                         WHEN 'purge' THEN (SELECT coalesce(sum(value::bigint), 0)
                                            FROM jsonb_each_text(m.purged))
                         ELSE CASE WHEN m.steps->s.name->>'finished_at' IS NOT NULL
                                   THEN 1 ELSE 0 END END,
                'total', CASE WHEN s.name IN ('catch_up', 'purge') THEN m.total_rows ELSE 1 END)
            ORDER BY s.ord)
            FROM (VALUES (1, 'catch_up'), (2, 'freeze'), (3, 'flip'), (4, 'purge'),
                         (5, 'shred')) s(ord, name)))
$$;
