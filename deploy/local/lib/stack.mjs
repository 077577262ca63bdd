// stack.mjs: starts the real components of a Meridian world (per region:
// PostgreSQL shards, Redis, nats-server with JetStream in the region's domain
// attached as a leafnode to a NATS hub, meridian-region nodes; the hub itself)
// as local processes, and writes the world file (meridian-world/1) describing
// them. Shared by the local world (deploy/local/world) and the integration-test
// harness (tests/lib/harness.mjs), so both run the stores exactly the same way.
//
// Every component is a Service: start() spawns it in its own process group with
// output appended to a log file in its directory and waits until a real check
// passes (pg_isready, Redis PING, NATS /healthz, region /readyz) or throws with
// the tail of its log; stop() signals it, waits with a deadline, then SIGKILLs
// the group. A stopped component starts again on the same port and data dir.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const SERVICE_USER = 'meridian';
export const LOOPBACK = '127.0.0.1';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- utilities

/** The directory holding the meridian binaries (MERIDIAN_BUILD_DIR, default <repo>/build). */
export function buildDir() {
  return path.resolve(process.env.MERIDIAN_BUILD_DIR || path.join(REPO_ROOT, 'build'));
}

/** Path of a meridian binary (e.g. 'meridian-region', 'driver_redis'). */
export function binary(name) {
  return path.join(buildDir(), name);
}

/**
 * The account that runs PostgreSQL: {name, uid, gid} of `meridian` when we are
 * root (PostgreSQL refuses root), null when we already are unprivileged.
 */
