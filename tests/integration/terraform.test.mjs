// Offline checks of the deployment: Terraform formatting, validation and
// tests of the topology module, a static check of every module (variables
// referenced are declared, module inputs are wired), the systemd units, and
// the configuration templates rendered from the example world and accepted
// by the binaries' --check-config (and nats-server -t).
//
// Nothing here needs the network: Terraform runs with an empty CLI config,
// its own data dir in a temp dir, and only in modules that need no provider.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { parse as parseHcl, getReferencesInExpression } from '@cdktf/hcl2json';

import { REPO_ROOT, binary } from '../lib/harness.mjs';
import { renderAll, writeAll } from '../../deploy/templates/render.mjs';
import { tokenPublicKey, worldDocument } from '../../deploy/local/lib/stack.mjs';

const TF_ROOT = path.join(REPO_ROOT, 'terraform');
const TOPOLOGY = path.join(TF_ROOT, 'modules/topology');
const EXAMPLE = path.join(TF_ROOT, 'environments/example');
const UNITS = path.join(REPO_ROOT, 'deploy/systemd');

let tmp;
let tfEnv;
let world; // the example environment's world file, from `terraform apply` of topology

function run(cmd, args, { cwd, env, timeout = 60000 } = {}) {
  const r = spawnSync(cmd, args, { cwd, env: env || process.env, encoding: 'utf8', timeout });
  if (r.error) throw r.error;
  return { code: r.status, out: r.stdout, err: r.stderr, text: `${r.stdout}\n${r.stderr}` };
}

function tf(args, cwd) {
  return run('terraform', args, { cwd, env: tfEnv });
}

function keyFile(file, bytes = 32) {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.writeFileSync(file, `${crypto.randomBytes(bytes).toString('hex')}\n`, { mode: 0o600 });
  return file;
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-tf-'));
  const cli = path.join(tmp, 'terraformrc');
  fs.writeFileSync(cli, ''); // no ~/.terraformrc, no mirrors, no credentials
  tfEnv = {
    ...process.env,
    TF_IN_AUTOMATION: '1',
    TF_INPUT: '0',
    TF_CLI_CONFIG_FILE: cli,
    TF_PLUGIN_CACHE_DIR: path.join(tmp, 'plugin-cache'),
    CHECKPOINT_DISABLE: '1',
  };
  fs.mkdirSync(tfEnv.TF_PLUGIN_CACHE_DIR);
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('terraform fmt -check -recursive is clean', () => {
  const r = tf(['fmt', '-check', '-recursive', '-diff', TF_ROOT], REPO_ROOT);
  assert.equal(r.code, 0, `terraform fmt would change:\n${r.text}`);
});

test('topology: init -backend=false, validate and terraform test (offline)', () => {
  const env = { ...tfEnv, TF_DATA_DIR: path.join(tmp, 'tf-topology') };
  const init = run('terraform', ['init', '-backend=false', '-input=false', '-no-color'], { cwd: TOPOLOGY, env });
  assert.equal(init.code, 0, init.text);
  const v = run('terraform', ['validate', '-no-color'], { cwd: TOPOLOGY, env });
  assert.equal(v.code, 0, v.text);
  const t = run('terraform', ['test', '-no-color'], { cwd: TOPOLOGY, env });
  assert.equal(t.code, 0, t.text);
  const m = /Success! (\d+) passed, 0 failed/.exec(t.out);
  assert.ok(m && Number(m[1]) >= 5, `expected the topology tests to pass:\n${t.out}`);
});

test('the example environment world, applied through topology alone, is a valid meridian-world/1', () => {
  // A root that uses only the topology module, fed the example environment's
  // own terraform.tfvars: the same inputs the example gives it.
  const root = path.join(tmp, 'example-world');
  fs.mkdirSync(root);
  fs.writeFileSync(
    path.join(root, 'main.tf'),
    `variable "world_name" {}
variable "jurisdictions" {}
variable "regions" {}
variable "edge_pops" {}
variable "edge_dns_name" {}
module "topology" {
  source        = ${JSON.stringify(TOPOLOGY)}
  world_name    = var.world_name
  jurisdictions = var.jurisdictions
  regions = { for n, r in var.regions : n => { for k, v in r : k => v if contains(["jurisdiction", "aws_region", "slot", "shards", "nats_nodes", "az_count", "nats_domain", "token_keys"], k) } }
  edge_pops     = { for p, e in var.edge_pops : p => { region = e.region } }
  edge_dns_name = var.edge_dns_name
}
output "world" { value = module.topology.world_config_json }
`,
  );
  const env = { ...tfEnv, TF_DATA_DIR: path.join(root, '.tfdata') };
  const vars = ['-var-file', path.join(EXAMPLE, 'terraform.tfvars')];
  const init = run('terraform', ['init', '-backend=false', '-input=false', '-no-color'], { cwd: root, env });
  assert.equal(init.code, 0, init.text);
  const state = ['-state', path.join(root, 'terraform.tfstate')];
  const apply = run('terraform', ['apply', '-auto-approve', '-input=false', '-no-color', ...state, ...vars], { cwd: root, env });
  assert.equal(apply.code, 0, apply.text);
  const out = run('terraform', ['output', '-no-color', '-raw', ...state, 'world'], { cwd: root, env });
  assert.equal(out.code, 0, out.text);
  world = JSON.parse(out.out);

  // Same shape as the local world's (deploy/local/lib/stack.mjs worldDocument):
  // the same fields at every level, recursively.
  const local = worldDocument({
    name: 'local',
    jurisdictions: [{ name: 'US', description: 'United States' }],
    hubLeafUrls: ['nats-leaf://127.0.0.1:17932'],
    regions: [
      { name: 'us-east', jurisdiction: 'US', domain: 'us-east', natsUrls: ['nats://127.0.0.1:17030'], shards: [17010], redis: { port: 17020 }, apiUrls: ['http://127.0.0.1:17040'] },
    ],
  });
  const shape = (v) =>
    Array.isArray(v) ? (v.length ? [shape(v[0])] : []) : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, shape(v[k])])) : typeof v;
  const tfShape = shape(world);
  delete tfShape.edges; // the local world has none yet (edges: reserved, issue #6)
  const localShape = shape(local);
  delete localShape.edges;
  assert.deepEqual(tfShape, localShape);
  assert.ok(Array.isArray(world.edges));
  assert.deepEqual(
    world.regions.map((r) => [r.name, r.jurisdiction, r.nats.domain]),
    [
      ['us-east', 'US', 'us-east'],
      ['eu-west', 'EU', 'eu-west'],
      ['ap-south', 'IN', 'ap-south'],
    ],
  );
  assert.doesNotMatch(JSON.stringify(world), /password|secret/i);
});

