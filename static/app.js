// The live page, built on /client.js: the Funkos of a view (category, search, price range)
// followed live on a chosen transport, a form that creates, edits and deletes them, and the
// recent events with their cursors.
import { liveFunkos, matches, request } from "/client.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "funko-live.token"; // in sessionStorage: it lasts as long as the tab
const EVENTS_SHOWN = 30;
const SEARCH_DELAY_MS = 250;
const TRANSPORT_NAMES = { sse: "Server-Sent Events", poll: "long-polling", ws: "WebSocket" };
const VIEW_INPUTS = { category: "view-category", q: "view-q", minPrice: "view-min", maxPrice: "view-max" };
const PLACEHOLDER_IMAGE = "/storage/placeholder.png"; // the server's, for images that fail
const FORM_FIELDS = ["name", "price", "stock", "category", "description", "image"];

let live = null;
let editing = null; // the Funko the form edits; null while it creates one
let rows = new Map(); // id -> { funko, tr }: a row is kept while its Funko does not change

// --- Following the view -----------------------------------------------------------------

/** (Re)starts the live list for the current view and transport. */
function follow() {
  live?.stop();
  live = liveFunkos({ filters: currentView(), transport: $("transport").value, onChange });
  rememberInUrl();
}

/** Everything the library reports: see the Change type in /client.d.ts. */
function onChange(funkos, change) {
  if (change.kind === "status") showStatus(change.status, change.error);
  if (change.kind === "transport") showTransport(change.transport);
  if (change.kind === "load") loadCategories();
  if (change.kind === "reset") logReset(change);
  if (change.event) logEvent(change);
  if (["load", "upsert", "remove"].includes(change.kind)) render(funkos, change.funko?.id);
  showCursor(live.cursor);
}

/** The view in the filter inputs; empty ones filter nothing. */
function currentView() {
  const view = {};
  for (const [key, id] of Object.entries(VIEW_INPUTS)) {
    const value = $(id).value.trim();
    if (value) view[key] = value;
  }
  return view;
}

/** Keeps the transport and the view in the address, so a reload or a link shows the same. */
function rememberInUrl() {
  const params = new URLSearchParams(currentView());
  if ($("transport").value !== "auto") params.set("transport", $("transport").value);
  history.replaceState(null, "", params.size ? `?${params}` : location.pathname);
}

// --- Rendering ----------------------------------------------------------------------------

function showStatus(status, error) {
  $("state").dataset.state = status;
  $("state").textContent = status;
  $("state").title = error?.message ?? ""; // why it is reconnecting, when a request failed
}

function showTransport(transport) {
  $("transport-name").textContent = TRANSPORT_NAMES[transport];
  document.body.dataset.transport = transport;
}

function showCursor(cursor) {
  $("cursor").textContent = cursor ?? "—";
  document.body.dataset.cursor = cursor ?? "";
}

/** Shows `funkos` in order, touching only rows that changed; flashes the one with `changedId`. */
function render(funkos, changedId) {
  const next = new Map(funkos.map((funko) => {
    const kept = rows.get(funko.id);
    return [funko.id, kept?.funko === funko ? kept : { funko, tr: row(funko) }];
  }));
  const body = $("funkos").tBodies[0];
  const wanted = [...next.values()].map(({ tr }) => tr);
  const keep = new Set(wanted);
  [...body.rows].filter((tr) => !keep.has(tr)).forEach((tr) => tr.remove());
  wanted.forEach((tr, i) => body.rows[i] !== tr && body.insertBefore(tr, body.rows[i] ?? null));
  rows = next;
  if (changedId !== undefined) flash(rows.get(changedId)?.tr);
  showCount(funkos.length);
}

function row(funko) {
  const tr = document.createElement("tr");
  tr.dataset.id = funko.id;
  const image = document.createElement("img");
  image.src = funko.image;
  image.alt = "";
  image.loading = "lazy";
  image.addEventListener("error", () => { image.src = PLACEHOLDER_IMAGE; }, { once: true });
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = funko.category;
  const edit = document.createElement("button");
  edit.type = "button";
  edit.className = "edit";
  edit.textContent = "Edit";
  edit.setAttribute("aria-label", `Edit ${funko.name}`);
  edit.addEventListener("click", () => startEditing(funko.id));
  const updated = new Date(funko.updatedAt);
  tr.append(
    cell("thumb", image), cell("id", `#${funko.id}`), cell("name", funko.name),
    cell("description", funko.description ?? ""), cell("category", tag),
    cell("price num", funko.price.toFixed(2)), cell("stock num", String(funko.stock)),
    cell("updated", updated.toLocaleTimeString()), cell("actions", edit),
  );
  tr.querySelector(".updated").title = updated.toLocaleString();
  return tr;
}

