// Reactions, read markers with unread counts, and search
// (/v1/workspaces/{id}/messages/{mid}/reactions[/{emoji}], .../channels/{cid}/read,
// .../unread, .../search) against real shards and Redis: success and error
// cases, authorization for outsiders and private channels, idempotency
// counted in the outbox, and a gap-free workspace sequence afterwards.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';

import { binary, http, startWorld } from '../lib/harness.mjs';

let w;
const routes = new Set();

const auth = (t) => (t ? { authorization: `Bearer ${t}` } : {});
const call = (method, path, token, body) => http(method, `${w.api}${path}`, { headers: auth(token), body });

function assertError(r, status, code, mentions) {
  assert.equal(r.status, status, r.text);
  assert.equal(r.json?.error?.code, code, r.text);
  if (mentions) assert.match(r.json.error.message, mentions, r.text);
}

let n = 0;
async function signup(name) {
  const email = `${name}.${++n}.${process.pid}@example.com`;
  const r = await call('POST', '/v1/auth/signup', null, { email, password: 'a long password', display_name: name });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token };
}

const sq = (s) => `'${String(s).replace(/'/g, "''")}'`;

let shardCache = new Map();
async function shardOf(ws) {
  if (!shardCache.has(ws)) {
    for (const pg of w.postgres) {
      const s = (await pg.psql(`SELECT shard FROM dir_workspaces WHERE workspace_id = ${sq(ws)}`)).trim();
      if (s) {
        shardCache.set(ws, w.postgres[Number(s)]);
        break;
      }
    }
  }
  const pg = shardCache.get(ws);
  assert.ok(pg, `no directory row for ${ws}`);
  return pg;
}
const sql = async (ws, text) => (await (await shardOf(ws)).psql(text)).trim();

let msgSeq = 0;
/** Posts a message through the API when the messages route exists, else writes it as that route would (message, sequence bump, outbox event). */
async function postMessage(user, ws, cid, text, parentId) {
  if (routes.has('POST /v1/workspaces/{id}/channels/{cid}/messages')) {
    const body = { text };
    if (parentId) body.parent_id = parentId;
    const r = await call('POST', `/v1/workspaces/${ws}/channels/${cid}/messages`, user.token, body);
    assert.equal(r.status, 201, r.text);
    return { id: r.json.message.id, seq: Number(r.json.message.seq) };
  }
  const id = `m_fixture${++msgSeq}x${process.pid}`;
  const row = await sql(
    ws,
    `WITH bump AS (UPDATE workspaces SET seq = seq + 1 WHERE id = ${sq(ws)} RETURNING seq),
      m AS (INSERT INTO messages (workspace_id, id, channel_id, seq, author_id, parent_id, body)
            SELECT ${sq(ws)}, ${sq(id)}, ${sq(cid)}, seq, ${sq(user.id)}, ${parentId ? sq(parentId) : 'NULL'}, ${sq(text)} FROM bump RETURNING seq),
      ev AS (INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)
             SELECT ${sq(ws)}, seq, 'message.posted', ${sq(cid)}, jsonb_build_object('message_id', ${sq(id)}) FROM bump RETURNING 1)
     SELECT seq FROM m`,
  );
  return { id, seq: Number(row) };
}

/** A tombstone as the delete endpoint leaves it; the body is kept here so that search must filter on deleted_at itself. */
async function tombstone(ws, mid) {
  await sql(ws, `UPDATE messages SET deleted_at = now() WHERE workspace_id = ${sq(ws)} AND id = ${sq(mid)}`);
}

async function createWorkspace(owner, slug) {
  const r = await call('POST', '/v1/workspaces', owner.token, { name: `Team ${slug}`, slug });
  assert.equal(r.status, 201, r.text);
  const ws = r.json.workspace.id;
  const ch = await call('GET', `/v1/workspaces/${ws}/channels`, owner.token);
  assert.equal(ch.status, 200, ch.text);
  const general = ch.json.channels.find((c) => c.name === 'general');
  assert.ok(general, ch.text);
  return { ws, general: general.id };
}

async function addMember(owner, ws, user) {
  const inv = await call('POST', `/v1/workspaces/${ws}/members`, owner.token, { user_id: user.id });
  assert.equal(inv.status, 201, inv.text);
  const j = await call('POST', `/v1/workspaces/${ws}/join`, user.token);
  assert.equal(j.status, 200, j.text);
}

