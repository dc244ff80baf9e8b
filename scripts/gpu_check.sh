#!/usr/bin/env bash
# The GPU checks of README "GPU" in one call on a GPU machine (PyTorch with CUDA; DGL not needed):
# the `gpu` tests, ranker training throughput at batch 2,048 and 8,192, and make run's job on CUDA.
# Usage: bash scripts/gpu_check.sh [OUTDIR]   (default: $OUT when set, else runs/gpu)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${1:-${OUT:-runs/gpu}}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -rs 2>&1 | tee "$out/pytest_gpu.log" | tail -15
timeout 300 python3 -m graphrec.bench train --device cuda --batch-size 2048 8192 --out "$out/train_cuda.json" \
    > "$out/train_cuda.log" 2>&1; grep -v "^\s*$" "$out/train_cuda.log" | tail -34
timeout 300 python3 -m graphrec.run --cfg yaml/live.yaml --set run.device=cuda --set run.progress=false \
    --set run.out_dir=/tmp/gpu_check_runs > "$out/live_cuda.log" 2>&1
grep -E "ranker epoch|test mmbee +gift|done in" "$out/live_cuda.log" | tail -14
