"""Run the pipeline's scripts as separate processes without paying for torch's import every time; stop
them at a chosen moment (SIGKILL, or a full disk); compare output folders.

A server process imports the heavy modules once (numpy, rasterio, torch, tensorboard, matplotlib and the
project's shared modules), then forks one child per run. The child runs the script's file as
``__main__`` exactly as ``python script.py args`` does (sys.argv, sys.path[0], the repository as working
directory, stdin closed), with stdout and stderr going to files, and exits with the script's status; an
uncaught exception prints its traceback and exits 1, as the interpreter does. So each run is a real
process (exit status, output, files) that starts in a few milliseconds instead of several seconds.

``setup``: Python code the child runs before the script, e.g. ``call_at(...)`` to kill it at the n-th
rename or to make its n-th write fail with ENOSPC.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ONE_THREAD = (
    "import torch; torch.set_num_threads(1)\n"  # setup code: the cores are shared, one thread is faster
)

ROOT = Path(__file__).resolve().parents[1]

SERVER = r"""
import atexit, gc, importlib, json, os, runpy, signal, sys, traceback
sys.path[:0] = [ROOT]
os.chdir(ROOT)
for name in ("numpy", "rasterio", "rasterio.warp", "torch", "torchvision", "torch.utils.tensorboard",
             "tensorboard.backend.event_processing.event_accumulator", "matplotlib", "matplotlib.pyplot",
             "scipy.ndimage", "tqdm.auto", "common", "colormap", "metrics", "model", "dataset", "inference"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
out = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        signal.alarm(req["timeout"])  # a run that hangs is killed (exit status -14)
        try:
            for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            sys.stdin = open(os.devnull)
            script = os.path.join(ROOT, req["script"])
            sys.argv = [script, *req["args"]]
            sys.path[0] = ROOT
            if req.get("setup"):
                exec(req["setup"], {"__name__": "__setup__"})
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
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
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    out.write(json.dumps({"rc": rc}) + "\n")
    out.flush()
"""


class Prefork:
    """``run(script, *args)`` -> CompletedProcess, each run a fresh child of one warm server process."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="prefork")
        code = f"ROOT = {str(ROOT)!r}\n{SERVER}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        self.n = 0

    def run(self, script: str, *args, setup: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
        self.n += 1
        out, err = Path(self.tmp.name) / f"{self.n}.out", Path(self.tmp.name) / f"{self.n}.err"
        req = dict(script=script, args=[str(a) for a in args], stdout=str(out), stderr=str(err))
        req.update(setup=setup, timeout=timeout)
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the prefork server died")
        rc = json.loads(line)["rc"]
        cmd = [sys.executable, script, *req["args"]]
        return subprocess.CompletedProcess(
            cmd, rc, out.read_text(errors="replace"), err.read_text(errors="replace")
        )

    def run_ok(self, script: str, *args) -> None:
        """Run a script with one torch thread; it must succeed."""
        res = self.run(script, *args, setup=ONE_THREAD)
        assert res.returncode == 0, (script, res.stderr[-3000:])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.tmp.cleanup()


def call_at(target: str, n: int, when: str = "before", action: str = "kill") -> str:
    """Setup code: at the n-th call of ``target`` (a dotted name: ``os.replace``, ``torch.optim.Adam.step``,
    ``rasterio.io.DatasetWriter.write``), just ``before`` or ``after`` it, ``kill`` the process with
    SIGKILL or raise ``OSError(ENOSPC)`` as a full disk does (``enospc``). Calls from several threads are
    counted once each."""
    return f"""
import errno, importlib, os, signal, threading
parts = {target!r}.split(".")
for i in range(len(parts) - 1, 0, -1):
    try:
        owner, rest = importlib.import_module(".".join(parts[:i])), parts[i:]
        break
    except ImportError:
        continue
for name in rest[:-1]:
    owner = getattr(owner, name)
orig, calls, lock = getattr(owner, rest[-1]), [0], threading.Lock()
def act():
    if {action!r} == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
def wrapped(*a, **k):
    with lock:
        calls[0] += 1
        mine = calls[0]
    if mine == {n} and {when!r} == "before":
        act()
    r = orig(*a, **k)
    if mine == {n} and {when!r} == "after":
        act()
    return r
setattr(owner, rest[-1], wrapped)
"""


def files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) with the SHA-1 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }
