// bench/storm: a reconnect storm. One region (one node, real Postgres, Redis
// and NATS from the test harness) behind one meridian-edge; --clients stream
// clients (meridian-loadgen processes on 127.0.0.x sources) connected
// through the edge, posts flowing to their channels; then kill -9 of every
// worker of the region node, which its master brings back. Measured: time
// until every client is connected again, accepted connects/s against the
// admission cap, shed responses, the region's /healthz p99 during the storm
// (a side poller), peak RSS of region and edge, and events lost or
// duplicated (the outbox is the truth: every client must end at its
// workspace's head seq with no gap). Run twice in the same run: with jitter
// and admission, and with both off (the naive clients). JSON on stdout and
// in bench/storm/results/latest.json; the connects/s of both runs plotted
// with gnuplot when it is installed. See README.md.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { makeTmp, removeTmp, startWorlds, track, waitFor } from '../../tests/lib/harness.mjs';
import { ensureBuilt, gitInfo, makeLogger, options, writeResult } from '../lib/common.mjs';
import { machineInfo } from '../lib/proc.mjs';
import { percentile, round } from '../lib/stats.mjs';
import {
  Loadgen,
  accountEvents,
  connectedOf,
  killWorkers,
  makeWorkspaces,
  mergeTimelines,
  metricSum,
  peakRate,
  peakSampledRate,
  sampleCounter,
  scrape,
  startClients,
  startPoster,
  sumCodes,
  tailMissing,
  TIMELINE_KINDS,
  treeRss,
  waitAllConnected,
  waitQuiet,
  waitRouted,
} from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const log = makeLogger('storm');
const o = options(
  {
    clients: { type: 'number', default: 50000, env: 'BENCH_CLIENTS', short: 'c', help: 'stream clients through the edge' },
    members: { type: 'number', default: 100, env: 'BENCH_MEMBERS', help: 'clients per workspace (clients/members workspaces, each with a #general that is posted to)' },
    'region-workers': { type: 'number', default: 4, env: 'BENCH_REGION_WORKERS', help: 'workers of the region node (each under 20k descriptors)' },
    'edge-workers': { type: 'number', default: 0, env: 'BENCH_EDGE_WORKERS', help: 'edge workers (0: enough that each holds under ~14k descriptors, 2 per tunnel)' },
    'per-loadgen': { type: 'number', default: 12500, env: 'BENCH_PER_LOADGEN', help: 'most clients per loadgen process' },
    cap: { type: 'number', default: 4000, env: 'BENCH_CAP', help: 'region admission.sessions_per_s (node-wide new sessions per second)' },
    burst: { type: 'number', default: 200, env: 'BENCH_BURST', help: 'region admission.burst' },
    'admission-at': { type: 'string', default: 'both', env: 'BENCH_ADMISSION_AT', help: "where the admission run's cap binds: both (the edge admits edge-headroom x the cap, the region the cap), or edge (region admission off, the edge's buckets add up to the cap)" },
    'edge-headroom': { type: 'number', default: 1, env: 'BENCH_EDGE_HEADROOM', help: "the edge admits this times the region's cap (split over its workers, pooled by the edge). Above 1 the region's bucket binds, but the edge also spaces its shed and lost clients' slots at this rate: 1.25 sent the region 25% more than it admits, every one of them shed again (measured: 1-2 s slower at 50k)" },
    'post-rate': { type: 'number', default: 100, env: 'BENCH_POST_RATE', help: 'posts/s, round-robin over the workspaces, through the edge' },
    'backoff-base-ms': { type: 'number', default: 100, env: 'BENCH_BACKOFF_BASE_MS', help: 'client backoff base' },
    'backoff-cap-ms': { type: 'number', default: 5000, env: 'BENCH_BACKOFF_CAP_MS', help: 'client backoff cap' },
    'upstream-addrs': { type: 'number', default: 0, env: 'BENCH_UPSTREAM_ADDRS', help: 'loopback addresses the edge reaches the region node by (0: one per 4,000 clients, at least 3)' },
    'max-inflight': { type: 'number', default: 100000, env: 'BENCH_MAX_INFLIGHT', help: 'concurrent handshakes per loadgen (default: no limit, a real herd)' },
    'timeline-ms': { type: 'number', default: 250, env: 'BENCH_TIMELINE_MS', help: 'timeline bucket' },
    'healthz-ms': { type: 'number', default: 20, env: 'BENCH_HEALTHZ_MS', help: '/healthz poll interval during the storm' },
    'connect-timeout': { type: 'number', default: 600, env: 'BENCH_CONNECT_TIMEOUT', help: 'seconds to connect every client before the storm' },
    'recovery-timeout': { type: 'number', default: 180, env: 'BENCH_RECOVERY_TIMEOUT', help: 'seconds to wait for full recovery after the kill' },
    'breaker-open-ms': { type: 'number', default: 0, env: 'BENCH_BREAKER_OPEN_MS', help: "edge health.breaker_open_ms (0: the edge's default)" },
    runs: { type: 'string', default: 'admission,naive', env: 'BENCH_RUNS', help: 'which runs, in order: admission (jitter + admission), naive (both off)' },
    png: { type: 'string', default: '', env: 'BENCH_PNG', help: 'also write the plot here (e.g. docs/img/storm.png)' },
    out: { type: 'string', default: '', env: 'BENCH_OUT', help: 'report file (default bench/storm/results/latest.json)' },
  },
  { usage: 'usage: bench/storm/run [options]  (JSON on stdout; a small run: bench/storm/run --clients 5000 --cap 1000)' },
);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const REGION = 'us-east';
const edgeWorkers = o['edge-workers'] || Math.max(1, Math.ceil((o.clients * 2) / 14000));