function cell(className, content) {
  const td = document.createElement("td");
  td.className = className;
  td.append(content);
  return td;
}

function flash(tr) {
  if (!tr) return;
  tr.classList.remove("flash");
  void tr.offsetWidth; // restart the animation on a row that flashed a moment ago
  tr.classList.add("flash");
}

function showCount(count) {
  const filtered = Object.keys(currentView()).length > 0;
  $("count").textContent = `${count} Funko${count === 1 ? "" : "s"}${filtered ? " in this view" : ""}`;
  $("empty").hidden = count > 0;
  $("empty").textContent = filtered
    ? "No Funko matches this view."
    : "No Funkos yet. Create one with the form: it appears here, and in every open page, at once.";
}

/** One line per event: its type, the Funko, the view tag when the server sends one, the cursor. */
function logEvent({ kind, event }) {
  const line = logLine(kind, event.type, `${event.data.name} #${event.data.id}`, event.id);
  if (event.view) line.querySelector(".what").after(badge("view-tag", event.view));
  if (kind === "skip") line.title = "not in this view";
  prependLog(line);
}

function logReset({ reason, cursor }) {
  prependLog(logLine("reset", "RESET", `${reason}: reloaded the list`, cursor));
}

function logLine(kind, type, what, cursor) {
  const li = document.createElement("li");
  li.dataset.kind = kind;
  const text = document.createElement("span");
  text.className = "what";
  text.textContent = what;
  const at = document.createElement("code");
  at.textContent = cursor;
  li.append(badge(`type type-${type.toLowerCase()}`, type), text, at);
  return li;
}

