// healthz.mjs: the side poller of bench/storm. GET /healthz on a fresh
// connection every --interval ms (a fresh connection, because a kept-alive one
// would stay on one worker and die with it), each with a timeout, until
// "stop" arrives on stdin or stdin closes; then one JSON line on stdout:
// {"samples": [[unix_ms, ms or null, status], ...]}. It runs in its own
// process so that the benchmark's bookkeeping cannot delay its requests.
//
//   node healthz.mjs --url http://127.0.0.1:PORT --interval 20 --timeout 2000

import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { url: { type: 'string' }, interval: { type: 'string', default: '20' }, timeout: { type: 'string', default: '2000' } } });
const url = `${values.url}/healthz`;
const interval = Number(values.interval);
const timeout = Number(values.timeout);
const samples = [];
let stopping = false;
let inflight = 0;

function once() {
  const t0 = performance.now();
  const at = Date.now();
  inflight++;
  let done = false;
  const finish = (status) => {
    if (done) return;
    done = true;
    inflight--;
    samples.push([at, status === 200 ? Math.round((performance.now() - t0) * 1000) / 1000 : null, status]);
    if (stopping && inflight === 0) report();
  };
  const req = http.get(url, { agent: false, timeout }, (res) => {
    res.resume();
    res.on('end', () => finish(res.statusCode));
    res.on('error', () => finish(0));
  });
  req.on('timeout', () => {
    req.destroy();
    finish(-1);
  });
  req.on('error', () => finish(0));
}

function report() {
  process.stdout.write(`${JSON.stringify({ samples })}\n`, () => process.exit(0));
}

const timer = setInterval(once, interval);
once();

function stop() {
  if (stopping) return;
  stopping = true;
  clearInterval(timer);
  if (inflight === 0) report();
}

process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  if (d.includes('stop')) stop();
});
process.stdin.on('end', stop);
