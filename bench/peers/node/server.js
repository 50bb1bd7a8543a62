'use strict';
// A minimal Node.js Funko store, the peer funko-live is benchmarked against (bench/).
// express for the REST routes, socket.io broadcasting `updates` on the namespace `/ws/v1/funkos`
// as funko-live does, Server-Sent Events at /events, long-polling at /events/poll and a `ws`
// WebSocket at /ws, all over an in-memory Funko list and an in-memory event log. Same routes and
// event JSON as funko-live.
//
// Usage: node server.js [--port 0] [--host 127.0.0.1]; prints `listening on http://HOST:PORT`.

const http = require('http');
const express = require('express');
const { Server: SocketIo } = require('socket.io');
const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
function arg(name, def) {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
}
const HOST = arg('host', '127.0.0.1');
const PORT = Number(arg('port', '0'));
const KEEPALIVE_MS = Number(arg('keepalive-seconds', '15')) * 1000;
const MAX_EVENTS = 1000000;
const CATEGORIES = ['SERIE', 'DISNEY', 'SUPERHEROES', 'PELICULA', 'OTROS'];

const funkos = new Map();
let nextFunkoId = 1;
const events = []; // { id: number, json: string }, ids strictly increasing
let eventSeq = 0;
const sseClients = new Set();
const pollers = new Set();
const wsClients = new Set();

function now() {
  return new Date().toISOString();
}

function problem(res, status, detail) {
  res.status(status).type('application/problem+json').send(JSON.stringify({ status, title: http.STATUS_CODES[status], detail }));
}

function validate(body, partial) {
  const errors = [];
  const has = (k) => Object.prototype.hasOwnProperty.call(body, k);
  if (!partial || has('name')) {
    if (typeof body.name !== 'string' || body.name.trim().length < 1 || body.name.trim().length > 100) errors.push('name');
  }
  if (has('description') && body.description !== null && (typeof body.description !== 'string' || body.description.length > 500)) errors.push('description');
  if (!partial || has('price')) {
    if (typeof body.price !== 'number' || body.price < 0 || body.price > 1000000) errors.push('price');
  }
  if (!partial || has('stock')) {
    if (!Number.isInteger(body.stock) || body.stock < 0 || body.stock > 1000000) errors.push('stock');
  }
  if (!partial || has('category')) {
    if (typeof body.category !== 'string' || !CATEGORIES.includes(body.category.toUpperCase())) errors.push('category');
  }
  return errors;
}

const names = new Map(); // lower-cased name of a live Funko -> its id

function nameTaken(name, exceptId) {
  const owner = names.get(name.trim().toLowerCase());
  return owner !== undefined && owner !== exceptId;
}

function sseFrame(ev) {
  return `id: ${ev.id}\ndata: ${ev.json}\n\n`;
}

function publish(entity, type, data) {
  eventSeq += 1;
  const event = { id: String(eventSeq), entity, type, data, createdAt: now() };
  const json = JSON.stringify(event);
  const ev = { id: eventSeq, json };
  events.push(ev);
  if (events.length > MAX_EVENTS) events.splice(0, events.length - MAX_EVENTS);
  const frame = sseFrame(ev);
  for (const res of sseClients) res.write(frame);
  for (const ws of wsClients) {
    if (ws.subscribed) ws.send(json);
  }
  if (pollers.size > 0) {
    const waiting = Array.from(pollers);
    pollers.clear();
    for (const p of waiting) p.answer();
  }
  if (entity === 'FUNKOS') funkosNsp.emit('updates', event);
}

function eventsAfter(cursor, limit) {
  // binary search for the first event with id > cursor
  let lo = 0;
  let hi = events.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (events[mid].id <= cursor) lo = mid + 1;
    else hi = mid;
  }
  return events.slice(lo, limit === undefined ? undefined : lo + limit);
}

function parseCursor(raw) {
  if (raw === undefined || raw === null || raw === '') return null;
  if (!/^\d{1,19}$/.test(String(raw))) return undefined;
  return Number(raw);
}

const app = express();
app.disable('x-powered-by');
app.disable('etag');
app.use(express.json({ limit: '1mb' }));

app.get('/health/live', (req, res) => res.json({ status: 'ok' }));

app.get('/funkos', (req, res) => {
  const page = Math.max(1, parseInt(req.query.page || '1', 10) || 1);
  const limit = Math.min(100, Math.max(1, parseInt(req.query.limit || '20', 10) || 20));
  const live = [];
  for (const f of funkos.values()) if (!f.isDeleted) live.push(f);
  const data = live.slice((page - 1) * limit, page * limit);
  res.set('Stream-Cursor', String(eventSeq));
  res.json({ data, meta: { page, limit, total: live.length, totalPages: Math.ceil(live.length / limit) } });
});

app.get('/funkos/:id', (req, res) => {
  const id = Number(req.params.id);
  if (!Number.isInteger(id)) return problem(res, 400, 'id must be an integer');
  const f = funkos.get(id);
  if (!f || f.isDeleted) return problem(res, 404, `no Funko with id ${id}`);
  res.set('ETag', `"${f.version}"`);
  res.set('Stream-Cursor', String(eventSeq));
  res.json(f);
});

