// loadgen.mjs: one meridian-loadgen process (tools/loadgen) driven by a
// benchmark or a test: stdin commands ("mark", "rate", "cursors", "stop"),
// its periodic stderr snapshots and its final stdout report.
import { spawn } from 'node:child_process';
import readline from 'node:readline';

import { track } from '../../tests/lib/harness.mjs';

/** One meridian-loadgen process: marks, commands, its snapshots and final report. */
export class Loadgen {
  constructor(bin, args, name) {
    this.name = name;
    this.last = null; // latest periodic snapshot (stderr)
    this.final = null;
    this.errTail = [];
    this.marks = []; // mark answers nobody waited for
    this.waiters = [];
    this.cursorWaiters = [];
    this.child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    track(this.child);
    // 'close', not 'exit': exit can come before the last stdout line (the
    // final report, tens of kB) has been read.
    this.exited = new Promise((resolve) => this.child.once('close', (code, sig) => resolve({ code, sig })));
    readline.createInterface({ input: this.child.stdout }).on('line', (l) => {
      let j;
      try {
        j = JSON.parse(l);
      } catch {
        this.errTail.push(`unparsable stdout line: ${l.slice(0, 200)}`);
        return;
      }
      if (j.mark !== undefined) {
        const w = this.waiters.shift();
        if (w) w(j);
        else this.marks.push(j);
      } else if (j.cursors) {
        const w = this.cursorWaiters.shift();
        if (w) w(j);
      } else this.final = j;
    });
    readline.createInterface({ input: this.child.stderr }).on('line', (l) => {
      if (l.startsWith('{')) {
        try {
          this.last = JSON.parse(l);
          return;
        } catch {
          /* not ours */
        }
      }
      this.errTail.push(l);
      if (this.errTail.length > 20) this.errTail.shift();
    });
    this.child.stdin.on('error', () => {});
  }

  send(line) {
    if (this.child.exitCode === null) this.child.stdin.write(`${line}\n`);
  }

  mark(label) {
    const p = new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.name}: no answer to mark ${label}: ${this.errTail.join(' | ')}`)), 15000);
      this.waiters.push((j) => {
        clearTimeout(t);
        resolve(j);
      });
    });
    this.send(`mark ${label}`);
    return p;
  }

  /** Every stream's cursor sums now: {connected, streams: [{path, clients, no_cursor, min, max, sum}]}. */
  cursors() {
    const p = new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.name}: no answer to cursors`)), 15000);
      this.cursorWaiters.push((j) => {
        clearTimeout(t);
        resolve(j);
      });
    });
    this.send('cursors');
    return p;
  }

  async stop(timeoutMs = 30000) {
    this.send('stop');
    const t = setTimeout(() => {
      try {
        process.kill(-this.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, timeoutMs);
    this.exit = await this.exited;
    clearTimeout(t);
    return this.final;
  }

  kill() {
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
