"""Rouse's function runner: serves `main(args, context)` of the function file
beside it (main.py) over HTTP on $PORT, as every Rouse instance is served.

- POST / takes a Pub/Sub push envelope whose `message.data` is the base64 of an
  Octue question. Its `input_values` (an object; `{}` when absent) is `args`;
  the function's context (the ROUSE_FUNCTION_CONTEXT secret, a JSON object)
  is `context`. The answer is main's return value as JSON (200), or 500 with
  the exception and its traceback, which the asker gets as the question's
  exception. An `async def main` is run to completion.
- GET /healthz answers 200: main.py was imported before the port opened, so
  an instance whose file does not import never becomes ready, and its
  traceback is the last thing in its log.

Written beside each deployed function by the builder; the standard library
only, so the function's requirements are all its environment holds.
"""

import asyncio
import base64
import importlib.util
import inspect
import json
import os
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(f"rouse-function: {message}", flush=True)


def load_main():
    path = os.path.join(HERE, "main.py")
    sys.path.insert(0, HERE)
    spec = importlib.util.spec_from_file_location("main", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if not callable(main):
        raise SystemExit(f"rouse-function: {path} defines no callable `main(args, context)`")
    return main


def load_context():
    raw = os.environ.get("ROUSE_FUNCTION_CONTEXT") or "{}"
    context = json.loads(raw)
    if not isinstance(context, dict):
        raise SystemExit("rouse-function: ROUSE_FUNCTION_CONTEXT is not a JSON object")
    return context


def question_args(body):
    """The question's input_values out of a push envelope, or raise ValueError."""
    try:
        envelope = json.loads(body)
        data = envelope["message"]["data"]
        question = json.loads(base64.b64decode(data, validate=True))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a push envelope with a base64 JSON question: {error}") from None
    if not isinstance(question, dict) or question.get("kind") != "question":
        raise ValueError('`message.data` is not a question (`kind` must be "question")')
    args = question.get("input_values")
    return {} if args is None else args


def make_handler(main, context):
    is_async = inspect.iscoroutinefunction(main)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, status, body, content_type="application/json"):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                self.answer(200, "ok", "text/plain")
            else:
                self.answer(404, "POST a push envelope to /", "text/plain")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                args = question_args(body)
            except ValueError as error:
                self.answer(400, str(error), "text/plain")
                return
            try:
                result = asyncio.run(main(args, context)) if is_async else main(args, context)
            except Exception as error:  # the function's own failure: the asker's exception
                text = traceback.format_exc()
                log(f"main raised {type(error).__name__}: {error}")
                self.answer(500, f"{type(error).__name__}: {error}\n{text}", "text/plain")
                return
            try:
                encoded = json.dumps(result)
            except (TypeError, ValueError) as error:
                self.answer(500, f"main returned a value that is not JSON ({error})", "text/plain")
                return
            self.answer(200, encoded)

        def log_message(self, format, *args):
            pass

    return Handler


def run():
    main = load_main()
    context = load_context()
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(main, context))
    server.daemon_threads = True
    log(f"serving main(args, context) on port {port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    run()
