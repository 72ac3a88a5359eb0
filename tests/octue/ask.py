"""Ask a question with the real Octue SDK (octue 0.69.1), as a stock Octue asker does.

Run it with the python of the venv that `.ci/octue-venv` makes:

    "$(.ci/octue-venv)" tests/octue/ask.py --project rouse-local \
        --services-topic octue.services \
        --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"x": 1}'

Everything on the wire is octue's own: the question is sent by
`octue.twined.resources.Child.ask` (the class behind `octue twined question ask`).
Two test-side shims make it work offline against the official Pub/Sub emulator;
they change nothing that is published (see README.md):

  1. octue validates every event against a JSON schema that it fetches over
     HTTPS at run time; the validator is pointed at a local copy instead.
  2. the emulator ignores subscription filters, so messages that the answer
     subscription's filter would have excluded are dropped here, on the asker's
     side, before octue sees them (octue would otherwise crash on its own
     question, which comes back to it with sender_type=PARENT).

stdout gets exactly one JSON line:
  exit 0  {"output_values": ..., "output_manifest": ..., "question_uuid": ...}
  exit 1  {"exception_type": ..., "exception_message": ..., "exception_traceback": [...], "question_uuid": ...}
          (the service answered with an `exception` event)
  exit 2  {"error": "timeout", "message": ..., "question_uuid": ...}
          (no result within --timeout, or no heartbeat within --maximum-heartbeat-interval)
  exit 3  {"error": "<exception class>", "message": ..., "question_uuid": ...}
          (anything else: bad arguments, missing topic, publish failure, ...)
octue's logs go to stderr.
"""

import argparse
import json
import logging
import os
import re
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))

# The recovered service-communication schema, kept beside this script;
# override with --schema or ROUSE_OCTUE_SCHEMA.
DEFAULT_SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "service-communication-0.15.0.json")

# Octue's own default for an asker that is not itself a service revision
# (`Child(internal_sruid="local/local:local")`); the CLI uses it too.
DEFAULT_ASKER_SRUID = "local/local:local"

EXIT_OK, EXIT_EXCEPTION, EXIT_TIMEOUT, EXIT_ERROR = 0, 1, 2, 3

# A service id or SRUID (`namespace/name[:tag]`); anything else is taken as a topic name.
SERVICE_ID_PATTERN = re.compile(r"^[^/:\s]+/[^/:\s]+(:[^/:\s]+)?$")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--project",
        default=os.environ.get("GOOGLE_CLOUD_PROJECT"),
        help="Google Cloud project id (default: $GOOGLE_CLOUD_PROJECT)",
    )
    parser.add_argument(
        "--services-topic",
        default=os.environ.get("TWINED_SERVICES_TOPIC_NAME"),
        help="name of the network topic, e.g. octue.services (default: $TWINED_SERVICES_TOPIC_NAME, "
        "else octue's default main.octue.twined.services)",
    )
    parser.add_argument(
        "--service-topic-or-sruid",
        required=True,
        help="the service to ask: an SRUID `namespace/name:tag` (stock octue: the question goes to the network "
        "topic with this `recipient`), `namespace/name` (needs --service-registry), or a topic name such as "
        "octue.services.<uuid> (NOT what stock octue can do: the question is published to that topic instead of "
        "the network topic; everything else is unchanged; needs --recipient)",
    )
    parser.add_argument("--recipient", help="the `recipient` SRUID to use when asking via a topic name")
    parser.add_argument("--input-values", default="null", help="the question's input values as JSON (default: null)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the result (default: 60)")
    parser.add_argument(
        "--maximum-heartbeat-interval",
        type=float,
        default=None,
        help="seconds allowed without a heartbeat before giving up (default: octue's, 360)",
    )
    parser.add_argument("--question-uuid", default=None, help="question uuid to use (default: a fresh uuid4)")
    parser.add_argument(
        "--asker-sruid",
        default=DEFAULT_ASKER_SRUID,
        help=f"the asker's own SRUID, sent as sender/parent/originator (default: octue's {DEFAULT_ASKER_SRUID})",
    )
    parser.add_argument(
        "--no-forward-logs", action="store_true", help="ask with subscribe_to_logs=False (forward_logs=0)"
    )
    parser.add_argument(
        "--save-diagnostics",
        default="SAVE_DIAGNOSTICS_ON_CRASH",
        choices=["SAVE_DIAGNOSTICS_OFF", "SAVE_DIAGNOSTICS_ON_CRASH", "SAVE_DIAGNOSTICS_ON"],
    )
    parser.add_argument("--cpus", type=int, default=None)
    parser.add_argument("--memory", default=None, help='e.g. "256Mi"')
    parser.add_argument("--ephemeral-storage", default=None, help='e.g. "1Gi"')
    parser.add_argument("--retry-count", type=int, default=0)
    parser.add_argument(
        "--service-registry",
        action="append",
        default=[],
        metavar="URL",
        help="a service registry endpoint (repeatable, highest priority first); octue asks it "
        "GET URL/<namespace>/<name>[?revision_tag=<tag>] before publishing. The Google ID token octue would "
        "attach is replaced by a fixed test token ($ROUSE_OCTUE_REGISTRY_TOKEN, default `rouse-test-token`)",
    )
    parser.add_argument(
        "--schema",
        default=os.environ.get("ROUSE_OCTUE_SCHEMA", DEFAULT_SCHEMA_PATH),
        help=f"local service-communication schema (default: $ROUSE_OCTUE_SCHEMA or {DEFAULT_SCHEMA_PATH})",
    )
    parser.add_argument("--log-level", default="INFO", help="level of octue's logs on stderr (default: INFO)")
    return parser.parse_args(argv)


