"""The Python client (`durable-streams` on PyPI) against /streams/funkos, for
tests/api/durable.rs. Arguments: the server's base URL, and an offset retention pruned.

Reads the snapshot by catch-up, follows by long-poll and by SSE while this script writes
through the REST API, and is told 410 for the pruned offset. Prints "ok durable-streams: ..."."""

import json
import sys
import threading

import httpx
from durable_streams import RetentionGoneError, stream

base, pruned = sys.argv[1], sys.argv[2]
url = f"{base}/streams/funkos"


def changes(items):
    return [m for m in items if "operation" in m.get("headers", {})]


# Catch-up from the beginning: the snapshot of every live Funko, in order.
with stream(url, live=False) as res:
    items = res.read_json()
    head = res.offset
controls = [m["headers"]["control"] for m in items if "control" in m["headers"]]
assert controls == ["snapshot-start", "snapshot-end"], items
live = httpx.get(f"{base}/funkos?limit=100").json()["data"]
assert [m["value"] for m in changes(items)] == live, (items, live)
assert len(head) == 20 and head.isdigit(), head


def follow(mode, offset, name):
    """Follows from `offset` in `mode` until the Funko `name` arrives; writes it meanwhile."""
    found = {}

    def read():
        with stream(url, offset=offset, live=mode, params={"timeout": "1"} if mode == "long-poll" else None) as res:
            for batch in res.iter_json_batches():
                for message in changes(batch):
                    if message["value"]["name"] == name:
                        found["message"] = message
                        found["offset"] = res.offset
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    created = httpx.post(
        f"{base}/funkos",
        json={"name": name, "price": 3.5, "stock": 2, "category": "OTROS"},
    )
    assert created.status_code == 201, created.text
    reader.join(timeout=30)
    assert "message" in found, f"{mode}: {name} did not arrive"
    message = found["message"]
    assert message["type"] == "funkos" and message["headers"]["operation"] == "insert", message
    assert message["value"] == created.json(), message
    assert message["key"] == str(created.json()["id"]), message
    return found["offset"]


after_poll = follow("long-poll", head, "Py long-poll")
follow("sse", after_poll, "Py sse")
assert head < after_poll, (head, after_poll)

# A pruned offset: the protocol's 410, with the reset to follow in its body.
try:
    with stream(url, offset=pruned, live=False) as res:
        res.read_json()
    raise AssertionError("a pruned offset was served")
except RetentionGoneError as gone:
    assert gone.status == 410, gone
    # The body comes along: the problem, with the State Protocol's reset.
    body = json.loads(gone.details) if isinstance(gone.details, str) else gone.details
    assert body["control"] == {"headers": {"control": "reset", "offset": "-1"}}, body

print(f"ok durable-streams: snapshot at {head}, long-poll to {after_poll}, then sse")
