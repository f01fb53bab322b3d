"""U-Net against SegFormer: quality on the demo at one budget, size, and training and inference speed.

Reads nothing. Writes under --root (default bench/out/architectures): the demo's stacked data per seed
and one run and results folder per model (bench/recipe.py's steps: train.py with train.py's default
recipe, then test_model.py), and ``summary.json``; prints two tables: parameters and tiles per second
(a training step: forward, loss, backward, AdamW step; and inference: forward only), measured here on
random batches of the demo's shape; and test mIoU and per-class IoU after the same number of epochs.

    .venv/bin/python bench/architectures.py --seeds 0 --models unet-resnet18 segformer-mit_b0
    .venv/bin/python bench/architectures.py --speed-only            # every model, speed and size only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import recipe  # noqa: E402  (bench/recipe.py: the demo's data, a training and its test scores)

from landcover.distributed import Precision, configure_torch, pick_device  # noqa: E402
from landcover.losses import class_weights, make_criterion  # noqa: E402
from model import build_model  # noqa: E402
from train import RECIPE, train_step  # noqa: E402

MODELS = {  # name -> (arch, encoder)
    "unet-resnet18": ("unet", "resnet18"),
    "unet-resnet50": ("unet", "resnet50"),
    "segformer-mit_b0": ("segformer", "mit_b0"),
    "segformer-mit_b2": ("segformer", "mit_b2"),
}


def speed(arch: str, encoder: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Parameters, and tiles per second of a training step and of inference, after warm-up."""
    torch.manual_seed(0)
    net = build_model(encoder, args.bands, 13, arch=arch, full_res=args.full_res, spectral=args.spectral)
    net = net.to(device)
    precision = Precision.for_device(device.type == "cuda", device)
    net = net.to(memory_format=precision.memory_format)
    x = torch.randn(args.batch_size, args.bands, args.size, args.size, device=device)
    x = x.contiguous(memory_format=precision.memory_format)
    y = torch.randint(1, 13, (args.batch_size, args.size, args.size), device=device)
    criterion = make_criterion("ce", class_weights([0] + [1] * 12, "none").to(device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def timed(fn) -> float:
        fn()  # warm-up (and cuDNN's kernel choice)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    net.train()
    train = timed(lambda: train_step(net, x, y, criterion, optimizer, precision))
    net.eval()
    with torch.inference_mode():
        infer = timed(lambda: net(x))
    params = sum(p.numel() for p in net.parameters())
    return {"parameters": params, "train_tiles_s": train, "inference_tiles_s": infer, "device": str(device)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="demo seeds of the quality runs")
    p.add_argument("--epochs", type=int, default=5, help="the budget: epochs of every model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile", type=int, default=150, help="tile size of the demo data")
    p.add_argument("--size", type=int, default=150, help="tile size of the speed batches")
    p.add_argument("--bands", type=int, default=20, help="bands of the speed batches (stacked: 20)")
    p.add_argument(
        "--full-res", type=int, default=RECIPE["full_res"], help="full-resolution path of the speed models"
    )
    p.add_argument(
        "--spectral", type=int, default=RECIPE["spectral"], help="per-pixel branch of the speed models"
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps per speed measurement")
    p.add_argument("--device", default="auto", help="where the speed is measured")
    p.add_argument("--speed-only", action="store_true", help="sizes and speeds only, no training")
    p.add_argument("--root", type=Path, default=ROOT / "bench/out/architectures", help="work folder")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    configure_torch(device)
    out = args.root.resolve()
    out.mkdir(parents=True, exist_ok=True)
    speeds = {}
    print(
        f"| model | parameters | train tiles/s | inference tiles/s |  ({device}, {args.size} px, "
        f"{args.bands} bands)"
    )
    print("|---|---|---|---|")
    for m in args.models:
        s = speeds[m] = speed(*MODELS[m], args, device)
        print(
            f"| {m} | {s['parameters'] / 1e6:.1f} M | {s['train_tiles_s']:.1f} "
            f"| {s['inference_tiles_s']:.1f} |"
        )
    results: dict[str, list[dict]] = {m: [] for m in args.models}
    if not args.speed_only:
        for seed in args.seeds:
            data = recipe.prepare(seed, out, args.tile)
            for m in args.models:
                arch, encoder = MODELS[m]
                options = ["--arch", arch, "--encoder", encoder]
                results[m].append(recipe.train_and_test(data, out, m, options, args, seed))
        print(f"\nseeds {args.seeds}, {args.epochs} epochs, tile {args.tile}, train.py's default recipe")
        print(recipe.table(results))
    summary = {"speed": speeds, "results": results, "seeds": args.seeds, "epochs": args.epochs}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
