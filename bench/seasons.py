"""April only, August only, or both stacked: the same U-Net, epochs and seed, scored on one test split.

Runs the pipeline's own scripts (as a user would) on the demo data: tiles of each mode, the same
spatial split for all three (checked: every place is in the same split in every mode), training and
test_model; then prints test mIoU and per-class IoU side by side. Writes only under --root
(default bench/out/seasons, git-ignored). Usage:

    python bench/seasons.py [--epochs 10] [--encoder resnet18] [--tile 150] [--device auto]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from colormap import CODES, name  # noqa: E402

MODES = {"april": ["s2_april.tif"], "august": ["s2_august.tif"], "stacked": ["s2_april.tif", "s2_august.tif"]}


def run(*args) -> None:
    cmd = [sys.executable, *map(str, args)]
    print("$ python", " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def places(split_csv: Path) -> dict[str, str]:
    """place -> split of a move_images plan."""
    with open(split_csv) as f:
        return {row["place"]: row["split"] for row in csv.DictReader(f)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT / "bench/out/seasons")
    p.add_argument("--size", type=int, default=3000)
    p.add_argument("--tile", type=int, default=150)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    raw = args.root / "raw"
    run("make_demo_data.py", "--out", raw, "--size", args.size, "--seed", args.seed)
    run(
        "rescale_mask.py",
        "--mask",
        raw / "landcover_1m.tif",
        "--like",
        raw / "s2_april.tif",
        "--out",
        args.root / "mask_10m.tif",
        "--method",
        "weighted",
    )
    results, seconds = {}, {}
    for mode, scenes in MODES.items():
        d = args.root / mode
        stack = ["--stack"] if len(scenes) > 1 else []
        run(
            "divide_img.py",
            "--images",
            *[raw / s for s in scenes],
            "--mask",
            args.root / "mask_10m.tif",
            "--out",
            d / "tiles",
            "--size",
            args.tile,
            *stack,
        )
        run("move_images.py", "--tiles", d / "tiles", "--out", d, "--seed", args.seed)
        run("create_new_images.py", "--train", d / "train")
    split = {m: places(args.root / m / "split.csv") for m in MODES}
    assert split["april"] == split["august"] == split["stacked"], "the three modes got different splits"
    for mode in MODES:
        d, run_dir = args.root / mode, args.root / "runs" / mode
        t0 = time.perf_counter()
        run(
            "train.py",
            "--data",
            d,
            "--out",
            run_dir,
            "--encoder",
            args.encoder,
            "--epochs",
            args.epochs,
            "--batch-size",
            args.batch_size,
            "--seed",
            args.seed,
            "--class-weights",
            "sqrt",
            "--workers",
            args.workers,
            "--device",
            args.device,
            *(["--resume"] if (run_dir / "last.pt").exists() else []),
        )
        seconds[mode] = time.perf_counter() - t0
        run(
            "test_model.py",
            "--checkpoint",
            run_dir / "best.pt",
            "--data",
            d / "test",
            "--out",
            args.root / "results" / mode,
            "--device",
            args.device,
            "--n",
            1,
        )
        results[mode] = json.loads((args.root / "results" / mode / "metrics.json").read_text())

    print(
        f"\n{args.encoder}, {args.epochs} epochs, tile {args.tile}, seed {args.seed}, "
        f"{sum(s == 'test' for s in split['april'].values())} test places (same for all modes)"
    )
    print(f"{'':44s} {'April':>8s} {'August':>8s} {'stacked':>8s}")

    def f(v):
        return f"{v:8.3f}" if v is not None else "     n/a"

    print(f"{'test mIoU':44s} " + " ".join(f(results[m]["miou"]) for m in MODES))
    print(f"{'overall accuracy':44s} " + " ".join(f(results[m]["overall_accuracy"]) for m in MODES))
    for c in CODES:
        print(
            f"IoU {c:2d} {name(c)[:37]:37s} "
            + " ".join(f(results[m]["per_class"][str(c)]["iou"]) for m in MODES)
        )
    print(f"{'training seconds':44s} " + " ".join(f"{seconds[m]:8.0f}" for m in MODES))
    (args.root / "summary.json").write_text(json.dumps({m: results[m] for m in MODES}, indent=1))


if __name__ == "__main__":
    main()
