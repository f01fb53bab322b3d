"""Training recipes side by side on the demo data, per class, next to a per-pixel random forest.

Reads nothing. Writes under --root (default bench/out/recipe), per demo seed: the demo's data for the
stacked mode (make_demo_data, rescale_mask, divide_img --stack, move_images, create_new_images, as
demo.py runs them), one run folder and one results folder (test_model.py) per recipe, and
``forest-<seed>.json``; then ``summary.json`` and a table of test mIoU and per-class IoU, the mean and
the spread (sample standard deviation) over the seeds.

Every recipe trains the same model (--encoder, tile 150) for the same number of epochs, so the same
number of optimiser steps: a fixed budget. Recipes name every option they set, so the table does not
move when train.py's defaults do; ``default`` is train.py with no recipe option at all. The random
forest is the reference a U-Net must beat: scikit-learn, 100 trees, on single pixels (the bands of one
pixel, nothing around it) sampled from the same train split, scored on every valid test pixel.

Tune on seed 0, report on seeds the recipe never saw (``--data``: a split of a real scene instead):

    .venv/bin/python bench/recipe.py --seeds 0 --recipes previous cosine full-res sqrt rare dice
    .venv/bin/python bench/recipe.py --seeds 1 2 3 --recipes previous default
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from colormap import CODES, NUM_CLASSES, name  # noqa: E402
from landcover.layout import tile_pairs  # noqa: E402
from landcover.metrics import ConfusionMatrix  # noqa: E402
from landcover.tiles import read_tile, target  # noqa: E402

PREVIOUS = ["--optimizer", "adam", "--weight-decay", "0", "--schedule", "plateau", "--loss", "ce"]
PREVIOUS += ["--class-weights", "none", "--sampler", "uniform", "--full-res", "0"]
PREVIOUS += ["--cutmix", "0", "--spectral", "0"]  # the options added since
COSINE = ["--optimizer", "adamw", "--weight-decay", "0.01", "--schedule", "cosine", "--lr", "0.002"]
DICE = ["--loss", "ce+dice"]
RECIPES: dict[str, list[str]] = {  # each row adds one change to the one above it
    "previous": PREVIOUS,
    "cosine": [*PREVIOUS, *COSINE],
    "full-res": [*PREVIOUS, *COSINE, "--full-res", "32"],
    "sqrt": [*PREVIOUS, *COSINE, "--full-res", "32", "--class-weights", "sqrt"],
    "rare": [*PREVIOUS, *COSINE, "--full-res", "32", "--class-weights", "sqrt", "--sampler", "rare"],
    "dice": [*PREVIOUS, *COSINE, "--full-res", "32", "--class-weights", "sqrt", *DICE],
    "lovasz": [*PREVIOUS, *COSINE, "--full-res", "32", "--class-weights", "sqrt", "--loss", "ce+lovasz"],
    "inverse": [*PREVIOUS, *COSINE, "--full-res", "32", "--class-weights", "inverse"],
    "default": [],
    "no-cutmix": ["--cutmix", "0"],
    "cutmix4": ["--cutmix", "4"],
    "cutmix8": ["--cutmix", "8"],
    "no-spectral": ["--spectral", "0"],
    "jitter": ["--jitter", "0.1"],
}


def step(args: list) -> None:
    """Run one pipeline script from the repository; stop when it fails."""
    args = [str(a) for a in args]
    print(f"$ python {shlex.join(args)}", flush=True)
    if subprocess.run([sys.executable, *args], cwd=ROOT).returncode != 0:
        sys.exit(f"recipe: step failed: python {shlex.join(args)}")


def prepare(seed: int, root: Path, tile: int) -> Path:
    """The demo's stacked data for ``seed`` (each step skips what is already done); its data folder."""
    data, raw = root / f"seed{seed}", root / f"seed{seed}" / "raw"
    scenes = [raw / "s2_april.tif", raw / "s2_august.tif"]
    if not scenes[1].is_file():
        step(["make_demo_data.py", "--out", raw, "--seed", seed])
    if not (data / "mask_10m.tif").is_file():
        rescale = ["--like", scenes[0], "--out", data / "mask_10m.tif", "--method", "weighted"]
        step(["rescale_mask.py", "--mask", raw / "landcover_1m.tif", *rescale])
    stacked = data / "stacked"
    if not (stacked / "test").is_dir():
        tiles = ["--out", stacked / "tiles", "--size", tile, "--stack"]
        step(["divide_img.py", "--images", *scenes, "--mask", data / "mask_10m.tif", *tiles])
        step(["move_images.py", "--tiles", stacked / "tiles", "--out", stacked, "--seed", seed])
        step(["create_new_images.py", "--train", stacked / "train", "--threshold", 0.1])
    return stacked


