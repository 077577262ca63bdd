// core/dns against a real dnsmasq on a loopback port, through driver_dns_client
// (tests/integration/drivers/dns_client.c): A and AAAA answers with their TTLs,
// NXDOMAIN, single-flight cached lookups, cancellation on free, and a cached
// lookup that follows a changed record only once its TTL has run out.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { after, before, test } from 'node:test';

import { startDnsmasq } from '../lib/dnsmasq.mjs';
import { binary, makeTmp, track, waitFor } from '../lib/harness.mjs';

const TTL = 3; // seconds, for every name dnsmasq serves (--local-ttl)

/** A driver process speaking the line protocol: call('resolve x') -> parsed JSON answer. */
class Driver {
  constructor(args) {
    this.child = track(spawn(binary('driver_dns_client'), args, { stdio: ['pipe', 'pipe', 'pipe'] }));
    this.nextId = 1;
    this.waiting = new Map();
    this.stderr = '';
    this.child.stderr.on('data', (d) => (this.stderr += d));
    readline.createInterface({ input: this.child.stdout }).on('line', (l) => {
      const msg = JSON.parse(l);
      const w = this.waiting.get(msg.id);
      if (w) {
        this.waiting.delete(msg.id);
        w.resolve(msg);
      }
    });
    this.exited = new Promise((resolve) =>
      this.child.once('exit', (code, signal) => {
        for (const w of this.waiting.values()) w.reject(new Error(`driver exited (${code}/${signal}):\n${this.stderr}`));
        this.waiting.clear();
        resolve({ code, signal });
      }),
    );
  }

  call(line, timeoutMs = 15000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`no answer to "${line}" within ${timeoutMs} ms\n${this.stderr}`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (m) => (clearTimeout(timer), resolve(m)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.child.stdin.write(`${id} ${line}\n`);
    });
  }

  async close() {
    this.child.stdin.end();
    const { code, signal } = await this.exited;
    assert.equal(signal, null, `driver killed by ${signal}:\n${this.stderr}`);
    assert.equal(code, 0, `driver exit code ${code}:\n${this.stderr}`);
  }
}

const HOSTS = {
  'edge1.meridian.test': ['10.1.2.3', 'fd00::7'],
  'v4.meridian.test': '10.9.9.9',
  'moving.meridian.test': '10.2.0.1',
  'burst.meridian.test': '10.3.0.1',
};

let dns;
let drv;

before(async () => {
  const tmp = makeTmp('meridian-dns-client-');
  dns = await startDnsmasq({ tmp, hosts: HOSTS, ttl: TTL, domain: 'meridian.test' });
  drv = new Driver(['--servers', dns.server, '--timeout', '1000', '--tries', '2']);
});

after(async () => {
  if (drv) await drv.close();
  if (dns) await dns.stop();
});

test('resolve returns IPv4 and IPv6 addresses with their TTLs', async () => {
  const r = await drv.call('resolve edge1.meridian.test');
  assert.equal(r.err, null, JSON.stringify(r));
  assert.equal(r.cached, false);
  assert.deepEqual(
    r.addrs.map((a) => [a.family, a.ip, a.ttl]).sort(),
    [
      [4, '10.1.2.3', TTL],
      [6, 'fd00::7', TTL],
    ],
  );
  assert.equal(r.ttl, TTL);

  const v4 = await drv.call('resolve v4.meridian.test');
  assert.deepEqual(v4.addrs, [{ ip: '10.9.9.9', family: 4, ttl: TTL }]);
});

test('an unknown name fails with EAI_NONAME', async () => {
  const r = await drv.call('resolve nobody.meridian.test');
  assert.equal(r.err, 'EAI_NONAME');
  assert.equal(r.addrs, undefined);
});

test('concurrent cached lookups of one name share one query', async () => {
  const r = await drv.call('burst 25 burst.meridian.test');
  assert.equal(r.ok, 25, JSON.stringify(r));
  assert.equal(r.queries, 1, JSON.stringify(r));
  const hit = await drv.call('cached burst.meridian.test');
  assert.equal(hit.cached, true);
  assert.equal(hit.addrs[0].ip, '10.3.0.1');
});

test('free answers every pending lookup with ECANCELED exactly once', async () => {
  const r = await drv.call('cancel edge1.meridian.test');
  assert.deepEqual(r.submit, [0, 0]);
  assert.deepEqual(r.errs, ['ECANCELED', 'ECANCELED']);
});

test('a cached lookup follows a changed record only after its TTL', async () => {
  const t0 = Date.now();
  const first = await drv.call('cached moving.meridian.test');
  assert.equal(first.err, null, JSON.stringify(first));
  assert.equal(first.cached, false);
  assert.equal(first.addrs[0].ip, '10.2.0.1');
  assert.equal(first.ttl, TTL);

  // The record changes on the server (hosts file + SIGHUP) ...
  await dns.setHosts({ ...HOSTS, 'moving.meridian.test': '10.2.0.2' }, { probe: 'moving.meridian.test' });
  const direct = await drv.call('resolve moving.meridian.test');
  assert.equal(direct.addrs[0].ip, '10.2.0.2', 'the server answers the new address');

  // ... but the cache keeps the old answer until the TTL has run out.
  const stale = await drv.call('cached moving.meridian.test');
  assert.equal(stale.cached, true);
  assert.equal(stale.addrs[0].ip, '10.2.0.1');
  assert.ok(Date.now() - t0 < TTL * 1000, 'the test itself ran within the TTL');

  let sawOld = 0;
  const fresh = await waitFor(
    async () => {
      const r = await drv.call('cached moving.meridian.test');
      assert.equal(r.err, null);
      if (r.addrs[0].ip === '10.2.0.1') {
        assert.equal(r.cached, true, 'the old address only ever comes from the cache');
        sawOld++;
        return null;
      }
      return { r, at: Date.now() - t0 };
    },
    { timeoutMs: TTL * 1000 + 3000, intervalMs: 50, maxIntervalMs: 50, message: 'cache never followed the change' },
  );
  assert.equal(fresh.r.addrs[0].ip, '10.2.0.2');
  assert.equal(fresh.r.cached, false);
  assert.ok(sawOld > 0);
  assert.ok(fresh.at >= TTL * 1000, `new address after ${fresh.at} ms, before the ${TTL} s TTL`);
  assert.ok(fresh.at < TTL * 1000 + 1500, `new address only after ${fresh.at} ms`);

  const again = await drv.call('cached moving.meridian.test');
  assert.equal(again.cached, true);
  assert.equal(again.addrs[0].ip, '10.2.0.2');

  const m = await drv.call('metrics');
  assert.ok(m.hits >= 2 && m.misses >= 2, JSON.stringify(m));
});
