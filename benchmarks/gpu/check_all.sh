#!/usr/bin/env bash
# The whole mixer check of issue 4 in ONE call on a fresh GPU machine, spread over its GPUs:
#   OUT=/some/dir bash benchmarks/gpu/check_all.sh [FLA_MIXERS] [MAMBA_MIXERS]
# 1. installs zigscan + flash-linear-attention, and builds mamba-ssm (sm_90) in the background;
# 2. deals the fla mixers round-robin to the GPUs: every GPU runs its queue one mixer at a time, a full
#    check (equivalence, then kernel timings), so each timing has a GPU to itself. A cold start is mostly
#    Triton compiling and autotuning, one config at a time, per dtype and per length class: more than
#    290 s per fla mixer for the full check on an H100/H200 (measured; hence the default CHECK_TIMEOUT
#    of 540 s and one mixer per GPU). Several processes on ONE GPU do not help (~7x slower each here);
#    a mixer written as NAME:time is only timed, NAME:check only checked;
# 3. checks the mamba-ssm mixers on the last GPU once the build is done;
# 4. merges everything into $OUT/check_all.json and prints the table.
# Env: OUT (default ./gpu_out), CHECK_TIMEOUT (seconds per mixer, default 540), GPUS (default: all),
#      DEADLINE (seconds after the start by which every item is stopped, so the merge still runs),
#      QUEUES (the GPUs' queues by hand, "|"-separated; items NAME, NAME:time, NAME:check, bench:M1,M2
#      = bench_speed.py --suite main for those mixers, e.g. right after their kernels compiled).
set -uo pipefail
FLA=${1:-rwkv6,rwkv7,hgrn2,retnet,deltanet,gla}
MAMBA=${2:-mamba2,mamba,bimamba}
export PYTHONUNBUFFERED=1 OUT=${OUT:-$PWD/gpu_out}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache} TRITON_CACHE_AUTOTUNING=1
TMP=${CHECK_TMP:-$(mktemp -d)}
mkdir -p "$OUT" "$TRITON_CACHE_DIR" "$TMP"
NGPU=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
START=$(date +%s)
left() {  # seconds this item may take: its own limit, cut to what is left before DEADLINE (merge comes after)
  local rest=$(( START + ${DEADLINE:-100000} - $(date +%s) ))
  (( rest < $1 )) && echo $(( rest > 1 ? rest : 1 )) || echo "$1"
}
log() { echo "[check_all] $(date +%T) $*" | tee -a "$OUT/check_all.log"; }

log "$NGPU GPU(s); install zigscan + fla"
PARTS="zigscan fla" bash benchmarks/gpu/setup_kernels.sh .src 2>&1 | tail -2 | tee -a "$OUT/check_all.log"
log "build mamba-ssm in the background"
(PARTS=mamba MAX_JOBS=${MAX_JOBS:-$(( $(nproc) / 2 ))} bash benchmarks/gpu/setup_kernels.sh .src > "$TMP/build.log" 2>&1
 python3 -c "import mamba_ssm" && touch "$TMP/build.ok") &
build=$!

check_one() {  # GPU MIXER[:time|:check] | GPU bench:MIXER[,MIXER] (bench_speed.py main suite)
  local gpu=$1 name=${2%%:*} extra="" rc
  if [[ $2 == bench:* ]]; then
    CUDA_VISIBLE_DEVICES=$gpu timeout "$(left "${BENCH_TIMEOUT:-200}")" python3 benchmarks/gpu/bench_speed.py --suite main \
      --mixers "${2#bench:}" --out "$TMP/bench_${gpu}.jsonl" > "$TMP/bench_${gpu}.log" 2>&1
    log "GPU $gpu: $2 exit $?"
    return
  fi
  [[ $2 == *:time ]] && extra="--skip-check"
  [[ $2 == *:check ]] && extra="--skip-time"
  CUDA_VISIBLE_DEVICES=$gpu timeout "$(left "${CHECK_TIMEOUT:-540}")" python3 benchmarks/gpu/check_mixers.py --mixers "$name" \
    $extra --out "$TMP/check_$name.json" > "$TMP/check_$name.log" 2>&1
  rc=$?
  log "GPU $gpu: $2 exit $rc ($(grep -hE "includes compilation|FAILED" "$TMP/check_$name.log" | tail -1 | cut -c1-200))"
}

log "fla mixers over $NGPU GPU(s): $FLA"
declare -a queues
if [ -n "${QUEUES:-}" ]; then  # by hand: "rwkv6 bench:rwkv6|rwkv7|..." (one |-separated queue per GPU)
  IFS='|' read -ra queues <<< "$QUEUES"
  NGPU=${#queues[@]}
else
  i=0
  for m in ${FLA//,/ }; do queues[$((i % NGPU))]+="$m "; i=$((i + 1)); done
fi
pids=()
for ((g = 0; g < NGPU; g++)); do
  ( for m in ${queues[$g]:-}; do check_one "$g" "$m"; done
    if [ "$g" = $((NGPU - 1)) ]; then  # the last GPU also takes the mamba-ssm mixers after the build
      wait "$build" 2>/dev/null; while ! [ -e "$TMP/build.ok" ] && kill -0 "$build" 2>/dev/null; do sleep 5; done
      if [ -e "$TMP/build.ok" ]; then for m in ${MAMBA//,/ }; do check_one "$g" "$m"; done
      else log "mamba-ssm build failed: $(tail -3 "$TMP/build.log")"; fi
    fi ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
wait "$build"
tail -2 "$TMP/build.log" | tee -a "$OUT/check_all.log"

cat "$TMP"/bench_*.jsonl > "$OUT/bench_speed.jsonl" 2>/dev/null || rm -f "$OUT/bench_speed.jsonl"
cat "$TMP"/check_*.log "$TMP"/bench_*.log 2>/dev/null | grep -vE "UserWarning|warnings.warn|FutureWarning|return fn\(\*args" > "$OUT/check_all_detail.log"
python3 benchmarks/gpu/check_mixers.py --merge "$TMP"/check_*.json --out "$OUT/check_all.json"
