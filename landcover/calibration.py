"""Per-pixel confidence a reviewer can trust: temperature scaling and calibration statistics.

Bottom floor: rests on probabilities.py only (a pixel's confidence is the probability of its predicted
class under the softmax over codes 1..12, ``probabilities.probabilities``). Owns ``TemperatureFit``
(one T > 0 dividing the logits, minimising the negative log-likelihood on a bounded random subsample
of a split's valid pixels, over every torchrun process; T never changes the predicted code) and
``ReliabilityCounts`` (one accumulator of (confidence, correct) over a split, from which the expected
and maximum calibration errors, the reliability table and accuracy against coverage derive). Pixels
whose truth is nodata (0) never count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from landcover.probabilities import probabilities

TEMPERATURE_RANGE = (0.05, 20.0)  # the search interval of T; a fit at either end is a broken model
MAX_PIXELS = 1_000_000  # the subsample of TemperatureFit: T is one number, a million pixels pin it down
BINS = 20  # reliability bins (the ECE's), equal width in confidence
FINE_BINS = 100  # the resolution of accuracy against coverage: thresholds at every 0.01
COVERAGE_THRESHOLDS: tuple[float, ...] = tuple(i / 20 for i in range(20))  # 0.0, 0.05, ..., 0.95


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def confidence_and_correct(
    probs: torch.Tensor, targets: torch.Tensor, ignore_index: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid pixels' confidence (probability of the predicted code) and whether that code is right.

    ``probs``: (B, C, H, W) or (N, C), channel k = code k (code 0 is never predicted); ``targets``:
    (B, H, W) or (N,) codes. A pixel is valid when its target is a code 0..C-1 other than ``ignore_index``.
    """
    flat = probs.movedim(1, -1).reshape(-1, probs.shape[1])[:, 1:]
    t = targets.reshape(-1).to(device=flat.device, dtype=torch.int64)
    keep = (t != ignore_index) & (t >= 0) & (t < probs.shape[1])
    conf, best = flat[keep].float().max(dim=1)
    return conf, (best + 1) == t[keep]


