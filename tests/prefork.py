"""Run the pipeline's scripts as separate processes without paying for torch's import every time; stop
them at a chosen moment (SIGKILL, or a full disk); compare output folders.

A server process (``serve`` in tests/prefork_child.py, which holds all the code that runs outside the
test process) imports the heavy modules once (numpy, rasterio, torch, tensorboard, matplotlib and the
project's shared modules), then forks one child per run. The child runs the script's file as
``__main__`` exactly as ``python script.py args`` does (sys.argv, sys.path[0], the repository as working
directory, stdin closed), with stdout and stderr going to files, and exits with the script's status; an
uncaught exception prints its traceback and exits 1, as the interpreter does. So each run is a real
process (exit status, output, files) that starts in a few milliseconds instead of several seconds.

``setup``: Python code the child runs before the script, e.g. ``call_at(...)`` (lines that import and call
``prefork_child.call_at``) to kill it at the n-th rename or to make its n-th write fail with ENOSPC.
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
TESTS = Path(__file__).resolve().parent

# The first lines of call_at's setup code: import tests/prefork_child.py (a child of the server has it
# already; a plain ``python -c`` process finds it in tests/, which then leaves sys.path again)
IMPORT_CHILD = f"""
import sys
sys.path.append({str(TESTS)!r})
import prefork_child
sys.path.pop()
"""


class Prefork:
    """``run(script, *args)`` -> CompletedProcess, each run a fresh child of one warm server process."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="prefork")
        # the server is prefork_child.serve, imported from tests/ (the working directory here; it then moves
        # to the repository)
        server = [sys.executable, "-c", "import prefork_child; prefork_child.serve()"]
        self.proc = subprocess.Popen(
            server, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=TESTS
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
    args = ", ".join(map(repr, (target, n, when, action)))
    return f"{IMPORT_CHILD}prefork_child.call_at({args})\n"


def files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) with the SHA-1 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }
