"""distributed.py: which device and precision a run gets."""

import pytest
import torch

from landcover import distributed
from landcover.common import InputError
from landcover.distributed import Precision, Proc, pick_device


def test_a_device_asked_for_but_absent_is_one_line(monkeypatch):
    """--device mps on a machine whose torch has no MPS (or cuda without CUDA): one line, no fallback
    that would train for hours on the CPU unnoticed."""
    monkeypatch.setattr(distributed, "mps_available", lambda: False)
    with pytest.raises(InputError, match=r"^--device mps: this torch has no MPS device"):
        pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"^--device cuda: no CUDA device is available"):
        pick_device("cuda")
    assert pick_device("auto") == torch.device("cpu") == pick_device("cpu")


def test_mps_is_used_where_torch_has_it(monkeypatch):
    monkeypatch.setattr(distributed, "mps_available", lambda: True)
    assert pick_device("mps") == torch.device("mps")


def test_a_process_without_its_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", Proc(rank=1, world=2, local_rank=1, torchrun=True)) == torch.device("cuda", 1)
    with pytest.raises(InputError, match="process 2 has no GPU \\(2 visible\\)"):
        pick_device("cuda", Proc(rank=2, world=3, local_rank=2, torchrun=True))


def test_bf16_is_the_default_only_where_the_gpu_computes_it_natively(monkeypatch):
    """bf16 autocast and channels_last on CUDA GPUs with native bf16; float32 elsewhere (an older GPU
    emulates bf16, slower than float32), and never on the CPU or MPS whatever is asked."""
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert not Precision.fast_on(cpu) and not Precision.for_device(True, cpu).amp
    assert not Precision.for_device(True, torch.device("mps")).amp
    for capability, native in (((9, 0), True), ((8, 0), True), ((7, 5), False)):  # H200, A100, T4
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert Precision.fast_on(cuda) is native
    amp = Precision.for_device(True, cuda)
    assert amp.amp and amp.memory_format == torch.channels_last and "bf16" in amp.describe()
    assert Precision().memory_format == torch.contiguous_format
