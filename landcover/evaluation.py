"""One pass of a model over a split, the loop that train.py's validation and test_model.py share.

Middle floor: rests on inference.py (logits, with test-time flips), probabilities.py, metrics.py,
calibration.py and dataset.py (a batch on its device). Every number a script reports derives from what
one pass accumulates on the model's device: the confusion matrix, and as each script asks, the loss,
the temperature fit's sample of logits, the reliability counts and each tile's scores. The host waits
for the device once, when the results are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from colormap import NODATA, NUM_CLASSES
from landcover.calibration import ReliabilityCounts, TemperatureFit
from landcover.dataset import to_device
from landcover.distributed import Precision
from landcover.inference import flipped_logits
from landcover.metrics import ConfusionMatrix
from landcover.probabilities import code_probabilities, predict_classes
from landcover.stats import Normalize


class LossSum:
    """The loss summed over an epoch's tiles, kept on the device until it is read: reading a loss
    (``.item()``) makes the host wait for the GPU, so it is read only for a progress bar and at the
    end. The sum is the one ``.item()`` per batch would give."""

    def __init__(self):
        self.pending: list[tuple[torch.Tensor, int]] = []
        self.total, self.tiles = 0.0, 0

    def add(self, loss: torch.Tensor, tiles: int) -> None:
        self.pending.append((loss.detach(), tiles))

    def read(self) -> tuple[float, int]:
        """The summed loss and the tiles so far (waits for the losses not read yet)."""
        if self.pending:
            values = torch.stack([loss for loss, _ in self.pending]).tolist()
            for value, (_, n) in zip(values, self.pending, strict=True):
                self.total, self.tiles = self.total + value * n, self.tiles + n
            self.pending = []
        return self.total, self.tiles

    def mean(self) -> float:
        total, tiles = self.read()
        return total / max(tiles, 1)


@dataclass
class Evaluation:
    """What one pass accumulates; the parts a script did not ask for stay None."""

    cm: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(NUM_CLASSES, ignore_index=NODATA))
    losses: LossSum | None = None  # with a criterion
    fit: TemperatureFit | None = None  # the sample of logits the temperature is fitted on
    raw: ReliabilityCounts | None = None  # confidence against correctness at T = 1
    calibrated: ReliabilityCounts | None = None  # the same at the checkpoint's temperature
    scores: list[dict] | None = None  # per tile (with tile names): name, valid pixels, accuracy, mIoU


def tile_scores(name: str, truth: torch.Tensor, pred: torch.Tensor) -> dict:
    """A tile's valid pixels, accuracy and mIoU, from the tile's own confusion matrix."""
    tile = ConfusionMatrix(NUM_CLASSES, ignore_index=NODATA)
    tile.update(truth, pred)
    m = tile.compute()
    return {"tile": name, "pixels": m["pixels"], "accuracy": m["overall_accuracy"], "miou": m["miou"]}


@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    norm: Normalize,
    device: torch.device,
    *,
    precision: Precision | None = None,
    tta: bool = False,
    criterion: Callable | None = None,
    fit: TemperatureFit | None = None,
    temperature: float | None = None,
    tile_names: Sequence[str] | None = None,
) -> Evaluation:
    """Predict every batch (tiles as stored, targets) and accumulate; the codes are the best class at
    T = 1 (of the mean probabilities over the flips with ``tta``), so no temperature changes them.

    ``criterion``: sum its loss; ``fit``: offer it the logits; ``temperature``: reliability counts at
    T = 1 and at it; ``tile_names`` (in batch order): each tile's scores.
    """
    precision = precision or Precision()
    ev = Evaluation(losses=LossSum() if criterion else None, fit=fit)
    if temperature is not None:
        ev.raw, ev.calibrated = ReliabilityCounts(), ReliabilityCounts()
    if tile_names is not None:
        ev.scores = []
    temperatures = (1.0,) if temperature in (None, 1.0) else (1.0, temperature)
    for raw, y in batches:
        x, y = to_device(raw, y, norm, device, precision.memory_format)
        with precision.autocast(device):
            logits = list(flipped_logits(net, x, tta))
        if criterion is not None:
            ev.losses.add(criterion(logits[0], y), len(x))
        if fit is not None:
            fit.update(logits[0], y)
        if tta or temperature is not None:
            probs = sum(code_probabilities(z, temperatures) for z in logits) / len(logits)
            pred = predict_classes(probs[:, :NUM_CLASSES])
        else:
            probs, pred = None, predict_classes(logits[0])
        ev.cm.update(y, pred)
        if temperature is not None:
            ev.raw.update(probs[:, :NUM_CLASSES], y)
            ev.calibrated.update(probs[:, -NUM_CLASSES:], y)
        if tile_names is not None:
            for b in range(len(y)):
                ev.scores.append(tile_scores(tile_names[len(ev.scores)], y[b].cpu(), pred[b].cpu()))
    return ev
