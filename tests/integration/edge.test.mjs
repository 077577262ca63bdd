// meridian-edge against a real world: two regions (us-east, eu-west) whose
// endpoints are DNS names served by dnsmasq, and two edges behind the global
// edge name. A client resolves the edge name through dnsmasq and reaches an
// eu-west workspace through either edge, over HTTP and WebSocket; the region
// that served is checked in the answer and in the regions' raw stores. Then:
// bad input dies at the edge, a region that is down gets 503 + Retry-After
// and never another region's answer, a changed DNS record is followed after
// its TTL, redirect mode, and admission control.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import nodeHttp from 'node:http';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { freePort, http, makeTmp, removeTmp, startWorlds, TcpProxy, waitFor } from '../lib/harness.mjs';
import { dnsQuery, startDnsmasq } from '../lib/dnsmasq.mjs';
import { exchange } from '../lib/rawhttp.mjs';
import { killWorkers } from '../../bench/storm/lib.mjs';

const DOMAIN = 'meridian.test';
const EDGE_NAME = `edge.${DOMAIN}`;
const EDGE_ADDRS = ['127.0.0.2', '127.0.0.3'];
const REGIONS = ['us-east', 'eu-west'];
const nodeName = (r) => `${r}-1.${DOMAIN}`;

let tmp;
let dns;
let W;
let edgePort;
const edges = [];

const baseHosts = () => ({
  [nodeName('us-east')]: '127.0.0.1',
  [nodeName('eu-west')]: '127.0.0.1',
  [EDGE_NAME]: EDGE_ADDRS,
});

before(async () => {
  tmp = makeTmp('meridian-edge-test-');
  dns = await startDnsmasq({ tmp, ttl: 1, domain: DOMAIN, hosts: baseHosts() });
  W = await startWorlds({
    regions: REGIONS,
    workers: 1,
    shards: 1,
    apiHost: (r, i) => `${r}-${i + 1}.${DOMAIN}`,
    config: { log: { access: true }, limits: { write_rate_per_s: 10000, write_burst: 10000 } },
  });
  edgePort = await freePort();
  for (const [i, addr] of EDGE_ADDRS.entries()) {
    edges.push(
      await W.startEdge({
        edge: `edge-${i + 1}`,
        port: edgePort,
        dnsServers: [dns.server],
        config: {
          listen: { host: addr },
          log: { access: true },
          routing: { signup_region: 'us-east' },
          // A breaker window far longer than any wait below: a region that is
          // back must be let in by the health checks, not by the window's end.
          health: { interval_ms: 200, failures: 2, breaker_open_ms: 60000 },
        },
      }),
    );
  }
});

after(async () => {
  await W?.stop();
  await dns?.stop();
  if (tmp) removeTmp(tmp);
});

/** The edges' addresses as a global client finds them: through dnsmasq. */
async function resolveEdges() {
  const r = await dnsQuery(dns.port, EDGE_NAME);
  return r.answers.map((a) => a.ip).sort();
}

const via = (addr, method, p, { body, token, headers = {} } = {}) =>
  http(method, `http://${addr}:${edgePort}${p}`, {
    body,
    headers: { host: `${EDGE_NAME}:${edgePort}`, ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
  });

let n = 0;
const uniq = (p) => `${p}-${process.pid}-${++n}`;

async function signupVia(addr, home) {
  const r = await via(addr, 'POST', '/v1/auth/signup', {
    body: { email: `${uniq('e')}@example.com`, password: 'edge test password', display_name: 'E' },
    headers: { 'meridian-home-region': home },
  });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.headers['meridian-region'], home);
  return { id: r.json.user.id, token: r.json.access_token, email: r.json.user.email, home, reqId: r.headers['x-request-id'] };
}

async function workspaceVia(addr, user, allowed) {
  const r = await via(addr, 'POST', '/v1/workspaces', { body: { name: 'Edge', slug: uniq('edge'), allowed_regions: allowed }, token: user.token });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.headers['meridian-region'], user.home);
  const id = r.json.workspace.id;
  const ch = await via(addr, 'GET', `/v1/workspaces/${id}/channels`, { token: user.token });
  assert.equal(ch.status, 200, ch.text);
  return { id, general: ch.json.channels[0].id };
}

