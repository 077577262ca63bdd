// A small reconnect storm (bench/storm in miniature), asserting behaviour, not
// timing: ~2,000 stream clients (meridian-loadgen, full jitter, resume with
// their cursor) connected through an edge to one region node while posts
// flow to their channels; kill -9 of every worker of the node, which its
// master brings back. Then: every client reconnects, no event is lost or
// duplicated (each client ends at its workspace's head seq in the outbox,
// without a gap), and the accepted connects never exceed the admission cap
// (the region's node-wide bucket; with slack for its burst).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { binary, makeTmp, removeTmp, startWorlds, waitFor } from '../lib/harness.mjs';
import {
  accountEvents,
  connectedOf,
  killWorkers,
  makeWorkspaces,
  mergeTimelines,
  metricSum,
  scrape,
  startClients,
  startPoster,
  waitAllConnected,
  waitQuiet,
  waitRouted,
} from '../../bench/storm/lib.mjs';

const REGION = 'us-east';
const CLIENTS = 2000;
const MEMBERS = 100;
const CAP = 400; // region admission.sessions_per_s: 2,000 clients come back over ~5 s
const BURST = 50;
const EDGE_WORKERS = 2;
const EDGE_PER_WORKER = 300; // the edge admits more than the region: the region's bucket binds

let W;
let tmp;
let edge;
let fx;
let regionAdmission = false;

/** Does this meridian-region know admission.*? (--check-config refuses unknown fields.) */
function hasAdmission(node) {
  const file = path.join(tmp, 'admission-check.json');
  fs.writeFileSync(file, JSON.stringify({ ...node.config, admission: { enabled: true, sessions_per_s: CAP, burst: BURST } }));
  return spawnSync(node.cmd, ['--check-config', '--config', file]).status === 0;
}

before(async () => {
  tmp = makeTmp('meridian-storm-test-');
  W = await startWorlds({
    regions: [REGION],
    shards: 1,
    workers: 2,
    config: { log: { level: 'warn', access: false }, limits: { write_rate_per_s: 100000, write_burst: 100000 } },
  });
  const node = W.regions[REGION].node;
  regionAdmission = hasAdmission(node);
  if (regionAdmission) {
    await node.stop();
    node.config.admission = { enabled: true, sessions_per_s: CAP, burst: BURST };
    await node.start();
  }
  edge = await W.startEdge({
    workers: EDGE_WORKERS,
    config: { log: { level: 'warn', access: false }, admission: { sessions_per_s: EDGE_PER_WORKER, burst: BURST } },
  });
  fx = await makeWorkspaces({
    regionApi: node.api,
    postgres: W.regions[REGION].postgres,
    regionName: REGION,
    signingKeyFile: node.config.auth.signing_key_file,
    count: CLIENTS / MEMBERS,
    members: MEMBERS,
    tag: 't',
  });
  await waitRouted(edge.api, fx);
});

after(async () => {
  if (W) await W.stop();
  if (tmp) removeTmp(tmp);
});

