// meridianctl's live-move commands (docs/moves.md) against a real two-region
// world: a saved report verifies offline and a tampered one does not (this
// part needs no move API); then, once the region serves POST .../move, a dry
// run, a move scheduled in the future and cancelled, a real move waited for
// to the end, its signed report fetched and verified, and `residency verify`
// judging invariant 7 at the former home. Last, a standby copy: started,
// shown, stopped; then another one promoted while its home is stopped, and the
// old home fencing itself when back.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { binary, http, startWorlds, waitFor } from '../lib/harness.mjs';

const REGIONS = ['eu-west', 'us-east'];
let W;
let owner; // eu-west user, owner of the workspaces
let admin; // compliance_admin of both
let wsMove; // eu-west, allowed in us-east too: the one that moves
let wsStay; // eu-west only: a move to us-east is refused
let moveApi = false; // the region serves the move API
before(async () => {
  W = await startWorlds({
    regions: REGIONS,
    workers: 1,
    shards: 2,
    config: { limits: { write_rate_per_s: 100000, write_burst: 100000 } },
  });
  owner = await signup('eu-west');
  admin = await signup('eu-west');
  wsMove = await workspace(['eu-west', 'us-east']);
  wsStay = await workspace(['eu-west']);
  for (let i = 0; i < 20; i++) await post(owner, wsMove, `before the move ${i}`);
  const probe = await call('eu-west', 'GET', `/v1/admin/residency/workspaces/${wsMove.id}/move`, undefined, admin.token);
  moveApi = probe.status !== 404 || probe.json?.error?.code === 'no_move';
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
function ctl(args, { token, world = W.worldFile, timeoutMs = 60000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(binary('meridianctl'), args, {
      env: { ...process.env, MERIDIAN_WORLD: world || '', MERIDIAN_TOKEN: token || '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
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
  const r = await call(region, 'POST', '/v1/auth/signup', { email: `${uniq('mv')}@example.com`, password: 'meridianctl password', display_name: 'M' });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token, region };
}
async function workspace(allowed) {
  const r = await call('eu-west', 'POST', '/v1/workspaces', { name: 'Move', slug: uniq('mv'), allowed_regions: allowed }, owner.token);
  assert.equal(r.status, 201, r.text);
  const id = r.json.workspace.id;
  const inv = await call('eu-west', 'POST', `/v1/workspaces/${id}/members`, { user_id: admin.id, role: 'compliance_admin' }, owner.token);
  assert.ok([200, 201].includes(inv.status), inv.text);
  const j = await call('eu-west', 'POST', `/v1/workspaces/${id}/join`, {}, admin.token);
  assert.ok([200, 201, 204].includes(j.status), j.text);
  const ch = await call('eu-west', 'GET', `/v1/workspaces/${id}/channels`, undefined, owner.token);
  return { id, general: ch.json.channels[0].id };
}
async function post(user, ws, text, region = 'eu-west') {
  const r = await call(region, 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text }, user.token);
  assert.equal(r.status, 201, r.text);
  return r;
}

/** A region's signing key (the file startWorlds wrote): {sign(bytes), kid}. */
function signingKey(region) {
  const seed = Buffer.from(fs.readFileSync(path.join(W.tmp, region, 'keys', 'signing.key'), 'utf8').trim(), 'hex');
  const key = crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]), format: 'der', type: 'pkcs8' });
  const pk = crypto.createPublicKey(key).export({ format: 'der', type: 'spki' }).subarray(-32);
  return { sign: (b) => crypto.sign(null, b, key), kid: pk.subarray(0, 8).toString('base64url') };
}

/** A report document as GET .../move/report answers it, signed by region's key over text. */
function signedReport(region, report, { text = JSON.stringify(report), signedText = text, outerRegion = region } = {}) {
  const key = signingKey(region);
  return JSON.stringify({ report_text: text, signature: key.sign(Buffer.from(signedText)).toString('hex'), key_id: key.kid, region: outerRegion });
}
const write = (name, s) => {
  const f = path.join(W.tmp, name);
  fs.writeFileSync(f, s);
  return f;
};

// ------------------------------------------------------------ offline verification

