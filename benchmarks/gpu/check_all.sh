#!/usr/bin/env bash
# The GPU work of issues 4 and 7 in ONE call on a fresh GPU machine, spread over its GPUs:
#   OUT=/some/dir bash benchmarks/gpu/check_all.sh [FLA_MIXERS] [MAMBA_ITEMS]
# 1. installs zigscan + flash-linear-attention, and builds mamba-ssm and causal-conv1d (sm_90) in the
#    background;
# 2. deals the fla mixers round-robin to the GPUs: every GPU runs its queue one item at a time, so each
#    timing has a GPU to itself. A cold start is mostly Triton compiling and autotuning, one config at a
#    time, per dtype and per length class: more than 290 s per fla mixer for the full check on an H100/H200
#    (measured; hence the default CHECK_TIMEOUT of 540 s and one mixer per GPU). Several processes on ONE
#    GPU do not help (~7x slower each here);
# 3. the last GPU then takes MAMBA_ITEMS (default "mamba2 mamba bimamba");
# 4. merges everything into $OUT/check_all.json (and $OUT/bench_speed.jsonl) and prints the tables.
# Items: NAME (full check: equivalence, then kernel timings), NAME:time, NAME:check,
#        bench:M1,M2 (bench_speed.py --suite main for those mixers), bench-unfused:M1,M2 (the same without
#        causal-conv1d's fused path), layer:M1,M2 (--suite layer: one block), probe:NAME (probe_kernel.py:
#        each kernel stage in a fresh process, to find which one faults). An item that names a Mamba mixer
#        (mamba*, bimamba, parallel-K) waits for the mamba-ssm and causal-conv1d builds, wherever it is queued.
# Env: OUT (default ./gpu_out), CHECK_TIMEOUT (seconds per check item, default 540), BENCH_TIMEOUT (per
#      bench item, default 300), GPUS (default: all), DEADLINE (seconds after the start by which every
#      item is stopped, so the merge still runs), QUEUES (the GPUs' queues by hand, "|"-separated, items
#      space-separated, e.g. "rwkv7|hgrn2 gla:time bench:gla|rwkv6 bench:rwkv6|retnet mamba2").
set -uo pipefail
FLA=${1:-rwkv6,rwkv7,hgrn2,retnet,deltanet,gla}
MAMBA=${2:-mamba2 mamba bimamba}
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
PARTS="zigscan fla" bash scripts/setup_kernels.sh .src 2>&1 | tail -2 | tee -a "$OUT/check_all.log"
log "build mamba-ssm and causal-conv1d in the background"
for part in mamba conv1d; do
  (PARTS=$part MAX_JOBS=${MAX_JOBS:-$(( $(nproc) / 3 ))} bash scripts/setup_kernels.sh .src > "$TMP/build_$part.log" 2>&1
   mod=$([ $part = mamba ] && echo mamba_ssm || echo causal_conv1d)
   python3 -c "import $mod" && touch "$TMP/build_$part.ok"; touch "$TMP/build_$part.done"
   log "build $part: $(tail -1 "$TMP/build_$part.log") ($([ -e "$TMP/build_$part.ok" ] && echo ok || echo FAILED))") &
done

wait_for() {  # wait_for PART: block until its build ended; false if it failed or DEADLINE passed
  while ! [ -e "$TMP/build_$1.done" ]; do
    (( $(date +%s) > START + ${DEADLINE:-100000} )) && return 1
    sleep 5
  done
  [ -e "$TMP/build_$1.ok" ]
}

run_item() {  # run_item GPU ITEM
  local gpu=$1 item=$2 kind=${2%%:*} what=${2#*:} rc
  if [[ $item =~ mamba|parallel ]]; then
    wait_for mamba || { log "GPU $gpu: $item skipped, mamba-ssm build failed: $(tail -3 "$TMP/build_mamba.log")"; return; }
    # also causal-conv1d: a process that imported mamba-ssm before causal-conv1d was installed would mix paths
    wait_for conv1d || log "GPU $gpu: $item runs without causal-conv1d (build failed)"
  fi
  case $kind in
    probe)
      CUDA_VISIBLE_DEVICES=$gpu timeout "$(left "${CHECK_TIMEOUT:-540}")" python3 benchmarks/gpu/probe_kernel.py \
        --mixer "$what" > "$TMP/probe_$what.log" 2>&1
      log "GPU $gpu: $item exit $?"; sed -n '/kernel probe/,$p' "$TMP/probe_$what.log" | tee -a "$OUT/check_all.log"
      return ;;
    bench|bench-unfused|layer)
      local suite=main flag=""
      [ "$kind" = layer ] && suite=layer
      [ "$kind" = bench-unfused ] && flag=--no-fused-conv
      CUDA_VISIBLE_DEVICES=$gpu timeout "$(left "${BENCH_TIMEOUT:-300}")" python3 benchmarks/gpu/bench_speed.py \
        --suite $suite --mixers "$what" $flag --out "$TMP/bench_${gpu}.jsonl" >> "$TMP/bench_${gpu}.log" 2>&1
      log "GPU $gpu: $item exit $?"
      return ;;
  esac
  local name=${item%%:*} extra=""
  [[ $item == *:time ]] && extra="--skip-check"
  [[ $item == *:check ]] && extra="--skip-time"
  CUDA_VISIBLE_DEVICES=$gpu timeout "$(left "${CHECK_TIMEOUT:-540}")" python3 benchmarks/gpu/check_mixers.py --mixers "$name" \
    $extra --out "$TMP/check_${name}_${gpu}_${item##*:}.json" >> "$TMP/check_$name.log" 2>&1
  rc=$?
  log "GPU $gpu: $item exit $rc ($(grep -hE "includes compilation|FAILED|crashed" "$TMP/check_$name.log" | tail -1 | cut -c1-200))"
}

declare -a queues
if [ -n "${QUEUES:-}" ]; then
  IFS='|' read -ra queues <<< "$QUEUES"
  NGPU=${#queues[@]}
else
  i=0
  for m in ${FLA//,/ }; do queues[$((i % NGPU))]+="$m "; i=$((i + 1)); done
  queues[$((NGPU - 1))]+=" $MAMBA"
fi
for ((g = 0; g < NGPU; g++)); do log "GPU $g queue: ${queues[$g]:-}"; done
pids=()
for ((g = 0; g < NGPU; g++)); do
  ( for item in ${queues[$g]:-}; do run_item "$g" "$item"; done ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

cat "$TMP"/bench_*.jsonl > "$OUT/bench_speed.jsonl" 2>/dev/null || rm -f "$OUT/bench_speed.jsonl"
cat "$TMP"/build_*.log "$TMP"/check_*.log "$TMP"/bench_*.log "$TMP"/probe_*.log 2>/dev/null \
  | grep -vE "UserWarning|warnings.warn|FutureWarning|return fn\(\*args" > "$OUT/check_all_detail.log"
python3 benchmarks/gpu/check_mixers.py --merge "$TMP"/check_*.json --out "$OUT/check_all.json"
if [ -s "$OUT/bench_speed.jsonl" ]; then
  python3 -c "
import json, sys; sys.path.insert(0, 'benchmarks/gpu'); import bench_speed
bench_speed.print_table([json.loads(l) for l in open('$OUT/bench_speed.jsonl') if l.strip()])"
fi
