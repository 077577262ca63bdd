// meridianctl against a real three-region world: `residency verify` passes on
// a clean world and fails naming a stray copy planted by hand in Postgres or
// Redis, or a directory column that could hold an email; `audit verify`
// passes on intact chains and names every edited, deleted, reordered or
// inserted row (tampered directly in Postgres, as an attacker would, after
// disabling the append-only trigger); `audit export` writes JSON lines; bad
// input is refused before anything is asked; the residency commands go
// through the home region's admin API (skipped while a region has no admin API).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { binary, http, startWorlds, waitFor } from '../lib/harness.mjs';

const REGIONS = ['us-east', 'eu-west', 'ap-south'];
let W;
let owner; // eu-west user, owner of both workspaces
let wsRep; // eu-west, replicated to us-east
let wsLocal; // eu-west only
before(async () => {
  W = await startWorlds({
    regions: REGIONS,
    workers: 1,
    shards: 2,
    config: { limits: { write_rate_per_s: 100000, write_burst: 100000 } },
  });
  await fixtures();
});
after(async () => {
  await W?.stop();
});

const R = (r) => W.regions[r];
const call = (region, method, p, body, token) =>
  http(method, `${R(region).api}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
const uniq = (p) => `${p}-${process.pid}-${++n}`;
const sq = (s) => `'${String(s).replace(/'/g, "''")}'`;

/** Runs meridianctl; resolves {code, stdout, stderr, json}. */
function ctl(args, { token, env = {}, world = W.worldFile } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(binary('meridianctl'), args, {
      env: { ...process.env, MERIDIAN_WORLD: world || '', MERIDIAN_TOKEN: token || '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 60000);
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      let json = null;
      try {
        json = JSON.parse(stdout);
      } catch {
        /* not JSON */
      }
      resolve({ code, stdout, stderr, json });
    });
  });
}

async function signup(region) {
  const r = await call(region, 'POST', '/v1/auth/signup', { email: `${uniq('ctl')}@example.com`, password: 'meridianctl password', display_name: 'C' });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token, region };
}
async function workspace(user, allowed) {
  const r = await call(user.region, 'POST', '/v1/workspaces', { name: 'Ctl', slug: uniq('ctl'), allowed_regions: allowed }, user.token);
  assert.equal(r.status, 201, r.text);
  const id = r.json.workspace.id;
  const ch = await call(user.region, 'GET', `/v1/workspaces/${id}/channels`, undefined, user.token);
  return { id, general: ch.json.channels[0].id, home: user.region };
}
async function post(user, ws, text) {
  const r = await call(user.region, 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text }, user.token);
  assert.ok(r.status === 200 || r.status === 201, r.text);
}
const psqlAll = async (region, sql) => (await Promise.all(R(region).postgres.map((p) => p.psql(sql)))).map((s) => s.trim());
const sum = (rows) => rows.reduce((a, s) => a + (Number(s) || 0), 0);

// ------------------------------------------------------------ fixtures

async function fixtures() {
  owner = await signup('eu-west');
  wsRep = await workspace(owner, ['us-east']);
  wsLocal = await workspace(owner);
  for (let i = 0; i < 5; i++) await post(owner, wsRep, `replicated ${i}`);
  for (let i = 0; i < 3; i++) await post(owner, wsLocal, `local ${i}`);
  // Replication has delivered every event of wsRep to us-east.
  const head = sum(await psqlAll('eu-west', `SELECT seq FROM workspaces WHERE id = ${sq(wsRep.id)}`));
  await waitFor(async () => sum(await psqlAll('us-east', `SELECT count(*) FROM replica_events WHERE workspace_id = ${sq(wsRep.id)}`)) >= head, {
    timeoutMs: 30000,
    message: 'replication of the test workspace to us-east',
  });
  // ...and the directory of every region knows both workspaces.
  for (const r of REGIONS)
    await waitFor(async () => sum(await psqlAll(r, `SELECT count(*) FROM dir_workspaces WHERE workspace_id IN (${sq(wsRep.id)}, ${sq(wsLocal.id)})`)) >= 2 * R(r).postgres.length, {
      timeoutMs: 30000,
      message: `the directory of ${r}`,
    });
}

