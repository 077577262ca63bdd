// Live moves of a workspace between regions (issue #10, docs/moves.md):
// posts and WebSocket clients run through an edge while the workspace moves
// from us-east to eu-west; nothing acknowledged is lost, clients follow and
// resume, the source keeps nothing (rows, stream messages, its data key),
// no plaintext word is left in its data files, the signed report verifies,
// and a move killed at every step on either side completes after the
// restart with one home.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { http, natsRequest, startWorlds, waitFor } from '../lib/harness.mjs';

const REGIONS = ['us-east', 'eu-west'];
const PASSWORD = 'moves test password';
let W;
let edge;

before(async () => {
  W = await startWorlds({
    regions: REGIONS,
    workers: 1,
    shards: 1,
    config: { debug: { endpoints: true }, limits: { write_rate_per_s: 100000, write_burst: 100000 } },
  });
  edge = await W.startEdge({
    edge: 'edge-1',
    config: { routing: { signup_region: 'us-east' }, health: { interval_ms: 200, failures: 2, breaker_open_ms: 500 } },
  });
});
after(async () => {
  await W?.stop();
});

const R = (r) => W.regions[r];
const auth = (token) => (token ? { authorization: `Bearer ${token}` } : {});
const call = (base, method, p, body, token) => http(method, `${base}${p}`, { body, headers: auth(token) });
let n = 0;
const uniq = (p) => `${p}-${process.pid}-${++n}`;
const psql = async (region, sql) => (await R(region).postgres[0].psql(sql)).trim();
const num = async (region, sql) => Number(await psql(region, sql));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function signup() {
  const r = await call(R('us-east').api, 'POST', '/v1/auth/signup', {
    email: `${uniq('mv')}@example.com`,
    password: PASSWORD,
    display_name: 'Mover',
  });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token };
}

/** A workspace homed in us-east, allowed in eu-west, with a compliance admin. */
async function workspace() {
  const owner = await signup();
  const admin = await signup();
  const api = R('us-east').api;
  const c = await call(api, 'POST', '/v1/workspaces', { name: 'Mv', slug: uniq('mv'), allowed_regions: REGIONS }, owner.token);
  assert.equal(c.status, 201, c.text);
  const id = c.json.workspace.id;
  const inv = await call(api, 'POST', `/v1/workspaces/${id}/members`, { user_id: admin.id, role: 'compliance_admin' }, owner.token);
  assert.ok([200, 201].includes(inv.status), inv.text);
  const j = await call(api, 'POST', `/v1/workspaces/${id}/join`, {}, admin.token);
  assert.ok([200, 201, 204].includes(j.status), j.text);
  const ch = await call(api, 'GET', `/v1/workspaces/${id}/channels`, undefined, owner.token);
  return { id, general: ch.json.channels[0].id, owner, admin };
}

/** Posts through the edge until acknowledged: a 503 (the freeze) or 421 is retried with the same client_msg_id. */
async function postUntilAcked(ws, text, stats) {
  const cmid = crypto.randomUUID();
  const t0 = Date.now();
  for (let attempt = 0; attempt < 400; attempt++) {
    let r;
    try {
      r = await call(edge.api, 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text, client_msg_id: cmid }, ws.owner.token);
    } catch {
      await sleep(50);
      continue;
    }
    if (r.status === 201 || r.status === 200) {
      stats.held.push(Date.now() - t0);
      return r.json.message;
    }
    assert.ok([503, 421, 502].includes(r.status), `${r.status} ${r.text}`);
    if (r.status === 503 && r.json?.error?.code === 'workspace_moving') stats.refused++;
    const hint = Number(r.headers['meridian-retry-after-ms'] || 100);
    await sleep(Math.min(hint, 500));
  }
  throw new Error(`post of "${text}" never acknowledged`);
}

/** A stream client through the edge that resumes from its cursor after every close. */
function follower(ws, token) {
  const events = [];
  let stopped = false;
  let sock = null;
  let closes = 0;
  const connect = () => {
    if (stopped) return;
    const last = events.length ? events.at(-1).seq : undefined;
    let url = `${edge.api.replace('http', 'ws')}/v1/workspaces/${ws.id}/stream`;
    if (last !== undefined) url += `?cursor=${last}`;
    sock = new WebSocket(url, ['meridian.v1', `bearer.${token}`]);
    let retried = false;
    const retry = () => {
      if (stopped || retried) return;
      retried = true;
      closes++;
      setTimeout(connect, 50 + Math.floor(Math.random() * 150)).unref();
    };
    sock.on('message', (d) => {
      const f = JSON.parse(d.toString());
      if (f.type === 'event' && (!events.length || f.event.seq > events.at(-1).seq)) events.push(f.event);
    });
    sock.on('unexpected-response', (req, res) => {
      res.resume();
      retry();
    });
    sock.on('close', retry);
    sock.on('error', () => {});
  };
  connect();
  return {
    events,
    closes: () => closes,
    stop() {
      stopped = true;
      sock?.terminate();
    },
  };
}

