"""Map a whole scene with a trained checkpoint: a land-cover GeoTIFF on the scene's grid, the confidence of
every pixel beside it, and PNG previews.

Reads: a checkpoint (train.py's best.pt) and one scene; for a model trained on stacked scenes, every
scene it was trained on, in the training order, matched by position and bands, not by file name (another
year's or region's mosaics map as well). Writes: ``--out MAP.tif`` (uint8 codes 1..12, nodata 0, the
class colour table and names, overviews), ``MAP_confidence.tif`` (the probability of the mapped class in
percent at the checkpoint's temperature, nodata 255), with ``--review-below P`` ``MAP_review.tif``, with
``--probabilities`` ``MAP_probabilities.tif`` (12 bands: each class's calibrated probability, percent), and
the previews ``MAP.png`` and ``MAP_confidence.png``, then ``MAP.json``, the STAC item that describes them.
A MAP.tif that exists is complete, everything beside it included: all are written under temporary names
and renamed, the map last. The scene is read by
windows and blended (``landcover.mapping``); the README's "7. predict.py" section says how and at what cost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from colormap import CLASSES, CODES, NODATA
from landcover import distributed, inference
from landcover.checkpoint import load_checkpoint, temperature_of
from landcover.common import ArgumentParser, check_range, fail, open_raster, run_main
from landcover.inference import check_scenes, scene_prefixes
from landcover.layout import RAW
from landcover.mapping import check_grids, write_map
from landcover.rasters import MapFiles, MapWriters
from landcover.stac import item_path, parse_datetime, write_item

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def area_table(counts: np.ndarray, pixel_area_m2: float) -> str:
    """Area of every class present, in hectares and percent of the mapped pixels."""
    total = max(int(counts[1:].sum()), 1)
    lines = [f"{'code':>4}  {'class':<42} {'hectares':>14} {'%':>6}"]
    for c in CODES:
        if counts[c]:
            ha = counts[c] * pixel_area_m2 / 1e4
            lines.append(f"{c:>4}  {CLASSES[c][0][:42]:<42} {ha:>14,.1f} {100 * counts[c] / total:>6.2f}")
    lines.append(f"nodata pixels: {int(counts[NODATA]):,}")
    return "\n".join(lines)


def confidence_summary(sums: MapWriters, temperature: float, review_below: float | None) -> str:
    """The mean confidence of the mapped pixels and, with ``review_below``, the share flagged."""
    valid = max(sums.valid, 1)
    mean = sums.confidence_sum / valid
    lines = [f"confidence of the mapped class: mean {mean:.1f}% (temperature {temperature:.3g})"]
    if review_below is not None:
        lines.append(
            f"for review (confidence below {review_below:g}%): {sums.flagged:,} pixels, "
            f"{100 * sums.flagged / valid:.2f}% of the mapped pixels"
        )
    return "\n".join(lines)


def default_images(bands: Sequence[str]) -> list[Path]:
    """The scenes of make_demo_data.py the checkpoint takes: data/raw/<scene>.tif (April if single)."""
    return [RAW / f"{p}.tif" for p in scene_prefixes(bands)] or [RAW / "s2_april.tif"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser.for_script(__doc__)
    parser.add_argument(
        "--checkpoint", default=inference.DEFAULT_CHECKPOINT, help="checkpoint written by train.py"
    )
    parser.add_argument(
        "--image",
        default=argparse.SUPPRESS,
        nargs="+",
        type=Path,
        help="the scene(s) to map; for a stacked model as many as it was trained on, in that order, matched "
        "by position and bands, whatever their names (default: data/raw/<scene>.tif for each scene the "
        "checkpoint names, else data/raw/s2_april.tif)",
    )
    parser.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        type=Path,
        help="the map to write (.tif); beside it MAP_confidence.tif (uint8: the mapped class's probability "
        "in percent, calibrated with the checkpoint's temperature; 255 nodata), the previews MAP.png and "
        "MAP_confidence.png, and with --review-below MAP_review.tif "
        "(default: results/<run folder of the checkpoint>/landcover_<scene(s)>.tif)",
    )
    parser.add_argument("--window", type=int, default=512, help="window size in pixels (square)")
    parser.add_argument(
        "--overlap", type=int, default=64, help="pixels shared by neighbouring windows (blended)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per model call")
    parser.add_argument("--tta", action="store_true", help="average predictions over 4 flips (4x slower)")
    parser.add_argument("--device", choices=distributed.DEVICES, default="auto", help="where the model runs")
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="threads preparing windows (their valid pixels; 0: all in the main thread)",
    )
    parser.add_argument(
        "--review-below",
        type=float,
        default=None,
        metavar="P",
        help="also write MAP_review.tif: 1 where the confidence is below P %% (1-100; pixels for a human "
        "to review), 0 elsewhere, 255 nodata; and print the share of mapped pixels flagged",
    )
    parser.add_argument(
        "--no-preview", action="store_true", help="write neither PNG preview (map, confidence)"
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write MAP_probabilities.tif: 12 bands uint8, band k the calibrated probability of code k "
        "in percent (band descriptions: the class names), 255 nodata; for users who combine years or "
        "post-process themselves",
    )
    parser.add_argument(
        "--datetime",
        default=None,
        help="the date (or START/END, ISO 8601) the map shows, for its STAC item, e.g. "
        "2023-04-01/2023-08-31 for an April and an August mosaic (default: the scenes' modification time)",
    )
    return check_args(parser.parse_args(argv))


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Ranges of the numeric options, before any file is read."""
    check_range("--window", args.window, 32)
    check_range("--overlap", args.overlap, 0)
    if args.overlap >= args.window:
        fail(f"--overlap must be smaller than --window ({args.window}), got {args.overlap}")
    check_range("--batch-size", args.batch_size, 1)
    check_range("--workers", args.workers, 0)
    if args.review_below is not None:
        check_range("--review-below", args.review_below, 1, 100)
    if args.datetime is not None:
        try:
            args.datetime = parse_datetime(args.datetime)
        except ValueError:
            fail(f"--datetime must be an ISO 8601 date or time, or START/END: {args.datetime}")
    return args


