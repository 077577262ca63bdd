// Residency on the raw stores (design.md, "Residency invariants"): the
// admin API pins and sets allowed regions with a reason and an audit entry,
// replicas outside a new policy are dropped from Postgres and JetStream, a
// region refuses events its policy does not allow, a region cut off during a
// pin never receives what the pin forbids, bad admin input changes nothing,
// and the stores, logs and directory hold only what they may.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { http, natsConnect, natsRequest, startWorlds, waitFor } from '../lib/harness.mjs';
import { redisCommand } from '../../deploy/local/lib/stack.mjs';

const REGIONS = ['us-east', 'eu-west', 'ap-south'];
const PASSWORD = 'residency test password';
let W;

before(async () => {
  W = await startWorlds({
    regions: REGIONS,
    workers: 1,
    shards: 1,
    leafProxy: true,
    config: { log: { access: true }, limits: { write_rate_per_s: 100000, write_burst: 100000 } },
  });
});
after(async () => {
  await W?.stop();
});

const R = (r) => W.regions[r];
const call = (region, method, p, body, token) =>
  http(method, `${R(region).api}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
const uniq = (p) => `${p}-${process.pid}-${++n}`;
const emails = [];
const texts = [];
const tokens = [];

async function signup(region) {
  const email = `${uniq('res')}@example.com`;
  emails.push(email);
  const r = await call(region, 'POST', '/v1/auth/signup', { email, password: PASSWORD, display_name: 'Res Admin' });
  assert.equal(r.status, 201, r.text);
  tokens.push(r.json.access_token);
  return { id: r.json.user.id, token: r.json.access_token, region };
}

/** A workspace homed in us-east with a compliance admin (who joined) and a plain member. */
async function workspace(allowed) {
  const owner = await signup('us-east');
  const admin = await signup('us-east');
  const member = await signup('us-east');
  const c = await call('us-east', 'POST', '/v1/workspaces', { name: 'Res', slug: uniq('res'), allowed_regions: allowed }, owner.token);
  assert.equal(c.status, 201, c.text);
  const id = c.json.workspace.id;
  for (const [u, role] of [
    [admin, 'compliance_admin'],
    [member, 'member'],
  ]) {
    const inv = await call('us-east', 'POST', `/v1/workspaces/${id}/members`, { user_id: u.id, role }, owner.token);
    assert.ok([200, 201].includes(inv.status), inv.text);
    const j = await call('us-east', 'POST', `/v1/workspaces/${id}/join`, {}, u.token);
    assert.ok([200, 201, 204].includes(j.status), j.text);
  }
  const ch = await call('us-east', 'GET', `/v1/workspaces/${id}/channels`, undefined, owner.token);
  return { id, general: ch.json.channels[0].id, owner, admin, member };
}

async function post(ws, text) {
  texts.push(text);
  const r = await call('us-east', 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text }, ws.owner.token);
  assert.equal(r.status, 201, r.text);
  return r.json.message;
}

const psql = async (region, sql) => (await R(region).postgres[0].psql(sql)).trim();
const num = async (region, sql) => Number(await psql(region, sql));
const replicaCount = (region, ws) => num(region, `SELECT count(*) FROM replica_events WHERE workspace_id = '${ws.id}'`);
const adminPath = (ws, action = '') => `/v1/admin/residency/workspaces/${ws.id}${action}`;

async function natsJson(port, subject, body) {
  const m = await natsRequest(port, subject, JSON.stringify(body ?? {}), { timeoutMs: 5000 });
  return JSON.parse(m.data.toString());
}
/** Messages of a workspace held in a region's stream (any subject naming it). */
async function streamMessages(region, stream, ws) {
  const info = await natsJson(R(region).nats.port, `$JS.API.STREAM.INFO.${stream}`, { subjects_filter: `ev.*.*.${ws.id}.>` });
  assert.ok(info.state, JSON.stringify(info));
  return Object.values(info.state.subjects || {}).reduce((a, b) => a + b, 0);
}

async function policyEverywhere(ws) {
  const out = {};
  for (const r of REGIONS) {
    const row = await psql(r, `SELECT home_region || '|' || allowed_regions::text || '|' || pinned FROM dir_workspaces WHERE workspace_id = '${ws.id}'`);
    out[r] = row;
  }
  return out;
}

test('bad admin input gets a clear error and changes nothing', async () => {
  const ws = await workspace(['us-east', 'eu-west']);
  const outsider = await signup('us-east');
  const before = await psql('us-east', `SELECT allowed_regions::text || pinned FROM workspaces WHERE id = '${ws.id}'`);
  const audits = await num('us-east', 'SELECT count(*) FROM audit_log');
  const cases = [
    [outsider, 'POST', '/pin', { reason: 'x' }, 404, 'not_found'],
    [ws.member, 'POST', '/pin', { reason: 'x' }, 403, 'forbidden'],
    [ws.owner, 'POST', '/pin', { reason: 'owners are not compliance admins' }, 403, 'forbidden'],
    [ws.admin, 'POST', '/pin', {}, 400, 'reason_required'],
    [ws.admin, 'POST', '/pin', { reason: '' }, 400, 'reason_required'],
    [ws.admin, 'PUT', '/allowed-regions', { reason: 'x', allowed_regions: ['us-east', 'mars'] }, 400, 'unknown_region'],
    [ws.admin, 'PUT', '/allowed-regions', { reason: 'x' }, 400, 'invalid_request'],
    [ws.admin, 'PUT', '/allowed-regions', { reason: 'strand it', allowed_regions: ['eu-west'] }, 409, 'would_strand_data'],
    [ws.admin, 'POST', '/pin', { reason: 'pin elsewhere', allowed_regions: ['ap-south'] }, 409, 'would_strand_data'],
  ];
  for (const [who, method, action, body, status, code] of cases) {
    const r = await call('us-east', method, adminPath(ws, action), body, who.token);
    assert.equal(r.status, status, `${method} ${action} ${JSON.stringify(body)}: ${r.text}`);
    assert.equal(r.json.error.code, code);
    assert.ok(r.json.error.message.length > 0);
  }
  // No token at all, and a region that is not the workspace's home.
  assert.equal((await call('us-east', 'POST', adminPath(ws, '/pin'), { reason: 'x' })).status, 401);
  await waitFor(async () => (await num('eu-west', `SELECT count(*) FROM dir_workspaces WHERE workspace_id = '${ws.id}'`)) === 1);
  const wrong = await call('eu-west', 'POST', adminPath(ws, '/pin'), { reason: 'x' }, ws.admin.token);
  assert.equal(wrong.status, 421, wrong.text);
  assert.equal(wrong.headers['meridian-home-region'], 'us-east');
  // The audit trail is for operators.
  assert.equal((await call('us-east', 'GET', '/v1/admin/audit', undefined, ws.admin.token)).status, 403);

  assert.equal(await psql('us-east', `SELECT allowed_regions::text || pinned FROM workspaces WHERE id = '${ws.id}'`), before);
  assert.equal(await num('us-east', 'SELECT count(*) FROM audit_log'), audits);
});

test('pinning drops the replicas outside the new allowed set, in Postgres and JetStream, everywhere', async () => {
  const ws = await workspace(['us-east', 'eu-west', 'ap-south']);
  for (let i = 0; i < 5; i++) await post(ws, uniq('before the pin'));
  for (const r of ['eu-west', 'ap-south']) {
    await waitFor(async () => (await replicaCount(r, ws)) >= 6, { timeoutMs: 20000, message: `replica in ${r}` });
  }
  assert.ok((await streamMessages('ap-south', 'IN_ap-south', ws)) > 0);

  const reason = uniq('contract with an EU customer');
  const pin = await call('us-east', 'POST', adminPath(ws, '/pin'), { reason, allowed_regions: ['us-east', 'eu-west'] }, ws.admin.token);
  assert.equal(pin.status, 200, pin.text);
  assert.deepEqual(pin.json.workspace.allowed_regions, ['us-east', 'eu-west']);
  assert.equal(pin.json.workspace.pinned, true);
  assert.equal(pin.json.workspace.reason, reason);
  assert.ok(pin.json.audit_seq >= 1);

  // ap-south drops everything it held; eu-west keeps its replica.
  await waitFor(async () => (await replicaCount('ap-south', ws)) === 0, { timeoutMs: 20000, message: 'ap-south dropped its replica' });
  await waitFor(async () => (await streamMessages('ap-south', 'IN_ap-south', ws)) === 0, { timeoutMs: 20000, message: "IN_ap-south purged of the workspace" });
  assert.equal(await num('ap-south', `SELECT count(*) FROM replica_workspaces WHERE workspace_id = '${ws.id}'`), 0);
  assert.equal(await num('ap-south', `SELECT count(*) FROM residency_refusals WHERE workspace_id = '${ws.id}' AND reason = 'replica_dropped'`), 1);
  const evToAp = await natsJson(R('us-east').nats.port, '$JS.API.STREAM.INFO.EV_us-east', { subjects_filter: `ev.us-east.ap-south.${ws.id}.>` });
  await waitFor(async () => {
    const i = await natsJson(R('us-east').nats.port, '$JS.API.STREAM.INFO.EV_us-east', { subjects_filter: `ev.us-east.ap-south.${ws.id}.>` });
    return Object.keys(i.state.subjects || {}).length === 0;
  }, { message: 'copies addressed to ap-south purged from EV_us-east' });
  assert.ok(evToAp.state);
  assert.ok((await replicaCount('eu-west', ws)) >= 6);

  // Every region's directory says so.
  let seen;
  await waitFor(async () => Object.values((seen = await policyEverywhere(ws))).every((p) => p === 'us-east|{us-east,eu-west}|true'), {
    timeoutMs: 20000,
    message: 'the policy reached every directory',
  }).catch((e) => assert.fail(`${e.message}: ${JSON.stringify(seen)}`));

  // New messages reach eu-west and never ap-south.
  const after = [];
  for (let i = 0; i < 3; i++) after.push(await post(ws, uniq('after the pin')));
  await waitFor(async () => (await replicaCount('eu-west', ws)) >= 9, { timeoutMs: 20000, message: 'eu-west follows' });
  assert.equal(await replicaCount('ap-south', ws), 0);
  assert.equal(await streamMessages('ap-south', 'IN_ap-south', ws), 0);

  // The audit entry: chained from the shard's previous head, signed by us-east.
  const row = (await psql('us-east', `SELECT seq || '|' || entry || '|' || encode(prev_hash, 'hex') || '|' || encode(hash, 'hex') || '|' || encode(signature, 'hex') || '|' || key_id FROM audit_log WHERE workspace_id = '${ws.id}'`)).split('|');
  const [seq, entryText, , hashHex, sigHex] = row;
  const entry = JSON.parse(entryText);
  assert.equal(entry.action, 'pin');
  assert.equal(entry.reason, reason);
  assert.equal(entry.seq, Number(seq));
  assert.equal(entry.actor.user_id, ws.admin.id);
  assert.deepEqual(entry.before.allowed_regions, ['us-east', 'eu-west', 'ap-south']);
  assert.deepEqual(entry.after.allowed_regions, ['us-east', 'eu-west']);
  const key = W.world.regions.find((r) => r.name === 'us-east').token_keys[0];
  const pub = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: key }, format: 'jwk' });
  assert.ok(crypto.verify(null, Buffer.from(hashHex, 'hex'), pub, Buffer.from(sigHex, 'hex')), 'signed by us-east');
  const show = await call('us-east', 'GET', adminPath(ws), undefined, ws.admin.token);
  assert.equal(show.status, 200, show.text);
  assert.equal(show.json.audit[0].hash, hashHex);
  const list = await call('us-east', 'GET', '/v1/admin/residency/workspaces', undefined, ws.admin.token);
  assert.ok(list.json.workspaces.some((p) => p.workspace_id === ws.id && p.pinned));

  // Unpin keeps the allowed set; it is audited too.
  const un = await call('us-east', 'POST', adminPath(ws, '/unpin'), { reason: 'review done' }, ws.admin.token);
  assert.equal(un.status, 200, un.text);
  assert.equal(un.json.workspace.pinned, false);
  assert.deepEqual(un.json.workspace.allowed_regions, ['us-east', 'eu-west']);
  assert.equal(un.json.audit_seq, Number(seq) + 1);
});

test('a replica region refuses an event its policy does not allow (invariant 3)', async () => {
  const ws = await workspace(['us-east']);
  await waitFor(async () => (await num('ap-south', `SELECT count(*) FROM dir_workspaces WHERE workspace_id = '${ws.id}'`)) === 1, {
    message: 'ap-south knows the workspace and that it may not hold it',
  });
  const refused = async () => num('ap-south', `SELECT coalesce(sum(events), 0) FROM residency_refusals WHERE workspace_id = '${ws.id}' AND reason = 'event_not_allowed'`);
  // A forged copy addressed to ap-south, put into us-east's stream: ap-south sources it.
  const nc = natsConnect(R('us-east').nats.port);
  await nc.ready;
  const env = { id: crypto.randomUUID(), region: 'us-east', workspace_id: ws.id, seq: 99, type: 'message.created', channel_id: ws.general, payload: { text: 'forged' }, at: Date.now() };
  nc.publish(`ev.us-east.ap-south.${ws.id}.message.created`, JSON.stringify(env));
  await nc.flush();
  nc.close();
  await waitFor(async () => (await refused()) >= 1, { timeoutMs: 20000, message: 'ap-south refused the event' });
  assert.equal(await replicaCount('ap-south', ws), 0);
  await waitFor(async () => (await streamMessages('ap-south', 'IN_ap-south', ws)) === 0, { message: 'and did not keep it in IN_ap-south' });
  const m = await http('GET', `${R('ap-south').api}/metrics`);
  assert.match(m.text, /meridian_residency_refused_events_total [1-9]/);
});

test('a region cut off during a pin never receives what the pin forbids, and drops its replica when it hears', async () => {
  const ws = await workspace(['us-east', 'ap-south']);
  for (let i = 0; i < 3; i++) await post(ws, uniq('before the cut'));
  await waitFor(async () => (await replicaCount('ap-south', ws)) >= 4, { timeoutMs: 20000, message: 'replica in ap-south' });
  await W.cut('ap-south');
  let secret;
  try {
    const pin = await call('us-east', 'POST', adminPath(ws, '/pin'), { reason: 'pin while ap-south is away' }, ws.admin.token);
    assert.equal(pin.status, 200, pin.text);
    assert.deepEqual(pin.json.workspace.allowed_regions, ['us-east']);
    secret = uniq('written after the pin');
    await post(ws, secret);
    // ap-south has not heard: it still holds the old replica, and nothing new.
    assert.equal(await psql('ap-south', `SELECT allowed_regions::text FROM dir_workspaces WHERE workspace_id = '${ws.id}'`), '{us-east,ap-south}');
  } finally {
    await W.heal('ap-south');
  }
  await waitFor(async () => (await replicaCount('ap-south', ws)) === 0, { timeoutMs: 30000, message: 'ap-south dropped the replica after hearing' });
  await waitFor(async () => (await streamMessages('ap-south', 'IN_ap-south', ws)) === 0, { timeoutMs: 20000 });
  assert.equal(await num('ap-south', `SELECT count(*) FROM replica_events WHERE payload::text LIKE '%${secret}%'`), 0);
  assert.equal(await psql('ap-south', `SELECT allowed_regions::text FROM dir_workspaces WHERE workspace_id = '${ws.id}'`), '{us-east}');
});

test('content lives only in allowed regions: Postgres and Redis of every region (invariants 1 and 2)', async () => {
  const ws = await workspace(['us-east', 'eu-west']);
  const text = uniq('only in us-east and eu-west');
  const msg = await post(ws, text);
  // A live stream: presence keys in us-east's Redis.
  const s = new WebSocket(`${R('us-east').api.replace('http', 'ws')}/v1/workspaces/${ws.id}/stream`, ['meridian.v1', `bearer.${ws.owner.token}`]);
  await new Promise((res, rej) => (s.once('open', res), s.once('error', rej)));
  await waitFor(async () => (await redisCommand(R('us-east').redis.port, `EXISTS pr:{${ws.id}}`)) === ':1', { message: 'presence in us-east' });
  await waitFor(async () => (await replicaCount('eu-west', ws)) >= 2, { timeoutMs: 20000 });
  // A write at a region that is not home: 421, and nothing written there.
  const w421 = await call('eu-west', 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text: 'misdirected' }, ws.owner.token);
  assert.equal(w421.status, 421);
  assert.equal(w421.headers['meridian-home-region'], 'us-east');
  for (const r of REGIONS) {
    const msgs = await num(r, `SELECT count(*) FROM messages WHERE workspace_id = '${ws.id}'`);
    const reps = await replicaCount(r, ws);
    // Bodies are encrypted at rest (docs/encryption.md): the message is found by its id.
    const withText = await num(r, `SELECT (SELECT count(*) FROM messages WHERE id = '${msg.id}') + (SELECT count(*) FROM replica_events WHERE payload->>'id' = '${msg.id}') + (SELECT count(*) FROM outbox WHERE payload->>'id' = '${msg.id}')`);
    assert.equal(await num(r, `SELECT count(*) FROM messages WHERE body LIKE '%${text}%'`), 0, 'no plaintext body at rest');
    if (r === 'us-east') assert.ok(msgs >= 1 && withText >= 1);
    if (r === 'eu-west') assert.ok(msgs === 0 && reps >= 2 && withText >= 1);
    if (r === 'ap-south') assert.equal(msgs + reps + withText, 0, 'ap-south holds nothing of it');
    // Redis: keys naming the workspace only at its home.
    const keys = await redisCommand(R(r).redis.port, `KEYS *${ws.id}*`);
    if (r !== 'us-east') assert.match(keys, /^\*0/, `${r}'s Redis: ${keys}`);
    else assert.doesNotMatch(keys, /^\*0/, "us-east's Redis holds the presence keys");
  }
  s.close();
});

