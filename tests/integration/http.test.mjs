// HTTP/1.1 conformance and limits of the region server (RFC 9112), driven with
// raw sockets against a real meridian-region with real stores behind it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startWorld, http } from '../lib/harness.mjs';
import { exchange, parseResponses } from '../lib/rawhttp.mjs';

const LIMITS = {
  max_header_bytes: 4096,
  max_headers: 20,
  max_body_bytes: 65536,
  header_timeout_ms: 1000,
  body_timeout_ms: 1000,
  idle_timeout_ms: 1500,
};

let w;
before(async () => {
  w = await startWorld({ workers: 2, config: { http: LIMITS, debug: { endpoints: true } } });
});
after(async () => {
  await w?.stop();
});

function assertJsonError(res, status, code) {
  assert.equal(res.status, status, `status for ${code}`);
  assert.match(res.headers['content-type'], /^application\/json/);
  const body = JSON.parse(res.body);
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0);
}

describe('request framing', () => {
  test('a request split at every byte boundary is parsed the same', async () => {
    const req = Buffer.from('POST /debug/echo HTTP/1.1\r\nHost: t\r\nX-Request-Id: split-1\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world');
    for (let i = 1; i < req.length; i++) {
      const r = await exchange(w.port, [req.subarray(0, i), req.subarray(i), 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'], { gapMs: 3 });
      const res = parseResponses(r.data);
      assert.equal(res.length, 2, `split at ${i}: ${r.data}`);
      assert.equal(res[0].status, 200, `split at ${i}`);
      assert.equal(res[0].body, 'hello world', `split at ${i}`);
      assert.equal(res[0].headers['x-request-id'], 'split-1');
      assert.equal(res[1].status, 200);
      assert.ok(r.closed, 'Connection: close honoured');
    }
  });

  test('a chunked body split at every byte boundary is reassembled', async () => {
    const req = Buffer.from('POST /debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n');
    for (let i = 1; i < req.length; i++) {
      const r = await exchange(w.port, [req.subarray(0, i), req.subarray(i)], { gapMs: 3 });
      const res = parseResponses(r.data);
      assert.equal(res.length, 1, `split at ${i}`);
      assert.equal(res[0].status, 200);
      assert.equal(res[0].body, 'hello world', `split at ${i}`);
    }
  });

  test('pipelined requests are answered in order on one connection', async () => {
    let burst = '';
    for (let i = 0; i < 50; i++) {
      if (i % 3 === 0) burst += `POST /debug/echo HTTP/1.1\r\nHost: t\r\nX-Request-Id: p${i}\r\nContent-Length: ${String(i).length}\r\n\r\n${i}`;
      else if (i % 3 === 1) burst += `GET /debug/sleep?ms=${i % 7} HTTP/1.1\r\nHost: t\r\nX-Request-Id: p${i}\r\n\r\n`;
      else burst += `GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: p${i}\r\n\r\n`;
    }
    burst += 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: last\r\nConnection: close\r\n\r\n';
    const r = await exchange(w.port, [burst]);
    const res = parseResponses(r.data);
    assert.equal(res.length, 51);
    for (let i = 0; i < 50; i++) {
      assert.equal(res[i].headers['x-request-id'], `p${i}`, 'responses come back in request order');
      assert.equal(res[i].status, 200);
      if (i % 3 === 0) assert.equal(res[i].body, String(i));
    }
    assert.equal(res[50].headers['x-request-id'], 'last');
    assert.ok(r.closed);
  });

  test('keep-alive serves many requests on one connection; HTTP/1.0 closes by default', async () => {
    const r = await exchange(w.port, ['GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n', 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n', 'GET /healthz HTTP/1.0\r\n\r\n'], { gapMs: 20 });
    const res = parseResponses(r.data);
    assert.equal(res.length, 3);
    assert.equal(res[2].headers.connection, 'close');
    assert.ok(r.closed);
    const ka = await exchange(w.port, ['GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n', 'GET /healthz HTTP/1.0\r\n\r\n'], { gapMs: 20 });
    const kres = parseResponses(ka.data);
    assert.equal(kres.length, 2);
    assert.equal(kres[0].headers.connection, 'keep-alive');
  });

  test('HEAD gets the headers of GET without a body', async () => {
    const r = await exchange(w.port, ['HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n']);
    const text = r.data.toString();
    const first = text.split('\r\n\r\n')[0];
    assert.match(first, /^HTTP\/1\.1 200 OK/);
    assert.match(first, /Content-Length: 15/);
    // The next response starts right after the HEAD response's headers.
    assert.match(text.split('\r\n\r\n')[1], /^HTTP\/1\.1 200 OK/);
  });

  test('Expect: 100-continue gets an interim response before the body', async () => {
    const r = await exchange(w.port, ['POST /debug/echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n', 'ok'], { gapMs: 50 });
    assert.match(r.data.toString(), /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK/);
  });
});

describe('bad requests get clear errors', () => {
  const cases = [
    ['unknown method', 'BREW /healthz HTTP/1.1\r\nHost: t\r\n\r\n', 501, 'not_implemented'],
    ['known method, no route for it', 'DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n', 405, 'method_not_allowed'],
    ['unknown path', 'GET /nope HTTP/1.1\r\nHost: t\r\n\r\n', 404, 'not_found'],
    ['missing Host', 'GET /healthz HTTP/1.1\r\n\r\n', 400, 'bad_request'],
    ['two Host headers', 'GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400, 'bad_request'],
    ['garbage', '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n', 400, 'bad_request'],
    ['bad version', 'GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n', 505, 'http_version_not_supported'],
    ['space before colon', 'GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n', 400, 'bad_request'],
    ['bad percent escape', 'GET /debug/%zz HTTP/1.1\r\nHost: t\r\n\r\n', 400, 'bad_path'],
    ['Content-Length and chunked together', 'POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'bad_request'],
    ['bad chunk size', 'POST /debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 400, 'bad_request'],
    ['unsupported expectation', 'POST /debug/echo HTTP/1.1\r\nHost: t\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx', 417, 'expectation_failed'],
  ];
  for (const [name, raw, status, code] of cases) {
    test(name, async () => {
      const r = await exchange(w.port, [raw], { timeoutMs: 3000 });
      const res = parseResponses(r.data);
      assert.ok(res.length >= 1, `${name}: got ${JSON.stringify(r.data.toString())}`);
      assertJsonError(res[0], status, code);
      assert.ok(res[0].headers['x-request-id']);
    });
  }

  test('405 lists the allowed methods', async () => {
    const res = parseResponses((await exchange(w.port, ['PUT /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'])).data);
    assert.equal(res[0].status, 405);
    assert.equal(res[0].headers.allow, 'POST');
  });

  test('a parse error closes the connection, so nothing after it is trusted', async () => {
    const r = await exchange(w.port, ['BREW / HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n']);
    assert.equal(parseResponses(r.data).length, 1);
    assert.ok(r.closed);
  });
});

describe('limits', () => {
  test('oversized headers get 431 and a close', async () => {
    const r = await exchange(w.port, [`GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ${'a'.repeat(LIMITS.max_header_bytes)}\r\n\r\n`]);
    assertJsonError(parseResponses(r.data)[0], 431, 'headers_too_large');
    assert.ok(r.closed);
  });

  test('an oversized request line gets 431', async () => {
    const r = await exchange(w.port, [`GET /healthz?${'q'.repeat(LIMITS.max_header_bytes)} HTTP/1.1\r\nHost: t\r\n\r\n`]);
    assertJsonError(parseResponses(r.data)[0], 431, 'headers_too_large');
  });

  test('too many headers get 431', async () => {
    let h = '';
    for (let i = 0; i < LIMITS.max_headers + 1; i++) h += `X-H${i}: v\r\n`;
    const r = await exchange(w.port, [`GET /healthz HTTP/1.1\r\nHost: t\r\n${h}\r\n`]);
    assertJsonError(parseResponses(r.data)[0], 431, 'headers_too_large');
  });

  test('headers just under the limit are fine', async () => {
    const r = await http('GET', `${w.api}/healthz`, { headers: { 'x-fill': 'a'.repeat(LIMITS.max_header_bytes - 300) } });
    assert.equal(r.status, 200);
  });

  test('a declared oversized body gets 413 before it is sent', async () => {
    const r = await exchange(w.port, [`POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: ${LIMITS.max_body_bytes + 1}\r\n\r\n`]);
    assertJsonError(parseResponses(r.data)[0], 413, 'body_too_large');
    assert.ok(r.closed);
  });

  test('a chunked body that grows past the limit gets 413', async () => {
    const chunk = 'x'.repeat(16384);
    let raw = 'POST /debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n';
    for (let i = 0; i < 5; i++) raw += `4000\r\n${chunk}\r\n`;
    raw += '0\r\n\r\n';
    const r = await exchange(w.port, [raw]);
    assertJsonError(parseResponses(r.data)[0], 413, 'body_too_large');
  });

  test('a body at the limit is accepted', async () => {
    const body = 'b'.repeat(LIMITS.max_body_bytes);
    const r = await http('POST', `${w.api}/debug/echo`, { body, headers: { 'content-type': 'text/plain' } });
    assert.equal(r.status, 200);
    assert.equal(r.text.length, LIMITS.max_body_bytes);
  });
});

describe('timeouts', () => {
  test('a slowloris client trickling headers is closed by the header timeout', async () => {
    const chunks = ['GET /healthz HTTP/1.1\r\n'];
    for (let i = 0; i < 40; i++) chunks.push(`X-S${i}: 1\r\n`);
    const r = await exchange(w.port, chunks, { gapMs: 100, timeoutMs: 8000 });
    assert.ok(r.closed, 'the server closed the connection');
    assert.ok(r.closedAfterMs < 4000, `closed after ${r.closedAfterMs} ms, well before the client finished`);
    const res = parseResponses(r.data);
    assertJsonError(res[0], 408, 'request_timeout');
  });

  test('a body that never completes is closed by the body timeout', async () => {
    const r = await exchange(w.port, ['POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-part'], { timeoutMs: 6000 });
    assert.ok(r.closed);
    assertJsonError(parseResponses(r.data)[0], 408, 'request_timeout');
  });

  test('an idle keep-alive connection is closed after the idle timeout', async () => {
    const r = await exchange(w.port, ['GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n'], { timeoutMs: 6000 });
    assert.ok(r.closed, 'closed while idle');
    assert.ok(r.closedAfterMs >= LIMITS.idle_timeout_ms - 100, `not before the idle timeout (${r.closedAfterMs} ms)`);
    assert.equal(parseResponses(r.data).length, 1);
  });

  test('a connection that never sends anything is closed too', async () => {
    const r = await exchange(w.port, [], { timeoutMs: 6000 });
    assert.ok(r.closed);
    assert.equal(r.data.length, 0);
  });
});

describe('request ids', () => {
  test('a sane client id is echoed, an unsafe one replaced', async () => {
    const ok = await http('GET', `${w.api}/healthz`, { headers: { 'x-request-id': 'abc-123_x.y' } });
    assert.equal(ok.headers['x-request-id'], 'abc-123_x.y');
    const bad = await http('GET', `${w.api}/healthz`, { headers: { 'x-request-id': 'evil id="x"' } });
    assert.notEqual(bad.headers['x-request-id'], 'evil id="x"');
    assert.match(bad.headers['x-request-id'], /^[0-9a-f]+-[0-9a-f]+$/);
  });
});
