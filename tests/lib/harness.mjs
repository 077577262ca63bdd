// harness.mjs: integration-test harness. Starts real PostgreSQL, Redis,
// nats-server and meridian-region processes (deploy/local/lib/stack.mjs) on
// free loopback ports in temp dirs, and guarantees they go away: w.stop(),
// process exit, SIGINT/SIGTERM, and — when this process is SIGKILLed (a ctest
// timeout) — a small reaper process that watches it (tests/lib/reaper.mjs).
//
//   import { startWorld, startPostgres, startRedis, startNats, freePort, makeTmp, waitFor } from '../lib/harness.mjs';
//   const w = await startWorld({ workers: 2, config: { websocket: { echo_endpoint: true } }, env: {} });
//   ... w.api, w.port, w.region, w.postgres[i], w.redis, w.nats, w.tmp ...
//   await w.stop();
//
// Several regions linked through a NATS hub (see startWorlds below):
//   const ws = await startWorlds({ regions: ['us-east', 'eu-west', 'ap-south'], leafProxy: true });
//   ws.regions['eu-west'].api, .nats, .postgres[i], .redis, .node, .nodes[], .leaf (cut()/heal())
//   ws.hub.stop(); ws.hub.start();   // cut every region off, then heal (same ports)
//   await ws.stop();

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import net from 'node:net';

import {
  LOOPBACK,
  Nats,
  Postgres,
  REPO_ROOT,
  Redis,
  RegionNode,
  EdgeNode,
  TcpProxy,
  binary,
  buildDir,
  httpRequest,
  mergeConfig,
  pidAlive,
  portFree,
  regionConfig,
  serviceUser,
  worldDocument,
  tokenPublicKey,
  ensureKeyFile,
  ensureTokenFile,
  edgeConfig,
  writeJsonFile,
} from '../../deploy/local/lib/stack.mjs';

export { REPO_ROOT, binary, buildDir, mergeConfig, pidAlive, regionConfig, edgeConfig } from '../../deploy/local/lib/stack.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** MERIDIAN_KEEP_TMP=1 keeps temp dirs (logs, data) for a post-mortem. */
const KEEP_TMP = /^(1|on|true|yes)$/i.test(process.env.MERIDIAN_KEEP_TMP || '');

/** True when the binaries under test were built with -DMERIDIAN_SANITIZE=ON. */
export const SANITIZE = /^(1|on|true|yes)$/i.test(process.env.MERIDIAN_SANITIZE || '');

// ----------------------------------------------------------------- teardown

const services = new Set(); // every Service we started, running or not
const tmpDirs = new Set();
const portLocks = new Set();
const cleanups = []; // extra synchronous cleanup functions (track())
let handlersInstalled = false;
let registryPath = null;

/** Writes what the reaper must kill and remove should this process die without cleaning up. */
function saveRegistry() {
  if (!registryPath) return;
  const pgids = [...services].filter((s) => s.pid && s.exitInfo === null).map((s) => s.pid);
  for (const c of cleanups) if (c.pgid) pgids.push(c.pgid);
  const data = { pgids, dirs: KEEP_TMP ? [] : [...tmpDirs], locks: [...portLocks] };
  fs.writeFileSync(registryPath, JSON.stringify(data));
}

function installHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  registryPath = path.join(os.tmpdir(), `meridian-harness-${process.pid}.json`);
  saveRegistry();
  const reaper = spawn(process.execPath, [path.join(HERE, 'reaper.mjs'), String(process.pid), registryPath], {
    detached: true,
    stdio: 'ignore',
  });
  reaper.unref();
  process.on('exit', teardownSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
      teardownSync();
      process.exit(128 + os.constants.signals[sig]);
    });
  }
}

