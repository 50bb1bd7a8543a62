// Drives the live page at / in headless Chromium. On each transport, and after the fall back
// from a blocked EventSource to long-polling, the page follows a create, an update and a delete
// made through the REST API. Then: the form of one tab writes and another tab follows; a view
// (category and search) shows exactly its Funkos as they move; a reset reloads the page (with a
// second server that prunes at once: --retention-events 1 --prune-interval-seconds 1; skipped
// without it); nothing scrolls sideways at phone width, nor overlaps on a desktop. Prints
// "ok <label>: ..." per check.
// Usage: node browser.mjs <baseUrl> [<baseUrlWithTinyRetention>]
import { chromium } from "playwright-core";
import { startProxy } from "./devserver.mjs";

const [base, tinyRetention] = process.argv.slice(2);
const TIMEOUT = 20_000;
const RUN = Date.now().toString(36); // in every name: a server may serve several runs

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const pageErrors = [];
const proxies = [];

async function api(baseUrl, method, path, body) {
  const response = await fetch(baseUrl + path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(TIMEOUT),
  });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return { cursor: response.headers.get("stream-cursor"), body: response.status === 204 ? null : await response.json() };
}

function create(baseUrl, name, fields = {}) {
  return api(baseUrl, "POST", "/funkos", { name: `${RUN} ${name}`, price: 12.5, stock: 3, category: "serie", ...fields });
}

/** A page (in `context`, or a context of its own) at `url`, once it is live. */
async function openLive(url, { context = browser, viewport } = {}) {
  const page = await context.newPage(viewport ? { viewport } : {});
  page.on("pageerror", (error) => pageErrors.push(`${url}: ${error.message}`));
  await page.goto(url);
  await page.waitForSelector('#state[data-state="live"]', { timeout: TIMEOUT });
  return page;
}

