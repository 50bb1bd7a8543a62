// Follows one of the server's Durable Streams with the published clients, for
// tests/api/durable.rs. Argument: a JSON config
//   {url, live: false | "long-poll" | "sse", offset?, params?, apply: "none" | "state" | "db"}
// and one JSON line on stdout per batch the client hands over:
//   apply "none":  {offset, upToDate, items}                      (@durable-streams/client)
//   apply "state": {offset, upToDate, rows, resets}               (MaterializedState)
//   apply "db":    {offset, upToDate, rows}                       (createStreamDB, TanStack DB)
// `rows` are the values of the stream's type, ordered by key. A catch-up read (`live: false`)
// ends when it is up to date; the others run until killed. Errors: {error, status, body}.
import { stream } from "@durable-streams/client";
import { MaterializedState, isChangeEvent, isControlEvent } from "@durable-streams/state";
import { createStreamDB, createStateSchema } from "@durable-streams/state/db";

const config = JSON.parse(process.argv[2]);
const type = new URL(config.url).pathname.split("/").pop();
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const byKey = (rows) => [...rows].sort((a, b) => Number(a.id) - Number(b.id));

// A schema that accepts every value: validation is not what these tests are about.
const anything = {
  "~standard": { version: 1, vendor: "funko-live-tests", validate: (value) => ({ value }) },
};

function fail(err) {
  print({
    error: String(err?.message ?? err),
    status: err?.status ?? null,
    body: err?.json ?? err?.details ?? err?.text ?? null,
  });
  process.exit(1);
}

async function followWithClient() {
  const response = await stream({
    url: config.url,
    offset: config.offset,
    live: config.live,
    params: config.params,
    json: true,
  });
  const state = new MaterializedState();
  let resets = 0;
  response.subscribeJson((batch) => {
    if (config.apply === "state") {
      for (const message of batch.items) {
        if (isChangeEvent(message)) {
          state.apply(message);
        } else if (isControlEvent(message) && message.headers.control === "reset") {
          state.clear();
          resets += 1;
        }
      }
      const rows = byKey(state.getType(type).values());
      print({ offset: batch.offset, upToDate: batch.upToDate, rows, resets });
    } else {
      print({ offset: batch.offset, upToDate: batch.upToDate, items: batch.items });
    }
  });
  await response.closed;
}

async function followWithStreamDB() {
  const db = createStreamDB({
    streamOptions: { url: config.url, contentType: "application/json", params: config.params },
    state: createStateSchema({ rows: { schema: anything, type, primaryKey: "id" } }),
    onBatch: (batch) => {
      // The collection applies a batch once it is committed: read it on the next turn.
      setImmediate(() => {
        // Without TanStack DB's own fields (`$synced`, `$key`, …) and the insertion order.
        const rows = byKey(db.collections.rows.toArray).map((row) =>
          Object.fromEntries(Object.entries(row).filter(([k]) => !k.startsWith("$") && k !== "_seq")),
        );
        print({ offset: batch.offset, upToDate: batch.upToDate, rows });
      });
    },
  });
  await db.preload();
  await new Promise(() => {});
}

process.on("unhandledRejection", fail);
(config.apply === "db" ? followWithStreamDB() : followWithClient()).catch(fail);
