// world.mjs: the local world's process manager, run by deploy/local/world
// after dependencies are installed and the binaries built.
//
//   node deploy/local/lib/world.mjs up | down [--purge] | status [--json]
//
// What runs is described by deploy/local/world.json (MERIDIAN_WORLD_CONFIG):
// jurisdictions, a NATS hub (no JetStream) and a list of regions, each with
// PostgreSQL shards, Redis, NATS (JetStream domain = region, attached to the
// hub as a leafnode that denies ev.> both ways) and meridian-region nodes.
// `up` writes the world file (meridian-world/1) to <world dir>/meridian-world.json
// and hands it to every node as world_file. Processes are started detached and
// recorded in <world dir>/state.json (pid per component), so they outlive this
// script and a later `up` finds them (pid alive and running the same program)
// and starts only what is missing. Start order: the hub, then every region's
// stores at once, then the nodes; `down` stops in the reverse order.
//
// Environment: MERIDIAN_WORLD_DIR (default <repo>/.world), MERIDIAN_WORLD_CONFIG,
// MERIDIAN_WORLD_PORT_BASE (overrides port_base), MERIDIAN_BUILD_DIR (binaries).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import {
  Dnsmasq,
  EdgeNode,
  Nats,
  Postgres,
  REPO_ROOT,
  Redis,
  RegionNode,
  Service,
  binary,
  httpRequest,
  mergeConfig,
  portFree,
  regionConfig,
  serviceUser,
  worldDocument,
  tokenPublicKey,
  ensureKeyFile,
  ensureTokenFile,
  edgeConfig,
  writeJsonFile,
} from './stack.mjs';

const WORLD_DIR = path.resolve(process.env.MERIDIAN_WORLD_DIR || path.join(REPO_ROOT, '.world'));
const CONFIG_PATH = path.resolve(process.env.MERIDIAN_WORLD_CONFIG || path.join(REPO_ROOT, 'deploy/local/world.json'));
const STATE_PATH = path.join(WORLD_DIR, 'state.json');
const WORLD_FILE = path.join(WORLD_DIR, 'meridian-world.json');
// The bearer token edges present to read regions' directories (made on first up, never committed).
const EDGE_TOKEN_FILE = path.join(WORLD_DIR, 'keys', 'edge-directory.token');
const LOOPBACK_ADDR = '127.0.0.1';

// Port offsets inside a region's block of 100, and world-wide offsets from
// port_base (documented in world.json).
const OFF = { postgres: 10, redis: 20, nats: 30, natsMonitor: 31, natsLeaf: 32, node: 40 };
const HUB_OFF = { nats: 930, monitor: 931, leaf: 932, dns: 940, edge: 950 };
// Every edge listens on HUB_OFF.edge at its own loopback address, so that the
// global edge name can resolve to one address per edge.
const edgeAddress = (i) => `127.0.0.${2 + i}`;

// Start phases: the hub first (regions' NATS attach to it), then every
// region's stores at once, then the nodes that need them.
const PHASE = { hub: 0, dns: 0, postgres: 1, redis: 1, nats: 1, node: 2, edge: 3 };

class WorldError extends Error {}

