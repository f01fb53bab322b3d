"""Train the land-cover model (a U-Net on a ResNet, or SegFormer) on the train split, validating on the
val split after every epoch.

Reads   <data>/train/ and <data>/val/ (img/ and mask/ tiles paired by name, move_images.py).
Writes  in the run folder (--out, default runs/<encoder>): last.pt after every epoch (everything
        --resume needs), best.pt (the epoch with the best validation mIoU, with the temperature that
        calibrates its confidence) and TensorBoard's event files; <data>/band_stats.json (the train
        split's band statistics, also carried in every checkpoint); with --cache-tiles, <data>/tile_cache/.

The defaults are the project's best measured recipe (AdamW, a warm-up and cosine counted in optimizer
steps, a full-resolution path, sqrt class weights, CutMix, a per-pixel branch: README "Results"). Same
--seed, same run: a run stopped at any moment and continued with --resume ends with the same weights
(bitwise on CPU). Under torchrun it runs DistributedDataParallel, one process per GPU. README section
5 says more.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import pickle
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import colormap
from landcover.calibration import TemperatureFit
from landcover.checkpoint import (
    CHECKPOINT_KEYS,
    CheckpointWriter,
    check_resumable,
    make_checkpoint,
    model_of,
    plain_options,
    read_checkpoint,
)
from landcover.common import (
    ArgumentParser,
    check_range,
    fail,
    first_line,
    progress,
    remove_partials,
    run_main,
)
from landcover.dataset import EpochSampler, TileDataset, make_batches, rare_class_weights, to_device
from landcover.distributed import (
    DEVICES,
    Precision,
    Proc,
    barrier,
    configure_torch,
    default_workers,
    derive_seed,
    from_rank0,
    pick_device,
    process_group,
    rng_state,
    seed_everything,
    set_rng_state,
    sum_over_processes,
    sync_buffers,
)
from landcover.evaluation import LossSum, evaluate
from landcover.figures import confusion_figure
from landcover.inference import tile_figure
from landcover.layout import tile_pairs
from landcover.losses import CLASS_WEIGHTS, LOSSES, class_weights, make_criterion
from landcover.metrics import ConfusionMatrix, format_table
from landcover.resident import ResidentLoader, hold_tiles
from landcover.stats import Normalize, band_stats
from landcover.tile_cache import CACHE_DIR, build_tile_cache, release_tile_caches
from landcover.tiles import TileInfo, check_tiles, scan_tiles
from landcover.transforms import jitter_bands, paste_boxes
from model import ARCHS, build_model

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "plateau")
SAMPLERS = ("uniform", "rare")
# The recipe: train.py's defaults. Chosen with bench/recipe.py on demo seed 0, reported on seeds 1-3.
RECIPE = dict(
    optimizer="adamw",
    weight_decay=0.01,
    lr=2e-3,
    schedule="cosine",
    warmup=0.05,
    full_res=32,
    loss="ce",
    class_weights="sqrt",
    sampler="uniform",
    rare_share=0.5,
    spectral=32,  # chosen on Aberystwyth's sparse labels (seed 0), held on seeds 1-2, full labels, demo
    cutmix=8,  # chosen on Aberystwyth's sparse labels (seed 0), checked on its full labels and the demo
    jitter=0.0,  # 0.1 tried on Aberystwyth's sparse labels, seeds 0-2: 0.852 -> 0.836
)
TEMPERATURE_PIXELS = 200_000  # val pixels sampled to fit the temperature
SHOW_EVERY = 1.0  # seconds between the progress bar's loss and speed (reading the loss waits for the GPU)
MIN_LR = 0.01  # --schedule cosine ends at this share of --lr
EPOCHS = 100  # the default budget, raised on a small train split to at least MIN_STEPS optimizer steps
MIN_STEPS = 600
# options that decide what a run computes: --resume refuses a last.pt written with other values
RESUME_OPTIONS = ("arch", "encoder", "batch_size", "seed", "max_tiles", *RECIPE)
# what a run from before an option did: it resumes so
BEFORE_OPTIONS = dict(cutmix=0, spectral=0, jitter=0.0)
ARCH_NAMES = {"unet": "U-Net", "segformer": "SegFormer"}
DEFAULT_ENCODER = {"unet": "resnet50", "segformer": "mit_b2"}
DEFAULT_OUT = "runs/<encoder>"  # e.g. runs/resnet50: the same command finds its run again with --resume


def build_parser() -> ArgumentParser:
    p = ArgumentParser.for_script(__doc__)
    add_run_options(p)
    add_model_options(p)
    add_recipe_options(p)
    add_speed_options(p)
    add_logging_options(p)
    return p


def add_run_options(p: ArgumentParser) -> None:
    """The run: its data, its folder, its seed, when it stops."""
    p.add_argument("--data", default="data", help="folder holding the train/ and val/ splits")
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="run folder for checkpoints and TensorBoard logs (--resume finds it)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    p.add_argument(
        "--epochs",
        type=int,
        help=f"total number of epochs (also when resuming); by default {EPOCHS}, or as many as give "
        f"{MIN_STEPS} optimizer steps on a small train split (a few hundred tiles)",
    )
    p.add_argument(
        "--patience", type=int, default=0, help="stop after N epochs without a better mIoU (0: never)"
    )
    p.add_argument(
        "--max-tiles",
        type=int,
        default=0,
        help="use a seeded sample of at most N tiles per split (smoke runs)",
    )


def add_model_options(p: ArgumentParser) -> None:
    """The model and its initialisation."""
    p.add_argument(
        "--arch",
        default="unet",
        choices=list(ARCHS),
        help="unet: a U-Net on a ResNet encoder; segformer: SegFormer (Mix Transformer encoder, all-MLP "
        "decoder), with the same full-resolution path (--full-res)",
    )
    p.add_argument(
        "--encoder",
        default=None,
        choices=[e for encoders in ARCHS.values() for e in encoders],
        help="unet: resnet18|resnet34|resnet50 (default resnet50); segformer: mit_b0|mit_b1|mit_b2 "
        "(default mit_b2)",
    )
    p.add_argument(
        "--weights",
        default="none",
        help="encoder initialisation: none (random); imagenet: torchvision's ResNet weights, downloaded "
        "once into the torch cache (offline: the error says which file to put where); or PATH to a "
        "torchvision ResNet state dict, or for segformer to the MiT ImageNet weights as their authors "
        "publish them (mit_b0.pth ...). The first convolution is adapted to the band count",
    )


def add_speed_options(p: ArgumentParser) -> None:
    """Where and how fast it trains (the same weights whatever these say, except the precision)."""
    p.add_argument(
        "--device", default="auto", choices=DEVICES, help="where to train (auto: the GPU when CUDA has one)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=12,
        help="tiles per batch, per process under torchrun; on a large GPU with --amp, 48 keeps it busy "
        "(raise --lr with it, see --lr)",
    )
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast and channels_last memory: on by default on CUDA GPUs with native bf16 (Ampere "
        "and later), where they are faster "
        "(see the README's Performance section); --no-amp trains in float32 (TF32 matrix products)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (CUDA; the first steps compile it): faster steps; where it cannot "
        "compile, one line says so and training goes on without it",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="DataLoader worker processes per training process (by default the node's cores shared among "
        "its training processes, at most 16)",
    )
    p.add_argument(
        "--cache-tiles",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"decode the train and val tiles once into uncompressed arrays in DATA/{CACHE_DIR}/ (as much "
        "disk as the uncompressed tiles: 1.9 MB per 300 x 300 x 10 tile; rebuilt when a tile changes) and "
        "hold them in memory, on the GPU when they fit, else in host memory (sampling, transforms and "
        "normalisation then run batch-wise on the device, no worker processes), else read them by memory "
        "map; the run says which and why. On by default on CUDA, where decoding every tile every epoch "
        "would starve the GPU; off elsewhere (--no-cache-tiles, --cache-tiles). With torchrun on several "
        "nodes, DATA must be on a filesystem they share",
    )


def add_logging_options(p: ArgumentParser) -> None:
    """TensorBoard pictures."""
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


def add_recipe_options(p: ArgumentParser) -> None:
    """How the model learns. The defaults (``RECIPE``) are the best recipe measured on the demo data
    (bench/recipe.py; the README's ablation table says what each choice bought)."""
    g = p.add_argument_group("recipe (defaults: the best measured, see the README)")
    g.add_argument(
        "--lr",
        type=float,
        default=RECIPE["lr"],
        help="peak learning rate (reached after the warm-up with --schedule cosine); scale it with the "
        "batch size (about sqrt(batch / 12) x the default)",
    )
    g.add_argument(
        "--loss",
        default=RECIPE["loss"],
        choices=LOSSES,
        help="cross-entropy, focal (gamma 2), soft Dice, CE + Dice, or CE + Lovasz-softmax (IoU surrogate)",
    )
    g.add_argument(
        "--class-weights",
        default=RECIPE["class_weights"],
        choices=CLASS_WEIGHTS,
        help="loss weight per class: none, inverse or sqrt (inverse square root) of the class's pixel "
        "frequency in the train split, normalised to mean 1",
    )
    g.add_argument(
        "--optimizer",
        default=RECIPE["optimizer"],
        choices=OPTIMIZERS,
        help="AdamW (decoupled weight decay) or Adam",
    )
    g.add_argument("--weight-decay", type=float, default=RECIPE["weight_decay"], help="AdamW's weight decay")
    add_schedule_options(g)


def add_schedule_options(g: argparse._ArgumentGroup) -> None:
    """The recipe's learning-rate schedule, tile sampling and full-resolution path."""
    g.add_argument(
        "--schedule",
        default=RECIPE["schedule"],
        choices=SCHEDULES,
        help="cosine: linear warm-up then cosine decay to 1%% of --lr, counted in optimizer steps (short and "
        "long runs, small and large splits behave alike); plateau: halve the rate when the validation "
        "loss stalls for 3 epochs",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=RECIPE["warmup"],
        help="share of the optimizer steps spent warming up (cosine)",
    )
    g.add_argument(
        "--sampler",
        default=RECIPE["sampler"],
        choices=SAMPLERS,
        help="uniform: every train tile once per epoch; rare: as many draws, with replacement, in "
        "proportion to the rare-class pixels a tile holds (see --rare-share)",
    )
    g.add_argument(
        "--rare-share",
        type=float,
        default=RECIPE["rare_share"],
        help="--sampler rare: share of the draws balanced over the classes (the rest uniform)",
    )
    g.add_argument(
        "--full-res",
        type=int,
        default=RECIPE["full_res"],
        help="channels of the full-resolution path (a conv block on the input joined before the last "
        "decoder block: keeps 1-2 px roads that the encoder's stride-2 stem loses; 0: none)",
    )
    g.add_argument(
        "--spectral",
        type=int,
        default=RECIPE["spectral"],
        help="channels of a per-pixel branch (an MLP on each pixel's bands) whose logits add to the "
        "network's: a classifier of single pixels inside it; 0: none",
    )
    g.add_argument(
        "--cutmix",
        type=int,
        default=RECIPE["cutmix"],
        help="boxes of another tile of the batch pasted into each train tile, image and labels alike "
        "(each side 10-35%% of the tile's): labelled pixels then also sit among neighbours not their own, "
        "which sparse (polygon) labels never show (README: real imagery and sparse labels); 0: none",
    )
    g.add_argument(
        "--jitter",
        type=float,
        default=RECIPE["jitter"],
        help="per-band brightness jitter of each train tile: every band scaled by 1 + s*N(0,1) and "
        "shifted by s*N(0,1) in units of its standard deviation, drawn per tile, for a model meant for "
        "other dates or scenes than its labels' (0.1 lost 0.016 mIoU within one scene: README); 0: none, "
        "at most 0.5",
    )


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Ranges of the numeric options; paths as Paths."""
    for name, low in (
        ("--batch-size", 1),
        ("--workers", 0),
        ("--max-tiles", 0),
        ("--cutmix", 0),
        ("--spectral", 0),
    ):
        check_range(name, getattr(args, name[2:].replace("-", "_")), low)
    if args.epochs is not None:
        check_range("--epochs", args.epochs, 1)
    check_range("--jitter", args.jitter, 0, 0.5)  # beyond, gains below 0 (bands flipped) are common
    for name in ("--patience", "--log-images-every", "--log-tiles"):
        check_range(name, getattr(args, name[2:].replace("-", "_")), 0)
    check_range("--lr", args.lr, 0, low_open=True)
    check_range("--weight-decay", args.weight_decay, 0)
    check_range("--full-res", args.full_res, 0)
    for name in ("--warmup", "--rare-share"):
        value = getattr(args, name[2:].replace("-", "_"))
        if not 0 <= value <= 1:
            fail(f"{name} must be between 0 and 1, not {value}")
    args.encoder = args.encoder or DEFAULT_ENCODER[args.arch]
    if args.encoder not in ARCHS[args.arch]:
        fail(
            f"--encoder {args.encoder} is not an encoder of --arch {args.arch} "
            f"({', '.join(ARCHS[args.arch])})"
        )
    args.out = Path(args.out.replace("<encoder>", args.encoder))
    args.data = Path(args.data)
    args.rgb = list(args.rgb)
    return args


# ---------------------------------------------------------------------------------------------------
# Set-up: every check before anything is written


@dataclass(frozen=True)
class FastPath:
    """The GPU's fast defaults, decided once for the run (``fast_path``)."""

    precision: Precision  # bf16 autocast and channels_last on CUDA GPUs with native bf16, else float32
    cache_tiles: bool  # decode the tiles once and hold them in memory (on by default on CUDA)
    background_saves: bool  # best.pt and last.pt written by a thread while training goes on (CUDA)


def fast_path(args: argparse.Namespace, device: torch.device, proc: Proc) -> FastPath:
    """What runs fast on ``device``, unless the options say otherwise; the reason printed where the
    options ask for what the device cannot do."""
    cuda = device.type == "cuda"
    precision = Precision.for_device(Precision.fast_on(device) if args.amp is None else args.amp, device)
    if args.amp and not precision.amp and proc.main:
        print(f"--amp applies to CUDA only: training in float32 on {device}", file=sys.stderr)
    elif args.amp is None and cuda and not precision.amp and proc.main:
        print(
            "this GPU has no native bf16: training in float32 (--amp forces bf16 autocast)", file=sys.stderr
        )
    cache = args.cache_tiles if args.cache_tiles is not None else cuda
    return FastPath(precision, cache, background_saves=cuda)  # see checkpoint.CheckpointWriter


@dataclass
class Setup:
    """What ``main`` settles before anything is written: where the run computes, its tiles and its model."""

    proc: Proc
    device: torch.device
    fast: FastPath
    train_pairs: list[tuple[Path, Path]]
    val_pairs: list[tuple[Path, Path]]
    bands: list[str]
    rgb: list[int]
    tile_size: tuple[int, int]  # (height, width) of every tile
    net: nn.Module  # the bare network: what checkpoints save
    resumed: dict | None  # last.pt when resuming

    @property
    def precision(self) -> Precision:
        return self.fast.precision


def sample_pairs(pairs: list, n: int, seed: int) -> list:
    """At most ``n`` pairs (all when n is 0), a seeded sample kept in name order."""
    if n <= 0 or n >= len(pairs):
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in keep]


