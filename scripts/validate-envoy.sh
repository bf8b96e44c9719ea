#!/usr/bin/env bash
# Checks that the shipped Envoy config loads in Envoy 1.40 (with the built filter in place).
set -euo pipefail
cd "$(dirname "$0")/.."
wasm="${TOLLGATE_WASM:-$PWD/target/wasm32-wasip1/release/tollgate_filter.wasm}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/etc/tollgate/tollgate_filter.wasm#$wasm#" envoy/standalone.yaml > "$tmp/standalone.yaml"
envoy --mode validate -c "$tmp/standalone.yaml" --log-level warn
