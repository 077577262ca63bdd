// reaper.mjs: started (detached) by harness.mjs. Waits for the test process to
// die and, if it died without cleaning up (SIGKILL from a ctest timeout, a
// crash), kills the process groups and removes the temp dirs it had listed in
// its registry file. A normal exit removes the registry first: then it does nothing.
//   node reaper.mjs <test-pid> <registry.json>
import fs from 'node:fs';

const [parent, registry] = [Number(process.argv[2]), process.argv[3]];

function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const st = stat[stat.lastIndexOf(')') + 2];
    return st !== 'Z' && st !== 'X';
  } catch {
    return false;
  }
}

function reap() {
  let reg;
  try {
    reg = JSON.parse(fs.readFileSync(registry, 'utf8'));
  } catch {
    process.exit(0); // clean exit: nothing left to do
  }
  for (const pgid of reg.pgids || []) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // Not a group leader (a tracked child that shares the test's group): the process alone.
      try {
        if (alive(pgid)) process.kill(pgid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  for (const d of reg.dirs || []) fs.rmSync(d, { recursive: true, force: true });
  for (const l of reg.locks || []) fs.rmSync(l, { force: true });
  fs.rmSync(registry, { force: true });
  process.exit(0);
}

// Polling is the only portable way to learn that a non-child process died.
setInterval(() => {
  if (!alive(parent)) reap();
}, 250);