def check_inputs(bands: Sequence[str], images: Sequence[Path]) -> tuple[int, int, float, str | None]:
    """Fail unless the scenes match the checkpoint and share one grid; their height, width, pixel area
    (m²) and the line saying which scenes are named otherwise than the checkpoint's (or None)."""
    scenes = [open_raster(p, "scene") for p in images]
    try:
        renamed = check_scenes(bands, [(Path(s.name), s.descriptions) for s in scenes])
        check_grids(scenes)
        t = scenes[0].transform
        return scenes[0].height, scenes[0].width, abs(t.a * t.e), renamed
    finally:
        for s in scenes:
            s.close()


def output_files(args: argparse.Namespace, images: Sequence[Path]) -> MapFiles:
    """``--out``, or the default beside the checkpoint's run: a .tif whose files overwrite no input scene
    and no folder."""
    stem = "+".join(p.stem for p in images)
    out = getattr(args, "out", None) or inference.results_folder(args.checkpoint) / f"landcover_{stem}.tif"
    if out.suffix.lower() not in (".tif", ".tiff"):
        fail(f"--out must end with .tif or .tiff (the preview goes beside it as .png): {out}")
    files = MapFiles(out)
    inputs = {Path(p).resolve() for p in images}
    for path in [
        *files.all(args.review_below is not None, not args.no_preview, args.probabilities),
        item_path(out),
    ]:
        if path.resolve() in inputs:
            fail(f"--out would overwrite an input scene: {path}")
        if path.is_dir():
            fail(f"--out: {path} is a folder, where the map's file would go")
    return files


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = distributed.pick_device(args.device)
    distributed.configure_torch(device)
    net, ckpt = load_checkpoint(args.checkpoint, device)  # a broken checkpoint fails first
    temperature, note = temperature_of(ckpt, args.checkpoint)
    images = getattr(args, "image", None) or default_images(ckpt["bands"])
    height, width, pixel_area, renamed = check_inputs(ckpt["bands"], images)
    files = output_files(args, images)
    for line in (renamed, note):
        if line:
            print(line, flush=True)

    files.map.parent.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    tags = {
        "checkpoint": str(args.checkpoint),
        "scenes": " ".join(str(p) for p in images),
        "window": str(args.window),
        "overlap": str(args.overlap),
        "tta": str(args.tta),
        "temperature": f"{temperature:g}",
        "datetime": args.datetime or scenes_time(images),
        **checkpoint_tags(ckpt),
    }
    scene_options = dict(
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        tta=args.tta,
        temperature=temperature,
        device=device,
        workers=args.workers,
        probabilities=args.probabilities,
    )
    review, preview = args.review_below is not None, not args.no_preview
    counts, sums = write_map(
        net, images, ckpt["stats"], files, scene_options=scene_options, review_below=args.review_below,
        preview=preview, tags=tags,
    )  # fmt: skip
    print(area_table(counts, pixel_area))
    print(confidence_summary(sums, temperature, args.review_below))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"wrote {files.map} ({width} x {height} px, {wall:.1f} s, {cpu:.1f} CPU s)")
    for path in files.all(review, preview, args.probabilities)[1:-1]:  # the category names go without saying
        print(f"wrote {path}")
    print(f"wrote {write_item(files.map)} (STAC item)")


def scenes_time(images: Sequence[Path]) -> str:
    """The latest modification time of the scenes (UTC, to the second): a map's date when none is given."""
    newest = max(int(Path(p).stat().st_mtime) for p in images)
    return dt.datetime.fromtimestamp(newest, dt.UTC).isoformat()


def checkpoint_tags(ckpt: dict) -> dict[str, str]:
    """What the map's STAC item says of the model: architecture, encoder, training data, epoch, digest."""
    config, options = ckpt.get("model_config", {}), ckpt.get("options", {})
    tags = {
        "arch": config.get("arch"),
        "encoder": config.get("encoder"),
        "training_data": options.get("data"),
        "epoch": ckpt.get("epoch"),
        "checkpoint_sha256": ckpt.get("digest"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


if __name__ == "__main__":
    sys.exit(run_main(main))
