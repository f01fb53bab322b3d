"""Model input and output shared by test_model.py and predict.py: device, checkpoint, bands, class codes.

Middle floor: builds on dataset.py (checkpoints) and colormap.py (codes). The model has one output per
code 0..12, but code 0 (nodata) is never predicted on a valid pixel: the class probabilities are a
softmax over the outputs of codes 1..12 (code 0 gets probability 0) and the predicted code is the best
of codes 1..12 (``model.predict_classes``). With ``tta`` the probabilities are averaged over the four
flips of the input (none, left-right, up-down, both).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from colormap import NUM_CLASSES
from common import fail
from dataset import load_checkpoint
from model import UNet, predict_classes

# train.py's default run folder is runs/<encoder>, its default encoder resnet50
DEFAULT_CHECKPOINT = "runs/resnet50/best.pt"
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # the dims each TTA pass flips
GENERIC_BAND = re.compile(r"^(band\s*\d+)?$", re.IGNORECASE)  # "", "band3": a band the file does not name


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu`` or ``cuda``; CUDA asked for but absent fails."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            fail("--device cuda: no CUDA device is available (use --device cpu or auto)")
        torch.backends.cudnn.benchmark = True  # every window or tile has the same size
    return torch.device(name)


def results_folder(checkpoint: str | Path) -> Path:
    """The default results folder of a checkpoint: results/<its run folder> (runs/x/best.pt: results/x)."""
    return Path("results") / Path(checkpoint).resolve().parent.name


def load_model(path: str | Path, device: torch.device) -> tuple[UNet, dict]:
    """A checkpoint's model in eval mode on ``device``, and the checkpoint; an inconsistent one fails."""
    net, ckpt = load_checkpoint(path, device)
    n = net.config["in_channels"]
    bands, stats = ckpt["bands"], ckpt["stats"]
    if not (len(bands) == n == len(stats["mean"]) == len(stats["std"])):
        fail(
            f"checkpoint is inconsistent: {len(bands)} band names, {len(stats['mean'])} band statistics, "
            f"a model for {n} bands: {path}"
        )
    if net.config["num_classes"] != NUM_CLASSES:
        fail(f"checkpoint model has {net.config['num_classes']} outputs, expected {NUM_CLASSES}: {path}")
    return net, ckpt


def _band_name(description: str | None) -> str:
    """A description as compared: ``s2_april:B4``, ``B4``; the band part '' when the file does not name it."""
    scene, _, band = (description or "").strip().rpartition(":")
    band = "" if GENERIC_BAND.match(band.strip()) else band.strip()
    return f"{scene.strip()}:{band}" if scene.strip() else band


def _same_band(expected: str | None, found: str | None) -> bool:
    """Equal scene parts where both have one, equal band parts where both name one."""
    e_scene, _, e_band = _band_name(expected).rpartition(":")
    f_scene, _, f_band = _band_name(found).rpartition(":")
    return (not (e_scene and f_scene) or e_scene == f_scene) and (not (e_band and f_band) or e_band == f_band)


def check_bands(expected: Sequence[str], found: Sequence[str | None], what: str) -> None:
    """Fail unless ``found`` has the checkpoint's band count and, where both name a band, the same bands.

    Bands a file leaves unnamed (no description, or ``bandN``) are checked by count and position only;
    for stacked tiles (``s2_april:B4``) the scene part is compared too.
    """
    if len(found) != len(expected):
        fail(f"{what} has {len(found)} bands, the checkpoint expects {len(expected)} ({_short(expected)})")
    for i, (e, f) in enumerate(zip(expected, found, strict=True)):
        if not _same_band(e, f):
            fail(
                f"{what}: band {i + 1} is {_band_name(f)}, the checkpoint expects {_band_name(e)} "
                f"(its bands, in order: {_short(expected)})"
            )


def _short(names: Sequence[str], keep: int = 12) -> str:
    names = [str(n) for n in names]
    return " ".join(names) if len(names) <= keep else " ".join(names[:keep]) + f" ... ({len(names)} in all)"


@torch.inference_mode()
def class_probabilities(net: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(B, C, H, W) normalised input -> (B, 13, H, W) float32 probabilities, channel k = code k.

    A softmax over codes 1..12; code 0 (nodata) gets 0. With ``tta``, the mean over four flips.
    """
    flips = FLIPS if tta else FLIPS[:1]
    probs = None
    for dims in flips:
        p = net(x.flip(dims) if dims else x).float()
        p[:, 1:] = p[:, 1:].softmax(dim=1)  # in place of the logits: no second (B, 13, H, W) buffer
        p[:, 0] = 0
        p = p.flip(dims) if dims else p
        probs = p if probs is None else probs.add_(p)
    return probs / len(flips) if len(flips) > 1 else probs


def codes_from_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """(B, 13, H, W) probabilities (or any scores, channel k = code k) -> (B, H, W) uint8 codes 1..12."""
    return predict_classes(probs).to(torch.uint8)


def predict_codes(net: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(B, C, H, W) normalised input -> (B, H, W) uint8 codes 1..12 (the caller sets nodata to 0)."""
    return codes_from_probabilities(class_probabilities(net, x, tta))
