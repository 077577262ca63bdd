// http.mjs: bench/http. wrk against GET /healthz on a one-worker
// meridian-region (real Postgres/Redis/NATS from the test harness) and
// against Debian's nginx answering the same fixed 200 with one worker, in the
// same run, in alternating rounds; prints the medians and their ratio as JSON
// on stdout and writes them to bench/http/results/latest.json.
// Run it through ./bench/http/run (see README.md).


import { startWorld, freePort, makeTmp, track } from '../../tests/lib/harness.mjs';
import { buildInfo, ensureBuilt, gitInfo, makeLogger, options, writeResult } from '../lib/common.mjs';
import { startNginx, NGINX_BIN } from '../lib/nginx.mjs';
import { cpuBusy, cpuCount, cpusAllowed, cpuTimes, groupCpuTimes, groupPids, machineInfo, pinGroup, reniceGroup, versionOf } from '../lib/proc.mjs';
import { interleave, medians, pairedRatio } from '../lib/rounds.mjs';
import { ratio, round } from '../lib/stats.mjs';
import { runWrk } from '../lib/wrk.mjs';

const PATH = '/healthz';
const BODY = '{"status":"ok"}';
const TARGET_RPS_RATIO_MIN = 1.0;
const TARGET_P99_RATIO_MAX = 1.0;
const NOISY_OTHER_CPU = 0.15; // cores

const log = makeLogger('bench/http');

const opt = options(
  {
    duration: { type: 'number', short: 'd', default: 10, env: 'BENCH_DURATION', help: 'seconds per wrk run' },
    rounds: { type: 'number', short: 'r', default: 5, env: 'BENCH_ROUNDS', help: 'rounds (one run of each server per round)' },
    warmup: { type: 'number', default: 2, env: 'BENCH_WARMUP', help: 'seconds of discarded warm-up per server (0: none)' },
    connections: { type: 'number', short: 'c', default: 64, env: 'BENCH_CONNECTIONS', help: 'wrk connections' },
    threads: { type: 'number', short: 't', default: 1, env: 'BENCH_THREADS', help: 'wrk threads (wrk has one core)' },
    'server-cpus': { type: 'string', default: '0', env: 'BENCH_SERVER_CPUS', help: 'CPU list for both servers' },
    'client-cpus': { type: 'string', default: '1', env: 'BENCH_CLIENT_CPUS', help: 'CPU list for wrk' },
    nice: { type: 'string', default: '0', env: 'BENCH_NICE', help: 'niceness for both servers and wrk (e.g. -10 as root: neighbours on a shared machine get less of their cores)' },
    'no-pin': { type: 'boolean', default: false, env: 'BENCH_NO_PIN', help: 'do not pin servers and wrk to CPUs' },
    out: { type: 'string', default: '', env: 'BENCH_OUT', help: 'report file (default bench/http/results/latest.json)' },
    check: { type: 'boolean', default: false, env: 'BENCH_CHECK', help: 'exit 1 when the target is missed' },
  },
  {
    usage:
      'Usage: bench/http/run [options]\n\n' +
      'wrk against GET /healthz on meridian-region (1 worker) and on nginx (1 worker),\n' +
      'interleaved rounds; JSON report on stdout and in bench/http/results/latest.json.\n' +
      'Binary: $MERIDIAN_BUILD_DIR/meridian-region (default <repo>/build), built when missing.',
  },
);

if (opt.rounds < 1 || opt.duration < 1 || opt.connections < 1 || opt.threads < 1) {
  process.stderr.write('rounds, duration, connections and threads must be at least 1\n');
  process.exit(2);
}
if (opt.threads > opt.connections) opt.threads = opt.connections; // wrk refuses fewer connections than threads

const pin = !opt['no-pin'] && cpuCount() > 1;
const serverCpus = pin ? opt['server-cpus'] : '';
const clientCpus = pin ? opt['client-cpus'] : '';
const niceness = Number(opt.nice);
if (!Number.isInteger(niceness) || niceness < -20 || niceness > 19) {
  process.stderr.write(`--nice: not an integer in -20..19: ${opt.nice}\n`);
  process.exit(2);
}

