#!/usr/bin/env python3
"""Wire-format round trip of herald's SSE encoding through an independent parser.

Usage: sse_roundtrip.py BASE_URL        (e.g. http://127.0.0.1:8080)

Needs the PyPI packages `httpx` and `httpx-sse`. httpx-sse is a parser that
herald does not share code with, so this checks what a third-party client
really receives, not what herald believes it sends.

Steps: create a fresh topic `wire-<random>` with a warm-up record, subscribe
live (`GET /v1/events?topic=<topic>`), and once the response headers have
arrived publish a list of awkward values (line breaks of every kind, NUL, BOM,
non-ASCII, leading spaces, the `base64:` marker itself, invalid UTF-8, a value
that looks like SSE fields). Each must come back byte for byte, in order, each
with a distinct, clean `id`. All records use one key, so they land in one
partition and their order is defined.

Prints one JSON summary line; exits 0 on success, 1 on failure (with a diff on
stderr).
"""

import base64
import binascii
import json
import queue
import secrets
import sys
import threading
import time
from urllib.parse import quote

import httpx
from httpx_sse import connect_sse

HEADERS_DEADLINE_S = 10.0
EVENTS_DEADLINE_S = 20.0
KEY = "roundtrip"  # one key -> one partition -> a defined order

VALUES = [
    b"plain",
    b"a\nb",
    b"a\r\nb",
    b"a\rb",
    b"line\n",
    b"\nleading",
    b"nul\x00byte",
    "\ufeffbom".encode("utf-8"),
    "multi-byte ü€𝄞".encode("utf-8"),
    b"  two leading spaces",
    b"base64:looks-like-marker",
    b"\xff\xfe\x00binary",
    b"data: fake\n\nid: forged",
]