/** Kills everything and removes every temp dir, synchronously (exit paths). */
function teardownSync() {
  for (const c of cleanups.splice(0)) {
    try {
      c.fn();
    } catch {
      /* best effort */
    }
  }
  for (const s of services) {
    if (s.pid && s.exitInfo === null) {
      try {
        process.kill(-s.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  services.clear();
  if (KEEP_TMP && tmpDirs.size) process.stderr.write(`harness: MERIDIAN_KEEP_TMP set, kept ${[...tmpDirs].join(' ')}\n`);
  else for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
  tmpDirs.clear();
  for (const l of portLocks) fs.rmSync(l, { force: true });
  portLocks.clear();
  if (registryPath) fs.rmSync(registryPath, { force: true });
}

function register(svc) {
  installHandlers();
  services.add(svc);
  svc.onSpawn = () => saveRegistry();
  svc.onExit = () => saveRegistry();
  return svc;
}

/**
 * Registers a child process (or a pid leading its own process group) for
 * teardown: it is SIGKILLed with its group on exit if still running.
 */
export function track(child) {
  installHandlers();
  const pid = typeof child === 'number' ? child : child.pid;
  const entry = {
    pgid: pid,
    fn: () => {
      if (!pidAlive(pid)) return;
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    },
  };
  cleanups.push(entry);
  saveRegistry();
  if (typeof child !== 'number') {
    child.once('exit', () => {
      const i = cleanups.indexOf(entry);
      if (i >= 0) cleanups.splice(i, 1);
      saveRegistry();
    });
  }
  return child;
}

// ------------------------------------------------------------ ports and dirs

const PORT_LOCK_DIR = path.join(os.tmpdir(), 'meridian-ports');
const handedOut = new Set();

function ephemeralLow() {
  try {
    return Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
}

function lockPort(port) {
  if (!fs.existsSync(PORT_LOCK_DIR)) {
    fs.mkdirSync(PORT_LOCK_DIR, { recursive: true });
    try {
      fs.chmodSync(PORT_LOCK_DIR, 0o1777); // shared by every user's test runs, like /tmp
    } catch {
      /* made by another user at the same moment */
    }
  }
  const f = path.join(PORT_LOCK_DIR, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(f, String(process.pid), { flag: 'wx' });
      portLocks.add(f);
      return true;
    } catch (e) {
      if (e.code !== 'EEXIST') return true; // no locking possible: rely on the bind check
      let owner = 0;
      try {
        owner = Number(fs.readFileSync(f, 'utf8'));
      } catch {
        /* raced with its removal */
      }
      if (owner && pidAlive(owner)) return false;
      fs.rmSync(f, { force: true }); // stale: its process is gone
    }
  }
  return false;
}

/**
 * A free TCP port on 127.0.0.1, reserved for this process. Ports are drawn at
 * random below the ephemeral range and checked by binding them: ports from
 * bind(0) come from the ephemeral range that load tests' client sockets also
 * use up. A lock file keeps concurrent test processes from taking the same one.
 */
export async function freePort() {
  installHandlers();
  const hi = Math.min(ephemeralLow(), 32768);
  const lo = Math.max(1024, hi - 12768);
  for (let i = 0; i < 200; i++) {
    const port = lo + Math.floor(Math.random() * (hi - lo));
    if (handedOut.has(port)) continue;
    if (!(await portFree(port))) continue;
    if (!lockPort(port)) continue;
    handedOut.add(port);
    saveRegistry();
    return port;
  }
  throw new Error('freePort: no free port found');
}

/**
 * A fresh temp dir (mkdtemp under os.tmpdir()), removed at teardown. World-
 * readable and, when running as root, owned by the `meridian` user, so that
 * PostgreSQL (which runs as that user) can create its directories inside.
 */
export function makeTmp(prefix = 'meridian-test-') {
  installHandlers();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  const user = serviceUser();
  if (user) fs.chownSync(dir, user.uid, user.gid);
  tmpDirs.add(dir);
  saveRegistry();
  return dir;
}

/** Removes a temp dir made by makeTmp now (it is removed at exit anyway). */
export function removeTmp(dir) {
  if (KEEP_TMP) return;
  fs.rmSync(dir, { recursive: true, force: true });
  tmpDirs.delete(dir);
  saveRegistry();
}

// ----------------------------------------------------------------- helpers

/**
 * Polls fn until it returns a truthy value (which is returned), retrying when
 * it throws. On timeout throws with `message` and the last error.
 */
export async function waitFor(fn, { timeoutMs = 10000, intervalMs = 25, maxIntervalMs = 250, message } = {}) {
  const deadline = Date.now() + timeoutMs;
  let delay = intervalMs;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      lastErr = undefined;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() >= deadline) {
      const why = lastErr ? `: last error: ${lastErr.message}` : '';
      throw new Error(`${message || 'waitFor: condition not met'} within ${timeoutMs} ms${why}`);
    }
    await sleep(delay);
    delay = Math.min(delay * 2, maxIntervalMs);
  }
}

/**
 * HTTP request without keep-alive: http('GET', url, {headers, body, timeoutMs})
 * -> {status, headers, json, text}. An object body is sent as JSON.
 */
export function http(method, url, opts = {}) {
  return httpRequest(method, url, opts);
}

// ---------------------------------------------------------- building blocks

async function dirIn(tmp, name) {
  const base = tmp || makeTmp();
  const dir = path.join(base, name);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  return dir;
}

let seq = 0;
const uniq = (kind) => `${kind}-${++seq}`;

/**
 * Starts a PostgreSQL server (database `meridian`, superuser `meridian`, trust
 * auth on 127.0.0.1). Handle: {port, host, conninfo, dataDir, stop(), start(),
 * kill(signal), psql(sql), logs()}.
 */
export async function startPostgres({ tmp, name, port, settings } = {}) {
  const n = name || uniq('postgres');
  const pg = register(new Postgres({ dir: await dirIn(tmp, n), port: port || (await freePort()), name: n, settings }));
  await pg.start();
  return pg;
}

/** Starts Redis. Handle: {port, host, url, stop(), start(), kill(signal), command(cmd), logs()}. */
export async function startRedis({ tmp, name, port } = {}) {
  const n = name || uniq('redis');
  const r = register(new Redis({ dir: await dirIn(tmp, n), port: port || (await freePort()), name: n }));
  await r.start();
  return r;
}

/**
 * Starts nats-server with JetStream in `domain` (jetstream: false for a hub).
 * leafPort: listen for leafnodes (a hub); leafRemotes: leaf URLs to attach to,
 * denying leafDeny (default ev.>) both ways. Handle: {port, monitorPort, url,
 * monitorUrl, leafPort, leafUrl, stop(), start(), kill(signal), logs(), leafz()}.
 */
export async function startNats({ tmp, name, domain = 'us-east', jetstream = true, port, monitorPort, extraConfig, leafPort, leafAdvertise, leafRemotes, leafDeny } = {}) {
  const n = name || uniq('nats');
  const nats = register(
    new Nats({
      dir: await dirIn(tmp, n),
      port: port || (await freePort()),
      monitorPort: monitorPort || (await freePort()),
      domain,
      jetstream,
      extraConfig,
      leafPort,
      leafAdvertise,
      leafRemotes,
      leafDeny,
      name: n,
    }),
  );
  await nats.start();
  return nats;
}

function sanitizerEnv() {
  if (!SANITIZE) return {};
  const env = {};
  if (!process.env.ASAN_OPTIONS) env.ASAN_OPTIONS = 'detect_leaks=1';
  if (!process.env.UBSAN_OPTIONS) env.UBSAN_OPTIONS = 'print_stacktrace=1:halt_on_error=1';
  return env;
}

/**
 * Starts a meridian-region node against the given stores. `config` is merged
 * over the generated configuration. Handle: {pid, port, api, config,
 * configPath, start(), stop(), kill(signal), waitExit(), logs()}.
 * keysDir (signing key) and worldKeysDir (email/slug hash key) default to the
 * node's own dir; nodes of one region share keysDir, all regions worldKeysDir.
 * stop() throws when the log holds a sanitizer report.
 */
export async function startRegion({ tmp, region = 'us-east', node, workers = 2, postgres, redis, nats, port, config = {}, env = {}, name, keysDir, worldKeysDir } = {}) {
  const n = name || uniq('region');
  const cfg = regionConfig({
    region,
    node,
    port: port || (await freePort()),
    workers,
    postgres,
    redis,
    nats,
    // Tests stop nodes often: a short drain keeps teardown quick.
    config: mergeConfig({ shutdown: { drain_timeout_ms: 3000 } }, config),
  });
  const rn = register(new RegionNode({ dir: await dirIn(tmp, n), config: cfg, env: { ...sanitizerEnv(), ...env }, name, keysDir, worldKeysDir }));
  const stop = rn.stop.bind(rn);
  let reported = false;
  rn.stop = async (opts) => {
    const info = await stop(opts);
    const rep = reported ? '' : rn.sanitizerReport();
    if (rep) {
      reported = true;
      throw new Error(`${rn.name}: sanitizer report in ${rn.logPath}:\n${rep}`);
    }
    return info;
  };
  await rn.start();
  return rn;
}

/**
 * Starts a meridian-edge node for a world (worldFile), reading directories
 * with tokenFile and hashing emails with the world's key. Handle like
 * startRegion's. stop() throws when the log holds a sanitizer report.
 */
export async function startEdge({ tmp, edge = 'edge-1', workers = 1, port, worldFile, tokenFile, emailHashKeyFile, dnsServers, config = {}, env = {}, name } = {}) {
  const n = name || uniq(edge);
  const cfg = edgeConfig({
    edge,
    port: port || (await freePort()),
    workers,
    worldFile,
    tokenFile,
    emailHashKeyFile,
    dnsServers,
    config: mergeConfig({ shutdown: { drain_timeout_ms: 3000 } }, config),
  });
  const en = register(new EdgeNode({ dir: await dirIn(tmp, n), config: cfg, env: { ...sanitizerEnv(), ...env }, name }));
  const stop = en.stop.bind(en);
  let reported = false;
  en.stop = async (opts) => {
    const info = await stop(opts);
    const rep = reported ? '' : en.sanitizerReport();
    if (rep) {
      reported = true;
      throw new Error(`${en.name}: sanitizer report in ${en.logPath}:\n${rep}`);
    }
    return info;
  };
  await en.start();
  return en;
}

/**
 * The whole single-region stack: `shards` PostgreSQL shards, Redis, nats-server
 * with JetStream (domain = region) and one meridian-region node.
 * Returns {api, port, region, postgres[], redis, nats, tmp, stop()}.
 */
export async function startWorld({ workers = 2, config = {}, env = {}, shards = 2, region = 'us-east', node } = {}) {
  const tmp = makeTmp('meridian-world-');
  const started = [];
  const keep = (p) => p.then((h) => (started.push(h), h));
  let stopped = false;
  const stopAll = async () => {
    if (stopped) return;
    stopped = true;
    let err = null;
    // The node first: it must not see its stores vanish while draining.
    for (const s of [...started].reverse()) {
      try {
        await s.stop();
      } catch (e) {
        err = err || e;
      }
    }
    removeTmp(tmp);
    if (err) throw err;
  };
  try {
    const [postgres, redis, nats] = await Promise.all([
      Promise.all(Array.from({ length: shards }, (_, i) => keep(startPostgres({ tmp, name: `postgres-${i}` })))),
      keep(startRedis({ tmp, name: 'redis' })),
      keep(startNats({ tmp, name: 'nats', domain: region })),
    ]);
    const regionNode = await keep(startRegion({ tmp, region, node, workers, postgres, redis, nats, config, env, name: 'region' }));
    return {
      api: regionNode.api,
      port: regionNode.port,
      region: regionNode,
      postgres,
      redis,
      nats,
      tmp,
      stop: stopAll,
    };
  } catch (e) {
    await stopAll().catch(() => {});
    throw e;
  }
}

// ------------------------------------------------------------ several regions

/** Jurisdiction of the regions the tests use (docs/world-config.md); others get their name in capitals. */
const JURISDICTIONS = {
  'us-east': { name: 'US', description: 'United States' },
  'eu-west': { name: 'EU', description: 'European Union (GDPR)' },
  'ap-south': { name: 'IN', description: 'India (DPDP Act)' },
};

const perRegion = (v, region, dflt) => {
  if (v === undefined || v === null) return dflt;
  if (typeof v === 'number') return v;
  return v[region] ?? dflt;
};

/**
 * A world of several regions on loopback, as deploy/local/world runs it: a
 * NATS hub without JetStream; per region `shards` PostgreSQL shards, Redis,
 * nats-server with JetStream domain = region name attached to the hub as a
 * leafnode (ev.> denied both ways), and `nodes` meridian-region nodes reading
 * the world file (meridian-world/1) written to <tmp>/meridian-world.json.
 *
 * Options (a number for every region, or an object keyed by region):
 *   regions   names (default us-east, eu-west, ap-south)
 *   workers   per node (default 2 in the first region, 1 in the others: 2 cores)
 *   nodes     per region (default 1); shards per region (default 2)
 *   config    merged into every node's config, or (region, nodeIndex) => config
 *   env       extra environment of the nodes
 *   jurisdictions  {region: {name, description}} over the defaults
 *   leafProxy true: each region's leaf link runs through a TcpProxy in this
 *             process, so that one region can be cut off alone (see cut/heal)
 *   linkTimeoutMs  how long to wait for every region to attach to the hub
 *
 * Returns {hub, regions: {<name>: {name, jurisdiction, domain, api, port,
 * node, nodes[], postgres[], redis, nats, leaf}}, world (the document),
 * worldFile, tmp, cut(region), heal(region), waitLinked(), stop()}.
 *
 * Cutting links, both really ending TCP connections:
 *   - await w.hub.stop() ... await w.hub.start(): every region loses the hub;
 *     the hub comes back on the same ports and the regions reattach (their
 *     leaf remotes retry every second);
 *   - with leafProxy: await w.cut('eu-west') ... await w.heal('eu-west'): the
 *     proxy between eu-west's NATS and the hub destroys its connections and
 *     refuses new ones, then listens again. The other regions stay linked.
 * After healing, await w.waitLinked() before expecting cross-region traffic.
 * stop() stops everything (nodes first, then stores, then the hub) and
 * removes the temp dir; a failure during start stops what had started.
 */
export async function startWorlds({
  regions = ['us-east', 'eu-west', 'ap-south'],
  workers,
  nodes = 1,
  shards = 2,
  config = {},
  env = {},
  jurisdictions = {},
  leafProxy = false,
  linkTimeoutMs = 30000,
  name = 'local',
  apiHost = () => LOOPBACK,
} = {}) {
  if (!regions.length || new Set(regions).size !== regions.length) throw new Error(`startWorlds: bad regions ${regions}`);
  const tmp = makeTmp('meridian-worlds-');
  const worldFile = path.join(tmp, 'meridian-world.json');
  const phases = [[], [], []]; // [hub and proxies, stores, nodes]: stopped in reverse
  const keep = (phase) => (p) => p.then((h) => (phases[phase].push(h), h));
  let stopped = false;
  const stopAll = async () => {
    if (stopped) return;
    stopped = true;
    let err = null;
    // Nodes first: they must not see their stores vanish while draining.
    for (const list of [...phases].reverse()) {
      const results = await Promise.allSettled(list.map((h) => h.stop()));
      for (const r of results) if (r.status === 'rejected') err = err || r.reason;
    }
    removeTmp(tmp);
    if (err) throw err;
  };
  // Edges read every region's directory with this token (directory.edge_token_file).
  const edgeTokenFile = ensureTokenFile(path.join(tmp, 'keys', 'edge-directory.token'));
  const emailHashKeyFile = ensureKeyFile(path.join(tmp, 'keys', 'email-hash.key'));
  const out = { hub: null, regions: {}, world: null, worldFile, tmp, edgeTokenFile, emailHashKeyFile, edges: [], stop: stopAll };
  try {
    // Behind proxies the hub must advertise a dead address: a region would
    // otherwise reconnect straight to the hub's real leaf port when its proxy is cut.
    const leafAdvertise = leafProxy ? `${LOOPBACK}:${await freePort()}` : null;
    out.hub = await keep(0)(startNats({ tmp, name: 'hub', jetstream: false, leafPort: await freePort(), leafAdvertise }));
    for (const r of regions) {
      const j = jurisdictions[r] || JURISDICTIONS[r] || { name: r.toUpperCase().replace(/[^A-Z0-9-]/g, '').slice(0, 16), description: r };
      let leaf = null;
      if (leafProxy) {
        leaf = new TcpProxy({ port: await freePort(), target: { host: LOOPBACK, port: out.hub.leafPort }, name: `${r} leaf link` });
        await leaf.start();
        phases[0].push(leaf);
      }
      out.regions[r] = { name: r, jurisdiction: j.name, jurisdictionDescription: j.description, domain: r, leaf, nodes: [] };
    }
    // Every region's stores at once.
    await Promise.all(
      regions.map(async (r) => {
        const R = out.regions[r];
        const n = perRegion(shards, r, 2);
        const [postgres, redis, nats] = await Promise.all([
          Promise.all(Array.from({ length: n }, (_, i) => keep(1)(startPostgres({ tmp, name: `${r}/postgres-${i}` })))),
          keep(1)(startRedis({ tmp, name: `${r}/redis` })),
          keep(1)(startNats({ tmp, name: `${r}/nats`, domain: R.domain, leafRemotes: [R.leaf ? R.leaf.url : out.hub.leafUrl] })),
        ]);
        Object.assign(R, { postgres, redis, nats });
      }),
    );
    // Node ports are known before the nodes start: the world file lists them.
    const plan = [];
    for (const [ri, r] of regions.entries()) {
      const count = perRegion(nodes, r, 1);
      for (let i = 0; i < count; i++) {
        plan.push({ r, i, port: await freePort(), workers: perRegion(workers, r, ri === 0 ? 2 : 1) });
      }
    }
    out.world = worldDocument({
      name,
      jurisdictions: regions
        .map((r) => ({ name: out.regions[r].jurisdiction, description: out.regions[r].jurisdictionDescription }))
        .filter((j, i, all) => all.findIndex((k) => k.name === j.name) === i),
      hubLeafUrls: [out.hub.leafUrl],
      regions: regions.map((r) => {
        const R = out.regions[r];
        return {
          name: r,
          jurisdiction: R.jurisdiction,
          domain: R.domain,
          natsUrls: [R.nats.url],
          shards: R.postgres.map((p) => p.port),
          redis: { port: R.redis.port },
          apiUrls: plan.filter((p) => p.r === r).map((p) => `http://${apiHost(r, p.i)}:${p.port}`),
          tokenKeys: [tokenPublicKey(ensureKeyFile(path.join(tmp, r, 'keys', 'signing.key')))],
        };
      }),
    });
    writeJsonFile(worldFile, out.world);
    await Promise.all(
      plan.map(async ({ r, i, port, workers: w }) => {
        const R = out.regions[r];
        const extra = typeof config === 'function' ? config(r, i) || {} : config;
        const node = await keep(2)(
          startRegion({
            tmp,
            region: r,
            node: `${r}-${i + 1}`,
            workers: w,
            postgres: R.postgres,
            redis: R.redis,
            nats: R.nats,
            port,
            config: mergeConfig({ world_file: worldFile, directory: { edge_token_file: edgeTokenFile } }, extra),
            env,
            name: `${r}/node-${i + 1}`,
            // A region's nodes share its signing key; the email/slug hash key is world-wide.
            keysDir: path.join(tmp, r, 'keys'),
            worldKeysDir: path.join(tmp, 'keys'),
          }),
        );
        R.nodes[i] = node;
      }),
    );
    for (const r of regions) {
      const R = out.regions[r];
      R.node = R.nodes[0] || null;
      R.api = R.node ? R.node.api : null;
      R.port = R.node ? R.node.port : null;
    }
    /** Starts an edge of this world (options as startEdge); stopped with the world, before the regions. */
    out.startEdge = async (opts = {}) => {
      const e = await keep(2)(startEdge({ tmp, worldFile, tokenFile: edgeTokenFile, emailHashKeyFile, ...opts }));
      out.edges.push(e);
      return e;
    };
    out.cut = async (region) => {
      const R = out.regions[region];
      if (!R?.leaf) throw new Error(`cut(${region}): start the world with leafProxy: true (or stop the hub)`);
      await R.leaf.cut();
    };
    out.heal = async (region) => {
      const R = out.regions[region];
      if (!R?.leaf) throw new Error(`heal(${region}): start the world with leafProxy: true (or start the hub)`);
      await R.leaf.heal();
    };
    /** Resolves once every region is attached to the hub and each JetStream domain answers from every other region. */
    out.waitLinked = async ({ timeoutMs = linkTimeoutMs } = {}) => {
      await Promise.all(
        regions.map((a) =>
          waitFor(async () => (await out.regions[a].nats.leafz()).leafnodes >= 1, {
            timeoutMs,
            message: `${a}'s NATS did not attach to the hub`,
          }),
        ),
      );
      for (const a of regions) {
        for (const b of regions) {
          if (a === b) continue;
          await waitFor(async () => (await jsAccountInfo(out.regions[a].nats.port, b)).domain === b, {
            timeoutMs,
            message: `the JetStream API of domain ${b} did not answer from ${a}`,
          });
        }
      }
    };
    if (regions.length > 1) await out.waitLinked();
    return out;
  } catch (e) {
    await stopAll().catch(() => {});
    throw e;
  }
}

// ------------------------------------------------------------- NATS (text protocol)

/**
 * A small NATS connection for tests (core NATS, no JetStream client): publish,
 * subscribe, request. natsConnect(port) -> {ready, publish(subject, data),
 * subscribe(subject) -> {messages, unsubscribe()}, request(subject, data,
 * {timeoutMs}) -> {subject, data, headers}, flush(), close()}. A request that
 * nobody can answer rejects at once ("no responders"), which suits waitFor.
 */
export function natsConnect(port, { host = LOOPBACK } = {}) {
  const sock = net.connect({ port, host });
  let buf = Buffer.alloc(0);
  let sid = 0;
  const subs = new Map();
  const pongs = [];
  let closed = null;
  const fail = (e) => {
    closed = closed || e;
    for (const p of pongs.splice(0)) p.reject(closed);
    for (const s of subs.values()) s.onClose?.(closed);
  };
  // Written at once: the socket holds them until it connects, so CONNECT
  // always precedes whatever the caller sends next.
  sock.write(`CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\nPING\r\n`);
  const ready = new Promise((resolve, reject) => pongs.push({ resolve, reject }));
  ready.catch(() => {});
  sock.on('error', (e) => fail(e));
  sock.on('close', () => fail(new Error(`nats ${host}:${port}: connection closed`)));
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const eol = buf.indexOf('\r\n');
      if (eol < 0) return;
      const line = buf.subarray(0, eol).toString();
      if (line.startsWith('MSG ') || line.startsWith('HMSG ')) {
        const parts = line.split(' ');
        const hmsg = parts[0] === 'HMSG';
        const total = Number(parts.at(-1));
        const hlen = hmsg ? Number(parts.at(-2)) : 0;
        if (buf.length < eol + 2 + total + 2) return;
        const payload = buf.subarray(eol + 2, eol + 2 + total);
        buf = buf.subarray(eol + 2 + total + 2);
        const headers = {};
        let status = null;
        if (hmsg) {
          const lines = payload.subarray(0, hlen).toString().split('\r\n');
          status = Number(/^NATS\/1\.0 (\d+)/.exec(lines[0])?.[1]) || null;
          for (const h of lines.slice(1)) {
            const i = h.indexOf(':');
            if (i > 0) headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
          }
        }
        subs.get(parts[2])?.onMessage({ subject: parts[1], headers, status, data: payload.subarray(hlen).toString() });
        continue;
      }
      buf = buf.subarray(eol + 2);
      if (line.startsWith('PING')) sock.write('PONG\r\n');
      else if (line.startsWith('PONG')) pongs.shift()?.resolve();
      else if (line.startsWith('-ERR')) fail(new Error(`nats ${host}:${port}: ${line}`));
    }
  });
  const c = {
    ready,
    publish(subject, data = '') {
      sock.write(`PUB ${subject} ${Buffer.byteLength(data)}\r\n${data}\r\n`);
    },
    subscribe(subject) {
      const id = String(++sid);
      const messages = [];
      subs.set(id, { onMessage: (m) => messages.push(m) });
      sock.write(`SUB ${subject} ${id}\r\n`);
      return {
        messages,
        unsubscribe: () => {
          subs.delete(id);
          if (!closed) sock.write(`UNSUB ${id}\r\n`);
        },
      };
    },
    /** Resolves once the server has processed everything sent before. */
    flush() {
      if (closed) return Promise.reject(closed);
      return new Promise((resolve, reject) => {
        pongs.push({ resolve, reject });
        sock.write('PING\r\n');
      });
    },
    async request(subject, data = '', { timeoutMs = 2000 } = {}) {
      await ready;
      const id = String(++sid);
      const inbox = `_INBOX.harness.${process.pid}.${id}`;
      try {
        return await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`nats request ${subject}: no answer within ${timeoutMs} ms`)), timeoutMs);
          subs.set(id, {
            onMessage: (m) => {
              clearTimeout(timer);
              if (m.status === 503) reject(new Error(`nats request ${subject}: no responders`));
              else resolve(m);
            },
            onClose: (e) => (clearTimeout(timer), reject(e)),
          });
          sock.write(`SUB ${inbox} ${id}\r\nUNSUB ${id} 1\r\nPUB ${subject} ${inbox} ${Buffer.byteLength(data)}\r\n${data}\r\n`);
        });
      } finally {
        subs.delete(id);
      }
    },
    close() {
      closed = closed || new Error('closed');
      sock.destroy();
    },
  };
  return c;
}

/** One request on a fresh connection: resolves with the reply {subject, data, headers}. */
export async function natsRequest(port, subject, data = '', { timeoutMs = 2000, host } = {}) {
  const c = natsConnect(port, { host });
  try {
    await c.ready;
    return await c.request(subject, data, { timeoutMs });
  } finally {
    c.close();
  }
}

/**
 * JetStream account info of `domain`, asked through the NATS at port
 * ($JS.<domain>.API.INFO): across the hub when domain is another region's.
 * Resolves with the parsed answer (its `domain` says who answered).
 */
export async function jsAccountInfo(port, domain, opts = {}) {
  const m = await natsRequest(port, `$JS.${domain}.API.INFO`, '', opts);
  return JSON.parse(m.data);
}

export { LOOPBACK, TcpProxy };
