// Presence and typing on the workspace stream: kept in Redis with TTLs,
// broadcast to the workspace's connected members (typing only to those who
// may see the channel), throttled, and every bad client message answered
// with an error message or a close code.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { http, natsConnect, startWorld, waitFor } from '../lib/harness.mjs';

let w;
before(async () => {
  w = await startWorld({
    workers: 2,
    config: { websocket: { typing_ttl_ms: 60000, presence_ttl_ms: 3000, client_messages_per_s: 5, client_message_burst: 10 } },
  });
});
after(async () => {
  await w?.stop();
});

const call = (method, path, body, token) => http(method, `${w.api}${path}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
async function user() {
  const r = await call('POST', '/v1/auth/signup', { email: `sig${++n}.${process.pid}@example.com`, password: 'signal password', display_name: `G${n}` });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token };
}
async function workspace(owner, ...members) {
  const r = await call('POST', '/v1/workspaces', { name: 'Signals', slug: `signals-${process.pid}-${++n}` }, owner.token);
  assert.equal(r.status, 201, r.text);
  const id = r.json.workspace.id;
  for (const m of members) {
    assert.equal((await call('POST', `/v1/workspaces/${id}/members`, { user_id: m.id }, owner.token)).status, 201);
    assert.equal((await call('POST', `/v1/workspaces/${id}/join`, {}, m.token)).status, 200);
  }
  const ch = await call('GET', `/v1/workspaces/${id}/channels`, undefined, owner.token);
  return { id, general: ch.json.channels.find((c) => c.name === 'general').id };
}

function stream(space, token) {
  const ws = new WebSocket(`${w.api.replace('http', 'ws')}/v1/workspaces/${space.id}/stream`, ['meridian.v1', `bearer.${token}`]);
  const frames = [];
  let closed = null;
  ws.on('message', (d, binary) => frames.push(binary ? { binary: true } : JSON.parse(d.toString())));
  ws.on('close', (code, reason) => (closed = { code, reason: reason.toString() }));
  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return {
    ws,
    frames,
    opened,
    closed: () => closed,
    of: (type) => frames.filter((f) => f.type === type),
    // Presence changes arrive gathered, a frame per period: flattened here.
    presence: () => frames.filter((f) => f.type === 'presence').flatMap((f) => f.changes.map((c) => ({ ...c, workspace_id: f.workspace_id }))),
    send: (m) => ws.send(typeof m === 'string' || Buffer.isBuffer(m) ? m : JSON.stringify(m)),
    ready: () => waitFor(() => frames.some((f) => f.type === 'hello'), { message: 'hello' }),
    close: () => new Promise((r) => (ws.readyState === WebSocket.CLOSED ? r() : (ws.once('close', r), ws.close()))),
  };
}

const presence = async (space, token) => {
  const r = await call('GET', `/v1/workspaces/${space.id}/presence`, undefined, token);
  assert.equal(r.status, 200, r.text);
  return r.json.online.map((u) => u.user_id).sort();
};

test('presence: members see each other come online and go offline; GET lists who is online', async () => {
  const a = await user();
  const b = await user();
  const space = await workspace(a, b);
  const sa = stream(space, a.token);
  await sa.opened;
  await sa.ready();
  await waitFor(async () => (await presence(space, a.token)).includes(a.id), { message: 'a online' });
  const sb = stream(space, b.token);
  await sb.opened;
  await waitFor(() => sa.presence().some((p) => p.user_id === b.id && p.status === 'online'), { message: 'b online at a' });
  assert.deepEqual(await presence(space, b.token), [a.id, b.id].sort());
  // A second connection of b: b stays online when one of them closes.
  const sb2 = stream(space, b.token);
  await sb2.opened;
  await sb2.ready();
  await sb.close();
  await sb2.close();
  await waitFor(() => sa.presence().some((p) => p.user_id === b.id && p.status === 'offline'), { message: 'b offline at a' });
  const bSignals = sa.presence().filter((p) => p.user_id === b.id).map((p) => p.status);
  assert.deepEqual(bSignals, ['online', 'offline'], 'one online, one offline, for two connections');
  assert.deepEqual(await presence(space, a.token), [a.id]);
  assert.ok(sa.presence().every((p) => p.workspace_id === space.id));
  await sa.close();
});

test('presence of a connection that vanished without leaving expires and is swept', async () => {
  const a = await user();
  const b = await user();
  const space = await workspace(a, b);
  const sa = stream(space, a.token);
  await sa.opened;
  await sa.ready();
  // b's connection entry is written straight into Redis, as a worker that
  // crashed would have left it: nothing will ever refresh or remove it.
  const now = Date.now();
  assert.equal(await w.redis.command(`ZADD prc:{${space.id}}:${b.id} ${now + 500} ghost.1.1`), ':1');
  assert.equal(await w.redis.command(`ZADD pr:{${space.id}} ${now + 500} ${b.id}`), ':1');
  await waitFor(() => sa.presence().some((p) => p.user_id === b.id && p.status === 'offline'), {
    timeoutMs: 15000,
    message: 'the ghost swept and announced offline',
  });
  assert.deepEqual(await presence(space, a.token), [a.id]);
  await sa.close();
});

test('presence changes are gathered: one frame a period, and past 100 changes only a reset', async () => {
  const a = await user();
  const space = await workspace(a);
  const sa = stream(space, a.token);
  await sa.opened;
  await sa.ready();
  // Signals as other nodes publish them, straight onto the workspace's subject.
  const nc = natsConnect(w.nats.port);
  try {
    await nc.ready;
    const burst = (n, tag) => {
      for (let i = 0; i < n; i++) nc.publish(`eph.us-east.${space.id}`, JSON.stringify({ type: 'presence', workspace_id: space.id, user_id: `u_${tag}${i}`, status: 'online' }));
      return nc.flush();
    };
    await burst(5, 'small');
    await waitFor(() => sa.presence().filter((p) => p.user_id.startsWith('u_small')).length === 5, { message: 'five changes' });
    const frames = sa.of('presence').filter((f) => f.changes.some((c) => c.user_id.startsWith('u_small')));
    assert.equal(frames.length, 1, 'five changes, one frame');
    await burst(150, 'big');
    await waitFor(() => sa.of('presence_reset').length >= 1, { message: 'a reset after a storm' });
    assert.equal(sa.of('presence_reset')[0].workspace_id, space.id);
    assert.ok(sa.of('presence').every((f) => f.changes.length <= 100), 'a frame never lists more than 100 changes');
  } finally {
    nc.close();
  }
  await sa.close();
});

test('presence is for members only', async () => {
  const a = await user();
  const outsider = await user();
  const space = await workspace(a);
  const r = await call('GET', `/v1/workspaces/${space.id}/presence`, undefined, outsider.token);
  assert.equal(r.status, 404, r.text);
  assert.equal(r.json.error.code, 'not_found');
  const anon = await call('GET', `/v1/workspaces/${space.id}/presence`);
  assert.equal(anon.status, 401, anon.text);
});

test('typing reaches the other members, not the typist, once per TTL; private channels only their members', async () => {
  const a = await user();
  const b = await user();
  const c = await user();
  const space = await workspace(a, b, c);
  // b's private channel: b is its only member.
  const priv = await call('POST', `/v1/workspaces/${space.id}/channels`, { name: 'inner', private: true }, b.token);
  assert.equal(priv.status, 201, priv.text);
  const privId = priv.json.channel.id;
  const [sa, sb, sc] = [stream(space, a.token), stream(space, b.token), stream(space, c.token)];
  await Promise.all([sa.opened, sb.opened, sc.opened]);
  await Promise.all([sa.ready(), sb.ready(), sc.ready()]);
  // hello comes before a connection has read which channels its user may
  // see; until then signals pass it by (they are not replayed). An event
  // delivered to each says every one has.
  const post = await call('POST', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, { text: 'here' }, a.token);
  assert.equal(post.status, 201, post.text);
  await waitFor(() => [sa, sb, sc].every((s) => s.of('event').length >= 1), { message: 'every stream live' });

  sb.send({ type: 'typing', channel_id: privId });
  sa.send({ type: 'typing', channel_id: space.general });
  sa.send({ type: 'typing', channel_id: space.general }); // within the TTL: not broadcast again
  sb.send({ type: 'typing', channel_id: space.general });
  // Signals of one workspace travel one path in order: once c has b's
  // general signal, anything b sent before has arrived or never will.
  await waitFor(() => sc.of('typing').some((t) => t.user_id === b.id), { message: "b's typing at c" });
  await waitFor(() => sa.of('typing').some((t) => t.user_id === b.id), { message: "b's typing at a" });
  await waitFor(() => sb.of('typing').some((t) => t.user_id === a.id), { message: "a's typing at b" });
  for (const s of [sa, sc]) assert.ok(!s.of('typing').some((t) => t.channel_id === privId), 'no one outside the channel sees typing in it');
  assert.deepEqual(sc.of('typing').map((t) => t.user_id).sort(), [a.id, b.id].sort(), 'one signal each: the repeat was throttled');
  assert.ok(sc.of('typing').every((t) => t.channel_id === space.general && t.workspace_id === space.id && t.ttl_ms === 60000));
  assert.equal(sb.of('typing').filter((t) => t.user_id === b.id).length, 0, 'the typist does not get its own signal');
  assert.equal(sa.of('typing').filter((t) => t.user_id === a.id).length, 0, 'nor does a');

  sc.send({ type: 'typing', channel_id: privId });
  await waitFor(() => sc.of('error').length >= 1);
  assert.equal(sc.of('error')[0].code, 'channel_not_found');
  await Promise.all([sa.close(), sb.close(), sc.close()]);
});

test('bad client messages: error messages for bad JSON and types, close codes for binary, size and floods', async () => {
  const a = await user();
  const space = await workspace(a);
  const s = stream(space, a.token);
  await s.opened;
  await s.ready();
  s.send('{not json');
  s.send({ type: 'dance' });
  s.send({ type: 'typing' });
  s.send('[1,2]');
  await waitFor(() => s.of('error').length >= 4);
  assert.deepEqual(s.of('error').map((e) => e.code), ['invalid_json', 'unknown_type', 'invalid_message', 'invalid_message']);
  assert.ok(s.of('error').every((e) => typeof e.message === 'string' && e.message.length > 0));
  assert.equal(s.ws.readyState, WebSocket.OPEN, 'bad messages do not cost the connection');

  const bin = stream(space, a.token);
  await bin.opened;
  bin.send(Buffer.from([1, 2, 3]));
  await waitFor(() => bin.closed());
  assert.equal(bin.closed().code, 1003);

  const big = stream(space, a.token);
  await big.opened;
  big.send(JSON.stringify({ type: 'typing', channel_id: 'x'.repeat(5000) }));
  await waitFor(() => big.closed());
  assert.equal(big.closed().code, 1009);

  const flood = stream(space, a.token);
  await flood.opened;
  for (let i = 0; i < 40; i++) flood.send({ type: 'nothing' });
  await waitFor(() => flood.closed(), { message: 'flood closed' });
  assert.equal(flood.closed().code, 1008);
  assert.match(flood.closed().reason, /too many/);
  await s.close();
});
