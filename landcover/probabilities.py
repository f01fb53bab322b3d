"""Class probabilities over codes 1..12: the one definition, and the fast versions the map uses.

Bottom floor: imports only colormap. The model has one output per code 0..12, but code 0 (nodata) is
never predicted on a valid pixel: the probabilities are a softmax over the outputs of codes 1..12 of the
logits divided by a temperature (code 0 gets 0), and the predicted code is the best of codes 1..12, the
first on ties. ``probabilities`` and ``predict_classes`` are the definition; ``code_probabilities`` and
``codes_and_confidence`` compute the same numbers in fewer passes for whole scenes (tested against them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from colormap import NUM_CLASSES


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, 13, ...) or (N, 13) logits -> float32 probabilities of the same shape, channel k = code k."""
    z = logits.float()
    p = torch.zeros_like(z)
    p[:, 1:] = (z[:, 1:] / temperature).softmax(dim=1)
    return p


def predict_classes(scores: torch.Tensor) -> torch.Tensor:
    """(N, 13, ...) logits or probabilities -> (N, ...) int64 codes: the best of codes 1..12."""
    # max(dim).indices, not argmax(dim): the same first best index, and faster on the CPU across channels
    return scores[:, 1:].max(dim=1).indices + 1


def code_probabilities(logits: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """(B, 13, H, W) logits -> (B, 13 * len(temperatures), H, W): ``probabilities`` at each temperature.

    The same numbers to float rounding, computed in place in one buffer (exp(z - max) / sum): on the CPU
    torch's softmax across channels and the copies into one buffer cost more.
    """
    z = logits[:, 1:].float()
    top = z.amax(dim=1, keepdim=True)
    out = z.new_empty((z.shape[0], NUM_CLASSES * len(temperatures), *z.shape[2:]))
    for k, t in enumerate(temperatures):
        out[:, k * NUM_CLASSES].zero_()
        p = out[:, k * NUM_CLASSES + 1 : (k + 1) * NUM_CLASSES]
        torch.sub(z, top, out=p)
        if t != 1:
            p.div_(t)
        p.exp_()
        p.div_(p.sum(dim=1, keepdim=True))
    return out


def codes_and_confidence(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blended sums (13 or 26, H, W) -> codes (H, W) uint8 1..12 and confidence (H, W) uint8 percent.

    The code is ``predict_classes`` of the first 13 channels (found with amax, far faster on the CPU
    than max with indices); its confidence is its share of the last 13 (the same channels without a
    temperature). Each window's probabilities sum to 1, so the blended ones sum to the sum of the
    weights, and the share is the weighted mean of the windows' probabilities of that code.
    """
    scores = sums[1:NUM_CLASSES]
    best = scores.amax(dim=0)
    rank = torch.arange(NUM_CLASSES - 1, 0, -1, dtype=torch.uint8, device=sums.device)[:, None, None]
    codes = (NUM_CLASSES - ((scores == best) * rank).amax(dim=0)).clamp_(1, NUM_CLASSES - 1)  # NaN: 12
    calibrated = sums[-NUM_CLASSES:]
    if sums.shape[0] > NUM_CLASSES:
        best = calibrated.gather(0, codes[None].long())[0]
    share = best / calibrated.sum(dim=0)
    confidence = share.mul_(100).round_().nan_to_num_(0.0).clamp_(0, 100).to(torch.uint8)
    return codes, confidence


def class_percent(sums: torch.Tensor) -> torch.Tensor:
    """Blended sums (13 or 26, H, W) -> (12, H, W) uint8: each code 1..12's calibrated probability in
    percent (the last 13 channels' shares, as the confidence is), rounded; 0 where the sums are 0."""
    calibrated = sums[-NUM_CLASSES:]
    share = calibrated[1:] / calibrated.sum(dim=0, keepdim=True)
    return share.mul_(100).round_().nan_to_num_(0.0).clamp_(0, 100).to(torch.uint8)
