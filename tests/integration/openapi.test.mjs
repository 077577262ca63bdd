// docs/openapi.json documents exactly the routes the server registers
// (meridian-region --print-routes), and is a well-formed OpenAPI 3.1 document.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { REPO_ROOT, binary } from '../lib/harness.mjs';

const doc = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'docs', 'openapi.json'), 'utf8'));
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

function registered() {
  const r = spawnSync(binary('meridian-region'), ['--print-routes'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return new Set(r.stdout.trim().split('\n').filter(Boolean));
}

function documented() {
  const out = new Set();
  for (const [p, item] of Object.entries(doc.paths)) for (const m of METHODS) if (item[m]) out.add(`${m.toUpperCase()} ${p}`);
  return out;
}

test('every registered route is documented', () => {
  const docs = documented();
  const missing = [...registered()].filter((r) => !docs.has(r));
  assert.deepEqual(missing, [], `undocumented routes: ${missing.join(', ')}`);
});

test('every documented route exists', () => {
  const routes = registered();
  const extra = [...documented()].filter((r) => !routes.has(r));
  assert.deepEqual(extra, [], `documented but not served: ${extra.join(', ')}`);
});

test('the document is well-formed OpenAPI 3.1', () => {
  assert.match(doc.openapi, /^3\.1\.\d+$/);
  assert.ok(doc.info?.title && doc.info?.version);
  const ids = new Set();
  const resolve = (ref) => ref.replace(/^#\//, '').split('/').reduce((o, k) => o?.[k], doc);
  const refs = [];
  (function walk(v) {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) (k === '$ref' ? refs.push(x) : walk(x));
  })(doc);
  for (const ref of refs) assert.ok(resolve(ref), `dangling $ref ${ref}`);
  for (const [p, item] of Object.entries(doc.paths)) {
    const params = [...p.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
    for (const m of METHODS) {
      const op = item[m];
      if (!op) continue;
      assert.ok(op.operationId && !ids.has(op.operationId), `${m} ${p}: operationId missing or repeated`);
      ids.add(op.operationId);
      assert.ok(op.responses && Object.keys(op.responses).length, `${m} ${p}: no responses`);
      for (const code of Object.keys(op.responses)) assert.match(code, /^[1-5]\d\d$/, `${m} ${p}: bad status ${code}`);
      const declared = [...(item.parameters || []), ...(op.parameters || [])].map((x) => (x.$ref ? resolve(x.$ref) : x)).filter((x) => x.in === 'path').map((x) => x.name);
      for (const name of params) assert.ok(declared.includes(name), `${m} ${p}: path parameter {${name}} not declared`);
    }
  }
});