/** Region config of one run: admission on with the cap, or off; null when the region has no admission yet. */
function regionAdmission(run, supported) {
  if (!supported) return null;
  return run === 'naive' || o['admission-at'] === 'edge' ? { enabled: false } : { enabled: true, sessions_per_s: o.cap, burst: o.burst };
}

/** Edge admission of one run: per region per edge worker. The edge has no off switch: huge for the naive run. */
function edgeAdmission(run) {
  if (run === 'naive') return { sessions_per_s: 10000000, burst: 10000000 };
  const headroom = o['admission-at'] === 'edge' ? 1 : o['edge-headroom'];
  return {
    sessions_per_s: Math.ceil((o.cap * headroom) / edgeWorkers),
    burst: Math.max(1, Math.ceil((o.burst * headroom) / edgeWorkers)),
  };
}

/** Does this meridian-region know admission.*? (--check-config refuses unknown fields.) */
function regionHasAdmission(node, tmp) {
  const file = path.join(tmp, 'admission-check.json');
  fs.writeFileSync(file, JSON.stringify({ ...node.config, admission: { enabled: true, sessions_per_s: 1000, burst: 2000 } }));
  const r = spawnSync(node.cmd, ['--check-config', '--config', file], { encoding: 'utf8' });
  return r.status === 0;
}

/** Starts the side poller of the region's /healthz. */
function startPoller(url) {
  const child = spawn(process.execPath, [path.join(HERE, 'healthz.mjs'), '--url', url, '--interval', String(o['healthz-ms'])], { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
  track(child);
  let out = null;
  const done = new Promise((resolve) => {
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
      try {
        out = JSON.parse(l);
      } catch {
        /* not ours */
      }
    });
    child.once('exit', () => resolve(out));
  });
  return {
    stop: async () => {
      child.stdin.end('stop\n');
      const t = setTimeout(() => child.kill('SIGKILL'), 10000);
      const r = await done;
      clearTimeout(t);
      return r;
    },
  };
}

function healthzStats(samples, fromMs, toMs) {
  const inside = samples.filter(([at]) => at >= fromMs && at <= toMs);
  const ok = inside.filter(([, ms]) => ms !== null).map(([, ms]) => ms).sort((a, b) => a - b);
  return {
    polls: inside.length,
    answered: ok.length,
    failed: inside.length - ok.length,
    p50_ms: ok.length ? round(percentile(ok, 50), 2) : null,
    p99_ms: ok.length ? round(percentile(ok, 99), 2) : null,
    max_ms: ok.length ? round(ok[ok.length - 1], 2) : null,
    note: 'failed = refused or timed out while no worker listened (between the kill and the restart); p99 over the answered polls',
  };
}

