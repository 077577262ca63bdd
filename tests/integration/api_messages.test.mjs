// Messages and threads (/v1/workspaces/{id}/channels/{cid}/messages...) against
// real shards: posting with idempotency, history paging both ways, threads,
// edit and delete (tombstones), access rules (outsiders, private channels),
// the gap-free outbox sequence under concurrent writers, durability of an
// acknowledged post across kill -9 of the node and a Postgres restart, and
// 503 for a workspace whose shard is down while the other shard keeps working.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { http, startWorld, waitFor } from '../lib/harness.mjs';
import { exchange } from '../lib/rawhttp.mjs';

let w;
// A fixture shared by most tests: an owner, a member, an outsider, a
// workspace with #general and a private channel the member is not in.
let owner, member, outsider, ws, priv;
before(async () => {
  // Write rate limits are tested elsewhere; here they would only throttle the writers.
  w = await startWorld({ workers: 2, config: { limits: { write_rate_per_s: 1000000, write_burst: 1000000 } } });
  [owner, member, outsider] = await Promise.all([signup(), signup(), signup()]);
  ws = await createWorkspace(owner);
  await addMember(ws, owner, member);
  priv = await createChannel(ws, owner, 'secret', true);
});
after(async () => {
  await w?.stop();
});

const req = (method, path, body, token, headers = {}) =>
  http(method, `${w.api}${path}`, { body, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers } });
const post = (path, body, token) => req('POST', path, body, token);
const get = (path, token) => req('GET', path, undefined, token);

function assertError(r, status, code) {
  assert.equal(r.status, status, r.text);
  if (code) assert.equal(r.json?.error?.code, code, r.text);
}

let n = 0;
async function signup() {
  const email = `msg${++n}.${process.pid}@example.com`;
  const r = await post('/v1/auth/signup', { email, password: 'correct horse battery', display_name: `User ${n}` });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token };
}

let wsn = 0;
async function createWorkspace(owner) {
  const slug = `m${process.pid}-${++wsn}`;
  const r = await post('/v1/workspaces', { name: `WS ${wsn}`, slug }, owner.token);
  assert.equal(r.status, 201, r.text);
  const id = r.json.workspace.id;
  const ch = await get(`/v1/workspaces/${id}/channels`, owner.token);
  assert.equal(ch.status, 200, ch.text);
  const general = ch.json.channels.find((c) => c.name === 'general');
  assert.ok(general, ch.text);
  const shard = Number((await w.postgres[0].psql(`SELECT shard FROM dir_workspaces WHERE workspace_id = '${id}'`)).trim());
  return { id, general: general.id, shard, pg: w.postgres[shard] };
}

async function addMember(ws, owner, user, role) {
  const r = await post(`/v1/workspaces/${ws.id}/members`, { user_id: user.id, ...(role ? { role } : {}) }, owner.token);
  assert.equal(r.status, 201, r.text);
  const j = await post(`/v1/workspaces/${ws.id}/join`, {}, user.token);
  assert.equal(j.status, 200, j.text);
}

async function createChannel(ws, owner, name, priv) {
  const r = await post(`/v1/workspaces/${ws.id}/channels`, { name, private: priv }, owner.token);
  assert.equal(r.status, 201, r.text);
  return r.json.channel.id;
}

const msgs = (ws, cid) => `/v1/workspaces/${ws.id}/channels/${cid}/messages`;

