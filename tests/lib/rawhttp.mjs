// rawhttp.mjs: byte-level HTTP/1.1 exchanges for conformance tests, where a
// real client library would hide what the server does with odd input.

import net from 'node:net';

/**
 * Opens a connection, writes `chunks` (Buffers or strings) one by one with
 * `gapMs` between them, and collects everything the server sends until it
 * closes or `timeoutMs` passes. Resolves {data: Buffer, closed: boolean,
 * closedAfterMs}.
 */
export function exchange(port, chunks, { gapMs = 0, timeoutMs = 5000, host = '127.0.0.1', keepOpen = false } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host });
    sock.setNoDelay(true);
    const parts = [];
    let closed = false;
    const t0 = Date.now();
    let closedAt = null;
    const timer = setTimeout(() => finish(), timeoutMs);
    function finish() {
      clearTimeout(timer);
      sock.destroy();
      resolve({ data: Buffer.concat(parts), closed, closedAfterMs: closedAt === null ? null : closedAt - t0 });
    }
    sock.on('data', (d) => parts.push(d));
    sock.on('error', (e) => {
      if (e.code === 'ECONNRESET' || e.code === 'EPIPE') return; // the server closed on us
      clearTimeout(timer);
      reject(e);
    });
    sock.on('close', () => {
      closed = true;
      closedAt = Date.now();
      finish();
    });
    sock.on('connect', async () => {
      for (let i = 0; i < chunks.length; i++) {
        if (sock.destroyed) return;
        sock.write(chunks[i]);
        if (gapMs && i + 1 < chunks.length) await new Promise((r) => setTimeout(r, gapMs));
      }
      if (!keepOpen && !sock.destroyed) {
        // Leave the socket open for reading: the server decides when to close.
      }
    });
  });
}

/** Parses a byte stream of HTTP/1.1 responses (Content-Length framed). */
export function parseResponses(buf) {
  const out = [];
  let off = 0;
  while (off < buf.length) {
    const end = buf.indexOf('\r\n\r\n', off);
    if (end < 0) break;
    const head = buf.subarray(off, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.1 (\d{3}) /.exec(head[0]);
    if (!m) throw new Error(`bad status line: ${JSON.stringify(head[0])}`);
    const headers = {};
    for (const line of head.slice(1)) {
      const i = line.indexOf(':');
      headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
    }
    const status = Number(m[1]);
    const len = status === 100 || status === 101 || status === 204 || status === 304 ? 0 : Number(headers['content-length'] ?? 0);
    const body = buf.subarray(end + 4, end + 4 + len);
    out.push({ status, headers, body: body.toString('utf8') });
    off = end + 4 + len;
  }
  return out;
}
