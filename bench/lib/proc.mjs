// proc.mjs: process helpers for benchmarks on a small shared machine: CPU
// pinning (the server on one core, the load generator on another, the same
// way for Meridian and its peer), CPU time used by a process group during a
// run, and a description of the machine for the JSON report.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

let clkTck = null;

/** Clock ticks per second for /proc/<pid>/stat times (getconf CLK_TCK, 100 on Linux). */
export function clockTicks() {
  if (clkTck === null) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    clkTck = Number(r.stdout && r.stdout.trim()) || 100;
  }
  return clkTck;
}

/** Fields of /proc/<pid>/stat after the command name (index 0 = state), or null. */
function statFields(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Pids of the live processes whose process group is pgid (the leader included). */
export function groupPids(pgid) {
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(name);
    if (f && Number(f[2]) === pgid && f[0] !== 'Z') out.push(Number(name));
  }
  return out.sort((a, b) => a - b);
}

/**
 * Pins every thread of every process in the group to the CPU list (taskset
 * syntax, '0' or '0,1'). Children forked later inherit the master's mask.
 * Returns the pids pinned; throws when taskset fails on a live process.
 */
export function pinGroup(pgid, cpus) {
  const pids = groupPids(pgid);
  for (const pid of pids) {
    const r = spawnSync('taskset', ['-a', '-p', '-c', String(cpus), String(pid)], { encoding: 'utf8' });
    if (r.status !== 0 && fs.existsSync(`/proc/${pid}`)) {
      throw new Error(`taskset -a -p -c ${cpus} ${pid} failed: ${(r.stderr || '').trim()}`);
    }
  }
  return pids;
}

/**
 * Sets the niceness of every process in the group (negative values need
 * root). Returns the pids changed; throws when renice fails on a live process.
 */
export function reniceGroup(pgid, nice) {
  const pids = groupPids(pgid);
  for (const pid of pids) {
    const r = spawnSync('renice', ['-n', String(nice), '-p', String(pid)], { encoding: 'utf8' });
    if (r.status !== 0 && fs.existsSync(`/proc/${pid}`)) {
      throw new Error(`renice -n ${nice} -p ${pid} failed: ${(r.stderr || '').trim()}`);
    }
  }
  return pids;
}

/** The CPU list a process may run on (e.g. '0'), from /proc/<pid>/status; null when gone. */
export function cpusAllowed(pid) {
  try {
    const m = /^Cpus_allowed_list:\s*(\S+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? m[1] : null;
  } catch {
    return null;
  }
}

/** {user, system} CPU seconds used so far by the live processes of a group. */
export function groupCpuTimes(pgid) {
  let user = 0;
  let system = 0;
  for (const pid of groupPids(pgid)) {
    const f = statFields(pid);
    if (!f) continue;
    user += Number(f[11]); // utime
    system += Number(f[12]); // stime
  }
  return { user: user / clockTicks(), system: system / clockTicks() };
}

/** User + system CPU seconds used so far by the live processes of a group. */
export function groupCpuSeconds(pgid) {
  const t = groupCpuTimes(pgid);
  return t.user + t.system;
}

/** Online CPU count. */
export function cpuCount() {
  return os.availableParallelism ? os.availableParallelism() : os.cpus().length;
}

/** Machine description for a benchmark report: cores, model, kernel, load averages. */
export function machineInfo() {
  const cpus = os.cpus();
  return {
    cpus: cpuCount(),
    cpu_model: cpus[0] ? cpus[0].model : null,
    kernel: os.release(),
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

/** First line of a command's output (stdout or stderr), for tool versions; null on failure. */
export function versionOf(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return null;
  const line = `${r.stdout || ''}${r.stderr || ''}`.split('\n').find((l) => l.trim());
  return line ? line.trim() : null;
}

/** Per-CPU busy and total jiffies from /proc/stat: {cpuN: {busy, total}}. */
export function cpuTimes() {
  const out = {};
  for (const line of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const f = m[2].trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    out[`cpu${m[1]}`] = { busy: total - f[3] - f[4], total };
  }
  return out;
}

/**
 * Fraction of time each CPU was busy between two cpuTimes() snapshots
 * (whatever ran there: ours or a neighbour's), e.g. {cpu0: 0.98, cpu1: 0.71}.
 */
export function cpuBusy(before, after) {
  const out = {};
  for (const [k, a] of Object.entries(after)) {
    const b = before[k];
    if (!b || a.total === b.total) continue;
    out[k] = Math.round(((a.busy - b.busy) / (a.total - b.total)) * 100) / 100;
  }
  return out;
}
