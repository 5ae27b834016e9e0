# herald's verbs. Each target is a thin call into scripts/, which does the work
# (and can be run directly). `make help` lists them.
#
#   make run [ARGS="--listen 0.0.0.0:8080"]   one node, embedded Kafka, demo topic
#   make test                                 what CI runs (.ci/run)

SHELL := /bin/bash
ARGS ?=
# Dependency groups for `make deps`: build, test, bench (see scripts/install-deps.sh).
DEPS ?= build test

.DEFAULT_GOAL := help
.PHONY: help deps build run test lint k8s-check image clean distclean bench bench-smoke
.PHONY: fuzz cluster cluster-down chaos

help: ## list the verbs
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

deps: ## install dependencies (DEPS="build test bench")
	bash scripts/install-deps.sh $(DEPS)

build: ## install build dependencies, cargo build --release
	bash scripts/build.sh

run: ## build, then start herald serve --demo-topic demo $(ARGS) on 127.0.0.1:8080
	bash scripts/run.sh $(ARGS)

# Tests use the dev profile (plain `cargo test`), not --release: see scripts/test.sh.
test: ## install test dependencies, lint, k8s-check, cargo test --all-targets
	bash scripts/test.sh

lint: ## cargo fmt --check and cargo clippy --all-targets -- -D warnings
	bash scripts/lint.sh

k8s-check: ## validate k8s/ (kubernetes-validate, rendered) and the Dockerfile (hadolint)
	bash scripts/check-k8s.sh

bench: ## every scenario of docs/architecture.md (Targets) vs nchan, Pushpin, KafkaSSE and a baseline (~25 min); rewrites BENCHMARKS.md
	bash scripts/bench.sh $(ARGS)

bench-smoke: ## a few hundred connections for seconds; fails on any lost/reordered record
	bash scripts/bench.sh --smoke

IMAGE ?= herald:latest
image: ## build the container image $(IMAGE) (needs Docker with BuildKit)
	docker build -t $(IMAGE) .

clean: ## cargo clean
	bash scripts/clean.sh

distclean: ## clean, plus .tools/ and tests/browser/node_modules/
	bash scripts/clean.sh --all

fuzz: ## run each cargo-fuzz target for FUZZ_SECONDS (default 600) each; not in CI
	bash scripts/fuzz.sh

NODES ?= 3
cluster: ## Tansu + NODES herald nodes + HAProxy (leastconn) + Prometheus, on this machine
	bash scripts/cluster.sh up $(NODES)

cluster-down: ## stop what make cluster started
	bash scripts/cluster.sh down

chaos: ## the long chaos run (500,000 records; nodes killed, broker faults, 0 loss), with its figures
	HERALD_CHAOS_PER_KEY=5000 cargo test --release --test cluster chaos -- --nocapture
