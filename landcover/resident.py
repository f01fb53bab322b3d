"""Tiles resident in memory: a split's decoded tiles held as one tensor, and the batches drawn from it.

Middle floor: rests on tile_cache.py (the decoded arrays), transforms.py (training's transform) and
common.py (one-line failures). For a training step that outruns the DataLoader's workers (a 1.9 MB
tile crossing a process boundary costs more than it saves once decoding is gone):
``choose_placement`` puts a split's tiles on the GPU when they fit, else in host memory, else says
why not (the caller keeps the workers); ``ResidentLoader`` replaces the DataLoader on that path,
yielding bit for bit its batches. Everything but the CUDA stream and the pinning runs on CPU tensors
too, which is how it is tested without a GPU.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler

from landcover.common import fail
from landcover.tile_cache import open_tile_cache
from landcover.transforms import augment

DEVICE, HOST, WORKERS = "device", "host", "workers"  # where the tiles are held (Placement.where)
GPU_SHARE = 0.5  # tiles take at most this share of the GPU's free memory: the rest is the model's
HOST_SHARE = 0.5  # and at most this share of the host memory available to each process of the node
LOAD_CHUNK = 256 * 2**20  # bytes copied at a time while loading (one staging buffer, not a second copy)
SLOTS = 3  # pinned host batches: one being gathered, one being copied to the GPU, one spare

# Unsigned dtypes with few CUDA kernels travel as signed views of the same bits: exact for any value.
_BIT_VIEWS = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


# ---------------------------------------------------------------------------------------------------
# Where the tiles fit


def cache_bytes(stem: Path) -> int:
    """Bytes of a tile cache's image and target arrays (what holding the split in memory takes)."""
    return sum(a.nbytes for a in open_tile_cache(stem))


def gpu_free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, as the driver reports it (other processes' use included)."""
    return torch.cuda.mem_get_info(device)[0]


def host_available_bytes() -> int:
    """Host memory available without swapping: /proc/meminfo's MemAvailable (page cache counts as
    available), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def processes_per_node() -> int:
    """Training processes sharing this node's host memory (torchrun's LOCAL_WORLD_SIZE), each holding
    its own copy of the tiles."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


@dataclass(frozen=True)
class Placement:
    """Where a run's tiles are held (DEVICE, HOST or WORKERS: not held, the worker DataLoader reads
    them) and one line saying why, with the sizes."""

    where: str
    reason: str

    @property
    def resident(self) -> bool:
        return self.where != WORKERS


def choose_placement(
    nbytes: int,
    device: torch.device,
    *,
    gpu_free: int | None = None,
    host_available: int | None = None,
    processes: int | None = None,
) -> Placement:
    """Where ``nbytes`` of tiles (every split this process holds) go for training on ``device``.

    The rule: on the GPU when they take at most GPU_SHARE of its free memory (the rest is left to the
    model, its activations and cuDNN's workspaces); else in host memory when they take at most
    HOST_SHARE of the memory available to each of the node's ``processes`` (each holds a copy); else
    nowhere: the worker loader. On a CPU device the host memory is the device's. The memory queries
    default to the system's (``gpu_free_bytes``, ``host_available_bytes``, ``processes_per_node``).
    """
    if nbytes < 0:
        fail(f"tiles cannot take {nbytes} bytes")
    processes = processes_per_node() if processes is None else processes
    if processes < 1:
        fail(f"processes per node must be at least 1, not {processes}")
    free = None
    if device.type == "cuda":
        free = gpu_free_bytes(device) if gpu_free is None else gpu_free
        if nbytes <= GPU_SHARE * free:
            return Placement(DEVICE, f"tiles on the GPU: {gb(nbytes)} of {gb(free)} free")
    available = host_available_bytes() if host_available is None else host_available
    host = f"{gb(available)} of host memory available" + (
        f" to {processes} processes" if processes > 1 else ""
    )
    if nbytes <= HOST_SHARE * available / processes:
        if device.type == "cpu":
            return Placement(DEVICE, f"tiles in host memory (the CPU device): {gb(nbytes)} of {host}")
        how = "through pinned buffers" if device.type == "cuda" else f"to the {device.type} device"
        gpu = "," if free is None else f" do not fit in {GPU_SHARE:.0%} of the GPU's {gb(free)} free,"
        return Placement(HOST, f"tiles in host memory, batches copied {how}: {gb(nbytes)}{gpu} {host}")
    gpu = "" if free is None else f"{GPU_SHARE:.0%} of the GPU's {gb(free)} free nor in "
    return Placement(
        WORKERS,
        f"worker loader: {gb(nbytes)} of tiles fit neither in {gpu}{HOST_SHARE:.0%} of the {host}"
        if gpu
        else f"worker loader: {gb(nbytes)} of tiles do not fit in {HOST_SHARE:.0%} of the {host}",
    )


