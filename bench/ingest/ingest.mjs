// bench/ingest: how fast a region acknowledges posted messages, next to the
// physical limit of its Postgres shards measured by pgbench in the same run.
//
// Meridian: bench_poster keeps --conns keep-alive connections posting one
// message at a time each (a 201 means the row and its outbox event are
// committed, synchronous_commit=on), spread over --users users, each posting
// to their own workspace's #general, so the load covers both shards.
// Peer: pgbench with a script inserting 100 message rows of the same shape per
// transaction (multi-row VALUES), --pgbench-clients clients split over the
// shards, into a table of the same shape on the same shards. Rounds
// alternate; medians are reported.
//
// Encryption at rest (docs/encryption.md): with --encryption compare (the
// default) every round runs the poster twice, the region restarted with
// encryption.enabled true and false (the blind index is computed in both
// modes, as the region does), and the report adds the overhead of
// encrypting bodies: 1 - on/off of the median rates (target <= 10%).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { pgBin } from '../../deploy/local/lib/stack.mjs';
import { http, makeTmp, startWorld } from '../../tests/lib/harness.mjs';
import { ensureBuilt, gitInfo, makeLogger, options, writeResult } from '../lib/common.mjs';
import { machineInfo } from '../lib/proc.mjs';
import { median, round } from '../lib/stats.mjs';

const log = makeLogger('ingest');
const o = options(
  {
    duration: { type: 'number', default: 10, env: 'BENCH_DURATION', short: 'd', help: 'seconds per measured run' },
    rounds: { type: 'number', default: 3, env: 'BENCH_ROUNDS', short: 'r', help: 'runs of each side (medians reported)' },
    warmup: { type: 'number', default: 2, env: 'BENCH_WARMUP', help: 'seconds before measuring each meridian run' },
    conns: { type: 'number', default: 64, env: 'BENCH_CONNS', short: 'c', help: 'poster connections' },
    users: { type: 'number', default: 8, env: 'BENCH_USERS', help: 'posting users, each with a workspace' },
    'text-bytes': { type: 'number', default: 200, env: 'BENCH_TEXT_BYTES', help: 'message size' },
    'pgbench-clients': { type: 'number', default: 8, env: 'BENCH_PGBENCH_CLIENTS', help: 'pgbench clients in all' },
    workers: { type: 'number', default: 2, env: 'BENCH_WORKERS', help: 'region worker processes' },
    encryption: { type: 'string', default: 'compare', env: 'BENCH_ENCRYPTION', help: 'compare (on and off in every round), on, or off' },
  },
  { usage: 'usage: bench/ingest/run [options]  (JSON on stdout)' },
);

