// Admission control of new stream sessions (design.md, "Thundering herds"):
// a burst of stream upgrades over the node's bucket is shed before any token
// check or database work, with 503 overloaded and a retry hint: each shed
// session's slot in its worker's queue, jittered, so that the herd comes back
// at the rate the node admits; the node's cap holds across its workers.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { http, startWorld } from '../lib/harness.mjs';

const BURST = 6;
let w;
before(async () => {
  // 1 session/s: during the burst the bucket barely refills.
  w = await startWorld({ workers: 2, config: { admission: { sessions_per_s: 1, burst: BURST } } });
});
after(async () => {
  await w?.stop();
});

const call = (method, path, body, token) => http(method, `${w.api}${path}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });

function open(url, protocols) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, protocols);
    ws.once('open', () => resolve({ ws, status: 101 }));
    ws.once('unexpected-response', (req, res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    ws.once('error', () => resolve({ status: 0 }));
  });
}

const metric = async (re) => {
  const m = await http('GET', `${w.api}/metrics`);
  return [...m.text.matchAll(re)].reduce((a, x) => a + Number(x[1]), 0);
};

test('a burst over the cap is shed with 503 and a queue slot as hint; the node admits at most its bucket', async () => {
  const u = await call('POST', '/v1/auth/signup', { email: `adm${process.pid}@example.com`, password: 'admission password', display_name: 'A' });
  assert.equal(u.status, 201, u.text);
  const ws = await call('POST', '/v1/workspaces', { name: 'Adm', slug: `adm-${process.pid}` }, u.json.access_token);
  const url = `${w.api.replace('http', 'ws')}/v1/workspaces/${ws.json.workspace.id}/stream`;
  const results = await Promise.all(Array.from({ length: 30 }, () => open(url, ['meridian.v1', `bearer.${u.json.access_token}`])));
  const ok = results.filter((r) => r.status === 101);
  const shed = results.filter((r) => r.status === 503);
  assert.equal(ok.length + shed.length, 30, results.map((r) => r.status).join(','));
  // The node's bucket (6) bounds what both workers admitted together (plus what refills meanwhile: 1/s).
  assert.ok(ok.length >= 1 && ok.length <= BURST + 2, `admitted ${ok.length}`);
  assert.ok(shed.length >= 30 - BURST - 2);
  const hints = new Set();
  // Jitter: 100 ms + up to burst/rate (6 s). Slots: the node admits 1/s, and
  // its 2 workers hand out slots of one queue, one a second, at most 30 s ahead.
  for (const s of shed) {
    assert.equal(JSON.parse(s.body).error.code, 'overloaded');
    const ms = Number(s.headers['meridian-retry-after-ms']);
    assert.ok(ms >= 100 && ms < 30000 + 100 + 6000, `hint ${ms}`);
    assert.equal(Number(s.headers['retry-after']), Math.ceil(ms / 1000));
    hints.add(ms);
  }
  assert.ok(hints.size > 1, 'the hints are jittered');
  // The last one shed is told to wait behind all the others, not a
  // jitter-sized delay like the first.
  assert.ok(Math.max(...hints) >= (shed.length - 1) * 1000, `hints ${[...hints].sort((a, b) => a - b).join(',')}`);
  assert.equal(await metric(/^meridian_admission_shed_total\{scope="(?:worker|node)"\} (\d+)$/gm), shed.length);
  assert.equal(await metric(/^meridian_admission_admitted_total (\d+)$/gm), ok.length);
  for (const o of ok) o.ws.close();
  // A shed session cost no token check: a garbage token is shed the same way, not refused 401.
  const g = await open(url, ['meridian.v1', 'bearer.garbage']);
  assert.equal(g.status, 503);
});
