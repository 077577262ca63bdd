// WebSocket (RFC 6455) conformance of meridian-region's server side, through
// the /debug/ws-echo endpoint, with the third-party `ws` client and with raw
// sockets for what `ws` refuses to send (invalid UTF-8, unmasked frames).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import net from 'node:net';
import { createRequire } from 'node:module';

import { startWorld } from '../lib/harness.mjs';

const require = createRequire(import.meta.url);
const WebSocket = require('ws');

const MAX_FRAME = 65536;
const MAX_MESSAGE = 262144;
const PING_MS = 500;
const IDLE_MS = 1500;
const MAX_QUEUED = 65536;
const PATH = '/debug/ws-echo';

let w;
let url;

before(async () => {
  w = await startWorld({
    config: {
      debug: { endpoints: true },
      websocket: {
        max_frame_bytes: MAX_FRAME,
        max_message_bytes: MAX_MESSAGE,
        ping_interval_ms: PING_MS,
        idle_timeout_ms: IDLE_MS,
        max_queued_bytes: MAX_QUEUED,
      },
    },
  });
  url = w.api.replace(/^http/, 'ws') + PATH;
});

after(async () => {
  if (w) await w.stop();
});

// ------------------------------------------------------------------ helpers

/** Rejects after ms with a message naming what we waited for. */
function within(ms, what, promise) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

async function open(opts = {}, protocols = undefined) {
  const ws = protocols ? new WebSocket(url, protocols, opts) : new WebSocket(url, opts);
  await within(5000, 'open', new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  }));
  return ws;
}

function nextMessage(ws) {
  return within(5000, 'message', new Promise((resolve, reject) => {
    ws.once('message', (data, isBinary) => resolve({ data, isBinary }));
    ws.once('close', (code) => reject(new Error(`closed with ${code} before a message`)));
  }));
}

function closed(ws) {
  return within(5000, 'close', new Promise((resolve) => {
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  }));
}