function loadConfig() {
  let cfg;
  try {
    cfg = JSON.parse(fs.readFileSync(CONFIG_PATH, 'utf8'));
  } catch (e) {
    throw new WorldError(`cannot read the world description ${CONFIG_PATH}: ${e.message}`);
  }
  const base = Number(process.env.MERIDIAN_WORLD_PORT_BASE || cfg.port_base || 17000);
  if (!Number.isInteger(base) || base < 1024 || base > 64000) {
    throw new WorldError(`port base ${base} is out of range (1024-64000)`);
  }
  if (!Array.isArray(cfg.regions) || cfg.regions.length === 0) {
    throw new WorldError(`${CONFIG_PATH}: "regions" must be a non-empty list`);
  }
  // The world file (and the nodes reading it) need these; say so here, naming the field.
  const jurisdictions = cfg.jurisdictions || [];
  if (!Array.isArray(jurisdictions) || jurisdictions.length === 0) {
    throw new WorldError(`${CONFIG_PATH}: "jurisdictions" must be a non-empty list of {name, description}`);
  }
  const names = new Set(jurisdictions.map((j) => j.name));
  cfg.regions.forEach((r, i) => {
    if (!names.has(r.jurisdiction)) {
      throw new WorldError(
        `${CONFIG_PATH}: regions[${i}].jurisdiction: ${JSON.stringify(r.jurisdiction)} is not one of the jurisdictions (${[...names].join(', ')})`,
      );
    }
  });
  if (cfg.regions.length > 1 && !cfg.hub) {
    throw new WorldError(`${CONFIG_PATH}: "hub" is required with more than one region: regions attach to it as leafnodes`);
  }
  if (cfg.edges?.length && !cfg.dns) {
    throw new WorldError(`${CONFIG_PATH}: "dns" is required with edges: they resolve region endpoints through it`);
  }
  if ((cfg.edges || []).length > 200) throw new WorldError(`${CONFIG_PATH}: at most 200 edges`);
  return { ...cfg, port_base: base };
}

function loadState() {
  try {
    return JSON.parse(fs.readFileSync(STATE_PATH, 'utf8'));
  } catch {
    return { components: {} };
  }
}

function saveState(state) {
  fs.mkdirSync(WORLD_DIR, { recursive: true });
  const tmp = `${STATE_PATH}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`);
  fs.renameSync(tmp, STATE_PATH);
}

/**
 * Turns the description into components: {key, region, kind, phase, ports,
 * svc} where svc is a stack.mjs Service attached to the recorded pid, if any.
 * Phases start in order (PHASE). Also returns the hub component (or null) and
 * the world file document describing it all.
 */
