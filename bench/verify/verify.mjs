// bench/verify: how fast `meridianctl residency verify` reads a world's
// stores. A three-region world gets a few workspaces through the API, then
// --messages rows bulk-inserted (INSERT ... SELECT generate_series) straight
// into their home shards' messages tables; verify runs --rounds times and the
// median wall time and rows/s are reported. JSON on stdout, progress on stderr.
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';

import { http, startWorlds } from '../../tests/lib/harness.mjs';
import { buildInfo, ensureBuilt, gitInfo, makeLogger, options, writeResult } from '../lib/common.mjs';
import { machineInfo } from '../lib/proc.mjs';
import { median, round } from '../lib/stats.mjs';

const log = makeLogger('verify');
const o = options(
  {
    messages: { type: 'number', default: 1000000, env: 'BENCH_MESSAGES', short: 'm', help: 'messages seeded in all (split evenly over the workspaces)' },
    workspaces: { type: 'number', default: 4, env: 'BENCH_WORKSPACES', help: 'workspaces created through the API in eu-west (spread over its shards by slug)' },
    rounds: { type: 'number', default: 3, env: 'BENCH_ROUNDS', short: 'r', help: 'verify runs (the median is reported)' },
    'body-bytes': { type: 'number', default: 100, env: 'BENCH_BODY_BYTES', help: 'message body size' },
    out: { type: 'string', default: '', help: 'write the report here too (default bench/verify/results/latest.json)' },
  },
  { usage: 'usage: bench/verify/run [options]  (JSON on stdout; small run: bench/verify/run -m 100000 -r 1)' },
);

const HOME = 'eu-west';
const sq = (s) => `'${String(s).replace(/'/g, "''")}'`;

function runCtl(bin, world) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(bin, ['--json', '--quiet', '--world', world, 'residency', 'verify'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const wall = (performance.now() - t0) / 1e3;
      try {
        resolve({ code, wall, report: JSON.parse(out) });
      } catch {
        reject(new Error(`meridianctl exited ${code} without a JSON report: ${err.trim()}`));
      }
    });
  });
}

async function main() {
  const bin = ensureBuilt('meridianctl', log);
  ensureBuilt('meridian-region', log);
  log('starting a world of three regions');
  const W = await startWorlds({ regions: ['us-east', HOME, 'ap-south'], workers: 1, shards: 2, config: { limits: { write_rate_per_s: 100000, write_burst: 100000 } } });
  try {
    const api = W.regions[HOME].api;
    const su = await http('POST', `${api}/v1/auth/signup`, { body: { email: `bench-${process.pid}@example.com`, password: 'bench verify password', display_name: 'Bench' } });
    if (su.status !== 201) throw new Error(`signup: ${su.status} ${su.text}`);
    const token = su.json.access_token;
    const user = su.json.user.id;
    const auth = { authorization: `Bearer ${token}` };
    const spaces = [];
    for (let i = 0; i < o.workspaces; i++) {
      // Every other workspace also allows us-east: verify then reads replicas too.
      const body = { name: `Bench ${i}`, slug: `bench-verify-${process.pid}-${i}`, ...(i % 2 ? { allowed_regions: ['us-east'] } : {}) };
      const r = await http('POST', `${api}/v1/workspaces`, { body, headers: auth });
      if (r.status !== 201) throw new Error(`workspace: ${r.status} ${r.text}`);
      const ch = await http('GET', `${api}/v1/workspaces/${r.json.workspace.id}/channels`, { headers: auth });
      spaces.push({ id: r.json.workspace.id, channel: ch.json.channels[0].id });
    }
    // Each workspace's home shard, from the home region's directory.
    const pgs = W.regions[HOME].postgres;
    for (const s of spaces) {
      const shard = Number((await pgs[0].psql(`SELECT shard FROM dir_workspaces WHERE workspace_id = ${sq(s.id)}`)).trim());
      s.pg = pgs[shard];
      s.shard = shard;
    }
    // The search index is dropped while seeding and built again afterwards:
    // a GIN index maintained row by row would make seeding take many minutes,
    // and verify does not read it.
    const per = Math.ceil(o.messages / spaces.length);
    const t0 = performance.now();
    await Promise.all(pgs.map((pg) => pg.psql('DROP INDEX IF EXISTS messages_search')));
    for (const s of spaces) {
      log(`seeding ${per} messages into ${s.id} (${HOME} shard ${s.shard})`);
      await s.pg.psql(
        `INSERT INTO messages (workspace_id, id, channel_id, seq, author_id, body)
         SELECT ${sq(s.id)}, 'm_bench' || g, ${sq(s.channel)}, 1000 + g, ${sq(user)}, repeat('x', ${o['body-bytes']})
         FROM generate_series(1, ${per}) g;
         UPDATE workspaces SET seq = seq + 1000 + ${per} WHERE id = ${sq(s.id)}`,
      );
    }
    await Promise.all(
      pgs.map(async (pg) => {
        await pg.psql(`CREATE INDEX messages_search ON messages USING gin (to_tsvector('simple', body)) WITH (gin_pending_list_limit = 64)`);
        await pg.psql('VACUUM ANALYZE messages');
      }),
    );
    const seedSeconds = (performance.now() - t0) / 1e3;
    log(`seeded ${per * spaces.length} messages in ${seedSeconds.toFixed(1)} s`);

    const runs = [];
    for (let i = 0; i < o.rounds; i++) {
      const r = await runCtl(bin, W.worldFile);
      const s = r.report.scanned;
      log(`run ${i + 1}: exit ${r.code}, ${s.postgres_rows} rows in ${r.wall.toFixed(2)} s (${Math.round(s.postgres_rows / r.wall)} rows/s)`);
      runs.push({ exit: r.code, ok: r.report.ok, rows: s.postgres_rows, wall_seconds: round(r.wall, 3), verify_seconds: round(s.seconds, 3), rows_per_s: Math.round(s.postgres_rows / r.wall), redis_keys: s.redis_keys, jetstream_subjects: s.jetstream_subjects, violations: r.report.violations.length });
    }
    const report = {
      bench: 'verify',
      what: 'meridianctl residency verify over a three-region world (2 Postgres shards each, Redis, JetStream)',
      messages_seeded: per * spaces.length,
      workspaces: spaces.length,
      seed_seconds: round(seedSeconds, 1),
      rounds: o.rounds,
      median: {
        rows_scanned: median(runs.map((r) => r.rows)),
        seconds: round(median(runs.map((r) => r.wall_seconds)), 3),
        rows_per_s: Math.round(median(runs.map((r) => r.rows_per_s))),
      },
      all_clean: runs.every((r) => r.exit === 0 && r.ok),
      runs,
      machine: machineInfo(),
      build: buildInfo(),
      git: gitInfo(),
    };
    const file = writeResult('verify', report, o.out || undefined);
    log(`report written to ${file}`);
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    await W.stop();
  }
}

main().catch((e) => {
  process.stderr.write(`bench/verify: ${e.stack || e.message}\n`);
  process.exit(1);
});