/** A client frame: masked unless mask === false. */
function frame(opcode, payload, { fin = true, mask = true, rsv = 0 } = {}) {
  const body = Buffer.from(payload);
  const len = body.length;
  let head;
  if (len < 126) {
    head = Buffer.alloc(2);
    head[1] = len;
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  head[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode;
  if (!mask) return Buffer.concat([head, body]);
  head[1] |= 0x80;
  const key = crypto.randomBytes(4);
  const masked = Buffer.alloc(len);
  for (let i = 0; i < len; i++) masked[i] = body[i] ^ key[i & 3];
  return Buffer.concat([head, key, masked]);
}

/**
 * A raw TCP client: does the handshake itself, then parses server frames
 * (which must be unmasked). frames: [{fin, opcode, payload}], ended: resolves
 * when the server closes TCP.
 */
async function rawOpen({ early } = {}) {
  const sock = net.connect(w.port, '127.0.0.1');
  await within(5000, 'TCP connect', new Promise((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  }));
  const key = crypto.randomBytes(16).toString('base64');
  sock.write(
    `GET ${PATH} HTTP/1.1\r\nHost: 127.0.0.1:${w.port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n` +
      (early ? early.toString('latin1') : ''),
    'latin1',
  );
  const raw = { sock, frames: [], buf: Buffer.alloc(0), head: null, waiters: [] };
  raw.ended = new Promise((resolve) => {
    sock.on('close', resolve);
  });
  sock.on('error', () => {});
  sock.on('data', (d) => {
    raw.buf = Buffer.concat([raw.buf, d]);
    if (!raw.head) {
      const end = raw.buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      raw.head = raw.buf.subarray(0, end).toString('latin1');
      raw.buf = raw.buf.subarray(end + 4);
    }
    for (;;) {
      if (raw.buf.length < 2) break;
      const b0 = raw.buf[0];
      const b1 = raw.buf[1];
      assert.equal(b1 & 0x80, 0, 'server frames must not be masked');
      let len = b1 & 0x7f;
      let off = 2;
      if (len === 126) {
        if (raw.buf.length < 4) break;
        len = raw.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (raw.buf.length < 10) break;
        len = Number(raw.buf.readBigUInt64BE(2));
        off = 10;
      }
      if (raw.buf.length < off + len) break;
      raw.frames.push({ fin: !!(b0 & 0x80), opcode: b0 & 0x0f, payload: raw.buf.subarray(off, off + len) });
      raw.buf = raw.buf.subarray(off + len);
    }
    for (const wt of raw.waiters.splice(0)) wt();
  });
  await within(5000, '101 response', new Promise((resolve) => {
    const check = () => (raw.head ? resolve() : raw.waiters.push(check));
    check();
  }));
  assert.match(raw.head, /^HTTP\/1\.1 101 /);
  const want = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  assert.match(raw.head, new RegExp(`\r\nsec-websocket-accept: ${want.replace(/[+/=]/g, '\\$&')}(\r\n|$)`, 'i'));
  return raw;
}

/** Waits for the server's close frame, then for TCP to end; returns {code, reason}. */
async function rawClose(raw) {
  await within(5000, 'server close', raw.ended);
  const close = raw.frames.find((f) => f.opcode === 0x8);
  assert.ok(close, `no close frame; got opcodes ${raw.frames.map((f) => f.opcode)}`);
  return { code: close.payload.readUInt16BE(0), reason: close.payload.subarray(2).toString() };
}

/** Sends a raw HTTP request (no WebSocket library) and returns {status, headers, body}. */
function rawRequest(headers) {
  return within(5000, 'HTTP response', new Promise((resolve, reject) => {
    const sock = net.connect(w.port, '127.0.0.1');
    let data = Buffer.alloc(0);
    sock.on('error', reject);
    sock.on('data', (d) => {
      data = Buffer.concat([data, d]);
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = data.subarray(0, end).toString('latin1');
      const m = /content-length:\s*(\d+)/i.exec(head);
      const blen = m ? Number(m[1]) : 0;
      if (data.length < end + 4 + blen) return;
      const [statusLine, ...lines] = head.split('\r\n');
      const hdrs = {};
      for (const l of lines) {
        const i = l.indexOf(':');
        hdrs[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      sock.destroy();
      resolve({ status: Number(statusLine.split(' ')[1]), headers: hdrs, body: data.subarray(end + 4, end + 4 + blen).toString() });
    });
    sock.write(`GET ${PATH} HTTP/1.1\r\n${headers.map((h) => h + '\r\n').join('')}\r\n`);
  }));
}

// -------------------------------------------------------------------- tests

test('text and binary messages are echoed with their opcode', async () => {
  const ws = await open();
  ws.send('héllo wörld ✓');
  let m = await nextMessage(ws);
  assert.equal(m.isBinary, false);
  assert.equal(m.data.toString(), 'héllo wörld ✓');

  const bin = crypto.randomBytes(1000);
  ws.send(bin);
  m = await nextMessage(ws);
  assert.equal(m.isBinary, true);
  assert.deepEqual(Buffer.from(m.data), bin);

  ws.send('');
  m = await nextMessage(ws);
  assert.equal(m.isBinary, false);
  assert.equal(m.data.length, 0);

  // 16-bit and 64-bit length forms, up to the frame limit.
  for (const n of [126, 65535, MAX_FRAME]) {
    const b = crypto.randomBytes(n);
    ws.send(b);
    m = await nextMessage(ws);
    assert.deepEqual(Buffer.from(m.data), b, `binary of ${n} bytes`);
  }
  ws.close(1000);
  assert.equal((await closed(ws)).code, 1000);
});

test('fragmented messages are reassembled', async () => {
  const ws = await open();
  ws.send('ab', { fin: false });
  ws.send('cd', { fin: false });
  ws.ping('x'); // control frames may arrive inside a fragmented message
  ws.send('é', { fin: true });
  let m = await nextMessage(ws);
  assert.equal(m.isBinary, false);
  assert.equal(m.data.toString(), 'abcdé');

  // Over the frame limit in total, under the message limit: 4 x 60000 bytes.
  const parts = Array.from({ length: 4 }, () => crypto.randomBytes(60000));
  parts.forEach((p, i) => ws.send(p, { binary: true, fin: i === parts.length - 1 }));
  m = await nextMessage(ws);
  assert.equal(m.isBinary, true);
  assert.deepEqual(Buffer.from(m.data), Buffer.concat(parts));
  ws.close(1000);
  await closed(ws);
});

test('a UTF-8 character split across fragments is accepted', async () => {
  const raw = await rawOpen();
  const euro = Buffer.from('€'); // e2 82 ac
  raw.sock.write(Buffer.concat([
    frame(0x1, euro.subarray(0, 1), { fin: false }),
    frame(0x0, euro.subarray(1, 2), { fin: false }),
    frame(0x0, euro.subarray(2), { fin: true }),
    frame(0x8, Buffer.from([0x03, 0xe8])),
  ]));
  const { code } = await rawClose(raw);
  assert.equal(code, 1000);
  const text = raw.frames.find((f) => f.opcode === 0x1);
  assert.ok(text, 'echo of the fragmented text');
  assert.equal(text.payload.toString(), '€');
});

test('the endpoint picks its subprotocol among those offered', async () => {
  const ws = await open({}, ['x-unknown', 'meridian.echo']);
  assert.equal(ws.protocol, 'meridian.echo');
  ws.send('p');
  assert.equal((await nextMessage(ws)).data.toString(), 'p');
  ws.close(1000);
  await closed(ws);
});

test('frames sent in the same packet as the handshake are not lost', async () => {
  const raw = await rawOpen({ early: Buffer.concat([frame(0x1, 'early bird'), frame(0x8, Buffer.from([0x03, 0xe8]))]) });
  assert.equal((await rawClose(raw)).code, 1000);
  const text = raw.frames.find((f) => f.opcode === 0x1);
  assert.ok(text, 'echo of the early frame');
  assert.equal(text.payload.toString(), 'early bird');
});

test('ping is answered with a pong carrying the same payload', async () => {
  const ws = await open();
  const pong = within(5000, 'pong', new Promise((resolve) => ws.once('pong', resolve)));
  ws.ping(Buffer.from('are you there'));
  assert.equal((await pong).toString(), 'are you there');
  // An unsolicited pong is ignored: the connection keeps working.
  ws.pong(Buffer.from('unsolicited'));
  ws.send('still here');
  assert.equal((await nextMessage(ws)).data.toString(), 'still here');
  ws.close(1000);
  await closed(ws);
});

test('clean close: the server echoes the code and closes TCP', async () => {
  const ws = await open();
  ws.close(1000, 'bye');
  const { code } = await closed(ws);
  assert.equal(code, 1000);

  const raw = await rawOpen();
  raw.sock.write(frame(0x8, Buffer.concat([Buffer.from([0x0f, 0xa0]), Buffer.from('app code 4000')])));
  assert.equal((await rawClose(raw)).code, 4000);

  const raw2 = await rawOpen();
  raw2.sock.write(frame(0x8, Buffer.alloc(0))); // no code: answered with 1000
  assert.equal((await rawClose(raw2)).code, 1000);
});

test('a frame over max_frame_bytes closes with 1009', async () => {
  const ws = await open();
  ws.on('error', () => {});
  ws.send(Buffer.alloc(MAX_FRAME + 1));
  assert.equal((await closed(ws)).code, 1009);
});

test('a message over max_message_bytes closes with 1009', async () => {
  const ws = await open();
  ws.on('error', () => {});
  for (let i = 0; i < 5; i++) ws.send(Buffer.alloc(60000), { binary: true, fin: i === 4 });
  assert.equal((await closed(ws)).code, 1009);
});

test('invalid UTF-8 text closes with 1007', async () => {
  const raw = await rawOpen();
  raw.sock.write(frame(0x1, Buffer.from([0x68, 0x69, 0xff])));
  assert.equal((await rawClose(raw)).code, 1007);

  // Fail fast: the error comes before the message's final fragment is sent.
  const raw2 = await rawOpen();
  raw2.sock.write(frame(0x1, Buffer.from('κόσμε'), { fin: false }));
  raw2.sock.write(frame(0x0, Buffer.from([0xf4, 0x90, 0x80, 0x80]), { fin: false }));
  assert.equal((await rawClose(raw2)).code, 1007);

  // A surrogate (U+D800) encoded in UTF-8.
  const raw3 = await rawOpen();
  raw3.sock.write(frame(0x1, Buffer.from([0xed, 0xa0, 0x80])));
  assert.equal((await rawClose(raw3)).code, 1007);
});

test('protocol violations close with 1002', async () => {
  const cases = [
    ['unmasked client frame', frame(0x1, 'hi', { mask: false })],
    ['reserved bit set', frame(0x1, 'hi', { rsv: 4 })],
    ['unknown opcode', frame(0x3, '')],
    ['fragmented ping', frame(0x9, '', { fin: false })],
    ['continuation without a message', frame(0x0, 'x')],
    ['new message inside a fragmented one', Buffer.concat([frame(0x1, 'a', { fin: false }), frame(0x1, 'b')])],
    ['close with a 1-byte payload', frame(0x8, Buffer.from([0x03]))],
    ['close with a reserved code', frame(0x8, Buffer.from([0x03, 0xed]))],
  ];
  for (const [name, bytes] of cases) {
    const raw = await rawOpen();
    raw.sock.write(bytes);
    assert.equal((await rawClose(raw)).code, 1002, name);
  }
});

test('bad handshakes are refused', async () => {
  const base = [`Host: 127.0.0.1:${w.port}`, 'Upgrade: websocket', 'Connection: Upgrade'];
  const key = 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==';

  let r = await rawRequest([...base, 'Sec-WebSocket-Version: 13']);
  assert.equal(r.status, 400, 'missing key');
  assert.equal(JSON.parse(r.body).error.code, 'bad_websocket_handshake');
  assert.match(JSON.parse(r.body).error.message, /Sec-WebSocket-Key/);

  r = await rawRequest([...base, key, 'Sec-WebSocket-Version: 8']);
  assert.equal(r.status, 426, 'wrong version');
  assert.equal(r.headers['sec-websocket-version'], '13');

  r = await rawRequest([...base, 'Sec-WebSocket-Key: c2hvcnQ=', 'Sec-WebSocket-Version: 13']);
  assert.equal(r.status, 400, 'key of the wrong size');

  r = await rawRequest([`Host: 127.0.0.1:${w.port}`, 'Connection: Upgrade', key, 'Sec-WebSocket-Version: 13']);
  assert.equal(r.status, 400, 'no Upgrade header');

  // The `ws` client reports the refusal too.
  const ws = new WebSocket(url, { protocolVersion: 8 });
  const status = await within(5000, 'unexpected-response', new Promise((resolve) => {
    ws.on('unexpected-response', (req, res) => resolve(res.statusCode));
    ws.on('error', () => {});
  }));
  assert.equal(status, 426);
});

test('a refused upgrade ends its connection: a request sent after it is neither answered nor taken for the upgrade again', async () => {
  // An edge's pool (or any client) may write its next request on the same
  // connection; after an upgrade request llhttp cannot go on, and the next
  // bytes once made the server run the old upgrade request a second time.
  const head = [`GET ${PATH} HTTP/1.1`, `Host: 127.0.0.1:${w.port}`, 'Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 8', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', '', ''].join('\r\n');
  const next = [`GET ${PATH} HTTP/1.1`, `Host: 127.0.0.1:${w.port}`, 'Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==', '', ''].join('\r\n');
  const sock = net.connect(w.port, '127.0.0.1');
  let data = '';
  sock.on('data', (d) => (data += d));
  const closedP = new Promise((resolve) => sock.on('close', resolve));
  sock.on('error', () => {});
  await new Promise((resolve) => sock.once('connect', resolve));
  sock.write(head);
  // The answer to the first, then the second request on the same connection.
  await within(5000, 'the 426', (async () => { while (!data.includes('\r\n\r\n')) await new Promise((r) => setTimeout(r, 10)); })());
  sock.write(next);
  await within(5000, 'the server closing', closedP);
  assert.match(data, /^HTTP\/1\.1 426 /);
  assert.match(data, /\r\nConnection: close\r\n/i);
  assert.equal((data.match(/HTTP\/1\.1 /g) || []).length, 1, `one answer only:\n${data}`);
  assert.doesNotMatch(data, / 101 /);
});

test('a client that does not read is closed with 1008 once its queue is full', async () => {
  const raw = await rawOpen();
  raw.sock.pause(); // stop reading: echoes pile up in the kernel, then in the server's queue
  // More than the loopback socket buffers on both sides can hold, plus the queue limit.
  const msg = frame(0x2, crypto.randomBytes(60000));
  // The server keeps reading after its close frame (to find ours), so every write completes.
  for (let i = 0; i < 299; i++) raw.sock.write(msg);
  await within(20000, 'writes taken by the server', new Promise((resolve) => raw.sock.write(msg, resolve)));
  raw.sock.resume();
  const close = await within(20000, 'close frame', new Promise((resolve) => {
    const check = () => {
      const f = raw.frames.find((x) => x.opcode === 0x8);
      if (f) resolve(f);
      else raw.waiters.push(check);
    };
    check();
  }));
  assert.equal(close.payload.readUInt16BE(0), 1008);
  assert.equal(close.payload.subarray(2).toString(), 'send queue full');
  raw.sock.destroy();
});

test('the server pings a quiet connection and closes it when idle', async () => {
  // A client that never answers: it gets pings, then 1001 "idle timeout".
  const raw = await rawOpen();
  const t0 = Date.now();
  const { code, reason } = await rawClose(raw);
  assert.equal(code, 1001);
  assert.equal(reason, 'idle timeout');
  assert.ok(raw.frames.some((f) => f.opcode === 0x9), 'a ping before the idle close');
  assert.ok(Date.now() - t0 >= IDLE_MS - 100, 'not closed before idle_timeout_ms');

  // A `ws` client answers pings, so it outlives the idle timeout.
  const ws = await open();
  let pings = 0;
  ws.on('ping', () => pings++);
  await within(IDLE_MS * 4, 'three pings', new Promise((resolve) => {
    ws.on('ping', () => pings >= 3 && resolve());
  }));
  assert.equal(ws.readyState, WebSocket.OPEN);
  ws.close(1000);
  await closed(ws);
});

test('draining the server closes connections with 1001', async () => {
  const ws = await open();
  const c = closed(ws);
  const stopping = w.region.stop();
  const { code, reason } = await c;
  assert.equal(code, 1001);
  assert.equal(reason, 'server shutting down');
  await stopping;
});
