// Encryption at rest (docs/encryption.md): message bodies are stored and
// published only as "e1." ciphertext, read back decrypted through the API and
// the stream, found by the blind index, never readable in the data files of
// Postgres, NATS or Redis; master keys rotate without rewriting messages; a
// region with the wrong master key answers 503 and leaks nothing.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { ensureKeyFile } from '../../deploy/local/lib/stack.mjs';
import { binary, http, natsRequest, startWorld, waitFor } from '../lib/harness.mjs';

let w;
before(async () => {
  w = await startWorld({ workers: 2, config: { limits: { write_rate_per_s: 100000, write_burst: 100000 } } });
});
after(async () => {
  await w?.stop();
});

const call = (method, p, body, token) => http(method, `${w.api}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
async function user() {
  const r = await call('POST', '/v1/auth/signup', { email: `enc${++n}.${process.pid}@example.com`, password: 'encryption password', display_name: `E${n}` });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, token: r.json.access_token };
}
async function workspace(owner) {
  const r = await call('POST', '/v1/workspaces', { name: 'Enc', slug: `enc-${process.pid}-${++n}` }, owner.token);
  assert.equal(r.status, 201, r.text);
  const ch = await call('GET', `/v1/workspaces/${r.json.workspace.id}/channels`, undefined, owner.token);
  return { id: r.json.workspace.id, general: ch.json.channels.find((c) => c.name === 'general').id, owner };
}
/** A word nobody else uses: lower-case letters and digits (one blind index term). */
const word = () => `zq${crypto.randomBytes(8).toString('hex')}`;
const words = []; // every unique word posted: none may be found in the data files
const sq = (s) => `'${String(s).replace(/'/g, "''")}'`;

async function shardOf(ws) {
  for (const pg of w.postgres) {
    if ((await pg.psql(`SELECT shard FROM dir_workspaces WHERE workspace_id = ${sq(ws)}`)).trim()) {
      const s = Number((await pg.psql(`SELECT shard FROM dir_workspaces WHERE workspace_id = ${sq(ws)}`)).trim());
      return w.postgres[s];
    }
  }
  throw new Error(`no directory row for ${ws}`);
}
async function post(space, text, extra = {}) {
  const r = await call('POST', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, { text, ...extra }, space.owner.token);
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.message.text, text, 'the answer carries the plaintext');
  return r.json.message;
}
const history = (space) => call('GET', `/v1/workspaces/${space.id}/channels/${space.general}/messages?limit=200`, undefined, space.owner.token);
const search = (space, q) => call('GET', `/v1/workspaces/${space.id}/search?q=${encodeURIComponent(q)}`, undefined, space.owner.token);

function stream(space, { cursor } = {}) {
  const url = `${w.api.replace('http', 'ws')}/v1/workspaces/${space.id}/stream${cursor !== undefined ? `?cursor=${cursor}` : ''}`;
  const ws = new WebSocket(url, ['meridian.v1', `bearer.${space.owner.token}`]);
  const frames = [];
  const raw = [];
  ws.on('message', (d) => (raw.push(d.toString()), frames.push(JSON.parse(d.toString()))));
  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('unexpected-response', (req, res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode, body })));
    });
    ws.once('error', reject);
  });
  opened.catch(() => {});
  return {
    ws,
    raw,
    opened,
    events: () => frames.filter((f) => f.type === 'event').map((f) => f.event),
    close: () => new Promise((r) => (ws.readyState === WebSocket.CLOSED ? r() : (ws.once('close', r), ws.close()))),
  };
}

async function restart(encryption) {
  const node = w.region;
  await node.stop();
  node.config.encryption = encryption;
  await node.start();
}

/** Every regular file under dir. */
function filesUnder(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}
/** Files under dirs holding any of needles: [{file, needle}]. */
function grep(dirs, needles) {
  const hits = [];
  for (const dir of dirs) {
    for (const f of filesUnder(dir)) {
      let buf;
      try {
        buf = fs.readFileSync(f);
      } catch {
        continue; // a file removed while walking (WAL recycling)
      }
      for (const nd of needles) if (buf.indexOf(nd) >= 0) hits.push({ file: f, needle: nd });
    }
  }
  return hits;
}

let space; // the workspace of the first tests, read again after rotation
let posted = []; // its messages: {id, text}

