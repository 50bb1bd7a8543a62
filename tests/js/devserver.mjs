// A development server for the live page: it serves the page's files from static/ in the work
// tree (the server binary embeds the copies it was built with) and forwards everything else
// to a running funko-live, streams and WebSocket upgrades included, unbuffered, Host kept.
// Usage: node tests/js/devserver.mjs http://127.0.0.1:8080   (prints "listening on URL")
//
// Its proxy is also what the tests put in front of the server to cut connections.
import http from "node:http";
import net from "node:net";
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const STATIC = new URL("../../static/", import.meta.url);
const ASSETS = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/app.js": ["app.js", "text/javascript; charset=utf-8"],
  "/app.css": ["app.css", "text/css; charset=utf-8"],
  "/client.js": ["client.js", "text/javascript; charset=utf-8"],
  "/client.d.ts": ["client.d.ts", "application/typescript; charset=utf-8"],
};
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]);

/**
 * Starts a proxy to `upstream` on a free loopback port. With `assets`, it serves the page's
 * files itself. `refuse(req)` true answers 502 instead of forwarding. `cut()` ends every
 * connection and drops new ones until `restore()`.
 */
export async function startProxy(upstream, { assets = false, refuse = () => false } = {}) {
  const target = new URL(upstream);
  const sockets = new Set();
  let cut = false;
  const server = http.createServer((req, res) => {
    const asset = assets && req.method === "GET" && ASSETS[new URL(req.url, target).pathname];
    if (asset) serveAsset(asset, res);
    else if (refuse(req)) res.writeHead(502).end();
    else forward(target, req, res);
  });
  server.on("upgrade", (req, socket, head) => tunnel(target, req, socket, head));
  server.on("connection", (socket) => {
    if (cut) return socket.destroy();
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      cut = true;
      sockets.forEach((socket) => socket.destroy());
    },
    restore() {
      cut = false;
    },
    close() {
      sockets.forEach((socket) => socket.destroy());
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

async function serveAsset([file, type], res) {
  try {
    const body = await readFile(new URL(file, STATIC));
    res.writeHead(200, { "Content-Type": type, "Cache-Control": "no-cache" }).end(body);
  } catch (error) {
    res.writeHead(500, { "Content-Type": "text/plain" }).end(String(error));
  }
}

/** Forwards one request; the answer is piped as it comes (an SSE stream stays a stream). */
function forward(target, req, res) {
  const upstream = http.request({
    host: target.hostname,
    port: target.port,
    method: req.method,
    path: req.url,
    headers: endToEnd(req.rawHeaders),
    agent: false, // one connection per request: none kept alive for the server to close under one
  }, (answer) => {
    res.writeHead(answer.statusCode, endToEnd(answer.rawHeaders));
    res.flushHeaders();
    answer.pipe(res);
  });
  upstream.on("error", () => (res.headersSent ? res.destroy() : res.writeHead(502).end()));
  res.on("close", () => upstream.destroy()); // the client left: so does the upstream request
  req.pipe(upstream);
}

/** Raw headers less the hop-by-hop ones: each side of the proxy frames its own connection. */
function endToEnd(rawHeaders) {
  const kept = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (!HOP_BY_HOP.has(rawHeaders[i].toLowerCase())) kept.push(rawHeaders[i], rawHeaders[i + 1]);
  }
  return kept;
}

/** Passes an upgrade (WebSocket) through byte for byte: the request head, then both ways. */
function tunnel(target, req, socket, head) {
  const upstream = net.connect(target.port, target.hostname, () => {
    const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
    upstream.write(head);
    upstream.pipe(socket).pipe(upstream);
  });
  const close = () => {
    upstream.destroy();
    socket.destroy();
  };
  for (const end of [upstream, socket]) end.on("error", close).on("close", close);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const upstream = process.argv[2];
  if (!upstream) {
    console.error("usage: node devserver.mjs <upstreamUrl>");
    process.exit(2);
  }
  const proxy = await startProxy(upstream, { assets: true });
  console.log(`listening on ${proxy.url}`);
}