describe('post', () => {
  test('creates a message with the next workspace seq and an outbox event', async () => {
    const r = await post(msgs(ws, ws.general), { text: 'hello, world' }, member.token);
    assert.equal(r.status, 201, r.text);
    const m = r.json.message;
    assert.match(m.id, /^m_[a-z2-7]{20}$/);
    assert.equal(m.channel_id, ws.general);
    assert.equal(m.author_id, member.id);
    assert.equal(m.text, 'hello, world');
    assert.equal(m.parent_id, null);
    assert.equal(m.client_msg_id, null);
    assert.equal(m.deleted, false);
    assert.equal(m.reply_count, 0);
    assert.match(m.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    // Bodies are encrypted at rest (docs/encryption.md): the row and the
    // event hold the same ciphertext, never the text.
    const row = (await ws.pg.psql(`SELECT seq, body FROM messages WHERE workspace_id = '${ws.id}' AND id = '${m.id}'`)).trim();
    const [rowSeq, body] = row.split('|');
    assert.equal(rowSeq, String(m.seq));
    assert.match(body, /^e1\.[A-Za-z0-9_-]+$/);
    const ev = (await ws.pg.psql(`SELECT type, channel_id, payload->>'id', payload->>'text' FROM outbox WHERE workspace_id = '${ws.id}' AND seq = ${m.seq}`)).trim();
    assert.equal(ev, `message.created|${ws.general}|${m.id}|${body}`);
    assert.equal((await ws.pg.psql(`SELECT seq FROM workspaces WHERE id = '${ws.id}'`)).trim(), String(m.seq));
    // Nothing of it on the other shard.
    const other = w.postgres[1 - ws.shard];
    assert.equal((await other.psql(`SELECT count(*) FROM messages WHERE workspace_id = '${ws.id}'`)).trim(), '0');
  });

  test('text is counted in characters: 40,000 multi-byte characters pass, 40,001 do not', async () => {
    const ok = await post(msgs(ws, ws.general), { text: 'é'.repeat(40000) }, member.token);
    assert.equal(ok.status, 201, ok.text.slice(0, 200));
    assert.equal(ok.json.message.text.length, 40000);
    assertError(await post(msgs(ws, ws.general), { text: 'x'.repeat(40001) }, member.token), 400, 'message_too_long');
  });

  test('a body over 1 MiB is refused with 413', async () => {
    // Raw: the server answers as soon as Content-Length says too much and
    // closes, so a client still writing the body may see EPIPE instead of
    // the answer. Only the head and a little of the body are sent here.
    const head = [`POST ${msgs(ws, ws.general)} HTTP/1.1`, `Host: 127.0.0.1:${w.port}`, `Authorization: Bearer ${member.token}`, 'Content-Type: application/json', 'Content-Length: 1100012', '', ''].join('\r\n');
    const r = await exchange(w.port, [head + '{"text":"yyyy'], { timeoutMs: 5000 });
    assert.match(r.data.toString(), /^HTTP\/1\.1 413 /);
    assert.match(r.data.toString(), /"code":"body_too_large"/);
  });

  const bad = [
    ['no body', undefined, 'invalid_json'],
    ['not JSON', '{"text":', 'invalid_json'],
    ['missing text', { client_msg_id: 'a' }, 'invalid_request'],
    ['empty text', { text: '' }, 'invalid_request'],
    ['text not a string', { text: 5 }, 'invalid_request'],
    ['bad client_msg_id', { text: 'x', client_msg_id: 'has space' }, 'invalid_request'],
    ['long client_msg_id', { text: 'x', client_msg_id: 'a'.repeat(65) }, 'invalid_request'],
    ['bad parent_id', { text: 'x', parent_id: 'no/slash' }, 'invalid_request'],
  ];
  for (const [name, body, code] of bad) {
    test(`400 for ${name}`, async () => {
      const headers = { authorization: `Bearer ${member.token}`, 'content-type': 'application/json' };
      const r = await http('POST', `${w.api}${msgs(ws, ws.general)}`, { body, headers });
      assertError(r, 400, code);
    });
  }

  test('401 without a valid token', async () => {
    assertError(await post(msgs(ws, ws.general), { text: 'x' }), 401);
    assertError(await post(msgs(ws, ws.general), { text: 'x' }, 'not-a-token'), 401);
  });

  test('404 for outsiders, unknown workspaces and channels, and private channels of others', async () => {
    assertError(await post(msgs(ws, ws.general), { text: 'x' }, outsider.token), 404, 'not_found');
    assertError(await post(msgs({ id: 'w_nosuchworkspace' }, ws.general), { text: 'x' }, member.token), 404, 'not_found');
    assertError(await post(msgs(ws, 'c_nosuchchannel'), { text: 'x' }, member.token), 404, 'not_found');
    assertError(await post(msgs(ws, priv), { text: 'x' }, member.token), 404, 'not_found');
    // The owner is in the private channel and may post there.
    assert.equal((await post(msgs(ws, priv), { text: 'private' }, owner.token)).status, 201);
    // No error body says more than "not found".
    const r = await post(msgs(ws, priv), { text: 'x' }, outsider.token);
    assert.doesNotMatch(r.text, /secret|private/);
  });

  test('an archived channel refuses posts', async () => {
    const cid = await createChannel(ws, owner, `arch-${process.pid}`, false);
    const a = await post(`/v1/workspaces/${ws.id}/channels/${cid}/archive`, {}, owner.token);
    assert.equal(a.status, 200, a.text);
    assertError(await post(msgs(ws, cid), { text: 'x' }, owner.token), 403, 'channel_archived');
  });
});

describe('idempotency', () => {
  test('a repeated client_msg_id returns the first message with 200', async () => {
    const body = { text: 'once', client_msg_id: `c-${process.pid}-1` };
    const a = await post(msgs(ws, ws.general), body, member.token);
    assert.equal(a.status, 201, a.text);
    const b = await post(msgs(ws, ws.general), { ...body, text: 'twice?' }, member.token);
    assert.equal(b.status, 200, b.text);
    assert.deepEqual(b.json.message, a.json.message);
    // Another author may use the same client_msg_id.
    const c = await post(msgs(ws, ws.general), body, owner.token);
    assert.equal(c.status, 201, c.text);
    assert.notEqual(c.json.message.id, a.json.message.id);
  });

  test('concurrent retries never duplicate and burn no sequence number', async () => {
    const cmid = `c-${process.pid}-race`;
    const rs = await Promise.all(Array.from({ length: 12 }, () => post(msgs(ws, ws.general), { text: 'race', client_msg_id: cmid }, member.token)));
    assert.equal(rs.filter((r) => r.status === 201).length, 1, rs.map((r) => `${r.status} ${r.text}`).join('\n'));
    assert.equal(rs.filter((r) => r.status === 200).length, 11);
    assert.equal(new Set(rs.map((r) => r.json.message.id)).size, 1);
    const count = (await ws.pg.psql(`SELECT count(*) FROM messages WHERE workspace_id = '${ws.id}' AND client_msg_id = '${cmid}'`)).trim();
    assert.equal(count, '1');
    await assertGapFree(ws);
  });

  test('a client_msg_id is looked up through its own index, never by reading the workspace', async () => {
    // Every other index of messages leads with workspace_id: a generic plan
    // costed on a nearly empty table once picked the primary key and read
    // the whole workspace per post. Only messages_client_msg can serve the
    // lookup's expression, so each post with a client_msg_id probes it.
    const probes = async () => Number((await ws.pg.psql(`SELECT coalesce(sum(idx_scan), -1) FROM pg_stat_user_indexes WHERE indexrelname = 'messages_client_msg'`)).trim());
    const start = await probes();
    assert.ok(start >= 0, 'messages_client_msg exists');
    const bodies = Array.from({ length: 5 }, (_, i) => ({ text: `probe ${i}`, client_msg_id: `c-${process.pid}-probe-${i}` }));
    for (const status of [201, 200]) {
      const rs = await Promise.all(bodies.map((b) => post(msgs(ws, ws.general), b, member.token)));
      for (const r of rs) assert.equal(r.status, status, r.text);
    }
    // A backend reports its counters once it is idle (within ~10 s).
    await waitFor(async () => (await probes()) - start >= 10, { timeoutMs: 30000, message: 'ten probes of messages_client_msg' });
  });
});

async function assertGapFree(space) {
  const row = (await space.pg.psql(`SELECT count(*), count(DISTINCT seq), min(seq), max(seq), (SELECT seq FROM workspaces WHERE id = '${space.id}') FROM outbox WHERE workspace_id = '${space.id}'`)).trim();
  const [count, distinct, min, max, last] = row.split('|').map(Number);
  assert.equal(count, distinct, row);
  assert.equal(min, 1, row);
  assert.equal(max, count, row);
  assert.equal(last, max, row);
  return count;
}

describe('history', () => {
  let space, ids;
  before(async () => {
    space = await createWorkspace(owner);
    ids = [];
    for (let i = 0; i < 120; i += 20) {
      const batch = await Promise.all(Array.from({ length: 20 }, (_, k) => post(msgs(space, space.general), { text: `m${i + k}`, client_msg_id: `h${i + k}` }, owner.token)));
      for (const r of batch) assert.equal(r.status, 201, r.text);
    }
    const all = (await space.pg.psql(`SELECT id FROM messages WHERE workspace_id = '${space.id}' ORDER BY seq`)).trim().split('\n');
    ids = all;
    assert.equal(ids.length, 120);
  });

  test('default page: the newest 50, newest first', async () => {
    const r = await get(msgs(space, space.general), owner.token);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.messages.length, 50);
    assert.deepEqual(r.json.messages.map((m) => m.id), ids.slice(-50).reverse());
    assert.equal(r.json.has_more, true);
    assert.equal(r.json.next_before, r.json.messages[49].seq);
    assert.equal(r.json.next_after, r.json.messages[0].seq);
  });

  test('walking back with before visits every message once', async () => {
    const seen = [];
    let cursor = null;
    for (let page = 0; page < 10; page++) {
      const r = await get(`${msgs(space, space.general)}?limit=33${cursor ? `&before=${cursor}` : ''}`, owner.token);
      assert.equal(r.status, 200, r.text);
      seen.push(...r.json.messages.map((m) => m.id));
      if (!r.json.has_more) break;
      cursor = r.json.next_before;
    }
    assert.deepEqual(seen, [...ids].reverse());
  });

  test('walking forward with after visits every message once', async () => {
    const seen = [];
    let cursor = 0;
    for (let page = 0; page < 10; page++) {
      const r = await get(`${msgs(space, space.general)}?limit=40&after=${cursor}`, owner.token);
      assert.equal(r.status, 200, r.text);
      // Each page is newest first; pages go forward in time.
      seen.push(...r.json.messages.map((m) => m.id).reverse());
      cursor = r.json.next_after;
      if (!r.json.has_more) break;
    }
    assert.deepEqual(seen, ids);
    const end = await get(`${msgs(space, space.general)}?after=${cursor}`, owner.token);
    assert.deepEqual(end.json.messages, []);
    assert.equal(end.json.next_after, cursor);
    assert.equal(end.json.has_more, false);
  });

  const badQueries = [
    ['limit=0', 'limit'],
    ['limit=201', 'limit'],
    ['limit=ten', 'limit'],
    ['before=-1', 'before'],
    ['before=abc', 'before'],
    ['after=1.5', 'after'],
    ['before=5&after=1', 'before or after'],
  ];
  for (const [q, name] of badQueries) {
    test(`400 naming the parameter for ${q}`, async () => {
      const r = await get(`${msgs(space, space.general)}?${q}`, owner.token);
      assertError(r, 400, 'invalid_request');
      assert.ok(r.json.error.message.includes(name), r.text);
    });
  }

  test('outsiders and non-members of a private channel get 404; an empty channel is an empty page', async () => {
    assertError(await get(msgs(space, space.general), outsider.token), 404, 'not_found');
    assertError(await get(msgs(ws, priv), member.token), 404, 'not_found');
    assertError(await get(msgs(ws, priv)), 401);
    const empty = await createChannel(space, owner, 'empty', false);
    const r = await get(msgs(space, empty), owner.token);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { messages: [], next_before: null, next_after: null, has_more: false });
  });
});

