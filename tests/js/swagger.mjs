// Drives Swagger UI at /docs in headless Chromium: "Try it out" on GET /events starts with the
// end condition the spec's examples give (maxEvents=1), Execute holds the request open, a write
// through the REST API commits, and the response panel shows that write's change event.
// Prints "ok swagger: ...".
// Usage: node swagger.mjs <baseUrl>
import { chromium } from "playwright-core";

const [base] = process.argv.slice(2);
const TIMEOUT = 20_000;
const RUN = Date.now().toString(36);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});

/** The number of open SSE streams, as `/metrics` counts them. */
async function openSseStreams() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => /^funko_live_stream_connections\{[^}]*transport="sse"[^}]*\} /.test(l));
  if (!line) throw new Error(`no SSE stream gauge in /metrics:\n${text}`);
  return Number(line.split(" ").pop());
}

async function until(what, condition) {
  const deadline = Date.now() + TIMEOUT;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(`${base}/docs`);
  const operation = page.locator("#operations-Stream-events");
  await operation.locator(".opblock-summary").click();
  await operation.locator(".try-out__btn").click();

  const maxEvents = operation.locator('tr[data-param-name="maxEvents"] input');
  const prefilled = await maxEvents.inputValue({ timeout: TIMEOUT });
  if (prefilled !== "1") throw new Error(`maxEvents starts as ${JSON.stringify(prefilled)}, not 1`);

  const before = await openSseStreams();
  await operation.locator(".execute").click();
  // The request is held: the stream is open on the server and waits for a commit.
  await until("Swagger UI's stream to open", async () => (await openSseStreams()) > before);

  const name = `${RUN} Swagger`;
  const created = await fetch(`${base}/funkos`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, price: 3, stock: 1, category: "OTROS" }),
  });
  if (created.status !== 201) throw new Error(`POST /funkos: ${created.status} ${await created.text()}`);
  const cursor = created.headers.get("stream-cursor");

  const body = operation.locator(".live-responses-table .response-col_description pre");
  await body.first().waitFor({ timeout: TIMEOUT });
  const text = await body.first().textContent();
  const frame = text.split("\n\n").find((f) => f.startsWith(`id: ${cursor}\n`));
  if (!frame) throw new Error(`the response panel has no event ${cursor}:\n${text}`);
  const event = JSON.parse(frame.split("\n").find((l) => l.startsWith("data: ")).slice(6));
  if (event.type !== "CREATE" || event.data.name !== name) throw new Error(`unexpected event ${frame}`);
  const status = await operation.locator(".live-responses-table .response .response-col_status").first().textContent();
  if (status.trim() !== "200") throw new Error(`status ${status}`);
  if (errors.length) throw new Error(`errors in the page:\n${errors.join("\n")}`);
  console.log(`ok swagger: Try it out on GET /events showed event ${cursor} (CREATE ${name})`);
} finally {
  await browser.close();
}