export function serviceUser() {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return null;
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${SERVICE_USER}:`));
  if (!line) {
    throw new Error(
      `running as root but the '${SERVICE_USER}' user does not exist (PostgreSQL refuses to run as root): run deploy/deps.sh`,
    );
  }
  const f = line.split(':');
  return { name: SERVICE_USER, uid: Number(f[2]), gid: Number(f[3]) };
}

/** Makes dir (and its parents) and, when running as root, gives it to the service user. */
export function mkdirFor(dir, user) {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (user) fs.chownSync(dir, user.uid, user.gid);
  return dir;
}

let pgBinDir;
/** Absolute path of a PostgreSQL server program (Debian keeps them off PATH). */
export function pgBin(name) {
  if (pgBinDir === undefined) {
    pgBinDir = null;
    const base = '/usr/lib/postgresql';
    if (fs.existsSync(base)) {
      const versions = fs
        .readdirSync(base)
        .filter((v) => /^\d+$/.test(v) && fs.existsSync(path.join(base, v, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a));
      if (versions.length) pgBinDir = path.join(base, versions[0], 'bin');
    }
  }
  return pgBinDir ? path.join(pgBinDir, name) : name;
}

/** Last n lines of a file, or '' when it does not exist. */
export function tail(file, n = 40) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
  const lines = text.split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines.slice(-n).join('\n');
}

/** Process state from /proc: null when gone, 'Z' for a zombie, else the state letter. */
function procState(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return null;
  }
}

/** True when pid is a live (non-zombie) process. */
export function pidAlive(pid) {
  if (!pid) return false;
  const st = procState(pid);
  return st !== null && st !== 'Z' && st !== 'X';
}

/**
 * True when pid is alive and runs `exe` (compared by resolved path), so that a
 * pid recorded in a state file and since reused by another program is not
 * mistaken for our component.
 */
export function pidRuns(pid, exe) {
  if (!pidAlive(pid)) return false;
  if (!exe) return true;
  let actual;
  try {
    actual = fs.readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return true; // not ours to inspect (another user): trust the state file
  }
  let want = exe;
  try {
    want = fs.realpathSync(resolveCommand(exe));
  } catch {
    /* keep as given */
  }
  return actual.replace(/ \(deleted\)$/, '') === want || path.basename(actual) === path.basename(want);
}

function resolveCommand(cmd) {
  if (cmd.includes('/')) return cmd;
  for (const dir of (process.env.PATH || '').split(':')) {
    const p = path.join(dir || '.', cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return cmd;
}

/** Sends signal to a process group, ignoring a group that is already gone. */
function killGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

/** True when 127.0.0.1:port accepts a bind (nobody listens on it). */
export function portFree(port, host = LOOPBACK) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ port, host, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/**
 * A tiny HTTP client: no keep-alive (a pooled connection would outlive the
 * request and disturb connection counts and drain tests).
 * Returns {status, headers, text, json}; json is undefined unless the body parses.
 */
export function httpRequest(method, url, { headers = {}, body, timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    let payload = body;
    if (payload !== undefined && payload !== null && typeof payload !== 'string' && !Buffer.isBuffer(payload)) {
      payload = JSON.stringify(payload);
      if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) h['content-type'] = 'application/json';
    }
    if (payload !== undefined && payload !== null) h['content-length'] = Buffer.byteLength(payload);
    const req = http.request(url, { method, headers: h, agent: false, timeout: timeoutMs }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try {
          json = text.length ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    if (payload !== undefined && payload !== null) req.write(payload);
    req.end();
  });
}

/** Resolves with the exit code of a short command (never throws on non-zero). */
function run(cmd, args, opts = {}) {
  return new Promise((resolve) => {
    let out = '';
    let child;
    try {
      child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    } catch (e) {
      resolve({ code: -1, out: String(e) });
      return;
    }
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', (e) => resolve({ code: -1, out: out + String(e) }));
    child.on('close', (code) => resolve({ code: code ?? -1, out }));
  });
}

/** Sends one Redis command (inline form) and resolves with the first reply line. */
export function redisCommand(port, command, { host = LOOPBACK, timeoutMs = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host });
    let buf = '';
    const done = (err, v) => {
      sock.destroy();
      err ? reject(err) : resolve(v);
    };
    sock.setTimeout(timeoutMs, () => done(new Error('redis: timeout')));
    sock.on('connect', () => sock.write(`${command}\r\n`));
    sock.on('data', (d) => {
      buf += d;
      const i = buf.indexOf('\r\n');
      if (i >= 0) done(null, buf.slice(0, i));
    });
    sock.on('error', (e) => done(e));
  });
}

// ------------------------------------------------------------------ Service

/**
 * One long-running process. Options:
 *   name, dir, cmd, args, env (merged over process.env), user ({uid,gid} or null),
 *   log (file, default <dir>/<name>.log), ready (async () => boolean),
 *   readyTimeoutMs, stopSignal (default SIGTERM), stopTimeoutMs,
 *   persistent (outlives this node process: the local world), pid (attach to a
 *   running instance recorded in a state file), onSpawn/onExit hooks.
 */
export class Service {
  constructor(o) {
    this.name = o.name;
    this.dir = o.dir;
    this.cmd = o.cmd;
    this.args = o.args || [];
    this.env = o.env || {};
    this.user = o.user || null;
    this.logPath = o.log || path.join(o.dir, `${o.name.replace(/[^\w.-]/g, '_')}.log`);
    this.ready = o.ready || (async () => true);
    this.readyTimeoutMs = o.readyTimeoutMs ?? 30000;
    this.stopSignal = o.stopSignal || 'SIGTERM';
    this.stopTimeoutMs = o.stopTimeoutMs ?? 15000;
    this.persistent = !!o.persistent;
    this.onSpawn = o.onSpawn || null;
    this.onExit = o.onExit || null;
    this.pid = o.pid || null;
    this.child = null;
    this.exitInfo = null; // {code, signal} of the last exit of our own child
    this._exited = null; // promise resolved by the child's exit event
  }

  /** True while the process runs. */
  running() {
    if (this.child) return this.exitInfo === null;
    return pidRuns(this.pid, this.cmd);
  }

  /** Hook for subclasses: runs before each spawn (initdb, config files). */
  async prepare() {}

  /** Hook for subclasses: runs once the process is ready. */
  async afterReady() {}

  /** Starts the process (a no-op when it runs) and waits until it is ready. */
  async start() {
    if (this.running()) return this;
    fs.mkdirSync(this.dir, { recursive: true });
    await this.prepare();
    const fd = fs.openSync(this.logPath, 'a');
    fs.writeSync(fd, `==== ${new Date().toISOString()} start: ${this.cmd} ${this.args.join(' ')}\n`);
    const opts = {
      cwd: this.dir,
      env: { ...process.env, ...this.env },
      stdio: ['ignore', fd, fd],
      // Own process group: stop() can SIGKILL the component's children too
      // (postgres backends, region workers), and ^C in a terminal does not hit it.
      detached: true,
    };
    if (this.user) {
      opts.uid = this.user.uid;
      opts.gid = this.user.gid;
      opts.env.HOME = this.dir;
      opts.env.USER = opts.env.LOGNAME = this.user.name;
    }
    let child;
    try {
      child = spawn(this.cmd, this.args, opts);
    } finally {
      fs.closeSync(fd);
    }
    this.child = child;
    this.exitInfo = null;
    this._exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        if (this.onExit) this.onExit(this);
        resolve(this.exitInfo);
      });
    });
    try {
      await new Promise((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } catch (e) {
      this.exitInfo = { code: null, signal: null, error: e.message };
      this.pid = null;
      throw new Error(`${this.name}: cannot run ${this.cmd}: ${e.message}`);
    }
    this.pid = child.pid;
    // A component never keeps node alive by itself: a test that forgets to
    // stop it must still end (the harness kills it at exit), and the local
    // world's processes outlive the script that started them.
    child.unref();
    if (this.onSpawn) this.onSpawn(this);
    try {
      await this.waitReady();
      await this.afterReady();
    } catch (e) {
      await this.stop({ timeoutMs: 3000 }).catch(() => {});
      throw e;
    }
    return this;
  }

  /** Polls the readiness check until it passes, the process dies, or the deadline. */
  async waitReady(timeoutMs = this.readyTimeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let delay = 20;
    let lastErr = null;
    for (;;) {
      if (!this.running()) {
        const how = this.exitInfo ? ` (code ${this.exitInfo.code}, signal ${this.exitInfo.signal})` : '';
        throw new Error(`${this.name} exited during start-up${how}; last lines of ${this.logPath}:\n${this.logs(40)}`);
      }
      try {
        if (await this.ready()) return;
        lastErr = null;
      } catch (e) {
        lastErr = e;
      }
      if (Date.now() >= deadline) {
        const why = lastErr ? ` (last check: ${lastErr.message})` : '';
        throw new Error(
          `${this.name} not ready after ${timeoutMs} ms${why}; last lines of ${this.logPath}:\n${this.logs(40)}`,
        );
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 250);
    }
  }

  /** Resolves with {code, signal} (ours) or {} (attached) once the process has exited. */
  async waitExit(timeoutMs = Infinity) {
    const deadline = Date.now() + timeoutMs;
    if (this.child && this._exited) {
      // The child is unref'd: a timer keeps node alive while we wait for it.
      let timer;
      const t = new Promise((r) => {
        if (timeoutMs === Infinity) timer = setInterval(() => {}, 1 << 30);
        else timer = setTimeout(() => r(null), Math.max(0, deadline - Date.now()));
      });
      const v = await Promise.race([this._exited, t]);
      clearTimeout(timer);
      clearInterval(timer);
      return v;
    }
    while (pidAlive(this.pid)) {
      if (Date.now() >= deadline) return null;
      await sleep(50);
    }
    return {};
  }

  /** Sends a signal: SIGKILL goes to the whole group (a crash takes the children too). */
  kill(signal = 'SIGKILL') {
    if (!this.pid) return false;
    if (signal === 'SIGKILL' || signal === 9) return killGroup(this.pid, 'SIGKILL');
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Graceful stop: stopSignal, wait up to timeoutMs, then SIGKILL the group.
   * Safe to call when stopped. Resolves with the exit info.
   */
  async stop({ timeoutMs = this.stopTimeoutMs } = {}) {
    if (!this.pid) return this.exitInfo;
    if (this.running()) {
      try {
        process.kill(this.pid, this.stopSignal);
      } catch {
        /* already gone */
      }
      if ((await this.waitExit(timeoutMs)) === null) {
        fs.appendFileSync(this.logPath, `==== ${new Date().toISOString()} no exit after ${timeoutMs} ms: SIGKILL\n`);
        killGroup(this.pid, 'SIGKILL');
        await this.waitExit(5000);
      }
      // Leftovers of the group (a worker that outlived its master) must not
      // survive a stop. Only now: the kernel keeps the id while the group has
      // members, but a later call could hit a new group that reused it.
      killGroup(this.pid, 'SIGKILL');
    }
    return this.exitInfo;
  }

  /** The log file (last n lines when n is given). */
  logs(n) {
    if (n) return tail(this.logPath, n);
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** What a state file needs to find this process again. */
  state() {
    return { pid: this.pid, cmd: this.cmd, dir: this.dir, log: this.logPath };
  }
}

// --------------------------------------------------------------- PostgreSQL

const PG_SETTINGS = {
  max_connections: 200,
  fsync: 'on',
  synchronous_commit: 'on',
  shared_buffers: "'64MB'",
  logging_collector: 'off',
  log_min_messages: 'warning',
  log_line_prefix: "'%m [%p] '",
  timezone: "'UTC'",
};

function pgSettingsText(settings) {
  const conf = Object.entries(settings)
    .map(([k, v]) => `${k} = ${v}`)
    .join('\n');
  return `\n# meridian local stack\n${conf}\n`;
}

