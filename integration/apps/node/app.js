// A ReReady webhook consumer behind the reready_verify Caddy gateway.
//
// Caddy has already checked the signature (and/or ?token=) and the payload,
// and replaced every X-ReReady-* header with trusted values, so this app only
// reads those headers and never does crypto itself. Listen where nothing but
// Caddy can reach it (127.0.0.1 here).
//
//     PORT=9001 [RECORD=events.jsonl] node app.js
//
// With RECORD set, appends what it received to that file as one JSON line.
'use strict';
const fs = require('node:fs');
const http = require('node:http');

// What each event field is read from: headers Caddy sets after verifying.
const FIELDS = {
  state: 'x-reready-state',
  device_return_id: 'x-reready-device-return-id',
  test: 'x-reready-test', // "true" or "false"
  verified: 'x-reready-verified', // "hmac", "token" or "hmac,token"
  timestamp: 'x-reready-timestamp', // the signed t; absent in token mode
  serial_number: 'x-reready-serial-number', // absent when null
  ticket_url: 'x-reready-ticket-url', // absent when null
  url: 'x-reready-url',
};

const server = http.createServer((req, res) => {
  if (req.method !== 'POST') {
    res.writeHead(405, { Allow: 'POST' }).end();
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const event = {};
    for (const [key, name] of Object.entries(FIELDS)) {
      event[key] = req.headers[name] ?? null;
    }
    // Act on event.state here (and skip event.test === 'true' if you like).

    if (process.env.RECORD) {
      const q = req.url.indexOf('?');
      const path = q < 0 ? req.url : req.url.slice(0, q);
      const query = q < 0 ? '' : req.url.slice(q + 1);
      const reready = {};
      for (const [name, value] of Object.entries(req.headers)) {
        if (name.replace(/[_.]/g, '-').startsWith('x-reready-')) reready[name] = value;
      }
      const record = {
        app: 'node',
        method: req.method,
        path,
        query,
        ...event,
        content_length: req.headers['content-length'] ?? null,
        reready_headers: reready,
        body_b64: Buffer.concat(chunks).toString('base64'),
      };
      fs.appendFileSync(process.env.RECORD, JSON.stringify(record) + '\n');
    }
    res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"ok":true}');
  });
});

server.listen(Number(process.env.PORT || 9001), '127.0.0.1');
