// world.test.mjs: deploy/local/world up / status / down on a private data dir
// and port block (so a developer's running world is left alone): the world
// comes up ready, `up` is idempotent and restarts only what died, a port
// conflict is refused clearly, and `down` leaves no process behind.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { pgBin, portFree, redisCommand } from '../../deploy/local/lib/stack.mjs';
import { REPO_ROOT, buildDir, http, makeTmp, pidAlive, track } from '../lib/harness.mjs';

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
  const pids = [];
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
  const r = await world(['up']);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /us-east/);
  first = await status();

  assert.deepEqual(Object.keys(first.regions), ['us-east']);
  const us = first.regions['us-east'];
  assert.match(us.api, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(us.metrics, `${us.api}/metrics`);
  assert.equal(us.postgres.length, 2);
  for (const p of us.postgres) assert.match(p, /^postgresql:\/\/\w+@127\.0\.0\.1:\d+\/meridian$/);
  assert.match(us.redis, /^redis:\/\/127\.0\.0\.1:\d+$/);
  assert.match(us.nats, /^nats:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(us.nodes.length, 2, 'two region nodes (processes) in the region');
  for (const node of us.nodes) {
    assert.equal(node.running, true);
    assert.equal(node.workers, 2);
  }
  assert.notEqual(us.nodes[0].api, us.nodes[1].api);
  assert.deepEqual(us.running, { postgres: [true, true], redis: true, nats: true });
  // Endpoints sit in the chosen port block.
  for (const u of [us.api, us.redis, us.nats, ...us.postgres]) {
    const port = Number(/:(\d+)(\/|$)/.exec(u)[1]);
    assert.ok(port >= portBase && port < portBase + 1000, `${u} outside ${portBase}+`);
  }

  assert.equal((await http('GET', `${us.api}/readyz`)).status, 200);
  const m = await http('GET', us.metrics);
  assert.equal(m.status, 200);
  assert.match(m.text, /^# (HELP|TYPE) meridian_/m);

  // Every store really serves.
  assert.equal(await redisCommand(Number(new URL(us.redis).port), 'PING'), '+PONG');
  for (const conninfo of us.postgres) {
    const q = spawnSync(pgBin('psql'), ['-X', '-A', '-t', '-d', conninfo, '-c', 'SHOW synchronous_commit'], { encoding: 'utf8' });
    assert.equal(q.status, 0, q.stderr);
    assert.equal(q.stdout.trim(), 'on');
  }
  const js = await http('GET', `${us.nats_monitor}/jsz`);
  assert.equal(js.status, 200);
  assert.equal(js.json.config.domain, 'us-east');
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
  process.kill(redisPid, 'SIGKILL');
  const down = await status();
  assert.equal(down.regions['us-east'].running.redis, false);
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
  for (const u of [us.api, us.redis, us.nats, ...us.postgres]) {
    const port = Number(/:(\d+)(\/|$)/.exec(u)[1]);
    assert.equal(await portFree(port), true, `port ${port} still in use`);
  }
  const s = await status();
  for (const node of s.regions['us-east'].nodes) assert.equal(node.running, false);
  assert.deepEqual(s.regions['us-east'].running, { postgres: [false, false], redis: false, nats: false });
  // Data stays for the next `up`.
  assert.ok(fs.existsSync(path.join(worldDir, 'us-east', 'postgres-0', 'data', 'PG_VERSION')));
});