describe('threads', () => {
  test('replies, reply counts, paging and the rules for parents', async () => {
    const p = await post(msgs(ws, ws.general), { text: 'parent' }, owner.token);
    assert.equal(p.status, 201);
    const parent = p.json.message;
    const replies = [];
    for (let i = 0; i < 5; i++) {
      const r = await post(msgs(ws, ws.general), { text: `reply ${i}`, parent_id: parent.id }, i % 2 ? owner.token : member.token);
      assert.equal(r.status, 201, r.text);
      assert.equal(r.json.message.parent_id, parent.id);
      replies.push(r.json.message);
    }
    // Replies stay out of the channel's history; the parent carries the count.
    const h = await get(`${msgs(ws, ws.general)}?limit=200`, member.token);
    assert.ok(!h.json.messages.some((m) => m.parent_id), 'replies are not top-level');
    const inHistory = h.json.messages.find((m) => m.id === parent.id);
    assert.equal(inHistory.reply_count, 5);
    assert.ok(inHistory.last_reply_at);

    const l = await get(`${msgs(ws, ws.general)}/${parent.id}/replies`, member.token);
    assert.equal(l.status, 200, l.text);
    assert.equal(l.json.reply_count, 5);
    assert.deepEqual(l.json.replies.map((m) => m.id), replies.map((m) => m.id));
    const page = await get(`${msgs(ws, ws.general)}/${parent.id}/replies?limit=2&after=${replies[1].seq}`, member.token);
    assert.deepEqual(page.json.replies.map((m) => m.id), [replies[2].id, replies[3].id]);
    assert.equal(page.json.has_more, true);
    assert.equal(page.json.next_after, replies[3].seq);

    // A reply cannot be a parent; a parent must be in the same channel.
    assertError(await post(msgs(ws, ws.general), { text: 'x', parent_id: replies[0].id }, member.token), 400, 'invalid_parent');
    assertError(await post(msgs(ws, ws.general), { text: 'x', parent_id: 'm_nosuchmessage' }, member.token), 400, 'invalid_parent');
    const other = await createChannel(ws, owner, `other-${process.pid}`, false);
    assertError(await post(msgs(ws, other), { text: 'x', parent_id: parent.id }, member.token), 400, 'invalid_parent');

    assertError(await get(`${msgs(ws, ws.general)}/m_nosuchmessage/replies`, member.token), 404, 'not_found');
    assertError(await get(`${msgs(ws, ws.general)}/${parent.id}/replies`, outsider.token), 404, 'not_found');
    assertError(await get(`${msgs(ws, ws.general)}/${parent.id}/replies?limit=500`, member.token), 400, 'invalid_request');
    const pp = await post(msgs(ws, priv), { text: 'private parent' }, owner.token);
    assertError(await get(`${msgs(ws, priv)}/${pp.json.message.id}/replies`, member.token), 404, 'not_found');
    assertError(await post(msgs(ws, priv), { text: 'x', parent_id: pp.json.message.id }, member.token), 404, 'not_found');
  });
});