const adminPath = (ws, a = '') => `/v1/admin/residency/workspaces/${ws.id}/move${a}`;

async function moveStatus(ws) {
  const r = await call(edge.api, 'GET', adminPath(ws), undefined, ws.admin.token);
  return r.status === 200 ? r.json.move : null;
}

async function waitDone(ws, timeoutMs = 90000) {
  await waitFor(async () => (await moveStatus(ws))?.state === 'done', { timeoutMs, intervalMs: 200, message: `move of ${ws.id} did not finish` });
  return moveStatus(ws);
}

/** Everything us-east still holds of the workspace, table by table. */
async function leftAtSource(ws) {
  const out = {};
  for (const [t, col] of [
    ['workspaces', 'id'],
    ['members', 'workspace_id'],
    ['channels', 'workspace_id'],
    ['channel_members', 'workspace_id'],
    ['messages', 'workspace_id'],
    ['reactions', 'workspace_id'],
    ['outbox', 'workspace_id'],
    ['outbox_relay', 'workspace_id'],
    ['workspace_keys', 'workspace_id'],
  ])
    out[t] = await num('us-east', `SELECT count(*) FROM ${t} WHERE ${col} = '${ws.id}'`);
  return out;
}

async function streamCount(region, stream, ws) {
  const m = await natsRequest(R(region).nats.port, `$JS.API.STREAM.INFO.${stream}`, JSON.stringify({ subjects_filter: `ev.*.*.${ws.id}.>` }), { timeoutMs: 5000 });
  const info = JSON.parse(m.data.toString());
  return Object.values(info.state?.subjects || {}).reduce((a, b) => a + b, 0);
}

function filesUnder(dir) {
  const out = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(p);
    }
  };
  walk(dir);
  return out;
}