def fail(msg, summary=None):
    if summary is not None:
        summary["ok"] = False
        summary["error"] = msg
        print(json.dumps(summary, ensure_ascii=True))
    print(f"sse_roundtrip: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def decode_data(data):
    """Turn an SSE data string back into the record's raw bytes."""
    if data.startswith("base64:"):
        try:
            return base64.b64decode(data[len("base64:"):], validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"bad base64 payload {data!r}: {e}") from e
    return data.encode("utf-8")


def publish(client, base, topic, value):
    url = f"{base}/v1/topics/{quote(topic, safe='')}?key={quote(KEY, safe='')}"
    r = client.post(url, content=value,
                    headers={"content-type": "application/octet-stream"})
    if r.status_code != 200:
        raise RuntimeError(f"POST {url} -> {r.status_code}: {r.text[:300]}")
    body = r.json()
    for field in ("topic", "partition", "offset"):
        if field not in body:
            raise RuntimeError(f"POST {url} answer lacks {field!r}: {body}")
    return body


def reader(base, topic, out, stop):
    """Hold the SSE stream; put ('headers', resp) then ('event', sse)... on out."""
    url = f"{base}/v1/events"
    try:
        with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
            with connect_sse(client, "GET", url, params={"topic": topic}) as es:
                resp = es.response
                out.put(("headers", resp.status_code, dict(resp.headers)))
                if resp.status_code != 200:
                    resp.read()
                    out.put(("body", resp.text[:500]))
                    return
                for sse in es.iter_sse():
                    if stop.is_set():
                        return
                    out.put(("event", sse))
                out.put(("end", None))
    except Exception as e:  # reported to the main thread
        if not stop.is_set():
            out.put(("error", f"{type(e).__name__}: {e}"))


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    base = sys.argv[1].rstrip("/")
    topic = f"wire-{secrets.token_hex(6)}"
    summary = {"test": "sse_roundtrip", "base": base, "topic": topic, "ok": False}
    warmup = f"warmup-{secrets.token_hex(6)}".encode()

    pub = httpx.Client(timeout=10.0)
    try:
        publish(pub, base, topic, warmup)  # creates the topic
    except Exception as e:
        fail(f"warm-up publish failed: {e}", summary)

    events = queue.Queue()
    stop = threading.Event()
    t = threading.Thread(target=reader, args=(base, topic, events, stop), daemon=True)
    t.start()

    # 1. Response headers.
    try:
        kind, *rest = events.get(timeout=HEADERS_DEADLINE_S)
    except queue.Empty:
        fail(f"no response headers within {HEADERS_DEADLINE_S:.0f} s", summary)
    if kind == "error":
        fail(f"subscribe failed: {rest[0]}", summary)
    status, headers = rest
    headers = {k.lower(): v for k, v in headers.items()}
    summary["status"] = status
    summary["headers"] = {h: headers.get(h) for h in
                          ("content-type", "cache-control", "x-accel-buffering")}
    if status != 200:
        body = ""
        try:
            k, *b = events.get(timeout=2)
            body = b[0] if k == "body" else ""
        except queue.Empty:
            pass
        fail(f"GET /v1/events answered {status}, not 200: {body}", summary)
    problems = []
    ctype = headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "text/event-stream":
        problems.append(f"content-type is {ctype!r}, not text/event-stream")
    cc = [p.strip().lower() for p in headers.get("cache-control", "").split(",")]
    if "no-cache" not in cc:
        problems.append(f"cache-control is {headers.get('cache-control')!r}, lacks no-cache")
    if headers.get("x-accel-buffering", "").strip().lower() != "no":
        problems.append(f"x-accel-buffering is {headers.get('x-accel-buffering')!r}, not 'no'")
    if problems:
        fail("; ".join(problems), summary)

    # 2. Publish, one after another (each acknowledged before the next).
    t0 = time.monotonic()
    offsets = []
    try:
        for v in VALUES:
            ans = publish(pub, base, topic, v)
            offsets.append((ans["partition"], ans["offset"]))
    except Exception as e:
        fail(f"publish failed: {e}", summary)
    pub.close()
    if len({p for p, _ in offsets}) != 1:
        problems.append(f"one key landed in several partitions: {offsets}")
    summary["publish_ms"] = round((time.monotonic() - t0) * 1000)

    # 3. Collect one event per value.
    got = []          # (id, event type, data)
    signals = []      # herald.* or other typed events
    id_only = 0
    deadline = t0 + EVENTS_DEADLINE_S
    end_reason = None
    while len(got) < len(VALUES):
        left = deadline - time.monotonic()
        if left <= 0:
            end_reason = f"deadline of {EVENTS_DEADLINE_S:.0f} s passed"
            break
        try:
            kind, payload = events.get(timeout=left)
        except queue.Empty:
            end_reason = f"deadline of {EVENTS_DEADLINE_S:.0f} s passed"
            break
        if kind == "event":
            sse = payload
            if sse.event not in ("", "message"):
                signals.append({"event": sse.event, "id": sse.id, "data": sse.data})
                continue
            if sse.data == "":
                id_only += 1  # id-only update (empty value): no message in a browser
                continue
            got.append((sse.id, sse.event, sse.data))
        else:
            end_reason = f"stream ended early ({kind}: {payload})"
            break
    summary["latency_ms"] = round((time.monotonic() - t0) * 1000)
    stop.set()

    # 4. Compare.
    decoded = []
    for i, (eid, _etype, data) in enumerate(got):
        try:
            decoded.append(decode_data(data))
        except ValueError as e:
            problems.append(f"event {i}: {e}")
            decoded.append(None)
    if end_reason:
        problems.append(f"received {len(got)} of {len(VALUES)} events: {end_reason}")
    mismatches = []
    for i in range(max(len(VALUES), len(decoded))):
        want = VALUES[i] if i < len(VALUES) else None
        have = decoded[i] if i < len(decoded) else None
        if want != have:
            mismatches.append(
                {"index": i, "sent": repr(want), "received": repr(have),
                 "data": repr(got[i][2]) if i < len(got) else None})
    if mismatches:
        problems.append(f"{len(mismatches)} value(s) differ")
    if decoded and decoded[0] == warmup:
        problems.append("the warm-up record (published before subscribing) was delivered")

    ids = [eid for eid, _, _ in got]
    for i, eid in enumerate(ids):
        if not eid:
            problems.append(f"event {i} has an empty id")
        elif any(c in eid for c in "\r\n\0"):
            problems.append(f"event {i} id contains CR/LF/NUL: {eid!r}")
    if len(set(ids)) != len(ids):
        problems.append(f"ids are not distinct: {ids}")

    summary.update({
        "values": len(VALUES),
        "received": len(got),
        "ids": ids,
        "id_only_events": id_only,
        "typed_events": signals,
    })
    foreign = [s for s in signals if not s["event"].startswith("herald.")]
    if foreign:
        problems.append(f"unexpected typed events (no event header was set): {foreign}")

    if problems:
        summary["mismatches"] = mismatches
        print(json.dumps(summary, ensure_ascii=True))
        print("sse_roundtrip: FAIL", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        for m in mismatches:
            print(f"  [{m['index']}] sent     {m['sent']}", file=sys.stderr)
            print(f"  [{m['index']}] received {m['received']}  (data {m['data']})",
                  file=sys.stderr)
        sys.exit(1)
    summary["ok"] = True
    print(json.dumps(summary, ensure_ascii=True))
    sys.exit(0)


if __name__ == "__main__":
    main()
