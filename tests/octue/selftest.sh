#!/usr/bin/env bash
# tests/octue/selftest.sh — checks ask.py (the real octue 0.69.1 client plus the
# two test shims) end to end WITHOUT Rouse: the official Pub/Sub emulator, the
# fake service (fake_service.py) and a wiretap on the network topic.
#
# Prints one line per case and exits non-zero if any failed. Everything it starts
# (emulator, fake services, wiretap) is stopped on exit. The wire log (every
# message on the topics, one JSON line each) is kept at $work/wire.jsonl when
# KEEP=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="$("$root/.ci/octue-venv")"
work="$(mktemp -d "${TMPDIR:-/tmp}/rouse-octue-selftest.XXXXXX")"
pids=()

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  "$root/.ci/emulator" stop "$work/emulator" || true
  if [ "${KEEP:-0}" = 1 ]; then echo "selftest: kept $work" >&2; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT

export PUBSUB_EMULATOR_HOST
PUBSUB_EMULATOR_HOST="$("$root/.ci/emulator" start "$work/emulator")"
export GOOGLE_CLOUD_PROJECT=rouse-local
network=octue.services
own_topic="octue.services.$(python3 -c 'import uuid; print(uuid.uuid4())')"
registry_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

"$python" "$here/pubsub_tool.py" create-topic "$network" "$own_topic"

# start NAME COMMAND... — runs it in its own process group, waits for its `ready` line.
start() {
  local name="$1"; shift
  setsid "$@" >"$work/$name.out" 2>"$work/$name.err" </dev/null &
  pids+=("$!")
  for _ in $(seq 1 150); do
    grep -q '^ready$' "$work/$name.out" 2>/dev/null && return 0
    kill -0 "$!" 2>/dev/null || { cat "$work/$name.err" >&2; echo "selftest: $name died" >&2; exit 1; }
    sleep 0.2
  done
  echo "selftest: $name not ready after 30 s" >&2; exit 1
}

start tap "$python" "$here/pubsub_tool.py" tap "$network" "$own_topic"
start echo "$python" "$here/fake_service.py" --services-topic "$network" --sruid experiment-2/echo:v1 \
  --heartbeat-interval 1 --registry-port "$registry_port" --own-topic "$own_topic"
start slow "$python" "$here/fake_service.py" --services-topic "$network" --sruid experiment-2/slow:v1

failures=0
# case NAME EXPECTED_EXIT PYTHON_CHECK_ON_`answer` -- ASK_ARGS...
case_() {
  local name="$1" expected="$2" check="$3"; shift 4
  local started ended status=0 out
  started="$(date +%s.%N)"
  out="$("$python" "$here/ask.py" --project "$GOOGLE_CLOUD_PROJECT" --services-topic "$network" "$@" 2>"$work/ask-$name.err")" || status=$?
  ended="$(date +%s.%N)"
  local seconds
  seconds="$(python3 -c "print(f'{$ended - $started:.2f}')")"
  if [ "$status" = "$expected" ] && python3 -c "
import json, sys
lines = sys.argv[1].splitlines()
assert len(lines) == 1, lines
answer = json.loads(lines[0])
assert $check, answer
" "$out"; then
    echo "ok    $name (exit $status, ${seconds}s) $out"
  else
    echo "FAIL  $name (exit $status, expected $expected, ${seconds}s) $out"
    sed 's/\x1b\[[0-9;]*m//g' "$work/ask-$name.err" | tail -20
    failures=$((failures + 1))
  fi
}

case_ result 0 'answer["output_values"] == {"x": [1, "two", None]}' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"x": [1, "two", null]}' --timeout 20
case_ null-input 0 'answer["output_values"] is None' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values 'null' --timeout 20
case_ exception 1 'answer["exception_type"] == "ValueError" and answer["exception_message"] == "bad x"' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"raise": {"type": "ValueError", "message": "bad x"}}' --timeout 20
case_ unknown-exception-type 1 'answer["exception_type"] == "RouseError"' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"raise": {"type": "RouseError", "message": "m"}}' --timeout 20
case_ remote-timeout-error-is-an-exception 1 'answer["exception_type"] == "TimeoutError"' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"raise": {"type": "TimeoutError", "message": "m"}}' --timeout 20
case_ logs-and-monitor-messages 0 'answer["output_values"]["monitor"] == [1]' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"log": "hello", "monitor": [1]}' --timeout 20
case_ no-delivery-acknowledgement 0 'answer["output_values"]["no_delivery_acknowledgement"]' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"no_delivery_acknowledgement": true}' --timeout 20
case_ timeout 2 'answer["error"] == "timeout"' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"silent": true}' --timeout 3
case_ heartbeats-keep-it-alive 0 'answer["output_values"]["sleep"] == 4' -- \
  --service-topic-or-sruid experiment-2/echo:v1 --input-values '{"sleep": 4}' --timeout 20 --maximum-heartbeat-interval 2
case_ no-heartbeat 2 '"heartbeat" in answer["message"]' -- \
  --service-topic-or-sruid experiment-2/slow:v1 --input-values '{"sleep": 5}' --timeout 20 --maximum-heartbeat-interval 2
case_ no-such-service 2 'answer["error"] == "timeout"' -- \
  --service-topic-or-sruid experiment-2/nobody:v1 --input-values '{}' --timeout 3
case_ tagless-via-registry 0 'answer["output_values"] == {"t": 1}' -- \
  --service-topic-or-sruid experiment-2/echo --service-registry "http://127.0.0.1:$registry_port" --input-values '{"t": 1}' --timeout 20
case_ tagless-without-registry 3 'answer["error"] == "InvalidServiceID"' -- \
  --service-topic-or-sruid experiment-2/echo --input-values '{}' --timeout 20
case_ own-topic-not-stock 0 'answer["output_values"] == {"via": "own topic"}' -- \
  --service-topic-or-sruid "$own_topic" --recipient experiment-2/echo:v1 --input-values '{"via": "own topic"}' --timeout 20
case_ missing-network-topic 3 'answer["error"] == "ServiceNotFound"' -- \
  --services-topic no.such.topic --service-topic-or-sruid experiment-2/echo:v1 --input-values '{}' --timeout 20

leftover="$("$python" "$here/pubsub_tool.py" subscriptions | grep -c '\.answers\.' || true)"
if [ "$leftover" = 0 ]; then echo "ok    answer subscriptions all deleted"; else
  echo "FAIL  $leftover answer subscription(s) left behind"; failures=$((failures + 1)); fi

cp "$work/tap.out" "$work/wire.jsonl"
echo "selftest: $(grep -c '"topic"' "$work/wire.jsonl") messages on the wire; $failures failure(s)"
[ "$failures" = 0 ]
