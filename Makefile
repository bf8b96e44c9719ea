# The two commands of the README: `make run` and `make test`.
.PHONY: run test wasm build bench bench-spend fuzz fuzz-corpus

run:
	scripts/run.sh

test:
	scripts/test.sh

wasm:
	cargo build -p tollgate-filter --target wasm32-wasip1 --release

build: wasm
	cargo build --release -p tollgate -p tollgate-mock

# What Tollgate costs on top of Envoy; writes BENCHMARKS.md (about 21 minutes once built).
bench:
	bench/run.sh

# The spend API's queries over 10 million usage records in a scratch PostgreSQL database
# (tollgate_spend_bench, dropped after); writes its section of BENCHMARKS.md. About 25 minutes
# on 2 cores (12 to load and index, the rest timing).
# SPEND_BENCH_ARGS: e.g. --rows 1000000 --iterations 20 --plans (PostgreSQL's plan of each).
TOLLGATE_BENCH_PG_URL ?= postgres://postgres@127.0.0.1:5432/postgres
SPEND_BENCH_ARGS ?=
bench-spend:
	cargo run --release -p tollgate --example spend_bench -- --url $(TOLLGATE_BENCH_PG_URL) --write BENCHMARKS.md $(SPEND_BENCH_ARGS)

# Fuzz tollgate-core: every cargo-fuzz target for FUZZ_SECONDS each (`make test` runs 15 s).
FUZZ_SECONDS ?= 300
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Rewrite the committed seed corpus (filter/core/fuzz/corpus) from the golden fixtures.
fuzz-corpus:
	UPDATE_CORPUS=1 cargo test --manifest-path filter/core/fuzz/Cargo.toml --test corpus
