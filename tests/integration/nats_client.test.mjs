// core/nats against a real nats-server with JetStream, through
// driver_nats_client (tests/integration/drivers/nats_client.c): pub/sub on the
// loop, request/reply (and no responders), a stream created through
// core_nats_js_run and 10,000 JetStream publishes deduplicated by Nats-Msg-Id,
// a server that stops (readiness drops, publishes fail fast, reconnects wait
// jittered exponential delays) and comes back on the same port, a first
// connect made before the server exists, and free with work pending. Every
// driver must exit 0 (sanitizer builds report leaks and errors that way).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { after, test } from 'node:test';

import { binary, makeTmp, removeTmp, startNats, track, waitFor } from '../lib/harness.mjs';

const BASE_MS = 100; // core_nats defaults the driver keeps
const CAP_MS = 5000;

const drivers = [];

/** A driver speaking the line protocol: one command at a time, one JSON answer each. */
class Driver {
  constructor(url, args = []) {
    drivers.push(this);
    this.child = track(spawn(binary('driver_nats_client'), ['--url', url, '--name', 'itest', ...args], { stdio: ['pipe', 'pipe', 'pipe'] }));
    this.stderr = '';
    this.events = [];
    this.waiting = [];
    this.child.stderr.on('data', (d) => (this.stderr += d));
    readline.createInterface({ input: this.child.stdout }).on('line', (l) => {
      const msg = JSON.parse(l);
      if (msg.event) this.events.push(msg);
      else if (this.waiting.length) this.waiting.shift().resolve(msg);
    });
    this.exited = new Promise((resolve) =>
      this.child.once('exit', (code, signal) => {
        for (const w of this.waiting.splice(0)) w.reject(new Error(`driver exited (${code}/${signal}):\n${this.stderr}`));
        resolve({ code, signal });
      }),
    );
  }

