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

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  LOOPBACK,
  Nats,
  Postgres,
  REPO_ROOT,
  Redis,
  RegionNode,
  binary,
  buildDir,
  httpRequest,
  mergeConfig,
  pidAlive,
  portFree,
  regionConfig,
  serviceUser,
} from '../../deploy/local/lib/stack.mjs';

export { REPO_ROOT, binary, buildDir, mergeConfig, pidAlive, regionConfig } from '../../deploy/local/lib/stack.mjs';

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
 * Handle: {port, monitorPort, url, monitorUrl, stop(), start(), kill(signal), logs()}.
 */
export async function startNats({ tmp, name, domain = 'us-east', jetstream = true, port, monitorPort, extraConfig } = {}) {
  const n = name || uniq('nats');
  const nats = register(
    new Nats({
      dir: await dirIn(tmp, n),
      port: port || (await freePort()),
      monitorPort: monitorPort || (await freePort()),
      domain,
      jetstream,
      extraConfig,
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
 * stop() throws when the log holds a sanitizer report.
 */
export async function startRegion({ tmp, region = 'us-east', node, workers = 2, postgres, redis, nats, port, config = {}, env = {}, name } = {}) {
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
  const rn = register(new RegionNode({ dir: await dirIn(tmp, n), config: cfg, env: { ...sanitizerEnv(), ...env }, name }));
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

export { LOOPBACK };
