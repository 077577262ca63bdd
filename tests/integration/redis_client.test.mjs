// core/redis against a real redis-server, through driver_redis_client
// (tests/integration/drivers/redis_client.c): commands, binary-safe arguments,
// pipelining, a flush that orders a command ahead of other connections,
// command timeouts with late replies, a server that stops and comes back, a
// frozen server found by the idle PING, and free with commands pending.
// Every driver must exit cleanly (sanitizer builds fail it otherwise).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { after, before, test } from 'node:test';

import { binary, makeTmp, startRedis, track, waitFor } from '../lib/harness.mjs';

/** A driver process speaking the line protocol: call('cmd GET k') -> parsed JSON answer. */
class Driver {
  constructor(args) {
    this.child = track(spawn(binary('driver_redis_client'), args, { stdio: ['pipe', 'pipe', 'pipe'] }));
    this.nextId = 1;
    this.waiting = new Map();
    this.stderr = '';
    this.child.stderr.on('data', (d) => (this.stderr += d));
    readline.createInterface({ input: this.child.stdout }).on('line', (l) => {
      const msg = JSON.parse(l);
      const w = this.waiting.get(msg.id);
      if (w) {
        this.waiting.delete(msg.id);
        w.resolve(msg);
      }
    });
    this.exited = new Promise((resolve) =>
      this.child.once('exit', (code, signal) => {
        for (const w of this.waiting.values()) w.reject(new Error(`driver exited (${code}/${signal}):\n${this.stderr}`));
        this.waiting.clear();
        resolve({ code, signal });
      }),
    );
  }

  call(line, timeoutMs = 15000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`no answer to "${line}" within ${timeoutMs} ms\n${this.stderr}`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (m) => (clearTimeout(timer), resolve(m)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.child.stdin.write(`${id} ${line}\n`);
    });
  }

  /** Sends a command with arbitrary (binary) arguments. */
  cmdx(...args) {
    return this.call(`cmdx ${args.map((a) => Buffer.from(a).toString('hex')).join(' ')}`);
  }

  async close() {
    this.child.stdin.end();
    const { code, signal } = await this.exited;
    assert.equal(signal, null, `driver killed by ${signal}:\n${this.stderr}`);
    assert.equal(code, 0, `driver exit code ${code}:\n${this.stderr}`);
    return this.stderr;
  }
}

// Keeps the server busy for ~1 s without DEBUG (disabled by default since Redis 7).
const BUSY_1S =
  'local t0 = redis.call("TIME") repeat local t = redis.call("TIME") ' +
  'until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) >= 1000000 return 1';

let tmp;
let redis;

before(async () => {
  tmp = makeTmp('meridian-redis-client-');
  redis = await startRedis({ tmp });
});

after(async () => {
  if (redis) {
    redis.kill('SIGCONT'); // in case a test failed while the server was frozen
    await redis.stop();
  }
});

test('set/get, binary-safe arguments, error replies', async () => {
  const d = new Driver(['--port', String(redis.port), '--name', 'basic']);
  try {
    assert.equal((await d.call('waitready 1 5000')).ready, true);
    assert.equal((await d.call('cmd SET k1 hello')).reply, 'OK');
    const got = await d.call('cmd GET k1');
    assert.equal(got.err, null);
    assert.equal(got.reply, 'hello');
    assert.equal((await d.call('cmd GET missing')).reply, null);

    // Binary-safe: NUL, CR/LF and high bytes in both key and value.
    const key = Buffer.from([0x6b, 0x00, 0x0d, 0x0a]);
    const val = Buffer.from([0x00, 0xff, 0x0d, 0x0a, 0x20, 0x24, 0x2a]);
    assert.equal((await d.cmdx('SET', key, val)).reply, 'OK');
    const bin = await d.cmdx('GET', key);
    assert.equal(bin.reply.hex, val.toString('hex'));
    assert.equal((await d.cmdx('STRLEN', key)).reply, val.length);

    // A Redis error is a reply, not an err.
    const e = await d.call('cmd INCR k1');
    assert.equal(e.err, null);
    assert.match(e.reply.error, /not an integer/);

    const m = await d.call('metrics');
    assert.equal(m.connected, 1);
    assert.ok(m.commands >= 6, JSON.stringify(m));
    assert.equal(m.errors, 1);
  } finally {
    await d.close();
  }
});

test('1,000 pipelined commands answer in order', async () => {
  const d = new Driver(['--port', String(redis.port), '--name', 'pipe']);
  try {
    assert.equal((await d.call('waitready 1 5000')).ready, true);
    const r = await d.call('pipeline 1000'); // 1,000 SETs then 1,000 GETs, all sent in one go
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.n, 1000);
    assert.equal((await d.call('pending')).pending, 0);
  } finally {
    await d.close();
  }
});

