"""Segmentation metrics, all derived from one confusion matrix.

Bottom floor: imports nothing of ours. ``ConfusionMatrix`` accumulates truth x prediction over every
valid pixel of a whole split (never per batch); overall accuracy, per-class recall, precision, IoU,
Dice, support, their means and Cohen's kappa all derive from it. Nodata truth (0) never counts.
"""

from __future__ import annotations

import math

import torch


class ConfusionMatrix:
    """Counts ``mat[truth, prediction]`` for codes ``0..num_classes-1``; truth == ``ignore`` skipped.

    The counts stay on the device of the batches (no copy to the host and no wait for the GPU per
    batch); ``mat`` and ``compute`` read them on the host.
    """

    def __init__(self, num_classes: int, ignore_index: int = 0):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._mat = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    @property
    def mat(self) -> torch.Tensor:
        """The (num_classes, num_classes) int64 counts, on the host."""
        return self._mat.cpu()

    def update(self, truth: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch: ``truth`` and ``pred`` are integer tensors of the same shape."""
        n = self.num_classes
        if truth.device.type == "mps":  # MPS's bincount has been a scatter that crawls when most pixels
            truth, pred = truth.cpu(), pred.cpu()  # share a bin, as they do here (pytorch PR 184779)
        t = truth.reshape(-1).to(torch.int64)
        p = pred.reshape(-1).to(device=t.device, dtype=torch.int64)
        keep = (t != self.ignore_index) & (t >= 0) & (t < n)
        # a prediction that is no code is an error on that pixel (counted under the ignore code), never
        # clipped into a neighbouring class
        bad = (p < 0) | (p >= n)
        if not 0 <= self.ignore_index < n and bool((bad & keep).any()):
            raise ValueError(f"predictions outside 0..{n - 1} and no ignore code to count them under")
        p = torch.where(bad, self.ignore_index, p)
        idx = torch.where(keep, n * t + p, n * n)  # pixels not counted go to one extra bin, dropped
        if idx.device.type == "cpu":
            counts = torch.bincount(idx, minlength=n * n + 1)
        else:  # CUDA's bincount reads the largest index back to the host: a wait per batch
            counts = torch.zeros(n * n + 1, dtype=torch.int64, device=idx.device)
            counts.index_add_(0, idx, torch.ones_like(idx))
        self._mat = self._mat.to(idx.device) + counts[: n * n].reshape(n, n)

    def reset(self) -> None:
        self._mat.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of every process (DistributedDataParallel); a no-op when not distributed."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
            m = self._mat.to(dev)
            torch.distributed.all_reduce(m)
            self._mat = m

    def compute(self, names: dict[int, str] | None = None) -> dict:
        """All metrics as a plain dict (JSON-ready; ``None`` where a value is undefined).

        Classes absent from both truth and prediction are left out of ``miou`` and ``mean_dice``;
        ``classes_in_means`` and ``classes_left_out`` say which.
        """
        mat = self.mat.double()
        codes = [c for c in range(self.num_classes) if c != self.ignore_index]
        m = mat[codes][:, codes]  # rows: truth, columns: prediction, valid classes only
        # predictions of the ignore code on valid pixels are counted as errors via row sums
        support = mat[codes].sum(1)
        predicted = m.sum(0)
        tp = m.diag()
        total = support.sum().item()

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else 0.0

        per_class, ious, dices, left_out = {}, [], [], []
        for i, c in enumerate(codes):
            s, p, t = support[i].item(), predicted[i].item(), tp[i].item()
            present = s > 0 or p > 0
            iou = ratio(t, s + p - t) if present else None
            dice = ratio(2 * t, s + p) if present else None
            per_class[str(c)] = {
                "name": (names or {}).get(c, str(c)),
                "iou": iou,
                "dice": dice,
                "precision": ratio(t, p) if present else None,
                "recall": ratio(t, s) if present else None,
                "support": int(s),
            }
            if present:
                ious.append(iou)
                dices.append(dice)
            else:
                left_out.append(c)

        po = ratio(tp.sum().item(), total)
        pe = ratio((support * predicted).sum().item(), total * total)
        kappa = (po - pe) / (1 - pe) if total > 0 and pe < 1 else None
        return {
            "overall_accuracy": po if total > 0 else None,
            "miou": sum(ious) / len(ious) if ious else None,
            "mean_dice": sum(dices) / len(dices) if dices else None,
            "kappa": kappa,
            "pixels": int(total),
            "classes_in_means": [c for c in codes if c not in left_out],
            "classes_left_out": left_out,
            "per_class": per_class,
        }


def format_table(metrics: dict) -> str:
    """The metrics as a fixed-width text table with class names, for the terminal."""
    lines = [f"{'code':>4}  {'class':<42} {'IoU':>6} {'Dice':>6} {'prec':>6} {'recall':>6} {'support':>11}"]

    def f(v):
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"

    for code, pc in metrics["per_class"].items():
        lines.append(
            f"{code:>4}  {pc['name'][:42]:<42} {f(pc['iou'])} {f(pc['dice'])} "
            f"{f(pc['precision'])} {f(pc['recall'])} {pc['support']:>11,}"
        )
    lines.append(
        f"overall accuracy {f(metrics['overall_accuracy'])}   mIoU {f(metrics['miou'])}   "
        f"mean Dice {f(metrics['mean_dice'])}   kappa {f(metrics['kappa'])}"
    )
    if metrics["classes_left_out"]:
        lines.append(
            f"left out of the means (absent from truth and prediction): {metrics['classes_left_out']}"
        )
    return "\n".join(lines)
