#!/usr/bin/env bash
# Fuzzes tollgate-core (filter/core/fuzz, cargo-fuzz): checks the fuzz crate (format, lint, the
# seed corpus against the fixtures), builds every target once (nightly, AddressSanitizer,
# debug assertions), then runs each for SECONDS (default $FUZZ_SECONDS, else 15; `make fuzz`
# runs 300 each). Fails on a panic, a crash, an input slower than 10 s, an allocation of
# 256 MB or more, or 512 MB of RSS; the input lands in filter/core/fuzz/artifacts/<target>/.
# Replay one: (cd filter/core && cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${FUZZ_SECONDS:-15}}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
fuzz_dir=filter/core/fuzz

# What fuzzing needs, installed once.
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "==> rustup toolchain install $toolchain"
  rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

# The fuzz crate is a workspace of its own: the root's fmt and clippy do not see it.
echo "==> fuzz: cargo fmt --check, clippy and the corpus test of $fuzz_dir"
cargo fmt --manifest-path "$fuzz_dir/Cargo.toml" --check
cargo clippy --manifest-path "$fuzz_dir/Cargo.toml" --all-targets -- -D warnings
cargo test --manifest-path "$fuzz_dir/Cargo.toml" --test corpus

echo "==> fuzz: build the targets ($toolchain, AddressSanitizer)"
(cd filter/core && cargo "+$toolchain" fuzz build)
mapfile -t targets < <(cd filter/core && cargo "+$toolchain" fuzz list)

failed=()
for target in "${targets[@]}"; do
  # New inputs go to a working corpus under target/ (kept between local runs); the committed
  # seeds are read only.
  work="$fuzz_dir/target/corpus/$target"
  log="$fuzz_dir/target/logs/$target.log"
  mkdir -p "$work" "$(dirname "$log")"
  echo "==> fuzz $target (${seconds}s)"
  if (cd filter/core && cargo "+$toolchain" fuzz run "$target" \
      "fuzz/target/corpus/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=512 -malloc_limit_mb=256 \
      -dict=fuzz/tollgate.dict -print_final_stats=1) >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs' "$log" || true
  else
    tail -n 60 "$log"
    echo "fuzz $target FAILED: log $log, input in $fuzz_dir/artifacts/$target/" >&2
    failed+=("$target")
  fi
done
if (( ${#failed[@]} )); then
  echo "fuzz targets that failed: ${failed[*]}" >&2
  exit 1
fi
