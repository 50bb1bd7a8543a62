// funko-live's client library: a live list of Funkos. It reads the whole list with its
// Stream-Cursor, follows the change stream from that cursor (Server-Sent Events, long-polling
// or WebSocket), keeps the cursor across reconnects, reloads on a reset and reports every
// change through one callback. No dependencies, no build step; types in client.d.ts.
//
//   import { liveFunkos } from "/client.js";
//   const live = liveFunkos({ filters: { category: "DISNEY" }, onChange(funkos, change) { … } });

const PAGE_LIMIT = 100; // the largest page the server answers
const READ_ATTEMPTS = 5; // reads of the whole list until its pages agree (see readList)
const SSE_FAILURES_BEFORE_POLL = 3;
const POLL_TIMEOUT_SECONDS = 25;
const POLL_GRACE_MS = 10_000; // how late a held poll may answer before it counts as lost
const READ_TIMEOUT_MS = 30_000; // a page read that takes longer is retried
const EVENTSOURCE_CLOSED = 2; // EventSource.CLOSED: it gave up and will not reconnect
const FILTER_KEYS = ["category", "q", "minPrice", "maxPrice"];
const TRANSPORTS = { sse: followSse, poll: followPoll, ws: followWs };

/**
 * Follows the Funkos (those of a view, with `filters`) and reports each change to
 * `onChange(funkos, change)`. Returns a handle with the current state and `stop()`.
 */
export function liveFunkos(options = {}) {
  const live = new LiveList(options);
  queueMicrotask(() => live.start()); // so no callback runs before this returns
  return {
    get funkos() { return live.funkos; },
    get cursor() { return live.cursor; },
    get transport() { return live.transport; },
    get status() { return live.status; },
    stop: () => live.stop(),
  };
}

/**
 * One REST call. Answers `{status, ok, headers, body}` whatever the status (a 401 or 403
 * tells the caller to ask for a token); throws only when the server cannot be reached.
 */