test('bodies are stored and published encrypted, and read back decrypted by the API, the stream and search', async () => {
  const owner = await user();
  space = await workspace(owner);
  const live = stream(space);
  await live.opened;
  for (let i = 0; i < 5; i++) {
    const a = word();
    const b = word();
    words.push(a, b);
    const text = `Meeting ${a} at "noon" with ${b.toUpperCase()} — ünïcödé ${i}`;
    posted.push({ ...(await post(space, text)), text, a, b });
  }
  const originals = posted.map((m) => m.text);
  // A reply and an edit take the same paths.
  const r = word();
  words.push(r);
  const reply = await post(space, `a reply ${r}`, { parent_id: posted[0].id });
  const e = word();
  words.push(e);
  const edited = await call('PATCH', `/v1/workspaces/${space.id}/channels/${space.general}/messages/${posted[1].id}`, { text: `edited ${e}` }, owner.token);
  assert.equal(edited.status, 200, edited.text);
  assert.equal(edited.json.message.text, `edited ${e}`);
  posted[1].text = `edited ${e}`;

  // The API: history and replies in plaintext.
  const h = await history(space);
  assert.equal(h.status, 200, h.text);
  for (const m of posted) assert.equal(h.json.messages.find((x) => x.id === m.id).text, m.text);
  const rep = await call('GET', `/v1/workspaces/${space.id}/channels/${space.general}/messages/${posted[0].id}/replies`, undefined, owner.token);
  assert.equal(rep.json.replies[0].text, `a reply ${r}`);

  // The stream, live: every body in plaintext, no ciphertext in any frame.
  await waitFor(() => live.events().length >= 7, { message: 'seven live events' });
  const ev = live.events();
  assert.deepEqual(ev.slice(0, 5).map((x) => x.payload.text), originals);
  assert.equal(ev[5].payload.text, `a reply ${r}`);
  assert.equal(ev[6].type, 'message.updated');
  assert.equal(ev[6].payload.text, `edited ${e}`);
  assert.ok(live.raw.every((f) => !f.includes('"e1.')), 'no ciphertext in a frame');
  await live.close();
  // ... and replayed from the database (cursor 0).
  const replay = stream(space, { cursor: 0 });
  await replay.opened;
  const messageEvents = (s) => s.events().filter((x) => x.type.startsWith('message.'));
  await waitFor(() => messageEvents(replay).length >= ev.length, { message: 'the replay' });
  assert.deepEqual(
    messageEvents(replay).map((x) => x.payload.text),
    ev.map((x) => x.payload.text),
  );
  assert.ok(replay.raw.every((f) => !f.includes('"e1.')));
  await replay.close();

  // Search: by one word (any case), by two, newest first; nothing for a word never posted.
  let s = await search(space, posted[2].a.toUpperCase());
  assert.equal(s.status, 200, s.text);
  assert.deepEqual(s.json.results.map((x) => x.message.id), [posted[2].id]);
  assert.equal(s.json.results[0].message.text, posted[2].text);
  s = await search(space, `${posted[3].a} ${posted[3].b}`);
  assert.deepEqual(s.json.results.map((x) => x.message.id), [posted[3].id]);
  s = await search(space, `${posted[3].a} ${posted[4].b}`);
  assert.deepEqual(s.json.results, [], 'every term must match');
  s = await search(space, 'meeting');
  assert.deepEqual(s.json.results.map((x) => x.message.id), [posted[4].id, posted[3].id, posted[2].id, posted[0].id], 'newest first; the edited one no longer says it');
  s = await search(space, `edited ${e}`);
  assert.deepEqual(s.json.results.map((x) => x.message.id), [posted[1].id]);
  assert.deepEqual((await search(space, word())).json.results, []);
  // A deleted message is no longer found, and its terms are gone.
  const del = await call('DELETE', `/v1/workspaces/${space.id}/channels/${space.general}/messages/${reply.id}`, undefined, owner.token);
  assert.equal(del.status, 204);
  assert.deepEqual((await search(space, r)).json.results, []);
  const pg = await shardOf(space.id);
  assert.equal((await pg.psql(`SELECT body = '' AND terms IS NULL FROM messages WHERE workspace_id = ${sq(space.id)} AND id = ${sq(reply.id)}`)).trim(), 't');

  // The rows: ciphertext only, one blind index entry per distinct term.
  const rows = (await pg.psql(`SELECT id, body, cardinality(terms) FROM messages WHERE workspace_id = ${sq(space.id)} AND body <> '' ORDER BY seq`)).trim().split('\n');
  assert.equal(rows.length, 5);
  for (const row of rows) {
    const [, body, nterms] = row.split('|');
    assert.match(body, /^e1\.[A-Za-z0-9_-]+$/);
    assert.ok(Number(nterms) >= 2, row);
    for (const wd of words) assert.ok(!body.toLowerCase().includes(wd), 'no word in a body');
  }
  // The outbox payloads: ciphertext too.
  const outbox = (await pg.psql(`SELECT payload::text FROM outbox WHERE workspace_id = ${sq(space.id)} AND type LIKE 'message.%'`)).trim();
  assert.match(outbox, /"text": "e1\./);
  for (const wd of words) assert.ok(!outbox.toLowerCase().includes(wd), `outbox holds ${wd}`);
  // The data key row: wrapped, named by the master key's id, never the key.
  const key = (await pg.psql(`SELECT key_id, length(wrapped) FROM workspace_keys WHERE workspace_id = ${sq(space.id)}`)).trim();
  assert.match(key, /^[0-9a-f]{16}\|72$/);

  // JetStream: the published events hold ciphertext only.
  // The relay publishes after the commit: wait for it.
  let js;
  await waitFor(
    async () => {
      js = JSON.parse(
        (await natsRequest(w.nats.port, '$JS.API.STREAM.MSG.GET.EV_us-east', JSON.stringify({ last_by_subj: `ev.us-east.us-east.${space.id}.message.created` }))).data,
      );
      return Boolean(js.message);
    },
    { timeoutMs: 20000, message: 'the events reach JetStream' },
  );
  const data = Buffer.from(js.message.data, 'base64').toString();
  assert.match(data, /"text": "e1\./);
  for (const wd of words) assert.ok(!data.toLowerCase().includes(wd), `JetStream holds ${wd}`);
});

test('no plaintext word is anywhere in the data files of Postgres (heap, WAL), NATS and Redis', async () => {
  assert.ok(words.length >= 10);
  for (const pg of w.postgres) await pg.psql('CHECKPOINT');
  assert.match(await w.redis.command('SAVE'), /^\+OK/);
  const dirs = [...w.postgres.map((pg) => pg.dataDir), w.nats.dir, w.redis.dir];
  const needles = words.flatMap((wd) => [wd, wd.toUpperCase()]);
  // The scan sees the data: ids are plaintext and are found (heap, WAL, stream files).
  // JetStream writes its blocks behind the publish: wait until the ids show.
  let control = [];
  await waitFor(() => (control = grep(dirs, [space.id])).some((h) => h.file.startsWith(w.nats.dir)), { timeoutMs: 20000, message: 'the stream files were scanned' });
  assert.ok(control.some((h) => w.postgres.some((pg) => h.file.startsWith(pg.dataDir))), 'the Postgres files were scanned');
  assert.deepEqual(grep(dirs, needles), []);
});

/** Ids of the master keys in use, as --check-config prints them. */
function keyId(configPath) {
  const r = spawnSync(binary('meridian-region'), ['--check-config', '--config', configPath], { encoding: 'utf8' });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  return /master_key_id=([0-9a-f]{16})/.exec(r.stdout)[1];
}
async function keyRows(where) {
  let total = 0;
  for (const pg of w.postgres) total += Number((await pg.psql(`SELECT count(*) FROM workspace_keys WHERE ${where}`)).trim());
  return total;
}
function rewrap() {
  const r = spawnSync(binary('meridian-region'), ['--config', w.region.configPath, '--rewrap-keys'], { encoding: 'utf8', timeout: 60000 });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1));
}
async function assertReadable() {
  const h = await history(space);
  assert.equal(h.status, 200, h.text);
  for (const m of posted) assert.equal(h.json.messages.find((x) => x.id === m.id).text, m.text);
  const s = await search(space, posted[2].b);
  assert.deepEqual(s.json.results.map((x) => x.message.id), [posted[2].id]);
  const replay = stream(space, { cursor: 0 });
  await replay.opened;
  await waitFor(() => replay.events().filter((e) => e.type === 'message.created').length >= 6, { message: 'replay after restart' });
  assert.equal(replay.events().find((e) => e.type === 'message.created').payload.text, posted[0].text);
  await replay.close();
}