// ------------------------------------------------ static check of every module

const META_ARGS = new Set(['source', 'version', 'providers', 'count', 'for_each', 'depends_on']);

/** Every string in a parsed HCL tree (expressions are "${...}" strings). */
function* strings(v) {
  if (typeof v === 'string') yield v;
  else if (Array.isArray(v)) for (const x of v) yield* strings(x);
  else if (v && typeof v === 'object') for (const x of Object.values(v)) yield* strings(x);
}

async function loadModule(dir) {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.tf'));
  assert.ok(files.length > 0, `${dir}: no .tf files`);
  const mod = { dir, variables: new Map(), outputs: new Set(), locals: new Set(), modules: new Map(), refs: [] };
  for (const f of files) {
    const file = path.join(dir, f);
    const tree = await parseHcl(file, fs.readFileSync(file, 'utf8'));
    for (const [name, [body]] of Object.entries(tree.variable || {})) mod.variables.set(name, { required: !('default' in body) });
    for (const name of Object.keys(tree.output || {})) mod.outputs.add(name);
    for (const block of tree.locals || []) for (const name of Object.keys(block)) mod.locals.add(name);
    for (const [name, [body]] of Object.entries(tree.module || {})) mod.modules.set(name, { body, file });
    // References: only in expressions (strings holding ${...}), so text in
    // descriptions never counts. The HCL expression parser does not descend
    // into for-expression bodies, so a scan of the expression text adds
    // those: a reference can be reported twice, never missed.
    for (const s of strings(tree)) {
      if (!s.includes('${') && !s.includes('%{')) continue;
      const refs = new Set();
      try {
        for (const r of await getReferencesInExpression(file, s)) refs.add(r.value);
      } catch {
        /* the scan below still sees it */
      }
      for (const m of s.matchAll(/(?<![\w.])(?:var|local|module)\.[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)?/g)) refs.add(m[0]);
      for (const value of refs) mod.refs.push({ file: f, value });
    }
  }
  return mod;
}

