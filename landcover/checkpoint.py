"""Checkpoints: what a trained model is on disk, written atomically and read without running code.

Middle floor: rests on model.py and common.py. A checkpoint holds only tensors and plain Python
containers, so ``torch.load(weights_only=True)`` reads it and a file holding a pickled object is
refused without running it. Every checkpoint carries its architecture (``model_config``), its bands
and their normalisation statistics and the class table, so test_model.py and predict.py need nothing
else; train.py's ``last.pt`` adds the training state that ``--resume`` continues from exactly.

Every checkpoint carries a digest of its content (``digest``: sha256 over every tensor's name, dtype,
shape and bytes and every other value, keys in a canonical order), and every reader checks it: torch's
zip reader checks no CRC, so bytes flipped inside a tensor (a bad copy, bit rot) would load silently
and give a map that looks finished. A file written before digests loads, with one line saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import signal
import sys
import threading
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from colormap import CLASSES, NUM_CLASSES
from landcover.common import atomic_path, fail, first_line, require_file
from model import model_from_config

CHECKPOINT_VERSION = 1  # raise it when a checkpoint's meaning changes; newer files are refused
CHECKPOINT_KEYS = ("model", "model_config", "bands", "stats", "classes")
TRAINING_KEYS = ("optimizer", "scheduler", "epoch", "options", "rng")  # last.pt's state for --resume
DIGEST_KEY = "digest"  # "sha256:<hex>" of everything else the checkpoint holds (content_digest)
DIGEST_PREFIX = "sha256:"  # sha256, not blake2b: with the CPU's SHA instructions it hashes ~2x faster


def make_checkpoint(net: nn.Module, bands: list[str], stats: dict, **extra) -> dict:
    """The checkpoint dict every script reads: weights, architecture, bands, statistics, classes.

    ``extra`` adds training state (optimizer, scheduler, epoch, RNG states, options, metrics); all
    values must be tensors or plain Python containers so that ``weights_only`` loading works.
    Sealed with its digest when its tensors are in host memory, so that one saved with a plain
    ``torch.save`` carries it too; one on a GPU is sealed by ``save_checkpoint``, from the host copy
    that is written (hashing here would copy the weights to the host in the training thread).
    """
    ckpt = {
        "version": CHECKPOINT_VERSION,
        "model": net.state_dict(),
        "model_config": dict(net.config),
        "bands": list(bands),
        "stats": {"mean": list(map(float, stats["mean"])), "std": list(map(float, stats["std"]))},
        "classes": {str(c): n for c, (n, _) in CLASSES.items()},
        **extra,
    }
    return sealed(ckpt) if on_host(ckpt) else ckpt


def on_host(obj) -> bool:
    """Whether every tensor in ``obj`` (nested in dicts, lists and tuples) is in host memory."""
    if isinstance(obj, torch.Tensor):
        return obj.device.type == "cpu"
    if isinstance(obj, dict):
        return all(on_host(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(on_host(v) for v in obj)
    return True


def sealed(ckpt: dict) -> dict:
    """``ckpt`` with the digest of its content (a shallow copy: the caller's dict is left as it was).
    Seal again after any change, else readers refuse the file as damaged."""
    return {**{k: v for k, v in ckpt.items() if k != DIGEST_KEY}, DIGEST_KEY: content_digest(ckpt)}


def content_digest(ckpt: dict) -> str:
    """sha256 of everything ``ckpt`` holds but its digest: each tensor's dtype, shape and bytes under its
    name (the keys that lead to it), and every other value with its type; dict keys are taken in sorted
    order, so the digest depends on the content only, and is the same after a save and a load."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != DIGEST_KEY})
    return DIGEST_PREFIX + h.hexdigest()


def _feed(h, obj) -> None:
    """Feed ``obj`` to the hash ``h``: each value tagged with its type, each sequence with its length, so
    that no two contents give the same stream of bytes."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").resolve_conj().resolve_neg()
        t = (t.to_dense() if t.layout != torch.strided else t).contiguous()
        h.update(f"T{t.dtype}{list(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the tensor's own memory: no copy
    elif isinstance(obj, dict):
        # an OrderedDict as a dict, its _metadata (torch's module versions) left out: host_copy drops both,
        # and the same content must give the same digest whichever way it was written
        h.update(f"dict{len(obj)}:".encode())
        for k, v in sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0]))):
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str | bytes):
        b = obj.encode("utf-8", "surrogatepass") if isinstance(obj, str) else obj
        h.update(f"{type(obj).__name__}{len(b)}:".encode())
        h.update(b)
    elif obj is None or isinstance(obj, bool | int | float | complex | torch.dtype | torch.device):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())  # repr: exact for floats (nan, inf, -0.0)
    else:
        raise TypeError(f"a checkpoint holds tensors and plain values, not {type(obj).__name__}")


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (weights_only); a broken, unsafe or foreign file is one line."""
    path = require_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: the error says enough
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "GLOBAL" in m or "Unsupported" in m), msg[0] if msg else "")
        if "GLOBAL" not in detail:  # no object to run: garbage, a text file, a foreign pickle
            fail(f"checkpoint is truncated or not a checkpoint: {path} ({detail.strip()[:160]})")
        fail(
            f"checkpoint holds pickled objects and was refused without running them: {path} "
            f"({detail.strip()[:160]})"
        )
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as e:
        fail(f"checkpoint is truncated or not a checkpoint: {path} ({first_line(e)})")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        fail(f"not a checkpoint of this project (needs {', '.join(CHECKPOINT_KEYS)}): {path}")
    if int(ckpt.get("version", 1)) > CHECKPOINT_VERSION:
        fail(
            f"checkpoint was written by a newer version of this pipeline (checkpoint version "
            f"{ckpt['version']}, this one reads up to {CHECKPOINT_VERSION}): {path}"
        )
    check_digest(ckpt, path)
    return ckpt


