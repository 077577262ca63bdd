// bench/replication: cross-region replication lag, publish in us-east ->
// applied in eu-west's Postgres, at fixed event rates, next to NATS
// JetStream's own lag for the same topology (a stream in us-east's domain,
// sourced by a stream in eu-west's domain through the hub), in the same run;
// then catch-up after a cut of the link. JSON on stdout, progress on stderr.
// See README.md for the method and its caveats.
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import readline from 'node:readline';

import { pgBin } from '../../deploy/local/lib/stack.mjs';
import { http, startWorlds, track, waitFor } from '../../tests/lib/harness.mjs';
import { buildInfo, ensureBuilt, gitInfo, makeLogger, options, writeResult } from '../lib/common.mjs';
import { benchNats, jsMetadata } from '../lib/nats.mjs';
import { machineInfo, versionOf } from '../lib/proc.mjs';
import { interleave, medians } from '../lib/rounds.mjs';
import { percentile, round } from '../lib/stats.mjs';

const log = makeLogger('replication');
const o = options(
  {
    rates: { type: 'string', default: '1000,10000', env: 'BENCH_RATES', help: 'comma list of target events/s' },
    duration: { type: 'number', default: 10, env: 'BENCH_DURATION', short: 'd', help: 'seconds measured per run' },
    warmup: { type: 'number', default: 2, env: 'BENCH_WARMUP', help: 'seconds produced before each measured window (not measured)' },
    rounds: { type: 'number', default: 3, env: 'BENCH_ROUNDS', short: 'r', help: 'runs of each side per rate, interleaved (medians reported)' },
    workspaces: { type: 'number', default: 8, env: 'BENCH_WORKSPACES', help: 'us-east workspaces allowed in eu-west (spread over the shards)' },
    'text-bytes': { type: 'number', default: 100, env: 'BENCH_TEXT_BYTES', help: 'message text size in each event' },
    tick: { type: 'number', default: 10, env: 'BENCH_TICK_MS', help: 'ms between producer batches' },
    'api-posts': { type: 'number', default: 5, env: 'BENCH_API_POSTS', help: 'messages posted through the REST API (end-to-end check)' },
    cut: { type: 'number', default: 60, env: 'BENCH_CUT', help: 'seconds the link is cut for the catch-up phase (0: skip it)' },
    'cut-rate': { type: 'number', default: 1000, env: 'BENCH_CUT_RATE', help: 'events/s produced during the cut' },
    'cut-method': { type: 'string', default: 'hub', env: 'BENCH_CUT_METHOD', help: 'hub (stop/start the hub) or proxy (W.cut/W.heal: puts an in-process TCP proxy on every leaf link)' },
    'drain-timeout': { type: 'number', default: 180, env: 'BENCH_DRAIN_TIMEOUT', help: 'seconds to wait for a replica to reach the head' },
    check: { type: 'boolean', default: false, help: 'exit 1 when the target (meridian p99 <= 2 x nats p99 + 5 ms) is missed at any rate' },
    out: { type: 'string', default: '', help: 'write the report here too (default bench/replication/results/latest.json)' },
  },
  { usage: 'usage: bench/replication/run [options]  (JSON on stdout; small run, ~2 min: bench/replication/run -d 5 -r 1 --cut 20)' },
);
const RATES = o.rates.split(',').map(Number).filter((x) => x > 0);
if (!RATES.length) {
  process.stderr.write('--rates: no rate\n');
  process.exit(2);
}
if (!['hub', 'proxy'].includes(o['cut-method'])) {
  process.stderr.write('--cut-method: hub or proxy\n');
  process.exit(2);
}

const ORIGIN = 'us-east';
const REPLICA = 'eu-west';
const BENCH_EV = 'BENCH_EV';
const BENCH_IN = 'BENCH_IN';
const IN_STREAM = `IN_${REPLICA}`;
const EV_STREAM = `EV_${ORIGIN}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sq = (s) => `'${String(s).replace(/'/g, "''")}'`;
const arr = (xs) => sq(`{${xs.join(',')}}`);
/** Wall-clock ms with sub-ms resolution (the same clock as Postgres's now() and nats-server's). */
const nowMs = () => performance.timeOrigin + performance.now();

let W = null;
const R = (r) => W.regions[r];

async function api(region, method, p, body, token) {
  const r = await http(method, `${R(region).api}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${r.text}`);
  return r.json;
}

async function psqlAll(region, sql) {
  return Promise.all(R(region).postgres.map((p) => p.psql(sql)));
}