test('rotation: a new master key with the old one as previous, --rewrap-keys, then the new key alone reads everything', async () => {
  // A second workspace, so that more than one key is rewrapped.
  const other = await workspace(await user());
  const ow = word();
  await post(other, `other ${ow}`);
  const keyA = w.region.config.encryption.master_key_file;
  const keyB = ensureKeyFile(path.join(w.tmp, 'rotation', 'master-b.key'));
  const idA = keyId(w.region.configPath);

  await restart({ master_key_file: keyB, previous_master_key_files: [keyA] });
  const idB = keyId(w.region.configPath);
  assert.notEqual(idA, idB);
  await assertReadable(); // old keys unwrap with the previous master key
  const underA = await keyRows(`key_id = ${sq(idA)}`);
  assert.ok(underA >= 2, `${underA} keys under the old master key`);
  const out = rewrap();
  assert.deepEqual(out, { rewrapped: underA, shards: w.postgres.length, failed: 0, master_key_id: idB });
  assert.equal(await keyRows(`key_id <> ${sq(idB)}`), 0);
  assert.ok((await keyRows('rewrapped_at IS NOT NULL')) >= underA);
  assert.equal(rewrap().rewrapped, 0, 'a second run has nothing to do');

  await restart({ master_key_file: keyB });
  await assertReadable();
  const h = await history(other);
  assert.equal(h.json.messages[0].text, `other ${ow}`);
  words.push(ow);
});