def emit(line, code):
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    return code


def use_local_schema(schema_path):
    """Shim 1: make octue's cached validator resolve the schema's URL to the local file.

    octue validates with `octue.twined.cloud.events.validation.jsonschema_validator`, a module-level
    `Draft202012Validator({"$ref": "https://jsonschema.registry.octue.com/.../0.16.0.json"})` that would
    fetch the schema on first use (and raise `Unresolvable` offline). The replacement validates the same
    `{"$ref": ...}` schema with a registry that already holds that URL, so validation itself is octue's.
    References inside the schema to other remote schemas (manifest, children) still fail: they are only
    followed when an event carries an `input_manifest`, `output_manifest` or `children`.
    """
    import jsonschema
    import referencing
    import referencing.jsonschema

    from octue.twined.cloud.events import validation

    with open(schema_path) as file:
        contents = json.load(file)

    url = validation.SERVICE_COMMUNICATION_SCHEMA["$ref"]
    resource = referencing.Resource(contents=contents, specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource(uri=url, resource=resource)
    validation.jsonschema_validator = jsonschema.Draft202012Validator(
        validation.SERVICE_COMMUNICATION_SCHEMA,
        registry=registry,
    )


class FilterDrops:
    count = 0


def apply_subscription_filters_locally():
    """Shim 2: drop pulled messages that the subscription's filter excludes, as real Pub/Sub would.

    `GoogleCloudPubSubEventHandler` pulls, acknowledges every pulled message, then extracts and validates
    each one; a message for which `_extract_and_validate_event` returns `(None, None)` is skipped exactly
    like an invalid event. The wrapper returns that for messages that do not match the filter octue set
    on the answer subscription, before octue parses them.
    """
    from pubsub_filter import matches

    from octue.twined.cloud.pub_sub.events import GoogleCloudPubSubEventHandler

    original = GoogleCloudPubSubEventHandler._extract_and_validate_event

    def extract_and_validate_matching_event(self, container):
        if not matches(self.subscription.filter, container.message.attributes):
            FilterDrops.count += 1
            logging.getLogger("ask").debug(
                "dropped a message that the filter %r excludes: %r",
                self.subscription.filter,
                dict(container.message.attributes),
            )
            return (None, None)
        return original(self, container)

    GoogleCloudPubSubEventHandler._extract_and_validate_event = extract_and_validate_matching_event


def use_test_registry_token():
    """Octue authenticates to a service registry with a Google ID token, which needs Google credentials;
    tests use a fixed bearer token instead. The registry request itself is octue's."""
    from octue.twined.cloud import registry

    token = os.environ.get("ROUSE_OCTUE_REGISTRY_TOKEN", "rouse-test-token")
    registry._get_google_cloud_id_token = lambda _registry: token


def publish_questions_to(service, topic_name):
    """Not stock octue: send the question event to `topic_name` instead of the network topic.

    Wraps the publisher octue uses so that the question (sender_type PARENT) goes to the given topic with
    the same data, attributes and ordering key; the answer subscription stays on the network topic.
    """
    publisher = service.publisher
    original_publish = publisher.publish
    topic_path = f"projects/{service.backend.project_id}/topics/{topic_name}"

    def publish(topic, data, ordering_key="", retry=None, **attributes):
        if attributes.get("sender_type") == "PARENT":
            topic = topic_path
        return original_publish(topic=topic, data=data, ordering_key=ordering_key, retry=retry, **attributes)

    publisher.publish = publish


def main(argv):
    arguments = parse_arguments(argv)
    question_uuid = arguments.question_uuid or str(uuid.uuid4())

    def error(kind, message, code=EXIT_ERROR):
        return emit({"error": kind, "message": message, "question_uuid": question_uuid}, code)

    if not arguments.project:
        return error("usage", "give --project or set GOOGLE_CLOUD_PROJECT")
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        return error("usage", "PUBSUB_EMULATOR_HOST is not set: this script only talks to a Pub/Sub emulator")
    if not os.path.isfile(arguments.schema):
        return error("usage", f"schema file {arguments.schema!r} not found: give --schema or set ROUSE_OCTUE_SCHEMA")
    try:
        input_values = json.loads(arguments.input_values)
    except json.JSONDecodeError as e:
        return error("usage", f"--input-values is not JSON: {e}")

    target = arguments.service_topic_or_sruid
    question_topic = None
    if SERVICE_ID_PATTERN.match(target):
        recipient = target
    else:
        question_topic = target
        recipient = arguments.recipient
        if not recipient:
            return error("usage", f"{target!r} is taken as a topic name: give the question's --recipient SRUID too")

    # octue reads the network topic's name once, when `octue.twined.cloud.events` is first imported.
    if arguments.services_topic:
        os.environ["TWINED_SERVICES_TOPIC_NAME"] = arguments.services_topic

    sys.dont_write_bytecode = True  # no __pycache__ beside the tests
    sys.path.insert(0, HERE)
    import octue  # noqa: F401  (installs octue's stderr log handler on the root logger)

    # octue 0.69.1 has an import cycle: `from octue.twined.resources import Child` alone fails with
    # "cannot import name 'Labelable' from partially initialized module"; importing octue.resources first
    # (as octue's own CLI does, indirectly) avoids it.
    import octue.resources  # noqa: F401
    from octue.twined.cloud.events import TWINED_SERVICES_TOPIC_NAME
    from octue.twined.resources import Child
    from octue.utils.encoders import OctueJSONEncoder

    logging.getLogger().setLevel(arguments.log_level.upper())
    if arguments.services_topic and TWINED_SERVICES_TOPIC_NAME != arguments.services_topic:
        return error("setup", "octue was imported before TWINED_SERVICES_TOPIC_NAME was set")

    use_local_schema(arguments.schema)
    # Rouse's broker applies filters itself, as Google does; only the
    # official emulator needs the asker to apply them.
    if os.environ.get("ROUSE_OCTUE_FILTER_SHIM", "1") != "0":
        apply_subscription_filters_locally()
    if arguments.service_registry:
        use_test_registry_token()

    child = Child(
        id=recipient,
        backend={"name": "GCPPubSubBackend", "project_id": arguments.project},
        internal_sruid=arguments.asker_sruid,
        service_registries=[
            {"name": f"registry-{i}", "endpoint": endpoint.rstrip("/")}
            for i, endpoint in enumerate(arguments.service_registry)
        ]
        or None,
    )
    if question_topic:
        publish_questions_to(child._service, question_topic)

    ask_options = dict(
        input_values=input_values,
        subscribe_to_logs=not arguments.no_forward_logs,
        save_diagnostics=arguments.save_diagnostics,
        question_uuid=question_uuid,
        retry_count=arguments.retry_count,
        cpus=arguments.cpus,
        memory=arguments.memory,
        ephemeral_storage=arguments.ephemeral_storage,
        timeout=arguments.timeout,
    )
    if arguments.maximum_heartbeat_interval is not None:
        ask_options["maximum_heartbeat_interval"] = arguments.maximum_heartbeat_interval

    try:
        answer, question_uuid = child.ask(**ask_options)
    except BaseException as e:  # noqa: B902 - every outcome must become one JSON line and an exit code
        if isinstance(e, KeyboardInterrupt):
            raise
        received = child.received_events or []
        exceptions = [r["event"] for r in received if r["event"].get("kind") == "exception"]
        if exceptions:
            event = exceptions[-1]
            return emit(
                {
                    "exception_type": event["exception_type"],
                    "exception_message": event["exception_message"],
                    "exception_traceback": event.get("exception_traceback"),
                    "question_uuid": question_uuid,
                },
                EXIT_EXCEPTION,
            )
        if isinstance(e, TimeoutError):
            return error("timeout", str(e), EXIT_TIMEOUT)
        logging.getLogger("ask").debug("asking failed", exc_info=e)
        return error(type(e).__name__, str(e))
    finally:
        if FilterDrops.count:
            logging.getLogger("ask").info(
                "dropped %d message(s) that the answer subscription's filter excludes", FilterDrops.count
            )

    if answer.get("output_manifest") is not None:
        answer["output_manifest"] = answer["output_manifest"].to_primitive()
    answer["question_uuid"] = question_uuid
    sys.stdout.write(json.dumps(answer, cls=OctueJSONEncoder) + "\n")
    sys.stdout.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
