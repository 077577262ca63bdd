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
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';

import { freePort, makeTmp, track, waitFor } from './harness.mjs';

const LOOPBACK = '127.0.0.1';

function dnsmasqPath() {
  for (const p of ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq']) if (fs.existsSync(p)) return p;
  return 'dnsmasq';
}

function hostsText(hosts) {
  if (typeof hosts === 'string') return hosts;
  const lines = [];
  for (const [name, ips] of Object.entries(hosts || {})) {
    for (const ip of Array.isArray(ips) ? ips : [ips]) lines.push(`${ip} ${name}`);
  }
  return lines.join('\n') + '\n';
}

// ------------------------------------------------------------ a tiny DNS client

function encodeQuery(id, name, type) {
  const labels = name.replace(/\.$/, '').split('.');
  const parts = [Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l, 'ascii'));
  parts.push(Buffer.from([0, type >> 8, type & 0xff, 0, 1]));
  return Buffer.concat(parts);
}

function skipName(buf, off) {
  for (;;) {
    const len = buf[off];
    if (len === 0) return off + 1;
    if ((len & 0xc0) === 0xc0) return off + 2;
    off += len + 1;
  }
}

function decodeAnswer(buf) {
  const rcode = buf[3] & 0x0f;
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  let off = 12;
  for (let i = 0; i < qd; i++) off = skipName(buf, off) + 4;
  const answers = [];
  for (let i = 0; i < an; i++) {
    off = skipName(buf, off);
    const type = buf.readUInt16BE(off);
    const ttl = buf.readUInt32BE(off + 4);
    const len = buf.readUInt16BE(off + 8);
    const rd = buf.subarray(off + 10, off + 10 + len);
    off += 10 + len;
    if (type === 1 && len === 4) answers.push({ ip: [...rd].join('.'), ttl });
    if (type === 28 && len === 16) {
      const groups = [];
      for (let g = 0; g < 16; g += 2) groups.push(rd.readUInt16BE(g).toString(16));
      answers.push({ ip: groups.join(':'), ttl }); // uncompressed: fd00:0:0:0:0:0:0:7
    }
  }
  return { rcode, answers };
}

/** One UDP query: resolves {rcode, answers: [{ip, ttl}]}; rejects on timeout. */
export function dnsQuery(port, name, { type = 'A', host = LOOPBACK, timeoutMs = 1000 } = {}) {
  const qtype = type === 'AAAA' ? 28 : 1;
  const id = Math.floor(Math.random() * 65536);
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`dns query ${name}: timeout`));
    }, timeoutMs);
    sock.on('message', (msg) => {
      if (msg.length < 12 || msg.readUInt16BE(0) !== id) return;
      clearTimeout(timer);
      sock.close();
      try {
        resolve(decodeAnswer(msg));
      } catch (e) {
        reject(e);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      sock.close();
      reject(e);
    });
    sock.send(encodeQuery(id, name, qtype), port, host);
  });
}

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

  const args = [
    '--keep-in-foreground',
    '--conf-file=/dev/null', // not /etc/dnsmasq.conf or /etc/dnsmasq.d
    `--port=${p}`,
    `--listen-address=${LOOPBACK}`,
    '--bind-interfaces',
    '--no-resolv',
    '--no-hosts',
    `--addn-hosts=${hostsPath}`,
    `--local-ttl=${ttl}`,
    `--pid-file=${path.join(dir, 'dnsmasq.pid')}`,
    '--log-facility=-', // stderr, captured in logPath
    '--log-queries',
  ];
  if (domain) args.push(`--local=/${domain}/`);
  // As root dnsmasq drops to its compiled-in user; name one that surely exists.
  // It re-reads the hosts file on SIGHUP as that user, hence the 0755/0644 modes.
  if (process.getuid && process.getuid() === 0) args.push('--user=nobody', '--group=nogroup');

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
