#!/usr/bin/env bash
# The CUDA paths, measured in one go on a machine with a GPU:
#   1. the device and the software (nvidia-smi, torch, CUDA, cuDNN, bf16 support);
#   2. encode throughput on CUDA: pure forward vs the full pipeline (JPEG decode, preprocess,
#      bf16 forward, Zarr write), 256-px and full-size 2500 x 3000 JPEGs, and the warm re-run;
#   3. a full quick `harness demo` on CUDA into a fresh cache (synth, cohorts, encode, the whole
#      zoo trained and scored, the leaderboard), timed;
#   4. a warm `harness demo` (nothing left to train or score), timed.
# Every figure goes to one file, OUT/gpu_check.txt (default OUT: ./gpu-check).
#
#   bash benchmarks/gpu_check.sh [OUT]          # PYTHON=... to use another interpreter
#
# Exits non-zero when CUDA is not available (nothing would be measured on the GPU).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPORT="$OUT/gpu_check.txt"
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
HARNESS=("$PYTHON" -c "import sys; from harness.cli.main import main; sys.exit(main())")

say() { printf '%s\n' "$*" | tee -a "$REPORT"; }
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

: > "$REPORT"
say "# harness GPU check, $(stamp), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

say "## 1. device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$REPORT"
fi
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$REPORT"
import sys, torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"available {ok}")
if not ok:
    sys.exit("CUDA is not available: nothing to measure on a GPU")
print(f"device {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

say "## 2. encode throughput on CUDA (pure forward vs full pipeline, bf16)"
"$PYTHON" benchmarks/encode_throughput.py --device cuda --n-images 2048 --batch-size 256 \
  2>&1 | tee -a "$REPORT"

say "## 3. cold harness demo on CUDA (fresh cache, quick protocol, every submission)"
export HARNESS_CACHE="$OUT/cache"
rm -rf "$HARNESS_CACHE"
start=$(date +%s%N)
"${HARNESS[@]}" demo > "$OUT/demo_cold.log" 2>&1 || { tail -40 "$OUT/demo_cold.log" | tee -a "$REPORT"; exit 1; }
cold=$(( ($(date +%s%N) - start) / 1000000000 ))
grep -E "trained|failed|images \(|demo finished" "$OUT/demo_cold.log" | tee -a "$REPORT"
say "cold demo wall: ${cold} s"

say "## 4. warm harness demo (nothing to train or score)"
start=$(date +%s%N)
"${HARNESS[@]}" demo > "$OUT/demo_warm.log" 2>&1
warm=$(( ($(date +%s%N) - start) / 1000000 ))
grep -E "trained|demo finished" "$OUT/demo_warm.log" | tail -3 | tee -a "$REPORT"
say "warm demo wall: ${warm} ms"
say "# done $(stamp); logs in $OUT"
