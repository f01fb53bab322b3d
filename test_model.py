"""Evaluate a checkpoint on a split of tiles: metrics.json, the confusion matrix and comparison pictures.

Reads: a checkpoint (train.py's best.pt) and a split folder (``img/`` and ``mask/`` tiles paired by
name, move_images.py), with the checkpoint's own bands and normalisation: a split whose band count or
band names differ from the checkpoint's is refused.
Writes into --out (default results/<run folder of the checkpoint>):
  metrics.json          overall_accuracy, miou, mean_dice, kappa, per_class (by code: name, iou, dice,
                        precision, recall, support in pixels), classes_left_out (absent from truth and
                        prediction, so left out of the means), the confusion matrix counts, checkpoint
                        and split
  confusion_matrix.png  row-normalised: where the pixels of each true class went
  tile_scores.csv       valid pixels, accuracy and mIoU of every tile
  comparisons/<group>_<rank>_<tile>.png   image / truth / prediction, legend naming the classes shown,
                        for the --n best, --n worst and --n random tiles by tile mIoU
and prints the metrics as a table. Every number comes from one confusion matrix accumulated over every
valid pixel of the split (nodata never counts); a tile's mIoU from that tile's own matrix.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from colormap import CLASSES, NUM_CLASSES, rgb_band_indices
from landcover import inference
from landcover.calibration import calibration_report
from landcover.checkpoint import load_checkpoint, temperature_of
from landcover.common import (
    ArgumentParser,
    atomic_write_text,
    check_range,
    fail,
    open_raster,
    progress,
    run_main,
)
from landcover.dataset import TileDataset
from landcover.distributed import DEVICES, configure_torch, pick_device
from landcover.evaluation import Evaluation
from landcover.evaluation import evaluate as run_evaluation
from landcover.figures import confusion_figure, coverage_figure, reliability_figure, save_figure
from landcover.layout import tile_pairs
from landcover.metrics import format_table
from landcover.stats import Normalize
from landcover.tiles import TileInfo, scan_tiles

GROUPS = ("best", "worst", "random")
COMPARISONS = "comparisons"


def evaluate(
    net: torch.nn.Module,
    pairs: list[tuple[Path, Path]],
    stats: dict,
    device: torch.device,
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    workers: int = 0,
    tta: bool = False,
) -> Evaluation:
    """One pass over the split: the confusion matrix, each tile's scores, and the confidence's
    calibration with and without ``temperature`` (the predicted codes do not depend on it)."""
    loader = DataLoader(
        TileDataset(pairs, len(stats["mean"])),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    batches = progress(loader, desc="evaluating", unit="batch")
    names = [img.stem for img, _ in pairs]
    norm = Normalize(stats, device)
    return run_evaluation(net, batches, norm, device, tta=tta, temperature=temperature, tile_names=names)


def select_tiles(scores: list[dict], n: int, seed: int) -> list[tuple[str, int, int]]:
    """(group, rank, tile index): the n best and n worst tiles by tile mIoU and n random others.

    Tiles without valid pixels are never picked; a tile is in one group at most; ties go by name.
    """
    ranked = sorted(
        (i for i, s in enumerate(scores) if s["miou"] is not None),
        key=lambda i: (-scores[i]["miou"], scores[i]["tile"]),
    )
    best = ranked[:n]
    worst = [i for i in reversed(ranked) if i not in best][:n]
    others = [i for i in ranked if i not in best and i not in worst]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(others), size=min(n, len(others)), replace=False).tolist())
    random = [others[k] for k in picked]
    return [
        (g, r + 1, i)
        for g, group in zip(GROUPS, (best, worst, random), strict=True)
        for r, i in enumerate(group)
    ]


def scores_csv(scores: list[dict]) -> str:
    """The per-tile scores as CSV text (empty cells where a tile has no valid pixel)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tile", "valid_pixels", "accuracy", "miou"])
    for s in scores:
        w.writerow(
            [s["tile"], s["pixels"], *("" if s[k] is None else f"{s[k]:.6f}" for k in ("accuracy", "miou"))]
        )
    return buf.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser.for_script(__doc__)
    parser.add_argument(
        "--checkpoint", default=inference.DEFAULT_CHECKPOINT, help="checkpoint written by train.py"
    )
    parser.add_argument("--data", type=Path, default=Path("data/test"), help="split folder (img/ and mask/)")
    parser.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        type=Path,
        help="results folder (default: results/<run folder of the checkpoint>, e.g. results/resnet50)",
    )
    parser.add_argument(
        "--n", type=int, default=4, help="comparison pictures per group (best, worst, random)"
    )
    parser.add_argument("--tta", action="store_true", help="average predictions over 4 flips (4x slower)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per model call")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the model runs (auto: the GPU when CUDA has one)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader worker processes (0: main process)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random group of pictures")
    parser.add_argument(
        "--review-accuracy",
        type=float,
        default=0.9,
        help="report the confidence threshold above which the kept pixels reach this accuracy: the "
        "pixels below it are the ones to send to human review (predict.py --review-below)",
    )
    parser.add_argument(
        "--rgb",
        type=int,
        nargs=3,
        default=(3, 2, 1),
        metavar=("R", "G", "B"),
        help="1-based red, green, blue bands for pictures when the tiles do not name B4, B3, B2",
    )
    args = parser.parse_args(argv)
    check_range("--n", args.n, 0)
    check_range("--batch-size", args.batch_size, 1)
    check_range("--workers", args.workers, 0)
    if not 0 < args.review_accuracy <= 1:
        fail(f"--review-accuracy must be in (0, 1], not {args.review_accuracy}")
    return args


