#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo fuzz) of every decoder of untrusted
# input: Socket.IO frames and event payloads (`socketio`), client tokens (`jwt`), claims an
# identity provider signs (`jwt_claims`), JWK sets (`jwks`), STUN/TURN responses (`stun`),
# custom resources (`crd`), admin PATCH bodies (`admin_patch`). What each target runs, and
# the properties it checks, is in fuzzing/src/lib.rs.
#
#   scripts/fuzz.sh                    # every target, FUZZ_RUNS (10,000,000) executions each
#   scripts/fuzz.sh jwt stun           # some targets
#   FUZZ_RUNS=100000 scripts/fuzz.sh   # a quick pass
#   FUZZ_JOBS=2 scripts/fuzz.sh        # two targets at a time
#
# cargo-fuzz is installed once under ~/.cache/realtime-operator/tools; the stable toolchain
# builds the targets with RUSTC_BOOTSTRAP=1 (sanitizer coverage flags). No AddressSanitizer
# (`-s none`): the crates forbid unsafe code; debug assertions (overflow checks) are on.
#
# The corpus grows in fuzzing/fuzz/corpus/<target>/ and is merged (minimised) at the end;
# commit it. A crash or a hang stops the target and leaves the input in
# fuzzing/fuzz/artifacts/<target>/: copy it to fuzzing/regressions/<target>/ with the fix
# (`cargo test -p realtime-fuzzing` replays corpus and regressions on every test run).
# The summary (executions, rate, corpus size, outcome) goes to target/fuzz/summary.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=${HOME}/.cache/realtime-operator/tools/cargo-fuzz
CARGO_FUZZ_VERSION=0.13.2
RUNS=${FUZZ_RUNS:-10000000}
JOBS=${FUZZ_JOBS:-1}
TARGET_DIR=$ROOT/target/fuzz
ALL=(socketio jwt jwt_claims jwks stun crd admin_patch)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

if [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS" >&2
  cargo install -q cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS"
fi
export PATH=$TOOLS/bin:$PATH RUSTC_BOOTSTRAP=1

cd fuzzing
cargo fuzz build -s none -a --target-dir "$TARGET_DIR"
BIN_DIR=$TARGET_DIR/x86_64-unknown-linux-gnu/release
mkdir -p "$TARGET_DIR/logs"
SUMMARY=$TARGET_DIR/summary.tsv
[ -f "$SUMMARY" ] || printf 'date\ttarget\truns\tseconds\texecs_per_s\tcorpus\tcoverage\toutcome\n' >"$SUMMARY"

run_one() {
  local t=$1 log=$TARGET_DIR/logs/$1.log started ended outcome
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  started=$(date +%s)
  # -timeout: an input taking 10 s is a hang; -rss_limit_mb: 2 GB is a leak or a bomb.
  if "$BIN_DIR/$t" "fuzz/corpus/$t" -runs="$RUNS" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    outcome=ok
  else
    outcome="FAILED (see $log and fuzz/artifacts/$t/)"
  fi
  ended=$(date +%s)
  local secs=$(( ended - started )) execs cov
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  # Keep the corpus small: only inputs that add coverage.
  local merged
  merged=$(mktemp -d)
  "$BIN_DIR/$t" -merge=1 "$merged" "fuzz/corpus/$t" >/dev/null 2>&1 && {
    rm -rf "fuzz/corpus/$t" && mv "$merged" "fuzz/corpus/$t"
  } || rm -rf "$merged"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "${execs:-?}" "$secs" \
    "$(( ${execs:-0} / (secs > 0 ? secs : 1) ))" "$(ls "fuzz/corpus/$t" | wc -l)" "${cov:-?}" "$outcome" >>"$SUMMARY"
  echo "fuzz: $t: ${execs:-?} executions in ${secs}s, corpus $(ls "fuzz/corpus/$t" | wc -l), $outcome" >&2
  [ "$outcome" = ok ]
}

rc=0
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then
    wait "${pids[0]}" || rc=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || rc=1; done
column -t -s $'\t' "$SUMMARY" | tail -n $(( ${#targets[@]} + 1 )) >&2
exit $rc
