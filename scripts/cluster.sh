#!/usr/bin/env bash
# `make cluster [NODES=3]` / `make cluster-down`: a local cluster on real
# parts. Tansu (SQLite storage) as Kafka, NODES herald nodes, HAProxy with
# least connections in front (cluster/haproxy.cfg.template), and a
# Prometheus scraping every node. State and logs live in .cluster/.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

STATE="$HERALD_ROOT/.cluster"
KAFKA_PORT="${KAFKA_PORT:-9092}"
PROXY_PORT="${PROXY_PORT:-8080}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
FIRST_NODE_PORT="${FIRST_NODE_PORT:-8081}"

wait_port() { # host:port what
  local i
  for i in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "$2 did not start listening on $1 (see $STATE/*.log)"
}

start_bg() { # name command...
  local name=$1; shift
  "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

down() {
  local pid_file
  for pid_file in "$STATE"/*.pid; do
    [[ -e "$pid_file" ]] || continue
    kill "$(cat "$pid_file")" 2>/dev/null || true
    rm -f "$pid_file"
  done
  log "cluster stopped"
}

up() {
  local nodes=${1:-3}
  [[ -e "$STATE/proxy.pid" ]] && die "a cluster is already running (make cluster-down first)"
  bash scripts/install-deps.sh build tansu haproxy prometheus
  bash scripts/build.sh
  mkdir -p "$STATE"
  local herald="$HERALD_TARGET_DIR/release/herald"

  (cd "$STATE" && start_bg tansu tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine sqlite://tansu.db)
  wait_port "127.0.0.1:$KAFKA_PORT" tansu
  tansu topic create demo --partitions 12 --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 || true

  local servers="" targets="" i port
  for i in $(seq 1 "$nodes"); do
    port=$((FIRST_NODE_PORT + i - 1))
    start_bg "node$i" "$herald" serve --listen "127.0.0.1:$port" --brokers "127.0.0.1:$KAFKA_PORT" --node-id "node$i"
    servers+="    server n$i 127.0.0.1:$port check"$'\n'
    targets+="\"127.0.0.1:$port\","
  done
  for i in $(seq 1 "$nodes"); do wait_port "127.0.0.1:$((FIRST_NODE_PORT + i - 1))" "node$i"; done

  local rendered="$STATE/haproxy.cfg" template
  template=$(cat cluster/haproxy.cfg.template)
  template=${template//@LISTEN@/127.0.0.1:$PROXY_PORT}
  printf '%s\n' "${template//@SERVERS@/${servers%$'\n'}}" >"$rendered"
  start_bg proxy haproxy -db -f "$rendered"
  wait_port "127.0.0.1:$PROXY_PORT" haproxy

  cat >"$STATE/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: herald
    static_configs:
      - targets: [${targets%,}]
YAML
  start_bg prometheus prometheus --config.file="$STATE/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus-data" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
  wait_port "127.0.0.1:$PROMETHEUS_PORT" prometheus

  cat <<TXT
herald cluster is up ($nodes nodes; state and logs in .cluster/):
  page and API (HAProxy, least connections)  http://127.0.0.1:$PROXY_PORT/
  nodes                                      http://127.0.0.1:$FIRST_NODE_PORT/v1/stats ... (one port each)
  Kafka (Tansu, SQLite)                      127.0.0.1:$KAFKA_PORT   topic: demo (12 partitions)
  Prometheus                                 http://127.0.0.1:$PROMETHEUS_PORT/
Stop it with: make cluster-down
TXT
}

case "${1:-up}" in
  up) up "${2:-3}" ;;
  down) down ;;
  *) die "usage: cluster.sh up [NODES] | down" ;;
esac
