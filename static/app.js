// The live page: loads the Funkos, then follows the change stream from the cursor of that
// read, so nothing committed in between is missed. Three transports, one cursor:
// Server-Sent Events (default), long-polling (the fallback when EventSource keeps failing)
// and WebSocket. A `reset` means the cursor cannot be served: reload, continue from it.
"use strict";

const state = {
  funkos: new Map(),   // id -> Funko (live ones only)
  cursor: null,        // the last position applied
  transport: null,     // "sse" | "poll" | "ws"
  stop: () => {},      // closes the current transport
  sseFailures: 0,
};

const $ = (id) => document.getElementById(id);
const SSE_FAILURES_BEFORE_FALLBACK = 3;

function setStatus(status) {
  $("state").dataset.state = status;
  $("state").textContent = status;
}

function setCursor(cursor) {
  state.cursor = cursor;
  $("cursor").textContent = cursor ?? "—";
  document.body.dataset.cursor = cursor ?? "";
}

function render(changedId) {
  const rows = [...state.funkos.values()].sort((a, b) => a.id - b.id);
  const body = $("funkos").querySelector("tbody");
  body.replaceChildren(...rows.map((f) => {
    const tr = document.createElement("tr");
    tr.dataset.id = f.id;
    if (f.id === changedId) tr.classList.add("flash");
    const cells = [
      f.id, f.name, null, f.price.toFixed(2), f.stock,
      new Date(f.updatedAt).toLocaleTimeString(),
    ];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 2) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = f.category;
        td.append(tag);
      } else {
        td.textContent = value;
      }
      if (i === 3 || i === 4) td.className = "num";
      if (i === 1) td.className = "name";
      tr.append(td);
    });
    return tr;
  }));
  $("count").textContent = rows.length;
  $("empty").hidden = rows.length > 0;
}

function logEvent(event) {
  const li = document.createElement("li");
  const what = event.entity === "FUNKOS" ? event.data.name : `category ${event.data.name}`;
  li.innerHTML = `<b></b> ${event.entity} ${event.type} · cursor ${event.id}`;
  li.querySelector("b").textContent = what;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 20) list.lastChild.remove();
}

function apply(event) {
  if (event.entity === "FUNKOS") {
    if (event.data.isDeleted) state.funkos.delete(event.data.id);
    else state.funkos.set(event.data.id, event.data);
    render(event.data.id);
  } else {
    // A renamed category changes how its Funkos read: reload them (the cursor stays the
    // stream's; the reload is at least as new as this event).
    loadAll().catch(() => {});
  }
  logEvent(event);
  setCursor(event.id);
}

/** Loads every live Funko and returns the stream cursor that read saw. */
async function loadAll() {
  const funkos = new Map();
  let cursor = null;
  for (let page = 1; ; page++) {
    const response = await fetch(`/funkos?limit=100&page=${page}`);
    if (!response.ok) throw new Error(`GET /funkos: ${response.status}`);
    // The first page's cursor is the oldest position any page saw: resuming from it may
    // repeat a change (applied idempotently), never miss one.
    cursor ??= response.headers.get("Stream-Cursor");
    const body = await response.json();
    body.data.forEach((f) => funkos.set(f.id, f));
    if (page >= body.meta.totalPages) break;
  }
  state.funkos = funkos;
  render();
  return cursor;
}

async function reload(cursorAfter) {
  const cursor = await loadAll();
  setCursor(cursorAfter ?? cursor);
}

function onReset(reset) {
  // The cursor cannot be served (too old, or from elsewhere): reload, go on from the reset.
  logEvent({ entity: "STREAM", type: "RESET", id: reset.cursor, data: { name: reset.reason } });
  return reload(reset.cursor);
}

// --- Server-Sent Events -------------------------------------------------------------
function startSse() {
  const source = new EventSource(`/events?lastEventId=${encodeURIComponent(state.cursor)}`);
  let opened = false;
  source.onopen = () => {
    opened = true;
    state.sseFailures = 0;
    setStatus("live");
  };
  source.onmessage = (message) => apply(JSON.parse(message.data));
  source.addEventListener("reset", (message) => onReset(JSON.parse(message.data)));
  source.onerror = () => {
    setStatus("connecting");
    if (!opened) state.sseFailures++;
    opened = false;
    // EventSource reconnects by itself with Last-Event-ID; when it keeps failing (a proxy
    // that buffers or blocks streams), fall back to long-polling.
    if (state.sseFailures >= SSE_FAILURES_BEFORE_FALLBACK) {
      source.close();
      switchTo("poll");
    }
  };
  return () => source.close();
}

// --- Long-polling --------------------------------------------------------------------
function startPoll() {
  let running = true;
  const controller = new AbortController();
  (async () => {
    let delay = 500;
    let timeout = 0; // the first poll answers at once, so the page knows it is connected
    while (running) {
      try {
        const response = await fetch(
          `/events/poll?after=${encodeURIComponent(state.cursor)}&timeout=${timeout}`,
          { signal: controller.signal },
        );
        timeout = 25;
        if (!response.ok) throw new Error(`poll: ${response.status}`);
        const body = await response.json();
        setStatus("live");
        delay = 500;
        if (body.reset) {
          await onReset(body.reset);
          continue;
        }
        body.events.forEach(apply);
        setCursor(body.cursor);
      } catch (error) {
        if (!running) return;
        setStatus("connecting");
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 10000);
      }
    }
  })();
  return () => {
    running = false;
    controller.abort();
  };
}

// --- WebSocket ---------------------------------------------------------------------
function startWs() {
  let socket;
  let closed = false;
  let delay = 500;
  const connect = () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws?after=${encodeURIComponent(state.cursor)}`);
    socket.onopen = () => {
      setStatus("live");
      delay = 500;
    };
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (!frame.op) apply(frame);
      else if (frame.op === "reset") onReset(frame);
    };
    socket.onclose = () => {
      if (closed) return;
      // Cut off (slow), restarted server, network: resume from the last applied cursor.
      setStatus("connecting");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  connect();
  return () => {
    closed = true;
    socket.close();
  };
}

const transports = { sse: startSse, poll: startPoll, ws: startWs };
const names = { sse: "Server-Sent Events", poll: "long-polling", ws: "WebSocket" };

function switchTo(transport) {
  state.stop();
  state.transport = transport;
  $("transport").value = transport;
  $("transport-name").textContent = names[transport];
  document.body.dataset.transport = transport;
  setStatus("connecting");
  state.stop = transports[transport]();
}

async function main() {
  const wanted = new URLSearchParams(location.search).get("transport");
  $("transport").addEventListener("change", (e) => switchTo(e.target.value));
  for (let delay = 500; ; delay = Math.min(delay * 2, 10000)) {
    try {
      setCursor(await loadAll());
      break;
    } catch (error) {
      setStatus("error");
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
  switchTo(transports[wanted] ? wanted : (window.EventSource ? "sse" : "poll"));
}

main();
