// dnsmasq.mjs: a real DNS server for tests (dnsmasq on a loopback port).
//
//   import { startDnsmasq, dnsQuery } from '../lib/dnsmasq.mjs';
//   const dns = await startDnsmasq({ tmp, port, ttl: 3, domain: 'meridian.test',
//                                    hosts: { 'edge1.meridian.test': ['10.1.2.3', 'fd00::7'] } });
//   dns.server            '127.0.0.1:PORT' (for core_dns servers / c-ares)
//   await dns.setHosts({...})   rewrites the hosts file, SIGHUPs dnsmasq, waits until it answers the change
//   await dns.stop()
//
// dnsmasq serves only the names in its hosts file (--no-resolv --no-hosts), each
// with the TTL given (--local-ttl); with `domain`, any other name in that domain
// gets NXDOMAIN instead of REFUSED. Readiness is a real DNS query over UDP. The
// process is registered with the harness for teardown (tests/lib/harness.mjs).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { freePort, makeTmp, track, waitFor } from './harness.mjs';
import { dnsQuery, dnsmasqArgs, dnsmasqPath, hostsText } from '../../deploy/local/lib/stack.mjs';

export { dnsQuery };

const LOOPBACK = '127.0.0.1';

// ---------------------------------------------------------------- the server

/**
 * Starts dnsmasq on 127.0.0.1:port (a free port when omitted), serving `hosts`
 * ({name: ip | [ip, ...]} or hosts-file text) with TTL `ttl` seconds.
 * Handle: {port, server, pid, hostsPath, logPath, setHosts(hosts), reload(), query(name, opts), logs(), stop()}.
 */
export async function startDnsmasq({ tmp, port, hosts = {}, ttl = 1, domain } = {}) {
  const base = tmp || makeTmp();
  const dir = path.join(base, `dnsmasq-${port || 'x'}-${process.hrtime.bigint()}`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  fs.chmodSync(dir, 0o755);
  const p = port || (await freePort());
  const hostsPath = path.join(dir, 'hosts');
  const logPath = path.join(dir, 'dnsmasq.log');
  fs.writeFileSync(hostsPath, hostsText(hosts), { mode: 0o644 });

  const args = [...dnsmasqArgs({ port: p, hostsPath, ttl, domain, dir }), '--log-queries'];

  const fd = fs.openSync(logPath, 'a');
  let child;
  try {
    child = spawn(dnsmasqPath(), args, { cwd: dir, stdio: ['ignore', fd, fd], detached: true });
  } finally {
    fs.closeSync(fd);
  }
  await new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (e) => reject(new Error(`cannot run dnsmasq: ${e.message}`)));
  });
  track(child);
  let exitInfo = null;
  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    }),
  );
  const logs = () => {
    try {
      return fs.readFileSync(logPath, 'utf8');
    } catch {
      return '';
    }
  };
  const probe = Object.keys(typeof hosts === 'object' ? hosts : {})[0] || 'localhost';

  const handle = {
    port: p,
    server: `${LOOPBACK}:${p}`,
    pid: child.pid,
    hostsPath,
    logPath,
    logs,
    query: (name, opts) => dnsQuery(p, name, opts),
    /** Re-reads the hosts file (SIGHUP). */
    reload() {
      process.kill(child.pid, 'SIGHUP');
    },
    /**
     * Replaces the hosts file and reloads; waits until dnsmasq answers `probe`
     * (default: the first name) with its new first address.
     */
    async setHosts(next, { probe: name } = {}) {
      fs.writeFileSync(hostsPath, hostsText(next), { mode: 0o644 });
      handle.reload();
      if (typeof next !== 'object') return;
      const [n, ips] = name ? [name, next[name]] : Object.entries(next)[0] || [];
      if (!n) return;
      const want = (Array.isArray(ips) ? ips : [ips]).filter((ip) => ip.includes('.'));
      if (!want.length) return;
      await waitFor(
        async () => {
          const r = await dnsQuery(p, n);
          return r.answers.some((a) => a.ip === want[0]);
        },
        { timeoutMs: 5000, message: `dnsmasq did not reload ${hostsPath}` },
      );
    },
    async stop() {
      if (exitInfo) return exitInfo;
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      const t = setTimeout(() => {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, 5000);
      const info = await exited;
      clearTimeout(t);
      return info;
    },
  };

  try {
    await waitFor(
      async () => {
        if (exitInfo) throw new Error(`dnsmasq exited (${JSON.stringify(exitInfo)})`);
        await dnsQuery(p, probe, { timeoutMs: 300 });
        return true;
      },
      { timeoutMs: 10000, message: `dnsmasq on port ${p} not answering` },
    );
  } catch (e) {
    await handle.stop();
    throw new Error(`${e.message}\n${logs().split('\n').slice(-30).join('\n')}`);
  }
  return handle;
}