const rows = (out) =>
  out
    .split('\n')
    .filter((l) => l.length)
    .map((l) => l.split('|'));

// ---------------------------------------------------------------- Meridian side

/**
 * Writes events straight into us-east's outbox, as the write path does in its
 * transaction: each statement takes the next sequence numbers of some
 * workspaces (UPDATE workspaces SET seq = seq + n, under the row lock, so a
 * concurrent API post keeps the sequence gap-free too) and inserts that many
 * outbox rows. One long-running psql per shard reads the statements on stdin;
 * the outbox trigger's NOTIFY wakes the relay at each commit.
 */
class OutboxProducer {
  constructor(spaces, text) {
    this.text = text;
    this.shards = R(ORIGIN).postgres.map((pg, i) => ({ pg, i, spaces: spaces.filter((s) => s.shard === i), inflight: 0, child: null, done: 0 }));
    this.spaces = spaces;
    this.next = 0;
  }

  async start() {
    for (const s of this.shards) {
      if (!s.spaces.length) continue;
      const child = spawn(pgBin('psql'), ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', s.pg.clientHost, '-p', String(s.pg.port), '-U', 'meridian', '-d', 'meridian'], {
        stdio: ['pipe', 'pipe', 'pipe'],
        detached: true,
      });
      track(child);
      s.child = child;
      s.err = '';
      // Prepared once: the API's own post statement is, and planning this
      // one per tick cost Postgres a tenth of a core at 10k events/s.
      child.stdin.write(
        `PREPARE produce(text[], text[], int[]) AS WITH d AS (SELECT * FROM unnest($1, $2, $3) AS d(id, ch, n)),` +
          ` w AS (UPDATE workspaces ws SET seq = ws.seq + d.n FROM d WHERE ws.id = d.id RETURNING ws.id, ws.seq, d.n, d.ch)` +
          ` INSERT INTO outbox (workspace_id, seq, type, channel_id, payload)` +
          ` SELECT w.id, w.seq - w.n + g, 'message.created', w.ch, jsonb_build_object('id', 'bench-' || (w.seq - w.n + g),` +
          ` 'channel_id', w.ch, 'seq', w.seq - w.n + g, 'author_id', 'bench', 'parent_id', NULL, 'client_msg_id', NULL,` +
          ` 'text', ${sq(this.text)}::text, 'created_at', now()) FROM w, generate_series(1, w.n) g;\n`,
      );
      child.stderr.on('data', (d) => (s.err += d));
      s.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
      readline.createInterface({ input: child.stdout }).on('line', (l) => {
        if (l.startsWith('INSERT')) {
          s.inflight--;
          s.done++;
        }
      });
    }
  }

  /** Sends n events now (round-robin over the workspaces); false when a shard is backed up (try again next tick). */
  send(n) {
    if (this.shards.some((s) => s.child && s.inflight > 4)) return false;
    const per = new Map(); // workspace index -> count
    for (let k = 0; k < n; k++) {
      const i = this.next++ % this.spaces.length;
      per.set(i, (per.get(i) || 0) + 1);
    }
    for (const s of this.shards) {
      const mine = [...per.entries()].filter(([i]) => this.spaces[i].shard === s.i);
      if (!mine.length) continue;
      const ids = mine.map(([i]) => this.spaces[i].id);
      const chs = mine.map(([i]) => this.spaces[i].general);
      const ns = mine.map(([, c]) => c);
      const sql = `EXECUTE produce(${arr(ids)}, ${arr(chs)}, ${arr(ns)});\n`;
      s.inflight++;
      s.child.stdin.write(sql);
    }
    return true;
  }

  /** Waits for every statement sent to be committed. */
  async drain() {
    await waitFor(() => this.shards.every((s) => !s.child || s.inflight === 0), {
      timeoutMs: 30000,
      message: `outbox producer: statements not committed (${this.shards.map((s) => s.err).join(' ')})`,
    });
  }

  async stop() {
    for (const s of this.shards) {
      if (!s.child) continue;
      s.child.stdin.end();
      const code = await s.exited;
      if (code !== 0) throw new Error(`psql on us-east shard ${s.i} exited ${code}: ${s.err}`);
      s.child = null;
    }
  }
}

/**
 * Calls send(n) every tick with the events due at `rate` since start, for
 * `seconds`; a batch refused (back-pressure) is carried over to the next
 * tick. Resolves with {sent, startMs, endMs}.
 */
