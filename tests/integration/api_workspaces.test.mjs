// Workspaces, members and channels (/v1/workspaces/...) against real shards:
// every endpoint's success and error answers, authorization (401 without a
// token, 404 for outsiders everywhere, private channels included, 403 for a
// role too low), the per-workspace outbox sequence (1..N, no gap, no
// duplicate, also under concurrent writers), placement over both shards with
// each shard holding only its own workspaces' rows, and a stopped shard that
// fails only its own workspaces, with 503.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { http, startWorld, waitFor } from '../lib/harness.mjs';

let w;
before(async () => {
  // Rate limits have their own test: here they would only slow the writes down.
  w = await startWorld({ workers: 2, config: { limits: { write_rate_per_s: 100000, write_burst: 100000 } } });
  await users();
});
after(async () => {
  await w?.stop();
});

const call = (user, method, path, body) =>
  http(method, `${w.api}/v1${path}`, { body, headers: user ? { authorization: `Bearer ${user.token}` } : {} });

let n = 0;
async function signup() {
  const email = `ws${++n}.${process.pid}@example.com`;
  const r = await call(null, 'POST', '/auth/signup', { email, password: 'correct horse battery', display_name: `User ${n}` });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token };
}

let slugs = 0;
const slug = () => `team-${process.pid}-${++slugs}`;

async function createWorkspace(user, body = {}) {
  const r = await call(user, 'POST', '/workspaces', { name: 'Team', slug: slug(), ...body });
  assert.equal(r.status, 201, r.text);
  return r.json.workspace;
}

function assertError(r, status, code, field) {
  assert.equal(r.status, status, r.text);
  assert.equal(r.json?.error?.code, code, r.text);
  assert.ok(r.json.error.message.length > 0);
  if (field) assert.match(r.json.error.message, new RegExp(field), r.text);
}

// Adds user to ws as an active member with role (invited by owner, then joined).
async function addMember(owner, ws, user, role = 'member') {
  let r = await call(owner, 'POST', `/workspaces/${ws.id}/members`, { user_id: user.id, role });
  assert.equal(r.status, 201, r.text);
  r = await call(user, 'POST', `/workspaces/${ws.id}/join`);
  assert.equal(r.status, 200, r.text);
}

async function shardOf(wsId) {
  const s = (await w.postgres[0].psql(`SELECT shard FROM dir_workspaces WHERE workspace_id = '${wsId}'`)).trim();
  assert.match(s, /^[01]$/, `no directory row for ${wsId}`);
  return Number(s);
}

// The outbox sequence of a workspace: 1..N with N = workspaces.seq.
async function assertGapFree(wsId) {
  const pg = w.postgres[await shardOf(wsId)];
  const seqs = (await pg.psql(`SELECT seq FROM outbox WHERE workspace_id = '${wsId}' ORDER BY seq`)).trim().split('\n').map(Number);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1));
  const last = Number((await pg.psql(`SELECT seq FROM workspaces WHERE id = '${wsId}'`)).trim());
  assert.equal(last, seqs.length);
  return seqs.length;
}

async function outboxTypes(wsId) {
  const pg = w.postgres[await shardOf(wsId)];
  return (await pg.psql(`SELECT type FROM outbox WHERE workspace_id = '${wsId}' ORDER BY seq`)).trim().split('\n');
}

let alice, bob, carol, dave, mallory;
let usersReady;
const users = () => (usersReady ||= Promise.all([signup(), signup(), signup(), signup(), signup()]).then((u) => ([alice, bob, carol, dave, mallory] = u)));

