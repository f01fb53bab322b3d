"""Land-cover change between two class maps on one grid: from-to pair codes, the from-to matrix and
the confidence of a change, one block at a time.

Middle floor: imports colormap. A change raster holds, per pixel, the pair code of its from-to
transition: ``(before - 1) * 12 + after`` for before != after (2..143, one uint8), 0 where the two
maps agree or where either has no data. compare_maps.py writes it; the pair codes are what
sample_map.py stratifies on and assess_map.py estimates areas of, like class codes.
"""

from __future__ import annotations

import numpy as np

from colormap import CLASSES, CODES, NODATA, hex_to_rgb

N = max(CODES)  # 12 classes
UNCHANGED = 0  # the change raster's code where the maps agree or either has no data
CONFIDENCE_NODATA = 255  # a confidence raster's nodata (predict.py's and ours)


def pair_code(before, after):
    """The pair code of a from-to transition (meaningful where before != after, both 1..12); arrays
    should be int64 (uint8 would wrap)."""
    return (before - 1) * N + after


def pair_of(code: int) -> tuple[int, int]:
    """The (before, after) classes of a pair code."""
    before, after = divmod(int(code) - 1, N)
    return before + 1, after + 1


def is_pair(code: int) -> bool:
    """Whether a code is a change raster's pair code (a transition between two classes)."""
    return 1 <= int(code) <= N * N and pair_of(code)[0] != pair_of(code)[1]


def pair_name(code: int) -> str:
    """'Forest -> Bare soil' for the pair code of 3 -> 5."""
    before, after = pair_of(code)
    if before == after:  # compare_maps.py --stable
        return f"{CLASSES[before][0]} (unchanged)"
    return f"{CLASSES[before][0]} -> {CLASSES[after][0]}"


def pair_colour(code: int) -> tuple[int, int, int, int]:
    """A pair's colour: its after class's (what the place became), so that a change map reads like a
    map; an unchanged class's (--stable) light grey."""
    before, after = pair_of(code)
    return (225, 225, 225, 255) if before == after else (*hex_to_rgb(CLASSES[after][1]), 255)


def change_block(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A block's pair codes (uint8; 0 unchanged or nodata) and where both maps have data."""
    valid = (before != NODATA) & (after != NODATA)
    changed = valid & (before != after)
    codes = np.where(changed, pair_code(before.astype(np.int64), after), UNCHANGED).astype(np.uint8)
    return codes, valid


def with_stable(codes: np.ndarray, before: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A change block with the unchanged pixels coded as their class's own pair (a -> a, the diagonal
    codes 1, 14, ... 144): 0 is then only no data, and the unchanged area is a stratum a sample can
    draw from, where the changes a map missed lie."""
    stable = valid & (codes == UNCHANGED)
    return np.where(stable, pair_code(before.astype(np.int64), before), codes).astype(np.uint8)


def pair_counts(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(13, 13) pixel counts of each (before, after) pair where both maps have data (row 0 and column 0
    stay empty)."""
    index = before[valid].astype(np.int64) * (N + 1) + after[valid]
    return np.bincount(index, minlength=(N + 1) ** 2).reshape(N + 1, N + 1)


def change_confidence(
    codes: np.ndarray, conf_before: np.ndarray, conf_after: np.ndarray, keep_from: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The confidence of each change (the lower of the two years' confidence, percent; 255 where
    unchanged or unknown) and the codes with the changes kept: all, or with ``keep_from``, those both
    maps are at least that sure of (the others become unchanged)."""
    known = (conf_before != CONFIDENCE_NODATA) & (conf_after != CONFIDENCE_NODATA)
    low = np.minimum(conf_before, conf_after)
    changed = codes != UNCHANGED
    if keep_from is not None:
        codes = np.where(changed & known & (low >= keep_from), codes, UNCHANGED).astype(np.uint8)
        changed = codes != UNCHANGED
    conf = np.where(changed & known, low, CONFIDENCE_NODATA).astype(np.uint8)
    return codes, conf


def transitions(matrix_ha: np.ndarray) -> list[tuple[int, int, float]]:
    """(before, after, hectares) of every transition with area, the largest first."""
    rows = [(a, b, float(matrix_ha[a, b])) for a in CODES for b in CODES if a != b and matrix_ha[a, b] > 0]
    return sorted(rows, key=lambda t: (-t[2], t[0], t[1]))


def matrix_csv(matrix_ha: np.ndarray) -> str:
    """The from-to matrix as CSV: header row and first column the codes 1..12, rows before, columns
    after, hectares (the diagonal is the unchanged area)."""
    lines = ["before\\after," + ",".join(str(c) for c in CODES)]
    for a in CODES:
        lines.append(f"{a}," + ",".join(f"{matrix_ha[a, b]:.4f}" for b in CODES))
    return "\n".join(lines) + "\n"


def agreement(mapped: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(145, 145) pixel counts of (mapped pair code, true pair code) of two change blocks: a change
    map's per-transition recall and precision against a known change (0: unchanged)."""
    index = mapped.astype(np.int64) * (N * N + 1) + truth
    return np.bincount(index.ravel(), minlength=(N * N + 1) ** 2).reshape(N * N + 1, N * N + 1)


def recall_precision(counts: np.ndarray, code: int) -> tuple[float, float]:
    """Of the true change ``code``, the share mapped as it (recall); of the mapped, the share true
    (precision); NaN when there is none to divide by."""
    hit = float(counts[code, code])
    true, mapped = float(counts[:, code].sum()), float(counts[code].sum())
    return (hit / true if true else float("nan")), (hit / mapped if mapped else float("nan"))


def changes_only(codes: np.ndarray) -> np.ndarray:
    """A change block with --stable's unchanged codes (a -> a) back to 0."""
    before, after = np.divmod(codes.astype(np.int64) - 1, N)
    return np.where((codes > 0) & (before != after), codes, UNCHANGED).astype(np.uint8)
