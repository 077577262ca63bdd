// core/pg against a real PostgreSQL server, through driver_pg_client
// (tests/integration/drivers/pg_client.c): parameters (text, binary, NULL),
// prepared statements, 1,000 pipelined queries, a batch with a failing
// statement, a query timeout, cancellation and the queue bound, close with work
// pending, and a server stopped and started again under a live pool. The
// driver checks the details and exits non-zero on the first failed check;
// sanitizer builds also fail it on leaks or handles left open.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { after, before, test } from 'node:test';

import { SANITIZE, binary, makeTmp, removeTmp, startPostgres, track } from '../lib/harness.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let tmp;
let pg;

before(async () => {
  tmp = makeTmp('meridian-pg-client-');
  pg = await startPostgres({ tmp });
});

after(async () => {
  await pg?.stop();
  if (tmp) removeTmp(tmp);
});

/** Starts the driver; lines() yields its stdout lines parsed as JSON. */
function driver(scenario) {
  const child = track(spawn(binary('driver_pg_client'), [scenario, pg.conninfo], { stdio: ['pipe', 'pipe', 'pipe'] }));
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const queue = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    const msg = JSON.parse(l);
    const w = waiters.shift();
    if (w) w.resolve(msg);
    else queue.push(msg);
  });
  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      for (const w of waiters.splice(0)) w.reject(new Error(`driver exited (${code}/${signal}) early:\n${stderr}`));
      resolve({ code, signal });
    }),
  );
  return {
    child,
    stderr: () => stderr,
    next(timeoutMs = 30000) {
      if (queue.length) return Promise.resolve(queue.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line from the driver within ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
        waiters.push({
          resolve: (m) => (clearTimeout(timer), resolve(m)),
          reject: (e) => (clearTimeout(timer), reject(e)),
        });
      });
    },
    send(line) {
      child.stdin.write(`${line}\n`);
    },
    async finish() {
      const { code, signal } = await exited;
      assert.equal(signal, null, `driver killed by ${signal}:\n${stderr}`);
      assert.equal(code, 0, `driver exit code ${code}:\n${stderr}`);
      return stderr;
    },
  };
}

/** Runs a scenario to its end and returns its result line. */
async function run(scenario) {
  const d = driver(scenario);
  d.child.stdin.end();
  const stderr = await d.finish();
  const msg = await d.next(1000);
  assert.equal(msg.scenario, scenario);
  assert.equal(msg.ok, true, stderr);
  return { msg, stderr };
}

test('a query with text, binary and NULL parameters, prepared statements and errors', async () => {
  const { msg, stderr } = await run('basic');
  assert.equal(msg.prepared_ok, 6);
  assert.equal(msg.sqlstate, '22012');
  assert.equal(msg.metrics, true);
  assert.doesNotMatch(stderr, /quoted/, 'parameters are never logged');
});

test('LISTEN: every connection listens and notifications reach the pool', async () => {
  const { msg } = await run('listen');
  assert.ok(msg.notifications >= 2);
});

test('1,000 concurrent queries are pipelined and all answered', async () => {
  const { msg } = await run('pipeline');
  assert.equal(msg.ok_count, 1000);
  assert.equal(msg.pending_at_submit, 1000, 'all were accepted at once');
});

test('a batch with one failing statement aborts its group; the next batch commits', async () => {
  const { msg } = await run('batch');
  assert.equal(msg.failed_batch, 'EABORTED,ESQL,EABORTED');
  assert.equal(msg.rows, 5);
});

test('a query over its deadline fails with ETIMEDOUT and the pool recovers', async () => {
  const { msg, stderr } = await run('timeout');
  assert.ok(msg.timeout_ms >= 150 && msg.timeout_ms < 1500, `timed out after ${msg.timeout_ms} ms`);
  assert.ok(msg.recovered_ms < 5000, `next query took ${msg.recovered_ms} ms`);
  assert.match(stderr, /event=pg\.query\.timeout pool=drv/);
  assert.equal(msg.behind, 'ECONNRESET', 'the query pipelined behind it is failed with its connection');
});

