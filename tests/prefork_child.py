"""The side of tests/prefork.py that runs in other processes: the server that forks one child per run,
and ``call_at``, the failure that a run's setup code injects.

``serve`` runs in the server (``Prefork`` starts ``python -c "import prefork_child; prefork_child.serve()"``
in tests/); ``call_at`` runs in a run's child, called by the setup code that ``prefork.call_at`` writes
(which also works in a plain ``python -c`` process, as tests/helpers.py's run_script_killed starts).
Nothing here is imported by the test process itself.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import importlib
import json
import os
import runpy
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn

TESTS = str(Path(__file__).resolve().parent)
ROOT = str(Path(__file__).resolve().parents[1])

# Imported once by the server, so that no run pays for them: the heavy libraries and the project's
# shared modules (one that fails to import is left to fail in the run that needs it)
PRELOAD = (
    "numpy",
    "rasterio",
    "rasterio.warp",
    "torch",
    "torchvision",
    "torch.utils.tensorboard",
    "tensorboard.backend.event_processing.event_accumulator",
    "matplotlib",
    "matplotlib.pyplot",
    "scipy.ndimage",
    "tqdm.auto",
    "landcover.common",
    "colormap",
    "landcover.metrics",
    "model",
    "landcover.dataset",
    "landcover.inference",
)


def serve() -> None:
    """Read one JSON request a line on stdin, fork a child that runs it, answer ``{"rc": status}``.

    A request: ``script`` (relative to the repository), ``args``, ``stdout`` and ``stderr`` (files the
    child's output goes to), ``setup`` (Python code run before the script) and ``timeout`` (seconds)."""
    # the module search path of ``python script.py`` (the repository first), not this process's (tests/)
    sys.path[:] = [ROOT, *(p for p in sys.path if p not in ("", TESTS))]
    os.chdir(ROOT)
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    answers = os.fdopen(os.dup(1), "w")  # stdout is the answer channel: anything else printed is dropped
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


def run_child(request: dict[str, Any]) -> NoReturn:
    """In the forked child: run the script as ``__main__`` as ``python script.py args`` does (sys.argv,
    stdin closed, stdout and stderr to the request's files), then exit with its status."""
    code = 1
    signal.alarm(request["timeout"])  # a run that hangs is killed (exit status -14)
    try:
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.stdin = open(os.devnull)  # noqa: SIM115 (the script's stdin, open until the process ends)
        script = os.path.join(ROOT, request["script"])
        sys.argv = [script, *request["args"]]
        if request.get("setup"):
            exec(request["setup"], {"__name__": "__setup__"})
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:  # as the interpreter does: a message is printed, None is 0, other objects 1
        if isinstance(e.code, str):
            sys.stderr.write(e.code + "\n")
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            gc.collect()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def call_at(target: str, n: int, when: str = "before", action: str = "kill") -> None:
    """Replace ``target`` (a dotted name: ``os.replace``, ``torch.optim.Adam.step``,
    ``rasterio.io.DatasetWriter.write``) in this process: at its n-th call, just ``before`` or ``after``
    it, ``kill`` the process with SIGKILL or raise ``OSError(ENOSPC)`` as a full disk does (``enospc``).
    Calls from several threads are counted once each."""
    assert when in ("before", "after") and action in ("kill", "enospc"), (when, action)
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module
        try:
            owner, rest = importlib.import_module(".".join(parts[:i])), parts[i:]
            break
        except ImportError:
            continue
    else:
        raise ImportError(f"call_at: no module in {target!r}")
    for name in rest[:-1]:
        owner = getattr(owner, name)
    original, calls, lock = getattr(owner, rest[-1]), [0], threading.Lock()

    def act() -> None:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def wrapped(*args, **kwargs):
        with lock:
            calls[0] += 1
            mine = calls[0]
        if mine == n and when == "before":
            act()
        result = original(*args, **kwargs)
        if mine == n and when == "after":
            act()
        return result

    setattr(owner, rest[-1], wrapped)