test('everyone reconnects after kill -9 of every region worker, nothing lost or duplicated, the cap holds', async (t) => {
  const node = W.regions[REGION].node;
  const R = W.regions[REGION];
  const lgs = startClients({ bin: binary('meridian-loadgen'), tmp, port: edge.port, workspaces: fx.workspaces, perProc: CLIENTS, jitter: true, baseMs: 100, capMs: 2000, tag: 'storm' });
  let poster = null;
  try {
    await waitAllConnected(lgs, CLIENTS, 60000);
    await waitQuiet(lgs, { quietMs: 1000, maxMs: 30000 });
    poster = startPoster({ bin: binary('meridian-loadgen'), tmp, port: edge.port, workspaces: fx.workspaces, rate: 40, conns: 4, tag: 'storm-poster' });
    await waitFor(() => poster.last && poster.last.posts_ok >= 20, { timeoutMs: 20000, message: 'posts do not flow' });
    const before = await scrape(node.api);
    const edgeBefore = await scrape(edge.api);
    const marks = await Promise.all(lgs.map((l) => l.mark('storm')));
    const killAt = Date.now();
    const killed = killWorkers(node.pid);
    assert.equal(killed.length, 2, 'two workers killed');

    // Everyone back (each loadgen notes the instant it is whole again).
    await waitFor(() => lgs.every((l) => l.last && l.last.storm && l.last.storm.recovered_unix_ms) && connectedOf(lgs) === CLIENTS, {
      timeoutMs: 60000,
      intervalMs: 100,
      maxIntervalMs: 250,
      message: `not every client came back (${connectedOf(lgs)} of ${CLIENTS})`,
    });
    // Posts go on after the recovery (delivered live), then stop.
    const postedAtRecovery = poster.last.posts_ok;
    await waitFor(() => poster.last.posts_ok >= postedAtRecovery + 10, { timeoutMs: 20000, message: 'posts stopped flowing after the recovery' });
    const posterFinal = await poster.stop();
    poster = null;
    await waitQuiet(lgs, { quietMs: 1500, maxMs: 30000 });
    const after = await scrape(node.api).catch(() => ({}));
    const edgeAfter = await scrape(edge.api);
    const finals = await Promise.all(lgs.map((l) => l.stop()));

    // Everyone reconnected: the storm was real (all dropped) and all came back.
    const storm = finals[0].storm;
    assert.ok(storm.first_drop_unix_ms >= killAt - 5, 'the clients saw the kill');
    assert.ok(storm.min_connected < CLIENTS / 2, `most clients dropped (min ${storm.min_connected})`);
    assert.ok(storm.recovered_unix_ms, 'recovered');
    assert.equal(finals[0].connected, 0, 'stopped cleanly');
    assert.ok(posterFinal.posts_ok > 0, 'posts were acknowledged');
    // The edge saw the region drop the streams without a close, and told
    // each client when to come back ({"type":"reconnect"} and close 1012 on
    // the stream it had), rather than let them all return at once.
    const lost = metricSum(edgeAfter, 'meridian_edge_tunnels_lost_total') - (metricSum(edgeBefore, 'meridian_edge_tunnels_lost_total') || 0);
    const hinted = finals.reduce((s, f) => s + (f.reconnect_hints || 0), 0) - marks.reduce((s, m) => s + (m.reconnect_hints || 0), 0);
    t.diagnostic(`tunnels lost ${lost}, reconnect hints received ${hinted}`);
    assert.ok(lost >= CLIENTS * 0.9, `the edge noticed the lost streams (${lost})`);
    assert.ok(hinted >= CLIENTS * 0.9, `the clients were told when to come back (${hinted})`);

    // Nothing lost, nothing duplicated, against the outbox's heads.
    const ev = await accountEvents({ postgres: R.postgres, workspaces: fx.workspaces, finals });
    t.diagnostic(`events ${JSON.stringify(ev)}`);
    assert.equal(ev.clients_without_cursor, 0);
    assert.equal(ev.gaps, 0, 'no seq gap');
    assert.equal(ev.resync_skipped, 0, 'no resync_required');
    assert.equal(ev.tail_missing, 0, 'every client reached its workspace head');
    assert.equal(ev.duplicated, 0, 'no duplicate');
    assert.ok(ev.events_received > 0);

    // The cap: accepted sessions in any two-second window after the kill stay
    // under two seconds of the node's rate plus its burst (10% slack for
    // bucket edges). Two seconds, because a session is counted when its
    // hello arrives, after the region's database work: what was admitted
    // over a second can complete in one burst. The region's bucket binds
    // when it exists; otherwise the edge's (both workers' buckets together).
    const cap = regionAdmission ? CAP : EDGE_WORKERS * EDGE_PER_WORKER;
    const burst = regionAdmission ? BURST : EDGE_WORKERS * BURST;
    const tl = mergeTimelines(finals);
    const first = Math.floor((killAt - tl.origin_unix_ms) / tl.bucket_ms);
    const per = 2000 / tl.bucket_ms;
    let peak = 0;
    for (let i = Math.max(0, first); i + per <= tl.connects.length; i++) {
      let s = 0;
      for (let j = i; j < i + per; j++) s += tl.connects[j];
      peak = Math.max(peak, s);
    }
    const shed = finals.reduce((s, f) => s + f.shed, 0) - marks.reduce((s, m) => s + m.shed, 0);
    t.diagnostic(`region admission ${regionAdmission ? 'on' : 'absent: checking the edge cap'}; peak ${peak} accepted in 2 s, cap ${cap}/s + burst ${burst}; shed during the storm ${shed}`);
    assert.ok(peak <= (2 * cap + burst) * 1.1, `peak ${peak} in 2 s over 2 x cap ${cap} + burst ${burst}`);
    assert.ok(shed > 0, 'the herd was shed, not admitted at once');
    if (regionAdmission) {
      const admitted = metricSum(after, 'meridian_admission_admitted_total');
      const admittedBefore = metricSum(before, 'meridian_admission_admitted_total') || 0;
      if (admitted !== null) {
        // Whether the killed workers' counts survive them or not, the node
        // cannot have admitted more than its rate allows since the kill.
        const secs = (Date.now() - killAt) / 1000;
        t.diagnostic(`meridian_admission_admitted_total ${admittedBefore} -> ${admitted} over ${secs.toFixed(1)} s`);
        assert.ok(admitted - admittedBefore <= (CAP * secs + BURST) * 1.1, `admitted ${admitted - admittedBefore} in ${secs} s`);
      }
    }
  } finally {
    if (poster) poster.kill();
    for (const l of lgs) if (l.child.exitCode === null) l.kill();
  }
});