async function pace({ rate, seconds, tickMs, send }) {
  const startMs = nowMs();
  const endMs = startMs + seconds * 1000;
  let sent = 0;
  for (;;) {
    const t = Math.min(nowMs(), endMs);
    const due = Math.floor(((t - startMs) / 1000) * rate) - sent;
    if (due > 0 && send(due)) sent += due;
    if (t >= endMs) break;
    await sleep(tickMs);
  }
  return { sent, startMs, endMs: nowMs() };
}

/** Sum of the sequence heads of the workspaces at us-east, and their sum of applied_seq at eu-west. */
async function meridianProgress(spaces) {
  const ids = spaces.map((s) => s.id);
  const heads = (await psqlAll(ORIGIN, `SELECT coalesce(sum(seq), 0) FROM workspaces WHERE id = ANY (${arr(ids)}::text[])`)).reduce((a, x) => a + Number(x.trim() || 0), 0);
  const applied = (await psqlAll(REPLICA, `SELECT coalesce(sum(applied_seq), 0) FROM replica_workspaces WHERE workspace_id = ANY (${arr(ids)}::text[])`)).reduce(
    (a, x) => a + Number(x.trim() || 0),
    0,
  );
  return { heads, applied };
}

async function waitReplicaCaughtUp(spaces, what) {
  let last = null;
  await waitFor(
    async () => {
      last = await meridianProgress(spaces);
      return last.applied >= last.heads;
    },
    { timeoutMs: o['drain-timeout'] * 1000, intervalMs: 50, maxIntervalMs: 200, message: `${what}: eu-west did not reach the head (${JSON.stringify(last)})` },
  );
  return last;
}

/** Lags (ms) at eu-west of the events committed at us-east in [fromMs, toMs). */
async function meridianLags(spaces, fromMs, toMs, extra = '') {
  return (await meridianRows(spaces, fromMs, toMs, extra)).map((r) => r.lag);
}

/** The events of meridianLags: {key: "<workspace>/<seq>", lag, appliedMs}. */
async function meridianRows(spaces, fromMs, toMs, extra = '') {
  const ids = spaces.map((s) => s.id);
  const out = await psqlAll(
    REPLICA,
    `SELECT round((extract(epoch FROM applied_at - committed_at) * 1000)::numeric, 3),
            workspace_id || '/' || seq, round((extract(epoch FROM applied_at) * 1000)::numeric, 3) FROM replica_events
      WHERE workspace_id = ANY (${arr(ids)}::text[])
        AND committed_at >= to_timestamp(${fromMs / 1000}) AND committed_at < to_timestamp(${toMs / 1000}) ${extra}`,
  );
  return out.flatMap((s) => rows(s).map((r) => ({ lag: Number(r[0]), key: r[1], appliedMs: Number(r[2]) })));
}

async function runMeridian(ctx, rate) {
  await waitReplicaCaughtUp(ctx.spaces, 'before a run');
  const inFirst = (await streamLastSeq(ctx, IN_STREAM)) + 1;
  const atOrigin = { conn: ctx.natsOrigin, domain: ORIGIN };
  const evFirst = (await streamLastSeq(ctx, EV_STREAM, atOrigin)) + 1;
  const p = new OutboxProducer(ctx.spaces, ctx.text);
  await p.start();
  let res;
  try {
    res = await pace({ rate, seconds: o.warmup + o.duration, tickMs: o.tick, send: (n) => p.send(n) });
    await p.drain();
  } finally {
    await p.stop();
  }
  await waitReplicaCaughtUp(ctx.spaces, `meridian at ${rate}/s`);
  const from = res.startMs + o.warmup * 1000;
  const evs = await meridianRows(ctx.spaces, from, res.endMs);
  const secs = (res.endMs - from) / 1000;
  const out = summarizeLags(
    evs.map((e) => e.lag),
    secs,
  );
  // Where the time goes: IN_eu-west's stored time of each event splits the
  // lag into commit -> stored at eu-west (relay, EV_us-east, the source) and
  // stored -> applied (the applier and its Postgres).
  const inMsgs = await readStream(ctx, IN_STREAM, inFirst, (await streamLastSeq(ctx, IN_STREAM)) - inFirst + 1);
  const stored = new Map();
  for (const m of inMsgs) {
    try {
      const e = JSON.parse(m.data.toString());
      if (e.workspace_id && e.seq && Number.isFinite(e.at)) stored.set(`${e.workspace_id}/${e.seq}`, { storedMs: m.storedMs, at: e.at });
    } catch {
      /* not an event */
    }
  }
  // And EV_us-east's: commit -> published by the relay, then the source's hop.
  const evMsgs = await readStream(ctx, EV_STREAM, evFirst, (await streamLastSeq(ctx, EV_STREAM, atOrigin)) - evFirst + 1, atOrigin);
  const published = new Map();
  for (const m of evMsgs) {
    if (!m.subject.startsWith(`ev.${ORIGIN}.${REPLICA}.`)) continue;
    try {
      const e = JSON.parse(m.data.toString());
      if (e.workspace_id && e.seq) published.set(`${e.workspace_id}/${e.seq}`, m.storedMs);
    } catch {
      /* not an event */
    }
  }
  const toIn = [];
  const toApplied = [];
  const toEv = [];
  const evToIn = [];
  for (const e of evs) {
    const s = stored.get(e.key);
    if (!s) continue;
    toIn.push(s.storedMs - s.at);
    toApplied.push(e.appliedMs - s.storedMs);
    const pub = published.get(e.key);
    if (pub === undefined) continue;
    toEv.push(pub - s.at);
    evToIn.push(s.storedMs - pub);
  }
  const part = (xs) => ({ p50_ms: round(percentile(xs, 50), 3), p99_ms: round(percentile(xs, 99), 3) });
  out.split = {
    events: toIn.length,
    commit_to_stored_in_eu_west: part(toIn),
    stored_to_applied: part(toApplied),
    commit_to_stored_in_ev_us_east: part(toEv),
    ev_us_east_to_in_eu_west: part(evToIn),
  };
  return out;
}

