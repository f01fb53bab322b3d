"""bench/train_speed.py runs end to end on the CPU at a tiny size: the step, every data path and
train.py's own epochs, each with a number. On a GPU machine it is run once, in a few minutes of lent
time, with no second chance: it must not fail there on something the CPU shows."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_speed_prints_the_step_the_data_paths_and_train_py_end_to_end():
    tiny = ["--encoder", "resnet18", "--size", "64", "--bands", "4", "--tiles", "8", "--steps", "1"]
    tiny += ["--passes", "1", "--compress", "zstd", "--folder-size", "10", "--batch-size", "4"]
    tiny += ["--e2e-batch", "4", "--e2e-tiles", "12", "--amp-batches", "4", "--workers", "1"]  # 4 links
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench/train_speed.py"), *tiny], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert re.search(r"[\d.]+ GFLOP per tile \(forward \+ backward\)", out)
    rows = dict(re.findall(r"^\| ((?:train step|data path)[^|]*?)\s*\|\s*([\d.]+) \|", out, re.M))
    assert "train step, cpu, fp32, batch 4" in rows
    paths = [r for r in rows if r.startswith("data path")]
    assert {"data path, loader, zstd tiles, 1 workers", "data path, resident, host memory"} <= set(paths)
    assert all(float(v) > 0 for v in rows.values())
    e2e = re.search(r"train.py end to end \(.*validation included\): ([\d.]+) train tiles/s, (\d+)% of", out)
    assert e2e and float(e2e.group(1)) > 0