def train_and_test(
    data: Path, out: Path, tag: str, options: list, args: argparse.Namespace, seed: int
) -> dict:
    """train.py with ``options`` (and --epochs, --batch-size, --seed), then test_model.py on the test
    split; its metrics.json, and the training's wall time in seconds under ``"train_seconds"``."""
    run, res = out / "runs" / f"{tag}-{seed}", out / "results" / f"{tag}-{seed}"
    if not (res / "metrics.json").is_file():
        resume = ["--resume"] if (run / "last.pt").is_file() else []
        common = ["--epochs", args.epochs, "--batch-size", args.batch_size, "--seed", seed]
        t0 = time.perf_counter()
        step(["train.py", "--data", data, "--out", run, *common, *options, *resume])
        (run / "seconds.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
        step(["test_model.py", "--checkpoint", run / "best.pt", "--data", data / "test", "--out", res])
    seconds = float((run / "seconds.txt").read_text()) if (run / "seconds.txt").is_file() else None
    return {**json.loads((res / "metrics.json").read_text()), "train_seconds": seconds}


def pixels(split: Path, limit: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, bands) features and their codes 1..12 over the valid pixels of a split (a uniform
    sample of at most ``limit``)."""
    xs, ys = [], []
    for img_path, mask_path in tile_pairs(split):
        img, mask = read_tile(img_path, mask_path)
        y = target(img, mask)
        keep = y > 0
        xs.append(img[:, keep].T)
        ys.append(y[keep])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if limit is not None and len(y) > limit:
        pick = rng.choice(len(y), limit, replace=False)
        x, y = x[pick], y[pick]
    return x, y


def random_forest(data: Path, out: Path, seed: int, samples: int) -> dict:
    """A 100-tree random forest on single pixels of the train split, scored on every test pixel."""
    import torch
    from sklearn.ensemble import RandomForestClassifier

    path = out / f"forest-{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    rng = np.random.default_rng(seed)
    x, y = pixels(data / "train", samples, rng)
    forest = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed).fit(x, y)
    tx, ty = pixels(data / "test", None, rng)
    cm = ConfusionMatrix(NUM_CLASSES)
    for i in range(0, len(ty), 500_000):
        pred = forest.predict(tx[i : i + 500_000])
        cm.update(
            torch.from_numpy(ty[i : i + 500_000].astype(np.int64)), torch.from_numpy(pred.astype(np.int64))
        )
    metrics = cm.compute({c: name(c) for c in CODES})
    path.write_text(json.dumps(metrics, indent=1))
    return metrics


def spread(values: list[float | None]) -> str:
    """``mean ± sd`` over seeds (sd only with two or more)."""
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    return f"{np.mean(v):.3f}" + (f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else "")


def classes_below(metrics: dict, limit: float = 0.4) -> int:
    """Classes with an IoU under ``limit``, of those present (absent from truth and prediction: None)."""
    return sum(pc["iou"] is not None and pc["iou"] < limit for pc in metrics["per_class"].values())


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: test mIoU, overall accuracy and each class's IoU, one column per recipe."""
    cols = list(results)
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    rows = [("test mIoU", lambda m: m["miou"]), ("overall accuracy", lambda m: m["overall_accuracy"])]
    rows += [(f"IoU {c} {name(c)}", lambda m, c=c: m["per_class"][str(c)]["iou"]) for c in CODES]
    rows += [("classes below 0.40", classes_below)]
    rows += [("training s", lambda m: m.get("train_seconds"))]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(spread([get(m) for m in results[c]]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="demo seeds (tune on 0 only)")
    p.add_argument("--recipes", nargs="+", default=["previous", "default"], choices=list(RECIPES))
    p.add_argument("--epochs", type=int, default=5, help="the budget: epochs of every recipe")
    p.add_argument("--arch", default="unet", choices=["unet", "segformer"], help="the model of every recipe")
    p.add_argument("--encoder", default="resnet18", help="its encoder")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile", type=int, default=150, help="tile size (the demo's)")
    p.add_argument("--forest-samples", type=int, default=300_000, help="train pixels for the random forest")
    p.add_argument("--no-forest", action="store_true", help="skip the random forest")
    p.add_argument(
        "--data",
        type=Path,
        help="a split of one's own (train/, val/, test/ tiles: divide_img.py then move_images.py, e.g. of "
        "a real scene) instead of the demo's; --seeds then seed the trainings and the forest only",
    )
    p.add_argument("--root", type=Path, default=ROOT / "bench/out/recipe", help="work folder")
    args = p.parse_args(argv)
    out = args.root.resolve()
    results: dict[str, list[dict]] = {r: [] for r in args.recipes}
    if not args.no_forest:
        results["random forest"] = []
    for seed in args.seeds:
        data = args.data.resolve() if args.data else prepare(seed, out, args.tile)
        for recipe in args.recipes:
            options = ["--arch", args.arch, "--encoder", args.encoder, *RECIPES[recipe]]
            tag = recipe if args.arch == "unet" else f"{args.encoder}-{recipe}"
            results[recipe].append(train_and_test(data, out, tag, options, args, seed))
        if not args.no_forest:
            results["random forest"].append(random_forest(data, out, seed, args.forest_samples))
    summary = {"seeds": args.seeds, "epochs": args.epochs, "arch": args.arch, "encoder": args.encoder}
    summary["results"] = results
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    where = f"tiles of {args.data}" if args.data else f"demo tile {args.tile}"
    print(f"\nseeds {args.seeds}, {args.encoder}, {args.epochs} epochs, {where} (mean ± sd over seeds)")
    print(table(results))


if __name__ == "__main__":
    main()
