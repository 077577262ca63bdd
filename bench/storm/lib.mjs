// bench/storm/lib.mjs: what the reconnect-storm benchmark (storm.mjs) and its
// small sibling in ./tests/run (tests/integration/storm.test.mjs) share:
// stream users written straight into a shard, tokens minted with the
// region's key, meridian-loadgen processes driven over stdin, the storm
// itself (kill -9 of every worker of a region node), and the accounting of
// what the clients received against what the database holds.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { http, waitFor } from '../../tests/lib/harness.mjs';
import { Loadgen } from '../lib/loadgen.mjs';

// ------------------------------------------------------------------ fixtures

/**
 * Access tokens minted with the region's own signing key, in the format of
 * core/auth.h; the claims other than sub copy a token the region issued.
 * Signup costs ~90 ms of argon2id per user: 50,000 users would take over an
 * hour, while the region and the edge verify minted tokens on their real path.
 */
export function tokenMinter(keyFile, sample) {
  const seed = Buffer.from(fs.readFileSync(keyFile, 'utf8').trim(), 'hex');
  const priv = crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]), format: 'der', type: 'pkcs8' });
  const pub = crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' }).subarray(-32);
  const kid = pub.subarray(0, 8).toString('base64url');
  const claims = JSON.parse(Buffer.from(sample.split('.')[1], 'base64url').toString());
  const iat = Math.floor(Date.now() / 1000);
  return (sub) => {
    const payload = { sub, hr: claims.hr, roles: claims.roles, iat, exp: iat + 6 * 3600, jti: crypto.randomBytes(16).toString('base64url'), kid };
    const signing = `mrd1.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
    return `${signing}.${crypto.sign(null, Buffer.from(signing), priv).toString('base64url')}`;
  };
}

async function api(base, method, p, body, token) {
  const r = await http(method, `${base}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${r.text}`);
  return r.json;
}

/**
 * `count` workspaces of `members` stream users each: the owner signs up and
 * creates the workspaces through the region's API (so they reach the
 * directory, and the edge), the users are inserted into the workspace's
 * shard (users, members, channel_members of #general) in one statement per
 * shard. Returns {owner, workspaces: [{id, general, shard, users: [{id, token}],
 * poster: {token, path}}]}.
 */
export async function makeWorkspaces({ regionApi, postgres, regionName, signingKeyFile, count, members, tag = 's' }) {
  const nonce = `${process.pid}-${Date.now().toString(36)}`;
  const signup = await api(regionApi, 'POST', '/v1/auth/signup', { email: `storm-owner.${nonce}@example.com`, password: 'storm password', display_name: 'Storm owner' });
  const owner = { id: signup.user.id, token: signup.access_token };
  const mint = tokenMinter(signingKeyFile, owner.token);
  const out = new Array(count);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < count; i = next++) {
      const ws = await api(regionApi, 'POST', '/v1/workspaces', { name: `Storm ${i}`, slug: `storm-${tag}-${nonce}-${i}` }, owner.token);
      const id = ws.workspace.id;
      const chans = await api(regionApi, 'GET', `/v1/workspaces/${id}/channels`, undefined, owner.token);
      out[i] = { id, general: chans.channels.find((c) => c.name === 'general').id, prefix: `st${tag}${nonce.replace(/-/g, '')}w${i}u`, shard: -1 };
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, count) }, worker));
  const byId = new Map(out.map((x) => [x.id, x]));
  const ids = out.map((x) => `'${x.id}'`).join(',');
  for (let s = 0; s < postgres.length; s++) {
    for (const id of (await postgres[s].psql(`SELECT id FROM workspaces WHERE id IN (${ids})`)).split('\n')) {
      if (byId.has(id.trim())) byId.get(id.trim()).shard = s;
    }
  }
  for (const x of out) if (x.shard < 0) throw new Error(`workspace ${x.id} is on no shard`);
  for (let s = 0; s < postgres.length; s++) {
    const mine = out.filter((x) => x.shard === s);
    if (!mine.length) continue;
    const values = mine.map((x) => `('${x.id}', '${x.general}', '${x.prefix}')`).join(',');
    const u = `WITH f(ws, ch, prefix) AS (VALUES ${values}), u AS (SELECT ws, ch, prefix || g AS uid FROM f, generate_series(1, ${members}) g)`;
    await postgres[s].psql(`
      ${u} INSERT INTO users (id, email_hash, email, display_name, password_hash, home_region)
        SELECT uid, decode(md5(uid), 'hex'), uid || '@storm.invalid', 'storm', 'storm-fixture-no-login', '${regionName}' FROM u;
      ${u} INSERT INTO members (workspace_id, user_id, role, status) SELECT ws, uid, 'member', 'active' FROM u;
      ${u} INSERT INTO channel_members (workspace_id, channel_id, user_id) SELECT ws, ch, uid FROM u;`);
  }
  for (const x of out) {
    x.users = [];
    for (let g = 1; g <= members; g++) x.users.push({ id: `${x.prefix}${g}`, token: mint(`${x.prefix}${g}`) });
    x.poster = { token: mint(owner.id), path: `/v1/workspaces/${x.id}/channels/${x.general}/messages` };
  }
  return { owner, workspaces: out };
}

/** Waits until the edge routes every workspace (its directory copy follows the region's feed). */
export async function waitRouted(edgeApi, { owner, workspaces }, timeoutMs = 30000) {
  for (const ws of workspaces) {
    await waitFor(async () => (await http('GET', `${edgeApi}/v1/workspaces/${ws.id}/channels`, { headers: { authorization: `Bearer ${owner.token}` } })).status === 200, {
      timeoutMs,
      message: `the edge does not route workspace ${ws.id}`,
    });
  }
}

// ------------------------------------------------------------------ loadgens

export { Loadgen };

/**
 * Stream clients spread over loadgen processes of at most `perProc` each
 * (interleaved, so that every workspace spans every process), each process
 * from its own source address: ~28k ephemeral ports per source address and
 * 20,000 descriptors per process here.
 */
export function startClients({ bin, tmp, port, workspaces, perProc, jitter, baseMs, capMs, timelineMs = 250, statsMs = 500, maxInflight = 256, tag = 'c' }) {
  const lines = [];
  for (const ws of workspaces) for (const u of ws.users) lines.push(`${u.token} /v1/workspaces/${ws.id}/stream`);
  const n = Math.max(1, Math.ceil(lines.length / perProc));
  const parts = Array.from({ length: n }, () => []);
  lines.forEach((l, i) => parts[i % n].push(l));
  return parts.map((part, i) => {
    const file = path.join(tmp, `${tag}-${i}.txt`);
    fs.writeFileSync(file, `${part.join('\n')}\n`);
    const args = ['--port', String(port), '--clients', String(part.length), '--tokens', file, '--source', `127.0.0.${10 + i}`,
      '--stats-interval-ms', String(statsMs), '--timeline-ms', String(timelineMs), '--max-inflight', String(maxInflight),
      '--handshake-timeout-ms', '15000', '--backoff-base-ms', String(baseMs), '--backoff-cap-ms', String(capMs)];
    if (!jitter) args.push('--no-jitter');
    return new Loadgen(bin, args, `${tag}-${i}`);
  });
}

/** A poster: REST posts to every workspace's #general, round-robin, at `rate` per second. */
export function startPoster({ bin, tmp, port, workspaces, rate, conns = 16, tag = 'poster' }) {
  const file = path.join(tmp, `${tag}.txt`);
  fs.writeFileSync(file, `${workspaces.map((x) => `${x.poster.token} ${x.poster.path}`).join('\n')}\n`);
  return new Loadgen(bin, ['--port', String(port), '--clients', '0', '--post-targets', file, '--post-conns', String(conns), '--post-rate', String(rate), '--text-bytes', '64', '--stats-interval-ms', '500', '--backoff-base-ms', '100', '--backoff-cap-ms', '1000'], tag);
}

export const connectedOf = (lgs) => lgs.reduce((s, l) => s + (l.last ? l.last.connected : 0), 0);

/** Waits until every client is connected (throws on timeout or a loadgen exit). */
export async function waitAllConnected(lgs, total, timeoutMs) {
  await waitFor(
    () => {
      for (const l of lgs) if (l.child.exitCode !== null) throw new Error(`${l.name} exited: ${l.errTail.join(' | ')}`);
      return connectedOf(lgs) >= total;
    },
    { timeoutMs, intervalMs: 100, maxIntervalMs: 500, message: `not all ${total} clients connected` },
  ).catch((e) => {
    const l = lgs.find((x) => x.last) || lgs[0];
    const s = l.last || {};
    throw new Error(`${e.message}: ${connectedOf(lgs)} are; ${l.name}: handshake_status ${JSON.stringify(s.handshake_status)} closes ${JSON.stringify(s.closes)} tcp_errors ${s.tcp_errors} timeouts ${s.handshake_timeouts} ${l.errTail.join(' | ')}`);
  });
}

/**
 * Waits until nothing arrives any more: no event and no other message
 * (presence signals of a connect burst) in `quietMs`, at most `maxMs`.
 */
export async function waitQuiet(lgs, { quietMs = 2000, maxMs = 120000 } = {}) {
  const t0 = Date.now();
  const seen = () => lgs.reduce((s, l) => s + (l.last ? l.last.events + l.last.other_messages : 0), 0);
  let prev = seen();
  let since = Date.now();
  await waitFor(
    () => {
      const now = seen();
      if (now !== prev) {
        prev = now;
        since = Date.now();
      }
      return Date.now() - since >= quietMs || Date.now() - t0 >= maxMs;
    },
    { timeoutMs: maxMs + quietMs + 5000, intervalMs: 250, maxIntervalMs: 250 },
  );
  return Date.now() - t0;
}

// ------------------------------------------------------------------ the storm

/** Child pids of a process (a prefork master's workers). */
export function childPids(ppid) {
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const s = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      if (Number(f[1]) === ppid) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out.sort((a, b) => a - b);
}

/** kill -9 every worker of a prefork master; returns their pids. */
export function killWorkers(masterPid) {
  const pids = childPids(masterPid);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  return pids;
}

export function rssOf(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(s)?.[1] || 0) * 1024;
  } catch {
    return 0;
  }
}

/** RSS of a prefork master and its workers. */
export function treeRss(masterPid) {
  return [masterPid, ...childPids(masterPid)].reduce((s, p) => s + rssOf(p), 0);
}

/** The node's /metrics, parsed into {name{labels}: value} (summed over the lines of a name without labels). */
export async function scrape(url) {
  const r = await http('GET', `${url}/metrics`);
  const out = {};
  for (const line of r.text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) +(\S+)$/.exec(line);
    if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[2]);
  }
  return out;
}

/** Sums the metric lines whose name (labels aside) is `name`. */
export function metricSum(metrics, name) {
  let s = 0;
  let any = false;
  for (const [k, v] of Object.entries(metrics)) {
    if (k === name || k.startsWith(`${name}{`)) {
      s += v;
      any = true;
    }
  }
  return any ? s : null;
}

/**
 * Samples a counter (the sum of the metric lines named `name` whose labels
 * include `match`) from `url`/metrics every `intervalMs`, one scrape at a
 * time. stop() -> [{t: unix ms, v}] in order.
 */
export function sampleCounter(url, name, match, intervalMs = 250) {
  const samples = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const t0 = Date.now();
      try {
        const m = Object.fromEntries(Object.entries(await scrape(url)).filter(([k]) => k.includes(match)));
        samples.push({ t: Date.now(), v: metricSum(m, name) || 0 });
      } catch {
        // a scrape that failed leaves a hole; the rates span it
      }
      await new Promise((r) => setTimeout(r, Math.max(0, intervalMs - (Date.now() - t0))));
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      return samples;
    },
  };
}

/**
 * The highest rate of a sampled counter over any span of at least
 * `windowMs` between two samples after `fromUnixMs`: {per_s, at_unix_ms}.
 */
export function peakSampledRate(samples, fromUnixMs, windowMs = 1000) {
  let best = null;
  let at = null;
  const xs = samples.filter((x) => x.t >= fromUnixMs);
  for (let i = 0, j = 0; i < xs.length; i++) {
    while (j < xs.length && xs[j].t - xs[i].t < windowMs) j++;
    if (j >= xs.length) break;
    const r = ((xs[j].v - xs[i].v) * 1000) / (xs[j].t - xs[i].t);
    if (best === null || r > best) {
      best = r;
      at = xs[i].t;
    }
  }
  return { per_s: best, at_unix_ms: at };
}

/** What each timeline bucket counts (tools/loadgen: LG_TL_*). */
export const TIMELINE_KINDS = ['connects', 'shed', 'failed', 'attempts', 'drops'];

/**
 * Adds up the loadgens' timelines (aligned on the wall clock) into one:
 * {bucket_ms, origin_unix_ms, connects[], shed[], failed[], attempts[], drops[]}.
 */
export function mergeTimelines(finals) {
  const tls = finals.filter((f) => f && f.timeline).map((f) => f.timeline);
  if (!tls.length) return null;
  const bucket = tls[0].bucket_ms;
  const origin = Math.min(...tls.map((t) => t.origin_unix_ms));
  const len = Math.max(...tls.map((t) => (t.origin_unix_ms - origin) / bucket + t.connects.length));
  const out = { bucket_ms: bucket, origin_unix_ms: origin };
  for (const k of TIMELINE_KINDS) out[k] = new Array(len).fill(0);
  for (const t of tls) {
    const off = (t.origin_unix_ms - origin) / bucket;
    for (const k of TIMELINE_KINDS) (t[k] || []).forEach((v, i) => (out[k][off + i] += v));
  }
  return out;
}

/**
 * The highest number of accepted connects in any `windowMs` (sliding over
 * buckets) from `fromUnixMs` on, as a rate per second.
 */
export function peakRate(tl, fromUnixMs, windowMs = 1000) {
  const per = Math.max(1, Math.round(windowMs / tl.bucket_ms));
  const first = Math.max(0, Math.floor((fromUnixMs - tl.origin_unix_ms) / tl.bucket_ms));
  let best = 0;
  let at = null;
  for (let i = first; i + per <= tl.connects.length; i++) {
    let s = 0;
    for (let j = i; j < i + per; j++) s += tl.connects[j];
    if (s > best) {
      best = s;
      at = tl.origin_unix_ms + i * tl.bucket_ms;
    }
  }
  return { per_s: (best * 1000) / (per * tl.bucket_ms), window_ms: per * tl.bucket_ms, at_unix_ms: at };
}

/**
 * What the clients received against what the database holds: each
 * workspace's head seq (its outbox, the truth) against every client's last
 * cursor, plus the seq gaps and duplicates the loadgens saw on the way.
 * lost = gaps + events jumped by resync_required + events after a client's
 * last cursor (tail), summed over clients.
 */
export async function accountEvents({ postgres, workspaces, finals }) {
  const t = await tailMissing({ postgres, workspaces, reports: finals });
  const gaps = finals.reduce((s, f) => s + f.gaps, 0);
  const dups = finals.reduce((s, f) => s + f.duplicates, 0);
  const resyncSkipped = finals.reduce((s, f) => s + (f.resync_skipped || 0), 0);
  return {
    clients: t.clients,
    clients_without_cursor: t.clients_without_cursor,
    events_received: finals.reduce((s, f) => s + f.events, 0),
    gaps,
    resync_skipped: resyncSkipped,
    tail_missing: t.tail_missing,
    streams_behind: t.streams_behind,
    lost: gaps + resyncSkipped + t.tail_missing,
    duplicated: dups,
  };
}

/**
 * Events that clients have not received after their last cursor: for each
 * stream in the loadgens' `streams` sums, clients x the workspace's head seq
 * (in its outbox) less the sum of their cursors.
 */
export async function tailMissing({ postgres, workspaces, reports }) {
  const heads = new Map();
  const ids = workspaces.map((x) => `'${x.id}'`).join(',');
  for (const pg of postgres) {
    const rows = await pg.psql(`SELECT workspace_id || ' ' || max(seq) FROM outbox WHERE workspace_id IN (${ids}) GROUP BY workspace_id`);
    for (const line of rows.split('\n')) {
      const [id, seq] = line.trim().split(' ');
      if (id) heads.set(id, Number(seq));
    }
  }
  const byPath = new Map();
  for (const ws of workspaces) byPath.set(`/v1/workspaces/${ws.id}/stream`, ws.id);
  let tail = 0;
  let noCursor = 0;
  let clients = 0;
  let behindStreams = 0;
  const behind = [];
  for (const f of reports) {
    for (const s of f.streams || []) {
      const head = heads.get(byPath.get(s.path)) ?? 0;
      const have = s.clients - s.no_cursor;
      clients += s.clients;
      noCursor += s.no_cursor;
      const missing = have * head - s.sum;
      if (missing > 0) {
        tail += missing;
        behindStreams++;
        if (behind.length < 10) behind.push({ workspace: byPath.get(s.path), head, clients: s.clients, min_cursor: s.min, missing });
      }
    }
  }
  return { clients, clients_without_cursor: noCursor, tail_missing: tail, streams_behind: behindStreams, behind };
}

/** Sums a counter object ({"503": n, ...}) over loadgen reports. */
export function sumCodes(reports, key) {
  const out = {};
  for (const r of reports) for (const [k, v] of Object.entries((r && r[key]) || {})) out[k] = (out[k] || 0) + v;
  return out;
}
