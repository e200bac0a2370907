#!/usr/bin/env bash
# The paper's Table 1 at small scale: every (schedule, seed) run trains at the same time as its own
# process (small models leave most of an H100 idle), dealt round-robin over the machine's GPUs (NGPU,
# default: all), then the table is collected.
#   bash benchmarks/gpu/ablation.sh [STEPS] [SEEDS] [EXTRA --set ARGS]   (defaults 2000, "0 1")
# On an H100, 10 concurrent runs at batch 256 went at 1.4 steps/s each (14 steps/s together).
set -uo pipefail
STEPS=${1:-2000}
SEEDS=${2:-"0 1"}
EXTRA=${3:-}
OUT=${OUT:-$PWD/ablation_out}
RUNS=${RUNS:-/tmp/ablation_runs}
mkdir -p "$OUT" "$RUNS"
CFG=configs/ablation_fashion_gpu.yaml
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NGPU=$(( NGPU > 0 ? NGPU : 1 ))
i=0  # run counter: run i goes to GPU i % NGPU
for seed in $SEEDS; do
  for sched in sweep zigzag-1 zigzag-2 zigzag-8 hilbert-8; do
    i=$((i + 1))
    CUDA_VISIBLE_DEVICES=$(( i % NGPU )) zigscan train $CFG --set model.schedule=$sched --set train.seed=$seed --set train.steps=$STEPS $EXTRA \
      --out "$RUNS/${sched}_seed$seed" > "$RUNS/${sched}_seed$seed.log" 2>&1 &
  done
  # DiT at equal parameters (5.50M vs ZigMa's 5.35M): attention + MLP, width 192, 6 heads
  i=$((i + 1))
  CUDA_VISIBLE_DEVICES=$(( i % NGPU )) zigscan train $CFG --set model.preset=dit-S/2 --set model.mixer=attention --set model.schedule=sweep \
    --set model.hidden_size=192 --set 'model.extra.mixer_kwargs={num_heads: 6}' --set train.seed=$seed \
    --set train.steps=$STEPS $EXTRA --out "$RUNS/dit_seed$seed" > "$RUNS/dit_seed$seed.log" 2>&1 &
done
wait
python3 benchmarks/gpu/collect_ablation.py "$RUNS" --out "$OUT"
