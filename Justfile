# Rouse's tasks. On a fresh machine run them through `.ci/just` (it installs
# `just` first); afterwards plain `just` works too.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Check (and install where possible) what building and testing need.
setup:
    .ci/setup
    .ci/octue-venv >/dev/null
    .ci/schemathesis-venv >/dev/null

# The echo example as a static binary, for `FROM scratch` test images.
static-echo:
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release -p rouse-example-echo --target x86_64-unknown-linux-gnu

# Build everything once (debug), tests included.
build:
    cargo build --workspace --all-targets --locked

# Formatting and lints, as CI runs them; the Terraform module parsed and
# cross-checked offline (no provider can be downloaded to `terraform validate`).
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    .ci/terraform-check

# Every test: unit, integration and end-to-end (the real broker and emulator,
# the real binary), then the end-to-end tests again on PostgreSQL.
test: setup lint build static-echo
    if cargo nextest --version >/dev/null 2>&1; then \
        cargo nextest run --workspace --locked --no-fail-fast; \
    else \
        cargo test --workspace --locked --no-fail-fast; \
    fi
    {{just_executable()}} test-postgres

# The end-to-end tests with every `rouse server` on PostgreSQL (a server of
# each test's own) instead of its SQLite file.
test-postgres:
    if cargo nextest --version >/dev/null 2>&1; then \
        ROUSE_TEST_STORE=postgres cargo nextest run -p rouse-tests --locked --no-fail-fast -E 'not binary(store)'; \
    else \
        ROUSE_TEST_STORE=postgres cargo test -p rouse-tests --locked --no-fail-fast -- --skip store; \
    fi

# Speed and memory figures next to floors measured in the same run (release build).
bench: setup static-echo
    cargo build --locked --release -p rouse-cli -p rouse-tests -p rouse-example-echo
    target/release/bench

# The main job on embedded defaults: the platform on the emulator, with a service.
demo: setup static-echo
    cargo build --locked -p rouse-cli -p rouse-example-echo
    .ci/demo