/** Runs initdb into dataDir as user and appends settings; throws with its output on failure. */
async function initdb(dataDir, user, settings) {
  const opts = { cwd: path.dirname(dataDir) };
  if (user) Object.assign(opts, { uid: user.uid, gid: user.gid });
  const r = await run(pgBin('initdb'), ['-D', dataDir, '-U', SERVICE_USER, '-A', 'trust', '-E', 'UTF8', '--locale=C.UTF-8'], opts);
  if (r.code !== 0) throw new Error(`initdb ${dataDir} failed (exit ${r.code}):\n${r.out}`);
  fs.appendFileSync(path.join(dataDir, 'postgresql.conf'), pgSettingsText(settings));
}

const templates = new Map();

/**
 * Path of a cleanly shut down cluster with database `meridian` and these
 * settings, owned by user, built once per machine under os.tmpdir() and then
 * copied by every shard. Built in a private dir and renamed into place, so
 * concurrent builders never see a half-made template.
 */
export function pgTemplate(user, settings) {
  const key = JSON.stringify([user?.uid ?? process.getuid(), settings, pgBin('postgres')]);
  if (!templates.has(key)) {
    const p = buildTemplate(user, settings, key);
    p.catch(() => templates.delete(key));
    templates.set(key, p);
  }
  return templates.get(key);
}

async function buildTemplate(user, settings, key) {
  const hash = crypto.createHash('sha256').update(key).digest('hex').slice(0, 12);
  const final = path.join(os.tmpdir(), `meridian-pg-template-${hash}`);
  if (['PG_VERSION', 'global/pg_control', 'postgresql.conf'].every((f) => fs.existsSync(path.join(final, 'data', f)))) {
    return path.join(final, 'data');
  }
  fs.rmSync(final, { recursive: true, force: true }); // absent, or damaged by a /tmp cleaner
  const build = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-pg-build-'));
  fs.chmodSync(build, 0o755);
  try {
    if (user) fs.chownSync(build, user.uid, user.gid);
    await initdb(path.join(build, 'data'), user, settings);
    // Unix socket only, in a private dir: no TCP port to collide with anyone's.
    const pg = new Postgres({ dir: build, port: 5432, tcp: false, name: 'postgres-template', user, settings, log: path.join(build, 'template.log') });
    pg.prepare = async () => mkdirFor(pg.sockDir, user); // the data dir exists: no copy
    try {
      await pg.start();
      await pg.psql(`CREATE DATABASE ${pg.database}`, { database: 'postgres' });
    } finally {
      await pg.stop();
    }
    if (pg.exitInfo?.code !== 0) throw new Error(`template cluster did not shut down cleanly:\n${pg.logs(20)}`);
    fs.rmSync(path.join(build, 'data', 'postmaster.pid'), { force: true });
    try {
      fs.renameSync(build, final);
    } catch (e) {
      if (!fs.existsSync(path.join(final, 'data', 'PG_VERSION'))) throw e; // else another builder won
    }
  } finally {
    fs.rmSync(build, { recursive: true, force: true });
  }
  return path.join(final, 'data');
}

