// Three regions on NATS JetStream domains behind a hub: the global
// directory converges, claims of emails and slugs have exactly one winner
// (decided at the key's owner region, 503 while it cannot be reached), a
// workspace's events reach the regions it allows and no other (checked on the
// raw stores), a replica answers 421 naming the home region, a region cut off
// from the hub keeps serving, and after healing its replicas hold every event
// once; an event dropped in transit is backfilled from the home's Postgres.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { pgBin } from '../../deploy/local/lib/stack.mjs';
import fs from 'node:fs';
import path from 'node:path';

import { http, makeTmp, natsRequest, removeTmp, startWorlds, waitFor } from '../lib/harness.mjs';

const REGIONS = ['us-east', 'eu-west', 'ap-south'];
const EDGE_TOKEN = 'edge-token-for-tests-0123456789';
let W;
let keyDir;
before(async () => {
  keyDir = makeTmp('meridian-edge-token-');
  const tokenFile = path.join(keyDir, 'edge.token');
  fs.writeFileSync(tokenFile, `${EDGE_TOKEN}\n`, { mode: 0o600 });
  W = await startWorlds({
    regions: REGIONS,
    workers: 1,
    shards: 2,
    leafProxy: true,
    config: { limits: { write_rate_per_s: 100000, write_burst: 100000 }, directory: { edge_token_file: tokenFile } },
  });
});
after(async () => {
  await W?.stop();
  if (keyDir) removeTmp(keyDir);
});

const R = (r) => W.regions[r];
const call = (region, method, path, body, token) =>
  http(method, `${R(region).api}${path}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
const uniq = (p) => `${p}-${process.pid}-${++n}`;

async function signup(region) {
  const r = await call(region, 'POST', '/v1/auth/signup', { email: `${uniq('r')}@example.com`, password: 'replication password', display_name: 'R' });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token, region };
}
async function workspace(user, allowed) {
  const r = await call(user.region, 'POST', '/v1/workspaces', { name: 'Rep', slug: uniq('rep'), allowed_regions: allowed }, user.token);
  assert.equal(r.status, 201, r.text);
  const id = r.json.workspace.id;
  const ch = await call(user.region, 'GET', `/v1/workspaces/${id}/channels`, undefined, user.token);
  return { id, general: ch.json.channels[0].id, home: user.region };
}
const post = (user, ws, text) => call(user.region, 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text }, user.token);
const sq = (s) => `'${String(s).replace(/'/g, "''")}'`;
const psqlAll = async (region, sql) => (await Promise.all(R(region).postgres.map((p) => p.psql(sql)))).map((s) => s.trim());

/** The replica's state in region: {applied, expected, events, distinct} summed over its shards. */
async function replica(region, ws) {
  const rows = await psqlAll(
    region,
    `SELECT coalesce((SELECT applied_seq FROM replica_workspaces WHERE workspace_id = ${sq(ws)}), -1),
            coalesce((SELECT expected_seq FROM replica_workspaces WHERE workspace_id = ${sq(ws)}), -1),
            (SELECT count(*) FROM replica_events WHERE workspace_id = ${sq(ws)}),
            (SELECT count(DISTINCT seq) FROM replica_events WHERE workspace_id = ${sq(ws)})`,
  );
  const out = { applied: -1, expected: -1, events: 0, distinct: 0 };
  for (const row of rows) {
    const [a, e, c, d] = row.split('|').map(Number);
    out.applied = Math.max(out.applied, a);
    out.expected = Math.max(out.expected, e);
    out.events += c;
    out.distinct += d;
  }
  return out;
}
const head = async (ws) => Number((await psqlAll(ws.home, `SELECT coalesce(max(seq), 0) FROM workspaces WHERE id = ${sq(ws.id)}`)).reduce((a, s) => Math.max(a, Number(s) || 0), 0));