  call(line, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer to "${line}" within ${timeoutMs} ms\n${this.stderr.slice(-4000)}`)), timeoutMs);
      this.waiting.push({
        resolve: (m) => (clearTimeout(timer), resolve(m)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.child.stdin.write(`${line}\n`);
    });
  }

  /** Parsed nats.reconnect_wait log lines: [{attempt, delay}]. */
  reconnectWaits() {
    return [...this.stderr.matchAll(/event=nats\.reconnect_wait .*attempt=(\d+) delay_ms=(\d+)/g)].map((m) => ({
      attempt: Number(m[1]),
      delay: Number(m[2]),
    }));
  }

  async metric(name, labels) {
    const { text } = await this.call('metrics');
    const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
    return line === undefined ? undefined : Number(line.split(' ').pop());
  }

  async quit(cmd = 'quit') {
    const bye = await this.call(cmd);
    const { code, signal } = await this.exited;
    assert.equal(signal, null, `driver killed by ${signal}:\n${this.stderr}`);
    assert.equal(code, 0, `driver exit ${code}:\n${this.stderr}`);
    assert.doesNotMatch(this.stderr, /AddressSanitizer|runtime error|LeakSanitizer/);
    return bye;
  }
}

const tmps = [];
const servers = [];
after(async () => {
  // A test that failed before its quit leaves its driver running: without
  // this, its pipes keep the test process alive until ctest's timeout.
  for (const d of drivers) if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill('SIGKILL');
  for (const s of servers) await s.stop();
  tmps.forEach(removeTmp);
});

/** A nats-server with JetStream in its own temp dir; stopped after the tests. */
async function nats() {
  const t = makeTmp('meridian-nats-');
  tmps.push(t);
  const n = await startNats({ tmp: t, domain: 'us-east' });
  servers.push(n);
  return n;
}

/** Each wait is drawn from [0, min(cap, base * 2^(attempt-1))], and they are not all the same. */
function assertJitteredBackoff(waits) {
  assert.ok(waits.length >= 3, `expected several reconnect waits, got ${JSON.stringify(waits)}`);
  for (const { attempt, delay } of waits) {
    const ceiling = Math.min(CAP_MS, BASE_MS * 2 ** (attempt - 1));
    assert.ok(delay >= 0 && delay <= ceiling, `attempt ${attempt}: delay ${delay} ms above ${ceiling} ms`);
  }
  assert.ok(new Set(waits.map((w) => w.delay)).size > 1, `delays are not jittered: ${JSON.stringify(waits)}`);
}

test('pub/sub, request/reply and deduplicated JetStream publishes', async () => {
  const server = await nats();
  const d = new Driver(server.url);
  assert.equal((await d.call('wait_ready 1 10000')).ok, true);

  const ps = await d.call('pubsub t.round 2000 200');
  assert.equal(ps.err, 'OK');
  assert.equal(ps.received, 2000);
  assert.equal(ps.in_order, true);
  // A core publish only appends to cnats's buffer: nowhere near a loop stall.
  assert.ok(ps.max_publish_us < 250000, `a publish took ${ps.max_publish_us} us`);

  // Unsubscribe with thousands still queued for the loop: none is delivered after it.
  const cut = await d.call('pubsub t.cut 20000 100 50');
  assert.equal(cut.received, 50);
  assert.equal((await d.call('pubsub t.round2 10 10')).received, 10);
  assert.equal((await d.call('state')).late, 0);

  assert.deepEqual(await d.call('request svc.echo hello 2000'), { reply: 'request', err: 'OK', data: 'echo:hello' });
  assert.equal((await d.call('request nobody.home x 2000')).err, 'EHOSTUNREACH');
  assert.equal((await d.call('request svc.sink x 300')).err, 'ETIMEDOUT');

  const st = await d.call('js_stream EV_TEST ev.us-east.>');
  assert.equal(st.status, 'OK', JSON.stringify(st));
  const first = await d.call('js_pub ev.us-east.eu-west.w1.msg 10000 evt');
  assert.equal(first.acked, 10000, JSON.stringify(first));
  assert.equal(first.failed, 0);
  assert.equal(first.dups, 0);
  assert.equal(first.inflight, 0);
  assert.ok(first.busy > 0, 'the in-flight bound was never reached: it is not being exercised');
  assert.equal((await d.call('js_count EV_TEST')).msgs, 10000);

  // The same ids again: every one is a duplicate and the stream does not grow.
  const again = await d.call('js_pub ev.us-east.eu-west.w1.msg 10000 evt');
  assert.equal(again.acked, 10000, JSON.stringify(again));
  assert.equal(again.dups, 10000);
  assert.equal((await d.call('js_count EV_TEST')).msgs, 10000);

  // Flushed after every pump (most flushes fold into the one already out):
  // the same outcome, nothing lost or sent twice.
  const flushed = await d.call('js_pub ev.us-east.eu-west.w1.flushed 5000 fl flush');
  assert.equal(flushed.acked, 5000, JSON.stringify(flushed));
  assert.equal(flushed.dups, 0);
  assert.equal(flushed.failed, 0);
  assert.equal((await d.call('js_count EV_TEST')).msgs, 15000);

  // A subject no stream captures: JetStream answers "no responders".
  const lost = await d.call('js_pub nostream.x 3 lost');
  assert.equal(lost.failed, 3, JSON.stringify(lost));
  assert.equal(lost.err, 'EHOSTUNREACH');

  assert.equal(await d.metric('meridian_nats_connected', 'client="itest"'), 1);
  assert.equal(await d.metric('meridian_nats_js_acks_total', 'result="ok"'), 25000);
  assert.equal(await d.metric('meridian_nats_js_acks_total', 'result="failed"'), 3);
  assert.ok((await d.metric('meridian_nats_received_total', 'client="itest"')) >= 2000);
  assert.ok((await d.metric('meridian_nats_published_total', 'client="itest"')) >= 27000);
  // Never a payload in the logs.
  assert.doesNotMatch(d.stderr, /hello|xxxxxxxx|"i":/);
  await d.quit();
});

test('server stops and restarts on the same port: readiness follows, retries back off with jitter', async () => {
  const server = await nats();
  const d = new Driver(server.url);
  assert.equal((await d.call('wait_ready 1 10000')).ok, true);
  assert.equal((await d.call('pubsub t.before 100 50')).received, 100);

  await server.stop();
  assert.equal((await d.call('wait_ready 0 10000')).ok, true);
  // Down: a publish is refused at once rather than waiting on cnats's reconnect thread.
  const pub = await d.call('pub_once t.down');
  assert.equal(pub.err, 'ENOTCONN');
  assert.ok(pub.us < 50000, `refusing a publish took ${pub.us} us`);
  assert.equal((await d.call('request svc.echo x 1000')).err, 'ENOTCONN');

  await waitFor(() => d.reconnectWaits().length >= 5, { timeoutMs: 20000, message: 'reconnect attempts' });
  assertJitteredBackoff(d.reconnectWaits());

  await server.start();
  const back = await d.call('wait_ready 1 20000');
  assert.equal(back.ok, true, d.stderr.slice(-3000));
  // Subscriptions (ours and the inbox) were resent: pub/sub and requests work again.
  const ps = await d.call('pubsub t.after 500 50');
  assert.equal(ps.received, 500);
  assert.equal(ps.in_order, true);
  assert.deepEqual(await d.call('request svc.echo again 2000'), { reply: 'request', err: 'OK', data: 'echo:again' });
  const states = d.events.filter((e) => e.event === 'state');
  assert.ok(states.some((e) => e.ready === false) && states.at(-1).ready === true);
  assert.ok((await d.metric('meridian_nats_reconnects_total', 'client="itest"')) >= 1);
  await d.quit();
});

test('JetStream publishes in flight when the server dies fail by timeout; the bound frees up', async () => {
  const server = await nats();
  const d = new Driver(server.url, ['--ack-timeout-ms', '1000']);
  assert.equal((await d.call('wait_ready 1 10000')).ok, true);
  assert.equal((await d.call('js_stream EV_OUT out.>')).status, 'OK');
  // More than can finish before the stop below: some are in flight when it dies.
  const pending = d.call('js_pub out.x 2000000 o', 60000);
  await waitFor(() => d.events.some((e) => e.event === 'js_progress'), { message: 'JetStream publishes under way' });
  await server.stop();
  const res = await pending;
  assert.equal(res.inflight, 0, JSON.stringify(res));
  assert.ok(res.acked > 0 && res.failed > 0, JSON.stringify(res));
  assert.equal(res.acked + res.failed, 2000000);
  // Acks that never came, refusals while down, or the server's own errors as it went.
  assert.match(res.err, /^(ETIMEDOUT|ENOTCONN|EHOSTUNREACH|EIO)$/);
  assert.ok((await d.metric('meridian_nats_js_acks_total', 'result="failed"')) > 0);

  await server.start();
  assert.equal((await d.call('wait_ready 1 20000')).ok, true);
  // At least once: the stream may hold more than was acked; re-publishing the
  // acked ids adds nothing.
  const count = (await d.call('js_count EV_OUT')).msgs;
  assert.ok(count >= res.acked, `${count} < ${res.acked}`);
  const again = await d.call(`js_pub out.x ${res.acked} o`);
  assert.equal(again.dups, res.acked, JSON.stringify(again));
  assert.equal((await d.call('js_count EV_OUT')).msgs, count);
  await d.quit();
});

test('first connect made before the server exists succeeds once it comes', async () => {
  const server = await nats();
  await server.stop(); // keeps its port and configuration for the start below

  const d = new Driver(server.url);
  assert.equal((await d.call('state')).ready, false);
  await waitFor(() => d.reconnectWaits().length >= 4, { timeoutMs: 20000, message: 'first-connect retries' });
  assertJitteredBackoff(d.reconnectWaits());
  assert.match(d.stderr, /event=nats\.connect_pending/);
  assert.equal((await d.call('pub_once t.early')).err, 'ENOTCONN');

  await server.start();
  assert.equal((await d.call('wait_ready 1 20000')).ok, true, d.stderr.slice(-3000));
  assert.equal((await d.call('pubsub t.late 200 50')).received, 200);
  assert.deepEqual(await d.call('request svc.echo late 2000'), { reply: 'request', err: 'OK', data: 'echo:late' });
  assert.equal((await d.call('js_stream EV_LATE late.>')).status, 'OK');
  const js = await d.call('js_pub late.x 100 l');
  assert.equal(js.acked, 100, JSON.stringify(js));
  await d.quit();
});

test('free with publishes, a request and a JetStream job pending: every callback runs once', async () => {
  const server = await nats();
  const d = new Driver(server.url);
  assert.equal((await d.call('wait_ready 1 10000')).ok, true);
  assert.equal((await d.call('js_stream EV_Q q.>')).status, 'OK');
  const bye = await d.quit('pending_quit q.x 800');
  assert.ok(bye.js_accepted > 0);
  assert.equal(bye.js_acked + bye.js_failed + bye.js_cancelled, bye.js_accepted, JSON.stringify(bye));
  assert.equal(bye.req_cancelled, 1, JSON.stringify(bye));
  assert.equal(bye.req_other, 0);
  assert.equal(bye.js_run_done, 1);
});
