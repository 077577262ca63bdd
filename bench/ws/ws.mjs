// bench/ws: the workspace stream under load, and Socket.IO 4 doing the same
// fan-out in the same run. JSON on stdout; progress on stderr. See README.md.
//
// Phases (each can be skipped):
//   connections  --conns idle streams on ONE region node (--workers workers),
//                spread over loadgen processes and 127.0.0.x sources; worker
//                RSS before/after; time to connect all.
//   fanout       on those connections (workspaces of --members members, one
//                channel each): a poster steps its rate up (x2 per step) until
//                deliveries fall behind; deliveries/s at saturation; and p99
//                post->deliver at --latency-deliveries deliveries/s.
//   latency      workspaces of --small-members members: p99 post->deliver at
//                --latency-deliveries deliveries/s, median of --rounds.
//   peer         the fanout and latency workloads on Socket.IO 4 +
//                @socket.io/redis-adapter (two Node processes, one Redis),
//                driven by meridian-loadgen --proto socketio.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort, http, makeTmp, removeTmp, startRedis, startWorld, track, waitFor } from '../../tests/lib/harness.mjs';
import { ensureBuilt, gitInfo, makeLogger, options, writeResult } from '../lib/common.mjs';
import { Loadgen } from '../lib/loadgen.mjs';
import { cpuBusy, cpuTimes, groupCpuSeconds, machineInfo } from '../lib/proc.mjs';
import { median, ratio, round, summarize } from '../lib/stats.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const log = makeLogger('ws');
const o = options(
  {
    conns: { type: 'number', default: 100000, env: 'BENCH_CONNS', short: 'c', help: 'idle stream connections on one node' },
    'conn-members': { type: 'number', default: 100, env: 'BENCH_CONN_MEMBERS', help: 'members per workspace for the idle connections (conns/conn-members workspaces)' },
    members: { type: 'number', default: 10000, env: 'BENCH_MEMBERS', help: 'members per channel for the fan-out phase' },
    'fanout-channels': { type: 'number', default: 3, env: 'BENCH_FANOUT_CHANNELS', help: 'channels of --members members for the fan-out phase' },
    'small-members': { type: 'number', default: 1000, env: 'BENCH_SMALL_MEMBERS', help: 'members per channel for the latency phase' },
    'small-channels': { type: 'number', default: 10, env: 'BENCH_SMALL_CHANNELS', help: 'channels for the latency phase' },
    'latency-deliveries': { type: 'number', default: 100000, env: 'BENCH_LATENCY_DELIVERIES', help: 'deliveries/s at which latency is measured' },
    workers: { type: 'number', default: 6, env: 'BENCH_WORKERS', help: 'region worker processes (each under ~19k fds)' },
    'max-conns-per-worker': { type: 'number', default: 19500, env: 'BENCH_MAX_CONNS_PER_WORKER', help: 'region http.max_connections (per worker; the fd limit is 20,000)' },
    'per-loadgen': { type: 'number', default: 16000, env: 'BENCH_PER_LOADGEN', help: 'most clients per loadgen process' },
    'connect-rate': { type: 'number', default: 0, env: 'BENCH_CONNECT_RATE', help: 'connects/s per loadgen (0: as fast as handshakes allow)' },
    'max-inflight': { type: 'number', default: 128, env: 'BENCH_MAX_INFLIGHT', help: 'concurrent handshakes per loadgen' },
    'connect-timeout': { type: 'number', default: 300, env: 'BENCH_CONNECT_TIMEOUT', help: 'seconds to wait for all clients to connect (then go on with those connected)' },
    'step-seconds': { type: 'number', default: 5, env: 'BENCH_STEP_SECONDS', short: 'd', help: 'seconds measured per rate step' },
    'start-rate': { type: 'number', default: 5, env: 'BENCH_START_RATE', help: 'first posts/s of the fan-out ramp (meridian)' },
    'peer-start-rate': { type: 'number', default: 1, env: 'BENCH_PEER_START_RATE', help: 'first posts/s of the fan-out ramp (Socket.IO)' },
    'max-steps': { type: 'number', default: 8, env: 'BENCH_MAX_STEPS', help: 'most doublings of the ramp' },
    rounds: { type: 'number', default: 3, env: 'BENCH_ROUNDS', short: 'r', help: 'latency rounds (medians reported)' },
    'peer-conns': { type: 'number', default: 30000, env: 'BENCH_PEER_CONNS', help: 'Socket.IO fan-out connections (2 processes: at most ~38k)' },
    'post-conns': { type: 'number', default: 64, env: 'BENCH_POST_CONNS', help: 'poster keep-alive connections (meridian: one post in flight each)' },
    'text-bytes': { type: 'number', default: 100, env: 'BENCH_TEXT_BYTES', help: 'message text size' },
    'ping-ms': { type: 'number', default: 30000, env: 'BENCH_PING_MS', help: 'region websocket.ping_interval_ms' },
    skip: { type: 'string', default: '', env: 'BENCH_SKIP', help: 'comma list of phases to skip: connections,fanout,latency,peer, or meridian (the whole Meridian side)' },
    out: { type: 'string', default: '', help: 'write the report here too (default bench/ws/results/latest.json)' },
  },
  { usage: 'usage: bench/ws/run [options]  (JSON on stdout; small run: bench/ws/run --conns 2000 --members 1000 --small-members 200 --small-channels 5 --latency-deliveries 10000 -d 3 -r 1 --peer-conns 2000)' },
);
const skip = new Set(o.skip.split(',').filter(Boolean));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------ loadgen procs


