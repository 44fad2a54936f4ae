// Test backend for check_admission.py (admission, configuration and observability).
// A plain http.createServer on 127.0.0.1:$PORT, no signal handler.
//   GET /slow?ms=1500&id=X   answers 200 after `ms` milliseconds with "slow:X\n"
//   GET /fast?id=X           answers 200 at once with "fast:X\n"
//   GET /status?code=N       answers N at once with "status:N\n"
//   anything else            200 "ok\n" at once
// BIND_DELAY_MS=2500 makes it bind its port only after that many milliseconds (a slow
// starter, like a model server loading weights).
'use strict';
const http = require('http');

const port = parseInt(process.env.PORT || '8080', 10);
const bindDelay = parseInt(process.env.BIND_DELAY_MS || '0', 10);

function send(res, status, body) {
  res.writeHead(status, {
    'content-type': 'text/plain',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://backend');
  const q = url.searchParams;
  const id = q.get('id') || '0';
  if (url.pathname === '/slow') {
    const ms = parseInt(q.get('ms') || '1500', 10);
    const timer = setTimeout(() => send(res, 200, `slow:${id}\n`), ms);
    res.on('close', () => clearTimeout(timer));
  } else if (url.pathname === '/fast') {
    send(res, 200, `fast:${id}\n`);
  } else if (url.pathname === '/status') {
    const code = parseInt(q.get('code') || '200', 10);
    send(res, code, `status:${code}\n`);
  } else {
    send(res, 200, 'ok\n');
  }
});

setTimeout(() => server.listen(port, '127.0.0.1'), bindDelay);
