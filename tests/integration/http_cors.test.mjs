// CORS on meridian-region: browsers on an allowed origin may call the API
// (preflight answered 204 with the route's methods, Access-Control-Allow-Origin
// on every answer, errors included), other origins get no Access-Control-*
// header at all, and a server without cors_allowed_origins sends none.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { binary, http, makeTmp, removeTmp, startWorld } from '../lib/harness.mjs';

const ALLOWED = 'http://app.example.test:8080';

describe('CORS', () => {
  let w;
  before(async () => {
    w = await startWorld({ workers: 1, shards: 1, config: { http: { cors_allowed_origins: [ALLOWED] } } });
  });
  after(async () => {
    await w?.stop();
  });

  test('a preflight from an allowed origin lists the route methods and headers', async () => {
    const r = await http('OPTIONS', `${w.api}/v1/auth/signup`, {
      headers: { origin: ALLOWED, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' },
    });
    assert.equal(r.status, 204, r.text);
    assert.equal(r.headers['access-control-allow-origin'], ALLOWED);
    assert.match(r.headers['access-control-allow-methods'], /\bPOST\b/);
    assert.match(r.headers['access-control-allow-headers'], /Authorization/i);
    assert.match(r.headers['access-control-allow-headers'], /Content-Type/i);
    assert.ok(Number(r.headers['access-control-max-age']) > 0);
    assert.match(r.headers.vary, /Origin/);
    assert.equal(r.text, '');
  });

  test('a preflight from another origin is refused without Access-Control headers', async () => {
    const r = await http('OPTIONS', `${w.api}/v1/auth/signup`, {
      headers: { origin: 'http://evil.example.test', 'access-control-request-method': 'POST' },
    });
    assert.equal(r.status, 403, r.text);
    assert.equal(r.json?.error?.code, 'cors_origin_forbidden');
    for (const k of Object.keys(r.headers)) assert.ok(!k.startsWith('access-control-'), k);
  });

  test('a preflight to an unknown route is 404', async () => {
    const r = await http('OPTIONS', `${w.api}/v1/nope`, { headers: { origin: ALLOWED, 'access-control-request-method': 'GET' } });
    assert.equal(r.status, 404, r.text);
  });

  test('answers to an allowed origin carry Access-Control-Allow-Origin, errors too', async () => {
    const ok = await http('GET', `${w.api}/healthz`, { headers: { origin: ALLOWED } });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers['access-control-allow-origin'], ALLOWED);
    assert.match(ok.headers['access-control-expose-headers'], /Retry-After/);
    const err = await http('GET', `${w.api}/v1/me`, { headers: { origin: ALLOWED } });
    assert.equal(err.status, 401, err.text);
    assert.equal(err.headers['access-control-allow-origin'], ALLOWED);
    const other = await http('GET', `${w.api}/healthz`, { headers: { origin: 'http://evil.example.test' } });
    assert.equal(other.status, 200);
    assert.equal(other.headers['access-control-allow-origin'], undefined);
    const none = await http('GET', `${w.api}/healthz`);
    assert.equal(none.headers['access-control-allow-origin'], undefined);
  });

  test('OPTIONS without Access-Control-Request-Method is not a preflight', async () => {
    const r = await http('OPTIONS', `${w.api}/v1/auth/signup`, { headers: { origin: ALLOWED } });
    assert.equal(r.status, 405, r.text);
    assert.match(r.headers.allow, /POST/);
  });
});

describe('CORS configuration', () => {
  const check = (cfg) => {
    const tmp = makeTmp('meridian-cors-');
    try {
      const file = path.join(tmp, 'region.json');
      fs.writeFileSync(file, JSON.stringify(cfg));
      return spawnSync(binary('meridian-region'), ['--config', file, '--check-config'], { encoding: 'utf8' });
    } finally {
      removeTmp(tmp);
    }
  };
  const base = {
    region: 'us-east',
    listen: { port: 1 },
    postgres: { shards: [{ id: 0, conninfo: 'host=127.0.0.1' }] },
    auth: { signing_key_file: '/nonexistent/a', email_hash_key_file: '/nonexistent/b' },
  };

  test('origins with a path or no scheme are rejected, naming the field', () => {
    for (const bad of ['app.example.test', 'https://app.example.test/', 'https://a.test/x', 42]) {
      const r = check({ ...base, http: { cors_allowed_origins: [bad] } });
      assert.notEqual(r.status, 0, `accepted ${JSON.stringify(bad)}`);
      assert.match(r.stderr, /http\.cors_allowed_origins/, r.stderr);
    }
    const notArray = check({ ...base, http: { cors_allowed_origins: 'https://a.test' } });
    assert.notEqual(notArray.status, 0);
    assert.match(notArray.stderr, /http\.cors_allowed_origins.*array/, notArray.stderr);
  });

  test('"*" and proper origins pass the field check', () => {
    const r = check({ ...base, http: { cors_allowed_origins: ['*', 'https://chat.example.com', 'http://127.0.0.1:8080'] } });
    assert.doesNotMatch(r.stderr, /cors_allowed_origins/, r.stderr);
  });
});