function loadgenArgs({ port, source, clients, tokensFile, proto = 'meridian', extra = [] }) {
  const a = ['--port', String(port), '--clients', String(clients), '--stats-interval-ms', '1000', '--max-inflight', String(o['max-inflight'])];
  if (source) a.push('--source', source);
  if (tokensFile) a.push('--tokens', tokensFile);
  if (o['connect-rate'] > 0) a.push('--connect-rate', String(o['connect-rate']));
  a.push('--proto', proto, '--handshake-timeout-ms', '30000', '--backoff-base-ms', '200', '--backoff-cap-ms', '5000');
  return a.concat(extra);
}

/** Merged figures of one window from every loadgen's mark line. */
function mergeWindows(marks) {
  const counts = new Map();
  let events = 0;
  let timed = 0;
  let gaps = 0;
  let dups = 0;
  let posts = 0;
  let skipped = 0;
  let failed = 0;
  let secs = 0;
  let maxMs = 0;
  const closes = {};
  for (const m of marks) {
    events += m.events;
    timed += m.timed;
    gaps += m.gaps;
    dups += m.duplicates;
    posts += m.posts_ok;
    skipped += m.posts_skipped;
    failed += m.posts_failed;
    secs = Math.max(secs, m.seconds);
    maxMs = Math.max(maxMs, m.latency_ms.max);
    for (const [lo, n] of m.latency_hist_us || []) counts.set(lo, (counts.get(lo) || 0) + n);
    for (const [k, v] of Object.entries(m.closes || {})) closes[k] = (closes[k] || 0) + v;
  }
  const sorted = [...counts.entries()].sort((a, b) => a[0] - b[0]);
  const total = sorted.reduce((s, [, n]) => s + n, 0);
  const pct = (p) => {
    if (!total) return null;
    const rank = Math.max(1, Math.ceil((p / 100) * total));
    let seen = 0;
    for (const [lo, n] of sorted) {
      seen += n;
      if (seen >= rank) return round(Math.min(lo, maxMs * 1000) / 1000, 3);
    }
    return maxMs;
  };
  return {
    seconds: round(secs, 3),
    events,
    deliveries_per_s: secs ? round(events / secs, 1) : 0,
    timed,
    gaps,
    duplicates: dups,
    posts_ok: posts,
    posts_failed: failed,
    posts_skipped: skipped,
    posts_per_s: secs ? round(posts / secs, 1) : 0,
    latency_ms: { p50: pct(50), p90: pct(90), p99: pct(99), max: round(maxMs, 3) },
    closes_total: closes,
  };
}

// ------------------------------------------------------------ region helpers

/** Worker pids of a region master (its children). */
function childPids(ppid) {
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const s = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      if (Number(f[1]) === ppid) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out.sort((a, b) => a - b);
}

function memOf(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] || 0);
    return { rss: kb('VmRSS') * 1024, anon: kb('RssAnon') * 1024 };
  } catch {
    return { rss: 0, anon: 0 };
  }
}

function workersMem(masterPid) {
  const pids = childPids(masterPid);
  const per = pids.map((p) => ({ pid: p, ...memOf(p) }));
  return { pids, per, rss: per.reduce((s, x) => s + x.rss, 0), anon: per.reduce((s, x) => s + x.anon, 0) };
}