def split_of(args: argparse.Namespace, ckpt: dict) -> tuple[list[tuple[Path, Path]], TileInfo, list[int]]:
    """The split's tile pairs, what they share, and the picture bands; refused unless its bands are the
    checkpoint's."""
    pairs = tile_pairs(args.data)
    with open_raster(pairs[0][0], "image tile") as first:  # the usual mistake, before the tile scan
        inference.check_bands(ckpt["bands"], first.descriptions, f"split {args.data}")
    info = scan_tiles(pairs)
    inference.check_bands(ckpt["bands"], info.descriptions, f"split {args.data}")
    try:
        rgb = rgb_band_indices(info.descriptions, args.rgb)
    except ValueError as e:
        fail(f"{e}: {args.data}")
    return pairs, info, rgb


def build_report(args, ckpt: dict, ev: Evaluation, info: TileInfo, tiles: int, temperature: float) -> dict:
    """metrics.json: the metrics, the confusion matrix, the calibration, what was evaluated."""
    metrics = ev.cm.compute({c: CLASSES[c][0] for c in CLASSES})
    if metrics["pixels"] == 0:
        fail(f"no valid pixels in the tiles of {args.data} (every pixel is nodata in the image or the mask)")
    calibration = calibration_report(ev.raw, ev.calibrated, temperature)
    threshold = ev.calibrated.threshold_for_accuracy(args.review_accuracy)
    calibration["review"] = {"accuracy": args.review_accuracy, "threshold": threshold}
    if threshold is not None:  # what that threshold keeps
        kept = ev.calibrated.coverage([threshold])[0]
        calibration["review"].update(kept_share=kept["share"], kept_accuracy=kept["accuracy"])
    return {
        **metrics,
        "confusion_matrix": {"rows": "truth", "columns": "prediction", "codes": list(range(NUM_CLASSES))}
        | {"counts": ev.cm.mat.tolist()},
        "calibration": calibration,
        "checkpoint": {
            "path": str(args.checkpoint),
            "arch": ckpt["model_config"].get("arch", "unet"),
            "encoder": ckpt["model_config"]["encoder"],
            "bands": list(ckpt["bands"]),
            "epoch": ckpt.get("epoch"),
            "val_miou": ckpt.get("best_miou"),
            "temperature": ckpt.get("temperature"),
        },
        "split": {
            "path": str(args.data),
            "tiles": tiles,
            "tile_size": [info.height, info.width],
            "bands": list(info.descriptions),
        },
        "tta": args.tta,
    }