// ------------------------------------------------------------ residency verify

test('residency verify: a clean world passes and says where each workspace is', async () => {
  const r = await ctl(['--json', 'residency', 'verify']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(r.json.ok, true);
  assert.deepEqual(r.json.violations, []);
  assert.deepEqual(r.json.unreachable, []);
  assert.match(r.json.invariants['7'], /^checked/);
  const rep = r.json.workspaces.find((w) => w.workspace_id === wsRep.id);
  assert.equal(rep.home_region, 'eu-west');
  assert.deepEqual([...rep.allowed_regions].sort(), ['eu-west', 'us-east']);
  const where = new Set(rep.locations.filter((l) => l.content).map((l) => `${l.region}/${l.store}`));
  assert.ok(where.has('eu-west/postgres') && where.has('us-east/postgres') && where.has('eu-west/jetstream') && where.has('us-east/jetstream'), [...where].join(' '));
  assert.ok(![...where].some((w) => w.startsWith('ap-south/')), [...where].join(' '));
  const msgs = rep.locations.find((l) => l.region === 'eu-west' && l.table === 'messages');
  assert.equal(msgs.rows, 5);
  const local = r.json.workspaces.find((w) => w.workspace_id === wsLocal.id);
  assert.deepEqual(local.allowed_regions, ['eu-west']);
  assert.ok(local.locations.every((l) => l.region === 'eu-west'), JSON.stringify(local.locations));
  assert.ok(r.json.scanned.postgres_rows > 0);

  const human = await ctl(['residency', 'verify']);
  assert.equal(human.code, 0, human.stdout + human.stderr);
  assert.match(human.stdout, new RegExp(`${wsRep.id}\\s+eu-west`));
  assert.match(human.stdout, /invariant 1 .*: holds/);
});

test('residency verify: a stray copy planted by hand fails and is named', async () => {
  // A replica event of the eu-west/us-east workspace in ap-south, which it does not allow.
  const shard = R('ap-south').postgres[1];
  await shard.psql(
    `INSERT INTO replica_events (workspace_id, seq, event_id, type, payload, home_region) VALUES (${sq(wsRep.id)}, 999, gen_random_uuid(), 'message.created', '{"text":"stray"}', 'eu-west')`,
  );
  // A message of the eu-west-only workspace on a us-east shard (foreign keys off, as a bulk copy would).
  const us = R('us-east').postgres[0];
  await us.psql(
    `SET session_replication_role = replica; INSERT INTO messages (workspace_id, id, channel_id, seq, author_id, body) VALUES (${sq(wsLocal.id)}, 'm_stray', ${sq(wsLocal.general)}, 1, ${sq(owner.id)}, 'stray copy')`,
  );
  // A presence key of an eu-west workspace in us-east's Redis.
  await R('us-east').redis.command(`SET pr:{${wsLocal.id}} 1 EX 600`);
  try {
    const r = await ctl(['--json', 'residency', 'verify']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.equal(r.json.ok, false);
    const v = r.json.violations;
    assert.ok(v.some((x) => x.invariant === 1 && x.workspace_id === wsRep.id && x.region === 'ap-south' && x.store === 'postgres' && x.shard === 1 && x.table === 'replica_events' && x.count === 1), JSON.stringify(v));
    assert.ok(v.some((x) => x.workspace_id === wsLocal.id && x.region === 'us-east' && x.table === 'messages' && x.shard === 0), JSON.stringify(v));
    assert.ok(v.some((x) => x.workspace_id === wsLocal.id && x.region === 'us-east' && x.store === 'redis'), JSON.stringify(v));
    assert.equal(r.json.workspaces.find((w) => w.workspace_id === wsRep.id).ok, false);

    const human = await ctl(['residency', 'verify']);
    assert.equal(human.code, 1);
    assert.match(human.stdout, new RegExp(`${wsRep.id}: 1 rows of replica_events in ap-south shard 1, but ap-south is not allowed`));
    assert.match(human.stdout, /invariant 1 .*: VIOLATED/);
    // --workspace narrows the report and the exit code.
    const other = await signup('ap-south');
    const clean = await workspace(other);
    const one = await ctl(['--json', 'residency', 'verify', '--workspace', clean.id]);
    assert.equal(one.code, 0, one.stdout);
    assert.deepEqual(one.json.violations, []);
  } finally {
    await shard.psql(`DELETE FROM replica_events WHERE workspace_id = ${sq(wsRep.id)} AND seq = 999`);
    await us.psql(`DELETE FROM messages WHERE workspace_id = ${sq(wsLocal.id)} AND id = 'm_stray'`);
    await R('us-east').redis.command(`DEL pr:{${wsLocal.id}}`);
  }
  const again = await ctl(['--json', 'residency', 'verify']);
  assert.equal(again.code, 0, JSON.stringify(again.json?.violations));
});

test('residency verify: a directory column that could hold emails breaks invariant 8', async () => {
  const pg = R('ap-south').postgres[0];
  await pg.psql(`ALTER TABLE dir_users ADD COLUMN contact_email text`);
  try {
    const r = await ctl(['--json', 'residency', 'verify']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.ok(r.json.violations.some((x) => x.invariant === 8 && x.region === 'ap-south' && x.table === 'dir_users' && /contact_email/.test(x.message)), JSON.stringify(r.json.violations));
  } finally {
    await pg.psql(`ALTER TABLE dir_users DROP COLUMN contact_email`);
  }
});

test('residency verify: an unreachable store makes the check incomplete (exit 3), never clean', async () => {
  const world = JSON.parse(fs.readFileSync(W.worldFile, 'utf8'));
  world.regions.find((r) => r.name === 'ap-south').redis.port = 1; // nothing listens there
  const file = path.join(W.tmp, 'world-broken-redis.json');
  fs.writeFileSync(file, JSON.stringify(world));
  const r = await ctl(['--json', 'residency', 'verify'], { world: file });
  assert.equal(r.code, 3, r.stdout + r.stderr);
  assert.equal(r.json.ok, false);
  assert.ok(r.json.unreachable.some((u) => /^ap-south redis/.test(u)), JSON.stringify(r.json.unreachable));
});

// ------------------------------------------------------------ bad input

test('bad input is refused with a clear error before anything is asked', async () => {
  const t = { token: owner.token };
  const cases = [
    [['residency', 'pin', wsRep.id, '--regions', 'mars-1', '--reason', 'r'], /unknown region 'mars-1'.*us-east, eu-west, ap-south/],
    [['residency', 'pin', wsRep.id], /needs --reason/],
    [['residency', 'pin', wsRep.id, '--reason', '   '], /needs --reason/],
    [['residency', 'unpin', wsRep.id], /needs --reason/],
    [['residency', 'set-allowed', wsRep.id, 'eu-west,eu-west', '--reason', 'r'], /listed twice/],
    [['residency', 'set-allowed', wsRep.id, '--reason', 'r'], /usage: residency set-allowed/],
    [['residency', 'show', 'not an id!'], /not a workspace id/],
    [['residency', 'fly'], /unknown residency command 'fly'/],
    [['audit', 'verify', '--region', 'nowhere'], /unknown region 'nowhere'/],
    [['launch'], /unknown command 'launch'/],
  ];
  for (const [args, re] of cases) {
    const r = await ctl(args, t);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
  }
  const noToken = await ctl(['residency', 'pin', wsRep.id, '--reason', 'x']);
  assert.equal(noToken.code, 2);
  assert.match(noToken.stderr, /needs an access token/);
  const noWorld = await ctl(['audit', 'verify'], { world: '' });
  assert.equal(noWorld.code, 2);
  assert.match(noWorld.stderr, /no world file/);
  // Nothing changed: the policy is as created.
  const pol = await psqlAll('eu-west', `SELECT array_to_string(allowed_regions, ',') FROM workspaces WHERE id = ${sq(wsRep.id)}`);
  assert.ok(pol.some((p) => p.split(',').sort().join(',') === 'eu-west,us-east' || p === 'us-east'), pol.join('|'));
});

// ------------------------------------------------------------ audit chains

// BLAKE2b (RFC 7693) with a 32-byte digest, written from the RFC for this
// test: node's OpenSSL offers only the 64-byte variant, whose output differs.
const IV = [
  0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n,
  0x510e527fade682d1n, 0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n,
];
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];
const M64 = (1n << 64n) - 1n;
const rotr = (x, k) => ((x >> BigInt(k)) | (x << BigInt(64 - k))) & M64;
function blake2b256(data) {
  const h = [...IV];
  h[0] ^= 0x01010000n ^ 32n;
  const blocks = Math.max(1, Math.ceil(data.length / 128));
  for (let b = 0; b < blocks; b++) {
    const block = Buffer.alloc(128);
    data.copy(block, 0, b * 128, Math.min(data.length, (b + 1) * 128));
    const m = Array.from({ length: 16 }, (_, i) => block.readBigUInt64LE(i * 8));
    const last = b === blocks - 1;
    const t = BigInt(last ? data.length : (b + 1) * 128);
    const v = [...h, ...IV];
    v[12] ^= t & M64;
    v[13] ^= t >> 64n;
    if (last) v[14] ^= M64;
    const G = (a, bb, c, d, x, y) => {
      v[a] = (v[a] + v[bb] + x) & M64;
      v[d] = rotr(v[d] ^ v[a], 32);
      v[c] = (v[c] + v[d]) & M64;
      v[bb] = rotr(v[bb] ^ v[c], 24);
      v[a] = (v[a] + v[bb] + y) & M64;
      v[d] = rotr(v[d] ^ v[a], 16);
      v[c] = (v[c] + v[d]) & M64;
      v[bb] = rotr(v[bb] ^ v[c], 63);
    };
    for (let r = 0; r < 12; r++) {
      const s = SIGMA[r % 10];
      G(0, 4, 8, 12, m[s[0]], m[s[1]]);
      G(1, 5, 9, 13, m[s[2]], m[s[3]]);
      G(2, 6, 10, 14, m[s[4]], m[s[5]]);
      G(3, 7, 11, 15, m[s[6]], m[s[7]]);
      G(0, 5, 10, 15, m[s[8]], m[s[9]]);
      G(1, 6, 11, 12, m[s[10]], m[s[11]]);
      G(2, 7, 8, 13, m[s[12]], m[s[13]]);
      G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (let i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
  }
  const out = Buffer.alloc(64);
  h.forEach((x, i) => out.writeBigUInt64LE(x, i * 8));
  return out.subarray(0, 32);
}

/** The region's signing key (the file startWorlds wrote): {sign(bytes), kid}. */
function signingKey(region) {
  const seed = Buffer.from(fs.readFileSync(path.join(W.tmp, region, 'keys', 'signing.key'), 'utf8').trim(), 'hex');
  const key = crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]), format: 'der', type: 'pkcs8' });
  const pk = crypto.createPublicKey(key).export({ format: 'der', type: 'spki' }).subarray(-32);
  return { sign: (b) => crypto.sign(null, b, key), kid: pk.subarray(0, 8).toString('base64url') };
}

