// /readyz reflects every dependency of the node: it turns 503 (naming the
// failing check) when a Postgres shard, Redis or NATS goes away, and 200 again
// once it is back. /healthz stays 200 throughout: the process is alive.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { http, startWorld, waitFor } from '../lib/harness.mjs';

let w;
before(async () => {
  w = await startWorld({ workers: 2 });
});
after(async () => {
  await w?.stop();
});

// Both workers must agree: a request may land on either of them.
async function readyOnAll(api, want, n = 8) {
  for (let i = 0; i < n; i++) {
    const r = await http('GET', `${api}/readyz`);
    if ((r.status === 200) !== want) return null;
  }
  return (await http('GET', `${api}/readyz`)).json;
}

test('ready with every dependency up', async () => {
  const r = await http('GET', `${w.api}/readyz`);
  assert.equal(r.status, 200);
  assert.equal(r.json.status, 'ready');
  assert.deepEqual(r.json.checks, { redis: 'ok', nats: 'ok', 'postgres.shard0': 'ok', 'postgres.shard1': 'ok' });
});

for (const [what, get, check] of [
  ['Postgres shard 1', () => w.postgres[1], 'postgres.shard1'],
  ['Redis', () => w.redis, 'redis'],
  ['NATS', () => w.nats, 'nats'],
]) {
  test(`readyz turns 503 while ${what} is down and 200 once it is back`, async () => {
    await get().stop();
    const down = await waitFor(() => readyOnAll(w.api, false), { timeoutMs: 15000, message: `${what} seen as down` });
    assert.equal(down.status, 'not_ready');
    assert.equal(down.checks[check], 'unavailable');
    const r = await http('GET', `${w.api}/readyz`);
    assert.equal(r.status, 503);
    assert.ok(r.headers['retry-after']);
    assert.equal((await http('GET', `${w.api}/healthz`)).status, 200, 'alive while not ready');
    await get().start();
    const up = await waitFor(() => readyOnAll(w.api, true), { timeoutMs: 20000, message: `${what} seen as back` });
    assert.equal(up.checks[check], 'ok');
  });
}
