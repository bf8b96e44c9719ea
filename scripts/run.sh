#!/usr/bin/env bash
# Runs the gateway on :4000 with examples/config.yaml: two models served by the bundled mock
# provider (no provider key needed), plus real OpenAI / Anthropic models when
# OPENAI_API_KEY / ANTHROPIC_API_KEY are set. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-tools.sh
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH

cargo build -p tollgate-filter --target wasm32-wasip1 --release
cargo build --release -p tollgate -p tollgate-mock

mkdir -p .tollgate
config=.tollgate/config.yaml
cp examples/config.yaml "$config"
if [[ -n "${OPENAI_API_KEY:-}" ]]; then
  cat >> "$config" <<'YAML'
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
YAML
fi
if [[ -n "${ANTHROPIC_API_KEY:-}" ]]; then
  cat >> "$config" <<'YAML'
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: os.environ/ANTHROPIC_API_KEY
YAML
fi

target/release/tollgate-mock --port 9090 > .tollgate/mock.log 2>&1 &
mock_pid=$!
trap 'kill "$mock_pid" 2>/dev/null || true' EXIT

target/release/tollgate up --config "$config" --port 4000 \
  --wasm target/wasm32-wasip1/release/tollgate_filter.wasm --state-dir .tollgate
