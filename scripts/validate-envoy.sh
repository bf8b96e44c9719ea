#!/usr/bin/env bash
# Checks that the shipped Envoy config loads in Envoy 1.40 (with the built filter in place),
# and the same config rendered for the native module (`tollgate envoy-config --native`).
set -euo pipefail
cd "$(dirname "$0")/.."
wasm="${TOLLGATE_WASM:-$PWD/target/wasm32-wasip1/release/tollgate_filter.wasm}"
native="${TOLLGATE_NATIVE:-$PWD/target/release/libtollgate_native.so}"
tollgate="${TOLLGATE_BIN_DIR:-$PWD/target/debug}/tollgate"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/etc/tollgate/tollgate_filter.wasm#$wasm#" envoy/standalone.yaml > "$tmp/standalone.yaml"
envoy --mode validate -c "$tmp/standalone.yaml" --log-level warn
"$tollgate" envoy-config --native > "$tmp/native.yaml"
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$(dirname "$native")" \
  envoy --mode validate -c "$tmp/native.yaml" --log-level warn
# TLS to the control plane (the cluster's UpstreamTlsContext; the native module's https URL),
# with the system CA bundle standing in for a private CA.
ca="$("$tollgate" envoy-config | sed -n 's/.*trusted_ca: { filename: \(.*\) }.*/\1/p' | head -n1)"
sed "s#/etc/tollgate/tollgate_filter.wasm#$wasm#" <("$tollgate" envoy-config --control-plane-ca "$ca" \
  --control-plane-host localhost) > "$tmp/tls.yaml"
envoy --mode validate -c "$tmp/tls.yaml" --log-level warn
"$tollgate" envoy-config --native --control-plane-ca "$ca" > "$tmp/native-tls.yaml"
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$(dirname "$native")" \
  envoy --mode validate -c "$tmp/native-tls.yaml" --log-level warn
