"""Fixtures shared by several test modules: a trained checkpoint, one torch thread, the prefork runner."""

from __future__ import annotations

import pytest
import torch
from checkpoints import scene_data, trained_checkpoint
from helpers import S2_BANDS, write_raster
from prefork import Prefork


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread in this process and in the scripts it runs: 2 threads crawl on shared cores.
    Used by a module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint trained for a few seconds on the easy spectra (tests/checkpoints.py), per module."""
    return trained_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", steps=40)


@pytest.fixture(scope="module")
def runner():
    """A warm server that forks the scripts as real processes (tests/prefork.py), one per module."""
    r = Prefork()
    yield r
    r.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """predict.py's test scene (tests/checkpoints.py's scene_data) as a tiled GeoTIFF, per module."""
    labels, img = scene_data()
    path = tmp_path_factory.mktemp("scene") / "s2_april.tif"
    write_raster(
        path, img, descriptions=S2_BANDS, tiled=True, blockxsize=64, blockysize=64, compress="deflate"
    )
    return path, labels, img
