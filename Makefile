# peerd developer commands. `make help` lists them.
CARGO ?= cargo
ARGS ?=
IMAGE_ARGS ?=
BENCH_ARGS ?=
SOAK_ARGS ?=
FUZZ_CASES ?= 1000000

.DEFAULT_GOAL := help
.PHONY: help deps build release image run config test test-unit test-integration lint fmt bench chart-check clean fuzz soak sim sim-full

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

deps: ## Install build and test dependencies (Debian packages)
	scripts/install-test-deps.sh

build: ## Debug build
	$(CARGO) build --locked

release: ## Optimised build (target/release/peerd)
	$(CARGO) build --release --locked

image: release ## Build the OCI image without Docker (target/image); IMAGE_ARGS=--smoke to run it under containerd
	scripts/build-image.sh $(IMAGE_ARGS)

# `make run` and `make config` use a release build; RUN_BUILD= (empty) the debug one (scripts/run-check.sh).
RUN_BUILD ?= --release

run: ## Install protoc if missing (nothing else), then run a node on the embedded defaults (ARGS="--http-addr ...")
	@command -v protoc >/dev/null || scripts/install-build-deps.sh
	$(CARGO) run $(RUN_BUILD) --locked -- run $(ARGS)

config: ## Print the effective configuration (release build, as `make run` uses)
	@command -v protoc >/dev/null || scripts/install-build-deps.sh
	$(CARGO) run $(RUN_BUILD) --locked -- config $(ARGS)

test: ## Everything, on a fresh machine: install deps, lint, unit + integration tests
	scripts/test.sh

test-unit: ## Unit tests only (no external components)
	$(CARGO) test --lib --locked

test-integration: ## Integration tests (registry, containerd, peerd processes; needs root)
	PEERD_REQUIRE_INTEGRATION=1 $(CARGO) test --tests --locked -- --test-threads 2

fuzz: ## Property tests of every network-reachable parser, 1,000,000 cases each (release; FUZZ_CASES=N)
	PEERD_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --locked --test fuzz -- --test-threads 2

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt

bench: release ## Benchmarks (root; writes docs/benchmarks.md); BENCH_ARGS="--only throughput" or --smoke
	python3 bench/run.py $(BENCH_ARGS)

soak: ## Load + fault scenarios (root, loopback; release binary if built, else debug; writes docs/reliability.md); SOAK_ARGS=--quick: seconds each, to a temp file
	python3 scripts/soak.py $(SOAK_ARGS)

sim: ## Scale simulation, 100-10,000 nodes, real planner (release, <= 10 min; writes docs/scale.md + docs/scale/*.png); SIM_ARGS="--seed 2"
	$(CARGO) build --release --bin peerd-sim
	target/release/peerd-sim $(SIM_ARGS) --out target/sim.json
	/usr/bin/python3 scripts/sim-report.py target/sim.json --out docs/scale.md

sim-full: ## make sim plus churn and scale-out at 10,000 nodes (~30 min)
	$(MAKE) sim SIM_ARGS="--full $(SIM_ARGS)"

chart-check: ## Render and validate the Helm chart offline
	scripts/chart-check.sh

clean: ## Remove build output
	$(CARGO) clean