export async function request(method, path, options = {}) {
  const { body, token, headers = {}, baseUrl = "", fetch = globalThis.fetch } = options;
  const response = await fetch(baseUrl + path, {
    method,
    headers: {
      ...(body !== undefined && { "Content-Type": "application/json" }),
      ...(token && { Authorization: `Bearer ${token}` }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const isJson = /json/.test(response.headers.get("Content-Type") ?? "");
  const text = await response.text();
  return {
    status: response.status,
    ok: response.ok,
    headers: response.headers,
    body: isJson && text ? JSON.parse(text) : text || null,
  };
}

/** True when `funko` belongs to the view `filters` (the rules of `GET /funkos`). */
export function matches(funko, filters) {
  const { category, q, minPrice, maxPrice } = viewFilters(filters);
  const lower = (text) => (text ?? "").toLowerCase();
  return (category === undefined || lower(funko.category) === lower(category))
    && (q === undefined || lower(funko.name).includes(lower(q)) || lower(funko.description).includes(lower(q)))
    && (minPrice === undefined || funko.price >= minPrice)
    && (maxPrice === undefined || funko.price <= maxPrice);
}

/** The list, its cursor and the transport that follows it. */
class LiveList {
  constructor({
    baseUrl = "", filters, transport = "auto", onChange = () => {},
    fetch = globalThis.fetch, EventSource = globalThis.EventSource, WebSocket = globalThis.WebSocket,
  }) {
    if (transport !== "auto" && !TRANSPORTS[transport]) throw new TypeError(`unknown transport ${transport}`);
    this.baseUrl = baseUrl;
    this.filters = viewFilters(filters);
    this.wanted = transport;
    this.onChange = onChange;
    this.fetch = (...args) => fetch(...args); // a bare call: a browser's fetch refuses another `this`
    this.EventSource = EventSource;
    this.WebSocket = WebSocket;
    this.funkos = new Map(); // id -> Funko, the list (of the view)
    this.cursor = null; // the stream position of the last event or reset the transport delivered
    this.transport = null;
    this.status = null;
    this.stopper = new AbortController(); // aborts reads, polls and waits at stop()
    this.closeTransport = () => {};
    this.work = Promise.resolve(); // what the stream delivered, applied one at a time, in order
  }

  get stopped() {
    return this.stopper.signal.aborted;
  }

  async start() {
    if (this.stopped) return;
    this.setStatus("connecting");
    const cursor = await this.reload();
    if (this.stopped) return;
    this.cursor = cursor;
    const first = this.wanted !== "auto" ? this.wanted : this.EventSource ? "sse" : "poll";
    this.follow(first);
  }

  stop() {
    this.stopper.abort();
    this.closeTransport();
    this.setStatus("stopped");
  }

  /** Reads the whole list (retrying until it can) and reports it; answers the read's cursor. */
  async reload() {
    for (const delay of backoff()) {
      try {
        const { funkos, cursor } = await readList(this.fetch, this.baseUrl, this.filters, this.stopper.signal);
        this.funkos = funkos;
        this.emit({ kind: "load" });
        return cursor;
      } catch (error) {
        if (this.stopped) return null;
        this.setStatus("reconnecting", error);
        await sleep(delay, this.stopper.signal);
      }
    }
  }

  /** Hands the stream over to `name` ("sse", "poll" or "ws"), from the current cursor. */
  follow(name) {
    this.closeTransport();
    this.transport = name;
    this.emit({ kind: "transport", transport: name });
    this.closeTransport = TRANSPORTS[name](this);
  }

  /** A change event arrived: move the cursor now, apply it in turn. */
  deliver(event) {
    this.cursor = event.id;
    return this.enqueue(() => this.apply(event));
  }

  /** The server could not serve the cursor: go on from the reset's, once the list is reloaded. */
  deliverReset({ cursor, reason }) {
    this.cursor = cursor;
    return this.enqueue(async () => {
      this.emit({ kind: "reset", reason, cursor });
      await this.reload();
    });
  }

  /** Runs `task` after everything delivered before it (a reload holds back later events). */
  enqueue(task) {
    this.work = this.work
      .then(() => (this.stopped ? undefined : task()))
      .catch((error) => setTimeout(() => { throw error; })); // a throwing onChange stops nothing
    return this.work;
  }

  /** Applies one event to the list; reports it as an upsert, a remove or a skip. */
  apply(event) {
    const funko = event.data;
    const held = event.entity === "FUNKOS" ? this.funkos.get(funko.id) : undefined;
    // A read of several pages may already hold a newer version than a replayed event.
    if (event.entity !== "FUNKOS" || (held && funko.version < held.version)) {
      this.emit({ kind: "skip", event });
    } else if (this.inView(event)) {
      this.funkos.set(funko.id, funko);
      this.emit({ kind: "upsert", funko, event });
    } else if (held) {
      this.funkos.delete(funko.id);
      this.emit({ kind: "remove", id: funko.id, event });
    } else {
      this.emit({ kind: "skip", event });
    }
  }

  /**
   * Whether the event leaves its Funko in the list. A view stream says so (`view`); a plain
   * one (a server that does not filter streams yet) is filtered here by the same rules.
   */
  inView(event) {
    if (event.view) return event.view !== "leave";
    return event.type !== "DELETE" && !event.data.isDeleted && matches(event.data, this.filters);
  }

  setStatus(status, error) {
    if (status === this.status) return;
    this.status = status;
    this.emit({ kind: "status", status, ...(error && { error }) });
  }

  /** Calls onChange with the list sorted by id; after stop() only "stopped" is reported. */
  emit(change) {
    if (this.stopped && change.kind !== "status") return;
    const funkos = [...this.funkos.values()].sort((a, b) => a.id - b.id);
    this.onChange(funkos, change);
  }

  /** A stream URL for `path`: the view's filters, Funko events only, plus `params`. */
  url(path, params) {
    return `${this.baseUrl}${path}?${query({ ...params, entity: "FUNKOS", ...this.filters })}`;
  }
}

/**
 * Server-Sent Events. EventSource reconnects by itself, with Last-Event-ID; one that gave up
 * (an HTTP error) is made again from the cursor. In "auto", one that fails
 * SSE_FAILURES_BEFORE_POLL times without ever having opened (a proxy that blocks streams)
 * hands over to long-polling.
 */
function followSse(live) {
  let source;
  let retry;
  let delays = backoff();
  let opened = false;
  let failures = 0;
  const connect = () => {
    source = new live.EventSource(live.url("/events", { lastEventId: live.cursor }));
    source.onopen = () => {
      opened = true;
      delays = backoff();
      live.setStatus("live");
    };
    source.onmessage = (message) => live.deliver(JSON.parse(message.data));
    source.addEventListener("reset", (message) => live.deliverReset(JSON.parse(message.data)));
    source.onerror = () => {
      live.setStatus("reconnecting");
      if (!opened && ++failures >= SSE_FAILURES_BEFORE_POLL && live.wanted === "auto") {
        live.follow("poll");
      } else if (source.readyState === EVENTSOURCE_CLOSED) {
        retry = setTimeout(connect, delays.next().value);
      }
    };
  };
  connect();
  return () => {
    clearTimeout(retry);
    source.close();
  };
}

/** Long-polling: one request at a time from the cursor, retried with backoff when it fails. */
function followPoll(live) {
  const stopper = new AbortController();
  (async () => {
    let delays = backoff();
    let timeout = 0; // the first poll answers at once, so the list shows live without a change
    while (!stopper.signal.aborted) {
      try {
        const params = { after: live.cursor, timeout, limit: PAGE_LIMIT };
        const lost = AbortSignal.timeout(timeout * 1000 + POLL_GRACE_MS);
        const response = await live.fetch(live.url("/events/poll", params), {
          signal: AbortSignal.any([stopper.signal, lost]),
        });
        if (!response.ok) throw new Error(`GET /events/poll answered ${response.status}`);
        const answer = await response.json();
        live.setStatus("live");
        delays = backoff();
        timeout = POLL_TIMEOUT_SECONDS;
        if (answer.reset) await live.deliverReset(answer.reset);
        else await deliverPolled(live, answer);
      } catch (error) {
        if (stopper.signal.aborted) return;
        live.setStatus("reconnecting", error);
        await sleep(delays.next().value, stopper.signal);
      }
    }
  })();
  return () => stopper.abort();
}

/** A poll's events, then its cursor (which also moves past events a view hides). */
async function deliverPolled(live, { events, cursor }) {
  events.forEach((event) => live.deliver(event));
  live.cursor = cursor;
  await live.work;
}

/** WebSocket: reconnects with `?after=<cursor>`, the cursor the close reason names if any. */
function followWs(live) {
  let socket;
  let retry;
  let delays = backoff();
  let closed = false;
  const connect = () => {
    socket = new live.WebSocket(wsUrl(live.url("/ws", { after: live.cursor })), "funko-live");
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (!frame.op) {
        live.deliver(frame);
      } else if (frame.op === "welcome") {
        delays = backoff();
        live.setStatus("live");
      } else if (frame.op === "reset") {
        live.deliverReset(frame);
      }
    };
    socket.onerror = () => {}; // a close follows; without a listener Node's `ws` would throw
    socket.onclose = ({ reason }) => {
      if (closed) return;
      live.cursor = closeCursor(reason) ?? live.cursor;
      live.setStatus("reconnecting");
      retry = setTimeout(connect, delays.next().value);
    };
  };
  connect();
  return () => {
    closed = true;
    clearTimeout(retry);
    socket.close();
  };
}

/** The cursor in a close reason `{"reason":…,"cursor":…}`, or null. */
function closeCursor(reason) {
  try {
    return JSON.parse(reason).cursor ?? null;
  } catch {
    return null;
  }
}

/** An http(s) URL, relative ones against the page, as a ws(s) URL. */
function wsUrl(url) {
  const absolute = new URL(url, globalThis.location?.href);
  absolute.protocol = absolute.protocol === "https:" ? "wss:" : "ws:";
  return absolute.href;
}

/**
 * Reads every page of the list; answers the Funkos by id and the first page's cursor (the
 * oldest any page saw: the stream replays every later change, and apply() skips versions
 * already held). Pages read at different cursors can also miss a Funko, moved to an earlier
 * page by a change in between, so such a read is read again, READ_ATTEMPTS times at most.
 */
async function readList(fetch, baseUrl, filters, signal) {
  for (let attempt = 1; ; attempt++) {
    const { funkos, cursors } = await readPages(fetch, baseUrl, filters, signal);
    if (cursors.every((cursor) => cursor === cursors[0]) || attempt === READ_ATTEMPTS) {
      return { funkos, cursor: cursors[0] };
    }
  }
}

async function readPages(fetch, baseUrl, filters, signal) {
  const funkos = new Map();
  const cursors = [];
  for (let page = 1, pages = 1; page <= pages; page++) {
    const params = { ...filters, sort: "id", limit: PAGE_LIMIT, page };
    const response = await fetch(`${baseUrl}/funkos?${query(params)}`, {
      signal: AbortSignal.any([signal, AbortSignal.timeout(READ_TIMEOUT_MS)]),
    });
    if (!response.ok) throw new Error(`GET /funkos answered ${response.status}`);
    const cursor = response.headers.get("Stream-Cursor");
    // Without it (a cross-origin read the server does not expose it to) the stream could
    // only start from "now", with a gap: refuse rather than miss changes.
    if (!cursor) throw new Error("GET /funkos answered no readable Stream-Cursor header");
    cursors.push(cursor);
    const { data, meta } = await response.json();
    data.forEach((funko) => funkos.set(funko.id, funko));
    pages = meta.totalPages;
  }
  return { funkos, cursors };
}

/** The filters that are set, numbers as numbers. */
function viewFilters(filters = {}) {
  const set = {};
  for (const key of FILTER_KEYS) {
    const value = filters[key];
    if (value === undefined || value === null || value === "") continue;
    set[key] = key.endsWith("Price") ? Number(value) : String(value);
  }
  return set;
}

function query(params) {
  const defined = Object.entries(params).filter(([, value]) => value !== undefined && value !== null);
  return new URLSearchParams(defined).toString();
}

/** Delays between retries: 0.5 s, doubling up to 10 s. */
function* backoff() {
  for (let delay = 500; ; delay = Math.min(delay * 2, 10_000)) yield delay;
}

/** Waits `ms`, or less if `signal` aborts. */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}