async function createChannel(owner, ws, name, priv) {
  const r = await call('POST', `/v1/workspaces/${ws}/channels`, owner.token, { name, private: priv });
  assert.equal(r.status, 201, r.text);
  return r.json.channel.id;
}

async function joinChannel(user, ws, cid) {
  const r = await call('POST', `/v1/workspaces/${ws}/channels/${cid}/join`, user.token);
  assert.equal(r.status, 200, r.text);
}

/** There is no invitation to a private channel yet: members are added as the creator would add them. */
async function addToPrivate(ws, cid, user) {
  await sql(ws, `INSERT INTO channel_members (workspace_id, channel_id, user_id) VALUES (${sq(ws)}, ${sq(cid)}, ${sq(user.id)})`);
}

const outboxCount = async (ws, type, extra = '') =>
  Number(await sql(ws, `SELECT count(*) FROM outbox WHERE workspace_id = ${sq(ws)} AND type = ${sq(type)} ${extra}`));

// alice owns the workspace; bob is a member of #general and of the private
// #secret; carol is a member of the workspace only; eve is an outsider.
let alice, bob, carol, eve;
let W, general, secret;

before(async () => {
  w = await startWorld({ workers: 2, config: { limits: { write_rate_per_s: 1000, write_burst: 1000 } } });
  const pr = spawnSync(binary('meridian-region'), ['--print-routes'], { encoding: 'utf8' });
  for (const line of pr.stdout.trim().split('\n')) routes.add(line);
  [alice, bob, carol, eve] = await Promise.all(['alice', 'bob', 'carol', 'eve'].map(signup));
  ({ ws: W, general } = await createWorkspace(alice, `rx-${process.pid}`));
  await addMember(alice, W, bob);
  await addMember(alice, W, carol);
  await joinChannel(bob, W, general);
  secret = await createChannel(alice, W, 'secret', true);
  await addToPrivate(W, secret, bob);
});
after(async () => {
  await w?.stop();
});

