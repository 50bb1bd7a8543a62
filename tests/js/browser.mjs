// Drives the live page at / in headless Chromium: for each transport, load the page, then
// create, update and delete a Funko through the REST API and see the page follow. Also
// checks the fallback from a blocked EventSource to long-polling.
// Usage: node browser.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";

const base = process.argv[2];
const TIMEOUT = 20_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

async function api(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return { cursor: response.headers.get("stream-cursor"), body: response.status === 204 ? null : await response.json() };
}

async function followsChanges(page, label) {
  await page.waitForSelector('#state[data-state="live"]', { timeout: TIMEOUT });
  const created = await api("POST", "/funkos", { name: `Browser ${label}`, price: 12.5, stock: 3, category: "serie" });
  const row = `tr[data-id="${created.body.id}"]`;
  await page.waitForSelector(row, { timeout: TIMEOUT });
  const name = await page.textContent(`${row} td.name`);
  if (name !== `Browser ${label}`) throw new Error(`row shows ${name}`);

  await api("PATCH", `/funkos/${created.body.id}`, { price: 20 });
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.children[3]?.textContent === "20.00",
    row, { timeout: TIMEOUT },
  );

  const deleted = await api("DELETE", `/funkos/${created.body.id}`);
  await page.waitForSelector(row, { state: "detached", timeout: TIMEOUT });
  await page.waitForFunction(
    (cursor) => document.body.dataset.cursor === cursor, deleted.cursor, { timeout: TIMEOUT },
  );
  console.log(`ok ${label}: created, updated and deleted live; cursor ${deleted.cursor}`);
}

try {
  // A proxy that blocks streaming: EventSource keeps failing, the page falls back to polling.
  const page = await browser.newPage();
  await page.route("**/events?*", (route) => route.abort());
  await page.goto(`${base}/`);
  await page.waitForSelector('body[data-transport="poll"]', { timeout: 60_000 });
  await followsChanges(page, "fallback");
  await page.close();

  for (const transport of ["sse", "poll", "ws"]) {
    const page = await browser.newPage();
    await page.goto(`${base}/?transport=${transport}`);
    // The page picks its transport once the first list has loaded.
    await page.waitForSelector(`body[data-transport="${transport}"]`, { timeout: TIMEOUT });
    await followsChanges(page, transport);
    await page.close();
  }
} finally {
  await browser.close();
}
