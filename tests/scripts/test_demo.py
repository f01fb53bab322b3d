"""demo.py: the whole chain on generated data, every mode, the better one chosen and mapped; a re-run
completes without redoing the work."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def run_demo(root) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "demo.py", "--size", "600", "--tile", "100", "--epochs", "1", "--root", root]
    cmd += ["--modes", "april", "august", "stacked"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_demo_runs_every_mode_and_maps_with_the_chosen_one(tmp_path):
    res = run_demo(tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    scores = {}
    for mode, scenes in (
        ("april", ["s2_april"]),
        ("august", ["s2_august"]),
        ("stacked", ["s2_april", "s2_august"]),
    ):
        m = json.loads((tmp_path / f"results/demo-{mode}/metrics.json").read_text())
        bands = m["checkpoint"]["bands"]
        assert len(bands) == 10 * len(scenes)
        if mode == "stacked":  # April's 10 bands, then August's
            assert [b.split(":")[0] for b in bands] == ["s2_april"] * 10 + ["s2_august"] * 10
        scores[mode] = m["checkpoint"]["val_miou"]
        assert f"{mode:8s} validation mIoU {scores[mode]:.3f}   test mIoU {m['miou']:.3f}" in res.stdout
    chosen = max(scores, key=scores.get)  # ties: the first mode given
    assert f"Mode: {chosen} (better validation mIoU)" in res.stdout
    assert (tmp_path / f"results/demo-{chosen}/landcover_demo.tif").is_file()
    assert (tmp_path / f"results/demo-{chosen}/landcover_demo.png").is_file()
    august_tiles = {p.name.split("_")[1] for p in (tmp_path / "data/august/train/img").glob("*.tif")}
    assert august_tiles == {"august"}

    checkpoint = tmp_path / "runs/demo-stacked/best.pt"
    before = checkpoint.stat().st_mtime_ns
    again = run_demo(tmp_path)  # every step finds its work done
    assert again.returncode == 0, again.stderr[-2000:]
    assert checkpoint.stat().st_mtime_ns == before
    assert f"Mode: {chosen}" in again.stdout
