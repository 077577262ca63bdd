// The outbox relay: committed outbox events reach the region's JetStream
// stream once each, in seq order per workspace, are marked published, are
// deduplicated when republished, and survive a NATS outage.
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

const unpublished = async () => {
  let n = 0;
  for (const pg of w.postgres) n += Number((await pg.psql('SELECT count(*) FROM outbox WHERE published_at IS NULL')).trim());
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
  for (const pg of w.postgres) await pg.psql('UPDATE outbox SET published_at = NULL, claimed_at = NULL');
  await waitFor(async () => (await unpublished()) === 0, { timeoutMs: 20000, message: 'republished' });
  assert.equal(await streamMessages(w.nats.monitorUrl, 'EV_us-east'), 800);
});

test('events committed while NATS is down are published when it is back', async () => {
  await w.nats.stop();
  await commitEvents(w.postgres[0], 'w_relay_a', 501, 100);
  // The relay cannot publish them: they stay unpublished (and unclaimed) meanwhile.
  assert.equal(await unpublished(), 100);
  await w.nats.start();
  await waitFor(async () => (await unpublished()) === 0, { timeoutMs: 30000, message: 'published after the outage' });
  assert.equal(await streamMessages(w.nats.monitorUrl, 'EV_us-east'), 900);
});