describe('create', () => {
  test('creates the workspace with its owner, #general and a first event', async () => {
    const s = slug();
    const r = await call(alice, 'POST', '/workspaces', { name: 'Acme Ltd', slug: s });
    assert.equal(r.status, 201, r.text);
    const ws = r.json.workspace;
    assert.match(ws.id, /^w_[a-z2-7]{20}$/);
    assert.equal(ws.slug, s);
    assert.equal(ws.name, 'Acme Ltd');
    assert.equal(ws.created_by, alice.id);
    assert.equal(ws.role, 'owner');
    assert.match(ws.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const shard = await shardOf(ws.id);
    const pg = w.postgres[shard];
    assert.equal((await pg.psql(`SELECT role || ',' || status FROM members WHERE workspace_id = '${ws.id}'`)).trim(), 'owner,active');
    assert.equal((await pg.psql(`SELECT name || ',' || private FROM channels WHERE workspace_id = '${ws.id}'`)).trim(), 'general,false');
    assert.equal((await pg.psql(`SELECT count(*) FROM channel_members WHERE workspace_id = '${ws.id}' AND user_id = '${alice.id}'`)).trim(), '1');
    const ev = JSON.parse((await pg.psql(`SELECT payload FROM outbox WHERE workspace_id = '${ws.id}' AND seq = 1 AND type = 'workspace.created'`)).trim());
    assert.equal(ev.workspace_id, ws.id);
    assert.equal(ev.created_by, alice.id);
    assert.equal(ev.name, undefined, 'payloads hold ids only');
    assert.equal(await assertGapFree(ws.id), 1);
    // The slug claim lives on the workspace's shard only; every shard's directory knows the placement.
    assert.equal((await pg.psql(`SELECT count(*) FROM claims WHERE kind = 'slug' AND owner_id = '${ws.id}'`)).trim(), '1');
    await waitFor(async () => {
      for (const p of w.postgres) if ((await p.psql(`SELECT shard FROM dir_workspaces WHERE workspace_id = '${ws.id}'`)).trim() !== String(shard)) return false;
      return true;
    });
    // The slug is taken, for anyone.
    assertError(await call(bob, 'POST', '/workspaces', { name: 'Other', slug: s }), 409, 'slug_taken');
  });

  test('refuses bad input, naming the field', async () => {
    assertError(await call(alice, 'POST', '/workspaces', { slug: slug() }), 400, 'invalid_request', 'name');
    assertError(await call(alice, 'POST', '/workspaces', { name: '', slug: slug() }), 400, 'invalid_request', 'name');
    assertError(await call(alice, 'POST', '/workspaces', { name: 'x'.repeat(81), slug: slug() }), 400, 'invalid_request', 'name');
    assertError(await call(alice, 'POST', '/workspaces', { name: 'ok', slug: 42 }), 400, 'invalid_request', 'slug');
    for (const bad of ['ab', 'Upper-case', '-lead', 'trail-', 'sp ace', 'under_score', 'a'.repeat(41)])
      assertError(await call(alice, 'POST', '/workspaces', { name: 'ok', slug: bad }), 400, 'invalid_request', 'slug');
    assertError(await http('POST', `${w.api}/v1/workspaces`, { body: '{', headers: { authorization: `Bearer ${alice.token}`, 'content-type': 'application/json' } }), 400, 'invalid_json');
    // A valid edge case: 3 characters, digits and inner dashes.
    const r = await call(alice, 'POST', '/workspaces', { name: 'x'.repeat(80), slug: `a-${slugs++ % 10}` });
    assert.ok(r.status === 201 || r.status === 409, r.text);
  });
});

describe('read and update', () => {
  test('get, patch, list mine', async () => {
    const ws = await createWorkspace(alice, { name: 'Before' });
    await addMember(alice, ws, bob);
    await addMember(alice, ws, carol, 'admin');

    let r = await call(bob, 'GET', `/workspaces/${ws.id}`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual({ ...r.json.workspace }, { ...ws, role: 'member' });

    assertError(await call(bob, 'PATCH', `/workspaces/${ws.id}`, { name: 'By member' }), 403, 'forbidden');
    assertError(await call(carol, 'PATCH', `/workspaces/${ws.id}`, {}), 400, 'invalid_request', 'name');
    assertError(await call(carol, 'PATCH', `/workspaces/${ws.id}`, { name: 'y'.repeat(81) }), 400, 'invalid_request', 'name');
    r = await call(carol, 'PATCH', `/workspaces/${ws.id}`, { name: 'After' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.workspace.name, 'After');
    assert.equal(r.json.workspace.role, 'admin');
    r = await call(alice, 'PATCH', `/workspaces/${ws.id}`, { name: 'After 2' });
    assert.equal(r.status, 200, r.text);
    assert.equal((await call(bob, 'GET', `/workspaces/${ws.id}`)).json.workspace.name, 'After 2');

    r = await call(bob, 'GET', '/workspaces');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.partial, false);
    const mine = r.json.workspaces.find((x) => x.id === ws.id);
    assert.equal(mine.role, 'member');
    assert.equal(mine.name, 'After 2');
    r = await call(mallory, 'GET', '/workspaces');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.workspaces, []);

    const types = await outboxTypes(ws.id);
    assert.deepEqual(types.filter((t) => t === 'workspace.updated').length, 2);
    await assertGapFree(ws.id);
  });

  test('bad and unknown ids', async () => {
    assertError(await call(alice, 'GET', '/workspaces/w_doesnotexist'), 404, 'not_found');
    assertError(await call(alice, 'GET', `/workspaces/${'x'.repeat(65)}`), 400, 'invalid_request', 'workspace id');
    assertError(await call(alice, 'GET', '/workspaces/bad%20id'), 400, 'invalid_request', 'workspace id');
  });
});

describe('members', () => {
  test('invite, join, list, leave, remove', async () => {
    const ws = await createWorkspace(alice);
    // Invite: validation and roles.
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/members`, {}), 400, 'invalid_request', 'user_id');
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/members`, { user_id: 'bad id' }), 400, 'invalid_request', 'user_id');
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/members`, { user_id: bob.id, role: 'king' }), 400, 'invalid_request', 'role');
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/members`, { user_id: 'u_nobody' }), 404, 'user_not_found');
    let r = await call(alice, 'POST', `/workspaces/${ws.id}/members`, { user_id: bob.id });
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(r.json.member, { user_id: bob.id, role: 'member', status: 'invited' });
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/members`, { user_id: bob.id }), 409, 'already_member');

    // Invited is not a member yet: nothing is visible, but join works.
    assertError(await call(bob, 'GET', `/workspaces/${ws.id}`), 404, 'not_found');
    assertError(await call(bob, 'GET', `/workspaces/${ws.id}/channels`), 404, 'not_found');
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/join`), 404, 'not_found');
    r = await call(bob, 'POST', `/workspaces/${ws.id}/join`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.member, { user_id: bob.id, role: 'member', status: 'active' });
    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/join`), 409, 'already_member');
    assert.equal((await call(bob, 'GET', `/workspaces/${ws.id}`)).status, 200);

    // A member cannot invite; an admin can invite members only; an owner grants any role.
    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/members`, { user_id: carol.id }), 403, 'forbidden');
    await addMember(alice, ws, carol, 'admin');
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/members`, { user_id: dave.id, role: 'admin' }), 403, 'forbidden');
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/members`, { user_id: dave.id, role: 'compliance_admin' }), 403, 'forbidden');
    r = await call(carol, 'POST', `/workspaces/${ws.id}/members`, { user_id: dave.id, role: 'member' });
    assert.equal(r.status, 201, r.text);

    // List: active members only (dave is still invited).
    r = await call(bob, 'GET', `/workspaces/${ws.id}/members`);
    assert.equal(r.status, 200, r.text);
    const list = r.json.members.map((m) => `${m.user_id}:${m.role}:${m.status}`).sort();
    assert.deepEqual(list, [`${alice.id}:owner:active`, `${bob.id}:member:active`, `${carol.id}:admin:active`].sort());

    // Remove: members cannot, admins cannot remove owners, unknown members are 404.
    assertError(await call(bob, 'DELETE', `/workspaces/${ws.id}/members/${carol.id}`), 403, 'forbidden');
    assertError(await call(carol, 'DELETE', `/workspaces/${ws.id}/members/${alice.id}`), 403, 'forbidden');
    assertError(await call(carol, 'DELETE', `/workspaces/${ws.id}/members/${mallory.id}`), 404, 'not_found');
    assertError(await call(carol, 'DELETE', `/workspaces/${ws.id}/members/bad%20id`), 400, 'invalid_request', 'user id');
    r = await call(carol, 'DELETE', `/workspaces/${ws.id}/members/${dave.id}`); // revokes the invitation
    assert.equal(r.status, 204, r.text);
    assertError(await call(dave, 'POST', `/workspaces/${ws.id}/join`), 403, 'not_invited');
    r = await call(alice, 'DELETE', `/workspaces/${ws.id}/members/${bob.id}`);
    assert.equal(r.status, 204, r.text);
    assertError(await call(bob, 'GET', `/workspaces/${ws.id}`), 404, 'not_found');
    assert.ok(!(await call(bob, 'GET', '/workspaces')).json.workspaces.some((x) => x.id === ws.id));
    // A removed member can be invited again.
    await addMember(alice, ws, bob);

    // Leave: the last owner may not; others may, and then see nothing.
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/leave`), 409, 'last_owner');
    assertError(await call(alice, 'DELETE', `/workspaces/${ws.id}/members/${alice.id}`), 409, 'last_owner');
    r = await call(bob, 'POST', `/workspaces/${ws.id}/leave`);
    assert.equal(r.status, 204, r.text);
    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/leave`), 404, 'not_found');
    assertError(await call(bob, 'GET', `/workspaces/${ws.id}/members`), 404, 'not_found');
    // With a second owner, the first may leave.
    await addMember(alice, ws, dave, 'owner');
    r = await call(alice, 'POST', `/workspaces/${ws.id}/leave`);
    assert.equal(r.status, 204, r.text);
    assertError(await call(dave, 'POST', `/workspaces/${ws.id}/leave`), 409, 'last_owner');

    const types = await outboxTypes(ws.id);
    for (const t of ['member.invited', 'member.joined', 'member.removed', 'member.left']) assert.ok(types.includes(t), `${t} in ${types}`);
    await assertGapFree(ws.id);
  });
  test("an invitee missing from the shard's directory copy is found and the copy repaired", async () => {
    const ws = await createWorkspace(alice);
    const pg = w.postgres[await shardOf(ws.id)];
    const eve = await signup();
    await waitFor(async () => (await pg.psql(`SELECT count(*) FROM dir_users WHERE user_id = '${eve.id}'`)).trim() === '1');
    const home = (await pg.psql(`SELECT shard || '|' || home_region FROM dir_users WHERE user_id = '${eve.id}'`)).trim();
    await pg.psql(`DELETE FROM dir_users WHERE user_id = '${eve.id}'`);
    const r = await call(alice, 'POST', `/workspaces/${ws.id}/members`, { user_id: eve.id });
    assert.equal(r.status, 201, r.text);
    assert.equal((await pg.psql(`SELECT shard || '|' || home_region FROM dir_users WHERE user_id = '${eve.id}'`)).trim(), home);
    // Still unknown everywhere: 404, and nothing written.
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/members`, { user_id: 'u_nobody' }), 404, 'user_not_found');
    assert.equal(await assertGapFree(ws.id), 2);
  });

  test('of two owners leaving at once, exactly one may', async () => {
    for (let round = 0; round < 5; round++) {
      const ws = await createWorkspace(alice);
      await addMember(alice, ws, bob, 'owner');
      const [a, b] = await Promise.all([call(alice, 'POST', `/workspaces/${ws.id}/leave`), call(bob, 'POST', `/workspaces/${ws.id}/leave`)]);
      assert.deepEqual([a.status, b.status].sort(), [204, 409], `${a.text} ${b.text}`);
      const pg = w.postgres[await shardOf(ws.id)];
      assert.equal((await pg.psql(`SELECT count(*) FROM members WHERE workspace_id = '${ws.id}' AND role = 'owner' AND status = 'active'`)).trim(), '1');
      await assertGapFree(ws.id);
    }
  });
});

describe('channels', () => {
  test('create, list, join, leave, archive; private channels stay hidden', async () => {
    const ws = await createWorkspace(alice);
    await addMember(alice, ws, bob);
    await addMember(alice, ws, carol);

    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/channels`, {}), 400, 'invalid_request', 'name');
    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/channels`, { name: 'Has Caps' }), 400, 'invalid_request', 'name');
    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/channels`, { name: 'x'.repeat(81) }), 400, 'invalid_request', 'name');
    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/channels`, { name: 'ok', private: 'yes' }), 400, 'invalid_request', 'private');

    let r = await call(bob, 'POST', `/workspaces/${ws.id}/channels`, { name: 'random_talk-1' });
    assert.equal(r.status, 201, r.text);
    const pub = r.json.channel;
    assert.match(pub.id, /^c_[a-z2-7]{20}$/);
    assert.deepEqual({ ...pub, id: 0, created_at: 0 }, { id: 0, name: 'random_talk-1', private: false, archived: false, created_by: bob.id, created_at: 0, member: true });
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/channels`, { name: 'random_talk-1' }), 409, 'channel_exists');
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/channels`, { name: 'general', private: true }), 409, 'channel_exists');

    r = await call(bob, 'POST', `/workspaces/${ws.id}/channels`, { name: 'secret', private: true });
    assert.equal(r.status, 201, r.text);
    const priv = r.json.channel;
    assert.equal(priv.private, true);

    // Lists: bob sees the private one, carol does not.
    r = await call(bob, 'GET', `/workspaces/${ws.id}/channels`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.channels.map((c) => `${c.name}:${c.member}`), ['general:false', 'random_talk-1:true', 'secret:true']);
    r = await call(carol, 'GET', `/workspaces/${ws.id}/channels`);
    assert.deepEqual(r.json.channels.map((c) => `${c.name}:${c.member}`), ['general:false', 'random_talk-1:false']);

    // A private channel is not found for non-members, whatever they try.
    for (const action of ['join', 'leave', 'archive']) assertError(await call(carol, 'POST', `/workspaces/${ws.id}/channels/${priv.id}/${action}`), 404, 'not_found');
    assertError(await call(alice, 'POST', `/workspaces/${ws.id}/channels/${priv.id}/archive`), 404, 'not_found');
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/channels/c_nosuchchannel/join`), 404, 'not_found');
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/channels/bad%20id/join`), 400, 'invalid_request', 'channel id');

    // Public join and leave; both are idempotent.
    r = await call(carol, 'POST', `/workspaces/${ws.id}/channels/${pub.id}/join`);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.channel.member, true);
    assert.equal((await call(carol, 'POST', `/workspaces/${ws.id}/channels/${pub.id}/join`)).status, 200);
    assert.equal((await call(carol, 'POST', `/workspaces/${ws.id}/channels/${pub.id}/leave`)).status, 204);
    assert.equal((await call(carol, 'POST', `/workspaces/${ws.id}/channels/${pub.id}/leave`)).status, 204);
    // The private channel's member may leave it, and then it is hidden from them.
    assert.equal((await call(bob, 'POST', `/workspaces/${ws.id}/channels/${priv.id}/leave`)).status, 204);
    assertError(await call(bob, 'POST', `/workspaces/${ws.id}/channels/${priv.id}/join`), 404, 'not_found');

    // Archive: not by another member; by the creator, or an owner/admin.
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/channels/${pub.id}/archive`), 403, 'forbidden');
    r = await call(bob, 'POST', `/workspaces/${ws.id}/channels/${pub.id}/archive`);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.channel.archived, true);
    assertError(await call(carol, 'POST', `/workspaces/${ws.id}/channels/${pub.id}/join`), 409, 'archived');
    const general = (await call(alice, 'GET', `/workspaces/${ws.id}/channels`)).json.channels.find((c) => c.name === 'general');
    r = await call(alice, 'POST', `/workspaces/${ws.id}/channels/${general.id}/archive`);
    assert.equal(r.status, 200, r.text);
    assert.equal((await call(alice, 'POST', `/workspaces/${ws.id}/channels/${general.id}/archive`)).status, 200);

    const pg = w.postgres[await shardOf(ws.id)];
    const chanEvents = (await pg.psql(`SELECT type || ':' || channel_id FROM outbox WHERE workspace_id = '${ws.id}' AND type LIKE 'channel.%' ORDER BY seq`)).trim().split('\n');
    assert.deepEqual(chanEvents, [
      `channel.created:${pub.id}`,
      `channel.created:${priv.id}`,
      `channel.member_joined:${pub.id}`,
      `channel.member_left:${pub.id}`,
      `channel.member_left:${priv.id}`,
      `channel.archived:${pub.id}`,
      `channel.archived:${general.id}`,
    ]);
    await assertGapFree(ws.id);
  });
});

