"""Processes, devices, precision and seeds: where and how a script's tensors are computed.

Bottom floor (rests on common.py's one-line failures only). Owns the torchrun process (``Proc``: a
plain ``python`` process is rank 0 of 1; nccl on CUDA, gloo on CPU), the one device rule of every
script (``pick_device``), precision decided once (``Precision``), and the seeds derived from (seed,
epoch, rank), so that a run and its resume draw the same numbers.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from landcover.common import InputError, fail

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Proc:
    """This process's place in the run: rank, number of processes, local rank (GPU index), and whether
    torchrun started it (then it joins a process group and trains with DDP, even as the only process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    torchrun: bool = False

    @classmethod
    def from_env(cls) -> Proc:
        env = os.environ
        if "LOCAL_RANK" not in env:  # a plain process
            return cls()
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), torchrun=True)

    @property
    def main(self) -> bool:
        return self.rank == 0


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(choice: str, proc: Proc = Proc()) -> torch.device:
    """The device of ``--device``: ``auto`` is this process's GPU when CUDA has one, else the CPU;
    ``cuda`` or ``mps`` asked for but absent is a one-line error, as is a process without its GPU."""
    cuda = torch.cuda.is_available()
    if choice == "mps":
        if not mps_available():
            fail("--device mps: this torch has no MPS device (Apple GPUs only; use --device cpu or auto)")
        return torch.device("mps")
    if choice == "cuda" and not cuda:
        fail("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if choice == "cpu" or not cuda:
        return torch.device("cpu")
    if proc.local_rank >= torch.cuda.device_count():
        fail(
            f"process {proc.local_rank} has no GPU ({torch.cuda.device_count()} visible): "
            "lower --nproc_per_node"
        )
    return torch.device("cuda", proc.local_rank)


def configure_torch(device: torch.device, deterministic: bool = False) -> None:
    """CUDA: the fastest kernels (one tile size, so cuDNN times its kernels once and keeps the best;
    TF32 matrix products). ``deterministic`` on the CPU: bitwise reproducible runs and resumes."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu" and deterministic:
        torch.use_deterministic_algorithms(True)


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; on CUDA without waiting (CUDA stages pageable memory itself, so the host
    may free ``t`` at once). On MPS the copy waits: there a non-blocking copy of pageable memory that
    is freed right after can read it freed."""
    return t.to(device, non_blocking=device.type == "cuda")


@dataclass(frozen=True)
class Precision:
    """How the model computes, decided once per run: bf16 autocast with channels_last memory, or float32.

    Mixed precision applies to CUDA only; elsewhere the model computes in float32."""

    amp: bool = False

    @classmethod
    def for_device(cls, amp: bool, device: torch.device) -> Precision:
        return cls(amp and device.type == "cuda")

    @staticmethod
    def fast_on(device: torch.device) -> bool:
        """Whether bf16 autocast is the faster choice: a CUDA GPU with native bf16 (Ampere and later);
        older ones emulate it, slower than float32."""
        return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.amp else torch.contiguous_format

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp)

    def describe(self) -> str:
        return "bf16 autocast, channels_last" if self.amp else "float32"


# ---------------------------------------------------------------------------------------------------
# The process group


def init_processes(device: torch.device, proc: Proc) -> None:
    """Join the process group of a torchrun launch (nccl on CUDA, gloo on CPU)."""
    if not proc.torchrun:
        return
    timeout = timedelta(minutes=60)  # rank 0 alone computes the band statistics of a large split
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def close_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_rank0(fn: Callable[[], object], proc: Proc) -> object:
    """Run ``fn`` on rank 0 only and hand its result (or its one-line error) to every process."""
    result, error = None, None
    if proc.main:
        try:
            result = fn()
        except InputError as e:
            error = str(e)
    if dist.is_initialized():
        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        fail(error)
    return result


def sum_over_processes(*values: float, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity in a single process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(net: nn.Module) -> None:
    """Give every process rank 0's batch-norm statistics (what the checkpoint holds) before validating."""
    if dist.is_initialized():
        for b in net.buffers():
            dist.broadcast(b, src=0)


# ---------------------------------------------------------------------------------------------------
# Seeds and random states


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a few integers (seed, epoch, rank...)."""
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and ``random`` follow the worker's torch seed (which torch
    draws from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    """The global RNG states as tensors and lists (so that weights_only loading reads them)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def default_workers() -> int:
    """Loader workers per training process: this node's cores shared among its processes, at most 16."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(16, (os.cpu_count() or 1) // per_node))


@contextlib.contextmanager
def process_group(device: torch.device, proc: Proc) -> Iterator[None]:
    """Inside a torchrun launch's process group (a no-op for a plain process); left however the body ends."""
    init_processes(device, proc)
    try:
        yield
    finally:
        close_processes()


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Torch's CPU work in one thread (the model's forward keeps all): probabilities and blending are
    short passes over memory, and a pass split over threads waits for each to be scheduled, which on
    cores shared with other work costs more than the pass itself (bench/predict.py shows it); in one
    thread, too, no CPU time goes to threads spinning at the end of each pass."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