/** Runs wrk once against url and adds the server's CPU use over the run. */
async function measure(url, pgid, durationS) {
  const cpu0 = groupCpuTimes(pgid);
  const cores0 = cpuTimes();
  const t0 = process.hrtime.bigint();
  const r = await runWrk({
    url: `${url}${PATH}`,
    threads: opt.threads,
    connections: opt.connections,
    durationS,
    cpus: clientCpus,
    scriptDir: scratch,
    onSpawn: (child) => track(child),
    nice: niceness,
  });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu1 = groupCpuTimes(pgid);
  const cpuUser = cpu1.user - cpu0.user;
  const cpu = cpuUser + cpu1.system - cpu0.system;
  const cores = cpuBusy(cores0, cpuTimes());
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
    server_cpu_s: round(cpu, 2),
    server_cpu_util: round(cpu / wall, 2), // 1.0 = one core busy all the run
    server_cpu_us_per_req: r.requests ? round((cpu / r.requests) * 1e6, 2) : null,
    // User space only: what the program itself costs, apart from kernel TCP work.
    server_user_us_per_req: r.requests ? round((cpuUser / r.requests) * 1e6, 2) : null,
    // Busy fraction of every core over the run, whoever used it: a server
    // core busier than server_cpu_util, or a client core below ~1.0, shows
    // neighbours' load or which side was the bottleneck.
    cores_busy: cores,
    client_cpu_util: round(clientUtil, 2),
    // Cores used by everything but this server and wrk (neighbours, the
    // idle world, this script): above NOISY_OTHER_CPU the run is suspect.
    other_cpu_util: clientUtil === null ? null : round(Math.max(0, allBusy - cpu / wall - clientUtil), 2),
    response_bytes: r.requests ? round(r.bytes / r.requests, 0) : null,
  };
}