test('an operator (admin.operator_user_ids) administers every workspace homed in the region and reads the audit chain', async () => {
  const ws = await workspace(['us-east', 'eu-west']);
  const op = await signup('us-east');
  // The operator set is configuration: restart us-east's node with it.
  const node = R('us-east').node;
  await node.stop();
  node.env.MERIDIAN_ADMIN__OPERATOR_USER_IDS = op.id;
  await node.start();
  try {
    const pin = await call('us-east', 'POST', adminPath(ws, '/pin'), { reason: 'operator pin', allowed_regions: ['us-east', 'eu-west'] }, op.token);
    assert.equal(pin.status, 200, pin.text);
    const list = await call('us-east', 'GET', '/v1/admin/residency/workspaces', undefined, op.token);
    assert.equal(list.status, 200);
    assert.ok(list.json.workspaces.length >= 4, 'every home workspace, not only the operator\'s');
    const audit = await call('us-east', 'GET', '/v1/admin/audit?shard=0&since=0&limit=1000', undefined, op.token);
    assert.equal(audit.status, 200, audit.text);
    const mine = audit.json.entries.find((e) => e.workspace_id === ws.id);
    assert.equal(JSON.parse(mine.entry).actor.as, 'operator');
    // The chain links: every entry's prev_hash is the previous entry's hash.
    const es = audit.json.entries;
    for (let i = 1; i < es.length; i++) assert.equal(es[i].prev_hash, es[i - 1].hash, `seq ${es[i].seq}`);
    assert.equal(es[0].seq, 1);
    assert.equal(es[0].prev_hash, '0'.repeat(64));
    const bad = await call('us-east', 'GET', '/v1/admin/audit?shard=9', undefined, op.token);
    assert.equal(bad.status, 400);
  } finally {
    delete node.env.MERIDIAN_ADMIN__OPERATOR_USER_IDS;
  }
});

