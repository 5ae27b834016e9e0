#!/usr/bin/env bash
# `make bench`: every scenario of the targets in docs/architecture.md against herald and the
# servers a team would pick instead: nchan (nginx + libnginx-mod-nchan,
# bench/nchan.conf), Pushpin (bench/pushpin.conf), Wikimedia's KafkaSSE
# (bench/kafka-sse, on the same Kafka as herald) and the speed-of-light writer
# (herald-baseline), alternating servers within each round, then rewrites
# BENCHMARKS.md and docs/bench/*.svg from the results (scripts/bench-report.py).
# About 25 minutes on the project's 2-core machines (3 rounds), plus what
# installing the peers takes on a fresh machine (see BENCHMARKS.md).
#
# Usage: scripts/bench.sh [--smoke] [--runs N] [--no-stretch] [--no-report] [--out DIR]
#   --smoke       a few hundred connections for a few seconds against one
#                 herald node (herald-bench smoke); exits non-zero on any lost,
#                 duplicated or reordered record or failed connection
#   --runs N      rounds of every scenario (default 3; the report shows medians)
#   --no-stretch  several-node idle runs all at 114,000 connections over 6 nodes
#                 (default: the first round tries 250,000 over 14 nodes)
#   --no-report   keep the results (target/bench/<time>/) but do not touch
#                 BENCHMARKS.md or docs/bench/
#   --out DIR     where the JSON results go (default target/bench/<time>)
#
# Each command is logged to DIR/commands.txt and its output to DIR/NAME.log;
# rerun any of them by hand. Builds (release) before measuring, never during.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

SMOKE=0 RUNS=3 STRETCH=1 REPORT=1 OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --runs) RUNS="$2"; shift ;;
    --no-stretch) STRETCH=0 ;;
    --no-report) REPORT=0 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
  shift
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"

need_cargo
mapfile -t lock < <(cargo_lock_flags)
BIN="$HERALD_TARGET_DIR/release"

if [[ $SMOKE -eq 1 ]]; then
  bash scripts/install-deps.sh build
  log "building herald, herald-bench (release)"
  cargo build --release "${lock[@]}" -p herald -p herald-bench --bin herald --bin herald-bench
  exec "$BIN/herald-bench" smoke
fi

INSTALL_STARTED=$SECONDS
bash scripts/install-deps.sh build bench
INSTALL_SECONDS=$((SECONDS - INSTALL_STARTED))
log "building herald, herald-bench, herald-baseline (release)"
cargo build --release "${lock[@]}" -p herald -p herald-bench

OUT="${OUT:-$HERALD_TARGET_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
: >"$OUT/commands.txt"
STARTED=$SECONDS
PROBLEMS=0

# run NAME ARGS...: one herald-bench command, its JSON in OUT/NAME.json.
run() {
  local name=$1; shift
  local wait=$((QUIET_BUDGET < 5 ? QUIET_BUDGET : 5))
  local cmd=(herald-bench "$@" --json "$OUT/$name.json" --label "$name"
             --quiet-wait "$wait" --scratch "$OUT/servers/$name")
  printf '%s\n' "${cmd[*]}" >>"$OUT/commands.txt"
  printf '%s: [%3ds] %-28s ' "${0##*/}" "$((SECONDS - STARTED))" "$name"
  local status=0
  "$BIN/${cmd[0]}" "${cmd[@]:1}" >"$OUT/$name.log" 2>&1 || status=$?
  local waited
  waited=$(grep -o '"waited_s": [0-9.]*' "$OUT/$name.json" 2>/dev/null | grep -o '[0-9][0-9.]*$' || true)
  waited=${waited%.*}
  QUIET_BUDGET=$((QUIET_BUDGET - ${waited:-0}))
  if ((QUIET_BUDGET < 0)); then QUIET_BUDGET=0; fi
  if [[ $status -eq 0 ]]; then
    echo ok
  elif [[ -f "$OUT/$name.json" && " $* " =~ \ --server\ (nchan|pushpin|kafka-sse|baseline)\  ]]; then
    # A peer losing records or connections is a finding (BENCHMARKS.md
    # reports it), not a failure of the run.
    echo "peer problems (reported; see $OUT/$name.log)"
  elif [[ -f "$OUT/$name.json" ]]; then
    echo "PROBLEMS (see $OUT/$name.log)"
    PROBLEMS=$((PROBLEMS + 1))
  else
    echo "FAILED (exit $status; see $OUT/$name.log)"
    tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
    PROBLEMS=$((PROBLEMS + 1))
  fi
}