/** Appends count properly chained and signed entries to a shard's audit_log. */
async function appendChain(region, pg, count, ws) {
  const key = signingKey(region);
  const last = (await pg.psql(`SELECT coalesce(max(seq), 0) || '|' || coalesce((SELECT encode(hash, 'hex') FROM audit_log ORDER BY seq DESC LIMIT 1), '') FROM audit_log`)).trim();
  let [seq, prevHex] = last.split('|');
  seq = Number(seq);
  let prev = prevHex ? Buffer.from(prevHex, 'hex') : Buffer.alloc(32);
  const rows = [];
  for (let i = 0; i < count; i++) {
    seq++;
    const entry = JSON.stringify({ seq, region, at: new Date().toISOString(), ...(ws ? { workspace_id: ws } : {}), action: 'set_allowed_regions', actor: owner.id, reason: `test entry ${seq}`, allowed_regions: [region] });
    const hash = blake2b256(Buffer.concat([prev, Buffer.from(entry)]));
    const sig = key.sign(hash);
    rows.push(`(${seq}, ${sq(region)}, now(), ${ws ? sq(ws) : 'NULL'}, 'set_allowed_regions', ${sq(entry)}, '\\x${prev.toString('hex')}', '\\x${hash.toString('hex')}', '\\x${sig.toString('hex')}', ${sq(key.kid)})`);
    prev = hash;
  }
  await pg.psql(`INSERT INTO audit_log (seq, region, at, workspace_id, action, entry, prev_hash, hash, signature, key_id) VALUES ${rows.join(',')}`);
}