function badge(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function prependLog(li) {
  const list = $("events");
  list.prepend(li);
  while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
}

// --- Categories -----------------------------------------------------------------------------

/** Fills both category selects from `GET /categories`, keeping what each has selected. */
async function loadCategories() {
  const answer = await request("GET", "/categories").catch(() => null);
  if (!answer?.ok) return;
  const names = answer.body.filter((category) => !category.isDeleted).map((category) => category.name);
  fillSelect($("view-category"), [["", "All categories"], ...names.map((name) => [name, name])]);
  fillSelect($("f-category"), names.map((name) => [name, name]));
}

function fillSelect(select, options) {
  const selected = select.value.toLowerCase();
  select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  const match = options.find(([value]) => value.toLowerCase() === selected);
  if (match) select.value = match[0];
}

// --- The form -------------------------------------------------------------------------------

function startEditing(id) {
  const funko = live.funkos.get(id);
  if (!funko) return;
  editing = funko;
  const form = $("editor");
  for (const field of FORM_FIELDS) form.elements[field].value = funko[field] ?? "";
  $("editor-title").textContent = `Edit #${funko.id}`;
  $("f-submit").textContent = "Save";
  $("f-delete").hidden = false;
  $("f-cancel").hidden = false;
  clearProblems();
  say("");
  $("f-name").focus(); // scrolls the form into view where it is below the list
}

function stopEditing() {
  editing = null;
  const form = $("editor");
  const category = form.elements.category.value;
  form.reset();
  form.elements.category.value = category; // the next Funko is often of the same category
  $("editor-title").textContent = "New Funko";
  $("f-submit").textContent = "Create";
  $("f-delete").hidden = true;
  $("f-cancel").hidden = true;
  clearProblems();
}

/** The form as a Funko body: numbers as numbers, an empty description or image as none. */
function formBody() {
  const value = (field) => $("editor").elements[field].value.trim();
  const number = (field) => (value(field) === "" ? undefined : Number(value(field)));
  return {
    name: value("name"),
    price: number("price"),
    stock: number("stock"),
    category: value("category"),
    description: value("description") || null,
    image: value("image") || undefined,
  };
}

async function save(event) {
  event.preventDefault();
  const body = formBody();
  const answer = editing
    ? await submit("PUT", `/funkos/${editing.id}`, body, editing)
    : await submit("POST", "/funkos", body);
  if (!answer) return;
  const inView = matches(answer.body, currentView()) ? "" : " (not in this view)";
  say(`${editing ? "Saved" : "Created"} ${answer.body.name} #${answer.body.id}${inView}.`);
  stopEditing();
}

async function remove() {
  const { id, name } = editing;
  if (await submit("DELETE", `/funkos/${id}`, undefined, editing)) {
    say(`Deleted ${name} #${id}.`);
    stopEditing();
  }
}

/**
 * Sends a write (with If-Match when it changes `funko`, so a change made meanwhile is not
 * overwritten); answers the answer when it succeeded, otherwise shows why and answers null.
 */
async function submit(method, path, body, funko) {
  clearProblems();
  setBusy(true);
  try {
    const headers = funko ? { "If-Match": `"${funko.version}"` } : {};
    const answer = await write(method, path, body, headers);
    if (answer.ok) return answer;
    showProblem(answer);
  } catch {
    showProblem({ body: { detail: "The server cannot be reached. Try again in a moment." } });
  } finally {
    setBusy(false);
  }
  return null;
}

function setBusy(busy) {
  for (const button of $("editor").querySelectorAll(".buttons button")) button.disabled = busy;
}

/** A write with the tab's token; asks for one when the server answers 401 or 403. */
async function write(method, path, body, headers) {
  for (;;) {
    const answer = await request(method, path, { body, headers, token: sessionStorage.getItem(TOKEN_KEY) });
    if (answer.status !== 401 && answer.status !== 403) return answer;
    const question = answer.status === 401
      ? "This server needs an API token to write. Token:"
      : "That token may not write. Another token:";
    const token = prompt(question);
    if (!token) return answer;
    sessionStorage.setItem(TOKEN_KEY, token.trim());
  }
}

/** Shows a problem's detail above the buttons and each field's error under its field. */
function showProblem({ status, body }) {
  const problem = typeof body === "object" && body ? body : { detail: `The server answered ${status}.` };
  const unplaced = [];
  for (const { field, message } of problem.errors ?? []) {
    if (!FORM_FIELDS.includes(field)) {
      unplaced.push(`${field}: ${message}`);
      continue;
    }
    $(`f-${field}-error`).textContent = message;
    $("editor").elements[field].setAttribute("aria-invalid", "true");
  }
  const hint = status === 412 && "Someone changed it meanwhile: choose Edit again to start from the latest.";
  const box = $("form-problem");
  box.textContent = [problem.detail ?? problem.title ?? "The write failed.", hint, ...unplaced].filter(Boolean).join(" · ");
  box.hidden = false;
  const firstInvalid = $("editor").querySelector('[aria-invalid="true"]');
  firstInvalid?.focus();
}

function clearProblems() {
  $("form-problem").hidden = true;
  for (const field of FORM_FIELDS) {
    $(`f-${field}-error`).textContent = "";
    $("editor").elements[field].removeAttribute("aria-invalid");
  }
}

function say(text) {
  $("form-status").textContent = text;
}

// --- Start ----------------------------------------------------------------------------------

/** Takes the transport and the view from the address (`?transport=ws&category=DISNEY`). */
function restoreFromUrl() {
  const params = new URLSearchParams(location.search);
  if (TRANSPORT_NAMES[params.get("transport")]) $("transport").value = params.get("transport");
  for (const [key, id] of Object.entries(VIEW_INPUTS)) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  // Until GET /categories answers, the wanted category is the only option besides "All".
  if (params.get("category")) {
    $("view-category").append(new Option(params.get("category")));
    $("view-category").value = params.get("category");
  }
}

function listen() {
  let typing;
  $("view").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(follow, event.target.tagName === "SELECT" ? 0 : SEARCH_DELAY_MS);
  });
  $("view").addEventListener("submit", (event) => event.preventDefault());
  $("transport").addEventListener("change", follow);
  $("editor").addEventListener("submit", save);
  $("f-delete").addEventListener("click", remove);
  $("f-cancel").addEventListener("click", () => {
    stopEditing();
    say("");
  });
}

restoreFromUrl();
listen();
follow();
