// CORS from a real browser. A page served from a second origin (listed in CORS_ORIGINS) reads
// a list's Stream-Cursor, creates a Funko and reads its Location and ETag, follows the stream
// from that cursor over EventSource and opens /ws; and the server's own live page still works
// on /ws with CORS_ORIGINS set.
// Usage: node cors.mjs <apiBase> <port of the second origin>
import http from "node:http";
import { chromium } from "playwright-core";

const [api, port] = process.argv.slice(2);
const TIMEOUT = 20_000;

// The second origin's page: every check runs in the page, the result lands in window.result.
const page = `<!doctype html><meta charset="utf-8"><title>elsewhere</title><script type="module">
const api = ${JSON.stringify(api)};
const result = {};
try {
  const list = await fetch(api + "/funkos?limit=1");
  result.listCursor = list.headers.get("Stream-Cursor");
  const created = await fetch(api + "/funkos", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "From elsewhere " + Date.now(), price: 3, stock: 1, category: "OTROS" }),
  });
  result.createStatus = created.status;
  result.location = created.headers.get("Location");
  result.etag = created.headers.get("ETag");
  result.writeCursor = created.headers.get("Stream-Cursor");
  const body = await created.json();
  result.name = body.name;
  result.readEtag = (await fetch(api + result.location)).headers.get("ETag");
  result.streamed = await new Promise((resolve, reject) => {
    const events = new EventSource(api + "/events?lastEventId=" + result.listCursor);
    events.onmessage = (m) => { events.close(); resolve(JSON.parse(m.data).data.name); };
    setTimeout(() => reject(new Error("no event over EventSource")), 10000);
  });
  result.welcome = await new Promise((resolve, reject) => {
    const ws = new WebSocket(api.replace(/^http/, "ws") + "/ws", ["funko-live"]);
    ws.onmessage = (m) => { ws.close(); resolve(JSON.parse(m.data).op); };
    ws.onerror = () => reject(new Error("the WebSocket failed"));
  });
} catch (err) {
  result.error = String(err);
}
window.result = result;
</script>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(page);
});
await new Promise((resolve) => server.listen(Number(port), "127.0.0.1", resolve));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const fail = (why) => { throw new Error(why); };
try {
  const elsewhere = await browser.newPage();
  await elsewhere.goto(`http://127.0.0.1:${port}/`);
  await elsewhere.waitForFunction(() => window.result !== undefined, null, { timeout: TIMEOUT });
  const r = await elsewhere.evaluate(() => window.result);
  if (r.error) fail(`the second origin's page: ${r.error} (${JSON.stringify(r)})`);
  if (!/^\d+$/.test(r.listCursor ?? "")) fail(`Stream-Cursor unreadable: ${JSON.stringify(r)}`);
  if (r.createStatus !== 201) fail(`create answered ${r.createStatus}`);
  if (!/^\/funkos\/\d+$/.test(r.location ?? "")) fail(`Location unreadable: ${JSON.stringify(r)}`);
  if (r.etag !== '"1"' || r.readEtag !== '"1"') fail(`ETag unreadable: ${JSON.stringify(r)}`);
  if (!/^\d+$/.test(r.writeCursor ?? "")) fail(`the write's Stream-Cursor unreadable`);
  if (r.streamed !== r.name) fail(`the stream from the list's cursor gave ${r.streamed}`);
  if (r.welcome !== "welcome") fail(`/ws answered ${r.welcome}`);
  console.log(`ok cors: read Stream-Cursor ${r.listCursor}, Location ${r.location}, ETag ${r.etag}; streamed and opened /ws from http://127.0.0.1:${port}`);

  // The server's own page, on /ws, with an origin listed that is not its own.
  const own = await browser.newPage();
  await own.goto(`${api}/?transport=ws`);
  await own.waitForSelector('body[data-transport="ws"]', { timeout: TIMEOUT });
  await own.waitForSelector('#state[data-state="live"]', { timeout: TIMEOUT });
  const created = await fetch(api + "/funkos", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "Own page " + Date.now(), price: 4, stock: 1, category: "OTROS" }),
  });
  const id = (await created.json()).id;
  await own.waitForSelector(`tr[data-id="${id}"]`, { timeout: TIMEOUT });
  console.log(`ok own page: live on /ws with CORS_ORIGINS set, saw #${id}`);
} finally {
  await browser.close();
  server.close();
}
