"""resident.py: batches of resident tiles are the worker loader's bit for bit (order, transforms, shards,
the last partial batch, every uint16 value), and the tiles go where the memory rule puts them."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_pair

from landcover import tile_cache
from landcover.common import InputError
from landcover.dataset import EpochSampler, TileDataset, make_loader, to_device
from landcover.distributed import Proc
from landcover.layout import tile_pairs
from landcover.resident import (
    DEVICE,
    HOST,
    WORKERS,
    Placement,
    ResidentLoader,
    ResidentTiles,
    cache_bytes,
    choose_placement,
    hold_tiles,
)
from landcover.stats import Normalize
from landcover.tile_cache import build_tile_cache
from landcover.transforms import dihedral

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N, BANDS, SIZE, BATCH = 11, 3, 6, 4  # 11 tiles: batches of 4, 4 and 3 (one rank) or 4 and 2 (two)
CPU = torch.device("cpu")
GB = 10**9


def write_split(folder: Path, n: int = N, shape: tuple[int, int] = (SIZE, SIZE)) -> list[tuple[Path, Path]]:
    """Tiles of random uint16 values over the whole range (>= 32768 too), some nodata, random codes."""
    rng = np.random.default_rng(3)
    for i in range(n):
        img = rng.integers(0, 65536, (BANDS, *shape)).astype(np.uint16)
        img[:, 0, :2] = 0  # nodata pixels
        img[0, 1, 1] = 65535
        write_pair(folder, f"t{i:02d}.tif", img, rng.integers(0, 15, shape).astype(np.uint8))
    return tile_pairs(folder)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[list[tuple[Path, Path]], Path]:
    """The train tiles and their tile cache."""
    root = tmp_path_factory.mktemp("resident")
    pairs = write_split(root / "train")
    yield pairs, build_tile_cache(pairs, root / "cache", "train", threads=1)
    tile_cache.release_tile_caches()


def worker_batches(pairs, stem, draws, augment: bool, epochs=(0,), batch: int = BATCH) -> list:
    """What train.py's DataLoader gives (no workers: the same batches as with them)."""
    loader = make_loader(TileDataset(pairs, BANDS, augment=augment, cache=stem), draws, batch, 0, CPU, 0)
    return list(each_epoch(loader, draws, epochs))


def each_epoch(loader, draws, epochs):
    for epoch in epochs:
        if isinstance(draws, EpochSampler):
            draws.set_epoch(epoch)
        yield from loader


def assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for b, ((x, y), (xw, yw)) in enumerate(zip(got, want, strict=True)):
        assert x.dtype == torch.uint16 and y.dtype == torch.uint8, b
        assert x.is_contiguous() and y.is_contiguous(), b
        assert torch.equal(x.cpu(), xw) and torch.equal(y.cpu(), yw), b


@pytest.mark.parametrize("where", [DEVICE, HOST])
@pytest.mark.parametrize(
    "proc", [Proc(), Proc(0, 2), Proc(1, 2)], ids=["1 rank", "rank 0 of 2", "rank 1 of 2"]
)
@pytest.mark.parametrize("numpy_on_cpu", [True, False], ids=["numpy", "torch as on a GPU"])
def test_train_batches_are_the_worker_loaders_bit_for_bit(split, where, proc, numpy_on_cpu, monkeypatch):
    """Several epochs of the sampler: every transform drawn, a last partial batch, each shard."""
    monkeypatch.setattr(ResidentLoader, "numpy_on_cpu", numpy_on_cpu)
    pairs, stem = split
    epochs = (1, 2, 3, 4)
    sampler = EpochSampler(N, 5, proc)
    drawn = set()
    for e in epochs:
        sampler.set_epoch(e)
        drawn |= {k for _, k in sampler}
    assert drawn == set(range(8))
    want = worker_batches(pairs, stem, sampler, True, epochs)
    assert len(want[-1][0]) < BATCH  # a last partial batch every epoch
    loader = ResidentLoader(ResidentTiles.load(stem, CPU, where), sampler, BATCH, CPU)
    assert loader.through_host is False  # on the CPU the host is the device
    got = list(each_epoch(loader, sampler, epochs))
    assert_same(got, want)


