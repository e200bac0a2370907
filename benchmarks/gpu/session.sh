#!/usr/bin/env bash
# One GPU session in one call: install kernels, restore the Triton cache, run the given stages, save the
# cache back in parts small enough to travel (< 16 MB each).
#   bash benchmarks/gpu/session.sh "python3 benchmarks/gpu/check_mixers.py --mixers mamba" [more stages...]
# Env: OUT (result folder, default ./gpu_out), CACHE (cache parts folder, default .cache)
# A cold start compiles and autotunes fla's Triton kernels one configuration at a time (~70-80 s per
# op for forward+backward on an H100); with the cache restored the same run starts in seconds.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-$PWD/gpu_out} CACHE=${CACHE:-.cache}
export TRITON_CACHE_DIR=/tmp/triton_cache TRITON_CACHE_AUTOTUNING=1
mkdir -p "$OUT" "$TRITON_CACHE_DIR"
if ls "$CACHE"/triton.tgz.part* >/dev/null 2>&1; then
  cat "$CACHE"/triton.tgz.part* | tar xzf - -C "$TRITON_CACHE_DIR" && echo "[session] Triton cache restored"
fi
bash benchmarks/gpu/setup_kernels.sh .src 2>&1 | tail -3 | tee -a "$OUT/session.log"
for stage in "$@"; do
  echo "[session] $(date +%T) $stage"
  bash -c "$stage" 2>&1 | grep --line-buffered -vE "UserWarning|warnings.warn|FutureWarning|return fn\(\*args" | tee -a "$OUT/session.log"
done
[ "${SAVE_CACHE:-1}" = 1 ] && tar czf - -C "$TRITON_CACHE_DIR" . | split -b 15M - "$OUT/triton.tgz.part"
ls -la "$OUT"
