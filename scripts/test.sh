#!/usr/bin/env bash
# `make test` (and CI through .ci/run): install everything the tests use, lint,
# check k8s/ and the Dockerfile, then run every test target.
#
# Tests build with the dev (debug) profile, not --release: on these 2-core
# machines a second, optimised build of rdkafka (librdkafka through cmake) and
# every other dependency would add many minutes, while `make lint` (clippy)
# already works in the dev profile, so cargo can share its dependency
# build-script outputs with this build. Tests that measure speed compare ratios
# against a baseline taken in the same run, so the profile does not change what
# they assert.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

bash scripts/install-deps.sh test
bash scripts/lint.sh
# Kubernetes manifests (rendered with kubectl's kustomize when there) and the
# Dockerfile, offline; quick, so it runs before the long cargo build.
bash scripts/check-k8s.sh
# Known advisories in our dependencies (offline snapshot of the RustSec database).
bash scripts/audit.sh

# HERALD_TOOLS (exported by lib.sh, default .tools/) is where tests find
# bin/tansu, bin/chromium, bin/python (the venv with httpx and httpx-sse).
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
mapfile -t lock < <(cargo_lock_flags)
# Full output, no filtering: --no-fail-fast reports every failing target.
cargo test --workspace --all-targets --no-fail-fast "${lock[@]}"
