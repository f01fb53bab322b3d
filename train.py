"""Train the land-cover U-Net on the train split, validating on the val split after every epoch.

Reads   <data>/train/{img,mask}/*.tif and <data>/val/{img,mask}/*.tif (image and mask paired by name;
        all tiles of a split share size, band count and dtype; band descriptions come from the tiles).
Writes  in the run folder (--out, default runs/<encoder>):
          last.pt  after every epoch (and once before the first): everything --resume needs
          best.pt  the epoch with the best validation mIoU (weights and metadata, no optimizer)
          events.out.tfevents.*  TensorBoard: Loss/train, Loss/val, LR, mIoU/val, IoU/<class name>,
                   Dice/<class name>, the row-normalised confusion matrix and a few validation tiles
        <data>/band_stats.json  the train split's band statistics, a cache (see dataset.band_stats);
        the statistics themselves travel inside every checkpoint.
        <data>/tile_cache/  with --cache-tiles only: the train and val tiles decoded once into
        uncompressed arrays (see dataset.build_tile_cache), read by memory map; it may be deleted
        whenever no training runs.

Each epoch trains on the whole train split (shuffled, random dihedral transforms), then validates on
the whole val split, accumulating one confusion matrix. Adam; ReduceLROnPlateau (factor 0.5,
patience 3) on the validation loss. Nodata (code 0) is ignored in the loss and the metrics, and never
predicted: the prediction is the best of classes 1..12.

Same --seed, same run: the order of the tiles and their transforms are drawn from (seed, epoch) alone,
so a run stopped at any moment and continued with --resume ends with the same weights as one that
never stopped (bitwise on CPU, whatever --workers). last.pt always holds the last finished epoch: it is
rewritten atomically at every epoch end, so Ctrl-C or SIGTERM stop at once and --resume repeats the
unfinished epoch; after a SIGKILL, the same. TensorBoard history stays continuous (the repeated
epoch's steps are purged).

Under ``torchrun --nproc_per_node N train.py ...`` it runs DistributedDataParallel, one process per
GPU (nccl) or per CPU share (gloo): each process trains on its shard of every epoch (--batch-size is
per process), metrics are summed over all processes, and only rank 0 writes checkpoints, logs and the
statistics and tile caches.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

import colormap
from common import (
    ArgumentParser,
    InputError,
    atomic_path,
    check_range,
    fail,
    progress,
    remove_partials,
    run_main,
)
from dataset import (
    Normalize,
    TileDataset,
    band_stats,
    build_tile_cache,
    check_tiles,
    make_checkpoint,
    read_checkpoint,
    release_tile_caches,
    scan_tiles,
    seed_worker,
    tile_pairs,
    valid_pixels,
)
from metrics import ConfusionMatrix, format_table
from model import ENCODERS, build_model, model_from_config, predict_classes

LOSSES = ("ce", "focal", "dice", "ce+dice")
CLASS_WEIGHTS = ("none", "inverse", "sqrt")
# options that must not change when a run is resumed (the weights would no longer be the same run's)
RESUME_KEYS = ("encoder", "loss", "class_weights", "batch_size", "lr", "seed", "max_tiles")
FOCAL_GAMMA = 2.0
CACHE_DIR = "tile_cache"  # --cache-tiles: under --data
DEFAULT_OUT = "runs/<encoder>"  # e.g. runs/resnet50: the same command finds its run again with --resume


def default_workers() -> int:
    """Loader workers per training process: this node's cores shared among its processes, at most 16."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(16, (os.cpu_count() or 1) // per_node))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data", help="folder holding the train/ and val/ splits")
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="run folder for checkpoints and TensorBoard logs (--resume finds it)",
    )
    p.add_argument("--encoder", default="resnet50", choices=ENCODERS, help="ResNet encoder of the U-Net")
    p.add_argument("--epochs", type=int, default=100, help="total number of epochs (also when resuming)")
    p.add_argument("--batch-size", type=int, default=12, help="tiles per batch (per process under torchrun)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (Adam)")
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="DataLoader worker processes per training process (by default the node's cores shared among "
        "its training processes, at most 16)",
    )
    p.add_argument(
        "--weights",
        default="none",
        help="encoder initialisation: none (random), imagenet (torchvision's, from the local torch cache) "
        "or PATH to a torchvision ResNet state dict",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train")
    p.add_argument(
        "--loss", default="ce", choices=LOSSES, help="cross-entropy, focal (gamma 2), soft Dice, or CE + Dice"
    )
    p.add_argument(
        "--class-weights",
        default="none",
        choices=CLASS_WEIGHTS,
        help="loss weight per class: none, inverse or sqrt (inverse square root) of the class's pixel "
        "frequency in the train split, normalised to mean 1",
    )
    p.add_argument(
        "--amp", action="store_true", help="on CUDA: bf16 autocast and channels_last (ignored on CPU)"
    )
    p.add_argument(
        "--rgb",
        type=int,
        nargs=3,
        default=(3, 2, 1),
        metavar=("R", "G", "B"),
        help="1-based red, green, blue bands for pictures and ImageNet weights, when the tiles do not "
        "name their bands (B4, B3, B2)",
    )
    p.add_argument(
        "--log-images-every",
        type=int,
        default=5,
        help="log the confusion matrix and a few validation tiles at epoch 1, every N epochs and the last "
        "(0: never)",
    )
    p.add_argument("--log-tiles", type=int, default=4, help="how many validation tiles to picture")
    p.add_argument(
        "--patience", type=int, default=0, help="stop after N epochs without a better mIoU (0: never)"
    )
    p.add_argument(
        "--max-tiles",
        type=int,
        default=0,
        help="use a seeded sample of at most N tiles per split (smoke runs)",
    )
    p.add_argument(
        "--cache-tiles",
        action="store_true",
        help=f"decode the train and val tiles once into uncompressed memory-mapped arrays in "
        f"DATA/{CACHE_DIR}/ (as much disk as the uncompressed tiles: 1.9 MB per 300 x 300 x 10 tile; "
        "rebuilt when a tile changes) and read them from there: a copy instead of decoding each tile "
        "every epoch, for a GPU whose step outruns the loader workers (with torchrun on several nodes, "
        "DATA must be on a filesystem they share)",
    )
    return p


# ---------------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class Proc:
    """This process's place in the run: rank, number of processes, local rank (GPU index), and whether
    torchrun started it (then it joins a process group and trains with DDP, even as the only process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    torchrun: bool = False

    @classmethod
    def from_env(cls) -> Proc:
        env = os.environ
        if "LOCAL_RANK" not in env:  # a plain process
            return cls()
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), torchrun=True)

    @property
    def main(self) -> bool:
        return self.rank == 0


def find_device(choice: str, proc: Proc) -> torch.device:
    """The device this process trains on; --device cuda without CUDA is an error."""
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        fail("--device cuda: no CUDA device is available (use --device cpu)")
    if choice == "cpu" or not cuda:
        return torch.device("cpu")
    if proc.local_rank >= torch.cuda.device_count():
        fail(
            f"process {proc.local_rank} has no GPU ({torch.cuda.device_count()} visible): "
            "lower --nproc_per_node"
        )
    return torch.device("cuda", proc.local_rank)


def configure_torch(device: torch.device) -> None:
    """CPU: deterministic kernels (bitwise reproducible runs and resumes). CUDA: the fastest kernels."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = (
            True  # one tile size: cuDNN times its kernels once and keeps the best
        )
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def init_processes(device: torch.device, proc: Proc) -> None:
    """Join the process group of a torchrun launch (nccl on CUDA, gloo on CPU)."""
    if not proc.torchrun:
        return
    timeout = timedelta(minutes=60)  # rank 0 alone computes the band statistics of a large split
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_rank0(fn: Callable[[], object], proc: Proc) -> object:
    """Run ``fn`` on rank 0 only and hand its result (or its one-line error) to every process."""
    result, error = None, None
    if proc.main:
        try:
            result = fn()
        except InputError as e:
            error = str(e)
    if dist.is_initialized():
        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        fail(error)
    return result


