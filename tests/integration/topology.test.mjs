// topology.test.mjs: the three-region world's NATS topology (design.md, "NATS
// topology"): each region its own JetStream domain, attached as a leafnode to
// a hub without JetStream; every domain's JetStream API answers from the other
// regions across the hub; raw events (ev.>) never cross a leaf link; a cut
// link (proxy or hub stopped: real TCP ends) isolates the region and heals.
// The world file the harness wrote is the one the nodes accepted.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { after, before, test } from 'node:test';

import { binary, http, jsAccountInfo, natsConnect, startWorlds, waitFor } from '../lib/harness.mjs';

const REGIONS = ['us-east', 'eu-west', 'ap-south'];
let w;

before(async () => {
  w = await startWorlds({ regions: REGIONS, leafProxy: true });
});

after(async () => {
  if (w) await w.stop();
});

/** Rejects unless domain's JetStream API is unreachable from the NATS at port. */
async function unreachable(port, domain) {
  try {
    await jsAccountInfo(port, domain, { timeoutMs: 1000 });
    return false;
  } catch {
    return true;
  }
}

test('every region is attached to the hub as a leafnode, and the hub runs no JetStream', async () => {
  const hub = await w.hub.leafz();
  assert.equal(hub.leafnodes, REGIONS.length, JSON.stringify(hub));
  for (const r of REGIONS) {
    const z = await w.regions[r].nats.leafz();
    assert.equal(z.leafnodes, 1, `${r}: ${JSON.stringify(z)}`);
    // The link goes to the hub (through this region's proxy), nowhere else: a star.
    assert.equal(z.leafs[0].port, w.regions[r].leaf.port, `${r} is attached through its proxy`);
    const conf = fs.readFileSync(w.regions[r].nats.configPath, 'utf8');
    assert.match(conf, /deny_exports: \["ev\.>"\], deny_imports: \["ev\.>"\]/);
  }
  const varz = (await http('GET', `${w.hub.monitorUrl}/varz`)).json;
  assert.ok(!varz.jetstream?.config, `hub has JetStream: ${JSON.stringify(varz.jetstream)}`);
});

test("each region's JetStream domain answers from every other region across the hub", async () => {
  for (const a of REGIONS) {
    const port = w.regions[a].nats.port;
    for (const b of REGIONS) {
      const info = await jsAccountInfo(port, b);
      assert.equal(info.domain, b, `$JS.${b}.API.INFO asked in ${a} was answered by ${info.domain}`);
    }
  }
});

test('ev.> does not cross a leaf link; other subjects do', async () => {
  const [us, ...others] = REGIONS;
  const conns = [];
  try {
    const listeners = others.map((r) => {
      const c = natsConnect(w.regions[r].nats.port);
      conns.push(c);
      return { r, c, ev: c.subscribe('ev.>'), probe: c.subscribe('probe.>') };
    });
    const local = natsConnect(w.regions[us].nats.port);
    conns.push(local);
    const localEv = local.subscribe('ev.>');
    for (const l of listeners) await l.c.flush();
    await local.flush();
    const pub = natsConnect(w.regions[us].nats.port);
    conns.push(pub);
    await pub.ready;
    // Interest travels over the hub asynchronously: publish probes until each
    // region sees one, then an event per destination and a last probe behind it.
    let n = 0;
    await waitFor(
      async () => {
        pub.publish(`probe.${++n}`, 'p');
        await pub.flush();
        return listeners.every((l) => l.probe.messages.length > 0);
      },
      { timeoutMs: 15000, message: 'probe subjects did not cross the hub' },
    );
    // Origin "zz" is no region: no stream captures these, so only a leaf
    // link that let ev.> through could carry them (a region's own events do
    // reach the regions they are for, through the filtered stream sources).
    for (const r of others) pub.publish(`ev.zz.${r}.ws1.message`, '{"seq":1}');
    pub.publish('probe.last', 'p');
    await pub.flush();
    await waitFor(() => listeners.every((l) => l.probe.messages.some((m) => m.subject === 'probe.last')), {
      timeoutMs: 15000,
      message: 'the last probe did not arrive',
    });
    // Only this test's subjects count: the regions' own nodes publish on ev.
    // too (the relay, the applier's deliveries), each in its own region.
    const mine = (sub) => sub.messages.filter((m) => /^ev\.zz\..*\.ws[12]\.message$/.test(m.subject));
    await waitFor(() => mine(localEv).length === others.length, { message: 'ev.> not seen in its own region' });
    for (const l of listeners) assert.deepEqual(mine(l.ev), [], `${l.r} received raw events from ${us}`);

    // The other way round too: an event published in eu-west stays there.
    const euPub = natsConnect(w.regions['eu-west'].nats.port);
    conns.push(euPub);
    euPub.publish('ev.zz.us-east.ws2.message', '{"seq":1}');
    euPub.publish('probe.back', 'p');
    await euPub.flush();
    const usProbe = local.subscribe('probe.back');
    await local.flush();
    await waitFor(
      async () => {
        euPub.publish('ev.zz.us-east.ws2.message', '{"seq":2}');
        euPub.publish('probe.back', 'p');
        await euPub.flush();
        return usProbe.messages.length > 0;
      },
      { timeoutMs: 15000, message: 'probe.back did not reach us-east' },
    );
    assert.equal(mine(localEv).length, others.length, 'us-east received raw events from eu-west');
  } finally {
    for (const c of conns) c.close();
  }
});