/** One storm: connect everyone, post, kill -9 the region's workers, wait for everyone back, account. */
async function storm({ run, world, edge, fx, bins, tmp, admissionSupported }) {
  const R = world.regions[REGION];
  const node = R.node;
  const jitter = run !== 'naive';
  log(`${run}: connecting ${o.clients} clients through the edge (${edgeWorkers} edge workers, jitter ${jitter ? 'on' : 'off'})`);
  const t0 = Date.now();
  const lgs = startClients({ bin: bins.loadgen, tmp, port: edge.port, workspaces: fx.workspaces, perProc: o['per-loadgen'], jitter, baseMs: o['backoff-base-ms'], capMs: o['backoff-cap-ms'], timelineMs: o['timeline-ms'], maxInflight: o['max-inflight'], tag: `${run}-c` });
  let poster = null;
  let poller = null;
  let edgeAccepts = null;
  const rssPeak = { region: 0, edge: 0, total: 0 };
  let rssTimer = null;
  try {
    await waitAllConnected(lgs, o.clients, o['connect-timeout'] * 1000);
    const connectS = (Date.now() - t0) / 1000;
    const settled = await waitQuiet(lgs, { quietMs: 2000, maxMs: 120000 });
    log(`${run}: all connected in ${round(connectS, 1)} s; quiet ${round(settled / 1000, 1)} s later`);
    poster = startPoster({ bin: bins.loadgen, tmp, port: edge.port, workspaces: fx.workspaces, rate: o['post-rate'], tag: `${run}-poster` });
    await waitFor(() => poster.last && poster.last.connected === 0 && (poster.last.posts_ok || 0) > o['post-rate'], { timeoutMs: 30000, message: 'posts do not flow' });
    await sleep(2000);
    const metricsBefore = await scrape(node.api).catch(() => ({}));
    const edgeBefore = await scrape(edge.api).catch(() => ({}));
    rssTimer = setInterval(() => {
      const r = treeRss(node.pid);
      const e = treeRss(edge.pid);
      rssPeak.region = Math.max(rssPeak.region, r);
      rssPeak.edge = Math.max(rssPeak.edge, e);
      rssPeak.total = Math.max(rssPeak.total, r + e);
    }, 100);
    poller = startPoller(`http://127.0.0.1:${node.port}`);
    // Upgrades the region answered 101, as the edge relays them: accepted
    // connects at the servers, without the clients' own delays (the
    // loadgens share the two cores and read their answers late in bursts).
    edgeAccepts = sampleCounter(edge.api, 'meridian_edge_requests_total', 'code="1xx"');
    await sleep(1000); // a second of /healthz before the storm
    const [marks] = await Promise.all([Promise.all(lgs.map((l) => l.mark('storm'))), poster.mark('before')]);
    const killAt = Date.now();
    const killed = killWorkers(node.pid);
    log(`${run}: kill -9 ${killed.join(' ')}`);
    // Every client back: each loadgen reports the instant it was whole again.
    const recoveredOf = () => lgs.map((l) => l.last && l.last.storm && l.last.storm.recovered_unix_ms);
    let recovered = true;
    try {
      await waitFor(() => recoveredOf().every((x) => x) && connectedOf(lgs) >= o.clients, { timeoutMs: o['recovery-timeout'] * 1000, intervalMs: 100, maxIntervalMs: 250, message: 'recovery' });
    } catch {
      recovered = false;
      log(`${run}: only ${connectedOf(lgs)} of ${o.clients} back after ${o['recovery-timeout']} s`);
    }
    const recoveredAt = recovered ? Math.max(...recoveredOf()) : null;
    const stormEnd = Date.now();
    log(`${run}: ${recovered ? `all back ${round((recoveredAt - killAt) / 1000, 2)} s after the kill` : 'not recovered'}`);
    await sleep(2000); // posts after the recovery, delivered live
    const hz = await poller.stop();
    poller = null;
    const accepts = await edgeAccepts.stop();
    edgeAccepts = null;
    clearInterval(rssTimer);
    rssTimer = null;
    const pm = await poster.mark('storm');
    const posterFinal = await poster.stop();
    poster = null;
    await waitQuiet(lgs, { quietMs: 3000, maxMs: 60000 }); // replays and live events delivered
    // A client behind its workspace's head now is either slow or missed
    // events for good (nothing more is posted to make it notice a gap):
    // look again 10 s later to tell which.
    let behind = await tailMissing({ postgres: R.postgres, workspaces: fx.workspaces, reports: await Promise.all(lgs.map((l) => l.cursors())) });
    const behindAfterQuiet = { tail_missing: behind.tail_missing, streams_behind: behind.streams_behind, examples: behind.behind };
    if (behind.tail_missing > 0) {
      log(`${run}: ${behind.tail_missing} events missing at the tail after the quiet period; looking again in 10 s`);
      await sleep(10000);
      behind = await tailMissing({ postgres: R.postgres, workspaces: fx.workspaces, reports: await Promise.all(lgs.map((l) => l.cursors())) });
    }
    const metricsAfter = await scrape(node.api).catch(() => ({}));
    const edgeAfter = await scrape(edge.api).catch(() => ({}));
    const reports = await Promise.all(lgs.map((l) => l.stop(60000)));
    // A loadgen that could not finish its report in time (an overloaded
    // machine) still has its last snapshot: counters, not timeline or cursors.
    const missing = lgs.filter((l, i) => !reports[i]).map((l) => `${l.name} (exit ${JSON.stringify(l.exit)}: ${l.errTail.slice(-3).join(' | ')})`);
    const finals = reports.map((f, i) => f || { ...lgs[i].last, timeline: null, streams: null });
    if (missing.length) log(`${run}: no final report from ${missing.join(' ')}: their last snapshots are used`);
    const tl = mergeTimelines(finals);
    const loss = missing.length
      ? { incomplete: `no final report from ${missing.join(', ')}: cursors unknown`, gaps: finals.reduce((s, f) => s + (f.gaps || 0), 0), duplicated: finals.reduce((s, f) => s + (f.duplicates || 0), 0) }
      : await accountEvents({ postgres: R.postgres, workspaces: fx.workspaces, finals });
    const peak = tl ? peakRate(tl, killAt, 1000) : { per_s: null };
    const peak250 = tl ? peakRate(tl, killAt, o['timeline-ms']) : { per_s: null };
    // Sessions are counted when their hello arrives, after the region's
    // database work: a backlog admitted over a second can complete in one
    // burst. Two-second windows smooth that out.
    const peak2s = tl ? peakRate(tl, killAt, 2000) : { per_s: null };
    const peakEdge = peakSampledRate(accepts, killAt, 1000);
    const delta = (a, b, name) => {
      const x = metricSum(b, name);
      const y = metricSum(a, name);
      return x === null ? null : x - (y || 0);
    };
    const admitted = delta(metricsBefore, metricsAfter, 'meridian_admission_admitted_total');
    const capApplies = run !== 'naive' && (admissionSupported || o['admission-at'] === 'edge');
    // Loadgen counters are cumulative since their start: the storm's share is
    // the final figure less the one at the storm mark.
    const since = (key) => finals.reduce((s, f) => s + f[key], 0) - marks.reduce((s, m) => s + m[key], 0);
    const codesSince = (key) => {
      const a = sumCodes(finals, key);
      const b = sumCodes(marks, key);
      for (const k of Object.keys(a)) a[k] -= b[k] || 0;
      return a;
    };
    const result = {
      run,
      jitter,
      region_admission: regionAdmission(run, admissionSupported) || 'absent in this build (admission.* refused by --check-config)',
      edge_admission_per_worker: edgeAdmission(run),
      cap_binds_at: run === 'naive' ? null : o['admission-at'] === 'edge' || !admissionSupported ? 'edge' : 'region',
      clients: o.clients,
      initial_connect_s: round(connectS, 1),
      killed_workers: killed.length,
      recovered,
      time_to_full_recovery_s: recovered ? round((recoveredAt - killAt) / 1000, 2) : null,
      min_connected: lgs.reduce((s, l, i) => s + (finals[i].storm ? finals[i].storm.min_connected : 0), 0),
      // When the clients saw their sessions end, and when the first came back.
      first_drop_after_kill_ms: Math.min(...finals.map((f) => (f.storm && f.storm.first_drop_unix_ms) || Infinity)) - killAt,
      first_connect_after_kill_ms: tl ? firstAfter(tl, 'connects', killAt) : null,
      first_shed_after_kill_ms: tl ? firstAfter(tl, 'shed', killAt) : null,
      peak_accepted_connects_per_s: round(peak.per_s, 0),
      peak_accepted_connects_per_s_250ms: round(peak250.per_s, 0),
      peak_accepted_connects_per_s_2s: round(peak2s.per_s, 0),
      // The same, counted at the edge as the region's 101s pass through it.
      peak_accepted_connects_per_s_at_edge: peakEdge.per_s === null ? null : round(peakEdge.per_s, 0),
      peak_at_edge_over_cap: capApplies && peakEdge.per_s !== null ? round(peakEdge.per_s / o.cap, 3) : null,
      cap_per_s: capApplies ? o.cap : null,
      peak_over_cap: capApplies && peak.per_s !== null ? round(peak.per_s / o.cap, 3) : null,
      shed: since('shed'),
      unavailable_503: since('unavailable'),
      handshake_status: codesSince('handshake_status'),
      hint_waits: since('hint_waits'),
      tcp_errors: since('tcp_errors'),
      handshake_timeouts: since('handshake_timeouts'),
      shed_while_connecting_initially: marks.reduce((s, m) => s + m.shed, 0),
      region_metrics: {
        admission_admitted: admitted,
        admission_shed: delta(metricsBefore, metricsAfter, 'meridian_admission_shed_total'),
        stream_resyncs: delta(metricsBefore, metricsAfter, 'meridian_stream_resyncs_total'),
        note: 'counters of the workers alive at the end (a killed worker takes its own with it)',
      },
      edge_metrics: { shed: delta(edgeBefore, edgeAfter, 'meridian_edge_shed_total'), refused: delta(edgeBefore, edgeAfter, 'meridian_edge_refused_total') },
      healthz: healthzStats(hz ? hz.samples : [], killAt, recoveredAt || stormEnd),
      healthz_before_storm: healthzStats(hz ? hz.samples : [], killAt - 1000, killAt - 1),
      peak_rss_mib: { region: round(rssPeak.region / 1048576, 1), edge: round(rssPeak.edge / 1048576, 1), total: round(rssPeak.total / 1048576, 1) },
      posts: { during_storm_ok: pm.posts_ok, during_storm_failed: pm.posts_failed, during_storm_skipped: pm.posts_skipped, total_ok: posterFinal ? posterFinal.posts_ok : null },
      events: { ...loss, behind_after_quiet: behindAfterQuiet, behind_10s_later: behind.tail_missing },
      timeline: tl ? { ...tl, kill_unix_ms: killAt, recovered_unix_ms: recoveredAt } : null,
    };
    if (run !== 'naive') {
      result.targets = {
        recovery_within_15_s: result.time_to_full_recovery_s !== null && result.time_to_full_recovery_s <= 15,
        zero_lost: loss.lost === 0 && !loss.incomplete,
        peak_within_cap_plus_10pct: capApplies && peak.per_s !== null ? peak.per_s <= o.cap * 1.1 : null,
        peak_at_edge_within_cap_plus_10pct: capApplies && peakEdge.per_s !== null ? peakEdge.per_s <= o.cap * 1.1 : null,
        healthz_p99_within_100_ms: result.healthz.p99_ms !== null && result.healthz.p99_ms <= 100,
      };
    }
    log(`${run}: recovery ${result.time_to_full_recovery_s} s, peak ${result.peak_accepted_connects_per_s}/s at the clients, ${result.peak_accepted_connects_per_s_at_edge}/s at the edge (cap ${o.cap}), shed ${result.shed}, healthz p99 ${result.healthz.p99_ms} ms, lost ${loss.lost}, dup ${loss.duplicated}, rss ${JSON.stringify(result.peak_rss_mib)}`);
    return result;
  } finally {
    if (rssTimer) clearInterval(rssTimer);
    if (poller) await poller.stop().catch(() => {});
    if (edgeAccepts) await edgeAccepts.stop().catch(() => {});
    if (poster) poster.kill();
    for (const l of lgs) if (l.child.exitCode === null) await l.stop().catch(() => l.kill());
  }
}