test('the directory converges: every region knows every user and workspace, by id and home only', async () => {
  const users = await Promise.all(REGIONS.map((r) => signup(r)));
  const spaces = await Promise.all(users.map((u) => workspace(u)));
  let last;
  for (const r of REGIONS) {
    await waitFor(
      async () => {
        const rows = await psqlAll(
          r,
          `SELECT (SELECT string_agg(workspace_id || '@' || home_region, ',' ORDER BY workspace_id) FROM dir_workspaces WHERE workspace_id IN (${spaces.map((s) => sq(s.id)).join(',')})),
                  (SELECT string_agg(user_id || '@' || home_region, ',' ORDER BY user_id) FROM dir_users WHERE user_id IN (${users.map((u) => sq(u.id)).join(',')}))`,
        );
        const wantW = spaces.map((s) => `${s.id}@${s.home}`).sort().join(',');
        const wantU = users.map((u) => `${u.id}@${u.region}`).sort().join(',');
        // Every shard of every region holds the whole directory.
        last = { rows, want: `${wantW}|${wantU}` };
        return rows.every((row) => row === `${wantW}|${wantU}`);
      },
      { timeoutMs: 20000, message: `the directory of ${r}` },
    ).catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify(last)}`);
    });
  }
  // A region that is not home answers 421 and names the home (every region verifies every region's tokens).
  for (const s of spaces) {
    for (const r of REGIONS.filter((x) => x !== s.home)) {
      const u = users.find((x) => x.region === s.home);
      const res = await call(r, 'GET', `/v1/workspaces/${s.id}/channels`, undefined, u.token);
      assert.equal(res.status, 421, `${r} for a workspace of ${s.home}: ${res.text}`);
      assert.equal(res.json.error.code, 'wrong_region');
      assert.equal(res.headers['meridian-home-region'], s.home);
      assert.match(res.json.error.message, new RegExp(s.home));
    }
  }
});

test('edges read the directory: a snapshot, then the changes after its version', async () => {
  const edge = { authorization: `Bearer ${EDGE_TOKEN}` };
  const snap = await http('GET', `${R('ap-south').api}/v1/directory`, { headers: edge });
  assert.equal(snap.status, 200, snap.text);
  assert.match(snap.json.version, /^\d+:\d+$/);
  const u = await signup('us-east');
  await waitFor(
    async () => {
      const ch = await http('GET', `${R('ap-south').api}/v1/directory/changes?since=${snap.json.version}`, { headers: edge });
      assert.equal(ch.status, 200, ch.text);
      return ch.json.changes.some((c) => c.kind === 'user' && c.id === u.id && c.home_region === 'us-east');
    },
    { timeoutMs: 20000, message: 'the new user in the change feed' },
  );
  const again = await http('GET', `${R('ap-south').api}/v1/directory`, { headers: edge });
  assert.ok(again.json.users.some((x) => x.id === u.id && x.home_region === 'us-east'));
  assert.ok(again.json.emails.length >= again.json.users.length - 1);
  for (const entry of again.json.users) assert.deepEqual(Object.keys(entry).sort(), ['home_region', 'id'], 'ids and regions only');
  const bad = await http('GET', `${R('ap-south').api}/v1/directory`, { headers: { authorization: `Bearer ${u.token}` } });
  assert.equal(bad.status, 401, 'a user token is not an edge token');
  const none = await http('GET', `${R('ap-south').api}/v1/directory/changes?since=nope`, { headers: edge });
  assert.equal(none.status, 400);
  assert.equal(none.json.error.code, 'invalid_since');
});

test('two regions racing for one slug or one email: exactly one winner', async () => {
  const a = await signup('us-east');
  const b = await signup('ap-south');
  for (let i = 0; i < 6; i++) {
    const slug = uniq('race');
    const [ra, rb] = await Promise.all([
      call('us-east', 'POST', '/v1/workspaces', { name: 'A', slug }, a.token),
      call('ap-south', 'POST', '/v1/workspaces', { name: 'B', slug }, b.token),
    ]);
    assert.deepEqual([ra.status, rb.status].sort(), [201, 409], `slug ${slug}: ${ra.text} / ${rb.text}`);
    const loser = ra.status === 409 ? ra : rb;
    assert.equal(loser.json.error.code, 'slug_taken');
  }
  for (let i = 0; i < 4; i++) {
    const email = `${uniq('same')}@example.com`;
    const body = { email, password: 'replication password', display_name: 'Same' };
    const [ra, rb] = await Promise.all([call('eu-west', 'POST', '/v1/auth/signup', body), call('us-east', 'POST', '/v1/auth/signup', body)]);
    assert.deepEqual([ra.status, rb.status].sort(), [201, 409], `email: ${ra.text} / ${rb.text}`);
  }
});

test('a claim granted to another region is confirmed by the directory; an abandoned one is taken over after a day', async () => {
  const u = await signup('us-east');
  // A slug owned by another region: its claim row lives there.
  let ws;
  let owner;
  for (let i = 0; i < 12 && !owner; i++) {
    ws = await workspace(u);
    for (const r of ['eu-west', 'ap-south']) {
      const rows = await psqlAll(r, `SELECT count(*) FROM claims WHERE owner_id = ${sq(ws.id)}`);
      if (rows.some((x) => x === '1')) owner = r;
    }
  }
  assert.ok(owner, 'some slug is owned outside us-east');
  await waitFor(async () => (await psqlAll(owner, `SELECT confirmed FROM claims WHERE owner_id = ${sq(ws.id)}`)).includes('t'), {
    timeoutMs: 20000,
    message: 'the claim confirmed once the workspace reached the owner region',
  });
  // As if us-east had failed after the claim: unconfirmed, and old.
  await psqlAll(owner, `UPDATE claims SET owner_id = 'w_ghost', confirmed = false, created_at = now() - interval '2 days' WHERE owner_id = ${sq(ws.id)}`);
  const slug = (await call('us-east', 'GET', `/v1/workspaces/${ws.id}`, undefined, u.token)).json.workspace.slug;
  const third = REGIONS.find((r) => r !== 'us-east' && r !== owner);
  const v = await signup(third);
  const taken = await call(third, 'POST', '/v1/workspaces', { name: 'Again', slug }, v.token);
  assert.equal(taken.status, 201, `the abandoned claim is taken over: ${taken.text}`);
  // A fresh unconfirmed claim is not.
  const w2 = await workspace(u);
  const o2 = (await Promise.all(['eu-west', 'ap-south'].map(async (r) => ((await psqlAll(r, `SELECT count(*) FROM claims WHERE owner_id = ${sq(w2.id)}`)).includes('1') ? r : null)))).find(Boolean);
  if (o2) {
    await psqlAll(o2, `UPDATE claims SET owner_id = 'w_ghost2', confirmed = false WHERE owner_id = ${sq(w2.id)}`);
    const slug2 = (await call('us-east', 'GET', `/v1/workspaces/${w2.id}`, undefined, u.token)).json.workspace.slug;
    const r2 = await call(REGIONS.find((r) => r !== 'us-east' && r !== o2), 'POST', '/v1/workspaces', { name: 'No', slug: slug2 }, (await signup(REGIONS.find((r) => r !== 'us-east' && r !== o2))).token);
    assert.equal(r2.status, 409, `a recent claim holds: ${r2.text}`);
  }
});

test('an owner region that cannot be reached fails new claims it owns (503), and only those', async () => {
  const u = await signup('us-east');
  const existing = await workspace(u);
  await W.cut('ap-south');
  const outcomes = [];
  try {
    // Slugs are owned by a hash over the regions: about a third of them by
    // ap-south. 12 tries all missed it once in CI ((2/3)^12, ~0.8%): go on
    // until one is refused, up to 60 ((2/3)^60, ~3e-11).
    for (let i = 0; i < 12 || (i < 60 && !outcomes.some((o) => o.status === 503)); i++) {
      const slug = uniq('cut');
      const r = await call('us-east', 'POST', '/v1/workspaces', { name: 'Cut', slug }, u.token);
      outcomes.push({ slug, status: r.status, code: r.json?.error?.code, retry: r.headers['retry-after'] });
    }
    assert.ok(outcomes.every((o) => o.status === 201 || o.status === 503), JSON.stringify(outcomes));
    const refused = outcomes.filter((o) => o.status === 503);
    assert.ok(refused.length > 0, `some slugs belong to ap-south: ${JSON.stringify(outcomes)}`);
    assert.ok(outcomes.some((o) => o.status === 201), 'slugs owned by reachable regions are claimed');
    for (const o of refused) {
      assert.equal(o.code, 'directory_unavailable');
      assert.ok(Number(o.retry) > 0);
    }
    // Everything that needs no claim goes on.
    assert.equal((await post(u, existing, 'still here')).status, 201);
    const renamed = await call('us-east', 'PATCH', `/v1/workspaces/${existing.id}`, { name: 'Renamed' }, u.token);
    assert.equal(renamed.status, 200, renamed.text);
  } finally {
    await W.heal('ap-south');
  }
  // Healed: every claim is answered again, ap-south's too. (Fresh slugs: a
  // refused claim may still have reached ap-south, and a claim held for a
  // request that failed is not released yet.)
  await W.waitLinked();
  for (let i = 0; i < 8; i++) {
    const r = await call('us-east', 'POST', '/v1/workspaces', { name: 'Back', slug: uniq('back') }, u.token);
    assert.equal(r.status, 201, `after healing: ${r.text}`);
  }
});

test("a workspace's events reach the regions it allows, and are nowhere else: Postgres, JetStream, Redis", async () => {
  const u = await signup('eu-west');
  const ws = await workspace(u, ['ap-south']); // eu-west home, ap-south replica, never us-east
  const marker = uniq('residency-marker');
  const ids = [];
  for (let i = 0; i < 5; i++) {
    const r = await post(u, ws, `${marker} ${i}`);
    assert.equal(r.status, 201);
    ids.push(r.json.message.id);
  }
  const top = await head(ws);
  await waitFor(async () => (await replica('ap-south', ws.id)).applied === top, { timeoutMs: 30000, message: 'the ap-south replica' });
  const rep = await replica('ap-south', ws.id);
  assert.equal(rep.distinct, top);
  assert.equal(rep.events, top);

  // us-east: the directory row (ids only) and nothing else.
  assert.deepEqual(await replica('us-east', ws.id), { applied: -1, expected: -1, events: 0, distinct: 0 });
  for (const pg of R('us-east').postgres) {
    const dump = await pgDump(pg);
    assert.ok(!dump.includes(marker), 'no message text in any us-east table');
    assert.ok(!dump.includes(ids[0]), 'no message of it in any us-east table');
    assert.ok(!dump.includes(`ev.eu-west.us-east.${ws.id}`));
  }
  const dumpAp = (await Promise.all(R('ap-south').postgres.map(pgDump))).join('\n');
  // Bodies travel encrypted (docs/encryption.md): the replica holds the
  // messages (their ids), never their text.
  assert.ok(dumpAp.includes(ids[0]), 'the allowed replica does hold it (the check can see content)');
  assert.ok(!dumpAp.includes(marker), 'bodies are ciphertext at the replica too');
  // JetStream: us-east's inbound stream has nothing of the workspace; eu-west published none for it.
  const inUs = await streamInfo(R('us-east').nats.port, 'IN_us-east', `ev.*.*.${ws.id}.>`);
  assert.equal(Object.keys(inUs.state.subjects || {}).length, 0, JSON.stringify(inUs.state.subjects));
  const evEu = await streamInfo(R('eu-west').nats.port, 'EV_eu-west', `ev.eu-west.us-east.${ws.id}.>`);
  assert.equal(Object.keys(evEu.state.subjects || {}).length, 0);
  const evEuAp = await streamInfo(R('eu-west').nats.port, 'EV_eu-west', `ev.eu-west.ap-south.${ws.id}.>`);
  assert.ok(Object.keys(evEuAp.state.subjects || {}).length > 0, 'the check sees what was sent to ap-south');
  // Redis of other regions: no key names the workspace.
  for (const r of ['us-east', 'ap-south']) {
    const keys = await R(r).redis.command(`KEYS *${ws.id}*`);
    assert.match(keys, /^\*0/, `${r} Redis: ${keys}`);
  }
});

test('an event dropped in transit is detected as a gap and backfilled from the home region', async () => {
  const u = await signup('us-east');
  const ws = await workspace(u, ['eu-west']);
  assert.equal((await post(u, ws, 'before')).status, 201);
  await waitFor(async () => (await replica('eu-west', ws.id)).applied === (await head(ws)), { timeoutMs: 30000, message: 'first events replicated' });
  await W.cut('eu-west');
  try {
    assert.equal((await post(u, ws, 'to be dropped')).status, 201);
    const seqDropped = await head(ws);
    // Drop it in transit: delete eu-west's copy from us-east's EV stream before eu-west can source it.
    await waitFor(async () => {
      const m = await natsJson(R('us-east').nats.port, '$JS.API.STREAM.MSG.GET.EV_us-east', { last_by_subj: `ev.us-east.eu-west.${ws.id}.message.created` });
      if (!m.message) return false;
      const env = JSON.parse(Buffer.from(m.message.data, 'base64').toString());
      if (env.seq !== seqDropped) return false;
      const del = await natsJson(R('us-east').nats.port, '$JS.API.STREAM.MSG.DELETE.EV_us-east', { seq: m.message.seq, no_erase: true });
      return del.success === true;
    }, { timeoutMs: 10000, message: 'the in-flight copy deleted' });
    for (let i = 0; i < 3; i++) assert.equal((await post(u, ws, `after ${i}`)).status, 201);
  } finally {
    await W.heal('eu-west');
  }
  const top = await head(ws);
  await waitFor(async () => (await replica('eu-west', ws.id)).applied === top, { timeoutMs: 60000, message: 'the gap backfilled' });
  const rep = await replica('eu-west', ws.id);
  assert.equal(rep.distinct, top, 'every seq once');
  const gaps = await psqlAll('eu-west', `SELECT coalesce(sum(gaps_found), 0), coalesce(sum(backfilled), 0) FROM replica_workspaces WHERE workspace_id = ${sq(ws.id)}`);
  const [found, filled] = gaps.map((g) => g.split('|').map(Number)).reduce((a, b) => [a[0] + b[0], a[1] + b[1]]);
  assert.ok(found >= 1, 'the gap was seen');
  assert.ok(filled >= 1, 'and filled from us-east');
  const metrics = (await call('eu-west', 'GET', '/metrics')).text;
  assert.match(metrics, /meridian_replication_gaps_total [1-9]/);
  const series = (await call('eu-west', 'GET', '/metrics/replicas')).text;
  assert.match(series, new RegExp(`meridian_replica_applied_seq\\{workspace="${ws.id}",home="us-east"\\} ${top}\\n`));
  assert.match(series, new RegExp(`meridian_replica_expected_seq\\{workspace="${ws.id}",home="us-east"\\} ${top}\\n`));
  assert.match(series, /meridian_replica_shards_unavailable 0/);
});

test('a region cut off for 30 s keeps serving its own workspaces; afterwards its replicas hold every event once', async () => {
  const u = await signup('us-east');
  const ws = await workspace(u, ['eu-west']);
  const local = await signup('eu-west');
  const wsEu = await workspace(local);
  // A live stream in eu-west during the cut.
  const seen = [];
  const sock = new WebSocket(`${R('eu-west').api.replace('http', 'ws')}/v1/workspaces/${wsEu.id}/stream`, ['meridian.v1', `bearer.${local.token}`]);
  sock.on('message', (d) => {
    const f = JSON.parse(d.toString());
    if (f.type === 'event' && f.event.type === 'message.created') seen.push(f.event.payload.text);
  });
  await new Promise((resolve, reject) => (sock.once('open', resolve), sock.once('error', reject)));
  await W.cut('eu-west');
  let posted = 0;
  let localPosted = 0;
  try {
    const until = Date.now() + 30000;
    while (Date.now() < until) {
      assert.equal((await post(u, ws, `during ${posted}`)).status, 201);
      posted++;
      const r = await post(local, wsEu, `local ${localPosted}`);
      assert.equal(r.status, 201, `eu-west serves its own workspace while cut off: ${r.text}`);
      localPosted++;
      await new Promise((r) => setTimeout(r, 100)); // pacing the load, not synchronising
    }
    await waitFor(() => seen.length === localPosted, { timeoutMs: 10000, message: 'real-time delivery in the cut-off region' });
  } finally {
    await W.heal('eu-west');
    sock.close();
  }
  const top = await head(ws);
  await waitFor(async () => (await replica('eu-west', ws.id)).applied === top, { timeoutMs: 120000, message: 'the replica caught up after healing' });
  const rep = await replica('eu-west', ws.id);
  assert.equal(rep.events, top, 'no event lost, none duplicated');
  assert.equal(rep.distinct, top);
  assert.ok(posted > 50, `posts kept flowing (${posted})`);
});

function pgDump(pg) {
  return new Promise((resolve, reject) => {
    const child = spawn(pgBin('pg_dump'), ['-h', pg.host, '-p', String(pg.port), '-U', 'meridian', '-d', 'meridian', '--data-only'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`pg_dump: ${err}`))));
  });
}

async function natsJson(port, subject, body) {
  const m = await natsRequest(port, subject, JSON.stringify(body ?? {}), { timeoutMs: 5000 });
  return JSON.parse(m.data.toString());
}

async function streamInfo(port, stream, filter) {
  const info = await natsJson(port, `$JS.API.STREAM.INFO.${stream}`, { subjects_filter: filter });
  assert.ok(info.state, `stream ${stream}: ${JSON.stringify(info)}`);
  return info;
}
