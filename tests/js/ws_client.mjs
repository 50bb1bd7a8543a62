// A WebSocket client nobody on this team wrote: Node's `ws` package. It offers the
// `funko-live` subprotocol and a token the way a browser must (as a `bearer.<token>`
// subprotocol entry), prints every frame as one JSON line, answers the welcome with a ping
// and a create, and exits after N change events.
// Usage: node ws_client.mjs ws://HOST:PORT/ws?after=CURSOR N
import WebSocket from "ws";

const [url, count] = [process.argv[2], Number(process.argv[3])];
const print = (line) => console.log(JSON.stringify(line));
let events = 0;
let done = false;

const socket = new WebSocket(url, ["funko-live", "bearer.node-token"]);
const timer = setTimeout(() => {
  print({ error: "timed out" });
  process.exit(2);
}, 30_000);

socket.on("open", () => print({ open: { protocol: socket.protocol } }));
socket.on("message", (data, isBinary) => {
  if (isBinary) {
    print({ error: "binary frame" });
    process.exit(1);
  }
  const frame = JSON.parse(data.toString());
  print({ frame });
  if (frame.op === "welcome") {
    socket.send(JSON.stringify({ op: "ping", requestId: "node-ping" }));
    socket.send(JSON.stringify({
      op: "create",
      requestId: "node-1",
      entity: "FUNKOS",
      data: { name: "From Node", price: 3.5, stock: 2, category: "serie" },
    }));
  } else if (frame.op === undefined && ++events >= count) {
    done = true;
    socket.close(1000, "done");
  }
});
socket.on("close", (code, reason) => {
  clearTimeout(timer);
  if (done) {
    print({ done: true, code });
    process.exit(0);
  }
  print({ closed: { code, reason: reason.toString() } });
  process.exit(1);
});
socket.on("error", (err) => {
  print({ error: String(err) });
  process.exit(1);
});
