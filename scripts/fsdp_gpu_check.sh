#!/usr/bin/env bash
# FSDP2 on 2 GPUs (NCCL): Atom vs bf16 forward time and all-gather bytes (issue 8).
# Usage, on a machine with 2 GPUs, repo root:
#   bash scripts/fsdp_gpu_check.sh [tests|smoke|bench]...      (default: all three, in order)
# tests: the CPU/gloo FSDP + TP tests (sanity of the install); smoke: bench_fsdp with tiny shapes
# over NCCL (the sharded forward must be bit-identical to the unsharded one on both ranks);
# bench: 4 Llama-2-7B-shaped decoder layers, batch 4 x 2048 tokens per rank.
# Each step's log goes to $OUT/<step>.log and results (bench_fsdp*_<gpu>.{json,md}) to $OUT
# (or benchmarks/results/ when OUT is unset). STEP_TIMEOUT caps each step (seconds).
set -uo pipefail
export ATOM_AO_RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$ATOM_AO_RESULTS"
T="${STEP_TIMEOUT:-600}"
NPROC="${NPROC:-2}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
step() {  # name, command...
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name"
  timeout "$T" "$@" 2>&1 | grep -v -E "Failed to load|register_constant|_pytree.py" > "$ATOM_AO_RESULTS/$name.log"
  echo "--- $name: rc=${PIPESTATUS[0]} $((SECONDS - t0)) s"
  tail -n "${TAIL:-20}" "$ATOM_AO_RESULTS/$name.log"
}
for what in "${@:-tests smoke bench}"; do
  for w in $what; do
    case "$w" in
      tests) step fsdp_tests python3 -m pytest -q -p no:cacheprovider tests/test_fsdp.py tests/test_tensor_parallel.py ;;
      smoke) step fsdp_smoke torchrun --standalone --nproc-per-node "$NPROC" benchmarks/bench_fsdp.py --tiny ;;
      bench) step fsdp_bench torchrun --standalone --nproc-per-node "$NPROC" benchmarks/bench_fsdp.py ;;
      *) echo "unknown step $w" ;;
    esac
  done
done
