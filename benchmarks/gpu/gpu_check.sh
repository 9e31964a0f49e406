#!/usr/bin/env bash
# The prepared GPU check of protossl (issue 13, item 7): one command, under 9 minutes on one
# lent GPU (H100 or H200). It runs
#   1. the CUDA tests (the tests whose name says cuda; on a CPU machine they skip),
#   2. a throughput measurement: the same DINO training step (resnet18, 32 px CIFAR-10,
#      2 x 32 px + 4 x 16 px crops, batch 256, K 1,024) in fp32 and in bf16 autocast,
#   3. CIFAR-10 DINO against DINO + KoLeo-proto, the same seed, model and steps,
# and writes the table to docs/gpu.md (and a copy to $OUT when that is set).
#
# Prepare here (CPU machine), once (.gpu_data/ is git-ignored): the device machine never sees ../shared and takes at most
# 64 MiB of working tree, so a class-balanced CIFAR-10 subset travels instead:
#     python benchmarks/gpu/pack_cifar_subset.py --per-class 2000 --out .gpu_data/cifar10
# Then on the device (the run tool; carry [".gpu_data"]):
#     bash benchmarks/gpu/gpu_check.sh
# The device image's python3 has torch, timm and the rest; protossl runs from the checkout.
# A dry run on a CPU (tiny data and steps; writes to a scratch doc):
#     python benchmarks/gpu/pack_cifar_subset.py --per-class 30 --test-per-class 10 --out /tmp/c10
#     GPU_CHECK_DATA=/tmp/c10 GPU_CHECK_DEVICE=cpu GPU_CHECK_EPOCHS=2 GPU_CHECK_SPEED_STEPS=1 \
#     GPU_CHECK_BATCH=64 GPU_CHECK_WORKERS=0 GPU_CHECK_DOC=/tmp/gpu.md bash benchmarks/gpu/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DATA=${GPU_CHECK_DATA:-.gpu_data/cifar10}
DOC=${GPU_CHECK_DOC:-docs/gpu.md}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
EPOCHS=${GPU_CHECK_EPOCHS:-30}
MAX_STEPS=${GPU_CHECK_MAX_STEPS:-0}
SPEED_STEPS=${GPU_CHECK_SPEED_STEPS:-40}
BATCH=${GPU_CHECK_BATCH:-256}
WORKERS=${GPU_CHECK_WORKERS:-6}
WORK=${GPU_CHECK_WORK:-/tmp/protossl_gpu_check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$WORK"; mkdir -p "$WORK"
[ -d "$DATA/train" ] || { echo "error: no $DATA/train (run benchmarks/gpu/pack_cifar_subset.py first)"; exit 2; }
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true) | tee "$WORK/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$WORK/gpu.txt"

echo "== 1. CUDA tests"
set +e
$PY -m pytest -q -p no:cacheprovider tests/diagnostics/test_diagnostics.py tests/engine/test_runtime.py -k cuda -rs 2>&1 | tail -15 | tee "$WORK/tests.txt"
set -e

# The shared recipe: resnet18 at 32 px, DINO head with BatchNorm (docs/recipe.md), K 1,024.
COMMON=(--data "folder:$DATA" --set runtime.device="$DEVICE" --set model.backbone=resnet18
  --set model.num_prototypes=1024 --set model.use_bn_in_head=true --set data.image_size=32
  --set data.local_size=16 --set data.batch_size="$BATCH" --set data.augmentation=batched
  --set data.num_workers="$WORKERS" --set optim.lr=1e-3 --set seed=0)

echo "== 2. throughput, fp32 against bf16 ($SPEED_STEPS steps each, monitor off)"
for precision in fp32 bf16; do
  $PY -m protossl train --preset dino --out "$WORK/speed_$precision" --epochs 1 \
    --max-steps "$SPEED_STEPS" "${COMMON[@]}" --set runtime.precision=$precision \
    --set monitor.eval_knn=false 2> "$WORK/speed_$precision.log" >/dev/null
done

echo "== 3. CIFAR-10: dino and dino-kp, $EPOCHS epochs, bf16, in parallel on one GPU"
steps=()
[ "$MAX_STEPS" -gt 0 ] && steps=(--max-steps "$MAX_STEPS")
for preset in dino dino-kp; do
  $PY -m protossl train --preset $preset --out "$WORK/$preset" --epochs "$EPOCHS" "${steps[@]}" \
    "${COMMON[@]}" --set runtime.precision=bf16 2> "$WORK/$preset.log" >/dev/null &
done
wait

$PY benchmarks/gpu/gpu_table.py "$WORK" --out "$DOC"
if [ -n "${OUT:-}" ]; then cp "$DOC" "$OUT/"; cp "$WORK"/*.log "$OUT/" 2>/dev/null || true; fi
