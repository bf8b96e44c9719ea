#!/usr/bin/env bash
# Runs every test: format and lint checks, unit and golden tests, a short fuzzing run of the
# core, end-to-end tests against a real Envoy (Rust and the official Python SDKs), on SQLite
# and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-tools.sh --test
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH
envoy --version >/dev/null 2>&1 || { echo "envoy not runnable" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p tollgate-filter --target wasm32-wasip1 -- -D warnings

echo "==> build the filter (wasm32-wasip1, release), the native module (release) and the binaries"
cargo build -p tollgate-filter --target wasm32-wasip1 --release
cargo build -p tollgate-native --release
cargo build --workspace

export TOLLGATE_WASM="$PWD/target/wasm32-wasip1/release/tollgate_filter.wasm"
export TOLLGATE_NATIVE="$PWD/target/release/libtollgate_native.so"
export TOLLGATE_BIN_DIR="$PWD/target/debug"
export TOLLGATE_TEST_PG_URL="${TOLLGATE_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"

echo "==> cargo test (unit, golden and control-plane tests)"
cargo test --workspace --exclude tollgate-e2e -- --test-threads 2

echo "==> fuzz (every target of filter/core/fuzz for ${FUZZ_SECONDS:-15} s)"
scripts/fuzz.sh

echo "==> end-to-end tests (control plane on SQLite)"
cargo test -p tollgate-e2e -- --test-threads 2

echo "==> end-to-end tests again with the control plane on PostgreSQL"
TOLLGATE_E2E_DB=postgres cargo test -p tollgate-e2e -- --test-threads 2

echo "==> envoy --mode validate envoy/standalone.yaml"
scripts/validate-envoy.sh

echo "==> pytest (official openai SDK against the gateway)"
python3 -m pytest -q tests/python

echo "==> end-to-end tests and pytest with the native module (Envoy dynamic module) instead of Wasm"
TOLLGATE_E2E_FILTER=native cargo test -p tollgate-e2e -- --test-threads 2
TOLLGATE_E2E_FILTER=native python3 -m pytest -q tests/python