def check_digest(ckpt: dict, path: str | Path) -> None:
    """Refuse a checkpoint whose content is not what was saved: torch's zip reader checks no CRC, so bytes
    flipped inside a tensor load without a word. One written before digests loads, with one line on
    stderr saying that it cannot be checked."""
    saved = ckpt.get(DIGEST_KEY)
    if saved is None:
        print(
            f"warning: {path} carries no checksum (written before checkpoints had one): "
            f"damage to it cannot be detected",
            file=sys.stderr,
        )
        return
    try:
        same = isinstance(saved, str) and saved.startswith(DIGEST_PREFIX) and content_digest(ckpt) == saved
    except (TypeError, RuntimeError):  # a value no checkpoint of ours holds
        same = False
    if not same:
        fail(f"checkpoint is damaged: its content does not match its checksum: {path}")


def model_of(ckpt: dict, path: str | Path) -> nn.Module:
    """The model a checkpoint describes, with its weights; weights that do not fit it are one line."""
    try:
        net = model_from_config(ckpt["model_config"])
        net.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        config = ckpt.get("model_config")
        fail(f"checkpoint weights do not fit its architecture {config}: {path} ({first_line(e)})")
    return net


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A checkpoint's model in eval mode on ``device``, and the checkpoint; an inconsistent one fails."""
    ckpt = read_checkpoint(path)
    net = model_of(ckpt, path)
    n = net.config["in_channels"]
    bands, stats = ckpt["bands"], ckpt["stats"]
    if not (len(bands) == n == len(stats["mean"]) == len(stats["std"])):
        fail(
            f"checkpoint is inconsistent: {len(bands)} band names, {len(stats['mean'])} band statistics, "
            f"a model for {n} bands: {path}"
        )
    if net.config["num_classes"] != NUM_CLASSES:
        fail(f"checkpoint model has {net.config['num_classes']} outputs, expected {NUM_CLASSES}: {path}")
    return net.to(device).eval(), ckpt


