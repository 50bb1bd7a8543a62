// An SSE client nobody on this team wrote: the `eventsource` package (WHATWG EventSource).
// It connects, prints each event as one JSON line, and reconnects by itself with
// Last-Event-ID when the server goes away. Exits after N events.
// Usage: node sse_client.mjs URL N
import { EventSource } from "eventsource";

const [url, count] = [process.argv[2], Number(process.argv[3])];
let seen = 0;
const source = new EventSource(url);
source.onopen = () => console.log(JSON.stringify({ open: true }));
source.onmessage = (message) => {
  const event = JSON.parse(message.data);
  console.log(JSON.stringify({ lastEventId: message.lastEventId, event }));
  if (++seen >= count) {
    source.close();
    process.exit(0);
  }
};
source.addEventListener("reset", (message) => console.log(JSON.stringify({ reset: JSON.parse(message.data) })));
source.onerror = () => console.log(JSON.stringify({ error: true }));