function moduleDirs() {
  const dirs = [];
  for (const group of ['modules', 'environments']) {
    for (const d of fs.readdirSync(path.join(TF_ROOT, group))) dirs.push(path.join(TF_ROOT, group, d));
  }
  return dirs;
}

test('every .tf parses with hcl2json; variables referenced are declared; module inputs are wired', async () => {
  const problems = [];
  const cache = new Map();
  const load = async (dir) => {
    if (!cache.has(dir)) cache.set(dir, await loadModule(dir));
    return cache.get(dir);
  };
  let checkedCalls = 0;
  let checkedRefs = 0;
  for (const dir of moduleDirs()) {
    const mod = await load(dir);
    const rel = path.relative(REPO_ROOT, dir);
    for (const { file, value } of mod.refs) {
      const [kind, name, attr] = value.split('.');
      checkedRefs++;
      if (kind === 'var' && !mod.variables.has(name)) problems.push(`${rel}/${file}: var.${name} is not declared`);
      if (kind === 'local' && !mod.locals.has(name)) problems.push(`${rel}/${file}: local.${name} is not defined`);
      if (kind === 'module') {
        const call = mod.modules.get(name);
        if (!call) problems.push(`${rel}/${file}: module.${name} is not a module call here`);
        else if (attr && !attr.startsWith('[')) {
          const target = await load(path.resolve(dir, call.body.source));
          if (!target.outputs.has(attr)) problems.push(`${rel}/${file}: module.${name}.${attr}: ${call.body.source} has no output "${attr}"`);
        }
      }
    }
    for (const [name, { body, file }] of mod.modules) {
      checkedCalls++;
      const src = body.source;
      if (typeof src !== 'string' || !src.startsWith('.')) {
        problems.push(`${rel}/${path.basename(file)}: module "${name}": source must be a local path here (got ${JSON.stringify(src)})`);
        continue;
      }
      const target = await load(path.resolve(dir, src));
      const given = new Set(Object.keys(body).filter((k) => !META_ARGS.has(k)));
      for (const k of given) if (!target.variables.has(k)) problems.push(`${rel}: module "${name}" passes "${k}", which ${src} does not declare`);
      for (const [v, { required }] of target.variables) if (required && !given.has(v)) problems.push(`${rel}: module "${name}" does not set required input "${v}" of ${src}`);
    }
    // Declared but never used is a sign of a wiring mistake too.
    for (const v of mod.variables.keys()) {
      if (!mod.refs.some((r) => r.value === `var.${v}` || r.value.startsWith(`var.${v}.`) || r.value.startsWith(`var.${v}[`))) {
        problems.push(`${rel}: variable "${v}" is declared but never used`);
      }
    }
  }
  assert.deepEqual(problems, []);
  assert.ok(checkedCalls >= 14, `expected the example's module calls to be checked (got ${checkedCalls})`);
  assert.ok(checkedRefs > 100, `expected many references to be checked (got ${checkedRefs})`);
});

// ------------------------------------------------------------------- systemd

test('systemd units pass systemd-analyze verify', (t) => {
  // verify checks that ExecStart= programs exist. The units name the installed
  // paths (/usr/local/bin/meridian-*); here they are copied to a temp dir with
  // those paths pointed at this build's binaries, and nothing else changed.
  // A unit whose binary is not built yet is skipped, never faked.
  const dir = path.join(tmp, 'units');
  fs.mkdirSync(dir);
  const units = fs.readdirSync(UNITS).filter((f) => f.endsWith('.service'));
  assert.deepEqual(units.sort(), ['meridian-edge@.service', 'meridian-hub@.service', 'meridian-nats@.service', 'meridian-region@.service']);
  const instance = { 'meridian-region@.service': 'us-east-1', 'meridian-edge@.service': 'edge-us-east', 'meridian-nats@.service': 'us-east-nats-0', 'meridian-hub@.service': 'hub-0' };
  for (const u of units) {
    let text = fs.readFileSync(path.join(UNITS, u), 'utf8');
    for (const must of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'PrivateTmp=yes', 'ProtectHome=yes', 'CapabilityBoundingSet=\n', 'RestrictAddressFamilies=', 'LimitNOFILE=20000']) {
      assert.ok(text.includes(must), `${u}: missing ${must.trim()}`);
    }
    const missing = [];
    text = text.replace(/\/usr\/local\/bin\/(meridian-[a-z]+)/g, (_, name) => {
      if (!fs.existsSync(binary(name))) missing.push(name);
      return binary(name);
    });
    if (missing.length) {
      t.diagnostic(`${u}: skipped: ${[...new Set(missing)].join(', ')} is not built in ${path.dirname(binary('x'))}`);
      continue;
    }
    fs.writeFileSync(path.join(dir, u), text);
    const r = run('systemd-analyze', ['verify', '--man=no', '--generators=no', `./${u.replace('@.', `@${instance[u]}.`)}`], { cwd: dir });
    assert.equal(r.code, 0, `${u}: ${r.text}`);
    assert.equal(r.err.trim(), '', `${u}: systemd-analyze warned:\n${r.err}`);
  }
});