# ---------------------------------------------------------------------------------------------------
# The tiles


class ResidentTiles:
    """A split's tiles as two tensors: images (N, C, H, W) and targets (N, H, W) uint8.

    The images keep their bits; a dtype with few CUDA kernels (uint16) is held as a signed view of the
    same bits (int16) and viewed back when a batch is yielded (``dtype``), so every value is exact.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype):
        if images.ndim != 4 or targets.shape != (images.shape[0], *images.shape[2:]):
            fail(f"tiles of shape {tuple(images.shape)} do not match targets of {tuple(targets.shape)}")
        if targets.dtype != torch.uint8 or images.device != targets.device:
            fail(f"targets must be uint8 beside the images, not {targets.dtype} on {targets.device}")
        self.images, self.targets, self.dtype = images, targets, dtype

    @classmethod
    def load(cls, stem: Path, device: torch.device, where: str) -> ResidentTiles:
        """A tile cache's arrays (``build_tile_cache``'s stem) on ``device`` (DEVICE) or in host memory
        (HOST), copied a chunk at a time so that no second copy of the split is ever made."""
        if where not in (DEVICE, HOST):
            fail(f"tiles are held on the {DEVICE} or the {HOST}, not {where!r}")
        home = device if where == DEVICE else torch.device("cpu")
        imgs, ys = open_tile_cache(stem)
        dtype = torch.from_numpy(np.empty(0, imgs.dtype)).dtype
        held = _BIT_VIEWS.get(dtype, dtype)
        images = torch.empty(imgs.shape, dtype=held, device=home)
        targets = torch.empty(ys.shape, dtype=torch.uint8, device=home)
        for src, dst in ((imgs, images), (ys, targets)):
            _fill(dst, src)
        return cls(images, targets, dtype)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def home(self) -> torch.device:
        """Where the tiles are held."""
        return self.images.device

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.targets.nbytes


def _fill(dst: torch.Tensor, src: np.ndarray) -> None:
    """Copy a memory-mapped array into ``dst`` (same shape, same bits) a chunk of rows at a time: into
    host memory directly, onto a GPU through one pinned staging buffer."""
    rows = max(1, LOAD_CHUNK // max(1, src[:1].nbytes))
    if dst.device.type == "cpu":
        flat = dst.numpy().view(src.dtype)
        for a in range(0, len(src), rows):
            flat[a : a + rows] = src[a : a + rows]
        return
    pin = dst.device.type == "cuda"
    stage = torch.empty((min(rows, len(src)), *src.shape[1:]), dtype=dst.dtype, pin_memory=pin)
    for a in range(0, len(src), rows):
        n = min(rows, len(src) - a)
        stage.numpy().view(src.dtype)[:n] = src[a : a + n]
        dst[a : a + n].copy_(stage[:n])  # synchronous: the staging buffer is refilled next


# ---------------------------------------------------------------------------------------------------
# An epoch's batches


@dataclass
class EpochPlan:
    """An epoch's batches, each gathered with its tiles grouped by transform.

    ``gather[s:e]``: the tile indices of batch (s, e) in gathering order (sorted by k, stable);
    ``place[s:e]``: where each gathered tile goes in the batch; ``groups[b]``: (start, end, k) of each
    run of one transform within batch b, relative to its start."""

    bounds: list[tuple[int, int]]
    gather: torch.Tensor
    place: torch.Tensor
    groups: list[list[tuple[int, int, int]]]


def plan_epoch(draws: Iterable, batch_size: int, n: int, square: bool) -> EpochPlan:
    """Group a sampler's draws (``(index, k)`` pairs, or plain indices: no transform) into batches of
    ``batch_size`` in order, as the DataLoader's batch sampler does (the last one may be partial)."""
    pairs = [(int(d[0]), int(d[1])) if isinstance(d, tuple | list) else (int(d), 0) for d in draws]
    idx = torch.tensor([i for i, _ in pairs], dtype=torch.int64)
    ks = torch.tensor([k for _, k in pairs], dtype=torch.int64)
    bad = next(((i, k) for i, k in pairs if not (0 <= i < n and 0 <= k < 8)), None)
    if bad is not None:
        fail(f"a draw asks for tile {bad[0]} with transform {bad[1]}: the split has {n} tiles, k is 0..7")
    if not square and bool((ks % 2 == 1).any()):
        fail("a rotation by 90 degrees needs square tiles: these are not (draw only k 0, 2, 4, 6)")
    batches = BatchSampler(range(len(pairs)), batch_size, drop_last=False)  # as the DataLoader's
    bounds = [(b[0], b[-1] + 1) for b in batches]
    gather, place, groups = torch.empty_like(idx), torch.empty_like(idx), []
    for s, e in bounds:
        order = torch.sort(ks[s:e], stable=True).indices
        gather[s:e], place[s:e] = idx[s:e][order], order
        runs = torch.unique_consecutive(ks[s:e][order], return_counts=True)
        ends = runs[1].cumsum(0).tolist()
        groups.append([(a, b, k) for a, b, k in zip([0, *ends[:-1]], ends, runs[0].tolist(), strict=True)])
    return EpochPlan(bounds, gather, place, groups)


