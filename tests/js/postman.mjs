// Runs the Postman collection (postman/funko-live.postman_collection.json) against a server with
// newman, the way a newcomer's "Run collection" would, and fails on any failed request or assertion.
// Usage: node tests/js/postman.mjs BASE_URL [TOKEN]
//   BASE_URL  e.g. http://127.0.0.1:8080 (overrides the environment's baseUrl)
//   TOKEN     one of the server's --api-tokens (overrides the environment's token; default none)
// On success the last line is `ok postman: N requests, M assertions`; otherwise the exit code is 1
// (failures, printed by newman's cli reporter) or 2 (the run could not start or crashed).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import newman from "newman";

const postmanDir = fileURLToPath(new URL("../../postman/", import.meta.url));
const collectionPath = postmanDir + "funko-live.postman_collection.json";
const environmentPath = postmanDir + "funko-live.postman_environment.json";
const SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json";

const [baseUrlArg, token = ""] = process.argv.slice(2);
if (!baseUrlArg || !/^https?:\/\//.test(baseUrlArg)) {
  console.error("usage: node tests/js/postman.mjs BASE_URL [TOKEN]   (e.g. http://127.0.0.1:8080)");
  process.exit(2);
}
const baseUrl = baseUrlArg.replace(/\/+$/, "");

// The shape newman and the Postman app rely on, checked before running so a hand edit or a
// bad export fails with a clear message instead of a confusing run.
function checkCollection(collection) {
  const problems = [];
  const where = (path) => path.join(" / ") || "(collection)";
  const checkEvents = (events, path) => {
    if (events === undefined) return;
    if (!Array.isArray(events)) return problems.push(`${where(path)}: event is not an array`);
    for (const e of events) {
      if (!["prerequest", "test"].includes(e.listen)) problems.push(`${where(path)}: event.listen ${JSON.stringify(e.listen)}`);
      const exec = e.script && e.script.exec;
      if (!Array.isArray(exec) || !exec.every((line) => typeof line === "string")) {
        problems.push(`${where(path)}: ${e.listen} script.exec is not an array of lines`);
      }
    }
  };
  const checkItems = (items, path) => {
    if (!Array.isArray(items)) return problems.push(`${where(path)}: item is not an array`);
    for (const item of items) {
      const here = [...path, item.name];
      if (typeof item.name !== "string" || !item.name) problems.push(`${where(path)}: an item has no name`);
      checkEvents(item.event, here);
      if (item.item !== undefined) {
        checkItems(item.item, here);
        continue;
      }
      const request = item.request;
      if (!request || typeof request.method !== "string") {
        problems.push(`${where(here)}: no request.method`);
        continue;
      }
      const url = request.url;
      const raw = typeof url === "string" ? url : url && url.raw;
      if (typeof raw !== "string") problems.push(`${where(here)}: no request.url.raw`);
      else if (!raw.startsWith("{{baseUrl}}/")) problems.push(`${where(here)}: url ${raw} does not start with {{baseUrl}}/`);
      if (url && typeof url === "object" && !(Array.isArray(url.host) && Array.isArray(url.path))) {
        problems.push(`${where(here)}: request.url has raw but no host/path arrays`);
      }
    }
  };
  if (!collection.info || collection.info.schema !== SCHEMA) problems.push(`info.schema is not ${SCHEMA}`);
  if (!collection.info || !collection.info.name) problems.push("info.name is missing");
  checkEvents(collection.event, []);
  checkItems(collection.item, []);
  return problems;
}

let collection;
let environment;
try {
  collection = JSON.parse(readFileSync(collectionPath, "utf8"));
  environment = JSON.parse(readFileSync(environmentPath, "utf8"));
} catch (error) {
  console.error(`cannot read the collection or environment: ${error.message}`);
  process.exit(2);
}
const problems = checkCollection(collection);
if (problems.length) {
  console.error(`${collectionPath} is not a valid v2.1 collection:\n  ${problems.join("\n  ")}`);
  process.exit(2);
}

newman.run(
  {
    collection,
    environment,
    envVar: [
      { key: "baseUrl", value: baseUrl },
      { key: "token", value: token },
    ],
    // The upload requests name their files relative to the postman/ folder; nothing outside it.
    workingDir: postmanDir,
    insecureFileRead: false,
    reporters: ["cli"],
    timeoutRequest: 30_000,
    timeout: 300_000,
  },
  (error, summary) => {
    // Let the cli reporter print its summary first (it also listens for the end of the run).
    setImmediate(() => {
      if (error) {
        console.error(`newman could not run the collection: ${error.stack || error}`);
        process.exitCode = 2;
        return;
      }
      const { stats, failures } = summary.run;
      const failed =
        failures.length +
        stats.requests.failed +
        stats.assertions.failed +
        stats.testScripts.failed +
        stats.prerequestScripts.failed;
      if (summary.run.error) {
        console.error(`the run stopped: ${summary.run.error.message || summary.run.error}`);
        process.exitCode = 2;
      } else if (failed > 0) {
        console.error(`FAILED postman: ${failures.length} failure(s) in ${stats.requests.total} requests, ${stats.assertions.total} assertions`);
        process.exitCode = 1;
      } else {
        console.log(`ok postman: ${stats.requests.total} requests, ${stats.assertions.total} assertions`);
      }
    });
  },
);
