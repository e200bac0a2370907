#!/usr/bin/env bash
# The whole mixer check of issue 4 in ONE call on a fresh GPU machine (about 8-10 minutes cold):
#   OUT=/some/dir bash benchmarks/gpu/check_all.sh [FLA_MIXERS] [MAMBA_MIXERS]
# 1. installs zigscan + flash-linear-attention, and builds mamba-ssm (sm_90) in the background;
# 2. checks every fla mixer against its reference, one process per mixer AT THE SAME TIME: a cold start
#    is dominated by Triton compiling and autotuning on the CPU, one config at a time, so the 16 cores
#    of the machine do the mixers side by side; each also runs the timing shapes once, which compiles
#    them, but its timings are thrown away (they ran next to the others);
# 3. checks the mamba-ssm mixers once the build is done;
# 4. times every kernel ONE AT A TIME with the now warm Triton cache (the timings that are reported);
# 5. merges everything into $OUT/check_all.json and prints the table.
# Env: OUT (default ./gpu_out), CHECK_TIMEOUT (seconds per parallel check, default 330).
set -uo pipefail
FLA=${1:-rwkv6,rwkv7,hgrn2,simple-gla,retnet,deltanet,gla}
MAMBA=${2:-mamba2,mamba,bimamba}
export PYTHONUNBUFFERED=1 OUT=${OUT:-$PWD/gpu_out}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache} TRITON_CACHE_AUTOTUNING=1
TMP=$(mktemp -d)
mkdir -p "$OUT" "$TRITON_CACHE_DIR"
log() { echo "[check_all] $(date +%T) $*" | tee -a "$OUT/check_all.log"; }
filter() { grep --line-buffered -vE "UserWarning|warnings.warn|FutureWarning|return fn\(\*args"; }

log "install zigscan + fla"
PARTS="zigscan fla" bash benchmarks/gpu/setup_kernels.sh .src 2>&1 | tail -2 | tee -a "$OUT/check_all.log"
log "build mamba-ssm in the background"
(PARTS=mamba MAX_JOBS=${MAX_JOBS:-8} bash benchmarks/gpu/setup_kernels.sh .src > "$TMP/build.log" 2>&1; echo "exit $?" >> "$TMP/build.log") &
build=$!

log "parallel equivalence checks: $FLA"
pids=()
for m in ${FLA//,/ }; do
  timeout "${CHECK_TIMEOUT:-330}" python3 benchmarks/gpu/check_mixers.py --mixers "$m" --reps 1 \
    --out "$TMP/check_$m.json" > "$TMP/check_$m.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for m in ${FLA//,/ }; do
  grep -E "includes compilation|FAILED|Error|error" "$TMP/check_$m.log" | tail -3 | sed "s/^/  /" | tee -a "$OUT/check_all.log"
done
log "waiting for the mamba-ssm build"
wait "$build"
tail -3 "$TMP/build.log" | tee -a "$OUT/check_all.log"
log "mamba-ssm equivalence checks: $MAMBA"
timeout "${MAMBA_TIMEOUT:-150}" python3 benchmarks/gpu/check_mixers.py --mixers "$MAMBA" --reps 1 --out "$TMP/check_mamba.json" 2>&1 \
  | filter | grep -E "includes compilation|FAILED|^\{" | tee -a "$OUT/check_all.log"

log "kernel timings, one mixer at a time"
timeout "${TIME_TIMEOUT:-240}" python3 benchmarks/gpu/check_mixers.py --mixers "$MAMBA,$FLA" --skip-check \
  --out "$TMP/timings.json" 2>&1 | filter | grep -E "includes compilation|FAILED|^\{" | tee -a "$OUT/check_all.log"

cat "$TMP"/check_*.log > "$OUT/check_all_detail.log"
python3 - "$TMP" "$OUT/check_all.json" <<'PYEOF'
import glob, json, math, sys
tmp, out = sys.argv[1:]
checks, timings, device = [], [], None
for f in sorted(glob.glob(f"{tmp}/check_*.json")) + [f"{tmp}/timings.json"]:
    try:
        d = json.load(open(f))
    except (OSError, ValueError):
        continue
    device = d.get("device", device)
    checks += d["checks"]
    if f.endswith("timings.json"):  # the parallel phase's timings ran side by side: not reported
        timings += d["timings"]
json.dump({"device": device, "checks": checks, "timings": timings}, open(out, "w"), indent=1)
cols = ["fp32_out", "fp32_dx", "fp32_dparam", "bf16_out", "bf16_dx", "bf16_dparam", "upstream_out"]
print(f"\nEquivalence on {device} (relative error; fp32 < 1e-3, bf16 < 1e-2; nan fp32 = bf16-only kernel)")
print(f"{'mixer':14s} {'L':>5s} " + " ".join(f"{c:>12s}" for c in cols) + "  ok")
for r in checks:
    if "error" in r:
        print(f"{r['mixer']:14s} ERROR {r['error']}")
        continue
    print(f"{r['mixer']:14s} {r['L']:5d} " + " ".join(f"{r.get(c, math.nan):12.2e}" for c in cols)
          + f"  {'yes' if r['ok'] else 'NO'}")
print("\nKernel forward+backward, bf16, B=2, D=768 (median ms / peak GiB)")
for r in timings:
    print(f"{r['mixer']:14s} L={r['L']:6d} {r['ms']:9.2f} ms {r['peak_GiB']:7.2f} GiB")
PYEOF
