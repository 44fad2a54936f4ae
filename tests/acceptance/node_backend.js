// Test backend for the lameduck acceptance harness.
// Deliberately naive: a plain http.createServer with NO signal handler, so it
// dies at once on SIGTERM (Node's default), like many real servers.
//   GET /slow?ms=3000&id=X   answers after `ms` milliseconds with a fixed body
//   GET /sse?n=6&interval=500&id=X   text/event-stream, one event every
//                            `interval` ms, n events, then a `done` event
//   anything else            200 "ok\n" at once
'use strict';
const http = require('http');

const port = parseInt(process.env.PORT || '8080', 10);
const name = process.env.BACKEND_NAME || 'node';

function slowBody(id) {
  return `slow:${id}:` + 'x'.repeat(1000) + ':end\n';
}

function sseEvent(i, id) {
  return `id: ${i}\nevent: tick\ndata: {"i":${i},"id":"${id}"}\n\n`;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://backend');
  const q = url.searchParams;
  const id = q.get('id') || '0';
  if (url.pathname === '/slow') {
    const ms = parseInt(q.get('ms') || '3000', 10);
    const timer = setTimeout(() => {
      const body = slowBody(id);
      res.writeHead(200, {
        'content-type': 'text/plain',
        'content-length': Buffer.byteLength(body),
        'x-backend': name,
      });
      res.end(body);
    }, ms);
    res.on('close', () => clearTimeout(timer));
  } else if (url.pathname === '/sse') {
    const n = parseInt(q.get('n') || '6', 10);
    const interval = parseInt(q.get('interval') || '500', 10);
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      'x-backend': name,
    });
    res.flushHeaders();
    let i = 0;
    const timer = setInterval(() => {
      i += 1;
      res.write(sseEvent(i, id));
      if (i >= n) {
        clearInterval(timer);
        res.end('event: done\ndata: end\n\n');
      }
    }, interval);
    res.on('close', () => clearInterval(timer));
  } else {
    res.writeHead(200, { 'content-type': 'text/plain', 'x-backend': name });
    res.end('ok\n');
  }
});

server.listen(port, '127.0.0.1');