/**
 * A PostgreSQL shard: data in <dir>/data, unix socket in <dir>/sock, listening
 * on 127.0.0.1:port only, trust auth on loopback, database `meridian` owned by
 * superuser `meridian`. Runs as the `meridian` user when we are root.
 * Extra fields: port, host, conninfo, dataDir, database, psql(sql).
 */
export class Postgres extends Service {
  constructor({ dir, port, name = 'postgres', settings = {}, tcp = true, ...rest }) {
    const user = rest.user === undefined ? serviceUser() : rest.user;
    const dataDir = path.join(dir, 'data');
    const sockDir = path.join(dir, 'sock');
    super({
      name,
      dir,
      cmd: pgBin('postgres'),
      args: ['-D', dataDir, '-p', String(port), '-c', `listen_addresses=${tcp ? LOOPBACK : ''}`, '-k', sockDir],
      user,
      log: path.join(dir, 'postgres.log'),
      stopSignal: 'SIGINT', // fast shutdown: SIGTERM (smart) would wait for pooled clients
      stopTimeoutMs: 20000,
      readyTimeoutMs: 60000,
      ...rest,
    });
    this.user = user;
    this.port = port;
    this.host = LOOPBACK;
    this.database = 'meridian';
    this.dataDir = dataDir;
    this.sockDir = sockDir;
    this.settings = { ...PG_SETTINGS, ...settings };
    this.conninfo = `postgresql://${SERVICE_USER}@${LOOPBACK}:${port}/${this.database}`;
    this.clientHost = tcp ? LOOPBACK : sockDir; // what pg_isready and psql connect to
    this.ready = () => this.isReady();
  }

  async prepare() {
    mkdirFor(this.dir, this.user);
    mkdirFor(this.sockDir, this.user);
    if (this.user) {
      // Fail with a reason, not a cryptic initdb error, when a parent dir is closed to the user.
      const r = spawnSync('test', ['-w', this.dir, '-a', '-x', this.dir], { uid: this.user.uid, gid: this.user.gid });
      if (r.status !== 0) {
        throw new Error(
          `${this.name}: user ${this.user.name} cannot write ${this.dir}: every parent directory must be traversable (chmod o+x)`,
        );
      }
    }
    if (!fs.existsSync(this.logPath)) fs.writeFileSync(this.logPath, '');
    if (this.user) fs.chownSync(this.logPath, this.user.uid, this.user.gid);
    if (fs.existsSync(path.join(this.dataDir, 'PG_VERSION'))) return;
    fs.rmSync(this.dataDir, { recursive: true, force: true }); // a half-made cluster from an interrupted start
    // Copying a ready-made cluster takes ~0.2 s where initdb + CREATE DATABASE take 1-3 s,
    // and integration tests start two shards per test file.
    const template = await pgTemplate(this.user, this.settings);
    const r = await run('cp', ['-a', template, this.dataDir]);
    if (r.code !== 0) throw new Error(`${this.name}: cannot copy the template cluster ${template}: ${r.out.trim()}`);
    fs.appendFileSync(this.logPath, `==== data dir copied from ${template}\n`);
  }

  async isReady() {
    const r = await run(pgBin('pg_isready'), ['-q', '-h', this.clientHost, '-p', String(this.port), '-U', SERVICE_USER, '-d', 'postgres', '-t', '2']);
    return r.code === 0;
  }

  /** Runs SQL with psql (unaligned, tuples only) and resolves with its output; throws on error. */
  async psql(sql, { database = this.database } = {}) {
    const r = await run(pgBin('psql'), [
      '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
      '-h', this.clientHost, '-p', String(this.port), '-U', SERVICE_USER, '-d', database, '-c', sql,
    ]);
    if (r.code !== 0) throw new Error(`${this.name}: psql failed: ${r.out.trim()}`);
    return r.out;
  }

  state() {
    return { ...super.state(), port: this.port, conninfo: this.conninfo };
  }
}

// -------------------------------------------------------------------- Redis

/** Redis on 127.0.0.1:port, no persistence, working dir <dir>. Extra fields: port, host, url. */
export class Redis extends Service {
  constructor({ dir, port, name = 'redis', ...rest }) {
    super({
      name,
      dir,
      cmd: 'redis-server',
      args: [
        '--bind', LOOPBACK, '--port', String(port), '--save', '', '--appendonly', 'no',
        '--dir', dir, '--daemonize', 'no', '--logfile', '', '--protected-mode', 'yes',
      ],
      log: path.join(dir, 'redis.log'),
      readyTimeoutMs: 20000,
      ...rest,
    });
    this.port = port;
    this.host = LOOPBACK;
    this.url = `redis://${LOOPBACK}:${port}`;
    this.ready = async () => (await redisCommand(port, 'PING')) === '+PONG';
  }

  /** Sends one inline command and resolves with the first reply line. */
  command(cmd) {
    return redisCommand(this.port, cmd);
  }

  state() {
    return { ...super.state(), port: this.port, url: this.url };
  }
}

// --------------------------------------------------------------------- NATS

/** Subjects that never cross a leaf link by plain interest (design.md, "NATS topology"). */
export const LEAF_DENY = ['ev.>'];