// ----------------------------------------------------------------- templates

test('configs rendered from the example world pass --check-config and nats-server -t', async (t) => {
  assert.ok(world, 'the example world was not produced (see the test above)');
  const etc = path.join(tmp, 'etc');
  const keys = path.join(etc, 'keys');
  for (const r of world.regions) keyFile(path.join(keys, r.name, 'signing.key'));
  for (const r of world.regions) keyFile(path.join(keys, r.name, 'master.key')); // encryption at rest
  keyFile(path.join(keys, 'email-hash.key'));
  // Terraform never sees signing keys (they are made on the machines and kept
  // in SSM): the operator publishes each region's public token key into the
  // world file (docs/operations.md, "Rotate keys"); edges refuse to start
  // without any. Done here as the operator would.
  for (const r of world.regions) r.token_keys = [tokenPublicKey(path.join(keys, r.name, 'signing.key'))];
  keyFile(path.join(keys, 'edge-directory.token'), 24);
  const worldPath = path.join(etc, 'world.json');
  const files = renderAll(world, { worldPath, keysDir: keys, natsStore: path.join(tmp, 'jetstream') });
  writeAll(etc, files);

  const regionConfigs = files.filter((f) => f.file.startsWith('region/')).map((f) => path.join(etc, f.file));
  const edgeConfigs = files.filter((f) => f.file.startsWith('edge/')).map((f) => path.join(etc, f.file));
  const natsConfigs = files.filter((f) => f.file.startsWith('nats/')).map((f) => path.join(etc, f.file));
  assert.equal(regionConfigs.length, 3);
  assert.equal(edgeConfigs.length, 3);
  assert.equal(natsConfigs.length, 3 * 3 + 3); // three servers per region, one hub node per region

  await t.test('meridian-region --check-config', () => {
    const bin = binary('meridian-region');
    assert.ok(fs.existsSync(bin), `${bin} is not built (MERIDIAN_BUILD_DIR)`);
    for (const c of regionConfigs) {
      const r = run(bin, ['--check-config', '--config', c]);
      assert.equal(r.code, 0, `${c}:\n${r.text}`);
      assert.match(r.out, /configuration ok: region=[a-z-]+ .*world=example regions=3/);
    }
    // The check is real: a key readable by others is refused.
    fs.chmodSync(path.join(keys, 'email-hash.key'), 0o644);
    const bad = run(bin, ['--check-config', '--config', regionConfigs[0]]);
    fs.chmodSync(path.join(keys, 'email-hash.key'), 0o600);
    assert.equal(bad.code, 1, bad.text);
  });

  await t.test('meridian-edge --check-config', (st) => {
    const bin = binary('meridian-edge');
    if (!fs.existsSync(bin)) {
      st.skip(`${bin} is not built yet: edge configs rendered but not checked`);
      return;
    }
    for (const c of edgeConfigs) {
      const r = run(bin, ['--check-config', '--config', c]);
      assert.equal(r.code, 0, `${c}:\n${r.text}`);
    }
  });

  await t.test('nats-server -t', () => {
    for (const c of natsConfigs) {
      const r = run('nats-server', ['-t', '-c', c]);
      assert.equal(r.code, 0, `${c}:\n${r.text}`);
    }
    const us = fs.readFileSync(path.join(etc, 'nats/us-east-nats-0.conf'), 'utf8');
    assert.match(us, /domain: "us-east"/);
    assert.match(us, /deny_exports: \["ev\.>"\], deny_imports: \["ev\.>"\]/);
  });
});