/** ms from `t` to the start of the first bucket at or after it with a `kind` count (bucket resolution). */
function firstAfter(tl, kind, t) {
  for (let i = Math.max(0, Math.floor((t - tl.origin_unix_ms) / tl.bucket_ms)); i < tl[kind].length; i++) {
    if (tl[kind][i]) return Math.max(0, tl.origin_unix_ms + i * tl.bucket_ms - t);
  }
  return null;
}

/** Restarts a node (region or edge) with part of its config replaced. */
async function reconfigure(node, patch) {
  await node.stop();
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete node.config[k];
    else node.config[k] = v;
  }
  await node.start();
}

/** connects/s of each run from its kill on, to a gnuplot data file and a PNG. */
function plot(results, file, pngs) {
  if (!results.length) return { skipped: 'no run has a timeline' };
  const which = spawnSync('gnuplot', ['--version'], { encoding: 'utf8' });
  if (which.status !== 0) return { skipped: 'gnuplot is not installed (bench/storm/run installs gnuplot-nox when run as root)' };
  const cols = results.map((r) => {
    const tl = r.timeline;
    const first = Math.floor((tl.kill_unix_ms - 2000 - tl.origin_unix_ms) / tl.bucket_ms);
    const rows = [];
    for (let i = Math.max(0, first); i < tl.connects.length; i++) {
      const perS = (k) => ((tl[k][i] || 0) * 1000) / tl.bucket_ms;
      rows.push([(tl.origin_unix_ms + i * tl.bucket_ms - tl.kill_unix_ms) / 1000, perS('connects'), perS('shed'), perS('failed'), perS('attempts'), perS('drops')]);
    }
    return rows;
  });
  const data = file.replace(/\.png$/, '.dat');
  const blocks = cols.map((rows, i) => `# ${results[i].run}: t_s connects_per_s shed_per_s failed_per_s attempts_per_s drops_per_s\n${rows.map((r) => r.map((x) => round(x, 3)).join(' ')).join('\n')}`);
  fs.writeFileSync(data, `${blocks.join('\n\n\n')}\n`);
  const title = (r) => (r.run === 'naive' ? 'no jitter, no admission' : 'full jitter + admission');
  const lines = results.map((r, i) => `'${data}' index ${i} using 1:2 with steps lw 2 title '${title(r)}: accepted connects/s'`);
  const capRun = results.find((r) => r.cap_per_s);
  if (capRun) lines.push(`${capRun.cap_per_s} with lines dt 2 lc rgb 'gray40' title "${capRun.cap_binds_at === 'edge' ? "admission cap (the edge's buckets together)" : "the region's admission cap"}"`);
  const script = [
    "set terminal pngcairo size 960,480 font 'sans,10'",
    `set output '${file}'`,
    `set title 'Reconnect storm: ${o.clients} clients through the edge, kill -9 of every region worker at t = 0'`,
    "set xlabel 'seconds after the kill'",
    "set ylabel 'accepted connects/s (per 250 ms, scaled)'",
    'set grid',
    'set key top right',
    `plot ${lines.join(', ')}`,
  ].join('\n');
  const r = spawnSync('gnuplot', [], { input: script, encoding: 'utf8' });
  if (r.status !== 0) return { skipped: `gnuplot failed: ${r.stderr.slice(0, 300)}` };
  for (const p of pngs) fs.copyFileSync(file, p);
  return { png: file, data, copies: pngs };
}

