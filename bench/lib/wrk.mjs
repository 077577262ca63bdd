// wrk.mjs: runs wrk (Debian's /usr/bin/wrk, 4.1) and turns its report into
// numbers. Two sources, cross-checked: the human-readable `--latency` report
// (parseWrkText, 3 significant digits) and a Lua `done()` hook that prints
// the exact counters and percentiles as one JSON line (WRK_JSON). The hook
// defines neither request() nor response(), so wrk keeps its static-request,
// no-Lua-per-response fast path: it costs nothing while the run lasts.
//
//   import { runWrk, parseWrkText } from '../lib/wrk.mjs';
//   const r = await runWrk({ url, threads: 1, connections: 64, durationS: 10, cpus: '1' });
//   r.rps, r.latency_ms.p50, r.latency_ms.p99, r.errors, r.non_2xx_3xx, r.raw

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const DONE_LUA = `-- written by bench/lib/wrk.mjs: exact figures as one JSON line
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"min":%.1f,"mean":%.1f,"max":%.1f,"stdev":%.1f,' ..
    '"p50":%.1f,"p75":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f}}\\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
`;

const TIME_UNITS = { us: 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 }; // to milliseconds
const COUNT_UNITS = { '': 1, k: 1e3, M: 1e6, G: 1e9 };
const BYTE_UNITS = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 };

function timeMs(s) {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(s);
  return m ? Number(m[1]) * TIME_UNITS[m[2]] : null;
}

function count(s) {
  const m = /^([\d.]+)([kMG]?)$/.exec(s);
  return m ? Number(m[1]) * COUNT_UNITS[m[2]] : null;
}

function bytes(s) {
  const m = /^([\d.]+)(B|KB|MB|GB|TB)$/.exec(s);
  return m ? Number(m[1]) * BYTE_UNITS[m[2]] : null;
}

/**
 * Parses wrk's text report (run with --latency). Returns
 * {rps, requests, duration_s, bytes, transfer_per_s, threads, connections,
 *  latency_ms: {avg, stdev, max, p50, p75, p90, p99}, req_per_thread: {avg, stdev, max},
 *  errors: {connect, read, write, timeout}, non_2xx_3xx}.
 * Fields absent from the text are null; throws when there is no Requests/sec line.
 */
export function parseWrkText(text) {
  const out = {
    rps: null,
    requests: null,
    duration_s: null,
    bytes: null,
    transfer_per_s: null,
    threads: null,
    connections: null,
    latency_ms: { avg: null, stdev: null, max: null, p50: null, p75: null, p90: null, p99: null },
    req_per_thread: { avg: null, stdev: null, max: null },
    errors: { connect: 0, read: 0, write: 0, timeout: 0 },
    non_2xx_3xx: 0,
  };
  let m;
  if ((m = /^Requests\/sec:\s+([\d.]+)/m.exec(text))) out.rps = Number(m[1]);
  else throw new Error(`wrk: no Requests/sec line in its output:\n${text}`);
  if ((m = /^Transfer\/sec:\s+(\S+)/m.exec(text))) out.transfer_per_s = bytes(m[1]);
  if ((m = /^\s*(\d+) threads and (\d+) connections/m.exec(text))) {
    out.threads = Number(m[1]);
    out.connections = Number(m[2]);
  }
  if ((m = /^\s*(\d+) requests in ([\d.]+\w+), (\S+) read/m.exec(text))) {
    out.requests = Number(m[1]);
    out.duration_s = timeMs(m[2]) / 1e3;
    out.bytes = bytes(m[3]);
  }
  if ((m = /^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+%/m.exec(text))) {
    out.latency_ms.avg = timeMs(m[1]);
    out.latency_ms.stdev = timeMs(m[2]);
    out.latency_ms.max = timeMs(m[3]);
  }
  if ((m = /^\s*Req\/Sec\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+%/m.exec(text))) {
    out.req_per_thread = { avg: count(m[1]), stdev: count(m[2]), max: count(m[3]) };
  }
  const dist = text.indexOf('Latency Distribution');
  if (dist >= 0) {
    // "     99%    1.50ms": only distribution rows start with a percentage.
    for (const line of text.slice(dist).split('\n')) {
      const d = /^\s+([\d.]+)%\s+(\S+)\s*$/.exec(line);
      if (d) out.latency_ms[`p${Number(d[1])}`] = timeMs(d[2]);
    }
  }
  if ((m = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text))) {
    out.errors = { connect: Number(m[1]), read: Number(m[2]), write: Number(m[3]), timeout: Number(m[4]) };
  }
  if ((m = /Non-2xx or 3xx responses: (\d+)/.exec(text))) out.non_2xx_3xx = Number(m[1]);
  return out;
}

/** Extracts the WRK_JSON line printed by the done() hook; null when absent. */
export function parseWrkJson(text) {
  const m = /^WRK_JSON (\{.*\})\s*$/m.exec(text);
  return m ? JSON.parse(m[1]) : null;
}

/**
 * Writes the done() hook script into dir and returns its path. Benchmarks
 * that pass their own script (-s) can append DONE_LUA to it instead.
 */
