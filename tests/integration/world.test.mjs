// world.test.mjs: deploy/local/world up / status / down on a private data dir
// and port block (so a developer's running world is left alone): the three
// regions and the NATS hub come up ready and linked, the world file they were
// given is valid, `up` is idempotent and restarts only what died, a port
// conflict is refused clearly, and `down` leaves no process behind.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { dnsQuery, pgBin, portFree, redisCommand } from '../../deploy/local/lib/stack.mjs';
import { REPO_ROOT, binary, buildDir, http, jsAccountInfo, makeTmp, pidAlive, track, waitFor } from '../lib/harness.mjs';

const REGIONS = ['us-east', 'eu-west', 'ap-south'];

const WORLD = path.join(REPO_ROOT, 'deploy/local/world');
const tmp = makeTmp('meridian-world-test-');
const worldDir = path.join(tmp, 'world');
let portBase;
const seenPids = new Set();

/**
 * A port block of 1000 nobody uses, outside the harness's random test ports
 * (20000-32767) and the default world (17000).
 */
async function findPortBase() {
  const bases = [10000, 11000, 12000, 13000, 14000, 15000, 16000, 18000, 19000].sort(() => Math.random() - 0.5);
  for (const b of bases) {
    let free = true;
    for (let p = b; p < b + 1000 && free; p++) free = await portFree(p);
    if (free) return b;
  }
  throw new Error('no free block of 1000 ports for the test world');
}

/** Runs the world script; resolves with {code, out}. */
function world(args, { dir = worldDir, timeoutMs = 240000 } = {}) {
  const env = {
    ...process.env,
    MERIDIAN_WORLD_DIR: dir,
    MERIDIAN_WORLD_PORT_BASE: String(portBase),
    MERIDIAN_WORLD_SKIP_BUILD: '1',
    MERIDIAN_BUILD_DIR: buildDir(),
  };
  delete env.MERIDIAN_WORLD_CONFIG;
  return new Promise((resolve) => {
    const child = spawn(WORLD, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stdout = '';
    child.stdout.on('data', (d) => ((out += d), (stdout += d)));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, stdout });
    });
  });
}

async function status() {
  const r = await world(['status', '--json']);
  assert.equal(r.code, 0, r.out);
  const s = JSON.parse(r.stdout);
  for (const pid of allPids(s)) {
    if (!seenPids.has(pid)) {
      seenPids.add(pid);
      track(pid); // killed with its group if this test dies before `down`
    }
  }
  return s;
}

function allPids(s) {
  const pids = [s.hub?.pid];
  for (const r of Object.values(s.regions)) {
    pids.push(...r.pids.postgres, r.pids.redis, r.pids.nats, ...r.nodes.map((n) => n.pid));
  }
  return pids.filter(Boolean);
}

/** Pids of processes whose command line or working directory mentions dir. */
function processesUnder(dir) {
  const found = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || !pidAlive(Number(e))) continue;
    let cmd = '';
    let cwd = '';
    try {
      cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ');
      cwd = fs.readlinkSync(`/proc/${e}/cwd`);
    } catch {
      /* gone, or not ours to read */
    }
    if (cmd.includes(dir) || cwd.startsWith(dir)) found.push(`${e}: ${cmd.trim()}`);
  }
  return found;
}

before(async () => {
  portBase = await findPortBase();
});

