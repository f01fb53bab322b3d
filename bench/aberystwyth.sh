#!/usr/bin/env bash
# The two Aberystwyth splits of issue 21 (README "Real imagery and sparse labels"), for bench/recipe.py
# --data: bench/out/aber/full (the scene's land cover everywhere) and bench/out/aber/sparse (the same
# places; train and val masks from landcover_sparse_10m.tif, tiles left without a label dropped; the
# test tiles keep their full labels, so both are scored on the same truth). 128 px tiles, 43/12/7
# places (40/12/7 sparse). Reads ../shared/data/aberystwyth/; writes only under bench/out/aber/.
# Usage: bash bench/aberystwyth.sh [DATA_DIR], then e.g.
#   .venv/bin/python bench/recipe.py --data bench/out/aber/sparse --root bench/out/aber/runs-sparse \
#       --seeds 0 1 2 --recipes default --epochs 150 --batch-size 12
set -euo pipefail
[ $# -le 1 ] || { echo "bench/aberystwyth.sh: one argument at most, the data folder" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
src=$(realpath -m -- "${1:-$repo/../shared/data/aberystwyth}")  # relative to the caller's folder
cd "$repo"
out=bench/out/aber
py=.venv/bin/python
for f in s2_20210527_aberystwyth.tif landcover_10m.tif landcover_sparse_10m.tif; do
    [ -f "$src/$f" ] || { echo "bench/aberystwyth.sh: $src/$f not found" >&2; exit 2; }
done
mkdir -p "$out"
tile() {  # tile LABELS MASK: the scene and one of its masks into 128 px tiles (resumable)
    $py divide_img.py --images "$src/s2_20210527_aberystwyth.tif" --mask "$2" \
        --out "$out/tiles-$1" --size 128 --max-nodata 0.99
}
if [ ! -f "$out/full/.done" ]; then  # move_images.py resumes its own plan after a crash
    tile full "$src/landcover_10m.tif"
    $py move_images.py --tiles "$out/tiles-full" --out "$out/full" --seed 0
    touch "$out/full/.done"
fi
tile sparse "$src/landcover_sparse_10m.tif"
if [ ! -d "$out/sparse/test" ]; then  # built aside, renamed when whole: a rerun after a crash redoes it
    rm -rf "$out/sparse.tmp" && mkdir -p "$out/sparse.tmp"
    for split in train val; do
        mkdir -p "$out/sparse.tmp/$split/img" "$out/sparse.tmp/$split/mask"
        for img in "$out/full/$split/img/"*.tif; do
            name=$(basename "$img")
            if [ -f "$out/tiles-sparse/mask128/$name" ]; then
                cp "$img" "$out/sparse.tmp/$split/img/"
                cp "$out/tiles-sparse/mask128/$name" "$out/sparse.tmp/$split/mask/"
            fi
        done
    done
    cp -r "$out/full/test" "$out/sparse.tmp/test"
    rm -rf "$out/sparse" && mv "$out/sparse.tmp" "$out/sparse"
fi
for labels in full sparse; do
    echo "$out/$labels: $(ls "$out/$labels/train/img" | wc -l) train, $(ls "$out/$labels/val/img" | wc -l) val," \
        "$(ls "$out/$labels/test/img" | wc -l) test tiles"
done