# Before each run, wait up to 5 s for other work on the machine to calm down
# (below 30 % of a core), at most BENCH_QUIET_BUDGET seconds in all so the
# whole stays within 10 minutes; each result records what it saw.
QUIET_BUDGET="${BENCH_QUIET_BUDGET:-60}"
# Rising broadcast rates, as offered deliveries/s (rate = deliveries / clients).
# The speed-of-light writer sustains the top step here; beyond it the kernel's
# TCP memory limits, not the writer, stall every socket on the machine.
LADDER=50000,75000,100000,200000,500000,1000000,2000000,3000000,4000000,6000000
BCAST=(--deliveries "$LADDER" --step-seconds 1.2 --warmup 0.3)
PUSHPIN_LADDER=10000,20000,30000,50000,75000,100000
KSSE=(--rate 100 --keys 1 --encoding json --partitions 1 --topic kafkasse --seconds 4)
log "results in $OUT"
for r in $(seq 1 "$RUNS"); do
  for s in herald nchan baseline; do
    run "idle-$s-19000-r$r" idle --server "$s" --connections 19000 --settle 1 --idle-seconds 5
  done
  # Several nodes on one machine: ≥ 100,000; the first round tries the stretch, 250,000.
  if [[ $r -eq 1 && $STRETCH -eq 1 ]]; then
    run "idle-herald-multi-r$r" idle --server herald --nodes 14 --connections 250000 --settle 1 --idle-seconds 5
  else
    run "idle-herald-multi-r$r" idle --server herald --nodes 6 --connections 114000 --settle 1 --idle-seconds 5
  fi
  for s in herald nchan baseline; do
    run "broadcast-$s-10000-r$r" broadcast --server "$s" --clients 10000 "${BCAST[@]}"
  done
  # Pushpin answers 502 to part of a burst of 512 connections: 16 at a time
  # per client process. It never keeps p99 under 50 ms at 10,000 clients,
  # so its ladder starts lower, and it runs every step.
  run "broadcast-pushpin-10000-r$r" broadcast --server pushpin --clients 10000 \
    --deliveries "$PUSHPIN_LADDER" --step-seconds 1.2 --warmup 1 --no-stop --connect-concurrency 16
  for s in herald nchan pushpin; do
    run "light-$s-1000-r$r" light --server "$s" --clients 1000 --rate 1000 --seconds 4 --connect-concurrency 16
  done
  # KafkaSSE against herald, both reading a herald node's embedded Kafka: 1,000
  # clients on one topic at 100 records/s (JSON values, KafkaSSE's format).
  for s in kafka-sse herald; do
    run "kafkasse-$s-1000-r$r" latency --server "$s" "${KSSE[@]}" --clients 1000
  done
  # And both at once on the very same records: 1,000 clients on KafkaSSE and
  # 1,000 on the herald node whose embedded Kafka it reads.
  run "side-kafkasse-1000-r$r" side-by-side "${KSSE[@]}" --clients 1000
  run "keyed-herald-15000-r$r" keyed --server herald --clients 15000 --rate 5000 --seconds 4
  # Record formats: decoding alone, then a decoded (Avro) topic against a
  # JSON one carrying the same bytes, at 100,000 deliveries/s.
  run "decode-r$r" decode
  for e in json avro; do
    run "broadcast-$e-herald-10000-r$r" broadcast --server herald --clients 10000 --encoding "$e" \
      --size 200 --deliveries 100000 --step-seconds 3 --warmup 0.5 --no-stop
  done
  # Filters: 10,000 clients, F distinct where= filters (each one key's
  # records), against key selectors carrying the same deliveries.
  for f in 10 100 1000; do
    run "filters-$f-herald-10000-r$r" filters --clients 10000 --filters "$f" --rate 1000 --seconds 3
    run "filters-keys-$f-herald-10000-r$r" filters --clients 10000 --filters "$f" --rate 1000 --seconds 3 --keys-instead
  done
  run "resume-herald-10000-r$r" resume --server herald --clients 10000 --behind 5
  # Table topics: a 100,000-key table built from Kafka, 1,000 snapshots of
  # 10,000 keys at once, and slow clients on a 10,000 records/s hot topic.
  run "tables-herald-r$r" tables --partitions 8 --topic tables