describe('edit and delete', () => {
  test('the author edits; others get 403, outsiders 404', async () => {
    const m = (await post(msgs(ws, ws.general), { text: 'draft' }, member.token)).json.message;
    const path = `${msgs(ws, ws.general)}/${m.id}`;
    const e = await req('PATCH', path, { text: 'final' }, member.token);
    assert.equal(e.status, 200, e.text);
    assert.equal(e.json.message.text, 'final');
    assert.ok(e.json.message.edited_at);
    assert.equal(e.json.message.seq, m.seq);
    assertError(await req('PATCH', path, { text: 'hijack' }, owner.token), 403, 'forbidden');
    assertError(await req('PATCH', path, { text: 'x' }, outsider.token), 404, 'not_found');
    assertError(await req('PATCH', path, { text: 'x'.repeat(40001) }, member.token), 400, 'message_too_long');
    assertError(await req('PATCH', path, {}, member.token), 400, 'invalid_request');
    assertError(await req('PATCH', `${msgs(ws, ws.general)}/m_nosuchmessage`, { text: 'x' }, member.token), 404, 'not_found');
    assertError(await req('PATCH', path, { text: 'x' }), 401);
    const ev = (await ws.pg.psql(`SELECT payload->>'text' FROM outbox WHERE workspace_id = '${ws.id}' AND type = 'message.updated' AND payload->>'id' = '${m.id}'`)).trim();
    assert.match(ev, /^e1\./, 'the edit is encrypted too');
    assert.equal((await req('GET', `${msgs(ws, ws.general)}?limit=200`, undefined, member.token)).json.messages.find((x) => x.id === m.id).text, 'final');
  });

  test('delete leaves a tombstone; authors and admins may delete, other members may not', async () => {
    const m = (await post(msgs(ws, ws.general), { text: 'to be deleted' }, member.token)).json.message;
    const path = `${msgs(ws, ws.general)}/${m.id}`;
    const admin = await signup();
    await addMember(ws, owner, admin, 'admin');
    const plain = await signup();
    await addMember(ws, owner, plain);
    assertError(await req('DELETE', path, undefined, plain.token), 403, 'forbidden');
    assertError(await req('DELETE', path, undefined, outsider.token), 404, 'not_found');
    assertError(await req('DELETE', path), 401);
    const d = await req('DELETE', path, undefined, member.token);
    assert.equal(d.status, 204, d.text);
    // Deleting a tombstone again changes nothing.
    assert.equal((await req('DELETE', path, undefined, member.token)).status, 204);
    assertError(await req('PATCH', path, { text: 'revive' }, member.token), 404, 'not_found');
    const h = await get(`${msgs(ws, ws.general)}?limit=200`, member.token);
    const t = h.json.messages.find((x) => x.id === m.id);
    assert.equal(t.deleted, true);
    assert.equal('text' in t, false);
    assert.equal((await ws.pg.psql(`SELECT body = '' AND deleted_at IS NOT NULL FROM messages WHERE workspace_id = '${ws.id}' AND id = '${m.id}'`)).trim(), 't');
    assert.equal((await ws.pg.psql(`SELECT count(*) FROM outbox WHERE workspace_id = '${ws.id}' AND type = 'message.deleted' AND payload->>'id' = '${m.id}'`)).trim(), '1');
    // An admin deletes someone else's message; so does the owner.
    const m2 = (await post(msgs(ws, ws.general), { text: 'moderate me' }, member.token)).json.message;
    assert.equal((await req('DELETE', `${msgs(ws, ws.general)}/${m2.id}`, undefined, admin.token)).status, 204);
    const m3 = (await post(msgs(ws, ws.general), { text: 'and me' }, member.token)).json.message;
    assert.equal((await req('DELETE', `${msgs(ws, ws.general)}/${m3.id}`, undefined, owner.token)).status, 204);
    await assertGapFree(ws);
  });
});

