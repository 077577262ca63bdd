#!/usr/bin/env node
// render.mjs: renders every node's configuration from a world file
// (meridian-world/1, docs/world-config.md) and the templates next to this
// script. No dependencies beyond Node itself, so it runs on a node at boot.
//
//   node deploy/templates/render.mjs --world WORLD.json --out DIR [options]
//
// Writes, under DIR:
//   region/<region>-<j>.json   one region node config per URL in regions[].api.urls
//                              (j from 1; the listen port is the URL's port)
//   edge/<edge>.json           one edge config per entry of edges[]
//   nats/<region>-nats-<i>.conf one nats-server config per URL in regions[].nats.urls
//   nats/hub-<i>.conf          one hub server config per URL in hub.leaf_urls
//   world.json                 the world file itself, as given
// and prints one line per file. It checks what it needs of the world file and
// fails naming the field; `meridian-region --check-config` validates the rest.
//
// Options (defaults are the paths of an installed node, see docs/operations.md):
//   --world-path P     world_file in every config (/etc/meridian/world.json)
//   --keys-dir D       key files: D/<region>/signing.key, D/email-hash.key,
//                      D/edge-directory.token (/etc/meridian/keys)
//   --listen-host H    address region nodes, edges and NATS bind (0.0.0.0)
//   --monitor-host H   NATS monitoring address (0.0.0.0)
//   --workers N        worker processes per region node and edge (2)
//   --edge-mode M      proxy | redirect (proxy)
//   --dns-server H:P   edges resolve region names there (default: /etc/resolv.conf)
//   --nats-store D     JetStream store: D/<server name> (/var/lib/meridian/nats)
//   --region NAME      render only this region's files (repeatable); --no-edges, --no-hub
//   --log-level L      (info)

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

class RenderError extends Error {}

const DEFAULTS = {
  worldPath: '/etc/meridian/world.json',
  keysDir: '/etc/meridian/keys',
  listenHost: '0.0.0.0',
  monitorHost: '0.0.0.0',
  workers: 2,
  edgeMode: 'proxy',
  dnsServer: null,
  natsStore: '/var/lib/meridian/nats',
  regions: [],
  edges: true,
  hub: true,
  logLevel: 'info',
  clusterPort: 6222,
  clientPort: 4222,
  monitorPort: 8222,
  drainTimeoutMs: 30000,
  sessionsPerS: 2000,
  sessionsBurst: 4000,
  maxMemoryStore: '512MB',
  maxFileStore: '64GB',
};

// ------------------------------------------------------------- templates

/**
 * A JSON template: every string that is exactly "{{name}}" becomes the JSON
 * value vars[name] (any type); a value of undefined removes its key, so an
 * optional field is simply left out. Other strings are kept as they are.
 */
export function renderJsonTemplate(text, vars, file = 'template') {
  const tree = JSON.parse(text);
  const walk = (v) => {
    if (typeof v === 'string') {
      const m = /^\{\{(\w+)\}\}$/.exec(v);
      if (!m) return v;
      if (!(m[1] in vars)) throw new RenderError(`${file}: no value for {{${m[1]}}}`);
      return vars[m[1]];
    }
    if (Array.isArray(v)) return v.map(walk).filter((x) => x !== undefined);
    if (v && typeof v === 'object') {
      const out = {};
      for (const [k, x] of Object.entries(v)) {
        const r = walk(x);
        if (r !== undefined) out[k] = r;
      }
      return out;
    }
    return v;
  };
  return `${JSON.stringify(walk(tree), null, 2)}\n`;
}

/**
 * A text template: {{name}} is replaced by String(vars[name]); a section
 * {{#name}}...{{/name}} is kept when vars[name] is truthy and dropped
 * otherwise. A name without a value is an error, never an empty string.
 */
