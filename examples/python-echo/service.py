#!/usr/bin/env python3
"""The echo example in Python 3, standard library only, for the process runtime.

Same contract as examples/echo (the Rust one):

- server mode (default): HTTP on 0.0.0.0:$PORT (8080 without PORT).
  POST / takes a Pub/Sub push envelope whose message.data is the base64 of an
  Octue question ({"kind": "question", "input_values": ...}) and answers
  200 {"echo": <input_values>, "instance": "<name>"}; GET /healthz answers 200 ok.
- job mode: service.py --attributes <json> --input-values <json> prints
  {"echo": <input_values>} as one JSON line and exits 0.

Inputs that misbehave on purpose: {"sleep_ms": N} answers after N ms,
{"fail": "msg"} answers 500 with msg, {"crash": true} exits with code 3
without answering. ECHO_STARTUP_DELAY_MS delays listening.
"""

import base64
import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CRASH_EXIT_CODE = 3


def log(message):
    print(f"python-echo: {message}", flush=True)


def instance_name():
    return (
        os.environ.get("ROUSE_INSTANCE")
        or os.environ.get("HOSTNAME")
        or socket.gethostname()
        or f"pid-{os.getpid()}"
    )


def question_inputs(body):
    """The question's input_values out of a push envelope, or raise ValueError."""
    try:
        envelope = json.loads(body)
    except ValueError as error:
        raise ValueError(f"envelope is not JSON: {error}") from None
    data = (envelope.get("message") or {}).get("data") if isinstance(envelope, dict) else None
    if not isinstance(data, str):
        raise ValueError("envelope has no string `message.data`")
    try:
        question = json.loads(base64.b64decode(data, validate=True))
    except ValueError as error:
        raise ValueError(f"`message.data` is not base64 JSON: {error}") from None
    if not isinstance(question, dict) or question.get("kind") != "question":
        raise ValueError('`message.data` is not a question (`kind` must be "question")')
    return question.get("input_values")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    instance = instance_name()

    def answer(self, status, body, content_type="text/plain; charset=utf-8"):
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(200, "ok")
        else:
            self.answer(404, f"no route for {self.path}")

    def do_POST(self):
        if self.path != "/":
            self.answer(404, f"no route for {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            input_values = question_inputs(self.rfile.read(length))
        except ValueError as error:
            self.answer(400, str(error))
            return
        inputs = input_values if isinstance(input_values, dict) else {}
        if isinstance(inputs.get("sleep_ms"), int):
            time.sleep(inputs["sleep_ms"] / 1000)
        if inputs.get("crash") is True:
            print("python-echo: crashing as asked", file=sys.stderr, flush=True)
            os._exit(CRASH_EXIT_CODE)
        if "fail" in inputs:
            message = inputs["fail"] if isinstance(inputs["fail"], str) else json.dumps(inputs["fail"])
            print(f"python-echo: failing as asked: {message}", file=sys.stderr, flush=True)
            self.answer(500, message)
            return
        log("answered a question")
        body = json.dumps({"echo": input_values, "instance": self.instance})
        self.answer(200, body, "application/json")

    def log_message(self, format, *args):
        # One line per request on stderr is the default; keep logs to what matters.
        pass


def run_job(args):
    values = {}
    it = iter(args)
    for flag in it:
        if flag not in ("--attributes", "--input-values"):
            print(f"python-echo: unexpected argument `{flag}`", file=sys.stderr)
            return 2
        try:
            values[flag] = json.loads(next(it))
        except StopIteration:
            print(f"python-echo: `{flag}` needs a JSON value", file=sys.stderr)
            return 2
        except ValueError as error:
            print(f"python-echo: `{flag}` is not JSON: {error}", file=sys.stderr)
            return 2
    input_values = values.get("--input-values")
    if isinstance(input_values, dict) and input_values.get("crash") is True:
        print("python-echo: crashing as asked", file=sys.stderr)
        return CRASH_EXIT_CODE
    print(json.dumps({"echo": input_values}, separators=(",", ":")), flush=True)
    return 0


def main():
    args = sys.argv[1:]
    if "--input-values" in args:
        sys.exit(run_job(args))
    delay = os.environ.get("ECHO_STARTUP_DELAY_MS")
    if delay and delay.isdigit():
        log(f"waiting {delay} ms before listening")
        time.sleep(int(delay) / 1000)
    port = int(os.environ.get("PORT") or 8080)
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    log(f"listening on 0.0.0.0:{port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
