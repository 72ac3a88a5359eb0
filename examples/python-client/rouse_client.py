"""A small Python client of Rouse's HTTP/JSON API, in FaaSpot's shape.

The standard library only (urllib), Python 3.8 or later:

    from rouse_client import Rouse

    rouse = Rouse("http://127.0.0.1:7070", token=TOKEN, project="p")
    rouse.deployments.create("hello", file="main.py",
                             requirements_file="requirements.txt",
                             context_file="context.env", wait=True)
    rouse.deployments.run("hello", {"name": "user1"}, wait=True)   # the result
    execution_id = rouse.deployments.run("hello", {"name": "user2"})
    rouse.executions.get(execution_id)["status"]                   # "succeeded"

TOKEN is `rouse auth print-access-token` (or ROUSE_TOKEN); the endpoint is the
API's address (or ROUSE_ENDPOINT). Every failure raises RouseError with the
API's message, which names the bad value and the fix.
"""

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Rouse", "RouseError"]

FINISHED = ("succeeded", "failed", "cancelled")
BUILD_ENDS = ("succeeded", "failed", "cancelled", "superseded")


class RouseError(Exception):
    """An error answer of the API, a failed build or a failed run."""

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


class Rouse:
    def __init__(self, endpoint=None, token=None, project=None, timeout=60.0):
        self.endpoint = (endpoint or os.environ.get("ROUSE_ENDPOINT") or "http://127.0.0.1:7070").rstrip("/")
        self.token = token if token is not None else os.environ.get("ROUSE_TOKEN", "")
        self.project = project or os.environ.get("ROUSE_PROJECT")
        self.timeout = timeout
        self.deployments = Deployments(self)
        self.executions = Executions(self)

    def _project(self, project):
        project = project or self.project
        if not project:
            raise RouseError("no project: pass project= (or set ROUSE_PROJECT)")
        return project

    def request(self, method, path, body=None, query=None, timeout=None):
        """One API call: the decoded JSON answer, or RouseError."""
        url = self.endpoint + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                text = answer.read().decode()
                return json.loads(text) if text.strip() else {}
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                detail = json.loads(text)["error"]
                raise RouseError(detail.get("message", text), error.code, detail.get("status")) from None
            except (ValueError, KeyError, TypeError):
                raise RouseError(f"HTTP {error.code}: {text}", error.code) from None
        except urllib.error.URLError as error:
            raise RouseError(f"cannot reach the Rouse API at {self.endpoint} ({error.reason})") from None


class Deployments:
    """Functions: a Python file with `main(args, context)`."""

    def __init__(self, client):
        self._client = client

    def create(self, name, file, requirements_file=None, context_file=None, wait=False, project=None, timeout=600.0):
        """Deploys (creating the service NAME if needed); returns the build.

        With wait=True, returns once the function serves, or raises with why
        its build failed.
        """
        client = self._client
        project = client._project(project)
        quoted = urllib.parse.quote(name, safe="")
        try:
            client.request("GET", f"/v1/projects/{project}/services/{quoted}")
        except RouseError as error:
            if error.status != 404:
                raise
            client.request("POST", f"/v1/projects/{project}/services", {"name": name})
        body = {"code": _read(file), "file_name": os.path.basename(file)}
        if requirements_file:
            body["requirements"] = _read(requirements_file)
        if context_file:
            body["context"] = _read(context_file)
            body["context_file_name"] = os.path.basename(context_file)
        build = client.request("POST", f"/v1/projects/{project}/services/{quoted}/function", body)
        if not wait:
            return build
        deadline = time.monotonic() + timeout
        while build.get("status") not in BUILD_ENDS:
            if time.monotonic() > deadline:
                raise RouseError(f"build {build['id']} did not end within {timeout}s; it goes on")
            time.sleep(0.5)
            build = client.request("GET", f"/v1/builds/{build['id']}")
        if build["status"] != "succeeded":
            raise RouseError(f"build {build['id']} ended {build['status']}: {build.get('failure', '')}")
        return build

    def run(self, name, parameters=None, wait=False, project=None, timeout=60.0):
        """Runs the function with `parameters` as its `args`.

        Returns the execution id, or with wait=True the function's result
        (RouseError if it raised, or did not finish within `timeout`).
        """
        client = self._client
        project = client._project(project)
        quoted = urllib.parse.quote(name, safe="")
        path = f"/v1/projects/{project}/services/{quoted}/executions"
        body = {"input": parameters or {}}
        if not wait:
            return client.request("POST", path, body)["id"]
        query = {"wait": "true", "timeout": f"{timeout}s"}
        execution = client.request("POST", path, body, query, timeout=timeout + 10)
        if execution.get("status") == "succeeded":
            return execution.get("output")
        if execution.get("status") not in FINISHED:
            raise RouseError(f"execution {execution['id']} did not finish within {timeout}s; it goes on")
        raise RouseError(f"execution {execution['id']} {execution.get('status')}: {_why(execution)}")


class Executions:
    def __init__(self, client):
        self._client = client

    def get(self, execution_id):
        """The execution: `status`, timings, `events` and, once answered, `output`."""
        quoted = urllib.parse.quote(execution_id, safe="")
        return self._client.request("GET", f"/v1/executions/{quoted}")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _why(execution):
    for event in reversed(execution.get("events", [])):
        data = event.get("data") or {}
        if isinstance(data, dict) and data.get("kind") == "exception":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return execution.get("reason", "")