describe('group commit', () => {
  test('a statement that fails inside a group rolls back only itself: the others are retried and commit', async () => {
    const space = await createWorkspace(owner);
    // A constraint only this test knows: its statement fails in the middle of a group.
    // Bodies are ciphertext in the database: the poison is the client_msg_id.
    await space.pg.psql("ALTER TABLE messages ADD CONSTRAINT test_no_poison CHECK (client_msg_id IS DISTINCT FROM 'poison')");
    try {
      const retries = async () => {
        const m = await http('GET', `${w.api}/metrics`);
        return [...m.text.matchAll(/^meridian_batch_retries_total\{[^}]*\} (\S+)$/gm)].reduce((a, x) => a + Number(x[1]), 0);
      };
      const before = await retries();
      let bad = 0;
      for (let round = 0; round < 5; round++) {
        const rs = await Promise.all(
          Array.from({ length: 40 }, (_, i) =>
            post(msgs(space, space.general), i === 20 ? { text: 'bad', client_msg_id: 'poison' } : { text: `good ${round}.${i}` }, owner.token),
          ),
        );
        rs.forEach((r, i) => {
          if (i === 20) {
            assertError(r, 500, 'internal');
            assert.doesNotMatch(r.text, /poison|test_no_poison/);
            bad++;
          } else assert.equal(r.status, 201, r.text);
        });
      }
      assert.equal(bad, 5);
      assert.ok((await retries()) > before, 'the good statements of a failed group were retried');
      assert.equal((await space.pg.psql(`SELECT count(*) FROM messages WHERE workspace_id = '${space.id}'`)).trim(), '195');
      await assertGapFree(space);
    } finally {
      await space.pg.psql('ALTER TABLE messages DROP CONSTRAINT test_no_poison');
    }
  });
});

