"""A fake Octue service for testing `ask.py` without Rouse.

It speaks the question protocol (docs/protocol.md) with the plain
`google-cloud-pubsub` client, not with octue: it subscribes to the network topic
like an octue service (`octue twined service start`) does, and answers each
question addressed to its SRUID with a `delivery_acknowledgement`, heartbeats
every --heartbeat-interval seconds while it works, then a `result` (or an
`exception`). Reply attributes: the question's common attributes with `sender`
and `recipient` swapped, `sender_type=CHILD`, a fresh `uuid` and `datetime`,
`retry_count` kept; the question-only attributes (`forward_logs`,
`save_diagnostics`, `cpus`, `memory`, `ephemeral_storage`) are not copied, as
octue's own `ResponseAttributes.from_question_attributes` does not copy them
(--copy-all-attributes copies them too). Ordering key: the question uuid.

What it does is steered by the question's input values (a JSON object):
  {"raise": {"type": "ValueError", "message": "..."}}  answer with an `exception`
  {"sleep": 3}             work 3 s before answering (heartbeats continue)
  {"silent": true}         acknowledge, then never answer (heartbeats go on for 60 s, then stop)
  {"no_delivery_acknowledgement": true}  skip the acknowledgement
  {"log": "text"}          send a `log_record` first (only if forward_logs is "1")
  {"monitor": <json>}      send a `monitor_message` first
anything else is echoed back: `result` with output_values = the input values.

With --own-topic T it also answers every question published to topic T (a
Rouse-style per-service topic), whatever its `recipient`; replies still go to
the network topic.

With --registry-port it also serves a service registry as octue queries it:
GET /<namespace>/<name>[?revision_tag=<tag>] -> 200 {"revision_tag": <tag>} or 404.

Prints `ready` on stdout once it is subscribed, then one JSON line per question
it handled. Stop it with SIGTERM/SIGINT.

Run it with the octue venv's python (google-cloud-pubsub comes with octue):
  PUBSUB_EMULATOR_HOST=... python tests/octue/fake_service.py --project P \
      --services-topic octue.services --sruid experiment-2/echo:v1
"""

import argparse
import datetime as dt
import functools
import http.server
import json
import os
import signal
import sys
import threading
import time
import traceback
import urllib.parse
import uuid

from google.cloud import pubsub_v1

sys.dont_write_bytecode = True  # no __pycache__ beside the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pubsub_filter import matches  # noqa: E402

# Attributes every event of a question carries (docs/protocol.md); only these are copied onto replies.
COMMON_ATTRIBUTES = (
    "question_uuid",
    "parent_question_uuid",
    "originator_question_uuid",
    "parent",
    "originator",
    "sender",
    "sender_type",
    "sender_sdk_version",
    "recipient",
    "retry_count",
)


def now():
    return dt.datetime.now(tz=dt.timezone.utc).isoformat()


def pub_sub_form(sruid):
    """`octue/my-service:1.2.0` -> `octue.my-service.1-2-0` (docs/protocol.md)."""
    service_id, _, tag = sruid.partition(":")
    return service_id.replace("/", ".") + ("." + tag.replace(".", "-") if tag else "")