function plan(cfg, state) {
  const user = serviceUser();
  const regions = [];
  const components = [];
  const attach = (key) => state.components[key]?.pid || null;

  let hub = null;
  if (cfg.hub) {
    const key = 'hub/nats';
    const svc = new Nats({
      dir: path.join(WORLD_DIR, 'hub'),
      port: cfg.port_base + HUB_OFF.nats,
      monitorPort: cfg.port_base + HUB_OFF.monitor,
      leafPort: cfg.port_base + HUB_OFF.leaf,
      jetstream: false, // the hub only relays: every region keeps its own JetStream domain
      serverName: 'hub',
      extraConfig: cfg.hub.nats?.extra_config || '',
      name: key,
      persistent: true,
      pid: attach(key),
    });
    hub = { key, region: null, kind: 'hub', phase: PHASE.hub, ports: [svc.port, svc.monitorPort, svc.leafPort], svc };
    components.push(hub);
  }

  const domain = cfg.dns?.domain || null;
  const dnsHosts = {}; // name -> [address]
  const nodeHost = (nodeName) => (domain ? `${nodeName}.${domain}` : LOOPBACK_ADDR);
  let dns = null;
  if (cfg.dns) {
    const key = 'world/dns';
    const svc = new Dnsmasq({
      dir: path.join(WORLD_DIR, 'dns'),
      port: cfg.port_base + HUB_OFF.dns,
      hosts: dnsHosts,
      ttl: cfg.dns.ttl_s ?? 5,
      domain,
      probeName: `edge.${domain}`,
      name: key,
      persistent: true,
      pid: attach(key),
    });
    dns = { key, region: null, kind: 'dns', phase: PHASE.dns, ports: [svc.port], svc, domain };
    components.push(dns);
  }

  cfg.regions.forEach((r, index) => {
    if (!r.name || !/^[a-z0-9-]{1,32}$/.test(r.name)) throw new WorldError(`region name ${JSON.stringify(r.name)} is invalid`);
    const slot = r.port_slot ?? index;
    const base = cfg.port_base + 100 * slot;
    const rdir = path.join(WORLD_DIR, r.name);
    const region = {
      name: r.name,
      jurisdiction: r.jurisdiction,
      domain: r.nats?.jetstream_domain || r.name,
      postgres: [],
      redis: null,
      nats: null,
      nodes: [],
    };
    regions.push(region);

    const nshards = r.postgres?.shards ?? 2;
    for (let i = 0; i < nshards; i++) {
      const key = `${r.name}/postgres-${i}`;
      const svc = new Postgres({
        dir: path.join(rdir, `postgres-${i}`),
        port: base + OFF.postgres + i,
        name: key,
        user,
        persistent: true,
        pid: attach(key),
        settings: r.postgres?.settings,
      });
      const c = { key, region: r.name, kind: 'postgres', phase: PHASE.postgres, ports: [svc.port], svc };
      components.push(c);
      region.postgres.push(c);
    }
    {
      const key = `${r.name}/redis`;
      const svc = new Redis({ dir: path.join(rdir, 'redis'), port: base + OFF.redis, name: key, persistent: true, pid: attach(key) });
      region.redis = { key, region: r.name, kind: 'redis', phase: PHASE.redis, ports: [svc.port], svc };
      components.push(region.redis);
    }
    {
      const key = `${r.name}/nats`;
      const svc = new Nats({
        dir: path.join(rdir, 'nats'),
        port: base + OFF.nats,
        monitorPort: base + OFF.natsMonitor,
        domain: region.domain,
        serverName: `${r.name}-nats`,
        leafRemotes: hub ? [hub.svc.leafUrl] : [],
        extraConfig: r.nats?.extra_config || '',
        name: key,
        persistent: true,
        pid: attach(key),
      });
      region.nats = { key, region: r.name, kind: 'nats', phase: PHASE.nats, ports: [svc.port, svc.monitorPort], svc };
      components.push(region.nats);
    }
    (r.nodes || []).forEach((n, j) => {
      const key = `${r.name}/node-${n.name}`;
      const config = regionConfig({
        region: r.name,
        node: n.name,
        port: base + OFF.node + j,
        workers: n.workers ?? 2,
        postgres: region.postgres.map((p) => p.svc.conninfo),
        redis: region.redis.svc.port,
        nats: region.nats.svc.url,
        config: mergeConfig(
          { log: { level: 'info', access: true }, world_file: WORLD_FILE, directory: { edge_token_file: EDGE_TOKEN_FILE } },
          n.config || {},
        ),
      });
      const svc = new RegionNode({
        dir: path.join(rdir, 'nodes', n.name),
        config,
        // A region's nodes share its signing key; the email/slug hash key is world-wide.
        keysDir: path.join(rdir, 'keys'),
        worldKeysDir: path.join(WORLD_DIR, 'keys'),
        bin: binary('meridian-region'),
        name: key,
        persistent: true,
        pid: attach(key),
      });
      const c = { key, region: r.name, kind: 'node', phase: PHASE.node, ports: [svc.port], svc, workers: config.workers, nodeName: n.name };
      c.apiName = `http://${nodeHost(n.name)}:${svc.port}`;
      if (domain) dnsHosts[`${n.name}.${domain}`] = [LOOPBACK_ADDR];
      components.push(c);
      region.nodes.push(c);
    });
  });

  const edges = [];
  (cfg.edges || []).forEach((e, i) => {
    if (!e.name || !/^[a-z0-9-]{1,32}$/.test(e.name)) throw new WorldError(`edge name ${JSON.stringify(e.name)} is invalid`);
    const key = `edge/${e.name}`;
    const host = edgeAddress(i);
    const config = edgeConfig({
      edge: e.name,
      port: cfg.port_base + HUB_OFF.edge,
      workers: e.workers ?? 1,
      worldFile: WORLD_FILE,
      tokenFile: EDGE_TOKEN_FILE,
      emailHashKeyFile: path.join(WORLD_DIR, 'keys', 'email-hash.key'),
      dnsServers: [dns.svc.server],
      config: mergeConfig(
        { listen: { host }, log: { level: 'info', access: true } },
        e.config || {},
      ),
    });
    const svc = new EdgeNode({ dir: path.join(WORLD_DIR, 'edges', e.name), config, bin: binary('meridian-edge'), name: key, persistent: true, pid: attach(key) });
    const c = { key, region: null, kind: 'edge', phase: PHASE.edge, ports: [svc.port], host, svc, edgeName: e.name };
    dnsHosts[`${e.name}.${domain}`] = [host];
    (dnsHosts[`edge.${domain}`] ||= []).push(host);
    components.push(c);
    edges.push(c);
  });
  const keys = new Set();
  const ports = new Map();
  for (const c of components) {
    if (keys.has(c.key)) throw new WorldError(`${CONFIG_PATH}: duplicate component ${c.key}`);
    keys.add(c.key);
    for (const p of c.ports) {
      const at = `${c.host || LOOPBACK_ADDR}:${p}`;
      if (ports.has(at)) throw new WorldError(`${CONFIG_PATH}: ${c.key} and ${ports.get(at)} both get ${at} (port_slot?)`);
      ports.set(at, c.key);
    }
  }
  const world = worldDocument({
    name: cfg.name || 'local',
    jurisdictions: cfg.jurisdictions,
    hubLeafUrls: hub ? [hub.svc.leafUrl] : [],
    regions: regions.map((r) => ({
      name: r.name,
      jurisdiction: r.jurisdiction,
      domain: r.domain,
      natsUrls: [r.nats.svc.url],
      shards: r.postgres.map((p) => p.svc.port),
      redis: { port: r.redis.svc.port },
      // DNS names when the world runs dnsmasq: edges resolve them (c-ares, TTLs honoured).
      apiUrls: r.nodes.map((n) => n.apiName),
      // Every region verifies every region's tokens (a user may call any region: 421 names the home).
      tokenKeys: [tokenPublicKey(ensureKeyFile(path.join(WORLD_DIR, r.name, 'keys', 'signing.key')))],
    })),
    edges: edges.map((e) => ({ name: e.edgeName, pop: 'local', region: cfg.regions[0].name, urls: [`http://${e.edgeName}.${domain}:${e.svc.port}`] })),
  });
  return { regions, components, hub, dns, edges, world };
}

