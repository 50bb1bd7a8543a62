"""A Socket.IO client nobody on this team wrote, in another language: python-socketio's.

It joins the Funkos namespace, sees a change made over REST, makes a write with an ack, leaves,
and comes back from the last cursor it saw (python-socketio has no connection state recovery,
so it says where to resume in `auth`), getting exactly the changes it missed. Handlers take
`*args`: every event's last argument is its offset. Prints "ok python-socketio: ...".

Usage: python socketio_client.py BASE_URL polling|websocket
"""

import queue
import sys

import requests
import socketio

BASE, TRANSPORT = sys.argv[1:3]
NS = "/ws/v1/funkos"
TIMEOUT = 20

seen = queue.Queue()
client = socketio.Client(reconnection=False)

for name in ("connection", "updates", "reset"):
    client.on(name, lambda *args, name=name: seen.put((name, args)), namespace=NS)


def next_event(wanted):
    while True:
        name, args = seen.get(timeout=TIMEOUT)
        if name == "reset":
            sys.exit(f"unexpected reset {args}")
        if name == wanted:
            return args


def funko(name):
    return {"name": f"{name} ({TRANSPORT}, python)", "price": 4.5, "stock": 1, "category": "OTROS"}


def create_over_rest(name):
    response = requests.post(f"{BASE}/funkos", json=funko(name), timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.headers["Stream-Cursor"]


client.connect(BASE, namespaces=[NS], transports=[TRANSPORT], wait_timeout=TIMEOUT)
next_event("connection")

cursor = create_over_rest("Over REST")
event, offset = next_event("updates")
assert event["id"] == cursor and offset == cursor, (event, offset)

ack = client.call("create", {"entity": "FUNKOS", "data": funko("Over Socket.IO")}, namespace=NS, timeout=TIMEOUT)
assert ack["status"] == 201, ack
event, _ = next_event("updates")
assert event["id"] == ack["cursor"] and event["data"] == ack["body"], (event, ack)
last = event["id"]
client.disconnect()

missed = [create_over_rest(f"Missed {i}") for i in range(2)]
client.connect(BASE, namespaces=[NS], transports=[TRANSPORT], auth={"cursor": last}, wait_timeout=TIMEOUT)
next_event("connection")
resumed = [next_event("updates")[0]["id"] for _ in missed]
assert resumed == missed, (resumed, missed)
client.disconnect()
print(f"ok python-socketio: {TRANSPORT}: an event, an acked write {ack['cursor']}, resumed with {resumed}")
