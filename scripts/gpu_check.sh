#!/usr/bin/env bash
# One device call: GPU tests, then benchmarks. Usage (on the GPU machine, repo root):
#   bash scripts/gpu_check.sh [tests|quick|linear|attention|all]...
# Logs and result files go to $OUT (or benchmarks/results/ when OUT is unset).
set -uo pipefail
export ATOM_AO_RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$ATOM_AO_RESULTS"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
for what in "${@:-tests}"; do
  case "$what" in
    tests) python3 -m pytest -q -m gpu tests -x 2>&1 | tail -25 ;;
    quick) python3 benchmarks/bench_linear.py --quick 2>&1 | grep -v "Failed to load" ;;
    linear) python3 benchmarks/bench_linear.py 2>&1 | grep -v "Failed to load" ;;
    attention) python3 benchmarks/bench_attention.py 2>&1 | grep -v "Failed to load" ;;
    *) echo "unknown step $what" ;;
  esac
done
