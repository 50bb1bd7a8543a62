// A Socket.IO client nobody on this team wrote: the `socket.io-client` v4 package, as the
// course project's front ends use it. It connects to one or more namespaces (sharing one
// Engine.IO connection) and prints one JSON line per thing it sees; the Rust test reads them.
// Commands on stdin, one per line: `disconnect` disconnects every socket (the process exits
// when they are all gone); `cut` closes the Engine.IO connection as a network cut would, with
// reconnection held off; `reconnect [URL]` reconnects (to another server when given);
// `{"emit": ns, "event", "args", "tag"}` emits with an ack and prints `{ns, tag, ack}`.
//
// Usage: node socketio_client.mjs '{"url": "http://127.0.0.1:PORT",
//   "namespaces": ["/ws/v1/funkos"], "transport": "default" | "websocket" | "polling",
//   "auth": {...} | "function" (resume after the last event seen), "query": {...}}'
// Without `auth`, a reconnect relies on socket.io-client's own connection state recovery.
import readline from "node:readline";
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2]);
const options = {
  // Reconnect quickly: the tests restart the server and wait with timeouts.
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
  timeout: 5000,
};
if (config.transport === "websocket") options.transports = ["websocket"];
if (config.transport === "polling") {
  options.transports = ["polling"];
  options.upgrade = false;
}
if (config.query) options.query = config.query;

// The last cursor seen, per namespace: `updates` carry it as `id`; a `reset` moves it.
const cursors = {};
// Sockets to one server share a Manager, which owns the Engine.IO connection.
let manager = null;
const print = (line) => {
  const transport = manager?.engine?.transport?.name ?? null;
  console.log(JSON.stringify({ ...line, transport }));
};

const sockets = config.namespaces.map((ns) => {
  const nsOptions = { ...options };
  if (config.auth === "function") {
    // Called at every (re)connect: a reconnect resumes exactly after the last event seen.
    nsOptions.auth = (cb) => {
      const auth = cursors[ns] ? { cursor: cursors[ns] } : {};
      print({ ns, auth });
      cb(auth);
    };
  } else if (config.auth) {
    nsOptions.auth = config.auth;
  }
  const socket = io(config.url + ns, nsOptions);
  socket.on("connect", () => print({ ns, connect: socket.id, recovered: socket.recovered }));
  socket.on("connection", (welcome) => print({ ns, welcome }));
  // Each event's last argument is its offset (connection state recovery).
  socket.on("updates", (update, offset) => {
    cursors[ns] = update.id;
    print({ ns, update, offset });
  });
  socket.on("reset", (reset, offset) => {
    cursors[ns] = reset.cursor;
    print({ ns, reset, offset });
  });
  socket.on("connect_error", (err) => print({ ns, connect_error: err.message, active: socket.active }));
  socket.on("disconnect", (reason) => {
    print({ ns, disconnect: reason });
    if (reason === "io client disconnect" && sockets.every((s) => s.disconnected)) {
      process.exit(0);
    }
  });
  return socket;
});

manager = sockets[0].io;
manager.on("open", () => {
  print({ open: true });
  manager.engine.on("upgrade", (transport) => print({ upgrade: transport.name }));
});
manager.on("ping", () => print({ ping: true }));
manager.on("reconnect_attempt", (attempt) => print({ reconnect_attempt: attempt }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, argument] = line.trim().split(" ");
  if (command === "disconnect") sockets.forEach((s) => s.disconnect());
  if (command === "cut") {
    manager.reconnection(false);
    manager.engine.close();
  }
  if (command === "reconnect") {
    if (argument) manager.uri = argument;
    manager.reconnection(true);
    manager.open();
  }
  if (command.startsWith("{")) {
    const { emit, event, args, tag } = JSON.parse(line);
    const socket = sockets[config.namespaces.indexOf(emit)];
    socket.emitWithAck(event, ...args).then((ack) => print({ ns: emit, tag, ack }));
  }
});