describe('reactions', () => {
  const path = (mid, emoji) => `/v1/workspaces/${W}/messages/${mid}/reactions${emoji === undefined ? '' : `/${encodeURIComponent(emoji)}`}`;

  test('add, count with `me`, remove; adding and removing are idempotent with one event each', async () => {
    const m = await postMessage(alice, W, general, 'react to this');
    const added = `AND payload->>'message_id' = ${sq(m.id)}`;
    for (let i = 0; i < 2; i++) {
      const r = await call('PUT', path(m.id, 'thumbsup'), bob.token);
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json.reaction, { message_id: m.id, emoji: 'thumbsup', user_id: bob.id });
    }
    assert.equal(await outboxCount(W, 'reaction.added', added), 1);
    assert.equal((await call('PUT', path(m.id, 'thumbsup'), alice.token)).status, 200);
    assert.equal((await call('PUT', path(m.id, '👍🏽'), alice.token)).status, 200);
    assert.equal((await call('PUT', path(m.id, '+1'), bob.token)).status, 200);

    let g = await call('GET', path(m.id), bob.token);
    assert.equal(g.status, 200, g.text);
    assert.deepEqual(g.json.reactions, [
      { emoji: 'thumbsup', count: 2, me: true },
      { emoji: '👍🏽', count: 1, me: false },
      { emoji: '+1', count: 1, me: true },
    ]);
    g = await call('GET', path(m.id), alice.token);
    assert.deepEqual(
      g.json.reactions.map((x) => [x.emoji, x.me]),
      [
        ['thumbsup', true],
        ['👍🏽', true],
        ['+1', false],
      ],
    );

    for (let i = 0; i < 2; i++) {
      const r = await call('DELETE', path(m.id, 'thumbsup'), bob.token);
      assert.equal(r.status, 204, r.text);
      assert.equal(r.text, '');
    }
    // A reaction that was never there: 204 and no event.
    assert.equal((await call('DELETE', path(m.id, 'heart'), bob.token)).status, 204);
    assert.equal(await outboxCount(W, 'reaction.removed', added), 1);
    assert.equal(await outboxCount(W, 'reaction.added', added), 4);
    g = await call('GET', path(m.id), bob.token);
    assert.deepEqual(g.json.reactions[0], { emoji: 'thumbsup', count: 1, me: false });

    // The event carries the ids, the emoji and the channel for fan-out.
    const ev = JSON.parse(await sql(W, `SELECT row_to_json(o) FROM outbox o WHERE workspace_id = ${sq(W)} AND type = 'reaction.removed' ${added}`));
    assert.equal(ev.channel_id, general);
    assert.deepEqual(ev.payload, { message_id: m.id, channel_id: general, emoji: 'thumbsup', user_id: bob.id });
    // Only the reactions that exist are stored.
    assert.equal(await sql(W, `SELECT count(*) FROM reactions WHERE workspace_id = ${sq(W)} AND message_id = ${sq(m.id)}`), '3');
  });

  test('no reactions is an empty list', async () => {
    const m = await postMessage(alice, W, general, 'quiet');
    const g = await call('GET', path(m.id), carol.token);
    assert.equal(g.status, 200, g.text);
    assert.deepEqual(g.json, { reactions: [] });
  });

  test('invalid emoji and ids are 400 naming them', async () => {
    const m = await postMessage(alice, W, general, 'validate');
    for (const bad of ['a/b', 'a\u0001b', 'a b', 'x'.repeat(65), 'tab\there', '\u0085']) {
      assertError(await call('PUT', path(m.id, bad), bob.token), 400, 'invalid_request', /emoji/);
    }
    // Invalid UTF-8 (a lone continuation byte, an overlong '/').
    for (const raw of ['%FF', '%80abc', '%C0%AF']) {
      assertError(await call('PUT', `/v1/workspaces/${W}/messages/${m.id}/reactions/${raw}`, bob.token), 400, 'invalid_request', /emoji/);
      assertError(await call('DELETE', `/v1/workspaces/${W}/messages/${m.id}/reactions/${raw}`, bob.token), 400, 'invalid_request', /emoji/);
    }
    // 64 bytes is the limit: 16 four-byte emoji fit.
    assert.equal((await call('PUT', path(m.id, '😀'.repeat(16)), bob.token)).status, 200);
    assertError(await call('PUT', path(m.id, '😀'.repeat(16) + 'x'), bob.token), 400, 'invalid_request', /emoji/);
    assertError(await call('PUT', path('not.an.id', 'ok'), bob.token), 400, 'invalid_request', /message id/);
    assertError(await call('GET', path('not.an.id'), bob.token), 400, 'invalid_request', /message id/);
    assertError(await call('GET', `/v1/workspaces/bad.ws/messages/${m.id}/reactions`, bob.token), 400, 'invalid_request', /workspace id/);
  });

  test('401 without a valid token', async () => {
    const m = await postMessage(alice, W, general, 'auth');
    for (const [method, p] of [
      ['PUT', path(m.id, 'ok')],
      ['DELETE', path(m.id, 'ok')],
      ['GET', path(m.id)],
    ]) {
      assert.equal((await call(method, p, null)).status, 401);
      assert.equal((await call(method, p, 'not-a-token')).status, 401);
    }
  });

  test('outsiders, unknown messages and private channels are 404 with nothing leaked', async () => {
    const pub = await postMessage(alice, W, general, 'public words');
    const priv = await postMessage(bob, W, secret, 'private words');
    assert.equal((await call('PUT', path(priv.id, 'eyes'), bob.token)).status, 200);
    const cases = [
      [eve, pub.id],
      [eve, priv.id],
      [carol, priv.id],
      [bob, 'm_doesnotexist'],
    ];
    for (const [user, mid] of cases) {
      for (const [method, p] of [
        ['PUT', path(mid, 'eyes')],
        ['DELETE', path(mid, 'eyes')],
        ['GET', path(mid)],
      ]) {
        const r = await call(method, p, user.token);
        assertError(r, 404, 'not_found');
        assert.ok(!r.text.includes('eyes') && !r.text.includes('words') && !r.text.includes(bob.id), r.text);
      }
    }
    // An unknown workspace is as unknown as one the caller is not in.
    assertError(await call('GET', `/v1/workspaces/w_doesnotexist/messages/${pub.id}/reactions`, bob.token), 404, 'not_found');
    // Bob's reaction in the private channel is untouched by those attempts.
    const g = await call('GET', path(priv.id), bob.token);
    assert.deepEqual(g.json.reactions, [{ emoji: 'eyes', count: 1, me: true }]);
  });

  test('a deleted message refuses new reactions (409), its reactions can still be read and removed', async () => {
    const m = await postMessage(alice, W, general, 'soon gone');
    assert.equal((await call('PUT', path(m.id, 'wave'), bob.token)).status, 200);
    await tombstone(W, m.id);
    const before = await outboxCount(W, 'reaction.added');
    assertError(await call('PUT', path(m.id, 'tada'), bob.token), 409, 'message_deleted');
    assertError(await call('PUT', path(m.id, 'wave'), bob.token), 409, 'message_deleted');
    assert.equal(await outboxCount(W, 'reaction.added'), before);
    assert.deepEqual((await call('GET', path(m.id), alice.token)).json.reactions, [{ emoji: 'wave', count: 1, me: false }]);
    assert.equal((await call('DELETE', path(m.id, 'wave'), bob.token)).status, 204);
    assert.deepEqual((await call('GET', path(m.id), alice.token)).json.reactions, []);
  });

  test('a message deleted through the API refuses reactions too', async () => {
    const m = await postMessage(bob, W, general, 'delete me properly');
    const route = 'DELETE /v1/workspaces/{id}/channels/{cid}/messages/{mid}';
    if (routes.has(route)) {
      const d = await call('DELETE', `/v1/workspaces/${W}/channels/${general}/messages/${m.id}`, bob.token);
      assert.equal(d.status, 204, d.text);
    } else {
      await tombstone(W, m.id);
    }
    assertError(await call('PUT', path(m.id, 'ok'), alice.token), 409, 'message_deleted');
  });

  test('reactions to a thread parent while replies arrive: no deadlock, every write answered', async () => {
    const parent = await postMessage(alice, W, general, 'a busy thread');
    const users = [alice, bob];
    const jobs = [];
    for (let i = 0; i < 12; i++) {
      jobs.push(call('PUT', path(parent.id, `e${i}`), users[i % 2].token));
      jobs.push(postMessage(users[(i + 1) % 2], W, general, `reply ${i}`, parent.id));
      jobs.push(call('DELETE', path(parent.id, `e${i}`), users[i % 2].token));
    }
    const rs = await Promise.all(jobs);
    for (let i = 0; i < rs.length; i += 3) {
      assert.equal(rs[i].status, 200, rs[i].text);
      assert.equal(rs[i + 2].status, 204, rs[i + 2].text);
    }
    const added = await outboxCount(W, 'reaction.added', `AND payload->>'message_id' = ${sq(parent.id)}`);
    const removed = await outboxCount(W, 'reaction.removed', `AND payload->>'message_id' = ${sq(parent.id)}`);
    const left = Number(await sql(W, `SELECT count(*) FROM reactions WHERE workspace_id = ${sq(W)} AND message_id = ${sq(parent.id)}`));
    assert.equal(added, 12);
    assert.equal(added - removed, left);
  });

  test('concurrent adds of the same reaction write one event', async () => {
    const m = await postMessage(alice, W, general, 'race');
    const rs = await Promise.all(Array.from({ length: 8 }, () => call('PUT', path(m.id, 'rocket'), bob.token)));
    for (const r of rs) assert.equal(r.status, 200, r.text);
    assert.equal(await outboxCount(W, 'reaction.added', `AND payload->>'message_id' = ${sq(m.id)}`), 1);
  });
});