test('encryption off: new bodies are plaintext, old ones still decrypt, search works over both', async () => {
  const keyB = w.region.config.encryption.master_key_file;
  await restart({ enabled: false, master_key_file: keyB });
  const plainWord = word();
  const m = await post(space, `plain ${plainWord} ${posted[0].a}`);
  const pg = await shardOf(space.id);
  assert.equal((await pg.psql(`SELECT body FROM messages WHERE workspace_id = ${sq(space.id)} AND id = ${sq(m.id)}`)).trim(), `plain ${plainWord} ${posted[0].a}`);
  await assertReadable();
  const s = await search(space, posted[0].a);
  assert.deepEqual(s.json.results.map((x) => x.message.id), [m.id, posted[0].id]);
  // A plaintext that looks like a ciphertext is stored escaped ("e0."), and reads back as written.
  const tricky = await post(space, 'e1.not-really-ciphertext');
  assert.equal((await pg.psql(`SELECT body FROM messages WHERE workspace_id = ${sq(space.id)} AND id = ${sq(tricky.id)}`)).trim(), 'e0.e1.not-really-ciphertext');
  assert.equal((await history(space)).json.messages.find((x) => x.id === tricky.id).text, 'e1.not-really-ciphertext');
  const replay = stream(space, { cursor: 0 });
  await replay.opened;
  await waitFor(() => replay.events().some((e) => e.payload?.id === tricky.id), { message: 'the escaped body streamed' });
  assert.equal(replay.events().find((e) => e.payload?.id === tricky.id).payload.text, 'e1.not-really-ciphertext');
  await replay.close();
  await restart({ master_key_file: keyB });
});

test('a region with the wrong master key answers 503 with a JSON error, leaks no ciphertext, and keeps running', async () => {
  const keyC = ensureKeyFile(path.join(w.tmp, 'rotation', 'master-c.key'));
  await restart({ master_key_file: keyC });
  try {
    for (const r of [await history(space), await search(space, posted[0].a)]) {
      assert.equal(r.status, 503, r.text);
      assert.equal(r.json.error.code, 'key_unavailable');
      assert.ok(!r.text.includes('e1.'), r.text);
      for (const wd of words) assert.ok(!r.text.includes(wd));
    }
    const p = await call('POST', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, { text: 'cannot write' }, space.owner.token);
    assert.equal(p.status, 503, p.text);
    const s = stream(space, { cursor: 0 });
    const err = await s.opened.then(
      () => null,
      (e) => e,
    );
    assert.equal(err?.status, 503, 'the stream is refused before the upgrade');
    assert.equal(JSON.parse(err.body).error.code, 'key_unavailable');
    // Still serving, never crashed.
    assert.equal((await call('GET', '/healthz')).status, 200);
    assert.ok(/keys\.unwrap_failed/.test(w.region.logs()), 'the failure is logged');
    for (const wd of words) assert.ok(!w.region.logs().includes(wd), 'no body in the log');
  } finally {
    await restart({ master_key_file: path.join(w.tmp, 'rotation', 'master-b.key') });
  }
  await assertReadable();
});