app.post('/funkos', (req, res) => {
  const body = req.body || {};
  const errors = validate(body, false);
  if (errors.length) return problem(res, 422, `invalid: ${errors.join(', ')}`);
  if (nameTaken(body.name)) return problem(res, 409, 'name taken');
  const t = now();
  const f = {
    id: nextFunkoId++,
    name: body.name.trim(),
    description: body.description ?? null,
    price: body.price,
    stock: body.stock,
    image: body.image || '/static/placeholder.png',
    category: body.category.toUpperCase(),
    createdAt: t,
    updatedAt: t,
    isDeleted: false,
    version: 1,
  };
  funkos.set(f.id, f);
  names.set(f.name.toLowerCase(), f.id);
  publish('FUNKOS', 'CREATE', f);
  res.status(201).set('Location', `/funkos/${f.id}`).set('ETag', `"${f.version}"`).set('Stream-Cursor', String(eventSeq)).json(f);
});

app.patch('/funkos/:id', (req, res) => {
  const id = Number(req.params.id);
  if (!Number.isInteger(id)) return problem(res, 400, 'id must be an integer');
  const f = funkos.get(id);
  if (!f || f.isDeleted) return problem(res, 404, `no Funko with id ${id}`);
  const body = req.body || {};
  const errors = validate(body, true);
  if (errors.length) return problem(res, 422, `invalid: ${errors.join(', ')}`);
  if (body.name !== undefined && nameTaken(body.name, id)) return problem(res, 409, 'name taken');
  if (body.name !== undefined) {
    names.delete(f.name.toLowerCase());
    names.set(body.name.trim().toLowerCase(), id);
    body.name = body.name.trim();
  }
  for (const k of ['name', 'description', 'price', 'stock', 'image', 'category']) {
    if (Object.prototype.hasOwnProperty.call(body, k)) f[k] = k === 'category' ? body[k].toUpperCase() : body[k];
  }
  f.updatedAt = now();
  f.version += 1;
  publish('FUNKOS', 'UPDATE', f);
  res.set('ETag', `"${f.version}"`).set('Stream-Cursor', String(eventSeq)).json(f);
});

app.get('/events', (req, res) => {
  const raw = req.get('Last-Event-ID') ?? req.query.lastEventId;
  const cursor = parseCursor(raw);
  if (cursor === undefined) return problem(res, 400, 'bad cursor');
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-cache',
    'X-Accel-Buffering': 'no',
    Connection: 'keep-alive',
  });
  res.write('retry: 2000\n\n');
  if (cursor !== null) {
    // Replay in chunks so one huge string is never built.
    const backlog = eventsAfter(cursor);
    const CHUNK = 256;
    for (let i = 0; i < backlog.length; i += CHUNK) {
      res.write(backlog.slice(i, i + CHUNK).map(sseFrame).join(''));
    }
  }
  sseClients.add(res);
  const keepalive = setInterval(() => res.write(':\n\n'), KEEPALIVE_MS);
  req.on('close', () => {
    clearInterval(keepalive);
    sseClients.delete(res);
  });
});

app.get('/events/poll', (req, res) => {
  const cursorParam = parseCursor(req.query.after);
  if (cursorParam === undefined) return problem(res, 400, 'bad cursor');
  const cursor = cursorParam === null ? eventSeq : cursorParam;
  const timeout = Math.min(60, Number(req.query.timeout ?? 25));
  const limit = Math.min(1000, Math.max(1, Number(req.query.limit ?? 100)));
  const answer = () => {
    const found = eventsAfter(cursor, limit);
    const next = found.length ? found[found.length - 1].id : cursor;
    res.type('application/json').send(`{"events":[${found.map((e) => e.json).join(',')}],"cursor":"${next}"}`);
  };
  if (eventSeq > cursor) return answer();
  const poller = { answer: () => { clearTimeout(poller.timer); answer(); } };
  poller.timer = setTimeout(() => {
    pollers.delete(poller);
    answer();
  }, timeout * 1000);
  pollers.add(poller);
  req.on('close', () => {
    clearTimeout(poller.timer);
    pollers.delete(poller);
  });
});

const server = http.createServer(app);
server.keepAliveTimeout = 120000;
server.headersTimeout = 125000;
server.requestTimeout = 0;
server.maxConnections = 100000;

const io = new SocketIo(server, { destroyUpgrade: false });
const funkosNsp = io.of('/ws/v1/funkos');
funkosNsp.on('connection', (socket) => socket.emit('connection', 'Updates Funkos WS: node-peer'));

const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
server.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/ws')) return; // socket.io handles its own path
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

function wsSubscribe(ws, after) {
  const cursor = parseCursor(after);
  ws.subscribed = true;
  if (cursor !== null && cursor !== undefined) {
    for (const ev of eventsAfter(cursor)) ws.send(ev.json);
  }
}

wss.on('connection', (ws, req) => {
  ws.subscribed = false;
  wsClients.add(ws);
  ws.send(JSON.stringify({ op: 'welcome', cursor: String(eventSeq) }));
  const after = new URL(req.url, 'http://x').searchParams.get('after');
  if (after !== null) wsSubscribe(ws, after);
  ws.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch {
      ws.send(JSON.stringify({ op: 'error', requestId: null, status: 400, body: { status: 400, detail: 'not JSON' } }));
      return;
    }
    if (msg.op === 'ping') ws.send('{"op":"pong"}');
    else if (msg.op === 'subscribe') wsSubscribe(ws, msg.after);
    else ws.send(JSON.stringify({ op: 'error', requestId: msg.requestId ?? null, status: 400, body: { status: 400, detail: 'unknown op' } }));
  });
  ws.on('close', () => wsClients.delete(ws));
  ws.on('error', () => wsClients.delete(ws));
});

server.listen(PORT, HOST, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});

function stop() {
  for (const res of sseClients) res.end();
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
