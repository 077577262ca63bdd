// A real browser client: a page in Debian's headless Chromium, served from an
// origin of its own, opens the workspace stream with the browser's own
// WebSocket (token in the subprotocol), posts a message with fetch() (a
// preflighted cross-origin request: the region's CORS must allow it) and sees
// that message's event arrive. The test reads the outcome from the page's DOM
// through the DevTools protocol (tests/lib/chromium.mjs). A second page, from
// an origin the region does not allow, shows that the browser then refuses the
// post: without CORS the first test fails.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { startChromium } from '../lib/chromium.mjs';
import { freePort, http, startWorld, waitFor } from '../lib/harness.mjs';
import { serveStatic } from './browser/serve.mjs';

const PAGE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'browser');
const PAGE_TIMEOUT_MS = 30000; // a shared 2-core machine: chromium itself takes seconds to settle

let w;
let browser;
let site; // the allowed origin
let stranger; // an origin the region does not allow
before(async () => {
  site = await serveStatic(PAGE_DIR, { port: await freePort() });
  stranger = await serveStatic(PAGE_DIR, { port: await freePort() });
  w = await startWorld({ workers: 2, config: { http: { cors_allowed_origins: [site.origin] } } });
  browser = await startChromium();
});
after(async () => {
  // Each step runs whatever an earlier one threw; the first error is reported.
  const errs = [];
  for (const step of [() => browser?.stop(), () => site?.close(), () => stranger?.close(), () => w?.stop()]) {
    try {
      await step();
    } catch (e) {
      errs.push(e);
    }
  }
  if (errs.length) throw errs[0];
});

const call = (method, p, body, token) => http(method, `${w.api}${p}`, { body, headers: token ? { authorization: `Bearer ${token}` } : {} });
let n = 0;
async function ownerAndWorkspace() {
  const u = await call('POST', '/v1/auth/signup', { email: `b${++n}.${process.pid}@example.com`, password: 'browser password', display_name: `B${n}` });
  assert.equal(u.status, 201, u.text);
  const token = u.json.access_token;
  const ws = await call('POST', '/v1/workspaces', { name: 'Browser', slug: `browser-${process.pid}-${n}` }, token);
  assert.equal(ws.status, 201, ws.text);
  const ch = await call('GET', `/v1/workspaces/${ws.json.workspace.id}/channels`, undefined, token);
  assert.equal(ch.status, 200, ch.text);
  return { token, id: ws.json.workspace.id, general: ch.json.channels.find((c) => c.name === 'general').id };
}

/** What the page and the browser said, for a failure message (the token elided). */
const report = (space, result, page) => `page: ${JSON.stringify(result)}\nconsole: ${JSON.stringify(page.console)}`.replaceAll(space.token, '<token>');

/** Loads the page from `origin` and waits until it reports ok or error; returns {page, result}. */
async function runPage(origin, space, text) {
  const frag = new URLSearchParams({ api: w.api, workspace: space.id, channel: space.general, token: space.token, text });
  const page = await browser.open(`${origin}/stream.html#${frag}`);
  const read = async () => JSON.parse((await page.evaluate("document.getElementById('result')?.textContent || '{}'")) || '{}');
  try {
    await waitFor(async () => ['ok', 'error'].includes((await read()).state), { timeoutMs: PAGE_TIMEOUT_MS, message: 'the page to finish' });
  } catch (e) {
    e.message += `\n${report(space, await read().catch((x) => x.message), page)}`;
    await page.close();
    throw e;
  }
  return { page, result: await read() };
}

test('a page on another origin streams with the browser WebSocket, posts with fetch() and sees its event', async () => {
  const space = await ownerAndWorkspace();
  const text = `from chromium ${process.pid}`;
  const { page, result } = await runPage(site.origin, space, text);
  try {
    const why = report(space, result, page);
    assert.equal(result.state, 'ok', why);
    assert.equal(result.protocol, 'meridian.v1', 'the subprotocol selected, never the token');
    assert.equal(result.posted.status, 201, why);
    assert.ok(result.posted.request_id, 'X-Request-Id is exposed to the page');
    assert.deepEqual(result.event.seq, result.hello_seq + 1, 'the event right after hello');
    assert.equal(result.event.type, 'message.created');
    assert.equal(result.event.workspace_id, space.id);
    assert.equal(result.event.channel_id, space.general);
    assert.equal(result.event.payload.id, result.posted.id);

    // What the page shows, read from its DOM.
    const shown = await page.evaluate(
      "({ state: document.getElementById('state').textContent, items: [...document.querySelectorAll('#events li')].map((li) => ({ seq: Number(li.dataset.seq), type: li.dataset.type, text: li.textContent })) })",
    );
    assert.equal(shown.state, 'ok');
    assert.deepEqual(shown.items, [{ seq: result.hello_seq + 1, type: 'message.created', text }]);
    const png = await page.screenshot();
    assert.equal(png.subarray(1, 4).toString(), 'PNG', 'a screenshot of the page');
    fs.writeFileSync(path.join(w.tmp, 'browser-stream.png'), png); // kept with MERIDIAN_KEEP_TMP=1

    // The server agrees: the message is stored once, with the id the page got.
    const list = await call('GET', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, undefined, space.token);
    assert.equal(list.status, 200, list.text);
    assert.deepEqual(
      list.json.messages.filter((m) => m.text === text).map((m) => m.id),
      [result.posted.id],
    );
    assert.ok(!site.requests.some((r) => r.includes(space.token)), 'the token stays in the fragment');
  } finally {
    await page.close();
  }
});

test('a page on an origin the region does not allow is refused by the browser (CORS), and nothing is posted', async () => {
  const space = await ownerAndWorkspace();
  const text = `from a stranger ${process.pid}`;
  const { page, result } = await runPage(stranger.origin, space, text);
  try {
    const why = report(space, result, page);
    assert.equal(result.state, 'error', why);
    assert.ok(result.steps.includes(`hello ${result.hello_seq}`), `the stream itself opened: ${why}`);
    assert.match(result.error, /^fetch failed: TypeError/, why);
    assert.ok(!result.posted, why);
    assert.ok(
      page.console.some((c) => /CORS policy/i.test(c.text)),
      `the browser reports a CORS refusal: ${why}`,
    );
    const list = await call('GET', `/v1/workspaces/${space.id}/channels/${space.general}/messages`, undefined, space.token);
    assert.equal(list.status, 200, list.text);
    assert.ok(!list.json.messages.some((m) => m.text === text), 'the preflight failed, so the POST was never sent');
  } finally {
    await page.close();
  }
});
