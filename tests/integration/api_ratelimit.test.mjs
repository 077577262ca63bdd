// Per-user write rate limits: token buckets in Redis shared by every worker,
// answered with 429 and Retry-After; reads are not limited; a Redis that lost
// its scripts (restart, SCRIPT FLUSH) still answers.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { http, startWorld } from '../lib/harness.mjs';

let w;
before(async () => {
  w = await startWorld({ workers: 2, config: { limits: { write_rate_per_s: 1, write_burst: 3 } } });
});
after(async () => {
  await w?.stop();
});

const post = (path, body, token) => http('POST', `${w.api}${path}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });

async function sessions(count) {
  const email = `limited.${process.pid}.${Math.random().toString(36).slice(2)}@example.com`;
  const s = await post('/v1/auth/signup', { email, password: 'a long password', display_name: 'Limited' });
  assert.equal(s.status, 201, s.text);
  const tokens = [s.json.access_token];
  for (let i = 1; i < count; i++) {
    const l = await post('/v1/auth/login', { email, password: 'a long password' });
    assert.equal(l.status, 200, l.text);
    tokens.push(l.json.access_token);
  }
  return tokens;
}

test('writes beyond the burst get 429 with Retry-After, across workers', async () => {
  const tokens = await sessions(6);
  // Logout is a write: each token may be spent once, and the bucket is the user's.
  const results = [];
  for (const t of tokens) results.push(await post('/v1/auth/logout', {}, t));
  const statuses = results.map((r) => r.status);
  assert.deepEqual(statuses.slice(0, 3), [204, 204, 204], statuses.join(','));
  const limited = results.filter((r) => r.status === 429);
  assert.ok(limited.length >= 2, statuses.join(','));
  for (const r of limited) {
    assert.equal(r.json.error.code, 'rate_limited');
    assert.ok(Number(r.headers['retry-after']) >= 1);
  }
});

test('reads are not limited', async () => {
  const [t] = await sessions(1);
  for (let i = 0; i < 12; i++) assert.equal((await http('GET', `${w.api}/v1/me`, { headers: { authorization: `Bearer ${t}` } })).status, 200);
});

test('the bucket refills with time', async () => {
  const tokens = await sessions(5);
  for (const t of tokens.slice(0, 3)) assert.equal((await post('/v1/auth/logout', {}, t)).status, 204);
  const r = await post('/v1/auth/logout', {}, tokens[3]);
  assert.equal(r.status, 429);
  await new Promise((res) => setTimeout(res, Number(r.headers['retry-after']) * 1000 + 100)); // the refill itself is what is tested
  assert.equal((await post('/v1/auth/logout', {}, tokens[3])).status, 204);
});

test('a Redis that forgot the script still answers (EVALSHA falls back to EVAL)', async () => {
  const [t] = await sessions(1);
  await w.redis.command('SCRIPT FLUSH');
  assert.equal((await http('GET', `${w.api}/v1/me`, { headers: { authorization: `Bearer ${t}` } })).status, 200);
});