/** Runs sql on the shard as an attacker: the append-only trigger disabled for the duration. */
const tamper = (pg, sql) => pg.psql(`BEGIN; ALTER TABLE audit_log DISABLE TRIGGER USER; ${sql}; ALTER TABLE audit_log ENABLE TRIGGER USER; COMMIT;`);

test('blake2b-256 in this test matches the RFC 7693 test vector', () => {
  // BLAKE2b-256("abc"), as libsodium's crypto_generichash computes it.
  assert.equal(blake2b256(Buffer.from('abc')).toString('hex'), 'bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319');
});

test('audit verify: intact chains pass; edited, deleted, reordered and inserted entries are named', async () => {
  const pg = R('eu-west').postgres[1];
  // Entries of their own unless the admin API has written some already.
  const existing = Number((await pg.psql('SELECT count(*) FROM audit_log')).trim());
  if (existing < 4) await appendChain('eu-west', pg, 4 - existing + 2, wsRep.id);
  await appendChain('ap-south', R('ap-south').postgres[0], 2, null);
  const ok = await ctl(['--json', 'audit', 'verify']);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.equal(ok.json.ok, true);
  assert.equal(ok.json.chains.length, REGIONS.length * 2);
  const chain = ok.json.chains.find((c) => c.region === 'eu-west' && c.shard === 1);
  assert.ok(chain.entries >= 4 && chain.status === 'ok', JSON.stringify(chain));
  const anchors = path.join(W.tmp, 'audit-anchors.json');
  fs.writeFileSync(anchors, ok.stdout);
  const human = await ctl(['audit', 'verify']);
  assert.equal(human.code, 0);
  assert.match(human.stdout, /every audit chain verifies/);

  // Export: one JSON line per entry, in chain order, with its shard.
  const ex = await ctl(['audit', 'export', '--region', 'eu-west']);
  assert.equal(ex.code, 0, ex.stderr);
  const lines = ex.stdout.trim().split('\n').map((l) => JSON.parse(l));
  const mine = lines.filter((l) => l.shard === 1);
  assert.equal(mine.length, chain.entries);
  for (const l of mine) assert.deepEqual(Object.keys(l).sort(), ['action', 'at', 'entry', 'hash', 'key_id', 'prev_hash', 'region', 'seq', 'shard', 'signature', 'workspace_id']);
  assert.ok(lines.every((l) => l.region === 'eu-west'));
  assert.equal(JSON.parse(mine[1].entry).seq, mine[1].seq);

  const saved = (await pg.psql(`SELECT count(*) FROM audit_log`)).trim();
  // Every tampering runs on a copy of the chain restored afterwards.
  await pg.psql(`CREATE SCHEMA IF NOT EXISTS attacker; DROP TABLE IF EXISTS attacker.audit_backup; CREATE TABLE attacker.audit_backup AS SELECT * FROM audit_log`);
  const restore = () => tamper(pg, `DELETE FROM audit_log; INSERT INTO audit_log SELECT * FROM attacker.audit_backup`);
  const expectNamed = async (what, seq, problem) => {
    const r = await ctl(['--json', 'audit', 'verify']);
    assert.equal(r.code, 1, `${what}: ${r.stdout}${r.stderr}`);
    assert.ok(
      r.json.problems.some((p) => p.region === 'eu-west' && p.shard === 1 && p.seq === seq && p.problem === problem),
      `${what}: ${JSON.stringify(r.json.problems)}`,
    );
    assert.equal(r.json.chains.find((c) => c.region === 'eu-west' && c.shard === 1).status, 'tampered');
    // Other chains are unaffected.
    assert.ok(r.json.problems.every((p) => p.region === 'eu-west' && p.shard === 1), what);
    const h = await ctl(['audit', 'verify']);
    assert.equal(h.code, 1);
    assert.match(h.stdout, new RegExp(`eu-west shard 1 seq ${seq}: ${problem}`), what);
    assert.match(h.stdout, /AUDIT VERIFICATION FAILED/);
    await restore();
  };
  try {
    // Edited: entry 2's text changed (one byte added).
    await tamper(pg, `UPDATE audit_log SET entry = entry || ' ' WHERE seq = 2`);
    await expectNamed('edited', 2, 'hash_mismatch');
    // Edited with its hash recomputed: the signature no longer verifies, and the next entry's link breaks.
    const row = (await pg.psql(`SELECT encode(prev_hash, 'hex') || '|' || entry FROM audit_log WHERE seq = 2`)).trim();
    const [prevHex, ...rest] = row.split('|');
    const forged = rest.join('|') + ' ';
    const fh = blake2b256(Buffer.concat([Buffer.from(prevHex, 'hex'), Buffer.from(forged)])).toString('hex');
    await tamper(pg, `UPDATE audit_log SET entry = ${sq(forged)}, hash = '\\x${fh}' WHERE seq = 2`);
    await expectNamed('rehashed', 2, 'bad_signature');
    await tamper(pg, `UPDATE audit_log SET entry = ${sq(forged)}, hash = '\\x${fh}' WHERE seq = 2`);
    await expectNamed('rehashed (next link)', 3, 'prev_hash_mismatch');
    // Deleted.
    await tamper(pg, `DELETE FROM audit_log WHERE seq = 3`);
    await expectNamed('deleted', 3, 'missing');
    // Reordered: entries 2 and 3 swap places.
    await tamper(pg, `UPDATE audit_log SET seq = seq + 1000000 WHERE seq IN (2, 3); UPDATE audit_log SET seq = CASE seq WHEN 1000002 THEN 3 ELSE 2 END WHERE seq > 1000000`);
    await expectNamed('reordered', 2, 'prev_hash_mismatch');
    // Inserted: a forged entry at the end, signed with a key that is not the region's.
    const other = signingKey('us-east');
    const last = (await pg.psql(`SELECT max(seq) || '|' || (SELECT encode(hash, 'hex') FROM audit_log ORDER BY seq DESC LIMIT 1) FROM audit_log`)).trim().split('|');
    const seq = Number(last[0]) + 1;
    const entry = JSON.stringify({ seq, region: 'eu-west', workspace_id: wsRep.id, action: 'unpin', reason: 'forged' });
    const h = blake2b256(Buffer.concat([Buffer.from(last[1], 'hex'), Buffer.from(entry)]));
    await tamper(pg, `INSERT INTO audit_log VALUES (${seq}, 'eu-west', now(), ${sq(wsRep.id)}, 'unpin', ${sq(entry)}, '\\x${last[1]}', '\\x${h.toString('hex')}', '\\x${other.sign(h).toString('hex')}', ${sq(signingKey('eu-west').kid)})`);
    await expectNamed('inserted', seq, 'bad_signature');
    // Truncated at the end: only a head recorded earlier exposes it.
    const head = chain.head_seq;
    await tamper(pg, `DELETE FROM audit_log WHERE seq = ${head}`);
    const plain = await ctl(['--json', 'audit', 'verify']);
    assert.equal(plain.code, 0, 'a shorter chain is still a valid chain');
    const anchored = await ctl(['--json', 'audit', 'verify', '--anchors', anchors]);
    assert.equal(anchored.code, 1, anchored.stdout);
    assert.ok(anchored.json.problems.some((p) => p.region === 'eu-west' && p.shard === 1 && p.seq === head && p.problem === 'truncated'), anchored.stdout);
    await restore();
  } finally {
    await restore();
    await pg.psql(`DROP SCHEMA IF EXISTS attacker CASCADE`);
  }
  assert.equal((await pg.psql(`SELECT count(*) FROM audit_log`)).trim(), saved);
  const back = await ctl(['--json', 'audit', 'verify', '--anchors', anchors]);
  assert.equal(back.code, 0, back.stdout);
});