@pytest.mark.parametrize(
    "proc", [Proc(), Proc(0, 2), Proc(1, 2)], ids=["1 rank", "rank 0 of 2", "rank 1 of 2"]
)
def test_val_batches_are_the_worker_loaders_bit_for_bit(split, proc):
    pairs, stem = split
    shard = list(range(proc.rank, N, proc.world))  # train.py's val shard: no padding, no transform
    loader = ResidentLoader(ResidentTiles.load(stem, CPU, DEVICE), shard, BATCH, CPU)
    assert_same(list(loader), worker_batches(pairs, stem, shard, False))


@pytest.mark.parametrize("batch", [1, 3, 4, 11, 12])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_len_is_the_dataloaders(split, batch, world):
    pairs, stem = split
    tiles = ResidentTiles.load(stem, CPU, DEVICE)
    for rank in range(world):
        sampler = EpochSampler(N, 0, Proc(rank, world))
        ds = TileDataset(pairs, BANDS, augment=True, cache=stem)
        loader = ResidentLoader(tiles, sampler, batch, CPU)
        assert len(loader) == len(make_loader(ds, sampler, batch, 0, CPU, 0)) == len(list(loader))


def test_two_ranks_share_the_epoch_between_them(split):
    """Every tile of an epoch goes to one rank (the padding repeats one: 11 tiles, 2 x 6 draws)."""
    _, stem = split
    tiles = ResidentTiles.load(stem, CPU, DEVICE)
    imgs = tile_cache.open_tile_cache(stem)[0]
    owner = {np.ascontiguousarray(dihedral(imgs[i], k)).tobytes(): i for i in range(N) for k in range(8)}
    seen = []
    for rank in range(2):
        sampler = EpochSampler(N, 1, Proc(rank, 2))
        sampler.set_epoch(7)
        seen += [
            owner[x.numpy().tobytes()] for raw, _ in ResidentLoader(tiles, sampler, BATCH, CPU) for x in raw
        ]
    assert len(seen) == 12 and set(seen) == set(range(N))


def test_the_tiles_are_the_caches_as_one_tensor(split):
    _, stem = split
    imgs, ys = tile_cache.open_tile_cache(stem)
    for where in (DEVICE, HOST):
        t = ResidentTiles.load(stem, CPU, where)
        assert t.images.dtype == torch.int16 and t.dtype == torch.uint16  # the same bits, a signed view
        assert torch.equal(t.images.view(torch.uint16), torch.from_numpy(np.array(imgs)))
        assert torch.equal(t.targets, torch.from_numpy(np.array(ys)))
        assert len(t) == N and t.nbytes == cache_bytes(stem) == imgs.nbytes + ys.nbytes


def test_placement_follows_the_memory_rule():
    cuda, cpu = torch.device("cuda", 0), CPU
    p = choose_placement(int(25.3 * GB), cuda, gpu_free=120 * GB, host_available=500 * GB)
    assert (p.where, p.reason) == (DEVICE, "tiles on the GPU: 25.3 GB of 120.0 GB free")
    assert choose_placement(60 * GB, cuda, gpu_free=120 * GB, host_available=0).where == DEVICE  # half
    p = choose_placement(int(50.6 * GB), cuda, gpu_free=40 * GB, host_available=250 * GB, processes=1)
    assert p.where == HOST and p.resident
    assert p.reason == (
        "tiles in host memory, batches copied through pinned buffers: 50.6 GB do not fit in 50% of the "
        "GPU's 40.0 GB free, 250.0 GB of host memory available"
    )
    p = choose_placement(int(50.6 * GB), cuda, gpu_free=40 * GB, host_available=250 * GB, processes=2)
    assert p.where == HOST and "to 2 processes" in p.reason
    p = choose_placement(int(50.6 * GB), cuda, gpu_free=40 * GB, host_available=250 * GB, processes=4)
    assert p.where == WORKERS and not p.resident  # each of 4 processes holds its own copy
    assert p.reason == (
        "worker loader: 50.6 GB of tiles fit neither in 50% of the GPU's 40.0 GB free nor in 50% of the "
        "250.0 GB of host memory available to 4 processes"
    )
    p = choose_placement(10 * GB, cpu, host_available=30 * GB, processes=1)
    assert p.where == DEVICE and p.reason.startswith("tiles in host memory (the CPU device): 10.0 GB")
    p = choose_placement(20 * GB, cpu, host_available=30 * GB, processes=1)
    assert p == Placement(
        WORKERS, "worker loader: 20.0 GB of tiles do not fit in 50% of the 30.0 GB of host memory available"
    )
    assert choose_placement(GB, torch.device("mps"), host_available=30 * GB, processes=1).where == HOST
    with pytest.raises(InputError, match="at least 1"):
        choose_placement(GB, cpu, host_available=GB, processes=0)
    with pytest.raises(InputError, match="bytes"):
        choose_placement(-1, cpu, host_available=GB)