class FakeService:
    def __init__(self, arguments):
        self.arguments = arguments
        self.project = arguments.project
        self.topic_path = f"projects/{self.project}/topics/{arguments.services_topic}"
        self.publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=1),
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
        )
        self.subscriber = pubsub_v1.SubscriberClient()
        self.filter = f'attributes.recipient = "{arguments.sruid}" AND attributes.sender_type = "PARENT"'
        self.subscription_path = self.subscriber.subscription_path(
            self.project, arguments.subscription or pub_sub_form(arguments.sruid)
        )
        self.subscription_paths = []
        self.output_lock = threading.Lock()

    # --- Pub/Sub plumbing -------------------------------------------------------------------------------------

    def subscribe(self):
        """Subscribe to the network topic (questions routed by `recipient`, as octue services do) and, with
        --own-topic, to a topic of the service's own (every question there is for this service)."""
        routes = [(self.subscription_path, self.topic_path, self.filter)]
        if self.arguments.own_topic:
            routes.append(
                (
                    self.subscription_path + ".own",
                    f"projects/{self.project}/topics/{self.arguments.own_topic}",
                    'attributes.sender_type = "PARENT"',
                )
            )
        futures = []
        for subscription_path, topic_path, subscription_filter in routes:
            self.subscriber.create_subscription(
                request={
                    "name": subscription_path,
                    "topic": topic_path,
                    "filter": subscription_filter,  # stored by the emulator but not applied: see on_message
                    "ack_deadline_seconds": 600,
                    "enable_message_ordering": True,
                }
            )
            self.subscription_paths.append(subscription_path)
            callback = functools.partial(self.on_message, subscription_filter=subscription_filter)
            futures.append(self.subscriber.subscribe(subscription_path, callback=callback))
        return futures

    def delete_subscriptions(self):
        for subscription_path in self.subscription_paths:
            try:
                self.subscriber.delete_subscription(subscription=subscription_path)
            except Exception as e:  # the emulator may already be gone
                print(f"fake_service: could not delete {subscription_path}: {e}", file=sys.stderr)

    def publish(self, event, attributes):
        attributes = dict(attributes, uuid=str(uuid.uuid4()), datetime=now())
        future = self.publisher.publish(
            self.topic_path,
            json.dumps(event).encode(),
            ordering_key=attributes["question_uuid"],
            **attributes,
        )
        future.result(timeout=30)

    # --- the service ------------------------------------------------------------------------------------------

    def on_message(self, message, subscription_filter):
        message.ack()
        attributes = dict(message.attributes)
        if not matches(subscription_filter, attributes):
            return  # real Pub/Sub would not have delivered it (the emulator ignores filters)
        threading.Thread(target=self.answer, args=(message.data, attributes), daemon=True).start()

    def reply_attributes(self, question_attributes):
        if self.arguments.copy_all_attributes:
            reply = dict(question_attributes)
        else:
            reply = {k: v for k, v in question_attributes.items() if k in COMMON_ATTRIBUTES}
        reply["sender"] = question_attributes["recipient"]
        reply["recipient"] = question_attributes["sender"]
        reply["sender_type"] = "CHILD"
        reply.pop("uuid", None)
        reply.pop("datetime", None)
        return reply

    def answer(self, data, question_attributes):
        started = time.monotonic()
        try:
            question = json.loads(data)
            input_values = question.get("input_values")
        except ValueError:
            self.report({"question_attributes": question_attributes, "error": "data is not JSON"})
            return
        steer = input_values if isinstance(input_values, dict) else {}
        reply = self.reply_attributes(question_attributes)
        sent = []

        def send(event):
            self.publish(event, reply)
            sent.append(event["kind"])

        stop_heartbeats = threading.Event()

        def heartbeats():
            while not stop_heartbeats.wait(self.arguments.heartbeat_interval):
                send({"kind": "heartbeat"})

        try:
            if not steer.get("no_delivery_acknowledgement"):
                send({"kind": "delivery_acknowledgement"})
            threading.Thread(target=heartbeats, daemon=True).start()
            if "log" in steer and question_attributes.get("forward_logs") == "1":
                send({"kind": "log_record", "log_record": make_log_record(str(steer["log"]), reply["sender"])})
            if "monitor" in steer:
                send({"kind": "monitor_message", "data": steer["monitor"]})
            if steer.get("sleep"):
                time.sleep(float(steer["sleep"]))
            if steer.get("silent"):
                stop_heartbeats.wait(60)  # never answers; heartbeats stop after a minute
            elif "raise" in steer:
                error = steer["raise"] or {}
                send(
                    {
                        "kind": "exception",
                        "exception_type": error.get("type", "ValueError"),
                        "exception_message": error.get("message", "the fake service was asked to fail"),
                        "exception_traceback": error.get("traceback", ['  File "fake_service.py", in answer\n']),
                    }
                )
            else:
                send({"kind": "result", "output_values": input_values})
        except Exception:
            traceback.print_exc()
        finally:
            stop_heartbeats.set()
        self.report(
            {
                "question_uuid": question_attributes.get("question_uuid"),
                "question_attributes": question_attributes,
                "question": question,
                "sent": sent,
                "seconds": round(time.monotonic() - started, 3),
            }
        )

    def report(self, line):
        with self.output_lock:
            print(json.dumps(line), flush=True)


def make_log_record(message, sender):
    """A log record as octue forwards one (a `logging.LogRecord.__dict__`, JSON-encoded)."""
    created = time.time()
    return {
        "name": sender,
        "msg": message,
        "args": None,
        "levelname": "INFO",
        "levelno": 20,
        "pathname": "fake_service.py",
        "filename": "fake_service.py",
        "module": "fake_service",
        "exc_info": None,
        "exc_text": None,
        "stack_info": None,
        "lineno": 1,
        "funcName": "answer",
        "created": created,
        "msecs": (created % 1) * 1000,
        "relativeCreated": 0.0,
        "thread": 0,
        "threadName": "MainThread",
        "processName": "MainProcess",
        "process": os.getpid(),
    }


def serve_registry(port, sruid):
    namespace_and_name, _, serving_tag = sruid.partition(":")

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            url = urllib.parse.urlsplit(self.path)
            asked_tag = urllib.parse.parse_qs(url.query).get("revision_tag", [None])[0]
            found = url.path.strip("/") == namespace_and_name and asked_tag in (None, serving_tag)
            body = json.dumps({"revision_tag": serving_tag} if found else {"error": "not found"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            print(
                f"fake_service: registry GET {self.path} (Authorization: {self.headers.get('Authorization')!r})"
                f" -> {200 if found else 404}",
                file=sys.stderr,
                flush=True,
            )

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser(description="a fake Octue service (see the module docstring)")
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"))
    parser.add_argument("--services-topic", default=os.environ.get("TWINED_SERVICES_TOPIC_NAME", "octue.services"))
    parser.add_argument("--sruid", required=True, help="this service's SRUID, e.g. experiment-2/echo:v1")
    parser.add_argument("--subscription", help="subscription name (default: the SRUID in pubsub form, as octue)")
    parser.add_argument("--heartbeat-interval", type=float, default=120.0, help="seconds (default: 120, as octue)")
    parser.add_argument("--copy-all-attributes", action="store_true", help="also copy question-only attributes")
    parser.add_argument("--registry-port", type=int, help="also serve a service registry on this port")
    parser.add_argument("--own-topic", help="also take questions from this topic, e.g. octue.services.<uuid>")
    arguments = parser.parse_args()
    if not arguments.project or not os.environ.get("PUBSUB_EMULATOR_HOST"):
        parser.error("needs --project (or GOOGLE_CLOUD_PROJECT) and PUBSUB_EMULATOR_HOST")

    service = FakeService(arguments)
    if arguments.registry_port:
        serve_registry(arguments.registry_port, arguments.sruid)
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    futures = []
    try:
        futures = service.subscribe()
        print("ready", flush=True)
        while not stop.wait(0.2):
            for future in futures:
                if future.done():
                    future.result()  # raises the subscriber's error
                    return
    finally:
        for future in futures:
            future.cancel()
        service.delete_subscriptions()


if __name__ == "__main__":
    main()