def _golden_section(f: Callable[[float], float], lo: float, hi: float, tol: float) -> float:
    """The minimiser of a unimodal ``f`` on [lo, hi] to within ``tol``: no gradients, no step sizes to
    tune, the same answer for the same function."""
    inv = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - inv * (b - a), a + inv * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - inv * (b - a)
            fc = f(c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + inv * (b - a)
            fd = f(d)
    return (a + b) / 2


class TemperatureFit:
    """A uniform random subsample of at most ``max_pixels`` valid (logits, truth) pairs; the T fitted on it.

    Every pixel offered draws a random key, on the device of its logits, from a generator seeded by
    (seed, rank); the sample is the valid pixels with the smallest keys. Each batch gives only its
    ``max_pixels`` smallest (``topk``: no data-dependent size, so the host never waits for the GPU),
    and candidates are cut back to the sample when they reach twice it: memory stays bounded. The
    sample stays on the device until it is read. The same pixels in the same batches give the same
    sample; on the CPU, however they are split into batches.
    ``reduce_from_all_processes`` makes every process hold the sample of the union of all processes'
    pixels; call it once, on every process, before ``fit``.
    """

    NO_KEY = (1 << 63) - 1  # the key of a pixel left out: after every real key, dropped when read

    def __init__(
        self, max_pixels: int = MAX_PIXELS, seed: int = 0, ignore_index: int = 0, rank: int | None = None
    ):
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, not {max_pixels}")
        if rank is None:
            rank = torch.distributed.get_rank() if _dist_initialized() else 0
        self.max_pixels, self.ignore_index = max_pixels, ignore_index
        state = np.random.SeedSequence([seed & 0xFFFFFFFF, rank]).generate_state(2, np.uint64)
        self._seed = int(state[0] >> np.uint64(1))
        self._gen: torch.Generator | None = None  # on the device of the first batch
        self._seen: torch.Tensor | int = 0  # valid pixels offered, sampled or not (a device count)
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (keys, logits, target)
        self._size = 0  # candidates held, NO_KEY ones included

    def __len__(self) -> int:
        return len(self._read()[0])

    @property
    def seen(self) -> int:
        """Valid pixels offered, sampled or not."""
        return int(self._seen)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Offer a batch: (B, 13, H, W) or (N, 13) logits (any device, any float type), (B, H, W) or (N,)
        codes. Pixels whose target is the ignore code or not one of codes 1..12 (which have a
        probability), or whose logits are not finite, are left out."""
        if logits.device.type == "mps":  # MPS's seeded int64 draws have had gaps: sample on the host
            logits, targets = logits.cpu(), targets.cpu()
        c = logits.shape[1]
        flat = logits.detach().movedim(1, -1).reshape(-1, c)
        t = targets.reshape(-1).to(device=flat.device, dtype=torch.int64)
        if len(t) == 0:
            return
        valid = (t != self.ignore_index) & (t >= 1) & (t < c) & torch.isfinite(flat[:, 1:]).all(dim=1)
        if self._gen is None:
            self._gen = torch.Generator(device=flat.device).manual_seed(self._seed)
        self._seen = self._seen + valid.sum()
        keys = torch.randint(0, self.NO_KEY, (len(t),), generator=self._gen, device=flat.device)
        keys = torch.where(valid, keys, self.NO_KEY)
        keys, idx = torch.topk(keys, min(self.max_pixels, len(keys)), largest=False, sorted=True)
        self._parts.append((keys, flat[idx, 1:].float(), (t[idx] - 1).to(torch.int16)))
        self._size += len(keys)
        if self._size >= 2 * self.max_pixels:
            self._compact()

    def _compact(self) -> None:
        """Keep the ``max_pixels`` smallest keys, sorted by key (so the sample's order is fixed too)."""
        if len(self._parts) <= 1 and self._size <= self.max_pixels:
            return
        keys, z, t = (torch.cat(p) for p in zip(*self._parts, strict=True))
        # the keys are distinct (63 random bits) but for NO_KEY, whose order does not matter: a partial
        # sort (topk) gives the order a full stable sort would, at a fraction of its cost on the CPU
        order = torch.topk(keys, min(self.max_pixels, len(keys)), largest=False, sorted=True).indices
        self._parts, self._size = [(keys[order], z[order], t[order])], len(order)

    def _read(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sample as it stands: (keys, logits, class indices) of the valid pixels only."""
        self._compact()
        if not self._parts:
            return torch.zeros(0, dtype=torch.int64), torch.zeros((0, 12)), torch.zeros(0, dtype=torch.int16)
        keys, z, t = self._parts[0]
        real = keys != self.NO_KEY
        return keys[real], z[real], t[real]

    def merge(self, other: TemperatureFit) -> None:
        """Take in another subsample (another process's): the sample of the union of their pixels."""
        self._parts = [tuple(x.cpu() for x in p) for p in self._parts + other._parts]
        self._size += other._size
        self._seen = self.seen + other.seen
        self._compact()

    def reduce_from_all_processes(self) -> None:
        """Every process gets the sample of all processes' pixels (torchrun); a no-op when not distributed."""
        if not _dist_initialized():
            return
        mine = tuple(x.cpu() for x in self._read())
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (mine, self.seen))
        self._parts = [part for part, _ in gathered]
        self._size = sum(len(p[0]) for p in self._parts)
        self._seen = sum(seen for _, seen in gathered)
        self._compact()

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The subsample, on the host: (n, 12) float32 logits of codes 1..12 and (n,) int64 class indices
        (code - 1)."""
        _, z, t = self._read()
        return z.cpu(), t.cpu().to(torch.int64)

    def nll(self, temperature: float) -> float:
        """The mean negative log-likelihood of the truth over the subsample at ``temperature``."""
        z, t = self.sample()
        return _mean_nll(z, z.gather(1, t[:, None]).squeeze(1), 1.0 / temperature)

    def fit(self, tol: float = 1e-4) -> float:
        """The T in ``TEMPERATURE_RANGE`` minimising the subsample's NLL; 1.0 when no valid pixel was seen.

        The NLL is convex in 1/T, hence unimodal in log T: a golden-section search on log T finds it
        to a relative precision of ``tol``.
        """
        z, t = self.sample()
        if len(t) == 0:
            return 1.0
        zt = z.gather(1, t[:, None]).squeeze(1)
        lo, hi = (math.log(v) for v in TEMPERATURE_RANGE)
        return math.exp(_golden_section(lambda log_t: _mean_nll(z, zt, math.exp(-log_t)), lo, hi, tol))

    def reliability(self, temperature: float = 1.0, bins: int = BINS, fine_bins: int = FINE_BINS):
        """The ``ReliabilityCounts`` of the subsample at ``temperature``: before and after scaling without
        a second pass over the split (an estimate, on the pixels T was fitted on)."""
        z, t = self.sample()
        counts = ReliabilityCounts(bins, fine_bins)
        if len(t):  # the sample holds codes 1..12: code 0's column back, as the model's outputs have it
            counts.update(probabilities(torch.nn.functional.pad(z, (1, 0)), temperature), t + 1)
        return counts


def _mean_nll(z: torch.Tensor, zt: torch.Tensor, beta: float) -> float:
    """Mean of ``logsumexp(beta z) - beta z_truth`` (float32 terms, a float64 sum)."""
    return ((torch.logsumexp(z * beta, dim=1) - zt * beta).sum(dtype=torch.float64) / len(zt)).item()


def fit_temperature(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = 0,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
) -> float:
    """The temperature of one batch of logits (B, 13, H, W) or (N, 13) and codes: ``TemperatureFit`` in
    one call. Over a split, collect with ``TemperatureFit.update`` instead."""
    fit = TemperatureFit(max_pixels, seed, ignore_index, rank=0)
    fit.update(logits, targets)
    return fit.fit()


class ReliabilityCounts:
    """Per fine confidence bin: valid pixels, their summed confidence and how many are right.

    ``fine_bins`` equal-width bins on [0, 1] (a confidence of 1 goes in the last); the ``bins``
    reliability bins of the ECE are groups of them, so both come exact from one histogram. Thresholds of
    accuracy against coverage fall on the fine bin edges. Summed over processes like the confusion matrix.
    """

    def __init__(self, bins: int = BINS, fine_bins: int = FINE_BINS, ignore_index: int = 0):
        if bins < 1 or fine_bins % bins:
            raise ValueError(f"fine_bins ({fine_bins}) must be a multiple of bins ({bins})")
        self.bins, self.fine_bins, self.ignore_index = bins, fine_bins, ignore_index
        self.count = torch.zeros(fine_bins, dtype=torch.int64)
        self.correct = torch.zeros(fine_bins, dtype=torch.int64)
        self.confidence = torch.zeros(fine_bins, dtype=torch.float64)  # summed, for each bin's mean

    def add(self, confidence: torch.Tensor, correct: torch.Tensor) -> None:
        """Add valid pixels: their confidence in [0, 1] and whether the predicted code is right.

        Binned on the CPU in float64: deterministic, and a float32 confidence lands in its true bin."""
        conf = confidence.detach().reshape(-1).cpu().double()
        ok = correct.detach().reshape(-1).cpu().to(torch.bool)
        idx = (conf * self.fine_bins).floor().clamp_(0, self.fine_bins - 1).to(torch.int64)
        n = self.fine_bins
        self.count += torch.bincount(idx, minlength=n)
        self.correct += torch.bincount(idx[ok], minlength=n)
        self.confidence += torch.bincount(idx, weights=conf, minlength=n)

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: (B, 13, H, W) probabilities (channel k = code k, as inference gives them) and
        (B, H, W) codes; pixels whose truth is the ignore code are left out."""
        self.add(*confidence_and_correct(probs, targets, self.ignore_index))

    def merge(self, other: ReliabilityCounts) -> None:
        """Add another accumulator's pixels (of the same bins)."""
        if (other.bins, other.fine_bins) != (self.bins, self.fine_bins):
            raise ValueError("cannot merge counts of different bins")
        self.count += other.count
        self.correct += other.correct
        self.confidence += other.confidence

    def reset(self) -> None:
        for t in (self.count, self.correct, self.confidence):
            t.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the counts of every process (DistributedDataParallel); a no-op when not distributed."""
        if not _dist_initialized():
            return
        backend = torch.distributed.get_backend()
        dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        for name in ("count", "correct", "confidence"):
            t = getattr(self, name).to(dev)
            torch.distributed.all_reduce(t)
            setattr(self, name, t.cpu())

    @property
    def pixels(self) -> int:
        return int(self.count.sum())

    def _coarse(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count, correct, summed confidence) per reliability bin."""
        k = self.fine_bins // self.bins
        return tuple(t.reshape(self.bins, k).sum(dim=1) for t in (self.count, self.correct, self.confidence))

    def reliability(self) -> list[dict]:
        """Per reliability bin: its edges, pixels, mean confidence and accuracy (``None`` when empty)."""
        count, correct, conf = self._coarse()
        rows = []
        for b in range(self.bins):
            n = int(count[b])
            rows.append(
                {
                    "lower": b / self.bins,
                    "upper": (b + 1) / self.bins,
                    "pixels": n,
                    "confidence": conf[b].item() / n if n else None,
                    "accuracy": int(correct[b]) / n if n else None,
                }
            )
        return rows

    def _gaps(self) -> tuple[torch.Tensor, torch.Tensor]:
        count, correct, conf = self._coarse()
        n = count.double().clamp(min=1)
        return count, (correct.double() / n - conf / n).abs()

    def expected_calibration_error(self) -> float | None:
        """Sum over reliability bins of (share of pixels) x |accuracy - mean confidence|; None: no pixels."""
        count, gap = self._gaps()
        total = int(count.sum())
        return (count.double() * gap).sum().item() / total if total else None

    def maximum_calibration_error(self) -> float | None:
        """The largest |accuracy - mean confidence| over non-empty reliability bins; None without pixels."""
        count, gap = self._gaps()
        return gap[count > 0].max().item() if int(count.sum()) else None

    def _kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels and right pixels with confidence at or above each fine bin's lower edge."""
        return self.count.flip(0).cumsum(0).flip(0), self.correct.flip(0).cumsum(0).flip(0)

    def coverage(self, thresholds: Sequence[float] = COVERAGE_THRESHOLDS) -> list[dict]:
        """Per threshold t: the share of valid pixels with confidence >= t, their number and accuracy.

        A threshold between fine bin edges is taken up to the next edge (the one reported)."""
        kept, right = self._kept()
        total = self.pixels
        rows = []
        for t in thresholds:
            k = min(max(math.ceil(t * self.fine_bins - 1e-9), 0), self.fine_bins)
            n = int(kept[k]) if k < self.fine_bins else 0
            r = int(right[k]) if k < self.fine_bins else 0
            rows.append(
                {
                    "threshold": k / self.fine_bins,
                    "share": n / total if total else None,
                    "pixels": n,
                    "accuracy": r / n if n else None,
                }
            )
        return rows

    def threshold_for_accuracy(self, target_accuracy: float) -> float | None:
        """The lowest fine-edge threshold whose kept pixels (confidence >= it) reach ``target_accuracy``:
        pixels below it go to human review. None when no threshold keeps pixels that accurate."""
        kept, right = self._kept()
        for k in range(self.fine_bins):
            n = int(kept[k])
            if n and int(right[k]) / n >= target_accuracy:
                return k / self.fine_bins
        return None

    def to_dict(self) -> dict:
        """The JSON-ready summary: pixels, accuracy, mean confidence, ECE, MCE and both tables."""
        n = self.pixels
        return {
            "pixels": n,
            "accuracy": int(self.correct.sum()) / n if n else None,
            "mean_confidence": self.confidence.sum().item() / n if n else None,
            "ece": self.expected_calibration_error(),
            "mce": self.maximum_calibration_error(),
            "reliability": self.reliability(),
            "coverage": self.coverage(),
        }


def calibration_report(
    before: ReliabilityCounts, after: ReliabilityCounts | None = None, temperature: float | None = None
) -> dict:
    """metrics.json's ``calibration`` entry: the temperature and the summaries before and after it."""
    report = {"temperature": temperature, "uncalibrated": before.to_dict()}
    if after is not None:
        report["calibrated"] = after.to_dict()
    return report