function summarizeLags(lags, secs) {
  return {
    events: lags.length,
    achieved_rate: round(lags.length / secs, 1),
    p50_ms: round(percentile(lags, 50), 3),
    p90_ms: round(percentile(lags, 90), 3),
    p99_ms: round(percentile(lags, 99), 3),
    max_ms: round(percentile(lags, 100), 3),
  };
}

// -------------------------------------------------------------------- NATS side

/**
 * The same topology without Meridian: BENCH_EV in us-east's domain on
 * bench.us-east.>, and BENCH_IN in eu-west's domain sourcing it exactly as
 * IN_eu-west sources EV_us-east (external API prefix $JS.us-east.API,
 * DeliverPrefix "", one filter bench.us-east.eu-west.>).
 */
async function setupNatsStreams(ctx) {
  const us = ctx.natsOrigin;
  const eu = ctx.natsReplica;
  await us.jsApi(ORIGIN, `STREAM.CREATE.${BENCH_EV}`, {
    name: BENCH_EV,
    subjects: [`bench.${ORIGIN}.>`],
    storage: 'file',
    retention: 'limits',
    discard: 'old',
    num_replicas: 1,
    duplicate_window: 120e9,
  });
  await eu.jsApi(REPLICA, `STREAM.CREATE.${BENCH_IN}`, {
    name: BENCH_IN,
    storage: 'file',
    retention: 'limits',
    discard: 'old',
    num_replicas: 1,
    sources: [{ name: BENCH_EV, filter_subject: `bench.${ORIGIN}.${REPLICA}.>`, external: { api: `$JS.${ORIGIN}.API`, deliver: '' } }],
  });
}

async function benchInLastSeq(ctx) {
  return streamLastSeq(ctx, BENCH_IN);
}

/**
 * Publishes n bench events now: like the relay, each once on the local
 * subject and once for eu-west. The payload carries the send time and is
 * padded to the size of Meridian's envelope.
 */
function natsSend(ctx, n) {
  const t = nowMs().toFixed(3);
  for (let k = 0; k < n; k++) {
    const i = ctx.natsNext++;
    const ws = `w${i % o.workspaces}`;
    const body = `${t} ${i} ${ctx.pad}`;
    ctx.natsOrigin.publish(`bench.${ORIGIN}.${ORIGIN}.${ws}.message.created`, body);
    ctx.natsOrigin.publish(`bench.${ORIGIN}.${REPLICA}.${ws}.message.created`, body);
  }
  return true;
}

/**
 * Reads `count` messages of eu-west's `stream` from stream sequence `fromSeq`
 * on, with a push consumer (no acks, flow control), after the load has
 * stopped so that reading costs nothing during the measurement. Returns
 * [{data (Buffer), storedMs (when eu-west stored it), seq}].
 */
