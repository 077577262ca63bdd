// region_config.test.mjs: `meridian-region --check-config` accepts a valid
// configuration and rejects broken ones with messages that name the field,
// including bad MERIDIAN_* environment overrides.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { ensureKeyFile } from '../../deploy/local/lib/stack.mjs';
import { binary, makeTmp } from '../lib/harness.mjs';

const BIN = binary('meridian-region');
const tmp = makeTmp('meridian-region-config-');
const AUTH = {
  signing_key_file: ensureKeyFile(path.join(tmp, 'keys', 'signing.key')),
  email_hash_key_file: ensureKeyFile(path.join(tmp, 'keys', 'email-hash.key')),
};
const ENCRYPTION = { master_key_file: ensureKeyFile(path.join(tmp, 'keys', 'master.key')) };

const VALID = {
  region: 'us-east',
  node: 'us-east-1',
  workers: 2,
  listen: { host: '127.0.0.1', port: 8080 },
  log: { level: 'info', access: true },
  websocket: { max_frame_bytes: 65536 },
  shutdown: { drain_timeout_ms: 5000 },
  postgres: {
    shards: [
      { id: 0, conninfo: 'postgresql://meridian@127.0.0.1:5432/meridian' },
      { id: 1, conninfo: 'postgresql://meridian@127.0.0.1:5433/meridian' },
    ],
    pool_size: 4,
  },
  redis: { host: '127.0.0.1', port: 6379 },
  nats: { url: 'nats://127.0.0.1:4222' },
  auth: AUTH,
  encryption: ENCRYPTION,
};