describe('authorization', () => {
  test('every endpoint refuses a missing token with 401 and an outsider with 404', async () => {
    const ws = await createWorkspace(alice);
    const priv = (await call(alice, 'POST', `/workspaces/${ws.id}/channels`, { name: 'hidden', private: true })).json.channel;
    const before = await assertGapFree(ws.id);
    const routes = [
      ['GET', `/workspaces/${ws.id}`],
      ['PATCH', `/workspaces/${ws.id}`, { name: 'pwned' }],
      ['POST', `/workspaces/${ws.id}/members`, { user_id: mallory.id }],
      ['GET', `/workspaces/${ws.id}/members`],
      ['DELETE', `/workspaces/${ws.id}/members/${alice.id}`],
      ['POST', `/workspaces/${ws.id}/join`],
      ['POST', `/workspaces/${ws.id}/leave`],
      ['POST', `/workspaces/${ws.id}/channels`, { name: 'pwned' }],
      ['GET', `/workspaces/${ws.id}/channels`],
      ['POST', `/workspaces/${ws.id}/channels/${priv.id}/join`],
      ['POST', `/workspaces/${ws.id}/channels/${priv.id}/leave`],
      ['POST', `/workspaces/${ws.id}/channels/${priv.id}/archive`],
    ];
    for (const [method, path, body] of routes) {
      assertError(await call(null, method, path, body), 401, 'unauthenticated');
      const r = await call(mallory, method, path, body);
      assertError(r, 404, 'not_found');
      assert.ok(!r.text.includes(ws.id) && !r.text.includes(alice.id) && !r.text.includes(priv.id), `${method} ${path} leaks: ${r.text}`);
      // An unknown workspace answers exactly the same.
      const ghost = await call(mallory, method, path.replace(ws.id, 'w_ghost'), body);
      assert.deepEqual(ghost.json, r.json, `${method} ${path}`);
    }
    for (const [method, path, body] of [['POST', '/workspaces', { name: 'x', slug: slug() }], ['GET', '/workspaces']]) {
      assertError(await call(null, method, path, body), 401, 'unauthenticated');
      assertError(await call({ token: 'mrd1.garbage.sig' }, method, path, body), 401, 'invalid_token');
    }
    // Nothing happened.
    assert.equal(await assertGapFree(ws.id), before);
    assert.equal((await call(alice, 'GET', `/workspaces/${ws.id}`)).json.workspace.name, 'Team');
  });
});