export function renderTextTemplate(text, vars, file = 'template') {
  const sections = text.replace(/\{\{#(\w+)\}\}\n?([\s\S]*?)\{\{\/\1\}\}\n?/g, (_, name, body) => {
    if (!(name in vars)) throw new RenderError(`${file}: no value for section {{#${name}}}`);
    return vars[name] ? body : '';
  });
  return sections.replace(/\{\{(\w+)\}\}/g, (_, name) => {
    if (!(name in vars) || vars[name] === undefined || vars[name] === null) {
      throw new RenderError(`${file}: no value for {{${name}}}`);
    }
    return String(vars[name]);
  });
}

function template(name) {
  return fs.readFileSync(path.join(HERE, name), 'utf8');
}

// ------------------------------------------------------------ world file

function need(cond, field, msg) {
  if (!cond) throw new RenderError(`world file: ${field}: ${msg}`);
}

function parseUrl(u, field, schemes) {
  let url;
  try {
    url = new URL(u);
  } catch {
    throw new RenderError(`world file: ${field}: ${JSON.stringify(u)} is not a URL`);
  }
  const scheme = url.protocol.replace(/:$/, '');
  need(schemes.includes(scheme), field, `must be a ${schemes.join(' or ')} URL (got ${JSON.stringify(u)})`);
  need(url.port !== '' || scheme === 'https' || scheme === 'http', field, `needs a port (got ${JSON.stringify(u)})`);
  const port = url.port !== '' ? Number(url.port) : scheme === 'https' ? 443 : 80;
  return { scheme, host: url.hostname, port };
}

const NAME_RE = /^[a-z0-9-]{1,32}$/;

/** Checks the parts of a world file the renderer relies on, naming the field. */
export function checkWorld(w) {
  need(w && typeof w === 'object', '(top)', 'must be a JSON object');
  need(w.format === 'meridian-world/1', 'format', `must be "meridian-world/1" (got ${JSON.stringify(w.format)})`);
  need(typeof w.name === 'string' && NAME_RE.test(w.name), 'name', 'must be 1-32 characters of a-z, 0-9 and -');
  need(Array.isArray(w.regions) && w.regions.length > 0, 'regions', 'must be a non-empty array');
  w.regions.forEach((r, i) => {
    const f = `regions[${i}]`;
    need(typeof r.name === 'string' && NAME_RE.test(r.name), `${f}.name`, 'must be 1-32 characters of a-z, 0-9 and -');
    need(Array.isArray(r.api?.urls) && r.api.urls.length > 0, `${f}.api.urls`, 'must be a non-empty array');
    need(Array.isArray(r.nats?.urls) && r.nats.urls.length > 0, `${f}.nats.urls`, 'must be a non-empty array');
    need(typeof r.nats?.domain === 'string', `${f}.nats.domain`, 'is required');
    need(Array.isArray(r.postgres?.shards) && r.postgres.shards.length > 0, `${f}.postgres.shards`, 'must be a non-empty array');
    r.postgres.shards.forEach((s, j) => {
      need(s.id === j, `${f}.postgres.shards[${j}].id`, `must be ${j}: ids run 0..n-1`);
      need(typeof s.conninfo === 'string' && !/password/i.test(s.conninfo), `${f}.postgres.shards[${j}].conninfo`, 'must be a conninfo without a password');
    });
    need(Number.isInteger(r.redis?.port), `${f}.redis.port`, 'is required');
  });
  need(w.regions.length === 1 || (Array.isArray(w.hub?.leaf_urls) && w.hub.leaf_urls.length > 0), 'hub.leaf_urls', 'is required with more than one region');
  (w.edges || []).forEach((e, i) => {
    need(typeof e.name === 'string' && NAME_RE.test(e.name), `edges[${i}].name`, 'must be 1-32 characters of a-z, 0-9 and -');
    need(Array.isArray(e.urls) && e.urls.length > 0, `edges[${i}].urls`, 'must be a non-empty array');
  });
  return w;
}

// -------------------------------------------------------------- renderers

const q = (s) => JSON.stringify(s);

function regionConfigs(world, o) {
  const out = [];
  for (const [i, r] of world.regions.entries()) {
    if (o.regions.length && !o.regions.includes(r.name)) continue;
    const nats = parseUrl(r.nats.urls[0], `regions[${i}].nats.urls[0]`, ['nats', 'tls']);
    r.api.urls.forEach((u, j) => {
      const api = parseUrl(u, `regions[${i}].api.urls[${j}]`, ['http', 'https']);
      const node = `${r.name}-${j + 1}`;
      const vars = {
        region: r.name,
        node,
        workers: o.workers,
        listen_host: o.listenHost,
        listen_port: api.port,
        log_level: o.logLevel,
        world_file: o.worldPath,
        edge_token_file: path.join(o.keysDir, 'edge-directory.token'),
        shards: r.postgres.shards.map((s) => ({ id: s.id, conninfo: s.conninfo })),
        redis_host: r.redis.host || '127.0.0.1',
        redis_port: r.redis.port,
        // One URL: the client learns the rest of the region's cluster from
        // the server it reaches (NATS cluster discovery).
        nats_url: `${nats.scheme}://${nats.host}:${nats.port}`,
        signing_key_file: path.join(o.keysDir, r.name, 'signing.key'),
        master_key_file: path.join(o.keysDir, r.name, 'master.key'),
        email_hash_key_file: path.join(o.keysDir, 'email-hash.key'),
        drain_timeout_ms: o.drainTimeoutMs,
      };
      out.push({ file: path.join('region', `${node}.json`), text: renderJsonTemplate(template('region.json.tmpl'), vars, 'region.json.tmpl') });
    });
  }
  return out;
}

function edgeConfigs(world, o) {
  if (!o.edges) return [];
  return (world.edges || []).map((e, i) => {
    const url = parseUrl(e.urls[0], `edges[${i}].urls[0]`, ['http', 'https']);
    const vars = {
      edge: e.name,
      workers: o.workers,
      listen_host: o.listenHost,
      listen_port: url.port,
      log_level: o.logLevel,
      world_file: o.worldPath,
      mode: o.edgeMode,
      edge_token_file: path.join(o.keysDir, 'edge-directory.token'),
      dns: o.dnsServer ? { servers: [o.dnsServer] } : undefined,
      email_hash_key_file: path.join(o.keysDir, 'email-hash.key'),
      sessions_per_s: o.sessionsPerS,
      sessions_burst: o.sessionsBurst,
    };
    return { file: path.join('edge', `${e.name}.json`), text: renderJsonTemplate(template('edge.json.tmpl'), vars, 'edge.json.tmpl') };
  });
}

function natsConfigs(world, o) {
  const out = [];
  const leafUrls = world.hub?.leaf_urls || [];
  for (const [i, r] of world.regions.entries()) {
    if (o.regions.length && !o.regions.includes(r.name)) continue;
    const servers = r.nats.urls.map((u, k) => parseUrl(u, `regions[${i}].nats.urls[${k}]`, ['nats', 'tls']));
    servers.forEach((s, k) => {
      const serverName = `${r.name}-nats-${k}`;
      const vars = {
        region: r.name,
        world: world.name,
        server_name: serverName,
        listen_host: o.listenHost,
        client_port: s.port,
        monitor_host: o.monitorHost,
        monitor_port: o.monitorPort,
        store_dir: path.join(o.natsStore, serverName),
        domain: r.nats.domain,
        max_memory_store: o.maxMemoryStore,
        max_file_store: o.maxFileStore,
        // A single server runs stand-alone: a one-server cluster would need a
        // route to itself and buys nothing.
        cluster: servers.length > 1,
        cluster_name: `${r.name}-nats`,
        cluster_port: o.clusterPort,
        routes: servers.map((x) => q(`nats-route://${x.host}:${o.clusterPort}`)).join(', '),
        leaf: leafUrls.length > 0,
        leaf_urls: leafUrls.map(q).join(', '),
        leaf_deny: q('ev.>'),
      };
      out.push({ file: path.join('nats', `${serverName}.conf`), text: renderTextTemplate(template('nats-region.conf.tmpl'), vars, 'nats-region.conf.tmpl') });
    });
  }
  if (o.hub) {
    const hubs = leafUrls.map((u, k) => parseUrl(u, `hub.leaf_urls[${k}]`, ['nats-leaf', 'nats', 'tls']));
    hubs.forEach((h, k) => {
      const vars = {
        world: world.name,
        server_name: `hub-${k}`,
        listen_host: o.listenHost,
        client_port: o.clientPort,
        monitor_host: o.monitorHost,
        monitor_port: o.monitorPort,
        leaf_port: h.port,
        cluster: hubs.length > 1,
        cluster_name: `${world.name}-hub`,
        cluster_port: o.clusterPort,
        routes: hubs.map((x) => q(`nats-route://${x.host}:${o.clusterPort}`)).join(', '),
      };
      out.push({ file: path.join('nats', `hub-${k}.conf`), text: renderTextTemplate(template('nats-hub.conf.tmpl'), vars, 'nats-hub.conf.tmpl') });
    });
  }
  return out;
}

/** Every file rendered from the world file: [{file (relative), text}]. */
export function renderAll(world, options = {}) {
  const o = { ...DEFAULTS, ...options };
  checkWorld(world);
  for (const name of o.regions) {
    if (!world.regions.some((r) => r.name === name)) throw new RenderError(`--region ${name}: not a region of world "${world.name}"`);
  }
  if (!['proxy', 'redirect'].includes(o.edgeMode)) throw new RenderError(`--edge-mode must be proxy or redirect (got ${o.edgeMode})`);
  return [
    { file: 'world.json', text: `${JSON.stringify(world, null, 2)}\n` },
    ...regionConfigs(world, o),
    ...edgeConfigs(world, o),
    ...natsConfigs(world, o),
  ];
}

/** Writes renderAll's files under dir (configs 0640: they name key paths, never keys). */
export function writeAll(dir, files) {
  for (const f of files) {
    const p = path.join(dir, f.file);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    const tmp = `${p}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, f.text, { mode: 0o640 });
    fs.renameSync(tmp, p);
  }
  return files.map((f) => path.join(dir, f.file));
}

// ------------------------------------------------------------------- CLI

function parseArgs(argv) {
  const o = { ...DEFAULTS, regions: [] };
  let world = null;
  let out = null;
  const flags = {
    '--world-path': (v) => (o.worldPath = v),
    '--keys-dir': (v) => (o.keysDir = v),
    '--listen-host': (v) => (o.listenHost = v),
    '--monitor-host': (v) => (o.monitorHost = v),
    '--workers': (v) => (o.workers = Number(v)),
    '--edge-mode': (v) => (o.edgeMode = v),
    '--dns-server': (v) => (o.dnsServer = v),
    '--nats-store': (v) => (o.natsStore = v),
    '--region': (v) => o.regions.push(v),
    '--log-level': (v) => (o.logLevel = v),
    '--world': (v) => (world = v),
    '--out': (v) => (out = v),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--no-edges') o.edges = false;
    else if (a === '--no-hub') o.hub = false;
    else if (a === '-h' || a === '--help') return { help: true };
    else if (flags[a]) {
      if (i + 1 >= argv.length) throw new RenderError(`${a} needs a value`);
      flags[a](argv[++i]);
    } else throw new RenderError(`unknown argument ${a} (see --help)`);
  }
  if (!world || !out) throw new RenderError('--world FILE and --out DIR are required (see --help)');
  if (!Number.isInteger(o.workers) || o.workers < 1 || o.workers > 64) throw new RenderError('--workers must be 1-64');
  return { world, out, o };
}

function main() {
  try {
    const args = parseArgs(process.argv.slice(2));
    if (args.help) {
      const text = fs.readFileSync(fileURLToPath(import.meta.url), 'utf8');
      process.stdout.write(`${text.split('\n').slice(1).filter((l) => l.startsWith('//')).map((l) => l.replace(/^\/\/ ?/, '')).join('\n')}\n`);
      return 0;
    }
    let world;
    try {
      world = JSON.parse(fs.readFileSync(args.world, 'utf8'));
    } catch (e) {
      throw new RenderError(`cannot read the world file ${args.world}: ${e.message}`);
    }
    for (const p of writeAll(args.out, renderAll(world, args.o))) console.log(p);
    return 0;
  } catch (e) {
    if (e instanceof RenderError) {
      console.error(`render.mjs: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = main();