def gather_rows(src: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``src[idx]`` along the first dim, into ``out`` when given. On the host a row is one memcpy
    through numpy (which releases the GIL; torch's CPU index_select is slower on
    tiles); on a GPU, index_select."""
    if src.device.type != "cpu":
        return torch.index_select(src, 0, idx.to(src.device), out=out)
    if out is None:
        out = torch.empty((len(idx), *src.shape[1:]), dtype=src.dtype)
    a, o = src.numpy(), out.numpy()
    for j, i in enumerate(idx.tolist()):
        o[j] = a[i]
    return out


class ResidentLoader:
    """Batches of resident tiles, as ``dataset.make_loader``'s DataLoader gives them: ``(raw, y)``.

    ``draws`` is what the DataLoader would sample: train.py's ``EpochSampler`` (``(index, k)`` draws;
    iterated anew each epoch, after the caller's ``set_epoch``) or a list of indices (validation, no
    transform). Tiles held on ``device`` are gathered there; tiles held in host memory for another
    device are gathered on a host thread into pinned buffers two batches ahead and copied on a side
    CUDA stream while the previous batch trains. The batches are on ``device``, so ``to_device``'s
    copy is a no-op; raw in the stored dtype, y uint8.
    """

    def __init__(self, tiles: ResidentTiles, draws: Iterable, batch_size: int, device: torch.device):
        if batch_size < 1:
            fail(f"batch size must be at least 1, not {batch_size}")
        self.tiles, self.draws, self.batch_size, self.device = tiles, draws, batch_size, torch.device(device)
        self.square = tiles.images.shape[-1] == tiles.images.shape[-2]
        self._stream: torch.cuda.Stream | None = None  # the copy stream of the host path on CUDA

    numpy_on_cpu = True  # a CPU device arranges its batches in numpy (False: in torch, as a GPU does)

    def __len__(self) -> int:
        return math.ceil(len(self.draws) / self.batch_size)

    @property
    def through_host(self) -> bool:
        """Tiles in host memory for another device: each batch is copied over."""
        return self.tiles.home.type == "cpu" and self.device.type != "cpu"

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = plan_epoch(self.draws, self.batch_size, len(self.tiles), self.square)
        return self._through_host(plan) if self.through_host else self._at_home(plan)

    def _at_home(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Tiles held where the batches are used: gather and arrange, nothing to copy."""
        home = self.tiles.home
        if home.type == "cpu" and self.numpy_on_cpu:
            for b in range(len(plan.bounds)):
                yield host_batch(self.tiles, plan, b)
            return
        gather, place = plan.gather.to(home), plan.place.to(home)
        for b, (s, e) in enumerate(plan.bounds):
            img, y = gather_rows(self.tiles.images, gather[s:e]), gather_rows(self.tiles.targets, gather[s:e])
            yield arrange(img, y, place[s:e], plan.groups[b], self.tiles.dtype)

    def _through_host(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batch b+2 is gathered on a host thread and b+1 copied while the caller trains on batch b; a
        pinned buffer is refilled only once its last copy has finished (its event)."""
        nb = len(plan.bounds)
        if nb == 0:
            return
        place = plan.place.to(self.device)
        slots = [self._slot() for _ in range(min(SLOTS, nb))]
        copied: list[torch.cuda.Event | None] = [None] * len(slots)
        pending: deque[Future] = deque()
        pool = ThreadPoolExecutor(1, thread_name_prefix="resident-gather")

        def submit(b: int) -> None:
            pending.append(
                pool.submit(self._gather_host, plan, b, slots[b % len(slots)], copied[b % len(slots)])
            )

        try:
            for b in range(min(2, nb)):
                submit(b)
            nxt = self._copy(pending.popleft().result(), copied, 0)
            for b in range(nb):
                cur = nxt
                if b + 2 < nb:
                    submit(b + 2)
                if b + 1 < nb:
                    nxt = self._copy(pending.popleft().result(), copied, (b + 1) % len(slots))
                s, e = plan.bounds[b]
                yield arrange(*self._arrived(*cur), place[s:e], plan.groups[b], self.tiles.dtype)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _slot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A host batch buffer (images, targets): pinned for a CUDA device, so its copy is asynchronous."""
        pin = self.device.type == "cuda"
        img, y = self.tiles.images, self.tiles.targets
        return (
            torch.empty((self.batch_size, *img.shape[1:]), dtype=img.dtype, pin_memory=pin),
            torch.empty((self.batch_size, *y.shape[1:]), dtype=y.dtype, pin_memory=pin),
        )

    def _gather_host(
        self, plan: EpochPlan, b: int, slot: tuple[torch.Tensor, torch.Tensor], event: torch.cuda.Event | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch b's tiles (in gathering order) into a host buffer, once its previous copy is done."""
        if event is not None:
            event.synchronize()
        s, e = plan.bounds[b]
        img, y = slot[0][: e - s], slot[1][: e - s]
        gather_rows(self.tiles.images, plan.gather[s:e], img)
        gather_rows(self.tiles.targets, plan.gather[s:e], y)
        return img, y

    def _copy(
        self, host: tuple[torch.Tensor, torch.Tensor], copied: list, slot: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        """Start copying a host batch to the device; on CUDA on the side stream, with its event."""
        img, y = host
        if self.device.type != "cuda":  # a synchronous copy: the buffer is free again at once
            return img.to(self.device, copy=True), y.to(self.device, copy=True), None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            img, y = img.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        copied[slot] = event
        return img, y, event

    def _arrived(
        self, img: torch.Tensor, y: torch.Tensor, event: torch.cuda.Event | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A copied batch, usable on the caller's stream (which waits for the copy; the allocator keeps
        the batch's memory until that stream is done with it)."""
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            img.record_stream(stream)
            y.record_stream(stream)
        return img, y


def host_batch(tiles: ResidentTiles, plan: EpochPlan, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch b of tiles held on a CPU device: each tile copied once, transformed on the way, by numpy
    (torch's small CPU ops cost more in thread hand-offs than in copying)."""
    s, e = plan.bounds[b]
    src = (tiles.images, tiles.targets)
    out = tuple(torch.empty((e - s, *t.shape[1:]), dtype=t.dtype) for t in src)
    gather, place = plan.gather[s:e].tolist(), plan.place[s:e].tolist()
    for a, z, k in plan.groups[b]:
        for p in range(a, z):
            img, y = augment(src[0].numpy()[gather[p]], src[1].numpy()[gather[p]], k)
            out[0].numpy()[place[p]], out[1].numpy()[place[p]] = img, y
    return out[0].view(tiles.dtype), out[1]


def arrange(
    img: torch.Tensor,
    y: torch.Tensor,
    place: torch.Tensor,
    groups: list[tuple[int, int, int]],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles gathered in groups of one transform -> the batch in draw order, each group transformed
    at once; images viewed back to their stored ``dtype``."""
    if len(groups) == 1:  # one transform for the whole batch: the gathering order is the draw order
        img, y = (t.contiguous() for t in augment(img, y, groups[0][2]))
    else:
        out_img, out_y = torch.empty_like(img), torch.empty_like(y)
        for a, b, k in groups:
            moved = augment(img[a:b], y[a:b], k)
            out_img.index_copy_(0, place[a:b], moved[0])
            out_y.index_copy_(0, place[a:b], moved[1])
        img, y = out_img, out_y
    return img.view(dtype), y


def hold_tiles(
    stems: list[Path],
    device: torch.device,
    *,
    gpu_free: int | None = None,
    host_available: int | None = None,
    processes: int | None = None,
) -> tuple[list[ResidentTiles] | None, Placement]:
    """The tile caches ``stems`` (every split of the run) held where ``choose_placement`` puts them
    together, and the placement; None when they stay with the worker loader."""
    placement = choose_placement(
        sum(cache_bytes(s) for s in stems),
        device,
        gpu_free=gpu_free,
        host_available=host_available,
        processes=processes,
    )
    if not placement.resident:
        return None, placement
    return [ResidentTiles.load(s, device, placement.where) for s in stems], placement