async function api(w, method, p, body, token) {
  const r = await http(method, `${w.api}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${r.text}`);
  return r.json;
}

/**
 * Access tokens minted with the region's own signing key, in the format of
 * core/auth.h (the region verifies them on its real code path). The
 * claims other than sub copy a token the region issued itself.
 */
function tokenMinter(keyFile, sample) {
  const seed = Buffer.from(fs.readFileSync(keyFile, 'utf8').trim(), 'hex');
  const priv = crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]), format: 'der', type: 'pkcs8' });
  const pub = crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' }).subarray(-32);
  const kid = pub.subarray(0, 8).toString('base64url');
  const claims = JSON.parse(Buffer.from(sample.split('.')[1], 'base64url').toString());
  const iat = Math.floor(Date.now() / 1000);
  return (sub) => {
    const payload = { sub, hr: claims.hr, roles: claims.roles, iat, exp: iat + 6 * 3600, jti: crypto.randomBytes(16).toString('base64url'), kid };
    const signing = `mrd1.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
    return `${signing}.${crypto.sign(null, Buffer.from(signing), priv).toString('base64url')}`;
  };
}

/**
 * Workspaces with `members` stream users each, created through the API, their
 * users written straight into the workspace's shard (signup costs ~90 ms of
 * argon2id per user): one statement per shard for the whole set. Returns
 * [{id, shard, general, users: [{id, token}], poster: {token, path}}].
 */
async function makeSet(w, { tag, count, members, mint, owner }) {
  const out = new Array(count);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < count; i = next++) {
      const ws = await api(w, 'POST', '/v1/workspaces', { name: `Bench ${tag}${i}`, slug: `bench-${tag}-${process.pid}-${i}` }, owner.token);
      const id = ws.workspace.id;
      const chans = await api(w, 'GET', `/v1/workspaces/${id}/channels`, undefined, owner.token);
      out[i] = { id, general: chans.channels.find((c) => c.name === 'general').id, prefix: `lg${tag}${i}u`, shard: -1 };
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, count) }, worker));
  const byId = new Map(out.map((x) => [x.id, x]));
  for (let s = 0; s < w.postgres.length; s++) {
    const ids = out.map((x) => `'${x.id}'`).join(',');
    for (const id of (await w.postgres[s].psql(`SELECT id FROM workspaces WHERE id IN (${ids})`)).split('\n')) {
      if (byId.has(id.trim())) byId.get(id.trim()).shard = s;
    }
  }
  for (const x of out) if (x.shard < 0) throw new Error(`workspace ${x.id} is on no shard`);
  for (let s = 0; s < w.postgres.length; s++) {
    const mine = out.filter((x) => x.shard === s);
    if (!mine.length) continue;
    const values = mine.map((x) => `('${x.id}', '${x.general}', '${x.prefix}')`).join(',');
    const u = `WITH f(ws, ch, prefix) AS (VALUES ${values}), u AS (SELECT ws, ch, prefix || g AS uid FROM f, generate_series(1, ${members}) g)`;
    await w.postgres[s].psql(`
      ${u} INSERT INTO users (id, email_hash, email, display_name, password_hash, home_region)
        SELECT uid, decode(md5(uid || '${process.pid}'), 'hex'), uid || '@bench.invalid', 'bench', 'bench-fixture-no-login', '${w.region.config.region}' FROM u;
      ${u} INSERT INTO members (workspace_id, user_id, role, status) SELECT ws, uid, 'member', 'active' FROM u;
      ${u} INSERT INTO channel_members (workspace_id, channel_id, user_id) SELECT ws, ch, uid FROM u;
      ANALYZE users, members, channel_members;`);
  }
  for (const x of out) {
    x.users = [];
    for (let g = 1; g <= members; g++) x.users.push({ id: `${x.prefix}${g}`, token: mint(`${x.prefix}${g}`) });
    x.poster = { token: mint(owner.id), path: `/v1/workspaces/${x.id}/channels/${x.general}/messages` };
  }
  return out;
}

/** Splits clients over loadgen processes (interleaved, so each channel spans all). */
function split(lines, perProc) {
  const n = Math.max(1, Math.ceil(lines.length / perProc));
  const parts = Array.from({ length: n }, () => []);
  lines.forEach((l, i) => parts[i % n].push(l));
  return parts;
}

async function startLoadgens({ bin, tmp, port, ports, lines, proto, tag }) {
  const parts = split(lines, o['per-loadgen']);
  return parts.map((part, i) => {
    const file = path.join(tmp, `${tag}-${i}.txt`);
    fs.writeFileSync(file, `${part.join('\n')}\n`);
    const p = ports ? ports[i % ports.length] : port;
    const source = `127.0.0.${2 + (i % 200)}`;
    return new Loadgen(bin, loadgenArgs({ port: p, source, clients: part.length, tokensFile: file, proto }), `${tag}-${i}`);
  });
}

/**
 * Waits until the loadgens report `total` sessions ready, or the timeout.
 * Returns {ms, connected, complete}: a node that cannot take them all is a
 * result to report, not a reason to drop the rest of the run.
 */
async function waitConnected(lgs, total, timeoutMs) {
  const t0 = Date.now();
  const connected = () => lgs.reduce((s, l) => s + (l.last ? l.last.connected : 0), 0);
  let complete = true;
  try {
    await waitFor(
      () => {
        for (const l of lgs) if (l.child.exitCode !== null) throw new Error(`${l.name} exited: ${l.errTail.join(' | ')}`);
        return connected() >= total;
      },
      { timeoutMs, intervalMs: 500, maxIntervalMs: 1000, message: 'connect' },
    );
  } catch (e) {
    if (!/connect|timed out|timeout/i.test(e.message) || /exited/.test(e.message)) throw e;
    complete = false;
    log(`only ${connected()} of ${total} connected after ${round(timeoutMs / 1000)} s`);
  }
  return { ms: Date.now() - t0, connected: connected(), complete };
}

async function stopAll(lgs) {
  return Promise.all(lgs.map((l) => l.stop()));
}

// Process groups whose CPU time each window reports: the server under test
// and its stores (set by each side); clients are the loadgens of the window.
let cpuGroups = { server: [], stores: [] };

function cpuOf(pgids) {
  return pgids.reduce((s, g) => s + groupCpuSeconds(g), 0);
}

/**
 * Marks every receiver and the poster, waits, marks again: one window. Also
 * the CPU seconds per second used by the server, its stores and the clients
 * in that window, and how busy each core was (neighbours included): on 2
 * shared cores this tells who was the bottleneck.
 */
async function window(receivers, poster, seconds, label) {
  const clients = [...receivers, poster].map((l) => l.child.pid);
  await Promise.all([...receivers, poster].map((l) => l.mark(`${label}-start`)));
  const c0 = { server: cpuOf(cpuGroups.server), stores: cpuOf(cpuGroups.stores), clients: cpuOf(clients), t: Date.now(), cores: cpuTimes() };
  await sleep(seconds * 1000);
  const marks = await Promise.all(receivers.map((l) => l.mark(label)));
  const pm = await poster.mark(label);
  const dt = (Date.now() - c0.t) / 1000;
  const m = mergeWindows(marks);
  m.posts_ok = pm.posts_ok;
  m.posts_failed = pm.posts_failed;
  m.posts_skipped = pm.posts_skipped;
  m.posts_per_s = pm.seconds ? round(pm.posts_ok / pm.seconds, 1) : 0;
  m.post_ack_ms = pm.post_ack_ms;
  m.cpu_cores_used = {
    server: round((cpuOf(cpuGroups.server) - c0.server) / dt, 2),
    stores: round((cpuOf(cpuGroups.stores) - c0.stores) / dt, 2),
    clients: round((cpuOf(clients) - c0.clients) / dt, 2),
    machine_busy: cpuBusy(c0.cores, cpuTimes()),
  };
  return m;
}

/**
 * Waits until the receivers stop getting non-event messages (presence
 * signals after a connect burst: each connect is announced to every member
 * connected, so N members bring ~N^2/2 signals), at most `maxS` seconds.
 * Returns the seconds waited.
 */
async function quiet(receivers, maxS = 240) {
  const t0 = Date.now();
  const other = () => receivers.reduce((s, l) => s + ((l.last && l.last.other_messages) || 0), 0);
  let prev = other();
  while (Date.now() - t0 < maxS * 1000) {
    await sleep(2000);
    const now = other();
    if (now === prev) break;
    prev = now;
  }
  return round((Date.now() - t0) / 1000, 1);
}

/**
 * Waits until the receivers get nothing more (at most 30 s): a window must
 * not count the backlog of an overloaded step before it.
 */
async function drain(receivers) {
  await Promise.all(receivers.map((l) => l.mark('drain')));
  for (let i = 0; i < 30; i++) {
    await sleep(1000);
    const marks = await Promise.all(receivers.map((l) => l.mark('drain')));
    if (marks.reduce((s, m) => s + m.events, 0) === 0) return i + 1;
  }
  return 30;
}

/**
 * The ramp: posts/s doubles each step; a step counts while deliveries keep
 * up with what was posted (>= 90% of posts x members) and nobody was closed.
 * Returns {steps, saturation_deliveries_per_s}.
 */
async function ramp({ receivers, poster, members, startRate, label }) {
  const steps = [];
  let rate = startRate;
  let misses = 0;
  for (let s = 0; s < o['max-steps']; s++) {
    poster.send(`rate ${rate}`);
    await sleep(1000); // settle: queues fill to the new rate
    const m = await window(receivers, poster, o['step-seconds'], `${label}-${rate}`);
    const expected = m.posts_per_s * members;
    m.rate = rate;
    m.expected_deliveries_per_s = round(expected, 1);
    m.kept_up = expected > 0 && m.deliveries_per_s >= 0.9 * expected && m.posts_skipped === 0;
    steps.push(m);
    log(`${label}: ${rate} posts/s -> ${m.deliveries_per_s} deliveries/s (expected ${round(expected)}), p99 ${m.latency_ms.p99} ms, closes ${JSON.stringify(m.closes_total)}, cpu ${JSON.stringify(m.cpu_cores_used)}`);
    // Two steps in a row that fall behind end the ramp: one alone can be a
    // neighbour's burst on this shared machine.
    misses = m.kept_up ? 0 : misses + 1;
    if (misses >= 2) break;
    rate *= 2;
  }
  poster.send('rate 0');
  await drain(receivers);
  const best = Math.max(0, ...steps.map((x) => x.deliveries_per_s));
  return { steps, saturation_deliveries_per_s: best };
}

async function latencyRounds({ receivers, poster, rate, label }) {
  const runs = [];
  poster.send(`rate ${rate}`);
  await sleep(1000);
  for (let r = 0; r < o.rounds; r++) {
    const m = await window(receivers, poster, o['step-seconds'], `${label}-r${r}`);
    m.rate = rate;
    runs.push(m);
    log(`${label} round ${r + 1}: ${m.deliveries_per_s} deliveries/s, p50 ${m.latency_ms.p50} p99 ${m.latency_ms.p99} ms`);
  }
  poster.send('rate 0');
  await drain(receivers);
  const s = summarize(runs.map((m) => m.latency_ms.p99));
  return {
    posts_per_s: rate,
    deliveries_per_s: median(runs.map((m) => m.deliveries_per_s)),
    p50_ms: median(runs.map((m) => m.latency_ms.p50)),
    p99_ms: s.median,
    p99_spread_pct: s.spread_pct,
    runs,
  };
}

// ------------------------------------------------------------------- main

function streamLines(set) {
  const lines = [];
  for (const ws of set) for (const u of ws.users) lines.push(`${u.token} /v1/workspaces/${ws.id}/stream`);
  return lines;
}

function sum(lgs, key) {
  const out = {};
  for (const l of lgs) for (const [k, v] of Object.entries((l.last && l.last[key]) || {})) out[k] = (out[k] || 0) + v;
  return out;
}

async function meridianSide(bins, tmp, report) {
  const world = await startWorld({
    workers: o.workers,
    config: {
      log: { level: 'warn', access: false },
      limits: { write_rate_per_s: 1000000, write_burst: 1000000 },
      websocket: { ping_interval_ms: o['ping-ms'] },
      // conns/workers each, plus SO_REUSEPORT's uneven spread, under the
      // 20,000 descriptors a process may hold here.
      http: { max_connections: o['max-conns-per-worker'] },
    },
  });
  cpuGroups = { server: [world.region.pid], stores: [...world.postgres.map((p) => p.pid), world.redis.pid, world.nats.pid] };
  try {
    const region = world.region.config.region;
    const signup = await api(world, 'POST', '/v1/auth/signup', { email: `ws-owner.${process.pid}@example.com`, password: 'bench password', display_name: 'Bench owner' });
    const owner = { id: signup.user.id, token: signup.access_token };
    const mint = tokenMinter(world.region.config.auth.signing_key_file, owner.token);
    const sets = {};
    const t0 = Date.now();
    if (!skip.has('connections')) sets.idle = await makeSet(world, { tag: 'c', count: Math.max(1, Math.ceil(o.conns / o['conn-members'])), members: Math.min(o['conn-members'], o.conns), mint, owner });
    if (!skip.has('fanout')) sets.big = await makeSet(world, { tag: 'b', count: o['fanout-channels'], members: o.members, mint, owner });
    if (!skip.has('latency')) sets.small = await makeSet(world, { tag: 's', count: o['small-channels'], members: o['small-members'], mint, owner });
    log(`fixtures in ${round((Date.now() - t0) / 1000, 1)} s: ${Object.entries(sets).map(([k, v]) => `${k} ${v.length} x ${v[0].users.length}`).join(', ')}`);
    report.setup.region = region;

    const posterFile = (set, name) => {
      const f = path.join(tmp, name);
      fs.writeFileSync(f, `${set.map((x) => `${x.poster.token} ${x.poster.path}`).join('\n')}\n`);
      return f;
    };
    const startPoster = (set, name) =>
      new Loadgen(bins.loadgen, ['--port', String(world.port), '--clients', '0', '--post-targets', posterFile(set, `${name}.txt`), '--post-conns', String(o['post-conns']), '--text-bytes', String(o['text-bytes'])], name);

    if (sets.idle) {
      const lines = streamLines(sets.idle);
      const total = lines.length;
      await sleep(1000);
      const before = workersMem(world.region.pid);
      log(`connecting ${total} idle streams (${sets.idle.length} workspaces) from ${Math.ceil(total / o['per-loadgen'])} loadgens; workers ${before.pids.length}, RSS ${round(before.rss / 1048576, 1)} MiB`);
      const lgs = await startLoadgens({ bin: bins.loadgen, tmp, port: world.port, lines, proto: 'meridian', tag: 'idle' });
      try {
        const wc = await waitConnected(lgs, total, o['connect-timeout'] * 1000);
        await quiet(lgs); // presence signals of the burst delivered: queues empty
        const after = workersMem(world.region.pid);
        const conns = lgs.reduce((s, l) => s + l.last.connected, 0);
        const metrics = (await http('GET', `${world.api}/metrics`)).text;
        const metric = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? +(\\S+)$`, 'm').exec(metrics)?.[1] ?? NaN);
        const perConn = (after.rss - before.rss) / conns;
        const anonPerConn = (after.anon - before.anon) / conns;
        report.meridian.connections = {
          target: total,
          connected: conns,
          all_connected: wc.complete,
          members_per_workspace: sets.idle[0].users.length,
          server_stream_gauge: metric('meridian_stream_connections'),
          time_to_connect_all_s: wc.complete ? round(wc.ms / 1000, 2) : null,
          waited_s: round(wc.ms / 1000, 2),
          connects_per_s: round(conns / (wc.ms / 1000), 1),
          refused_handshakes_by_status: sum(lgs, 'handshake_status'),
          closes_while_connecting: sum(lgs, 'closes'),
          messages_other_than_events: lgs.reduce((s, l) => s + (l.last.other_messages || 0), 0),
          server_ws_messages_sent: metric('meridian_ws_messages_sent_total'),
          loadgens: lgs.length,
          workers: after.pids.length,
          worker_rss_before_mib: round(before.rss / 1048576, 1),
          worker_rss_after_mib: round(after.rss / 1048576, 1),
          rss_per_conn_bytes: round(perConn, 0),
          anon_rss_per_conn_bytes: round(anonPerConn, 0),
          per_worker_after_mib: after.per.map((x) => round(x.rss / 1048576, 1)),
          target_rss_per_conn_bytes: 2048,
          met: wc.complete && perConn <= 2048,
        };
        log(`connections: ${conns} of ${total} in ${round(wc.ms / 1000, 1)} s; RSS ${round(before.rss / 1048576)} -> ${round(after.rss / 1048576)} MiB = ${round(perConn)} B/conn (anon ${round(anonPerConn)})`);
      } finally {
        await stopAll(lgs);
      }
    }

    if (sets.big) {
      const lines = streamLines(sets.big);
      log(`connecting ${lines.length} streams in ${sets.big.length} channels of ${o.members}`);
      const lgs = await startLoadgens({ bin: bins.loadgen, tmp, port: world.port, lines, proto: 'meridian', tag: 'big' });
      const poster = startPoster(sets.big, 'poster-big');
      try {
        const wc = await waitConnected(lgs, lines.length, o['connect-timeout'] * 1000);
        const settle = await quiet(lgs);
        log(`${wc.connected} connected in ${round(wc.ms / 1000, 1)} s; presence signals settled ${settle} s later`);
        const r = await ramp({ receivers: lgs, poster, members: o.members, startRate: o['start-rate'], label: 'fanout' });
        report.meridian.fanout = {
          members: o.members,
          channels: sets.big.length,
          connected: wc.connected,
          connect_s: round(wc.ms / 1000, 1),
          presence_settle_s: settle,
          ...r,
          target_deliveries_per_s: 500000,
          met: r.saturation_deliveries_per_s >= 500000,
        };
        const lat = await latencyRounds({ receivers: lgs, poster, rate: o['latency-deliveries'] / o.members, label: `latency-${o.members}` });
        report.meridian.latency_big = {
          members: o.members,
          ...lat,
          write_floor_ms: round((o.members * 9) / 1000, 1),
          note: 'floor: one event to N recipients takes ~N x 9 us to write out on this machine (design.md)',
        };
      } finally {
        await poster.stop();
        const finals = await stopAll(lgs);
        report.meridian.fanout_loadgens = finals.map((f) => f && { reconnects: f.reconnects, closes: f.closes, handshake_status: f.handshake_status, gaps: f.gaps, duplicates: f.duplicates });
      }
    }

    if (sets.small) {
      const lines = streamLines(sets.small);
      const lgs = await startLoadgens({ bin: bins.loadgen, tmp, port: world.port, lines, proto: 'meridian', tag: 'small' });
      const poster = startPoster(sets.small, 'poster-small');
      try {
        const wc = await waitConnected(lgs, lines.length, o['connect-timeout'] * 1000);
        await quiet(lgs);
        const lat = await latencyRounds({ receivers: lgs, poster, rate: o['latency-deliveries'] / o['small-members'], label: `latency-${o['small-members']}` });
        report.meridian.latency_small = { members: o['small-members'], channels: sets.small.length, connected: wc.connected, ...lat, target_p99_ms: 25, met: lat.p99_ms !== null && lat.p99_ms <= 25 };
      } finally {
        await poster.stop();
        await stopAll(lgs);
      }
    }
  } finally {
    await world.stop();
  }
}