const pg = (region) => W.regions[region].postgres[0];
const count = async (region, sql) => Number((await pg(region).psql(sql)).trim());

/** Lines of a region node's access log for requests that clients made (not the edges' health checks and directory reads). */
function clientAccessLines(region) {
  return W.regions[region].node
    .logs()
    .split('\n')
    .filter((l) => l.includes('event=http.access') && !/path=\/(healthz|readyz|metrics|v1\/directory)/.test(l));
}

function openStream(addr, space, token) {
  const ws = new WebSocket(`ws://${addr}:${edgePort}/v1/workspaces/${space.id}/stream`, ['meridian.v1', `bearer.${token}`], {
    headers: { host: `${EDGE_NAME}:${edgePort}` },
  });
  const frames = [];
  let upgradeHeaders = null;
  ws.on('upgrade', (res) => (upgradeHeaders = res.headers));
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('unexpected-response', (req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode, headers: res.headers })));
    ws.once('error', reject);
  });
  return {
    ws,
    frames,
    opened,
    headers: () => upgradeHeaders,
    events: () => frames.filter((f) => f.type === 'event').map((f) => f.event),
    close: () => new Promise((r) => (ws.readyState === WebSocket.CLOSED ? r() : (ws.once('close', r), ws.close()))),
  };
}

test('a global client reaches an eu-west workspace through either edge, over HTTP and WebSocket, served by eu-west only', async () => {
  const addrs = await resolveEdges();
  assert.deepEqual(addrs, EDGE_ADDRS);
  const owner = await signupVia(addrs[0], 'eu-west');
  const space = await workspaceVia(addrs[0], owner, ['eu-west']);

  // Login finds the user's region by the keyed hash of the email, through the other edge.
  const login = await via(addrs[1], 'POST', '/v1/auth/login', { body: { email: owner.email, password: 'edge test password' } });
  assert.equal(login.status, 200, login.text);
  assert.equal(login.headers['meridian-region'], 'eu-west');

  // A stream through each edge.
  const streams = addrs.map((a) => openStream(a, space, owner.token));
  await Promise.all(streams.map((s) => s.opened));
  for (const s of streams) {
    assert.equal(s.headers()['meridian-region'], 'eu-west');
    assert.equal(s.ws.protocol, 'meridian.v1');
    await waitFor(() => s.frames.length >= 1, { message: 'hello through the edge' });
    assert.equal(s.frames[0].type, 'hello');
  }

  const texts = [];
  for (const addr of addrs) {
    const text = uniq('through the edge');
    texts.push(text);
    const r = await via(addr, 'POST', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, { body: { text }, token: owner.token });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers['meridian-region'], 'eu-west');
    const h = await via(addr, 'GET', `/v1/workspaces/${space.id}/channels/${space.general}/messages?limit=10`, { token: owner.token });
    assert.equal(h.status, 200, h.text);
    assert.equal(h.headers['meridian-region'], 'eu-west');
    assert.ok(h.json.messages.some((m) => m.text === text || m.body === text), `history through ${addr} holds the message`);
  }
  // Both streams saw both messages, in order, with their cursors.
  for (const s of streams) {
    await waitFor(() => s.events().filter((e) => e.type === 'message.created').length >= 2, { message: 'events through the edge tunnel' });
    const seqs = s.events().map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.ok(s.events().every((e) => e.region === 'eu-west' && e.workspace_id === space.id));
  }
  await Promise.all(streams.map((s) => s.close()));

  // The raw stores: the messages live in eu-west, and us-east holds none of the workspace's content.
  // (Bodies are encrypted at rest: the rows are counted, and no plaintext is stored.)
  assert.ok((await count('eu-west', `SELECT count(*) FROM messages WHERE workspace_id = '${space.id}'`)) >= texts.length);
  for (const text of texts) {
    assert.equal(await count('eu-west', `SELECT count(*) FROM messages WHERE workspace_id = '${space.id}' AND body LIKE '%${text}%'`), 0);
  }
  assert.equal(await count('us-east', `SELECT count(*) FROM messages WHERE workspace_id = '${space.id}'`), 0);

  // The access log names the routed region and never a token or a body.
  for (const e of edges) {
    const log = e.logs();
    assert.match(log, /event=http\.access .*region=eu-west/);
    assert.ok(!log.includes(owner.token.slice(5, 40)), 'no token in the edge log');
    for (const text of texts) assert.ok(!log.includes(text), 'no message body in the edge log');
  }
});

