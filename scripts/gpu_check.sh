#!/usr/bin/env bash
# The prepared GPU check (issue 12): every part under its own timeout, results in docs/results/gpu_*.json
# (rewritten after every measurement, so a part stopped by its timeout keeps what it measured).
#
#   scripts/gpu_check.sh                 # on one CUDA GPU: 8 minutes at most (the timeouts add up to 480 s)
#   scripts/gpu_check.sh --dry-run       # on the CPU: lists the parts and runs tiny versions (what CI runs)
#   scripts/gpu_check.sh --out DIR       # results elsewhere
#
# Needs the package with a CUDA build of torch and the test extra (pytest, torchao); bitsandbytes for the
# nf4 rows (skipped, with the reason recorded, without it). Nothing is downloaded: random weights of the
# released architectures and the parity fixtures in ../shared.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=0
out=docs/results
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: $0 [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
export PYTHONUNBUFFERED=1
parts="cuda_tests:70 precision:60 planner:130 offload:95 benchmarks:80 accelerated:45"
if [ "$dry_run" = 1 ]; then
  [ "$out" = docs/results ] && out="$(mktemp -d)"
  echo "gpu_check --dry-run: on a GPU this would run, each under its timeout (seconds):"
  for entry in $parts; do
    echo "  timeout ${entry#*:} python benchmarks/gpu_check.py --part ${entry%%:*} --out docs/results"
  done
  echo "running the tiny versions on the CPU into $out"
  exec timeout 300 python benchmarks/gpu_check.py --part all --dry-run --out "$out"
fi
status=0
for entry in $parts; do
  part="${entry%%:*}"; limit="${entry#*:}"
  echo "== $part (timeout ${limit}s)"
  timeout --kill-after=10 "$limit" python benchmarks/gpu_check.py --part "$part" --out "$out"
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "== $part ended with status $rc (124: timeout; its partial results are in $out/gpu_$part.json)"
    status=1
  fi
done
exit $status
