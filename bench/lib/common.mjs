// common.mjs: what every benchmark under bench/ shares: options from flags
// or environment variables, logging to stderr (stdout carries only the JSON
// report), building the binary under test when it is missing, and writing the
// report to bench/<name>/results/latest.json (gitignored).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { REPO_ROOT, binary, buildDir } from '../../deploy/local/lib/stack.mjs';

export { REPO_ROOT, binary, buildDir };

/** Logs one line to stderr, prefixed with the benchmark name and elapsed seconds. */
export function makeLogger(name) {
  const t0 = Date.now();
  return (...parts) => process.stderr.write(`[${name} +${((Date.now() - t0) / 1e3).toFixed(1)}s] ${parts.join(' ')}\n`);
}

/**
 * Parses options. spec: {name: {type: 'number'|'string'|'boolean', default,
 * env: 'BENCH_X', short: 'd', help}}. Precedence: flag, then environment
 * variable, then default. `--help` prints usage (from `usage` and the spec)
 * to stderr and exits 0; a bad value exits 2.
 */
export function options(spec, { usage = '', argv = process.argv.slice(2) } = {}) {
  const pa = { help: { type: 'boolean', short: 'h' } };
  for (const [k, o] of Object.entries(spec)) {
    pa[k] = { type: o.type === 'boolean' ? 'boolean' : 'string' };
    if (o.short) pa[k].short = o.short;
  }
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: pa, strict: true, allowPositionals: false }));
  } catch (e) {
    process.stderr.write(`${e.message}\n`);
    process.exit(2);
  }
  if (values.help) {
    const lines = Object.entries(spec).map(([k, o]) => {
      const flag = `${o.short ? `-${o.short}, ` : '    '}--${k}${o.type === 'boolean' ? '' : ' <' + o.type + '>'}`;
      const env = o.env ? ` [env ${o.env}]` : '';
      const def = o.default !== undefined && o.default !== '' && o.default !== false ? ` (default ${o.default})` : '';
      return `  ${flag.padEnd(30)} ${o.help || ''}${def}${env}`;
    });
    process.stderr.write(`${usage}\n\nOptions:\n${lines.join('\n')}\n`);
    process.exit(0);
  }
  const out = {};
  for (const [k, o] of Object.entries(spec)) {
    let v = values[k];
    if (v === undefined && o.env && process.env[o.env] !== undefined && process.env[o.env] !== '') v = process.env[o.env];
    if (v === undefined) v = o.default;
    if (o.type === 'number' && v !== undefined) {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) {
        process.stderr.write(`--${k}: not a non-negative number: ${v}\n`);
        process.exit(2);
      }
      v = n;
    } else if (o.type === 'boolean' && typeof v === 'string') {
      v = /^(1|on|true|yes)$/i.test(v);
    }
    out[k] = v;
  }
  return out;
}

/** Build type and compiler flags recorded in <build>/CMakeCache.txt (RelWithDebInfo when unset). */
export function buildInfo(dir = buildDir()) {
  let cache = '';
  try {
    cache = fs.readFileSync(path.join(dir, 'CMakeCache.txt'), 'utf8');
  } catch {
    return { dir, build_type: null };
  }
  const get = (k) => {
    const m = new RegExp(`^${k}:[A-Z]+=(.*)$`, 'm').exec(cache);
    return m ? m[1] : null;
  };
  return {
    dir,
    build_type: get('CMAKE_BUILD_TYPE') || 'RelWithDebInfo (project default)',
    sanitize: /^(1|on|true|yes)$/i.test(get('MERIDIAN_SANITIZE') || ''),
  };
}

/**
 * Makes sure <build>/<target> exists, configuring and building it (-j2, logs
 * to stderr) when it does not. Returns the binary's path; throws when the
 * build fails.
 */
export function ensureBuilt(target, log = () => {}) {
  const bin = binary(target);
  if (fs.existsSync(bin)) return bin;
  const dir = buildDir();
  log(`${bin} is missing: building it in ${dir}`);
  const steps = [];
  if (!fs.existsSync(path.join(dir, 'CMakeCache.txt'))) steps.push(['cmake', ['-S', REPO_ROOT, '-B', dir]]);
  steps.push(['cmake', ['--build', dir, '-j2', '--target', target]]);
  for (const [cmd, args] of steps) {
    const r = spawnSync(cmd, args, { stdio: ['ignore', process.stderr, process.stderr] });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status})`);
  }
  if (!fs.existsSync(bin)) throw new Error(`build finished but ${bin} does not exist`);
  return bin;
}

/** The checked-out commit and whether the tree has local changes (read-only git calls). */
export function gitInfo() {
  const rev = spawnSync('git', ['-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
  const st = spawnSync('git', ['-C', REPO_ROOT, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' });
  return {
    commit: rev.status === 0 ? rev.stdout.trim() : null,
    dirty: st.status === 0 ? st.stdout.trim().length > 0 : null,
  };
}

/**
 * Writes the report as pretty JSON to bench/<name>/results/latest.json (or
 * `file` when given) and returns the path.
 */
export function writeResult(name, report, file) {
  const out = file || path.join(REPO_ROOT, 'bench', name, 'results', 'latest.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  return out;
}
