#!/usr/bin/env bash
# One GPU session, prepared on the CPU (no GPU in CI): ~9 minutes on an H200.
#   bash benchmarks/gpu_session.sh OUTDIR
# 1. the kernels against TORCH and the step timed at batch 1/4/16 on three head shapes
#    (benchmarks/kernels_gpu.py: correctness table, then the timing table);
# 2. verified decoding's check: the dense head over K positions in one product against one
#    (benchmarks/gpu_check.py; checked on the CPU by tests/test_bench.py with --tiny);
# 3. the model-level decode and the build's fit on a random-weight Llama-3.2-1B-shaped model
#    (benchmarks/gpu_model.py; likewise checked with --tiny).
# Logs and JSON go to OUTDIR; each part has its own time limit so one failure leaves the other.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
timeout 240 python benchmarks/kernels_gpu.py > "$out/kernels-gpu.log" 2>&1; echo "kernels_gpu: exit $?" | tee -a "$out/status.txt"
timeout 60 python benchmarks/gpu_check.py --json "$out/gpu-check.json" > "$out/gpu-check.log" 2>&1; echo "gpu_check: exit $?" | tee -a "$out/status.txt"
timeout 290 python benchmarks/gpu_model.py --json "$out/gpu-model.json" > "$out/gpu-model.log" 2>&1; echo "gpu_model: exit $?" | tee -a "$out/status.txt"