def sum_over_processes(*values: float, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity in a single process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------------------------------
# Reproducibility: every random draw of epoch e comes from seeds derived from (seed, e)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a few integers (seed, epoch, rank...)."""
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict:
    """The global RNG states as tensors and lists (so that weights_only loading reads them)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class EpochSampler(Sampler):
    """This process's shard of a shuffled epoch, each tile with its dihedral transform: ``(index, k)``.

    Order and transforms are drawn from a generator seeded with (seed, epoch) only, so they do not
    depend on the number of workers or on a resume. Sharding as DistributedSampler does: the epoch
    is padded to a multiple of the number of processes and process r takes every world-th tile from r.
    """

    def __init__(self, n: int, seed: int, proc: Proc, augment: bool = True):
        self.n, self.seed, self.proc, self.augment = n, seed, proc, augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.proc.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 1))
        order = torch.randperm(self.n, generator=g).tolist()
        ks = torch.randint(8, (self.n,), generator=g).tolist() if self.augment else [0] * self.n
        total = len(self) * self.proc.world
        order = (order * math.ceil(total / self.n))[:total]
        for i in order[self.proc.rank : total : self.proc.world]:
            yield i, ks[i]


def make_loader(
    ds: TileDataset, sampler: Sequence | Sampler, batch: int, workers: int, device: torch.device, seed: int
) -> DataLoader:
    """A DataLoader with persistent, seeded workers and pinned memory on CUDA."""
    extra = {}
    if workers > 0:
        extra = dict(persistent_workers=True, prefetch_factor=4, worker_init_fn=seed_worker)
    return DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


# ---------------------------------------------------------------------------------------------------
# Losses: nodata (code 0) has weight 0, so it never counts


def class_weights(class_pixels: Sequence[int], mode: str) -> torch.Tensor:
    """(13,) loss weight per code: 0 for nodata; ``inverse`` / ``sqrt``: 1/f or 1/sqrt(f) of the class's
    pixel frequency f in the train split, normalised to mean 1 over the classes present (absent ones 0).
    """
    w = torch.zeros(colormap.NUM_CLASSES, dtype=torch.float64)
    if mode == "none":
        w[1:] = 1.0
        return w.float()
    counts = torch.tensor(list(class_pixels), dtype=torch.float64)
    counts[colormap.NODATA] = 0
    present = counts > 0
    freq = counts / counts.sum()
    w[present] = 1.0 / freq[present] if mode == "inverse" else freq[present].rsqrt()
    w[present] /= w[present].mean()
    return w.float()


def weighted_mean(per_pixel: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of per-pixel losses weighted by the target's class weight; 0 when no pixel counts."""
    w = weight[target]
    return (per_pixel * w).sum() / w.sum().clamp_min(1e-12)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, averaged (class-weighted) over the classes present in the batch's valid pixels."""
    valid = (weight[target] > 0).unsqueeze(1).to(logits.dtype)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype) * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    card = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = 2 * inter / card.clamp_min(1e-6)
    w = weight * (onehot.sum(dim=(0, 2, 3)) > 0)
    return ((1 - dice) * w).sum() / w.sum().clamp_min(1e-12)


