#!/usr/bin/env bash
# Issue 6's multi-GPU run and issue 7's ablation seeds in ONE call on a machine with >= 2 GPUs:
#   OUT=/some/dir ZIGSCAN_FASHION_MNIST=$PWD/.data/fashion-mnist bash benchmarks/gpu/multi_gpu_session.sh [SEEDS]
# 1. installs zigscan and builds mamba-ssm (sm_90) in the background;
# 2. meanwhile trains configs/fashion_zigma_gpu.yaml for DDP_STEPS steps under
#    `torchrun --nproc_per_node=<all GPUs>` (NCCL) with benchmarks/gpu/ddp_check.py, which checks that
#    every rank ends with bit-identical weights (mixer attention-causal: it needs no build);
# 3. once mamba-ssm is built, runs the ablation (benchmarks/gpu/ablation.sh) for SEEDS (default "1") at
#    the settings of the first seed's run, its runs dealt over the GPUs.
set -uo pipefail
SEEDS=${1:-1}
export PYTHONUNBUFFERED=1 OUT=${OUT:-$PWD/gpu_out} NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"
NGPU=$(nvidia-smi -L | wc -l)
log() { echo "[session] $(date +%T) $*" | tee -a "$OUT/session.log"; }

log "$NGPU GPUs; install zigscan, build mamba-ssm in the background"
PARTS=zigscan bash benchmarks/gpu/setup_kernels.sh .src 2>&1 | tail -1 | tee -a "$OUT/session.log"
(PARTS=mamba MAX_JOBS=$(( $(nproc) / 2 )) bash benchmarks/gpu/setup_kernels.sh .src > /tmp/build.log 2>&1) &
build=$!

log "DDP: torchrun --nproc_per_node=$NGPU (NCCL), ${DDP_STEPS:-300} steps"
timeout "${DDP_TIMEOUT:-180}" torchrun --nproc_per_node="$NGPU" benchmarks/gpu/ddp_check.py configs/fashion_zigma_gpu.yaml \
  --set model.mixer=attention-causal --set train.steps="${DDP_STEPS:-300}" --set train.log_every=50 \
  --set optim.warmup_steps=50 --set train.sample_every=0 --set train.ckpt_every=0 --set eval.at_end=false \
  --out /tmp/ddp_run 2>&1 | grep -vE "UserWarning|warnings.warn" | tee "$OUT/ddp.log" | grep -E "ddp_check|Error|error|distributed"
cp /tmp/ddp_run/metrics.csv "$OUT/ddp_metrics.csv" 2>/dev/null

log "waiting for the mamba-ssm build"
wait "$build"
tail -2 /tmp/build.log | tee -a "$OUT/session.log"
log "ablation, seeds: $SEEDS"
RUNS=/tmp/ablation_runs timeout "${ABL_TIMEOUT:-330}" bash benchmarks/gpu/ablation.sh "${ABL_STEPS:-400}" "$SEEDS" \
  '--set train.batch_size=128 --set eval.n=1000 --set optim.warmup_steps=50 --set optim.lr=1e-3'
[ -e "$OUT/ablation.json" ] || python3 benchmarks/gpu/collect_ablation.py /tmp/ablation_runs --out "$OUT"  # cut short
tail -n 3 /tmp/ablation_runs/*.log > "$OUT/ablation_runs_tail.log" 2>/dev/null
log "done"
