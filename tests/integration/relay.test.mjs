// The outbox relay: committed outbox events reach the region's JetStream
// stream once each, in seq order per workspace, are marked published, are
// deduplicated when republished, and survive a NATS outage, also one that
// cuts a backlog while several reads' publishes await their acks.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startWorld, waitFor } from '../lib/harness.mjs';
import { streamMessages, subscribe } from '../lib/natsraw.mjs';

let w;
let sub;
before(async () => {
  w = await startWorld({ workers: 2 });
  await waitFor(async () => (await streamMessages(w.nats.monitorUrl, 'EV_us-east')) !== null, { timeoutMs: 20000, message: 'stream EV_us-east' });
  sub = subscribe(w.nats.port, 'ev.us-east.us-east.>');
  await sub.ready;
});
after(async () => {
  sub?.close();
  await w?.stop();
});

// Events as a writer commits them: one transaction, consecutive seqs.
async function commitEvents(pg, workspace, from, count) {
  await pg.psql(
    `INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)
     SELECT '${workspace}', s, 'message.created', 'c_1', jsonb_build_object('n', s) FROM generate_series(${from}, ${from + count - 1}) s`,
  );
}

// Events past their workspace's watermark (outbox_relay) are not published yet.
const unpublished = async () => {
  let n = 0;
  for (const pg of w.postgres)
    n += Number((await pg.psql('SELECT count(*) FROM outbox o WHERE o.seq > coalesce((SELECT published_seq FROM outbox_relay r WHERE r.workspace_id = o.workspace_id), 0)')).trim());
  return n;
};

test('committed events are published once, in order, and marked', async () => {
  await commitEvents(w.postgres[0], 'w_relay_a', 1, 500);
  await commitEvents(w.postgres[1], 'w_relay_b', 1, 300);
  await waitFor(async () => (await unpublished()) === 0, { timeoutMs: 20000, message: 'all published' });
  assert.equal(await streamMessages(w.nats.monitorUrl, 'EV_us-east'), 800);
  await waitFor(() => sub.messages.length >= 800, { timeoutMs: 10000, message: 'all delivered to a subscriber' });
  const byWs = {};
  for (const m of sub.messages) {
    const e = JSON.parse(m.data);
    assert.equal(m.subject, `ev.us-east.us-east.${e.workspace_id}.message.created`);
    assert.equal(m.headers['Nats-Msg-Id'], e.id, 'the event id is the dedupe key');
    assert.equal(e.region, 'us-east');
    assert.deepEqual(e.payload, { n: e.seq });
    (byWs[e.workspace_id] ||= []).push(e.seq);
  }
  assert.deepEqual(byWs.w_relay_a, Array.from({ length: 500 }, (_, i) => i + 1), 'seq order per workspace');
  assert.deepEqual(byWs.w_relay_b, Array.from({ length: 300 }, (_, i) => i + 1));
});

test('republished events are dropped as duplicates by the stream', async () => {
  // Forget the watermarks and say so: the relay reads every event again.
  await w.postgres[0].psql("DELETE FROM outbox_relay; SELECT pg_notify('meridian_outbox', 'w_relay_a')");
  await w.postgres[1].psql("DELETE FROM outbox_relay; SELECT pg_notify('meridian_outbox', 'w_relay_b')");
  await waitFor(async () => (await unpublished()) === 0, { timeoutMs: 20000, message: 'republished' });
  assert.equal(await streamMessages(w.nats.monitorUrl, 'EV_us-east'), 800);
});

test('events committed while NATS is down are published when it is back', async () => {
  await w.nats.stop();
  await commitEvents(w.postgres[0], 'w_relay_a', 501, 100);
  // The relay cannot publish them: the watermark stays behind meanwhile.
  assert.equal(await unpublished(), 100);
  await w.nats.start();
  await waitFor(async () => (await unpublished()) === 0, { timeoutMs: 30000, message: 'published after the outage' });
  assert.equal(await streamMessages(w.nats.monitorUrl, 'EV_us-east'), 900);
});

test('a backlog published with reads in flight, cut by a NATS restart, ends up in the stream once each', async () => {
  // 8 workspaces x 8,000 events: reads of 1,024 events, so the relay reads
  // the next while the last one's acks are outstanding; NATS goes away once
  // part of the backlog is in, failing whatever is in flight then.
  const before = await streamMessages(w.nats.monitorUrl, 'EV_us-east');
  const spaces = Array.from({ length: 8 }, (_, i) => `w_relay_bulk${i}`);
  await Promise.all(spaces.map((ws, i) => commitEvents(w.postgres[i % 2], ws, 1, 8000)));
  await waitFor(async () => (await streamMessages(w.nats.monitorUrl, 'EV_us-east')) >= before + 1024, { timeoutMs: 20000, intervalMs: 5, maxIntervalMs: 10, message: 'part of the backlog published' });
  await w.nats.stop();
  await w.nats.start();
  await waitFor(async () => (await unpublished()) === 0, { timeoutMs: 60000, message: 'the backlog published after the restart' });
  // JetStream drops what is republished (Nats-Msg-Id), so any event skipped
  // or sent twice past the dedupe would show in the count.
  assert.equal(await streamMessages(w.nats.monitorUrl, 'EV_us-east'), before + 64000);
  for (const [i, ws] of spaces.entries())
    assert.equal((await w.postgres[i % 2].psql(`SELECT published_seq FROM outbox_relay WHERE workspace_id = '${ws}'`)).trim(), '8000', `${ws} marked to its last event`);
});

test('a second node stands by: one relay per shard publishes, the other takes over when it goes', async () => {
  // Another node of the same region, with its own relays competing for the shards' locks.
  const { startRegion } = await import('../lib/harness.mjs');
  const other = await startRegion({ tmp: w.tmp, name: 'region-b', workers: 1, postgres: w.postgres, redis: w.redis, nats: w.nats });
  try {
    await w.region.stop();
    await commitEvents(w.postgres[1], 'w_relay_b', 301, 50);
    await waitFor(async () => (await unpublished()) === 0, { timeoutMs: 40000, message: 'published by the standby node' });
    assert.equal(await streamMessages(w.nats.monitorUrl, 'EV_us-east'), 64950);
  } finally {
    await other.stop();
    await w.region.start();
  }
});