test('the directory carries ids, keyed hashes and region names only (invariant 8)', async () => {
  for (const r of REGIONS) {
    const cols = await psql(r, "SELECT string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, column_name) FROM information_schema.columns WHERE table_name IN ('dir_workspaces','dir_users','dir_emails','dir_changes','dir_outbox')");
    for (const c of cols.split(',')) assert.doesNotMatch(c, /\.(name|email|display_name|slug|body_text|text)$/, `${r}: ${c}`);
    const dump = await psql(r, "SELECT coalesce((SELECT string_agg(t::text, ' ') FROM dir_workspaces t), '') || (SELECT coalesce(string_agg(t::text, ' '), '') FROM dir_users t) || (SELECT coalesce(string_agg(t::text, ' '), '') FROM dir_emails t) || (SELECT coalesce(string_agg(t::text, ' '), '') FROM dir_changes t) || (SELECT coalesce(string_agg(t::text, ' '), '') FROM dir_outbox t)");
    for (const e of emails) assert.ok(!dump.includes(e), `${r}'s directory holds an email`);
    assert.ok(!dump.includes('Res Admin'), `${r}'s directory holds a name`);
    for (const t of texts) assert.ok(!dump.includes(t), `${r}'s directory holds content`);
  }
});

test('logs never contain message bodies, passwords or tokens (invariant 5)', async () => {
  const logs = [];
  for (const r of REGIONS) for (const node of R(r).nodes) logs.push([node.logPath, fs.readFileSync(node.logPath, 'utf8')]);
  for (const [file, text] of logs) {
    assert.ok(text.length > 0, file);
    assert.ok(!text.includes(PASSWORD), `${path.basename(file)} holds a password`);
    for (const t of texts) assert.ok(!text.includes(t), `${path.basename(file)} holds a message body`);
    for (const tok of tokens) assert.ok(!text.includes(tok.split('.')[2]), `${path.basename(file)} holds a token`);
  }
});