/** Polls `condition` until it holds; fails after TIMEOUT. */
async function until(what, condition) {
  const deadline = Date.now() + TIMEOUT;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Waits until the page's rows are exactly `GET /funkos?<filters>` (every page of it). */
function untilRowsMatch(page, baseUrl, filters = {}) {
  return until(`the rows to equal GET /funkos ${JSON.stringify(filters)}`, async () => {
    const shown = await page.$$eval("tr[data-id]", (rows) => rows.map((tr) =>
      `${tr.dataset.id} ${tr.querySelector("td.name").textContent} ${tr.querySelector("td.price").textContent}`));
    const expected = [];
    for (let page = 1, pages = 1; page <= pages; page++) {
      const { body } = await api(baseUrl, "GET", `/funkos?${new URLSearchParams({ ...filters, sort: "id", limit: 100, page })}`);
      expected.push(...body.data.map((f) => `${f.id} ${f.name} ${f.price.toFixed(2)}`));
      pages = body.meta.totalPages;
    }
    return JSON.stringify(shown) === JSON.stringify(expected);
  });
}

const row = (id) => `tr[data-id="${id}"]`;

async function followsChanges(page, label) {
  const created = await create(base, `Browser ${label}`);
  await page.waitForSelector(row(created.body.id), { timeout: TIMEOUT });
  const name = await page.textContent(`${row(created.body.id)} td.name`);
  if (name !== created.body.name) throw new Error(`row shows ${name}`);

  await api(base, "PATCH", `/funkos/${created.body.id}`, { price: 20 });
  await page.waitForFunction(
    (sel) => document.querySelector(`${sel} td.price`)?.textContent === "20.00",
    row(created.body.id), { timeout: TIMEOUT },
  );

  const deleted = await api(base, "DELETE", `/funkos/${created.body.id}`);
  await page.waitForSelector(row(created.body.id), { state: "detached", timeout: TIMEOUT });
  await page.waitForFunction(
    (cursor) => document.body.dataset.cursor === cursor, deleted.cursor, { timeout: TIMEOUT },
  );
  console.log(`ok ${label}: created, updated and deleted live; cursor ${deleted.cursor}`);
}

/** A proxy that blocks streaming: EventSource keeps failing, the page falls back to polling. */
async function fallsBack() {
  const page = await browser.newPage();
  page.on("pageerror", (error) => pageErrors.push(`fallback: ${error.message}`));
  await page.route("**/events?*", (route) => route.abort());
  await page.goto(`${base}/`);
  await page.waitForSelector('body[data-transport="poll"]', { timeout: 60_000 });
  await page.waitForSelector('#state[data-state="live"]', { timeout: TIMEOUT });
  await followsChanges(page, "fallback");
  await page.close();
}

async function followsOnEachTransport() {
  for (const transport of ["sse", "poll", "ws"]) {
    const page = await openLive(`${base}/?transport=${transport}`);
    await page.waitForSelector(`body[data-transport="${transport}"]`, { timeout: TIMEOUT });
    await followsChanges(page, transport);
    await page.close();
  }
}

/** Tab A's form creates, edits and deletes; tab B (same browser) follows each step. */
async function formWritesOtherTabFollows() {
  const context = await browser.newContext();
  const [a, b] = [await openLive(`${base}/`, { context }), await openLive(`${base}/`, { context })];
  const name = `${RUN} Form`;

  // A 422 shows its detail and each field's error beside the field.
  await a.fill("#f-name", name);
  await a.fill("#f-price", "1.234");
  await a.fill("#f-stock", "4");
  await a.selectOption("#f-category", "DISNEY");
  await a.fill("#f-description", "made in tab A");
  await a.click("#f-submit");
  await a.waitForFunction(() => /decimals/.test(document.getElementById("f-price-error").textContent)
    && !document.getElementById("form-problem").hidden && document.getElementById("f-price").ariaInvalid === "true",
  null, { timeout: TIMEOUT });

  await a.fill("#f-price", "12.50");
  await a.click("#f-submit");
  const created = b.locator("tr[data-id]").filter({ has: b.getByText(name, { exact: true }) });
  await created.waitFor({ timeout: TIMEOUT });
  const id = await created.getAttribute("data-id");
  if (await b.textContent(`${row(id)} td.category`) !== "DISNEY") throw new Error("tab B shows another category");

  await a.click(`${row(id)} button.edit`);
  await a.fill("#f-price", "30");
  await a.click("#f-submit");
  await b.waitForFunction((sel) => document.querySelector(`${sel}.flash td.price`)?.textContent === "30.00",
    row(id), { timeout: TIMEOUT });

  await a.click(`${row(id)} button.edit`);
  await a.click("#f-delete");
  await b.waitForSelector(row(id), { state: "detached", timeout: TIMEOUT });
  await a.waitForSelector(row(id), { state: "detached", timeout: TIMEOUT });
  console.log(`ok form: tab A showed the 422's field error, then created, edited and deleted #${id}; tab B followed`);
  await context.close();
}

/** The category selector and the search box drive a view: the rows are exactly its Funkos. */
async function viewShowsItsFunkos() {
  const q = `${RUN} viewed`;
  const inside = await create(base, "viewed one", { category: "disney" });
  const otherCategory = await create(base, "viewed two", { category: "serie" });
  await create(base, "not matching", { category: "disney" });
  const page = await openLive(`${base}/`);
  await page.selectOption("#view-category", "DISNEY");
  await page.fill("#view-q", q.toUpperCase());
  const filters = { category: "DISNEY", q };
  await untilRowsMatch(page, base, filters);
  const moves = [
    () => create(base, "viewed three", { category: "Disney" }),
    () => api(base, "PATCH", `/funkos/${otherCategory.body.id}`, { category: "DISNEY" }),
    () => api(base, "PATCH", `/funkos/${inside.body.id}`, { name: `${RUN} renamed` }),
    () => api(base, "DELETE", `/funkos/${otherCategory.body.id}`),
  ];
  for (const move of moves) {
    await move();
    await untilRowsMatch(page, base, filters);
  }
  const shown = await page.$$eval("tr[data-id]", (rows) => rows.length);
  if (shown !== 1) throw new Error(`the view ends with ${shown} rows, not 1`);
  if (!new URL(page.url()).searchParams.has("category")) throw new Error("the view is not in the address");
  console.log(`ok view: category DISNEY + search "${q.toUpperCase()}" showed exactly its Funkos through ${moves.length} moves`);
  await page.close();
}

/**
 * The page's connection is cut (by a proxy) while the server prunes past its cursor; when it
 * comes back the server answers a reset, and the page reloads its list.
 */
async function reloadsOnReset() {
  if (!tinyRetention) {
    console.log("skip reset: give a server with --retention-events 1 --prune-interval-seconds 1 as the second argument");
    return;
  }
  const proxy = await startProxy(tinyRetention);
  proxies.push(proxy);
  const page = await openLive(`${proxy.url}/`);
  const before = await page.evaluate(() => document.body.dataset.cursor);
  proxy.cut();
  const gone = await create(tinyRetention, "reset gone");
  for (let i = 0; i < 3; i++) await create(tinyRetention, `reset ${i}`);
  await api(tinyRetention, "DELETE", `/funkos/${gone.body.id}`);
  await until("the events after the page's cursor to be pruned", async () =>
    (await api(tinyRetention, "GET", `/events/poll?after=${before}&timeout=0`)).body.reset !== undefined);
  proxy.restore();
  await page.waitForSelector('#events li[data-kind="reset"]', { timeout: TIMEOUT });
  await untilRowsMatch(page, tinyRetention);
  const line = await page.$eval('#events li[data-kind="reset"]', (li) => [...li.children].map((c) => c.textContent).join(" "));
  console.log(`ok reset: from cursor ${before}: "${line}", and the rows equal GET /funkos`);
  await page.close();
}

/** With a long name and description: at 375 px nothing scrolls sideways, at 1280 px the table fits its column. */
async function fitsTheScreen() {
  await create(base, `Wide ${"Supercalifragilistic".repeat(3)}`, { description: "word ".repeat(60).trim() });
  const phone = await openLive(`${base}/`, { viewport: { width: 375, height: 812 } });
  await phone.click("#f-submit"); // empty: every field's error shows
  await phone.waitForSelector("#form-problem:not([hidden])", { timeout: TIMEOUT });
  const [scrollWidth, innerWidth] = await phone.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
  if (scrollWidth > innerWidth) throw new Error(`the page is ${scrollWidth}px wide at ${innerWidth}px`);
  console.log(`ok phone: ${scrollWidth}px of content at ${innerWidth}px, no horizontal scroll`);
  await phone.close();

  const desktop = await openLive(`${base}/?q=Supercalifragilistic`, { viewport: { width: 1280, height: 800 } });
  await desktop.waitForSelector("tr[data-id]", { timeout: TIMEOUT });
  const [tableRight, sideLeft] = await desktop.evaluate(() =>
    [document.getElementById("funkos").getBoundingClientRect().right, document.querySelector(".side").getBoundingClientRect().left]);
  if (tableRight > sideLeft) throw new Error(`the table runs ${tableRight - sideLeft}px under the side panel`);
  console.log(`ok desktop: at 1280px the table ends at ${tableRight}px, before the side panel at ${sideLeft}px`);
  await desktop.close();
}

try {
  await fallsBack();
  await followsOnEachTransport();
  await formWritesOtherTabFollows();
  await viewShowsItsFunkos();
  await reloadsOnReset();
  await fitsTheScreen();
  if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
} finally {
  await Promise.all(proxies.map((proxy) => proxy.close()));
  await browser.close();
}
