// serve.mjs: a tiny static file server for the browser test's page, so that
// the page comes from an origin of its own (another port than the region's):
// the page's fetch() to the API is then cross-origin and needs CORS, as a
// real web client's would.
//
//   const site = await serveStatic(dir, { port });  // site.origin, site.requests
//   await site.close();
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };

/** Serves the files directly in `dir` (no subdirectories) on host:port. */
export async function serveStatic(dir, { host = '127.0.0.1', port = 0 } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const name = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '');
    requests.push(`${req.method} /${name}`);
    const type = TYPES[path.extname(name)];
    // Only plain names of known types: nothing outside dir can be asked for.
    if (req.method !== 'GET' || !type || name.includes('/') || name.startsWith('.')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    fs.readFile(path.join(dir, name), (err, body) => {
      if (err) res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      else res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const origin = `http://${host}:${server.address().port}`;
  return {
    origin,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