done
# The resume again with a 16-record replay buffer, so the catch-up must read
# Kafka (one run: a variant, not a target of its own).
run "resume-kafka-herald-10000-r1" resume --server herald --clients 10000 --behind 5 \
  --herald-arg=--replay-buffer-records=16
# Keyed again without the id-only events herald sends idle keyed streams every
# 5 s (one run, to show what they cost the p99).
run "keyed-noidleid-herald-15000-r1" keyed --server herald --clients 15000 --rate 5000 --seconds 4 \
  --herald-arg=--idle-id-interval=1h
# Kafka's latency floor: a bare librdkafka consumer on the light load's own
# records, beside herald's produce→client and its own share (one run, three
# pairs inside), on the embedded Kafka and on Tansu; on Tansu also without
# presence: its 8 partitions in the node's fetch cost about 10 ms p50 there
# (BENCHMARKS.md, "Latency floor").
run "floor-herald-r1" floor --partitions 8
run "floor-tansu-herald-r1" floor --partitions 8 --tansu
run "floor-tansu-nopresence-herald-r1" floor --partitions 8 --tansu --herald-arg=--presence-topic=
# The publish endpoint (POST → Kafka's ack) against a direct rdkafka producer
# with the same settings, alone and 64 at a time (three rounds inside).
run "publish-herald-r1" publish --partitions 8
# KafkaSSE's curve: where it stops keeping up (1,000 is in every round).
for c in 100 300 2000; do
  for s in kafka-sse herald; do
    run "kafkasse-$s-$c-r1" latency --server "$s" "${KSSE[@]}" --clients "$c"
  done
done
run "side-kafkasse-100-r1" side-by-side "${KSSE[@]}" --clients 100
# Presence under churn (one run, three alone/churning pairs inside): the
# light load alone and beside 10,000 streams replaced at 500 a second.
run "presence-churn-herald-r1" presence-churn --partitions 8 --herald-arg=--heartbeat=1s
run "presence-churn-off-herald-r1" presence-churn --partitions 8 --herald-arg=--heartbeat=1s \
  --herald-arg=--presence-topic=
# Filters at the edges (one run each): 10,000 records/s over 1,000 filters,
# and 10,000 distinct filters (one client each).
run "filters-1000x10k-herald-10000-r1" filters --clients 10000 --filters 1000 --rate 10000 --seconds 3
run "filters-keys-1000x10k-herald-10000-r1" filters --clients 10000 --filters 1000 --rate 10000 --seconds 3 --keys-instead
run "filters-10000-herald-10000-r1" filters --clients 10000 --filters 10000 --rate 1000 --seconds 3
# The same 1,000 filters for 1,000 clients instead of 10,000: what connections add.
run "filters-1000c1k-herald-1000-r1" filters --clients 1000 --filters 1000 --rate 1000 --seconds 3
# Client-count sweep for the chart (one run each; 10,000 is above).
for c in 1000 3000; do
  for s in herald nchan; do
    run "broadcast-$s-$c-r1" broadcast --server "$s" --clients "$c" "${BCAST[@]}"
  done
  run "broadcast-pushpin-$c-r1" broadcast --server pushpin --clients "$c" \
    --deliveries "$PUSHPIN_LADDER" --step-seconds 1.2 --warmup 1 --no-stop --connect-concurrency 16
done
log "measured in $((SECONDS - STARTED)) s"

if [[ $REPORT -eq 1 ]]; then
  python3 scripts/bench-report.py "$OUT" --markdown BENCHMARKS.md --charts docs/bench \
    --seconds "$((SECONDS - STARTED))" --runs "$RUNS" --install-seconds "$INSTALL_SECONDS"
  log "wrote BENCHMARKS.md and docs/bench/ from $OUT"
fi
if [[ $PROBLEMS -gt 0 ]]; then
  die "$PROBLEMS run(s) reported problems (lost, duplicated or reordered records, failed connections); see BENCHMARKS.md and $OUT"
fi
