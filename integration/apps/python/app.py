#!/usr/bin/env python3
"""A ReReady webhook consumer behind the reready_verify Caddy gateway.

Caddy has already checked the signature (and/or ?token=) and the payload,
and replaced every X-ReReady-* header with trusted values, so this app only
reads those headers and never does crypto itself. Listen where nothing but
Caddy can reach it (127.0.0.1 here).

    PORT=9000 [RECORD=events.jsonl] [DEMO_CONTROL=1] python3 app.py

Prints one line per event; with RECORD set, also appends what it received to
that file as one JSON line (the integration tests read it).

With DEMO_CONTROL=1 (what `make run` sets), POST /demo/down makes the app
fail every webhook with 503 and Retry-After: 3, as an app down for
maintenance would, and POST /demo/up makes it answer 200 again
(`make app-down`, `make app-up`). Caddy routes only the webhook path here,
so only someone on this machine can reach those two.
"""
import base64
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What each event field is read from: headers Caddy sets after verifying.
FIELDS = {
    "state": "X-ReReady-State",
    "device_return_id": "X-ReReady-Device-Return-Id",
    "test": "X-ReReady-Test",  # "true" or "false"
    "verified": "X-ReReady-Verified",  # "hmac", "token" or "hmac,token"
    "timestamp": "X-ReReady-Timestamp",  # the signed t; absent in token mode
    "serial_number": "X-ReReady-Serial-Number",  # absent when null
    "ticket_url": "X-ReReady-Ticket-Url",  # absent when null
    "url": "X-ReReady-Url",
}

MEANING = {
    "pending_outbound_shipment": "waiting for the empty box to be shipped",
    "pending_outbound_shipment_delivery": "empty box on its way to the employee",
    "pending_return_shipment": "waiting for the employee to send the device",
    "pending_return_shipment_delivery": "device on its way back",
    "failed": "not completable (carrier failure, bad address, ...)",
    "not_returned": "the employee did not return the device",
    "complete": "device returned",
}

RECORD = os.environ.get("RECORD")
record_lock = threading.Lock()

DEMO_CONTROL = os.environ.get("DEMO_CONTROL") == "1"
print_lock = threading.Lock()


def say(line):
    """Prints one whole line: print() from two threads can interleave."""
    with print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


demo = {"down": False, "received": 0}
demo_lock = threading.Lock()


class Webhook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if DEMO_CONTROL and self.path in ("/demo/down", "/demo/up"):
            with demo_lock:
                demo["down"] = self.path == "/demo/down"
            if demo["down"]:
                say("demo app: DOWN: every webhook is answered 503 now "
                    "(make app-up brings it back)")
            else:
                say("demo app: UP: answering 200 again; the gateway "
                    "redelivers what it queued, in order")
            return self.reply(200, b'{"ok":true}')

        event = {key: self.headers.get(name) for key, name in FIELDS.items()}
        test = " (test)" if event["test"] == "true" else ""
        meaning = MEANING.get(event["state"], "unknown state")
        with demo_lock:
            down = demo["down"]
            if not down:
                demo["received"] += 1
                n = demo["received"]
        if down:
            say(f"demo app: DOWN, answered 503 to device return "
                f"{event['device_return_id']} {event['state']}")
            self.send_response(503)
            self.send_header("Retry-After", "3")
            self.send_header("Content-Type", "application/json")
            reply = b'{"error":"down for maintenance"}'
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        redelivery = ""
        if self.headers.get("X-ReReady-Attempt"):  # set on redeliveries only
            redelivery = " (redelivered from the gateway's queue)"
        prefix = f"#{n} " if DEMO_CONTROL else ""
        say(f"{prefix}ReReady{test}: device return {event['device_return_id']} is "
            f"{event['state']}: {meaning} [verified by {event['verified']}]{redelivery}")

        if RECORD:
            path, _, query = self.path.partition("?")
            line = json.dumps({
                "app": "python",
                "method": self.command,
                "path": path,
                "query": query,
                **event,
                "content_length": self.headers.get("Content-Length"),
                "reready_headers": {
                    k.lower(): v for k, v in self.headers.items()
                    if re.sub("[_.]", "-", k.lower()).startswith("x-reready-")
                },
                "body_b64": base64.b64encode(body).decode(),
            })
            with record_lock, open(RECORD, "a") as f:
                f.write(line + "\n")

        self.reply(200, b'{"ok":true}')

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # the line printed per event is enough


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "9000"))
    say(f"demo app: listening on http://127.0.0.1:{port}")
    ThreadingHTTPServer(("127.0.0.1", port), Webhook).serve_forever()
