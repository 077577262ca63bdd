// nginx.mjs: Debian's nginx as a benchmark peer. Runs in the foreground
// (`daemon off`) in its own process group from a temp prefix, with every
// path it writes (pid, error log, temp dirs) inside that prefix, and is
// registered with the test harness so it dies with the benchmark even on
// Ctrl-C or SIGKILL.
//
//   import { startNginx } from '../lib/nginx.mjs';
//   const ngx = await startNginx({ tmp, port, cpus: '0', locations: `location = /healthz { return 200 'ok'; }` });
//   ngx.url, ngx.pid, ngx.configPath, ngx.logs(), await ngx.stop();

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { Service } from '../../deploy/local/lib/stack.mjs';
import { http, track } from '../../tests/lib/harness.mjs';

export const NGINX_BIN = process.env.NGINX_BIN || '/usr/sbin/nginx';

/**
 * The nginx.conf text. `locations` is the server block's body; `http` holds
 * extra http-level directives. Access logging is off and keep-alive lets a
 * client keep one connection for a whole run, as a load generator expects.
 */
export function nginxConfig({ prefix, port, host = '127.0.0.1', workers = 1, workerConnections = 4096, keepaliveRequests = 1000000, locations = '', http: httpExtra = '' }) {
  const p = (f) => path.join(prefix, f);
  return `# written by bench/lib/nginx.mjs
worker_processes ${workers};
pid ${p('nginx.pid')};
error_log ${p('error.log')} warn;

events {
    worker_connections ${workerConnections};
}

http {
    access_log off;
    server_tokens off;
    keepalive_requests ${keepaliveRequests};
    keepalive_timeout 75s;
    client_body_temp_path ${p('client_body')};
    proxy_temp_path ${p('proxy')};
    fastcgi_temp_path ${p('fastcgi')};
    uwsgi_temp_path ${p('uwsgi')};
    scgi_temp_path ${p('scgi')};
${httpExtra}
    server {
        listen ${host}:${port};
${locations}
        location / {
            return 404;
        }
    }
}
`;
}

/**
 * Starts nginx on host:port and waits until `readyPath` answers (any status).
 * Options: tmp (dir; a subdir `nginx` is made in it), port, host, workers (1),
 * cpus (taskset CPU list for master and workers; none when empty),
 * keepaliveRequests, locations, http, readyPath ('/').
 * Handle: {pid, port, url, prefix, configPath, stop(), logs(), service}.
 */
export async function startNginx({ tmp, port, host = '127.0.0.1', workers = 1, cpus = '', keepaliveRequests, locations, http: httpExtra, readyPath = '/' } = {}) {
  if (!fs.existsSync(NGINX_BIN)) throw new Error(`${NGINX_BIN} not found: apt-get install nginx-light (or set NGINX_BIN)`);
  const prefix = path.join(tmp, 'nginx');
  fs.mkdirSync(prefix, { recursive: true });
  const configPath = path.join(prefix, 'nginx.conf');
  fs.writeFileSync(configPath, nginxConfig({ prefix, port, host, workers, keepaliveRequests, locations, http: httpExtra }));
  // -e: the compiled-in error log (/var/log/nginx) is opened before the config is read.
  const nginxArgs = ['-p', `${prefix}/`, '-c', configPath, '-e', path.join(prefix, 'error.log'), '-g', 'daemon off;'];
  const test = spawnSync(NGINX_BIN, ['-t', ...nginxArgs], { encoding: 'utf8' });
  if (test.status !== 0) throw new Error(`nginx -t failed for ${configPath}:\n${test.stderr}`);
  const url = `http://${host}:${port}`;
  const svc = new Service({
    name: 'nginx',
    dir: prefix,
    cmd: cpus ? 'taskset' : NGINX_BIN,
    args: cpus ? ['-c', String(cpus), NGINX_BIN, ...nginxArgs] : nginxArgs,
    log: path.join(prefix, 'stderr.log'),
    ready: async () => {
      await http('GET', `${url}${readyPath}`, { timeoutMs: 1000 });
      return true;
    },
    readyTimeoutMs: 10000,
    stopSignal: 'SIGTERM', // fast shutdown: nothing to drain in a benchmark
    stopTimeoutMs: 5000,
    onSpawn: (s) => track(s.child),
  });
  await svc.start();
  return {
    pid: svc.pid,
    port,
    url,
    prefix,
    configPath,
    service: svc,
    stop: () => svc.stop(),
    logs: () => {
      let t = svc.logs();
      try {
        t += fs.readFileSync(path.join(prefix, 'error.log'), 'utf8');
      } catch {
        /* none yet */
      }
      return t;
    },
  };
}
