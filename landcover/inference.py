"""What the model's users share (test_model.py, predict.py, train.py): bands, class codes, tile pictures.

Middle floor: rests on tiles.py, stats.py, distributed.py and colormap.py. A checkpoint's bands are
matched to a file's by count, position and name (``check_bands``). The model has one output per
code 0..12, but code 0 (nodata) is never predicted on a valid pixel: the class probabilities are a
softmax over the outputs of codes 1..12 (code 0 gets probability 0) and the predicted code is the best
of codes 1..12 (``model.predict_classes``). With ``tta`` the probabilities are averaged over the four
flips of the input (none, left-right, up-down, both).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from colormap import NODATA, comparison_figure, stretch_rgb
from landcover.calibration import probabilities
from landcover.common import fail
from landcover.distributed import Precision
from landcover.stats import Normalize
from landcover.tiles import valid_pixels
from model import predict_classes

# train.py's default run folder is runs/<encoder>, its default encoder resnet50
DEFAULT_CHECKPOINT = "runs/resnet50/best.pt"
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # the dims each TTA pass flips
GENERIC_BAND = re.compile(r"^(band\s*\d+)?$", re.IGNORECASE)  # "", "band3": a band the file does not name


def results_folder(checkpoint: str | Path) -> Path:
    """The default results folder of a checkpoint: results/<its run folder> (runs/x/best.pt: results/x)."""
    return Path("results") / Path(checkpoint).resolve().parent.name


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


def flipped_logits(net: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> Iterator[torch.Tensor]:
    """The model's float32 logits (B, 13, H, W) of ``x``; with ``tta``, of its four flips, each flipped
    back onto the input's pixels."""
    for dims in FLIPS if tta else FLIPS[:1]:
        z = net(x.flip(dims) if dims else x).float()
        yield z.flip(dims) if dims else z


@torch.inference_mode()
def class_probabilities(
    net: torch.nn.Module, x: torch.Tensor, tta: bool = False, temperature: float = 1.0
) -> torch.Tensor:
    """(B, C, H, W) normalised input -> (B, 13, H, W) float32 probabilities, channel k = code k.

    A softmax over codes 1..12 of the logits divided by ``temperature`` (the checkpoint's, fitted on
    the validation split: the top probability then means what it says); code 0 (nodata) gets 0. With
    ``tta``, the mean over four flips.
    """
    probs, n = None, 0
    for z in flipped_logits(net, x, tta):
        p = probabilities(z, temperature)
        probs, n = (p if probs is None else probs.add_(p)), n + 1
    return probs / n if n > 1 else probs


def codes_from_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """(B, 13, H, W) probabilities (or any scores, channel k = code k) -> (B, H, W) uint8 codes 1..12."""
    return predict_classes(probs).to(torch.uint8)


def predict_codes(net: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(B, C, H, W) normalised input -> (B, H, W) uint8 codes 1..12 (the caller sets nodata to 0)."""
    return codes_from_probabilities(class_probabilities(net, x, tta))


def tile_figure(
    net: torch.nn.Module,
    raw: torch.Tensor,
    truth: torch.Tensor,
    norm: Normalize,
    rgb: Sequence[int],
    title: str,
    precision: Precision | None = None,
    tta: bool = False,
):
    """The image / truth / prediction figure of one tile (as stored, (C, H, W)), predicted on the model's
    device as in evaluation. The prediction is nodata where the image has no data; the legend names
    only the classes shown (``colormap.comparison_figure``)."""
    precision = precision or Precision()
    device = next(net.parameters()).device
    x = norm(raw[None].to(device)).contiguous(memory_format=precision.memory_format)
    net.eval()
    with precision.autocast(device):
        pred = predict_codes(net, x, tta)[0].cpu().numpy()
    img = raw.numpy()
    valid = valid_pixels(img)
    pred[~valid] = NODATA
    return comparison_figure(stretch_rgb(img[list(rgb)], valid), truth.numpy(), pred, title)