test('cancelled queries never call back; the queue is bounded; close fails pending work', async () => {
  const { msg } = await run('cancel');
  assert.equal(msg.busy, 'EBUSY');
  assert.equal(msg.close, 'ECANCELED');
});

test('a server stopped mid-run: errors, readiness false, then back when it returns', async () => {
  const d = driver('outage');
  try {
    const up = await d.next(20000);
    assert.equal(up.phase, 'up');
    d.send('stopping');
    const stopping = pg.stop();
    const down = await d.next(20000);
    await stopping;
    assert.equal(down.phase, 'down');
    assert.ok(down.ms < 2000, `readiness turned false after ${down.ms} ms`);
    assert.notEqual(down.inflight_err, 'ok');
    assert.notEqual(down.query_err, 'ok');

    // Stay down long enough for several reconnect attempts (the outage itself, not a readiness wait).
    await sleep(1500);
    await pg.start();
    d.send('started');
    const rec = await d.next(30000);
    assert.equal(rec.phase, 'recovered');
    assert.ok(rec.ms < 8000, `readiness came back after ${rec.ms} ms`);
    const done = await d.next(30000);
    assert.equal(done.phase, 'done');
    assert.equal(done.ok_after, 100);
    console.log(`# outage: readiness false after ${down.ms} ms (in flight: ${down.inflight_err}, new: ${down.query_err}); back ${rec.ms} ms after restart`);
    d.child.stdin.end();
    const stderr = await d.finish();
    // Transitions are logged once, not once per reconnect attempt.
    const downs = stderr.match(/event=pg\.pool\.down /g) || [];
    assert.ok(downs.length <= 1, `pool.down logged ${downs.length} times`);
    const warns = stderr.match(/event=pg\.connect\.failed /g) || [];
    assert.ok(warns.length <= 1, `connect failures logged ${warns.length} times at warn:\n${stderr}`);
  } finally {
    d.child.kill('SIGKILL');
    if (!pg.running()) await pg.start().catch(() => {});
  }
});

test('a frozen server (SIGSTOP) is found by the health query; the pool recovers after SIGCONT', async () => {
  const d = driver('outage');
  let frozen = false;
  // Backends run in their own sessions: signal the postmaster and each child.
  const postmaster = Number(fs.readFileSync(path.join(pg.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const signal = (sig) => {
    process.kill(postmaster, sig);
    spawnSync('pkill', [`-${sig.slice(3)}`, '-P', String(postmaster)]);
  };
  try {
    assert.equal((await d.next(20000)).phase, 'up');
    d.send('stopping');
    signal('SIGSTOP');
    frozen = true;
    // No socket closes: only the idle health query (2 s idle, 2 s deadline) and
    // the in-flight query's deadline (3 s) can notice.
    const down = await d.next(20000);
    assert.equal(down.phase, 'down');
    assert.ok(down.ms < 6000, `readiness turned false after ${down.ms} ms`);
    assert.notEqual(down.inflight_err, 'ok');
    assert.notEqual(down.query_err, 'ok');
    signal('SIGCONT');
    frozen = false;
    d.send('started');
    const rec = await d.next(30000);
    assert.equal(rec.phase, 'recovered');
    assert.ok(rec.ms < 10000, `readiness came back after ${rec.ms} ms`);
    assert.equal((await d.next(30000)).ok_after, 100);
    d.child.stdin.end();
    const stderr = await d.finish();
    assert.match(stderr, /event=pg\.conn\.(unresponsive|lost)/);
    console.log(`# frozen: readiness false after ${down.ms} ms (in flight: ${down.inflight_err}, new: ${down.query_err}); back ${rec.ms} ms after SIGCONT`);
  } finally {
    if (frozen) signal('SIGCONT');
    d.child.kill('SIGKILL');
  }
});

test('throughput of a 10,000-row insert batch (informational)', async () => {
  const { msg } = await run('throughput');
  assert.equal(msg.rows, 10000);
  console.log(`# pg batch insert: ${msg.rows} rows in ${msg.ms} ms (${msg.rows_per_s} rows/s)${SANITIZE ? ' [sanitizer build]' : ''}`);
});
