"""April only, August only, or both stacked: the same model, epochs and seed, scored on one test split.

Runs ``demo.py --modes april august stacked`` (the pipeline's own scripts, as a user runs them, with
the demo's settings) under --root, checks that the three modes got the same spatial split (every
place in the same split in every mode), then prints test mIoU and per-class IoU side by side and
writes them to ``<root>/summary.json``. Writes only under --root (default bench/out/seasons,
git-ignored); re-running after an interruption resumes. Usage:

    python bench/seasons.py [--arch segformer] [--encoder mit_b0] [--epochs 7] [--tile 150]

Model, encoder and epochs left out are the demo's own defaults.
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

MODES = {"april": "data", "august": "data/august", "stacked": "data/stacked"}  # mode -> data folder


def places(split_csv: Path) -> dict[str, str]:
    """place -> split of a move_images plan."""
    with open(split_csv) as f:
        return {row["place"]: row["split"] for row in csv.DictReader(f)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT / "bench/out/seasons")
    p.add_argument("--size", type=int, default=3000)
    p.add_argument("--tile", type=int, default=150)
    p.add_argument("--arch", help="model (default: the demo's)")
    p.add_argument("--encoder", help="its encoder (default: the demo's)")
    p.add_argument("--epochs", type=int, help="epochs of each mode (default: the demo's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    settings = ["--size", args.size, "--tile", args.tile, "--seed", args.seed, "--root", args.root.resolve()]
    for option in ("arch", "encoder", "epochs"):
        if getattr(args, option) is not None:
            settings += [f"--{option}", getattr(args, option)]
    cmd = [sys.executable, "demo.py", "--modes", *MODES, *map(str, settings)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    minutes = (time.perf_counter() - t0) / 60

    split = {m: places(args.root / d / "split.csv") for m, d in MODES.items()}
    assert split["april"] == split["august"] == split["stacked"], "the three modes got different splits"
    results = {m: json.loads((args.root / f"results/demo-{m}/metrics.json").read_text()) for m in MODES}

    n_test = sum(s == "test" for s in split["april"].values())
    ck = results["stacked"]["checkpoint"]
    print(
        f"\n{ck['arch']} {ck['encoder']}, tile {args.tile}, seed {args.seed}, "
        f"{n_test} test places (the same in every mode); {minutes:.1f} min in all"
    )
    print(f"{'':44s} {'April':>8s} {'August':>8s} {'stacked':>8s}")

    def f(v):
        return f"{v:8.3f}" if v is not None else "     n/a"

    print(f"{'val mIoU (best.pt)':44s} " + " ".join(f(results[m]["checkpoint"]["val_miou"]) for m in MODES))
    print(f"{'test mIoU':44s} " + " ".join(f(results[m]["miou"]) for m in MODES))
    print(f"{'overall accuracy':44s} " + " ".join(f(results[m]["overall_accuracy"]) for m in MODES))
    for c in CODES:
        print(
            f"IoU {c:2d} {name(c)[:37]:37s} "
            + " ".join(f(results[m]["per_class"][str(c)]["iou"]) for m in MODES)
        )
    (args.root / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
