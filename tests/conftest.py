"""Fixtures shared by several test modules: a trained checkpoint, one torch thread, the prefork runner."""

from __future__ import annotations

import pytest
import torch
from checkpoints import trained_checkpoint
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
