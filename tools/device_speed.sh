#!/usr/bin/env bash
# Speed runs on the lent GPU machine (the `device` tool), one mode per call; files land in $OUT.
#
#   tools/device_speed.sh tests [SECONDS]   gemlite installed from .carry/gemlite-0.6.0.post2.tar.gz
#                                           (carry it), then the -m gpu suite, this round's new kernels first
#   tools/device_speed.sh linear [SECONDS]  benchmarks/linear.py on Llama-3.1-8B shapes (MS=1,2,..., MODEL=...)
#   tools/device_speed.sh e2e [SECONDS]     benchmarks/e2e.py on Llama-3.1-8B (MODEL=...), every provider (E2E_ARGS=...;
#                                           six providers need two calls: E2E_ARGS="--providers sharq,bf16,fp8",
#                                           then E2E_ARGS="--merge /root/e2e-last/e2e-h100.json")
#   tools/device_speed.sh verify [SECONDS]  linear.py at M = 4096, 1024, 16, 8 on Llama-3.1-8B (the TMA loop and
#                                           the small-M split against their sweeps' predictions), then
#                                           M = 1, 16, 64, 256, 4096 on Qwen2.5-7B with what time is left
#   tools/device_speed.sh small [SECONDS]   benchmarks/tune_small_m.py at 8 and 16 rows, split-K included (MS=...)
#   tools/device_speed.sh prefill [SECONDS] benchmarks/tune_prefill.py, bf16-sum, the TMA loop variants (MS=..., MODELS=...)
#   tools/device_speed.sh medium [SECONDS]  benchmarks/tune_medium_m.py, split-K included (MS=..., MEDIUM_ARGS=...)
#   tools/device_speed.sh fuse-ab [SECONDS] fused_prep.py at decode rows, then e2e sharq decode b1/b8 with the
#                                           plan's producers (compiled short batches unfused) and SHARQ_FUSE=always
# gemlite lives in /root/site while the machine stays warm (30 s after a call): run `tests` first.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src:/root/site
mode=${1:?tests | linear | e2e}
secs=${2:-300}
T0=$SECONDS
gemlite() {  # once per machine, from the carried sdist
  [ -d /root/site/gemlite ] && return 0
  mkdir -p /root/site && python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /root/site \
    .carry/gemlite-0.6.0.post2.tar.gz 2>&1 | tail -2
}
case "$mode" in
  tests)
    gemlite
    nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
    # SIGINT at the limit: pytest still prints the failures it has seen (a plain timeout loses them)
    timeout -s INT "$secs" python3 -m pytest -p no:cacheprovider -m gpu tests/test_kernels_gemm_tma.py tests/test_kernels_gemm.py tests/test_fused_producers.py \
      tests/test_kernels_argmax.py tests/test_lm_head_kernels.py tests/test_moe_device_routing.py tests \
      -o addopts="" -q --tb=short --durations=8 -rfE --maxfail=15 > "$OUT/gpu-tests.log" 2>&1
    echo "tests rc=$?"; grep -v "^\s*$" "$OUT/gpu-tests.log" | grep -v "^\.\+\s*\[" | tail -40 ;;
  linear)
    gemlite
    timeout "$secs" python3 benchmarks/linear.py --model "${MODEL:-llama-3.1-8b}" --m "${MS:-1,2,8,16,64,256,1024,4096}" \
      --budget-s $((secs * 3 / 4)) --out "$OUT" 2>&1 | tee "$OUT/linear.log" | grep -v "^\s*$" | tail -30 ;;
  verify)
    gemlite
    T1=$SECONDS
    timeout $((secs * 11 / 20)) python3 benchmarks/linear.py --model llama-3.1-8b --m 4096,1024,16,8 \
      --budget-s $((secs * 2 / 5)) --out "$OUT" 2>&1 | tee "$OUT/verify-llama.log" | grep -v "^\s*$" | tail -16
    left=$((secs - (SECONDS - T1) - 10))
    [ $left -gt 60 ] && timeout $left python3 benchmarks/linear.py --model qwen2.5-7b --m 1,16,64,256,4096 \
      --budget-s $((left * 3 / 4)) --out "$OUT" 2>&1 | tee "$OUT/verify-qwen.log" | grep -v "^\s*$" | tail -12 ;;
  small)
    timeout "$secs" python3 benchmarks/tune_small_m.py --m "${MS:-8,16}" --bn 32,64 --bk 256,512 --warps 2,4 --stages 3 \
      --split 1,2,4 --out "$OUT" 2>&1 | tee "$OUT/small.log" | grep -v "^\s*$" | tail -30 ;;
  prefill)
    timeout "$secs" python3 benchmarks/tune_prefill.py --m "${MS:-1024,4096}" --models "${MODELS:-llama-3.1-8b}" \
      --terms 1 --tma 2,3,4,5 --no-prep --out "$OUT" 2>&1 | tee "$OUT/prefill.log" | grep -v "^\s*$" | tail -30 ;;
  medium)
    timeout "$secs" python3 benchmarks/tune_medium_m.py --m "${MS:-32,64,128,256}" --bn 64,128 --bk 128,256 --warps 4 \
      --split 1,2,4 --out "$OUT" ${MEDIUM_ARGS:-} 2>&1 | tee "$OUT/medium.log" | grep -v "^\s*$" | tail -30 ;;
  e2e)  # the JSON is also kept in /root/e2e-last: a second call continues it with E2E_ARGS="--merge FILE ..."
    gemlite
    timeout "$secs" python3 benchmarks/e2e.py --model "${MODEL:-llama-3.1-8b}" --out "$OUT" --budget-s $((secs - 60)) \
      ${E2E_ARGS:-} 2>&1 | tee "$OUT/e2e.log" | grep -v -i warn | tail -45
    mkdir -p /root/e2e-last && cp "$OUT"/*.json /root/e2e-last/ ;;
  fuse-ab)
    timeout $((secs / 3)) python3 benchmarks/fused_prep.py --m 1,8,16 --reps 10 --out "$OUT" 2>&1 | grep -v -i warn | tail -24
    for f in plan always; do
      echo "SHARQ_FUSE=$f"
      SHARQ_FUSE=$([ $f = always ] && echo always || echo 1) timeout $((secs / 3)) python3 benchmarks/e2e.py \
        --providers sharq,bf16 --scenarios decode_b1,decode_b8 --reps 3 --decode-steps 16 --out "$OUT/$f" 2>&1 \
        | grep -E "decode|wrote" | tail -5
    done ;;
  *) echo "usage: $0 tests | linear | verify | small | prefill | medium | e2e | fuse-ab [SECONDS]"; exit 2 ;;
esac
echo "$mode took $((SECONDS - T0)) s"
