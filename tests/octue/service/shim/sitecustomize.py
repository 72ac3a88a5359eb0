"""Test-side shim for running a stock octue 0.69.1 service offline (nothing on the wire changes).

Python imports `sitecustomize` at start-up from any directory on PYTHONPATH; the Rouse
service under test gets `PYTHONPATH=<this directory>` through its env
(`rouse services update ... --env PYTHONPATH=...`), so the octue CLI that Rouse starts
loads this file without any change to octue or to its command line.

octue validates every event it receives (for a service: the question) against
`https://jsonschema.registry.octue.com/octue/service-communication/0.16.0.json`, which its
module-level validator (`octue.twined.cloud.events.validation.jsonschema_validator`) fetches
over HTTPS on first use; offline that raises `referencing.exceptions.Unresolvable` before the
service can answer. When that module is imported, its validator is replaced by the same
`Draft202012Validator({"$ref": <that URL>})` over a registry that maps the URL to the local
copy of the schema, exactly as tests/octue/ask.py does for the asker. Validation itself stays
octue's. Only active with PUBSUB_EMULATOR_HOST set (an emulator means offline tests).
"""

import importlib.abc
import importlib.machinery
import json
import os
import sys

_VALIDATION_MODULE = "octue.twined.cloud.events.validation"
_SCHEMA_PATH = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "service-communication-0.15.0.json")
)


def _use_local_schema(validation):
    import jsonschema
    import referencing
    import referencing.jsonschema

    with open(_SCHEMA_PATH) as file:
        contents = json.load(file)

    url = validation.SERVICE_COMMUNICATION_SCHEMA["$ref"]
    resource = referencing.Resource(contents=contents, specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource(uri=url, resource=resource)
    validation.jsonschema_validator = jsonschema.Draft202012Validator(
        validation.SERVICE_COMMUNICATION_SCHEMA,
        registry=registry,
    )


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then points the freshly imported module's validator at the local schema."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _use_local_schema(module)


class _ValidationFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _VALIDATION_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


if os.environ.get("PUBSUB_EMULATOR_HOST"):
    sys.meta_path.insert(0, _ValidationFinder())