def load_splits(data: Path, max_tiles: int, seed: int) -> tuple[list, list, TileInfo]:
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


def new_model(args: argparse.Namespace, bands: int, rgb: Sequence[int]) -> nn.Module:
    """A fresh model, seeded; encoder weights that cannot be loaded are one line."""
    if args.weights not in ("none", "imagenet"):
        refuse_pipeline_checkpoint(Path(args.weights))
    seed_everything(args.seed)
    try:
        return build_model(
            args.encoder,
            bands,
            colormap.NUM_CLASSES,
            args.weights,
            rgb=rgb,
            arch=args.arch,
            full_res=args.full_res,
            spectral=args.spectral,
        )
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
        fail(f"cannot load encoder weights {args.weights}: {first_line(e)}")


def refuse_pipeline_checkpoint(path: Path) -> None:
    """--weights takes an encoder's weights: a checkpoint of this pipeline given there is checked as
    every checkpoint is (a damaged one is refused as damaged), then refused with what to do instead."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # build_model's reading of the file says what is wrong with it
        return
    if isinstance(state, dict) and all(k in state for k in CHECKPOINT_KEYS):
        read_checkpoint(path)
        fail(
            f"--weights takes encoder weights (torchvision's ResNet, MiT's), and {path} is a checkpoint of "
            f"train.py: continue its run with --resume --out {path.parent}"
        )


def resumed_model(args: argparse.Namespace, bands: list[str]) -> tuple[nn.Module, dict]:
    """The model of the run in ``--out`` and its last.pt, refused unless it continues this run."""
    last = args.out / "last.pt"
    if not last.is_file():
        fail(f"nothing to resume: no last.pt in {args.out}")
    ckpt = read_checkpoint(last)
    keys = RESUME_OPTIONS if args.schedule == "plateau" else (*RESUME_OPTIONS, "epochs")  # steps counted
    check_resumable(ckpt, last, vars(args), keys, bands, BEFORE_OPTIONS)
    return model_of(ckpt, last), ckpt


def epoch_budget(epochs: int | None, train_tiles: int, batch_size: int, proc: Proc) -> int:
    """--epochs as given; by default EPOCHS, or on a small split as many as make MIN_STEPS optimizer
    steps: 100 epochs of 50 tiles are 500 steps, too few for a network to learn from scratch."""
    if epochs is not None:
        return epochs
    steps = math.ceil(math.ceil(train_tiles / proc.world) / batch_size)  # as the loaders batch
    if EPOCHS * steps >= MIN_STEPS:
        return EPOCHS
    epochs = math.ceil(MIN_STEPS / steps)
    if proc.main:
        print(
            f"{epochs} epochs ({epochs * steps} optimizer steps of {steps} on {train_tiles} train tiles): "
            f"a small split trains for at least {MIN_STEPS} steps (--epochs sets the number)",
            flush=True,
        )
    return epochs


def set_up(args: argparse.Namespace) -> Setup:
    """Devices, splits, bands and the model (new, or from last.pt with --resume): all checked."""
    proc = Proc.from_env()
    device = pick_device(args.device, proc)
    fast = fast_path(args, device, proc)
    train_pairs, val_pairs, info = load_splits(args.data, args.max_tiles, args.seed)
    args.epochs = epoch_budget(args.epochs, len(train_pairs), args.batch_size, proc)
    if proc.main:  # the train tiles are all read for their statistics; the val tiles not before epoch 1
        check_tiles(val_pairs, max(args.workers, 1), "checking val tiles")
    bands = list(info.descriptions)
    try:
        rgb = colormap.rgb_band_indices(bands, args.rgb)
    except ValueError as e:
        fail(f"{e} ({args.data / 'train'})")
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out is a file, not a run folder: {args.out}")
    if args.resume:
        net, resumed = resumed_model(args, bands)
    else:
        if any(args.out.glob("*.pt")) or any(args.out.glob("events.out.tfevents.*")):
            fail(
                f"run folder already holds a run: {args.out} "
                "(add --resume to continue it, or choose another --out)"
            )
        net, resumed = new_model(args, info.bands, rgb), None
    tile_size = (info.height, info.width)
    return Setup(proc, device, fast, train_pairs, val_pairs, bands, rgb, tile_size, net, resumed)


def check_single_tile_batch(args: argparse.Namespace, s: Setup) -> None:
    """Fail now, not at an epoch's last step, when an epoch's last batch holds a single tile that batch
    norm cannot train on (tiles so small that the deepest feature map is 1 x 1: one value per channel)."""
    draws, batch_size, (height, width) = (
        math.ceil(len(s.train_pairs) / s.proc.world),
        args.batch_size,
        s.tile_size,
    )
    if draws % batch_size != 1 and batch_size != 1:
        return
    net = s.net
    trial = copy.deepcopy(net).train()  # the trial moves batch-norm statistics: not the run's model's
    try:
        with torch.no_grad():
            trial(torch.zeros(1, len(s.bands), height, width))
    except ValueError:  # batch norm's "Expected more than 1 value per channel when training"
        fail(
            f"batch norm cannot train on a batch of one {height} x {width} px tile: {draws} train "
            f"tiles per process leave one in the last batch of --batch-size {batch_size}; choose another "
            "--batch-size, or larger tiles"
        )


# ---------------------------------------------------------------------------------------------------
# The run: what every epoch uses, made once


@dataclass
class Run:
    """The objects of a training run and the state last.pt saves (epoch, best mIoU, optimizer, RNG)."""

    args: argparse.Namespace
    setup: Setup
    stats: dict  # band mean and std of the train split, and its class pixel counts
    weight: torch.Tensor  # loss weight per class
    train_net: nn.Module  # setup.net, or its DistributedDataParallel wrapper (compiled): what trains
    eval_net: nn.Module  # setup.net (compiled with --compile): what validates, on each process alone
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    saver: CheckpointWriter  # best.pt and last.pt (rank 0); saver.written: the epoch each file holds
    epoch: int = 0  # the last finished epoch (what last.pt holds)
    best_miou: float = -1.0
    best_epoch: int = 0
    temperature: float = 1.0  # divides the best weights' logits: their softmax is calibrated on val
    writer: object = field(default=None, repr=False)  # TensorBoard, rank 0 only

    def checkpoint(
        self, metrics: dict | None = None, losses: tuple = (None, None), training: bool = False
    ) -> dict:
        """best.pt's content; with ``training``, last.pt's (optimizer, scheduler and RNG states too)."""
        ckpt = make_checkpoint(
            self.setup.net,
            self.setup.bands,
            self.stats,
            epoch=self.epoch,
            options=plain_options(vars(self.args)),
            class_pixels=list(self.stats["class_pixels"]),
            class_weights=self.weight.tolist(),
            metrics=metrics,
            train_loss=losses[0],
            val_loss=losses[1],
            best_miou=self.best_miou,
            best_epoch=self.best_epoch,
            temperature=self.temperature,
            world_size=self.setup.proc.world,
        )
        if training:
            ckpt.update(
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), rng=rng_state()
            )
        return ckpt


def train_statistics(args: argparse.Namespace, s: Setup) -> dict:
    """Band mean and std and class pixel counts of the train split (rank 0 computes them once, then
    they are read from band_stats.json); a resumed run keeps last.pt's mean and std, as its weights do."""
    stats = from_rank0(lambda: band_stats(args.data / "train", s.train_pairs), s.proc)
    keep = ("mean", "std", "class_pixels", "tile_class_pixels")
    stats = {k: stats[k] for k in keep}
    if s.resumed is not None:
        stats.update(s.resumed["stats"], class_pixels=s.resumed["class_pixels"])
    return stats


