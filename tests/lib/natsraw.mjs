// natsraw.mjs: a minimal NATS client for tests, speaking the text protocol
// directly (no npm package): subscribe and collect messages, with headers.
import net from 'node:net';

/** Connects and subscribes `subject`; returns {messages, close(), ready}. */
export function subscribe(port, subject, { host = '127.0.0.1' } = {}) {
  const sock = net.connect({ port, host });
  const messages = [];
  let buf = Buffer.alloc(0);
  let resolveReady;
  const ready = new Promise((r) => (resolveReady = r));
  sock.on('connect', () => {
    sock.write(`CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\nSUB ${subject} 1\r\nPING\r\n`);
  });
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const eol = buf.indexOf('\r\n');
      if (eol < 0) return;
      const line = buf.subarray(0, eol).toString();
      if (line.startsWith('PING')) {
        sock.write('PONG\r\n');
        buf = buf.subarray(eol + 2);
      } else if (line.startsWith('PONG')) {
        resolveReady();
        buf = buf.subarray(eol + 2);
      } else if (line.startsWith('MSG ') || line.startsWith('HMSG ')) {
        const parts = line.split(' ');
        const hmsg = parts[0] === 'HMSG';
        const total = Number(parts.at(-1));
        const hlen = hmsg ? Number(parts.at(-2)) : 0;
        if (buf.length < eol + 2 + total + 2) return; // wait for the payload
        const payload = buf.subarray(eol + 2, eol + 2 + total);
        const headers = {};
        if (hmsg) {
          for (const h of payload.subarray(0, hlen).toString().split('\r\n').slice(1)) {
            const i = h.indexOf(':');
            if (i > 0) headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
          }
        }
        messages.push({ subject: parts[1], headers, data: payload.subarray(hlen).toString() });
        buf = buf.subarray(eol + 2 + total + 2);
      } else {
        buf = buf.subarray(eol + 2); // +OK, INFO, -ERR
      }
    }
  });
  sock.on('error', () => {});
  return { messages, ready, close: () => sock.destroy() };
}

/** Message count of a JetStream stream, from the monitoring endpoint. */
export async function streamMessages(monitorUrl, name) {
  const res = await fetch(`${monitorUrl}/jsz?accounts=true&streams=true`);
  const j = await res.json();
  for (const a of j.account_details || []) for (const s of a.stream_detail || []) if (s.name === name) return s.state.messages;
  return null;
}