describe('outbox sequence', () => {
  test('concurrent writers get 1..N with no gap and no duplicate', async () => {
    const ws = await createWorkspace(alice);
    const users = await Promise.all(Array.from({ length: 4 }, () => signup()));
    for (const u of users) await addMember(alice, ws, u);
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) => {
        const u = users[i % users.length];
        if (i % 5 === 4) return call(alice, 'PATCH', `/workspaces/${ws.id}`, { name: `name ${i}` });
        // Every fourth is a duplicate name: it fails and must burn no number.
        return call(u, 'POST', `/workspaces/${ws.id}/channels`, { name: `c-${i % 4 === 3 ? 'dup' : i}` });
      }),
    );
    const ok = results.filter((r) => r.status === 200 || r.status === 201).length;
    for (const r of results) assert.ok([200, 201, 409].includes(r.status), r.text);
    assert.equal(results.filter((r) => r.status === 409).length, 7, 'every duplicate name but the first fails');
    const total = await assertGapFree(ws.id);
    // 1 created + 4 invited + 4 joined + the successful writes.
    assert.equal(total, 1 + 8 + ok);
  });
});

describe('sharding', () => {
  let spread;
  test('workspaces spread over both shards; each shard holds only its own rows', async () => {
    spread = [];
    for (let i = 0; i < 10; i++) {
      const ws = await createWorkspace(alice);
      await call(alice, 'POST', `/workspaces/${ws.id}/channels`, { name: 'extra' });
      spread.push(ws);
    }
    const placed = await Promise.all(spread.map((ws) => shardOf(ws.id)));
    assert.ok(placed.includes(0) && placed.includes(1), `placements: ${placed}`);
    for (let s = 0; s < 2; s++) {
      const pg = w.postgres[s];
      // Every directory row agrees, and every content row on this shard belongs to a workspace placed here.
      const dir = new Map(
        (await pg.psql('SELECT workspace_id, shard FROM dir_workspaces'))
          .trim()
          .split('\n')
          .map((l) => l.split('|')),
      );
      for (let i = 0; i < spread.length; i++) assert.equal(dir.get(spread[i].id), String(placed[i]));
      for (const table of ['workspaces', 'members', 'channels', 'channel_members', 'outbox']) {
        const col = table === 'workspaces' ? 'id' : 'workspace_id';
        const stray = (await pg.psql(`SELECT count(*) FROM ${table} t JOIN dir_workspaces d ON d.workspace_id = t.${col} WHERE d.shard <> ${s}`)).trim();
        assert.equal(stray, '0', `${table} on shard ${s}`);
        const orphan = (await pg.psql(`SELECT count(*) FROM ${table} t WHERE NOT EXISTS (SELECT 1 FROM dir_workspaces d WHERE d.workspace_id = t.${col})`)).trim();
        assert.equal(orphan, '0', `${table} on shard ${s}`);
      }
      for (let i = 0; i < spread.length; i++) {
        const here = (await pg.psql(`SELECT count(*) FROM workspaces WHERE id = '${spread[i].id}'`)).trim();
        assert.equal(here, placed[i] === s ? '1' : '0');
      }
    }
  });

  test("a stopped shard fails only its own workspaces, with 503", async () => {
    const placed = await Promise.all(spread.map((ws) => shardOf(ws.id)));
    const down = spread[placed.indexOf(1)];
    const up = spread[placed.indexOf(0)];
    // Both workers answer: one has the placement cached, the other looks it up on the live shard.
    await w.postgres[1].stop();
    try {
      const seen = new Set();
      await waitFor(
        async () => {
          const { status } = await call(alice, 'GET', `/workspaces/${down.id}`);
          seen.add(status);
          return status === 503;
        },
        { timeoutMs: 15000 },
      );
      assert.ok(!seen.has(404), `answers while the shard went down: ${[...seen]}`);
      for (let i = 0; i < 4; i++) {
        assertError(await call(alice, 'GET', `/workspaces/${down.id}`), 503, 'shard_unavailable');
        assertError(await call(alice, 'POST', `/workspaces/${down.id}/channels`, { name: `during-${i}` }), 503, 'shard_unavailable');
        const r = await call(alice, 'GET', `/workspaces/${up.id}`);
        assert.equal(r.status, 200, r.text);
        assert.equal((await call(alice, 'POST', `/workspaces/${up.id}/channels`, { name: `during-${i}` })).status, 201);
      }
      const r = await call(alice, 'GET', '/workspaces');
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.partial, true);
      const ids = r.json.workspaces.map((x) => x.id);
      assert.ok(ids.includes(up.id) && !ids.includes(down.id));
    } finally {
      await w.postgres[1].start();
    }
    // Each worker's pool reconnects on its own backoff: wait until both are back.
    await waitFor(
      async () => {
        const [one, all] = await Promise.all([call(alice, 'GET', `/workspaces/${down.id}`), call(alice, 'GET', '/workspaces')]);
        return one.status === 200 && all.status === 200 && all.json.partial === false && all.json.workspaces.some((x) => x.id === down.id);
      },
      { timeoutMs: 20000 },
    );
    await assertGapFree(down.id);
    await assertGapFree(up.id);
  });
});
