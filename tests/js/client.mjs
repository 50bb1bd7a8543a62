// Tests the client library (static/client.js) in Node, on the `eventsource` and `ws` packages
// and Node's fetch, against running servers. The second server, for the resets, must prune
// almost at once: --retention-events 1 --prune-interval-seconds 1 (without it those cases are
// skipped). Prints "ok client: <case>" per case; exits non-zero on the first failure.
// Usage: node client.mjs <baseUrl> [<baseUrlWithTinyRetention>]
import { EventSource } from "eventsource";
import WebSocket from "ws";
import { liveFunkos, request } from "../../static/client.js";
import { startProxy } from "./devserver.mjs";

const [base, tinyRetention] = process.argv.slice(2);
const WAIT_MS = 20_000;
const RUN = Date.now().toString(36); // in every name: a server may serve several runs
const TRANSPORTS = ["sse", "poll", "ws"];
const running = []; // live lists and proxies, stopped and closed at the end

/** A REST call that must succeed; answers the body and the write's cursor. */
async function api(baseUrl, method, path, body) {
  const answer = await request(method, path, { baseUrl, body });
  if (!answer.ok) throw new Error(`${method} ${path}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return { body: answer.body, cursor: answer.headers.get("Stream-Cursor") };
}

function create(baseUrl, name, fields = {}) {
  return api(baseUrl, "POST", "/funkos", { name: `${RUN} ${name}`, price: 9.5, stock: 1, category: "SERIE", ...fields });
}

/** Every page of `GET /funkos?<filters>`, read here without the library: the oracle. */
async function readAll(baseUrl, filters = {}) {
  const funkos = [];
  for (let page = 1, pages = 1; page <= pages; page++) {
    const params = new URLSearchParams({ ...filters, limit: 100, page });
    const { body } = await api(baseUrl, "GET", `/funkos?${params}`);
    funkos.push(...body.data);
    pages = body.meta.totalPages;
  }
  return funkos.sort((a, b) => a.id - b.id);
}

/** Polls `condition` until it holds; fails after WAIT_MS. */
async function until(what, condition) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Waits until the library's list is exactly what the server reads now. */
function untilSame(live, baseUrl, filters) {
  return until(`the list to equal GET /funkos ${JSON.stringify(filters ?? {})}`, async () => {
    const held = [...live.funkos.values()].sort((a, b) => a.id - b.id);
    return JSON.stringify(held) === JSON.stringify(await readAll(baseUrl, filters));
  });
}

/** Starts the library; `changes` collects everything it reports. */
function follow(baseUrl, options = {}) {
  const changes = [];
  const live = liveFunkos({
    baseUrl, EventSource, WebSocket, ...options,
    onChange: (funkos, change) => changes.push(change),
  });
  running.push({ close: () => live.stop() });
  const eventIds = () => changes.filter((change) => change.event).map((change) => change.event.id);
  return { live, changes, eventIds };
}

async function proxy(upstream, options) {
  const started = await startProxy(upstream, options);
  running.push(started);
  return started;
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/** Each event exactly once, in cursor order. */
function assertInOrderOnce(ids) {
  ids.slice(1).forEach((id, i) => assert(BigInt(id) > BigInt(ids[i]), `event ${id} after ${ids[i]}`));
}

/** Create, update and delete one Funko; the list follows. */
async function changesFollow(live, baseUrl, name) {
  const { body: funko } = await create(baseUrl, name);
  await untilSame(live, baseUrl);
  await api(baseUrl, "PATCH", `/funkos/${funko.id}`, { price: 20, stock: 4 });
  await untilSame(live, baseUrl);
  const deleted = await api(baseUrl, "DELETE", `/funkos/${funko.id}`);
  await untilSame(live, baseUrl);
  return deleted.cursor;
}

async function loadsEveryPageThenFollows() {
  for (let batch = 0; batch < 6; batch++) {
    await Promise.all(Array.from({ length: 20 }, (_, i) => create(base, `page ${batch * 20 + i}`)));
  }
  const { live, changes, eventIds } = follow(base);
  await until("the first load", () => changes.some((change) => change.kind === "load"));
  assert(live.funkos.size > 100, `loaded ${live.funkos.size} Funkos`);
  await untilSame(live, base);
  await until("the stream to open", () => live.status === "live");
  const last = await changesFollow(live, base, "live");
  assert(live.transport === "sse", `followed on ${live.transport}`);
  assertInOrderOnce(eventIds());
  return `loaded ${live.funkos.size} Funkos over several pages, then followed a create, update and delete on sse to ${last}`;
}

/**
 * A delete between the reads of pages 1 and 2 moves page 2's first Funko onto page 1, where
 * the read has already been: the list must still hold it (no later event would bring it).
 */
async function readsPagesThatMoved() {
  const firstOf = async (page) => (await api(base, "GET", `/funkos?sort=id&limit=100&page=${page}`)).body.data[0];
  const [gone, moved] = [await firstOf(1), await firstOf(2)];
  let armed = true;
  const deletingAfterPage1 = async (url, init) => {
    const response = await fetch(url, init);
    if (armed && new URL(url).searchParams.get("page") === "1") {
      armed = false;
      await api(base, "DELETE", `/funkos/${gone.id}`);
    }
    return response;
  };
  const { live, changes } = follow(base, { fetch: deletingAfterPage1 });
  await until("the first load", () => changes.some((change) => change.kind === "load"));
  assert(live.funkos.has(moved.id), `#${moved.id}, moved onto page 1 by the delete, was missed`);
  await untilSame(live, base);
  return `#${gone.id} deleted between the reads of pages 1 and 2; #${moved.id}, moved onto page 1, still held`;
}

async function keepsTheCursorAcrossADrop(transport) {
  const cuttable = await proxy(base);
  const { live, eventIds } = follow(cuttable.url, { transport });
  await until("the stream to open", () => live.status === "live");
  cuttable.cut();
  await until("the drop to be seen", () => live.status === "reconnecting");
  const writes = [];
  for (let i = 0; i < 3; i++) writes.push(await create(base, `while cut ${transport} ${i}`));
  writes.push(await api(base, "PATCH", `/funkos/${writes[0].body.id}`, { stock: 7 }));
  writes.push(await api(base, "DELETE", `/funkos/${writes[1].body.id}`));
  cuttable.restore();
  const expected = writes.map((write) => write.cursor);
  await until("the writes made while cut", () => eventIds().length >= expected.length && live.cursor === expected.at(-1));
  const received = eventIds();
  assert(JSON.stringify(received) === JSON.stringify(expected), `got ${received}, wanted ${expected}`);
  assert(live.transport === transport, `moved to ${live.transport}`);
  await untilSame(live, base);
  return `${transport}: the ${expected.length} writes made while cut arrived once each, in order, after the reconnect`;
}

async function fallsBackToPolling() {
  const blocking = await proxy(base, { refuse: (req) => req.url.split("?")[0] === "/events" });
  const { live, changes } = follow(blocking.url);
  await until("the fall back to polling", () => live.transport === "poll");
  const transports = changes.filter((change) => change.kind === "transport").map((change) => change.transport);
  assert(transports.join() === "sse,poll", `transports ${transports}`);
  const last = await changesFollow(live, base, "fallback");
  return `/events refused, switched sse -> poll and followed to ${last}`;
}

async function reloadsOnReset(transport) {
  const cuttable = await proxy(tinyRetention);
  const { live, changes } = follow(cuttable.url, { transport });
  await until("the stream to open", () => live.status === "live");
  const before = live.cursor;
  cuttable.cut();
  const first = await create(tinyRetention, `before reset ${transport}`);
  for (let i = 0; i < 3; i++) await create(tinyRetention, `reset ${transport} ${i}`);
  await api(tinyRetention, "DELETE", `/funkos/${first.body.id}`);
  await until("the events after the cursor to be pruned", async () => {
    const { body } = await api(tinyRetention, "GET", `/events/poll?after=${before}&timeout=0`);
    return body.reset !== undefined;
  });
  cuttable.restore();
  await until("the reset", () => changes.some((change) => change.kind === "reset"));
  await untilSame(live, tinyRetention);
  const reset = changes.find((change) => change.kind === "reset");
  return `${transport}: reset (${reset.reason}) from ${before}, reloaded, equal to GET /funkos`;
}

async function followsAView(transport) {
  const view = `${RUN}-view-${transport}`;
  const filters = { category: "disney", q: view, minPrice: 5, maxPrice: 20 };
  const inside = await create(base, `${view} in`, { category: "DISNEY", price: 10 });
  const byDescription = await create(base, `described ${transport}`, { category: "DISNEY", price: 15, description: `a ${view.toUpperCase()} one` });
  const otherCategory = await create(base, `${view} serie`, { category: "SERIE", price: 10 });
  const cheap = await create(base, `${view} cheap`, { category: "DISNEY", price: 2 });
  const { live } = follow(base, { filters, transport });
  await untilSame(live, base, filters);
  assert(live.funkos.size === 2, `the view starts with ${live.funkos.size} Funkos`);
  const moves = [
    () => create(base, `${view} new`, { category: "Disney", price: 20 }),
    () => api(base, "PATCH", `/funkos/${cheap.body.id}`, { price: 5 }),
    () => api(base, "PATCH", `/funkos/${inside.body.id}`, { category: "SERIE" }),
    () => api(base, "PATCH", `/funkos/${byDescription.body.id}`, { description: null }),
    () => api(base, "PATCH", `/funkos/${otherCategory.body.id}`, { category: "DISNEY" }),
    () => api(base, "PATCH", `/funkos/${cheap.body.id}`, { price: 20.01 }),
    () => api(base, "DELETE", `/funkos/${otherCategory.body.id}`),
  ];
  for (const move of moves) {
    await move();
    await untilSame(live, base, filters);
  }
  return `${transport}: ${JSON.stringify(filters)}: equal to GET /funkos after ${moves.length} moves in and out`;
}

async function check(name, test) {
  console.log(`ok client: ${name}: ${await test()}`);
}

try {
  if (!base) throw new Error("usage: node client.mjs <baseUrl> [<baseUrlWithTinyRetention>]");
  await check("initial load and live changes", loadsEveryPageThenFollows);
  await check("pages read across a delete", readsPagesThatMoved);
  for (const transport of TRANSPORTS) await check("cursor kept across a drop", () => keepsTheCursorAcrossADrop(transport));
  await check("fallback", fallsBackToPolling);
  if (tinyRetention) {
    for (const transport of TRANSPORTS) await check("reset", () => reloadsOnReset(transport));
  } else {
    console.log("skip client: reset: give a server with --retention-events 1 --prune-interval-seconds 1 as the second argument");
  }
  for (const transport of TRANSPORTS) await check("view", () => followsAView(transport));
} catch (error) {
  console.error(`FAILED client: ${error.stack ?? error}`);
  process.exitCode = 1;
} finally {
  await Promise.all(running.map((item) => item.close()));
}
process.exit();