def make_optimizer(args: argparse.Namespace, net: nn.Module, steps_per_epoch: int):
    """AdamW (or Adam) and the learning-rate schedule: ``cosine`` is stepped after every optimizer step
    (a linear warm-up over --warmup of the steps, then a cosine to MIN_LR x --lr at the last step);
    ``plateau`` after every epoch, with the validation loss."""
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    if args.schedule == "plateau":
        return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    total = max(1, args.epochs * steps_per_epoch)
    warmup = max(1, round(args.warmup * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return MIN_LR + (1 - MIN_LR) * 0.5 * (1 + math.cos(math.pi * t))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def compile_model(model: nn.Module, s: Setup, batch_size: int) -> tuple[nn.Module, nn.Module]:
    """``torch.compile`` of what trains (``model``: the net or its DDP wrapper) and of the bare net that
    validates, both compiled now on a full batch of random tiles (a failure is one line here, not a
    traceback in the middle of an epoch); or both as they were where it cannot compile. Shapes are
    static (``dynamic=False``): a last, smaller batch compiles once more, instead of every batch running
    the slower dynamic-shape graph that a second batch size would otherwise switch to. The batch-norm
    statistics that the trial forward pass moves are put back, so --compile trains the same weights."""
    buffers = {k: v.clone() for k, v in s.net.named_buffers()}
    channels, (height, width) = len(s.bands), s.tile_size
    x = torch.randn(batch_size, channels, height, width, device=s.device).contiguous(
        memory_format=s.precision.memory_format
    )
    try:
        train, validate = torch.compile(model, dynamic=False), torch.compile(s.net, dynamic=False)
        with s.precision.autocast(s.device):
            train(x).float().sum().backward()
        s.net.eval()
        with torch.no_grad(), s.precision.autocast(s.device):
            validate(x)
    except Exception as e:  # any backend failure: no compiler, an unsupported device or op
        if s.proc.main:
            print(
                f"--compile: torch.compile failed here ({first_line(e)}); training without it",
                file=sys.stderr,
            )
        train, validate = model, s.net
    finally:
        s.net.train()
        s.net.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in s.net.named_buffers():
                v.copy_(buffers[k])
    return train, validate


def start_run(args: argparse.Namespace, s: Setup, stats: dict, steps_per_epoch: int) -> Run:
    """The model on the device (wrapped for DDP under torchrun), the loss weights, the optimizer and
    its schedule; with --resume, last.pt's state restored."""
    net = s.net.to(s.device, memory_format=s.precision.memory_format)
    train_net = eval_net = net
    if s.proc.torchrun:
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[s.device.index] if s.device.type == "cuda" else None
        )
    if args.compile:
        train_net, eval_net = compile_model(train_net, s, args.batch_size)
    optimizer, scheduler = make_optimizer(args, net, steps_per_epoch)
    weight = class_weights(stats["class_pixels"], args.class_weights)
    saver = CheckpointWriter(background=s.fast.background_saves)
    run = Run(args, s, stats, weight, train_net, eval_net, optimizer, scheduler, saver)
    if s.resumed is not None:
        optimizer.load_state_dict(s.resumed["optimizer"])
        scheduler.load_state_dict(s.resumed["scheduler"])
        set_rng_state(s.resumed["rng"])
        run.epoch, run.best_miou = int(s.resumed["epoch"]), float(s.resumed["best_miou"])
        run.best_epoch = int(s.resumed["best_epoch"])
        saver.written[args.out / "last.pt"] = run.epoch
        run.temperature = float(s.resumed.get("temperature", 1.0))
    return run


@dataclass
class Data:
    """The loaders of a run and what validation pictures need."""

    train: DataLoader | ResidentLoader
    val: DataLoader | ResidentLoader
    sampler: EpochSampler
    val_tiles: TileDataset
    norm: Normalize
    picks: list[int]  # the val tiles pictured in TensorBoard


def make_data(args: argparse.Namespace, s: Setup, stats: dict) -> Data:
    """Train and val batches over this process's shards: from the tiles held in memory when they are
    cached and fit (``resident``), else from worker processes reading the cache or the files."""
    cached = s.fast.cache_tiles
    caches: dict[str, Path | None] = {"train": None, "val": None}
    if cached:  # built by rank 0 (or found), then opened by every process
        for split, pairs in (("train", s.train_pairs), ("val", s.val_pairs)):
            caches[split] = from_rank0(
                lambda p=pairs, t=split: build_tile_cache(p, args.data / CACHE_DIR, t, max(args.workers, 1)),
                s.proc,
            )
    train_ds = TileDataset(s.train_pairs, len(s.bands), cache=caches["train"])  # the sampler draws k
    val_ds = TileDataset(s.val_pairs, len(s.bands), cache=caches["val"])
    weights = None
    if args.sampler == "rare":
        weights = rare_class_weights(stats["tile_class_pixels"], args.rare_share)
    sampler = EpochSampler(len(train_ds), args.seed, s.proc, weights=weights)
    val_shard = list(range(s.proc.rank, len(val_ds), s.proc.world))  # no padding: every tile counted once
    held = [None, None]
    if cached:
        tiles, placement = hold_tiles([caches["train"], caches["val"]], s.device)
        held = tiles or held
        if s.proc.main:
            print(placement.reason, flush=True)
    train = make_batches(
        train_ds, sampler, args.batch_size, s.device, held=held[0], workers=args.workers,
        seed=args.seed + s.proc.rank,
    )  # fmt: skip
    val = make_batches(
        val_ds, val_shard, args.batch_size, s.device, held=held[1], workers=args.workers, seed=args.seed
    )
    picks = sorted({round(i) for i in np.linspace(0, len(val_ds) - 1, min(args.log_tiles, len(val_ds)))})
    return Data(train, val, sampler, val_ds, Normalize(stats, s.device), picks)


def open_run_folder(run: Run) -> None:
    """Rank 0: the run folder, a first last.pt (even an interrupted first epoch can be resumed),
    TensorBoard (history after the resumed epoch purged) and what the run is, printed."""
    args, s = run.args, run.setup
    if not s.proc.main:
        return
    from torch.utils.tensorboard import SummaryWriter

    args.out.mkdir(parents=True, exist_ok=True)
    remove_partials(args.out)
    if s.resumed is None:
        run.saver.save([(run.checkpoint(training=True), args.out / "last.pt")], run.epoch)
    run.writer = SummaryWriter(str(args.out), purge_step=run.epoch + 1 if s.resumed is not None else None)
    if s.resumed is None:
        options = "  \n".join(f"--{k.replace('_', '-')} {v}" for k, v in plain_options(vars(args)).items())
        run.writer.add_text("options", options, 0)
    n_params = sum(p.numel() for p in s.net.parameters())
    print(
        f"training {ARCH_NAMES[args.arch]} {args.encoder} ({n_params / 1e6:.1f} M parameters) on "
        f"{len(s.train_pairs)} train / "
        f"{len(s.val_pairs)} val tiles, {len(s.bands)} bands, {s.device} ({s.precision.describe()})"
        f"{f' x {s.proc.world} processes' if s.proc.world > 1 else ''}; run folder {args.out}"
        + (f"; resuming after epoch {run.epoch}" if s.resumed is not None else "")
    )
    if args.class_weights != "none":
        shown = ", ".join(f"{c}: {run.weight[c]:.3g}" for c in colormap.CODES)
        print(f"class weights ({args.class_weights}): {shown}")


# ---------------------------------------------------------------------------------------------------
# One epoch of training, one pass of validation


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: Callable,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
) -> torch.Tensor:
    """One optimizer step on a batch already on the device; the loss."""
    with precision.autocast(x.device):
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train_one_epoch(run: Run, data: Data, criterion: Callable, desc: str) -> float:
    """Train over this process's shard; return the mean loss per tile over all processes."""
    s = run.setup
    run.train_net.train()
    losses, tiles = LossSum(), 0
    start = shown = time.perf_counter()
    bar = progress(total=len(data.train), desc=desc, unit="batch", leave=False, disable=not s.proc.main)
    for raw, y in data.train:
        x, y = to_device(raw, y, data.norm, s.device, s.precision.memory_format)
        x, y = paste_boxes(x, y, run.args.cutmix)  # each returns its input unchanged at 0
        x = jitter_bands(x, run.args.jitter).contiguous(memory_format=s.precision.memory_format)
        loss = train_step(run.train_net, x, y, criterion, run.optimizer, s.precision)
        if run.args.schedule != "plateau":
            run.scheduler.step()
        losses.add(loss, len(x))
        tiles += len(x)
        if s.proc.main and time.perf_counter() - shown >= SHOW_EVERY:
            shown = time.perf_counter()
            speed = tiles * s.proc.world / (shown - start)
            bar.set_postfix(loss=f"{losses.mean():.4f}", tiles_s=f"{speed:.1f}", refresh=False)
        bar.update()
    bar.close()
    loss_sum, tiles = sum_over_processes(*losses.read(), device=s.device)
    return loss_sum / max(tiles, 1)