/**
 * nats-server on 127.0.0.1:port with HTTP monitoring on monitorPort and,
 * unless jetstream is false, JetStream in domain `domain` storing under
 * <dir>/jetstream.
 *   leafPort: listen for leafnodes there (the hub);
 *   leafAdvertise: host:port the hub tells its leafnodes to reconnect to. A
 *     hub always advertises a leaf URL (2.9.10 ignores no_advertise there) and
 *     a leafnode adds it to its reconnect list: a region attached through a
 *     TcpProxy would reconnect around the proxy when it is cut, so the
 *     harness makes the hub advertise an address where nobody listens;
 *   leafRemotes: leafnode URLs to attach to (a region attaching to the hub),
 *     with `leafDeny` (default LEAF_DENY) denied both ways on the link;
 *   extraConfig: appended verbatim.
 * Extra fields: port, monitorPort, url, monitorUrl, domain, configPath,
 * leafPort, leafUrl (null unless leafPort).
 */
export class Nats extends Service {
  constructor({
    dir,
    port,
    monitorPort,
    domain = null,
    jetstream = true,
    serverName,
    extraConfig = '',
    leafPort = null,
    leafAdvertise = null,
    leafRemotes = [],
    leafDeny = LEAF_DENY,
    name = 'nats',
    ...rest
  }) {
    const configPath = path.join(dir, 'nats.conf');
    super({
      name,
      dir,
      cmd: 'nats-server',
      args: ['-c', configPath],
      log: path.join(dir, 'nats.log'),
      readyTimeoutMs: 30000,
      ...rest,
    });
    this.port = port;
    this.monitorPort = monitorPort;
    this.domain = domain;
    this.jetstream = jetstream;
    this.serverName = serverName || `${domain || 'nats'}-${port}`;
    this.extraConfig = extraConfig;
    this.leafPort = leafPort;
    this.leafUrl = leafPort ? `nats-leaf://${LOOPBACK}:${leafPort}` : null;
    this.leafAdvertise = leafAdvertise;
    this.leafRemotes = leafRemotes;
    this.leafDeny = leafDeny;
    this.configPath = configPath;
    this.url = `nats://${LOOPBACK}:${port}`;
    this.monitorUrl = `http://${LOOPBACK}:${monitorPort}`;
    this.ready = async () => {
      const q = this.jetstream ? '?js-enabled-only=true' : '';
      return (await httpRequest('GET', `${this.monitorUrl}/healthz${q}`, { timeoutMs: 2000 })).status === 200;
    };
  }

  /** The configuration file this server runs with (written at every start). */
  configText() {
    const q = JSON.stringify;
    const lines = [
      `server_name: ${q(this.serverName)}`,
      `listen: "${LOOPBACK}:${this.port}"`,
      `http: "${LOOPBACK}:${this.monitorPort}"`,
      'max_payload: 8MB',
    ];
    if (this.jetstream) {
      lines.push('jetstream {');
      lines.push(`  store_dir: ${q(this.dir)}`); // nats-server adds /jetstream
      if (this.domain) lines.push(`  domain: ${q(this.domain)}`);
      lines.push('  max_memory_store: 512MB', '  max_file_store: 8GB', '}');
    }
    if (this.leafPort || this.leafRemotes.length) {
      lines.push('leafnodes {');
      if (this.leafPort) lines.push(`  listen: "${LOOPBACK}:${this.leafPort}"`);
      if (this.leafAdvertise) lines.push(`  advertise: ${q(this.leafAdvertise)}`);
      if (this.leafRemotes.length) {
        // One remote listing every URL: one link, to whichever hub server answers.
        // The deny lists keep raw events on their side of the link both ways;
        // replication reaches other regions only through filtered stream sources.
        const deny = `[${this.leafDeny.map((d) => q(d)).join(', ')}]`;
        lines.push('  remotes: [');
        lines.push(`    { urls: [${this.leafRemotes.map((u) => q(u)).join(', ')}], deny_exports: ${deny}, deny_imports: ${deny} }`);
        lines.push('  ]');
      }
      lines.push('}');
    }
    if (this.extraConfig) lines.push(this.extraConfig);
    return `# written by deploy/local/lib/stack.mjs\n${lines.join('\n')}\n`;
  }

  async prepare() {
    fs.writeFileSync(this.configPath, this.configText());
  }

  /** True when the file on disk is what this server would be started with now. */
  configCurrent() {
    try {
      return fs.readFileSync(this.configPath, 'utf8') === this.configText();
    } catch {
      return false;
    }
  }

  /** The monitoring endpoint's /leafz: {leafnodes, leafs: [...]}. */
  async leafz() {
    const r = await httpRequest('GET', `${this.monitorUrl}/leafz`, { timeoutMs: 2000 });
    if (r.status !== 200 || !r.json) throw new Error(`${this.name}: /leafz answered ${r.status}`);
    return r.json;
  }

  state() {
    return { ...super.state(), port: this.port, monitorPort: this.monitorPort, leafPort: this.leafPort, url: this.url };
  }
}

// ---------------------------------------------------------------- TCP proxy

/**
 * A TCP relay from 127.0.0.1:port to target (host:port), run inside this node
 * process. cut() closes the listening socket and destroys every relayed
 * connection, so both ends see their TCP connection end and new connects are
 * refused, as if the path were gone; heal() listens again on the same port.
 * Used between a region's NATS and the hub to cut one region's leaf link.
 * Fields: port, url (nats-leaf://), target, isCut, connections (open pairs).
 */
export class TcpProxy {
  constructor({ port, target, name = 'proxy', host = LOOPBACK }) {
    this.port = port;
    this.host = host;
    this.target = target;
    this.name = name;
    this.url = `nats-leaf://${LOOPBACK}:${port}`;
    this.server = null;
    this.pairs = new Set();
    this.isCut = true;
    this.accepted = 0; // connections relayed since creation
  }