async function peerSide(bins, tmp, report) {
  const redis = await startRedis({ tmp, name: 'peer-redis' });
  const servers = [];
  try {
    for (let i = 0; i < 2; i++) {
      const port = await freePort();
      const child = spawn(process.execPath, ['--max-old-space-size=4096', path.join(HERE, 'socketio', 'server.mjs')], {
        env: { ...process.env, PORT: String(port), REDIS_URL: redis.url },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      track(child);
      let err = '';
      child.stderr.on('data', (d) => (err = (err + d).slice(-2000)));
      child.stdout.resume();
      servers.push({ port, child, err: () => err });
    }
    for (const s of servers) {
      await waitFor(async () => {
        if (s.child.exitCode !== null) throw new Error(`socket.io server exited: ${s.err()}`);
        return (await http('GET', `http://127.0.0.1:${s.port}/healthz`).catch(() => ({ status: 0 }))).status === 200;
      }, { timeoutMs: 20000, message: 'socket.io server not ready' });
    }
    const ports = servers.map((s) => s.port);
    cpuGroups = { server: servers.map((s) => s.child.pid), stores: [redis.pid] };
    const rss = async () => {
      let total = 0;
      for (const s of servers) total += memOf(s.child.pid).rss;
      return total;
    };
    const rooms = (n, members, tag) => {
      const lines = [];
      for (let r = 0; r < n; r++) for (let m = 0; m < members; m++) lines.push(`- /socket.io/?EIO=4&transport=websocket&room=${tag}${r}`);
      return lines;
    };
    const roomFile = (n, tag) => {
      const f = path.join(tmp, `rooms-${tag}.txt`);
      fs.writeFileSync(f, `${Array.from({ length: n }, (_, r) => `${tag}${r}`).join('\n')}\n`);
      return f;
    };
    const sioPoster = (n, tag) =>
      new Loadgen(bins.loadgen, ['--proto', 'socketio', '--port', String(ports[0]), '--clients', '0', '--post-targets', roomFile(n, tag), '--post-conns', '4', '--text-bytes', String(o['text-bytes'])], `sio-poster-${tag}`);

    if (!skip.has('fanout')) {
      const members = Math.min(o.members, o['peer-conns']);
      const n = Math.max(1, Math.min(o['fanout-channels'], Math.floor(o['peer-conns'] / members)));
      const before = await rss();
      const lgs = await startLoadgens({ bin: bins.loadgen, tmp, ports, lines: rooms(n, members, 'big'), proto: 'socketio', tag: 'sio-big' });
      const poster = sioPoster(n, 'big');
      try {
        const wc = await waitConnected(lgs, n * members, o['connect-timeout'] * 1000);
        await sleep(2000);
        const after = await rss();
        report.peer.connections = { connected: wc.connected, all_connected: wc.complete, time_to_connect_all_s: wc.complete ? round(wc.ms / 1000, 2) : null, rss_per_conn_bytes: round((after - before) / (n * members), 0), note: 'Node process RSS (V8 heap included)' };
        const r = await ramp({ receivers: lgs, poster, members, startRate: o['peer-start-rate'], label: 'sio-fanout' });
        report.peer.fanout = { members, rooms: n, ...r };
        const lat = await latencyRounds({ receivers: lgs, poster, rate: o['latency-deliveries'] / members, label: `sio-latency-${members}` });
        report.peer.latency_big = { members, ...lat };
      } finally {
        await poster.stop();
        await stopAll(lgs);
      }
    }
    if (!skip.has('latency')) {
      const members = o['small-members'];
      const n = o['small-channels'];
      const lgs = await startLoadgens({ bin: bins.loadgen, tmp, ports, lines: rooms(n, members, 'small'), proto: 'socketio', tag: 'sio-small' });
      const poster = sioPoster(n, 'small');
      try {
        const wc = await waitConnected(lgs, n * members, o['connect-timeout'] * 1000);
        report.peer.latency_small_connected = wc.connected;
        await sleep(1000);
        const lat = await latencyRounds({ receivers: lgs, poster, rate: o['latency-deliveries'] / members, label: `sio-latency-${members}` });
        report.peer.latency_small = { members, rooms: n, ...lat };
      } finally {
        await poster.stop();
        await stopAll(lgs);
      }
    }
  } finally {
    for (const s of servers) {
      try {
        process.kill(-s.child.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
    await redis.stop();
  }
}

async function main() {
  ensureBuilt('meridian-region', log);
  const bins = { loadgen: ensureBuilt('meridian-loadgen', log) };
  if (!skip.has('peer') && !fs.existsSync(path.join(HERE, 'node_modules', 'socket.io'))) {
    throw new Error(`bench/ws/node_modules is missing: run (cd ${HERE} && npm install), or --skip peer`);
  }
  const tmp = makeTmp('meridian-bench-ws-');
  const report = {
    benchmark: 'ws',
    at: new Date().toISOString(),
    git: gitInfo(),
    machine: machineInfo(),
    setup: {
      conns: o.conns,
      conn_members: o['conn-members'],
      members: o.members,
      fanout_channels: o['fanout-channels'],
      small_members: o['small-members'],
      small_channels: o['small-channels'],
      latency_deliveries_per_s: o['latency-deliveries'],
      workers: o.workers,
      max_conns_per_worker: o['max-conns-per-worker'],
      per_loadgen: o['per-loadgen'],
      step_seconds: o['step-seconds'],
      rounds: o.rounds,
      text_bytes: o['text-bytes'],
      ping_interval_ms: o['ping-ms'],
      peer_conns: o['peer-conns'],
      skipped: [...skip],
      fixtures: 'users/members/channel_members rows written straight into the shard; tokens minted with the region signing key (see README)',
    },
    meridian: {},
    peer: { name: 'socket.io 4 + @socket.io/redis-adapter, 2 node processes, 1 redis' },
  };
  try {
    if (!skip.has('meridian') && !(skip.has('connections') && skip.has('fanout') && skip.has('latency'))) await meridianSide(bins, tmp, report);
    if (!skip.has('peer')) await peerSide(bins, tmp, report);
  } finally {
    removeTmp(tmp);
  }
  const m = report.meridian;
  const p = report.peer;
  report.ratios = {
    fanout_saturation: round(ratio(m.fanout?.saturation_deliveries_per_s, p.fanout?.saturation_deliveries_per_s), 2),
    latency_small_p99_peer_over_meridian: round(ratio(p.latency_small?.p99_ms, m.latency_small?.p99_ms), 2),
    latency_big_p99_peer_over_meridian: round(ratio(p.latency_big?.p99_ms, m.latency_big?.p99_ms), 2),
  };
  report.machine.loadavg_end = machineInfo().loadavg;
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  log(`report: ${writeResult('ws', report, o.out || undefined)}`);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