let n = 0;
/** Runs --check-config on `config` (object, or raw text) with only the given MERIDIAN_* variables. */
function check(config, env = {}) {
  const file = path.join(tmp, `config-${++n}.json`);
  fs.writeFileSync(file, typeof config === 'string' ? config : JSON.stringify(config));
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MERIDIAN_')));
  const r = spawnSync(BIN, ['--check-config', '--config', file], { env: { ...clean, ...env }, encoding: 'utf8', timeout: 20000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}`, file };
}

/** A deep copy of VALID with fn applied. */
function variant(fn) {
  const c = structuredClone(VALID);
  fn(c);
  return c;
}

test('the binary exists', () => {
  assert.ok(fs.existsSync(BIN), `${BIN} not built`);
});

test('a valid configuration is accepted', () => {
  const r = check(VALID);
  assert.equal(r.status, 0, r.out);
});

test('a minimal configuration is accepted (defaults fill the rest)', () => {
  const r = check({
    region: 'eu-west',
    listen: { port: 9000 },
    postgres: { shards: [{ id: 0, conninfo: 'postgresql://x@127.0.0.1/m' }] },
    redis: { port: 6379 },
    nats: { url: 'nats://127.0.0.1:4222' },
    auth: AUTH,
    encryption: ENCRYPTION,
  });
  assert.equal(r.status, 0, r.out);
});

test('a valid environment override is accepted', () => {
  const r = check(variant((c) => delete c.listen.port), { MERIDIAN_LISTEN__PORT: '9001' });
  assert.equal(r.status, 0, r.out);
});

// Each broken configuration must be refused (exit 1) with a message naming the field.
const BROKEN = [
  { name: 'unknown top-level field', config: variant((c) => (c.colour = 'blue')), field: 'colour' },
  { name: 'unknown nested field', config: variant((c) => (c.websocket.max_frame = 10)), field: 'websocket.max_frame' },
  { name: 'workers of the wrong type', config: variant((c) => (c.workers = 'two')), field: 'workers' },
  { name: 'listen.port of the wrong type', config: variant((c) => (c.listen.port = '8080x')), field: 'listen.port' },
  { name: 'boolean of the wrong type', config: variant((c) => (c.log.access = 'yes')), field: 'log.access' },
  { name: 'missing region', config: variant((c) => delete c.region), field: 'region' },
  { name: 'invalid region name', config: variant((c) => (c.region = 'US East')), field: 'region' },
  { name: 'port out of range', config: variant((c) => (c.listen.port = 70000)), field: 'listen.port' },
  { name: 'port zero', config: variant((c) => (c.listen.port = 0)), field: 'listen.port' },
  { name: 'negative redis port', config: variant((c) => (c.redis.port = -1)), field: 'redis.port' },
  { name: 'missing listen.port', config: variant((c) => delete c.listen.port), field: 'listen.port' },
  { name: 'bad log level', config: variant((c) => (c.log.level = 'loud')), field: 'log.level' },
  { name: 'nats url without nats://', config: variant((c) => (c.nats.url = 'http://x')), field: 'nats.url' },
  { name: 'no shards', config: variant((c) => (c.postgres.shards = [])), field: 'postgres.shards' },
  { name: 'shard ids out of order', config: variant((c) => (c.postgres.shards[1].id = 5)), field: 'postgres.shards[1]' },
  { name: 'shard without conninfo', config: variant((c) => delete c.postgres.shards[0].conninfo), field: 'postgres.shards[0].conninfo' },
  { name: 'section of the wrong type', config: variant((c) => (c.redis = 6379)), field: 'redis' },
  {
    name: 'bad env override MERIDIAN_LISTEN__PORT=abc',
    config: VALID,
    env: { MERIDIAN_LISTEN__PORT: 'abc' },
    field: 'listen.port',
  },
  {
    name: 'out-of-range env override MERIDIAN_WORKERS=0',
    config: VALID,
    env: { MERIDIAN_WORKERS: '0' },
    field: 'workers',
  },
  {
    name: 'bad env override of a shard MERIDIAN_POSTGRES__SHARDS__1__ID=x',
    config: VALID,
    env: { MERIDIAN_POSTGRES__SHARDS__1__ID: 'x' },
    field: 'postgres.shards[1].id',
  },
];

for (const c of BROKEN) {
  test(`rejected: ${c.name}`, () => {
    const r = check(c.config, c.env);
    assert.equal(r.status, 1, `expected exit 1, got ${r.status}: ${r.out}`);
    assert.ok(r.out.includes(c.field), `the message does not name ${c.field}:\n${r.out}`);
  });
}

test('every problem is reported at once', () => {
  const r = check(
    variant((c) => {
      c.workers = 'many';
      c.listen.port = 99999;
      c.bogus = true;
    }),
  );
  assert.equal(r.status, 1, r.out);
  for (const f of ['workers', 'listen.port', 'bogus']) assert.ok(r.out.includes(f), `${f} missing from:\n${r.out}`);
});

test('malformed JSON is rejected with a reason', () => {
  const r = check('{"region": "us-east", ');
  assert.equal(r.status, 1, r.out);
  assert.ok(r.out.length > 0);
});

test('a missing file is rejected and named', () => {
  const missing = path.join(tmp, 'does-not-exist.json');
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MERIDIAN_')));
  const r = spawnSync(BIN, ['--check-config', '--config', missing], { env: clean, encoding: 'utf8' });
  assert.notEqual(r.status, 0);
  assert.ok(`${r.stdout}${r.stderr}`.includes('does-not-exist.json'), r.stderr);
});

test('--check-config without --config is a usage error', () => {
  const r = spawnSync(BIN, ['--check-config'], { encoding: 'utf8' });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /usage/);
});

test('key files are checked: missing, malformed or readable by others', () => {
  const missing = check(variant((c) => (c.auth = { ...AUTH, signing_key_file: path.join(tmp, 'nope.key') })));
  assert.equal(missing.status, 1);
  assert.match(missing.out, /auth: .*nope\.key/);
  const short = path.join(tmp, 'short.key');
  fs.writeFileSync(short, 'abcd\n', { mode: 0o600 });
  const bad = check(variant((c) => (c.auth = { ...AUTH, email_hash_key_file: short })));
  assert.equal(bad.status, 1);
  assert.match(bad.out, /auth: .*short\.key/);
  const open = path.join(tmp, 'open.key');
  fs.writeFileSync(open, `${'ab'.repeat(32)}\n`, { mode: 0o644 });
  fs.chmodSync(open, 0o644);
  const loose = check(variant((c) => (c.auth = { ...AUTH, signing_key_file: open })));
  assert.equal(loose.status, 1);
  assert.match(loose.out, /auth: .*open\.key/);
});

test('encryption: the master key file is required while on, and every key file is checked', () => {
  const ok = check(VALID);
  assert.match(ok.out, /encryption=on master_key_id=[0-9a-f]{16} previous_keys=0/);
  const none = check(variant((c) => delete c.encryption));
  assert.equal(none.status, 1);
  assert.match(none.out, /encryption\.master_key_file: is required/);
  const off = check(variant((c) => (c.encryption = { enabled: false })));
  assert.equal(off.status, 0, off.out);
  assert.match(off.out, /encryption=off master_key_id=-/);
  const missing = check(variant((c) => (c.encryption = { master_key_file: path.join(tmp, 'no-master.key') })));
  assert.equal(missing.status, 1);
  assert.match(missing.out, /encryption\.master_key_file: .*no-master\.key/);
  const open = path.join(tmp, 'open-master.key');
  fs.writeFileSync(open, `${'cd'.repeat(32)}\n`, { mode: 0o640 });
  fs.chmodSync(open, 0o640);
  const loose = check(variant((c) => (c.encryption = { master_key_file: open })));
  assert.equal(loose.status, 1);
  assert.match(loose.out, /encryption\.master_key_file: .*open-master\.key.*chmod 600/);
  const old = ensureKeyFile(path.join(tmp, 'keys', 'old-master.key'));
  const rotating = check(variant((c) => (c.encryption = { ...ENCRYPTION, previous_master_key_files: [old] })));
  assert.equal(rotating.status, 0, rotating.out);
  assert.match(rotating.out, /previous_keys=1/);
  const short = path.join(tmp, 'short-master.key');
  fs.writeFileSync(short, 'abcd\n', { mode: 0o600 });
  const badOld = check(variant((c) => (c.encryption = { ...ENCRYPTION, previous_master_key_files: [old, short] })));
  assert.equal(badOld.status, 1);
  assert.match(badOld.out, /encryption\.previous_master_key_files\[1\]: .*short-master\.key/);
});