test("every region's nodes are ready and accepted the world file the harness wrote", async () => {
  const doc = JSON.parse(fs.readFileSync(w.worldFile, 'utf8'));
  assert.equal(doc.format, 'meridian-world/1');
  assert.deepEqual(
    doc.regions.map((r) => [r.name, r.jurisdiction, r.nats.domain]),
    [
      ['us-east', 'US', 'us-east'],
      ['eu-west', 'EU', 'eu-west'],
      ['ap-south', 'IN', 'ap-south'],
    ],
  );
  assert.deepEqual(doc.hub.leaf_urls, [w.hub.leafUrl]);
  for (const r of REGIONS) {
    const R = w.regions[r];
    assert.equal((await http('GET', `${R.api}/readyz`)).status, 200, `${r} /readyz`);
    assert.equal(R.node.config.world_file, w.worldFile);
    const chk = spawnSync(binary('meridian-region'), ['--config', R.node.configPath, '--check-config'], { encoding: 'utf8' });
    assert.equal(chk.status, 0, chk.stderr);
    assert.match(chk.stdout, new RegExp(`region=${r} .*world=local regions=3`));
  }
});

test("cutting one region's leaf link isolates only that region; healing restores it", async () => {
  const cut = 'ap-south';
  const [a, b] = REGIONS.filter((r) => r !== cut);
  await w.cut(cut);
  assert.equal(w.regions[cut].leaf.connections, 0);
  await waitFor(async () => (await w.regions[cut].nats.leafz()).leafnodes === 0, { message: `${cut} still attached` });
  await waitFor(() => unreachable(w.regions[a].nats.port, cut), { message: `${cut} still reachable from ${a}` });
  assert.ok(await unreachable(w.regions[cut].nats.port, a), `${a} reachable from the cut region`);
  // The cut region keeps its own JetStream and serves; the others still see each other.
  assert.equal((await jsAccountInfo(w.regions[cut].nats.port, cut)).domain, cut);
  assert.equal((await jsAccountInfo(w.regions[a].nats.port, b)).domain, b);
  assert.equal((await http('GET', `${w.regions[cut].api}/readyz`)).status, 200);
  // Reconnect attempts are refused while cut: the path really is gone.
  const accepted = w.regions[cut].leaf.accepted;
  await w.heal(cut);
  await w.waitLinked();
  assert.ok(w.regions[cut].leaf.accepted > accepted, 'the region reattached through its proxy');
  assert.equal((await jsAccountInfo(w.regions[a].nats.port, cut)).domain, cut);
});

test('stopping the hub cuts every region; starting it again on the same ports heals', async () => {
  const ports = [w.hub.port, w.hub.monitorPort, w.hub.leafPort];
  await w.hub.stop();
  for (const r of REGIONS) {
    await waitFor(async () => (await w.regions[r].nats.leafz()).leafnodes === 0, { message: `${r} still attached` });
  }
  for (const r of REGIONS) {
    const other = REGIONS.find((x) => x !== r);
    assert.ok(await unreachable(w.regions[r].nats.port, other), `${other} reachable from ${r} without a hub`);
    assert.equal((await jsAccountInfo(w.regions[r].nats.port, r)).domain, r, `${r}'s own JetStream`);
    assert.equal((await http('GET', `${w.regions[r].api}/readyz`)).status, 200, `${r} /readyz without a hub`);
  }
  await w.hub.start();
  assert.deepEqual([w.hub.port, w.hub.monitorPort, w.hub.leafPort], ports);
  await w.waitLinked();
  assert.equal((await w.hub.leafz()).leafnodes, REGIONS.length);
});