function portOwner(port) {
  const r = spawnSync('ss', ['-H', '-ltnp', `sport = :${port}`], { encoding: 'utf8' });
  const m = /users:\(\((.*?)\)\)/.exec(r.stdout || '');
  return m ? ` (${m[1]})` : '';
}

async function up() {
  const cfg = loadConfig();
  fs.mkdirSync(WORLD_DIR, { recursive: true, mode: 0o755 });
  // PostgreSQL runs as `meridian`: it must be able to reach its data dirs.
  fs.chmodSync(WORLD_DIR, 0o755);
  const state = loadState();
  const { components, world } = plan(cfg, state);
  // Before any node starts: nodes refuse to start without their region in it.
  writeJsonFile(WORLD_FILE, world);
  ensureTokenFile(EDGE_TOKEN_FILE);
  ensureKeyFile(path.join(WORLD_DIR, 'keys', 'email-hash.key'));
  const startedNow = [];
  const phases = [...new Set(components.map((c) => c.phase))].sort();
  try {
    for (const phase of phases) {
      const batch = components.filter((c) => c.phase === phase);
      // Check every port of the phase before starting anything in it.
      for (const c of batch) {
        if (c.svc.running()) {
          const rec = state.components[c.key];
          if (rec && rec.port !== undefined && rec.port !== c.ports[0]) {
            throw new WorldError(`${c.key} runs on port ${rec.port} but the world now puts it on ${c.ports[0]}: run \`world down\` first`);
          }
          // A NATS started by an older description (no hub, other leaf links)
          // would leave its region silently detached.
          if (c.svc instanceof Nats && !c.svc.configCurrent()) {
            throw new WorldError(`${c.key} runs with another configuration than the world now describes (${c.svc.configPath}): run \`world down\` first`);
          }
          continue;
        }
        for (const p of c.ports) {
          if (!(await portFree(p, c.host || LOOPBACK_ADDR))) {
            throw new WorldError(
              `port ${p} (${c.key}) is in use by a process this world did not start${portOwner(p)}: stop it, or choose other ports with MERIDIAN_WORLD_PORT_BASE`,
            );
          }
        }
      }
      for (const c of batch) {
        fs.mkdirSync(path.dirname(c.svc.dir), { recursive: true, mode: 0o755 });
        fs.chmodSync(path.dirname(c.svc.dir), 0o755);
      }
      await Promise.all(
        batch.map(async (c) => {
          if (c.svc.running()) {
            log(`${c.key}: already running (pid ${c.svc.pid})`);
            return;
          }
          await c.svc.start();
          startedNow.push(c);
          state.components[c.key] = { kind: c.kind, ...c.svc.state(), startedAt: new Date().toISOString() };
          saveState(state);
          log(`${c.key}: started (pid ${c.svc.pid})`);
        }),
      );
    }
  } catch (e) {
    // Leave the world as it was before this `up`: stop what this run started.
    for (const c of startedNow.reverse()) {
      await c.svc.stop({ timeoutMs: 10000 }).catch(() => {});
      delete state.components[c.key];
    }
    saveState(state);
    throw e;
  }
  // A node that was already running reconnects to a restarted store with
  // backoff: `up` promises a ready world, so wait for every node.
  const nodes = components.filter((c) => c.kind === 'node' || c.kind === 'edge');
  await Promise.all(
    nodes.map(async (c) => {
      try {
        await c.svc.waitReady(60000);
      } catch (e) {
        throw new WorldError(`${c.key} is running but not ready: ${e.message}`);
      }
    }),
  );
  // Cross-region traffic needs every region attached to the hub (leaf
  // remotes retry every second, so this is quick once the hub runs).
  const natsOfRegions = components.filter((c) => c.kind === 'nats');
  if (components.some((c) => c.kind === 'hub')) {
    await Promise.all(
      natsOfRegions.map(async (c) => {
        const deadline = Date.now() + 30000;
        while ((await leafCount(c.svc)) < 1) {
          if (Date.now() > deadline) throw new WorldError(`${c.key} did not attach to the hub within 30 s; see ${c.svc.logPath}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }),
    );
  }
  await status({ json: false });
}

async function down({ purge = false } = {}) {
  let cfg = null;
  try {
    cfg = loadConfig();
  } catch {
    /* stop what the state file lists even when the description is broken */
  }
  const state = loadState();
  const planned = cfg ? plan(cfg, state).components : [];
  const byKey = new Map(planned.map((c) => [c.key, c]));
  // Components recorded in the state but no longer described are stopped too.
  for (const [key, rec] of Object.entries(state.components)) {
    if (byKey.has(key) || !rec.pid) continue;
    const svc = attachOrphan(key, rec);
    byKey.set(key, { key, phase: PHASE[rec.kind] ?? PHASE.postgres, svc });
  }
  const phases = [...new Set([...byKey.values()].map((c) => c.phase))].sort().reverse();
  let failed = false;
  for (const phase of phases) {
    await Promise.all(
      [...byKey.values()]
        .filter((c) => c.phase === phase)
        .map(async (c) => {
          if (!c.svc.running()) {
            delete state.components[c.key];
            return;
          }
          const pid = c.svc.pid;
          await c.svc.stop();
          if (c.svc.running()) {
            failed = true;
            log(`${c.key}: pid ${pid} did not stop`);
            return;
          }
          delete state.components[c.key];
          log(`${c.key}: stopped (pid ${pid})`);
        }),
    );
  }
  saveState(state);
  if (failed) throw new WorldError('some components did not stop');
  if (purge) {
    fs.rmSync(WORLD_DIR, { recursive: true, force: true });
    log(`removed ${WORLD_DIR}`);
  }
}

/** A Service for a state record whose component is no longer in the description. */
function attachOrphan(key, rec) {
  const kinds = {
    postgres: () => new Postgres({ dir: rec.dir, port: rec.port, name: key, user: null, persistent: true, pid: rec.pid }),
    redis: () => new Redis({ dir: rec.dir, port: rec.port, name: key, persistent: true, pid: rec.pid }),
    nats: () => new Nats({ dir: rec.dir, port: rec.port, monitorPort: rec.monitorPort, name: key, persistent: true, pid: rec.pid }),
    hub: () => new Nats({ dir: rec.dir, port: rec.port, monitorPort: rec.monitorPort, jetstream: false, name: key, persistent: true, pid: rec.pid }),
  };
  if (kinds[rec.kind]) return kinds[rec.kind]();
  return new Service({ name: key, dir: rec.dir, cmd: rec.cmd, persistent: true, pid: rec.pid, stopTimeoutMs: 45000 });
}

async function ready(url) {
  try {
    return (await httpRequest('GET', url, { timeoutMs: 1000 })).status === 200;
  } catch {
    return false;
  }
}

/** Number of leafnode connections a running NATS reports (/leafz), null when it does not answer. */
async function leafCount(svc) {
  if (!svc.running()) return null;
  try {
    return (await svc.leafz()).leafnodes ?? 0;
  } catch {
    return null;
  }
}

async function describe() {
  const cfg = loadConfig();
  const state = loadState();
  const { regions, hub, dns, edges } = plan(cfg, state);
  const out = {
    name: cfg.name || 'local',
    dir: WORLD_DIR,
    world_file: WORLD_FILE,
    world_file_written: fs.existsSync(WORLD_FILE),
    jurisdictions: cfg.jurisdictions.map((j) => ({ name: j.name, description: j.description ?? '' })),
    hub: null,
    dns: null,
    edge_name: null,
    edges: [],
    regions: {},
  };
  if (dns) {
    const d = dns.svc;
    out.dns = {
      server: d.server,
      domain: dns.domain,
      ttl_s: cfg.dns.ttl_s ?? 5,
      names: d.hosts,
      running: d.running(),
      pid: d.running() ? d.pid : null,
      log: d.logPath,
    };
  }
  if (edges.length) out.edge_name = `edge.${dns.domain}`;
  for (const e of edges) {
    const s = e.svc;
    out.edges.push({
      name: e.edgeName,
      api: s.api,
      dns_name: `${e.edgeName}.${dns.domain}`,
      global_url: `http://edge.${dns.domain}:${s.port}`,
      metrics: `${s.api}/metrics`,
      workers: s.workers,
      pid: s.running() ? s.pid : null,
      running: s.running(),
      ready: s.running() ? await ready(`${s.api}/readyz`) : false,
      config: s.configPath,
      log: s.logPath,
    });
  }
  if (hub) {
    const h = hub.svc;
    out.hub = {
      nats: h.url,
      nats_monitor: h.monitorUrl,
      leaf_url: h.leafUrl,
      jetstream: false,
      running: h.running(),
      pid: h.running() ? h.pid : null,
      leafnodes: await leafCount(h), // regions attached now
      log: h.logPath,
    };
  }
  for (const r of regions) {
    const nodes = await Promise.all(
      r.nodes.map(async (n) => ({
        name: n.nodeName,
        api: n.svc.api,
        api_url: n.apiName, // as the world file lists it

        metrics: `${n.svc.api}/metrics`,
        workers: n.workers,
        pid: n.svc.running() ? n.svc.pid : null,
        running: n.svc.running(),
        ready: n.svc.running() ? await ready(`${n.svc.api}/readyz`) : false,
        config: n.svc.configPath,
        log: n.svc.logPath,
      })),
    );
    const api = nodes.length ? nodes[0].api : null;
    const leafs = await leafCount(r.nats.svc);
    out.regions[r.name] = {
      jurisdiction: r.jurisdiction,
      nats_domain: r.domain,
      api,
      metrics: api ? `${api}/metrics` : null,
      postgres: r.postgres.map((p) => p.svc.conninfo),
      redis: r.redis.svc.url,
      nats: r.nats.svc.url,
      nats_monitor: r.nats.svc.monitorUrl,
      // Attached to the hub right now (its /leafz); null when its NATS is down.
      hub_link: hub ? (leafs === null ? null : leafs > 0) : null,
      nodes,
      running: {
        postgres: r.postgres.map((p) => p.svc.running()),
        redis: r.redis.svc.running(),
        nats: r.nats.svc.running(),
      },
      pids: {
        postgres: r.postgres.map((p) => (p.svc.running() ? p.svc.pid : null)),
        redis: r.redis.svc.running() ? r.redis.svc.pid : null,
        nats: r.nats.svc.running() ? r.nats.svc.pid : null,
      },
      logs: {
        postgres: r.postgres.map((p) => p.svc.logPath),
        redis: r.redis.svc.logPath,
        nats: r.nats.svc.logPath,
      },
    };
  }
  return out;
}

async function status({ json }) {
  const d = await describe();
  if (json) {
    process.stdout.write(`${JSON.stringify(d, null, 2)}\n`);
    return;
  }
  const rows = [['REGION', 'COMPONENT', 'ENDPOINT', 'PID', 'STATE']];
  const st = (running, pid) => [running ? String(pid) : '-', running ? 'running' : 'stopped'];
  if (d.hub) {
    const h = d.hub;
    const state = h.running ? `running, ${h.leafnodes ?? '?'} region(s) attached` : 'stopped';
    rows.push(['(world)', 'nats hub', `${h.nats} (monitor ${h.nats_monitor}, leaf ${h.leaf_url})`, h.running ? String(h.pid) : '-', state]);
  }
  if (d.dns) {
    rows.push(['(world)', 'dns', `${d.dns.server} (domain ${d.dns.domain}, ttl ${d.dns.ttl_s} s)`, d.dns.running ? String(d.dns.pid) : '-', d.dns.running ? 'running' : 'stopped']);
  }
  for (const e of d.edges) {
    rows.push(['(world)', `edge ${e.name}`, `${e.api} (${e.global_url})`, e.running ? String(e.pid) : '-', e.running ? (e.ready ? 'ready' : 'running, not ready') : 'stopped']);
  }
  for (const [name, r] of Object.entries(d.regions)) {
    r.postgres.forEach((url, i) => rows.push([name, `postgres[${i}]`, url, ...st(r.running.postgres[i], r.pids.postgres[i])]));
    rows.push([name, 'redis', r.redis, ...st(r.running.redis, r.pids.redis)]);
    const link = r.hub_link === null ? '' : r.hub_link ? ', hub link up' : ', hub link DOWN';
    const [pid, state] = st(r.running.nats, r.pids.nats);
    rows.push([name, 'nats', `${r.nats} (monitor ${r.nats_monitor}, domain ${r.nats_domain})`, pid, r.running.nats ? `${state}${link}` : state]);
    for (const n of r.nodes) {
      rows.push([name, `node ${n.name}`, `${n.api} (metrics ${n.metrics})`, n.running ? String(n.pid) : '-', n.running ? (n.ready ? 'ready' : 'running, not ready') : 'stopped']);
    }
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd());
  console.log(`\nworld file: ${d.world_file}${d.world_file_written ? '' : ' (not written yet: run up)'}`);
  console.log(`data and logs: ${d.dir}`);
}

function log(msg) {
  process.stderr.write(`world: ${msg}\n`);
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  switch (cmd) {
    case 'up':
      return up();
    case 'down':
      return down({ purge: args.includes('--purge') });
    case 'status':
      return status({ json: args.includes('--json') });
    default:
      throw new WorldError('usage: world up | down [--purge] | status [--json]');
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    log(e instanceof WorldError ? e.message : e.stack || String(e));
    process.exit(1);
  },
);
