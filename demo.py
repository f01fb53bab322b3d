"""The whole chain on generated demo data, with no argument to type (`make demo`).

Reads nothing; writes ``data/`` (demo scenes, mask, tiles, splits), ``runs/demo-*`` (checkpoints and
TensorBoard logs) and ``results/demo-*`` (metrics.json, confusion matrix, comparison pictures, the
land-cover map and its preview), all under ``--root`` (default: the repository). It exists to show
the chain end to end: each step is one of the pipeline's scripts, run as a user would run it from the
shell, and each is idempotent, so re-running after an interruption completes it. The input modes it
compares, and why it chooses on the validation split, are in the README's "Two commands".
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from landcover.common import ArgumentParser, run_main

ROOT = Path(__file__).resolve().parent
# mode -> scenes (0 April, 1 August): april and august take one date's 10 bands per input, stacked both
# dates of a place in one 20-band input; each has one tile per place, so april and stacked (the default
# pair) cost the same per epoch
MODES = {"april": [0], "august": [1], "stacked": [0, 1]}


def step(args: Sequence[str]) -> None:
    """Run one pipeline script; stop the demo if it fails."""
    cmd = [sys.executable, *map(str, args)]
    print(f"\n$ python {shlex.join(map(str, args))}", flush=True)
    t0 = time.perf_counter()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        sys.exit(f"demo: step failed: python {shlex.join(map(str, args))}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def parse_args(argv: Sequence[str] | None):
    p = ArgumentParser.for_script(__doc__)
    p.add_argument("--size", type=int, default=3000, help="demo scene size in 10 m pixels")
    p.add_argument(
        "--tile",
        type=int,
        default=150,
        help="tile size in pixels (smaller tiles give more optimizer steps per minute of CPU)",
    )
    p.add_argument(
        "--arch",
        default="segformer",
        choices=["unet", "segformer"],
        help="model (SegFormer MiT-B0 learns the most per CPU minute at the demo's budget; README)",
    )
    p.add_argument("--encoder", default="mit_b0", help="its encoder (mit_b0, or resnet18 for a quick U-Net)")
    p.add_argument("--epochs", type=int, default=7, help="training epochs of each mode")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per training batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the training")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["stacked"],
        choices=list(MODES),
        help="input modes to train and compare (README: `--modes april stacked` shows what the second "
        "season adds, in about 6 min more)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="folder that receives data/, runs/ and results/",
    )
    return p.parse_args(argv)


def prepare(args, data: Path, roots: dict[str, Path]) -> list[Path]:
    """The demo scenes, the 10 m mask, and each mode's tiles, split and rare-class copies; the scenes."""
    raw = data / "raw"
    scenes = [raw / "s2_april.tif", raw / "s2_august.tif"]
    step(["make_demo_data.py", "--out", raw, "--size", args.size, "--seed", args.seed])
    mask = data / "mask_10m.tif"
    rescale = ["--like", scenes[0], "--out", mask, "--method", "weighted"]
    step(["rescale_mask.py", "--mask", raw / "landcover_1m.tif", *rescale])
    for mode in args.modes:
        root, images = roots[mode], [scenes[i] for i in MODES[mode]]
        stack = ["--stack"] if len(images) > 1 else []
        tiles = ["--out", root / "tiles", "--size", args.tile, *stack]
        step(["divide_img.py", "--images", *images, "--mask", mask, *tiles])
        step(["move_images.py", "--tiles", root / "tiles", "--out", root, "--seed", args.seed])
        # a higher threshold than the default 0.05 keeps the demo's epochs short
        step(["create_new_images.py", "--train", root / "train", "--threshold", 0.1])
    return scenes


