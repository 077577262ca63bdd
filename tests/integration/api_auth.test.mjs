// Accounts and sessions (POST /v1/auth/*, GET /v1/me) against real shards
// and Redis: signup, login, refresh rotation, logout revocation, and the
// errors around them. Checks the raw stores too: passwords are argon2id
// hashes, emails are claimed on one shard only, no secret is stored in clear.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { http, startWorld } from '../lib/harness.mjs';

let w;
before(async () => {
  w = await startWorld({ workers: 2 });
});
after(async () => {
  await w?.stop();
});

const post = (path, body, token) =>
  http('POST', `${w.api}${path}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
const get = (path, token) => http('GET', `${w.api}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });

let n = 0;
async function signup(extra = {}) {
  const email = `user${++n}.${process.pid}@example.com`;
  const r = await post('/v1/auth/signup', { email, password: 'correct horse battery', display_name: `User ${n}`, ...extra });
  assert.equal(r.status, 201, r.text);
  return { email, ...r.json };
}

function assertError(r, status, code) {
  assert.equal(r.status, status, r.text);
  assert.equal(r.json?.error?.code, code, r.text);
  assert.ok(r.json.error.message.length > 0);
}

describe('signup', () => {
  test('creates a user on one shard and returns tokens', async () => {
    const s = await signup();
    assert.match(s.user.id, /^u_[a-z2-7]{20}$/);
    assert.equal(s.user.email, s.email);
    assert.equal(s.user.home_region, 'us-east');
    assert.match(s.access_token, /^mrd1\./);
    assert.match(s.refresh_token, /^mrr1\./);
    assert.equal(s.token_type, 'Bearer');
    assert.equal(s.expires_in, 900);
    // Exactly one shard holds the user, its email claim and its first session.
    const counts = await Promise.all(w.postgres.map((pg) => pg.psql(`SELECT count(*) FROM users WHERE id = '${s.user.id}'`)));
    assert.deepEqual(counts.map((c) => c.trim()).sort(), ['0', '1']);
    const home = w.postgres[counts.findIndex((c) => c.trim() === '1')];
    const row = (await home.psql(`SELECT password_hash, (SELECT count(*) FROM claims WHERE owner_id = '${s.user.id}'), (SELECT count(*) FROM sessions WHERE user_id = '${s.user.id}') FROM users WHERE id = '${s.user.id}'`)).trim();
    const [hash, claims, sessions] = row.split('|');
    assert.match(hash, /^\$argon2id\$/);
    assert.equal(claims, '1');
    assert.equal(sessions, '1');
    // The refresh secret is stored only as a hash.
    const secret = s.refresh_token.split('.')[2];
    for (const pg of w.postgres) assert.equal((await pg.psql(`SELECT count(*) FROM sessions WHERE encode(secret_hash, 'escape') LIKE '%${secret}%'`)).trim(), '0');
    // Every shard's directory knows where the user lives.
    for (const pg of w.postgres) assert.equal((await pg.psql(`SELECT count(*) FROM dir_users WHERE user_id = '${s.user.id}'`)).trim(), '1');
  });

  test('the same email (any case, surrounding spaces) is taken once', async () => {
    const s = await signup();
    const again = await post('/v1/auth/signup', { email: `  ${s.email.toUpperCase()} `, password: 'another password', display_name: 'Twin' });
    assertError(again, 409, 'email_taken');
  });

  test('two racing signups for one email produce exactly one account', async () => {
    const email = `race.${process.pid}@example.com`;
    const rs = await Promise.all(Array.from({ length: 6 }, () => post('/v1/auth/signup', { email, password: 'race password 1', display_name: 'Racer' })));
    assert.equal(rs.filter((r) => r.status === 201).length, 1, rs.map((r) => r.status).join(','));
    for (const r of rs.filter((x) => x.status !== 201)) assertError(r, 409, 'email_taken');
  });

  const bad = [
    ['no body', undefined, 400, 'invalid_json'],
    ['not JSON', '{"email":', 400, 'invalid_json'],
    ['an array', [], 400, 'invalid_json'],
    ['missing email', { password: 'long enough', display_name: 'x' }, 400, 'invalid_request'],
    ['bad email', { email: 'no-at-sign', password: 'long enough', display_name: 'x' }, 400, 'invalid_request'],
    ['short password', { email: 'short@example.com', password: 'short', display_name: 'x' }, 400, 'weak_password'],
    ['missing display name', { email: 'dn@example.com', password: 'long enough' }, 400, 'invalid_request'],
    ['display name too long', { email: 'dn2@example.com', password: 'long enough', display_name: 'x'.repeat(81) }, 400, 'invalid_request'],
    ['password of the wrong type', { email: 'pt@example.com', password: 12345678, display_name: 'x' }, 400, 'invalid_request'],
  ];
  for (const [name, body, status, code] of bad) {
    test(`refuses ${name}`, async () => {
      const r =
        body === undefined
          ? await http('POST', `${w.api}/v1/auth/signup`)
          : await http('POST', `${w.api}/v1/auth/signup`, { body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json' } });
      assertError(r, status, code);
    });
  }

  test('refuses a body that is not application/json', async () => {
    const r = await http('POST', `${w.api}/v1/auth/signup`, { body: 'email=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assertError(r, 415, 'unsupported_media_type');
  });

  test('refuses JSON nested deeper than 32 levels', async () => {
    const deep = `${'['.repeat(40)}${']'.repeat(40)}`;
    const r = await http('POST', `${w.api}/v1/auth/signup`, { body: `{"email":${deep}}`, headers: { 'content-type': 'application/json' } });
    assertError(r, 400, 'invalid_json');
    assert.match(r.json.error.message, /nesting deeper than 32/);
  });
});

describe('login, me, refresh, logout', () => {
  test('login with the right password; the same error for a wrong password or an unknown email', async () => {
    const s = await signup();
    const ok = await post('/v1/auth/login', { email: s.email, password: 'correct horse battery' });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.user.id, s.user.id);
    assert.match(ok.json.access_token, /^mrd1\./);
    const wrong = await post('/v1/auth/login', { email: s.email, password: 'wrong horse battery' });
    assertError(wrong, 401, 'invalid_credentials');
    const unknown = await post('/v1/auth/login', { email: `nobody.${process.pid}@example.com`, password: 'whatever it is' });
    assertError(unknown, 401, 'invalid_credentials');
    assert.equal(unknown.json.error.message, wrong.json.error.message, 'no hint whether the account exists');
  });

  test('me answers the caller; no or bad tokens get 401 with WWW-Authenticate', async () => {
    const s = await signup();
    const me = await get('/v1/me', s.access_token);
    assert.equal(me.status, 200, me.text);
    assert.equal(me.json.user.id, s.user.id);
    assert.equal(me.json.user.email, s.email);
    assert.match(me.json.created_at, /^\d{4}-\d\d-\d\dT/);
    const none = await get('/v1/me');
    assertError(none, 401, 'unauthenticated');
    assert.equal(none.headers['www-authenticate'], 'Bearer');
    const [h, p, sig] = s.access_token.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url')), sub: 'u_someoneelse' })).toString('base64url')}.${sig}`;
    assertError(await get('/v1/me', forged), 401, 'invalid_token');
    assertError(await get('/v1/me', 'mrd1.garbage'), 401, 'invalid_token');
    assertError(await http('GET', `${w.api}/v1/me`, { headers: { authorization: `Basic ${s.access_token}` } }), 401, 'unauthenticated');
  });

  test('refresh rotates: the new token works, the old one is spent', async () => {
    const s = await signup();
    const r1 = await post('/v1/auth/refresh', { refresh_token: s.refresh_token });
    assert.equal(r1.status, 200, r1.text);
    assert.notEqual(r1.json.refresh_token, s.refresh_token);
    assert.equal((await get('/v1/me', r1.json.access_token)).json.user.id, s.user.id);
    assertError(await post('/v1/auth/refresh', { refresh_token: s.refresh_token }), 401, 'invalid_refresh_token');
    assertError(await post('/v1/auth/refresh', { refresh_token: 'mrr1.nope.nope' }), 401, 'invalid_refresh_token');
    const r2 = await post('/v1/auth/refresh', { refresh_token: r1.json.refresh_token });
    assert.equal(r2.status, 200, r2.text);
  });

  test('logout revokes the access token and the refresh session', async () => {
    const s = await signup();
    const out = await post('/v1/auth/logout', { refresh_token: s.refresh_token }, s.access_token);
    assert.equal(out.status, 204, out.text);
    assertError(await get('/v1/me', s.access_token), 401, 'token_revoked');
    assertError(await post('/v1/auth/refresh', { refresh_token: s.refresh_token }), 401, 'invalid_refresh_token');
    // Revocation lives in Redis until the token would have expired anyway.
    const ttl = Number(String(await w.redis.command(`TTL meridian:revoked:${JSON.parse(Buffer.from(s.access_token.split('.')[1], 'base64url')).jti}`)).replace(/^:/, ''));
    assert.ok(ttl > 0 && ttl <= 900 + 30, `ttl ${ttl}`);
  });

  test('with Redis down, authenticated calls fail closed with 503', async () => {
    const s = await signup();
    await w.redis.stop();
    try {
      const r = await get('/v1/me', s.access_token);
      assertError(r, 503, 'auth_unavailable');
      assert.ok(r.headers['retry-after']);
    } finally {
      await w.redis.start();
    }
  });
});
