# The two commands of the README: `make run` and `make test`.
.PHONY: run test wasm build bench

run:
	scripts/run.sh

test:
	scripts/test.sh

wasm:
	cargo build -p tollgate-filter --target wasm32-wasip1 --release

build: wasm
	cargo build --release -p tollgate -p tollgate-mock

# What Tollgate costs on top of Envoy; writes BENCHMARKS.md (about 11 minutes).
bench:
	bench/run.sh