describe('outbox sequence', () => {
  test('20 concurrent writers x 25 posts: seq 1..N with no gap and no duplicate', async () => {
    const space = await createWorkspace(owner);
    const writers = await Promise.all(Array.from({ length: 4 }, () => signup()));
    for (const u of writers) await addMember(space, owner, u);
    const before = await assertGapFree(space);
    const statuses = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const u = writers[i % writers.length];
        const out = [];
        for (let k = 0; k < 25; k++) {
          // Every fifth post is a reply and every seventh a retried idempotent post.
          const body = { text: `w${i} p${k}`, client_msg_id: `w${i}-${k}` };
          const r = await post(msgs(space, space.general), body, u.token);
          out.push(r.status);
          if (k % 7 === 3) out.push((await post(msgs(space, space.general), body, u.token)).status === 200 ? 'dup-ok' : 'dup-bad');
        }
        return out;
      }),
    );
    const flat = statuses.flat();
    assert.equal(flat.filter((s) => s === 201).length, 500, flat.join(','));
    assert.ok(!flat.includes('dup-bad'));
    const count = await assertGapFree(space);
    assert.equal(count, before + 500);
    assert.equal((await space.pg.psql(`SELECT count(*) FROM messages WHERE workspace_id = '${space.id}'`)).trim(), '500');
    // Message seqs are the seqs of their creation events.
    assert.equal(
      (await space.pg.psql(`SELECT count(*) FROM messages m JOIN outbox o ON o.workspace_id = m.workspace_id AND o.seq = m.seq AND o.type = 'message.created' AND o.payload->>'id' = m.id WHERE m.workspace_id = '${space.id}'`)).trim(),
      '500',
    );
  });
});

