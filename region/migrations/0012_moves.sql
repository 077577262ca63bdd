-- 0012_moves: live moves of a workspace to another region (docs/moves.md).
--
-- The source region drives a move from a row of `moves` on the workspace's
-- shard; every step is a state change of that row, committed with the step's
-- effect and its audit entry, so a move that crashes at any step resumes from
-- its row. The target region keeps what it received in `move_in`.

CREATE TABLE moves (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id  text NOT NULL,
    source_region text NOT NULL,
    target_region text NOT NULL,
    state         text NOT NULL CHECK (state IN ('scheduled', 'catching_up', 'frozen', 'flipped',
                                                 'purging', 'shredding', 'done', 'cancelled')),
    not_before    timestamptz,
    reason        text NOT NULL DEFAULT '',
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- A driver holds the move while its lease lasts; a crashed driver's lease
    -- runs out and any worker of the region takes over from the row.
    lease_owner   text,
    lease_until   timestamptz,
    -- Catch-up: the table being copied and the last key sent (keyset order),
    -- then the workspace sequence the copy has caught up to.
    copy_table    int NOT NULL DEFAULT 0,
    copy_key      jsonb,
    base_seq      bigint,
    caught_seq    bigint,
    copied        jsonb NOT NULL DEFAULT '{}',
    total_rows    bigint NOT NULL DEFAULT 0,
    done_rows     bigint NOT NULL DEFAULT 0,
    epoch_before  bigint,
    allowed_after text[],
    final_seq     bigint,
    steps         jsonb NOT NULL DEFAULT '{}',   -- step -> {started_at, finished_at}
    purged        jsonb NOT NULL DEFAULT '{}',
    freeze_ms     bigint,
    error         text,
    synced        boolean NOT NULL DEFAULT true,   -- the target has the final status
    report_text   text,
    report_sig    bytea,
    report_kid    text
);
-- One move at a time per workspace.
CREATE UNIQUE INDEX moves_active ON moves (workspace_id)
    WHERE state NOT IN ('done', 'cancelled');
CREATE INDEX moves_due ON moves (not_before) WHERE state NOT IN ('done', 'cancelled');

CREATE TABLE move_in (
    move_id       uuid PRIMARY KEY,
    workspace_id  text NOT NULL,
    source_region text NOT NULL,
    state         text NOT NULL CHECK (state IN ('loading', 'committed')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    committed_at  timestamptz,
    status        jsonb,        -- the source's view of the move, pushed after each step
    report_text   text,
    report_sig    bytea,
    report_kid    text
);
CREATE INDEX move_in_workspace ON move_in (workspace_id, created_at);

-- The write fence. From the freeze on, the source's workspace row names the
-- target; any statement that would issue a sequence number (every write of
-- content does, under the workspace row's lock) fails here, in the same
-- transaction, whatever a worker's cached directory says. Before the flip it
-- is "moving, retry" (MR503); after it, "the home is now <target>" (MR421).
ALTER TABLE workspaces ADD COLUMN moving_to text;

CREATE FUNCTION workspaces_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM dir_workspaces d WHERE d.workspace_id = OLD.id
               AND d.home_region = OLD.moving_to) THEN
        RAISE EXCEPTION '%', OLD.moving_to USING ERRCODE = 'MR421';
    END IF;
    RAISE EXCEPTION 'workspace % is moving', OLD.id USING ERRCODE = 'MR503';
END
$$;
CREATE TRIGGER workspaces_fence BEFORE UPDATE ON workspaces
    FOR EACH ROW WHEN (OLD.moving_to IS NOT NULL AND NEW.seq IS DISTINCT FROM OLD.seq)
    EXECUTE FUNCTION workspaces_fence();

-- Read markers and channel membership change without an event: fenced too.
CREATE FUNCTION channel_members_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ws text := CASE WHEN TG_OP = 'DELETE' THEN OLD.workspace_id ELSE NEW.workspace_id END;
    dest text;
BEGIN
    SELECT moving_to INTO dest FROM workspaces WHERE id = ws;
    IF dest IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM dir_workspaces d WHERE d.workspace_id = ws
                   AND d.home_region = dest) THEN
            -- After the flip the rows here are only waiting for the purge.
            IF TG_OP = 'DELETE' THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION '%', dest USING ERRCODE = 'MR421';
        END IF;
        RAISE EXCEPTION 'workspace % is moving', ws USING ERRCODE = 'MR503';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
CREATE TRIGGER channel_members_fence BEFORE INSERT OR UPDATE OR DELETE ON channel_members
    FOR EACH ROW EXECUTE FUNCTION channel_members_fence();

-- Loads rows of one table (a JSON array of row objects, as row_to_json wrote
-- them at the source) into this shard, replacing rows with the same primary
-- key. Columns come from the catalog, so that a later migration's column is
-- carried without a change here. Returns the rows written.
CREATE FUNCTION move_upsert(tbl regclass, rows jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    cols text;
    pk text;
    upd text;
    n bigint;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
    FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO pk
    FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    SELECT string_agg(format('%I = EXCLUDED.%I', a.attname, a.attname), ', ' ORDER BY a.attnum)
    INTO upd
    FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
    AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = tbl AND i.indisprimary
                    AND a.attnum = ANY (i.indkey));
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM jsonb_populate_recordset(NULL::%s, $1)'
                   ' ON CONFLICT (%s) DO %s', tbl, cols, cols, tbl, pk,
                   CASE WHEN upd IS NULL THEN 'NOTHING' ELSE 'UPDATE SET ' || upd END)
    USING rows;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- move_upsert, or with `col` a replacement: '*' first deletes the
-- workspace's rows of the table, another column name deletes the rows whose
-- value is in `keys` (e.g. the reactions of the messages being re-sent).
CREATE FUNCTION move_load(tbl regclass, ws text, col text, keys text[], rows jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    IF col = '*' THEN
        EXECUTE format('DELETE FROM %s WHERE workspace_id = $1', tbl) USING ws;
    ELSIF col IS NOT NULL THEN
        EXECUTE format('DELETE FROM %s WHERE workspace_id = $1 AND %I = ANY ($2)', tbl, col)
        USING ws, keys;
    END IF;
    RETURN move_upsert(tbl, rows);
END
$$;

-- Deletes up to `lim` rows of a workspace from the first of its tables that
-- still has any, children before parents; no row means nothing is left.
CREATE FUNCTION move_purge(ws text, lim int) RETURNS TABLE (tbl text, n bigint)
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    c bigint;
BEGIN
    FOREACH t IN ARRAY ARRAY['reactions', 'messages', 'outbox', 'channel_members', 'channels',
                             'members', 'outbox_relay', 'workspaces'] LOOP
        IF t = 'workspaces' THEN
            DELETE FROM workspaces WHERE id = ws;
        ELSE
            EXECUTE format('DELETE FROM %I WHERE ctid = ANY (ARRAY(SELECT ctid FROM %I'
                           ' WHERE workspace_id = $1 LIMIT $2))', t, t) USING ws, lim;
        END IF;
        GET DIAGNOSTICS c = ROW_COUNT;
        IF c > 0 THEN
            tbl := t;
            n := c;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- A move as the admin API shows it (docs/moves.md).
CREATE FUNCTION move_status(m moves) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id, 'workspace_id', m.workspace_id, 'source_region', m.source_region,
        'target_region', m.target_region, 'state', m.state, 'not_before', m.not_before,
        'created_at', m.created_at, 'created_by', m.created_by, 'reason', m.reason,
        'updated_at', m.updated_at, 'freeze_ms', m.freeze_ms, 'error', m.error,
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