def write_comparisons(args, net, ckpt, pairs, scores, rgb, device, folder: Path) -> int:
    """Image / truth / prediction pictures of the best, worst and random tiles; older pictures in the
    folder go. The number written."""
    folder.mkdir(exist_ok=True)
    dataset, norm = TileDataset(pairs, len(ckpt["bands"])), Normalize(ckpt["stats"], device)
    written = set()
    for group, rank, i in progress(select_tiles(scores, args.n, args.seed), desc="pictures", unit="tile"):
        s = scores[i]
        name = f"{group}_{rank}_{s['tile']}.png"
        t = f"{group} {rank}: {s['tile']}, tile mIoU {s['miou']:.3f}, accuracy {s['accuracy']:.3f}"
        raw, y = dataset[i]
        save_figure(inference.tile_figure(net, raw, y, norm, rgb, t, tta=args.tta), folder / name, dpi=110)
        written.add(name)
    for old in folder.glob("*.png"):  # pictures of an earlier evaluation into the same folder
        if old.name not in written:
            old.unlink()
    return len(written)


def calibration_lines(report: dict) -> list[str]:
    """What the calibration means for a reviewer, in two lines."""
    cal, review = report["calibration"], report["calibration"]["review"]
    ece = [cal[k]["ece"] for k in ("uncalibrated", "calibrated")]
    lines = [f"confidence: expected calibration error {ece[0]:.3f} raw, {ece[1]:.3f} with temperature "
             f"{cal['temperature']:.3f}"]  # fmt: skip
    if review["threshold"] is None:
        lines.append(f"no confidence threshold keeps pixels at accuracy {review['accuracy']:.2f}")
    else:
        share = review["kept_share"]
        lines.append(
            f"pixels with confidence >= {review['threshold']:.2f}: {share:.1%} of the split, accuracy "
            f"{review['kept_accuracy']:.3f}; the rest ({1 - share:.1%}) is for human review"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    configure_torch(device)
    net, ckpt = load_checkpoint(args.checkpoint, device)
    pairs, info, rgb = split_of(args, ckpt)
    temperature, note = temperature_of(ckpt, args.checkpoint)
    out = getattr(args, "out", None) or inference.results_folder(args.checkpoint)

    ev = evaluate(
        net, pairs, ckpt["stats"], device, temperature=temperature, batch_size=args.batch_size,
        workers=args.workers, tta=args.tta,
    )  # fmt: skip
    report = build_report(args, ckpt, ev, info, len(pairs), temperature)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tile_scores.csv", scores_csv(ev.scores))
    title = f"{Path(args.data).name}: {report['pixels']:,} pixels, mIoU {report['miou']:.3f}"
    save_figure(confusion_figure(ev.cm.mat.numpy(), title), out / "confusion_matrix.png", dpi=110)
    save_figure(
        reliability_figure(ev.raw, ev.calibrated, title, temperature), out / "reliability.png", dpi=110
    )
    save_figure(coverage_figure(ev.calibrated, title), out / "coverage.png", dpi=110)
    n = write_comparisons(args, net, ckpt, pairs, ev.scores, rgb, device, out / COMPARISONS)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1) + "\n")  # last: all is written

    print(format_table(report))
    print("\n".join(calibration_lines(report)))
    if note:  # on stdout, with the results: stderr is for errors, one line
        print(note)
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion_matrix.png'}, {out / 'tile_scores.csv'}")
    print(f"wrote {out / 'reliability.png'}, {out / 'coverage.png'}; {n} pictures in {out / COMPARISONS}")


if __name__ == "__main__":
    sys.exit(run_main(main))