test('a flushed command is at the server before anything sent after it on another connection', async () => {
  const d = new Driver(['--port', String(redis.port), '--name', 'order']);
  try {
    assert.equal((await d.call('waitready 1 5000')).ready, true);
    // Without the flush the INCR waits for the loop's next turn, so the
    // other connection's GET, sent before that turn, cannot see it.
    assert.equal((await d.call('order ord:a 0')).seen, null);
    for (let i = 0; i < 20; i++) assert.equal((await d.call(`order ord:b${i} 1`)).seen, '1');
    // The unflushed INCR still ran, once, on the loop's next turn.
    assert.equal((await d.call('cmd GET ord:a')).reply, '1');
  } finally {
    await d.close();
  }
});

test('a command timeout answers ETIMEDOUT once and drops the late reply', async () => {
  const d = new Driver(['--port', String(redis.port), '--command-timeout', '100', '--name', 'timeout']);
  try {
    assert.equal((await d.call('waitready 1 5000')).ready, true);
    const busy = await d.cmdx('EVAL', BUSY_1S, '0');
    assert.equal(busy.err, 'ETIMEDOUT');
    assert.ok(busy.ms >= 90 && busy.ms < 800, `timed out after ${busy.ms} ms`);
    // The connection stays; once the server is free again commands work. The
    // late EVAL reply arrives in between and must not reach anyone (a second
    // callback aborts the driver; a use-after-free trips the sanitizer build).
    await waitFor(async () => (await d.call('cmd PING')).reply === 'PONG', {
      timeoutMs: 5000,
      message: 'PING after the busy script',
    });
    assert.equal((await d.call('pending')).pending, 0);
    assert.equal((await d.call('ready')).ready, true);
    const m = await d.call('metrics');
    assert.ok(m.timeouts >= 1, JSON.stringify(m));
  } finally {
    await d.close();
  }
});

test('server stopped: pending commands fail once, ready turns false, then true again', async () => {
  const d = new Driver(['--port', String(redis.port), '--command-timeout', '5000', '--name', 'restart']);
  try {
    assert.equal((await d.call('waitready 1 5000')).ready, true);
    assert.equal((await d.call('cmd SET before stop')).reply, 'OK');
    // A command that stays pending until the connection goes away.
    const blocked = d.call('cmd BLPOP never:list 0');
    await waitFor(async () => (await d.call('pending')).pending === 1, { message: 'BLPOP pending' });

    await redis.stop();
    const b = await blocked;
    assert.equal(b.err, 'ECONNRESET');
    const down = await d.call('waitready 0 5000');
    assert.equal(down.ready, false);
    const refused = await d.call('cmd GET before');
    assert.equal(refused.err, 'ENOTCONN');
    assert.equal(refused.submit, true);
    assert.equal((await d.call('metrics')).connected, 0);

    await redis.start();
    // Backoff is capped at 5 s (full jitter), plus the handshake.
    const up = await d.call('waitready 1 10000');
    assert.equal(up.ready, true);
    assert.equal((await d.call('cmd SET after restart')).reply, 'OK');
    assert.equal((await d.call('cmd GET after')).reply, 'restart');
    assert.equal((await d.call('metrics')).connected, 1);
  } finally {
    await d.close();
  }
});

test('a frozen server is found by the idle PING and the client reconnects when it thaws', async () => {
  const d = new Driver([
    '--port', String(redis.port),
    '--command-timeout', '200',
    '--connect-timeout', '500',
    '--ping-interval', '200',
    '--dead-timeout', '600',
    '--name', 'frozen',
  ]);
  try {
    assert.equal((await d.call('waitready 1 5000')).ready, true);
    redis.kill('SIGSTOP');
    try {
      // No command of ours is outstanding: only the idle PING can notice.
      const down = await d.call('waitready 0 5000');
      assert.equal(down.ready, false);
      assert.ok(down.ms < 3000, `noticed after ${down.ms} ms`);
    } finally {
      redis.kill('SIGCONT');
    }
    assert.equal((await d.call('waitready 1 10000')).ready, true);
    assert.equal((await d.call('cmd PING')).reply, 'PONG');
  } finally {
    await d.close();
  }
});

test('free answers pending commands with ECANCELED exactly once', async () => {
  const d = new Driver(['--port', String(redis.port), '--command-timeout', '5000', '--name', 'free']);
  try {
    assert.equal((await d.call('waitready 1 5000')).ready, true);
    const blocked = d.call('cmd BLPOP never:list2 0');
    await waitFor(async () => (await d.call('pending')).pending === 1, { message: 'BLPOP pending' });
    const freed = d.call('free');
    assert.equal((await blocked).err, 'ECANCELED');
    assert.equal((await freed).freed, true);
    assert.equal((await d.call('ready')).ready, false);
  } finally {
    await d.close();
  }
});