def validate(run: Run, data: Data, criterion: Callable) -> tuple[float, ConfusionMatrix, TemperatureFit]:
    """Loss per tile and one confusion matrix over the whole val split, summed over all processes; and
    a seeded sample of the val pixels' logits, to fit the temperature that calibrates the confidence."""
    s = run.setup
    s.net.eval()
    batches = progress(data.val, desc="validation", unit="batch", leave=False, disable=not s.proc.main)
    fit = TemperatureFit(max_pixels=TEMPERATURE_PIXELS, seed=run.args.seed)
    ev = evaluate(
        run.eval_net, batches, data.norm, s.device, precision=s.precision, criterion=criterion, fit=fit
    )
    ev.cm.reduce_from_all_processes()
    fit.reduce_from_all_processes()
    loss_sum, tiles = sum_over_processes(*ev.losses.read(), device=s.device)
    return loss_sum / max(tiles, 1), ev.cm, fit


# ---------------------------------------------------------------------------------------------------
# What rank 0 records after each epoch: TensorBoard, best.pt, last.pt


def log_epoch(
    run: Run, data: Data, losses: tuple[float, float], lr: float, metrics: dict, cm: ConfusionMatrix
) -> None:
    """Losses, LR and the metrics by class name; every --log-images-every epochs, pictures too."""
    w, epoch, args = run.writer, run.epoch, run.args
    w.add_scalar("Loss/train", losses[0], epoch)
    w.add_scalar("Loss/val", losses[1], epoch)
    w.add_scalar("LR", lr, epoch)
    w.add_scalar("Temperature/best", run.temperature, epoch)
    if metrics["miou"] is not None:
        w.add_scalar("mIoU/val", metrics["miou"], epoch)
        w.add_scalar("mDice/val", metrics["mean_dice"], epoch)
        w.add_scalar("Accuracy/val", metrics["overall_accuracy"], epoch)
    for pc in metrics["per_class"].values():
        if pc["iou"] is not None:  # None: class absent from truth and prediction
            w.add_scalar(f"IoU/{pc['name']}", pc["iou"], epoch)
            w.add_scalar(f"Dice/{pc['name']}", pc["dice"], epoch)
    every = args.log_images_every
    if every and (epoch == 1 or epoch % every == 0 or epoch == args.epochs):
        w.add_figure("Confusion matrix/val", confusion_figure(cm.mat.numpy(), f"epoch {epoch}"), epoch)
        for i in data.picks:
            raw, y = data.val_tiles[i]
            stem = data.val_tiles.pairs[i][0].stem
            fig = tile_figure(
                run.setup.net, raw, y, data.norm, run.setup.rgb, f"{stem}, epoch {epoch}", run.setup.precision
            )
            w.add_figure(f"Validation/{stem}", fig, epoch)
    w.flush()