test('a move under load through the edge loses nothing, clients follow, and the source keeps nothing', async (t) => {
  const ws = await workspace();
  const stats = { held: [], refused: 0 };
  const words = [];
  const acked = [];
  for (let i = 0; i < 200; i++) {
    const w = `mvword${crypto.randomBytes(6).toString('hex')}`;
    words.push(w);
    acked.push(await postUntilAcked(ws, `before the move ${w}`, stats));
  }
  const f = follower(ws, ws.owner.token);
  t.after(() => f.stop());
  await waitFor(() => f.events.length > 0 || acked.length > 0, { message: 'follower' });
  // Posters keep going during the move.
  let posting = true;
  const posters = [0, 1].map(async () => {
    while (posting) acked.push(await postUntilAcked(ws, `during ${crypto.randomBytes(4).toString('hex')}`, stats));
  });
  const keyFile = await psql('us-east', "SELECT pg_relation_filenode('workspace_keys')");
  const start = await call(edge.api, 'POST', adminPath(ws), { target_region: 'eu-west', reason: 'customer asked for EU residency' }, ws.admin.token);
  assert.equal(start.status, 202, start.text);
  assert.equal(start.json.move.state, 'scheduled');
  const done = await waitDone(ws);
  posting = false;
  await Promise.all(posters);
  // Both regions agree on the new home, one epoch later.
  for (const r of REGIONS)
    assert.equal(await psql(r, `SELECT home_region || ' ' || epoch FROM dir_workspaces WHERE workspace_id = '${ws.id}'`), 'eu-west 2');
  // Every acknowledged post is at the new home, once, and reads back through the edge.
  const ids = acked.map((m) => `'${m.id}'`).join(',');
  assert.equal(await num('eu-west', `SELECT count(*) FROM messages WHERE workspace_id = '${ws.id}' AND id IN (${ids})`), acked.length, 'acknowledged posts missing at the new home');
  assert.equal(await num('eu-west', `SELECT count(DISTINCT seq) FROM messages WHERE workspace_id = '${ws.id}'`), await num('eu-west', `SELECT count(*) FROM messages WHERE workspace_id = '${ws.id}'`));
  const h = await call(edge.api, 'GET', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages?limit=50`, undefined, ws.owner.token);
  assert.equal(h.status, 200, h.text);
  const newest = acked.reduce((a, b) => (b.seq > a.seq ? b : a));
  assert.equal(h.json.messages.find((m) => m.id === newest.id)?.text, newest.text, 'the newest post reads back decrypted at the new home');
  // The follower resumed across the move and saw every acknowledged post.
  const lastSeq = Math.max(...acked.map((m) => m.seq));
  await waitFor(() => f.events.length && f.events.at(-1).seq >= lastSeq, { timeoutMs: 20000, message: `follower stuck at ${f.events.at(-1)?.seq} < ${lastSeq}` });
  const got = new Set(f.events.filter((e) => e.type === 'message.created').map((e) => e.payload?.id ?? e.data?.id ?? e.message?.id));
  f.stop();
  assert.ok(f.closes() >= 1, 'the stream was closed at the flip');
  const during = acked.filter((m) => m.seq > (f.events[0]?.seq ?? 0));
  const notSeen = during.filter((m) => got.size && !got.has(m.id));
  assert.deepEqual(notSeen.map((m) => m.seq), [], 'events the follower never received');
  // The source holds nothing: rows, stream messages, the data key.
  assert.deepEqual(Object.values(await leftAtSource(ws)).filter((x) => x !== 0), [], JSON.stringify(await leftAtSource(ws)));
  await waitFor(async () => (await streamCount('us-east', 'EV_us-east', ws)) === 0, { message: 'EV_us-east still holds the workspace' });
  assert.equal(await num('eu-west', `SELECT count(*) FROM workspace_keys WHERE workspace_id = '${ws.id}'`), 1);
  // The key table was rewritten: the deleted key's bytes left its heap file.
  await waitFor(async () => (await psql('us-east', "SELECT pg_relation_filenode('workspace_keys')")) !== keyFile, { message: 'workspace_keys rewritten' });
  // No plaintext word is in us-east's data files (heap, WAL, stream files, Redis dump).
  await psql('us-east', 'CHECKPOINT');
  await R('us-east').redis.command(['SAVE']).catch(() => {});
  const dirs = [R('us-east').postgres[0].dataDir, R('us-east').nats.dir, R('us-east').redis.dir].filter(Boolean);
  assert.equal(dirs.length, 3, `data dirs: ${dirs}`);
  const needles = words.slice(0, 50).map((w) => Buffer.from(w));
  for (const d of dirs)
    for (const file of filesUnder(d)) {
      let buf;
      try {
        buf = fs.readFileSync(file);
      } catch (e) {
        if (e.code === 'ENOENT') continue; // a temporary file that went away
        throw e;
      }
      for (const nd of needles) assert.equal(buf.indexOf(nd), -1, `${nd} found in ${file}`);
    }
  // The signed report verifies with us-east's token key from the world file.
  const rep = await call(edge.api, 'GET', adminPath(ws, '/report'), undefined, ws.admin.token);
  assert.equal(rep.status, 200, rep.text);
  const world = JSON.parse(fs.readFileSync(W.worldFile, 'utf8'));
  const us = world.regions.find((r) => r.name === 'us-east');
  const ok = us.token_keys.some((x) => {
    const key = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x }, format: 'jwk' });
    return crypto.verify(null, Buffer.from(rep.json.report_text), key, Buffer.from(rep.json.signature, 'hex'));
  });
  assert.ok(ok, 'the report signature verifies');
  const report = JSON.parse(rep.json.report_text);
  assert.equal(report.key_destroyed, true);
  assert.deepEqual(Object.values(report.left_at_source).filter((x) => x !== 0), []);
  // Every step is in the audit trail.
  const actions = (await psql('us-east', `SELECT string_agg(action, ',' ORDER BY seq) FROM audit_log WHERE workspace_id = '${ws.id}'`)).split(',');
  for (const a of ['move_scheduled', 'move_started', 'move_cut_over', 'move_purged', 'move_key_destroyed', 'move_completed']) assert.ok(actions.includes(a), `${a} in ${actions}`);
  const held = stats.held.sort((a, b) => a - b);
  console.log(JSON.stringify({ posts: acked.length, refused: stats.refused, held_p99_ms: held[Math.floor(held.length * 0.99)], held_max_ms: held.at(-1), freeze_ms: done.freeze_ms }));
});

test('dry run, scheduling and cancel', async () => {
  const ws = await workspace();
  const stats = { held: [], refused: 0 };
  for (let i = 0; i < 5; i++) await postUntilAcked(ws, `dry ${i}`, stats);
  const dry = await call(edge.api, 'POST', adminPath(ws), { target_region: 'eu-west', dry_run: true }, ws.admin.token);
  assert.equal(dry.status, 200, dry.text);
  assert.equal(dry.json.size.messages, 5);
  assert.deepEqual(dry.json.problems, []);
  assert.ok(dry.json.estimate_seconds > 0);
  assert.equal(await num('us-east', `SELECT count(*) FROM moves WHERE workspace_id = '${ws.id}'`), 0, 'a dry run moves nothing');
  const bad = await call(edge.api, 'POST', adminPath(ws), { target_region: 'mars', reason: 'x' }, ws.admin.token);
  assert.equal(bad.status, 422, bad.text);
  const owner = await call(edge.api, 'POST', adminPath(ws), { target_region: 'eu-west', reason: 'x' }, ws.owner.token);
  assert.equal(owner.status, 403, owner.text);
  const later = new Date(Date.now() + 3600_000).toISOString();
  const s = await call(edge.api, 'POST', adminPath(ws), { target_region: 'eu-west', reason: 'next hour', at: later }, ws.admin.token);
  assert.equal(s.status, 202, s.text);
  const again = await call(edge.api, 'POST', adminPath(ws), { target_region: 'eu-west', reason: 'twice' }, ws.admin.token);
  assert.equal(again.status, 409, again.text);
  // The policy waits for the move: it copies under the policy it started with.
  const policy = await call(edge.api, 'PUT', `/v1/admin/residency/workspaces/${ws.id}/allowed-regions`, { allowed_regions: ['us-east'], reason: 'not while moving' }, ws.admin.token);
  assert.equal(policy.status, 409, policy.text);
  assert.equal(policy.json.error.code, 'move_in_progress');
  const c = await call(edge.api, 'POST', adminPath(ws, '/cancel'), {}, ws.admin.token);
  assert.equal(c.status, 200, c.text);
  assert.equal(c.json.move.state, 'cancelled');
  assert.equal(await psql('us-east', `SELECT home_region FROM dir_workspaces WHERE workspace_id = '${ws.id}'`), 'us-east');
  const p = await call(edge.api, 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text: 'still home' }, ws.owner.token);
  assert.equal(p.status, 201, p.text);
});

for (const [side, point] of [
  ['us-east', 'catching_up'],
  ['us-east', 'frozen'],
  ['us-east', 'flipped'],
  ['us-east', 'purging'],
  ['us-east', 'shredding'],
  ['eu-west', 'target-load'],
  ['eu-west', 'target-commit'],
]) {
  test(`a move killed at ${point} (${side}) completes after the restart, with one home`, async () => {
    const ws = await workspace();
    const stats = { held: [], refused: 0 };
    const acked = [];
    for (let i = 0; i < 30; i++) acked.push(await postUntilAcked(ws, `crash ${point} ${i}`, stats));
    const node = R(side).node;
    const marker = path.join(W.tmp, `crash-${point}-${process.pid}-${n}`);
    node.env.MERIDIAN_DEBUG_MOVE_CRASH = `${point}:${marker}`;
    await node.stop();
    await node.start();
    // The edge's health checks see the node back before the move is asked for.
    await waitFor(async () => (await http('GET', `${edge.api}/metrics`)).text.includes(`meridian_edge_region_up{region="${side}"} 1`), {
      timeoutMs: 20000,
      message: `the edge sees ${side} up`,
    });
    try {
      const s = await call(edge.api, 'POST', adminPath(ws), { target_region: 'eu-west', reason: `crash at ${point}` }, ws.admin.token);
      assert.equal(s.status, 202, s.text);
      // Posts go on while it crashes and resumes.
      for (let i = 0; i < 10; i++) acked.push(await postUntilAcked(ws, `during ${point} ${i}`, stats));
      await waitDone(ws, 120000);
      assert.ok(fs.existsSync(marker), `the ${point} crash happened`);
    } finally {
      delete node.env.MERIDIAN_DEBUG_MOVE_CRASH;
    }
    for (const r of REGIONS)
      assert.equal(await psql(r, `SELECT home_region FROM dir_workspaces WHERE workspace_id = '${ws.id}'`), 'eu-west');
    const have = await num('eu-west', `SELECT count(*) FROM messages WHERE workspace_id = '${ws.id}' AND id IN (${acked.map((m) => `'${m.id}'`).join(',')})`);
    assert.equal(have, acked.length, 'every acknowledged post is at the new home');
    assert.deepEqual(Object.values(await leftAtSource(ws)).filter((x) => x !== 0), [], JSON.stringify(await leftAtSource(ws)));
    const p = await call(edge.api, 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text: 'after' }, ws.owner.token);
    assert.ok([200, 201].includes(p.status), p.text);
  });
}
