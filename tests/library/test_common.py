"""common.py: one-line errors with exit status 2, atomic writes, leftovers of killed runs."""

import errno
import sys

import pytest

from landcover import common


def test_input_error_is_one_line_and_status_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["script.py"])

    def main(argv=None):
        common.fail("mask not found: /x/y.tif")

    assert common.run_main(main) == 2
    err = capsys.readouterr().err
    assert err == "script.py: error: mask not found: /x/y.tif\n"


def test_full_disk_is_one_line_and_status_2(capsys):
    def main(argv=None):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.tif")

    assert common.run_main(main) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "/data/out.tif" in err[0]


def test_argparse_errors_are_one_line(capsys):
    parser = common.ArgumentParser(prog="x.py")
    parser.add_argument("--size", type=int)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--size", "abc"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_atomic_path_renames_only_on_success(tmp_path):
    final = tmp_path / "out.txt"
    with common.atomic_path(final) as tmp:
        tmp.write_text("done")
        assert not final.exists()
    assert final.read_text() == "done"
    with pytest.raises(RuntimeError), common.atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert final.read_text() == "done"  # the finished file is untouched
    assert list(tmp_path.iterdir()) == [final]  # no leftover


def test_remove_partials(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t.tif.partial").write_text("x")
    (tmp_path / "a" / "t.tif").write_text("x")
    assert common.remove_partials(tmp_path) == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["t.tif"]


def test_open_raster_rejects_non_rasters(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("not a raster")
    with pytest.raises(common.InputError, match="not a readable raster"):
        common.open_raster(bad, "scene")
    with pytest.raises(common.InputError, match="scene not found"):
        common.open_raster(tmp_path / "missing.tif", "scene")


def test_check_range():
    common.check_range("--size", 300, 1)
    with pytest.raises(common.InputError, match="--size must be >= 1, got 0"):
        common.check_range("--size", 0, 1)
    with pytest.raises(common.InputError, match="--overlap must be > 0"):
        common.check_range("--overlap", 0, 0, low_open=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_range_refuses_nan_and_infinity(value):
    """NaN passes every comparison (``nan < 0`` and ``nan > 1`` are both False): refused by name."""
    for low, high in ((0, 1), (0, None), (None, None)):
        with pytest.raises(common.InputError, match=f"--lr must be a finite number, got {value}"):
            common.check_range("--lr", value, low, high)
    common.check_range("--size", 10**400, 1)  # an int, however large, is compared as it is


def test_open_raster_without_sidecars_ignores_the_folder(tmp_path):
    """Tiles are opened without GDAL listing their folder: an .aux.xml beside one is not read."""
    import numpy as np
    from helpers import write_raster

    path = tmp_path / "t.tif"
    write_raster(path, np.ones((1, 4, 4), np.uint8))
    (tmp_path / "t.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><Description>from the sidecar</Description>'
        "</PAMRasterBand></PAMDataset>"
    )
    with common.open_raster(path) as ds:
        assert ds.descriptions == ("from the sidecar",)
    with common.open_raster(path, sidecars=False) as ds:
        assert ds.descriptions == (None,)


def test_first_line():
    assert common.first_line(ValueError("  one\ntwo\n")) == "one"
    assert common.first_line(ValueError("x" * 300), 10) == "x" * 10
    assert common.first_line(ValueError("x" * 300), None) == "x" * 300
    assert common.first_line(KeyError()) == "KeyError"


def test_ordered_map_keeps_the_order():
    import random
    import time

    def slow(i):
        time.sleep(random.random() / 200)
        return i * i

    assert list(common.ordered_map(slow, range(40), threads=4, ahead=6)) == [i * i for i in range(40)]
    assert list(common.ordered_map(slow, iter(range(5)), threads=0, ahead=1)) == [0, 1, 4, 9, 16]
    assert list(common.ordered_map(slow, [], threads=2, ahead=3)) == []


def test_ordered_map_has_at_most_ahead_items_in_flight():
    """Item n + ahead is pulled only after item n was yielded: a producer may reuse older buffers."""
    import threading

    pulled, yielded, lock = [], [], threading.Lock()
    running, most = [0], [0]

    def items():
        for i in range(30):
            assert i - len(yielded) <= 2  # item i pulled only once item i - ahead was yielded
            pulled.append(i)
            yield i

    def fn(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.002)
        with lock:
            running[0] -= 1
        return i

    for r in common.ordered_map(fn, items(), threads=8, ahead=3):
        yielded.append(r)
        assert len(pulled) - len(yielded) <= 2  # in flight, once this one is handed over
    assert yielded == list(range(30)) and most[0] <= 3


def test_ordered_map_raises_the_first_error_and_starts_nothing_after_it():
    import time

    started = []

    def fn(i):
        started.append(i)
        if i == 3:
            time.sleep(0.05)  # fails after item 4 has failed: the error of the earlier item counts
            raise ValueError("item 3")
        if i == 4:
            raise RuntimeError("item 4")
        return i

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for r in common.ordered_map(fn, range(100), threads=2, ahead=4):
            got.append(r)
    assert got == [0, 1, 2]  # the results before the error, in order
    assert max(started) < 3 + 4  # nothing pulled past the window, and the rest never started

    def items():
        yield 1
        raise common.InputError("cannot read chunk 2")

    with pytest.raises(common.InputError, match="chunk 2"):
        list(common.ordered_map(lambda i: i, items(), threads=2, ahead=2))


def test_whole_raster_names_the_raster_left_short(tmp_path):
    """Of several rasters written together (predict.py's map, confidence and review mask), a GDAL error
    while writing, even a bare CPLE error (an overview on a full disk), or a short file left without an
    error, is the OSError naming the raster that is not whole; an error reading an input passes."""
    import numpy as np
    import rasterio
    from helpers import write_raster
    from rasterio._err import CPLE_AppDefinedError

    whole, short = tmp_path / "map.tif", tmp_path / "confidence.tif"
    for path in (whole, short):
        write_raster(path, np.arange(256 * 256, dtype=np.uint16).reshape(256, 256), tiled=True)
    with open(short, "r+b") as f:
        f.truncate(short.stat().st_size // 2)

    with pytest.raises(OSError) as caught, common.whole_raster(whole, short):
        raise CPLE_AppDefinedError(1, 1, "TIFFAppendToStrip:Write error at scanline 0")
    assert caught.value.filename == str(short) and "could not be written" in str(caught.value)
    with pytest.raises(OSError) as caught, common.whole_raster(whole, short):
        pass  # GDAL printed its errors at close and raised nothing
    assert caught.value.filename == str(short)

    reading = rasterio.errors.RasterioIOError(f"{tmp_path / 'scene.tif'}: not recognized as a raster")
    with pytest.raises(rasterio.errors.RasterioIOError), common.whole_raster(whole):
        raise reading
    with common.whole_raster(whole):
        pass
