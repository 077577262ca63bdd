// chromium.mjs: drives Debian's headless Chromium through the DevTools
// protocol (CDP) over the `ws` package, so that a test can load a real page
// and read its DOM. No browser-automation library: the handful of CDP calls
// a test needs is below.
//
//   import { startChromium } from '../lib/chromium.mjs';
//   const browser = await startChromium();
//   const page = await browser.open('http://127.0.0.1:1234/page.html#a=b');
//   await page.evaluate('document.title');  // -> the value (returnByValue)
//   page.console                            // console messages, log entries, exceptions
//   await browser.stop();                   // always: kills it, removes its profile
//
// Chromium runs in its own process group with a fresh profile in a temp dir;
// both are registered with the harness, so they go away even when the test
// process dies (harness track/makeTmp and its reaper). MERIDIAN_CHROMIUM names
// another binary.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';

import { makeTmp, removeTmp, track, waitFor } from './harness.mjs';

const STDERR_KEEP = 16384; // enough of chromium's stderr to explain a failed start

/** The binary's path (a name is looked up on PATH), or null. */
function which(binary) {
  const dirs = binary.includes('/') ? [''] : (process.env.PATH || '').split(':').filter(Boolean);
  for (const d of dirs) {
    const p = d ? path.join(d, binary) : binary;
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* not here */
    }
  }
  return null;
}

function groupAlive(pgid) {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

/** A CDP connection: send(method, params, sessionId) -> result; on(fn) for events. */
class Cdp {
  constructor(ws) {
    this.ws = ws;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Set();
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.id !== undefined) {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`CDP ${p.method}: ${msg.error.message}`));
        else p.resolve(msg.result);
      } else {
        for (const fn of this.listeners) fn(msg);
      }
    });
    ws.on('close', () => {
      for (const p of this.pending.values()) p.reject(new Error(`CDP ${p.method}: connection closed`));
      this.pending.clear();
    });
  }

  send(method, params = {}, sessionId, timeoutMs = 15000) {
    if (this.ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error(`CDP ${method}: not connected`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      // A wedged browser must fail the test, not hang it until ctest's timeout.
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`CDP ${method}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (fn) => (v) => (clearTimeout(timer), fn(v));
      this.pending.set(id, { method, resolve: done(resolve), reject: done(reject) });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  close() {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', resolve);
      this.ws.terminate();
    });
  }
}

/**
 * Starts headless Chromium. Resolves once its DevTools endpoint accepts a
 * connection; rejects (after cleaning up) when it exits or does not get there
 * within startTimeoutMs. Returns {open(url), stop(), stderr()}.
 */
export async function startChromium({ binary = process.env.MERIDIAN_CHROMIUM || 'chromium', startTimeoutMs = 30000 } = {}) {
  const exe = which(binary);
  if (!exe) throw new Error(`${binary} not found: install Debian's chromium (deploy/deps.sh does)`);
  const profile = makeTmp('meridian-chromium-');
  const args = [
    '--headless=new',
    '--no-sandbox', // required as root; the pages are our own
    '--disable-gpu',
    '--disable-dev-shm-usage', // containers often have a tiny /dev/shm
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-extensions',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-proxy-server', // loopback only: an inherited proxy setting must not matter
    `--user-data-dir=${profile}`,
    '--remote-debugging-address=127.0.0.1',
    '--remote-debugging-port=0', // it picks a free port and prints the endpoint
    'about:blank',
  ];
  // Its own process group: stop() and the harness's reaper kill the browser
  // together with its renderer, GPU and zygote processes.
  const child = track(spawn(exe, args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] }));
  let stderr = '';
  let exited = null;
  const exitedP = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
    child.once('error', (e) => {
      exited = { error: e };
      resolve(exited);
    });
  });

  let cdp = null;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (cdp && exited === null) {
      // Polite first: the browser flushes and exits on its own.
      await cdp.send('Browser.close', {}, undefined, 5000).catch(() => {});
      await Promise.race([exitedP, new Promise((r) => setTimeout(r, 5000).unref())]);
    }
    if (cdp) await cdp.close();
    if (child.pid && groupAlive(child.pid)) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* gone meanwhile */
      }
    }
    if (child.pid) {
      await exitedP;
      // Renderers outlive the browser briefly: the profile goes once the whole group is gone.
      await waitFor(() => !groupAlive(child.pid), { timeoutMs: 10000, message: 'chromium process group gone' }).catch(() => {});
    }
    removeTmp(profile);
  };

  try {
    // Readiness is the line chromium prints once its DevTools server listens.
    const endpoint = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`chromium did not start within ${startTimeoutMs} ms`)), startTimeoutMs);
      child.stderr.on('data', (d) => {
        stderr = (stderr + d.toString()).slice(-STDERR_KEEP);
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(stderr);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      exitedP.then((x) => {
        clearTimeout(timer);
        reject(new Error(`chromium (${binary}) exited before it was ready: ${x.error ? x.error.message : `code ${x.code} signal ${x.signal}`}`));
      });
    });
    const ws = new WebSocket(endpoint, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    cdp = new Cdp(ws);
  } catch (e) {
    await stop();
    e.message += `\nchromium stderr (tail):\n${stderr}`;
    throw e;
  }

  /**
   * Opens url in a new tab. Returns {evaluate(expr), screenshot(), console, close()}.
   * console collects {kind, level, text} from console.* calls, browser log
   * entries (where CORS refusals are reported) and uncaught exceptions.
   */
  async function open(url) {
    const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
    const console = [];
    const off = cdp.on((msg) => {
      if (msg.sessionId !== sessionId) return;
      const p = msg.params;
      if (msg.method === 'Runtime.consoleAPICalled') {
        console.push({ kind: 'console', level: p.type, text: p.args.map((a) => a.value ?? a.description ?? '').join(' ') });
      } else if (msg.method === 'Log.entryAdded') {
        console.push({ kind: 'log', level: p.entry.level, text: p.entry.text, url: p.entry.url });
      } else if (msg.method === 'Runtime.exceptionThrown') {
        const d = p.exceptionDetails;
        console.push({ kind: 'exception', level: 'error', text: d.exception?.description || d.text });
      }
    });
    await cdp.send('Runtime.enable', {}, sessionId);
    await cdp.send('Log.enable', {}, sessionId);
    await cdp.send('Page.enable', {}, sessionId);
    const nav = await cdp.send('Page.navigate', { url }, sessionId);
    if (nav.errorText) throw new Error(`navigating to ${url}: ${nav.errorText}`);
    return {
      console,
      /** The value of a JavaScript expression in the page (awaited if a promise). */
      async evaluate(expression) {
        const r = await cdp.send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true }, sessionId);
        if (r.exceptionDetails) throw new Error(`evaluate ${expression}: ${r.exceptionDetails.exception?.description || r.exceptionDetails.text}`);
        return r.result.value;
      },
      /** A PNG screenshot of the viewport, as a Buffer. */
      async screenshot() {
        const { data } = await cdp.send('Page.captureScreenshot', { format: 'png' }, sessionId);
        return Buffer.from(data, 'base64');
      },
      async close() {
        off();
        await cdp.send('Target.closeTarget', { targetId }).catch(() => {});
      },
    };
  }

  return { open, stop, stderr: () => stderr };
}
