"""Design-based accuracy and area estimation for a map assessed on a stratified random sample.

Bottom floor: pure numpy, imports nothing of ours. What a mapping agency publishes about a map
(Olofsson et al. 2014, "Good practices for estimating area and assessing accuracy of land change",
Remote Sensing of Environment 148: 42-57): the sample size for a target standard error of overall
accuracy (Cochran's formula, their eq. 13), its allocation to the strata, and the stratified
estimators of overall, user's and producer's accuracy and of each class's area, each with its
standard error. ``olofsson`` takes the error matrix of a sample whose strata are the map's classes
(their eqs. 2-10); ``stehman`` takes the sample unit by unit when the strata are not the classes of
the map assessed (Stehman 2014, "Estimating area and map accuracy for stratified random sampling
when the strata are different from the map classes", International Journal of Remote Sensing 35:
4923-4939, eqs. 3-5 and 25-28): a map filtered after sampling, another model, next year's map.

Finite population correction: both apply the factor (1 - n_h / N_h) to each stratum's variance
(``fpc=True``, the default): a stratum whose every pixel was labelled adds no sampling error, as it
should. Olofsson et al. print their formulas without it; ``fpc=False`` reproduces them exactly.
With millions of pixels per class the factor changes nothing visible; it matters for a small class
sampled whole. With ``fpc`` the same on both sides, ``stehman`` equals ``olofsson`` when the strata
are the map classes.

Intervals are the normal-approximation 95 % intervals (estimate +- 1.96 SE) of the papers, clipped
to the possible range ([0, 1] for accuracies and proportions). A quantity the sample cannot estimate
(the user's accuracy of a class with no sample unit, the producer's accuracy of a class never found
in the reference, a standard error from a stratum of one unit) is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.96  # the 97.5 % normal quantile, as the papers round it (1.959964)


@dataclass(frozen=True)
class Estimate:
    """An estimate and its standard error (NaN where the sample cannot give one)."""

    estimate: float
    se: float

    def ci95(self, low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
        """estimate +- 1.96 SE, clipped to [low, high] (the range the quantity can take)."""
        half = Z95 * self.se
        return max(low, self.estimate - half), min(high, self.estimate + half)

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in other units (a proportion of the map's area -> hectares)."""
        return Estimate(self.estimate * factor, self.se * factor)


@dataclass(frozen=True)
class Assessment:
    """Accuracy and area of a map from one sample; rows are map classes, columns reference classes,
    both in the order of ``classes``."""

    classes: tuple[int, ...]
    counts: np.ndarray  # (k, k) sample units by map class (row) and reference class (column)
    proportions: np.ndarray  # (k, k) estimated proportion of the map's area in each cell
    overall: Estimate
    users: tuple[Estimate, ...]
    producers: tuple[Estimate, ...]
    area: tuple[Estimate, ...]  # proportion of the area whose reference class is the column's


# ---------------------------------------------------------------------------------------------------
# Sample size and allocation


def cochran_size(weights: Sequence[float], users_accuracy: Sequence[float], target_se: float) -> int:
    """Sample size for a target standard error of overall accuracy (Olofsson 2014, eq. 13):
    n = (sum_i W_i S_i / S(O))^2 with S_i = sqrt(U_i (1 - U_i)), W_i the classes' area shares and
    U_i their conjectured user's accuracies; rounded up (their example: 640.5 -> 641)."""
    w = np.asarray(weights, np.float64)
    u = np.asarray(users_accuracy, np.float64)
    if not target_se > 0:
        raise ValueError(f"the target standard error must be positive, got {target_se}")
    if np.any((u < 0) | (u > 1)):
        raise ValueError("conjectured accuracies must be in [0, 1]")
    w = w / w.sum()
    n = float(np.sum(w * np.sqrt(u * (1 - u))) / target_se) ** 2
    return max(1, math.ceil(n - 1e-9))


def allocate(
    pixels: Sequence[int], size: int | None, min_per_class: int, fixed: Mapping[int, int] | None = None
) -> np.ndarray:
    """Sample size of each stratum (index into ``pixels``, its pixel count N_h).

    ``fixed`` sets a stratum's size outright (at most its pixels). The others share ``size`` minus the
    fixed ones: in proportion to their pixels, except that a stratum whose proportional share would be
    below ``min_per_class`` gets that minimum (all its pixels when it has fewer) and the rest is shared
    among the larger ones (Olofsson 2014's compromise between proportional and equal allocation).
    The minima win over ``size``: the total is larger when they do not fit. Rounding by largest
    remainders (ties to the lower index), so the total is ``size`` exactly otherwise.
    """
    big_n = np.asarray(pixels, np.int64)
    n = np.zeros(len(big_n), np.int64)
    fixed = dict(fixed or {})
    for h, k in fixed.items():
        if not 0 <= k <= big_n[h]:
            raise ValueError(f"stratum {h}: a sample of {k} from {big_n[h]} pixels")
        n[h] = k
    free = [h for h in range(len(big_n)) if h not in fixed and big_n[h] > 0]
    if not free:
        return n
    if size is None:
        raise ValueError("a sample size is needed for the strata not fixed")
    floor = np.minimum(big_n, max(0, min_per_class))
    small: set[int] = set()
    while True:
        big = [h for h in free if h not in small]
        budget = size - n.sum() - sum(int(floor[h]) for h in small)
        share = budget * big_n[big] / max(1, big_n[big].sum())
        newly = {h for h, s in zip(big, share, strict=True) if s < floor[h]}
        if not newly:
            break
        small |= newly
    for h in small:
        n[h] = floor[h]
    if big:
        n[big] = _largest_remainder(np.minimum(share, big_n[big]), big_n[big])
    return n