  get connections() {
    return this.pairs.size;
  }

  /** Listens (again); resolves once the port is bound. */
  async heal() {
    if (this.server) return this;
    const server = net.createServer((client) => this.relay(client));
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: this.port, host: this.host }, resolve);
    });
    server.on('error', () => {});
    // Never keeps a test process alive by itself; stop() closes it anyway.
    server.unref();
    this.server = server;
    this.isCut = false;
    return this;
  }

  /** Alias of heal() for the first start. */
  start() {
    return this.heal();
  }

  relay(client) {
    const upstream = net.connect(this.target);
    const pair = { client, upstream };
    this.pairs.add(pair);
    this.accepted++;
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      s.on('error', end);
      s.on('close', end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Cuts the path: no listener, every relayed connection destroyed. */
  async cut() {
    const server = this.server;
    this.server = null;
    this.isCut = true;
    for (const p of [...this.pairs]) {
      // destroy(), not resetAndDestroy(): on node 20 the latter spins the
      // loop forever on a socket whose peer has already half-closed.
      p.client.destroy();
      p.upstream.destroy();
      this.pairs.delete(p);
    }
    if (server) await new Promise((resolve) => server.close(() => resolve()));
    return this;
  }

  /** Same as cut(): the proxy holds nothing else. Safe to call twice. */
  stop() {
    return this.cut();
  }
}

// ------------------------------------------------------------- world file

/** libpq key=value conninfo of a local shard, without a password (the world file carries none). */
export function shardConninfo(port, { host = LOOPBACK, database = 'meridian', user = SERVICE_USER } = {}) {
  return `host=${host} port=${port} dbname=${database} user=${user}`;
}

/**
 * A world file (format meridian-world/1, docs/world-config.md) from concrete
 * endpoints: regions [{name, jurisdiction, domain, natsUrls, shards: [port or
 * conninfo], redis: {host, port}, apiUrls}], jurisdictions [{name, description}],
 * hubLeafUrls.
 */
export function worldDocument({ name = 'local', jurisdictions, hubLeafUrls = [], regions, edges = [] }) {
  const doc = {
    format: 'meridian-world/1',
    name,
    jurisdictions: jurisdictions.map((j) => ({ name: j.name, description: j.description ?? '' })),
  };
  if (hubLeafUrls.length) doc.hub = { leaf_urls: [...hubLeafUrls] };
  doc.regions = regions.map((r) => ({
    name: r.name,
    jurisdiction: r.jurisdiction,
    nats: { domain: r.domain || r.name, urls: [...r.natsUrls] },
    postgres: { shards: r.shards.map((s, id) => ({ id, conninfo: typeof s === 'number' ? shardConninfo(s) : s })) },
    redis: { host: r.redis.host || LOOPBACK, port: r.redis.port },
    api: { urls: [...r.apiUrls] },
    ...(r.tokenKeys?.length ? { token_keys: [...r.tokenKeys] } : {}),
  }));
  // {name, pop, region (nearest: where new users sign up), urls}
  doc.edges = edges.map((e) => ({ name: e.name, pop: e.pop ?? e.name, region: e.region, urls: [...e.urls] }));
  return doc;
}

/** Writes JSON atomically (temp file + rename): a node starting meanwhile never reads half a file. */
export function writeJsonFile(file, value, mode = 0o644) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode });
  fs.renameSync(tmp, file);
  return file;
}

// ------------------------------------------------------------ region node

