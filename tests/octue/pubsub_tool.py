"""Small Pub/Sub emulator helpers for the octue tests (plain google-cloud-pubsub).

  pubsub_tool.py create-topic NAME...          create topics (existing ones are kept)
  pubsub_tool.py tap TOPIC...                  print every message published to these topics from now on,
                                               one JSON line each, until SIGTERM/SIGINT; prints `ready` first
  pubsub_tool.py subscriptions                 print the project's subscriptions (name, topic, filter, settings)

Needs PUBSUB_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT (or --project).
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import uuid

import google.api_core.exceptions
from google.cloud import pubsub_v1


def create_topics(project, names):
    publisher = pubsub_v1.PublisherClient()
    for name in names:
        try:
            publisher.create_topic(name=publisher.topic_path(project, name))
        except google.api_core.exceptions.AlreadyExists:
            pass


def tap(project, topics):
    """Wiretap: one unfiltered subscription per topic, deleted on exit."""
    subscriber = pubsub_v1.SubscriberClient()
    lock = threading.Lock()
    subscriptions, futures = [], []
    for topic in topics:
        path = subscriber.subscription_path(project, f"tap.{uuid.uuid4().hex[:12]}")
        subscriber.create_subscription(
            request={"name": path, "topic": subscriber.topic_path(project, topic), "enable_message_ordering": True}
        )
        subscriptions.append(path)

        def callback(message, topic=topic):
            message.ack()
            try:
                data = json.loads(message.data)
            except ValueError:
                data = None
            line = {
                "topic": topic,
                "publish_time": message.publish_time.isoformat(),
                "ordering_key": message.ordering_key,
                "attributes": dict(sorted(message.attributes.items())),
                "data": data,
                "data_raw": message.data.decode(errors="replace")
                if data is not None
                else base64.b64encode(message.data).decode(),
            }
            with lock:
                print(json.dumps(line), flush=True)

        futures.append(subscriber.subscribe(path, callback=callback))

    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    for future in futures:
        future.cancel()
    for path in subscriptions:
        try:
            subscriber.delete_subscription(subscription=path)
        except Exception:
            pass


def list_subscriptions(project):
    subscriber = pubsub_v1.SubscriberClient()
    for subscription in subscriber.list_subscriptions(project=f"projects/{project}"):
        print(
            json.dumps(
                {
                    "name": subscription.name,
                    "topic": subscription.topic,
                    "filter": subscription.filter,
                    "ack_deadline_seconds": subscription.ack_deadline_seconds,
                    "enable_message_ordering": subscription.enable_message_ordering,
                    "message_retention_duration_s": subscription.message_retention_duration.total_seconds(),
                    "expiration_ttl_s": subscription.expiration_policy.ttl.total_seconds()
                    if subscription.expiration_policy.ttl
                    else None,
                    "retry_policy": {
                        "minimum_backoff_s": subscription.retry_policy.minimum_backoff.total_seconds(),
                        "maximum_backoff_s": subscription.retry_policy.maximum_backoff.total_seconds(),
                    },
                    "push_endpoint": subscription.push_config.push_endpoint or None,
                }
            )
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"))
    parser.add_argument("command", choices=["create-topic", "tap", "subscriptions"])
    parser.add_argument("names", nargs="*")
    arguments = parser.parse_args()
    if not arguments.project or not os.environ.get("PUBSUB_EMULATOR_HOST"):
        parser.error("needs --project (or GOOGLE_CLOUD_PROJECT) and PUBSUB_EMULATOR_HOST")
    if arguments.command == "create-topic":
        create_topics(arguments.project, arguments.names)
    elif arguments.command == "tap":
        if not arguments.names:
            parser.error("tap needs at least one topic")
        tap(arguments.project, arguments.names)
    else:
        list_subscriptions(arguments.project)


if __name__ == "__main__":
    sys.exit(main())