describe('failures', () => {
  test('an acknowledged post survives kill -9 of the node and a Postgres restart', async () => {
    const acked = await Promise.all(Array.from({ length: 30 }, (_, i) => post(msgs(ws, ws.general), { text: `durable ${i}` }, member.token)));
    for (const r of acked) assert.equal(r.status, 201, r.text);
    await w.region.kill('SIGKILL');
    await w.region.waitExit?.();
    await w.postgres[ws.shard].stop();
    await w.postgres[ws.shard].start();
    await w.region.start();
    const idList = acked.map((r) => `'${r.json.message.id}'`).join(',');
    assert.equal((await ws.pg.psql(`SELECT count(*) FROM messages WHERE workspace_id = '${ws.id}' AND id IN (${idList})`)).trim(), '30');
    const h = await waitFor(async () => {
      const r = await get(`${msgs(ws, ws.general)}?limit=200`, member.token);
      return r.status === 200 && r;
    });
    const seen = new Set(h.json.messages.map((m) => m.id));
    for (const r of acked) assert.ok(seen.has(r.json.message.id));
    await assertGapFree(ws);
  });

  test("a post while the workspace's shard is down gets 503 with Retry-After; the other shard keeps working", async () => {
    // A workspace on each shard (placement follows the slug's hash).
    const spaces = [];
    while (!spaces[0] || !spaces[1]) {
      const s = await createWorkspace(owner);
      spaces[s.shard] = spaces[s.shard] || s;
    }
    const [down, up] = ws.shard === 0 ? [spaces[0], spaces[1]] : [spaces[1], spaces[0]];
    // Both are known to the node's workers before the shard goes.
    for (let i = 0; i < 4; i++) for (const s of spaces) assert.equal((await post(msgs(s, s.general), { text: 'warm' }, owner.token)).status, 201);
    await down.pg.stop();
    try {
      const r = await waitFor(async () => {
        const x = await post(msgs(down, down.general), { text: 'lost?' }, owner.token);
        return x.status === 503 && x;
      });
      assertError(r, 503, 'shard_unavailable');
      assert.ok(r.headers['retry-after'], JSON.stringify(r.headers));
      for (let i = 0; i < 4; i++) {
        const ok = await post(msgs(up, up.general), { text: 'still here' }, owner.token);
        assert.equal(ok.status, 201, ok.text);
        assert.equal((await get(msgs(up, up.general), owner.token)).status, 200);
      }
    } finally {
      await down.pg.start();
    }
    await waitFor(async () => (await post(msgs(down, down.general), { text: 'back' }, owner.token)).status === 201, { timeoutMs: 20000 });
    await assertGapFree(down);
  });
});
