// The workspace stream (GET /v1/workspaces/{id}/stream): a WebSocket driven
// by Node's `ws` package that sees every change in order, never a private
// channel it is not in, and resumes from its cursor without loss or repeat.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { http, startRegion, startWorld, waitFor } from '../lib/harness.mjs';

const MAX_REPLAY = 1000;
let w;
before(async () => {
  w = await startWorld({
    workers: 2,
    config: { limits: { write_rate_per_s: 100000, write_burst: 100000 }, websocket: { max_replay_events: MAX_REPLAY, max_queued_bytes: 65536 } },
  });
});
after(async () => {
  await w?.stop();
});

const call = (method, path, body, token) => http(method, `${w.api}${path}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
async function user() {
  const r = await call('POST', '/v1/auth/signup', { email: `s${++n}.${process.pid}@example.com`, password: 'stream password', display_name: `S${n}` });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token };
}
async function workspace(owner) {
  const r = await call('POST', '/v1/workspaces', { name: 'Stream', slug: `stream-${process.pid}-${++n}` }, owner.token);
  assert.equal(r.status, 201, r.text);
  const ch = await call('GET', `/v1/workspaces/${r.json.workspace.id}/channels`, undefined, owner.token);
  return { id: r.json.workspace.id, general: ch.json.channels.find((c) => c.name === 'general').id };
}
const postMsg = (space, channel, text, token) => call('POST', `/v1/workspaces/${space.id}/channels/${channel}/messages`, { text }, token);

/** Opens a stream; returns {ws, frames, next(pred), close()}. */
function stream(space, token, { cursor, via = 'protocol' } = {}) {
  let url = `${w.api.replace('http', 'ws')}/v1/workspaces/${space.id}/stream`;
  const q = [];
  if (cursor !== undefined) q.push(`cursor=${cursor}`);
  if (via === 'query') q.push(`access_token=${encodeURIComponent(token)}`);
  if (q.length) url += `?${q.join('&')}`;
  const protocols = via === 'protocol' ? ['meridian.v1', `bearer.${token}`] : ['meridian.v1'];
  const ws = new WebSocket(url, protocols);
  const frames = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('unexpected-response', (req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
    ws.once('error', reject);
  });
  return {
    ws,
    frames,
    opened,
    events: () => frames.filter((f) => f.type === 'event').map((f) => f.event),
    close: () => new Promise((r) => (ws.readyState === WebSocket.CLOSED ? r() : (ws.once('close', r), ws.close()))),
  };
}

test('a member sees every event in order, starting with hello; the token is never echoed', async () => {
  const owner = await user();
  const space = await workspace(owner);
  const s = stream(space, owner.token);
  await s.opened;
  assert.equal(s.ws.protocol, 'meridian.v1');
  await waitFor(() => s.frames.length >= 1);
  assert.equal(s.frames[0].type, 'hello');
  const head = s.frames[0].seq;
  for (let i = 0; i < 5; i++) assert.equal((await postMsg(space, space.general, `m${i}`, owner.token)).status, 201);
  await waitFor(() => s.events().length >= 5, { message: 'five events' });
  const ev = s.events();
  assert.deepEqual(ev.map((e) => e.seq), [head + 1, head + 2, head + 3, head + 4, head + 5]);
  assert.deepEqual(ev.map((e) => e.payload.text), ['m0', 'm1', 'm2', 'm3', 'm4']);
  assert.ok(ev.every((e) => e.type === 'message.created' && e.workspace_id === space.id && e.region === 'us-east'));
  await s.close();
});

test('private-channel events never reach non-members; public ones do', async () => {
  const owner = await user();
  const other = await user();
  const space = await workspace(owner);
  assert.equal((await call('POST', `/v1/workspaces/${space.id}/members`, { user_id: other.id }, owner.token)).status, 201);
  assert.equal((await call('POST', `/v1/workspaces/${space.id}/join`, {}, other.token)).status, 200);
  const priv = await call('POST', `/v1/workspaces/${space.id}/channels`, { name: 'secret', private: true }, owner.token);
  assert.equal(priv.status, 201, priv.text);
  const sOwner = stream(space, owner.token);
  const sOther = stream(space, other.token);
  await Promise.all([sOwner.opened, sOther.opened]);
  assert.equal((await postMsg(space, priv.json.channel.id, 'top secret', owner.token)).status, 201);
  assert.equal((await postMsg(space, space.general, 'hello all', owner.token)).status, 201);
  await waitFor(() => sOwner.events().some((e) => e.payload.text === 'hello all') && sOther.events().some((e) => e.payload.text === 'hello all'));
  assert.ok(sOwner.events().some((e) => e.payload.text === 'top secret'), 'the member sees it');
  assert.ok(!sOther.frames.some((f) => JSON.stringify(f).includes('top secret')), 'the non-member never does');
  await Promise.all([sOwner.close(), sOther.close()]);
});

test('resume: a client that reconnects with its cursor gets exactly what it missed, then live', async () => {
  const owner = await user();
  const space = await workspace(owner);
  const s1 = stream(space, owner.token);
  await s1.opened;
  for (let i = 0; i < 3; i++) await postMsg(space, space.general, `before ${i}`, owner.token);
  await waitFor(() => s1.events().length >= 3);
  const cursor = s1.events().at(-1).seq;
  await s1.close();
  for (let i = 0; i < 10; i++) await postMsg(space, space.general, `missed ${i}`, owner.token);
  const s2 = stream(space, owner.token, { cursor, via: 'query' });
  await s2.opened;
  await waitFor(() => s2.events().length >= 10, { message: 'the missed events' });
  await postMsg(space, space.general, 'live', owner.token);
  await waitFor(() => s2.events().length >= 11, { message: 'the live event' });
  const seqs = s2.events().map((e) => e.seq);
  assert.deepEqual(seqs, Array.from({ length: 11 }, (_, i) => cursor + 1 + i), 'no gap, no repeat');
  assert.deepEqual(s2.events().map((e) => e.payload.text), [...Array.from({ length: 10 }, (_, i) => `missed ${i}`), 'live']);
  await s2.close();
});

test('a cursor further behind than the server replays gets resync_required', async () => {
  const owner = await user();
  const space = await workspace(owner);
  for (let i = 0; i < MAX_REPLAY + 5; i += 25) {
    await Promise.all(Array.from({ length: Math.min(25, MAX_REPLAY + 5 - i) }, (_, k) => postMsg(space, space.general, `old ${i + k}`, owner.token)));
  }
  const s = stream(space, owner.token, { cursor: 0 });
  await s.opened;
  await waitFor(() => s.frames.length >= 2);
  assert.equal(s.frames[0].type, 'hello');
  assert.equal(s.frames[1].type, 'resync_required');
  assert.equal(s.frames[1].seq, s.frames[0].seq);
  assert.equal(s.events().length, 0, 'nothing old is replayed');
  await s.close();
});

test('outsiders, missing tokens and bad cursors are refused before the upgrade', async () => {
  const owner = await user();
  const outsider = await user();
  const space = await workspace(owner);
  await assert.rejects(stream(space, outsider.token).opened, (e) => e.status === 404);
  await assert.rejects(stream(space, 'mrd1.bogus.token').opened, (e) => e.status === 401);
  await assert.rejects(stream(space, owner.token, { via: 'none' }).opened, (e) => e.status === 401);
  await assert.rejects(stream(space, owner.token, { cursor: 'abc' }).opened, (e) => e.status === 400);
  await assert.rejects(stream(space, owner.token, { cursor: 999999 }).opened, (e) => e.status === 400);
});

test('cross-node: a client on node B receives, in order, messages posted through node A', async () => {
  const owner = await user();
  const space = await workspace(owner);
  const nodeB = await startRegion({ tmp: w.tmp, name: 'node-b', node: 'us-east-2', workers: 1, postgres: w.postgres, redis: w.redis, nats: w.nats, config: { auth: w.region.config.auth, encryption: w.region.config.encryption, limits: { write_rate_per_s: 100000, write_burst: 100000 } } });
  try {
    const url = `${nodeB.api.replace('http', 'ws')}/v1/workspaces/${space.id}/stream`;
    const ws = new WebSocket(url, ['meridian.v1', `bearer.${owner.token}`]);
    const frames = [];
    ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
    await new Promise((resolve, reject) => (ws.once('open', resolve), ws.once('error', reject)));
    await waitFor(() => frames.length >= 1);
    const head = frames[0].seq;
    for (let i = 0; i < 20; i++) assert.equal((await postMsg(space, space.general, `via A ${i}`, owner.token)).status, 201);
    await waitFor(() => frames.filter((f) => f.type === 'event').length >= 20, { message: 'twenty events on node B' });
    const ev = frames.filter((f) => f.type === 'event').map((f) => f.event);
    assert.deepEqual(ev.map((e) => e.seq), Array.from({ length: 20 }, (_, i) => head + 1 + i));
    assert.deepEqual(ev.map((e) => e.payload.text), Array.from({ length: 20 }, (_, i) => `via A ${i}`));
    ws.close();
  } finally {
    await nodeB.stop();
  }
});

test('a client that stops reading is closed (1008) and resumes from its cursor without loss', async () => {
  const owner = await user();
  const space = await workspace(owner);
  const s = stream(space, owner.token);
  await s.opened;
  await waitFor(() => s.frames.length >= 1);
  const closed = new Promise((resolve) => s.ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  s.ws._socket.pause(); // the slow consumer: the kernel buffers fill, then the server's queue
  const big = 'x'.repeat(30000);
  const posted = 300; // ~9 MB: more than the socket buffers and the 64 KiB send queue
  for (let i = 0; i < posted; i += 10) {
    const rs = await Promise.all(Array.from({ length: 10 }, () => postMsg(space, space.general, big, owner.token)));
    rs.forEach((x) => assert.equal(x.status, 201));
  }
  s.ws._socket.resume();
  const { code, reason } = await closed;
  assert.equal(code, 1008, 'closed as too slow');
  assert.match(reason, /send queue full/);
  // It resumes from the last event it did receive, and gets the rest, in order.
  const got = s.events();
  const cursor = got.length ? got.at(-1).seq : s.frames[0].seq;
  const r = stream(space, owner.token, { cursor });
  await r.opened;
  const expected = s.frames[0].seq + posted;
  await waitFor(() => (r.events().at(-1)?.seq ?? cursor) >= expected, { timeoutMs: 30000, message: 'caught up after resuming' });
  const seqs = [...got.map((e) => e.seq), ...r.events().map((e) => e.seq)];
  assert.deepEqual(seqs, Array.from({ length: posted }, (_, i) => s.frames[0].seq + 1 + i), 'nothing lost, nothing repeated');
  await r.close();
});

/**
 * A client that keeps one stream open, reconnecting with its cursor whenever
 * it is dropped, and records every event it is given.
 */
function resilientClient(space, token) {
  const events = [];
  let stopped = false;
  let cur = null;
  let reconnects = 0;
  let hellos = 0;
  let firstHello = null;
  const connect = () => {
    if (stopped) return;
    const last = events.length ? events.at(-1).seq : undefined;
    const s = stream(space, token, last === undefined ? {} : { cursor: last });
    cur = s;
    s.ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      if (f.type === 'event') events.push(f.event);
      else if (f.type === 'hello' && hellos++ === 0) firstHello = f.seq;
    });
    // Once per attempt: a refused handshake (a 503 while the node restarts)
    // rejects `opened` and emits no 'close' when 'unexpected-response' is
    // listened to, so both lead here.
    let retried = false;
    const retry = () => {
      if (stopped || retried) return;
      retried = true;
      reconnects++;
      setTimeout(connect, 50 + Math.floor(Math.random() * 100)).unref(); // jittered; the node may still be restarting
    };
    s.opened.catch(() => {
      s.ws.terminate();
      retry();
    });
    s.ws.on('close', retry);
    s.ws.on('error', () => {});
  };
  connect();
  return {
    events,
    reconnects: () => reconnects,
    firstHello: () => firstHello,
    // The first stream is open: everything committed from here on is its to receive.
    ready: () => waitFor(() => hellos > 0, { message: 'the first hello' }),
    stop: () => ((stopped = true), cur?.ws.close()),
  };
}

/** Posts steadily until stopped; returns the texts that were acknowledged (201). */
function steadyPoster(space, channel, token, prefix) {
  const acked = [];
  let stopped = false;
  let i = 0;
  const done = (async () => {
    while (!stopped) {
      const text = `${prefix} ${i++}`;
      try {
        const r = await postMsg(space, channel, text, token);
        if (r.status === 201) acked.push(text);
      } catch {
        /* the node is restarting: this post was not acknowledged */
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  return { acked, stop: async () => ((stopped = true), await done) };
}

function assertExactlyOnce(events, acked) {
  const seqs = events.map((e) => e.seq);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `no gap and no repeat at ${seqs[i - 1]} -> ${seqs[i]}`);
  const texts = new Set(events.map((e) => e.payload.text));
  const missing = acked.filter((t) => !texts.has(t));
  assert.deepEqual(missing, [], 'every acknowledged post was delivered');
}

test('posts continue while every worker is killed with SIGKILL: the client resumes, nothing lost or repeated', async () => {
  const owner = await user();
  const space = await workspace(owner);
  const client = resilientClient(space, owner.token);
  // Posts committed before the stream's head was read are not the stream's:
  // start them once it is open (CI once lost "kill 0" to that race).
  await client.ready();
  const poster = steadyPoster(space, space.general, owner.token, 'kill');
  try {
    await waitFor(() => poster.acked.length >= 20, { timeoutMs: 30000, message: 'posts flowing' });
    const workers = spawnSync('ps', ['-o', 'pid=', '--ppid', String(w.region.pid)], { encoding: 'utf8' })
      .stdout.split('\n').map((x) => Number(x.trim())).filter(Boolean);
    for (const pid of workers) process.kill(pid, 'SIGKILL');
    await waitFor(() => client.reconnects() >= 1, { timeoutMs: 30000, message: 'the client was dropped' });
    const before = poster.acked.length;
    await waitFor(() => poster.acked.length >= before + 20, { timeoutMs: 60000, message: 'posts flowing again' });
    await poster.stop();
    await waitFor(() => new Set(client.events.map((e) => e.payload.text)).size >= poster.acked.length, { timeoutMs: 60000, message: 'the client caught up' }).catch((e) => {
      const got = new Set(client.events.map((x) => x.payload.text));
      const missing = poster.acked.filter((t) => !got.has(t));
      assert.fail(`${e.message}: ${missing.length} of ${poster.acked.length} acknowledged posts missing (${missing.slice(0, 5).join(', ')}); first hello at seq ${client.firstHello()}, events from seq ${client.events[0]?.seq} to ${client.events.at(-1)?.seq}, reconnects ${client.reconnects()}`);
    });
    assertExactlyOnce(client.events, poster.acked);
  } finally {
    await poster.stop();
    client.stop();
  }
});

test('the same holds across a restart of the nats-server of the region', async () => {
  const owner = await user();
  const space = await workspace(owner);
  const client = resilientClient(space, owner.token);
  await client.ready();
  const poster = steadyPoster(space, space.general, owner.token, 'nats');
  try {
    await waitFor(() => poster.acked.length >= 20 && client.events.length >= 10, { timeoutMs: 30000, message: 'posts and events flowing' });
    await w.nats.stop();
    const during = poster.acked.length;
    await waitFor(() => poster.acked.length >= during + 20, { timeoutMs: 30000, message: 'posts go on without NATS' });
    await w.nats.start();
    const after = poster.acked.length;
    await waitFor(() => poster.acked.length >= after + 20, { timeoutMs: 30000, message: 'posts after NATS is back' });
    await poster.stop();
    // The workspace goes quiet: no later event reveals a gap, so the catch-up
    // must come from the worker noticing its own NATS link came back.
    await waitFor(() => new Set(client.events.map((e) => e.payload.text)).size >= poster.acked.length, { timeoutMs: 60000, message: 'the client caught up' });
    assertExactlyOnce(client.events, poster.acked);
  } finally {
    await poster.stop();
    client.stop();
  }
});

test('on SIGTERM a stream gets a jittered reconnect hint, then close 1001', async () => {
  // The tests above restarted the workers and NATS: a worker still reaching
  // its stores answers a new session 503 starting (rg_worker_admit).
  await w.region.waitReady();
  const owner = await user();
  const space = await workspace(owner);
  const s = stream(space, owner.token);
  await s.opened;
  await waitFor(() => s.frames.length >= 1);
  const closed = new Promise((resolve) => s.ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  process.kill(w.region.pid, 'SIGTERM');
  const { code, reason } = await closed;
  assert.equal(code, 1001);
  assert.match(reason, /shutting down/);
  const hint = s.frames.find((f) => f.type === 'reconnect');
  assert.ok(hint, JSON.stringify(s.frames));
  assert.ok(Number.isInteger(hint.after_ms) && hint.after_ms >= 0 && hint.after_ms <= 5000);
  await w.region.waitExit(20000);
  await w.region.start(); // later tests (and teardown) expect a running node
});