/** Deep merge for configuration objects: objects merge, everything else (arrays too) replaces. */
export function mergeConfig(base, over) {
  if (over === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = mergeConfig(base[k], v);
  return out;
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * The configuration of a region node talking to the given stores; `config`
 * is merged over it (see region/rg_config.c for the fields).
 */
export function regionConfig({ region, node, port, workers = 2, postgres, redis, nats, config = {} }) {
  const base = {
    region,
    node: node || `${region}-1`,
    workers,
    listen: { host: LOOPBACK, port },
    log: { level: 'info', access: false },
    postgres: { shards: postgres.map((p, id) => ({ id, conninfo: typeof p === 'string' ? p : p.conninfo })) },
    redis: { host: LOOPBACK, port: typeof redis === 'number' ? redis : redis.port },
    nats: { url: typeof nats === 'string' ? nats : nats.url },
  };
  return mergeConfig(base, config);
}

const SANITIZER_RE = /ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|SUMMARY: UndefinedBehaviorSanitizer|runtime error: /;

/**
 * A meridian-region node: writes <dir>/region.json from `config` and runs
 * `meridian-region --config`; ready when GET /readyz answers 200.
 * Extra fields: port, api, config, configPath.
 */
/**
 * Makes a 32-byte key file (64 hex characters, mode 0600) unless it exists.
 * Keys are generated on the machine that runs the world, never committed.
 */
export function ensureKeyFile(file) {
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.writeFileSync(file, `${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  return file;
}

/**
 * The Ed25519 public key, as 43 base64url characters, of a signing key file
 * (a 32-byte seed in hex): what the world file lists as a region's token_keys.
 */
export function tokenPublicKey(seedFile) {
  const seed = Buffer.from(fs.readFileSync(seedFile, 'utf8').trim(), 'hex');
  if (seed.length !== 32) throw new Error(`${seedFile}: not a 32-byte key in hex`);
  // PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410).
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const pub = crypto.createPublicKey(crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }));
  return pub.export({ format: 'jwk' }).x;
}

export class RegionNode extends Service {
  /**
   * keysDir: where the region's signing key lives (shared by its nodes);
   * worldKeysDir: where the world-wide email/slug hash key lives. Both default
   * to <dir>/keys. Key files are made on first start when the config names none.
   */
  constructor({ dir, config, bin = binary('meridian-region'), name, keysDir, worldKeysDir, ...rest }) {
    const configPath = path.join(dir, 'region.json');
    const drain = config.shutdown?.drain_timeout_ms ?? 30000;
    super({
      name: name || `meridian-region ${config.node || config.region}`,
      dir,
      cmd: bin,
      args: ['--config', configPath],
      log: path.join(dir, 'region.log'),
      stopTimeoutMs: drain + 15000,
      readyTimeoutMs: 60000,
      ...rest,
    });
    this.config = config;
    this.configPath = configPath;
    this.port = config.listen.port;
    this.api = `http://${config.listen.host || LOOPBACK}:${this.port}`;
    this.workers = config.workers ?? 2;
    this.ready = () => this.allWorkersReady();
    this.keysDir = keysDir || path.join(dir, 'keys');
    this.worldKeysDir = worldKeysDir || this.keysDir;
  }

  /**
   * Ready means every worker is: each worker answers /readyz for itself, and a
   * request lands on any of them (SO_REUSEPORT). Polling /readyz on fresh
   * connections reaches each worker in turn, and the summed gauge
   * meridian_ready_workers counts those whose last check passed. Without the
   * gauge, several 200s in a row on fresh connections stand in for it.
   */
  async allWorkersReady() {
    const r = await httpRequest('GET', `${this.api}/readyz`, { timeoutMs: 2000 });
    if (r.status !== 200) {
      this._streak = 0;
      return false;
    }
    const m = await httpRequest('GET', `${this.api}/metrics`, { timeoutMs: 2000 });
    const g = /^meridian_ready_workers(?:\{[^}]*\})? +(\S+)$/m.exec(m.text);
    if (g) return Number(g[1]) >= this.workers;
    this._streak = (this._streak || 0) + 1;
    return this._streak >= 2 * this.workers + 2;
  }

  async prepare() {
    if (!fs.existsSync(this.cmd)) {
      throw new Error(`${this.name}: ${this.cmd} does not exist: build first (cmake --build build) or set MERIDIAN_BUILD_DIR`);
    }
    if (!this.config.auth) {
      this.config.auth = {
        signing_key_file: ensureKeyFile(path.join(this.keysDir, 'signing.key')),
        email_hash_key_file: ensureKeyFile(path.join(this.worldKeysDir, 'email-hash.key')),
      };
    }
    // Encryption at rest is on by default and needs the region's master key
    // (docs/encryption.md): one per region, next to its signing key.
    if (!this.config.encryption) {
      this.config.encryption = { master_key_file: ensureKeyFile(path.join(this.keysDir, 'master.key')) };
    }
    fs.writeFileSync(this.configPath, `${JSON.stringify(this.config, null, 2)}\n`);
  }

  /** Sanitizer reports (ASan, LSan, UBSan) found in the log, or '' when clean. */
  sanitizerReport() {
    const text = this.logs();
    const i = text.search(SANITIZER_RE);
    return i < 0 ? '' : text.slice(Math.max(0, text.lastIndexOf('\n', i - 200)), i + 4000);
  }

  state() {
    return { ...super.state(), port: this.port, api: this.api, configPath: this.configPath };
  }
}

/**
 * The configuration of an edge node (edge/eg_config.c, docs/edge.md);
 * `config` is merged over it.
 */
export function edgeConfig({ edge, port, workers = 2, worldFile, tokenFile, emailHashKeyFile, dnsServers, config = {} }) {
  const base = {
    edge,
    workers,
    listen: { host: LOOPBACK, port },
    log: { level: 'info', access: false },
    world_file: worldFile,
    directory: { token_file: tokenFile },
    auth: { email_hash_key_file: emailHashKeyFile },
  };
  if (dnsServers && dnsServers.length) base.dns = { servers: dnsServers };
  return mergeConfig(base, config);
}

/**
 * A meridian-edge node: writes <dir>/edge.json from `config` and runs
 * `meridian-edge --config`; ready when every worker answers /readyz (its
 * directory copy is loaded). Extra fields: port, api, config, configPath.
 */
export class EdgeNode extends Service {
  constructor({ dir, config, bin = binary('meridian-edge'), name, ...rest }) {
    const configPath = path.join(dir, 'edge.json');
    const drain = config.shutdown?.drain_timeout_ms ?? 30000;
    super({
      name: name || `meridian-edge ${config.edge}`,
      dir,
      cmd: bin,
      args: ['--config', configPath],
      log: path.join(dir, 'edge.log'),
      stopTimeoutMs: drain + 15000,
      readyTimeoutMs: 60000,
      ...rest,
    });
    this.config = config;
    this.configPath = configPath;
    this.port = config.listen.port;
    this.api = `http://${config.listen.host || LOOPBACK}:${this.port}`;
    this.workers = config.workers ?? 2;
    this.ready = () => RegionNode.prototype.allWorkersReady.call(this);
  }

  async prepare() {
    if (!fs.existsSync(this.cmd)) {
      throw new Error(`${this.name}: ${this.cmd} does not exist: build first (cmake --build build) or set MERIDIAN_BUILD_DIR`);
    }
    fs.writeFileSync(this.configPath, `${JSON.stringify(this.config, null, 2)}\n`);
  }

  sanitizerReport() {
    return RegionNode.prototype.sanitizerReport.call(this);
  }

  state() {
    return { ...super.state(), port: this.port, api: this.api, configPath: this.configPath };
  }
}

/** A bearer token for edges reading regions' directories (made once, mode 0600, never committed). */
export function ensureTokenFile(file) {
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.writeFileSync(file, `${crypto.randomBytes(24).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
  return file;
}

// ------------------------------------------------------------------ DNS (dnsmasq)

export function dnsmasqPath() {
  for (const p of ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq']) if (fs.existsSync(p)) return p;
  return 'dnsmasq';
}

export function hostsText(hosts) {
  if (typeof hosts === 'string') return hosts;
  const lines = [];
  for (const [name, ips] of Object.entries(hosts || {})) {
    for (const ip of Array.isArray(ips) ? ips : [ips]) lines.push(`${ip} ${name}`);
  }
  return lines.join('\n') + '\n';
}

// ------------------------------------------------------------ a tiny DNS client

function encodeQuery(id, name, type) {
  const labels = name.replace(/\.$/, '').split('.');
  const parts = [Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l, 'ascii'));
  parts.push(Buffer.from([0, type >> 8, type & 0xff, 0, 1]));
  return Buffer.concat(parts);
}

function skipName(buf, off) {
  for (;;) {
    const len = buf[off];
    if (len === 0) return off + 1;
    if ((len & 0xc0) === 0xc0) return off + 2;
    off += len + 1;
  }
}

function decodeAnswer(buf) {
  const rcode = buf[3] & 0x0f;
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  let off = 12;
  for (let i = 0; i < qd; i++) off = skipName(buf, off) + 4;
  const answers = [];
  for (let i = 0; i < an; i++) {
    off = skipName(buf, off);
    const type = buf.readUInt16BE(off);
    const ttl = buf.readUInt32BE(off + 4);
    const len = buf.readUInt16BE(off + 8);
    const rd = buf.subarray(off + 10, off + 10 + len);
    off += 10 + len;
    if (type === 1 && len === 4) answers.push({ ip: [...rd].join('.'), ttl });
    if (type === 28 && len === 16) {
      const groups = [];
      for (let g = 0; g < 16; g += 2) groups.push(rd.readUInt16BE(g).toString(16));
      answers.push({ ip: groups.join(':'), ttl }); // uncompressed: fd00:0:0:0:0:0:0:7
    }
  }
  return { rcode, answers };
}

/** One UDP query: resolves {rcode, answers: [{ip, ttl}]}; rejects on timeout. */
export function dnsQuery(port, name, { type = 'A', host = LOOPBACK, timeoutMs = 1000 } = {}) {
  const qtype = type === 'AAAA' ? 28 : 1;
  const id = Math.floor(Math.random() * 65536);
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`dns query ${name}: timeout`));
    }, timeoutMs);
    sock.on('message', (msg) => {
      if (msg.length < 12 || msg.readUInt16BE(0) !== id) return;
      clearTimeout(timer);
      sock.close();
      try {
        resolve(decodeAnswer(msg));
      } catch (e) {
        reject(e);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      sock.close();
      reject(e);
    });
    sock.send(encodeQuery(id, name, qtype), port, host);
  });
}


/** dnsmasq's arguments: serve only hostsPath's names on 127.0.0.1:port with TTL ttl (NXDOMAIN for the rest of domain). */
export function dnsmasqArgs({ port, hostsPath, ttl, domain, dir }) {
  const args = [
    '--keep-in-foreground',
    '--conf-file=/dev/null', // not /etc/dnsmasq.conf or /etc/dnsmasq.d
    `--port=${port}`,
    `--listen-address=${LOOPBACK}`,
    '--bind-interfaces',
    '--no-resolv',
    '--no-hosts',
    `--addn-hosts=${hostsPath}`,
    `--local-ttl=${ttl}`,
    `--pid-file=${path.join(dir, 'dnsmasq.pid')}`,
    '--log-facility=-', // stderr, captured in the log
  ];
  if (domain) args.push(`--local=/${domain}/`);
  // As root dnsmasq drops to its compiled-in user; name one that surely exists.
  // It re-reads the hosts file on SIGHUP as that user, hence 0755/0644 modes.
  if (process.getuid && process.getuid() === 0) args.push('--user=nobody', '--group=nogroup');
  return args;
}

/**
 * dnsmasq for the local world: the DNS server of region endpoints and of the
 * global edge name. Ready when it answers a query for probeName.
 */
export class Dnsmasq extends Service {
  constructor({ dir, port, hosts, ttl = 5, domain, probeName, ...rest }) {
    const hostsPath = path.join(dir, 'hosts');
    super({ dir, cmd: dnsmasqPath(), args: dnsmasqArgs({ port, hostsPath, ttl, domain, dir }), log: path.join(dir, 'dnsmasq.log'), ...rest });
    this.port = port;
    this.hosts = hosts;
    this.hostsPath = hostsPath;
    this.server = `${LOOPBACK}:${port}`;
    this.ready = async () => (await dnsQuery(port, probeName, { timeoutMs: 300 })).answers.length > 0;
  }

  async prepare() {
    fs.chmodSync(this.dir, 0o755);
    fs.writeFileSync(this.hostsPath, hostsText(this.hosts), { mode: 0o644 });
  }

  state() {
    return { ...super.state(), port: this.port, server: this.server };
  }
}