def train_and_test(args, mode: str, root: Path, base: Path) -> dict:
    """train.py with its default recipe (resumed if a run was interrupted), then test_model.py on the
    test split; the validation and test mIoU and where the run and its results are."""
    run, res = base / f"runs/demo-{mode}", base / f"results/demo-{mode}"
    resume = ["--resume"] if (ROOT / run / "last.pt").is_file() else []  # the steps' paths are ROOT's
    options = ["--arch", args.arch, "--encoder", args.encoder, "--epochs", args.epochs]
    options += ["--batch-size", args.batch_size]
    step(["train.py", "--data", root, "--out", run, *options, "--seed", args.seed, *resume])
    step(["test_model.py", "--checkpoint", run / "best.pt", "--data", root / "test", "--out", res])
    test = json.loads((ROOT / res / "metrics.json").read_text())
    val = test.get("checkpoint", {}).get("val_miou")
    return {"val": val, "test": test["miou"], "run": run, "results": res}


def report(scores: dict, chosen: str, base: Path, minutes: float) -> None:
    res = scores[chosen]["results"]
    print(f"\n== Demo finished in {minutes:.1f} min ==")
    for mode, s in scores.items():
        val = "n/a" if s["val"] is None else f"{s['val']:.3f}"
        print(f"  {mode:8s} validation mIoU {val}   test mIoU {s['test']:.3f}")
    why = " (better validation mIoU)" if len(scores) > 1 else ""
    print(f"Mode: {chosen}{why}. Test mIoU {scores[chosen]['test']:.3f}")
    print(f"  metrics:           {res / 'metrics.json'}")
    print(f"  confusion matrix:  {res / 'confusion_matrix.png'}")
    print(f"  calibration:       {res / 'reliability.png'}, {res / 'coverage.png'}")
    print(f"  comparison images: {res / 'comparisons'}/")
    print(f"  land-cover map:    {res / 'landcover_demo.tif'} (preview {res / 'landcover_demo.png'})")
    print(f"  confidence map:    {res / 'landcover_demo_confidence.tif'}")
    print(f"  assessment:        {res / 'assessment/assessment.md'}")
    mmu = res / "landcover_demo_mmu"
    print(f"  map at MMU 0.5 ha: {mmu}.tif, its STAC item {mmu}.json")
    print(f"  vector map:        {mmu}.gpkg (open in QGIS: coloured and labelled by class)")
    print(f"  change:            {res / 'change/change.md'}, {res / 'change/assessment/assessment.md'}")
    print(f"  TensorBoard:       .venv/bin/tensorboard --logdir {base / 'runs'}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    root = args.root.resolve()  # the steps run in ROOT: paths relative to it when inside it
    base = Path(os.path.relpath(root, ROOT)) if root.is_relative_to(ROOT) else root
    data = base / "data"
    roots = {"april": data, "august": data / "august", "stacked": data / "stacked"}
    scenes = prepare(args, data, roots)
    scores = {mode: train_and_test(args, mode, roots[mode], base) for mode in args.modes}
    # chosen on validation mIoU (choosing on the test split would leak it); both test scores are printed
    chosen = max(scores, key=lambda m: scores[m]["val"] if scores[m]["val"] is not None else -1)
    images = [scenes[i] for i in MODES[chosen]]
    out = scores[chosen]["results"] / "landcover_demo.tif"
    step(["predict.py", "--checkpoint", scores[chosen]["run"] / "best.pt", "--image", *images, "--out", out])
    # The map's accuracy and error-adjusted areas (README: "Assessing the map"), from a stratified sample
    # labelled with the demo's truth; it covers the training tiles too, so the figures are optimistic.
    res, truth = scores[chosen]["results"], data / "mask_10m.tif"
    sample = res / "landcover_demo_sample.gpkg"
    if not (ROOT / sample).is_file():  # sample_map.py never overwrites a sample: it may hold labels
        step(["sample_map.py", "--map", out, "--out", sample, "--reference", truth, "--seed", args.seed])
    step(["assess_map.py", "--sample", sample, "--out", res / "assessment"])
    products(out)
    change(data, scores[chosen], MODES[chosen], out, args.seed)
    report(scores, chosen, base, (time.perf_counter() - t0) / 60)


def products(out: Path) -> None:
    """The map's products (README: "Map products"): the map at a minimum mapping unit of 0.5 ha, its
    vector map (a styled GeoPackage) and where they are."""
    mmu, vector = out.with_name(f"{out.stem}_mmu.tif"), out.with_name(f"{out.stem}_mmu.gpkg")
    step(["generalize_map.py", "--map", out, "--mmu", "0.5", "--out", mmu])
    step(["vectorize_map.py", "--map", mmu, "--out", vector])


def change(data: Path, chosen: dict, scene_index: Sequence[int], out: Path, seed: int) -> None:
    """A year later (README: "Change between two years"): the second year's scenes with planned changes,
    mapped by the same model, the change map against the first year's, the true change from the two
    truths, the change's sample labelled with the true change and its assessment; each planned
    transition's true, mapped and estimated area, recall and precision."""
    nxt, res = data / "raw/next_year", chosen["results"]
    step(["make_demo_data.py", "--out", nxt, "--changes-from", data / "raw"])
    truth = nxt / "mask_10m.tif"
    like = ["--like", nxt / "s2_april.tif", "--out", truth, "--method", "weighted"]  # as the first year's
    step(["rescale_mask.py", "--mask", nxt / "landcover_1m.tif", *like])
    scenes = [nxt / ("s2_april.tif", "s2_august.tif")[i] for i in scene_index]
    after = res / "landcover_next_year.tif"
    step(["predict.py", "--checkpoint", chosen["run"] / "best.pt", "--image", *scenes, "--out", after])
    mapped, true = res / "change/change.tif", res / "true_change/change.tif"
    step(["compare_maps.py", "--before", out, "--after", after, "--out", mapped, "--stable"])
    step(["compare_maps.py", "--before", data / "mask_10m.tif", "--after", truth, "--out", true, "--stable"])
    sample = res / "change/change_sample.gpkg"
    if not (ROOT / sample).is_file():  # never overwritten: it may hold labels
        step(["sample_map.py", "--map", mapped, "--out", sample, "--reference", true, "--seed", seed])
    step(["assess_map.py", "--sample", sample, "--out", res / "change/assessment"])
    assessed = json.loads((ROOT / res / "change/assessment/assessment.json").read_text())["classes"]
    print_change(json.loads((ROOT / nxt / "changes.json").read_text()), ROOT / mapped, ROOT / true, assessed)


def print_change(planned: list[dict], mapped: Path, true: Path, assessed: dict) -> None:
    """Each planned transition's true, mapped and estimated area (95 % interval), recall and precision."""
    import rasterio

    from landcover.change import agreement, changes_only, is_pair, pair_code, recall_precision

    with rasterio.open(mapped) as m, rasterio.open(true) as t:
        read = [lambda w, ds=ds: changes_only(ds.read(1, window=w)) for ds in (m, t)]
        counts = sum(agreement(read[0](w), read[1](w)) for _, w in m.block_windows(1))
        ha = abs(m.transform.a * m.transform.e) / 1e4
    print(f"\n== Change, a year later ({mapped}) ==")
    print(f"  mapped change {counts[1:].sum() * ha:,.1f} ha; true change {counts[:, 1:].sum() * ha:,.1f} ha")
    changed = [v["area_ha"]["estimate"] for k, v in assessed.items() if is_pair(int(k))]
    print(f"  estimated change (sample, assess_map.py) {sum(e for e in changed if e is not None):,.1f} ha")
    head = f"{'true ha':>8s} {'mapped ha':>9s} {'estimated ha (95 %)':>25s}"
    print(f"  {'planned transition':34s} {head} recall precision")
    for c in planned:
        code = pair_code(c["before"], c["after"])
        r, p = recall_precision(counts, code)
        what, areas = f"{c['before']}->{c['after']} {c['kind']}", (counts[:, code].sum(), counts[code].sum())
        est = assessed.get(str(code), {}).get("area_ha")
        low, high = est["ci95"] if est else (0, 0)
        estimate = f"{est['estimate']:.1f} ({low:.1f}-{high:.1f})" if est else "not in the sample"
        print(f"  {what:34s} {areas[0] * ha:8.1f} {areas[1] * ha:9.1f} {estimate:>25s} {r:6.3f} {p:9.3f}")


if __name__ == "__main__":
    sys.exit(run_main(main))
