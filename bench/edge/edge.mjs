// edge.mjs: bench/edge. One region (real Postgres, Redis, NATS from the test
// harness) with W workers; meridian-edge with W workers and Debian's nginx
// with worker_processes W, both reverse proxies of that same region node.
//
//  http   wrk sends the same authenticated GET /v1/workspaces/{id}/channels
//         (Authorization: Bearer) to the region directly (baseline), through
//         the edge and through nginx, in interleaved rounds; medians of
//         requests/s, p50, p99 and the CPU each proxy spent per request.
//  ws     round trips of small WebSocket messages on the workspace stream
//         (GET /v1/workspaces/{id}/stream, the only upgrade the edge
//         tunnels): the client pings, the region's WebSocket layer pongs; one
//         message in flight per connection, connections open directly, via
//         the edge and via nginx, interleaved rounds. The tunnel's added
//         latency per message is edge - direct (round trip: two passes
//         through the tunnel, so an upper bound for one message).
//  deliver  posted messages (region API, directly) arrive on three streams
//         at once (direct, via the edge, via nginx): the per-event difference
//         of arrival times is the one-way latency the tunnel adds to a real
//         event.
//
// JSON on stdout and in bench/edge/results/latest.json; progress on stderr.
// Run it through ./bench/edge/run (see README.md).

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { freePort, http, makeTmp, startWorlds, track, waitFor } from '../../tests/lib/harness.mjs';
import { REPO_ROOT, buildInfo, ensureBuilt, gitInfo, makeLogger, options, writeResult } from '../lib/common.mjs';
import { startNginx, NGINX_BIN } from '../lib/nginx.mjs';
import { clockTicks, cpuBusy, cpuCount, cpuTimes, groupPids, machineInfo, pinGroup, versionOf } from '../lib/proc.mjs';
import { interleave, medians, pairedRatio } from '../lib/rounds.mjs';
import { median, percentile, ratio, round, summarize } from '../lib/stats.mjs';
import { runWrk } from '../lib/wrk.mjs';

// The ws client the integration tests use (tests/package.json).
const WebSocket = createRequire(path.join(REPO_ROOT, 'tests', 'package.json'))('ws');

const REGION = 'us-east';
const TARGET_RPS_RATIO_MIN = 1.0; // edge / nginx requests/s
const TARGET_WS_ADDED_P99_MS = 0.5; // edge tunnel, per message
const NOISY_OTHER_CPU = 0.15; // cores

const log = makeLogger('bench/edge');

const opt = options(
  {
    duration: { type: 'number', short: 'd', default: 8, env: 'BENCH_DURATION', help: 'seconds per wrk run' },
    rounds: { type: 'number', short: 'r', default: 5, env: 'BENCH_ROUNDS', help: 'rounds (each round runs direct, edge and nginx once; order alternates)' },
    warmup: { type: 'number', default: 2, env: 'BENCH_WARMUP', help: 'seconds of discarded wrk warm-up per target (0: none)' },
    connections: { type: 'number', short: 'c', default: 64, env: 'BENCH_CONNECTIONS', help: 'wrk connections (throughput runs)' },
    'lat-connections': { type: 'number', default: 1, env: 'BENCH_LAT_CONNECTIONS', help: 'wrk connections of the low-load latency runs (0: skip them)' },
    'lat-duration': { type: 'number', default: 4, env: 'BENCH_LAT_DURATION', help: 'seconds per low-load latency run' },
    threads: { type: 'number', short: 't', default: 1, env: 'BENCH_THREADS', help: 'wrk threads (wrk has one core)' },
    workers: { type: 'number', short: 'w', default: 1, env: 'BENCH_WORKERS', help: 'worker processes of the region, the edge and nginx (W)' },
    'ws-messages': { type: 'number', default: 10000, env: 'BENCH_WS_MESSAGES', help: 'WebSocket round trips per connection per round' },
    'ws-bytes': { type: 'number', default: 32, env: 'BENCH_WS_BYTES', help: 'payload bytes of each ping' },
    'ws-conns': { type: 'number', default: 1, env: 'BENCH_WS_CONNS', help: 'WebSocket connections per target, each with one message in flight' },
    posts: { type: 'number', default: 300, env: 'BENCH_POSTS', help: 'messages posted for the delivery phase (0: skip it)' },
    'server-cpus': { type: 'string', default: '0', env: 'BENCH_SERVER_CPUS', help: "CPU list for the region, its stores, the edge and nginx" },
    'client-cpus': { type: 'string', default: '1', env: 'BENCH_CLIENT_CPUS', help: 'CPU list for wrk and this script (the WebSocket client)' },
    nice: { type: 'string', default: '0', env: 'BENCH_NICE', help: 'niceness for the servers and wrk (e.g. -10 as root)' },
    'no-pin': { type: 'boolean', default: false, env: 'BENCH_NO_PIN', help: 'do not pin servers and clients to CPUs' },
    skip: { type: 'string', default: '', env: 'BENCH_SKIP', help: 'comma list of phases to skip: http,ws,deliver' },
    out: { type: 'string', default: '', env: 'BENCH_OUT', help: 'report file (default bench/edge/results/latest.json)' },
    check: { type: 'boolean', default: false, env: 'BENCH_CHECK', help: 'exit 1 when a target is missed' },
  },
  {
    usage:
      'Usage: bench/edge/run [options]\n\n' +
      'wrk against GET /v1/workspaces/{id}/channels on one region node directly, through\n' +
      'meridian-edge and through nginx (same worker count), interleaved rounds; WebSocket\n' +
      'round trips on the workspace stream directly and through the edge tunnel.\n' +
      'JSON report on stdout and in bench/edge/results/latest.json.\n' +
      'Binaries: $MERIDIAN_BUILD_DIR/meridian-region and meridian-edge (default <repo>/build), built when missing.',
  },
);