describe('read markers and unread counts', () => {
  const read = (user, cid, body) => call('POST', `/v1/workspaces/${W}/channels/${cid}/read`, user?.token, body);
  const unreadOf = async (user) => {
    const r = await call('GET', `/v1/workspaces/${W}/unread`, user.token);
    assert.equal(r.status, 200, r.text);
    return r.json.channels;
  };
  const unreadIn = async (user, cid) => (await unreadOf(user)).find((c) => c.channel_id === cid);

  test('unread counts move as markers move; markers only move forward and are per user', async () => {
    // A fresh channel so that earlier tests' messages do not count.
    const cid = await createChannel(alice, W, 'markers', false);
    await joinChannel(bob, W, cid);
    const a1 = await postMessage(alice, W, cid, 'one');
    const a2 = await postMessage(alice, W, cid, 'two');
    await postMessage(bob, W, cid, 'mine does not count for me');
    await postMessage(alice, W, cid, 'a reply is not top-level', a1.id);
    const gone = await postMessage(alice, W, cid, 'deleted');
    await tombstone(W, gone.id);
    const a3 = await postMessage(alice, W, cid, 'three');

    assert.deepEqual(await unreadIn(bob, cid), { channel_id: cid, last_read_seq: 0, unread: 3 });
    assert.deepEqual(await unreadIn(alice, cid), { channel_id: cid, last_read_seq: 0, unread: 1 });

    const events = await sql(W, `SELECT count(*) FROM outbox WHERE workspace_id = ${sq(W)}`);
    let r = await read(bob, cid, { seq: a2.seq });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.last_read_seq, a2.seq);
    assert.deepEqual(await unreadIn(bob, cid), { channel_id: cid, last_read_seq: a2.seq, unread: 1 });
    // Alice's marker and counts are her own.
    assert.deepEqual(await unreadIn(alice, cid), { channel_id: cid, last_read_seq: 0, unread: 1 });

    // Backwards is not an error, and changes nothing.
    r = await read(bob, cid, { seq: a1.seq });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.last_read_seq, a2.seq);
    r = await read(bob, cid, { seq: 0 });
    assert.equal(r.json.last_read_seq, a2.seq);

    r = await read(bob, cid, { seq: a3.seq });
    assert.equal(r.json.last_read_seq, a3.seq);
    assert.equal((await unreadIn(bob, cid)).unread, 0);
    // Markers are per-user state: no events.
    assert.equal(await sql(W, `SELECT count(*) FROM outbox WHERE workspace_id = ${sq(W)}`), events);

    // A new message by someone else is unread again.
    await postMessage(alice, W, cid, 'four');
    assert.equal((await unreadIn(bob, cid)).unread, 1);
  });

  test('the marker may point at a reply, but not beyond the newest message', async () => {
    const cid = await createChannel(alice, W, 'bounds', false);
    await joinChannel(bob, W, cid);
    // An empty channel: only 0.
    assert.equal((await read(bob, cid, { seq: 0 })).status, 200);
    assertError(await read(bob, cid, { seq: 1 }), 400, 'invalid_request', /seq/);
    const top = await postMessage(alice, W, cid, 'top');
    const reply = await postMessage(alice, W, cid, 'reply', top.id);
    assert.equal((await read(bob, cid, { seq: reply.seq })).json.last_read_seq, reply.seq);
    assertError(await read(bob, cid, { seq: reply.seq + 1 }), 400, 'invalid_request', /seq/);
    assertError(await read(bob, cid, { seq: 2 ** 53 - 1 }), 400, 'invalid_request', /seq/);
  });

  test('invalid bodies are 400 naming seq', async () => {
    for (const body of [{}, { seq: -1 }, { seq: 1.5 }, { seq: '3' }, { seq: null }]) {
      assertError(await read(bob, general, body), 400, 'invalid_request', /seq/);
    }
    assertError(await read(bob, general, undefined), 400, 'invalid_json');
    assertError(await read(bob, 'bad.id', { seq: 0 }), 400, 'invalid_request', /channel id/);
  });

  test('outsiders, hidden channels and channels not joined', async () => {
    assert.equal((await read(null, general, { seq: 0 })).status, 401);
    assert.equal((await call('GET', `/v1/workspaces/${W}/unread`, null)).status, 401);
    assertError(await read(eve, general, { seq: 0 }), 404, 'not_found');
    assertError(await call('GET', `/v1/workspaces/${W}/unread`, eve.token), 404, 'not_found');
    assertError(await read(carol, secret, { seq: 0 }), 404, 'not_found');
    assertError(await read(bob, 'c_doesnotexist', { seq: 0 }), 404, 'not_found');
    // Carol may see #general but is not in it: she has no marker to move.
    assertError(await read(carol, general, { seq: 0 }), 409, 'not_in_channel');
    // Carol's unread list holds only her channels; bob's holds the private one.
    assert.deepEqual(await unreadOf(carol), []);
    assert.ok((await unreadOf(bob)).some((c) => c.channel_id === secret));
  });
});