function summary(runs) {
  return {
    ...medians(runs, {
      rps_median: (r) => r.rps,
      p50_ms: (r) => r.p50_ms,
      p99_ms: (r) => r.p99_ms,
      p999_ms: (r) => r.p999_ms,
      server_cpu_us_per_req: (r) => r.server_cpu_us_per_req,
      server_user_us_per_req: (r) => r.server_user_us_per_req,
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

let scratch;

async function main() {
  const started = new Date();
  const est = opt.rounds * 2 * (opt.duration + 0.3) + 2 * opt.warmup;
  log(`${opt.rounds} rounds x 2 servers x ${opt.duration}s, ${opt.connections} connections, ${opt.threads} wrk thread(s);` +
      ` ~${Math.ceil(est)}s of load plus start-up`);
  if (!pin) log('not pinning CPUs (--no-pin or a single core)');

  const bin = ensureBuilt('meridian-region', log);
  scratch = makeTmp('meridian-bench-http-');

  log('starting the world (Postgres x2, Redis, NATS, meridian-region with 1 worker)');
  const world = await startWorld({ workers: 1, config: { log: { access: false } } });
  const regionPgid = world.region.pid;
  let regionPids = [];
  if (pin) regionPids = pinGroup(regionPgid, serverCpus);
  if (niceness) reniceGroup(regionPgid, niceness);

  const ngxPort = await freePort();
  const ngx = await startNginx({
    tmp: scratch,
    port: ngxPort,
    workers: 1,
    cpus: serverCpus,
    readyPath: PATH,
    locations: `        location = ${PATH} {
            default_type application/json;
            add_header Cache-Control no-store;
            return 200 '${BODY}';
        }`,
  });
  if (niceness) reniceGroup(ngx.pid, niceness);
  log(`meridian ${world.api} (pids ${groupPids(regionPgid).join(',')}), nginx ${ngx.url} (pids ${groupPids(ngx.pid).join(',')})`);

  const servers = [
    { name: 'meridian', url: world.api, pgid: regionPgid },
    { name: 'nginx', url: ngx.url, pgid: ngx.pid },
  ];
  for (const s of servers) {
    const res = await fetch(`${s.url}${PATH}`);
    const text = await res.text();
    if (res.status !== 200 || text !== BODY) throw new Error(`${s.name}: GET ${PATH} answered ${res.status} ${text}`);
    s.cpus = cpusAllowed(s.pgid);
  }

  if (opt.warmup > 0) {
    for (const s of servers) {
      log(`warm-up ${s.name} ${opt.warmup}s`);
      await measure(s.url, s.pgid, opt.warmup);
    }
  }

  const results = await interleave({
    rounds: opt.rounds,
    contenders: servers.map((s) => ({ name: s.name, run: () => measure(s.url, s.pgid, opt.duration) })),
    onRun: (name, r, x) =>
      log(`round ${r + 1}/${opt.rounds} ${name.padEnd(8)} ${String(x.rps).padStart(9)} req/s  p50 ${x.p50_ms} ms  p99 ${x.p99_ms} ms` +
          `  cpu server ${x.server_cpu_util} (${x.server_cpu_us_per_req} us/req, user ${x.server_user_us_per_req}) wrk ${x.client_cpu_util} other ${x.other_cpu_util}${x.errors ? `  ERRORS ${x.errors}` : ''}`),
  });

  for (const s of servers) {
    if (groupPids(s.pgid).length === 0) throw new Error(`${s.name} died during the benchmark`);
  }

  const m = summary(results.meridian);
  const n = summary(results.nginx);
  const ratioRps = round(ratio(m.rps_median, n.rps_median), 3);
  const ratioP99 = round(ratio(m.p99_ms, n.p99_ms), 3);
  const rpsMet = ratioRps !== null && ratioRps >= TARGET_RPS_RATIO_MIN;
  const p99Met = ratioP99 !== null && ratioP99 <= TARGET_P99_RATIO_MAX;
  const notes = [];
  if (m.errors_total || n.errors_total) notes.push('some runs had socket errors or non-2xx answers: see runs[].error_detail');
  if (m.noisy_runs || n.noisy_runs) {
    notes.push(`${m.noisy_runs + n.noisy_runs} of ${2 * opt.rounds} runs shared the machine with more than ${NOISY_OTHER_CPU} ` +
               'cores of other load (runs[].other_cpu_util): the figures are noisy; rerun on a quiet machine');
  }
  if (m.client_cpu_util > 0.9 && n.client_cpu_util > 0.9) {
    notes.push('wrk used its whole core in both cases (client_cpu_util ~1): the client, not the server, may be what limits requests/s');
  }

  const report = {
    benchmark: 'http',
    started_at: started.toISOString(),
    finished_at: new Date().toISOString(),
    path: PATH,
    rounds: opt.rounds,
    duration_s: opt.duration,
    warmup_s: opt.warmup,
    connections: opt.connections,
    threads: opt.threads,
    nice: niceness,
    order: 'alternating: meridian then nginx in even rounds, nginx then meridian in odd rounds',
    pinning: pin
      ? {
          server_cpus: serverCpus,
          client_cpus: clientCpus,
          how: 'taskset: every process and thread of each server on server_cpus, wrk on client_cpus; ' +
               "the world's Postgres/Redis/NATS are not pinned (idle during the runs)",
        }
      : null,
    meridian: {
      binary: bin,
      build: buildInfo(),
      git: gitInfo(),
      workers: 1,
      access_log: false,
      pids: regionPids,
      cpus_allowed: servers[0].cpus,
      ...m,
    },
    nginx: {
      binary: NGINX_BIN,
      version: versionOf(NGINX_BIN, ['-v']),
      workers: 1,
      access_log: false,
      keepalive_requests: 1000000,
      cpus_allowed: servers[1].cpus,
      ...n,
    },
    ratio_rps: ratioRps,
    ratio_rps_paired_median: round(pairedRatio(results.meridian, results.nginx, (r) => r.rps), 3),
    ratio_p99: ratioP99,
    ratio_p99_paired_median: round(pairedRatio(results.meridian, results.nginx, (r) => r.p99_ms), 3),
    // CPU per request hardly depends on neighbours (a few % spread where
    // requests/s spreads by tens of %): the steadiest comparison here.
    ratio_server_cpu_per_req: round(ratio(m.server_cpu_us_per_req, n.server_cpu_us_per_req), 3),
    targets: {
      rps_ratio_min: TARGET_RPS_RATIO_MIN,
      p99_ratio_max: TARGET_P99_RATIO_MAX,
      rps_met: rpsMet,
      p99_met: p99Met,
      met: rpsMet && p99Met && m.errors_total === 0,
    },
    tools: { wrk: versionOf('wrk', ['--version']), node: process.version },
    machine: machineInfo(),
    notes,
  };

  // Stop the servers before printing so the report is only written for a clean run.
  await ngx.stop();
  await world.stop();

  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  const file = writeResult('http', report, opt.out || undefined);
  log(`meridian ${m.rps_median} req/s p99 ${m.p99_ms} ms; nginx ${n.rps_median} req/s p99 ${n.p99_ms} ms; ` +
      `ratio rps ${ratioRps} p99 ${ratioP99}: target ${report.targets.met ? 'met' : 'MISSED'}; wrote ${file}`);
  return report;
}

main().then(
  (report) => process.exit(opt.check && !report.targets.met ? 1 : 0),
  (e) => {
    log(`failed: ${e.stack || e.message}`);
    process.exit(1); // the harness's exit hook kills every process and removes the temp dirs
  },
);