test('verify-report: a signed report verifies offline; altered, mis-signed or unclean ones fail', async () => {
  const report = {
    v: 1, move_id: crypto.randomUUID(), workspace_id: 'w_offline', source_region: 'eu-west', target_region: 'us-east',
    epoch_before: 1, epoch_after: 2, final_seq: 20, copied: { messages: 20 }, steps: [], freeze_ms: 12,
    purged: { messages: 20, stream_messages: 20, redis_keys: 0 }, key_destroyed: true,
    left_at_source: { messages: 0, workspace_keys: 0 }, signed_at: new Date().toISOString(),
  };
  const good = await ctl(['residency', 'verify-report', write('good.json', signedReport('eu-west', report))]);
  assert.equal(good.code, 0, good.stdout + good.stderr);
  assert.match(good.stdout, /signature OK/);
  const js = await ctl(['--json', 'residency', 'verify-report', path.join(W.tmp, 'good.json')]);
  assert.equal(js.code, 0);
  assert.equal(js.json.ok, true);
  assert.equal(js.json.signature_ok, true);

  const text = JSON.stringify(report);
  const cases = [
    ['edited after signing', signedReport('eu-west', report, { text: text.replace('"freeze_ms":12', '"freeze_ms":11'), signedText: text }), /signature does not verify/],
    ['signed by the target, not the source', signedReport('us-east', report, { outerRegion: 'eu-west' }), /signature does not verify|not one of eu-west's token_keys/],
    ['outer region disagrees', signedReport('us-east', report, { outerRegion: 'us-east' }), /names source region eu-west but claims to be signed by us-east/],
    ['rows left at the source', signedReport('eu-west', { ...report, left_at_source: { messages: 3, workspace_keys: 0 } }), /3 messages left at the source/],
    ['key not destroyed', signedReport('eu-west', { ...report, key_destroyed: false }), /key_destroyed is not true/],
    ['not a report', '{"hello": 1}', /not a move report/],
  ];
  for (const [name, doc, re] of cases) {
    const r = await ctl(['residency', 'verify-report', write(`bad-${n++}.json`, doc)]);
    assert.equal(r.code, 1, `${name}: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout, re, name);
    assert.match(r.stdout, /REPORT VERIFICATION FAILED/, name);
  }
  const missing = await ctl(['residency', 'verify-report', path.join(W.tmp, 'nope.json')]);
  assert.equal(missing.code, 2);
});

test('move commands refuse bad input before asking anything', async () => {
  const t = { token: admin.token };
  const cases = [
    [['residency', 'move', wsMove.id], /usage: residency move WORKSPACE REGION/],
    [['residency', 'move', wsMove.id, 'us-east'], /needs --reason/],
    [['residency', 'move', wsMove.id, 'mars-1', '--reason', 'r'], /unknown region 'mars-1'/],
    [['residency', 'move', wsMove.id, 'us-east', '--reason', 'r', '--at', 'tomorrow'], /not a UTC time/],
    [['residency', 'move', wsMove.id, 'us-east', '--reason', 'r', '--at', '2030-02-30T10:00:00Z'], /not a UTC time/],
    [['residency', 'move', wsMove.id, 'us-east', '--reason', 'r', '--at', '2020-01-01T00:00:00Z'], /in the past/],
    [['residency', 'move', wsMove.id, 'us-east', '--dry-run', '--at', '2030-01-01T00:00:00Z'], /do not go together/],
    [['residency', 'move-status', 'not an id!'], /not a workspace id/],
    [['residency', 'move-status', wsMove.id, '--dry-run'], /only for residency move/],
    [['residency', 'move-report', wsMove.id, '--out'], /--out needs a value/],
    [['residency', 'move-status', wsMove.id, '--verify'], /only for residency move-report/],
  ];
  for (const [args, re] of cases) {
    const r = await ctl(args, t);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
  }
  const noToken = await ctl(['residency', 'move-status', wsMove.id]);
  assert.equal(noToken.code, 2);
  assert.match(noToken.stderr, /needs an access token/);
});

// ------------------------------------------------------------ against the move API

test('dry run: what would move, and a refusal with its problem', async (t) => {
  if (!moveApi) return t.skip('this build of the region has no move API yet (POST .../move is 404)');
  const ok = await ctl(['--json', 'residency', 'move', wsMove.id, 'us-east', '--dry-run'], { token: admin.token });
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.equal(ok.json.dry_run, true);
  assert.equal(ok.json.source_region, 'eu-west');
  assert.equal(ok.json.target_region, 'us-east');
  assert.ok(ok.json.size.messages >= 20, JSON.stringify(ok.json.size));
  assert.deepEqual(ok.json.problems, []);
  const human = await ctl(['residency', 'move', wsMove.id, 'us-east', '--dry-run'], { token: admin.token });
  assert.equal(human.code, 0, human.stdout + human.stderr);
  assert.match(human.stdout, /valid: the move can start/);
  assert.match(human.stdout, /estimate/);

  const refused = await ctl(['residency', 'move', wsStay.id, 'us-east', '--dry-run'], { token: admin.token });
  assert.equal(refused.code, 4, refused.stdout + refused.stderr);
  assert.match(refused.stdout, /target_not_allowed/);
  assert.match(refused.stdout, /REFUSED/);
  // A dry run changes nothing: no move exists.
  const st = await ctl(['residency', 'move-status', wsMove.id], { token: admin.token });
  assert.equal(st.code, 4, st.stdout + st.stderr);
  assert.match(st.stderr, /404 no_move/);
  // The owner is not a compliance admin.
  const owner403 = await ctl(['residency', 'move', wsMove.id, 'us-east', '--dry-run'], { token: owner.token });
  assert.equal(owner403.code, 4);
  assert.match(owner403.stderr, /403 forbidden/);
});

test('a move scheduled in the future waits, shows as scheduled, and can be cancelled', async (t) => {
  if (!moveApi) return t.skip('this build of the region has no move API yet (POST .../move is 404)');
  const at = new Date(Date.now() + 3600e3).toISOString().replace(/\.\d+Z$/, 'Z');
  const s = await ctl(['--json', 'residency', 'move', wsMove.id, 'us-east', '--reason', 'scheduled for later', '--at', at], { token: admin.token });
  assert.equal(s.code, 0, s.stdout + s.stderr);
  assert.equal(s.json.move.state, 'scheduled');
  assert.ok(s.json.move.not_before, JSON.stringify(s.json.move));
  assert.equal(Date.parse(s.json.move.not_before), Date.parse(at));

  const again = await ctl(['residency', 'move', wsMove.id, 'us-east', '--reason', 'twice', '--no-wait'], { token: admin.token });
  assert.equal(again.code, 4, again.stdout + again.stderr);
  assert.match(again.stderr, /409 move_in_progress/);

  const st = await ctl(['residency', 'move-status', wsMove.id], { token: admin.token });
  assert.equal(st.code, 0, st.stdout + st.stderr);
  assert.match(st.stdout, /state\s+scheduled/);
  assert.match(st.stdout, /catch_up\s+pending/);

  const c = await ctl(['--json', 'residency', 'move-cancel', wsMove.id, '--reason', 'changed our mind'], { token: admin.token });
  assert.equal(c.code, 0, c.stdout + c.stderr);
  assert.equal(c.json.move.state, 'cancelled');
  const c2 = await ctl(['residency', 'move-cancel', wsMove.id], { token: admin.token });
  assert.equal(c2.code, 4, c2.stdout + c2.stderr);
  assert.match(c2.stderr, /404 no_move/);
  // Still at home in eu-west, still writable there.
  await post(owner, wsMove, 'after the cancel');
  const rep = await ctl(['residency', 'move-report', wsMove.id], { token: admin.token });
  assert.equal(rep.code, 4, rep.stdout + rep.stderr);
});

test('a real move runs to the end; its signed report verifies, a tampered copy does not; invariant 7 holds', async (t) => {
  if (!moveApi) return t.skip('this build of the region has no move API yet (POST .../move is 404)');
  // Whatever an earlier test left scheduled is not this test's business.
  await call('eu-west', 'POST', `/v1/admin/residency/workspaces/${wsMove.id}/move/cancel`, {}, admin.token);
  const m = await ctl(['--json', 'residency', 'move', wsMove.id, 'us-east', '--reason', 'customer asked for US hosting'], { token: admin.token, timeoutMs: 180000 });
  assert.equal(m.code, 0, m.stdout + m.stderr);
  assert.equal(m.json.move.state, 'done');
  assert.equal(m.json.move.source_region, 'eu-west');
  assert.equal(m.json.move.target_region, 'us-east');
  assert.deepEqual(m.json.move.steps.map((s) => s.name), ['catch_up', 'freeze', 'flip', 'purge', 'shred']);
  assert.ok(m.json.move.steps.every((s) => s.state === 'done'), JSON.stringify(m.json.move.steps));
  assert.ok(Number.isInteger(m.json.move.freeze_ms), JSON.stringify(m.json.move));

  // The new home takes writes; the old one names it.
  await post(owner, wsMove, 'after the move', 'us-east');
  const old = await call('eu-west', 'POST', `/v1/workspaces/${wsMove.id}/channels/${wsMove.general}/messages`, { text: 'at the old home' }, owner.token);
  assert.equal(old.status, 421, old.text);
  assert.equal(old.headers['meridian-home-region'], 'us-east');

  // Status through whichever region is asked first: the old home redirects.
  const st = await ctl(['residency', 'move-status', wsMove.id], { token: admin.token });
  assert.equal(st.code, 0, st.stdout + st.stderr);
  assert.match(st.stdout, /state\s+done/);
  assert.match(st.stdout, /freeze\s+\d+ ms/);

  const file = path.join(W.tmp, 'report.json');
  const rep = await ctl(['residency', 'move-report', wsMove.id, '--out', file, '--verify'], { token: admin.token });
  assert.equal(rep.code, 0, rep.stdout + rep.stderr);
  assert.match(rep.stdout, /signature OK/);
  const saved = JSON.parse(fs.readFileSync(file, 'utf8'));
  const report = JSON.parse(saved.report_text);
  assert.equal(report.workspace_id, wsMove.id);
  assert.equal(report.source_region, 'eu-west');
  assert.equal(report.key_destroyed, true);
  assert.ok(Object.values(report.left_at_source).every((x) => x === 0), saved.report_text);

  const off = await ctl(['--json', 'residency', 'verify-report', file]);
  assert.equal(off.code, 0, off.stdout + off.stderr);
  assert.equal(off.json.ok, true);
  // One byte changed in the signed text: the signature no longer holds.
  const tampered = { ...saved, report_text: saved.report_text.replace(/"final_seq":\s*(\d+)/, (_, x) => `"final_seq": ${Number(x) + 1}`) };
  assert.notEqual(tampered.report_text, saved.report_text);
  const bad = await ctl(['residency', 'verify-report', write('tampered-report.json', JSON.stringify(tampered))]);
  assert.equal(bad.code, 1, bad.stdout + bad.stderr);
  assert.match(bad.stdout, /signature does not verify/);

  // Invariant 7 on the real stores: eu-west keeps nothing of it but its audit chain.
  await waitFor(async () => {
    const v = await ctl(['--json', 'residency', 'verify', '--workspace', wsMove.id]);
    return v.code === 0 && v.json;
  }, { timeoutMs: 30000, message: 'residency verify clean after the move' }).catch(async (e) => {
    const v = await ctl(['--json', 'residency', 'verify', '--workspace', wsMove.id]);
    throw new Error(`${e.message}: ${v.stdout}${v.stderr}`);
  });
  const v = await ctl(['--json', 'residency', 'verify', '--workspace', wsMove.id]);
  assert.match(v.json.invariants['7'], /^checked/);
  const w = v.json.workspaces.find((x) => x.workspace_id === wsMove.id);
  assert.equal(w.home_region, 'us-east');
  const leftovers = w.locations.filter((l) => l.region === 'eu-west' && l.content && !['audit_log', 'replica_events'].includes(l.table) && !(l.store === 'jetstream' && l.origin !== 'eu-west'));
  assert.deepEqual(leftovers, []);
  // A data key planted back at the former home is named as invariant 7.
  const pg = R('eu-west').postgres;
  const keyRows = (await Promise.all(pg.map((p) => p.psql("SELECT to_regclass('workspace_keys') IS NOT NULL")))).map((s) => s.trim());
  if (keyRows[0] === 't') {
    await pg[0].psql(`INSERT INTO workspace_keys (workspace_id, key_id, wrapped) VALUES (${sq(wsMove.id)}, 'planted', '\\x${'00'.repeat(72)}')`);
    try {
      const bad7 = await ctl(['--json', 'residency', 'verify', '--workspace', wsMove.id]);
      assert.equal(bad7.code, 1, bad7.stdout + bad7.stderr);
      assert.ok(bad7.json.violations.some((x) => x.invariant === 7 && x.table === 'workspace_keys' && x.region === 'eu-west'), JSON.stringify(bad7.json.violations));
    } finally {
      await pg[0].psql(`DELETE FROM workspace_keys WHERE workspace_id = ${sq(wsMove.id)}`);
    }
  }
});

/** Runs meridianctl on a pseudo-terminal (util-linux `script`), so that it draws its progress; null without `script`. */
function ctlOnTerminal(args, { token, timeoutMs = 180000 } = {}) {
  const q = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
  const cmd = [binary('meridianctl'), ...args].map(q).join(' ');
  return new Promise((resolve) => {
    const child = spawn('script', ['-qec', cmd, '/dev/null'], {
      env: { ...process.env, MERIDIAN_WORLD: W.worldFile, MERIDIAN_TOKEN: token || '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', () => resolve(null));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

test('moving back, on a terminal: one progress bar per step; the first region is home again and the other a former home', async (t) => {
  if (!moveApi) return t.skip('this build of the region has no move API yet (POST .../move is 404)');
  const home = await call('us-east', 'GET', `/v1/admin/residency/workspaces/${wsMove.id}`, undefined, admin.token);
  if (home.status !== 200 || home.json.workspace.home_region !== 'us-east') return t.skip('the real move did not happen');
  // The source left the allowed set at the cut-over: allow eu-west again first.
  const al = await ctl(['residency', 'set-allowed', wsMove.id, 'us-east,eu-west', '--reason', 'moving back'], { token: admin.token });
  assert.equal(al.code, 0, al.stdout + al.stderr);
  const r = await ctlOnTerminal(['residency', 'move', wsMove.id, 'eu-west', '--reason', 'back to the EU'], { token: admin.token });
  if (r === null) return t.skip('no `script` to run meridianctl on a terminal');
  assert.equal(r.code, 0, r.out);
  for (const step of ['catch_up', 'freeze', 'flip', 'purge', 'shred']) assert.match(r.out, new RegExp(`${step}\\s+\\[#+\\] 100% done`), step);
  // A board drawn more than once is redrawn in place (a small move may be done at the first look).
  if ((r.out.match(/catch_up\s+\[/g) || []).length > 1) assert.match(r.out, /\x1b\[\d+A/, 'the board is redrawn in place');
  assert.match(r.out, /moving .*: us-east -> eu-west/);
  assert.match(r.out, /move \S+ done \(answered by eu-west\)/);
  await post(owner, wsMove, 'home again', 'eu-west');

  await waitFor(async () => (await ctl(['residency', 'verify', '--workspace', wsMove.id])).code === 0, { timeoutMs: 30000, message: 'residency verify clean after moving back' }).catch(async (e) => {
    const v = await ctl(['residency', 'verify', '--workspace', wsMove.id]);
    throw new Error(`${e.message}: ${v.stdout}${v.stderr}`);
  });
  const v = await ctl(['--json', 'residency', 'verify', '--workspace', wsMove.id]);
  assert.match(v.json.invariants['7'], /checked \(2 completed moves\)/);
  const w = v.json.workspaces.find((x) => x.workspace_id === wsMove.id);
  assert.equal(w.home_region, 'eu-west');
  assert.ok(!w.locations.some((l) => l.region === 'us-east' && ['messages', 'workspaces', 'workspace_keys'].includes(l.table)), JSON.stringify(w.locations));
});

// ------------------------------------------------------------ standby copies and promotion

/** Rows a SQL count finds over every shard of a region. */
async function countIn(region, sql) {
  const n = await Promise.all(R(region).postgres.map((p) => p.psql(sql)));
  return n.reduce((a, x) => a + Number(x.trim()), 0);
}

test('standby commands refuse bad input before asking anything', async () => {
  const t = { token: admin.token };
  const cases = [
    [['residency', 'standby', wsMove.id], /usage: residency standby WORKSPACE REGION/],
    [['residency', 'standby', wsMove.id, 'us-east'], /standby needs --reason/],
    [['residency', 'standby', wsMove.id, 'us-east', '--reason', 'r', '--force'], /--force is only for residency promote/],
    [['residency', 'standby', wsMove.id, 'mars-1', '--reason', 'r'], /unknown region 'mars-1'/],
    [['residency', 'promote', wsMove.id, '--reason', 'r'], /needs --region REGION/],
    [['residency', 'promote', wsMove.id, '--region', 'us-east'], /promote needs --reason/],
    [['residency', 'promote', wsMove.id, '--region', 'mars-1', '--reason', 'r'], /unknown region 'mars-1'/],
    [['residency', 'standby-stop', wsMove.id, '--force'], /--force is only for residency promote/],
  ];
  for (const [args, re] of cases) {
    const r = await ctl(args, t);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
  }
});

test('a standby copy starts, shows its kind and caught_seq, and stops', async (t) => {
  if (!moveApi) return t.skip('this build of the region has no move API yet (POST .../move is 404)');
  const ws = await workspace(['eu-west', 'us-east']);
  for (let i = 0; i < 3; i++) await post(owner, ws, `standby ${i}`);
  const refused = await ctl(['residency', 'standby', wsStay.id, 'us-east', '--reason', 'not allowed there'], { token: admin.token });
  assert.equal(refused.code, 4, refused.stdout + refused.stderr);
  assert.match(refused.stderr, /target_not_allowed/);

  // standby-stop never cancels a real move: a scheduled one stays until move-cancel.
  const at = new Date(Date.now() + 3600e3).toISOString().replace(/\.\d+Z$/, 'Z');
  const sched = await ctl(['residency', 'move', ws.id, 'us-east', '--reason', 'later', '--at', at], { token: admin.token });
  assert.equal(sched.code, 0, sched.stdout + sched.stderr);
  const notStandby = await ctl(['residency', 'standby-stop', ws.id], { token: admin.token });
  assert.equal(notStandby.code, 4, notStandby.stdout + notStandby.stderr);
  assert.match(notStandby.stderr, /no standby copy running: its latest move \S+ is a move in state scheduled/);
  assert.equal((await ctl(['residency', 'move-cancel', ws.id], { token: admin.token })).code, 0);

  const s = await ctl(['residency', 'standby', ws.id, 'us-east', '--reason', 'disaster recovery copy'], { token: admin.token });
  assert.equal(s.code, 0, s.stdout + s.stderr);
  assert.match(s.stdout, /started standby copy \S+ of .* in us-east \(by eu-west/);
  assert.match(s.stdout, /kind\s+standby/);
  const messages = `SELECT count(*) FROM messages WHERE workspace_id = ${sq(ws.id)}`;
  await waitFor(async () => (await countIn('us-east', messages)) === 3, { timeoutMs: 30000, message: 'the standby copied the messages' });
  // caught_seq follows the home about once a second.
  const st = await waitFor(async () => {
    const r = await ctl(['--json', 'residency', 'move-status', ws.id], { token: admin.token });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return r.json.move.caught_seq > 0 && r.json.move;
  }, { timeoutMs: 30000, message: 'caught_seq reported' });
  assert.equal(st.kind, 'standby');
  assert.equal(st.state, 'catching_up');
  const human = await ctl(['residency', 'move-status', ws.id], { token: admin.token });
  assert.equal(human.code, 0, human.stdout + human.stderr);
  assert.match(human.stdout, /kind\s+standby/);
  assert.match(human.stdout, /caught seq\s+\d+/);
  assert.match(human.stdout, /catch_up/);
  assert.doesNotMatch(human.stdout, /^shred/m, 'a standby shows no steps it never takes');
  // A standby is a move in progress: a real move waits until it is stopped.
  const mv = await ctl(['residency', 'move', ws.id, 'us-east', '--reason', 'r', '--no-wait'], { token: admin.token });
  assert.equal(mv.code, 4, mv.stdout + mv.stderr);

  const stop = await ctl(['--json', 'residency', 'standby-stop', ws.id, '--reason', 'no longer needed'], { token: admin.token });
  assert.equal(stop.code, 0, stop.stdout + stop.stderr);
  assert.equal(stop.json.move.state, 'cancelled');
  assert.equal(stop.json.move.kind, 'standby');
  const again = await ctl(['residency', 'standby-stop', ws.id], { token: admin.token });
  assert.equal(again.code, 4, again.stdout + again.stderr);
  assert.match(again.stderr, /no standby copy running/);
  // The target drops its copy and its key.
  await waitFor(async () => (await countIn('us-east', messages)) === 0, { timeoutMs: 30000, message: 'us-east dropped the stopped standby' });
  await post(owner, ws, 'still at home');
});

test('promote: refused while the home answers; with the home stopped the standby becomes home; the old home fences itself', async (t) => {
  if (!moveApi) return t.skip('this build of the region has no move API yet (POST .../move is 404)');
  const ws = await workspace(['eu-west', 'us-east']);
  for (let i = 0; i < 4; i++) await post(owner, ws, `promote ${i}`);
  const s = await ctl(['residency', 'standby', ws.id, 'us-east', '--reason', 'fail-over copy'], { token: admin.token });
  assert.equal(s.code, 0, s.stdout + s.stderr);
  const messages = `SELECT count(*) FROM messages WHERE workspace_id = ${sq(ws.id)}`;
  await waitFor(async () => (await countIn('us-east', messages)) === 4, { timeoutMs: 30000, message: 'the standby caught up' });
  // Promotion claims an epoch over the one us-east's directory knows: wait until it knows the workspace.
  await waitFor(async () => (await countIn('us-east', `SELECT count(*) FROM dir_workspaces WHERE workspace_id = ${sq(ws.id)}`)) === R('us-east').postgres.length, { message: "the workspace reached every shard of us-east's directory" });

  const early = await ctl(['residency', 'promote', ws.id, '--region', 'us-east', '--reason', 'too early'], { token: admin.token });
  assert.equal(early.code, 4, early.stdout + early.stderr);
  assert.match(early.stderr, /409 home_reachable/);
  assert.match(early.stderr, /a home that answers is moved, not replaced/);
  const none = await ctl(['residency', 'promote', wsStay.id, '--region', 'us-east', '--reason', 'nothing there'], { token: admin.token });
  assert.equal(none.code, 4, none.stdout + none.stderr);
  assert.match(none.stderr, /404 no_standby/);
  assert.match(none.stderr, /residency standby .* us-east --reason/);

  const node = R('eu-west').node;
  await node.stop();
  let pr;
  try {
    pr = await ctl(['--json', 'residency', 'promote', ws.id, '--region', 'us-east', '--reason', 'eu-west is down'], { token: admin.token });
    assert.equal(pr.code, 0, pr.stdout + pr.stderr);
    assert.equal(pr.json.workspace_id, ws.id);
    assert.equal(pr.json.home_region, 'us-east');
    assert.equal(pr.json.previous_home, 'eu-west');
    assert.ok(pr.json.epoch >= 2, pr.stdout);
    assert.ok(pr.json.seq >= 4, pr.stdout);
    await post(owner, ws, 'at the promoted home', 'us-east');
  } finally {
    await node.start();
  }
  const twice = await ctl(['residency', 'promote', ws.id, '--region', 'us-east', '--reason', 'again'], { token: admin.token });
  assert.equal(twice.code, 4, twice.stdout + twice.stderr);
  assert.match(twice.stderr, /404 no_standby|409 already_home/);
  // Back up, eu-west hears the newer epoch and names us-east.
  await waitFor(async () => {
    const r = await call('eu-west', 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text: 'to the old home' }, owner.token);
    return r.status === 421 && r.headers['meridian-home-region'] === 'us-east';
  }, { timeoutMs: 30000, message: 'eu-west fenced the workspace' });
  const show = await ctl(['--json', 'residency', 'show', ws.id], { token: admin.token });
  assert.equal(show.code, 0, show.stdout + show.stderr);
  assert.equal(show.json.workspace.home_region, 'us-east');
  assert.equal(show.json.workspace.epoch, pr.json.epoch);
  assert.ok(show.json.audit.some((e) => e.action === 'standby_promoted'), JSON.stringify(show.json.audit));
});