async function main() {
  const runs = o.runs.split(',').filter(Boolean);
  for (const r of runs) if (r !== 'admission' && r !== 'naive') throw new Error(`--runs: unknown run ${r}`);
  ensureBuilt('meridian-region', log);
  ensureBuilt('meridian-edge', log);
  const bins = { loadgen: ensureBuilt('meridian-loadgen', log) };
  const tmp = makeTmp('meridian-bench-storm-');
  const report = {
    benchmark: 'storm',
    at: new Date().toISOString(),
    git: gitInfo(),
    machine: machineInfo(),
    setup: {
      clients: o.clients,
      members_per_workspace: o.members,
      workspaces: Math.ceil(o.clients / o.members),
      region_workers: o['region-workers'],
      edge_workers: edgeWorkers,
      per_loadgen: o['per-loadgen'],
      cap_per_s: o.cap,
      burst: o.burst,
      admission_at: o['admission-at'],
      post_rate_per_s: o['post-rate'],
      max_inflight_per_loadgen: o['max-inflight'],
      backoff_ms: { base: o['backoff-base-ms'], cap: o['backoff-cap-ms'] },
      fixtures: 'stream users written straight into the shard, tokens minted with the region signing key (bench/storm/README.md)',
    },
    runs: {},
  };
  let world = null;
  try {
    // The edge opens one upstream connection per tunnel: from one address
    // to one region address it would run out of ephemeral ports (~28k) before
    // 50,000, and well before that the kernel's search for a free port in
    // connect() (__inet_check_established) took a fifth of the machine's CPU
    // at 16k connections per destination. The region listens on every
    // loopback address and the edge gets one URL of the same node per
    // ~4,000 clients (127.0.1.x), which it round-robins.
    world = await startWorlds({
      regions: [REGION],
      shards: 1,
      workers: o['region-workers'],
      config: {
        listen: { host: '0.0.0.0' },
        log: { level: 'warn', access: false },
        limits: { write_rate_per_s: 1000000, write_burst: 1000000 },
        http: { max_connections: 19500 },
        shutdown: { drain_timeout_ms: 3000 },
      },
    });
    const R = world.regions[REGION];
    const node = R.node;
    const naddrs = o['upstream-addrs'] || Math.min(16, Math.max(3, Math.ceil(o.clients / 4000))); // the edge takes 16 URLs a region
    const urls = Array.from({ length: naddrs }, (_, i) => `http://127.0.1.${i + 1}:${node.port}`);
    report.setup.region_urls_at_the_edge = urls.length;
    world.world.regions.find((r) => r.name === REGION).api.urls = urls;
    fs.writeFileSync(world.worldFile, `${JSON.stringify(world.world, null, 2)}\n`);
    const admissionSupported = regionHasAdmission(node, tmp);
    report.setup.region_admission_available = admissionSupported;
    log(`region up (${o['region-workers']} workers); admission.* ${admissionSupported ? 'known' : 'NOT known to this meridian-region: runs without it'}`);
    const edgeConfig = (run) => ({
      log: { level: 'warn', access: false },
      http: { max_connections: 19500 },
      upstream: { max_conns: 19500 },
      admission: edgeAdmission(run),
      ...(o['breaker-open-ms'] ? { health: { breaker_open_ms: o['breaker-open-ms'] } } : {}),
    });
    const edge = await world.startEdge({ workers: edgeWorkers, config: edgeConfig(runs[0]) });
    const t0 = Date.now();
    const fx = await makeWorkspaces({
      regionApi: node.api,
      postgres: R.postgres,
      regionName: REGION,
      signingKeyFile: node.config.auth.signing_key_file,
      count: Math.ceil(o.clients / o.members),
      members: o.members,
    });
    // The last workspace gets what is left over.
    const extra = fx.workspaces.length * o.members - o.clients;
    if (extra > 0) fx.workspaces[fx.workspaces.length - 1].users.splice(o.members - extra);
    await waitRouted(edge.api, fx);
    log(`fixtures: ${fx.workspaces.length} workspaces x ${o.members} in ${round((Date.now() - t0) / 1000, 1)} s; edge routes them`);
    for (const [i, run] of runs.entries()) {
      const adm = regionAdmission(run, admissionSupported);
      if (admissionSupported) await reconfigure(node, { admission: adm });
      if (i > 0) await reconfigure(edge, edgeConfig(run));
      try {
        report.runs[run] = await storm({ run, world, edge, fx, bins, tmp, admissionSupported });
      } catch (e) {
        // One run failing must not lose the other's figures.
        log(`${run}: ${e.stack || e}`);
        report.runs[run] = { run, error: String(e.message || e) };
      }
    }
  } finally {
    if (world) await world.stop().catch((e) => log(`stopping the world: ${e.message}`));
    removeTmp(tmp);
  }
  const results = runs.map((r) => report.runs[r]).filter((r) => r && r.timeline);
  fs.mkdirSync(path.join(HERE, 'results'), { recursive: true });
  const pngs = o.png ? [path.resolve(o.png)] : [];
  report.plot = plot(results, path.join(HERE, 'results', 'storm.png'), pngs);
  if (report.plot.skipped) log(`plot: ${report.plot.skipped}`);
  report.machine.loadavg_end = machineInfo().loadavg;
  process.stdout.write(`${JSON.stringify(report, (k, v) => (TIMELINE_KINDS.includes(k) && Array.isArray(v) ? `[${v.length} buckets]` : v), 2)}\n`);
  log(`report: ${writeResult('storm', report, o.out || undefined)}`);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
