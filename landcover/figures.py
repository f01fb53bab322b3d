"""Every figure the scripts save or log: tile comparisons, confusion matrices, reliability diagrams and
map previews, drawn with matplotlib's Agg backend (chosen once, here) and saved atomically.

Middle floor: rests on colormap.py (classes and colours), calibration.py (what a reliability diagram
shows) and common.py. A function that draws returns the figure; ``save_figure`` writes and frees it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import rasterio
from rasterio.enums import Resampling

matplotlib.use("Agg")  # files only, never a window: scripts run on servers without a display
import matplotlib.pyplot as plt

from colormap import CODES, NODATA, PALETTE, colorize, legend_handles, name
from landcover.common import atomic_path

if TYPE_CHECKING:  # for annotations only: the map scripts draw previews without importing torch
    from landcover.calibration import ReliabilityCounts

CONFIDENCE_CMAP = "viridis"  # perceptually uniform, readable in grey and by colour-blind readers


def save_figure(fig, path: Path, dpi: int = 150, tight: bool = False) -> None:
    """Save a figure as PNG under a temporary name, rename it into place, and free it."""
    with atomic_path(path) as tmp:
        write_png(fig, tmp, dpi, tight)


def write_png(fig, path: Path, dpi: int = 150, tight: bool = False) -> None:
    """Write a figure as PNG to ``path`` itself (a caller's temporary name) and free it."""
    fig.savefig(path, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)


def legend_figure():
    """Every class's colour patch with its code and name (colormap.py's command draws it)."""
    fig = plt.figure(figsize=(4.8, 3.6))
    fig.legend(handles=legend_handles(CODES), loc="center", frameon=False, fontsize=9)
    return fig


def comparison_figure(rgb: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str = ""):
    """A matplotlib figure: image / truth / prediction side by side, legend naming the classes shown.

    ``rgb`` is (H, W, 3) uint8 (see ``stretch_rgb``); ``truth`` and ``pred`` are (H, W) codes.
    The legend lists only the classes present in truth or prediction.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8), constrained_layout=True)
    for ax, img, label in zip(
        axes,
        (rgb, colorize(truth), colorize(pred)),
        ("Image (RGB)", "Ground truth", "Prediction"),
        strict=True,
    ):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label)
        ax.set_axis_off()
    shown = set(np.unique(truth).tolist()) | set(np.unique(pred).tolist())
    handles = legend_handles(shown)
    if handles:
        fig.legend(
            handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False
        )
    if title:
        fig.suptitle(title)
    return fig


def confusion_figure(mat: np.ndarray, title: str = ""):
    """A matplotlib figure of a (13, 13) confusion matrix (truth rows, prediction columns), rows
    normalised to 1 over classes 1..12; rows of classes absent from the truth are left blank."""
    m = np.asarray(mat, dtype=np.float64)[1:, 1:]
    rows = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, m / rows, np.nan)
    labels = [f"{c} {name(c)[:24]}" for c in CODES]
    fig, ax = plt.subplots(figsize=(9, 8), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i, j in np.ndindex(norm.shape):
        if not np.isnan(norm[i, j]) and norm[i, j] >= 0.005:
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("Prediction")
    ax.set_ylabel("Ground truth (rows sum to 1)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    return fig


def _ece_text(counts: ReliabilityCounts) -> str:
    ece = counts.expected_calibration_error()
    return "n/a" if ece is None else f"{ece:.3f}"


def reliability_figure(
    before: ReliabilityCounts,
    after: ReliabilityCounts | None = None,
    title: str = "",
    temperature: float | None = None,
):
    """The reliability diagram: accuracy per confidence bin against the diagonal, before (outlined bars)
    and after temperature scaling (filled bars), ECE of each in the legend; below, the share of pixels
    per bin (most pixels sit in the top bins, so a gap there matters most)."""
    fig, (ax, hx) = plt.subplots(
        2, 1, figsize=(6.4, 7.2), sharex=True, height_ratios=(3, 1), constrained_layout=True
    )
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfectly calibrated")
    t_text = "temperature scaled" + (f" (T = {temperature:.2f})" if temperature is not None else "")
    series = [(before, "uncalibrated", dict(fill=False, edgecolor="tab:red", lw=1.5))]
    if after is not None:
        series.append((after, t_text, dict(color="tab:blue", alpha=0.55, edgecolor="tab:blue")))
    w = 1 / before.bins
    for i, (counts, label, style) in enumerate(series):
        rows = counts.reliability()
        left = np.array([r["lower"] for r in rows])
        acc = np.array([np.nan if r["accuracy"] is None else r["accuracy"] for r in rows])
        share = np.array([r["pixels"] for r in rows]) / max(counts.pixels, 1)
        shown = ~np.isnan(acc)
        ax.bar(
            left[shown], acc[shown], width=w, align="edge", label=f"{label}: ECE {_ece_text(counts)}", **style
        )
        hx.bar(left + i * w / len(series), share, width=w / len(series), align="edge", **style)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=9)
    hx.set_xlabel("confidence (probability of the predicted class)")
    hx.set_ylabel("share of pixels")
    if title:
        ax.set_title(title)
    return fig


def coverage_figure(counts: ReliabilityCounts, title: str = ""):
    """Accuracy of the pixels kept and the share of pixels kept against the confidence threshold
    (the pixels below it go to human review), at every fine bin edge."""
    rows = counts.coverage([k / counts.fine_bins for k in range(counts.fine_bins)])
    t = np.array([r["threshold"] for r in rows])
    acc = np.array([np.nan if r["accuracy"] is None else r["accuracy"] for r in rows])
    share = np.array([np.nan if r["share"] is None else r["share"] for r in rows])
    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    ax.plot(t, acc, color="tab:blue", lw=2, label="accuracy of the pixels kept")
    ax.plot(t, share, color="tab:orange", lw=2, label="share of pixels kept")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence threshold (pixels below it go to review)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    if title:
        ax.set_title(title)
    return fig


def decimated(path: Path, size: int, resampling: Resampling, masked: bool = False) -> np.ndarray:
    """Band 1 of a raster read at most ``size`` pixels wide or high (from its overviews)."""
    with rasterio.open(path) as src:
        scale = max(src.height, src.width) / size
        shape = (
            (max(1, round(src.height / scale)), max(1, round(src.width / scale))) if scale > 1 else src.shape
        )
        return src.read(1, out_shape=shape, resampling=resampling, masked=masked)


def figure_for(shape: tuple[int, int]):
    """A figure and axes for a picture of ``shape``, 7 inches wide."""
    size = (7.0, min(10.0, max(2.0, 7.0 * shape[0] / shape[1])))
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    ax.set_axis_off()
    return fig, ax


def write_preview(map_path: Path, out_png: Path, counts: np.ndarray, title: str, size: int = 1024) -> None:
    """A PNG of the map (read decimated from its overviews) in the class colours, legend with areas."""
    codes = decimated(map_path, size, Resampling.nearest)
    rgba = np.concatenate(
        [PALETTE[codes], np.where(codes == NODATA, 0, 255).astype(np.uint8)[..., None]], axis=2
    )
    total = max(int(counts[1:].sum()), 1)
    present = [c for c in CODES if counts[c] > 0]
    handles = legend_handles(present)
    for hd, c in zip(handles, present, strict=True):
        hd.set_label(f"{hd.get_label()} ({100 * counts[c] / total:.1f}%)")
    fig, ax = figure_for(codes.shape)
    ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    save_figure(fig, out_png, tight=True)


def write_confidence_preview(path: Path, out_png: Path, title: str, size: int = 1024) -> None:
    """A PNG of the confidence raster (decimated from its average overviews), nodata transparent, with a
    colour bar of 0-100 %."""
    confidence = decimated(path, size, Resampling.average, masked=True)
    fig, ax = figure_for(confidence.shape)
    cmap = matplotlib.colormaps[CONFIDENCE_CMAP].with_extremes(bad=(0, 0, 0, 0))
    image = ax.imshow(confidence, cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="confidence of the mapped class (%)")
    save_figure(fig, out_png, tight=True)


def picture_figure(rgb: np.ndarray, title: str):
    """An (H, W, 3) picture with its title, 9 inches wide (compare_maps.py's change preview)."""
    fig, ax = plt.subplots(figsize=(9, 9 * rgb.shape[0] / rgb.shape[1] + 0.6), dpi=120)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return fig


def area_figure(res: dict, colour: Callable[[int], str]):
    """assess_map.py's areas.png: each class's mapped and error-adjusted area, with the 95 % intervals
    (``res``: assessment.json's content; ``colour``: a class code's colour)."""
    codes = list(res["classes"])
    c = [res["classes"][k] for k in codes]
    y = np.arange(len(codes))
    est = np.array([_or_nan(v["area_ha"]["estimate"]) for v in c])
    low = np.array([_or_nan(v["area_ha"]["ci95"][0]) for v in c])
    high = np.array([_or_nan(v["area_ha"]["ci95"][1]) for v in c])
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(codes) + 1.5))
    colours = [colour(int(k)) for k in codes]
    ax.barh(y - 0.2, [v["mapped_area_ha"] for v in c], 0.4, color=colours, edgecolor="0.3", label="mapped")
    ax.barh(y + 0.2, est, 0.4, color="white", edgecolor="0.3", hatch="//", label="error-adjusted")
    ax.errorbar(
        est,
        y + 0.2,
        xerr=[est - low, high - est],
        fmt="none",
        ecolor="black",
        capsize=3,
        label="95 % interval",
    )
    ax.set_yticks(y, [f"{k} {v['name']}" for k, v in zip(codes, c, strict=True)])
    ax.invert_yaxis()
    ax.set_xlabel("area (ha)")
    ax.set_title(f"Mapped and error-adjusted areas ({res['estimator']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _or_nan(v: float | None) -> float:
    return math.nan if v is None else v