async function readStream(ctx, stream, fromSeq, count, { conn = ctx.natsReplica, domain = REPLICA } = {}) {
  const eu = conn;
  const inbox = `bench_read.${process.pid}.${++ctx.readers}`;
  const got = [];
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  if (count <= 0) done();
  const sub = eu.subscribe(inbox, (m) => {
    if (m.status === 100) {
      if (m.reply) eu.publish(m.reply, ''); // flow control
      return;
    }
    const md = jsMetadata(m.reply);
    if (!md) return;
    got.push({ subject: m.subject, data: m.data, storedMs: Number(md.timestampNs / 1000n) / 1000, seq: md.streamSeq });
    if (got.length >= count) done();
  });
  const ci = await eu.jsApi(domain, `CONSUMER.CREATE.${stream}`, {
    stream_name: stream,
    config: {
      deliver_subject: inbox,
      deliver_policy: 'by_start_sequence',
      opt_start_seq: fromSeq,
      ack_policy: 'none',
      replay_policy: 'instant',
      flow_control: true,
      idle_heartbeat: 5e9,
      inactive_threshold: 30e9,
    },
  });
  let timer;
  try {
    await Promise.race([
      finished,
      new Promise((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`reading ${stream}: ${got.length} of ${count} messages after 60 s`)), 60000);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    sub.unsubscribe();
    await eu.jsApi(domain, `CONSUMER.DELETE.${stream}.${ci.name}`).catch(() => {});
  }
  return got;
}

/** BENCH_IN messages: {sendMs, storedMs}. */
async function readBenchIn(ctx, fromSeq, count) {
  const msgs = await readStream(ctx, BENCH_IN, fromSeq, count);
  return msgs.map((m) => ({ sendMs: Number(m.data.toString('latin1', 0, m.data.indexOf(32))), storedMs: m.storedMs }));
}

async function streamLastSeq(ctx, stream, { conn = ctx.natsReplica, domain = REPLICA } = {}) {
  const si = await conn.jsApi(domain, `STREAM.INFO.${stream}`);
  return si.state.last_seq;
}

async function waitBenchIn(ctx, target, what) {
  let last = null;
  await waitFor(
    async () => {
      last = await benchInLastSeq(ctx);
      return last >= target;
    },
    { timeoutMs: o['drain-timeout'] * 1000, intervalMs: 50, maxIntervalMs: 200, message: `${what}: ${BENCH_IN} at ${last}, want ${target}` },
  );
}

async function runNats(ctx, rate) {
  const first = (await benchInLastSeq(ctx)) + 1;
  const res = await pace({ rate, seconds: o.warmup + o.duration, tickMs: o.tick, send: (n) => natsSend(ctx, n) });
  await ctx.natsOrigin.flush();
  await waitBenchIn(ctx, first + res.sent - 1, `nats at ${rate}/s`);
  const msgs = await readBenchIn(ctx, first, res.sent);
  const from = res.startMs + o.warmup * 1000;
  const lags = msgs.filter((m) => m.sendMs >= from && m.sendMs < res.endMs).map((m) => m.storedMs - m.sendMs);
  return summarizeLags(lags, (res.endMs - from) / 1000);
}

// -------------------------------------------------------------------- catch-up

async function cutLink() {
  if (o['cut-method'] === 'proxy') await W.cut(REPLICA);
  else await W.hub.stop();
}

async function healLink() {
  if (o['cut-method'] === 'proxy') await W.heal(REPLICA);
  else await W.hub.start();
}

/**
 * Cuts eu-west off, produces at --cut-rate for --cut seconds on both sides
 * at once (Meridian's outbox and the bench stream), stops producing, heals
 * and times how fast each replica reaches the head.
 */
async function catchUp(ctx) {
  await waitReplicaCaughtUp(ctx.spaces, 'before the cut');
  const natsFirst = (await benchInLastSeq(ctx)) + 1;
  const before = await meridianProgress(ctx.spaces);
  log(`cutting eu-west off (${o['cut-method']}) for ${o.cut} s, producing ${o['cut-rate']}/s on both sides`);
  await cutLink();
  const cutAt = nowMs();
  const p = new OutboxProducer(ctx.spaces, ctx.text);
  await p.start();
  let m;
  let n;
  try {
    [m, n] = await Promise.all([
      pace({ rate: o['cut-rate'], seconds: o.cut, tickMs: o.tick, send: (k) => p.send(k) }),
      pace({ rate: o['cut-rate'], seconds: o.cut, tickMs: o.tick, send: (k) => natsSend(ctx, k) }),
    ]);
    await p.drain();
  } finally {
    await p.stop();
  }
  await ctx.natsOrigin.flush();
  const mid = await meridianProgress(ctx.spaces);
  const natsMid = await benchInLastSeq(ctx).catch(() => null);
  const backlog = mid.heads - mid.applied;
  log(`healing: meridian backlog ${backlog} events (applied during the cut: ${mid.applied - before.applied}); nats backlog ${n.sent}`);
  await healLink();
  const healAt = nowMs();
  // Both replicas are polled together; each one's time is taken when it gets there.
  let meridianDoneAt = null;
  let natsDoneAt = null;
  const natsTarget = natsFirst + n.sent - 1;
  const deadline = healAt + o['drain-timeout'] * 1000;
  while ((meridianDoneAt === null || natsDoneAt === null) && nowMs() < deadline) {
    const [pm, pn] = await Promise.all([
      meridianDoneAt === null ? meridianProgress(ctx.spaces) : null,
      natsDoneAt === null ? benchInLastSeq(ctx).catch(() => null) : null,
    ]);
    if (pm && pm.applied >= mid.heads) meridianDoneAt = nowMs();
    if (pn !== null && pn >= natsTarget) natsDoneAt = nowMs();
    await sleep(100);
  }
  // Exact figures from the stores: when eu-west applied (Postgres) and stored (JetStream) the backlog.
  const ids = ctx.spaces.map((s) => s.id);
  const applied = (
    await psqlAll(
      REPLICA,
      `SELECT count(*), extract(epoch FROM min(applied_at)) * 1000, extract(epoch FROM max(applied_at)) * 1000 FROM replica_events
        WHERE workspace_id = ANY (${arr(ids)}::text[]) AND committed_at >= to_timestamp(${cutAt / 1000})`,
    )
  )
    .flatMap(rows)
    .filter((r) => Number(r[0]) > 0);
  const mCount = applied.reduce((a, r) => a + Number(r[0]), 0);
  const mFirst = Math.min(...applied.map((r) => Number(r[1])));
  const mLast = Math.max(...applied.map((r) => Number(r[2])));
  const meridian = {
    backlog_events: backlog,
    applied_events: mCount,
    seconds_to_head_polled: meridianDoneAt === null ? null : round((meridianDoneAt - healAt) / 1000, 2),
    first_applied_after_heal_s: mCount ? round((mFirst - healAt) / 1000, 2) : null,
    last_applied_after_heal_s: mCount ? round((mLast - healAt) / 1000, 2) : null,
    catchup_rate: mCount && mLast > healAt ? round(mCount / ((mLast - healAt) / 1000), 0) : null,
    drain_rate: mCount && mLast > mFirst ? round(mCount / ((mLast - mFirst) / 1000), 0) : null,
  };
  let nats = { backlog_events: n.sent, stored_before_heal: natsMid === null ? null : Math.max(0, natsMid - natsFirst + 1) };
  if (natsDoneAt !== null) {
    const msgs = await readBenchIn(ctx, natsFirst, n.sent);
    const first = Math.min(...msgs.map((x) => x.storedMs));
    const last = Math.max(...msgs.map((x) => x.storedMs));
    Object.assign(nats, {
      stored_events: msgs.length,
      seconds_to_head_polled: round((natsDoneAt - healAt) / 1000, 2),
      first_stored_after_heal_s: round((first - healAt) / 1000, 2),
      last_stored_after_heal_s: round((last - healAt) / 1000, 2),
      catchup_rate: last > healAt ? round(msgs.length / ((last - healAt) / 1000), 0) : null,
      drain_rate: last > first ? round(msgs.length / ((last - first) / 1000), 0) : null,
    });
  } else {
    nats.error = `${BENCH_IN} did not reach the head within ${o['drain-timeout']} s`;
  }
  await W.waitLinked().catch((e) => log(`after healing: ${e.message}`));
  return {
    cut_seconds: o.cut,
    cut_method: o['cut-method'],
    rate: o['cut-rate'],
    produced_during_cut: { meridian: m.sent, nats: n.sent },
    meridian,
    nats,
  };
}

// ------------------------------------------------------------------------ main

async function setupWorkspaces(ctx) {
  const s = await api(ORIGIN, 'POST', '/v1/auth/signup', { email: `bench.${process.pid}@example.com`, password: 'bench password', display_name: 'Bench' });
  const token = s.access_token;
  const spaces = [];
  for (let i = 0; i < o.workspaces; i++) {
    const w = await api(ORIGIN, 'POST', '/v1/workspaces', { name: `Repl ${i}`, slug: `repl-${process.pid}-${i}`, allowed_regions: [REPLICA] }, token);
    const chans = await api(ORIGIN, 'GET', `/v1/workspaces/${w.workspace.id}/channels`, undefined, token);
    spaces.push({ id: w.workspace.id, general: chans.channels.find((c) => c.name === 'general').id, shard: -1 });
  }
  const where = await psqlAll(ORIGIN, `SELECT id FROM workspaces WHERE id = ANY (${arr(spaces.map((x) => x.id))}::text[])`);
  where.forEach((out, shard) => {
    for (const [id] of rows(out)) spaces.find((x) => x.id === id).shard = shard;
  });
  if (spaces.some((x) => x.shard < 0)) throw new Error('a workspace was found on no us-east shard');
  ctx.token = token;
  ctx.spaces = spaces;
  log(`workspaces per us-east shard: ${R(ORIGIN).postgres.map((_, i) => spaces.filter((x) => x.shard === i).length).join(', ')}`);
}

/** A few messages through the REST API, then their lag at eu-west: the whole path works end to end. */
async function apiPosts(ctx) {
  const ws = ctx.spaces[0];
  const t0 = nowMs();
  for (let i = 0; i < o['api-posts']; i++) {
    await api(ORIGIN, 'POST', `/v1/workspaces/${ws.id}/channels/${ws.general}/messages`, { text: `end-to-end ${i}` }, ctx.token);
  }
  await waitReplicaCaughtUp(ctx.spaces, 'API posts');
  const lags = await meridianLags([ws], t0 - 1000, nowMs(), "AND payload->>'text' LIKE 'end-to-end %'");
  const bodies = await psqlAll(
    REPLICA,
    `SELECT count(*) FROM replica_events WHERE workspace_id = ${sq(ws.id)} AND type = 'message.created' AND payload->>'text' LIKE 'end-to-end %'`,
  );
  return {
    posted: o['api-posts'],
    replicated: bodies.reduce((a, x) => a + Number(x.trim()), 0),
    lag_ms: lags.sort((a, b) => a - b).map((x) => round(x, 2)),
  };
}

async function main() {
  ensureBuilt('meridian-region', log);
  const info = buildInfo();
  log(`starting a 2-region world (${ORIGIN} -> ${REPLICA}) from ${info.dir}`);
  W = await startWorlds({
    regions: [ORIGIN, REPLICA],
    shards: 2,
    leafProxy: o['cut-method'] === 'proxy',
    config: { log: { level: 'warn', access: false }, limits: { write_rate_per_s: 1000000, write_burst: 1000000 } },
  });
  const ctx = { natsNext: 0, readers: 0, text: 'x'.repeat(o['text-bytes']) };
  try {
    ctx.natsOrigin = await benchNats(R(ORIGIN).nats.port, { name: 'origin' });
    ctx.natsReplica = await benchNats(R(REPLICA).nats.port, { name: 'replica' });
    await setupWorkspaces(ctx);
    const apiCheck = await apiPosts(ctx);
    log(`API posts: ${apiCheck.replicated}/${apiCheck.posted} replicated, lag ${apiCheck.lag_ms.join(', ')} ms`);
    // Pad the bench payload to the size of the envelope Meridian publishes for one of our events.
    ctx.pad = '';
    {
      const p = new OutboxProducer(ctx.spaces, ctx.text);
      await p.start();
      p.send(1);
      await p.drain();
      await p.stop();
      await waitReplicaCaughtUp(ctx.spaces, 'probe event');
      const sz = await psqlAll(
        REPLICA,
        `SELECT max(length(jsonb_build_object('id', event_id, 'region', home_region, 'workspace_id', workspace_id, 'seq', seq, 'type', type, 'channel_id', channel_id, 'payload', payload, 'at', 0)::text)) FROM replica_events WHERE payload->>'author_id' = 'bench'`,
      );
      ctx.envelopeBytes = Math.max(...sz.map((x) => Number(x.trim()) || 0)) + 12;
      ctx.pad = 'p'.repeat(Math.max(0, ctx.envelopeBytes - 40));
    }
    await setupNatsStreams(ctx);
    log(`bench streams ready; envelope ~${ctx.envelopeBytes} bytes`);

    const perRate = [];
    for (const rate of RATES) {
      log(`rate ${rate}/s: ${o.rounds} round(s) of ${o.warmup}+${o.duration} s per side`);
      const runs = await interleave({
        rounds: o.rounds,
        contenders: [
          { name: 'meridian', run: () => runMeridian(ctx, rate) },
          { name: 'nats', run: () => runNats(ctx, rate) },
        ],
        onRun: (name, r, res) =>
          log(
            `  ${name} round ${r}: ${res.events} events (${res.achieved_rate}/s) p50 ${res.p50_ms} ms p99 ${res.p99_ms} ms max ${res.max_ms} ms` +
              (res.split
                ? ` (p50/p99: commit->EV_us-east ${res.split.commit_to_stored_in_ev_us_east.p50_ms}/${res.split.commit_to_stored_in_ev_us_east.p99_ms},` +
                  ` ->IN_eu-west ${res.split.ev_us_east_to_in_eu_west.p50_ms}/${res.split.ev_us_east_to_in_eu_west.p99_ms},` +
                  ` ->applied ${res.split.stored_to_applied.p50_ms}/${res.split.stored_to_applied.p99_ms})`
                : ''),
          ),
      });
      const fields = {
        p50_ms: (x) => x.p50_ms,
        p90_ms: (x) => x.p90_ms,
        p99_ms: (x) => x.p99_ms,
        max_ms: (x) => x.max_ms,
        events: (x) => x.events,
        achieved_rate: (x) => x.achieved_rate,
      };
      const meridian = medians(runs.meridian, {
        ...fields,
        commit_to_in_p50_ms: (x) => x.split.commit_to_stored_in_eu_west.p50_ms,
        commit_to_in_p99_ms: (x) => x.split.commit_to_stored_in_eu_west.p99_ms,
        in_to_applied_p50_ms: (x) => x.split.stored_to_applied.p50_ms,
        in_to_applied_p99_ms: (x) => x.split.stored_to_applied.p99_ms,
        commit_to_ev_p50_ms: (x) => x.split.commit_to_stored_in_ev_us_east.p50_ms,
        commit_to_ev_p99_ms: (x) => x.split.commit_to_stored_in_ev_us_east.p99_ms,
        ev_to_in_p50_ms: (x) => x.split.ev_us_east_to_in_eu_west.p50_ms,
        ev_to_in_p99_ms: (x) => x.split.ev_us_east_to_in_eu_west.p99_ms,
      });
      const nats = medians(runs.nats, fields);
      const limit = 2 * nats.p99_ms + 5;
      perRate.push({
        target_rate: rate,
        meridian,
        nats,
        ratio_p99: nats.p99_ms ? round(meridian.p99_ms / nats.p99_ms, 2) : null,
        ratio_p50: nats.p50_ms ? round(meridian.p50_ms / nats.p50_ms, 2) : null,
        target: { rule: 'meridian p99 <= 2 x nats p99 + 5 ms', limit_ms: round(limit, 3), met: meridian.p99_ms <= limit },
        runs,
      });
    }

    let catchup = null;
    if (o.cut > 0) catchup = await catchUp(ctx);

    const report = {
      bench: 'replication',
      what: 'replication lag, commit of an outbox row at us-east -> row applied in eu-west Postgres, next to JetStream publish -> stored in the sourcing stream of the same topology',
      topology: {
        regions: [ORIGIN, REPLICA],
        direction: `${ORIGIN} -> ${REPLICA}`,
        hub: 'one nats-server without JetStream; each region a leafnode with its own JetStream domain',
        shards_per_region: 2,
        workers: { [ORIGIN]: 2, [REPLICA]: 1 },
        load_enters_at: 'the outbox (rows inserted straight into us-east shards), not the HTTP API',
      },
      options: { ...o, rates: RATES },
      envelope_bytes: ctx.envelopeBytes,
      api_posts: apiCheck,
      rates: perRate,
      catchup,
      machine: machineInfo(),
      nats_server: versionOf('nats-server', ['--version']),
      build: info,
      git: gitInfo(),
    };
    const file = writeResult('replication', report, o.out || undefined);
    if (o.out) writeResult('replication', report);
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    log(`report written to ${file}`);
    const missed = perRate.filter((r) => !r.target.met);
    if (o.check && missed.length) {
      log(`target missed at ${missed.map((r) => r.target_rate).join(', ')}/s`);
      process.exitCode = 1;
    }
  } finally {
    ctx.natsOrigin?.close();
    ctx.natsReplica?.close();
    await W.stop();
  }
}

main().catch((e) => {
  log(`failed: ${e.stack || e.message}`);
  process.exitCode = 1;
  W?.stop().catch(() => {});
});
