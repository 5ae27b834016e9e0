#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target in fuzz/ (or the ones named) for
# FUZZ_SECONDS each (default 600), one after another, then lists what they
# found. Not part of CI: ten minutes a target is too long for it.
#
# Usage: scripts/fuzz.sh [TARGET]...
#   FUZZ_SECONDS=600     time per target
#   FUZZ_SANITIZER=address   address (cargo-fuzz's default) or none (faster:
#                        the fuzzed code is safe Rust; a separate build)
#
# Each target keeps its growing corpus in fuzz/corpus/<target>/ (only the
# seed-* files are committed), crashes in fuzz/artifacts/<target>/, and its
# libFuzzer output in fuzz/logs/<target>.log. Exits 1 if any target found
# something; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>   (in fuzz/)
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer, sancov). Only stable
# Rust is installed here, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them;
# on a nightly toolchain it changes nothing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FUZZ_SECONDS="${FUZZ_SECONDS:-600}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-address}"
FUZZ_DIR="$HERALD_ROOT/fuzz"
[[ "$FUZZ_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a positive number of seconds, not '$FUZZ_SECONDS'"

need_cargo
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install, about 2 minutes)"
  mkdir -p "$HERALD_TOOLS/logs"
  cargo install cargo-fuzz --locked >"$HERALD_TOOLS/logs/cargo-fuzz.log" 2>&1 \
    || { tail -n 40 "$HERALD_TOOLS/logs/cargo-fuzz.log" >&2; die "cargo install cargo-fuzz failed (log: $HERALD_TOOLS/logs/cargo-fuzz.log)"; }
fi
export RUSTC_BOOTSTRAP=1

cd "$FUZZ_DIR"
# Build against the dependency versions the node itself is locked to; cargo
# only adds the fuzzing crates (libfuzzer-sys, arbitrary) to this copy.
if [[ ! -f Cargo.lock || "$HERALD_ROOT/Cargo.lock" -nt Cargo.lock ]]; then
  cp "$HERALD_ROOT/Cargo.lock" Cargo.lock
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list)
fi
[[ ${#targets[@]} -gt 0 ]] || die "no fuzz targets found in $FUZZ_DIR"

# One build for all targets (the first includes librdkafka: several minutes).
log "building ${#targets[@]} fuzz targets (sanitizer: $FUZZ_SANITIZER)"
cargo fuzz build --sanitizer "$FUZZ_SANITIZER"

mkdir -p logs
summary=()
found=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  args=(-max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1)
  [[ -f "dict/$target.dict" ]] && args+=(-dict="dict/$target.dict")
  before="$(find "artifacts/$target" -type f | sort)"
  logfile="logs/$target.log"
  log "fuzzing $target for ${FUZZ_SECONDS}s (output: fuzz/$logfile)"
  status=0
  cargo fuzz run --sanitizer "$FUZZ_SANITIZER" "$target" -- "${args[@]}" >"$logfile" 2>&1 || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile" | tail -n 1)"
  new="$(comm -13 <(printf '%s\n' "$before") <(find "artifacts/$target" -type f | sort) | sed '/^$/d')"
  if [[ $status -eq 0 && -z "$new" ]]; then
    summary+=("$target: ${runs:-?} executions, nothing found")
    continue
  fi
  found=1
  summary+=("$target: ${runs:-?} executions, FOUND SOMETHING (exit $status)")
  printf '\n==== %s: exit %s, last lines of fuzz/%s ====\n' "$target" "$status" "$logfile" >&2
  # The panic message (or sanitizer report) and libFuzzer's verdict.
  report="$(grep -E -A6 "panicked at|ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)|SUMMARY:" "$logfile" || true)"
  if [[ -n "$report" ]]; then head -n 40 <<<"$report" >&2; else tail -n 40 "$logfile" >&2; fi
  while IFS= read -r artifact; do
    [[ -n "$artifact" ]] || continue
    printf -- '---- fuzz/%s (input as bytes):\n' "$artifact" >&2
    od -A d -c "$artifact" | head -n 20 >&2
    printf 'reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run %s %s)\n' "$target" "$artifact" >&2
  done <<<"$new"
done

printf '\n'
log "summary (${FUZZ_SECONDS}s per target):"
printf '  %s\n' "${summary[@]}"
exit "$found"
