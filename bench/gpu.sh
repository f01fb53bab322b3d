#!/usr/bin/env bash
# The GPU figures of the README's Performance section in one run, each part under its own time limit
# so that one failing costs only its own figures: train (bench/train_speed.py: the step at each setting,
# the data paths, train.py end to end with --compile; up to 9 minutes), predict (bench/predict.py on a
# 6000 x 6000 scene; up to 2) and architectures (bench/architectures.py: the four models' train and
# inference tiles/s at 300 x 300; up to 2). None of it was run on a GPU yet: the times are limits,
# not measurements. Where one call may run 10 minutes, make two: `train`, then the others. Logs go to
# $OUT (the device tool's folder) or bench/out/gpu. Wheels in .whl/ (rasterio and its needs, where the
# machine's python lacks them) are installed first.
#
#   bench/gpu.sh train
#   bench/gpu.sh predict architectures
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$out/gpu.txt"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(train predict architectures)
status=0
for part in "${parts[@]}"; do
  case $part in
    # the last of --amp-batches is also timed compiled: 48, the end-to-end run's batch; 3840 train and
    # 960 val tiles: whole batches of 48, so the compiled graphs compile once
    train) cmd=(timeout 540 $py bench/train_speed.py --no-cpu-step --batch-size 48 --amp-batches 128 48
                --tiles 400 --passes 2 --compress zstd --e2e-batch 48 --e2e-tiles 3840 --e2e-compile) ;;
    predict) cmd=(timeout 120 $py bench/predict.py --encoder resnet50 --sizes 6000 --device cuda) ;;
    architectures) cmd=(timeout 120 $py bench/architectures.py --speed-only --device cuda --size 300
                        --bands 10 --batch-size 48 --steps 20 --root /tmp/architectures) ;;
    *) echo "unknown part: $part (train, predict, architectures)" >&2; exit 2 ;;
  esac
  echo "== $part: ${cmd[*]}"
  if ! "${cmd[@]}" 2>&1 | tee "$out/$part.txt"; then
    status=1
    echo "== $part failed"
  fi
done
exit $status