if (opt.rounds < 1 || opt.duration < 1 || opt.connections < 1 || opt.threads < 1 || opt.workers < 1 || opt['ws-conns'] < 1) {
  process.stderr.write('rounds, duration, connections, threads, workers and ws-conns must be at least 1\n');
  process.exit(2);
}
if (opt.threads > opt.connections) opt.threads = opt.connections;
const W = Math.floor(opt.workers);
const skip = new Set(opt.skip.split(',').filter(Boolean));
for (const s of skip) {
  if (!['http', 'ws', 'deliver'].includes(s)) {
    process.stderr.write(`--skip: unknown phase ${s}\n`);
    process.exit(2);
  }
}
const pin = !opt['no-pin'] && cpuCount() > 1;
const serverCpus = pin ? opt['server-cpus'] : '';
const clientCpus = pin ? opt['client-cpus'] : '';
const niceness = Number(opt.nice);
if (!Number.isInteger(niceness) || niceness < -20 || niceness > 19) {
  process.stderr.write(`--nice: not an integer in -20..19: ${opt.nice}\n`);
  process.exit(2);
}

let scratch;

// ------------------------------------------------------------- processes

/** [pid, ppid, pgid, utime, stime] of every live process (from /proc/<pid>/stat). */
function procTable() {
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let st;
    try {
      st = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    if (f[0] === 'Z') continue;
    out.push({ pid: Number(name), ppid: Number(f[1]), pgid: Number(f[2]), utime: Number(f[11]), stime: Number(f[12]) });
  }
  return out;
}

/**
 * The processes of root's process group and all their descendants: PostgreSQL
 * backends call setsid(), so the postmaster's group alone misses the
 * processes that answer the queries.
 */
function treePids(root, table = procTable()) {
  const kids = new Map();
  for (const p of table) {
    if (!kids.has(p.ppid)) kids.set(p.ppid, []);
    kids.get(p.ppid).push(p.pid);
  }
  const seen = new Set(table.filter((p) => p.pgid === root).map((p) => p.pid));
  const todo = [...seen];
  if (table.some((p) => p.pid === root) && !seen.has(root)) todo.push(root), seen.add(root);
  while (todo.length) {
    for (const k of kids.get(todo.pop()) || []) {
      if (!seen.has(k)) {
        seen.add(k);
        todo.push(k);
      }
    }
  }
  return [...seen].sort((a, b) => a - b);
}

/** {user, system} CPU seconds of the trees rooted at roots (see treePids). */
function treeCpu(roots) {
  const table = procTable();
  const byPid = new Map(table.map((p) => [p.pid, p]));
  const tck = clockTicks();
  const t = { user: 0, system: 0 };
  for (const r of roots) {
    for (const pid of treePids(r, table)) {
      const p = byPid.get(pid);
      t.user += p.utime / tck;
      t.system += p.stime / tck;
    }
  }
  return t;
}

/** Pins every thread of every process of the trees rooted at roots; returns the pids. */
function pinTrees(roots, cpus) {
  const pids = roots.flatMap((r) => treePids(r));
  for (const pid of pids) {
    const r = spawnSync('taskset', ['-a', '-p', '-c', String(cpus), String(pid)], { encoding: 'utf8' });
    if (r.status !== 0 && fs.existsSync(`/proc/${pid}`)) throw new Error(`taskset -a -p -c ${cpus} ${pid} failed: ${(r.stderr || '').trim()}`);
  }
  return pids;
}

// ------------------------------------------------------------------ setup

/** nginx as a reverse proxy of the region node, as an operator would set it up. */
function nginxProxy(regionPort) {
  return {
    http: `    upstream region {
        server 127.0.0.1:${regionPort};
        keepalive 64;
    }
    # WebSocket upgrades pass through; everything else keeps the upstream
    # connection alive (Connection "").
    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      '';
    }
`,
    locations: `        location /v1/ {
            proxy_pass http://region;
            proxy_http_version 1.1;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
        }`,
  };
}

