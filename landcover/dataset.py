"""Training data as torch sees it: the tile Dataset, the epoch sampler, the loader, a batch on its device.

Middle floor: rests on tiles.py, stats.py, tile_cache.py, resident.py, transforms.py, distributed.py
and common.py. ``make_batches`` is the one place that builds a split's batches, for either path
(worker processes, or the tiles held in memory); tiles travel as stored and ``to_device``
standardises them on the model's device. ``EpochSampler`` draws the order and the dihedral
transforms from (seed, epoch) alone, so a run depends neither on its workers nor on a resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from landcover.common import fail
from landcover.distributed import Proc, derive_seed, seed_worker, upload
from landcover.resident import ResidentLoader, ResidentTiles
from landcover.stats import Normalize
from landcover.tile_cache import open_tile_cache
from landcover.tiles import read_tile, target
from landcover.transforms import augment


class TileDataset(Dataset):
    """Image tiles as stored and their targets; random dihedral transforms when ``augment``.

    Returns ``(raw, y)``: raw (C, H, W) in the tiles' own dtype (uint16 for Sentinel-2), to be
    standardised by ``Normalize`` on the device; y uint8 (H, W), ``target``. Randomness comes from
    torch's RNG, so a seeded DataLoader gives the same transforms every run. An index may also be a
    pair ``(i, k)``: tile i with dihedral transform k (0..7) chosen by the caller (train.py draws k in
    its sampler, so the transforms do not depend on the number of workers); no randomness is used then.
    With ``cache`` (from ``build_tile_cache``) the tiles come from its memory-mapped arrays instead of
    being decoded: the same values, a copy instead of GDAL decoding.
    """

    def __init__(
        self, pairs: list[tuple[Path, Path]], bands: int, augment: bool = False, cache: Path | None = None
    ):
        self.pairs = pairs
        self.bands = bands
        self.augment = augment
        self.cache = cache
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # memory maps, opened in each process

    def __getstate__(self) -> dict:  # worker processes open their own memory maps
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile i as stored and its target, from the cache or the files."""
        if self.cache is None:
            img, mask = read_tile(*self.pairs[i])
            if img.shape[0] != self.bands:
                fail(f"image tile has {img.shape[0]} bands, expected {self.bands}: {self.pairs[i][0]}")
            return img, target(img, mask)
        if self._arrays is None:
            self._arrays = open_tile_cache(self.cache)
        return self._arrays[0][i], self._arrays[1][i]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, k = (int(item[0]), int(item[1])) if isinstance(item, tuple | list) else (int(item), None)
        img, y = self.read(i)
        if k is None and self.augment:
            k = int(torch.randint(8, ()).item())
        if k:
            img, y = augment(img, y, k)
        # C-contiguous and writable: copies a transformed view or a read-only memory map, not a fresh read
        img, y = (np.require(a, requirements=("C", "W")) for a in (img, y))
        return torch.from_numpy(img), torch.from_numpy(y)


class EpochSampler(Sampler):
    """This process's shard of an epoch of ``n`` draws, each tile with its dihedral transform: ``(index, k)``.

    Uniform (no ``weights``): a permutation of the tiles. With ``weights`` (one per tile, see
    ``rare_class_weights``): ``n`` tiles drawn with replacement in proportion to their weights, so tiles
    holding rare classes come back more often. Order and transforms are drawn from a generator seeded
    with (seed, epoch) only, so they do not depend on the number of workers or on a resume. Sharding as
    DistributedSampler does: the epoch is padded to a multiple of the number of processes and process r
    takes every world-th draw from r.
    """

    def __init__(
        self, n: int, seed: int, proc: Proc, augment: bool = True, weights: Sequence[float] | None = None
    ):
        self.n, self.seed, self.proc, self.augment = n, seed, proc, augment
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and (len(self.weights) != n or not bool((self.weights >= 0).all())):
            raise ValueError(f"need {n} non-negative tile weights, got {len(self.weights)}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.proc.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 1))
        if self.weights is None:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        ks = torch.randint(8, (self.n,), generator=g).tolist() if self.augment else [0] * self.n
        total = len(self) * self.proc.world
        draws = [(order[j % self.n], ks[j % self.n]) for j in range(total)]
        yield from draws[self.proc.rank : total : self.proc.world]


def rare_class_weights(tile_class_pixels: Sequence[Sequence[int]], share: float) -> np.ndarray:
    """Sampling weight of each tile (they sum to 1): ``1 - share`` spread evenly over the tiles, and
    ``share`` spread evenly over the classes, each class's part over the tiles in proportion to the
    pixels of that class they hold. A class on 0.1 % of the pixels is then drawn about as often as one
    on 30 %: rare classes (roads, parks, mines) get as many optimizer steps as common ones, without
    the offline copies of create_new_images.py. Code 0 (nodata) is ignored.
    """
    counts = np.asarray(tile_class_pixels, dtype=np.float64)[:, 1:]
    n = len(counts)
    totals = counts.sum(0)
    present = totals > 0
    balanced = (counts[:, present] / totals[present]).mean(1) if present.any() else np.full(n, 1.0 / n)
    return (1.0 - share) / n + share * balanced


def make_loader(
    ds: Dataset, sampler: Sequence | Sampler, batch: int, workers: int, device: torch.device, seed: int
) -> DataLoader:
    """A DataLoader with persistent, seeded workers and pinned memory on CUDA."""
    extra = {}
    if workers > 0:
        extra = dict(persistent_workers=True, prefetch_factor=4, worker_init_fn=seed_worker)
    return DataLoader(
        ds,
        batch_sampler=BatchSampler(sampler, batch, drop_last=False),  # as ResidentLoader batches
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def make_batches(
    ds: TileDataset,
    draws: Sequence | Sampler,
    batch: int,
    device: torch.device,
    *,
    held: ResidentTiles | None,
    workers: int,
    seed: int,
) -> DataLoader | ResidentLoader:
    """The batches of ``ds`` in the order of ``draws`` (a sampler's ``(index, k)`` draws, or indices),
    ``(raw, y)`` as stored, the same on either path: from the tiles ``held`` in memory
    (``resident.hold_tiles``; gathered and transformed batch-wise where they are held), else from
    ``workers`` processes reading the tile cache or the files (seeded with ``seed``)."""
    if held is not None:
        return ResidentLoader(held, draws, batch, device)
    return make_loader(ds, draws, batch, workers, device, seed)


def to_device(
    raw: torch.Tensor, y: torch.Tensor, norm: Normalize, device: torch.device, fmt: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch (tiles as stored, uint8 targets) -> normalised float32 input and int64 targets on
    ``device``: the bytes cross to the GPU as uint16 and uint8, and the GPU does the arithmetic."""
    x = norm(upload(raw, device)).contiguous(memory_format=fmt)
    return x, upload(y, device).long()