// ------------------------------------------------------------ the admin API

test('residency commands go to the home region through the admin API', async (t) => {
  const probe = await call('eu-west', 'GET', '/v1/admin/residency/workspaces', undefined, owner.token);
  if (probe.status === 404) {
    t.skip('this build of the region has no admin API yet');
    return;
  }
  // A compliance admin of the workspace: invited with that role, joined.
  const admin = await signup('eu-west');
  const inv = await call('eu-west', 'POST', `/v1/workspaces/${wsLocal.id}/members`, { user_id: admin.id, role: 'compliance_admin' }, owner.token);
  assert.ok(inv.status === 201 || inv.status === 200, inv.text);
  const join = await call('eu-west', 'POST', `/v1/workspaces/${wsLocal.id}/join`, {}, admin.token);
  assert.ok(join.status === 200 || join.status === 201, join.text);
  const tok = { token: admin.token };

  // Sent to a region that is not home (us-east answers 421 naming eu-west; meridianctl follows).
  const pin = await ctl(['--json', 'residency', 'pin', wsLocal.id, '--reason', 'GDPR: EU only', '--region', 'us-east'], tok);
  assert.equal(pin.code, 0, pin.stdout + pin.stderr);
  assert.equal(pin.json.workspace.pinned, true);
  assert.deepEqual(pin.json.workspace.allowed_regions, ['eu-west']);
  assert.ok(pin.json.audit_seq >= 1);

  const show = await ctl(['--json', 'residency', 'show', wsLocal.id], tok);
  assert.equal(show.code, 0, show.stderr);
  assert.equal(show.json.workspace.reason, 'GDPR: EU only');
  assert.ok(show.json.audit.some((e) => e.seq === pin.json.audit_seq));
  const human = await ctl(['residency', 'show', wsLocal.id], tok);
  assert.match(human.stdout, /pinned\s+yes/);

  const list = await ctl(['--json', 'residency', 'list'], tok);
  assert.equal(list.code, 0, list.stderr);
  assert.ok(list.json.workspaces.some((w) => w.workspace_id === wsLocal.id && w.pinned === true));

  // The API's own refusals are shown with their code: not an admin.
  const outsider = await signup('eu-west');
  const no = await ctl(['residency', 'unpin', wsLocal.id, '--reason', 'x'], { token: outsider.token });
  assert.equal(no.code, 4, no.stdout + no.stderr);
  assert.match(no.stderr, /(403 forbidden|404 not_found)/);

  const unpin = await ctl(['residency', 'unpin', wsLocal.id, '--reason', 'contract ended'], tok);
  assert.equal(unpin.code, 0, unpin.stdout + unpin.stderr);
  assert.match(unpin.stdout, /pinned\s+no/);

  // Every change is in a chain that verifies.
  const v = await ctl(['--json', 'audit', 'verify']);
  assert.equal(v.code, 0, v.stdout);
  const r = await ctl(['--json', 'residency', 'verify']);
  assert.equal(r.code, 0, JSON.stringify(r.json?.violations));
});
