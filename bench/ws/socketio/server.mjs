// bench/ws/socketio/server.mjs: the Socket.IO 4 peer of bench/ws. Plain
// rooms, one per "channel": a client joins the room named in its handshake
// query (?room=...), and a "post" event {room, seq, text} from a poster is
// broadcast to that room as "event" with the data as received (the text
// carries the poster's timestamp). Two of these processes run behind one
// Redis through @socket.io/redis-adapter, so a broadcast reaches the room's
// members on both.
//
//   PORT=... REDIS_URL=redis://127.0.0.1:6379 node server.mjs
//
// Prints one JSON line {"ready":true,...} on stdout once it listens; GET
// /healthz answers 200; GET /stats answers {connections, rss}; SIGTERM exits.
import http from 'node:http';

import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { Server } from 'socket.io';

const port = Number(process.env.PORT);
const redisUrl = process.env.REDIS_URL;
if (!port || !redisUrl) {
  process.stderr.write('usage: PORT=... REDIS_URL=... node server.mjs\n');
  process.exit(2);
}

const pub = createClient({ url: redisUrl });
const sub = pub.duplicate();
pub.on('error', (e) => process.stderr.write(`redis pub: ${e.message}\n`));
sub.on('error', (e) => process.stderr.write(`redis sub: ${e.message}\n`));
await Promise.all([pub.connect(), sub.connect()]);

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
  } else if (req.url === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ connections: io.engine.clientsCount, rss: process.memoryUsage().rss }));
  } else {
    res.writeHead(404).end();
  }
});

// websocket transport only (no long-polling upgrade dance), no compression:
// the same wire work per message as the Meridian stream.
const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  serveClient: false,
  adapter: createAdapter(pub, sub),
});

io.on('connection', (socket) => {
  const room = socket.handshake.query.room;
  if (typeof room === 'string' && room) socket.join(room);
  socket.on('post', (data) => {
    if (data && typeof data.room === 'string') io.to(data.room).emit('event', data);
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port, pid: process.pid })}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