export function writeDoneScript(dir) {
  const p = path.join(dir, 'wrk-done.lua');
  fs.writeFileSync(p, DONE_LUA);
  return p;
}

export { DONE_LUA };

/**
 * Runs wrk once and returns the merged figures:
 *   {rps, requests, duration_s, bytes (read), client_cpu_s (wrk's CPU time), latency_ms: {avg, stdev, max, p50, p75, p90, p99, p999},
 *    errors: {connect, read, write, timeout, status}, non_2xx_3xx, source, raw}
 * Options: url, threads (1), connections (64), durationS (10), timeoutS (wrk
 * --timeout, 2), cpus (taskset CPU list for wrk, e.g. '1'; none when empty),
 * scriptDir (where to write the done() hook; required), headers ([...]),
 * nice (niceness for wrk, e.g. -10 as root; 0: unchanged),
 * onSpawn(child) (e.g. to register it for teardown).
 * Exact figures come from the hook; the text report fills in the rest, and a
 * disagreement beyond rounding throws (a parser that misreads units would
 * otherwise be silently wrong by 1000x).
 */
export async function runWrk({
  url,
  threads = 1,
  connections = 64,
  durationS = 10,
  timeoutS = 2,
  cpus = '',
  scriptDir,
  headers = [],
  onSpawn,
  nice = 0,
  wrkBin = 'wrk',
} = {}) {
  if (!scriptDir) throw new Error('runWrk: scriptDir is required');
  const script = writeDoneScript(scriptDir);
  const args = ['-t', String(threads), '-c', String(connections), '-d', `${durationS}s`, '--timeout', `${timeoutS}s`, '--latency', '-s', script];
  for (const h of headers) args.push('-H', h);
  args.push(url);
  let cmdline = cpus ? ['taskset', '-c', String(cpus), wrkBin, ...args] : [wrkBin, ...args];
  if (nice) cmdline = ['nice', '-n', String(nice), ...cmdline];
  // sh's `times` reports the CPU time wrk used (its children's times), which
  // tells whether the client core was the bottleneck.
  const wrapper = '"$@"; rc=$?; echo WRK_TIMES >&2; times >&2; exit $rc';
  const { code, stdout, stderr } = await new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', wrapper, 'sh', ...cmdline], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let so = '';
    let se = '';
    child.stdout.on('data', (d) => (so += d));
    child.stderr.on('data', (d) => (se += d));
    child.once('error', reject);
    child.once('spawn', () => onSpawn && onSpawn(child));
    child.once('close', (c, sig) => resolve({ code: c ?? sig, stdout: so, stderr: se }));
  });
  if (code !== 0) throw new Error(`wrk exited with ${code}: ${stderr.replace(/WRK_TIMES[\s\S]*$/, '').trim()}\n${stdout}`);
  const text = parseWrkText(stdout);
  const clientCpu = parseTimes(stderr);
  const exact = parseWrkJson(stdout);
  const out = {
    rps: text.rps,
    requests: text.requests,
    duration_s: text.duration_s,
    bytes: text.bytes,
    latency_ms: { ...text.latency_ms, p999: null },
    errors: { ...text.errors, status: text.non_2xx_3xx },
    non_2xx_3xx: text.non_2xx_3xx,
    client_cpu_s: clientCpu,
    source: 'text',
    raw: stdout,
  };
  if (exact) {
    const ms = (us) => us / 1e3;
    const l = exact.latency_us;
    out.requests = exact.requests;
    out.duration_s = exact.duration_us / 1e6;
    out.bytes = exact.bytes;
    out.rps = exact.requests / out.duration_s;
    out.latency_ms = {
      avg: ms(l.mean),
      stdev: ms(l.stdev),
      min: ms(l.min),
      max: ms(l.max),
      p50: ms(l.p50),
      p75: ms(l.p75),
      p90: ms(l.p90),
      p99: ms(l.p99),
      p999: ms(l.p999),
    };
    out.errors = exact.errors;
    out.source = 'lua';
    crossCheck('requests/s', text.rps, out.rps, 0.01);
    crossCheck('p50', text.latency_ms.p50, out.latency_ms.p50, 0.02);
    crossCheck('p99', text.latency_ms.p99, out.latency_ms.p99, 0.02);
  }
  return out;
}

/** wrk's user + system CPU seconds from the `times` output after WRK_TIMES; null when absent. */
function parseTimes(stderr) {
  const i = stderr.lastIndexOf('WRK_TIMES');
  if (i < 0) return null;
  const lines = stderr.slice(i).split('\n');
  const m = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s/.exec(lines[2] || ''); // line 2: children's user and system
  return m ? Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4]) : null;
}

function crossCheck(what, fromText, exact, tolerance) {
  if (fromText === null || exact === null) return;
  // wrk prints 3 significant digits: allow that rounding plus a small margin.
  const slack = Math.max(Math.abs(exact) * tolerance, 0.006);
  if (Math.abs(fromText - exact) > slack) {
    throw new Error(`wrk: ${what} from the text report (${fromText}) disagrees with the Lua hook (${exact})`);
  }
}