def save_checkpoint(ckpt: dict, path: Path) -> None:
    """Save atomically, sealed with the digest of what is saved; a full disk is the OSError (ENOSPC)
    run_main reports in one line, and the previous file stays as it was. torch.save(ckpt, path) would
    raise a RuntimeError of its zip writer ("unexpected pos"); through a Python file the OSError is
    raised, then hidden by the RuntimeError the writer raises again while closing."""
    ckpt = sealed(ckpt)  # of what is written: train.py adds its optimizer state after make_checkpoint
    with signals_held(), atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(ckpt, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def host_copy(obj):
    """A copy of a checkpoint with every tensor copied to host memory: what training changes in place
    afterwards (weights, optimizer state) no longer touches it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints, with ``background`` on a thread while training goes on: a GPU epoch takes
    seconds, and writing the weights with the optimizer's state (hundreds of MB for a ResNet50) would
    stall it every epoch. On the CPU an epoch takes minutes and the copy would only cost memory.

    ``save`` copies the checkpoints to host memory at once, waits for the previous write, then starts
    this one: one write at a time, in the order given (best.pt before last.pt), each atomic as
    ``save_checkpoint``. ``wait`` returns when the last write is on disk and raises its error (a full
    disk: the OSError run_main reports) in the caller. The thread is not a daemon: even a run that
    stops on an error finishes the write it started. Without ``background`` ``save`` writes at once.
    ``written[path]`` is the label (train.py: the epoch) of the last save whole at ``path``.
    """

    def __init__(self, background: bool = True):
        self.background = background
        self.written: dict[Path, object] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, items: Sequence[tuple[dict, Path]], label: object = None) -> None:
        if not self.background:
            for ckpt, path in items:
                self._save_one(ckpt, path, label)
            return
        snapshot = [(host_copy(ckpt), path) for ckpt, path in items]
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(snapshot, label), name="checkpoint writer")
        self._thread.start()

    def _save_one(self, ckpt: dict, path: Path, label: object) -> None:
        try:
            save_checkpoint(ckpt, path)
        except KeyboardInterrupt:  # held until the file was whole and in place, then raised
            self.written[path] = label
            raise
        self.written[path] = label

    def _write(self, snapshot: Sequence[tuple[dict, Path]], label: object) -> None:
        try:
            for ckpt, path in snapshot:
                self._save_one(ckpt, path, label)
        except BaseException as e:  # raised again in the training thread by wait()
            self._error = e

    def wait(self) -> None:
        """Until the last write is whole on disk (Ctrl-C and SIGTERM held meanwhile); its error, if any."""
        if self._thread is not None:
            with signals_held():
                self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM while a checkpoint is written, then act on them: torch.save turns an
    interrupt inside its zip writer into a RuntimeError traceback instead of a clean stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


def plain_options(options: dict) -> dict:
    """A script's options as plain values (weights_only loading refuses Paths and tuples of objects)."""
    return {
        k: (list(v) if isinstance(v, tuple | list) else str(v) if isinstance(v, Path) else v)
        for k, v in options.items()
    }


def check_resumable(
    ckpt: dict,
    path: Path,
    options: dict,
    keys: Sequence[str],
    bands: Sequence[str],
    before: Mapping[str, object] | None = None,
) -> None:
    """Refuse a last.pt that is not a training state, or was written with other bands or other values of
    the options ``keys`` (those that decide what the run computes). ``before``: what an option added
    later amounted to before it existed, so that a run started then still resumes."""
    if any(k not in ckpt for k in TRAINING_KEYS):
        fail(f"not a training state (no optimizer/scheduler/epoch; best.pt cannot be resumed): {path}")
    old, new = {**(before or {}), **ckpt["options"]}, options
    diff = [
        f"--{k.replace('_', '-')} {old.get(k, 'unset')} (now {new[k]})" for k in keys if old.get(k) != new[k]
    ]
    if diff:
        fail(
            f"{path} was written with other options: {', '.join(diff)}; use the same options or another --out"
        )
    if list(ckpt["bands"]) != list(bands):
        fail(
            f"{path} was trained on other bands ({len(ckpt['bands'])}: {', '.join(ckpt['bands'])}) than the "
            f"tiles have now ({len(bands)}: {', '.join(bands)})"
        )


def temperature_of(ckpt: dict, path: str | Path) -> tuple[float, str | None]:
    """The temperature that calibrates a checkpoint's confidence (train.py fits it on the validation
    split), and a note to show when the checkpoint was written before temperatures were: it then uses
    1, the model's raw softmax."""
    if "temperature" in ckpt:
        return float(ckpt["temperature"]), None
    note = f"{path} holds no fitted temperature (written before calibration): confidence is uncalibrated"
    return 1.0, f"{note} (T = 1)"
