// Process lifecycle of meridian-region: the master replaces crashed workers,
// SIGTERM drains in-flight requests before a clean exit, and /metrics is valid
// Prometheus text.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import net from 'node:net';
import { afterEach, test } from 'node:test';

import { http, startWorld, waitFor } from '../lib/harness.mjs';
import { exchange, parseResponses } from '../lib/rawhttp.mjs';

let w;
afterEach(async () => {
  await w?.stop();
  w = null;
});

function workerPids(masterPid) {
  const r = spawnSync('ps', ['-o', 'pid=', '--ppid', String(masterPid)], { encoding: 'utf8' });
  return r.stdout.split('\n').map((s) => s.trim()).filter(Boolean).map(Number).sort();
}

async function openConnections(api) {
  const m = await http('GET', `${api}/metrics`);
  const line = m.text.split('\n').find((l) => l.startsWith('meridian_http_connections '));
  return Number(line.split(' ')[1]);
}

test('a worker killed with SIGKILL is replaced by the master', async () => {
  w = await startWorld({ workers: 2 });
  const before = await waitFor(() => workerPids(w.region.pid).length === 2 && workerPids(w.region.pid));
  process.kill(before[0], 'SIGKILL');
  const afterPids = await waitFor(
    () => {
      const p = workerPids(w.region.pid);
      return p.length === 2 && !p.includes(before[0]) && p;
    },
    { timeoutMs: 10000, message: 'a replacement worker' },
  );
  assert.ok(afterPids.includes(before[1]), 'the other worker was left alone');
  // The replacement serves: every connection gets an answer, whichever worker takes it.
  await waitFor(async () => (await http('GET', `${w.region.api}/readyz`)).status === 200);
  for (let i = 0; i < 20; i++) assert.equal((await http('GET', `${w.api}/healthz`)).status, 200);
  assert.match(w.region.logs(), /event=prefork\.worker_died index=\d pid=\d+ signal=9/);
});

test('SIGTERM drains in-flight requests, refuses new ones, and exits 0', async () => {
  w = await startWorld({ workers: 2, config: { debug: { endpoints: true }, shutdown: { drain_timeout_ms: 10000 } } });
  // Several slow requests in flight on both workers, and one idle keep-alive connection.
  const slow = Array.from({ length: 6 }, () =>
    exchange(w.port, ['GET /debug/sleep?ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n'], { timeoutMs: 8000 }),
  );
  const idle = exchange(w.port, ['GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n'], { timeoutMs: 8000 });
  await waitFor(async () => (await openConnections(w.api)) >= 8, { message: 'requests in flight' });

  const t0 = Date.now();
  process.kill(w.region.pid, 'SIGTERM');
  // New connections are refused once the workers stop listening.
  await waitFor(
    () =>
      new Promise((resolve) => {
        const s = net.connect({ port: w.port, host: '127.0.0.1' });
        s.on('connect', () => (s.destroy(), resolve(false)));
        s.on('error', (e) => resolve(e.code === 'ECONNREFUSED'));
      }),
    { timeoutMs: 5000, message: 'connections refused while draining' },
  );
  const idleRes = await idle;
  assert.ok(idleRes.closed, 'the idle keep-alive connection is closed at drain start');
  assert.ok(idleRes.closedAfterMs < 1500, 'without waiting for the slow requests');

  for (const p of slow) {
    const r = await p;
    const res = parseResponses(r.data);
    assert.equal(res.length, 1, 'every in-flight request got its answer');
    assert.equal(res[0].status, 200);
    assert.equal(res[0].body, '{"slept":true}');
    assert.equal(res[0].headers.connection, 'close');
    assert.ok(r.closed);
  }
  const info = await w.region.waitExit();
  assert.equal(info.code, 0, `exit code ${JSON.stringify(info)}`);
  assert.ok(Date.now() - t0 >= 1000, 'the master waited for the drain');
  assert.match(w.region.logs(), /event=prefork\.stopped exit=0/);
});

test('/metrics is valid Prometheus text (promtool check metrics)', async () => {
  w = await startWorld({ workers: 2 });
  for (let i = 0; i < 10; i++) await http('GET', `${w.api}/healthz`);
  await http('GET', `${w.api}/nope`);
  const m = await http('GET', `${w.api}/metrics`);
  assert.equal(m.status, 200);
  assert.match(m.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  const r = spawnSync('promtool', ['check', 'metrics'], { input: m.text, encoding: 'utf8' });
  assert.equal(r.status, 0, `promtool: ${r.stdout}${r.stderr}`);
  // Counters are summed over workers: 10 healthz answers at least, whichever worker served them.
  const line = m.text.split('\n').find((l) => l.startsWith('meridian_http_requests_total{code="2xx"}'));
  assert.ok(Number(line.split(' ')[1]) >= 10, line);
  assert.match(m.text, /meridian_http_requests_total\{code="4xx"\} [1-9]/);
  // Closed connections are released: only the scrape itself stays open.
  await waitFor(async () => (await openConnections(w.api)) === 1, { message: 'connections released' });
});