async function api(base, method, p, { token, body } = {}) {
  const r = await http(method, `${base}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
  return r;
}

/** A user, a workspace and its #general, created on the region directly. */
async function seed(regionApi) {
  const nonce = crypto.randomBytes(4).toString('hex');
  let r = await api(regionApi, 'POST', '/v1/auth/signup', {
    body: { email: `bench-edge.${nonce}@example.com`, password: 'bench edge password', display_name: 'Bench' },
  });
  if (r.status !== 201) throw new Error(`signup answered ${r.status}: ${r.text}`);
  const token = r.json.access_token;
  r = await api(regionApi, 'POST', '/v1/workspaces', { token, body: { name: 'Bench', slug: `bench-edge-${nonce}` } });
  if (r.status !== 201) throw new Error(`workspace creation answered ${r.status}: ${r.text}`);
  const ws = r.json.workspace.id;
  r = await api(regionApi, 'GET', `/v1/workspaces/${ws}/channels`, { token });
  if (r.status !== 200) throw new Error(`GET channels answered ${r.status}: ${r.text}`);
  const channels = r.json.channels || r.json.items || r.json;
  const channel = Array.isArray(channels) && channels[0] ? channels[0].id : null;
  if (!channel) throw new Error(`no channel in ${r.text}`);
  return { token, ws, channel };
}

// ------------------------------------------------------------------- http

function cpuDelta(a, b) {
  return { user: b.user - a.user, system: b.system - a.system, total: b.user - a.user + b.system - a.system };
}

/** One wrk run against target.url; CPU of the region, its stores and the proxy over the run. */
async function measureHttp(target, ctx, durationS, connections = opt.connections) {
  const groups = { region: [ctx.regionPgid], stores: ctx.storePids, proxy: target.pgid ? [target.pgid] : null };
  const snap = () => {
    const out = {};
    for (const [k, roots] of Object.entries(groups)) if (roots) out[k] = treeCpu(roots);
    return out;
  };
  const c0 = snap();
  const cores0 = cpuTimes();
  const t0 = process.hrtime.bigint();
  const r = await runWrk({
    url: `${target.url}${ctx.path}`,
    threads: Math.min(opt.threads, connections),
    connections,
    durationS,
    cpus: clientCpus,
    scriptDir: scratch,
    headers: [`Authorization: Bearer ${ctx.token}`],
    onSpawn: (child) => track(child),
    nice: niceness,
  });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const c1 = snap();
  const cores = cpuBusy(cores0, cpuTimes());
  const cpu = {};
  for (const k of Object.keys(c1)) cpu[k] = cpuDelta(c0[k], c1[k]);
  const perReq = (s) => (r.requests ? round((s / r.requests) * 1e6, 2) : null);
  const serverCpu = Object.values(cpu).reduce((a, x) => a + x.total, 0);
  const allBusy = Object.values(cores).reduce((a, b) => a + b, 0);
  const clientUtil = r.client_cpu_s === null ? null : r.client_cpu_s / wall;
  const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
  return {
    rps: round(r.rps, 1),
    requests: r.requests,
    p50_ms: round(r.latency_ms.p50, 3),
    p90_ms: round(r.latency_ms.p90, 3),
    p99_ms: round(r.latency_ms.p99, 3),
    p999_ms: round(r.latency_ms.p999, 3),
    max_ms: round(r.latency_ms.max, 3),
    errors,
    error_detail: r.errors,
    region_cpu_us_per_req: perReq(cpu.region.total),
    stores_cpu_us_per_req: cpu.stores ? perReq(cpu.stores.total) : null,
    proxy_cpu_us_per_req: cpu.proxy ? perReq(cpu.proxy.total) : null,
    proxy_user_us_per_req: cpu.proxy ? perReq(cpu.proxy.user) : null,
    proxy_cpu_util: cpu.proxy ? round(cpu.proxy.total / wall, 2) : null,
    server_cpu_util: round(serverCpu / wall, 2), // region + stores + proxy; 1.0 = one core
    cores_busy: cores,
    client_cpu_util: round(clientUtil, 2),
    other_cpu_util: clientUtil === null ? null : round(Math.max(0, allBusy - serverCpu / wall - clientUtil), 2),
    response_bytes: r.requests ? round(r.bytes / r.requests, 0) : null,
  };
}

function httpSummary(runs) {
  return {
    ...medians(runs, {
      rps_median: (r) => r.rps,
      p50_ms: (r) => r.p50_ms,
      p99_ms: (r) => r.p99_ms,
      p999_ms: (r) => r.p999_ms,
      proxy_cpu_us_per_req: (r) => r.proxy_cpu_us_per_req,
      proxy_user_us_per_req: (r) => r.proxy_user_us_per_req,
      region_cpu_us_per_req: (r) => r.region_cpu_us_per_req,
      stores_cpu_us_per_req: (r) => r.stores_cpu_us_per_req,
      server_cpu_util: (r) => r.server_cpu_util,
      client_cpu_util: (r) => r.client_cpu_util,
      other_cpu_util: (r) => r.other_cpu_util,
    }),
    errors_total: runs.reduce((a, r) => a + r.errors, 0),
    noisy_runs: runs.filter((r) => r.other_cpu_util > NOISY_OTHER_CPU).length,
    response_bytes: runs[0] ? runs[0].response_bytes : null,
    runs,
  };
}

/** Median over rounds of (x - direct) for the same round. */
function pairedAdded(runs, direct, get) {
  const byRound = new Map(direct.map((r) => [r.round, r]));
  const d = runs.filter((r) => byRound.has(r.round)).map((r) => get(r) - get(byRound.get(r.round)));
  return round(median(d), 3);
}

async function httpPhase(targets, ctx) {
  const lowConns = Math.floor(opt['lat-connections']);
  if (opt.warmup > 0) {
    for (const t of targets) {
      log(`warm-up ${t.name} ${opt.warmup}s`);
      await measureHttp(t, ctx, opt.warmup);
    }
  }
  const results = await interleave({
    rounds: opt.rounds,
    contenders: targets.map((t) => ({
      name: t.name,
      // Throughput (saturating), then latency at low load in the same slot, so both see the same neighbours.
      run: async () => {
        const x = await measureHttp(t, ctx, opt.duration);
        if (lowConns > 0) x.low_load = await measureHttp(t, ctx, opt['lat-duration'], lowConns);
        return x;
      },
    })),
    onRun: (name, r, x) =>
      log(`round ${r + 1}/${opt.rounds} ${name.padEnd(6)} ${String(x.rps).padStart(8)} req/s  p50 ${x.p50_ms} ms  p99 ${x.p99_ms} ms` +
          `  proxy ${x.proxy_cpu_us_per_req ?? '-'} us/req  server cpu ${x.server_cpu_util} wrk ${x.client_cpu_util} other ${x.other_cpu_util}` +
          `${x.errors ? `  ERRORS ${JSON.stringify(x.error_detail)}` : ''}` +
          (x.low_load ? `; ${lowConns} conn: ${x.low_load.rps} req/s p50 ${x.low_load.p50_ms} ms p99 ${x.low_load.p99_ms} ms` : '')),
  });
  const d = httpSummary(results.direct);
  const e = httpSummary(results.edge);
  const n = httpSummary(results.nginx);
  const low = {};
  if (lowConns > 0) {
    const lowRuns = (runs) => runs.map((r) => ({ ...r.low_load, round: r.round }));
    const lsum = (runs) => ({
      ...medians(lowRuns(runs), { rps_median: (r) => r.rps, p50_ms: (r) => r.p50_ms, p99_ms: (r) => r.p99_ms, proxy_cpu_us_per_req: (r) => r.proxy_cpu_us_per_req }),
      errors_total: runs.reduce((a, r) => a + r.low_load.errors, 0),
    });
    for (const [k, runs] of Object.entries(results)) {
      low[k] = lsum(runs);
      for (const r of runs) {
        // Keep the per-run detail short: the figures that matter.
        const l = r.low_load;
        r.low_load = { rps: l.rps, p50_ms: l.p50_ms, p90_ms: l.p90_ms, p99_ms: l.p99_ms, p999_ms: l.p999_ms, errors: l.errors, proxy_cpu_us_per_req: l.proxy_cpu_us_per_req };
      }
    }
    low.connections = lowConns;
    low.duration_s = opt['lat-duration'];
    low.added_p50_ms = { edge: round(low.edge.p50_ms - low.direct.p50_ms, 3), nginx: round(low.nginx.p50_ms - low.direct.p50_ms, 3) };
    low.added_p50_ms_paired_median = {
      edge: pairedAdded(lowRuns(results.edge), lowRuns(results.direct), (r) => r.p50_ms),
      nginx: pairedAdded(lowRuns(results.nginx), lowRuns(results.direct), (r) => r.p50_ms),
    };
    low.added_p99_ms = { edge: round(low.edge.p99_ms - low.direct.p99_ms, 3), nginx: round(low.nginx.p99_ms - low.direct.p99_ms, 3) };
  }
  const ratioRps = round(ratio(e.rps_median, n.rps_median), 3);
  const edgeAdded = round(e.p50_ms - d.p50_ms, 3);
  const nginxAdded = round(n.p50_ms - d.p50_ms, 3);
  return {
    path: ctx.pathTemplate,
    request: 'GET with Authorization: Bearer <access token>; 200 with the workspace\'s channels (one: #general)',
    rounds: opt.rounds,
    duration_s: opt.duration,
    warmup_s: opt.warmup,
    connections: opt.connections,
    threads: opt.threads,
    order: 'alternating: direct, edge, nginx in even rounds; nginx, edge, direct in odd rounds',
    direct: d,
    edge: e,
    nginx: n,
    ratio_rps_edge_nginx: ratioRps,
    ratio_rps_edge_nginx_paired_median: round(pairedRatio(results.edge, results.nginx, (r) => r.rps), 3),
    added_p50_ms: { edge: edgeAdded, nginx: nginxAdded },
    added_p50_ms_paired_median: {
      edge: pairedAdded(results.edge, results.direct, (r) => r.p50_ms),
      nginx: pairedAdded(results.nginx, results.direct, (r) => r.p50_ms),
    },
    added_p99_ms: { edge: round(e.p99_ms - d.p99_ms, 3), nginx: round(n.p99_ms - d.p99_ms, 3) },
    // CPU per request hardly depends on neighbours: the steadiest comparison of the two proxies.
    ratio_proxy_cpu_per_req_edge_nginx: round(ratio(e.proxy_cpu_us_per_req, n.proxy_cpu_us_per_req), 3),
    // Latency without queueing: at 64 connections p50 is mostly the wait behind
    // the other 63 requests (64 / requests/s), so the added p50 there follows
    // throughput; with one connection it is the time the proxy itself adds.
    low_load: lowConns > 0 ? low : null,
    targets: {
      rps_ratio_min: TARGET_RPS_RATIO_MIN,
      rps_met: ratioRps !== null && ratioRps >= TARGET_RPS_RATIO_MIN,
      added_p50_met: edgeAdded <= nginxAdded,
      added_p50_low_load_met: lowConns > 0 ? low.added_p50_ms.edge <= low.added_p50_ms.nginx : null,
    },
  };
}

// --------------------------------------------------------------------- ws

/** Opens the workspace stream at base and resolves once its hello arrived. */
function openStream(base, ctx, name, onEvent) {
  const url = `${base.replace(/^http/, 'ws')}/v1/workspaces/${ctx.ws}/stream`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['meridian.v1', `bearer.${ctx.token}`], { perMessageDeflate: false });
    let hello = false;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`${name}: no hello on ${url} within 10 s`));
    }, 10000);
    ws.on('message', (data) => {
      const at = process.hrtime.bigint();
      let m;
      try {
        m = JSON.parse(data.toString());
      } catch {
        return;
      }
      if (m.type === 'hello' && !hello) {
        hello = true;
        clearTimeout(timer);
        resolve(ws);
      } else if (m.type === 'event' && onEvent) {
        onEvent(m.event, at);
      }
    });
    ws.on('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      reject(new Error(`${name}: ${url} answered ${res.statusCode} instead of 101`));
    });
    ws.on('error', (e) => {
      clearTimeout(timer);
      if (!hello) reject(new Error(`${name}: ${url}: ${e.message}`));
      else log(`${name}: stream error ${e.message}`);
    });
    ws.on('close', (code, reason) => {
      if (hello && !ws.benchClosing) log(`${name}: stream closed (${code} ${reason})`);
    });
  });
}

/** n sequential ping -> pong round trips on ws; returns the latencies in ms. */
function pingLoop(ws, n, payload) {
  return new Promise((resolve, reject) => {
    const out = new Array(n);
    let i = 0;
    let t0 = 0n;
    const next = () => {
      if (i === n) {
        ws.off('pong', onPong);
        ws.off('close', onClose);
        resolve(out);
        return;
      }
      t0 = process.hrtime.bigint();
      ws.ping(payload);
    };
    const onPong = () => {
      out[i++] = Number(process.hrtime.bigint() - t0) / 1e6;
      next();
    };
    const onClose = (code) => reject(new Error(`stream closed (${code}) after ${i} of ${n} round trips`));
    ws.on('pong', onPong);
    ws.once('close', onClose);
    next();
  });
}

function latencySummary(ms) {
  return {
    messages: ms.length,
    p50_ms: round(percentile(ms, 50), 4),
    p90_ms: round(percentile(ms, 90), 4),
    p99_ms: round(percentile(ms, 99), 4),
    p999_ms: round(percentile(ms, 99.9), 4),
    max_ms: round(Math.max(...ms), 4),
  };
}

async function wsPhase(targets, ctx) {
  const payload = Buffer.alloc(Math.min(125, opt['ws-bytes']), 0x61); // a control frame carries at most 125 bytes
  const conns = {};
  const failed = {};
  for (const t of targets) {
    conns[t.name] = [];
    try {
      for (let i = 0; i < opt['ws-conns']; i++) conns[t.name].push(await openStream(t.url, ctx, `${t.name} stream`));
    } catch (e) {
      // Reported in the JSON; the other targets are still measured.
      failed[t.name] = e.message;
      log(`ws: ${e.message}`);
      for (const ws of conns[t.name]) ws.terminate();
      delete conns[t.name];
    }
  }
  if (failed.direct) throw new Error(`ws: the direct stream does not open: ${failed.direct}`);
  const usable = targets.filter((t) => conns[t.name]);
  // Warm-up: first frames through a fresh tunnel, JIT of this client.
  for (const t of usable) await Promise.all(conns[t.name].map((ws) => pingLoop(ws, 1000, payload)));
  const results = await interleave({
    rounds: opt.rounds,
    contenders: usable.map((t) => ({
      name: t.name,
      run: async () => {
        const lists = await Promise.all(conns[t.name].map((ws) => pingLoop(ws, opt['ws-messages'], payload)));
        return latencySummary(lists.flat());
      },
    })),
    onRun: (name, r, x) => log(`ws round ${r + 1}/${opt.rounds} ${name.padEnd(6)} p50 ${x.p50_ms} ms  p99 ${x.p99_ms} ms  p999 ${x.p999_ms} ms`),
  });
  for (const list of Object.values(conns)) {
    for (const ws of list) {
      ws.benchClosing = true;
      ws.close();
    }
  }
  const sum = (runs) => ({
    ...medians(runs, { p50_ms: (r) => r.p50_ms, p99_ms: (r) => r.p99_ms, p999_ms: (r) => r.p999_ms }, 4),
    messages_per_round: runs[0] ? runs[0].messages : 0,
    runs,
  });
  const out = {
    what: 'round trip of one small WebSocket message on the workspace stream: client ping (RFC 6455 control frame) -> region pong, ' +
          'one in flight per connection; via a proxy each round trip crosses it twice',
    payload_bytes: payload.length,
    connections_per_target: opt['ws-conns'],
    rounds: opt.rounds,
  };
  for (const t of targets) out[t.name] = conns[t.name] ? sum(results[t.name]) : { error: failed[t.name] };
  const added = (name, f) => round(out[name][f] - out.direct[f], 4);
  out.added_ms = {};
  for (const t of usable) {
    if (t.name === 'direct') continue;
    out.added_ms[t.name] = {
      p50: added(t.name, 'p50_ms'),
      p99: added(t.name, 'p99_ms'),
      p99_paired_median: pairedAdded(results[t.name], results.direct, (r) => r.p99_ms),
    };
  }
  const e = out.added_ms.edge;
  out.targets = {
    added_p99_max_ms: TARGET_WS_ADDED_P99_MS,
    met: Boolean(e && e.p99 !== null && e.p99 <= TARGET_WS_ADDED_P99_MS),
  };
  return out;
}

/** Posts messages on the region and times their arrival on a stream per target. */
async function deliverPhase(targets, ctx) {
  const arrivals = new Map(); // seq -> {posted, direct, edge, nginx}
  const streams = [];
  const failed = {};
  const usable = [];
  for (const t of targets) {
    const ws = await openStream(t.url, ctx, `${t.name} stream`, (ev, at) => {
        // An event can arrive before the post's answer: the entry is made by whichever comes first.
        let a = arrivals.get(ev.seq);
        if (!a) arrivals.set(ev.seq, (a = {}));
        if (a[t.name] === undefined) a[t.name] = at;
      }).catch((e) => {
      failed[t.name] = e.message;
      log(`deliver: ${e.message}`);
      return null;
    });
    if (ws) {
      streams.push(ws);
      usable.push(t);
    }
  }
  if (failed.direct) throw new Error(`deliver: the direct stream does not open: ${failed.direct}`);
  const nonce = crypto.randomBytes(4).toString('hex');
  const postUrl = `${ctx.regionApi}/v1/workspaces/${ctx.ws}/channels/${ctx.channel}/messages`;
  const headers = { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/json' };
  const pending = [];
  // One post at a time, paced, so that each event is timed on an idle path.
  for (let i = 0; i < opt.posts; i++) {
    if (i) await new Promise((r) => setTimeout(r, 5));
    const posted = process.hrtime.bigint();
    const res = await fetch(postUrl, { method: 'POST', headers, body: JSON.stringify({ text: `bench ${i}`, client_msg_id: `be-${nonce}-${i}` }) });
    const j = await res.json();
    if (res.status !== 201) throw new Error(`post answered ${res.status}: ${JSON.stringify(j)}`);
    const seq = j.message?.seq ?? j.seq;
    if (seq === undefined) throw new Error(`no seq in the post's answer: ${JSON.stringify(j)}`);
    const a = arrivals.get(seq) || {};
    a.posted = posted;
    arrivals.set(seq, a);
    pending.push(seq);
  }
  const names = usable.map((t) => t.name);
  await waitFor(() => pending.every((s) => names.every((n) => arrivals.get(s)[n] !== undefined)), {
    timeoutMs: 30000,
    message: 'not every posted message arrived on every stream',
  }).catch((e) => log(e.message));
  for (const ws of streams) {
    ws.benchClosing = true;
    ws.close();
  }
  const ms = (a, b) => Number(a - b) / 1e6;
  const out = {
    what: 'messages posted one at a time on the region API; each event timed on arrival at three streams open at once ' +
          '(direct, via the edge, via nginx): post->deliver latency per path, and the per-event arrival difference to the direct stream',
    posts: opt.posts,
    missing: {},
  };
  for (const [n, err] of Object.entries(failed)) out[n] = { error: err };
  for (const n of names) {
    const got = pending.filter((s) => arrivals.get(s)[n] !== undefined);
    out.missing[n] = pending.length - got.length;
    out[n] = { post_to_deliver: latencySummary(got.map((s) => ms(arrivals.get(s)[n], arrivals.get(s).posted))) };
    if (n !== 'direct') {
      const both = got.filter((s) => arrivals.get(s).direct !== undefined);
      const diff = both.map((s) => ms(arrivals.get(s)[n], arrivals.get(s).direct));
      out[n].added_vs_direct = latencySummary(diff);
    }
  }
  return out;
}