def test_hold_tiles_places_and_loads_every_split(split):
    _, stem = split
    held, p = hold_tiles([stem, stem], CPU, host_available=10**12, processes=1)
    assert p.where == DEVICE and len(held) == 2 and held[0].home == CPU
    held, p = hold_tiles([stem], CPU, host_available=cache_bytes(stem), processes=1)
    assert held is None and p.where == WORKERS


def test_bad_draws_are_one_line_errors(split, tmp_path):
    _, stem = split
    tiles = ResidentTiles.load(stem, CPU, DEVICE)
    for draws, needle in (([(N, 0)], f"tile {N}"), ([(0, 8)], "transform 8"), ([-1], "tile -1")):
        with pytest.raises(InputError, match=needle):
            list(ResidentLoader(tiles, draws, BATCH, CPU))
    with pytest.raises(InputError, match="batch size"):
        ResidentLoader(tiles, [0], 0, CPU)
    pairs = write_split(tmp_path / "wide", 2, (SIZE, SIZE + 1))
    wide = ResidentTiles.load(build_tile_cache(pairs, tmp_path / "cache", "wide", threads=1), CPU, DEVICE)
    assert len(list(ResidentLoader(wide, [(0, 2), (1, 4), (0, 6)], BATCH, CPU))) == 1
    with pytest.raises(InputError, match="square"):
        list(ResidentLoader(wide, [(0, 1)], BATCH, CPU))


def test_the_host_path_copies_each_batch_and_stops_its_thread(split, monkeypatch):
    """Tiles in host memory for another device: gathered ahead on a thread into reused buffers and
    copied over (here the CPU stands for the other device: a synchronous copy), the thread gone on
    break."""
    pairs, stem = split
    monkeypatch.setattr(ResidentLoader, "through_host", property(lambda self: True))
    sampler = EpochSampler(N, 2, Proc())
    loader = ResidentLoader(ResidentTiles.load(stem, CPU, HOST), sampler, 2, CPU)  # 6 batches, 3 buffers
    for epochs in ((0, 1), (3,)):
        got = list(each_epoch(loader, sampler, epochs))  # batches kept: none is a reused buffer
        assert_same(got, worker_batches(pairs, stem, sampler, True, epochs, batch=2))
    val = list(range(N))  # no transform: the gathered batch itself is yielded
    got = list(ResidentLoader(loader.tiles, val, 2, CPU))
    assert_same(got, worker_batches(pairs, stem, val, False, batch=2))
    for _ in loader:
        break
    assert not [t for t in threading.enumerate() if t.name.startswith("resident-gather")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_are_the_cpu_paths_bit_for_bit(split):
    """Tiles on the GPU, and in host memory copied through pinned buffers on a side stream: both give
    the CPU path's batches, on the GPU, uint16; and to_device normalises them as the CPU does."""
    _, stem = split
    cuda = torch.device("cuda", torch.cuda.current_device())
    norm_cpu, norm_gpu = (Normalize({"mean": [1e4] * BANDS, "std": [2e3] * BANDS}, d) for d in (CPU, cuda))
    epochs = (1, 2, 3)
    for draws in (EpochSampler(N, 5, Proc()), EpochSampler(N, 5, Proc(1, 2)), list(range(N))):
        want = list(
            each_epoch(
                ResidentLoader(ResidentTiles.load(stem, CPU, DEVICE), draws, BATCH, CPU), draws, epochs
            )
        )
        for where in (DEVICE, HOST):
            loader = ResidentLoader(ResidentTiles.load(stem, cuda, where), draws, BATCH, cuda)
            assert loader.through_host == (where == HOST)
            got = list(each_epoch(loader, draws, epochs))
            assert all(x.device == cuda and y.device == cuda for x, y in got)
            assert_same(got, want)
            x, _ = to_device(*got[0], norm_gpu, cuda, torch.channels_last)
            xw, _ = to_device(*want[0], norm_cpu, CPU, torch.contiguous_format)
            torch.testing.assert_close(x.cpu(), xw, rtol=1e-6, atol=1e-5)