def save_epoch(run: Run, metrics: dict, losses: tuple[float, float], improved: bool) -> None:
    """best.pt when the epoch improved on the best mIoU, then last.pt, written while the next epoch
    trains (``CheckpointWriter``): a kill before last.pt is whole repeats this epoch on --resume."""
    out = run.args.out
    best = [(run.checkpoint(metrics, losses), out / "best.pt")] if improved else []
    run.saver.save([*best, (run.checkpoint(metrics, losses, training=True), out / "last.pt")], run.epoch)


# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (last.pt already holds the last finished epoch)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def stop_early(run: Run, epoch: int) -> bool:
    """--patience: stop when that many epochs went by without a better validation mIoU."""
    patience = run.args.patience
    if not patience or epoch - 1 - run.best_epoch < patience:
        return False
    if run.setup.proc.main:
        print(
            f"stopping early: no better mIoU for {patience} epochs "
            f"(best {run.best_miou:.4f}, epoch {run.best_epoch})"
        )
    return True


def end_epoch(run: Run, epoch: int, val_loss: float, metrics: dict, calibration: TemperatureFit) -> bool:
    """The epoch is done: the plateau schedule learns its validation loss, and a better mIoU makes these
    weights the best, with the temperature fitted on its validation pixels. Whether it improved."""
    if run.args.schedule == "plateau":
        run.scheduler.step(val_loss)
    miou = metrics["miou"] if metrics["miou"] is not None else 0.0
    improved = miou > run.best_miou
    if improved:
        run.best_miou, run.best_epoch = miou, epoch
        run.temperature = calibration.fit()
    run.epoch = epoch
    return improved