function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}: ${err.slice(-2000)}`))));
  });
}

async function api(w, method, p, body, token) {
  const r = await http(method, `${w.api}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${r.text}`);
  return r.json;
}

async function main() {
  ensureBuilt('meridian-region', log);
  const poster = ensureBuilt('bench_poster', log);
  const tmp = makeTmp('meridian-bench-ingest-');
  const w = await startWorld({
    workers: o.workers,
    config: { log: { level: 'warn', access: false }, limits: { write_rate_per_s: 1000000, write_burst: 1000000 } },
  });
  try {
    // Users, each with a workspace; slugs spread the workspaces over the shards.
    const targets = [];
    for (let i = 0; i < o.users; i++) {
      const email = `bench${i}.${process.pid}@example.com`;
      const s = await api(w, 'POST', '/v1/auth/signup', { email, password: 'bench password', display_name: `Bench ${i}` });
      const ws = await api(w, 'POST', '/v1/workspaces', { name: `Bench ${i}`, slug: `bench-${process.pid}-${i}` }, s.access_token);
      const chans = await api(w, 'GET', `/v1/workspaces/${ws.workspace.id}/channels`, undefined, s.access_token);
      const general = chans.channels.find((c) => c.name === 'general');
      targets.push(`${s.access_token} /v1/workspaces/${ws.workspace.id}/channels/${general.id}/messages`);
    }
    const targetsFile = path.join(tmp, 'targets.txt');
    fs.writeFileSync(targetsFile, `${targets.join('\n')}\n`);
    const placement = await Promise.all(w.postgres.map((pg) => pg.psql('SELECT count(*) FROM workspaces').then((x) => Number(x.trim()))));
    log(`workspaces per shard: ${placement.join(', ')}`);

    // pgbench writes to a table of the same shape (columns, defaults, indexes,
    // the search index included) next to messages on each shard, so that its
    // rows do not swell the table the API writes to between rounds.
    const text = 'abcdefghij klmnopqrst uvwxyz'.repeat(Math.ceil(o['text-bytes'] / 28)).slice(0, o['text-bytes']);
    for (const pg of w.postgres) {
      await pg.psql('CREATE SEQUENCE IF NOT EXISTS pgb_seq; CREATE TABLE IF NOT EXISTS pgb_messages (LIKE messages INCLUDING ALL)');
    }
    const scripts = w.postgres.map((_, i) => {
      const rows = Array.from(
        { length: 100 },
        () => `('w_pgbench${i}', 'p' || nextval('pgb_seq'), 'c_pgbench', currval('pgb_seq'), 'u_pgbench', '${text}', 'k' || currval('pgb_seq'))`,
      );
      const file = path.join(tmp, `pgbench-${i}.sql`);
      fs.writeFileSync(file, `INSERT INTO pgb_messages (workspace_id, id, channel_id, seq, author_id, body, client_msg_id) VALUES\n${rows.join(',\n')};\n`);
      return file;
    });

    const meridianRuns = [];
    const plainRuns = []; // encryption.enabled false
    const pgbenchRuns = [];
    const masterKey = w.region.config.encryption.master_key_file;
    let enabled = true;
    const setEncryption = async (on) => {
      if (on === enabled) return;
      await w.region.stop();
      w.region.config.encryption = { enabled: on, master_key_file: masterKey };
      await w.region.start();
      enabled = on;
    };
    const modes = o.encryption === 'compare' ? [true, false] : [o.encryption !== 'off'];
    for (let i = 0; i < o.rounds; i++) {
      // Alternate which mode goes first, so that drift on a noisy machine
      // does not favour one of them.
      for (const on of i % 2 ? [...modes].reverse() : modes) {
        await setEncryption(on);
        const out = await run(poster, [
          '--port', String(w.port), '--conns', String(o.conns), '--duration', String(o.duration),
          '--warmup', String(o.warmup), '--targets', targetsFile, '--text-bytes', String(o['text-bytes']),
        ]);
        const m = JSON.parse(out);
        (on ? meridianRuns : plainRuns).push(m);
        log(`meridian round ${i + 1} (encryption ${on ? 'on' : 'off'}): ${round2(m.messages_per_s)} msg/s, p99 ${m.latency_ms.p99} ms, 4xx ${m.status['4xx']} 5xx ${m.status['5xx']} errors ${m.errors}`);
      }

      const per = Math.max(1, Math.floor(o['pgbench-clients'] / w.postgres.length));
      const outs = await Promise.all(
        w.postgres.map((pg, i) =>
          run(pgBin('pgbench'), ['-n', '-c', String(per), '-j', String(per), '-T', String(o.duration), '-f', scripts[i], '-h', pg.host || '127.0.0.1', '-p', String(pg.port), '-U', 'meridian', pg.database || 'meridian']),
        ),
      );
      const tps = outs.map((t) => Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(t)?.[1] ?? /tps = ([\d.]+)/.exec(t)?.[1] ?? 0));
      const rows = tps.reduce((a, b) => a + b, 0) * 100;
      pgbenchRuns.push({ clients: per * w.postgres.length, tps_per_shard: tps.map((x) => round(x, 1)), rows_per_s: round(rows, 1) });
      log(`pgbench round ${i + 1}: ${round2(rows)} rows/s`);
    }
    const summary = (runs) =>
      runs.length
        ? {
            messages_per_s: round(median(runs.map((m) => m.messages_per_s)), 1),
            p50_ms: median(runs.map((m) => m.latency_ms.p50)),
            p99_ms: median(runs.map((m) => m.latency_ms.p99)),
            runs,
          }
        : null;
    const on = summary(meridianRuns);
    const off = summary(plainRuns);
    const mainRuns = meridianRuns.length ? meridianRuns : plainRuns;
    const mRate = median(mainRuns.map((m) => m.messages_per_s));
    const mP99 = median(mainRuns.map((m) => m.latency_ms.p99));
    const mP50 = median(mainRuns.map((m) => m.latency_ms.p50));
    const pRate = median(pgbenchRuns.map((p) => p.rows_per_s));
    const report = {
      benchmark: 'ingest',
      at: new Date().toISOString(),
      git: gitInfo(),
      machine: machineInfo(),
      setup: { workers: o.workers, shards: w.postgres.length, conns: o.conns, users: o.users, text_bytes: o['text-bytes'], duration_s: o.duration, rounds: o.rounds, synchronous_commit: 'on', workspaces_per_shard: placement },
      meridian: { encryption: meridianRuns.length ? 'on' : 'off', messages_per_s: round(mRate, 1), p50_ms: mP50, p99_ms: mP99, runs: mainRuns },
      encryption:
        on && off
          ? {
              on: { messages_per_s: on.messages_per_s, p50_ms: on.p50_ms, p99_ms: on.p99_ms },
              off: { messages_per_s: off.messages_per_s, p50_ms: off.p50_ms, p99_ms: off.p99_ms, runs: off.runs },
              // The cost of encrypting bodies, as a share of the rate without it.
              overhead: round(1 - on.messages_per_s / off.messages_per_s, 3),
              ratio_on_off: round(on.messages_per_s / off.messages_per_s, 3),
              target_overhead_max: 0.1,
              met: 1 - on.messages_per_s / off.messages_per_s <= 0.1,
            }
          : null,
      pgbench: { rows_per_s: round(pRate, 1), rows_per_transaction: 100, runs: pgbenchRuns },
      ratio: round(mRate / pRate, 3),
      targets: {
        messages_per_s: 20000,
        p99_ms: 20,
        ratio_min: 0.2,
        met: mRate >= 20000 && mP99 <= 20 && mRate / pRate >= 0.2,
      },
    };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    log(`report: ${writeResult('ingest', report)}`);
  } finally {
    await w.stop();
  }
}

const round2 = (x) => Math.round(x);

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