test('a workspace created a moment ago in its region is routed at once (the edge looks at the feed again)', async () => {
  const owner = await signupVia(EDGE_ADDRS[0], 'eu-west');
  // Created directly in eu-west, not through an edge.
  const r = await http('POST', `${W.regions['eu-west'].api}/v1/workspaces`, {
    body: { name: 'Direct', slug: uniq('direct') },
    headers: { authorization: `Bearer ${owner.token}` },
  });
  assert.equal(r.status, 201, r.text);
  const g = await via(EDGE_ADDRS[1], 'GET', `/v1/workspaces/${r.json.workspace.id}/channels`, { token: owner.token });
  assert.equal(g.status, 200, g.text);
  assert.equal(g.headers['meridian-region'], 'eu-west');
  // An id no region knows: 404 from the edge itself.
  const none = await via(EDGE_ADDRS[1], 'GET', `/v1/workspaces/w_doesnotexist0000000/channels`, { token: owner.token });
  assert.equal(none.status, 404);
  assert.equal(none.json.error.code, 'not_found');
});

test('garbage, oversized and unauthenticated requests are refused at the edge and none reaches a region', async () => {
  const user = await signupVia(EDGE_ADDRS[0], 'us-east');
  const addr = EDGE_ADDRS[0];
  const marker = uniq('marker');
  // Every bad request carries a request id of ours: the edge would forward it,
  // and a region that got the request would log it.
  let k = 0;
  const rid = () => `${marker}-b${++k}`;
  const ridHeader = () => `X-Request-Id: ${rid()}\r\n`;

  // Not HTTP at all.
  const garbage = await exchange(edgePort, ['\x16\x03\x01 not http at all\r\n\r\n'], { host: addr, timeoutMs: 2000 });
  assert.match(garbage.data.toString(), /^HTTP\/1\.1 400 /);
  // A head over the limit (16 KiB by default).
  const big = await exchange(edgePort, [`GET /v1/me HTTP/1.1\r\nHost: x\r\n${ridHeader()}X-Pad: ${'a'.repeat(20000)}\r\n\r\n`], { host: addr, timeoutMs: 2000 });
  assert.match(big.data.toString(), /^HTTP\/1\.1 431 /);
  // A body over the limit (1 MiB by default).
  const body = await exchange(
    edgePort,
    [`POST /v1/auth/login HTTP/1.1\r\nHost: x\r\n${ridHeader()}Content-Type: application/json\r\nContent-Length: ${2 << 20}\r\n\r\n{"email":"`],
    { host: addr, timeoutMs: 2000 },
  );
  assert.match(body.data.toString(), /^HTTP\/1\.1 413 /);
  // No token, a forged token, a token for a route that needs one.
  const none = await via(addr, 'GET', `/v1/me`, { headers: { 'x-request-id': rid() } });
  assert.equal(none.status, 401);
  assert.equal(none.json.error.code, 'unauthenticated');
  assert.match(none.headers['www-authenticate'], /Bearer/);
  const forged = user.token.slice(0, -4) + (user.token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  const bad = await via(addr, 'GET', `/v1/workspaces/w_doesnotmatter000000/channels`, { token: forged, headers: { 'x-request-id': rid() } });
  assert.equal(bad.status, 401);
  assert.equal(bad.json.error.code, 'invalid_token');
  // Routes that are not for clients through an edge, and malformed ids.
  for (const p of [`/admin/x`, `/v1/directory`, `/v1/admin/audit`, `/metrics/replicas`, `/v1/workspaces/bad%2Fid/x`]) {
    const r = await via(addr, 'GET', p, { token: user.token, headers: { 'x-request-id': rid() } });
    assert.equal(r.status, 404, `${p}: ${r.text}`);
    assert.equal(r.json.error.code, 'not_found');
  }
  // An upgrade anywhere but a workspace stream, and a stream without a token.
  const up = await exchange(
    edgePort,
    [`GET /v1/me HTTP/1.1\r\nHost: x\r\n${ridHeader()}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${user.token}\r\n\r\n`],
    { host: addr, timeoutMs: 2000 },
  );
  assert.match(up.data.toString(), /^HTTP\/1\.1 400 /);
  const s = openStream(addr, { id: 'w_nobody0000000000000' }, 'not-a-token');
  await assert.rejects(s.opened, (e) => e.status === 401);
  // Login with a body that is not JSON.
  const nj = await http('POST', `http://${addr}:${edgePort}/v1/auth/login`, { body: '{not json', headers: { 'content-type': 'application/json', 'x-request-id': rid() } });
  assert.equal(nj.status, 400);
  assert.equal(nj.json.error.code, 'invalid_json');

  // A sentinel that does reach us-east, so that its log is known to be written up to here.
  const me = await via(addr, 'GET', '/v1/me', { token: user.token, headers: { 'x-request-id': marker } });
  assert.equal(me.status, 200, me.text);
  assert.equal(me.headers['meridian-region'], 'us-east');
  await waitFor(() => clientAccessLines('us-east').some((l) => l.includes(`req=${marker} `)), { message: 'the sentinel in us-east' });
  for (const r of REGIONS) {
    const leaked = W.regions[r].node.logs().split('\n').filter((l) => l.includes(`req=${marker}-b`));
    assert.deepEqual(leaked, [], `${r} saw a request the edge should have refused`);
  }
});

test('with eu-west down, an eu-west workspace gets 503 and Retry-After, never another region; it comes back after', async () => {
  const owner = await signupVia(EDGE_ADDRS[0], 'eu-west');
  const space = await workspaceVia(EDGE_ADDRS[0], owner, ['eu-west', 'us-east']);
  // Both edges know the workspace, and so does us-east's directory (the edges
  // follow it too): while eu-west is down, its own feed cannot tell them.
  for (const addr of EDGE_ADDRS) {
    assert.equal((await via(addr, 'GET', `/v1/workspaces/${space.id}/channels`, { token: owner.token })).status, 200);
  }
  await waitFor(async () => (await count('us-east', `SELECT count(*) FROM dir_workspaces WHERE workspace_id = '${space.id}'`)) === 1, {
    message: "the workspace reached us-east's directory",
  });
  const node = W.regions['eu-west'].node;
  await node.stop();
  try {
    const text = uniq('while eu-west is down');
    for (const addr of EDGE_ADDRS) {
      const r = await via(addr, 'POST', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, { body: { text }, token: owner.token });
      assert.equal(r.status, 503, r.text);
      assert.ok(['region_unavailable'].includes(r.json.error.code), r.text);
      const ra = Number(r.headers['retry-after']);
      assert.ok(ra >= 1 && ra <= 6, `Retry-After ${r.headers['retry-after']}`);
      assert.equal(r.headers['meridian-region'], undefined, 'no region answered');
      const g = await via(addr, 'GET', `/v1/workspaces/${space.id}/channels`, { token: owner.token });
      assert.equal(g.status, 503);
    }
    // Once the breaker is open the edge answers at once, from itself.
    await waitFor(async () => (await http('GET', `${edges[0].api}/metrics`)).text.includes('meridian_edge_region_up{region="eu-west"} 0'), {
      message: 'eu-west marked down',
    });
    // Nothing of it went to us-east (the other allowed region is a replica that was never promoted).
    assert.equal(await count('us-east', `SELECT count(*) FROM messages WHERE body = '${text}'`), 0);
  } finally {
    await node.start();
  }
  // Back: each edge's health checks close its breaker, long before its 60 s
  // window ends (the tests below use eu-west through both edges).
  for (const addr of EDGE_ADDRS) {
    await waitFor(async () => (await via(addr, 'GET', `/v1/workspaces/${space.id}/channels`, { token: owner.token })).status === 200, {
      timeoutMs: 20000,
      message: `eu-west routed again through ${addr}`,
    });
  }
});

test('a workspace with a promoted standby fails over to it through either edge; the old home fences itself when back', async () => {
  const owner = await signupVia(EDGE_ADDRS[0], 'eu-west');
  const admin = await signupVia(EDGE_ADDRS[0], 'eu-west');
  const space = await workspaceVia(EDGE_ADDRS[0], owner, ['eu-west', 'us-east']);
  const inv = await via(EDGE_ADDRS[0], 'POST', `/v1/workspaces/${space.id}/members`, { body: { user_id: admin.id, role: 'compliance_admin' }, token: owner.token });
  assert.ok([200, 201].includes(inv.status), inv.text);
  const j = await via(EDGE_ADDRS[0], 'POST', `/v1/workspaces/${space.id}/join`, { body: {}, token: admin.token });
  assert.ok([200, 201, 204].includes(j.status), j.text);
  const post = async (addr, text) => {
    const r = await via(addr, 'POST', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, { body: { text }, token: owner.token });
    assert.equal(r.status, 201, r.text);
    return r;
  };
  const texts = [];
  for (let i = 0; i < 5; i++) texts.push(uniq('before the standby'));
  for (const t of texts) await post(EDGE_ADDRS[0], t);
  // A standby in us-east: copied, then kept up to date.
  const sb = await via(EDGE_ADDRS[0], 'POST', `/v1/admin/residency/workspaces/${space.id}/move`, {
    body: { target_region: 'us-east', standby: true, reason: 'disaster recovery copy' },
    token: admin.token,
  });
  assert.equal(sb.status, 202, sb.text);
  assert.equal(sb.json.move.kind, 'standby');
  const later = uniq('while standing by');
  texts.push(later);
  await post(EDGE_ADDRS[1], later);
  const inUsEast = `SELECT count(*) FROM messages WHERE workspace_id = '${space.id}'`;
  await waitFor(async () => (await count('us-east', inUsEast)) === texts.length, { timeoutMs: 30000, message: 'the standby caught up' });
  assert.equal(await count('us-east', `SELECT count(*) FROM workspace_keys WHERE workspace_id = '${space.id}'`), 1, 'the standby holds the data key');
  await waitFor(async () => (await count('us-east', `SELECT count(*) FROM dir_workspaces WHERE workspace_id = '${space.id}'`)) === 1, {
    message: "the workspace reached us-east's directory",
  });
  // While the home answers, promotion is refused: a live home is moved, not replaced.
  const usApi = W.regions['us-east'].api;
  const early = await http('POST', `${usApi}/v1/admin/residency/workspaces/${space.id}/promote`, { body: { reason: 'too early' }, headers: { authorization: `Bearer ${admin.token}` } });
  assert.equal(early.status, 409, early.text);
  assert.equal(early.json.error.code, 'home_reachable');

  const node = W.regions['eu-west'].node;
  await node.stop();
  try {
    const pr = await http('POST', `${usApi}/v1/admin/residency/workspaces/${space.id}/promote`, { body: { reason: 'eu-west is down' }, headers: { authorization: `Bearer ${admin.token}` } });
    assert.equal(pr.status, 200, pr.text);
    assert.equal(pr.json.home_region, 'us-east');
    assert.equal(pr.json.previous_home, 'eu-west');
    // Both edges follow us-east's directory: reads and writes are served there, decrypted.
    for (const addr of EDGE_ADDRS) {
      await waitFor(async () => (await via(addr, 'GET', `/v1/workspaces/${space.id}/channels`, { token: owner.token })).status === 200, {
        timeoutMs: 20000,
        message: `${addr} routes to the promoted standby`,
      });
      const h = await via(addr, 'GET', `/v1/workspaces/${space.id}/channels/${space.general}/messages?limit=50`, { token: owner.token });
      assert.equal(h.status, 200, h.text);
      assert.equal(h.headers['meridian-region'], 'us-east');
      for (const t of texts) assert.ok(h.json.messages.some((m) => m.text === t), `${t} at the new home`);
      const w = await post(addr, uniq('after the promotion'));
      assert.equal(w.headers['meridian-region'], 'us-east');
    }
  } finally {
    await node.start();
  }
  // The old home hears the newer epoch and fences itself: a write sent to it directly is 421, naming us-east.
  await waitFor(async () => (await pg('eu-west').psql(`SELECT coalesce(moving_to, '-') FROM workspaces WHERE id = '${space.id}'`)).trim() === 'us-east', {
    timeoutMs: 30000,
    message: 'eu-west fenced the workspace',
  });
  const direct = await http('POST', `${W.regions['eu-west'].api}/v1/workspaces/${space.id}/channels/${space.general}/messages`, {
    body: { text: 'to the old home' },
    headers: { authorization: `Bearer ${owner.token}` },
  });
  assert.equal(direct.status, 421, direct.text);
  assert.equal(direct.headers['meridian-home-region'], 'us-east');
  const edgeRead = await via(EDGE_ADDRS[0], 'GET', `/v1/workspaces/${space.id}/channels`, { token: owner.token });
  assert.equal(edgeRead.status, 200);
  assert.equal(edgeRead.headers['meridian-region'], 'us-east');
  // The tests after this one need eu-west routed again: every edge's health checks see it up.
  for (const e of edges)
    await waitFor(async () => (await http('GET', `${e.api}/metrics`)).text.includes('meridian_edge_region_up{region="eu-west"} 1'), {
      timeoutMs: 20000,
      message: 'the edges see eu-west up again',
    });
});

test('a changed DNS record for a region endpoint is followed after its TTL', async () => {
  const user = await signupVia(EDGE_ADDRS[0], 'us-east');
  const usPort = W.regions['us-east'].node.port;
  // us-east's node, also reachable at 127.0.0.5 through a proxy that counts connections.
  const proxy = new TcpProxy({ host: '127.0.0.5', port: usPort, target: { host: '127.0.0.1', port: usPort }, name: 'us-east at 127.0.0.5' });
  await proxy.start();
  try {
    const me = () => via(EDGE_ADDRS[0], 'GET', '/v1/me', { token: user.token });
    assert.equal((await me()).status, 200);
    assert.equal(proxy.accepted, 0);
    await dns.setHosts({ ...baseHosts(), [nodeName('us-east')]: '127.0.0.5' }, { probe: nodeName('us-east') });
    // The TTL is 1 s: new connections (and kept-alive ones past their TTL) go to the new address.
    await waitFor(
      async () => {
        assert.equal((await me()).status, 200);
        return proxy.accepted > 0;
      },
      { timeoutMs: 10000, message: 'the edge did not follow the new record' },
    );
  } finally {
    await dns.setHosts(baseHosts(), { probe: nodeName('us-east') });
    await proxy.stop();
  }
  // And back.
  await waitFor(async () => (await via(EDGE_ADDRS[0], 'GET', '/v1/me', { token: user.token })).status === 200, { timeoutMs: 10000 });
});

test('redirect mode sends clients to the home region with 307; admission sheds new sessions with 503 + Retry-After', async () => {
  const owner = await signupVia(EDGE_ADDRS[0], 'eu-west');
  const space = await workspaceVia(EDGE_ADDRS[0], owner, ['eu-west']);
  const red = await W.startEdge({
    edge: 'edge-redirect',
    dnsServers: [dns.server],
    config: { mode: 'redirect', admission: { sessions_per_s: 1, burst: 2 } },
  });
  const p = `/v1/workspaces/${space.id}/channels?limit=5`;
  const r = await http('GET', `${red.api}${p}`, { headers: { authorization: `Bearer ${owner.token}` } });
  assert.equal(r.status, 307, r.text);
  assert.equal(r.headers.location, `http://${nodeName('eu-west')}:${W.regions['eu-west'].node.port}${p}`);
  // Following it (resolving the name through dnsmasq) reaches the data.
  const loc = new URL(r.headers.location);
  const ip = (await dnsQuery(dns.port, loc.hostname)).answers[0].ip;
  const g = await http('GET', `http://${ip}:${loc.port}${loc.pathname}${loc.search}`, { headers: { authorization: `Bearer ${owner.token}` } });
  assert.equal(g.status, 200, g.text);

  // Three logins at once against a bucket of two: the third is shed before any region sees it.
  const logins = await Promise.all(
    [1, 2, 3].map(() => http('POST', `${red.api}/v1/auth/login`, { body: { email: owner.email, password: 'edge test password' } })),
  );
  const shed = logins.filter((x) => x.status === 503);
  assert.equal(shed.length, 1, logins.map((x) => x.status).join(','));
  assert.equal(shed[0].json.error.code, 'overloaded');
  assert.ok(Number(shed[0].headers['retry-after']) >= 1);
  const m = await http('GET', `${red.api}/metrics`);
  assert.match(m.text, /meridian_edge_shed_total\{region="eu-west"\} 1/);
  await red.stop();
});

test("admission is pooled by the edge's workers: one worker may admit the whole node's burst", async () => {
  // Two workers, each given 1/s and a burst of 2: the node admits a burst of
  // 4, whichever worker takes the connections. Every request below travels
  // on one keep-alive connection, so one worker sees them all: with a
  // bucket of its own it would shed from the third on.
  const ad = await W.startEdge({ edge: 'edge-pooled', workers: 2, dnsServers: [dns.server], config: { admission: { sessions_per_s: 1, burst: 2 } } });
  const agent = new nodeHttp.Agent({ keepAlive: true, maxSockets: 1 });
  const url = new URL(ad.api);
  const refresh = () =>
    new Promise((resolve, reject) => {
      const body = JSON.stringify({ refresh_token: 'not-a-refresh-token' });
      const req = nodeHttp.request(
        { agent, host: url.hostname, port: url.port, method: 'POST', path: '/v1/auth/refresh', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'meridian-home-region': 'eu-west' } },
        (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode, socket: req.socket }));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  try {
    const got = [];
    for (let i = 0; i < 6; i++) got.push(await refresh());
    assert.ok(got.every((g) => g.socket === got[0].socket), 'one connection throughout');
    const statuses = got.map((g) => g.status);
    const passed = statuses.filter((st) => st !== 503).length;
    // 4 from the pooled burst, and at most one refilled meanwhile (2/s).
    assert.ok(passed >= 4 && passed <= 5, statuses.join(','));
    assert.equal(statuses.at(-1), 503, statuses.join(','));
  } finally {
    agent.destroy();
    await ad.stop();
  }
});

test('the edge config is checked before start: every problem names its field', async () => {
  const bad = `${tmp}/bad-edge.json`;
  fs.writeFileSync(bad, JSON.stringify({ edge: 'Bad Name', listen: { port: 70000 }, mode: 'tunnel', wat: 1, world_file: W.worldFile, directory: {}, auth: {} }));
  const { spawnSync } = await import('node:child_process');
  const { binary } = await import('../lib/harness.mjs');
  const r = spawnSync(binary('meridian-edge'), ['--check-config', '--config', bad], { encoding: 'utf8' });
  assert.equal(r.status, 1);
  for (const field of ['edge:', 'listen.port:', 'mode:', 'wat:', 'directory.token_file:', 'auth.email_hash_key_file:']) {
    assert.ok(r.stderr.includes(field), `${field} in\n${r.stderr}`);
  }
  const ok = spawnSync(binary('meridian-edge'), ['--check-config', '--config', edges[0].configPath], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /configuration ok: edge=edge-1 .*regions=2/);
});

/** Resolves with {code, reason} when ws closes. */
const closeOf = (ws) => new Promise((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));

test('a stream whose region worker is killed is told by the edge when to come back, and closed with 1012', async () => {
  const owner = await signupVia(EDGE_ADDRS[0], 'us-east');
  const space = await workspaceVia(EDGE_ADDRS[0], owner, ['us-east']);
  const before = await http('GET', `${edges[0].api}/metrics`);
  const lostBefore = Number(/meridian_edge_tunnels_lost_total\{region="us-east"\} (\d+)/.exec(before.text)?.[1] || 0);
  const s = openStream(EDGE_ADDRS[0], space, owner.token);
  await s.opened;
  await waitFor(() => s.frames.some((f) => f.type === 'hello'), { message: 'hello' });
  const closed = closeOf(s.ws);
  const killed = killWorkers(W.regions['us-east'].node.pid);
  assert.ok(killed.length >= 1, 'a worker was killed');
  const { code, reason } = await closed;
  assert.equal(code, 1012, `close ${code} ${reason}`);
  assert.match(reason, /region restarted/);
  // The hint came first: the client's slot in the region's queue (at most 30 s ahead, plus the jitter).
  const last = s.frames[s.frames.length - 1];
  assert.equal(last.type, 'reconnect', JSON.stringify(s.frames));
  assert.ok(Number.isInteger(last.after_ms) && last.after_ms >= 0 && last.after_ms <= 31000, JSON.stringify(last));
  const after = await http('GET', `${edges[0].api}/metrics`);
  const lost = Number(/meridian_edge_tunnels_lost_total\{region="us-east"\} (\d+)/.exec(after.text)?.[1] || 0);
  assert.equal(lost, lostBefore + 1);
  // The master brings the worker back, and the stream opens again.
  await waitFor(
    async () => {
      const again = openStream(EDGE_ADDRS[0], space, owner.token);
      try {
        await again.opened;
        await again.close();
        return true;
      } catch {
        return false;
      }
    },
    { timeoutMs: 20000, message: 'the stream opens again' },
  );
});

test('a stopping edge tells its streams when to come back (spread over a window) and closes them with 1001', async () => {
  const owner = await signupVia(EDGE_ADDRS[0], 'eu-west');
  const space = await workspaceVia(EDGE_ADDRS[0], owner, ['eu-west']);
  const ed = await W.startEdge({ edge: 'edge-drain', dnsServers: [dns.server] });
  let stopped = false;
  try {
    await waitFor(async () => (await http('GET', `${ed.api}/v1/workspaces/${space.id}/channels`, { headers: { authorization: `Bearer ${owner.token}` } })).status === 200, {
      message: 'the new edge routes the workspace',
    });
    const streams = [0, 1, 2].map(() => {
      const ws = new WebSocket(`${ed.api.replace('http', 'ws')}/v1/workspaces/${space.id}/stream`, ['meridian.v1', `bearer.${owner.token}`]);
      const frames = [];
      ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
      return { ws, frames, opened: new Promise((res, rej) => (ws.once('open', res), ws.once('error', rej))), closed: closeOf(ws) };
    });
    for (const st of streams) await st.opened;
    await waitFor(() => streams.every((st) => st.frames.some((f) => f.type === 'hello')), { message: 'hello on every stream' });
    await ed.stop();
    stopped = true;
    for (const st of streams) {
      const { code, reason } = await st.closed;
      assert.equal(code, 1001, `close ${code} ${reason}`);
      const last = st.frames[st.frames.length - 1];
      assert.equal(last.type, 'reconnect', JSON.stringify(st.frames));
      assert.ok(Number.isInteger(last.after_ms) && last.after_ms >= 0 && last.after_ms <= 5000, JSON.stringify(last));
    }
  } finally {
    if (!stopped) await ed.stop();
  }
});
