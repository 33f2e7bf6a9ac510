// The Node `ws` anchor of bench/ws_bench.py's socket memory: the same frames as /ws, the same clients.
//
// `python bench/ws_bench.py --server node --memory-only` runs this in place of the API and measures its
// resident memory per socket the same way. It holds what a live-updates server must: each socket in a
// map of the jobs it watches, a heartbeat (ws's own pattern: a ping every interval, a socket that did
// not pong since the last one is dropped), a client id per socket. Loopback only; it stops on SIGTERM.
//
//   npm install --prefix /tmp/sockets-node ws@8
//   S2S_NODE_WS=/tmp/sockets-node/node_modules/ws PORT=8080 node bench/ws_node_peer.cjs
'use strict';
const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require(process.env.S2S_NODE_WS || 'ws');

const port = Number(process.env.PORT || 8080);
const pingMs = Number(process.env.WS_PING_INTERVAL || 25000);
const watchers = new Map(); // job id -> Set of sockets

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/api/jobs/health' ? 200 : 404, { 'Content-Type': 'application/json' });
  res.end('{"status":"ok"}');
});
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, maxPayload: 1024 * 1024 });

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.clientId = crypto.randomBytes(9).toString('base64url');
  ws.jobs = new Set();
  ws.on('pong', () => { ws.isAlive = true; });
  ws.send(JSON.stringify({ type: 'connection_confirmed', clientId: ws.clientId }));
  ws.on('message', (data) => {
    ws.isAlive = true;
    let command;
    try { command = JSON.parse(data); } catch { return; }
    if (command.type === 'subscribe_to_job' && typeof command.jobId === 'string' && !ws.jobs.has(command.jobId)) {
      ws.jobs.add(command.jobId);
      if (!watchers.has(command.jobId)) watchers.set(command.jobId, new Set());
      watchers.get(command.jobId).add(ws);
      ws.send(JSON.stringify({ type: 'job_progress', jobId: command.jobId, status: 'processing', progress: 0,
                               message: 'Drawing', seq: 0 }));
    }
  });
  ws.on('close', () => {
    for (const job of ws.jobs) {
      const set = watchers.get(job);
      if (set) { set.delete(ws); if (!set.size) watchers.delete(job); }
    }
  });
});

const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, pingMs);

server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => {
  clearInterval(heartbeat);
  for (const ws of wss.clients) ws.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 5000).unref();
});
