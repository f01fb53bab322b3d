"""What the model's users share (test_model.py, predict.py, train.py): bands, the model's class
probabilities, tile pictures.

Middle floor: rests on probabilities.py, tiles.py, stats.py, distributed.py, figures.py and colormap.py.
A checkpoint's bands are matched to a file's, or to several scenes', by count, position and name
(``check_bands``, ``check_scenes``). With ``tta`` the probabilities are averaged over the four flips of
the input (``transforms.TTA``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from colormap import NODATA, stretch_rgb
from landcover.common import fail
from landcover.distributed import Precision, one_cpu_thread
from landcover.figures import comparison_figure
from landcover.probabilities import code_probabilities, predict_classes
from landcover.stats import Normalize
from landcover.tiles import valid_pixels
from landcover.transforms import TTA, dihedral

# train.py's default run folder is runs/<encoder>, its default encoder resnet50
DEFAULT_CHECKPOINT = "runs/resnet50/best.pt"
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


def scene_prefixes(bands: Sequence[str]) -> list[str]:
    """The scene names of a stacked checkpoint's bands (``s2_april:B4`` -> ``s2_april``), in order.

    Empty for a single-scene checkpoint (band names without a ``scene:`` part).
    """
    if not bands or not all(":" in b for b in bands):
        return []
    return list(dict.fromkeys(b.split(":", 1)[0] for b in bands))


def check_scenes(bands: Sequence[str], scenes: Sequence[tuple[Path, Sequence[str | None]]]) -> str | None:
    """Fail unless the scenes (path, band descriptions) match the checkpoint's ``bands`` by position and
    bands; the line to show when a file is not named as the checkpoint's scene, else None.

    A single-scene checkpoint takes one scene with its bands; a stacked one takes as many scenes as it
    names, scene k with the band part of the checkpoint's bands of scene k (``s2_april:B4`` -> ``B4``:
    a scene file names its bands without a scene). File names do not decide (another year's mosaics
    carry other names), except that the checkpoint's own scene names in another order are refused.
    """
    prefixes = scene_prefixes(bands)
    if not prefixes:
        if len(scenes) != 1:
            fail(
                f"the checkpoint takes one scene ({len(bands)} bands), got {len(scenes)}: "
                f"{' '.join(str(p) for p, _ in scenes)}"
            )
        check_bands(bands, scenes[0][1], f"scene {scenes[0][0]}")
        return None
    order = " ".join(f"{p}.tif" for p in prefixes)
    if len(scenes) != len(prefixes):
        fail(
            f"the checkpoint stacks {len(prefixes)} scenes ({order}, in that order), got {len(scenes)}: "
            f"{' '.join(str(p) for p, _ in scenes)}"
        )
    stems = [p.stem for p, _ in scenes]
    if stems != prefixes and sorted(stems) == sorted(prefixes):
        fail(
            f"scenes given in the wrong order: {' '.join(stems)}; the checkpoint stacks {order} in that order"
        )
    for (path, descriptions), prefix in zip(scenes, prefixes, strict=True):
        expected = [b.split(":", 1)[1] for b in bands if b.split(":", 1)[0] == prefix]
        check_bands(expected, descriptions, f"scene {path}")
    renamed = [
        f"scene {k} is {path.name}, the checkpoint was trained on {prefix}.tif"
        for k, ((path, _), prefix) in enumerate(zip(scenes, prefixes, strict=True), start=1)
        if path.stem != prefix
    ]
    return "; ".join(renamed) + ": matched by position and bands" if renamed else None


def flipped_logits(net: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> Iterator[torch.Tensor]:
    """The model's float32 logits (B, 13, H, W) of ``x``; with ``tta``, of its four flips
    (``transforms.TTA``), each flipped back onto the input's pixels."""
    for k in TTA if tta else TTA[:1]:
        yield dihedral(net(dihedral(x, k)).float(), k)


@torch.inference_mode()
def class_probabilities(
    net: torch.nn.Module, x: torch.Tensor, tta: bool = False, temperature: float | Sequence[float] = 1.0
) -> torch.Tensor:
    """(B, C, H, W) normalised input -> (B, 13, H, W) float32 probabilities, channel k = code k; for a
    sequence of temperatures, those at each in turn: (B, 13 * len(temperature), H, W).

    ``probabilities`` of the logits at the checkpoint's temperature (fitted on the validation split:
    the top probability then means what it says), all from one forward pass; with ``tta``, the mean
    over four flips.
    """
    temperatures = (temperature,) if isinstance(temperature, int | float) else tuple(temperature)
    total, n = None, 0
    for z in flipped_logits(net, x, tta):  # the forward passes, on all threads
        with one_cpu_thread(z.device):
            p = code_probabilities(z, temperatures)
            total, n = (p if total is None else total.add_(p)), n + 1
    return total.div_(n) if n > 1 else total


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
    only the classes shown (``figures.comparison_figure``)."""
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
