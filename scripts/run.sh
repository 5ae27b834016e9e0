#!/usr/bin/env bash
# `make run [ARGS="..."]`: build the release binary and start one node with an
# embedded Kafka (librdkafka's mock cluster) and a demo topic. Extra arguments
# are appended to `herald serve`, e.g. ARGS="--listen 0.0.0.0:8080" or
# ARGS="--brokers host:9092".
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

bash scripts/build.sh
exec "$HERALD_TARGET_DIR/release/herald" serve --demo-topic demo "$@"
