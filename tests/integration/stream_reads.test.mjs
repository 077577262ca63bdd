// What a stream session reads from the database: a session that has nothing
// to replay (no cursor, or its cursor is the head) on a workspace this worker
// already follows goes live without a replay read, and nothing is lost by
// it, not even an event committed while the session opened. One worker, so
// that every session lands where the topic is and the read counter is that
// worker's.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { http, startWorld, waitFor } from '../lib/harness.mjs';

let w;
before(async () => {
  w = await startWorld({ workers: 1, config: { limits: { write_rate_per_s: 100000, write_burst: 100000 } } });
});
after(async () => {
  await w?.stop();
});

const call = (method, path, body, token) => http(method, `${w.api}${path}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
async function owner() {
  const r = await call('POST', '/v1/auth/signup', { email: `rd${++n}.${process.pid}@example.com`, password: 'reads password', display_name: `R${n}` });
  assert.equal(r.status, 201, r.text);
  const token = r.json.access_token;
  const s = await call('POST', '/v1/workspaces', { name: 'Reads', slug: `reads-${process.pid}-${++n}` }, token);
  assert.equal(s.status, 201, s.text);
  const ch = await call('GET', `/v1/workspaces/${s.json.workspace.id}/channels`, undefined, token);
  return { token, space: s.json.workspace.id, general: ch.json.channels.find((c) => c.name === 'general').id };
}
const post = (o, text) => call('POST', `/v1/workspaces/${o.space}/channels/${o.general}/messages`, { text }, o.token);

async function replayReads() {
  const m = await http('GET', `${w.api}/metrics`);
  const line = m.text.split('\n').find((l) => l.startsWith('meridian_stream_replay_reads_total'));
  return line ? Number(line.trim().split(/\s+/).pop()) : 0;
}

function stream(o, cursor) {
  const q = cursor === undefined ? '' : `?cursor=${cursor}`;
  const ws = new WebSocket(`${w.api.replace('http', 'ws')}/v1/workspaces/${o.space}/stream${q}`, ['meridian.v1', `bearer.${o.token}`]);
  const frames = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  const hello = () => frames.find((f) => f.type === 'hello');
  return {
    frames,
    hello,
    ready: () => waitFor(() => hello(), { message: 'hello' }),
    seqs: () => frames.filter((f) => f.type === 'event').map((f) => f.event.seq),
    close: () => new Promise((r) => (ws.readyState === WebSocket.CLOSED ? r() : (ws.once('close', r), ws.close()))),
  };
}

test('a session with nothing to replay on a followed workspace reads no replay page; one behind does', async () => {
  const o = await owner();
  assert.equal((await post(o, 'before')).status, 201);
  // The first session of the workspace subscribes after its head was read:
  // it must read, for what was committed in between.
  const before = await replayReads();
  const first = stream(o);
  await first.ready();
  await waitFor(async () => (await replayReads()) > before, { message: 'the first session read once' });

  const settled = await replayReads();
  const fresh = stream(o);
  await fresh.ready();
  const head = fresh.hello().seq;
  const caughtUp = stream(o, head);
  await caughtUp.ready();
  assert.equal(await replayReads(), settled, 'no replay read for sessions with nothing to replay');

  // They are live: the next event reaches all three, once.
  assert.equal((await post(o, 'live')).status, 201);
  for (const s of [first, fresh, caughtUp]) {
    await waitFor(() => s.seqs().includes(head + 1), { message: 'the live event' });
    assert.deepEqual(s.seqs().filter((q) => q > head), [head + 1]);
  }

  // One event behind: it is read from the database.
  const behind = stream(o, head);
  await behind.ready();
  await waitFor(() => behind.seqs().includes(head + 1), { message: 'the missed event, replayed' });
  assert.ok((await replayReads()) > settled, 'a session behind reads');
  assert.deepEqual(behind.seqs(), [head + 1]);
  for (const s of [first, fresh, caughtUp, behind]) await s.close();
});

test('a resume across a private message gives it to its members only, and the rest to all', async () => {
  const o = await owner();
  const m = await call('POST', '/v1/auth/signup', { email: `rdm${++n}.${process.pid}@example.com`, password: 'reads password', display_name: 'M' });
  assert.equal(m.status, 201, m.text);
  const member = { token: m.json.access_token, space: o.space, general: o.general };
  assert.equal((await call('POST', `/v1/workspaces/${o.space}/members`, { user_id: m.json.user.id }, o.token)).status, 201);
  assert.equal((await call('POST', `/v1/workspaces/${o.space}/join`, {}, member.token)).status, 200);
  const priv = await call('POST', `/v1/workspaces/${o.space}/channels`, { name: 'secret', private: true }, o.token);
  assert.equal(priv.status, 201, priv.text);
  const anchor = stream(o);
  await anchor.ready();
  const start = anchor.hello().seq;
  assert.equal((await post(o, 'before')).status, 201);
  assert.equal((await call('POST', `/v1/workspaces/${o.space}/channels/${priv.json.channel.id}/messages`, { text: 'top secret' }, o.token)).status, 201);
  assert.equal((await post(o, 'after')).status, 201);
  const last = start + 3;
  await waitFor(() => anchor.seqs().at(-1) === last, { message: 'the anchor has them all' });
  // Both resume from before all three: the workspace is followed and its
  // events came live here, and only the channel's member gets the secret.
  const outsider = stream(member, start);
  const insider = stream(o, start);
  await Promise.all([outsider.ready(), insider.ready()]);
  await waitFor(() => outsider.seqs().at(-1) === last && insider.seqs().at(-1) === last, { message: 'both resumed' });
  assert.deepEqual(insider.seqs(), [start + 1, start + 2, start + 3]);
  assert.deepEqual(outsider.seqs(), [start + 1, start + 3]);
  assert.ok(!outsider.frames.some((f) => JSON.stringify(f).includes('top secret')), 'never to a non-member');
  for (const s of [anchor, outsider, insider]) await s.close();
});

test('sessions opened while posts commit miss nothing and repeat nothing', async () => {
  const o = await owner();
  const anchor = stream(o); // the workspace is followed from here on
  await anchor.ready();
  let posting = true;
  let posted = 0;
  const poster = (async () => {
    while (posting) {
      const r = await post(o, `m${posted}`);
      assert.equal(r.status, 201, r.text);
      posted++;
    }
  })();
  // Half with no cursor (they start at their head), half with the anchor's
  // latest seq as cursor (often their head too, sometimes behind it).
  const sessions = [];
  for (let i = 0; i < 30; i++) {
    const cursor = i % 2 ? undefined : (anchor.seqs().at(-1) ?? anchor.hello().seq);
    const s = stream(o, cursor);
    s.cursor = cursor;
    sessions.push(s);
    await s.ready();
  }
  posting = false;
  await poster;
  assert.ok(posted > 0);
  const final = anchor.hello().seq + posted;
  await waitFor(() => sessions.every((s) => s.seqs().at(-1) === final || (s.hello().seq === final && s.cursor === undefined)), {
    message: `every session reaches seq ${final}`,
    timeoutMs: 15000,
  });
  for (const s of sessions) {
    const from = s.cursor ?? s.hello().seq;
    const want = Array.from({ length: final - from }, (_, k) => from + 1 + k);
    assert.deepEqual(s.seqs(), want, `cursor ${s.cursor}, hello ${s.hello().seq}`);
  }
  for (const s of [anchor, ...sessions]) await s.close();
});