// -------------------------------------------------------------------- main

async function main() {
  const started = new Date();
  const est = skip.has('http') ? 0 : opt.rounds * 3 * (opt.duration + 0.3 + (opt['lat-connections'] > 0 ? opt['lat-duration'] + 0.3 : 0)) + 3 * opt.warmup;
  log(`W=${W}; ${opt.rounds} rounds x 3 targets x ${opt.duration}s, ${opt.connections} connections; ~${Math.ceil(est)}s of wrk plus start-up and the WebSocket phases`);
  if (!pin) log('not pinning CPUs (--no-pin or a single core)');
  const regionBin = ensureBuilt('meridian-region', log);
  const edgeBin = ensureBuilt('meridian-edge', log);
  scratch = makeTmp('meridian-bench-edge-');

  log(`starting one region (${REGION}: 1 Postgres shard, Redis, NATS, meridian-region with ${W} worker(s))`);
  const world = await startWorlds({
    regions: [REGION],
    shards: 1,
    workers: W,
    config: {
      log: { access: false },
      limits: { write_rate_per_s: 100000, write_burst: 100000 },
    },
  });
  const cleanup = [];
  try {
    const R = world.regions[REGION];
    log(`starting meridian-edge with ${W} worker(s)`);
    const edge = await world.startEdge({ workers: W, config: { log: { access: false } } });
    const ngxPort = await freePort();
    const nx = nginxProxy(R.port);
    const ngx = await startNginx({ tmp: scratch, port: ngxPort, workers: W, cpus: serverCpus, readyPath: '/v1/', http: nx.http, locations: nx.locations });
    cleanup.push(() => ngx.stop());

    const seedInfo = await seed(R.api);
    const ctx = {
      ...seedInfo,
      regionApi: R.api,
      path: `/v1/workspaces/${seedInfo.ws}/channels`,
      pathTemplate: '/v1/workspaces/{id}/channels',
      regionPgid: R.node.pid,
      storePids: [...R.postgres.map((p) => p.pid), R.redis.pid, R.nats.pid],
    };
    // The edge learns the workspace from the directory feed: measure only once it routes it.
    const t0 = Date.now();
    await waitFor(async () => (await api(edge.api, 'GET', ctx.path, { token: ctx.token })).status === 200, {
      timeoutMs: 30000,
      message: `GET ${ctx.pathTemplate} through the edge did not answer 200`,
    });
    log(`the edge routes the workspace after ${Date.now() - t0} ms`);

    const targets = [
      { name: 'direct', url: R.api, pgid: null },
      { name: 'edge', url: edge.api, pgid: edge.pid },
      { name: 'nginx', url: ngx.url, pgid: ngx.pid },
    ];
    const bodies = {};
    for (const t of targets) {
      const r = await api(t.url, 'GET', ctx.path, { token: ctx.token });
      if (r.status !== 200) throw new Error(`${t.name}: GET ${ctx.pathTemplate} answered ${r.status} ${r.text}`);
      bodies[t.name] = r.text;
    }
    if (bodies.edge !== bodies.direct || bodies.nginx !== bodies.direct) throw new Error(`the three answers differ: ${JSON.stringify(bodies)}`);
    const unauth = await api(edge.api, 'GET', ctx.path);
    if (unauth.status !== 401) throw new Error(`the edge answered ${unauth.status} without a token`);

    const pinned = {};
    if (pin) {
      pinned.region = pinGroup(ctx.regionPgid, serverCpus);
      pinned.stores = pinTrees(ctx.storePids, serverCpus);
      pinned.edge = pinGroup(edge.pid, serverCpus);
      pinned.nginx = groupPids(ngx.pid); // started under taskset
      pinGroup(process.pid, clientCpus); // the WebSocket client (this process)
    }
    if (niceness) {
      for (const pid of [ctx.regionPgid, ...ctx.storePids, edge.pid, ngx.pid].flatMap((r) => treePids(r))) {
        spawnSync('renice', ['-n', String(niceness), '-p', String(pid)]);
      }
    }
    log(`region ${R.api} (pids ${groupPids(ctx.regionPgid).join(',')}), edge ${edge.api} (pids ${groupPids(edge.pid).join(',')}), ` +
        `nginx ${ngx.url} (pids ${groupPids(ngx.pid).join(',')})`);

    const report = {
      benchmark: 'edge',
      started_at: started.toISOString(),
      finished_at: null,
      workers: W,
      nice: niceness,
      pinning: pin
        ? { server_cpus: serverCpus, client_cpus: clientCpus, how: 'taskset: region, its Postgres/Redis/NATS, the edge and nginx on server_cpus; wrk and the WebSocket client on client_cpus' }
        : null,
      region: { binary: regionBin, workers: W, shards: 1, access_log: false },
      edge: { binary: edgeBin, workers: W, access_log: false, mode: 'proxy', upstream_max_idle: 64 },
      nginx: { binary: NGINX_BIN, version: versionOf(NGINX_BIN, ['-v']), worker_processes: W, upstream_keepalive: 64, access_log: false, config: `${nx.http}\n${nx.locations}` },
      build: buildInfo(),
      git: gitInfo(),
    };

    if (!skip.has('http')) {
      log('phase http');
      report.http = await httpPhase(targets, ctx);
    }
    if (!skip.has('ws')) {
      log(`phase ws: ${opt['ws-messages']} round trips x ${opt['ws-conns']} connection(s) per target per round`);
      report.ws = await wsPhase(targets, ctx);
    }
    if (!skip.has('deliver') && opt.posts > 0) {
      log(`phase deliver: ${opt.posts} posts`);
      report.deliver = await deliverPhase(targets, ctx);
    }

    for (const [name, pg] of [['region', ctx.regionPgid], ['edge', edge.pid], ['nginx', ngx.pid]]) {
      if (groupPids(pg).length === 0) throw new Error(`${name} died during the benchmark`);
    }
    const edgeMetrics = await http('GET', `${edge.api}/metrics`).catch(() => null);
    if (edgeMetrics && edgeMetrics.status === 200) {
      report.edge.metrics_excerpt = edgeMetrics.text
        .split('\n')
        .filter((l) => /^meridian_edge_(requests_total|refused_total|shed_total|upstream_errors_total|tunnels_open)\b/.test(l))
        .slice(0, 30);
    }

    const notes = [];
    const h = report.http;
    if (h) {
      if (h.edge.errors_total || h.nginx.errors_total || h.direct.errors_total) notes.push('some runs had socket errors or non-2xx answers: see http.*.runs[].error_detail');
      const noisy = h.edge.noisy_runs + h.nginx.noisy_runs + h.direct.noisy_runs;
      if (noisy) notes.push(`${noisy} of ${3 * opt.rounds} wrk runs shared the machine with more than ${NOISY_OTHER_CPU} cores of other load: figures are noisy; rerun on a quiet machine`);
      if (h.edge.client_cpu_util > 0.9 && h.nginx.client_cpu_util > 0.9) notes.push('wrk used its whole core: the client may be what limits requests/s');
    }
    report.targets = {
      rps_ratio_min: TARGET_RPS_RATIO_MIN,
      rps_met: h ? h.targets.rps_met : null,
      added_p50_met: h ? h.targets.added_p50_met : null,
      added_p50_low_load_met: h ? h.targets.added_p50_low_load_met : null,
      ws_added_p99_max_ms: TARGET_WS_ADDED_P99_MS,
      ws_added_p99_met: report.ws ? report.ws.targets.met : null,
    };
    report.targets.met = [report.targets.rps_met, report.targets.added_p50_met, report.targets.added_p50_low_load_met, report.targets.ws_added_p99_met].every((x) => x !== false) &&
      !(h && h.edge.errors_total);
    report.tools = { wrk: versionOf('wrk', ['--version']), node: process.version, ws: createRequire(path.join(REPO_ROOT, 'tests', 'package.json'))('ws/package.json').version };
    report.machine = machineInfo();
    report.notes = notes;

    for (const f of cleanup.reverse()) await f();
    cleanup.length = 0;
    await world.stop();
    report.finished_at = new Date().toISOString();

    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    const file = writeResult('edge', report, opt.out || undefined);
    if (h) {
      log(`http: edge ${h.edge.rps_median} req/s, nginx ${h.nginx.rps_median}, direct ${h.direct.rps_median}; ratio ${h.ratio_rps_edge_nginx}; ` +
          `added p50 edge ${h.added_p50_ms.edge} ms nginx ${h.added_p50_ms.nginx} ms` +
          (h.low_load ? `; at ${h.low_load.connections} connection: edge ${h.low_load.added_p50_ms.edge} ms nginx ${h.low_load.added_p50_ms.nginx} ms` : ''));
    }
    if (report.ws) log(`ws: added p99 per message edge ${report.ws.added_ms.edge?.p99 ?? report.ws.edge.error} ms (nginx ${report.ws.added_ms.nginx?.p99} ms)`);
    log(`targets ${report.targets.met ? 'met' : 'MISSED'}; wrote ${file}`);
    return report;
  } catch (e) {
    for (const f of cleanup.reverse()) await f().catch(() => {});
    await world.stop().catch(() => {});
    throw e;
  }
}

main().then(
  (report) => process.exit(opt.check && !report.targets.met ? 1 : 0),
  (e) => {
    log(`failed: ${e.stack || e.message}`);
    process.exit(1); // the harness's exit hook kills every process and removes the temp dirs
  },
);