def make_criterion(kind: str, weight: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``fn(logits, target)``: float32 logits (N, 13, H, W), int64 targets (N, H, W)."""

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if kind in ("ce", "ce+dice"):
            loss = loss + weighted_mean(F.cross_entropy(logits, target, reduction="none"), target, weight)
        if kind == "focal":
            logp = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
            loss = loss + weighted_mean(-((1 - logp.exp()) ** FOCAL_GAMMA) * logp, target, weight)
        if kind in ("dice", "ce+dice"):
            loss = loss + dice_loss(logits, target, weight)
        return loss

    return criterion


# ---------------------------------------------------------------------------------------------------
# One epoch of training, one pass of validation


def to_device(
    raw: torch.Tensor, y: torch.Tensor, norm: Normalize, device: torch.device, fmt: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch (tiles as stored, uint8 targets) -> normalised float32 input and int64 targets on
    ``device``: the bytes cross to the GPU as uint16 and uint8, and the GPU does the arithmetic."""
    x = norm(raw.to(device, non_blocking=True)).contiguous(memory_format=fmt)
    return x, y.to(device, non_blocking=True).long()


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: Callable,
    optimizer: torch.optim.Optimizer,
    amp: bool,
) -> torch.Tensor:
    """One optimiser step on a batch already on the device (bf16 autocast with ``amp``); the loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    norm: Normalize,
    criterion: Callable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: bool,
    desc: str,
    proc: Proc,
) -> float:
    """Train over this process's shard; return the mean loss per tile over all processes."""
    model.train()
    fmt = torch.channels_last if amp else torch.contiguous_format
    loss_sum, tiles = 0.0, 0
    start = time.perf_counter()
    bar = progress(total=len(loader), desc=desc, unit="batch", leave=False, disable=not proc.main)
    for raw, y in loader:
        x, y = to_device(raw, y, norm, device, fmt)
        loss = train_step(model, x, y, criterion, optimizer, amp)
        loss_sum += loss.item() * len(x)
        tiles += len(x)
        speed = tiles * proc.world / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss_sum / tiles:.4f}", tiles_s=f"{speed:.1f}", refresh=False)
        bar.update()
    bar.close()
    loss_sum, tiles = sum_over_processes(loss_sum, tiles, device=device)
    return loss_sum / max(tiles, 1)


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: DataLoader,
    norm: Normalize,
    criterion: Callable,
    device: torch.device,
    amp: bool,
    proc: Proc,
) -> tuple[float, ConfusionMatrix]:
    """Loss per tile and one confusion matrix over the whole split, summed over all processes."""
    net.eval()
    fmt = torch.channels_last if amp else torch.contiguous_format
    cm = ConfusionMatrix(colormap.NUM_CLASSES, ignore_index=colormap.NODATA)
    loss_sum, tiles = 0.0, 0
    for raw, y in progress(loader, desc="validation", unit="batch", leave=False, disable=not proc.main):
        x, y = to_device(raw, y, norm, device, fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
        loss_sum += criterion(logits.float(), y).item() * len(x)
        tiles += len(x)
        cm.update(y, predict_classes(logits))
    cm.reduce_from_all_processes()
    loss_sum, tiles = sum_over_processes(loss_sum, tiles, device=device)
    return loss_sum / max(tiles, 1), cm


def sync_buffers(net: nn.Module) -> None:
    """Give every process rank 0's batch-norm statistics (what the checkpoint holds) before validating."""
    if dist.is_initialized():
        for b in net.buffers():
            dist.broadcast(b, src=0)


# ---------------------------------------------------------------------------------------------------
# TensorBoard


def log_scalars(writer, epoch: int, train_loss: float, val_loss: float, lr: float, metrics: dict) -> None:
    writer.add_scalar("Loss/train", train_loss, epoch)
    writer.add_scalar("Loss/val", val_loss, epoch)
    writer.add_scalar("LR", lr, epoch)
    if metrics["miou"] is not None:
        writer.add_scalar("mIoU/val", metrics["miou"], epoch)
        writer.add_scalar("mDice/val", metrics["mean_dice"], epoch)
        writer.add_scalar("Accuracy/val", metrics["overall_accuracy"], epoch)
    for pc in metrics["per_class"].values():
        if pc["iou"] is not None:  # None: class absent from truth and prediction
            writer.add_scalar(f"IoU/{pc['name']}", pc["iou"], epoch)
            writer.add_scalar(f"Dice/{pc['name']}", pc["dice"], epoch)


def log_pictures(
    writer,
    epoch: int,
    net: nn.Module,
    cm: ConfusionMatrix,
    val: TileDataset,
    norm: Normalize,
    picks: Sequence[int],
    rgb: Sequence[int],
    device: torch.device,
    amp: bool,
) -> None:
    """The normalised confusion matrix and image / truth / prediction panels of a few val tiles."""
    writer.add_figure(
        "Confusion matrix/val", colormap.confusion_figure(cm.mat.numpy(), f"epoch {epoch}"), epoch
    )
    net.eval()
    fmt = torch.channels_last if amp else torch.contiguous_format
    for i in picks:
        img_path = val.pairs[i][0]
        raw, y = val[i]
        x, _ = to_device(raw[None], y, norm, device, fmt)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = predict_classes(net(x))[0].cpu().numpy()
        raw = raw.numpy()
        valid = valid_pixels(raw)
        pred[~valid] = colormap.NODATA
        picture = colormap.stretch_rgb(raw[list(rgb)], valid)
        fig = colormap.comparison_figure(picture, y.numpy(), pred, f"{img_path.stem}, epoch {epoch}")
        writer.add_figure(f"Validation/{img_path.stem}", fig, epoch)


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(ckpt: dict, path: Path) -> None:
    """Save atomically; a full disk is the OSError (ENOSPC) run_main reports in one line, and the
    previous file stays as it was. torch.save(ckpt, path) would raise a RuntimeError of its zip writer
    ("unexpected pos"); through a Python file the OSError is raised, then hidden by the RuntimeError
    the writer raises again while closing."""
    with signals_held(), atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(ckpt, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM while a checkpoint is written, then act on them: torch.save turns an
    interrupt inside its zip writer into a RuntimeError traceback instead of a clean stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


def plain_options(args) -> dict:
    """The options as plain values (weights_only loading refuses Paths and tuples of objects)."""
    return {
        k: (list(v) if isinstance(v, tuple | list) else str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
    }


def check_resumable(ckpt: dict, path: Path, args, bands: Sequence[str]) -> None:
    """Refuse a last.pt that is not a training state or was written with other options or bands."""
    if any(k not in ckpt for k in ("optimizer", "scheduler", "epoch", "options")):
        fail(f"not a training state (no optimizer/scheduler/epoch; best.pt cannot be resumed): {path}")
    old, new = ckpt["options"], vars(args)
    diff = [
        f"--{k.replace('_', '-')} {old.get(k)} (now {new[k]})" for k in RESUME_KEYS if old.get(k) != new[k]
    ]
    if diff:
        fail(
            f"{path} was written with other options: {', '.join(diff)}; use the same options or another --out"
        )
    if list(ckpt["bands"]) != list(bands):
        fail(
            f"{path} was trained on other bands ({len(ckpt['bands'])}: {', '.join(ckpt['bands'])}) than the "
            f"tiles have now ({len(bands)}: {', '.join(bands)})"
        )


# ---------------------------------------------------------------------------------------------------


def sample_pairs(pairs: list, n: int, seed: int) -> list:
    """At most ``n`` pairs (all when n is 0), a seeded sample kept in name order."""
    if n <= 0 or n >= len(pairs):
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in keep]


def load_splits(data: Path, max_tiles: int, seed: int):
    """Train and val pairs and the train tiles' description; mismatches between splits are errors."""
    train_pairs = sample_pairs(tile_pairs(data / "train"), max_tiles, seed)
    val_pairs = sample_pairs(tile_pairs(data / "val"), max_tiles, seed)
    info, vinfo = scan_tiles(train_pairs), scan_tiles(val_pairs)
    if (vinfo.bands, vinfo.dtype) != (info.bands, info.dtype):
        fail(
            f"val tiles have {vinfo.bands} bands {vinfo.dtype}, train tiles {info.bands} bands {info.dtype}: "
            f"{val_pairs[0][0]}"
        )
    return train_pairs, val_pairs, info


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name, low in (("--epochs", 1), ("--batch-size", 1), ("--workers", 0), ("--max-tiles", 0)):
        check_range(name, getattr(args, name[2:].replace("-", "_")), low)
    for name in ("--patience", "--log-images-every", "--log-tiles"):
        check_range(name, getattr(args, name[2:].replace("-", "_")), 0)
    check_range("--lr", args.lr, 0, low_open=True)
    args.out = Path(args.out.replace("<encoder>", args.encoder))
    args.data = Path(args.data)
    args.rgb = list(args.rgb)

    proc = Proc.from_env()
    device = find_device(args.device, proc)
    amp = args.amp and device.type == "cuda"
    if args.amp and not amp and proc.main:
        print("--amp applies to CUDA only: training in float32 on the CPU", file=sys.stderr)

    # --- every check before anything is written ---
    train_pairs, val_pairs, info = load_splits(args.data, args.max_tiles, args.seed)
    if proc.main:  # the train tiles are all read for their statistics; the val tiles not before epoch 1
        check_tiles(val_pairs, max(args.workers, 1), "checking val tiles")
    bands = list(info.descriptions)
    try:
        rgb = colormap.rgb_band_indices(bands, args.rgb)
    except ValueError as e:
        fail(f"{e} ({args.data / 'train'})")
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out is a file, not a run folder: {args.out}")
    last = args.out / "last.pt"
    ckpt = None
    if args.resume:
        if not last.is_file():
            fail(f"nothing to resume: no last.pt in {args.out}")
        ckpt = read_checkpoint(last)
        check_resumable(ckpt, last, args, bands)
        net = model_from_config(ckpt["model_config"])
        try:
            net.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as e:
            fail(f"weights do not fit their architecture: {last} ({str(e).splitlines()[0][:120]})")
    else:
        if any(args.out.glob("*.pt")) or any(args.out.glob("events.out.tfevents.*")):
            fail(
                f"run folder already holds a run: {args.out} "
                "(add --resume to continue it, or choose another --out)"
            )
        seed_everything(args.seed)
        try:
            net = build_model(args.encoder, info.bands, colormap.NUM_CLASSES, args.weights, rgb=rgb)
        except FileNotFoundError as e:
            fail(str(e))
        except pickle.UnpicklingError as e:  # torch's message would suggest loading it unsafely
            what = (
                "holds pickled objects, refused without running them"
                if "GLOBAL" in str(e)
                else "is not a weights file"
            )
            fail(f"cannot load encoder weights {args.weights}: the file {what}")
        except (ValueError, RuntimeError, OSError, KeyError, EOFError) as e:
            fail(f"cannot load encoder weights {args.weights}: {str(e).splitlines()[0][:160]}")

    configure_torch(device)
    init_processes(device, proc)
    try:
        train(args, proc, device, amp, net, ckpt, train_pairs, val_pairs, bands, rgb)
    finally:
        release_tile_caches()  # --cache-tiles: other runs may prune them from now on
        if dist.is_initialized():
            dist.destroy_process_group()


def train(args, proc, device, amp, net, ckpt, train_pairs, val_pairs, bands, rgb) -> None:
    """Everything after the checks: statistics, the loop of epochs, checkpoints and logs."""
    last, best = args.out / "last.pt", args.out / "best.pt"
    if ckpt is None:  # band statistics and class pixel counts of the train split, computed once on rank 0
        stats = from_rank0(lambda: band_stats(args.data / "train", train_pairs), proc)
        stats = {"mean": stats["mean"], "std": stats["std"], "class_pixels": stats["class_pixels"]}
    else:
        stats = dict(ckpt["stats"], class_pixels=ckpt["class_pixels"])
    weight = class_weights(stats["class_pixels"], args.class_weights)
    criterion = make_criterion(args.loss, weight.to(device))

    net.to(device)
    if amp:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if dist.is_initialized():
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=3)
    start, best_miou, best_epoch = 0, -1.0, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start, best_miou, best_epoch = int(ckpt["epoch"]), float(ckpt["best_miou"]), int(ckpt["best_epoch"])

    caches: dict[str, Path | None] = {"train": None, "val": None}
    if args.cache_tiles:  # built by rank 0 (or found), then opened by every process
        for split, pairs in (("train", train_pairs), ("val", val_pairs)):
            caches[split] = from_rank0(
                lambda p=pairs, s=split: build_tile_cache(p, args.data / CACHE_DIR, s, max(args.workers, 1)),
                proc,
            )
    train_ds = TileDataset(train_pairs, len(bands), augment=True, cache=caches["train"])
    val_ds = TileDataset(val_pairs, len(bands), cache=caches["val"])
    norm = Normalize(stats, device)
    sampler = EpochSampler(len(train_ds), args.seed, proc)
    train_loader = make_loader(
        train_ds, sampler, args.batch_size, args.workers, device, args.seed + proc.rank
    )
    val_shard = list(range(proc.rank, len(val_ds), proc.world))  # no padding: every tile counted once
    val_loader = make_loader(val_ds, val_shard, args.batch_size, args.workers, device, args.seed)
    picks = sorted({round(i) for i in np.linspace(0, len(val_ds) - 1, min(args.log_tiles, len(val_ds)))})

    def checkpoint(
        epoch: int, metrics: dict | None, train_loss: float | None, val_loss: float | None
    ) -> dict:
        return make_checkpoint(
            net,
            bands,
            stats,
            epoch=epoch,
            options=plain_options(args),
            class_pixels=list(stats["class_pixels"]),
            class_weights=weight.tolist(),
            metrics=metrics,
            train_loss=train_loss,
            val_loss=val_loss,
            best_miou=best_miou,
            best_epoch=best_epoch,
            world_size=proc.world,
        )

    writer = None
    if proc.main:
        from torch.utils.tensorboard import SummaryWriter

        args.out.mkdir(parents=True, exist_ok=True)
        remove_partials(args.out)
        if ckpt is None:  # the starting point, so that even an interrupted first epoch can be resumed
            state = checkpoint(0, None, None, None)
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng_state())
            save_checkpoint(state, last)
        writer = SummaryWriter(str(args.out), purge_step=start + 1 if ckpt is not None else None)
        if ckpt is None:
            writer.add_text(
                "options",
                "  \n".join(f"--{k.replace('_', '-')} {v}" for k, v in plain_options(args).items()),
                0,
            )
        n_params = sum(p.numel() for p in net.parameters())
        print(
            f"training {args.encoder} U-Net ({n_params / 1e6:.1f} M parameters) on {len(train_ds)} train / "
            f"{len(val_ds)} val tiles, {len(bands)} bands, {device}{' (bf16, channels_last)' if amp else ''}"
            f"{f' x {proc.world} processes' if proc.world > 1 else ''}; run folder {args.out}"
            + (f"; resuming after epoch {start}" if ckpt is not None else "")
        )
        if args.class_weights != "none":
            shown = ", ".join(f"{c}: {weight[c]:.3g}" for c in colormap.CODES)
            print(f"class weights ({args.class_weights}): {shown}")
    barrier()

    old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    epoch, done = start, start  # done: the epoch last.pt holds
    metrics = None
    try:
        for epoch in range(start + 1, args.epochs + 1):
            if args.patience and epoch - 1 - best_epoch >= args.patience:
                if proc.main:
                    print(
                        f"stopping early: no better mIoU for {args.patience} epochs "
                        f"(best {best_miou:.4f}, epoch {best_epoch})"
                    )
                break
            seed_everything(derive_seed(args.seed, epoch, proc.rank))
            sampler.set_epoch(epoch)
            train_loss = train_one_epoch(
                model,
                train_loader,
                norm,
                criterion,
                optimizer,
                device,
                amp,
                f"epoch {epoch}/{args.epochs}",
                proc,
            )
            sync_buffers(net)
            val_loss, cm = evaluate(net, val_loader, norm, criterion, device, amp, proc)
            lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
            scheduler.step(val_loss)
            metrics = cm.compute({c: colormap.name(c) for c in colormap.CODES})
            miou = metrics["miou"] if metrics["miou"] is not None else 0.0
            improved = miou > best_miou
            if improved:
                best_miou, best_epoch = miou, epoch
            if proc.main:
                log_scalars(writer, epoch, train_loss, val_loss, lr, metrics)
                if args.log_images_every and (
                    epoch == 1 or epoch % args.log_images_every == 0 or epoch == args.epochs
                ):
                    log_pictures(writer, epoch, net, cm, val_ds, norm, picks, rgb, device, amp)
                writer.flush()
                state = checkpoint(epoch, metrics, train_loss, val_loss)
                if improved:
                    save_checkpoint(state, best)
                state.update(
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng_state()
                )
                done = epoch  # an interrupt during the save is held until last.pt is whole
                save_checkpoint(state, last)  # last: so that a kill before it repeats this epoch
                print(
                    f"epoch {epoch}/{args.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                    f"mIoU {miou:.4f}  lr {lr:.3g}" + ("  (best)" if improved else ""),
                    flush=True,
                )
            barrier()
    except KeyboardInterrupt:
        if proc.main:
            print(
                f"interrupted: {last} holds epoch {done} (saved as it ended); --resume continues from there",
                file=sys.stderr,
            )
        raise
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        if writer is not None:
            writer.close()
    if proc.main:
        if metrics is not None:
            print(format_table(metrics))
        print(f"best validation mIoU {best_miou:.4f} at epoch {best_epoch}: {best}")


def _raise_interrupt(signum, frame) -> None:
    """SIGTERM stops the run as Ctrl-C does (last.pt already holds the last finished epoch)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(run_main(main))