after(async () => {
  await world(['down'], { timeoutMs: 120000 });
  // `down` failed or never ran: kill what is left (harness track() does too, at exit).
  for (const pid of seenPids) {
    if (pidAlive(pid)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
});

let first;

test('up starts the described world and it answers', async () => {
  const t0 = Date.now();
  const r = await world(['up']);
  assert.equal(r.code, 0, r.out);
  process.stderr.write(`world up (cold) took ${Date.now() - t0} ms\n`);
  for (const name of REGIONS) assert.match(r.out, new RegExp(name));
  first = await status();

  assert.deepEqual(Object.keys(first.regions), REGIONS);
  assert.deepEqual(
    REGIONS.map((n) => [first.regions[n].jurisdiction, first.regions[n].nats_domain]),
    [
      ['US', 'us-east'],
      ['EU', 'eu-west'],
      ['IN', 'ap-south'],
    ],
  );
  assert.deepEqual(
    first.jurisdictions.map((j) => j.name),
    ['US', 'EU', 'IN'],
  );
  for (const j of first.jurisdictions) assert.ok(j.description.length > 0, `${j.name} has a description`);

  // The hub: no JetStream, world-wide ports (offsets 930-932), every region attached.
  const hub = first.hub;
  assert.equal(hub.running, true);
  assert.equal(hub.jetstream, false);
  assert.equal(hub.nats, `nats://127.0.0.1:${portBase + 930}`);
  assert.equal(hub.nats_monitor, `http://127.0.0.1:${portBase + 931}`);
  assert.equal(hub.leaf_url, `nats-leaf://127.0.0.1:${portBase + 932}`);
  assert.equal(hub.leafnodes, REGIONS.length);

  for (const [ri, name] of REGIONS.entries()) {
    const reg = first.regions[name];
    const base = portBase + 100 * ri;
    assert.equal(reg.api, `http://127.0.0.1:${base + 40}`);
    assert.equal(reg.metrics, `${reg.api}/metrics`);
    assert.equal(reg.postgres.length, 2);
    for (const p of reg.postgres) assert.match(p, /^postgresql:\/\/\w+@127\.0\.0\.1:\d+\/meridian$/);
    assert.equal(reg.redis, `redis://127.0.0.1:${base + 20}`);
    assert.equal(reg.nats, `nats://127.0.0.1:${base + 30}`);
    assert.equal(reg.hub_link, true, `${name} attached to the hub`);
    assert.deepEqual(reg.running, { postgres: [true, true], redis: true, nats: true });
    const wantNodes = name === 'us-east' ? 2 : 1;
    assert.equal(reg.nodes.length, wantNodes, `${name}: ${wantNodes} region node(s)`);
    for (const node of reg.nodes) {
      assert.equal(node.running, true);
      assert.equal(node.ready, true);
      assert.equal(node.workers, name === 'us-east' ? 2 : 1);
    }
    assert.equal((await http('GET', `${reg.api}/readyz`)).status, 200);
    const m = await http('GET', reg.metrics);
    assert.equal(m.status, 200);
    assert.match(m.text, /^# (HELP|TYPE) meridian_/m);
    // Every store really serves.
    assert.equal(await redisCommand(Number(new URL(reg.redis).port), 'PING'), '+PONG');
    for (const conninfo of reg.postgres) {
      const q = spawnSync(pgBin('psql'), ['-X', '-A', '-t', '-d', conninfo, '-c', 'SHOW synchronous_commit'], { encoding: 'utf8' });
      assert.equal(q.status, 0, q.stderr);
      assert.equal(q.stdout.trim(), 'on');
    }
    const js = await http('GET', `${reg.nats_monitor}/jsz`);
    assert.equal(js.status, 200);
    assert.equal(js.json.config.domain, name);
    // Its NATS reaches every other region's JetStream domain through the hub.
    for (const other of REGIONS) {
      assert.equal((await jsAccountInfo(Number(new URL(reg.nats).port), other)).domain, other, `${other} from ${name}`);
    }
  }
  const us = first.regions['us-east'];
  assert.notEqual(us.nodes[0].api, us.nodes[1].api);

  // DNS and edges: dnsmasq on 940, two edges on 950 at their own loopback
  // addresses, and the global edge name resolving to both.
  assert.equal(first.dns.running, true);
  assert.equal(first.dns.server, `127.0.0.1:${portBase + 940}`);
  assert.equal(first.edge_name, `edge.${first.dns.domain}`);
  assert.equal(first.edges.length, 2);
  const global = await dnsQuery(portBase + 940, first.edge_name);
  assert.deepEqual(global.answers.map((a) => a.ip).sort(), first.edges.map((e) => new URL(e.api).hostname).sort());
  for (const e of first.edges) {
    assert.equal(e.running, true);
    assert.equal(e.ready, true, `${e.name} ready (its directory copy loaded)`);
    assert.equal(new URL(e.api).port, String(portBase + 950));
    assert.equal((await http('GET', `${e.api}/readyz`)).status, 200);
    const chk = spawnSync(binary('meridian-edge'), ['--config', e.config, '--check-config'], { encoding: 'utf8' });
    assert.equal(chk.status, 0, chk.stderr);
  }
  // Endpoints sit in the chosen port block.
  for (const reg of Object.values(first.regions)) {
    for (const u of [reg.api, reg.redis, reg.nats, ...reg.postgres]) {
      const port = Number(/:(\d+)(\/|$)/.exec(u)[1]);
      assert.ok(port >= portBase && port < portBase + 1000, `${u} outside ${portBase}+`);
    }
  }

  // The world file: written by up, concrete addresses, no secrets, and every
  // node was started with it (a node refuses to start with an invalid one).
  assert.equal(first.world_file, path.join(worldDir, 'meridian-world.json'));
  const doc = JSON.parse(fs.readFileSync(first.world_file, 'utf8'));
  assert.equal(doc.format, 'meridian-world/1');
  assert.deepEqual(doc.hub.leaf_urls, [hub.leaf_url]);
  assert.deepEqual(
    doc.regions.map((x) => x.name),
    REGIONS,
  );
  for (const x of doc.regions) {
    const reg = first.regions[x.name];
    // Region endpoints are DNS names that the world's dnsmasq resolves to the nodes.
    assert.deepEqual(x.api.urls, reg.nodes.map((n) => n.api_url));
    for (const n of reg.nodes) {
      const u = new URL(n.api_url);
      assert.equal(u.port, new URL(n.api).port);
      const ans = await dnsQuery(Number(first.dns.server.split(':')[1]), u.hostname);
      assert.deepEqual(ans.answers.map((a) => a.ip), [new URL(n.api).hostname]);
      assert.ok(ans.answers[0].ttl > 0 && ans.answers[0].ttl <= first.dns.ttl_s);
    }
    assert.deepEqual(x.nats.urls, [reg.nats]);
    assert.equal(x.redis.port, Number(new URL(reg.redis).port));
    for (const s of x.postgres.shards) assert.doesNotMatch(s.conninfo, /password/);
  }
  for (const name of REGIONS) {
    for (const node of first.regions[name].nodes) {
      const cfg = JSON.parse(fs.readFileSync(node.config, 'utf8'));
      assert.equal(cfg.world_file, first.world_file);
      const chk = spawnSync(binary('meridian-region'), ['--config', node.config, '--check-config'], { encoding: 'utf8' });
      assert.equal(chk.status, 0, chk.stderr);
      assert.match(chk.stdout, /world=local regions=3/);
    }
  }
});

test('up again changes nothing', async () => {
  const r = await world(['up']);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /already running/);
  assert.doesNotMatch(r.out, /started \(pid/);
  const s = await status();
  assert.deepEqual(allPids(s), allPids(first));
});

test('up restarts only what died', async () => {
  const us = first.regions['us-east'];
  const redisPid = us.pids.redis;
  const hubPid = first.hub.pid;
  process.kill(redisPid, 'SIGKILL');
  // The hub too: a real cut of every leaf link, healed by the next up.
  process.kill(hubPid, 'SIGKILL');
  // A region's NATS notices the closed link on its own schedule: poll.
  const down = await waitFor(
    async () => {
      const d = await status();
      return REGIONS.every((name) => d.regions[name].hub_link === false) && d;
    },
    { timeoutMs: 15000, message: 'regions still linked without a hub' },
  );
  assert.equal(down.regions['us-east'].running.redis, false);
  assert.equal(down.hub.running, false);
  const r = await world(['up']);
  assert.equal(r.code, 0, r.out);
  const s = await status();
  const now = s.regions['us-east'];
  assert.equal(now.running.redis, true);
  assert.notEqual(now.pids.redis, redisPid);
  assert.deepEqual(now.pids.postgres, us.pids.postgres);
  assert.equal(now.pids.nats, us.pids.nats);
  assert.equal(now.nodes[0].pid, us.nodes[0].pid);
  assert.equal((await http('GET', `${now.api}/readyz`)).status, 200);
  assert.notEqual(s.hub.pid, hubPid);
  assert.equal(s.hub.leafnodes, REGIONS.length, 'every region reattached to the restarted hub');
  for (const name of REGIONS) {
    assert.equal(s.regions[name].hub_link, true);
    assert.equal(s.regions[name].pids.nats, first.regions[name].pids.nats, `${name}'s NATS was not restarted`);
  }
  first = s;
});

test('a second world on the same ports is refused clearly', async () => {
  const other = path.join(tmp, 'other-world');
  const r = await world(['up'], { dir: other });
  assert.notEqual(r.code, 0, r.out);
  assert.match(r.out, /port \d+ .* in use/);
  assert.match(r.out, /MERIDIAN_WORLD_PORT_BASE/);
  assert.deepEqual(processesUnder(other), []);
  // The running world is untouched.
  assert.equal((await http('GET', `${first.regions['us-east'].api}/readyz`)).status, 200);
});

test('down stops everything and leaves no process', async () => {
  const pids = allPids(first);
  const us = first.regions['us-east'];
  // The node's workers too: children of the node's master.
  const workers = fs
    .readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        const st = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
        return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]) === us.nodes[0].pid;
      } catch {
        return false;
      }
    })
    .map(Number);
  assert.ok(workers.length >= 2, `expected 2 workers under ${us.nodes[0].pid}, found ${workers}`);

  const r = await world(['down']);
  assert.equal(r.code, 0, r.out);
  for (const pid of [...pids, ...workers]) assert.equal(pidAlive(pid), false, `pid ${pid} still alive after down`);
  assert.deepEqual(processesUnder(worldDir), []);
  const urls = [first.hub.nats, first.hub.nats_monitor, first.hub.leaf_url];
  for (const reg of Object.values(first.regions)) urls.push(reg.redis, reg.nats, ...reg.postgres, ...reg.nodes.map((n) => n.api));
  for (const u of urls) {
    const port = Number(/:(\d+)(\/|$)/.exec(u)[1]);
    assert.equal(await portFree(port), true, `port ${port} still in use`);
  }
  const s = await status();
  assert.equal(s.hub.running, false);
  for (const name of REGIONS) {
    for (const node of s.regions[name].nodes) assert.equal(node.running, false);
    assert.deepEqual(s.regions[name].running, { postgres: [false, false], redis: false, nats: false });
  }
  // Data stays for the next `up`.
  assert.ok(fs.existsSync(path.join(worldDir, 'us-east', 'postgres-0', 'data', 'PG_VERSION')));
});