describe('search', () => {
  const search = (user, query) => call('GET', `/v1/workspaces/${W}/search?${query}`, user?.token);
  let pubHit, privHit, goneHit, replyHit, otherWs;

  before(async () => {
    pubHit = await postMessage(alice, W, general, 'The quokka eats leaves at dawn');
    replyHit = await postMessage(bob, W, general, 'a quokka reply in a thread', pubHit.id);
    privHit = await postMessage(bob, W, secret, 'Secret quokka plans');
    goneHit = await postMessage(alice, W, general, 'quokka tombstone');
    await tombstone(W, goneHit.id);
    // Another workspace with the same word must not show up.
    const o = await createWorkspace(eve, `rx-other-${process.pid}`);
    otherWs = o.ws;
    await postMessage(eve, o.ws, o.general, 'foreign quokka');
  });

  test('finds words in visible channels only, never tombstones or other workspaces', async () => {
    const r = await search(bob, 'q=quokka');
    assert.equal(r.status, 200, r.text);
    const ids = r.json.results.map((x) => x.message.id).sort();
    assert.deepEqual(ids, [pubHit.id, replyHit.id, privHit.id].sort());
    const hit = r.json.results.find((x) => x.message.id === pubHit.id);
    assert.equal(hit.message.channel_id, general);
    assert.equal(hit.message.seq, pubHit.seq);
    assert.equal(hit.message.author_id, alice.id);
    assert.equal(hit.message.text, 'The quokka eats leaves at dawn');
    assert.match(hit.message.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(typeof hit.rank, 'number');
    assert.ok(hit.rank > 0);

    // Carol is not in the private channel.
    const c = await search(carol, 'q=quokka');
    assert.deepEqual(c.json.results.map((x) => x.message.id).sort(), [pubHit.id, replyHit.id].sort());
    // The other workspace's owner sees only their own.
    const e = await call('GET', `/v1/workspaces/${otherWs}/search?q=quokka`, eve.token);
    assert.equal(e.json.results.length, 1);
    assert.equal(e.json.results[0].message.text, 'foreign quokka');
  });

  test('words, phrases, case and ranking', async () => {
    let r = await search(bob, `q=${encodeURIComponent('QUOKKA leaves')}`);
    assert.deepEqual(r.json.results.map((x) => x.message.id), [pubHit.id]);
    r = await search(bob, `q=${encodeURIComponent('"secret quokka"')}`);
    assert.deepEqual(r.json.results.map((x) => x.message.id), [privHit.id]);
    r = await search(bob, 'q=nothingmatchesthis');
    assert.deepEqual(r.json, { results: [] });
    // Punctuation only: an empty query matches nothing rather than failing.
    r = await search(bob, `q=${encodeURIComponent('!!! ...')}`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.results, []);
    // Ranks are in descending order.
    r = await search(bob, 'q=quokka');
    const ranks = r.json.results.map((x) => x.rank);
    assert.deepEqual(ranks, [...ranks].sort((a, b) => b - a));
  });

  test('limit and channel_id', async () => {
    let r = await search(bob, 'q=quokka&limit=1');
    assert.equal(r.json.results.length, 1);
    r = await search(bob, `q=quokka&channel_id=${secret}`);
    assert.deepEqual(r.json.results.map((x) => x.message.id), [privHit.id]);
    r = await search(bob, `q=quokka&channel_id=${general}&limit=200`);
    assert.deepEqual(r.json.results.map((x) => x.message.id).sort(), [pubHit.id, replyHit.id].sort());
    // A channel the caller may not see is not found.
    assertError(await search(carol, `q=quokka&channel_id=${secret}`), 404, 'not_found');
    assertError(await search(bob, 'q=quokka&channel_id=c_doesnotexist'), 404, 'not_found');
  });

  test('invalid parameters are 400 naming them', async () => {
    for (const q of ['', 'q=', 'limit=5', `q=${'x'.repeat(257)}`, 'q=%FF', 'q=a%01b']) {
      assertError(await search(bob, q), 400, 'invalid_request', /\bq\b/);
    }
    assert.equal((await search(bob, `q=${'x'.repeat(256)}`)).status, 200);
    assert.equal((await search(bob, `q=${encodeURIComponent('ü'.repeat(256))}`)).status, 200);
    for (const l of ['0', '201', '-1', 'ten', '', '1.5']) {
      assertError(await search(bob, `q=quokka&limit=${l}`), 400, 'invalid_request', /limit/);
    }
    assertError(await search(bob, 'q=quokka&channel_id=bad.id'), 400, 'invalid_request', /channel_id/);
  });

  test('401 and 404 for outsiders', async () => {
    assert.equal((await search(null, 'q=quokka')).status, 401);
    const r = await search(eve, 'q=quokka');
    assertError(r, 404, 'not_found');
    assert.ok(!r.text.includes('quokka'));
    assertError(await call('GET', '/v1/workspaces/w_doesnotexist/search?q=quokka', bob.token), 404, 'not_found');
  });
});

test('the workspace sequence in the outbox is gap-free after all of this', async () => {
  const seqs = (await sql(W, `SELECT seq FROM outbox WHERE workspace_id = ${sq(W)} ORDER BY seq`)).split('\n').map(Number);
  assert.ok(seqs.length > 10);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1));
  assert.equal(Number(await sql(W, `SELECT seq FROM workspaces WHERE id = ${sq(W)}`)), seqs.length);
});
