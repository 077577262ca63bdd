// Schema migrations: the node applies them to every shard before serving,
// applying them again is a no-op, and a shard whose schema is newer than the
// binary is refused with a clear error.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import fs from 'node:fs';
import path from 'node:path';

import { REPO_ROOT, http, startWorld } from '../lib/harness.mjs';

// The binary embeds region/migrations/NNNN_*.sql: the newest is the expected version.
const MIGRATIONS = fs.readdirSync(path.join(REPO_ROOT, 'region', 'migrations')).filter((f) => /^\d+_.*\.sql$/.test(f)).sort();
const LATEST = Number(MIGRATIONS.at(-1).split('_')[0]);

let w;
before(async () => {
  w = await startWorld({ workers: 1 });
});
after(async () => {
  await w?.stop();
});

const TABLES = ['audit_log', 'channel_members', 'channels', 'claims', 'dir_changes', 'dir_emails', 'dir_outbox', 'dir_users', 'dir_workspaces', 'members', 'messages', 'move_in', 'moves', 'outbox', 'outbox_relay', 'reactions', 'replica_events', 'replica_workspaces', 'residency_refusals', 'schema_migrations', 'sessions', 'users', 'workspace_keys', 'workspaces'];

test('every shard has the schema once the node is ready', async () => {
  for (const pg of w.postgres) {
    const tables = (await pg.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).trim().split('\n');
    assert.deepEqual(tables, TABLES);
    const versions = (await pg.psql('SELECT version FROM schema_migrations ORDER BY 1')).trim().split('\n').map(Number);
    assert.deepEqual(versions, MIGRATIONS.map((f) => Number(f.split('_')[0])));
  }
  assert.match(w.region.logs(), new RegExp(`event=migrate\\.shard_ok shard=0 applied=${MIGRATIONS.length} version=${LATEST}`));
  assert.match(w.region.logs(), new RegExp(`event=migrate\\.shard_ok shard=1 applied=${MIGRATIONS.length} version=${LATEST}`));
});

test('a restart applies nothing twice', async () => {
  await w.region.stop();
  await w.region.start();
  assert.equal((await http('GET', `${w.api}/readyz`)).status, 200);
  const log = w.region.logs();
  assert.equal(log.match(/event=migrate\.shard_ok shard=0 applied=0/g)?.length, 1, log);
  for (const pg of w.postgres) assert.equal((await pg.psql('SELECT count(*) FROM schema_migrations')).trim(), String(MIGRATIONS.length));
});

test('a shard with a newer schema is refused at start-up', async () => {
  await w.region.stop();
  await w.postgres[1].psql("INSERT INTO schema_migrations (version, name) VALUES (999, '0999_future')");
  try {
    await assert.rejects(w.region.start());
    const info = await w.region.waitExit(10000);
    assert.notEqual(info?.code, 0);
    assert.match(w.region.logs(), new RegExp(`event=migrate\\.shard_failed shard=1 error="the shard's schema is at version 999, newer than this binary's ${LATEST}`));
  } finally {
    await w.postgres[1].psql('DELETE FROM schema_migrations WHERE version = 999');
  }
});
