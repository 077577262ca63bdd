// nats.mjs: a small NATS text-protocol client for benchmarks. Unlike the
// test harness's client (tests/lib/harness.mjs natsConnect), it coalesces
// every publish made in one event-loop turn into one socket write, so that a
// load generator publishing 10,000 messages/s costs a few hundred writes/s,
// and hands messages to a callback instead of keeping them all.
//
//   const c = await benchNats(port);
//   c.publish('bench.x', payload);                  // buffered, written at the end of this turn
//   const sub = c.subscribe('inbox.1', (m) => ...); // m: {subject, reply, data (Buffer), headers, status}
//   const reply = await c.request('$JS.API.INFO', '{}', { timeoutMs: 2000 });
//   await c.jsApi('eu-west', 'STREAM.INFO.BENCH_IN');  // parsed JSON; throws on a JetStream error
//   await c.flush(); c.close();

import net from 'node:net';

/**
 * Connects to nats-server on host:port and resolves once the server has
 * answered the first PING (connected and CONNECT accepted).
 */
export async function benchNats(port, { host = '127.0.0.1', name = 'bench' } = {}) {
  const sock = net.connect({ port, host });
  sock.setNoDelay(true);
  let inbuf = Buffer.alloc(0);
  let out = [];
  let outScheduled = false;
  let sid = 0;
  let closed = null;
  const subs = new Map();
  const pongs = [];

  const flushOut = () => {
    outScheduled = false;
    if (!out.length || closed) return;
    const chunk = out.length === 1 ? out[0] : Buffer.concat(out);
    out = [];
    sock.write(chunk);
  };
  const send = (buf) => {
    out.push(buf);
    if (!outScheduled) {
      outScheduled = true;
      setImmediate(flushOut);
    }
  };
  const fail = (e) => {
    if (closed) return;
    closed = e;
    for (const p of pongs.splice(0)) p.reject(e);
    for (const s of subs.values()) s.onClose?.(e);
  };
  sock.on('error', fail);
  sock.on('close', () => fail(new Error(`nats ${host}:${port}: connection closed`)));
  sock.on('data', (d) => {
    inbuf = inbuf.length ? Buffer.concat([inbuf, d]) : d;
    let off = 0;
    for (;;) {
      const eol = inbuf.indexOf('\r\n', off);
      if (eol < 0) break;
      const line = inbuf.toString('latin1', off, eol);
      if (line.startsWith('MSG ') || line.startsWith('HMSG ')) {
        // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <hdr size> <total size>
        const parts = line.split(' ');
        const hmsg = parts[0] === 'HMSG';
        const total = Number(parts[parts.length - 1]);
        const hlen = hmsg ? Number(parts[parts.length - 2]) : 0;
        const nfixed = hmsg ? 5 : 4;
        const reply = parts.length > nfixed ? parts[3] : null;
        if (inbuf.length < eol + 2 + total + 2) break;
        const payload = inbuf.subarray(eol + 2, eol + 2 + total);
        off = eol + 2 + total + 2;
        let headers = null;
        let status = null;
        if (hmsg) {
          headers = {};
          const lines = payload.subarray(0, hlen).toString().split('\r\n');
          status = Number(/^NATS\/1\.0 (\d+)/.exec(lines[0])?.[1]) || null;
          for (const h of lines.slice(1)) {
            const i = h.indexOf(':');
            if (i > 0) headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
          }
        }
        subs.get(parts[2])?.onMessage({ subject: parts[1], reply, data: payload.subarray(hlen), headers, status });
        continue;
      }
      off = eol + 2;
      if (line.startsWith('PING')) send(Buffer.from('PONG\r\n'));
      else if (line.startsWith('PONG')) pongs.shift()?.resolve();
      else if (line.startsWith('-ERR')) fail(new Error(`nats ${host}:${port}: ${line}`));
    }
    inbuf = off >= inbuf.length ? Buffer.alloc(0) : inbuf.subarray(off);
  });

  const c = {
    /** Buffers one publish; everything buffered goes out in one write at the end of this turn. */
    publish(subject, data = '', reply = '') {
      const body = typeof data === 'string' ? Buffer.from(data) : data;
      send(Buffer.concat([Buffer.from(`PUB ${subject}${reply ? ` ${reply}` : ''} ${body.length}\r\n`), body, Buffer.from('\r\n')]));
    },
    /** Subscribes; onMessage({subject, reply, data, headers, status}) for each message. */
    subscribe(subject, onMessage, { onClose } = {}) {
      const id = String(++sid);
      subs.set(id, { onMessage, onClose });
      send(Buffer.from(`SUB ${subject} ${id}\r\n`));
      return {
        unsubscribe: () => {
          subs.delete(id);
          if (!closed) send(Buffer.from(`UNSUB ${id}\r\n`));
        },
      };
    },
    /** Resolves once the server has processed everything sent before. */
    flush() {
      if (closed) return Promise.reject(closed);
      return new Promise((resolve, reject) => {
        pongs.push({ resolve, reject });
        send(Buffer.from('PING\r\n'));
      });
    },
    /** One request/reply; rejects on timeout or "no responders" (503). */
    request(subject, data = '', { timeoutMs = 2000 } = {}) {
      if (closed) return Promise.reject(closed);
      const inbox = `_INBOX.bench.${process.pid}.${name}.${sid + 1}`;
      return new Promise((resolve, reject) => {
        let sub = null;
        const timer = setTimeout(() => {
          sub.unsubscribe();
          reject(new Error(`nats request ${subject}: no answer within ${timeoutMs} ms`));
        }, timeoutMs);
        sub = c.subscribe(
          inbox,
          (m) => {
            clearTimeout(timer);
            sub.unsubscribe();
            if (m.status === 503) reject(new Error(`nats request ${subject}: no responders`));
            else resolve(m);
          },
          { onClose: (e) => (clearTimeout(timer), reject(e)) },
        );
        c.publish(subject, data, inbox);
      });
    },
    /**
     * A JetStream API call in `domain` ($JS.<domain>.API.<api>): resolves with
     * the parsed answer; throws with the server's description on an error.
     */
    async jsApi(domain, api, body = '', { timeoutMs = 5000 } = {}) {
      const m = await c.request(`$JS.${domain}.API.${api}`, typeof body === 'string' ? body : JSON.stringify(body), { timeoutMs });
      const j = JSON.parse(m.data.toString());
      if (j.error) throw new Error(`JetStream ${domain} ${api}: ${j.error.code} ${j.error.err_code ?? ''} ${j.error.description}`);
      return j;
    },
    close() {
      flushOut();
      closed = closed || new Error('closed');
      sock.end();
      sock.destroy();
    },
  };
  send(Buffer.from(`CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"name":"${name}"}\r\nPING\r\n`));
  await new Promise((resolve, reject) => pongs.push({ resolve, reject }));
  return c;
}

/**
 * The JetStream metadata in a delivered message's ack reply subject:
 * {stream, consumer, delivered, streamSeq, consumerSeq, timestampNs (BigInt,
 * when the stream stored it), pending}. Understands both the v1 form
 * ($JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>) and
 * the v2 form with domain and account hash. Null when reply is not one.
 */
export function jsMetadata(reply) {
  if (!reply || !reply.startsWith('$JS.ACK.')) return null;
  const t = reply.split('.');
  let i;
  if (t.length === 9) i = 2;
  else if (t.length >= 11) i = 4; // $JS.ACK.<domain>.<acc hash>.<stream>...
  else return null;
  return {
    stream: t[i],
    consumer: t[i + 1],
    delivered: Number(t[i + 2]),
    streamSeq: Number(t[i + 3]),
    consumerSeq: Number(t[i + 4]),
    timestampNs: BigInt(t[i + 5]),
    pending: Number(t[i + 6]),
  };
}
