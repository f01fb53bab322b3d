"""Losses of the segmentation model: per-class weights, cross-entropy, focal, soft Dice, Lovasz.

Bottom floor: imports nothing of ours. Every loss takes float32 logits (N, K, H, W), int64 targets
(N, H, W) and a (K,) weight per class; nodata has weight 0, so its pixels never count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LOSSES = ("ce", "focal", "dice", "ce+dice", "ce+lovasz")
CLASS_WEIGHTS = ("none", "inverse", "sqrt")
FOCAL_GAMMA = 2.0


def class_weights(class_pixels: Sequence[int], mode: str, ignore_index: int = 0) -> torch.Tensor:
    """(K,) loss weight per code (K = len(class_pixels)), 0 for ``ignore_index`` (nodata).

    ``none``: 1 for every class; ``inverse`` / ``sqrt``: 1/f or 1/sqrt(f) of the class's pixel
    frequency f in the train split, normalised to mean 1 over the classes present (absent ones 0).
    """
    w = torch.zeros(len(class_pixels), dtype=torch.float64)
    if mode == "none":
        w[:] = 1.0
        w[ignore_index] = 0.0
        return w.float()
    counts = torch.tensor(list(class_pixels), dtype=torch.float64)
    counts[ignore_index] = 0
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


def lovasz_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax (Berman et al., 2018): the convex surrogate of 1 - IoU of each class present in
    the batch's valid pixels, averaged with the class weights. IoU is what the map is judged by, and a
    thin class's IoU moves as much as a wide one's. All classes at once, on every pixel: a pixel that
    does not count has error 0, so it sorts after every pixel that does and adds nothing; no size
    depends on the data, so the host never waits for the GPU."""
    k = logits.shape[1]
    valid = (weight[target] > 0).flatten().unsqueeze(1)
    probs = logits.softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    fg = F.one_hot(target.flatten(), k).to(probs.dtype) * valid  # (pixels, classes)
    errors, order = ((fg - probs).abs() * valid).T.sort(dim=1, descending=True)
    fg = fg.T.gather(1, order)
    total = fg.sum(dim=1, keepdim=True)
    inter = total - fg.cumsum(dim=1)
    union = total + (1 - fg).cumsum(dim=1)
    jaccard = 1 - inter / union  # the IoU loss of predicting the first i pixels of the order as c
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    w = weight * (total.squeeze(1) > 0)
    return ((errors * grad).sum(dim=1) * w).sum() / w.sum().clamp_min(1e-12)


def make_criterion(kind: str, weight: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``fn(logits, target)``: float32 logits (N, 13, H, W), int64 targets (N, H, W)."""

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if kind in ("ce", "ce+dice", "ce+lovasz"):
            loss = loss + weighted_mean(F.cross_entropy(logits, target, reduction="none"), target, weight)
        if kind == "focal":
            logp = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
            loss = loss + weighted_mean(-((1 - logp.exp()) ** FOCAL_GAMMA) * logp, target, weight)
        if kind in ("dice", "ce+dice"):
            loss = loss + dice_loss(logits, target, weight)
        if kind == "ce+lovasz":
            loss = loss + lovasz_loss(logits, target, weight)
        return loss

    return criterion