def _largest_remainder(share: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Integers summing to round(sum(share)), each within one of its share and at most its cap."""
    base = np.floor(share).astype(np.int64)
    extra = round(float(share.sum())) - int(base.sum())
    order = sorted(range(len(share)), key=lambda i: (-(share[i] - base[i]), i))
    for i in order:
        if extra <= 0:
            break
        if base[i] < cap[i]:
            base[i] += 1
            extra -= 1
    return base


# ---------------------------------------------------------------------------------------------------
# Olofsson et al. 2014: strata = map classes, from the error matrix


def olofsson(
    counts: np.ndarray, pixels: Sequence[int], classes: Sequence[int], fpc: bool = True
) -> Assessment:
    """The stratified estimators of Olofsson et al. 2014 (eqs. 2-10) from the error matrix in sample
    counts (rows = map classes = strata, columns = reference classes, in the order of ``classes``) and
    each map class's pixels N_i. A class found only in the reference has a row of zeros and N_i = 0."""
    n = np.asarray(counts, np.float64)
    big_n = np.asarray(pixels, np.float64)
    ni = n.sum(axis=1)
    if np.any((ni == 0) & (big_n > 0)):
        raise ValueError("a map class with pixels has no sample unit")
    w = big_n / big_n.sum()
    keep = 1 - ni / np.where(big_n > 0, big_n, 1) if fpc else np.ones_like(ni)  # (1 - n_i / N_i)
    share = np.divide(n, ni[:, None], out=np.zeros_like(n), where=ni[:, None] > 0)  # n_ij / n_i.
    p = w[:, None] * share  # eq. 4: estimated proportion of area in cell (i, j)
    # each stratum's factor W_i^2 (1 - f_i) / (n_i - 1); zero where the stratum is sampled whole
    term = _stratum_factor(w**2 * keep, ni)
    users = np.diag(share)
    overall = Estimate(float(np.trace(p)), _sqrt(np.sum(term * users * (1 - users))))  # eq. 5
    ua = tuple(_users(users[i], keep[i], ni[i]) for i in range(len(ni)))  # eq. 6
    area = tuple(
        Estimate(float(p[:, j].sum()), _sqrt(np.sum(term * share[:, j] * (1 - share[:, j]))))  # eq. 10
        for j in range(len(ni))
    )
    pa = tuple(_producers(j, p, share, big_n, ni, keep) for j in range(len(ni)))  # eq. 7
    return Assessment(tuple(classes), n.astype(np.int64), p, overall, ua, pa, area)


def _stratum_factor(numerator: np.ndarray, ni: np.ndarray) -> np.ndarray:
    """numerator / (n_i - 1), 0 where the numerator is 0 (a stratum sampled whole, or empty), NaN where
    a stratum of one unit leaves its variance unknown."""
    out = np.zeros_like(numerator)
    for i, (a, m) in enumerate(zip(numerator, ni, strict=True)):
        out[i] = 0.0 if a == 0 else (a / (m - 1) if m > 1 else math.nan)
    return out


def _sqrt(v: float) -> float:
    return float(math.sqrt(v)) if v >= 0 else math.nan


def _users(u: float, keep: float, ni: float) -> Estimate:
    if ni == 0:
        return Estimate(math.nan, math.nan)
    factor = _stratum_factor(np.array([keep]), np.array([ni]))[0]
    return Estimate(float(u), _sqrt(factor * u * (1 - u)))


def _producers(j: int, p, share, big_n, ni, keep) -> Estimate:
    """Producer's accuracy of class j and its standard error (Olofsson 2014, eq. 7)."""
    total = p[:, j].sum()
    if total == 0:
        return Estimate(math.nan, math.nan)
    pa = p[j, j] / total
    est_nj = float(np.sum(big_n * share[:, j]))  # estimated pixels of reference class j
    factor = _stratum_factor(big_n**2 * keep, ni)
    own = factor[j] * (1 - pa) ** 2 * share[j, j] * (1 - share[j, j]) if ni[j] > 0 else 0.0
    others = [factor[i] * share[i, j] * (1 - share[i, j]) for i in range(len(ni)) if i != j and ni[i] > 0]
    return Estimate(float(pa), _sqrt((own + pa**2 * float(np.sum(others))) / est_nj**2))


# ---------------------------------------------------------------------------------------------------
# Stehman 2014: strata different from the map classes, unit by unit


class Design:
    """A stratified random sample: the stratum of each unit and the strata's pixels N_h. Estimates
    means of per-unit values (Stehman 2014 eqs. 3-5) and ratios of two of them (eqs. 25-28)."""

    def __init__(self, unit_stratum: np.ndarray, pixels: np.ndarray, fpc: bool = True):
        self.h = np.asarray(unit_stratum, np.intp)
        self.big_n = np.asarray(pixels, np.float64)
        self.n = np.bincount(self.h, minlength=len(self.big_n)).astype(np.float64)
        if np.any((self.n == 0) & (self.big_n > 0)):
            raise ValueError("a stratum with pixels has no sample unit")
        keep = 1 - self.n / np.where(self.big_n > 0, self.big_n, 1) if fpc else np.ones_like(self.n)
        # N_h^2 (1 - f_h) / n_h: each stratum's weight in a variance
        self.factor = np.divide(self.big_n**2 * keep, self.n, out=np.zeros_like(self.n), where=self.n > 0)

    def _mean(self, y: np.ndarray) -> np.ndarray:
        return np.divide(self._sum(y), self.n, out=np.zeros_like(self.n), where=self.n > 0)

    def _sum(self, y: np.ndarray) -> np.ndarray:
        return np.bincount(self.h, weights=y, minlength=len(self.n))

    def _cov(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Each stratum's sample covariance of y and x (ddof 1); 0 for one unit sampled whole, NaN for
        one unit of a larger stratum."""
        my, mx = self._mean(y), self._mean(x)
        s = self._sum((y - my[self.h]) * (x - mx[self.h]))
        out = np.divide(s, self.n - 1, out=np.zeros_like(s), where=self.n > 1)
        out[(self.n == 1) & (self.factor > 0)] = math.nan
        return out

    def _total_var(self, c: np.ndarray) -> float:
        return float(np.sum(np.where(self.factor > 0, self.factor * c, 0.0)))

    def proportion(self, y: np.ndarray) -> Estimate:
        """The mean of y over the population (eq. 3) and its standard error (eq. 5)."""
        total = self.big_n.sum()
        est = float(np.sum(self.big_n * self._mean(y)) / total)
        return Estimate(est, _sqrt(self._total_var(self._cov(y, y)) / total**2))

    def ratio(self, y: np.ndarray, x: np.ndarray) -> Estimate:
        """R = Y / X, ratio of two population totals (eq. 27) and its standard error (eq. 28)."""
        tx = float(np.sum(self.big_n * self._mean(x)))
        if tx == 0:
            return Estimate(math.nan, math.nan)
        r = float(np.sum(self.big_n * self._mean(y))) / tx
        v = self._cov(y, y) + r**2 * self._cov(x, x) - 2 * r * self._cov(y, x)
        return Estimate(r, _sqrt(self._total_var(v) / tx**2))


def stehman(
    stratum: np.ndarray,
    map_class: np.ndarray,
    reference: np.ndarray,
    stratum_pixels: Mapping[int, int],
    fpc: bool = True,
) -> Assessment:
    """Stehman 2014's estimators from each unit's stratum, map class and reference class (codes) and
    each stratum's pixels. A unit whose map class is 0 (no data in the map assessed) is wrong in overall
    accuracy and counts in the reference classes' areas; it has no row."""
    codes = sorted(stratum_pixels)
    index = {c: i for i, c in enumerate(codes)}
    if any(int(s) not in index for s in np.unique(stratum)):
        raise ValueError("a unit's stratum is not among the strata")
    design = Design(
        np.array([index[int(s)] for s in stratum]), np.array([stratum_pixels[c] for c in codes]), fpc
    )
    m, r = np.asarray(map_class), np.asarray(reference)
    classes = tuple(sorted({int(c) for c in np.unique(np.concatenate([m, r])) if c != 0}))
    k = len(classes)
    counts = np.array([[np.sum((m == a) & (r == b)) for b in classes] for a in classes], np.int64)
    p = np.array(
        [[design.proportion(((m == a) & (r == b)) * 1.0).estimate for b in classes] for a in classes]
    )
    hit = (m == r) * 1.0
    overall = design.proportion(hit)
    ua = tuple(design.ratio(hit * (m == c), (m == c) * 1.0) for c in classes)
    pa = tuple(design.ratio(hit * (r == c), (r == c) * 1.0) for c in classes)
    area = tuple(design.proportion((r == c) * 1.0) for c in classes)
    return Assessment(classes, counts.reshape(k, k), p.reshape(k, k), overall, ua, pa, area)
