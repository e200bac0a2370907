#!/usr/bin/env bash
# The GPU work of issues 12 and 16 on one H200, as two or three back-to-back device calls of <= 10 minutes:
#   bash benchmarks/gpu/h200_call.sh build   # installs fla; builds mamba-ssm and causal-conv1d (sm_90) side by
#                                            # side and starts the rwkv7 then retnet equivalence checks, all
#                                            # detached (setsid: they outlive this call while the machine is
#                                            # warm); waits for the builds; runs the GPU tests (pytest -m gpu)
#   bash benchmarks/gpu/h200_call.sh bench "ARGS"   # bench_speed.py ARGS, then collects the checks so far
# Env: SRC (kernel sources and wheels, default ../.src), OUT (results), WORK (state kept between calls,
# default /tmp/zigscan_gpu), ZIGSCAN_COMMIT (recorded in every row).
set -uo pipefail
SRC=${SRC:-../.src} OUT=${OUT:-$PWD/gpu_out} WORK=${WORK:-/tmp/zigscan_gpu}
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$WORK/triton TRITON_CACHE_AUTOTUNING=1
mkdir -p "$OUT" "$WORK" "$TRITON_CACHE_DIR"
log() { echo "[h200_call] $(date +%T) $*" | tee -a "$OUT/call.log"; }
collect() {  # copy what the detached jobs wrote so far
  for f in "$WORK"/check_*.json "$WORK"/check_*.log "$WORK"/build_*.log; do [ -e "$f" ] && cp "$f" "$OUT/"; done
  ls "$WORK"/check_*.json >/dev/null 2>&1 && python3 benchmarks/gpu/check_mixers.py --merge "$WORK"/check_*.json \
    --out "$OUT/check_mixers.json" 2>&1 | tail -20 | tee -a "$OUT/call.log"
}
case ${1:-build} in
  build)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv | tee -a "$OUT/call.log"
    PARTS="fla" bash scripts/setup_kernels.sh "$SRC" 2>&1 | tail -1 | tee -a "$OUT/call.log"
    for part in mamba conv1d; do
      setsid bash -c "PARTS=$part MAX_JOBS=8 bash scripts/setup_kernels.sh $SRC > $WORK/build_$part.log 2>&1; touch $WORK/build_$part.done" \
        < /dev/null > /dev/null 2>&1 &
    done
    # fla's cold Triton compile + autotune is minutes per mixer: start it first, one mixer per process (a fault
    # in one must not take the other's CUDA context). Detached jobs hold no pipe of this call (else the call waits
    # for them) and run a copy of the script (the next call replaces the working tree; seen: retnet's check lost
    # its file that way). They share the GPU and CPUs with whatever runs next: time nothing meanwhile that counts.
    mkdir -p "$WORK/repo" && cp benchmarks/gpu/check_mixers.py "$WORK/repo/"
    setsid bash -c "for m in rwkv7 retnet; do s=\$(date +%s); python3 $WORK/repo/check_mixers.py --mixers \$m \
      --out $WORK/check_\$m.json > $WORK/check_\$m.log 2>&1; echo \"\$m: exit \$? after \$(( \$(date +%s) - s )) s (cold compile included)\" >> $WORK/check_\$m.log; done" \
      < /dev/null > /dev/null 2>&1 &
    for part in mamba conv1d; do
      while ! [ -e "$WORK/build_$part.done" ]; do sleep 5; done
      log "build $part: $(tail -2 "$WORK/build_$part.log" | tr '\n' ' ')"
    done
    python3 -m pytest -m gpu tests/backbones/test_mamba_gpu.py -q -p no:cacheprovider -x 2>&1 | tail -25 | tee -a "$OUT/call.log"
    python3 -m pytest tests/backbones/test_mamba_ops.py tests/backbones/test_dispatch.py -q -p no:cacheprovider 2>&1 | tail -3 | tee -a "$OUT/call.log"
    collect ;;
  bench)
    python3 benchmarks/gpu/bench_speed.py $2 --out "$OUT/bench_speed.jsonl" 2>&1 \
      | grep --line-buffered -vE "UserWarning|warnings.warn|FutureWarning" | tee -a "$OUT/bench.log"
    collect ;;
esac