def blind_spots(class_pixels: Sequence[int], metrics: dict) -> str | None:
    """A line naming the classes the train split teaches and the val split lacks: the best epoch is chosen
    blind to their errors (sparse labels: on Aberystwyth the best epoch mapped half the water as forest
    where the last mapped it right)."""
    blind = [c for c in colormap.CODES if class_pixels[c] and not metrics["per_class"][str(c)]["support"]]
    if not blind:
        return None
    named = ", ".join(f"{c} {colormap.name(c)} ({class_pixels[c]:,} train px)" for c in blind)
    return (
        f"the val split has no pixel of {named}: best.pt is chosen blind to their errors; score last.pt "
        "too on a test split that has them (README: real imagery and sparse labels)"
    )


def epoch_line(run: Run, losses: tuple[float, float], lr: float, metrics: dict, improved: bool) -> str:
    miou = metrics["miou"] if metrics["miou"] is not None else 0.0
    return (
        f"epoch {run.epoch}/{run.args.epochs}  train loss {losses[0]:.4f}  val loss {losses[1]:.4f}  "
        f"mIoU {miou:.4f}  lr {lr:.3g}" + ("  (best)" if improved else "")
    )


def fit(args: argparse.Namespace, s: Setup) -> None:
    """The recipe: set up once, then per epoch train, validate, log and save."""
    stats = train_statistics(args, s)  # every train tile read: a damaged one is found first
    check_single_tile_batch(args, s)
    data = make_data(args, s, stats)
    run = start_run(args, s, stats, len(data.train))
    criterion = make_criterion(args.loss, run.weight.to(s.device))
    names = {c: colormap.name(c) for c in colormap.CODES}
    open_run_folder(run)
    barrier()
    metrics = None
    try:
        with sigterm_as_interrupt():
            first = run.epoch + 1
            for epoch in range(first, args.epochs + 1):
                if stop_early(run, epoch):
                    break
                seed_everything(derive_seed(args.seed, epoch, s.proc.rank))
                data.sampler.set_epoch(epoch)
                train_loss = train_one_epoch(run, data, criterion, f"epoch {epoch}/{args.epochs}")
                sync_buffers(s.net)
                val_loss, cm, calibration = validate(run, data, criterion)
                lr = run.optimizer.param_groups[0]["lr"]  # the rate this epoch ended with
                metrics = cm.compute(names)
                improved = end_epoch(run, epoch, val_loss, metrics, calibration)
                if s.proc.main and epoch == first and (line := blind_spots(stats["class_pixels"], metrics)):
                    print(line, flush=True)
                if s.proc.main:
                    log_epoch(run, data, (train_loss, val_loss), lr, metrics, cm)
                    save_epoch(run, metrics, (train_loss, val_loss), improved)
                    print(epoch_line(run, (train_loss, val_loss), lr, metrics, improved), flush=True)
                barrier()
        run.saver.wait()
    except KeyboardInterrupt:
        run.saver.wait()
        if s.proc.main:
            print(
                f"interrupted: {args.out / 'last.pt'} holds epoch {run.saver.written[args.out / 'last.pt']} "
                "(saved as it ended); "
                "--resume continues from there",
                file=sys.stderr,
            )
        raise
    finally:
        if run.writer is not None:
            run.writer.close()
    if s.proc.main:
        if metrics is not None:
            print(format_table(metrics))
        print(
            f"best validation mIoU {run.best_miou:.4f} at epoch {run.best_epoch}, confidence temperature "
            f"{run.temperature:.3f} (fitted on val): {args.out / 'best.pt'}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = check_args(build_parser().parse_args(argv))
    s = set_up(args)
    configure_torch(s.device, deterministic=True)
    with process_group(s.device, s.proc):
        try:
            fit(args, s)
        finally:
            release_tile_caches()  # --cache-tiles: other runs may prune them from now on


if __name__ == "__main__":
    sys.exit(run_main(main))
